"""Graph partitioning for the tracking GNN: one event graph split across ranks, halo nodes exchanged.

The model-parallel approach for graphs too large for one device (an HL-LHC event: ~10^5 hits, ~10^6
edges; GNN4ITk trains on graphs of up to 2.8 M edges). Each rank *owns* a set of nodes (a φ sector of
the detector) and holds every edge touching one of them; the far end of an edge that crosses the cut is
a *halo* node, owned by a neighbour. Before every message-passing step each rank receives its halo nodes'
current features from their owners (one ``all_to_all``); the step then computes the exact new state of
every owned node, because all of its incoming and outgoing edges are local. Cut edges are held by both
ranks and computed twice, with identical inputs; the loss counts each edge once (on the rank that owns
its outer hit). The exchange is differentiable: its backward sends each halo node's gradient back to its
owner and adds it there, so the sum over ranks of the parameter gradients equals the full-graph gradient.
This is the scheme of distributed full-graph GNN training (Md et al., "DistGNN", SC21, arXiv:2104.06700;
Wan et al., "PipeGCN", ICLR 2022), here on DeZoort et al.'s interaction network (arXiv:2103.16701).

Partitions: `phi_sectors` (equal-width φ wedges, the detector's natural cut) and `balanced_phi_partition`
(wedge boundaries at quantiles of the per-node work, rotated to cut the fewest edges: equal edges per
rank, a small edge cut, because tracking edges join hits close in φ). METIS (Karypis & Kumar 1998) would
do the same for graphs without a geometry.

Memory per rank ≈ (owned + halo nodes, local edges), about 1/P of the full graph plus the halo.
Taught in curriculum/04_model_parallel. On a Perlmutter node: ``hepml-kit launch --nprocs 4 script.py``
(one rank per GPU, nccl); across nodes ``srun -N 2 --ntasks-per-node 4 --gpus-per-node 4 hepml-kit launch
script.py``: the halo all-to-all is then the only inter-node traffic besides the gradient all-reduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GraphPartition",
    "HaloExchange",
    "balanced_phi_partition",
    "halo_exchange",
    "partition_graph",
    "partition_stats",
    "partitioned_forward",
    "partitioned_loss",
    "partitioned_step",
    "phi_of_nodes",
    "phi_sectors",
    "sync_gradients",
]


# ----------------------------------------------------------------------------------------------------
# Assigning nodes to ranks
# ----------------------------------------------------------------------------------------------------


def phi_of_nodes(x: torch.Tensor) -> torch.Tensor:
    """Azimuth in (-π, π] of each hit from the tracking GNN's node features (r/1 m, φ/π, z/1 m)."""
    return x[:, 1] * math.pi


def phi_sectors(phi: torch.Tensor, n_parts: int, offset: float = 0.0) -> torch.Tensor:
    """(N,) φ -> (N,) rank: ``n_parts`` equal-width wedges starting at φ = -π + `offset`."""
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    turns = torch.remainder(phi + math.pi - offset, 2 * math.pi) / (2 * math.pi)  # in [0, 1)
    return (turns * n_parts).long().clamp_(max=n_parts - 1)


def _cut_edges(part: torch.Tensor, edge_index: torch.Tensor) -> int:
    return int((part[edge_index[0]] != part[edge_index[1]]).sum())


