"""Fresh Monte Carlo streamed to 2 ranks x 2 generator workers: every event once, reproducible, failures
reported and bounded in time (hepml_kit.simloop.streaming)."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time

import numpy as np
import pytest
import torch

from hepml_kit import models
from hepml_kit.simloop.streaming import MonteCarloStream, StreamError, event_fingerprints, stream_batches

MODEL, B, STEPS, WORLD = "calo_gan", 16, 6, 2


def _collect(seed=0, workers=2, **kw):
    return {r: list(stream_batches(MonteCarloStream(MODEL, "tiny", seed=seed, rank=r, world_size=WORLD,
                                                    batch_size=B, steps=STEPS, **kw), workers=workers,
                                   timeout_s=60, log=None))
            for r in range(WORLD)}


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x
                                    if torch.is_tensor(x[k]))


def test_two_ranks_two_workers_see_every_event_once_and_the_serial_events():
    got = _collect()
    index = torch.cat([b["event_index"] for r in got for b in got[r]]).numpy()
    assert sorted(index.tolist()) == list(range(STEPS * WORLD * B)), "an event is missing or duplicated"
    prints = np.concatenate([event_fingerprints(b) for r in got for b in got[r]])
    assert len(np.unique(prints)) == len(prints), "two streamed events have identical content"
    assert [int(b["step"]) for b in got[0]] == list(range(STEPS)), "batches out of step order"
    # step s of rank r is chunk s * WORLD + r of the serial data set of the same seed (what shards store)
    tb = models.get(MODEL)
    serial = list(tb.batches(tb.generate(tb.config("tiny"), STEPS * WORLD * B, 0), B))
    for r in range(WORLD):
        assert _same([{k: v for k, v in b.items() if k in serial[0]} for b in got[r]], serial[r::WORLD])


def test_same_seed_same_batches_whatever_the_worker_count_other_seed_other_events():
    two = _collect(workers=2)
    assert _same(two[1], _collect(workers=1)[1])
    assert _same(two[1], _collect(workers=0)[1])
    other = _collect(seed=1)
    assert not torch.equal(two[0][0]["voxels"], other[0][0]["voxels"])


def test_a_worker_that_dies_is_reported_and_replaced_and_the_run_continues_exactly():
    reference = _collect()[0]
    stream = MonteCarloStream(MODEL, "tiny", rank=0, world_size=WORLD, batch_size=B,
                              steps=STEPS, kill_at_step=3)
    messages = []
    got = list(stream_batches(stream, workers=2, timeout_s=30, restarts=1, log=messages.append))
    assert _same(got, reference)
    assert len(messages) == 1 and "died" in messages[0] and "step 3" in messages[0], messages


def test_a_worker_that_dies_without_restarts_stops_the_run_with_a_clear_error():
    stream = MonteCarloStream(MODEL, "tiny", batch_size=B, steps=STEPS, kill_at_step=2)
    t0, got = time.perf_counter(), []
    with pytest.raises(StreamError, match=r"died.*start_step=2"):
        for batch in stream_batches(stream, workers=2, timeout_s=30, log=None):
            got.append(int(batch["step"]))
    assert got == [0, 1] and time.perf_counter() - t0 < 30


@dataclasses.dataclass
class _StuckStream(MonteCarloStream):
    def chunk(self, step):
        if step == 1:
            time.sleep(3600)
        return super().chunk(step)


def test_a_stuck_worker_times_out_instead_of_hanging():
    t0 = time.perf_counter()
    with pytest.raises(StreamError, match="within timeout_s=2"):
        list(stream_batches(_StuckStream(MODEL, "tiny", batch_size=B, steps=4), workers=1,
                            timeout_s=2, log=None))
    assert time.perf_counter() - t0 < 20


_MADE = mp.Value("i", 0)


@dataclasses.dataclass
class _CountingStream(MonteCarloStream):
    def chunk(self, step):
        with _MADE.get_lock():
            _MADE.value += 1
        return super().chunk(step)


def test_back_pressure_generators_never_run_ahead_of_the_queue():
    _MADE.value = 0
    batches = stream_batches(_CountingStream(MODEL, "tiny", batch_size=B, steps=None), workers=2, prefetch=2,
                             timeout_s=30, log=None)
    for _ in range(3):
        next(batches)
        time.sleep(0.5)  # a slow trainer
    made = _MADE.value
    batches.close()
    assert 3 <= made <= 3 + 2 * 2 + 2, f"{made} chunks made for 3 consumed: the queue is not bounded"


def test_round_robin_generators_still_give_disjoint_chunks():
    index = [MonteCarloStream("tracking_gnn", "tiny", seed=0, rank=r, world_size=2,
                              batch_size=2).chunk(s)["event_index"]
             for r in range(2) for s in range(2)]
    flat = torch.cat(index).tolist()
    assert len(set(flat)) == len(flat) == 8


def test_bad_stream_arguments_fail_before_any_work():
    with pytest.raises(ValueError, match="rank"):
        MonteCarloStream(MODEL, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        MonteCarloStream(MODEL, batch_size=0)
    with pytest.raises(ValueError, match="unknown model"):
        MonteCarloStream("no_such_model")
    with pytest.raises(ValueError, match="workers"):
        next(stream_batches(MonteCarloStream(MODEL), workers=-1))


@dataclasses.dataclass
class _BuggyStream(MonteCarloStream):
    def chunk(self, step):
        if step == 1:
            raise ZeroDivisionError("a bug in the generator")
        return super().chunk(step)


def test_a_generator_bug_is_not_retried_and_its_traceback_is_shown():
    messages = []
    with pytest.raises(StreamError, match=r"(?s)raised at step 1.*ZeroDivisionError: a bug in the generator"):
        list(stream_batches(_BuggyStream(MODEL, "tiny", batch_size=B, steps=4), workers=2, timeout_s=30,
                            restarts=3, log=messages.append))
    assert messages == []
