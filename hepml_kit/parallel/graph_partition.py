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

from hepml_kit.parallel.ddp import average_gradients

__all__ = [
    "GraphPartition",
    "HaloExchange",
    "HaloPlan",
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


def balanced_phi_partition(phi: torch.Tensor, edge_index: torch.Tensor, n_parts: int,
                           rotations: int = 16) -> torch.Tensor:
    """(N,) rank per node: φ wedges with equal work (1 + degree per node), rotated to cut fewest edges.

    For each of `rotations` starting angles the wedge boundaries sit at the quantiles of the cumulative
    work in φ, so every rank gets the same number of node+edge rows; the rotation with the smallest edge
    cut wins. Deterministic: every rank computes the same assignment from the same graph.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    phi, edge_index = phi.cpu(), edge_index.cpu()  # bookkeeping on the host
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
class HaloPlan:
    """Who sends which rows to whom in one halo exchange (nodes or edges).

    ``send_index[q]``: local indices of the rows this rank owns that rank q needs, in q's halo order;
    ``recv_counts[q]``: how many halo rows come from rank q (the halo is stored grouped by owner).
    """

    send_index: list[torch.Tensor]
    recv_counts: list[int]

    def to(self, device) -> HaloPlan:
        return HaloPlan([s.to(device) for s in self.send_index], list(self.recv_counts))


@dataclass
class GraphPartition:
    """What one rank holds. It *owns* some nodes and the edges whose outer hit (dst) it owns, and keeps
    their states; it also holds a two-hop halo: every edge touching an owned node or a neighbour of one,
    and every node at the end of such an edge. Local order: owned rows first, then halo rows grouped by
    owner rank. With a two-hop halo, one exchange per layer gives exact owned states for any layer that
    updates nodes then edges or edges then nodes (the tracking GNN updates nodes first).

    Attributes:
        x: (N_own, F) features of the owned nodes.
        edge_attr: (E_own, F_e), y: (E_own,) of the owned edges (each edge is owned by one rank).
        edge_index: (2, E_loc) local node indices of all local edges (owned edges first).
        nodes, edges: exchange plans for the halo node and halo edge states.
        n_edges_total: edges in the whole graph (the loss denominator).
        owned_nodes, halo_nodes, owned_edges, halo_edges: global ids, for diagnostics and tests.
    """

    rank: int
    world_size: int
    x: torch.Tensor
    edge_attr: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    nodes: HaloPlan
    edges: HaloPlan
    n_edges_total: int
    owned_nodes: torch.Tensor
    halo_nodes: torch.Tensor
    owned_edges: torch.Tensor
    halo_edges: torch.Tensor

    @property
    def n_owned_nodes(self) -> int:
        return len(self.owned_nodes)

    @property
    def n_owned_edges(self) -> int:
        return len(self.owned_edges)

    def to(self, device) -> GraphPartition:
        move = lambda t: t.to(device)  # noqa: E731
        return GraphPartition(
            self.rank, self.world_size, move(self.x), move(self.edge_attr), move(self.y),
            move(self.edge_index), self.nodes.to(device), self.edges.to(device), self.n_edges_total,
            self.owned_nodes, self.halo_nodes, self.owned_edges, self.halo_edges,
        )


def _local_sets(part: torch.Tensor, edge_index: torch.Tensor, r: int):
    """Rank r's owned nodes/edges and its two-hop halo (global ids, sorted by owner then id)."""
    n = len(part)
    src, dst = edge_index
    edge_owner = part[dst]
    own = part == r  # (N,) bool
    near = own.clone()  # owned nodes and their neighbours
    touching = own[src] | own[dst]
    near[src[touching]] = True
    near[dst[touching]] = True
    local_edge = near[src] | near[dst]  # edges touching an owned node or a neighbour of one
    ends = torch.zeros(n, dtype=torch.bool)
    ends[src[local_edge]] = True
    ends[dst[local_edge]] = True
    halo_nodes = torch.nonzero(ends & ~own).flatten()
    halo_nodes = halo_nodes[torch.argsort(part[halo_nodes] * n + halo_nodes)]
    owned_edges = torch.nonzero(edge_owner == r).flatten()
    halo_edges = torch.nonzero(local_edge & (edge_owner != r)).flatten()
    m = len(edge_owner)
    halo_edges = halo_edges[torch.argsort(edge_owner[halo_edges] * m + halo_edges)]
    return torch.nonzero(own).flatten(), halo_nodes, owned_edges, halo_edges


def _plan(owner: torch.Tensor, halos: list[torch.Tensor], owned_local: torch.Tensor, rank: int) -> HaloPlan:
    """Exchange plan for `rank`: `owner` (items,) -> rank; `halos[q]` sorted halo ids of rank q;
    `owned_local` (items,) -> local index of the item on its owner."""
    world = len(halos)
    send = [owned_local[halos[q][owner[halos[q]] == rank]] if q != rank else owned_local[:0]
            for q in range(world)]
    recv = [int((owner[halos[rank]] == q).sum()) for q in range(world)]
    return HaloPlan(send, recv)


def partition_graph(graph: dict, part: torch.Tensor, rank: int, world_size: int) -> GraphPartition:
    """Cut `graph` (keys ``x, edge_attr, edge_index, y`` as in ``tracking_gnn.batches``) for `rank`.

    `part` (N,) is the owner rank of every node, in ``[0, world_size)`` (e.g. from `balanced_phi_partition`).
    Every rank calls this with the same `graph` and `part` (a cheap O(world × E) pass; a production
    pipeline would write each rank's share to disk once) and keeps only its share, on `graph`'s device.
    """
    device = graph["x"].device
    graph = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in graph.items()}  # bookkeeping on the host
    part = part.cpu()
    x, edge_index = graph["x"], graph["edge_index"]
    n, world = len(x), world_size
    if part.shape != (n,):
        raise ValueError(f"part must have one rank per node, shape ({n},); got {tuple(part.shape)}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world_size {world}")
    if n and (int(part.min()) < 0 or int(part.max()) >= world):
        raise ValueError(f"part holds ranks outside [0, {world}): min "
                         f"{int(part.min())}, max {int(part.max())}")
    sets = [_local_sets(part, edge_index, q) for q in range(world)]
    owned_nodes, halo_nodes, owned_edges, halo_edges = sets[rank]
    edge_owner = part[edge_index[1]]
    node_local = torch.empty(n, dtype=torch.long)  # index of each node among its owner's owned nodes
    edge_local = torch.empty(len(edge_owner), dtype=torch.long)
    for q in range(world):
        node_local[sets[q][0]] = torch.arange(len(sets[q][0]))
        edge_local[sets[q][2]] = torch.arange(len(sets[q][2]))
    here = torch.full((n,), -1, dtype=torch.long)  # global node id -> local row on this rank
    here[owned_nodes] = torch.arange(len(owned_nodes))
    here[halo_nodes] = len(owned_nodes) + torch.arange(len(halo_nodes))
    local_edges = torch.cat([owned_edges, halo_edges])
    return GraphPartition(
        rank=rank,
        world_size=world,
        x=x[owned_nodes],
        edge_attr=graph["edge_attr"][owned_edges],
        y=graph["y"][owned_edges],
        edge_index=here[edge_index[:, local_edges]],
        nodes=_plan(part, [s[1] for s in sets], node_local, rank),
        edges=_plan(edge_owner, [s[3] for s in sets], edge_local, rank),
        n_edges_total=int(edge_index.shape[1]),
        owned_nodes=owned_nodes,
        halo_nodes=halo_nodes,
        owned_edges=owned_edges,
        halo_edges=halo_edges,
    ).to(device)


