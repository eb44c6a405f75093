"""Checks for curriculum/04_model_parallel's exercise: the three ideas of model parallelism, by hand.

``ex04_row_parallel(my_row_parallel)``: Megatron's row-parallel linear (partial product, then all-reduce).
``ex04_bubble(my_bubble)``: the pipeline bubble of p stages and m micro-batches.
``ex04_halo(my_halo_nodes)``: the halo of one rank's share of a graph.
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed, run_on_ranks

__all__ = ["HINTS", "ex04_bubble", "ex04_halo", "ex04_row_parallel"]

HINTS = {
    "ex04_row_parallel": "Each rank holds a slice of the input features and the matching columns of the "
    "weight, so x_shard @ w_shard.T is only a partial sum of the output. dist.all_reduce (a sum, in place) "
    "completes it on every rank. Add the bias once, after the all-reduce. A plain dist.all_reduce is "
    "exactly Megatron's g: it does not take part in autograd, so the gradient passes through unchanged "
    "(identity backward).",
    "ex04_bubble": "With p equal stages and m micro-batches, one step lasts m + p - 1 micro-batch slots "
    "per stage, and a stage computes during m of them. The idle share of the step is what is left.",
    "ex04_halo": "Find the edges with at least one end owned by `rank` (owner[src] == rank or owner[dst] "
    "== rank), collect both ends of those edges, and keep the nodes that are not owned by `rank`. Edges "
    "are directed (inner hit -> outer hit), but a node's update sums over incoming AND outgoing edges. "
    "Return them sorted, without duplicates (torch.unique sorts).",
}


# ----------------------------------------------------------------------------------------------------
# Row-parallel linear on 2 ranks
# ----------------------------------------------------------------------------------------------------


def _row_parallel_trial(fn):
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 8, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    cols = slice(rank * 8 // world, (rank + 1) * 8 // world)
    x_shard = x[:, cols].clone().requires_grad_(True)
    w_shard = weight[:, cols].clone().requires_grad_(True)
    y = fn(x_shard, w_shard, bias)
    if not torch.is_tensor(y):
        return {"error": f"returned {type(y).__name__}, expected a tensor"}
    out = {"y": y.detach().clone(), "full": x @ weight.T + bias, "partial": x[:, cols] @ weight[:, cols].T,
           "bias": bias, "x_grad": None}
    if y.requires_grad:
        y.sum().backward()
        out["x_grad"] = x_shard.grad.clone()
        out["x_grad_want"] = torch.ones(5, 6, dtype=torch.float64) @ weight[:, cols]
    return out


def ex04_row_parallel(fn, nprocs: int = 2, workers=None) -> None:
    """`fn(x_shard, w_shard, bias) -> y`: y must be the full layer's output on every rank (and its input
    gradient Megatron's: the all-reduce in the forward has an identity backward)."""
    import torch

    results = run_on_ranks(_row_parallel_trial, fn, nprocs=max(2, nprocs), workers=workers)
    n = len(results)
    for rank, r in enumerate(results):
        if "error" in r:
            raise CheckFailed(f"rank {rank}: {r['error']}")
        y, full, bias = r["y"], r["full"], r["bias"]
        if y.shape != full.shape:
            raise CheckFailed(f"rank {rank}: output shape {tuple(y.shape)}, expected the full layer's "
                              f"{tuple(full.shape)}")
        if torch.allclose(y, r["partial"] + bias) or torch.allclose(y, r["partial"]):
            raise CheckFailed(f"rank {rank} returned only its partial product: the other ranks' shares are "
                              "missing. Sum the partial outputs over the ranks (dist.all_reduce) before "
                              "returning.")
        if torch.allclose(y, full + (n - 1) * bias):
            raise CheckFailed(f"the bias was added {n} times: every rank added it before the all-reduce "
                              "summed them. Add the bias once, after the all-reduce.")
        if torch.allclose(y, (full - bias) / n + bias) or torch.allclose(y, full / n):
            raise CheckFailed("the output is the mean of the partial products, not their sum: all_reduce "
                              "with the default SUM, and do not divide by the world size")
        if not torch.allclose(y, full):
            raise CheckFailed(f"rank {rank}: the output differs from the full layer's by "
                              f"{(y - full).abs().max().item():.3g}")
        if r["x_grad"] is not None and not torch.allclose(r["x_grad"], r["x_grad_want"]):
            factor = (r["x_grad"] / r["x_grad_want"]).mean().item()
            raise CheckFailed(f"rank {rank}: the input gradient is {factor:.3g}x Megatron's. A "
                              "differentiable all-reduce (torch.distributed.nn) also sums the gradients in "
                              "backward; Megatron's g passes them through unchanged. Use the plain "
                              "dist.all_reduce on the product.")
    passed("ex04_row_parallel", f"all {n} ranks hold the full output of the split layer")


