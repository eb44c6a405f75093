"""Exercise checks of lesson 09: the solutions pass, plausible wrong answers fail with a useful message."""

from __future__ import annotations

import numpy as np
import pytest

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed
from hepml_kit.data.shards import rank_chunks


def solution_chunks(n_events, chunk_events, rank, world_size, seed, epoch):
    chunks = [(s, min(s + chunk_events, n_events)) for s in range(0, n_events, chunk_events)]
    order = np.random.default_rng([seed, epoch]).permutation(len(chunks))
    return [chunks[i] for i in order[rank::world_size]]


def package_chunks(n_events, chunk_events, rank, world_size, seed, epoch):
    return rank_chunks(n_events, chunk_events, rank, world_size, shuffle=True, seed=seed, epoch=epoch)


def every_chunk_on_every_rank(n_events, chunk_events, rank, world_size, seed, epoch):
    return solution_chunks(n_events, chunk_events, 0, 1, seed, epoch)


def drops_the_short_chunk(n_events, chunk_events, rank, world_size, seed, epoch):
    return [c for c in solution_chunks(n_events, chunk_events, rank, world_size, seed, epoch)
            if c[1] - c[0] == chunk_events]


def file_order(n_events, chunk_events, rank, world_size, seed, epoch):
    chunks = [(s, min(s + chunk_events, n_events)) for s in range(0, n_events, chunk_events)]
    return chunks[rank::world_size]


def same_order_every_epoch(n_events, chunk_events, rank, world_size, seed, epoch):
    return solution_chunks(n_events, chunk_events, rank, world_size, seed, 0)


def unseeded(n_events, chunk_events, rank, world_size, seed, epoch):
    return solution_chunks(n_events, chunk_events, rank, world_size, np.random.randint(1 << 30), epoch)


def contiguous_blocks_per_rank(n_events, chunk_events, rank, world_size, seed, epoch):
    """Rank r takes a contiguous block of chunks: covers everything, but leaves the last ranks short."""
    chunks = [(s, min(s + chunk_events, n_events)) for s in range(0, n_events, chunk_events)]
    per = -(-len(chunks) // world_size)
    mine = chunks[rank * per:(rank + 1) * per]
    order = np.random.default_rng([seed, epoch]).permutation(len(mine))
    return [mine[i] for i in order]


@pytest.mark.parametrize("fn", [solution_chunks, package_chunks])
def test_rank_chunks_solutions_pass(fn, capsys):
    check.ex09_rank_chunks(fn)
    assert "ex09_rank_chunks passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (every_chunk_on_every_rank, "goes to more than one rank"),
    (drops_the_short_chunk, "reach no rank"),
    (file_order, "file order"),
    (same_order_every_epoch, "shuffle the chunk order per epoch"),
    (unseeded, "more than one rank|reach no rank|different chunks"),
    (contiguous_blocks_per_rank, "at most one"),
    (lambda *a: None, "returned None"),
    (lambda *a: [(0, 10 ** 6)], "outside"),
    (lambda *a: 1 / 0, "ZeroDivisionError"),
])
def test_rank_chunks_wrong_answers_fail(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex09_rank_chunks(fn)


def stream_solution(total, bpe, loader, model, n, fs):
    return max(total / bpe / (n * min(loader, model)), total / fs) / 3600


def test_stream_hours_solution_passes(capsys):
    check.ex09_stream_hours(stream_solution)
    assert "ex09_stream_hours passed" in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (lambda t, b, lo, m, n, fs: stream_solution(t, b, lo, m, n, fs) * 3600, "seconds, not hours"),
    (lambda t, b, lo, m, n, fs: max(t / b / (n * max(lo, m)), t / fs) / 3600, "use min"),
    (lambda t, b, lo, m, n, fs: t / b / (n * min(lo, m)) / 3600, "file-system ceiling"),
    (lambda t, b, lo, m, n, fs: max(t / b / min(lo, m), t / fs) / 3600, "number of GPUs"),
    (lambda t, b, lo, m, n, fs: max(t / (n * min(lo, m)), t / fs) / 3600, "bytes where events"),
    (lambda t, b, lo, m, n, fs: 42.0, "expected"),
    (lambda *a: None, "returned None"),
])
def test_stream_hours_wrong_answers_fail(fn, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex09_stream_hours(fn)


def test_unfinished_stub_and_hints(capsys):
    def stub(*args):
        raise NotImplementedError("exercise: fill in this part (check.hint('ex09') for help)")

    for c in (check.ex09_rank_chunks, check.ex09_stream_hours):
        with pytest.raises(NotImplementedError):
            c(stub)
    check.hint("ex09")
    out = capsys.readouterr().out
    assert "hint for ex09_rank_chunks" in out and "hint for ex09_stream_hours" in out
