"""The one training driver: `train(spec, strategy)` trains a testbed under any named strategy of the kit and
returns losses, profile and memory in one shape (what `hepml_kit.parallel.compare.table` tabulates).

    from hepml_kit.parallel.driver import RunSpec, train
    spec = RunSpec("jet_transformer", steps=4, global_batch=32, lr=0.05)
    ref = train(spec, "single")                       # one process
    ranks = pool.run(train, spec, "1f1b")             # every rank of a pool (hk.launch / Workers.run)

`STRATEGIES` is every name: the data-parallel ones (`compare.DATA_PARALLEL`: naive, bucket, ddp, fsdp, ...),
the model-parallel ones (`runner.MODEL_PARALLEL`: tensor, megatron, gpipe, 1f1b, graph, fsdp_tp, dp_pp),
``"gpipe_by_hand"``/``"1f1b_by_hand"`` (the hand-written schedules of `pipeline_schedules`) and
``"lightning"`` (Lightning's own Trainer, fed from the same spec). ``"single"`` is the one-process
reference, of the data-parallel kind; ``train(spec, "single", reference="model_parallel")`` gives the one
`run_strategy` computes (SGD with momentum, `spec.shards` × `spec.micro_batches` accumulation).
The spec's ``testbed`` may be a registry name or a user's own `Testbed` object.

A spec whose ``data`` is ``"per_rank"`` or ``"given"`` runs the *plain loop* (`Loop`) under ``"single"`` or
``"ddp"``: build, optionally wrap in DDP and compile, then forward (under bf16 autocast if asked) / backward /
optimizer under a `StepProfiler`, with `spec.warmup_steps` unmeasured steps first. Lesson 01's ladder
(``data="given"``, `StepOptions` per rung), the scaling study (``data="per_rank"``) and the HPO trials (a
`Loop` kept across epochs, so population-based training can copy its state) all train through it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from hepml_kit.models._testbed import to_device
from hepml_kit.parallel.compare import DATA_PARALLEL, train_data_parallel
from hepml_kit.parallel.runner import BY_HAND, MODEL_PARALLEL, train_model_parallel
from hepml_kit.parallel.spec import RunSpec, StepOptions, default_device, resolve_testbed
from hepml_kit.parallel.streams import batch_stream
from hepml_kit.profile.step import StepProfiler

__all__ = ["STRATEGIES", "Loop", "RunSpec", "StepOptions", "default_device", "train"]

STRATEGIES = tuple(dict.fromkeys(DATA_PARALLEL + MODEL_PARALLEL + BY_HAND + ("lightning",)))
PLAIN_LOOP = ("single", "ddp")  # the strategies of the plain loop (data="per_rank" or "given")


def train(spec: RunSpec, strategy: str = "single", *, reference: str = "data_parallel", data: Any = None,
          batches: Iterable[dict] | None = None, flops_per_sample: float | None = None,
          **lightning_options: Any) -> dict[str, Any] | None:
    """Train `spec` under `strategy` on this rank (call it on every rank of a parallel run).

    Returns ``{"losses", "profile", "samples_per_s", "world_size", ...}`` plus, per family, ``state_bytes``,
    ``comm_share``, ``params``/``grads`` (see `compare.train_strategy`, `runner.run_strategy`,
    `lightning_ddp.fit_lightning`). `lightning_options` (``devices``, ``accelerator``, ``out_dir``, and
    ``lightning_strategy``: Lightning's own strategy name) go to Lightning. `data` (a testbed's generated
    data) or `batches` (device batches, cycled) feed a ``data="given"`` spec; `flops_per_sample` overrides
    the testbed's for the plain loop's MFU (e.g. a graph of another size).
    """
    if not isinstance(spec, RunSpec):
        raise TypeError(f"train takes a RunSpec, got {type(spec).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if reference not in ("data_parallel", "model_parallel"):
        raise ValueError(f"reference must be 'data_parallel' or 'model_parallel', got {reference!r}")
    if lightning_options and strategy != "lightning":
        raise TypeError(f"{sorted(lightning_options)} are options of strategy 'lightning' only")
    if spec.data != "shared":
        return _train_plain(spec, strategy, data, batches, flops_per_sample)
    if data is not None or batches is not None:
        raise TypeError("data= and batches= feed a RunSpec with data='given'")
    if strategy == "lightning":
        from hepml_kit.parallel.lightning_ddp import fit_lightning

        lightning_options.setdefault("devices", 1)
        if "lightning_strategy" in lightning_options:
            lightning_options["strategy"] = lightning_options.pop("lightning_strategy")
        return fit_lightning(resolve_testbed(spec.testbed or "jet_transformer"), preset=spec.preset,
                             steps=spec.steps, global_batch=spec.global_batch, lr=spec.lr, seed=spec.seed,
                             **lightning_options)
    if strategy == "single" and reference == "data_parallel" or strategy in DATA_PARALLEL[1:]:
        return train_data_parallel(spec, strategy)
    return train_model_parallel(spec, strategy)


class Loop:
    """A testbed model, its optimizer and the plain training step, on this rank.

    Built from `spec` (seed, config, device, optimizer, `StepOptions`): ``torch.manual_seed(spec.seed)``,
    then the model, wrapped in DDP over `group` when ``ddp`` and the group has several ranks, the optimizer,
    and ``torch.compile`` if asked. `run` trains over batches and returns the losses. `train` makes one per
    run; an HPO trial keeps one across epochs.
    """

    def __init__(self, spec: RunSpec, *, ddp: bool = False, group=None, cfg: Any = None):
        self.spec, self.options = spec, spec.step_options
        self.testbed = resolve_testbed(spec.testbed or "jet_transformer")
        self.cfg = cfg if cfg is not None else spec.model_config(self.testbed)
        self.device = spec.torch_device()
        self.world = dist.get_world_size(group) if ddp and dist.is_initialized() else 1
        torch.manual_seed(spec.seed)  # the same initial weights on every rank
        self.model = self.testbed.build(self.cfg).to(self.device)
        self.model.train()
        self.trained = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                     process_group=group)
        self.optimizer = self._optimizer()
        if self.options.compile:
            torch._dynamo.reset()  # compile afresh: a cached graph would ignore these settings
            self.forward_model = torch.compile(self.trained)
        else:
            self.forward_model = self.trained

    def _optimizer(self):
        spec, params = self.spec, self.model.parameters()
        if spec.optimizer == "testbed":
            return self.testbed.optimizer(self.model, self.cfg, spec.lr)
        if spec.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=spec.lr, fused=True if self.options.fused_optimizer else None)
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9)

    def step(self, batch: dict, prof: StepProfiler | None = None) -> torch.Tensor | float:
        """One optimisation step (forward under bf16 autocast if asked, backward, optimizer); the loss."""
        tb = self.testbed
        if tb.loss is None:  # a custom train_step (the GAN): one phase-less step
            return tb.step(self.forward_model, batch, self.optimizer)
        phase = prof.phase if prof is not None else (lambda name: contextlib.nullcontext())
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.options.bf16)
        with phase("forward"), autocast:
            loss = tb.loss(self.forward_model, batch)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def run(self, batches: Iterable[dict], *, steps: int | None = None,
            prof: StepProfiler | None = None) -> list[float]:
        """Train over `batches` (at most `steps` of them; under `prof`, one profiled step each)."""
        self.model.train()
        losses = []
        if steps == 0:
            return losses
        for i, batch in enumerate(prof.iterate(batches) if prof is not None else batches):
            losses.append(self.step(batch, prof))
            if steps is not None and i + 1 >= steps:
                break
        return [float(x) for x in losses]


def _train_plain(spec: RunSpec, strategy: str, data: Any, batches: Iterable[dict] | None,
                 flops_per_sample: float | None) -> dict[str, Any]:
    """The plain loop: `spec.warmup_steps` + `spec.steps` profiled steps of ``"single"`` or ``"ddp"``."""
    if strategy not in PLAIN_LOOP:
        raise ValueError(f"data={spec.data!r} runs the plain loop: strategy must be one of "
                         f"{', '.join(PLAIN_LOOP)}, got {strategy!r}")
    if spec.data == "given" and (data is None) == (batches is None):
        raise ValueError("give data= (from testbed.generate) or batches=, one of them")
    if spec.data == "per_rank" and (data is not None or batches is not None):
        raise TypeError("data='per_rank' generates each rank's data itself: give no data= or batches=")
    options, tb = spec.step_options, resolve_testbed(spec.testbed or "jet_transformer")
    ddp = strategy == "ddp"
    world = dist.get_world_size() if ddp and dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if spec.global_batch % world:
        raise ValueError(f"global_batch={spec.global_batch} must be divisible by the {world} ranks")
    local_batch, total = spec.global_batch // world, spec.warmup_steps + spec.steps
    cfg = spec.model_config(tb)
    device = spec.torch_device()
    if spec.data == "per_rank":
        data = tb.generate(cfg, local_batch * total * world, spec.seed, rank=rank, world_size=world)
    loop = Loop(spec, ddp=ddp, cfg=cfg)
    fps = flops_per_sample or (tb.flops_per_sample(cfg) if tb.flops_per_sample else None)
    prof = StepProfiler(samples_per_step=tb.samples_in, flops_per_sample=fps, unit=tb.unit, device=device,
                        dtype=torch.bfloat16 if options.bf16 else torch.float32,
                        warmup_steps=spec.warmup_steps)
    if loop.trained is not loop.model and options.comm_hook:
        prof.attach_ddp(loop.trained)
    if batches is not None:
        stream = itertools.cycle(batches)
    elif spec.data == "per_rank":
        stream = (to_device(b, device) for b in tb.batches(data, local_batch, shuffle=True, seed=spec.seed))
    else:
        stream = batch_stream(tb, data, local_batch, device, spec.seed, workers=options.workers,
                              pin_memory=options.pin_memory)
    budget = contextlib.nullcontext()
    if options.activation_memory_budget is not None:
        import torch._functorch.config as functorch_config

        budget = functorch_config.patch(activation_memory_budget=options.activation_memory_budget)
    try:
        with budget:  # read when the first step compiles
            losses = loop.run(stream, steps=total, prof=prof)
        summary = prof.summary(gather=ddp)  # a collective under DDP: every rank
    finally:
        if hasattr(stream, "close"):
            stream.close()  # stops loader workers
        del loop
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"strategy": strategy, "rank": rank, "world_size": world, "losses": losses,
            "final_loss": losses[-1], "profile": summary, "samples_per_s": summary["global_samples_per_s"]}
