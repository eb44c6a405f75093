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
