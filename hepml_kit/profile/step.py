"""Where a training step's time and memory go: phases, throughput, peak memory, FLOP/s and MFU.

    prof = StepProfiler(samples_per_step=256, flops_per_sample=tb.flops_per_sample(cfg), unit="jets")
    for batch in prof.iterate(loader):          # each iteration is one step; "data" = waiting for the batch
        with prof.phase("forward"):
            loss = model(batch)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            opt.step(); opt.zero_grad()
    prof.summary()   # dict: step_s, data_s, forward_s, ..., samples_per_s, jets_per_s, peak_memory_bytes, mfu

or ``with prof.step(): with prof.phase("data"): ...`` for hand-written loops.

How time is taken. On CPU each phase boundary reads the host clock (`time.perf_counter`, ~0.1 µs), which is
exact because CPU kernels run synchronously. On CUDA kernels are asynchronous, so a host clock would time
the *launch*; each boundary instead records a CUDA event on the current stream, and events are read only
when they are done (polled without blocking) or at `summary()`, which synchronises once. The phases then
partition the GPU's timeline: "data" is the time the GPU sat idle waiting for the host to deliver the
batch. With ``nvtx=True`` (default on CUDA) every step and phase is also an NVTX range, so Nsight Systems
(``nsys profile -t cuda,nvtx``) shows the same phases. "other" is whatever in a step no phase covers.

Communication. Under DDP the gradient all-reduce runs inside ``loss.backward()``, overlapped with it.
`attach_ddp(ddp_model)` registers a DDP communication hook (the default all-reduce, wrapped) that stamps
every gradient bucket when it is launched and when it completes. All gradients exist once the last bucket
is launched, so the part of "backward" after that launch is communication the backward could not hide: it
is moved from "backward" to "communication" (the exposed communication). ``comm_in_flight_s`` is the time
any bucket was in flight, overlapped or not, and ``comm_bytes`` the bytes all-reduced per step. Without the
hook, the exposed communication stays inside "backward"; the other way to see it is to time the same step
with ``ddp_model.no_sync()`` and subtract (what NERSC's SC21 tutorial called "DDP on vs off").

Across ranks `summary()` gathers every rank's figures (``all_gather_object``; a collective: every rank
must call it) and reports the mean with ``_min``/``_max`` so a straggler shows, plus ``global_samples_per_s``.

Taught in curriculum/01_single_device; used by scaling studies (`scaling_study`) and the parallel lessons.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from hepml_kit.profile import trace as _trace
from hepml_kit.profile.peaks import device_peak

__all__ = ["PHASES", "StepProfiler", "combine_rank_summaries", "count_samples"]

PHASES = ("data", "forward", "backward", "optimizer", "communication", "other")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0: ``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak resident memory of this process since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def count_samples(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor (dict, list, tuple or tensor)."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v):
                return count_samples(v)
    if isinstance(batch, (list, tuple)) and batch:
        return count_samples(batch[0])
    raise ValueError("cannot count samples in this batch: pass samples_per_step= (an int or a function of "
                     "the batch)")


class _Step:
    __slots__ = ("samples", "start", "end", "phases", "comm")

    def __init__(self, samples, start):
        self.samples, self.start, self.end = samples, start, None
        self.phases: list = []  # [name, start stamp, end stamp]
        self.comm: list = []  # [launch stamp, done stamp, bytes]


class _PhaseContext:
    __slots__ = ("prof", "name")

    def __init__(self, prof, name):
        self.prof, self.name = prof, name

    def __enter__(self):
        self.prof.begin_phase(self.name)

    def __exit__(self, *exc):
        self.prof.end_phase()


class _StepContext:
    __slots__ = ("prof", "samples")

    def __init__(self, prof, samples):
        self.prof, self.samples = prof, samples

    def __enter__(self):
        self.prof.begin_step(self.samples)
        return self.prof

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.prof.end_step()
        else:
            self.prof.abort_step()


class StepProfiler:
    """Times the phases of training steps and reports throughput, memory, FLOP/s and MFU.

    Args:
        samples_per_step: samples per step (this rank), or a function ``batch -> int``; default: the
            leading dimension of the batch's first tensor.
        flops_per_sample: training FLOPs per sample (forward + backward, ~3× forward), for FLOP/s and MFU.
        unit: what a sample is (``"jets"``, ``"graphs"``, ``"events"``): adds ``<unit>_per_s`` to the summary.
        device: where the model runs (default: CUDA if available): picks events vs host clock.
        dtype: compute precision for the MFU peak (``torch.bfloat16`` under bf16 autocast).
        warmup_steps: first steps left out of the summary (allocator warm-up, cuDNN autotune, compilation).
        peak_flops: override the device peak (FLOP/s).
        nvtx: NVTX ranges per step and phase (default: on CUDA).
        track_memory: peak memory over the profiled steps: CUDA max allocated on a GPU; on CPU the process's
            peak resident memory (Linux VmHWM, reset at the first step; elsewhere RSS sampled every 8 steps).
    """

    def __init__(self, samples_per_step: int | Callable | None = None, flops_per_sample: float | None = None,
                 unit: str = "samples", *, device: torch.device | str | None = None,
                 dtype: torch.dtype | str = torch.float32, warmup_steps: int = 1,
                 peak_flops: float | None = None, nvtx: bool | None = None, track_memory: bool = True):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if flops_per_sample is not None and not flops_per_sample > 0:
            raise ValueError(f"flops_per_sample must be positive, got {flops_per_sample}")
        if not unit.isidentifier():
            raise ValueError(f"unit must be a plain word such as 'jets', got {unit!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.samples_per_step, self.flops_per_sample, self.unit = samples_per_step, flops_per_sample, unit
        self.dtype, self.warmup_steps, self._peak_flops = dtype, warmup_steps, peak_flops
        self.nvtx = self.cuda if nvtx is None else (nvtx and self.cuda)
        self.track_memory = track_memory
        self._open: _Step | None = None
        self._phase: list | None = None
        self._label = None  # torch.profiler label of the open phase, inside profile_ops
        self._pending: list[_Step] = []  # CUDA steps whose events are not read yet
        self.records: list[dict] = []  # one dict per finished step: step_s, samples, <phase>_s, comm
        self._rss_peak = 0
        self._vm_hwm = False  # True once the kernel's peak-RSS mark was reset (Linux): read it at summary
        self._proc = None  # psutil.Process, only where the kernel's peak-RSS mark cannot be reset

    # ----- stamps: host clock, plus a CUDA event on GPU -----------------------------------------------
    def _stamp(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return time.perf_counter()

    def _elapsed(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    # ----- the step/phase API (context managers are built on these; so is the Lightning callback) ----
    def step(self, samples: int | None = None) -> _StepContext:
        """``with prof.step():`` one training step (an exception inside discards the step)."""
        return _StepContext(self, samples)

    def phase(self, name: str) -> _PhaseContext:
        """``with prof.phase("forward"):`` one phase of the current step."""
        return _PhaseContext(self, name)

    def begin_step(self, samples: int | None = None) -> None:
        if self._open is not None:
            raise RuntimeError("a step is already open: end_step() (or leave `with prof.step()`) first")
        if self.track_memory and not self.records and not self._pending:  # first step: reset the peak
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                self._vm_hwm = _reset_peak_rss()
                if not self._vm_hwm and self._proc is None:
                    import psutil

                    self._proc = psutil.Process()
        if self.nvtx:
            torch.cuda.nvtx.range_push(f"step {len(self.records) + len(self._pending)}")
        self._open = _Step(samples, self._stamp())

    def begin_phase(self, name: str) -> None:
        if self._open is None:
            raise RuntimeError(f"phase {name!r} outside a step: use `with prof.step():` or "
                               "prof.iterate(loader)")
        if self._phase is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._phase[0]!r}: phases must not nest")
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)
        if _trace.active():  # label the phase in a surrounding profile_ops trace
            self._label = torch.profiler.record_function(f"phase:{name}")
            self._label.__enter__()
        self._phase = [name, self._stamp(), None]

    def end_phase(self) -> None:
        if self._phase is None:
            return
        self._phase[2] = self._stamp()
        self._open.phases.append(self._phase)
        self._phase = None
        if self._label is not None:
            self._label.__exit__(None, None, None)
            self._label = None
        if self.nvtx:
            torch.cuda.nvtx.range_pop()

    def end_step(self, samples: int | None = None) -> None:
        if self._open is None:
            raise RuntimeError("end_step() without begin_step()")
        self.end_phase()
        step, self._open = self._open, None
        step.end = self._stamp()
        if samples is not None:
            step.samples = samples
        if step.samples is None:
            if not isinstance(self.samples_per_step, int):
                raise ValueError("samples per step unknown: give StepProfiler(samples_per_step=...) or "
                                 "step(samples=)")
            step.samples = self.samples_per_step
        if self.nvtx:
            torch.cuda.nvtx.range_pop()
        if self._proc is not None and not self._vm_hwm and len(self.records) % 8 == 0:
            self._rss_peak = max(self._rss_peak, self._proc.memory_info().rss)  # ~30 us: not every step
        if self.cuda:
            self._pending.append(step)
            self._resolve(block=False)
        else:
            self.records.append(self._durations(step))

    def abort_step(self) -> None:
        """Forget the open step (e.g. the batch that never came at the end of an epoch)."""
        if self._phase is not None:
            self._phase = None
            if self._label is not None:
                self._label.__exit__(None, None, None)
                self._label = None
            if self.nvtx:
                torch.cuda.nvtx.range_pop()
        if self._open is not None:
            self._open = None
            if self.nvtx:
                torch.cuda.nvtx.range_pop()

    def iterate(self, iterable: Iterable, samples: int | Callable | None = None) -> Iterator:
        """Yield batches of `iterable`; each iteration is one step whose "data" phase is the wait for it."""
        counter = samples if samples is not None else self.samples_per_step
        it = iter(iterable)
        while True:
            self.begin_step()
            self.begin_phase("data")
            try:
                batch = next(it)
            except StopIteration:
                self.abort_step()
                return
            self.end_phase()
            self._open.samples = counter(batch) if callable(counter) else (counter or count_samples(batch))
            try:
                yield batch
            finally:  # also when the loop body breaks out: the body of this step has run
                if self._open is not None:
                    self.end_step()

    # ----- DDP communication -------------------------------------------------------------------------
    def attach_ddp(self, ddp_model, process_group=None) -> None:
        """Time DDP's gradient all-reduce with a communication hook (the default all-reduce, stamped)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        prof = self

        def timed_allreduce(state, bucket):
            buf = bucket.buffer()
            rec = [prof._stamp(), None, buf.numel() * buf.element_size()]
            if prof._open is not None:
                prof._open.comm.append(rec)
            fut = default_hooks.allreduce_hook(state, bucket)

            def done(f):
                rec[1] = prof._stamp()  # on CUDA the callback's stream waits for the all-reduce
                return f.value()

            return fut.then(done)

        ddp_model.register_comm_hook(process_group, timed_allreduce)

    # ----- turning stamps into seconds ---------------------------------------------------------------
    def _resolve(self, block: bool) -> None:
        if block and self._pending:
            torch.cuda.synchronize(self.device)
        while self._pending and (block or self._pending[0].end.query()):
            self.records.append(self._durations(self._pending.pop(0)))

    def _durations(self, step: _Step) -> dict:
        rec = {"step_s": self._elapsed(step.start, step.end), "samples": step.samples}
        backward_end = None
        for name, a, b in step.phases:
            rec[f"{name}_s"] = rec.get(f"{name}_s", 0.0) + self._elapsed(a, b)
            if name == "backward":
                backward_end = b
        comm = [c for c in step.comm if c[1] is not None]
        if comm:
            offsets = sorted((self._elapsed(step.start, a), self._elapsed(step.start, b)) for a, b, _ in comm)
            in_flight, cur_a, cur_b = 0.0, *offsets[0]
            for a, b in offsets[1:]:  # union of the buckets' in-flight intervals
                if a > cur_b:
                    in_flight, cur_a, cur_b = in_flight + cur_b - cur_a, a, b
                else:
                    cur_b = max(cur_b, b)
            rec["comm_in_flight_s"] = in_flight + cur_b - cur_a
            rec["comm_bytes"] = float(sum(c[2] for c in comm))
            if backward_end is not None:
                last_launch = max(self._elapsed(step.start, a) for a, _, _ in comm)
                exposed = self._elapsed(step.start, backward_end) - last_launch
                exposed = min(max(exposed, 0.0), rec["backward_s"])
                rec["backward_s"] -= exposed
                rec["communication_s"] = rec.get("communication_s", 0.0) + exposed
        named = sum(v for k, v in rec.items() if k.endswith("_s") and k not in ("step_s", "comm_in_flight_s"))
        rec["other_s"] = max(rec["step_s"] - named, 0.0)
        return rec

    # ----- results -----------------------------------------------------------------------------------
    def peak_flops(self) -> tuple[float, str]:
        if self._peak_flops is not None:
            return self._peak_flops, "given"
        return device_peak(self.device, self.dtype)

    def local_summary(self) -> dict:
        """This rank's figures over the steps after warm-up (synchronises CUDA once)."""
        self._resolve(block=True)
        recs = self.records[self.warmup_steps:]
        if not recs:
            raise RuntimeError(f"no steps measured: {len(self.records)} step(s) recorded, "
                               f"{self.warmup_steps} of them warm-up")
        total_s = sum(r["step_s"] for r in recs)
        samples = sum(r["samples"] for r in recs)
        step_times = [r["step_s"] for r in recs]
        out: dict[str, Any] = {
            "device": str(self.device), "unit": self.unit, "steps": len(recs),
            "samples_per_step": samples / len(recs),
            "step_s": total_s / len(recs),
            "step_s_median": statistics.median(step_times),
            "step_s_std": math.sqrt(sum((t - total_s / len(recs)) ** 2 for t in step_times) / len(recs)),
        }
        names = sorted({k for r in recs for k in r if k.endswith("_s") and k != "step_s"},
                       key=lambda k: (PHASES.index(k[:-2]) if k[:-2] in PHASES else len(PHASES), k))
        for k in names:
            out[k] = sum(r.get(k, 0.0) for r in recs) / len(recs)
            if k[:-2] in PHASES:
                out[k[:-2] + "_frac"] = out[k] / out["step_s"] if out["step_s"] > 0 else math.nan
        if any("comm_bytes" in r for r in recs):
            out["comm_bytes"] = sum(r.get("comm_bytes", 0.0) for r in recs) / len(recs)
        out["samples_per_s"] = samples / total_s if total_s > 0 else math.nan
        if self.unit != "samples":
            out[f"{self.unit}_per_s"] = out["samples_per_s"]
        if self.track_memory:
            if self.cuda:
                out["peak_memory_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
                out["memory_kind"] = "cuda max allocated"
            elif self._vm_hwm:
                out["peak_memory_bytes"] = float(_peak_rss())
                out["memory_kind"] = "process peak RSS"
            else:
                out["peak_memory_bytes"] = float(self._rss_peak)
                out["memory_kind"] = "process RSS, sampled"
        if self.flops_per_sample:
            peak, source = self.peak_flops()
            out["flops_per_s"] = self.flops_per_sample * out["samples_per_s"]
            out["peak_flops"] = peak
            out["peak_source"] = source
            out["mfu"] = out["flops_per_s"] / peak
        return out

    def summary(self, gather: bool = True) -> dict:
        """Figures over the steps after warm-up; across all ranks when `torch.distributed` is initialised
        (a collective: call it on every rank). Keys: see `combine_rank_summaries`."""
        local = self.local_summary()
        import torch.distributed as dist

        if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone: list = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, local)
            return combine_rank_summaries(everyone)
        return combine_rank_summaries([local])

    def table(self, summary: dict | None = None):
        """The phases as a pandas DataFrame: ms per step, share of the step (min/max across ranks)."""
        import pandas as pd

        s = summary or self.summary()
        rows = []
        for p in PHASES + ("step",):
            if f"{p}_s" not in s:
                continue
            row = {"phase": p, "ms_per_step": 1e3 * s[f"{p}_s"], "share": s[f"{p}_s"] / s["step_s"]}
            if s.get("world_size", 1) > 1:
                row["ms_min"], row["ms_max"] = 1e3 * s[f"{p}_s_min"], 1e3 * s[f"{p}_s_max"]
            rows.append(row)
        return pd.DataFrame(rows).set_index("phase")

    def report(self, summary: dict | None = None) -> str:
        """A few readable lines (throughput, memory, MFU) followed by the phase table."""
        s = summary or self.summary()
        lines = [f"{s['steps']} steps on {s['device']} x{s['world_size']}: "
                 f"{s['global_samples_per_s']:.1f} {s['unit']}/s, {1e3 * s['step_s']:.2f} ms/step"]
        if "peak_memory_bytes" in s:
            lines.append(f"peak memory ({s['memory_kind']}): {s['peak_memory_bytes'] / 2**30:.3f} GiB")
        if "mfu" in s:
            lines.append(f"{_si(s['flops_per_s'])}FLOP/s achieved, MFU {100 * s['mfu']:.2f}% "
                         f"of {_si(s['peak_flops'])}FLOP/s ({s['peak_source']})")
        text = "\n".join(lines) + "\n" + self.table(s).round(3).to_string()
        print(text)
        return text


def _si(x: float) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}"
    return f"{x:.3g} "


def combine_rank_summaries(summaries: list[dict]) -> dict:
    """Merge per-rank summaries: numbers become the mean over ranks with ``<key>_min``/``<key>_max``;
    ``world_size``, ``global_samples_per_s`` (sum), ``global_<unit>_per_s`` and ``straggler_rank`` (the
    slowest rank by step time) are added. Other values come from rank 0."""
    if not summaries:
        raise ValueError("no rank summaries to combine")
    first = summaries[0]
    out: dict[str, Any] = {"world_size": len(summaries)}
    for key, value in first.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [s[key] for s in summaries if key in s]
            same_int = isinstance(value, int) and all(v == value for v in values)
            out[key] = value if same_int else sum(values) / len(values)
            if len(summaries) > 1:
                out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
        else:
            out[key] = value
    out["global_samples_per_s"] = sum(s["samples_per_s"] for s in summaries)
    if first.get("unit", "samples") != "samples":
        out[f"global_{first['unit']}_per_s"] = out["global_samples_per_s"]
    out["straggler_rank"] = max(range(len(summaries)), key=lambda r: summaries[r]["step_s"])
    return out
