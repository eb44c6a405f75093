"""The generators' seeding helper: a block's stream, and so every event, does not depend on who makes it."""

from __future__ import annotations

import multiprocessing
from functools import partial

import numpy as np
import pytest

from hepml_kit.data._seeding import check_seed, generate_blocks, rank_range, stream
from hepml_kit.data.cosmology import generate_cosmology
from hepml_kit.data.showers import generate_showers

BS, TAG, SEED = 16, 0x7E57, 11


def _toy_block(b: int, seed: int = SEED) -> dict:
    """Block b of a toy generator: BS rows from the stream (seed, TAG, b), the way jets/waveforms draw."""
    rng = stream(seed, TAG, b)
    return {"x": rng.random((BS, 3)), "k": rng.integers(0, 1000, BS),
            "index": np.arange(b * BS, (b + 1) * BS)}


def _share(n: int, rank: int, world_size: int) -> dict:
    return generate_blocks(partial(_toy_block, seed=SEED), n, rank, world_size, BS)


def test_stream_is_a_pure_function_of_its_key():
    a = stream(SEED, TAG, 3).random(8)
    np.testing.assert_array_equal(stream(SEED, TAG, 3).random(8), a)
    np.testing.assert_array_equal(stream(np.int64(SEED), np.uint16(TAG), 3).random(8), a)  # numpy ints alike
    np.testing.assert_array_equal(np.random.default_rng([SEED, TAG, 3]).random(8), a)  # the data sets' key
    for other in ((SEED, TAG, 4), (SEED + 1, TAG, 3), (SEED, 3, TAG), (SEED, TAG)):
        assert not np.array_equal(stream(*other).random(8), a), other


@pytest.mark.parametrize("n", [0, 1, BS - 1, BS, 3 * BS + 5])
def test_shares_of_any_split_concatenate_to_the_serial_set(n):
    serial = _share(n, 0, 1)
    assert len(serial["x"]) == n and serial["x"].shape[1:] == (3,) and serial["k"].dtype == np.int64
    np.testing.assert_array_equal(serial["index"], np.arange(n))
    for world in (2, 3, 5, 7):  # more ranks than blocks, and than events: shares cut inside blocks
        shares = [_share(n, r, world) for r in range(world)]
        for key in serial:
            np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), serial[key])


def test_every_row_comes_from_its_blocks_stream_and_prefixes_agree():
    n = 3 * BS + 5
    data = _share(n, 1, 2)
    lo, hi = rank_range(n, 1, 2)
    for row, i in enumerate(range(lo, hi)):
        np.testing.assert_array_equal(data["x"][row], stream(SEED, TAG, i // BS).random((BS, 3))[i % BS])
    np.testing.assert_array_equal(_share(BS + 3, 0, 1)["x"], _share(n, 0, 1)["x"][: BS + 3])


def test_shares_made_in_worker_processes_equal_the_serial_set():
    n, world = 2 * BS + 9, 4
    with multiprocessing.get_context("fork").Pool(2) as pool:  # two workers, four shares between them
        shares = pool.starmap(_share, [(n, r, world) for r in range(world)])
    serial = _share(n, 0, 1)
    for key in serial:
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), serial[key])


def test_bad_input_is_refused_before_any_work():
    assert check_seed(7.0) == 7 and isinstance(check_seed(np.int64(7)), int)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            check_seed(bad)
    with pytest.raises(ValueError, match="number of events"):
        rank_range(-1, 0, 1)
    with pytest.raises(ValueError, match="rank"):
        rank_range(10, 2, 2)
    with pytest.raises(ValueError, match="seed"):
        generate_showers(10, -1)
    with pytest.raises(ValueError, match="seed"):
        generate_cosmology(1, 2.5)
