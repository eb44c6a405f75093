"""Checks for curriculum/06_hpo's exercises: the best-so-far curve and the compute to reach a target.

``ex06_best_so_far(best_so_far_curve)``: ``best_so_far_curve(history, maximize) -> DataFrame`` takes one row
per trained epoch (columns ``trial``, ``epoch``, ``value``) in the order the compute was spent and returns it
with ``compute`` (1, 2, ... trial-epochs) and ``best_so_far`` (the best ``value`` up to that row) added.
``ex06_compute_to_reach(compute_to_reach)``: ``compute_to_reach(history, target, maximize) -> float``, the
compute at which ``best_so_far`` first reaches ``target`` (``nan`` if never).
"""

from __future__ import annotations

import math

from hepml_kit.checks import CheckFailed, passed

__all__ = ["ex06_best_so_far", "ex06_compute_to_reach", "HINTS"]

HINTS = {
    "ex06_best_so_far": "Every row is one epoch of compute, so compute is "
                        "1..len(history). The best so far is a "
    "running maximum (or minimum when minimising) of the value column over *all* trials: pandas has cummax "
    "and cummin. Return a copy with the two columns added; keep the rows in their order.",
    "ex06_compute_to_reach": "Compare the best_so_far column with the target (>= when maximising, <= when "
    "minimising): the first row where it holds gives the compute. A target never reached has no compute: "
    "return float('nan'), not the total.",
}


def _history(values, trials=None):
    import pandas as pd

    trials = trials or [i // 3 for i in range(len(values))]
    epochs = [1 + i % 3 for i in range(len(values))]
    return pd.DataFrame({"trial": trials, "epoch": epochs, "value": values})


def ex06_best_so_far(fn) -> None:
    """Run the learner's curve on a maximised and a minimised history."""
    values = [0.5, 0.62, 0.6, 0.7, 0.3, 0.4, 0.68, 0.71, 0.69]
    cases = [(True, [0.5, 0.62, 0.62, 0.7, 0.7, 0.7, 0.7, 0.71, 0.71]),
             (False, [0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3])]
    for maximize, expected in cases:
        h = _history(values)
        out = fn(h.copy(), maximize)
        if out is None:
            raise CheckFailed("your function returned None; return the history with "
                              "'compute' and 'best_so_far'")
        for col in ("compute", "best_so_far", "value"):
            if col not in out:
                raise CheckFailed(f"the result has no column {col!r} (it has {list(out.columns)})")
        if list(out["value"]) != values:
            raise CheckFailed("the rows changed order or values: keep the history as it is, in compute order")
        if list(out["compute"]) != list(range(1, len(values) + 1)):
            raise CheckFailed(f"compute should count trial-epochs 1..{len(values)}, "
                              f"got {list(out['compute'])}")
        got = [round(float(x), 6) for x in out["best_so_far"]]
        if got == [round(x, 6) for x in values]:
            raise CheckFailed("best_so_far equals the value itself: it must be the "
                              "best value *up to* each row")
        per_trial = [round(float(x), 6) for x in h.groupby("trial")["value"].cummax()]
        if got == per_trial:
            raise CheckFailed("best_so_far restarts with every trial: it is the best over all trials so far")
        if not maximize and got == [round(x, 6) for x in cases[0][1]]:
            raise CheckFailed("with maximize=False the best is the smallest value so far (cummin)")
        if got != [round(x, 6) for x in expected]:
            raise CheckFailed(f"best_so_far (maximize={maximize}) should be {expected}, got {got}")
    passed("ex06_best_so_far", "running best over all trials, for maximised and minimised metrics")


def ex06_compute_to_reach(fn) -> None:
    """Run the learner's function on reached, exactly reached, never reached and minimised targets."""
    import pandas as pd

    h = pd.DataFrame({"compute": range(1, 7), "best_so_far": [0.5, 0.6, 0.6, 0.7, 0.8, 0.8]})
    cases = [((h, 0.65, True), 4.0, "a target between two values"),
             ((h, 0.7, True), 4.0, "a target reached exactly (>=, not >)"),
             ((h, 0.9, True), math.nan, "a target never reached"),
             ((pd.DataFrame({"compute": [10, 20, 30], "best_so_far": [3.0, 2.0, 1.5]}), 2.0, False), 20.0,
              "a minimised metric (loss), with compute not starting at 1")]
    for args, expected, what in cases:
        got = fn(*args)
        if got is None:
            raise CheckFailed("your function returned None; return the compute (a float, nan if never)")
        got = float(got)
        if math.isnan(expected):
            if not math.isnan(got):
                raise CheckFailed(f"for {what} return nan, got {got}: the total compute would claim success")
            continue
        if math.isnan(got):
            raise CheckFailed(f"for {what} the target is reached at compute {expected}, you returned nan")
        if got == expected - 1 or (what.startswith("a minimised") and got == 1):
            raise CheckFailed(f"for {what} you returned {got}: that is a row "
                              "position, use the compute column")
        if got != expected:
            raise CheckFailed(f"for {what} expected compute {expected}, got {got}")
    passed("ex06_compute_to_reach", "reached, exactly reached, never reached and minimised targets")
