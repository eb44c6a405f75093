"""The comparison study's yardsticks: the AUC's statistical error, and 'compute to reach the grid's best'
to within a tolerance."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hepml_kit.hpo.compare import Comparison, auc_standard_error


def test_auc_standard_error_matches_hanley_mcneil_and_the_mann_whitney_null():
    # AUC 0.5 on 100 + 100: the Mann-Whitney null, sqrt((n1 + n2 + 1) / (12 n1 n2))
    assert auc_standard_error(0.5, 100, 100) == pytest.approx(math.sqrt(201 / (12 * 100 * 100)), rel=1e-12)
    # against the spread of AUCs measured on repeated samples (binormal scores, AUC ~0.77, lesson 06's counts)
    rng = np.random.default_rng(606)
    labels = np.r_[np.ones(92), np.zeros(1956)]
    aucs = [roc_auc_score(labels, np.r_[rng.normal(1.04, 1, 92), rng.normal(0, 1, 1956)])
            for _ in range(1000)]
    assert np.mean(aucs) == pytest.approx(0.77, abs=0.01)
    # Hanley-McNeil's exponential model overstates a binormal spread a little (~0.029 against ~0.025 here)
    assert np.std(aucs) <= auc_standard_error(0.77, 92, 1956) <= 1.3 * np.std(aucs)
    # more events, smaller error (~1/sqrt(n))
    assert auc_standard_error(0.8, 400, 400) == pytest.approx(auc_standard_error(0.8, 100, 100) / 2, rel=0.02)


class _Objective:
    direction, metric = "maximize", "auc"


def _history(values):
    best = pd.Series(values).cummax()
    return pd.DataFrame({"trial": range(len(values)), "epoch": 1, "value": values,
                         "compute": range(1, len(values) + 1), "best_so_far": best})


def test_compute_to_the_grids_best_within_a_tolerance():
    histories = {"grid": _history([0.60, 0.70, 0.75, 0.80]), "asha": _history([0.78, 0.79, 0.79, 0.79])}
    c = Comparison(_Objective(), budget_epochs=4, histories=histories)
    exact, within = c.table(), c.table(tolerance=0.06)
    assert math.isnan(exact.loc["asha", "compute_to_grid_best"])  # 0.79 never reaches 0.80
    assert within.loc["asha", "compute_to_grid_best"] == 1
    assert within.loc["asha", "fraction_of_grid_compute"] == 0.25
    assert exact.loc["grid", "compute_to_grid_best"] == 4 and within.loc["grid", "compute_to_grid_best"] == 3
