"""GPU checks of hepml_kit.profile: StepProfiler on the device, its overhead, the DDP comm hook, the
Lightning callback, and the speed ladders of lesson 01 at the `full` presets (goals: jet transformer >= 5x,
tracking GNN >= 4.5x at <= 16 GiB)."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time

import torch

from gpu_checks.common import Check, CheckTimeout, Context, one_rank_group, sync


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
    sync(ctx)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(ctx)
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
    from hepml_kit.profile import StepProfiler

    with one_rank_group(ctx.device) as backend:
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
        except CheckTimeout:  # keep the rungs measured so far
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


CHECKS = [
    Check("profiler", check_profiler, budget_s=30),
    Check("profiler_overhead", check_profiler_overhead, budget_s=45),
    Check("ddp_comm_hook", check_ddp_comm_hook, budget_s=30),
    Check("lightning_callback", check_lightning_callback, budget_s=40),
    Check("ladder_jet_transformer", check_ladder_jet_transformer, budget_s=150),
    Check("ladder_tracking_gnn", check_ladder_tracking_gnn, budget_s=200),
]
