"""`RunSpec`: what one training run is (which testbed, preset, steps, batch, learning rate, seed, ...), as one
frozen dataclass that every trainer of the kit reads: the data-parallel strategies (`compare`), the
model-parallel ones (`runner`), Lightning (`lightning_ddp`), the GPU checks, and the one entry point over all
of them, `hepml_kit.parallel.driver.train(spec, strategy)`; also the single-device ladder (`profile.ladder`),
the scaling study (`profile.scaling`) and the HPO trials (`hpo.objective`), whose per-step settings are a
`StepOptions`. Also the one `default_device()`.

A leaf module (torch and the testbed registry only), so every trainer can import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from hepml_kit.models._testbed import Testbed

__all__ = ["DATA_MODES", "OPTIMIZERS", "RunSpec", "StepOptions", "default_device", "resolve_testbed"]

DATA_MODES = ("shared", "per_rank", "given")
OPTIMIZERS = ("sgd", "adamw", "testbed")


def default_device() -> torch.device:
    """This rank's CUDA device when there is one and the process group (if any) is nccl, else the CPU."""
    if torch.cuda.is_available() and (not dist.is_initialized() or dist.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_testbed(testbed: str | Testbed) -> Testbed:
    """A `Testbed` from a registry name (``"jet_transformer"``) or a user's own `Testbed` object."""
    if isinstance(testbed, Testbed):
        return testbed
    from hepml_kit.models import get

    return get(testbed)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How each step of the driver's plain loop runs: the knobs of lesson 01's ladder (PyTorch performance
    tuning guide) and the scaling study's communication timing.

    Attributes:
        workers: DataLoader worker processes building batches; 0: batches made in the training process.
        pin_memory: page-locked host batches, asynchronous copies (CUDA only).
        bf16: ``torch.autocast(dtype=torch.bfloat16)`` around the forward (Micikevicius et al. 2018).
        fused_optimizer: ``torch.optim.AdamW(fused=True)`` (with ``RunSpec.optimizer="adamw"``).
        compile: ``torch.compile(model)`` (Ansel et al. 2024, "PyTorch 2").
        activation_memory_budget: with compile, the share of activation memory the compiled backward may keep.
        comm_hook: under DDP, time the exposed all-reduce with a comm hook (`StepProfiler.attach_ddp`).
    """

    workers: int = 0
    pin_memory: bool = False
    bf16: bool = False
    fused_optimizer: bool = False
    compile: bool = False
    activation_memory_budget: float | None = None
    comm_hook: bool = True

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"StepOptions.workers must be an integer >= 0, got {self.workers!r}")
        if self.activation_memory_budget is not None and not self.compile:
            raise ValueError("activation_memory_budget needs compile=True")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run, whatever strategy trains it.

    Attributes:
        testbed: a `hepml_kit.models` name or a `Testbed` (a learner's own model); ``None`` lets the
            strategy choose (the tracking GNN for ``"graph"``, else the jet transformer).
        preset: ``"tiny" | "small" | "full"``.
        steps: optimizer steps.
        global_batch: samples per step over all ranks.
        lr, seed: learning rate; seed of the data, the shuffling and the initial weights.
        micro_batches: pipeline micro-batches, or the reference's gradient-accumulation pieces.
        shards: the one-process reference of a model-parallel run accumulates over this many data shards.
        device: ``None`` for `default_device()`, else a device string.
        dims: hybrid layout, e.g. ``{"dp": 2, "tp": 2}``.
        num_layers, config_overrides: the model's depth, any other config fields.
        optimizer: model-parallel runs: ``"sgd"`` (momentum 0.9) or ``"adamw"``; data-parallel runs use
            the testbed's own optimizer. The plain loop (``data`` other than ``"shared"``): ``"adamw"``
            (torch's, fused if ``step_options.fused_optimizer``) or ``"testbed"`` (the testbed's own).
        bucket_cap_mb: DDP / `DataParallelBucket` bucket size.
        timing_steps: extra steps timed for the communication share.
        checkpoint_dir, stop_after, resume: stop after `stop_after` steps saving a checkpoint, or resume.
        return_params, return_grads: include the final parameters / first-step gradients in the result.
        data: where batches come from. ``"shared"``: every rank draws the same seeded global batches and
            keeps its share (the exact comparisons of `compare`/`runner`); ``"per_rank"``: each rank
            generates its own fresh share (the scaling study); ``"given"``: the caller passes ``data=`` or
            ``batches=`` to `driver.train` (the ladder). The last two run the driver's plain loop.
        config: a config object used instead of ``testbed.config(preset)`` (e.g. a ladder rung's).
        step_options: the plain loop's per-step settings (`StepOptions`).
        warmup_steps: the plain loop's unmeasured first steps, run before the `steps` measured ones.
    """

    testbed: str | Testbed | None = None
    preset: str = "tiny"
    steps: int = 8
    global_batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    micro_batches: int = 1
    shards: int = 1
    device: str | None = None
    dims: dict | None = None
    num_layers: int | None = None
    config_overrides: dict | None = None
    optimizer: str = "sgd"
    bucket_cap_mb: float = 25.0
    timing_steps: int = 3
    checkpoint_dir: str | None = None
    stop_after: int | None = None
    resume: bool = False
    return_params: bool = True
    return_grads: bool = False
    data: str = "shared"
    config: Any = None
    step_options: StepOptions = StepOptions()
    warmup_steps: int = 1

    def __post_init__(self):
        for name in ("steps", "global_batch", "micro_batches", "shards"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RunSpec.{name} must be a positive integer, got {value!r}")
        if self.testbed is not None and not isinstance(self.testbed, (str, Testbed)):
            kind = type(self.testbed).__name__
            raise TypeError(f"RunSpec.testbed must be a testbed name or a Testbed, got {kind}")
        if self.data not in DATA_MODES:
            raise ValueError(f"RunSpec.data must be one of {', '.join(DATA_MODES)}, got {self.data!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"RunSpec.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if not isinstance(self.step_options, StepOptions):
            kind = type(self.step_options).__name__
            raise TypeError(f"RunSpec.step_options must be a StepOptions, got {kind}")
        warmup = self.warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"RunSpec.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with some fields changed (``spec.replace(steps=2)``)."""
        return dataclasses.replace(self, **changes)

    def model_config(self, testbed: Testbed) -> Any:
        """`config` if given, else the testbed's config for `preset`."""
        return self.config if self.config is not None else testbed.config(self.preset)

    def torch_device(self) -> torch.device:
        return torch.device(self.device) if self.device else default_device()
