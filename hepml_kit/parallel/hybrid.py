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

Taught in curriculum/05_hybrid. The runner that trains a testbed under any of these strategies
(`run_strategy`) lives in `hepml_kit.parallel.runner`, which imports this module (never the reverse).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from hepml_kit.parallel.ddp import average_gradients  # flat=True: one all-reduce per stage

__all__ = [
    "DataPipelineParallel",
    "ProcessGroups",
    "average_gradients",
    "project_hybrid",
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
            raise ValueError(f"dp × pp × tp = {dp} × {pp} × {tp} = {dp * pp * tp} must "
                             f"equal the world size {world}")
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


def shard_fsdp_tp(model: nn.Module, groups: ProcessGroups, mp_policy=None,
                  plan: dict | None = None) -> nn.Module:
    """Tensor-parallelise `model` over ``groups.mesh["tp"]``, then FSDP2-shard it over ``groups.mesh["dp"]``
    (every repeated block, then the root), in place; `plan` is the model's tensor-parallel plan
    (`hepml_kit.parallel.tensor`). Build the optimizer afterwards."""
    from hepml_kit.parallel.fsdp import shard_model
    from hepml_kit.parallel.tensor import apply_tensor_parallel

    if groups.sizes["pp"] != 1:
        raise ValueError("shard_fsdp_tp is data × tensor; use pp=1 (data × pipeline: DataPipelineParallel)")
    if groups.sizes["tp"] > 1:
        apply_tensor_parallel(model, groups.mesh["tp"], plan)
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
        average_gradients(self.module, self.groups.dp_group, flat=True)
        total = torch.tensor(loss, device=self.pipeline.device)
        dist.all_reduce(total, group=self.groups.dp_group)
        return float(total) / self.groups.sizes["dp"]


# ----------------------------------------------------------------------------------------------------
# Projection of a hybrid layout to a multi-node allocation
# ----------------------------------------------------------------------------------------------------


def project_hybrid(step_compute_s: float, grad_bytes: float, activation_bytes: float, n_layers: int,
                   local_batch: int, *, tp: int = 1, pp: int = 1, micro_batches: int = 1,
                   nodes: list[int] | None = None, machine=None, efficiency_of_split: float = 1.0):
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
    if (not step_compute_s > 0 or not grad_bytes > 0 or activation_bytes < 0 or local_batch < 1
            or micro_batches < 1):
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
        dp_comm = (sum(allreduce_time(b, n, dp_machine) for b in ddp_buckets(grad_bytes / model_gpus))
                   if dp > 1 else 0.0)
        step = compute + tp_comm + pp_comm + dp_comm
        rows.append({"nodes": n, "gpus": n * g, "dp": dp, "pp": pp, "tp": tp, "projected_bubble": bubble,
                     "projected_compute_s": compute, "projected_tp_comm_s": tp_comm,
                     "projected_dp_comm_s": dp_comm, "projected_step_s": step,
                     "projected_efficiency": step_compute_s / (model_gpus * step),
                     "projected_samples_per_s": dp * local_batch / step})
    df = pd.DataFrame(rows)
    df.attrs["title"] = (f"PROJECTION (alpha-beta model) of dp × pp={pp} × tp={tp} on {machine.name}: "
                         "not a measurement")
    df.attrs["kind"] = "projection"
    return df
