"""Helpers every lesson notebook uses: validate its parameters cell, pick its device, record its key numbers.

Taught nowhere; used by every lesson (see curriculum/README.md for the conventions).
"""

from __future__ import annotations

import atexit
import difflib
import json
import os
import shutil
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SCALES = ("tiny", "small", "full")
RECORD_ENV = "HEPML_KIT_RECORD"  # set by `hepml-kit curriculum run`: where `record` appends JSON lines
_PARAMETERS: dict = {}  # the running lesson's validated parameters (`record(..., assumes=...)` reads them)


class ParameterError(ValueError):
    """A lesson parameter has a bad value or is not declared by the lesson."""


@dataclass(frozen=True)
class Param:
    """A parameter rule: a check that returns an error string (or None) for a value."""

    describe: str
    check: Callable[[Any], str | None]


def _because(why: str) -> str:
    return f" ({why})" if why else ""


def choice(*options, why: str = "") -> Param:
    """One of `options`; `why` says what limits them, e.g. ``choice(1, 2, 4, why="NPROCS must divide the 4
    attention heads")``, and is shown with the error."""
    return Param(f"one of {options}",
                 lambda v: None if v in options else f"must be one of {options}{_because(why)}")


def integer(lo: int | None = None, hi: int | None = None, why: str = "") -> Param:
    """An integer in ``[lo, hi]``; `why` (shown with the error) says where the bounds come from."""
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {type(v).__name__} {v!r}"
        if lo is not None and v < lo:
            return f"must be >= {lo}{_because(why)}"
        if hi is not None and v > hi:
            return f"must be <= {hi}{_because(why)}"
        return None

    return Param(f"integer in [{lo}, {hi}]", check)


def number(lo: float | None = None, hi: float | None = None) -> Param:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {type(v).__name__} {v!r}"
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return Param(f"number in [{lo}, {hi}]", check)


def boolean() -> Param:
    return Param("True or False",
                 lambda v: None if isinstance(v, bool) else f"must be True or False, got {v!r}")


def text() -> Param:
    return Param("a string", lambda v: None if isinstance(v, str) else f"must be a string, got {v!r}")


def _is_parameter_like(name: str, value) -> bool:
    return (
        name.isupper()
        and not name.startswith("_")
        and not isinstance(value, (types.ModuleType, types.FunctionType, type))
    )


def validate_parameters(namespace: dict, **rules: Param) -> dict:
    """Check a lesson's parameters before any heavy work.

    Every UPPER_CASE name in `namespace` (the notebook's ``globals()``) must be declared in `rules`, so a
    misspelt ``papermill -p NPROC 4`` (which papermill only warns about) stops here with a clear message;
    so does a name that differs from a declared one only in case (``-p seed 7``: "did you mean SEED?").
    Returns the validated parameters as a dict.
    """
    errors = []
    folded = {r.lower(): r for r in rules}
    for name, value in namespace.items():
        if name in rules:
            continue
        # `-p seed 7` under papermill injects a lower-case name: caught when it folds onto a declared one
        if (_is_parameter_like(name, value)
                or name.lower() in folded and _is_parameter_like(name.upper(), value)):
            close = (folded.get(name.lower())
                     or next(iter(difflib.get_close_matches(name.upper(), rules, 1, 0.75)), None))
            hint = f"; did you mean {close}?" if close else ""
            errors.append(f"{name}: not a parameter of this lesson{hint} (declared: "
                          f"{', '.join(sorted(rules))})")
    values = {}
    for name, rule in rules.items():
        if name not in namespace:
            errors.append(f"{name}: missing from the parameters cell")
            continue
        problem = rule.check(namespace[name])
        if problem:
            errors.append(f"{name}={namespace[name]!r}: {problem}")
        values[name] = namespace[name]
    if errors:
        raise ParameterError("bad lesson parameters:\n  " + "\n  ".join(errors))
    print("parameters: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    _PARAMETERS.clear()
    _PARAMETERS.update(values)
    return values


_reaper = None  # one watchdog per kernel for every scratch folder (`hepml_kit.launch.reaper`)


def scratch(prefix: str) -> str:
    """A fresh temporary folder for a lesson's files, removed when the kernel exits (also after an error
    under papermill), so no lesson leaves folders behind in /tmp.

    Removed twice over: by an atexit handler, and by a watchdog process once the kernel is gone. The
    watchdog is what works when the kernel is killed: a kernel that takes longer than jupyter_client's
    shutdown_wait_time (5 s) to stop its servers and pools is SIGKILLed, and atexit handlers registered
    first -- a lesson's scratch folder, made in its first cells -- run last, so they would be skipped."""
    global _reaper
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    try:
        if _reaper is None:
            from hepml_kit.launch.reaper import Reaper

            _reaper = Reaper()
        _reaper.watch_dir(path)
    except OSError:  # no watchdog (process limit): atexit still removes the folder on a normal exit
        pass
    return path


def record(name: str, value: float, *, unit: str = "", goal: str | None = None, passed: bool | None = None,
           assumes: dict | None = None) -> None:
    """Show a lesson's key number and, under `hepml-kit curriculum run`, append it to the run summary.

    Args:
        name: what was measured, e.g. ``"ddp_speedup"``.
        value: the measured number.
        unit: its unit, for the summary table.
        goal: what the lesson claims, e.g. ``">= 1.5"``; evaluated against `value` unless `passed` is given.
        passed: explicit pass/fail when the goal is not a simple comparison.
        assumes: the parameter values the claim is made for, e.g. ``{"CLIENTS": 8}``: with other values the
            number is shown and recorded, the goal is not judged (and the output says so).
    """
    value = float(value)  # numpy scalars and 0-d tensors too
    differ = {k: _PARAMETERS[k] for k, v in (assumes
                                             or {}).items() if k in _PARAMETERS and _PARAMETERS[k] != v}
    if differ:
        print(f"({name}: the goal {goal} is claimed for "
              f"{', '.join(f'{k}={v!r}' for k, v in assumes.items())}; not judged at "
              f"{', '.join(f'{k}={v!r}' for k, v in differ.items())})")
        goal, passed = None, None
    if passed is None and goal is not None:
        passed = _meets(value, goal)
    passed = None if passed is None else bool(passed)
    status = "" if passed is None else ("  PASS" if passed else "  FAIL")
    print(f"{name} = {value:.4g} {unit}".rstrip() + (f"  (goal {goal})" if goal else "") + status)
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, "value": float(value), "unit": unit, "goal": goal,
                                "passed": passed}) + "\n")


def _meets(value: float, goal: str) -> bool:
    goal = goal.strip()
    for op in (">=", "<=", ">", "<"):
        if goal.startswith(op):
            bound = float(goal[len(op) :])
            return {">=": value >= bound, "<=": value <= bound, ">": value > bound, "<": value < bound}[op]
    raise ValueError(f"goal {goal!r} must start with >=, <=, > or <")
