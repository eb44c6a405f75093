"""The single-device optimisation ladder: each rung adds one change and is measured in the same run.

    rungs = standard_ladder(workers=4)
    table = climb(tb, cfg, data, rungs, batch_size=4000, steps=20)  # throughput, speed-up, memory, MFU

The rungs, cumulative (PyTorch performance tuning guide, pytorch.org/tutorials/recipes/recipes/tuning_guide):

1. ``fp32 baseline``: batches built in the training process, fp32, the default AdamW, eager mode.
2. ``+ loader workers, pinned``: batches built by DataLoader worker processes while the device computes;
   pinned (page-locked) host memory lets the copy to the GPU run asynchronously (``non_blocking=True``).
3. ``+ bf16 autocast``: matrix multiplies in bfloat16 on tensor cores (Micikevicius et al. 2018 for mixed
   precision; bf16 needs no loss scaling), reductions and the loss kept in fp32.
4. ``+ fused AdamW``: one kernel updates all parameters instead of a few per tensor.
5. ``+ torch.compile``: TorchInductor fuses the element-wise work between matmuls (Ansel et al. 2024,
   "PyTorch 2", ASPLOS). The first steps compile: they are warm-up, left out of the figures.

A testbed's `Testbed` interface is all a rung needs (build, batches, loss, samples_in, flops_per_sample);
pre-made device batches (``batches=[...]``) skip the data pipeline, e.g. for a synthetic graph. A rung is
a `RunSpec` with the rung's `StepOptions`, trained by the one driver (`hepml_kit.parallel.driver.train`,
its plain loop); ``repeats`` in `climb` runs the rungs in alternating rounds and reports medians and spread.

Taught in curriculum/01_single_device; run at the `full` presets by bench/gpu_check.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["Rung", "climb", "run_rung", "standard_ladder"]


@dataclass(frozen=True)
class Rung:
    """One configuration of the training loop."""

    name: str
    workers: int = 0  # DataLoader worker processes; 0: batches made in the training process
    pin_memory: bool = False  # page-locked host batches, asynchronous copies (CUDA only)
    bf16: bool = False  # torch.autocast(dtype=torch.bfloat16)
    fused_optimizer: bool = False  # torch.optim.AdamW(fused=True)
    compile: bool = False  # torch.compile(model)
    checkpointing: bool | None = None  # override the config's activation checkpointing, if it has one
    # with compile: the share of activation memory the compiled backward may keep; the partitioner recomputes
    # cheap element-wise work to fit (torch._functorch.config.activation_memory_budget, PyTorch >= 2.4)
    activation_memory_budget: float | None = None

    def step_options(self):
        """This rung's per-step settings for the driver (`hepml_kit.parallel.spec.StepOptions`)."""
        from hepml_kit.parallel.spec import StepOptions

        return StepOptions(workers=self.workers, pin_memory=self.pin_memory, bf16=self.bf16,
                           fused_optimizer=self.fused_optimizer, compile=self.compile,
                           activation_memory_budget=self.activation_memory_budget)


def standard_ladder(workers: int = 2, compile: bool = True) -> list[Rung]:
    """The five cumulative rungs of the module docstring (without torch.compile if ``compile=False``)."""
    base = Rung("fp32 baseline")
    loader = dataclasses.replace(base, name="+ loader workers, pinned", workers=workers, pin_memory=True)
    bf16 = dataclasses.replace(loader, name="+ bf16 autocast", bf16=True)
    fused = dataclasses.replace(bf16, name="+ fused AdamW", fused_optimizer=True)
    rungs = [base, loader, bf16, fused]
    if compile:
        rungs.append(dataclasses.replace(fused, name="+ torch.compile", compile=True))
    return rungs


def run_rung(testbed, cfg, data=None, rung: Rung = Rung("fp32 baseline"), *, batch_size: int = 32,
             steps: int = 10, warmup_steps: int = 2, device: str | torch.device | None = None,
             lr: float = 1e-3, seed: int = 0, batches: list[dict] | None = None,
             flops_per_sample: float | None = None) -> dict:
    """Train `steps` (+ warm-up) steps with one rung's settings; return the profiler summary plus the rung.

    `batches` (already on the device) replaces ``data``/``batch_size``; `flops_per_sample` overrides the
    testbed's (e.g. for a graph of another size).
    """
    from hepml_kit.parallel.driver import RunSpec, train  # the one driver (it imports profile.step)

    if data is None and batches is None:
        raise ValueError("give data= (from testbed.generate) or batches=")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rung.checkpointing is not None and hasattr(cfg, "checkpointing"):
        cfg = dataclasses.replace(cfg, checkpointing=rung.checkpointing)
    spec = RunSpec(testbed, steps=steps, global_batch=batch_size, lr=lr, seed=seed, config=cfg,
                   device=str(device) if device is not None else None, optimizer="adamw", data="given",
                   step_options=rung.step_options(), warmup_steps=warmup_steps)
    result = train(spec, "single", data=data if batches is None else None, batches=batches,
                   flops_per_sample=flops_per_sample)
    summary = result["profile"]
    summary["rung"] = rung.name
    summary["final_loss"] = result["final_loss"]
    return summary


def climb(testbed, cfg, data=None, rungs: list[Rung] | None = None, *, repeats: int = 1, log=print, **kwargs):
    """Run every rung (`run_rung` keyword arguments apply to all) and tabulate them side by side:
    throughput, speed-up over the first rung, step time, data wait, peak memory, MFU.

    With ``repeats > 1`` the rungs run in alternating rounds (all rungs, then all again, ...), so a slow
    spell of a shared machine hits every rung alike; each figure is the median over the rounds, and
    ``samples_per_s_min``/``_max`` and ``speedup_min``/``_max`` (the per-round speed-ups over that round's
    first rung) show the spread.
    """
    import pandas as pd

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    rungs = rungs or standard_ladder()
    rounds = []
    for r in range(repeats):
        rows = []
        for rung in rungs:
            s = run_rung(testbed, cfg, data, rung, **kwargs)
            rows.append({"rung": rung.name, "samples_per_s": s["samples_per_s"], "step_ms": 1e3 * s["step_s"],
                         "data_ms": 1e3 * s.get("data_s", 0.0),
                         "peak_memory_gib": s.get("peak_memory_bytes", 0) / 2**30,
                         "mfu": s.get("mfu", float("nan")), "final_loss": s["final_loss"]})
            if log:
                prefix = f"round {r + 1}/{repeats}: " if repeats > 1 else ""
                log(f"[ladder] {prefix}{rung.name}: {s['samples_per_s']:.1f} {testbed.unit}/s")
        df = pd.DataFrame(rows)
        df["speedup"] = df["samples_per_s"] / df["samples_per_s"].iloc[0]
        rounds.append(df)
    if repeats == 1:
        df = rounds[0]
    else:
        every = pd.concat(rounds, keys=range(repeats), names=["round", "i"]).reset_index()
        by_rung = every.groupby("i", sort=True)
        df = by_rung.median(numeric_only=True).drop(columns="round")
        df.insert(0, "rung", [r.name for r in rungs])
        for col in ("samples_per_s", "speedup"):
            df[f"{col}_min"], df[f"{col}_max"] = by_rung[col].min(), by_rung[col].max()
        df["repeats"] = repeats
        df = df.reset_index(drop=True)
    df.attrs["unit"] = testbed.unit
    return df