def balanced_phi_partition(phi: torch.Tensor, edge_index: torch.Tensor, n_parts: int, rotations: int = 16) -> torch.Tensor:
    """(N,) rank per node: φ wedges with equal work (1 + degree per node), rotated to cut fewest edges.

    For each of `rotations` starting angles the wedge boundaries sit at the quantiles of the cumulative
    work in φ, so every rank gets the same number of node+edge rows; the rotation with the smallest edge
    cut wins. Deterministic: every rank computes the same assignment from the same graph.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    n = len(phi)
    work = torch.ones(n, dtype=torch.float64)
    work.index_add_(0, edge_index.reshape(-1), torch.ones(edge_index.numel(), dtype=torch.float64))
    best, best_cut = None, None
    for k in range(max(rotations, 1)):
        offset = 2 * math.pi * k / max(rotations, 1) / max(n_parts, 1)  # rotations within one wedge
        turns = torch.remainder(phi.double() + math.pi - offset, 2 * math.pi)
        order = torch.argsort(turns, stable=True)
        cum = torch.cumsum(work[order], 0)
        part = torch.empty(n, dtype=torch.long)
        part[order] = ((cum - work[order] / 2) / cum[-1] * n_parts).long().clamp_(max=n_parts - 1)
        cut = _cut_edges(part, edge_index)
        if best_cut is None or cut < best_cut:
            best, best_cut = part, cut
    return best


# ----------------------------------------------------------------------------------------------------
# One rank's share of the graph
# ----------------------------------------------------------------------------------------------------


@dataclass
class GraphPartition:
    """What one rank holds. Local node order: owned nodes, then halo nodes grouped by owner rank.

    Attributes:
        x: (N_own, F) features of the owned nodes only.
        edge_index: (2, E_loc) local indices into [owned | halo] of every edge touching an owned node.
        edge_attr: (E_loc, F_e); y: (E_loc,) labels; loss_edges: (E_loc,) bool, True where this rank
            counts the edge in the loss (it owns the edge's outer hit), so each edge counts once overall.
        send_index: per peer rank, the local indices of owned nodes that peer needs as halo.
        recv_counts: per peer rank, how many halo nodes come from it (halo order = peer order).
        n_edges_total: edges in the whole graph (the loss denominator).
        owned, halo: global node ids (for diagnostics and for comparing with the full graph).
    """

    rank: int
    world_size: int
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    y: torch.Tensor
    loss_edges: torch.Tensor
    send_index: list[torch.Tensor]
    recv_counts: list[int]
    n_edges_total: int
    owned: torch.Tensor
    halo: torch.Tensor
    global_edges: torch.Tensor  # (E_loc,) index of each local edge in the full graph

    @property
    def n_owned(self) -> int:
        return len(self.owned)

    def to(self, device) -> "GraphPartition":
        move = lambda t: t.to(device)  # noqa: E731
        return GraphPartition(
            self.rank, self.world_size, move(self.x), move(self.edge_index), move(self.edge_attr), move(self.y),
            move(self.loss_edges), [move(s) for s in self.send_index], list(self.recv_counts), self.n_edges_total,
            self.owned, self.halo, self.global_edges,
        )


def _halo_of(part: torch.Tensor, edge_index: torch.Tensor, r: int) -> torch.Tensor:
    """Sorted global ids of the nodes rank `r` needs but does not own (ends of edges touching its nodes)."""
    src, dst = edge_index
    touching = (part[src] == r) | (part[dst] == r)
    ends = torch.unique(torch.cat([src[touching], dst[touching]]))
    return ends[part[ends] != r]


def partition_graph(graph: dict, part: torch.Tensor, rank: int, world_size: int) -> GraphPartition:
    """Cut `graph` (keys ``x, edge_attr, edge_index, y`` as in ``tracking_gnn.batches``) for `rank`.

    `part` (N,) is the owner rank of every node, in ``[0, world_size)`` (e.g. from `balanced_phi_partition`).
    Every rank calls this with the same `graph` and `part` and keeps only its share.
    """
    x, edge_index = graph["x"], graph["edge_index"]
    n, world = len(x), world_size
    if part.shape != (n,):
        raise ValueError(f"part must have one rank per node, shape ({n},); got {tuple(part.shape)}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world_size {world}")
    if n and (int(part.min()) < 0 or int(part.max()) >= world):
        raise ValueError(f"part holds ranks outside [0, {world}): min {int(part.min())}, max {int(part.max())}")
    src, dst = edge_index
    owned = torch.nonzero(part == rank).flatten()  # sorted global ids
    halos = [_halo_of(part, edge_index, q) for q in range(world)]
    halo = halos[rank]
    halo = halo[torch.argsort(part[halo] * n + halo)]  # grouped by owner, then id
    local_of = torch.full((n,), -1, dtype=torch.long)
    local_of[owned] = torch.arange(len(owned))
    local_of[halo] = len(owned) + torch.arange(len(halo))
    edges = torch.nonzero((part[src] == rank) | (part[dst] == rank)).flatten()
    send_index = []
    for q in range(world):  # what q needs from me, in q's halo order (sorted by id within my block)
        need = halos[q][part[halos[q]] == rank] if q != rank else halos[q][:0]
        send_index.append(local_of[torch.sort(need).values])
    recv_counts = [int((part[halo] == q).sum()) for q in range(world)]
    return GraphPartition(
        rank=rank,
        world_size=world,
        x=x[owned],
        edge_index=local_of[edge_index[:, edges]],
        edge_attr=graph["edge_attr"][edges],
        y=graph["y"][edges],
        loss_edges=part[dst[edges]] == rank,
        send_index=send_index,
        recv_counts=recv_counts,
        n_edges_total=int(edge_index.shape[1]),
        owned=owned,
        halo=halo,
        global_edges=edges,
    )


def partition_stats(graph: dict, part: torch.Tensor) -> dict[str, float]:
    """Balance and cut of a partition: edges per rank (max/mean), halo share, cut-edge share."""
    world = int(part.max()) + 1 if len(part) else 1
    src, dst = graph["edge_index"]
    local_edges = torch.tensor([int(((part[src] == r) | (part[dst] == r)).sum()) for r in range(world)], dtype=torch.float64)
    halo = torch.tensor([len(_halo_of(part, graph["edge_index"], r)) for r in range(world)], dtype=torch.float64)
    owned = torch.bincount(part, minlength=world).double()
    n_edges = max(int(graph["edge_index"].shape[1]), 1)
    return {
        "ranks": world,
        "edge_imbalance": float(local_edges.max() / local_edges.mean()),
        "cut_edge_share": _cut_edges(part, graph["edge_index"]) / n_edges,
        "halo_share": float((halo / owned.clamp(min=1)).mean()),
        "max_local_edges_share": float(local_edges.max() / n_edges),
        "max_local_nodes_share": float(((owned + halo).max()) / max(len(part), 1)),
    }


# ----------------------------------------------------------------------------------------------------
# The differentiable halo exchange
# ----------------------------------------------------------------------------------------------------


class HaloExchange(torch.autograd.Function):
    """Forward: every rank sends the rows its peers need as halo and receives its own halo rows.
    Backward: the reverse all-to-all; each owner adds the gradients its peers computed for its nodes."""

    @staticmethod
    def forward(ctx, h_owned, send_index, recv_counts, group):
        send = torch.cat(send_index)  # (S,) local ids, grouped by destination rank
        send_counts = [len(s) for s in send_index]
        ctx.save_for_backward(send)
        ctx.n_owned, ctx.send_counts, ctx.recv_counts, ctx.group = len(h_owned), send_counts, recv_counts, group
        out = h_owned.new_empty((sum(recv_counts), *h_owned.shape[1:]))  # (N_halo, H)
        dist.all_to_all_single(out, h_owned[send].contiguous(), recv_counts, send_counts, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_halo):
        (send,) = ctx.saved_tensors
        back = grad_halo.new_empty((len(send), *grad_halo.shape[1:]))  # (S, H) grads for rows I sent
        dist.all_to_all_single(back, grad_halo.contiguous(), ctx.send_counts, ctx.recv_counts, group=ctx.group)
        grad_owned = grad_halo.new_zeros((ctx.n_owned, *grad_halo.shape[1:])).index_add_(0, send, back)
        return grad_owned, None, None, None


def halo_exchange(h_owned: torch.Tensor, part: GraphPartition, group=None) -> torch.Tensor:
    """(N_own, H) -> (N_own + N_halo, H): the owned rows followed by the halo rows from their owners."""
    if part.world_size == 1:
        return h_owned
    return torch.cat([h_owned, HaloExchange.apply(h_owned, part.send_index, part.recv_counts, group)])


# ----------------------------------------------------------------------------------------------------
# Partitioned forward, loss and step for the tracking GNN
# ----------------------------------------------------------------------------------------------------


def partitioned_forward(model: nn.Module, part: GraphPartition, group=None) -> torch.Tensor:
    """Edge logits (E_loc,) of this rank's edges: `model`'s forward with a halo exchange before each layer.

    Mirrors ``InteractionNetwork.forward`` (`encode_nodes`, `encode_edges`, `layers`, `classify`),
    including its activation checkpointing, on the local graph [owned | halo].
    """
    n_own = part.n_owned
    h_own = model.encode_nodes(part.x)  # (N_own, H)
    h_edges = model.encode_edges(part.edge_attr)  # (E_loc, H)
    for layer in model.layers:
        h_local = halo_exchange(h_own, part, group)  # (N_own + N_halo, H)
        if getattr(model, "checkpointing", False) and model.training:
            from torch.utils.checkpoint import checkpoint

            h_local, h_edges = checkpoint(layer, h_local, h_edges, part.edge_index, use_reentrant=False)
        else:
            h_local, h_edges = layer(h_local, h_edges, part.edge_index)
        h_own = h_local[:n_own]  # halo rows are incomplete sums: dropped, refreshed next step
    return model.classify(h_edges)


def partitioned_loss(model: nn.Module, part: GraphPartition, group=None) -> torch.Tensor:
    """This rank's share of the full-graph loss; the shares of all ranks add up to ``tracking_gnn.loss``
    (BCE with ``model.pos_weight``, mean over all edges of the graph)."""
    logits = partitioned_forward(model, part, group)[part.loss_edges]
    pos_weight = torch.tensor(getattr(model, "pos_weight", 1.0), device=logits.device, dtype=logits.dtype)
    target = part.y[part.loss_edges].to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="sum")
    return total / part.n_edges_total


def sync_gradients(model: nn.Module, group=None) -> None:
    """Sum every parameter gradient over the ranks (each rank holds its share of the loss's gradient)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce for all
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def partitioned_step(model: nn.Module, part: GraphPartition, optimizer, group=None) -> float:
    """One optimiser step on the partitioned graph; returns the full-graph loss (same on every rank)."""
    optimizer.zero_grad(set_to_none=True)
    share = partitioned_loss(model, part, group)
    share.backward()
    sync_gradients(model, group)
    optimizer.step()
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return float(total)
