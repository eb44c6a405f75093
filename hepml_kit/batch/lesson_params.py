"""Check `-p` values against a lesson's OWN rules before anything is queued.

A lesson keeps its rules in one cell: the parameters cell, then a cell calling
``lesson.validate_parameters(globals(), ...)`` (and any extra checks there). We run exactly those two cells
in a fresh namespace, with the given values put in between as papermill would inject them, in this process
and without the rest of the notebook: `-p NPROCS four` or `-p NPROCS -4` is refused at render time, not
after the queue wait. Notebooks without such a cell are only checked for declared names.
"""

from __future__ import annotations

import contextlib
import difflib
import io
from pathlib import Path

from hepml_kit.batch.quoting import BatchError

__all__ = ["check_parameters", "curriculum_dir", "declared_parameters", "near_miss"]


def curriculum_dir() -> Path:
    """The lessons' folder: ``$HEPML_KIT_CURRICULUM`` or ``curriculum/`` of the checkout the kit runs from.
    Lessons name their files relative to it, so they run from any working directory."""
    import os

    folder = Path(os.environ.get("HEPML_KIT_CURRICULUM")
                  or Path(__file__).resolve().parents[2] / "curriculum")
    if not folder.is_dir():
        raise FileNotFoundError(f"no lesson folder at {folder}: set HEPML_KIT_CURRICULUM to "
                                "the course's curriculum/")
    return folder


def _cells(nb: Path):
    import nbformat

    return [c for c in nbformat.read(str(nb), as_version=4).cells if c.cell_type == "code"]


def declared_parameters(nb: Path) -> list[str]:
    """The names papermill sees in the parameters cell (papermill's own parser)."""
    import papermill as pm

    try:
        return list(pm.inspect_notebook(str(nb)))
    except ValueError as e:  # e.g. no kernel name in the notebook's metadata
        raise BatchError(f"papermill cannot read {nb}'s parameters: {e}") from None


def near_miss(name: str, declared) -> str:
    """' (did you mean SEED?)' for `seed`, `Seed` or `SEDE`; '' when nothing is close."""
    declared = list(declared)
    same = [d for d in declared if d.lower() == name.lower()]
    close = same or difflib.get_close_matches(name.upper(), declared, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_parameters(nb: Path, parameters: dict) -> None:
    """Raise `BatchError` if `parameters` are undeclared or the lesson's validation cell refuses them."""
    declared = declared_parameters(nb)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        hints = "; ".join(f"{u}{near_miss(u, declared)}" for u in unknown)
        raise BatchError(f"{nb.name} declares no parameter {hints} "
                         f"(its parameters cell declares: {', '.join(declared) or 'nothing'})")
    cells = _cells(nb)
    first = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), None)
    if first is None:
        return
    rules = next((c for c in cells[first + 1:first + 3] if "validate_parameters(" in c.source), None)
    if rules is None:
        return
    namespace: dict = {"__name__": "__lesson_parameters__"}
    from hepml_kit.teach.lesson import ParameterError

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # the lesson's own two cells, from the notebook the user asked to run: no new code is trusted here
            exec(compile(cells[first].source, f"{nb.name}:parameters", "exec"), namespace)  # noqa: S102
            namespace.update(parameters)
            exec(compile(rules.source, f"{nb.name}:validation", "exec"), namespace)  # noqa: S102
    except (ParameterError, ValueError, TypeError) as e:
        reason = str(e).replace("bad lesson parameters:", "").strip()
        raise BatchError(f"{nb.name} refuses these parameters: {reason}") from None
    except Exception as e:  # noqa: BLE001 -- the cell needs more than its rules: a lesson bug, named as such
        raise BatchError(f"could not evaluate {nb.name}'s validation cell: {type(e).__name__}: {e}") from None