def partition_stats(graph: dict, part: torch.Tensor, world_size: int | None = None) -> dict[str, float]:
    """Balance and cost of a partition: cut-edge share, owned edges per rank (max/mean), and the largest
    rank's local graph (owned + two-hop halo) as a share of the full graph: its activation memory."""
    part, edge_index = part.cpu(), graph["edge_index"].cpu()
    world = world_size or (int(part.max()) + 1 if len(part) else 1)
    n_nodes, n_edges = max(len(part), 1), max(int(edge_index.shape[1]), 1)
    sets = [_local_sets(part, edge_index, q) for q in range(world)]
    owned_edges = torch.tensor([len(s[2]) for s in sets], dtype=torch.float64)
    local_nodes = torch.tensor([len(s[0]) + len(s[1]) for s in sets], dtype=torch.float64)
    local_edges = torch.tensor([len(s[2]) + len(s[3]) for s in sets], dtype=torch.float64)
    return {
        "ranks": world,
        "cut_edge_share": _cut_edges(part, edge_index) / n_edges,
        "edge_imbalance": float(owned_edges.max() / owned_edges.mean().clamp(min=1)),
        "max_local_nodes_share": float(local_nodes.max() / n_nodes),
        "max_local_edges_share": float(local_edges.max() / n_edges),
    }


