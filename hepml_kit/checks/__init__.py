"""Exercise checks: ``from hepml_kit import checks as check`` then ``check.ex02_allreduce(my_allreduce)``.

Each lesson's checks live in their own module here (``ex00.py``, ``ex02.py``, ...), which defines check
functions named ``exNN_<what>`` and a ``HINTS`` dict keyed by those names. A check runs the learner's
code, prints a one-line pass message, and on a wrong answer raises `CheckFailed` saying what is wrong.
`hint("ex02")` prints the hints of an exercise without revealing the solution.
"""

from __future__ import annotations

import importlib
import pkgutil


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says how."""


def passed(name: str, detail: str = "") -> None:
    print(f"✔ {name} passed" + (f": {detail}" if detail else ""))


def call(fn, *args, show_args: bool = True):
    """Run the learner's `fn`: its unfinished stub's `NotImplementedError` passes through, any other error
    becomes `CheckFailed` naming it (and the arguments, unless `show_args=False`: big tensors)."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001 - the learner's error, reported
        where = f" for arguments {args}" if show_args else ""
        raise CheckFailed(f"your code raised {type(e).__name__}: {e}{where}") from None


def run_on_ranks(fn, *args, nprocs: int = 2, timeout: float = 120.0, workers=None, **kwargs) -> list:
    """`hepml_kit.launch` (or `workers.run` on a warm pool) for checks: the learner's unfinished stub surfaces
    as `NotImplementedError`, any other failure on a rank as `CheckFailed` naming the rank and its error."""
    import hepml_kit as hk

    try:
        if workers is not None:
            return workers.run(fn, *args, timeout=timeout, **kwargs)
        return hk.launch(fn, *args, nprocs=nprocs, timeout=timeout, **kwargs)
    except hk.WorkerError as e:
        last = {r: e.failures[r].strip().splitlines()[-1] for r in e.root_ranks}
        if all(line.startswith("NotImplementedError") for line in last.values()):
            raise NotImplementedError("the exercise is not filled in yet (it raised "
                                      "NotImplementedError on every rank); "
                                      "replace the stub with your code") from None
        detail = "; ".join(f"rank {r}: {line}" for r, line in last.items())
        raise CheckFailed(f"your code raised on the ranks: {detail}") from None


def _modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ex"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def all_hints() -> dict[str, str]:
    hints = {}
    for mod in _modules():
        hints.update(getattr(mod, "HINTS", {}))
    return hints


def hint(exercise: str) -> None:
    """Print the hints for an exercise (``"ex02"`` or ``"ex02_allreduce"``)."""
    hints = {k: v for k, v in all_hints().items() if k == exercise or k.startswith(exercise + "_")}
    if not hints:
        raise KeyError(f"no hints for {exercise!r}; known: {', '.join(sorted(all_hints()))}")
    for name, text in hints.items():
        print(f"hint for {name}: {text}")


def __getattr__(name: str):
    if name.startswith("ex"):
        for mod in _modules():
            if hasattr(mod, name):
                return getattr(mod, name)
    raise AttributeError(f"hepml_kit.checks has no check {name!r}")
