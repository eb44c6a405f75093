"""Tensor parallelism: split each attention and MLP block's matrices across ranks (Megatron-LM).

Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using Model
Parallelism" (arXiv:1909.08053), section 3: in an MLP ``fc2(act(fc1(x)))`` split ``fc1`` by output
columns and ``fc2`` by input rows; each rank then computes its slice of the hidden layer with no
communication, and one all-reduce after ``fc2`` sums the partial outputs. Attention is split the same
way by heads: ``q/k/v`` column-wise (each rank owns ``heads / tp`` whole heads), ``out_proj`` row-wise.
Forward: one all-reduce per block; backward: one more (the gradient of the replicated block input).

Two versions of the same idea, the naive one first because it shows the two collectives:

- `ColumnParallelLinear` / `RowParallelLinear` with the conjugate operators ``f`` (identity forward,
  all-reduce backward) and ``g`` (all-reduce forward, identity backward) written as autograd functions;
  `megatron_parallelize` swaps them into a model in place.
- `apply_tensor_parallel`: the same split with PyTorch's DTensor ``parallelize_module`` and the
  ``ColwiseParallel`` / ``RowwiseParallel`` styles on a (1-D or 2-D) ``DeviceMesh``. This is the one to
  use: it composes with FSDP2 (`hepml_kit.parallel.hybrid`) and `torch.distributed.checkpoint`.

Both find the blocks by attribute names, given by a *plan* the model's file carries beside its TESTBED
(``Testbed.extra["tensor_parallel"]``: ``{"attention": (colwise, rowwise), "mlp": (colwise, rowwise)}``);
without one, `DEFAULT_PLAN`: an attention block has ``q_proj, k_proj, v_proj, out_proj`` and a ``head_dim``
(heads are formed by ``view(B, T, -1, head_dim)``, so a rank with a column shard sees ``heads / tp`` heads
without any change to the model code); an MLP block has ``fc1, fc2``.

Taught in curriculum/04_model_parallel. On a Perlmutter node (4 GPUs, NVLink) run a script with
``hepml-kit launch --nprocs 4 train_tp.py`` (torchrun underneath): tensor parallelism belongs inside a
node, where the per-layer all-reduces ride NVLink; across nodes use data or pipeline parallelism.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_PLAN",
    "ATTENTION_COLWISE",
    "ATTENTION_ROWWISE",
    "MLP_COLWISE",
    "MLP_ROWWISE",
    "ColumnParallelLinear",
    "RowParallelLinear",
    "apply_tensor_parallel",
    "check_tensor_parallel",
    "copy_to_tensor_parallel",
    "find_parallel_blocks",
    "megatron_parallelize",
    "reduce_from_tensor_parallel",
    "tensor_parallel_plan",
]

ATTENTION_COLWISE = ("q_proj", "k_proj", "v_proj")
ATTENTION_ROWWISE = ("out_proj",)
MLP_COLWISE = ("fc1",)
MLP_ROWWISE = ("fc2",)
DEFAULT_PLAN = {"attention": (ATTENTION_COLWISE, ATTENTION_ROWWISE), "mlp": (MLP_COLWISE, MLP_ROWWISE)}


# ----------------------------------------------------------------------------------------------------
# Finding the blocks and checking that they split evenly (before any communication)
# ----------------------------------------------------------------------------------------------------


def _plan(plan: dict | None) -> tuple[tuple, tuple]:
    """((attention colwise, rowwise), (mlp colwise, rowwise)) of a model's plan, or of `DEFAULT_PLAN`."""
    plan = {**DEFAULT_PLAN, **(plan or {})}
    return plan["attention"], plan["mlp"]


def find_parallel_blocks(model: nn.Module, plan: dict | None = None) -> tuple[list[str], list[str]]:
    """Qualified names of the attention blocks and the MLP blocks of `model`, in module order."""
    (a_col, a_row), (m_col, m_row) = _plan(plan)
    attention, mlp = [], []
    for name, module in model.named_modules():
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in a_col + a_row):
            attention.append(name)
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in m_col + m_row):
            mlp.append(name)
    return attention, mlp


