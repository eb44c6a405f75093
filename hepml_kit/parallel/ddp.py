"""Data parallelism three ways: a naive gradient all-reduce, a bucketed and overlapped one, and torch's DDP.

Every rank holds the whole model, sees its own slice of the global batch, and averages gradients with the
others before the optimiser step, so N ranks compute exactly the step one process would take on the global
batch (Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020,
arXiv:2006.15704). Read top to bottom, picotron style:

1. `DataParallelNaive`: one blocking all-reduce per parameter, fired by a gradient hook as soon as that
   gradient exists. Simple and correct, but pays one collective's latency per tensor.
2. `DataParallelBucket`: gradients are packed into a few flat buckets; each bucket is all-reduced
   asynchronously the moment its last gradient is accumulated, so communication overlaps the rest of the
   backward pass, and the backward returns only when every bucket has arrived (what DDP does in C++).
   `measure_gradient_sync` shows, by measurement, what each of the two ideas buys.
3. `wrap_ddp`: torch's `DistributedDataParallel` with the settings this kit uses.

`shard_batch` gives this rank its share of a global batch. The ranks' averaged gradient is the gradient of
the *mean of the ranks' losses*: for a loss that is a plain mean over samples that is the global-batch loss;
for a loss averaged over a varying count (tracks, hits, pixels) it is the mean of per-rank means, the loss
one process gets by accumulating gradients over the same micro-batches.

Taught in curriculum/02_data_parallel.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DataParallelNaive",
    "DataParallelBucket",
    "average_gradients",
    "broadcast_parameters",
    "wrap_ddp",
    "shard_batch",
    "measure_gradient_sync",
]


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank, so all replicas start equal."""
    if _world() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


