"""Benchmark: what checkpoint checksums cost, saving and loading side by side with checksums off.

A model + AdamW state of about `--mb` MB (a stack of square linear layers, CPU, one process) is saved and
loaded with `hepml_kit.parallel.checkpoint` two ways, in interleaved repeats (the machine is shared and
noisy: medians):

- checked: the default, ``save(...)`` writes a SHA-256 manifest, ``load(...)`` verifies every file first;
- unchecked: ``save(..., checksums=False)``, ``load(..., verify=False)``.

Both go through the same partial folder and atomic rename; the difference is hashing the files once on
save (the data is still in the page cache) and reading them once more on load.

    .venv/bin/python bench/checkpoint.py [--mb 64] [--repeats 5]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from hepml_kit.parallel import checkpoint


def build(mb: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Layers of 1024x1024 float32 weights (4 MiB each); AdamW's two moments triple the bytes saved."""
    layers = max(1, round(mb / 3 / 4.19))
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1024)).sum().backward()
    opt.step()
    return model, opt


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=64.0, help="checkpoint size in MB (model + optimizer)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, opt = build(args.mb)
    times = {k: [] for k in ("save_checked", "save_unchecked", "load_checked", "load_unchecked")}
    with tempfile.TemporaryDirectory(prefix="hepml-bench-ckpt-") as tmp:
        checked, unchecked = os.path.join(tmp, "checked"), os.path.join(tmp, "unchecked")
        for _ in range(args.repeats):
            times["save_checked"].append(timed(lambda: checkpoint.save(checked, model, opt)))
            times["save_unchecked"].append(
                timed(lambda: checkpoint.save(unchecked, model, opt, checksums=False)))
            times["load_checked"].append(timed(lambda: checkpoint.load(checked, model, opt)))
            times["load_unchecked"].append(
                timed(lambda: checkpoint.load(unchecked, model, opt, verify=False)))
        size = sum(os.path.getsize(os.path.join(checked, f)) for f in os.listdir(checked)) / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}; "
          f"checkpoint {size:.1f} MB; medians of {args.repeats}")
    print(f"{'':6} {'checked s':>10} {'unchecked s':>12} {'ratio':>6}")
    for op in ("save", "load"):
        c, u = med[f"{op}_checked"], med[f"{op}_unchecked"]
        print(f"{op:6} {c:10.3f} {u:12.3f} {c / u:6.2f}")
    print(f"RESULT checkpoint_MB={size:.1f} save_checked_s={med['save_checked']:.4f} "
          f"save_unchecked_s={med['save_unchecked']:.4f} "
          f"save_ratio={med['save_checked'] / med['save_unchecked']:.3f} "
          f"load_checked_s={med['load_checked']:.4f} load_unchecked_s={med['load_unchecked']:.4f} "
          f"load_ratio={med['load_checked'] / med['load_unchecked']:.3f}")


if __name__ == "__main__":
    main()
