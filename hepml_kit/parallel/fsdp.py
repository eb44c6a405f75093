"""Sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``), and what it saves per rank.

DDP keeps a full copy of the parameters, gradients and optimizer state on every rank. Fully sharded data
parallelism (ZeRO stage 3: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020, arXiv:1910.02054; PyTorch FSDP: Zhao et al., VLDB 2023, arXiv:2304.11277)
keeps only 1/N of each on a rank: a block's parameters are all-gathered just before its forward (and again
before its backward), its gradients are reduce-scattered so each rank keeps the gradient of its own shard,
and the optimizer steps only that shard. FSDP2 stores each parameter as a DTensor sharded on dim 0.

- `shard_model`: ``fully_shard`` every block (the units all-gathered together), then the root.
- `mixed_precision`: the `MixedPrecisionPolicy` this kit uses: bf16 compute on GPUs, fp32 gradient reduction.
- `model_state_bytes`: parameter, gradient and optimizer-state bytes actually held by this rank.
- `expected_state_bytes`: what the ZeRO arithmetic predicts, for DDP and for FSDP on N ranks.

Taught in curriculum/03_sharded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

__all__ = [
    "FSDPModule",
    "mixed_precision",
    "find_blocks",
    "shard_model",
    "model_state_bytes",
    "expected_state_bytes",
]


def mixed_precision(dtype: str | torch.dtype | None = "auto") -> MixedPrecisionPolicy:
    """Parameters all-gathered and computed in `dtype`, gradients reduced in fp32.

    ``"auto"``: bf16 on a GPU that supports it, fp32 (no casting) on CPU. ``None``: plain fp32.
    The sharded parameters the optimizer updates stay fp32 either way.
    """
    if dtype == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    elif isinstance(dtype, str):
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                 "float16": torch.float16, "fp32": None, "float32": None}[dtype]
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the elements of its outermost ``ModuleList``s that hold parameters
    (transformer layers, U-Net levels, message-passing steps). A model without a ``ModuleList`` gives its
    direct children that hold parameters."""
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                blocks.extend(m for m in child if any(True for _ in m.parameters()))
            else:
                visit(child)

    visit(model)
    if not blocks:
        blocks = [m for m in model.children() if any(True for _ in m.parameters())]
    return blocks


def shard_model(
    model: nn.Module,
    *,
    mesh=None,
    mp_policy: MixedPrecisionPolicy | None = None,
    blocks: list[nn.Module] | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard `model` in place with FSDP2 and return it (now also an `FSDPModule`).

    Each block becomes one all-gather/reduce-scatter unit, so at most about one block is unsharded at a time;
    the root collects the parameters left outside the blocks (embeddings, heads). Build the optimizer
    *after* this call: the parameters are replaced by sharded DTensors.

    Args:
        mesh: a 1-D `DeviceMesh` over the data-parallel ranks (default: all ranks, on this rank's device).
        mp_policy: see `mixed_precision` (default: fp32).
        blocks: the units to shard separately (default: `find_blocks`).
        reshard_after_forward: free the gathered parameters after forward (ZeRO-3); ``False`` keeps them
            until backward (ZeRO-2-like: more memory, one all-gather fewer).
    """
    if isinstance(model, FSDPModule):
        raise ValueError("model is already sharded with fully_shard")
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy(),
              "reshard_after_forward": reshard_after_forward}
    for block in find_blocks(model) if blocks is None else blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by *this* rank (each storage counted once).

    Sharded DTensors count only their local shard, so the numbers are what this rank really keeps.
    Returns ``{"params", "grads", "optimizer", "total"}``.
    """
    seen: set[int] = set()

    def nbytes(tensors) -> int:
        total = 0
        for t in tensors:
            if not torch.is_tensor(t):
                continue
            t = _local(t)
            key = t.untyped_storage().data_ptr() if t.numel() else id(t)
            if key in seen:
                continue
            seen.add(key)
            total += t.untyped_storage().nbytes() if t.numel() else 0
        return total

    params = list(model.parameters())
    out = {
        "params": nbytes(params),
        "grads": nbytes(p.grad for p in params if p.grad is not None),
        "optimizer": 0,
    }
    if optimizer is not None:
        out["optimizer"] = nbytes(v for state in optimizer.state.values() for v in state.values())
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def expected_state_bytes(
    n_params: int,
    world_size: int,
    *,
    sharded: bool = True,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optimizer_bytes: int = 8,
) -> dict[str, float]:
    """The ZeRO arithmetic: model-state bytes per rank for `n_params` parameters.

    DDP (``sharded=False``) keeps everything on every rank; FSDP divides each term by `world_size`.
    Defaults are fp32 Adam/AdamW: 4 bytes of parameter, 4 of gradient, 8 of optimizer state (two moments).
    """
    if n_params < 0 or world_size < 1:
        raise ValueError(f"need n_params >= 0 and world_size >= 1, got {n_params}, {world_size}")
    share = 1.0 / world_size if sharded else 1.0
    out = {
        "params": n_params * param_bytes * share,
        "grads": n_params * grad_bytes * share,
        "optimizer": n_params * optimizer_bytes * share,
    }
    out["total"] = sum(out.values())
    return out
