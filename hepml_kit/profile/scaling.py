"""Measured scaling studies: run one training function on 1, 2, 4, ... ranks and tabulate how it scales.

    df = scaling_study(train_testbed_ddp, nprocs=[1, 2, 4], mode="strong", batch_size=256,
                       model="jet_transformer", preset="tiny", steps=10)
    plot_scaling(df)

The contract for ``train_fn``: it runs on every rank (through `hepml_kit.launch`, torch.distributed already
initialised), takes ``batch_size`` = the *per-rank* batch as a keyword argument (plus any keywords given to
`scaling_study`), trains a few steps under a `StepProfiler`, and returns ``prof.summary()`` (a dict with
``global_samples_per_s``; every rank must call `summary`, a collective). `train_testbed_ddp` is a
ready-made one for any testbed model.

Strong scaling keeps the global batch fixed (``batch_size`` is the global batch, split across ranks); weak
scaling keeps the per-rank batch fixed (``batch_size`` is per rank). Both report throughput, speed-up
against the smallest rank count and parallel efficiency = speed-up / ideal speed-up.

Taught in curriculum/02_data_parallel; `project_scaling` extends the same table past one machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

__all__ = ["plot_scaling", "progress_mode", "scaling_study", "train_testbed_ddp"]

MODES = ("strong", "weak")


def progress_mode() -> str:
    """How to show progress: ``"widget"`` in an interactive Jupyter front end, ``"plain"`` log lines under
    papermill, nbval, nbconvert, pytest or a script. ``HEPML_KIT_PROGRESS=widget|plain|none`` overrides."""
    forced = os.environ.get("HEPML_KIT_PROGRESS")
    if forced in ("widget", "plain", "none"):
        return forced
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return "plain"
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return "plain"
    try:
        import ipywidgets  # noqa: F401
        import psutil

        parents = " ".join(" ".join(p.cmdline()) for p in psutil.Process().parents()[:3])
    except Exception:
        return "plain"
    if any(tool in parents for tool in ("papermill", "nbclient", "nbconvert", "pytest", "nbval")):
        return "plain"  # executed headless: nobody sees a widget, its repr would clutter the output
    return "widget"


class _Progress:
    def __init__(self, total: int, mode: str, log: Callable[[str], None] | None):
        self.mode, self.log, self.total = mode, log, total
        if mode == "widget":
            import ipywidgets as w
            from IPython.display import display

            self.bar = w.IntProgress(min=0, max=total, description="scaling")
            self.label = w.HTML("starting")
            display(w.HBox([self.bar, self.label]))

    def update(self, done: int, text: str) -> None:
        if self.mode == "widget":
            self.bar.value, self.label.value = done, text
        elif self.mode == "plain" and self.log:
            self.log(f"[scaling_study] {done}/{self.total} {text}")


def scaling_study(train_fn: Callable, nprocs: list[int] = (1, 2, 4), mode: str = "strong", *, batch_size: int,
                  timeout: float = 600.0, device: str = "auto", progress: str = "auto",
                  launcher: Callable | None = None, log: Callable[[str], None] | None = print, **kwargs):
    """Run `train_fn` on each rank count in `nprocs` and return a pandas DataFrame, one row per count.

    Args:
        train_fn: see the module docstring for its contract.
        nprocs: rank counts, e.g. ``[1, 2, 4]``.
        mode: ``"strong"`` (``batch_size`` is the global batch) or ``"weak"`` (``batch_size`` per rank).
        timeout: seconds per launch.
        device: passed to `launch` (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: ``"auto"`` (`progress_mode`), ``"widget"``, ``"plain"`` or ``"none"``.
        launcher: ``launcher(fn, nprocs=, timeout=, device=, **kw) -> list`` (default `hepml_kit.launch`).
        kwargs: passed to `train_fn` on every rank.
    """
    import pandas as pd

    counts = list(nprocs)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(f"nprocs must be a list of positive integers, got {nprocs!r}")
    if len(set(counts)) != len(counts):
        raise ValueError(f"nprocs has repeated counts: {counts}")
    if mode not in MODES:
        raise ValueError(f"mode must be 'strong' or 'weak', got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if mode == "strong":
        bad = [n for n in counts if batch_size % n]
        if bad:
            raise ValueError(f"strong scaling splits the global batch {batch_size} across ranks; "
                             f"it is not divisible by {bad}")
    if progress == "auto":
        progress = progress_mode()
    if launcher is None:
        from hepml_kit import launch as launcher
    counts.sort()
    bar = _Progress(len(counts), progress, log)
    rows = []
    for i, n in enumerate(counts):
        local = batch_size // n if mode == "strong" else batch_size
        bar.update(i, f"running nprocs={n} (batch {local} per rank)")
        t0 = time.perf_counter()
        results = launcher(train_fn, nprocs=n, timeout=timeout, device=device, batch_size=local, **kwargs)
        s = results[0]
        if not isinstance(s, dict) or "global_samples_per_s" not in s:
            raise TypeError("train_fn must return StepProfiler.summary() (a dict with "
                            f"'global_samples_per_s'); rank 0 returned {type(s).__name__}")
        row = {"nprocs": n, "mode": mode, "batch_per_rank": local, "global_batch": local * n,
               "samples_per_s": s["global_samples_per_s"], "step_s": s["step_s"],
               "step_s_max": s.get("step_s_max", s["step_s"]), "unit": s.get("unit", "samples"),
               "wall_s": time.perf_counter() - t0}
        for key in ("data_frac", "forward_frac", "backward_frac", "communication_frac", "peak_memory_bytes",
                    "mfu"):
            if key in s:
                row[key] = s[key]
        rows.append(row)
        bar.update(i + 1, f"nprocs={n}: {row['samples_per_s']:.1f} {row['unit']}/s")
    df = pd.DataFrame(rows)
    base = df.iloc[0]
    df["speedup"] = df["samples_per_s"] / base["samples_per_s"]
    df["ideal_speedup"] = df["nprocs"] / base["nprocs"]
    df["efficiency"] = df["speedup"] / df["ideal_speedup"]
    df.attrs["kind"] = "measurement"
    df.attrs["title"] = f"measured {mode} scaling"
    return df


def plot_scaling(df, unit: str | None = None, title: str | None = None):
    """Throughput, speed-up and parallel efficiency against ideal, for a `scaling_study` table or a
    `project_scaling` table (labelled as a projection). Returns the matplotlib figure."""
    import logging
    import textwrap

    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # mplhep's font fallbacks
    projection = df.attrs.get("kind") == "projection"
    x = df["gpus"] if projection else df["nprocs"]
    prefix = "projected_" if projection else ""
    thr_col = f"{prefix}samples_per_s"
    speedup, efficiency = df[f"{prefix}speedup"], df[f"{prefix}efficiency"]
    # a measured speed-up is against the smallest rank count, a projected one against one GPU
    ideal = x.astype(float) if projection else x / x.iloc[0]
    unit = unit or (df["unit"].iloc[0] if "unit" in df else "samples")
    try:
        import mplhep as hep

        style = hep.style.ROOT
    except ImportError:
        style = "default"
    with plt.style.context(style):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
        if thr_col in df:
            axes[0].plot(x, df[thr_col], "o-", label="projected" if projection else "measured")
            axes[0].plot(x, df[thr_col].iloc[0] * x / x.iloc[0], "k--", label="ideal")
            axes[0].set_ylabel(f"{'projected ' if projection else ''}{unit}/s")
        else:
            axes[0].plot(x, df[f"{prefix}step_s"], "o-")
            axes[0].set_ylabel(f"{'projected ' if projection else ''}step time [s]")
        axes[1].plot(x, speedup, "o-", label="projected" if projection else "measured")
        axes[1].plot(x, ideal, "k--", label="ideal")
        axes[1].set_ylabel("speed-up")
        axes[2].plot(x, efficiency, "o-", label="projected" if projection else "measured")
        axes[2].axhline(1.0, color="k", ls="--", label="ideal")
        axes[2].set_ylabel("parallel efficiency")
        axes[2].set_ylim(0, max(1.1, 1.05 * float(efficiency.max())))
        wide = x.max() / x.min() >= 8
        for ax in axes:
            ax.set_xlabel("GPUs" if projection else "ranks")
            if wide:
                ax.set_xscale("log", base=2)
            else:
                ax.set_xticks(list(x))
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if wide:
            axes[0].set_yscale("log")
            axes[1].set_yscale("log", base=2)
        fig.suptitle(textwrap.fill(title or df.attrs.get("title", "scaling"), 60, break_on_hyphens=False),
                     fontsize="medium")
    return fig


def train_testbed_ddp(batch_size: int, model: str = "jet_transformer", preset: str = "tiny", steps: int = 10,
                      warmup_steps: int = 2, lr: float = 1e-3, seed: int = 0, comm_hook: bool = True) -> dict:
    """A `scaling_study` rank function: DDP-train a testbed model a few steps, return the profiler summary.

    Each rank generates its own share of fresh data (``batch_size`` samples per step), wraps the model in
    DistributedDataParallel when there is more than one rank, and times data / forward / backward /
    optimizer, with the exposed all-reduce split out by the comm hook (`StepProfiler.attach_ddp`): the
    driver's plain loop (`hepml_kit.parallel.driver.train` with ``RunSpec(data="per_rank")``, strategy
    ``"ddp"``).
    """
    import torch.distributed as dist

    from hepml_kit.parallel.driver import RunSpec, StepOptions, train  # the one driver, its plain loop

    world = dist.get_world_size() if dist.is_initialized() else 1
    spec = RunSpec(model, preset=preset, steps=steps, global_batch=batch_size * world, lr=lr, seed=seed,
                   optimizer="adamw", data="per_rank", step_options=StepOptions(comm_hook=comm_hook),
                   warmup_steps=warmup_steps)
    return train(spec, "ddp")["profile"]
