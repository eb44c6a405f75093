"""One runner for every model-parallel strategy: `run_strategy` trains a testbed for a few steps under
tensor, pipeline, graph-partitioned or hybrid parallelism (or the one-process reference) and reports losses,
throughput, memory and communication share in the shape `hepml_kit.parallel.compare.table` tabulates.

Used by the tests, lessons 04 and 05, and the GPU check (bench/gpu_checks/parallel.py). Each strategy
itself lives in its own module (`tensor`, `pipeline`, `pipeline_schedules`, `graph_partition`, `hybrid`);
this file only wires them to a training loop.

Taught in curriculum/04_model_parallel and curriculum/05_hybrid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist

from hepml_kit.parallel.spec import RunSpec, resolve_testbed

__all__ = ["BY_HAND", "MODEL_PARALLEL", "run_strategy", "train_model_parallel"]

# part of driver.STRATEGIES
MODEL_PARALLEL = ("single", "tensor", "megatron", "gpipe", "1f1b", "graph", "fsdp_tp", "dp_pp")
BY_HAND = ("gpipe_by_hand", "1f1b_by_hand")  # the hand-written pipeline schedules (`pipeline_schedules`)
_PIPELINES = ("gpipe", "1f1b") + BY_HAND
_COLLECTIVE_PREFIXES = ("c10d::", "_c10d_functional::", "nccl:", "gloo:")


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float().cpu().clone()


def _chunks(batch: dict, n: int) -> list[dict]:
    """`n` contiguous micro-batches (the split torch.distributed.pipelining makes)."""
    parts = [{} for _ in range(n)]
    for k, v in batch.items():
        pieces = v.chunk(n) if torch.is_tensor(v) and v.dim() > 0 else [v] * n
        if len(pieces) != n:
            raise ValueError(f"{k!r} of length {len(v)} does not cut into {n} micro-batches")
        for part, piece in zip(parts, pieces):
            part[k] = piece
    return parts


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's file descriptor 2 (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _collective_seconds(prof) -> float:
    """Host time inside collective calls (merged intervals of c10d ops on the calling threads)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.name.startswith(_COLLECTIVE_PREFIXES[:2]) and e.device_type.name == "CPU")
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            total += 0.0 if cur_b is None else cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total * 1e-6  # profiler times are in µs


def run_strategy(strategy: str, testbed: str | None = None, *, preset: str = "tiny", steps: int = 4,
                 global_batch: int = 32, lr: float = 0.05, seed: int = 0,
                 micro_batches: int = 1, shards: int = 1, dims: dict | None = None,
                 num_layers: int | None = None, config_overrides: dict | None = None, optimizer: str = "sgd",
                 return_params: bool = True, return_grads: bool = False, timing_steps: int = 2,
                 checkpoint_dir: str | None = None, stop_after: int | None = None,
                 resume: bool = False) -> dict:
    """Train `steps` steps of a testbed under one model-parallel `strategy` on this rank; call on every rank.

    Strategies: ``"single"`` (one process: the reference; with `shards` and `micro_batches` it accumulates
    the loss over the same pieces the parallel run splits the batch into), ``"tensor"`` (DTensor TP over
    all ranks), ``"megatron"`` (the hand-written TP), ``"gpipe"``/``"1f1b"`` (pipeline over all ranks,
    `micro_batches` micro-batches; ``"gpipe_by_hand"``/``"1f1b_by_hand"``: the same schedules written over
    send/recv, `hepml_kit.parallel.pipeline_schedules`), ``"graph"`` (tracking GNN, graph partitioned over all
    ranks), ``"fsdp_tp"`` (``dims={"dp": 2, "tp": 2}``), ``"dp_pp"`` (``dims={"dp": 2, "pp": 2}``).

    `num_layers` sets the depth (``num_layers`` or ``n_iterations`` of the preset's config),
    `config_overrides` any other config fields (e.g. ``{"embed_dim": 128}``). `optimizer` is ``"sgd"``
    (momentum 0.9; the default, for equality tests: Adam divides by √v and turns the rounding noise of an
    exactly-zero gradient, such as an attention key bias, into full-size steps) or ``"adamw"``. Checkpointing:
    `stop_after` saves to `checkpoint_dir` after that many steps and stops; `resume` loads it first
    (`hepml_kit.parallel.checkpoint`, any number of ranks the strategy allows).

    Returns a dict shaped like `hepml_kit.parallel.compare.train_strategy`'s (so `compare.table` tabulates
    it): ``losses``, ``profile`` (`StepProfiler` summary over ranks), ``samples_per_s`` (global),
    ``state_bytes`` (this rank's parameters + gradients + optimizer state), ``comm_share`` (share of the step
    inside collectives; for pipelines the measured idle share: bubble + transfers), ``n_params``,
    ``world_size``, ``rank``, and ``params``/``grads`` (full tensors of what this rank holds, model names).
    """
    spec = RunSpec(testbed=testbed, preset=preset, steps=steps, global_batch=global_batch, lr=lr, seed=seed,
                   micro_batches=micro_batches, shards=shards, dims=dims, num_layers=num_layers,
                   config_overrides=config_overrides, optimizer=optimizer, return_params=return_params,
                   return_grads=return_grads, timing_steps=timing_steps, checkpoint_dir=checkpoint_dir,
                   stop_after=stop_after, resume=resume)
    return train_model_parallel(spec, strategy)


