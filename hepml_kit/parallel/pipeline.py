"""Pipeline parallelism: a deep model's layer stack cut into stages, one per rank, fed micro-batches.

Each rank holds only its stage's parameters and optimizer state (1/p of the stack); activations cross
stage boundaries with point-to-point sends. A batch is cut into m micro-batches so the stages can work
at once; what remains idle is the *bubble*, a fraction (p - 1) / (m + p - 1) of each step for p equal
stages (Huang et al., "GPipe", NeurIPS 2019, arXiv:1811.06965). GPipe runs all forwards then all
backwards (activations of all m micro-batches alive); 1F1B (Narayanan et al., "PipeDream", SOSP 2019,
arXiv:1806.03377; "Megatron-LM" 2021, arXiv:2104.04473) alternates one forward and one backward after a
warm-up, the same bubble with at most p micro-batches of activations alive.

Built on ``torch.distributed.pipelining`` (``PipelineStage``, ``ScheduleGPipe``, ``Schedule1F1B``).
A `StackRecipe` says how to cut one model family: which submodules come before the stack (stage 0),
the stack itself, which come after (last stage), and how to compute the loss from the last stage's
outputs. Each model's recipe lives in its own file beside its TESTBED (``Testbed.extra["pipeline"]``,
e.g. `hepml_kit.models.jet_transformer.PIPELINE_PLAN`); this module stays generic. A `StackStage` keeps
the model's own submodule names (``encoder.layers.3.attn.q_proj.weight``), so checkpoints written by any
number of stages (`hepml_kit.parallel.checkpoint`) load into any other.

Taught in curriculum/04_model_parallel. On a Perlmutter node: ``hepml-kit launch --nprocs 4 train_pp.py``
(4 stages, one per GPU); across nodes, pipeline stages are the cheapest cut to put on the network
(one activation per micro-batch per boundary): ``srun -N 2 --ntasks-per-node 4 --gpus-per-node 4 ...``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "RECIPES",
    "SCHEDULES",
    "ReplayOutputs",
    "BubbleTimer",
    "PipelineParallel",
    "StackRecipe",
    "StackStage",
    "bubble_fraction",
    "recipe_for",
    "split_layers",
]

SCHEDULES = ("gpipe", "1f1b")


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe/1F1B step with equal stages: (p - 1) / (m + p - 1)."""
    if n_stages < 1 or n_microbatches < 1:
        raise ValueError(f"need n_stages >= 1 and n_microbatches >= 1, got {n_stages}, {n_microbatches}")
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


def split_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous, as-even-as-possible layer ranges per stage (earlier stages get the extra layers)."""
    if n_stages < 1 or n_layers < n_stages:
        raise ValueError(f"cannot cut {n_layers} layers into {n_stages} stages (need "
                         "at least one layer each)")
    base, extra = divmod(n_layers, n_stages)
    bounds = [0]
    for s in range(n_stages):
        bounds.append(bounds[-1] + base + (1 if s < extra else 0))
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------------------------------
# How to cut a model family into stages
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackRecipe:
    """How to pipeline one model family.

    Attributes:
        inputs: ``inputs(batch) -> tuple[Tensor, ...]`` fed to stage 0 (cut along dim 0 into micro-batches).
        entry_modules / exit_modules: dotted paths of the submodules run before / after the stack.
        stack: dotted path of the ``nn.ModuleList`` that is cut into stages.
        entry: ``entry(stage, *inputs) -> activations`` (a tuple of tensors; floating point only).
        layer: ``layer(module, activations) -> activations``: one layer of the stack.
        exit: ``exit(stage, activations) -> outputs`` (tuple of tensors).
        loss: ``loss(model, outputs, micro_batch) -> scalar``, the testbed's objective on those outputs.
    """

    inputs: Callable[[dict], tuple]
    entry_modules: tuple[str, ...]
    stack: str
    exit_modules: tuple[str, ...]
    entry: Callable
    layer: Callable
    exit: Callable
    loss: Callable


class ReplayOutputs(nn.Module):
    """Stands in for a model inside its testbed `loss`: returns precomputed outputs (plus attributes), so a
    recipe's ``loss`` can reuse the testbed's own loss on the last stage's outputs."""

    def __init__(self, outputs, **attributes):
        super().__init__()
        self._outputs = outputs
        self.__dict__.update(attributes)

    def forward(self, *args):
        return self._outputs


