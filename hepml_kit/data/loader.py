"""Feeding ranks from sharded data sets: the `rank_chunks` sampler, the chunked `ShardDataset`, the per-event
`ShardEvents`.

    ds = ShardDataset("data/jets", batch_size=128, shuffle=True)           # this rank's share, in chunks
    for batch in ds.loader(num_workers=2, pin_memory=True): ...            # the testbed's batch dicts

Reading in chunks is what makes this fast: one HDF5 read per array per chunk of thousands of events,
instead of one per array per event (`bench/data_loading.py` measures the ratio). Ranks split the data
like `torch.utils.data.DistributedSampler`, but in chunks (`rank_chunks`): each epoch the chunk order is
permuted with (seed, epoch), rank r takes every world_size-th chunk, and batches are shuffled inside a
chunk. `ShardEvents` is the per-event map-style twin for the naive path and for a plain
``DataLoader(..., sampler=DistributedSampler(...), collate_fn=events.collate)``.

The files, manifest, checks and the reading of events from arrays are `hepml_kit.data.shards`
(`ShardSet`, whose `read` this module calls per chunk); writing is `hepml_kit.data.writer`. Taught in
curriculum/09_data_delivery.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from hepml_kit.data.shards import ShardSet, collate_events, read_event, read_events

# collate_events, read_event, read_events: defined in hepml_kit.data.shards (ShardSet.read), importable here
# too
__all__ = ["ShardDataset", "ShardEvents", "collate_events", "rank_chunks", "read_event", "read_events",
           "table_batches"]

# ------------------------------------------------------------------------------------------- ranks
def rank_chunks(n_events: int, chunk_events: int, rank: int = 0, world_size: int = 1, *,
                shuffle: bool = False, seed: int = 0, epoch: int = 0,
                drop_last: bool = False) -> list[tuple[int, int]]:
    """This rank's chunks [(start, stop), ...] of global events, DistributedSampler-style but in chunks.

    The events are cut into chunks of `chunk_events` (the last one may be shorter); with `shuffle` their
    order is permuted with (seed, epoch); rank r takes chunks r, r + world_size, ... Without `drop_last`
    every event goes to exactly one rank (counts may differ by one chunk); with `drop_last` only full
    chunks are dealt and each rank gets the same number (so DDP ranks run the same number of steps).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1; got {chunk_events}")
    starts = np.arange(0, n_events, chunk_events)
    chunks = [(int(s), int(min(s + chunk_events, n_events))) for s in starts]
    if drop_last:
        chunks = [c for c in chunks if c[1] - c[0] == chunk_events]
    order = np.arange(len(chunks))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(chunks))
    if drop_last:
        order = order[: len(order) // world_size * world_size]
    return [chunks[i] for i in order[rank::world_size]]


def table_batches(data: dict, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[dict]:
    """Batches of a user's table (`hepml-kit data convert`): {column: rows} with numpy or awkward columns
    (jagged ones stay awkward; pad them in the model's collate as the model needs)."""
    n = len(next(iter(data.values())))
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for i in range(0, n, batch_size):
        rows = order[i : i + batch_size]
        yield {key: column[rows] for key, column in data.items()}


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(torch.utils.data.IterableDataset):
    """This rank's share of a sharded data set, read in chunks, as the testbed's batch dicts.

    Each chunk of `chunk_events` consecutive events is one HDF5 read per array; its batches come from
    ``Testbed.batches(chunk, batch_size, shuffle, seed)``, so they are exactly the model's batches.
    `rank`/`world_size` default to ``torch.distributed``'s (0/1 without a process group); DataLoader
    workers split the rank's chunks again. Call `set_epoch(e)` before each epoch when shuffling (as with
    DistributedSampler; with ``persistent_workers`` the workers keep the epoch they started with).

    Use `loader(...)` (a DataLoader with ``batch_size=None``: batching is done here) with the usual
    options: ``num_workers``, ``pin_memory``, ``prefetch_factor``, ``persistent_workers``.
    """

    def __init__(self, path: str | os.PathLike | ShardSet, batch_size: int, *,
                 chunk_events: int | None = None, shuffle: bool = False, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False,
                 verify: str = "quick", cfg: Any = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.shards = path if isinstance(path, ShardSet) else ShardSet(path, verify=verify, cfg=cfg)
        self.testbed = self.shards.testbed
        self.batch_size = int(batch_size)
        # whole batches per chunk, so ranks with equal chunk counts run equal numbers of steps
        chunk = chunk_events or max(1, 4096 // batch_size) * batch_size
        self.chunk_events = int(-(-int(chunk) // self.batch_size) * self.batch_size)
        r, w = _dist_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0
        rank_chunks(len(self.shards), self.chunk_events, self.rank, self.world_size)  # validates rank/world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunks(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int]]:
        """The [start, stop) event ranges this rank (and DataLoader worker) reads this epoch."""
        mine = rank_chunks(len(self.shards), self.chunk_events, self.rank, self.world_size,
                           shuffle=self.shuffle, seed=self.seed, epoch=self.epoch, drop_last=self.drop_last)
        return mine[worker::num_workers]

    def events_per_epoch(self) -> int:
        """Events this rank reads per epoch (all workers together)."""
        return sum(b - a for a, b in self.chunks())

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for a, b in self.chunks(worker, n_workers):
            data = self.shards.read(a, b)
            batch_seed = int(np.random.SeedSequence([self.seed, self.epoch, a]).generate_state(1)[0])
            batches = table_batches if self.testbed is None else self.testbed.batches
            yield from batches(data, self.batch_size, shuffle=self.shuffle, seed=batch_seed)

    def loader(self, **kwargs) -> torch.utils.data.DataLoader:
        """``DataLoader(self, batch_size=None, **kwargs)``: batches are already made here."""
        if kwargs.get("batch_size") is not None:
            raise ValueError("ShardDataset makes its own batches: set batch_size on the ShardDataset")
        kwargs["batch_size"] = None
        return torch.utils.data.DataLoader(self, **kwargs)


class ShardEvents(torch.utils.data.Dataset):
    """Map-style, one event per item: ``DataLoader(events, batch_size=B, sampler=DistributedSampler(events),
    collate_fn=events.collate)`` yields the testbed's batch dicts. Simple, and slow: every item is one HDF5
    read per array (the naive baseline of `bench/data_loading.py`)."""

    def __init__(self, path: str | os.PathLike | ShardSet, verify: str = "quick", cfg: Any = None):
        self.shards = path if isinstance(path, ShardSet) else ShardSet(path, verify=verify, cfg=cfg)
        self.testbed = self.shards.testbed

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.shards.read_event(i)

    def collate(self, events: list[dict[str, np.ndarray]]) -> dict:
        """A list of events -> one batch dict of the testbed (all events in one batch, in order)."""
        data = self.shards.collate(events)
        return next(iter(self.testbed.batches(data, len(events), shuffle=False)))
