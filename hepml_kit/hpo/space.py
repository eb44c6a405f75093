"""One search-space definition that runs unchanged on Optuna and on Ray Tune.

A space maps each hyperparameter name to one of three kinds::

    space = SearchSpace({
        "lr": Float(1e-4, 1e-1, log=True),          # continuous, log-uniform
        "hidden": Int(8, 64, step=8),               # integers (optionally on a step, or log-spaced)
        "activation": Categorical(["relu", "gelu"]),
    })

or, in the plain dict form (handy in notebooks and config files)::

    space = SearchSpace.from_dict({
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
        "hidden": {"low": 8, "high": 64, "step": 8},   # both bounds int -> Int
        "activation": ["relu", "gelu"],                # a list -> Categorical
    })

The same object gives Optuna's `suggest_*` calls (`suggest`), Optuna distributions (`optuna_distributions`,
also what Ray's `OptunaSearch` takes), Ray Tune domains (`ray_param_space`) and the grid for grid search
(`grid`): each parameter has a grid, either given (``grid=[...]``) or ``points`` evenly (log-)spaced values.

Taught in curriculum/06_hpo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Categorical", "Float", "Int", "SearchSpace", "SearchSpaceError"]

_CATEGORY_TYPES = (type(None), bool, int, float, str)  # what Optuna can store


class SearchSpaceError(ValueError):
    """The search space is empty or inconsistent; raised before any trial starts."""


@dataclass(frozen=True)
class Float:
    """A real-valued hyperparameter in [low, high]; ``log=True`` samples log-uniformly."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    grid: tuple | None = None
    points: int = 3

    def problems(self, name: str) -> list[str]:
        out = _range_problems(name, self.low, self.high, self.log, self.step, self.points)
        if self.log and self.step is not None:
            out.append(f"{name}: a log-uniform Float cannot have a step (Optuna forbids it)")
        out += _grid_problems(name, self.grid, lambda v: self.low <= v <= self.high)
        return out

    def grid_values(self) -> list[float]:
        if self.grid is not None:
            return list(self.grid)
        return _spaced(self.low, self.high, self.points, self.log)


