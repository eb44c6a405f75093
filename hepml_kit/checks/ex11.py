"""Checks for curriculum/11_debugging's exercise: find the planted bug from the pool's report alone.

`mystery_training(seed)` is a small training loop with one planted fault: at one step, one rank calls another
collective than its peers (which rank and which step depend on the seed and the world size). Run it on a pool,
read the `WorkerError`, and name the odd rank out and the collective it called.
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed

__all__ = ["HINTS", "ex11_find_the_bug", "mystery_training", "planted"]

HINTS = {
    "ex11_find_the_bug": "Read the line 'where the ranks are:': most ranks are in one "
    "collective with one number (#n); the odd rank out is in another one with the same number. Answer "
    "{'rank': that rank, 'collective': the name of what IT called, e.g. 'all_reduce' or 'broadcast'}.",
}

_STEPS = 4
_ODD_OPS = ("broadcast", "all_gather", "barrier")


def planted(seed: int, world_size: int) -> dict:
    """The truth behind `mystery_training(seed)` on `world_size` ranks: odd rank, its collective, step."""
    if world_size < 2:
        raise ValueError("the planted fault needs at least 2 ranks")
    return {"rank": 1 + seed % (world_size - 1), "collective": _ODD_OPS[seed % len(_ODD_OPS)],
            "step": 1 + seed % (_STEPS - 1)}


def mystery_training(seed: int = 0) -> float:
    """Run on every rank of a pool: averages "gradients" for a few steps; one rank goes astray once."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    bug = planted(seed, world)
    grad = torch.full((8,), float(rank))
    for step in range(_STEPS):
        if rank == bug["rank"] and step == bug["step"]:
            if bug["collective"] == "broadcast":
                dist.broadcast(grad, src=0)
            elif bug["collective"] == "all_gather":
                dist.all_gather([torch.empty_like(grad) for _ in range(world)], grad)
            else:
                dist.barrier()
            continue
        dist.all_reduce(grad)
        grad /= world
    return float(grad.sum())


def ex11_find_the_bug(answer: dict, seed: int = 0, nprocs: int = 2) -> None:
    """`answer`: ``{"rank": int, "collective": str}`` naming the odd rank out and what it called."""
    if answer is None:
        raise CheckFailed("set answer = {'rank': ..., 'collective': ...}")
    if not isinstance(answer, dict) or not {"rank", "collective"} <= set(answer):
        raise CheckFailed(f"answer must be a dict with keys 'rank' and 'collective', got {answer!r}")
    truth = planted(seed, nprocs)
    rank, op = answer["rank"], str(answer["collective"]).strip().lower().replace("allreduce", "all_reduce")
    if rank != truth["rank"]:
        if rank == 0:
            raise CheckFailed("rank 0 is where most ranks are; the planted bug is on the rank that is "
                              "somewhere else (look for the rank named alone in 'where the ranks are')")
        raise CheckFailed(f"rank {rank} is not the odd one out: which rank is in a different collective than "
                          f"the others?")
    if op == "all_reduce":
        raise CheckFailed("all_reduce is what the healthy ranks wait in; name what the odd rank called")
    if op != truth["collective"]:
        raise CheckFailed(f"right rank; but rank {rank} is not in {op!r}: read its line in the report again")
    passed("ex11_find_the_bug", f"rank {rank} called {op} where its peers called all_reduce (step "
                                f"{truth['step']}: the loop's collective #{truth['step'] + 1})")
