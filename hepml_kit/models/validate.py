"""Check a testbed end to end: fresh Monte Carlo -> train a preset -> physics metrics -> its threshold.

The logic behind ``hepml-kit validate MODEL [--seed S] [--preset tiny]`` and ``hepml-kit models``:

    results = validate("jet_transformer", seed=3)     # prints progress and the metrics
    print(result_line(results))                       # RESULT light_rejection=... threshold_met=1
    model_table()                                     # parameters and FLOPs/sample of every model and preset

`validate` trains on ``train_defaults[preset]["events"]`` events generated with `seed` and evaluates the
Testbed's `metrics` on ``test_events`` fresh events generated with ``seed + 1`` (a quarter of the training
count where a model does not say), then applies the Testbed's `threshold` (each model's docstring says why
its bar sits where it does). Used by the CLI, the acceptance checks and `tests/test_validate_cli.py`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

import torch

from hepml_kit.models import get, names

__all__ = ["PRESETS", "gpu_data_check", "model_table", "result_line", "validate"]

PRESETS = ("tiny", "small", "full")


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def validate(model: str, seed: int = 0, preset: str = "tiny", device: str = "cpu",
             log: Callable[[str], None] | None = print, plots: str | None = None) -> dict:
    """Train `model`'s `preset` from fresh data and evaluate it; returns the metrics plus bookkeeping.

    With `plots` (a folder), the Testbed's `plots` draws its physics figures of the evaluation events there.

    Returned keys: every metric of ``Testbed.metrics``, then ``train_events``, ``test_events``, ``epochs``,
    ``seed``, ``generate_s``, ``train_s``, ``metrics_s`` and ``threshold_met`` (bool).
    """
    tb = get(model)  # unknown model -> ValueError listing the names
    _check_preset(preset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    cfg = tb.config(preset)
    d = tb.train_defaults[preset]
    n_train, n_test = int(d["events"]), int(d.get("test_events", max(1, d["events"] // 4)))
    say = log or (lambda s: None)

    t0 = time.perf_counter()
    train = tb.generate(cfg, n_train, seed)
    test = tb.generate(cfg, n_test, seed + 1)
    t1 = time.perf_counter()
    say(f"[{tb.name}] preset {preset}: generated {n_train} training + {n_test} test {tb.unit} "
        f"(seeds {seed}, {seed + 1}) in {t1 - t0:.1f} s")
    model_, _ = _fit(tb, cfg, train, d, seed, device, log)
    t2 = time.perf_counter()
    model_.eval()
    m = tb.metrics(model_.cpu(), test)
    t3 = time.perf_counter()
    if plots is not None:
        if tb.plots is None:
            raise ValueError(f"{tb.name} draws no plots yet")
        for path in tb.plots(model_, test, plots):
            say(f"[{tb.name}] wrote {path}")
    out = dict(m)
    out.update(train_events=n_train, test_events=n_test, epochs=int(d["epochs"]), seed=seed,
               generate_s=t1 - t0, train_s=t2 - t1, metrics_s=t3 - t2, threshold_met=bool(tb.threshold(m)))
    return out


def _fit(tb, cfg, train, d, seed, device, log):
    from hepml_kit.models import fit

    return fit(tb, cfg, train, epochs=int(d["epochs"]), batch_size=int(d["batch_size"]), lr=float(d["lr"]),
               seed=seed, device=device, log=log)


def _plain(value) -> str | None:
    """A RESULT value: plain number, or None for what is not a number."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) or (torch.is_tensor(value) and value.numel() == 1):
        x = float(value)
        return "nan" if math.isnan(x) else f"{x:.6g}"
    if hasattr(value, "item") and getattr(value, "size", 0) == 1:  # numpy scalar
        return _plain(value.item())
    return None


def result_line(results: dict) -> str:
    """``RESULT name=value ...`` (plain numbers; non-numeric entries skipped; threshold_met last)."""
    parts = []
    for key, value in results.items():
        text = _plain(value)
        if text is not None and key != "threshold_met":
            parts.append(f"{re.sub(r'[^A-Za-z0-9_]', '_', str(key))}={text}")
    parts.append(f"threshold_met={int(bool(results.get('threshold_met', False)))}")
    return "RESULT " + " ".join(parts)


def model_table(models: list[str] | None = None, presets: tuple[str, ...] = PRESETS) -> list[dict]:
    """One row per (model, preset): parameters (counted on the ``meta`` device: no memory, instant) and
    training FLOPs per sample (``Testbed.flops_per_sample``; None where a model cannot state it)."""
    rows = []
    for name in models or names():
        tb = get(name)
        for preset in presets:
            _check_preset(preset)
            cfg = tb.config(preset)
            with torch.device("meta"):
                net = tb.build(cfg)
            flops = tb.flops_per_sample(cfg) if tb.flops_per_sample is not None else None
            rows.append({"model": tb.name, "preset": preset, "unit": tb.unit,
                         "parameters": sum(p.numel() for p in net.parameters()),
                         "flops_per_sample": None if flops is None else float(flops), "paper": tb.paper})
    return rows


def gpu_data_check(model: str = "jet_transformer", preset: str = "small", events: int = 65536,
                   workers: tuple[int, ...] = (0, 2, 4), steps: int = 100, device: str = "cuda") -> dict:
    """CUDA check of data delivery: write `events` of `model` as shards, train `preset` on the GPU (bf16
    autocast) straight from a `ShardDataset` with each number of DataLoader `workers` (pinned memory,
    non-blocking copies), and report events/s and the share of each step spent waiting for data. Raises
    without a GPU (``device="cpu"`` runs the same path without autocast, for tests). For the lead's GPU
    script; a few seconds per setting on one H100/H200."""
    import itertools
    import tempfile

    from hepml_kit.data.shards import ShardDataset, write_shards
    from hepml_kit.models import to_device
    from hepml_kit.profile import StepProfiler

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpu_data_check needs a CUDA device")
    tb, dev, out = get(model), torch.device(device), {}
    cfg, d = tb.config(preset), tb.train_defaults[preset]
    with tempfile.TemporaryDirectory(prefix="hepml-gpu-data-") as root:
        write_shards(tb.name, events, 8, root, seed=0, preset=preset, progress=False)
        for w in workers:
            torch.manual_seed(0)
            net = tb.build(cfg).to(dev)
            opt = tb.optimizer(net, cfg, float(d["lr"]))
            ds = ShardDataset(root, batch_size=int(d["batch_size"]), shuffle=True, rank=0, world_size=1)
            loader = ds.loader(num_workers=w, pin_memory=dev.type == "cuda", persistent_workers=w > 0)
            prof = StepProfiler(unit=tb.unit, device=dev, warmup_steps=5)
            batches = itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader, 100)),
                                       steps + 5)
            for batch in prof.iterate(batches, samples=tb.samples_in):
                with prof.phase("forward"), torch.autocast(dev.type, torch.bfloat16,
                                                           enabled=dev.type == "cuda"):
                    value = tb.step(net, to_device(batch, dev), opt)
            if not math.isfinite(value):
                raise RuntimeError(f"{tb.name} {preset}: loss {value} with {w} workers")
            s = prof.local_summary()
            out[f"workers{w}_{tb.unit}_per_s"] = s["samples_per_s"]
            out[f"workers{w}_data_frac"] = s["data_frac"]
    return out
