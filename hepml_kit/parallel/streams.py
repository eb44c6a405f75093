"""Batch streams for the driver's plain loop (`hepml_kit.parallel.driver.Loop`): endless batches of a
testbed's data, built in the training process or by DataLoader worker processes while the device computes.

With workers, each worker builds whole batches (``testbed.batches`` over one slice of a shuffled index), and
pinned (page-locked) host memory lets the copy to the GPU run asynchronously (``non_blocking=True``): the
second rung of lesson 01's ladder (PyTorch performance tuning guide).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["batch_stream"]


def _take(data: Any, idx: np.ndarray) -> Any:
    """The samples `idx` of a testbed's data: a dict of per-sample arrays or a list of events."""
    if isinstance(data, dict):
        n = _length(data)
        return {k: (v[idx] if hasattr(v, "__len__") and not isinstance(v, str) and len(v) == n else v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [data[int(i)] for i in idx]
    raise TypeError(f"cannot split data of type {type(data).__name__}: give batches= instead")


def _length(data: Any) -> int:
    if isinstance(data, dict):
        return max(len(v) for v in data.values() if hasattr(v, "__len__") and not isinstance(v, str))
    return len(data)


class _BatchSlices(torch.utils.data.Dataset):
    """Batch i = ``testbed.batches`` over the i-th slice of a shuffled index: workers build whole batches."""

    def __init__(self, testbed, data, batch_size: int, seed: int):
        self.testbed, self.data, self.batch_size = testbed, data, batch_size
        self.order = np.random.default_rng(seed).permutation(_length(data))

    def __len__(self) -> int:
        return len(self.order) // self.batch_size  # full batches only: fixed shapes for torch.compile

    def __getitem__(self, i: int) -> dict:
        idx = np.sort(self.order[i * self.batch_size : (i + 1) * self.batch_size])
        return next(iter(self.testbed.batches(_take(self.data, idx), self.batch_size)))


def _to_device(batch: dict, device: torch.device, non_blocking: bool) -> dict:
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_stream(testbed, data, batch_size: int, device: torch.device, seed: int, *, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[dict]:
    """Endless full batches of `data` on `device` (close the generator to stop the loader workers).

    ``workers=0`` cycles the batches of one shuffled order, built in this process; ``workers>0`` uses a
    DataLoader with persistent workers, reshuffling every pass. `pin_memory` applies on CUDA only.
    """
    dataset = _BatchSlices(testbed, data, batch_size, seed)
    if len(dataset) == 0:
        raise ValueError(f"{_length(data)} samples make no full batch of {batch_size}")
    pin = pin_memory and device.type == "cuda"
    if workers == 0:
        for _ in itertools.count():
            for i in range(len(dataset)):
                yield _to_device(dataset[i], device, non_blocking=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=True, num_workers=workers,
                                         pin_memory=pin, persistent_workers=True, prefetch_factor=4)
    while True:
        for batch in loader:
            yield _to_device(batch, device, non_blocking=pin)
