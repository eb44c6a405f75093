"""torch.profiler in a notebook cell, and NVTX ranges for Nsight Systems.

    with profile_ops(name="jet_transformer_baseline") as ops:
        for _ in range(5):
            train_step()
    ops.table          # pandas DataFrame: top operators by self time (device time on CUDA)
    ops.trace_path     # Chrome-trace JSON: open in https://ui.perfetto.dev or TensorBoard's profiler plugin

While a `profile_ops` block is active, `StepProfiler` phases also appear in the trace as
``phase:forward`` etc. (torch.profiler ``record_function`` labels), so operators line up with the phases.
On CUDA, `nvtx_range` (and `StepProfiler` with ``nvtx=True``) marks ranges that ``nsys profile -t cuda,nvtx``
shows on the timeline, which is how NERSC users see the same phases in Nsight Systems.

Taught in curriculum/01_single_device.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

__all__ = ["OpProfile", "active", "nvtx_range", "profile_ops"]

_ACTIVE = 0  # number of profile_ops blocks currently open


def active() -> bool:
    """True inside a `profile_ops` block (StepProfiler then labels its phases in the trace)."""
    return _ACTIVE > 0


def nvtx_range(name: str):
    """An NVTX range on CUDA (seen by Nsight Systems), a no-op context elsewhere."""
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


class OpProfile:
    """What a `profile_ops` block leaves behind: ``table`` (top operators), ``trace_path``, ``profiler``."""

    def __init__(self, profiler, trace_path: Path | None, row_limit: int):
        self.profiler, self.trace_path, self.row_limit = profiler, trace_path, row_limit
        self.table = None

    def step(self) -> None:
        """Mark a training-step boundary (ProfilerStep#N in the trace)."""
        self.profiler.step()

    def _build_table(self):
        import pandas as pd

        rows = []
        for evt in self.profiler.key_averages():
            self_dev = getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0))
            dev = getattr(evt, "device_time_total", getattr(evt, "cuda_time_total", 0.0))
            rows.append({"operator": evt.key, "calls": evt.count,
                         "self_cpu_ms": evt.self_cpu_time_total / 1e3,
                         "cpu_total_ms": evt.cpu_time_total / 1e3,
                         "self_device_ms": self_dev / 1e3, "device_total_ms": dev / 1e3})
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        on_device = df["self_device_ms"].sum() > 0
        key = "self_device_ms" if on_device else "self_cpu_ms"
        df = df[~df["operator"].str.startswith(("ProfilerStep", "phase:"))]
        df["share"] = df[key] / df[key].sum()
        if not on_device:
            df = df.drop(columns=["self_device_ms", "device_total_ms"])
        return df.sort_values(key, ascending=False).head(self.row_limit).reset_index(drop=True)


@contextlib.contextmanager
def profile_ops(name: str = "trace", trace_dir: str | os.PathLike | None = None, *, row_limit: int = 15,
                record_shapes: bool = False, profile_memory: bool = False, with_stack: bool = False,
                show: bool = True, write_trace: bool = True):
    """Profile the operators run inside the block with torch.profiler (CPU, plus CUDA when present).

    Args:
        name: trace file stem.
        trace_dir: where ``<name>.<time>.pt.trace.json`` goes (default ``$HEPML_KIT_TRACE_DIR`` or
            ``build/traces``); TensorBoard reads the folder (``tensorboard --logdir``), Perfetto the file.
        row_limit: operators kept in ``table``.
        show: display the table at the end of the block (in a notebook as a DataFrame).
    """
    global _ACTIVE
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities, record_shapes=record_shapes,
                                  profile_memory=profile_memory, with_stack=with_stack)
    trace_path = None
    if write_trace:
        folder = Path(trace_dir or os.environ.get("HEPML_KIT_TRACE_DIR", "build/traces"))
        folder.mkdir(parents=True, exist_ok=True)
        trace_path = folder / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.pt.trace.json"
    result = OpProfile(prof, trace_path, row_limit)
    _ACTIVE += 1
    try:
        with prof:
            yield result
    finally:
        _ACTIVE -= 1
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    result.table = result._build_table()
    if show:
        _show(result)


def _show(result: OpProfile) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(result.table.round(3))
            if result.trace_path:
                print(f"trace: {result.trace_path} (open in https://ui.perfetto.dev or TensorBoard)")
            return
    except ImportError:
        pass
    print(result.table.round(3).to_string())
    if result.trace_path:
        print(f"trace: {result.trace_path}")
