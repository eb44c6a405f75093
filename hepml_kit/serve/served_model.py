"""What a served model is: a PyTorch module behind named tensors (`ServedModel`), how Triton schedules it
(`Batching`), and what the request guard lets through to it (`model_limits`).

The same `ServedModel` is bound by `InferenceServer` (server.py), run in-process as the baseline
(`ServedModel.run`) and written to a Triton model repository (export.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from hepml_kit.serve.encoding import TensorSpec
from hepml_kit.serve.guard import ModelLimits

__all__ = ["Batching", "ServedModel", "model_limits"]


@dataclass(frozen=True)
class Batching:
    """How Triton schedules a model: merge queued requests (dynamic) or run each request alone.

    Attributes:
        max_batch_size: most samples in one execution (and in one request).
        max_queue_delay_us: how long a request may wait for others to join its batch (0: merge only what is
            already queued when the model becomes free).
        preferred_batch_sizes: batch sizes the batcher tries to form first.
        dynamic: False gives batch-1 serving: every request is executed on its own.
    """

    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    dynamic: bool = True

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must lie in [1, {self.max_batch_size}]")


@dataclass
class ServedModel:
    """A PyTorch module behind named tensors: what the server binds and what `export.py` writes.

    `module(*inputs in spec order)` returns a tuple of outputs in spec order, all with the batch axis first.
    `validate(request)` (optional) checks one request's content and raises ValueError with a clear message.
    `example(batch, seed)` returns a valid request of that batch size (for tracing, warm-up and load tests).
    """

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example: Callable[[int, int], dict[str, np.ndarray]]
    batching: Batching = field(default_factory=Batching)
    device: str = "cpu"
    validate: Callable[[dict[str, np.ndarray]], None] | None = None
    unit: str = "samples"

    def __post_init__(self):
        self.module = self.module.to(self.device).eval()

    def with_batching(self, batching: Batching, name: str | None = None) -> ServedModel:
        """The same module under another schedule, e.g. ``m.with_batching(Batching(dynamic=False), m.name +
        "_b1")``."""
        return replace(self, batching=batching, name=name or self.name)

    @torch.inference_mode()
    def run(self, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """In-process inference on one (batched) request: the baseline, and what the server executes."""
        args = [torch.from_numpy(np.ascontiguousarray(request[s.name])).to(self.device) for s in self.inputs]
        outs = self.module(*args)
        return {
            s.name: o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy()
            for s, o in zip(self.outputs, outs)
        }


def model_limits(model: ServedModel, max_request_bytes: int = 64 << 20) -> ModelLimits:
    """What the guard lets through to `model`: its inputs' datatypes and per-sample shapes, its
    `max_batch_size`, and a request size of at most a full batch (`max_request_bytes` if a dimension is
    free)."""
    full_batch = 0
    for s in model.inputs:
        per_sample = int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize
        full_batch = -1 if -1 in s.shape or full_batch < 0 else full_batch + per_sample
    limit = max_request_bytes if full_batch < 0 else full_batch * model.batching.max_batch_size
    return ModelLimits(
        name=model.name,
        inputs={s.name: (s.datatype, tuple(s.shape)) for s in model.inputs},
        max_batch_size=model.batching.max_batch_size,
        max_request_bytes=limit,
    )