_Replay = ReplayOutputs


class _PlansOfTestbeds(Mapping):
    """``RECIPES[name]``: the pipeline plan a testbed's model file carries (``Testbed.extra["pipeline"]``)."""

    def __getitem__(self, name: str) -> StackRecipe:
        from hepml_kit.models import get, names

        if name not in names() or "pipeline" not in get(name).extra:
            raise KeyError(name)
        return get(name).extra["pipeline"]

    def __iter__(self):
        from hepml_kit.models import get, names

        return iter([n for n in names() if "pipeline" in get(n).extra])

    def __len__(self) -> int:
        return len(list(iter(self)))


RECIPES = _PlansOfTestbeds()


def recipe_for(testbed) -> StackRecipe:
    """The `StackRecipe` of a testbed (a name or a `Testbed`): its model file's pipeline plan."""
    from hepml_kit.parallel.spec import resolve_testbed

    tb = resolve_testbed(testbed)
    if "pipeline" not in tb.extra:
        raise ValueError(f"no pipeline recipe for {tb.name!r}; known: {', '.join(RECIPES)} "
                         "(a model file declares one as Testbed.extra['pipeline'])")
    return tb.extra["pipeline"]


def _set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` at dotted `path` under `root`, creating empty containers on the way."""
    *parents, leaf = path.split(".")
    for name in parents:
        if not hasattr(root, name):
            root.add_module(name, nn.Module())
        root = getattr(root, name)
    root.add_module(leaf, module)


class StackStage(nn.Module):
    """One pipeline stage: [entry modules] + ``stack[layers]`` + [exit modules], under the model's own
    names (so ``state_dict`` keys equal the full model's for the parameters this stage holds)."""

    def __init__(self, model: nn.Module, recipe: StackRecipe, layers: range, first: bool, last: bool):
        super().__init__()
        self.recipe, self.first, self.last, self.layer_ids = recipe, first, last, list(layers)
        stack = model.get_submodule(recipe.stack)
        _set_path(self, recipe.stack, nn.ModuleDict({str(i): stack[i] for i in layers}))
        for path in (recipe.entry_modules if first else ()) + (recipe.exit_modules if last else ()):
            _set_path(self, path, model.get_submodule(path))

    def forward(self, *acts):
        if self.first:
            acts = self.recipe.entry(self, *acts)
        for layer in self.get_submodule(self.recipe.stack).values():
            acts = self.recipe.layer(layer, acts)
        return self.recipe.exit(self, acts) if self.last else acts


# ----------------------------------------------------------------------------------------------------
# Measuring the bubble: when is this stage computing?
# ----------------------------------------------------------------------------------------------------


class BubbleTimer:
    """Records when a stage computes: forward hooks, backward (pre-)hooks and gradient-accumulation hooks.

    ``busy_seconds()`` sums the forward intervals and each backward from its first gradient to its last
    gradient write; ``1 - busy / step_time`` is the measured idle (bubble + waiting on communication).
    """

    def __init__(self, module: nn.Module):
        self.events: list[tuple[str, float]] = []
        mark = lambda kind: lambda *_: self.events.append((kind, time.perf_counter()))  # noqa: E731
        self._handles = [
            module.register_forward_pre_hook(mark("f0")),
            module.register_forward_hook(mark("f1")),
            module.register_full_backward_pre_hook(mark("b0")),
            module.register_full_backward_hook(mark("b1")),
        ]
        self._handles += [p.register_post_accumulate_grad_hook(mark("g")) for p in module.parameters()]

    def reset(self) -> None:
        self.events.clear()

    def busy_seconds(self) -> float:
        busy, start, kind_open = 0.0, None, None
        last_in_backward = None
        for kind, t in self.events + [("end", float("inf"))]:
            if kind in ("f0", "b0", "end") and kind_open == "b":
                busy += last_in_backward - start  # close the previous backward at its last gradient
                kind_open = None
            if kind == "f0":
                start, kind_open = t, "f"
            elif kind == "f1" and kind_open == "f":
                busy += t - start
                kind_open = None
            elif kind == "b0":
                start, kind_open, last_in_backward = t, "b", t
            elif kind in ("b1", "g") and kind_open == "b":
                last_in_backward = max(last_in_backward, t)
        return busy

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ----------------------------------------------------------------------------------------------------
# One rank's stage and its schedule
# ----------------------------------------------------------------------------------------------------


class PipelineParallel:
    """This rank's stage of `model` cut by `recipe` over the ranks of `group`, driven by a schedule.

    Usage (every rank builds the same model from the same seed, then keeps its stage)::

        pp = PipelineParallel(model, recipe_for("jet_transformer"), n_microbatches=4, schedule="1f1b")
        opt = torch.optim.AdamW(pp.module.parameters(), lr=1e-3)
        loss = pp.step(batch); opt.step(); opt.zero_grad()

    The gradient is that of the mean of the micro-batch losses (gradient accumulation over m micro-batches).
    """

    def __init__(self, model: nn.Module, recipe, *, n_microbatches: int, schedule: str = "1f1b",
                 group=None, device: torch.device | str | None = None, measure_bubble: bool = False):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        if not isinstance(recipe, StackRecipe):
            recipe = recipe_for(recipe)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if n_microbatches < 1:
            raise ValueError(f"n_microbatches must be >= 1, got {n_microbatches}")
        self.group, self.recipe, self.n_microbatches, self.schedule_name = (group, recipe,
                                                                            n_microbatches, schedule)
        self.stage_index, self.n_stages = dist.get_rank(group), dist.get_world_size(group)
        n_layers = len(model.get_submodule(recipe.stack))
        self.layers = split_layers(n_layers, self.n_stages)[self.stage_index]
        self.is_first, self.is_last = self.stage_index == 0, self.stage_index == self.n_stages - 1
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._loss_attrs = model  # the loss reads plain attributes (e.g. origin_weight) from the model
        self.module = StackStage(model, recipe, self.layers, self.is_first, self.is_last).to(self.device)
        self.timer = BubbleTimer(self.module) if measure_bubble else None
        self.stage = PipelineStage(self.module, self.stage_index, self.n_stages, self.device, group=group)
        make = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
        self.schedule = make(self.stage, n_microbatches=n_microbatches, loss_fn=self._loss)
        self._batch: dict | None = None
        self.last_step_seconds = float("nan")

    def _loss(self, outputs, sample_index):
        micro_batch = {k: v[sample_index] for k, v in self._batch.items() if torch.is_tensor(v)}
        return self.recipe.loss(self._loss_attrs, outputs, micro_batch)

    def step(self, batch: dict) -> float:
        """Forward and backward of every micro-batch of `batch` (the same batch on every rank of the
        pipeline); gradients accumulate in ``module``'s parameters. Returns the mean micro-batch loss."""
        batch_size = len(next(v for v in batch.values() if torch.is_tensor(v)))
        if batch_size % self.n_microbatches:
            raise ValueError(f"batch of {batch_size} does not split into "
                             f"{self.n_microbatches} equal micro-batches")
        self._batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.timer:
            self.timer.reset()
        t0 = time.perf_counter()
        losses: list[torch.Tensor] = []
        with warnings.catch_warnings():
            # BubbleTimer's backward hook on stage 0, whose inputs need no gradient: expected, harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._run_schedule(batch_size, losses)
        self.last_step_seconds = time.perf_counter() - t0
        mean = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=self.device)
        src = (dist.get_global_rank(self.group, self.n_stages - 1) if self.group is not None
               else self.n_stages - 1)
        dist.broadcast(mean, src=src, group=self.group)  # every rank reports the same loss
        self._batch = None
        return float(mean)

    def _run_schedule(self, batch_size: int, losses: list) -> None:
        if self.is_first and self.is_last:
            self.schedule.step(*self.recipe.inputs(self._batch),
                               target=torch.arange(batch_size, device=self.device), losses=losses)
        elif self.is_first:
            self.schedule.step(*self.recipe.inputs(self._batch))
        elif self.is_last:
            self.schedule.step(target=torch.arange(batch_size, device=self.device), losses=losses)
        else:
            self.schedule.step()

    def measured_bubble(self) -> float:
        """This rank's idle share of the last `step` (needs ``measure_bubble=True``)."""
        if self.timer is None:
            raise RuntimeError("construct PipelineParallel(..., measure_bubble=True) to measure the bubble")
        return 1.0 - self.timer.busy_seconds() / self.last_step_seconds

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
