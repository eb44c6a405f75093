"""GPU check for the testbeds: each model's `small` preset trains a few steps on CUDA in bf16 (issue: testbed
models). Run by bench/gpu_check.py; on CPU (`ctx.smoke`) the tiny preset runs instead."""

from __future__ import annotations

import math
import time

import torch

from gpu_checks.common import Check
from hepml_kit.models import get, names, to_device


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
                         "loss_last": round(losses[-1], 4),
                         f"{tb.unit}_per_s": round(samples / max(t_train, 1e-9), 1),
                         "peak_GiB": round(peak, 2), "s": round(time.perf_counter() - t0, 1)})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        except Exception as e:  # one model's failure must not hide the others
            rows.append({"model": name, "preset": preset, "ok": False,
                         "error": f"{type(e).__name__}: {e}"[:200]})
        del_vars = [v for v in ("model", "opt", "data") if v in locals()]
        for v in del_vars:
            locals().pop(v, None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def cuda_check(name: str, preset: str = "small", steps: int = 20, batch_size: int = 512, lr: float = 5e-4,
               compile: bool = True) -> dict:
    """One model on CUDA: bf16-autocast training steps of `preset` (the loss must fall), bf16 and
    torch.compile
    forwards against eager fp32, and samples/s. For models whose forward takes tensors named in
    ``Testbed.extra["inputs"]`` (the jet transformer, the waveform VAE)."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_check needs a CUDA device")
    tb = get(name)
    dev, cfg, inputs = torch.device("cuda"), tb.config(preset), tb.extra["inputs"]
    torch.manual_seed(0)
    bs = [to_device(b, dev) for b in tb.batches(tb.generate(cfg, 4 * batch_size, seed=0), batch_size)]
    model = tb.build(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses, t0 = [], 0.0
    for i in range(2 * steps):  # the first half warms up, the second is timed
        if i == steps:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            value = tb.loss(model, bs[i % len(bs)])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    torch.cuda.synchronize()
    per_s = steps * batch_size / (time.perf_counter() - t0)
    model.eval()
    args = [bs[0][k] for k in inputs]
    with torch.no_grad():
        ref = model(*args)[0].float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(*args)[0].float()
        comp = torch.compile(model)(*args)[0].float() if compile else ref
    return {"model": name, "preset": preset, "loss_first": losses[0], "loss_last": losses[-1],
            f"{tb.unit}_per_s": per_s, "flops_per_sample": tb.flops_per_sample(cfg),
            "bf16_max_abs_diff": float((low - ref).abs().max()),
            "compile_max_abs_diff": float((comp - ref).abs().max()),
            "finite": bool(torch.isfinite(ref).all())}


def gpu_check_compile() -> list[dict]:
    """`cuda_check` of the two models with tensor-only forwards (rows for bench/gpu_check.py)."""
    return [cuda_check("jet_transformer", batch_size=1000, lr=5e-4),
            cuda_check("waveform_vae", batch_size=512, lr=1e-3)]


CHECKS = [Check("models_small_bf16", gpu_check_models, budget_s=90),
          Check("models_bf16_compile", gpu_check_compile, budget_s=90, cuda_only=True)]
