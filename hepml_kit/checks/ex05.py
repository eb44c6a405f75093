"""Checks for curriculum/05_hybrid's exercise: the rank grid and who sees which data.

``ex05_groups(my_groups)``: the dp, pp and tp groups of a rank in the grid ``arange(world).view(dp, pp, tp)``.
``ex05_local_batch(my_local_batch)``: in data × tensor parallelism, the batch a rank trains on.
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed

__all__ = ["HINTS", "ex05_groups", "ex05_local_batch"]

HINTS = {
    "ex05_groups": "grid = torch.arange(world).view(dp, pp, tp); find the rank's coordinates (d, p, t) "
    "with (grid == rank).nonzero(). Its tp group varies the last index: grid[d, p, :]; its pp group the "
    "middle one: grid[d, :, t]; its dp group the first one: grid[:, p, t]. Return lists of ints "
    "(.tolist()).",
    "ex05_local_batch": "The tensor-parallel ranks of one replica split the *model*, so they must all see "
    "the same samples; the replicas (dp) split the *data*. Shard by the data-parallel coordinate only: "
    "v[dp_rank::dp] for every tensor, whatever tp_rank is.",
}


def _grid_reference(world, dp, pp, tp, rank):
    import torch

    grid = torch.arange(world).view(dp, pp, tp)
    d, p, t = (int(c) for c in torch.nonzero(grid == rank)[0])
    return {"dp": grid[:, p, t].tolist(), "pp": grid[d, :, t].tolist(), "tp": grid[d, p, :].tolist()}


def ex05_groups(fn) -> None:
    """`fn(world, dp, pp, tp, rank) -> {"dp": [...], "pp": [...], "tp": [...]}` for several layouts."""
    for dp, pp, tp in ((2, 1, 2), (2, 2, 1), (2, 2, 2), (4, 2, 2), (1, 1, 4)):
        world = dp * pp * tp
        for rank in range(world):
            got = fn(world, dp, pp, tp, rank)
            if not isinstance(got, dict) or set(got) != {"dp", "pp", "tp"}:
                raise CheckFailed('return a dict with the keys "dp", "pp" and "tp"')
            got = {k: [int(r) for r in v] for k, v in got.items()}
            want = _grid_reference(world, dp, pp, tp, rank)
            if got == want:
                continue
            if got["tp"] == want["dp"] and got["dp"] == want["tp"] and want["dp"] != want["tp"]:
                raise CheckFailed(f"rank {rank} of dp={dp} × pp={pp} × tp={tp}: your dp and tp groups are "
                                  "swapped. tp is the fastest-varying axis: neighbouring ranks (the GPUs "
                                  "of one node, on NVLink) form a tp group, because tensor parallelism "
                                  "communicates every layer.")
            if rank not in got["dp"] or rank not in got["pp"] or rank not in got["tp"]:
                raise CheckFailed(f"rank {rank} of dp={dp} × pp={pp} × tp={tp}: a rank belongs to each of "
                                  f"its own groups; got {got}")
            for dim in ("dp", "pp", "tp"):
                if got[dim] != want[dim]:
                    raise CheckFailed(f"rank {rank} of dp={dp} × pp={pp} × tp={tp}: {dim} group {got[dim]}, "
                                      f"expected {want[dim]} (grid = arange({world}).view({dp}, {pp}, {tp}))")
    passed("ex05_groups", "the dp, pp and tp groups are the grid's lines")


def ex05_local_batch(fn) -> None:
    """`fn(batch, dp_rank, dp, tp_rank, tp) -> dict`: the samples a rank of a dp × tp layout trains on."""
    import torch

    batch = {"x": torch.arange(12), "y": torch.arange(12) * 10}
    dp, tp = 2, 2
    for d in range(dp):
        for t in range(tp):
            got = fn(dict(batch), d, dp, t, tp)
            if not isinstance(got, dict):
                raise CheckFailed(f"return a dict like the batch, got {type(got).__name__}")
            x = torch.as_tensor(got["x"]).tolist()
            want = list(range(d, 12, dp))
            rank = d * tp + t
            if x == list(range(rank, 12, dp * tp)):
                raise CheckFailed(f"rank (dp {d}, tp {t}) got samples {x}: you sharded by the global rank, "
                                  "so the two tensor-parallel halves of one replica see different jets and "
                                  "combine garbage. Shard by the data-parallel coordinate only.")
            if x == list(range(t, 12, tp)) and t != d:
                raise CheckFailed(f"rank (dp {d}, tp {t}) got samples {x}: sharded by the tensor-parallel "
                                  "coordinate; the tp ranks must share one batch, the dp replicas split it")
            if x != want:
                raise CheckFailed(f"rank (dp {d}, tp {t}): got samples {x}, expected {want}")
            if torch.as_tensor(got["y"]).tolist() != [10 * i for i in want]:
                raise CheckFailed("every tensor of the batch must be split the same way (check 'y')")
    passed("ex05_local_batch", "tp peers share a batch, dp replicas split it")
