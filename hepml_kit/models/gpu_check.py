"""GPU check for the testbeds: each model's `small` preset trains a few steps on CUDA in bf16 (issue: testbed
models). Called by bench/gpu_check.py; on CPU (`ctx.smoke`) the tiny preset runs instead."""

from __future__ import annotations

import math
import time

import torch

from hepml_kit.models import get, names, to_device

__all__ = ["gpu_check_models"]


def gpu_check_models(ctx, steps: int = 6) -> list[dict]:
    rows = []
    preset = "tiny" if getattr(ctx, "smoke", False) else "small"
    device = ctx.device
    for name in names():
        t0 = time.perf_counter()
        try:
            tb = get(name)
            cfg = tb.config(preset)
            d = tb.train_defaults[preset]
            bs = d["batch_size"]
            data = tb.generate(cfg, min(d["events"], bs * 2), seed=1)
            torch.manual_seed(0)
            model = tb.build(cfg).to(device)
            opt = tb.optimizer(model, cfg, d["lr"])
            losses, samples, t_train = [], 0, 0.0
            for step in range(steps):
                for batch in tb.batches(data, bs, shuffle=True, seed=step):
                    batch = to_device(batch, device)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        losses.append(tb.step(model, batch, opt))
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if step > 0:  # the first pass warms up kernels and allocator
                        t_train += time.perf_counter() - t1
                        samples += tb.samples_in(batch)
                    break
            finite = all(math.isfinite(x) for x in losses)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            rows.append({"model": name, "preset": preset, "ok": finite, "loss_first": round(losses[0], 4),
                         "loss_last": round(losses[-1], 4), f"{tb.unit}_per_s": round(samples / max(t_train, 1e-9), 1),
                         "peak_GiB": round(peak, 2), "s": round(time.perf_counter() - t0, 1)})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        except Exception as e:  # one model's failure must not hide the others
            rows.append({"model": name, "preset": preset, "ok": False, "error": f"{type(e).__name__}: {e}"[:200]})
        del_vars = [v for v in ("model", "opt", "data") if v in locals()]
        for v in del_vars:
            locals().pop(v, None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
