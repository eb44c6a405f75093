"""Fresh Monte Carlo made by the kit's ipyparallel engines (hepml_kit.simloop.engines): 2 ranks x 2 engine
workers see every event once, bit-identical to the forked workers; an engine killed by its pid is reported by
name and pid and replaced or stops the run with a StreamError; a stuck one times out; nothing runs after.

The engines are the session's warm 2-engine `pool` (tests/conftest.py); after a test that kills one the pool
is restarted, so the next user gets it whole."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time

import numpy as np
import pytest
import torch

from hepml_kit.simloop.streaming import MonteCarloStream, StreamError, event_fingerprints, stream_batches

MODEL, B, STEPS, WORLD = "jet_transformer", 16, 6, 2


def _stream(rank=0, steps=STEPS, **kw):
    return MonteCarloStream(MODEL, "tiny", seed=0, rank=rank, world_size=WORLD, batch_size=B, steps=steps,
                            **kw)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.fixture
def engines(pool):
    """The session pool, restarted after the test if an engine died (`Workers.view` does that)."""
    yield pool
    pool.view()


def test_two_ranks_two_engines_every_event_once_and_bit_identical_to_forked_workers(engines):
    got = {r: list(stream_batches(_stream(r), workers=engines, timeout_s=60, log=None)) for r in range(WORLD)}
    index = torch.cat([b["event_index"] for r in got for b in got[r]]).tolist()
    assert sorted(index) == list(range(STEPS * WORLD * B)), "an event is missing or duplicated"
    prints = np.concatenate([event_fingerprints(b) for r in got for b in got[r]])
    assert len(np.unique(prints)) == len(prints)
    assert [int(b["step"]) for b in got[1]] == list(range(STEPS)), "batches out of step order"
    for r in range(WORLD):
        assert _same(got[r], list(stream_batches(_stream(r), workers=2, timeout_s=60, log=None)))
    # one engine of the pool (an ipyparallel view) gives the same batches again
    view = engines.view()
    one = view.client[view.targets[1]]
    assert _same(got[1], list(stream_batches(_stream(1), workers=one, timeout_s=60, log=None)))


@dataclasses.dataclass
class _CountingStream(MonteCarloStream):
    record: str = ""

    def chunk(self, step):
        with open(self.record, "a") as f:
            f.write(f"{step}\n")
        return super().chunk(step)


def test_back_pressure_at_most_prefetch_steps_per_engine_ahead(engines, tmp_path):
    record = tmp_path / "made.txt"
    stream = _CountingStream(MODEL, "tiny", batch_size=B, steps=None, record=str(record))
    batches = stream_batches(stream, workers=engines, prefetch=2, timeout_s=60, log=None)
    for _ in range(3):
        next(batches)
        time.sleep(0.5)  # a slow trainer
    batches.close()
    made = len(record.read_text().split())
    assert 3 <= made <= 3 + 2 * 2, f"{made} chunks made for 3 consumed: more than prefetch per engine ahead"


def test_an_engine_killed_by_pid_is_reported_and_replaced_then_a_death_without_restarts_stops_it(engines):
    reference = list(stream_batches(_stream(steps=12), workers=0))
    view = engines.view()
    (first, second), pids = view.targets, dict(zip(view.targets, view.apply_sync(os.getpid)))
    messages, got = [], []
    for batch in stream_batches(_stream(steps=12), workers=view, timeout_s=60, restarts=1,
                                log=messages.append):
        got.append(batch)
        if len(got) == 2:
            os.kill(pids[second], signal.SIGKILL)
    assert _same(got, reference), "the survivor did not make exactly the batches the dead engine owed"
    assert len(messages) == 1, messages
    assert f"engine {second} (host" in messages[0] and f"pid {pids[second]}) died" in messages[0]
    # the survivor alone, dying at step 3 with no restarts left: a StreamError naming it, at once
    survivor, steps, t0 = view.client[first], [], time.perf_counter()
    with pytest.raises(StreamError, match=rf"engine {first} \(host .*, pid {pids[first]}\) died.*at step 3.*"
                                          r"start_step=3"):
        for batch in stream_batches(_stream(kill_at_step=3), workers=survivor, timeout_s=60, log=None):
            steps.append(int(batch["step"]))
    assert steps == [0, 1, 2] and time.perf_counter() - t0 < 30


@dataclasses.dataclass
class _StuckStream(MonteCarloStream):
    def chunk(self, step):
        if step == 1:
            time.sleep(3600)
        return super().chunk(step)


def test_a_stuck_engine_times_out_is_interrupted_and_the_pool_still_works(engines):
    t0 = time.perf_counter()
    with pytest.raises(StreamError, match=r"engine .* sent no batch within timeout_s=2"):
        list(stream_batches(_StuckStream(MODEL, "tiny", batch_size=B, steps=4), workers=engines, timeout_s=2,
                            log=None))
    assert time.perf_counter() - t0 < 20
    # interrupted, not left sleeping: both engines answer at once
    assert len(engines.view().apply_async(os.getpid).get(timeout=5)) == 2


@dataclasses.dataclass
class _BuggyStream(MonteCarloStream):
    def chunk(self, step):
        if step == 1:
            raise ZeroDivisionError("a bug in the generator")
        return super().chunk(step)


def test_a_generator_bug_on_an_engine_is_not_retried_and_its_traceback_is_shown(engines):
    messages = []
    with pytest.raises(StreamError, match=r"(?s)raised at step 1.*ZeroDivisionError.*a bug in the generator"):
        list(stream_batches(_BuggyStream(MODEL, "tiny", batch_size=B, steps=4), workers=engines, timeout_s=30,
                            restarts=3, log=messages.append))
    assert messages == []


def test_what_is_not_an_engine_is_refused_before_any_work():
    with pytest.raises(TypeError, match="Workers pool"):
        next(stream_batches(_stream(), workers="two"))
    from hepml_kit.simloop.engines import RayGenerators

    with pytest.raises(ValueError, match="n >= 1"):
        RayGenerators(0)


@pytest.mark.slow
def test_ray_actors_give_the_same_batches_and_a_dead_actor_is_replaced_and_none_is_left():
    import ray

    from hepml_kit.hpo.ray_backend import ray_session
    from hepml_kit.simloop.engines import RayGenerators

    reference = list(stream_batches(_stream(1), workers=0))
    with ray_session(num_cpus=2):
        assert _same(list(stream_batches(_stream(1), workers=RayGenerators(2), timeout_s=120, log=None)),
                     reference)
        messages = []
        again = list(stream_batches(_stream(1, kill_at_step=3), workers=RayGenerators(2), timeout_s=120,
                                    restarts=1, log=messages.append))
        assert _same(again, reference)
        assert len(messages) == 1, messages
        assert re.search(r"Ray actor \d \(host .*, pid \d+\) died.* at step 3", messages[0]), messages
        deadline = time.monotonic() + 30  # the killed actors give their CPUs back
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2, "a generator actor was left running"
