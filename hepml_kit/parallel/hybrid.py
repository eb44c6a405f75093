"""Hybrid parallelism: several strategies at once on a grid of ranks (a device mesh).

The ranks are laid out as ``torch.arange(world).view(dp, pp, tp)`` (picotron's ProcessGroupManager,
huggingface/picotron): tensor-parallel groups are the fastest-varying axis (neighbouring ranks, i.e. GPUs of
one node on NVLink), pipeline groups next, data-parallel groups the slowest (across nodes, where only the
once-per-step gradient reduction travels). `ProcessGroups` builds all groups from that one grid and a
matching ``DeviceMesh``. Two combinations:

- data × tensor (`shard_fsdp_tp`): tensor parallelism inside each group of ``tp`` ranks, FSDP2 across the
  ``dp`` replicas (each parameter a 2-D DTensor: tp slice, then dp shard); torchtitan's recipe
  (Liang et al., "TorchTitan", arXiv:2410.06511). Within a replica all tp ranks see the same batch shard.
- data × pipeline (`DataPipelineParallel`): ``pp`` stages per replica, gradients of each stage averaged
  across the ``dp`` replicas that hold the same stage (Narayanan et al., "Efficient Large-Scale Language
  Model Training on GPU Clusters Using Megatron-LM", SC21, arXiv:2104.04473).

On a Perlmutter allocation (4 GPUs per node) the usual shape is tp = 4 inside a node and dp = nodes:
``srun -N 8 --ntasks-per-node 4 --gpus-per-node 4 hepml-kit launch train.py`` with ``ProcessGroups(dp=8,
tp=4)`` in the script. `project_hybrid` predicts that run from a measured one-node step.

Taught in curriculum/05_hybrid. `gpu_check_model_parallel` is the one-GPU pass of every model-parallel
strategy (tensor, pipeline, graph partitioning, hybrid) that the GPU check script calls.
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
from torch import nn

__all__ = [
    "STRATEGIES",
    "DataPipelineParallel",
    "ProcessGroups",
    "average_gradients",
    "gpu_check_model_parallel",
    "project_hybrid",
    "run_strategy",
    "shard_fsdp_tp",
    "train_step_fsdp_tp",
]

DIMS = ("dp", "pp", "tp")


class ProcessGroups:
    """Every process group of a dp × pp × tp layout, from ``grid = torch.arange(world).view(dp, pp, tp)``.

    The rank at ``grid[d, p, t]`` has coordinates (d, p, t); its tp group is ``grid[d, p, :]``, its pp
    group ``grid[d, :, t]``, its dp group ``grid[:, p, t]``. The same layout as ``init_device_mesh(device,
    (dp, pp, tp))``, whose groups we use (``mesh["tp"]`` etc. are the 1-D sub-meshes for DTensor/FSDP2).
    """

    def __init__(self, dp: int = 1, pp: int = 1, tp: int = 1, device: str | None = None):
        from torch.distributed.device_mesh import init_device_mesh

        world = dist.get_world_size()
        sizes = {"dp": dp, "pp": pp, "tp": tp}
        if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
            raise ValueError(f"dp, pp, tp must be positive integers, got {sizes}")
        if dp * pp * tp != world:
            raise ValueError(f"dp × pp × tp = {dp} × {pp} × {tp} = {dp * pp * tp} must equal the world size {world}")
        self.sizes = sizes
        self.rank = dist.get_rank()
        self.grid = torch.arange(world).view(dp, pp, tp)
        self.dp_rank, self.pp_rank, self.tp_rank = (int(c) for c in torch.nonzero(self.grid == self.rank)[0])
        device = device or ("cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
        self.mesh = init_device_mesh(device, (dp, pp, tp), mesh_dim_names=DIMS)
        self.dp_group, self.pp_group, self.tp_group = (self.mesh.get_group(d) for d in DIMS)

    def ranks(self, dim: str) -> list[int]:
        """Global ranks of this rank's group along `dim` (``"dp"``, ``"pp"`` or ``"tp"``), from the grid."""
        d, p, t = self.dp_rank, self.pp_rank, self.tp_rank
        line = {"dp": self.grid[:, p, t], "pp": self.grid[d, :, t], "tp": self.grid[d, p, :]}
        if dim not in line:
            raise ValueError(f"dim must be one of {DIMS}, got {dim!r}")
        return line[dim].tolist()

    def submesh(self, *dims: str):
        """The (1-D or 2-D) sub-mesh over `dims`, e.g. ``submesh("dp", "tp")`` for FSDP2 + TP."""
        return self.mesh[dims if len(dims) > 1 else dims[0]]

    def __repr__(self) -> str:
        s = self.sizes
        return (f"rank {self.rank} = (dp {self.dp_rank}, pp {self.pp_rank}, tp {self.tp_rank}) "
                f"of dp={s['dp']} × pp={s['pp']} × tp={s['tp']}")


