"""Seeing where time and memory go, how training scales, and what it would do on a machine you don't have.

- `StepProfiler` (step.py): phases of each training step, throughput, peak memory, FLOP/s and MFU,
  across ranks.
- `ProfilerCallback` (lightning_callback.py): the same for a Lightning ``Trainer`` (imported on first use).
- `profile_ops`, `nvtx_range` (trace.py): torch.profiler in a cell (top-operator table, Perfetto trace), NVTX.
- `DEVICE_PEAKS`, `device_peak` (peaks.py): GPU datasheet peaks; a measured matmul peak on CPU.
- `standard_ladder`, `climb` (ladder.py): the single-device optimisation ladder, measured rung by rung.
- `scaling_study`, `plot_scaling`, `train_testbed_ddp` (scaling.py): measured strong/weak scaling through
  `launch`.
- `project_scaling`, `PERLMUTTER` (projection.py): alpha-beta projection of data-parallel scaling to
  1024 nodes.
"""

from hepml_kit.profile.ladder import Rung, climb, run_rung, standard_ladder
from hepml_kit.profile.peaks import DEVICE_PEAKS, DevicePeak, device_peak, measure_matmul_flops
from hepml_kit.profile.projection import PERLMUTTER, Machine, allreduce_time, ddp_buckets, project_scaling
from hepml_kit.profile.scaling import plot_scaling, progress_mode, scaling_study, train_testbed_ddp
from hepml_kit.profile.step import PHASES, StepProfiler, combine_rank_summaries, count_samples
from hepml_kit.profile.trace import OpProfile, nvtx_range, profile_ops

__all__ = [
    "DEVICE_PEAKS",
    "DevicePeak",
    "Machine",
    "OpProfile",
    "PERLMUTTER",
    "PHASES",
    "ProfilerCallback",
    "Rung",
    "StepProfiler",
    "allreduce_time",
    "climb",
    "combine_rank_summaries",
    "count_samples",
    "ddp_buckets",
    "device_peak",
    "measure_matmul_flops",
    "nvtx_range",
    "plot_scaling",
    "profile_ops",
    "progress_mode",
    "project_scaling",
    "run_rung",
    "scaling_study",
    "standard_ladder",
    "train_testbed_ddp",
]


def __getattr__(name: str):
    if name == "ProfilerCallback":  # lightning takes seconds to import: only when asked for
        from hepml_kit.profile.lightning_callback import ProfilerCallback

        return ProfilerCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
