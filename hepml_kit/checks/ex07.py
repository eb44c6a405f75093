"""Checks for curriculum/07_ensembles's exercises: split a farm statically, and pick the models to train
again.

``ex07_static_share(my_jobs)``: ``my_jobs(jobs, rank, world_size) -> list``, this rank's share of the jobs
when they are split once, up front: every job on exactly one rank, shares differing by at most one job.
``ex07_to_retrain(models_to_retrain)``: ``models_to_retrain(table) -> list[(particle, eta_bin)]``, the models
of a farm table that failed or missed the physics threshold (``status != "done"`` or not ``threshold_met``).
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed

__all__ = ["ex07_static_share", "ex07_to_retrain", "HINTS"]

HINTS = {
    "ex07_static_share": "A slice with a start and a step can give rank r the jobs r, r + N, r + 2N, ... "
    "Contiguous blocks work too, but then the remainder must go somewhere: 10 jobs on 4 ranks are 3+3+2+2, "
    "not 2+2+2+2.",
    "ex07_to_retrain": "A model needs another go when it did not finish (status is 'failed' or 'pending') or "
    "when it finished below the bar (threshold_met is False). The table's index is (particle, eta_bin): "
    "return those index tuples, e.g. with a boolean mask and .index.",
}


def ex07_static_share(fn) -> None:
    """Split 10 jobs over 1-4 ranks and 3 jobs over 4 ranks with the learner's function."""
    for n_jobs, world in [(10, 1), (10, 2), (10, 3), (10, 4), (3, 4)]:
        jobs = [f"job{i}" for i in range(n_jobs)]
        shares = []
        for rank in range(world):
            share = fn(list(jobs), rank, world)
            if share is None:
                raise CheckFailed("your function returned None; return this rank's list of jobs")
            shares.append(list(share))
        flat = [j for s in shares for j in s]
        if len(flat) > n_jobs and all(sorted(s) == sorted(jobs) for s in shares):
            raise CheckFailed("every rank got all the jobs: each model would be trained world_size times")
        missing = sorted(set(jobs) - set(flat), key=jobs.index)
        if missing:
            raise CheckFailed(f"{n_jobs} jobs on {world} ranks: {missing} went to no "
                              "rank (the remainder of the division?)")
        if len(flat) != len(set(flat)):
            raise CheckFailed(f"{n_jobs} jobs on {world} ranks: some job is on two ranks ({shares})")
        sizes = [len(s) for s in shares]
        if max(sizes) - min(sizes) > 1:
            raise CheckFailed(f"{n_jobs} jobs on {world} ranks gave shares of {sizes} jobs: balance them "
                              "(differ by at most one)")
    passed("ex07_static_share", "every job on exactly one rank, balanced, for 1-4 ranks")


def _table():
    import pandas as pd

    rows = [("photon", 0, "done", True), ("photon", 1, "done", False), ("electron", 0, "failed", None),
            ("electron", 1, "done", True), ("pion", 0, "pending", None), ("pion", 1, "done", True)]
    df = pd.DataFrame(rows, columns=["particle", "eta_bin", "status", "threshold_met"])
    return df.set_index(["particle", "eta_bin"])


def ex07_to_retrain(fn) -> None:
    """Run the learner's selection on a table with done, failed, pending and below-threshold models."""
    table = _table()
    got = fn(table.copy())
    if got is None:
        raise CheckFailed("your function returned None; return a list of (particle, eta_bin) tuples")
    got = sorted(tuple(x) for x in got)
    expected = sorted([("photon", 1), ("electron", 0), ("pion", 0)])
    if got == sorted([("electron", 0)]):
        raise CheckFailed("only the failed model: a pending model (never ran) and one that finished below "
                          "the threshold need training too")
    if got == sorted([("electron", 0), ("pion", 0)]):
        raise CheckFailed("a model that finished with threshold_met False is not good enough either")
    if ("photon", 0) in got or ("electron", 1) in got:
        raise CheckFailed(f"{got} includes models that are done and good: retrain only what needs it")
    if got != expected:
        raise CheckFailed(f"expected {expected}, got {got}")
    passed("ex07_to_retrain", "failed, pending and below-threshold models selected, good ones kept")