# ----------------------------------------------------------------------------------------------------
# data × tensor: FSDP2 across replicas, tensor parallel inside each
# ----------------------------------------------------------------------------------------------------


def shard_fsdp_tp(model: nn.Module, groups: ProcessGroups, mp_policy=None) -> nn.Module:
    """Tensor-parallelise `model` over ``groups.mesh["tp"]``, then FSDP2-shard it over ``groups.mesh["dp"]``
    (every repeated block, then the root), in place. Build the optimizer afterwards."""
    from hepml_kit.parallel.fsdp import shard_model
    from hepml_kit.parallel.tensor import apply_tensor_parallel

    if groups.sizes["pp"] != 1:
        raise ValueError("shard_fsdp_tp is data × tensor; use pp=1 (data × pipeline: DataPipelineParallel)")
    if groups.sizes["tp"] > 1:
        apply_tensor_parallel(model, groups.mesh["tp"])
    if groups.sizes["dp"] > 1:
        shard_model(model, mesh=groups.mesh["dp"], mp_policy=mp_policy)
    return model


def train_step_fsdp_tp(model: nn.Module, loss_fn, batch: dict, groups: ProcessGroups, optimizer) -> float:
    """One step of data × tensor: this replica's share of the global `batch`, loss, backward, optimizer.
    Returns the global loss (mean over replicas), the same on every rank."""
    from hepml_kit.parallel.ddp import shard_batch

    local = shard_batch(batch, groups.dp_rank, groups.sizes["dp"])
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, local)
    loss.backward()  # FSDP2 reduce-scatters (averages) gradients across dp; TP reduces inside the replica
    optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total, group=groups.dp_group)
    return float(total) / groups.sizes["dp"]


# ----------------------------------------------------------------------------------------------------
# data × pipeline
# ----------------------------------------------------------------------------------------------------


def average_gradients(module: nn.Module, group=None) -> None:
    """Average every gradient of `module` over `group` with one flat all-reduce."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads or dist.get_world_size(group) == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class DataPipelineParallel:
    """``pp`` pipeline stages per replica (`PipelineParallel` over ``groups.pp_group``), ``dp`` replicas.

    ``step(batch)`` takes the global batch: replica d trains on samples ``d, d + dp, ...`` cut into
    micro-batches, then each stage's gradients are averaged with the other replicas of that stage.
    """

    def __init__(self, model: nn.Module, recipe, groups: ProcessGroups, *, n_microbatches: int,
                 schedule: str = "1f1b", device=None, measure_bubble: bool = False):
        from hepml_kit.parallel.pipeline import PipelineParallel

        if groups.sizes["tp"] != 1:
            raise ValueError("DataPipelineParallel is data × pipeline; use tp=1")
        self.groups = groups
        self.pipeline = PipelineParallel(model, recipe, n_microbatches=n_microbatches, schedule=schedule,
                                         group=groups.pp_group, device=device, measure_bubble=measure_bubble)
        self.module = self.pipeline.module

    def step(self, batch: dict) -> float:
        """Forward/backward of this replica's share, then the dp gradient average. Returns the global loss."""
        from hepml_kit.parallel.ddp import shard_batch

        local = shard_batch(batch, self.groups.dp_rank, self.groups.sizes["dp"])
        loss = self.pipeline.step(local)
        average_gradients(self.module, self.groups.dp_group)
        total = torch.tensor(loss, device=self.pipeline.device)
        dist.all_reduce(total, group=self.groups.dp_group)
        return float(total) / self.groups.sizes["dp"]


