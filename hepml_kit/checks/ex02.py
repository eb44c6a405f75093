"""Checks for curriculum/02_data_parallel's exercise: data parallelism by hand.

``ex02_shard(my_shard)``: this rank's share of a global batch, the way `DistributedSampler` splits it.
``ex02_average_gradients(my_average_gradients)``: average every gradient over the ranks, in place.
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed

__all__ = ["ex02_shard", "ex02_average_gradients", "HINTS"]

HINTS = {
    "ex02_shard": "Rank r of N keeps samples r, r+N, r+2N, ... of every tensor in the batch dict "
    "(slicing with a step: v[r::N]); values that are not tensors pass through unchanged. Refuse (raise "
    "ValueError) a batch that does not split evenly.",
    "ex02_average_gradients": "Loop over model.parameters(); for each p whose p.grad is not None, "
    "dist.all_reduce(p.grad) sums it over ranks in place, then divide it in place by dist.get_world_size(). "
    "The optimizer reads p.grad, so change that tensor, do not return a new one.",
}


def ex02_shard(fn) -> None:
    """`fn(batch, rank, world_size) -> dict`: compare with DistributedSampler's split for 2 and 3 ranks."""
    import torch
    from torch.utils.data import DistributedSampler

    batch = {"x": torch.arange(12), "y": torch.arange(12) * 10, "tag": "jets"}
    for world in (2, 3):
        seen = []
        for rank in range(world):
            out = fn(dict(batch), rank, world)
            if not isinstance(out, dict):
                raise CheckFailed(f"return a dict like the batch, got {type(out).__name__}")
            if out.get("tag") != "jets":
                raise CheckFailed("values that are not tensors (here 'tag') must pass through unchanged")
            want = list(DistributedSampler(range(12), num_replicas=world, rank=rank, shuffle=False))
            got = torch.as_tensor(out["x"]).tolist()
            if got == list(range(rank * 12 // world, (rank + 1) * 12 // world)) and got != want:
                raise CheckFailed(
                    f"rank {rank} of {world} got the contiguous block {got}: a valid split, but not the one "
                    f"DistributedSampler (and so Lightning) makes, {want}. Take every N-th sample.")
            if got != want:
                raise CheckFailed(f"rank {rank} of {world}: got samples {got}, expected {want}")
            if torch.as_tensor(out["y"]).tolist() != [10 * i for i in want]:
                raise CheckFailed("every tensor of the batch must be split the same way (check 'y')")
            seen += got
        if sorted(seen) != list(range(12)):
            raise CheckFailed(f"with {world} ranks the shares do not cover the batch exactly once: "
                              f"{sorted(seen)}")
    try:
        fn({"x": torch.arange(10)}, 0, 3)
    except ValueError:
        pass
    else:
        raise CheckFailed("a batch of 10 over 3 ranks does not split evenly: raise ValueError instead of "
                          "silently giving ranks different amounts of data")
    passed("ex02_shard", "every rank gets DistributedSampler's share")


def _trial(fn):
    import torch
    import torch.distributed as dist
    from torch import nn

    rank = dist.get_rank()
    model = nn.Linear(2, 2)
    model.weight.grad = torch.full((2, 2), float(rank + 1))
    model.bias.grad = torch.full((2,), 10.0 * (rank + 1))
    returned = fn(model)
    return {
        "weight": model.weight.grad.tolist(),
        "bias": model.bias.grad.tolist(),
        "returned": returned is not None,
    }


def ex02_average_gradients(fn, nprocs: int = 2, workers=None) -> None:
    """Run the learner's `fn(model)` on `nprocs` ranks (or on a warm `Workers` pool of >= 2 ranks), each rank
    with different gradients, and compare with the mean."""
    import hepml_kit as hk

    n = max(2, nprocs)
    if workers is not None:
        results = workers.run(_trial, fn, timeout=120)
    else:
        results = hk.launch(_trial, fn, nprocs=n, timeout=120)
    n = len(results)
    if n < 2:
        raise ValueError("this check needs at least 2 ranks")
    mean_w = sum(r + 1.0 for r in range(n)) / n
    mean_b = sum(10.0 * (r + 1) for r in range(n)) / n
    for rank, res in enumerate(results):
        w, b = res["weight"][0][0], res["bias"][0]
        own_w = rank + 1.0
        if abs(w - own_w) < 1e-6 and abs(mean_w - own_w) > 1e-6:
            hint = " You returned something: the optimizer only sees p.grad, change it in place." \
                if res["returned"] else ""
            raise CheckFailed(f"rank {rank}: the weight gradient is still this rank's own ({own_w}); it must "
                              f"become the mean over ranks ({mean_w}).{hint}")
        if abs(w - n * mean_w) < 1e-6:
            raise CheckFailed(f"rank {rank}: weight gradient {w} is the sum over ranks; divide by the world "
                              f"size to get the mean {mean_w} (the loss is a mean, so is its gradient)")
        if abs(w - mean_w) > 1e-6:
            raise CheckFailed(f"rank {rank}: weight gradient {w}, expected the mean over ranks {mean_w}")
        if abs(b - mean_b) > 1e-5:
            raise CheckFailed(f"rank {rank}: the bias gradient is {b}, expected {mean_b}: average *every* "
                              "parameter's gradient, not only the first")
    passed("ex02_average_gradients", f"all {n} ranks hold the mean gradient")
