"""The one prepared GPU check: every CUDA path of the kit, one row of a results table per check.

    bash bench/gpu_check.sh                 # on a GPU host (≤ 8 minutes), results in bench/results/
    python bench/gpu_check.py --cpu-smoke   # the same checks at tiny shapes on CPU (minutes), results in /tmp
    python bench/gpu_check.py --list | --only env,profiler

Needs torch (CUDA build), numpy, pandas, psutil; lightning for its row. Not ipyparallel, papermill, nbval
or optuna: the GPU host has none of them, and no network.

This file only runs the checks and writes the table. The checks live in ``bench/gpu_checks/<area>.py``
(its docstring gives the row schema); adding one is a function there and a line in that file's ``CHECKS``.
Checks run in the order of ``gpu_checks.AREAS``, each with a hard time limit; an exception becomes an
ERROR row and the next check runs; one whose budget no longer fits the total is SKIPPED; ``cuda_only``
ones are SKIPPED in the CPU smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import inspect
import json
import platform
import re
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from gpu_checks import AREAS  # noqa: E402
from gpu_checks.common import Check, CheckTimeout, Context, status_of  # noqa: E402

CHECKS: list[Check] = [c for area in AREAS for c in importlib.import_module(f"gpu_checks.{area}").CHECKS]


def register(name: str, target: Callable | str, budget_s: float, cuda_only: bool = False) -> None:
    """Add a check to this run (a test's extra check; the kit's own are listed in bench/gpu_checks/)."""
    CHECKS.append(Check(name, target, budget_s, cuda_only))


# ------------------------------------------------------------------------------------------ the runner
def _alarm(signum, frame):
    raise CheckTimeout("check ran past its time limit")


def _call(fn, ctx: Context):
    """``fn(ctx)``, or ``fn()`` for a check function that takes no required argument."""
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(ctx) if required else fn()


def _resolve(target):
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_checks(checks: list[Check], ctx: Context) -> list[dict]:
    rows = []
    print(f"{'check':<24} {'status':<11} {'s':>6}  details", flush=True)
    for check in checks:
        t0 = time.monotonic()
        row = {"check": check.name, "status": "ok", "seconds": 0.0, "values": {}, "error": None}
        if check.cuda_only and ctx.device.type != "cuda":
            row["status"], row["error"] = "SKIPPED", "CUDA only"
        elif ctx.time_left() < check.budget_s * 0.5:
            row["status"] = "SKIPPED"
            row["error"] = f"needs ~{check.budget_s:.0f} s, {ctx.time_left():.0f} s left"
        else:
            limit = max(2, int(min(2 * check.budget_s, ctx.time_left())))
            old = signal.signal(signal.SIGALRM, _alarm)
            outer_left = signal.getitimer(signal.ITIMER_REAL)[0]  # e.g. pytest-timeout's, restored below
            signal.alarm(limit)
            try:
                result = _call(_resolve(check.target), ctx)
                if isinstance(result, list):  # one row per item
                    for i, item in enumerate(result):
                        item = dict(item)
                        status = status_of(item)
                        sub = {"check": f"{check.name}[{i}]", "status": status, "seconds": 0.0,
                               "values": item, "error": None}
                        rows.append(sub)
                        print(f"{sub['check']:<24} {sub['status']:<11} {'':>6}  {_details(sub)}", flush=True)
                    values = {"rows": len(result)}
                else:
                    values = dict(result or {})
                row["status"] = status_of(values)
                row["values"] = values
            except BaseException as err:  # noqa: BLE001 - one failing check must not stop the others
                if isinstance(err, KeyboardInterrupt):
                    raise
                row["status"] = "TIMEOUT" if isinstance(err, CheckTimeout) else "ERROR"
                message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
                row["error"] = f"{type(err).__name__}: {message}"
                row["traceback"] = traceback.format_exc()
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
                if outer_left > 0:
                    signal.setitimer(signal.ITIMER_REAL, max(0.01, outer_left - (time.monotonic() - t0)))
                # a check that left a process group behind must not break the next (seen on the H200 run)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.destroy_process_group()
                gc.collect()
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
        row["seconds"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        print(f"{row['check']:<24} {row['status']:<11} {row['seconds']:>6.1f}  {_details(row)}", flush=True)
    return rows


def _details(row: dict) -> str:
    if row["error"]:
        return row["error"]
    return ", ".join(f"{k.removeprefix('result_')}={v}" for k, v in row["values"].items()
                     if not (k.startswith("result_") and k.removeprefix("result_") in row["values"]))


def write_results(rows: list[dict], ctx: Context, argv: list[str]) -> Path:
    device = torch.cuda.get_device_name(0) if ctx.device.type == "cuda" else "cpu-smoke"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    base = ctx.results_dir / f"gpu_check_{stamp}_{slug}"
    lines = [f"# GPU check {stamp} on {device}", "",
             f"host {socket.gethostname()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"python {platform.python_version()}, command `python bench/gpu_check.py {' '.join(argv)}`", "",
             "| check | status | s | details |", "|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['status']} | {r['seconds']} | {_details(r).replace('|', '/')} |"
              for r in rows]
    for r in rows:
        if r.get("traceback"):
            lines += ["", f"## {r['check']} traceback", "```", r["traceback"].rstrip(), "```"]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    record = {"device": device, "date": stamp, "torch": torch.__version__, "rows": rows}
    base.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    return base.with_suffix(".md")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on CPU (also the default without a GPU)")
    ap.add_argument("--only", default="", help="comma-separated check names")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    ap.add_argument("--budget-s", type=float, default=450.0, help="total time for all checks")
    ap.add_argument("--out", default=None,
                    help="results folder (default bench/results on GPU, a temp dir in smoke)")
    args = ap.parse_args(argv)
    if args.list:
        for c in CHECKS:
            print(f"{c.name:<24} ~{c.budget_s:.0f} s{'  (CUDA only)' if c.cuda_only else ''}")
        return 0
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {c.name for c in CHECKS}
    if unknown:
        ap.error(f"unknown check(s) {sorted(unknown)}; see --list")
    by_name = {c.name: c for c in CHECKS}
    checks = [by_name[n] for n in names] if names else list(CHECKS)  # --only runs in the order given
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda:
        torch.set_num_threads(1)  # smoke: proves code paths; never oversubscribe a shared CPU
    default_out = ROOT / "bench" / "results" if cuda else Path(tempfile.gettempdir()) / "hepml_gpu_check"
    ctx = Context(device=torch.device("cuda" if cuda else "cpu"), smoke=not cuda,
                  results_dir=Path(args.out) if args.out else default_out,
                  deadline=time.monotonic() + args.budget_s)
    print(f"gpu_check on {'CUDA: ' + torch.cuda.get_device_name(0) if cuda else 'CPU (smoke: tiny shapes)'}, "
          f"{len(checks)} checks, budget {args.budget_s:.0f} s", flush=True)
    rows = run_checks(checks, ctx)
    path = write_results(rows, ctx, argv)
    results = {k.removeprefix("result_"): v for r in rows for k, v in r["values"].items()
               if k.startswith("result_")}
    failed = [r["check"] for r in rows if r["status"] in ("ERROR", "TIMEOUT", "FAILED")]
    print(f"results: {path}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()) + f" checks_failed={len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