# ----------------------------------------------------------------------------------------------------
# Projection of a hybrid layout to a multi-node allocation
# ----------------------------------------------------------------------------------------------------


def project_hybrid(step_compute_s: float, grad_bytes: float, activation_bytes: float, n_layers: int, local_batch: int,
                   *, tp: int = 1, pp: int = 1, micro_batches: int = 1, nodes: list[int] | None = None,
                   machine=None, efficiency_of_split: float = 1.0):
    """PROJECTED step time and efficiency of a dp × pp × tp layout on a multi-node allocation (DataFrame).

    One model replica is ``tp × pp`` GPUs of one node (``tp × pp`` must divide the GPUs per node); the
    replicas form the data-parallel dimension, ``dp = nodes × gpus_per_node / (tp × pp)``. The model:

    * compute: one GPU's measured/estimated `step_compute_s` for the whole model at `local_batch` samples,
      split over tp × pp GPUs (times `efficiency_of_split` ≤ 1 for the smaller matrices), stretched by the
      pipeline bubble 1 / (1 - (pp-1)/(m+pp-1)) with m = `micro_batches`;
    * tensor parallel: 4 all-reduces per layer per step (2 forward, 2 backward) of the layer activations
      (`activation_bytes` per layer for the whole local batch), on NVLink among tp GPUs, not overlapped;
    * pipeline: activations cross pp-1 stage boundaries on NVLink (small; included);
    * data parallel: the all-reduce of this GPU's gradient shard (``grad_bytes / (tp × pp)``) in DDP buckets
      over the dp replicas, the node's NICs shared by its ``tp × pp`` groups, not overlapped (what NERSC's
      published Perlmutter runs behaved like; see `hepml_kit.profile.projection`).

    Every column is named ``projected_*``; ``attrs["title"]`` says it is a projection.
    """
    import pandas as pd

    from hepml_kit.profile.projection import PERLMUTTER, allreduce_time, ddp_buckets

    machine = machine or PERLMUTTER
    g = machine.gpus_per_node
    if tp < 1 or pp < 1 or g % (tp * pp):
        raise ValueError(f"tp × pp = {tp} × {pp} must divide the {g} GPUs of a node")
    if pp > n_layers:
        raise ValueError(f"cannot cut {n_layers} layers into {pp} stages")
    if not step_compute_s > 0 or not grad_bytes > 0 or activation_bytes < 0 or local_batch < 1 or micro_batches < 1:
        raise ValueError("step_compute_s and grad_bytes must be positive; activation_bytes >= 0; "
                         "local_batch and micro_batches >= 1")
    nodes = list(nodes) if nodes is not None else [1, 2, 4, 8, 16, 32, 64, 128]
    model_gpus = tp * pp
    bubble = (pp - 1) / (micro_batches + pp - 1)
    compute = step_compute_s / (model_gpus * efficiency_of_split) / (1 - bubble)
    tp_machine = dataclasses.replace(machine, gpus_per_node=tp)
    tp_comm = 4 * (n_layers / pp) * allreduce_time(activation_bytes, 1, tp_machine) if tp > 1 else 0.0
    pp_comm = 2 * (pp - 1) * activation_bytes / tp / machine.intra_bus_bw if pp > 1 else 0.0
    groups_per_node = model_gpus  # this many dp groups share a node's NICs
    dp_machine = dataclasses.replace(machine, gpus_per_node=g // model_gpus,
                                     nics_per_node=machine.nics_per_node / groups_per_node)
    rows = []
    for n in nodes:
        dp = n * g // model_gpus
        dp_comm = sum(allreduce_time(b, n, dp_machine) for b in ddp_buckets(grad_bytes / model_gpus)) if dp > 1 else 0.0
        step = compute + tp_comm + pp_comm + dp_comm
        rows.append({"nodes": n, "gpus": n * g, "dp": dp, "pp": pp, "tp": tp, "projected_bubble": bubble,
                     "projected_compute_s": compute, "projected_tp_comm_s": tp_comm, "projected_dp_comm_s": dp_comm,
                     "projected_step_s": step,
                     "projected_efficiency": step_compute_s / (model_gpus * step),
                     "projected_samples_per_s": dp * local_batch / step})
    df = pd.DataFrame(rows)
    df.attrs["title"] = (f"PROJECTION (alpha-beta model) of dp × pp={pp} × tp={tp} on {machine.name}: "
                         "not a measurement")
    df.attrs["kind"] = "projection"
    return df