# ----------------------------------------------------------------------------------------------------
# The differentiable halo exchange
# ----------------------------------------------------------------------------------------------------


class HaloExchange(torch.autograd.Function):
    """Forward: every rank sends the rows its peers need as halo and receives its own halo rows.
    Backward: the reverse all-to-all; each owner adds the gradients its peers computed for its rows."""

    @staticmethod
    def forward(ctx, owned, plan: HaloPlan, group):
        send = torch.cat(plan.send_index)  # (S,) local row ids, grouped by destination rank
        send_counts = [len(s) for s in plan.send_index]
        ctx.save_for_backward(send)
        ctx.n_owned, ctx.send_counts, ctx.recv_counts, ctx.group = (len(owned), send_counts,
                                                                    plan.recv_counts, group)
        halo = owned.new_empty((sum(plan.recv_counts), *owned.shape[1:]))  # (N_halo, H)
        dist.all_to_all_single(halo, owned[send].contiguous(), plan.recv_counts, send_counts, group=group)
        return halo

    @staticmethod
    def backward(ctx, grad_halo):
        (send,) = ctx.saved_tensors
        back = grad_halo.new_empty((len(send), *grad_halo.shape[1:]))  # (S, H): grads of the rows I sent
        dist.all_to_all_single(back, grad_halo.contiguous(), ctx.send_counts,
                               ctx.recv_counts, group=ctx.group)
        grad_owned = grad_halo.new_zeros((ctx.n_owned, *grad_halo.shape[1:])).index_add_(0, send, back)
        return grad_owned, None, None


def halo_exchange(owned: torch.Tensor, plan: HaloPlan, group=None) -> torch.Tensor:
    """(N_own, H) -> (N_own + N_halo, H): this rank's rows followed by the halo rows from their owners."""
    if len(plan.recv_counts) == 1:
        return owned
    return torch.cat([owned, HaloExchange.apply(owned, plan, group)])


# ----------------------------------------------------------------------------------------------------
# Partitioned forward, loss and step for the tracking GNN
# ----------------------------------------------------------------------------------------------------


def partitioned_forward(model: nn.Module, part: GraphPartition, group=None) -> torch.Tensor:
    """Logits (E_own,) of this rank's owned edges: `model`'s forward with one halo exchange per layer.

    Mirrors ``InteractionNetwork.forward`` (`encode_nodes`, `encode_edges`, `layers`, `classify`),
    including its activation checkpointing. Each layer runs on the local graph [owned | halo]; only the
    owned rows are kept (the halo rows' sums are incomplete) and refreshed by the next exchange.
    """
    n_nodes, n_edges = part.n_owned_nodes, part.n_owned_edges
    h_nodes = model.encode_nodes(part.x)  # (N_own, H)
    h_edges = model.encode_edges(part.edge_attr)  # (E_own, H)
    for layer in model.layers:
        nodes_local = halo_exchange(h_nodes, part.nodes, group)  # (N_own + N_halo, H)
        edges_local = halo_exchange(h_edges, part.edges, group)  # (E_own + E_halo, H)
        if getattr(model, "checkpointing", False) and model.training:
            from torch.utils.checkpoint import checkpoint

            nodes_local, edges_local = checkpoint(layer, nodes_local, edges_local, part.edge_index,
                                                  use_reentrant=False)
        else:
            nodes_local, edges_local = layer(nodes_local, edges_local, part.edge_index)
        h_nodes, h_edges = nodes_local[:n_nodes], edges_local[:n_edges]
    return model.classify(h_edges)


def partitioned_loss(model: nn.Module, part: GraphPartition, group=None) -> torch.Tensor:
    """This rank's share of the full-graph loss; the shares of all ranks add up to ``tracking_gnn.loss``
    (BCE with ``model.pos_weight``, mean over all edges of the graph)."""
    logits = partitioned_forward(model, part, group)
    pos_weight = torch.tensor(getattr(model, "pos_weight", 1.0), device=logits.device, dtype=logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, part.y.to(logits.dtype),
                                               pos_weight=pos_weight, reduction="sum")
    return total / part.n_edges_total


def sync_gradients(model: nn.Module, group=None) -> None:
    """Sum every parameter gradient over the ranks (each rank holds its share of the loss's gradient):
    `average_gradients` with ``divide=False``, one flat all-reduce."""
    average_gradients(model, group, flat=True, divide=False)


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