# ----------------------------------------------------------------------------------------------------
# Pipeline bubble
# ----------------------------------------------------------------------------------------------------


def ex04_bubble(fn) -> None:
    """`fn(n_stages, n_microbatches) -> float`: the idle share of a GPipe/1F1B step."""
    cases = [(1, 4), (2, 1), (2, 4), (4, 4), (4, 16), (8, 32)]
    for p, m in cases:
        got = fn(p, m)
        want = (p - 1) / (m + p - 1)
        if abs(got - want) < 1e-9:
            continue
        if abs(got - (p - 1) / m) < 1e-9:
            raise CheckFailed(f"for p={p}, m={m} you gave (p-1)/m = {got:.4g}: that is the bubble *time* "
                              "relative to the useful compute time (Megatron-LM's ratio), not the share of "
                              "the whole step. Divide the idle slots by all m + p - 1 slots.")
        if abs(got - (1 - want)) < 1e-9:
            raise CheckFailed(f"for p={p}, m={m} you gave the busy share {got:.4g}; the question asks for "
                              "the idle one")
        raise CheckFailed(f"for p={p} stages and m={m} micro-batches: got {got:.4g}, expected {want:.4g}")
    passed("ex04_bubble", "(p - 1) / (m + p - 1)")


# ----------------------------------------------------------------------------------------------------
# Halo of a graph partition
# ----------------------------------------------------------------------------------------------------


def _halo_reference(owner, edge_index, rank):
    import torch

    src, dst = edge_index
    touching = (owner[src] == rank) | (owner[dst] == rank)
    ends = torch.unique(torch.cat([src[touching], dst[touching]]))
    return ends[owner[ends] != rank]


def ex04_halo(fn) -> None:
    """`fn(owner (N,), edge_index (2, E), rank) -> sorted global ids` of the nodes `rank` needs but does not
    own."""
    import torch

    # 8 nodes on 2 ranks; directed edges inner -> outer, some crossing the cut in each direction
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1, 5, 3],
                               [1, 2, 3, 4, 5, 6, 7, 6, 2, 7]])
    for rank in (0, 1):
        got = fn(owner, edge_index, rank)
        got = torch.as_tensor(got).long()
        want = _halo_reference(owner, edge_index, rank)
        if torch.equal(got, want):
            continue
        if set(got.tolist()) == set(want.tolist()):
            raise CheckFailed(f"rank {rank}: the right nodes {sorted(want.tolist())} but in another order or "
                              "repeated; return them sorted, once each")
        if set(want.tolist()) < set(got.tolist()) and any(owner[got] == rank):
            raise CheckFailed(f"rank {rank}: your halo contains nodes this rank owns "
                              f"({got[owner[got] == rank].tolist()}); the halo is only what must come from "
                              "the other ranks")
        src, dst = edge_index
        only_out = torch.unique(dst[(owner[src] == rank) & (owner[dst] != rank)])
        only_in = torch.unique(src[(owner[dst] == rank) & (owner[src] != rank)])
        if torch.equal(got, only_out) or torch.equal(got, only_in):
            which = "outgoing" if torch.equal(got, only_out) else "incoming"
            raise CheckFailed(f"rank {rank}: you followed only {which} edges ({got.tolist()}); a node's "
                              f"update sums over incoming and outgoing edges, so the halo is {want.tolist()}")
        raise CheckFailed(f"rank {rank}: got halo {got.tolist()}, expected {want.tolist()}")
    passed("ex04_halo", "each rank knows which neighbours it must receive")