def average_gradients(module: nn.Module, group=None, flat: bool = False, divide: bool = True) -> int:
    """The whole of data parallelism in four lines: sum every gradient over ranks, divide by their number.

    Call after ``loss.backward()``, before ``optimizer.step()``. Returns the number of collectives issued.
    The one gradient sync of the kit: DDP by hand (per tensor), hybrid dp × pp and graph partitioning.

    Args:
        group: the process group (default: all ranks).
        flat: one all-reduce over all gradients packed into one flat buffer (one latency instead of one per
            tensor; `DataParallelBucket` does the same per bucket, overlapped with the backward).
        divide: ``False`` sums without dividing, for ranks that each hold a *share of one loss* rather than
            a replica's loss on its own samples: graph partitioning, where every rank's loss is its edges'
            part of the full-graph mean, so the full gradient is the sum of the ranks' gradients.
    """
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not flat:
        for g in grads:
            dist.all_reduce(g, op=dist.ReduceOp.SUM, group=group)  # gloo has no AVG on every build
            if divide:
                g.div_(world)
        return len(grads)
    if not grads or world == 1:
        return 0
    buffer = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(buffer, group=group)
    if divide:
        buffer /= world
    offset = 0
    for g in grads:
        g.copy_(buffer[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return 1


class DataParallelNaive(nn.Module):
    """One blocking all-reduce per parameter, issued from a gradient hook (picotron's ``DataParallelNaive``).

    The hook fires while the backward pass is still running, but the all-reduce blocks it: computation and
    communication take turns, and a model with P parameter tensors pays P collective latencies per step.
    The hook runs after the gradient is accumulated into ``p.grad``, so gradients accumulated under
    `no_sync` are averaged too.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.require_backward_grad_sync = True
        self.collectives = 0  # counts all-reduce calls, for measurements
        broadcast_parameters(module)
        self._hooks = [p.register_post_accumulate_grad_hook(self._allreduce_grad)
                       for p in module.parameters() if p.requires_grad]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _allreduce_grad(self, p: nn.Parameter) -> None:
        if self.require_backward_grad_sync and dist.is_initialized():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(_world())
            self.collectives += 1

    def remove_hooks(self) -> None:
        """Unwrap: the inner module no longer all-reduces its gradients."""
        for h in self._hooks:
            h.remove()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (gradient accumulation); the next synced backward averages them."""
        old, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old


class _Bucket:
    """A flat gradient buffer shared by a few parameters; ``views[i]`` is parameter i's slice of it."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        numel = sum(p.numel() for p in params)
        self.buffer = torch.zeros(numel, dtype=params[0].dtype, device=params[0].device)
        self.views, offset = {}, 0
        for p in params:
            self.views[p] = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.ready: set = set()
        self.handle = None


class DataParallelBucket(nn.Module):
    """Bucketed, overlapped gradient all-reduce (what DDP's reducer does; picotron's ``DataParallelBucket``).

    Parameters are grouped, in reverse registration order (roughly the order backward produces their
    gradients), into buckets of at most `bucket_cap_mb`. When the last gradient of a bucket has been
    accumulated, the bucket is all-reduced with ``async_op=True`` and backward carries on computing the
    next gradients meanwhile. A callback queued on the autograd engine waits for every bucket before
    ``loss.backward()`` returns, so the caller sees averaged gradients, as with DDP. After the first
    synced step each ``p.grad`` is a view into its bucket (no second copy of the gradients).
    """

    def __init__(self, module: nn.Module, bucket_cap_mb: float = 25.0):
        super().__init__()
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module = module
        self.require_backward_grad_sync = True
        self.collectives = 0
        broadcast_parameters(module)
        cap = bucket_cap_mb * 2**20
        self.buckets: list[_Bucket] = []
        current: list[nn.Parameter] = []
        for p in reversed([p for p in module.parameters() if p.requires_grad]):
            if current and (
                sum(q.numel() * q.element_size() for q in current) + p.numel() * p.element_size() > cap
                or p.dtype != current[0].dtype
            ):
                self.buckets.append(_Bucket(current))
                current = []
            current.append(p)
        if current:
            self.buckets.append(_Bucket(current))
        self._bucket_of = {p: b for b in self.buckets for p in b.params}
        self._callback_queued = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in self._bucket_of]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def _grad_ready(self, p: nn.Parameter) -> None:
        if not self.require_backward_grad_sync or not dist.is_initialized():
            return
        if not self._callback_queued:
            torch.autograd.Variable._execution_engine.queue_callback(self.finish_gradient_synchronization)
            self._callback_queued = True
        bucket = self._bucket_of[p]
        view = bucket.views[p]
        if p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
            p.grad = view
        bucket.ready.add(p)
        if len(bucket.ready) == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        bucket.buffer.div_(_world())
        bucket.handle = dist.all_reduce(bucket.buffer, op=dist.ReduceOp.SUM, async_op=True)
        self.collectives += 1

    def finish_gradient_synchronization(self) -> None:
        """Wait for every bucket (launching any whose parameters got no gradient: unused parameters)."""
        for bucket in self.buckets:
            if bucket.handle is None:
                for p in bucket.params:
                    if p in bucket.ready:
                        continue
                    if p.grad is None:
                        bucket.views[p].zero_()
                    else:
                        bucket.views[p].copy_(p.grad)
                    p.grad = bucket.views[p]
                self._launch(bucket)
        for bucket in self.buckets:
            bucket.handle.wait()
            bucket.handle, bucket.ready = None, set()
        self._callback_queued = False

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        old, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old


def wrap_ddp(module: nn.Module, bucket_cap_mb: float = 25.0, **kwargs) -> nn.parallel.DistributedDataParallel:
    """torch's DDP on this rank's device; gradients are views into DDP's buckets (no extra gradient copy)."""
    device = next(module.parameters()).device
    kwargs.setdefault("gradient_as_bucket_view", True)
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    return nn.parallel.DistributedDataParallel(module, bucket_cap_mb=bucket_cap_mb, **kwargs)


def shard_batch(batch: dict, rank: int | None = None, world_size: int | None = None) -> dict:
    """This rank's share of a global batch: samples ``rank, rank + N, rank + 2N, ...`` of every tensor.

    The same split as `torch.utils.data.DistributedSampler` (and so Lightning) makes, so a hand-written
    loop and a Lightning run see the same samples on the same ranks. The global batch must split evenly.
    """
    if rank is None:
        rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = world_size or _world()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() > 0:
            if v.shape[0] % world_size:
                raise ValueError(
                    f"global batch of {v.shape[0]} ({k!r}) does not split over {world_size} ranks; "
                    f"use a batch size divisible by the number of ranks"
                )
            v = v[rank::world_size]
        out[k] = v
    return out


def _timed(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls, ranks started together by a barrier."""
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure_gradient_sync(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], torch.Tensor],
    *,
    bucket_cap_mb: float = 25.0,
    repeats: int = 5,
) -> dict[str, dict[str, float]]:
    """Time one backward pass plus gradient sync four ways on this rank (call on every rank).

    - ``no_sync``: backward only (what the others would cost with free communication);
    - ``per_tensor``: backward, then one blocking all-reduce per parameter (`average_gradients`);
    - ``one_flat``: backward, then every gradient in one flat all-reduce (bucketing without overlap);
    - ``bucketed_overlap``: `DataParallelBucket` (bucketing with overlap).

    Returns ``{way: {"seconds": median, "collectives": count}}``. Per-tensor minus flat is the latency
    saved by bucketing; flat minus overlapped is what overlap hides behind compute.
    `loss_fn(model) -> loss` must run the forward pass on this rank's batch.
    """
    world = _world()
    params = [p for p in model.parameters() if p.requires_grad]

    def backward():
        model.zero_grad(set_to_none=True)
        loss_fn(model).backward()

    def per_tensor():
        backward()
        average_gradients(model)

    def one_flat():
        backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat.div_(world)
        torch.cuda.synchronize() if flat.is_cuda else None

    def overlapped():
        model.zero_grad(set_to_none=True)
        loss_fn(bucketed).backward()

    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)
    result = {}
    for name, fn in [("no_sync", backward), ("per_tensor", per_tensor), ("one_flat", one_flat)]:
        fn()  # warm-up
        sync()
        result[name] = {"seconds": _timed(lambda fn=fn: (fn(), sync()), repeats), "collectives": 0.0}
    result["per_tensor"]["collectives"] = float(len(params))
    result["one_flat"]["collectives"] = 1.0
    bucketed = DataParallelBucket(model, bucket_cap_mb=bucket_cap_mb)
    try:
        overlapped()
        sync()
        seconds = _timed(lambda: (overlapped(), sync()), repeats)
    finally:
        bucketed.remove_hooks()
    result["bucketed_overlap"] = {"seconds": seconds, "collectives": float(len(bucketed.buckets))}
    return result
