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
pre-made device batches (``batches=[...]``) skip the data pipeline, e.g. for a synthetic graph.

Taught in curriculum/01_single_device; run at the `full` presets by bench/gpu_check.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from hepml_kit.profile.step import StepProfiler

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


def _take(data: Any, idx: np.ndarray) -> Any:
    """The samples `idx` of a testbed's data: a dict of per-sample arrays or a list of events."""
    if isinstance(data, dict):
        n = _length(data)
        return {k: (v[idx] if hasattr(v, "__len__") and not isinstance(v, str) and len(v) == n else v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [data[int(i)] for i in idx]
    raise TypeError(f"cannot split data of type {type(data).__name__}: give batches= instead")


def _length(data: Any) -> int:
    if isinstance(data, dict):
        return max(len(v) for v in data.values() if hasattr(v, "__len__") and not isinstance(v, str))
    return len(data)


class _BatchSlices(torch.utils.data.Dataset):
    """Batch i = ``testbed.batches`` over the i-th slice of a shuffled index: workers build whole batches."""

    def __init__(self, testbed, data, batch_size: int, seed: int):
        self.testbed, self.data, self.batch_size = testbed, data, batch_size
        self.order = np.random.default_rng(seed).permutation(_length(data))

    def __len__(self) -> int:
        return len(self.order) // self.batch_size  # full batches only: fixed shapes for torch.compile

    def __getitem__(self, i: int) -> dict:
        idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return next(iter(self.testbed.batches(_take(self.data, idx), self.batch_size)))


def _to_device(batch: dict, device: torch.device, non_blocking: bool) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def _batch_stream(testbed, data, batches, rung: Rung, batch_size: int, device: torch.device,
                  seed: int) -> Iterator:
    if batches is not None:  # pre-made batches, cycled
        yield from itertools.cycle(batches)
        return
    dataset = _BatchSlices(testbed, data, batch_size, seed)
    if len(dataset) == 0:
        raise ValueError(f"{_length(data)} samples make no full batch of {batch_size}")
    pin = rung.pin_memory and device.type == "cuda"
    if rung.workers == 0:
        for epoch in itertools.count():
            for i in range(len(dataset)):
                yield _to_device(dataset[i], device, non_blocking=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=True, num_workers=rung.workers,
                                         pin_memory=pin, persistent_workers=True, prefetch_factor=4)
    while True:
        for batch in loader:
            yield _to_device(batch, device, non_blocking=pin)


def run_rung(testbed, cfg, data=None, rung: Rung = Rung("fp32 baseline"), *, batch_size: int = 32,
             steps: int = 10, warmup_steps: int = 2, device: str | torch.device | None = None,
             lr: float = 1e-3, seed: int = 0, batches: list[dict] | None = None,
             flops_per_sample: float | None = None) -> dict:
    """Train `steps` (+ warm-up) steps with one rung's settings; return the profiler summary plus the rung.

    `batches` (already on the device) replaces ``data``/``batch_size``; `flops_per_sample` overrides the
    testbed's (e.g. for a graph of another size).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if data is None and batches is None:
        raise ValueError("give data= (from testbed.generate) or batches=")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rung.checkpointing is not None and hasattr(cfg, "checkpointing"):
        cfg = dataclasses.replace(cfg, checkpointing=rung.checkpointing)
    torch.manual_seed(seed)
    model = testbed.build(cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True if rung.fused_optimizer else None)
    if rung.compile:
        torch._dynamo.reset()  # compile afresh: a cached graph would ignore this rung's settings
    run_model = torch.compile(model) if rung.compile else model
    fps = flops_per_sample or (testbed.flops_per_sample(cfg) if testbed.flops_per_sample else None)
    prof = StepProfiler(samples_per_step=testbed.samples_in, flops_per_sample=fps, unit=testbed.unit,
                        device=device, dtype=torch.bfloat16 if rung.bf16 else torch.float32,
                        warmup_steps=warmup_steps)
    stream = _batch_stream(testbed, data, batches, rung, batch_size, device, seed)
    budget = contextlib.nullcontext()
    if rung.activation_memory_budget is not None:
        if not rung.compile:
            raise ValueError("activation_memory_budget needs compile=True")
        import torch._functorch.config as functorch_config

        budget = functorch_config.patch(activation_memory_budget=rung.activation_memory_budget)
    try:
        with budget:  # read when the first step compiles
            for i, batch in enumerate(prof.iterate(stream)):
                autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=rung.bf16)
                with prof.phase("forward"), autocast:
                    loss = testbed.loss(run_model, batch)
                with prof.phase("backward"):
                    loss.backward()
                with prof.phase("optimizer"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if i + 1 >= warmup_steps + steps:
                    break
        summary = prof.summary(gather=False)
    finally:
        stream.close()  # stops loader workers
        del model, run_model, opt
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary["rung"] = rung.name
    summary["final_loss"] = float(loss.detach())
    return summary


def climb(testbed, cfg, data=None, rungs: list[Rung] | None = None, *, log=print, **kwargs):
    """Run every rung (`run_rung` keyword arguments apply to all) and tabulate them side by side:
    throughput, speed-up over the first rung, step time, data wait, peak memory, MFU."""
    import pandas as pd

    rungs = rungs or standard_ladder()
    rows = []
    for rung in rungs:
        s = run_rung(testbed, cfg, data, rung, **kwargs)
        rows.append({"rung": rung.name, "samples_per_s": s["samples_per_s"], "step_ms": 1e3 * s["step_s"],
                     "data_ms": 1e3 * s.get("data_s", 0.0),
                     "peak_memory_gib": s.get("peak_memory_bytes", 0) / 2**30,
                     "mfu": s.get("mfu", float("nan")), "final_loss": s["final_loss"]})
        if log:
            log(f"[ladder] {rung.name}: {s['samples_per_s']:.1f} {testbed.unit}/s")
    df = pd.DataFrame(rows)
    df["speedup"] = df["samples_per_s"] / df["samples_per_s"].iloc[0]
    df.attrs["unit"] = testbed.unit
    return df