@dataclass(frozen=True)
class Int:
    """An integer hyperparameter in [low, high] (both included), optionally on a `step` or log-spaced."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    grid: tuple | None = None
    points: int = 3

    def problems(self, name: str) -> list[str]:
        out = []
        for what, v in (("low", self.low), ("high", self.high), ("step", self.step)):
            if isinstance(v, bool) or not isinstance(v, int):
                out.append(f"{name}: Int {what} must be an integer, got {v!r}")
        if out:
            return out
        out += _range_problems(name, self.low, self.high, self.log, self.step, self.points)
        if self.log and self.step != 1:
            out.append(f"{name}: a log-spaced Int must have step 1 (Optuna and Ray both require it)")

        def on_step(v):
            return isinstance(v, int) and self.low <= v <= self.high and (v - self.low) % self.step == 0

        out += _grid_problems(name, self.grid, on_step)
        return out

    def grid_values(self) -> list[int]:
        if self.grid is not None:
            return list(self.grid)
        values = []
        for v in _spaced(self.low, self.high, self.points, self.log):
            snapped = self.low + round((v - self.low) / self.step) * self.step
            if snapped not in values:
                values.append(snapped if snapped <= self.high else snapped - self.step)
        return values


@dataclass(frozen=True)
class Categorical:
    """One of a few `choices` (numbers, strings, booleans or None)."""

    choices: tuple
    grid: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(self.grid))

    def problems(self, name: str) -> list[str]:
        out = []
        if len(self.choices) == 0:
            out.append(f"{name}: Categorical needs at least one choice")
        if len(set(map(repr, self.choices))) != len(self.choices):
            out.append(f"{name}: Categorical choices repeat: {list(self.choices)}")
        bad = [c for c in self.choices if not isinstance(c, _CATEGORY_TYPES)]
        if bad:
            out.append(f"{name}: choices must be numbers, strings, booleans or None, got {bad!r}")
        out += _grid_problems(name, self.grid, lambda v: v in self.choices)
        return out

    def grid_values(self) -> list:
        return list(self.grid if self.grid is not None else self.choices)


Param = Float | Int | Categorical


@dataclass(frozen=True)
class SearchSpace:
    """A named set of hyperparameters, validated on construction (`SearchSpaceError` if empty or
    inconsistent)."""

    params: Mapping[str, Param] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "params", dict(self.params))
        problems = []
        if not self.params:
            problems.append("the search space is empty: give at least one hyperparameter")
        for name, p in self.params.items():
            if not isinstance(name, str) or not name.isidentifier():
                problems.append(f"{name!r}: hyperparameter names must be identifiers")
            if not isinstance(p, (Float, Int, Categorical)):
                problems.append(f"{name}: expected Float, Int or Categorical, got {type(p).__name__}")
                continue
            problems += p.problems(name)
        if problems:
            raise SearchSpaceError("inconsistent search space:\n  " + "\n  ".join(problems))

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Build from the plain form: a list is categorical; a dict ``{low, high[, log, step, grid, points]}``
        is `Int` when both bounds are integers, else `Float`; a Float/Int/Categorical passes through."""
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(f"a search space is a dict of name -> range, got {type(spec).__name__}")
        params = {}
        for name, v in spec.items():
            if isinstance(v, (Float, Int, Categorical)):
                params[name] = v
            elif isinstance(v, (list, tuple)):
                params[name] = Categorical(tuple(v))
            elif isinstance(v, Mapping):
                unknown = set(v) - {"low", "high", "log", "step", "grid", "points"}
                if unknown or not {"low", "high"} <= set(v):
                    raise SearchSpaceError(
                        f"{name}: a range needs 'low' and 'high' (optional 'log', 'step', 'grid', 'points'), "
                        f"got keys {sorted(v)}"
                    )
                kw = dict(v)
                if "grid" in kw:
                    kw["grid"] = tuple(kw["grid"])
                is_int = all(isinstance(kw[k], int) and not isinstance(kw[k], bool) for k in ("low", "high"))
                params[name] = Int(**kw) if is_int else Float(**kw)
            else:
                raise SearchSpaceError(f"{name}: give a list (categorical) or a dict "
                                       f"with low/high, got {v!r}")
        return cls(params)

    # --- views ---------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.params)

    def to_dict(self) -> dict:
        """The plain, JSON-able form (stored with a study to recognise it later)."""
        out = {}
        for name, p in self.params.items():
            if isinstance(p, Categorical):
                out[name] = {"choices": list(p.choices), "grid": None if p.grid is None else list(p.grid)}
            else:
                out[name] = {
                    "kind": type(p).__name__, "low": p.low, "high": p.high, "log": p.log, "step": p.step,
                    "grid": None if p.grid is None else list(p.grid), "points": p.points,
                }
        return out

    def fingerprint(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def grid(self) -> dict[str, list]:
        """Grid-search values per hyperparameter (for `optuna.samplers.GridSampler` or `tune.grid_search`)."""
        return {name: p.grid_values() for name, p in self.params.items()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def subset(self, names) -> SearchSpace:
        missing = [n for n in names if n not in self.params]
        if missing:
            raise SearchSpaceError(f"not in the search space: {missing}; it has {self.names}")
        return SearchSpace({n: self.params[n] for n in names})

    # --- Optuna --------------------------------------------------------------------------------------
    def suggest(self, trial) -> dict[str, Any]:
        """Ask an `optuna.Trial` for one value of every hyperparameter."""
        out = {}
        for name, p in self.params.items():
            if isinstance(p, Float):
                out[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, Int):
                out[name] = trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
            else:
                out[name] = trial.suggest_categorical(name, list(p.choices))
        return out

    def optuna_distributions(self) -> dict:
        """`optuna.distributions` for each hyperparameter (also what `ray.tune.search.optuna.OptunaSearch`
        takes)."""
        from optuna import distributions as d

        out = {}
        for name, p in self.params.items():
            if isinstance(p, Float):
                out[name] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, Int):
                out[name] = d.IntDistribution(p.low, p.high, log=p.log, step=p.step)
            else:
                out[name] = d.CategoricalDistribution(list(p.choices))
        return out

    # --- Ray Tune ------------------------------------------------------------------------------------
    def ray_param_space(self, grid: bool = False) -> dict:
        """Ray Tune domains (`tune.loguniform`, `tune.randint`, ...); with ``grid=True`` `tune.grid_search`
        lists."""
        from ray import tune

        if grid:
            return {name: tune.grid_search(values) for name, values in self.grid().items()}
        out = {}
        for name, p in self.params.items():
            if isinstance(p, Float):
                if p.step is not None:
                    out[name] = (tune.qloguniform if p.log else tune.quniform)(p.low, p.high, p.step)
                else:
                    out[name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
            elif isinstance(p, Int):
                if p.log:
                    out[name] = tune.lograndint(p.low, p.high + 1)  # upper bound exclusive
                elif p.step != 1:
                    out[name] = tune.qrandint(p.low, p.high, p.step)  # upper bound inclusive
                else:
                    out[name] = tune.randint(p.low, p.high + 1)
            else:
                out[name] = tune.choice(list(p.choices))
        return out


def _range_problems(name, low, high, log, step, points) -> list[str]:
    out = []
    for what, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(f"{name}: {what} must be a finite number, got {v!r}")
    if out:
        return out
    if not low < high:
        out.append(f"{name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        out.append(f"{name}: a log range needs low > 0, got low={low}")
    if step is not None and (not step > 0 or (high - low) < step):
        out.append(f"{name}: step {step} must be > 0 and fit in [{low}, {high}]")
    if not (isinstance(points, int) and points >= 1):
        out.append(f"{name}: points (grid values when no grid is given) must be an "
                   f"integer >= 1, got {points!r}")
    return out


def _grid_problems(name, grid, inside) -> list[str]:
    if grid is None:
        return []
    if len(grid) == 0:
        return [f"{name}: an explicit grid needs at least one value"]
    outside = [v for v in grid if not inside(v)]
    return [f"{name}: grid values {outside} are outside the range"] if outside else []


def _spaced(low, high, n, log) -> list[float]:
    if n == 1:
        return [math.sqrt(low * high) if log else (low + high) / 2]
    if log:
        a, b = math.log(low), math.log(high)
        inner = [math.exp(a + (b - a) * i / (n - 1)) for i in range(1, n - 1)]
    else:
        inner = [low + (high - low) * i / (n - 1) for i in range(1, n - 1)]
    return [low, *inner, high]  # exact end points: no rounding outside the range
