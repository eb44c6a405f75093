"""The main job (`make run`): execute every lesson headless with papermill, write the executed copies and
`build/summary.md` with each lesson's key numbers and pass/fail against what the lesson claims.

Lessons report numbers through `hepml_kit.teach.lesson.record`, which appends JSON lines to the file named
by ``$HEPML_KIT_RECORD``; this runner points that variable at one file per lesson.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hepml_kit.teach.lesson import RECORD_ENV

__all__ = ["LessonResult", "run_curriculum", "write_summary"]


@dataclass
class LessonResult:
    name: str
    ok: bool
    seconds: float
    error: str = ""
    records: list[dict] = field(default_factory=list)


def _lessons(folder: Path, only: list[str] | None) -> list[Path]:
    nbs = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [p for p in nbs if any(p.stem.startswith(o) or p.stem == o for o in only)]
        if not nbs:
            raise ValueError(f"no lesson in {folder}/ matches {only}")
    return nbs


def run_curriculum(folder: Path = Path("curriculum"), out: Path = Path("build"), scale: str = "tiny",
                   only: list[str] | None = None, timeout: float = 600.0, parameters: dict | None = None,
                   log=lambda msg: print(msg, flush=True)) -> list[LessonResult]:
    import papermill as pm

    if scale not in ("tiny", "small", "full"):
        raise ValueError(f"scale must be tiny, small or full, got {scale!r}")
    lessons = _lessons(folder, only)
    (out / "executed").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("IPP_NONINTERACTIVE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    results = []
    for i, nb in enumerate(lessons, 1):
        record_file = out / "records" / f"{nb.stem}.jsonl"
        record_file.unlink(missing_ok=True)
        os.environ[RECORD_ENV] = str(record_file.resolve())
        log(f"[{i}/{len(lessons)}] {nb.stem} ...")
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / "executed" / nb.name),
                                parameters={"SCALE": scale, **(parameters or {})}, cwd=str(folder),
                                execution_timeout=int(timeout), progress_bar=False, log_output=False)
            ok, error = True, ""
        except Exception as e:  # papermill's execution error names the failing cell
            ok, error = (False,
                         f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
        finally:
            os.environ.pop(RECORD_ENV, None)
        records = [json.loads(line)
                   for line in record_file.read_text().splitlines()] if record_file.exists() else []
        results.append(LessonResult(nb.stem, ok, time.perf_counter() - t0, error, records))
        log(f"    {'ok' if ok else 'FAILED'} in {results[-1].seconds:.0f} s"
            + (f": {error}" if error else ""))
    write_summary(results, out / "summary.md", scale)
    return results


def write_summary(results: list[LessonResult], path: Path, scale: str) -> None:
    lines = [f"# Curriculum run ({scale} scale, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"{os.uname().nodename})", "",
             "| lesson | status | time (s) | key numbers |", "|---|---|---|---|"]
    for r in results:
        nums = "; ".join(
            f"{x['name']} = {x['value']:.4g}{(' ' + x['unit']) if x.get('unit') else ''}"
            + (f" (goal {x['goal']}: {'PASS' if x['passed'] else 'FAIL'})"
               if x.get("passed") is not None else "")
            for x in r.records
        )
        status = "ok" if r.ok else f"FAILED: {r.error}"
        lines.append(f"| {r.name} | {status} | {r.seconds:.0f} | {nums or '-'} |")
    failed = [r.name for r in results if not r.ok]
    claims = [(r.name, x["name"]) for r in results for x in r.records if x.get("passed") is False]
    lines += ["", f"{len(results) - len(failed)}/{len(results)} lessons ran; "
              f"{sum(1 for r in results for x in r.records if x.get('passed'))} claims "
              f"met, {len(claims)} not met."]
    if claims:
        lines.append("Claims not met at this scale: " + ", ".join(f"{a}: {b}" for a, b in claims))
    path.write_text("\n".join(lines) + "\n")


def main(a) -> int:
    results = run_curriculum(Path(a.folder), Path(a.out), a.scale, a.only or None, a.timeout)
    print(f"summary written to {Path(a.out) / 'summary.md'}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"FAILED lessons: {', '.join(failed)} (executed copies in {Path(a.out) / 'executed'})")
        return 1
    return 0