# ----------------------------------------------------------------------------------------------------
# One runner for every model-parallel strategy (tests, lessons 04/05, the GPU check)
# ----------------------------------------------------------------------------------------------------

STRATEGIES = ("single", "tensor", "megatron", "gpipe", "1f1b", "graph", "fsdp_tp", "dp_pp")
_COLLECTIVE_PREFIXES = ("c10d::", "_c10d_functional::", "nccl:", "gloo:")


def _device() -> torch.device:
    if torch.cuda.is_available() and (not dist.is_initialized() or dist.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
                 global_batch: int = 32, lr: float = 0.05, seed: int = 0, micro_batches: int = 1, shards: int = 1,
                 dims: dict | None = None, num_layers: int | None = None, config_overrides: dict | None = None,
                 optimizer: str = "sgd",
                 return_params: bool = True, return_grads: bool = False, timing_steps: int = 2,
                 checkpoint_dir: str | None = None, stop_after: int | None = None, resume: bool = False) -> dict:
    """Train `steps` steps of a testbed under one model-parallel `strategy` on this rank; call on every rank.

    Strategies: ``"single"`` (one process: the reference; with `shards` and `micro_batches` it accumulates
    the loss over the same pieces the parallel run splits the batch into), ``"tensor"`` (DTensor TP over
    all ranks), ``"megatron"`` (the hand-written TP), ``"gpipe"``/``"1f1b"`` (pipeline over all ranks,
    `micro_batches` micro-batches), ``"graph"`` (tracking GNN, graph partitioned over all ranks),
    ``"fsdp_tp"`` (``dims={"dp": 2, "tp": 2}``), ``"dp_pp"`` (``dims={"dp": 2, "pp": 2}``).

    `num_layers` sets the depth (``num_layers`` or ``n_iterations`` of the preset's config), `config_overrides`
    any other config fields (e.g. ``{"embed_dim": 128}``). `optimizer` is ``"sgd"`` (momentum 0.9; the default, for equality tests: Adam divides by √v and turns
    the rounding noise of an exactly-zero gradient, such as an attention key bias, into full-size steps) or
    ``"adamw"``. Checkpointing: `stop_after` saves to `checkpoint_dir` after that many steps and stops;
    `resume` loads it first (`hepml_kit.parallel.checkpoint`, any number of ranks the strategy allows).

    Returns a dict shaped like `hepml_kit.parallel.compare.train_strategy`'s (so `compare.table` tabulates
    it): ``losses``, ``profile`` (`StepProfiler` summary over ranks), ``samples_per_s`` (global),
    ``state_bytes`` (this rank's parameters + gradients + optimizer state), ``comm_share`` (share of the step
    inside collectives; for pipelines the measured idle share: bubble + transfers), ``n_params``,
    ``world_size``, ``rank``, and ``params``/``grads`` (full tensors of what this rank holds, model names).
    """
    from hepml_kit.models import get, to_device
    from hepml_kit.parallel import checkpoint, graph_partition as gp
    from hepml_kit.parallel.ddp import shard_batch
    from hepml_kit.parallel.fsdp import model_state_bytes
    from hepml_kit.profile import StepProfiler

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    testbed = testbed or ("tracking_gnn" if strategy == "graph" else "jet_transformer")
    if strategy == "graph" and testbed != "tracking_gnn":
        raise ValueError("graph partitioning is for the tracking GNN (testbed='tracking_gnn')")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if (stop_after is not None or resume) and not checkpoint_dir:
        raise ValueError("stop_after and resume need a checkpoint_dir")
    distributed = dist.is_available() and dist.is_initialized()
    if strategy != "single" and not distributed:
        raise RuntimeError(f"strategy {strategy!r} needs torch.distributed: run it with hk.launch / Workers.run")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if strategy == "single" and world > 1:
        raise ValueError("strategy 'single' is the one-process reference: run it without launch")
    dims = dict(dims or {})
    if strategy == "fsdp_tp":
        dims = {"dp": dims.get("dp", world // dims.get("tp", 2)), "pp": 1, "tp": dims.get("tp", 2)}
    elif strategy == "dp_pp":
        dims = {"dp": dims.get("dp", world // dims.get("pp", 2)), "pp": dims.get("pp", 2), "tp": 1}
    split = (shards if strategy == "single" else dims.get("dp", 1)) * micro_batches
    if global_batch % split:
        raise ValueError(f"global_batch={global_batch} must split into {split} equal pieces")

    tb = get(testbed)
    cfg = tb.config(preset)
    if num_layers is not None:
        field = "num_layers" if hasattr(cfg, "num_layers") else "n_iterations"
        cfg = dataclasses.replace(cfg, **{field: num_layers})
    if config_overrides:
        cfg = dataclasses.replace(cfg, **config_overrides)
    device = _device()
    data = tb.generate(cfg, steps * global_batch, seed)
    batches = [to_device(b, device) for b in tb.batches(data, global_batch, shuffle=True, seed=seed)][:steps]
    torch.manual_seed(seed)
    model = tb.build(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    module, extra = model, {}

    if strategy in ("tensor", "megatron"):
        from hepml_kit.parallel.tensor import apply_tensor_parallel, megatron_parallelize
        from torch.distributed.device_mesh import init_device_mesh

        if strategy == "tensor":
            apply_tensor_parallel(model, init_device_mesh(device.type, (world,)))
        else:
            megatron_parallelize(model)
    elif strategy in ("gpipe", "1f1b"):
        from hepml_kit.parallel.pipeline import PipelineParallel

        pipe = PipelineParallel(model, tb.name, n_microbatches=micro_batches, schedule=strategy, device=device,
                                measure_bubble=True)
        module = pipe.module
    elif strategy == "fsdp_tp":
        groups = ProcessGroups(**dims, device=device.type)
        shard_fsdp_tp(model, groups)
        # FSDP2 warns that the root returns a view (in-place ops on it would skip its hook; the loss makes none:
        # the equality tests prove the gradients), and DTensor logs that gathering a 2-D parameter takes two steps
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    elif strategy == "dp_pp":
        groups = ProcessGroups(**dims, device=device.type)
        pipe = DataPipelineParallel(model, tb.name, groups, n_microbatches=micro_batches, device=device,
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
        if strategy in ("gpipe", "1f1b", "dp_pp"):
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
            if return_grads and i == start:
                grads = {n: _full(p.grad) for n, p in module.named_parameters() if p.grad is not None}
            opt.step()
            opt.zero_grad(set_to_none=True)
        if strategy in ("gpipe", "1f1b", "dp_pp") and i > start:
            bubbles.append((pipe.pipeline if strategy == "dp_pp" else pipe).measured_bubble())
    state_bytes = model_state_bytes(module, opt)
    summary = prof.summary()
    if stop_after is not None:
        checkpoint.save(checkpoint_dir, module, opt, step=stop_after, extra={"strategy": strategy})

    comm_share = 0.0
    if strategy in ("gpipe", "1f1b", "dp_pp"):
        comm_share = sum(bubbles) / len(bubbles) if bubbles else float("nan")
        extra["bubble_formula"] = (dims.get("pp", world) - 1) / (micro_batches + dims.get("pp", world) - 1)
        extra["measured_idle"] = comm_share
    elif strategy != "single" and timing_steps > 0:
        from torch.profiler import profile

        if device.type == "cuda":
            torch.cuda.synchronize()
        p = profile()
        with _quiet_stderr():  # kineto prints a line to stderr when it starts and stops
            p.start()
        t0 = time.perf_counter()
        for k in range(timing_steps):  # extra forward/backward passes, no optimizer step: parameters unchanged
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
    if return_params:
        out["params"] = {n: _full(p) for n, p in module.named_parameters()}  # a collective for DTensors
    if grads is not None:
        out["grads"] = grads
    return out


# ----------------------------------------------------------------------------------------------------
# The GPU check: a one-GPU pass (world size 1, nccl) of every model-parallel strategy
# ----------------------------------------------------------------------------------------------------

_GPU_CHECKS = (  # (strategy, run_strategy keyword arguments, the single-process reference's arguments)
    ("tensor", {}, {}),
    ("megatron", {}, {}),
    ("gpipe", {"micro_batches": 4, "num_layers": 4}, {"micro_batches": 4, "num_layers": 4}),
    ("1f1b", {"micro_batches": 4, "num_layers": 4}, {"micro_batches": 4, "num_layers": 4}),
    ("graph", {"global_batch": 4}, {"global_batch": 4}),
    ("fsdp_tp", {"dims": {"dp": 1, "tp": 1}}, {}),
    ("dp_pp", {"dims": {"dp": 1, "pp": 1}, "micro_batches": 4, "num_layers": 4}, {"micro_batches": 4, "num_layers": 4}),
)


def gpu_check_model_parallel(preset: str = "small", steps: int = 6, global_batch: int = 256,
                             backend: str = "nccl") -> list[dict]:
    """One pass of every model-parallel strategy on one GPU (world size 1), each beside its one-process
    reference. Returns rows ``{"name", "ok", "throughput", "unit", "peak_memory_bytes", "reference_throughput",
    "reference_peak_memory_bytes", "max_loss_rel_diff"}``; ``ok`` means the strategy's losses equal the
    reference's (rtol 1e-4: the same kernels, TF32 off). Initialises a one-rank process group if none exists
    (``backend="gloo"`` runs the same pass on a CPU). Multi-GPU: ``hepml-kit launch --nprocs 4`` a script
    calling `run_strategy` (see the module docstring)."""
    import socket

    own_group = not dist.is_initialized()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("gpu_check_model_parallel needs a CUDA GPU (or backend='gloo' for a CPU pass)")
        torch.cuda.set_device(0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if own_group:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group(backend, rank=0, world_size=1)
    elif dist.get_world_size() != 1:
        raise RuntimeError("gpu_check_model_parallel is a world-size-1 pass; call it in one process")
    rows, references = [], {}
    try:
        for strategy, kwargs, ref_kwargs in _GPU_CHECKS:
            testbed = "tracking_gnn" if strategy == "graph" else "jet_transformer"
            run = dict(preset=preset, steps=steps, global_batch=global_batch, return_params=False, timing_steps=0)
            key = (testbed, tuple(sorted(ref_kwargs.items())))
            if key not in references:
                references[key] = run_strategy("single", testbed, **{**run, **ref_kwargs})
            ref = references[key]
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            res = run_strategy(strategy, testbed, **{**run, **kwargs})
            diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(res["losses"], ref["losses"]))
            rows.append({"name": strategy, "ok": bool(diff <= 1e-4), "throughput": res["samples_per_s"],
                         "unit": f"{res['profile']['unit']}/s",
                         "peak_memory_bytes": res["profile"].get("peak_memory_bytes", float("nan")),
                         "reference_throughput": ref["samples_per_s"],
                         "reference_peak_memory_bytes": ref["profile"].get("peak_memory_bytes", float("nan")),
                         "max_loss_rel_diff": diff})
    finally:
        if own_group:
            dist.destroy_process_group()
    return rows
