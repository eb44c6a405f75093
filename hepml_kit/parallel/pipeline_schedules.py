"""Pipeline schedules written by hand over point-to-point send/recv: GPipe and 1F1B in a dozen lines each.

The same stage as `hepml_kit.parallel.pipeline` (a `StackStage` cut by the model's recipe), but instead of
``torch.distributed.pipelining`` the schedule is plain Python (after picotron's ``pipeline_parallel.py``,
huggingface/picotron): a stage's *forward* receives activations from the previous stage (or reads the
micro-batch on stage 0), runs its layers and sends the result on (the last stage computes the loss); its
*backward* receives the output gradient from the next stage, back-propagates, and sends the input gradient
back. A schedule only decides the order:

- `gpipe`: every micro-batch's forward, then every backward (Huang et al., "GPipe", arXiv:1811.06965); all
  m micro-batches' activations are alive at once.
- `one_f_one_b`: ``p - 1 - stage`` warm-up forwards, then one forward and one backward alternately, then
  the remaining backwards (Narayanan et al., "PipeDream", arXiv:1806.03377): the same bubble
  (p - 1) / (m + p - 1), at most p micro-batches' activations alive.

Sends are non-blocking (``isend``, waited for at the end of the step), receives blocking: a stage waits
only for what it needs, which is what makes 1F1B's interleaving deadlock-free. Each message is a fixed-size
header (count, ndim, requires-grad flag, shape) followed by the tensors, so stages need not know shapes.

Taught in curriculum/04_model_parallel, before the ``torch.distributed.pipelining`` version.
"""

from __future__ import annotations

import time
import warnings
from collections import deque

import torch
import torch.distributed as dist
from torch import nn

from hepml_kit.parallel.pipeline import BubbleTimer, StackRecipe, StackStage, recipe_for, split_layers

__all__ = ["HAND_SCHEDULES", "PipelineByHand", "gpipe", "one_f_one_b"]

_HEADER = 32  # int64 slots: [n tensors, then per tensor: ndim, requires_grad, *shape]


def gpipe(stage: PipelineByHand, micro_batches: list[dict]) -> None:
    """All forwards, then all backwards, in micro-batch order."""
    saved = [stage.forward(mb) for mb in micro_batches]
    for inputs, outputs in saved:
        stage.backward(inputs, outputs)


def one_f_one_b(stage: PipelineByHand, micro_batches: list[dict]) -> None:
    """Warm-up forwards, then one forward / one backward, then the remaining backwards."""
    warmup = min(stage.n_stages - 1 - stage.index, len(micro_batches))
    saved = deque(stage.forward(mb) for mb in micro_batches[:warmup])
    for mb in micro_batches[warmup:]:
        saved.append(stage.forward(mb))
        stage.backward(*saved.popleft())
    while saved:
        stage.backward(*saved.popleft())


HAND_SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b}