def train_model_parallel(spec: RunSpec, strategy: str) -> dict:
    """`run_strategy` for a `RunSpec` (what `hepml_kit.parallel.driver.train` calls)."""
    from hepml_kit.models import to_device
    from hepml_kit.parallel import checkpoint
    from hepml_kit.parallel import graph_partition as gp
    from hepml_kit.parallel.ddp import shard_batch
    from hepml_kit.parallel.fsdp import model_state_bytes
    from hepml_kit.parallel.hybrid import DataPipelineParallel, ProcessGroups, shard_fsdp_tp
    from hepml_kit.profile import StepProfiler

    steps, global_batch, lr, seed = spec.steps, spec.global_batch, spec.lr, spec.seed
    micro_batches, shards, optimizer = spec.micro_batches, spec.shards, spec.optimizer
    checkpoint_dir, stop_after, resume = spec.checkpoint_dir, spec.stop_after, spec.resume
    if strategy not in MODEL_PARALLEL + BY_HAND:
        known = ", ".join(MODEL_PARALLEL + BY_HAND)
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {known}")
    testbed = spec.testbed or ("tracking_gnn" if strategy == "graph" else "jet_transformer")
    tb = resolve_testbed(testbed)
    if strategy == "graph" and tb.name != "tracking_gnn":
        raise ValueError("graph partitioning is for the tracking GNN (testbed='tracking_gnn')")
    from hepml_kit.models.user import require_plan

    require_plan(tb, strategy)  # a learner's testbed without the plan this strategy needs: say what to add
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if (stop_after is not None or resume) and not checkpoint_dir:
        raise ValueError("stop_after and resume need a checkpoint_dir")
    distributed = dist.is_available() and dist.is_initialized()
    if strategy != "single" and not distributed:
        raise RuntimeError(f"strategy {strategy!r} needs torch.distributed: run it "
                           "with hk.launch / Workers.run")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if strategy == "single" and world > 1:
        raise ValueError("strategy 'single' is the one-process reference: run it without launch")
    dims = dict(spec.dims or {})
    if strategy == "fsdp_tp":
        dims = {"dp": dims.get("dp", world // dims.get("tp", 2)), "pp": 1, "tp": dims.get("tp", 2)}
    elif strategy == "dp_pp":
        dims = {"dp": dims.get("dp", world // dims.get("pp", 2)), "pp": dims.get("pp", 2), "tp": 1}
    split = (shards if strategy == "single" else dims.get("dp", 1)) * micro_batches
    if global_batch % split:
        raise ValueError(f"global_batch={global_batch} must split into {split} equal pieces")

    cfg = tb.config(spec.preset)
    if spec.num_layers is not None:
        field = "num_layers" if hasattr(cfg, "num_layers") else "n_iterations"
        cfg = dataclasses.replace(cfg, **{field: spec.num_layers})
    if spec.config_overrides:
        cfg = dataclasses.replace(cfg, **spec.config_overrides)
    device = spec.torch_device()
    data = tb.generate(cfg, steps * global_batch, seed)
    batches = [to_device(b, device) for b in tb.batches(data, global_batch, shuffle=True, seed=seed)][:steps]
    torch.manual_seed(seed)
    model = tb.build(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    module, extra = model, {}
    tp_plan = tb.extra.get("tensor_parallel")  # the model file's plan (None: the default block names)

    if strategy in ("tensor", "megatron"):
        from torch.distributed.device_mesh import init_device_mesh

        from hepml_kit.parallel.tensor import apply_tensor_parallel, megatron_parallelize

        if strategy == "tensor":
            apply_tensor_parallel(model, init_device_mesh(device.type, (world,)), tp_plan)
        else:
            megatron_parallelize(model, plan=tp_plan)
    elif strategy in ("gpipe", "1f1b"):
        from hepml_kit.parallel.pipeline import PipelineParallel

        pipe = PipelineParallel(model, tb, n_microbatches=micro_batches, schedule=strategy, device=device,
                                measure_bubble=True)
        module = pipe.module
    elif strategy in BY_HAND:
        from hepml_kit.parallel.pipeline_schedules import PipelineByHand

        pipe = PipelineByHand(model, tb, n_microbatches=micro_batches,
                              schedule=strategy.removesuffix("_by_hand"), device=device, measure_bubble=True)
        module = pipe.module
    elif strategy == "fsdp_tp":
        groups = ProcessGroups(**dims, device=device.type)
        shard_fsdp_tp(model, groups, plan=tp_plan)
        # FSDP2 warns that the root returns a view (in-place ops on it would skip its hook; the loss
        # makes none: the equality tests prove the gradients), and DTensor logs that gathering a 2-D
        # parameter
        # takes two steps
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    elif strategy == "dp_pp":
        groups = ProcessGroups(**dims, device=device.type)
        pipe = DataPipelineParallel(model, tb, groups, n_microbatches=micro_batches, device=device,
                                    measure_bubble=True)
        module = pipe.module
    # Tensor parallelism alone leaves a mix of DTensor (split) and plain (replicated) parameters; the fused
    # multi-tensor ("foreach") update, the default on CUDA, refuses such a mix, so update them one by one.
    from torch.distributed.tensor import DTensor

    kinds = {isinstance(p, DTensor) for p in module.parameters()}
    opt_kwargs = {"foreach": False} if len(kinds) > 1 else {}
    opt = (torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9, **opt_kwargs) if optimizer == "sgd"
           else torch.optim.AdamW(module.parameters(), lr=lr, **opt_kwargs))

    parts: list[gp.GraphPartition] = []
    if strategy == "graph":  # partitioning is preprocessing (done once per graph), not part of a step
        for batch in batches:
            owner = gp.balanced_phi_partition(gp.phi_of_nodes(batch["x"]), batch["edge_index"], world)
            parts.append(gp.partition_graph(batch, owner, rank, world))

    def forward_backward(i: int) -> float:
        batch = batches[i]
        if strategy == "single":
            total = 0.0
            for d in range(shards):
                for micro in _chunks(shard_batch(batch, d, shards) if shards > 1 else batch, micro_batches):
                    loss = tb.loss(model, micro) / (shards * micro_batches)
                    loss.backward()
                    total += float(loss.detach())
            return total
        if strategy in ("tensor", "megatron"):
            loss = tb.loss(model, batch)
            loss.backward()
            return float(loss.detach())
        if strategy in _PIPELINES + ("dp_pp",):
            return pipe.step(batch)
        if strategy == "graph":
            share = gp.partitioned_loss(model, parts[i])
            share.backward()
            gp.sync_gradients(model)
            total = share.detach().clone()
            dist.all_reduce(total)
            return float(total)
        # fsdp_tp
        loss = tb.loss(model, shard_batch(batch, groups.dp_rank, dims["dp"]))
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total, group=groups.dp_group)
        return float(total) / dims["dp"]

    start = checkpoint.load(checkpoint_dir, module, opt)["step"] if resume else 0
    end = stop_after if stop_after is not None else steps
    if not 0 <= start < end <= steps:
        raise ValueError(f"nothing to run: steps {start}..{end} of {steps}")
    credit = global_batch // world + (1 if rank < global_batch % world else 0)  # sums to global_batch
    prof = StepProfiler(samples_per_step=credit, flops_per_sample=None, unit=tb.unit, device=device,
                        warmup_steps=1 if end - start > 1 else 0)
    losses, grads, bubbles = [], None, []
    for i in range(start, end):
        with prof.step():
            losses.append(forward_backward(i))
            if spec.return_grads and i == start:
                grads = {n: _full(p.grad) for n, p in module.named_parameters() if p.grad is not None}
            opt.step()
            opt.zero_grad(set_to_none=True)
        if strategy in _PIPELINES + ("dp_pp",) and i > start:
            bubbles.append((pipe.pipeline if strategy == "dp_pp" else pipe).measured_bubble())
    state_bytes = model_state_bytes(module, opt)
    summary = prof.summary()
    if stop_after is not None:
        checkpoint.save(checkpoint_dir, module, opt, step=stop_after, extra={"strategy": strategy})

    comm_share = 0.0
    if strategy in _PIPELINES + ("dp_pp",):
        comm_share = sum(bubbles) / len(bubbles) if bubbles else float("nan")
        extra["bubble_formula"] = (dims.get("pp", world) - 1) / (micro_batches + dims.get("pp", world) - 1)
        extra["measured_idle"] = comm_share
    elif strategy != "single" and spec.timing_steps > 0:
        from torch.profiler import profile

        if device.type == "cuda":
            torch.cuda.synchronize()
        p = profile()
        with _quiet_stderr():  # kineto prints a line to stderr when it starts and stops
            p.start()
        t0 = time.perf_counter()
        # extra forward/backward passes, no optimizer step: parameters unchanged
        for k in range(spec.timing_steps):
            forward_backward(start + k % max(end - start, 1))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        with _quiet_stderr():
            p.stop()
        opt.zero_grad(set_to_none=True)
        comm_share = min(1.0, _collective_seconds(p) / elapsed)

    out = {"strategy": strategy, "testbed": tb.name, "rank": rank, "world_size": world, "losses": losses,
           "profile": summary, "samples_per_s": summary["global_samples_per_s"], "state_bytes": state_bytes,
           "comm_share": comm_share, "n_params": n_params, "dims": dims, **extra}
    if spec.return_params:
        out["params"] = {n: _full(p) for n, p in module.named_parameters()}  # a collective for DTensors
    if grads is not None:
        out["grads"] = grads
    return out
