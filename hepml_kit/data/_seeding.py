"""Random streams that make the Monte Carlo independent of how many ranks, workers or shards make it.

Every generator draws from streams keyed by integers (the seed, a global block or event index, a tag
naming the generator), never from one stream walked in order. An event therefore depends only on
(seed, its global index): rank r of w can make just its share, the shares of any split concatenate to
the serial data set, and the first m events of n are the m-event data set. Two ways to use them:

* per event (tracking, cosmology): ``stream(seed, i, ...)`` seeds event i;
* per block (jets, waveforms, showers): `generate_blocks` makes whole blocks of consecutive events, one
  stream each (numpy vectorised over a block is far faster than event by event), and cuts the rank's
  share out of the blocks it overlaps, so where ranks cut does not change any event.

A generator's key (the order of its words, its tag, its block size) is part of its GENERATOR_VERSION:
changing it changes the data. Used by the generators in `hepml_kit.data`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["check_seed", "generate_blocks", "rank_range", "stream"]


def check_seed(seed) -> int:
    """`seed` as an int; a clear error for negative or fractional seeds."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Global event indices [start, stop) of `rank`'s contiguous share of `n` events."""
    if n < 0:
        raise ValueError(f"number of events must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank * n // world_size, (rank + 1) * n // world_size


def stream(*key: int) -> np.random.Generator:
    """The random stream of the integers `key`, e.g. ``stream(seed, block, tag)``: a pure function of them."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def generate_blocks(
    make_block: Callable[[int], dict], n: int, rank: int, world_size: int, block_size: int
) -> dict:
    """`rank`'s contiguous share of `n` events, cut out of whole blocks.

    ``make_block(b)`` returns block b, the events with global indices ``b * block_size`` up to
    ``(b + 1) * block_size - 1``, as a dict of arrays with ``block_size`` rows drawn from the block's own
    stream (e.g. ``stream(seed, tag, b)``). Returns the same keys with the global rows [start, stop) of
    `rank_range` (for an empty share: no rows, the right dtypes and shapes).
    """
    start, stop = rank_range(int(n), rank, world_size)
    blocks = range(start // block_size, -(-stop // block_size))  # the blocks overlapping [start, stop)
    parts = [make_block(b) for b in blocks] or [make_block(0)]
    first = (start // block_size) * block_size
    return {k: np.concatenate([p[k] for p in parts])[start - first : stop - first] for k in parts[0]}