class PipelineByHand:
    """This rank's stage of `model` (cut by `recipe`: a `StackRecipe`, a testbed name or a `Testbed`) over the
    ranks of `group`, stepped by a hand-written `schedule` (``"gpipe"`` or ``"1f1b"``). The interface of
    `PipelineParallel`: ``module``, ``step(batch) -> mean micro-batch loss``, ``measured_bubble()``."""

    def __init__(self, model: nn.Module, recipe, *, n_microbatches: int, schedule: str = "1f1b", group=None,
                 device: torch.device | str | None = None, measure_bubble: bool = False):
        if schedule not in HAND_SCHEDULES:
            raise ValueError(f"schedule must be one of {tuple(HAND_SCHEDULES)}, got {schedule!r}")
        if n_microbatches < 1:
            raise ValueError(f"n_microbatches must be >= 1, got {n_microbatches}")
        self.recipe = recipe if isinstance(recipe, StackRecipe) else recipe_for(recipe)
        self.group, self.n_microbatches, self.schedule = group, n_microbatches, HAND_SCHEDULES[schedule]
        self.index, self.n_stages = dist.get_rank(group), dist.get_world_size(group)
        layers = split_layers(len(model.get_submodule(self.recipe.stack)), self.n_stages)[self.index]
        self.is_first, self.is_last = self.index == 0, self.index == self.n_stages - 1
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._loss_attrs = model  # the loss reads plain attributes (e.g. origin_weight) from the model
        self.module = StackStage(model, self.recipe, layers, self.is_first, self.is_last).to(self.device)
        self.dtype = next(self.module.parameters()).dtype
        self.timer = BubbleTimer(self.module) if measure_bubble else None
        self._sends: list = []
        self._losses: list[torch.Tensor] = []
        self.last_step_seconds = float("nan")

    # ---- point to point: `to` is +1 (next stage) or -1 (previous stage)
    def _peer(self, to: int) -> int:
        r = self.index + to
        return dist.get_global_rank(self.group, r) if self.group is not None else r

    def _send(self, tensors, to: int) -> None:
        meta = [len(tensors)]
        for t in tensors:
            meta += [t.dim(), int(t.requires_grad), *t.shape]
        if len(meta) > _HEADER:
            raise ValueError(f"activations too many or too deep for the {_HEADER}-slot header")
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.device)
        header[: len(meta)] = torch.tensor(meta)
        for t in [header, *(t.detach().to(self.dtype).contiguous() for t in tensors)]:
            # keep t alive until it is sent
            self._sends.append((dist.isend(t, self._peer(to), group=self.group), t))

    def _recv(self, frm: int) -> tuple[torch.Tensor, ...]:
        header = torch.empty(_HEADER, dtype=torch.int64, device=self.device)
        dist.recv(header, self._peer(frm), group=self.group)
        meta, i, out = header.tolist(), 1, []
        for _ in range(meta[0]):
            ndim, grad = meta[i], meta[i + 1]
            t = torch.empty(meta[i + 2 : i + 2 + ndim], dtype=self.dtype, device=self.device)
            dist.recv(t, self._peer(frm), group=self.group)
            out.append(t.requires_grad_(bool(grad)))
            i += 2 + ndim
        return tuple(out)

    # ---- one micro-batch through this stage
    def forward(self, micro_batch: dict):
        """Returns (inputs, outputs) for `backward`; the last stage's output is its share of the loss."""
        inputs = self.recipe.inputs(micro_batch) if self.is_first else self._recv(-1)
        outputs = self.module(*inputs)
        if self.is_last:
            loss = self.recipe.loss(self._loss_attrs, outputs, micro_batch)
            self._losses.append(loss.detach())
            return inputs, (loss / self.n_microbatches,)  # the gradient of the mean micro-batch loss
        self._send(outputs, +1)
        return inputs, outputs

    def backward(self, inputs, outputs) -> None:
        tensors = [o for o in outputs if o.requires_grad]
        grads = None if self.is_last else self._recv(+1)
        torch.autograd.backward(tensors, grad_tensors=grads)
        if not self.is_first:
            grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in inputs if x.requires_grad]
            self._send(grads, -1)

    # ---- one training step
    def step(self, batch: dict) -> float:
        """Forward and backward of every micro-batch of `batch` (the same batch on every rank); gradients
        accumulate in ``module``'s parameters. Returns the mean micro-batch loss (the same on every rank)."""
        tensors = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
        size = len(next(iter(tensors.values())))
        if size % self.n_microbatches:
            raise ValueError(f"batch of {size} does not split into {self.n_microbatches} equal micro-batches")
        micro_batches = [{k: v.chunk(self.n_microbatches)[j] for k, v in tensors.items()}
                         for j in range(self.n_microbatches)]
        if self.timer:
            self.timer.reset()
        self._losses.clear()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # BubbleTimer's backward hook on stage 0, whose inputs need no gradient: expected, harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self.schedule(self, micro_batches)
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()
        self.last_step_seconds = time.perf_counter() - t0
        mean = torch.stack(self._losses).mean() if self._losses else torch.zeros((), device=self.device)
        last = self._peer(self.n_stages - 1 - self.index)  # the global rank of the last stage
        dist.broadcast(mean, src=last, group=self.group)  # every rank reports the same loss
        return float(mean)

    def measured_bubble(self) -> float:
        """This rank's idle share of the last `step` (needs ``measure_bubble=True``)."""
        if self.timer is None:
            raise RuntimeError("construct PipelineByHand(..., measure_bubble=True) to measure the bubble")
        return 1.0 - self.timer.busy_seconds() / self.last_step_seconds
