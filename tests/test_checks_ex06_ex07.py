"""Checks of exercises 06 and 07: solutions pass, plausible wrong answers fail with a useful message."""

import math

import pytest

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed

# ---- ex06 ------------------------------------------------------------------------------------------------

def best_so_far_solution(history, maximize):
    out = history.copy()
    out["compute"] = range(1, len(out) + 1)
    out["best_so_far"] = out["value"].cummax() if maximize else out["value"].cummin()
    return out


def best_so_far_always_max(history, maximize):
    return best_so_far_solution(history, True)


def best_so_far_per_trial(history, maximize):
    out = history.copy()
    out["compute"] = range(1, len(out) + 1)
    out["best_so_far"] = out.groupby("trial")["value"].cummax()
    return out


def best_so_far_from_zero(history, maximize):
    out = best_so_far_solution(history, maximize)
    out["compute"] = range(len(out))
    return out


def reach_solution(history, target, maximize):
    hit = history["best_so_far"] >= target if maximize else history["best_so_far"] <= target
    return float(history["compute"][hit].iloc[0]) if hit.any() else float("nan")


def reach_total_if_never(history, target, maximize):
    got = reach_solution(history, target, maximize)
    return float(history["compute"].iloc[-1]) if math.isnan(got) else got


def reach_strict(history, target, maximize):
    hit = history["best_so_far"] > target if maximize else history["best_so_far"] < target
    return float(history["compute"][hit].iloc[0]) if hit.any() else float("nan")


def reach_row_position(history, target, maximize):
    hit = (history["best_so_far"] >= target if maximize else history["best_so_far"] <= target).tolist()
    return float(hit.index(True)) if True in hit else float("nan")


def test_ex06_solutions_pass(capsys):
    check.ex06_best_so_far(best_so_far_solution)
    check.ex06_compute_to_reach(reach_solution)
    assert capsys.readouterr().out.count("passed") == 2


@pytest.mark.parametrize("fn, message", [
    (best_so_far_always_max, "smallest value so far"),
    (best_so_far_per_trial, "restarts with every trial"),
    (best_so_far_from_zero, "1..9"),
    (lambda h, m: None, "returned None"),
])
def test_ex06_best_so_far_wrong_answers(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex06_best_so_far(fn)


@pytest.mark.parametrize("fn, message", [
    (reach_total_if_never, "return nan"),
    (reach_strict, "reached exactly"),
    (reach_row_position, "row position"),
])
def test_ex06_compute_to_reach_wrong_answers(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex06_compute_to_reach(fn)


# ---- ex07 ------------------------------------------------------------------------------------------------

def share_solution(jobs, rank, world_size):
    return jobs[rank::world_size]


def share_blocks_balanced(jobs, rank, world_size):
    base, extra = divmod(len(jobs), world_size)
    start = rank * base + min(rank, extra)
    return jobs[start:start + base + (rank < extra)]


def share_blocks_drop_remainder(jobs, rank, world_size):
    n = len(jobs) // world_size
    return jobs[rank * n:(rank + 1) * n]


def share_last_takes_rest(jobs, rank, world_size):
    n = len(jobs) // world_size
    return jobs[rank * n:] if rank == world_size - 1 else jobs[rank * n:(rank + 1) * n]


def retrain_solution(table):
    return list(table.index[(table["status"] != "done") | (table["threshold_met"] == False)])  # noqa: E712


def retrain_failed_only(table):
    return list(table.index[table["status"] == "failed"])


def retrain_not_done(table):
    return list(table.index[table["status"] != "done"])


def test_ex07_solutions_pass(capsys):
    check.ex07_static_share(share_solution)
    check.ex07_static_share(share_blocks_balanced)
    check.ex07_to_retrain(retrain_solution)
    assert capsys.readouterr().out.count("passed") == 3


@pytest.mark.parametrize("fn, message", [
    (share_blocks_drop_remainder, "went to no rank"),
    (share_last_takes_rest, "balance them"),
    (lambda jobs, rank, world_size: list(jobs), "every rank got all the jobs"),
])
def test_ex07_static_share_wrong_answers(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex07_static_share(fn)


@pytest.mark.parametrize("fn, message", [
    (retrain_failed_only, "pending model"),
    (retrain_not_done, "threshold_met False"),
    (lambda table: list(table.index), "done and good"),
])
def test_ex07_to_retrain_wrong_answers(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex07_to_retrain(fn)


def test_hints_exist_without_solutions(capsys):
    check.hint("ex06")
    check.hint("ex07")
    out = capsys.readouterr().out
    assert out.count("hint for") == 4 and "r + N" in out
