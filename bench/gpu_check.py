"""The one prepared GPU check: every CUDA path of the kit, one row of a results table per check.

    bash bench/gpu_check.sh                 # on a GPU host (≤ 8 minutes), results in bench/results/
    python bench/gpu_check.py --cpu-smoke   # the same checks at tiny shapes on CPU (minutes), results in /tmp
    python bench/gpu_check.py --list | --only env,profiler

Needs torch (CUDA build), numpy, pandas, psutil; lightning for its row. Not ipyparallel, papermill, nbval
or optuna: the GPU host has none of them, and no network.

Adding a check (other areas): write ``def gpu_check(ctx) -> dict`` in your module, using ``ctx.device``,
honouring ``ctx.smoke`` (tiny shapes on CPU) and ``ctx.time_left()``, and add one line below:
``register("ddp_nccl", "hepml_kit.parallel.ddp:gpu_check", budget_s=60)``. The dict's items become the
row (keep it short); keys starting ``result_`` also go on the final ``RESULT`` line; ``status`` may say
``"below goal"``. A function taking no argument, or returning a list of dicts (one row each; an item with
``ok: False`` is a FAILED row), works too. An exception becomes an ERROR row and the next check runs.
Checks run in registration order, each with a hard time limit; one whose budget no longer fits the total
is SKIPPED; ``cuda_only=True`` ones are SKIPPED in the CPU smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import inspect
import json
import math
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402


@dataclasses.dataclass
class Context:
    device: torch.device
    smoke: bool  # tiny shapes (CPU fallback): proves the code paths, not the speed
    results_dir: Path
    deadline: float  # time.monotonic() by which the whole check must end

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        print(f"    {msg}", flush=True)


@dataclasses.dataclass
class Check:
    name: str
    target: Callable | str  # function(ctx) -> dict, or "module:function" imported when the check runs
    budget_s: float
    cuda_only: bool = False


CHECKS: list[Check] = []


def register(name: str, target: Callable | str, budget_s: float, cuda_only: bool = False) -> None:
    CHECKS.append(Check(name, target, budget_s, cuda_only))


def _sync(ctx):
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- the checks
def check_env(ctx: Context) -> dict:
    """What the host offers (informational; never fails)."""
    row = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "-"}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=props.name, sm=f"{props.major}.{props.minor}",
                   mem_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lightning", "pandas", "matplotlib", "psutil", "ipyparallel", "papermill"):
        try:
            row[dist] = version(dist)
        except PackageNotFoundError:
            row[dist] = "missing"
    return row


def check_matmul_peak(ctx: Context) -> dict:
    """Measured dense matmul rate against the peak table MFU divides by."""
    from hepml_kit.profile import device_peak, measure_matmul_flops

    if ctx.device.type != "cuda":
        return {"cpu_fp32_gflops": round(measure_matmul_flops("cpu", "fp32") / 1e9, 1)}
    n, reps = 8192, 10
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    measured = 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)
    peak, source = device_peak("cuda", torch.bfloat16)
    return {"bf16_tflops": round(measured / 1e12, 1), "table_tflops": round(peak / 1e12, 1),
            "share_of_table": round(measured / peak, 3), "table": source}


def check_profiler(ctx: Context) -> dict:
    """StepProfiler on the device: CUDA events + NVTX, phases vs a synchronised wall clock, memory, traces."""
    from hepml_kit.profile import StepProfiler, profile_ops

    width, batch = (4096, 2048) if not ctx.smoke else (256, 64)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)]).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    host = torch.randn(batch, width).pin_memory() if ctx.device.type == "cuda" else torch.randn(batch, width)
    prof = StepProfiler(samples_per_step=batch, flops_per_sample=6 * 4 * width * width, warmup_steps=2)

    def step():
        with prof.step():
            with prof.phase("data"):
                x = host.to(ctx.device, non_blocking=True)
            with prof.phase("forward"):
                loss = model(x).square().mean()
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    steps = 10
    _sync(ctx)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(ctx)
    wall = (time.perf_counter() - t0) / steps
    s = prof.summary()
    named = sum(s.get(f"{p}_s", 0.0) for p in ("data", "forward", "backward", "optimizer"))
    with profile_ops("gpu_check", trace_dir=tempfile.mkdtemp(), show=False) as ops:
        step()
    time_col = "self_device_ms" if "self_device_ms" in ops.table else "self_cpu_ms"
    return {"step_ms_events": round(1e3 * s["step_s"], 3), "step_ms_wall": round(1e3 * wall, 3),
            "events_over_wall": round(s["step_s"] / wall, 3), "phases_cover": round(named / s["step_s"], 3),
            "peak_gib": round(s["peak_memory_bytes"] / 2**30, 3), "mfu": round(s["mfu"], 3),
            "nvtx": prof.nvtx, "top_op": f"{ops.table['operator'][0]} ({ops.table[time_col][0]:.2f} ms)"}


def check_profiler_overhead(ctx: Context) -> dict:
    """bench/profile_overhead.py on the device (wall clock, synchronised)."""
    from profile_overhead import measure_overhead

    r = (measure_overhead(preset="small", batch_size=512, steps=4, repeats=8, threads=None) if not ctx.smoke
         else measure_overhead(preset="tiny", batch_size=64, steps=2, repeats=3, threads=1))
    return {"ratio": round(r["ratio"], 4), "clock": r["clock"], "without": round(r["without"], 1),
            "with": round(r["with"], 1), "result_profiler_ratio": round(r["ratio"], 4),
            "status": "ok" if r["ratio"] >= 0.97 or ctx.smoke else "below goal"}


def check_ddp_comm_hook(ctx: Context) -> dict:
    """StepProfiler.attach_ddp on a one-rank process group (nccl on GPU, gloo on CPU)."""
    import torch.distributed as dist

    from hepml_kit.profile import StepProfiler

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 16))
        net = net.to(ctx.device)
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=1)
        prof = StepProfiler(samples_per_step=256, warmup_steps=1)
        prof.attach_ddp(ddp)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        x = torch.randn(256, 512, device=ctx.device)
        for _ in range(5):
            with prof.step():
                with prof.phase("forward"):
                    loss = ddp(x).square().mean()
                with prof.phase("backward"):
                    loss.backward()
                with prof.phase("optimizer"):
                    opt.step()
                    opt.zero_grad()
        s = prof.summary()
    finally:
        dist.destroy_process_group()
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    ok = s.get("comm_bytes") == param_bytes and s.get("communication_s", -1) >= 0
    return {"backend": backend, "comm_mb": round(s.get("comm_bytes", 0) / 1e6, 2),
            "in_flight_ms": round(1e3 * s.get("comm_in_flight_s", 0), 3),
            "exposed_ms": round(1e3 * s.get("communication_s", 0), 3),
            "status": "ok" if ok else "wrong bytes"}


def check_lightning_callback(ctx: Context) -> dict:
    """ProfilerCallback in a Lightning fit on the device."""
    import lightning as L
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from hepml_kit.profile import ProfilerCallback

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    data = torch.utils.data.TensorDataset(torch.randn(2048, 64), torch.randn(2048, 1))
    cb = ProfilerCallback(verbose=False, unit="events")
    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
                        callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tempfile.mkdtemp(),
                        plugins=[LightningEnvironment()])  # no cluster detection: it would start MPI
    trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=128))
    s = cb.summary
    return {"device": s["device"], "steps": s["steps"], "events_per_s": round(s["events_per_s"], 1),
            "phases": "/".join(p for p in ("data", "forward", "backward", "optimizer")
                               if s.get(f"{p}_s", 0) > 0)}


def _climb(ctx: Context, tb, cfg, rungs, reserve_s: float, **kwargs):
    """Run the rungs one by one, skipping (with a note) those the time left cannot hold."""
    from hepml_kit.profile import run_rung

    rows, skipped = [], []
    for rung in rungs:
        need = reserve_s if rung.compile else 15
        if ctx.time_left() < need or skipped:
            skipped.append(rung.name)
            continue
        warmup = 3 if rung.compile else 2
        try:
            s = run_rung(tb, cfg, rung=rung, device=ctx.device, warmup_steps=warmup, **kwargs)
        except _CheckTimeout:  # keep the rungs measured so far
            skipped.append(f"{rung.name} (ran out of time)")
            continue
        rows.append(s)
        ctx.log(f"{rung.name}: {s['samples_per_s']:.2f} {s['unit']}/s, "
                f"peak {s['peak_memory_bytes'] / 2**30:.2f} GiB, step {1e3 * s['step_s']:.1f} ms "
                f"(data {1e3 * s.get('data_s', 0):.1f} ms), MFU {s.get('mfu', 0):.3f}")
    return rows, skipped


def check_ladder_jet_transformer(ctx: Context) -> dict:
    """The ladder at the `full` preset (4000 jets x 40 tracks, d=256): goal top rung >= 5x fp32 baseline."""
    from hepml_kit.models import get
    from hepml_kit.profile import standard_ladder

    tb = get("jet_transformer")
    cfg = tb.config("tiny" if ctx.smoke else "full")
    batch, steps = (64, 2) if ctx.smoke else (4000, 10)
    data = tb.generate(cfg, batch * 12, seed=0)
    workers = 1 if ctx.smoke else max(1, min(12, (os.cpu_count() or 2) - 2))  # keep bf16+compile fed
    rungs = standard_ladder(workers=workers, compile=not ctx.smoke)  # inductor on CPU: minutes to compile
    rows, skipped = _climb(ctx, tb, cfg, rungs, reserve_s=100, data=data, batch_size=batch, steps=steps)
    return _ladder_row(rows, skipped, goal=5.0, prefix="jet", ctx=ctx)


def check_ladder_tracking_gnn(ctx: Context) -> dict:
    """The ladder on one 100k-node / 1M-edge graph at the `full` width (hidden 128, 8 iterations):
    goal top rung >= 4.5x the fp32 baseline at <= 16 GiB peak."""
    from hepml_kit.models import get
    from hepml_kit.profile import Rung

    tb = get("tracking_gnn")
    cfg = tb.config("tiny" if ctx.smoke else "full")
    n_nodes, n_edges = (2_000, 10_000) if ctx.smoke else (100_000, 1_000_000)
    g = torch.Generator().manual_seed(0)
    graph = {"x": torch.randn(n_nodes, 3, generator=g), "edge_attr": torch.randn(n_edges, 4, generator=g),
             "edge_index": torch.randint(0, n_nodes, (2, n_edges), generator=g),
             "y": (torch.rand(n_edges, generator=g) < 0.3).float(), "n_graphs": torch.tensor(1)}
    graph = {k: v if k == "n_graphs" else v.to(ctx.device) for k, v in graph.items()}  # counted on the host
    rungs = [Rung("fp32 baseline", checkpointing=False),
             Rung("+ bf16 autocast", bf16=True, checkpointing=False),
             Rung("+ fused AdamW", bf16=True, fused_optimizer=True, checkpointing=False)]
    if not ctx.smoke:  # three ways to fit in 16 GiB: recompute chosen by the compiler, or whole layers
        top = Rung("+ torch.compile", bf16=True, fused_optimizer=True, compile=True, checkpointing=False)
        rungs += [top,
                  dataclasses.replace(top, name="+ compile, memory budget 0.5", activation_memory_budget=0.5),
                  dataclasses.replace(top, name="+ compile, checkpointing", checkpointing=True)]
    fps = tb.flops_per_sample(cfg, n_nodes=n_nodes, n_edges=n_edges)
    rows, skipped = _climb(ctx, tb, cfg, rungs, reserve_s=100, batches=[graph], steps=2 if ctx.smoke else 8,
                           flops_per_sample=fps)
    return _ladder_row(rows, skipped, goal=4.5, prefix="gnn", ctx=ctx, memory_goal_gib=16.0,
                       per_sample=n_edges, per_sample_unit="edges")


def _ladder_row(rows, skipped, goal, prefix, ctx, memory_goal_gib=None, per_sample=None,
                per_sample_unit=None):
    if not rows:
        raise RuntimeError("no rung ran")
    base = rows[0]["samples_per_s"]
    out = {"baseline": f"{base:.2f} {rows[0]['unit']}/s"}
    for r in rows[1:]:
        out[r["rung"]] = f"{r['samples_per_s'] / base:.2f}x"
    fits = [r for r in rows if memory_goal_gib is None or r["peak_memory_bytes"] / 2**30 <= memory_goal_gib]
    best = max(fits or rows, key=lambda r: r["samples_per_s"])
    speedup = best["samples_per_s"] / base
    out.update({"best": best["rung"], "speedup": round(speedup, 2),
                "mfu": round(best.get("mfu", math.nan), 3), f"result_{prefix}_speedup": round(speedup, 3)})
    if per_sample:
        out[f"{per_sample_unit}_per_s"] = f"{best['samples_per_s'] * per_sample:.3g}"
    peaks = [r["peak_memory_bytes"] / 2**30 for r in rows]
    out["peak_gib"] = "/".join(f"{p:.1f}" for p in peaks)
    met = speedup >= goal
    if memory_goal_gib is not None:
        out[f"result_{prefix}_peak_gib"] = round(best["peak_memory_bytes"] / 2**30, 3)
        out[f"result_{prefix}_baseline_peak_gib"] = round(peaks[0], 3)
        met = met and best["peak_memory_bytes"] / 2**30 <= memory_goal_gib
    if skipped:
        out["skipped (time)"] = ", ".join(skipped)
    out["status"] = "ok" if met or ctx.smoke else "below goal"
    return out


register("env", check_env, budget_s=10)
register("matmul_peak", check_matmul_peak, budget_s=15)
register("profiler", check_profiler, budget_s=30)
register("profiler_overhead", check_profiler_overhead, budget_s=45)
register("ddp_comm_hook", check_ddp_comm_hook, budget_s=30)
register("lightning_callback", check_lightning_callback, budget_s=40)
register("ladder_jet_transformer", check_ladder_jet_transformer, budget_s=150)
register("ladder_tracking_gnn", check_ladder_tracking_gnn, budget_s=200)
# Checks of other areas: one line each.
register("serve_torchscript", "hepml_kit.serve.gpu_check:gpu_check_serving", budget_s=60, cuda_only=True)
register("launch_nccl", "hepml_kit.launch.gpu_check:gpu_check_launch_nccl", budget_s=40)
register("models_small_bf16", "hepml_kit.models.gpu_check:gpu_check_models", budget_s=90)
register("models_bf16_compile", "hepml_kit.models.gpu_check:gpu_check_compile", budget_s=90, cuda_only=True)
register("parallel_dp_fsdp", "hepml_kit.parallel.gpu_smoke:gpu_check_parallel", budget_s=60, cuda_only=True)
register("parallel_model", "hepml_kit.parallel.hybrid:gpu_check_model_parallel", budget_s=60, cuda_only=True)


# ------------------------------------------------------------------------------------------ the runner
class _CheckTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _CheckTimeout("check ran past its time limit")


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
                        status = "FAILED" if item.pop("ok", True) is False else str(item.pop("status", "ok"))
                        item.pop("check", None)
                        sub = {"check": f"{check.name}[{i}]", "status": status, "seconds": 0.0,
                               "values": item, "error": None}
                        rows.append(sub)
                        print(f"{sub['check']:<24} {sub['status']:<11} {'':>6}  {_details(sub)}", flush=True)
                    values = {"rows": len(result)}
                else:
                    values = dict(result or {})
                row["status"] = str(values.pop("status", "ok"))
                row["values"] = values
            except BaseException as err:  # noqa: BLE001 - one failing check must not stop the others
                if isinstance(err, KeyboardInterrupt):
                    raise
                row["status"] = "TIMEOUT" if isinstance(err, _CheckTimeout) else "ERROR"
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
