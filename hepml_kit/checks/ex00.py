"""Checks for curriculum/00_setup's exercise: average a tensor across ranks."""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed, run_on_ranks

__all__ = ["ex00_average", "HINTS"]

HINTS = {
    "ex00_average": "dist.all_reduce(t) sums t over ranks in place (clone it first if "
                    "you must not modify the "
    "input); the mean is that sum divided by dist.get_world_size().",
}


def _trial(fn):
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    t = torch.tensor([1.0 + rank, 10.0 * (rank + 1)])
    out = fn(t)
    return {"out": None if out is None else torch.as_tensor(out).tolist(), "input_after": t.tolist()}


def ex00_average(fn, nprocs: int = 2) -> None:
    """Run the learner's `fn(t)` on `nprocs` ranks and compare with the mean over ranks."""
    n = max(2, nprocs)
    results = run_on_ranks(_trial, fn, nprocs=n)
    expected = [sum(1.0 + r for r in range(n)) / n, sum(10.0 * (r + 1) for r in range(n)) / n]
    for rank, res in enumerate(results):
        out = res["out"]
        if out is None:
            raise CheckFailed(f"rank {rank}: your function returned None; return the averaged tensor")
        if [round(x, 5) for x in out] == [round(x * n, 5) for x in expected]:
            raise CheckFailed(f"rank {rank} got {out}, {n}x the mean {expected}: that is the sum over ranks. "
                              "Divide by the world size.")
        own = [1.0 + rank, 10.0 * (rank + 1)]
        if [round(x, 5) for x in out] == own:
            raise CheckFailed(f"rank {rank} got back its own tensor {own}: no communication happened. "
                              "Use dist.all_reduce.")
        if any(abs(a - b) > 1e-5 for a, b in zip(out, expected)):
            raise CheckFailed(f"rank {rank} got {out}, expected the mean over ranks {expected}")
    passed("ex00_average", f"every one of {n} ranks got the mean {expected}")
