"""Ray Tune backend on the same space and testbed objective as the Optuna tests: ASHA, PBT, TPE, grid.

One local Ray cluster for the whole module (``ray.init`` takes ~20 s on 2 cores)."""

import itertools
import json

import pytest

pytest.importorskip("ray.tune")
pytest.importorskip("optuna")

from hepml_kit.hpo.objective import ObjectiveError, TestbedObjective  # noqa: E402
from hepml_kit.hpo.space import Categorical, Float, SearchSpace  # noqa: E402

OBJECTIVE = TestbedObjective("waveform_vae", "auc", events=128, val_events=128, epochs=4, batch_size=32)
SPACE = SearchSpace({  # the same definition test_hpo_optuna runs
    "lr": Float(1e-3, 3e-2, log=True, points=3),
    "latent_dim": Categorical([4, 8]),
})


@pytest.fixture(scope="module")
def ray_cluster():
    from hepml_kit.hpo.ray_backend import ray_session

    with ray_session(num_cpus=2):
        yield


def _epochs_per_trial(history):
    return history.groupby("trial")["epoch"].count()


def test_asha_stops_poor_trials_within_the_trial_epoch_budget(ray_cluster, tmp_path):
    from hepml_kit.hpo.ray_backend import run_tune

    # one trial at a time: which trials ASHA stops depends on the order their results reach each rung, which
    # with concurrent trials is the machine's timing (CI once saw four trials each best at every rung)
    run = run_tune(SPACE, OBJECTIVE, scheduler="asha", search="random", budget_epochs=24, max_concurrent=1,
                   storage_path=str(tmp_path))
    h = run.history
    assert len(h) == 24 and h["trial"].is_monotonic_increasing  # Ray's trial ids: one trial after another
    per_trial = _epochs_per_trial(h)
    # every trial but the last (which the budget ends) trained to the end or stopped at a rung (1 or 3 epochs)
    assert per_trial.iloc[:-1].isin([1, 3, OBJECTIVE.epochs]).all(), per_trial
    stopped = (per_trial.iloc[:-1] < OBJECTIVE.epochs).sum()
    assert stopped >= 2, f"ASHA stopped {stopped} trials early: {per_trial}"
    assert h["compute"].is_monotonic_increasing and h["best_so_far"].is_monotonic_increasing
    for p in map(json.loads, h["params"]):
        assert 1e-3 <= p["lr"] <= 3e-2 and p["latent_dim"] in (4, 8)


def test_grid_search_runs_the_same_grid_as_optuna(ray_cluster, tmp_path):
    from hepml_kit.hpo.ray_backend import run_tune

    objective = TestbedObjective("waveform_vae", "auc", events=128, val_events=128, epochs=1, batch_size=32)
    run = run_tune(SPACE, objective, scheduler="fifo", search="grid", storage_path=str(tmp_path))
    seen = sorted((p["lr"], p["latent_dim"]) for p in map(json.loads, run.history["params"]))
    assert seen == sorted(itertools.product(SPACE.grid()["lr"], SPACE.grid()["latent_dim"]))


def test_population_based_training_copies_and_perturbs(ray_cluster, tmp_path):
    from hepml_kit.hpo.ray_backend import run_tune

    objective = TestbedObjective("waveform_vae", "auc", events=128, val_events=128, epochs=6, batch_size=32)
    run = run_tune(SPACE, objective, scheduler="pbt", num_samples=4, budget_epochs=24,
                   perturbation_interval=2, storage_path=str(tmp_path))
    h = run.history
    lrs = h.assign(lr=[json.loads(p)["lr"] for p in h["params"]]).groupby("trial")["lr"].nunique()
    assert (lrs > 1).any(), "no PBT member changed its learning rate (no exploit/explore happened)"
    assert h.groupby("trial")["epoch"].max().max() == 6


def test_bayesian_searcher_with_asha(ray_cluster, tmp_path):
    from hepml_kit.hpo.ray_backend import run_tune

    run = run_tune(SPACE, OBJECTIVE, scheduler="asha", search="tpe", budget_epochs=12, max_concurrent=1,
                   storage_path=str(tmp_path))  # one at a time: ASHA's stops do not depend on the timing
    assert 12 <= len(run.history) <= 14
    assert run.history["trial"].nunique() >= 4


def test_unknown_metric_is_refused_before_ray_runs_anything(ray_cluster, tmp_path):
    from hepml_kit.hpo.ray_backend import run_tune

    bad = TestbedObjective("waveform_vae", "precision", events=128, val_events=128, epochs=2)
    with pytest.raises(ObjectiveError, match="does not report a metric 'precision'"):
        run_tune(SPACE, bad, scheduler="asha", budget_epochs=4, storage_path=str(tmp_path))
    assert not any(tmp_path.iterdir())