def check_tensor_parallel(model: nn.Module, tp_size: int, plan: dict | None = None) -> None:
    """Raise `ValueError` unless every attention block's heads and every MLP width divide by `tp_size`."""
    if tp_size < 1:
        raise ValueError(f"tensor-parallel size must be >= 1, got {tp_size}")
    (a_col, a_row), (m_col, m_row) = _plan(plan)
    attention, mlp = find_parallel_blocks(model, plan)
    if not attention and not mlp:
        raise ValueError(
            f"{type(model).__name__} has no attention block ({', '.join(a_col + a_row)}) and no MLP "
            f"block ({', '.join(m_col + m_row)}): nothing to split"
        )
    problems = []
    for name in attention:
        block = model.get_submodule(name)
        head_dim = getattr(block, "head_dim", None)
        if head_dim is None:
            problems.append(f"{name}: attention block has no `head_dim` attribute")
            continue
        heads = getattr(block, a_col[0]).out_features // head_dim
        if heads % tp_size:
            problems.append(f"{name}: {heads} heads do not split over {tp_size} ranks")
    for name in mlp:
        width = getattr(model.get_submodule(name), m_col[0]).out_features
        if width % tp_size:
            problems.append(f"{name}: MLP width {width} does not split over {tp_size} ranks")
    if problems:
        raise ValueError("cannot tensor-parallelise: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------
# Naive version: Megatron's f and g operators written out
# ----------------------------------------------------------------------------------------------------


class _CopyToTensorParallel(torch.autograd.Function):
    """Megatron's ``f``: identity forward; backward all-reduces the input gradient over the group."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallel(torch.autograd.Function):
    """Megatron's ``g``: forward all-reduces the partial outputs; identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tensor_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    return _CopyToTensorParallel.apply(x, group)


def reduce_from_tensor_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    return _ReduceFromTensorParallel.apply(x, group)


def _shard(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    return t.detach().chunk(world, dim=dim)[rank].clone()


class ColumnParallelLinear(nn.Module):
    """``y_r = x @ W_r.T + b_r``: this rank's block of output features; input replicated, output sharded."""

    def __init__(self, linear: nn.Linear, group=None):
        super().__init__()
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.weight = nn.Parameter(_shard(linear.weight, 0, rank, world))  # (out/tp, in)
        self.bias = None if linear.bias is None else nn.Parameter(_shard(linear.bias, 0, rank, world))

    def forward(self, x):  # (..., in) -> (..., out/tp)
        return F.linear(copy_to_tensor_parallel(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """``y = sum_r x_r @ W_r.T + b``: this rank's block of input features; output all-reduced (replicated)."""

    def __init__(self, linear: nn.Linear, group=None):
        super().__init__()
        self.group = group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        self.weight = nn.Parameter(_shard(linear.weight, 1, rank, world))  # (out, in/tp)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())  # replicated

    def forward(self, x):  # (..., in/tp) -> (..., out)
        y = reduce_from_tensor_parallel(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


def megatron_parallelize(model: nn.Module, group=None, plan: dict | None = None) -> nn.Module:
    """Swap every attention and MLP block's linears for their column/row-parallel shards, in place."""
    check_tensor_parallel(model, dist.get_world_size(group), plan)
    attention, mlp = find_parallel_blocks(model, plan)
    (a_col, a_row), (m_col, m_row) = _plan(plan)
    for names, colwise, rowwise in ((attention, a_col, a_row), (mlp, m_col, m_row)):
        for name in names:
            block = model.get_submodule(name)
            for attr in colwise:
                setattr(block, attr, ColumnParallelLinear(getattr(block, attr), group))
            for attr in rowwise:
                setattr(block, attr, RowParallelLinear(getattr(block, attr), group))
    return model


# ----------------------------------------------------------------------------------------------------
# DTensor version: parallelize_module with ColwiseParallel / RowwiseParallel
# ----------------------------------------------------------------------------------------------------


def tensor_parallel_plan(model: nn.Module, plan: dict | None = None) -> dict:
    """The ``parallelize_module`` plan: ``{"encoder.layers.0.attn.q_proj": ColwiseParallel(), ...}``."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    attention, mlp = find_parallel_blocks(model, plan)
    (a_col, a_row), (m_col, m_row) = _plan(plan)
    styles = {}
    for names, colwise, rowwise in ((attention, a_col, a_row), (mlp, m_col, m_row)):
        for name in names:
            prefix = f"{name}." if name else ""
            styles.update({prefix + a: ColwiseParallel() for a in colwise})
            styles.update({prefix + a: RowwiseParallel() for a in rowwise})
    return styles


def apply_tensor_parallel(model: nn.Module, mesh, plan: dict | None = None) -> nn.Module:
    """Shard `model`'s attention and MLP blocks over the 1-D `mesh` (a ``DeviceMesh``, or its ``"tp"``
    sub-mesh in a 2-D one), in place. Parameters outside the blocks stay ordinary replicated tensors.

    The ColwiseParallel outputs are local tensors, so ``view(B, T, -1, head_dim)`` in the attention
    forward yields ``heads / tp`` local heads; RowwiseParallel all-reduces ``out_proj``/``fc2`` outputs.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    if mesh.ndim != 1:
        raise ValueError(f"apply_tensor_parallel needs a 1-D mesh (pass mesh['tp']), got {mesh.ndim}-D")
    check_tensor_parallel(model, mesh.size(), plan)
    return parallelize_module(model, mesh, tensor_parallel_plan(model, plan))
