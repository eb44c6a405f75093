"""Active learning over the calorimeter response (hepml_kit.simloop.active) and lesson 12's exercise
checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hepml_kit.checks import CheckFailed, ex12
from hepml_kit.simloop.active import ActiveConfig, ResponseProblem, allocate, events_to_reach, run_loop
from hepml_kit.simloop.ensemble import EnsembleConfig


def test_allocate_spends_the_budget_where_totals_fall_short_of_the_neyman_split():
    new = allocate(np.array([4.0, 2.0, 1.0, 1.0]), np.array([10, 10, 10, 10]), 40)
    assert new.sum() == 40 and np.all(new >= 0)
    assert new.tolist() == [30, 10, 0, 0]  # totals 40, 20, 10, 10: exactly proportional to sigma
    assert allocate(np.ones(3), np.array([0, 5, 10]), 15).tolist() == [10, 5, 0]
    many = allocate(np.linspace(0.01, 0.2, 15), np.full(15, 10), 301)
    assert many.sum() == 301 and np.all(np.diff(many) >= 0)


def test_events_to_reach_interpolates_and_says_never():
    assert events_to_reach([100, 200, 300], [10.0, 6.0, 2.0], 4.0) == pytest.approx(250.0)
    assert events_to_reach([100, 200], [10.0, 6.0], 1.0) == math.inf
    assert events_to_reach([100, 200], [3.0, 2.0], 4.0) == 100.0


def test_showers_are_simulated_where_asked_reproducibly():
    p = ResponseProblem()
    idx, y = p.simulate([3, 0, 2] + [0] * 12, seed=1, key=5)
    assert idx.tolist() == [0, 0, 0, 2, 2]
    np.testing.assert_array_equal(y, p.simulate([3, 0, 2] + [0] * 12, seed=1, key=5)[1])
    assert not np.array_equal(y, p.simulate([3, 0, 2] + [0] * 12, seed=1, key=6)[1])
    assert np.all((y > 0.5) & (y < 1.5))  # response = deposited / incident energy


def test_active_and_uniform_loops_spend_equal_budgets_and_active_goes_where_showers_fluctuate():
    p = ResponseProblem()
    reference, err = p.reference(50)
    assert np.all(err / reference < 0.01)
    ens = EnsembleConfig(members=4, steps=100)
    runs = {a: run_loop(p, ActiveConfig(acquisition=a, initial=4, per_round=150, rounds=2, steps_per_round=50,
                                         ensemble=ens), reference, seed=0)
                                         for a in ("uniform", "disagreement")}
    assert runs["uniform"]["events"] == runs["disagreement"]["events"] == [60, 210, 360]
    uni, act = runs["uniform"]["counts"][-1], runs["disagreement"]["counts"][-1]
    assert uni.max() - uni.min() <= 1
    assert act[:3].sum() > 2 * act[-3:].sum(), \
        f"active learning should favour low energies, got {act.tolist()}"
    assert all(np.isfinite(r["metric"]).all() for r in runs.values())
    with pytest.raises(ValueError, match="acquisition"):
        ActiveConfig(acquisition="random")


def test_exercise_checks_accept_the_solution_and_reject_wrong_answers():
    ex12.ex12_stream_events(lambda s, r, w, b: range((s * w + r) * b, (s * w + r + 1) * b))
    with pytest.raises(CheckFailed, match="twice"):
        ex12.ex12_stream_events(lambda s, r, w, b: range((s + r) * b, (s + r + 1) * b))  # ranks overlap
    ex12.ex12_workers_per_gpu(lambda f, p, m, w: math.ceil(p * m / f / w))
    with pytest.raises(CheckFailed):
        ex12.ex12_workers_per_gpu(lambda f, p, m, w: math.ceil(p / f / w))  # forgot the MFU
    ex12.ex12_allocate(allocate)
    with pytest.raises(CheckFailed):
        ex12.ex12_allocate(lambda s, c, b: np.full(len(c), b // len(c)))  # uniform is not the answer
    with pytest.raises(NotImplementedError):
        ex12.ex12_allocate(lambda s, c, b: (_ for _ in ()).throw(NotImplementedError()))
