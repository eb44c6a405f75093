"""One rank's endless stream of fresh Monte Carlo: which events each step holds.

**Which events.** The kit's generators make event i from ``(seed, i)`` alone (`hepml_kit.data._seeding`),
so the stream is an endless data set cut into chunks of ``batch_size`` events: step s of rank r is chunk
``g = s * world_size + r``, the events ``[g * B, (g + 1) * B)`` made by
``generate(cfg, G * B, seed, rank=g, world_size=G)`` (G = 2^40 chunks). A batch is therefore a pure function
of (seed, rank, step): the same with 1 or 8 workers, on any machine; ranks never share an event; and the
first ``S * world_size * B`` events streamed are exactly ``generate(cfg, S * world_size * B, seed)``, the
events `hepml_kit.data.shards.write_shards` stores on disk for the same seed (tests check all three). (The
tracking generator deals events to ranks round-robin instead, so its chunk g holds events g, g + G, ...:
still disjoint and reproducible, but not the first events of the serial set.)

The workers that make the steps (forked processes, engines, actors): `hepml_kit.simloop.streaming`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CHUNKS", "MonteCarloStream", "StreamError", "chunk_of", "event_fingerprints"]

CHUNKS = 2**40  # chunks of the endless stream: G in generate(cfg, G * B, seed, rank=g, world_size=G)



class StreamError(RuntimeError):
    """The stream of fresh Monte Carlo cannot go on: a worker died (restarts used up) or timed out."""


def chunk_of(step: int, rank: int, world_size: int) -> int:
    """Global chunk index of `rank`'s batch at `step`: steps interleave the ranks, so chunks are disjoint."""
    return step * world_size + rank


@dataclass
class MonteCarloStream:
    """`rank`'s endless stream of fresh batches of testbed `model`, one generated chunk per step.

    Iterating it makes the steps from `start_step` up to `steps` (None: endless) in this process;
    `stream_batches` spreads them over worker processes.

    Args:
        model: testbed name (``hepml_kit.models.get``).
        preset: ``tiny | small | full``, the config of the model and of its generator.
        seed, rank, world_size: which events (see the module docstring).
        batch_size: events per batch (per step per rank).
        steps: how many steps the stream lasts (None: endless).
        start_step: the first step (restarting after a failure, or resuming a run).
        kill_at_step: fault injection for tests and the lesson: the worker making this step dies with
            SIGKILL before handing it over, as an out-of-memory kill would.
    """

    model: str
    preset: str = "tiny"
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    batch_size: int = 64
    steps: int | None = None
    start_step: int = 0
    kill_at_step: int | None = None

    def __post_init__(self):
        from hepml_kit import models

        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, "
                             f"world_size={self.world_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps is not None and self.steps < 0 or self.start_step < 0:
            raise ValueError(f"steps and start_step must be >= 0, got {self.steps}, {self.start_step}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.testbed = models.get(self.model)
        self.cfg = self.testbed.config(self.preset)

    def chunk(self, step: int) -> dict[str, Any]:
        """The batch of `step`: a pure function of (seed, rank, step); adds ``event_index`` (B,) int64."""
        g = chunk_of(step, self.rank, self.world_size)
        data = self.testbed.generate(self.cfg, CHUNKS * self.batch_size, self.seed, rank=g, world_size=CHUNKS)
        batch = next(iter(self.testbed.batches(data, self.batch_size)))
        batch["event_index"] = _global_indices(data, g, self.batch_size)
        batch["step"] = torch.tensor(step)
        return batch

    def my_steps(self, worker: int = 0, workers: int = 1) -> range:
        stop = self.steps if self.steps is not None else 2**62
        return range(self.start_step + worker, stop, workers)

    def __iter__(self) -> Iterator[dict]:
        for step in self.my_steps():
            yield self.chunk(step)


def _global_indices(data, g: int, batch_size: int) -> torch.Tensor:
    """The global indices of a chunk's events: as the generator reports them (tracking deals events to
    ranks round-robin: chunk g holds g, g + G, ...), else the contiguous ``[g * B, (g + 1) * B)``."""
    if isinstance(data, list) and data and "event_index" in data[0]:
        return torch.tensor([int(e["event_index"]) for e in data], dtype=torch.int64)
    if isinstance(data, dict) and "index" in data:
        return torch.as_tensor(np.asarray(data["index"]), dtype=torch.int64)
    return torch.arange(g * batch_size, (g + 1) * batch_size, dtype=torch.int64)


def event_fingerprints(batch: dict) -> np.ndarray:
    """One 64-bit hash per event of a batch (over every per-event tensor), to find duplicated events."""
    n = len(batch["event_index"])
    rows = [v.reshape(n, -1).numpy().view(np.uint8).reshape(n, -1) for k, v in batch.items()
            if torch.is_tensor(v) and v.ndim >= 1 and len(v) == n and k != "event_index"]
    data = np.concatenate(rows, axis=1) if rows else np.zeros((n, 0), np.uint8)
    return np.array([hash(r.tobytes()) for r in data], dtype=np.int64)
