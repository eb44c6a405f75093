"""Optuna backend on a testbed model (the waveform VAE's anomaly AUC): samplers, pruners, parallel and DDP
trials."""

import itertools
import json

import pytest

optuna = pytest.importorskip("optuna")

import hepml_kit as hk  # noqa: E402
from hepml_kit.hpo.objective import TestbedObjective  # noqa: E402
from hepml_kit.hpo.optuna_backend import StudySpec, run_study, study_history  # noqa: E402
from hepml_kit.hpo.space import Categorical, Float, SearchSpace  # noqa: E402

OBJECTIVE = TestbedObjective("waveform_vae", "auc", events=256, val_events=128, epochs=3, batch_size=32)
SPACE = SearchSpace({
    "lr": Float(1e-3, 3e-2, log=True, points=3),
    "latent_dim": Categorical([4, 8]),
})


@pytest.fixture(scope="module", autouse=True)
def quiet_single_threaded():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and leaves the other core to the workers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workers():
    with hk.Workers(n=2) as w:
        yield w


def test_trials_are_scored_on_the_objectives_validation_data():
    val = OBJECTIVE.validation_data()
    assert len(val["anomaly"]) == 128 and OBJECTIVE.validation_data() is val  # generated once per process
    scored = OBJECTIVE.start({"lr": 1e-2, "latent_dim": 4}).evaluate()
    assert scored["waveforms"] == 128 and scored["anomalies"] == val["anomaly"].astype(bool).sum() > 0


def test_grid_visits_every_point_once():
    study = run_study(StudySpec("grid", SPACE, OBJECTIVE, sampler="grid"))
    seen = sorted((t.params["lr"], t.params["latent_dim"]) for t in study.trials)
    assert seen == sorted(itertools.product(SPACE.grid()["lr"], SPACE.grid()["latent_dim"]))
    assert all(t.state.name == "COMPLETE" and len(t.intermediate_values) == 3 for t in study.trials)
    h = study_history(study)
    assert (len(h) == 6 * 3 and h["compute"].is_monotonic_increasing
            and h["best_so_far"].is_monotonic_increasing)
    best = max(max(t.intermediate_values.values()) for t in study.trials)
    assert h["best_so_far"].iloc[-1] == pytest.approx(best)


@pytest.mark.parametrize("sampler, pruner", [("random", "none"), ("tpe", "asha"), ("cmaes", "hyperband")])
def test_samplers_and_pruners_share_the_budget_in_trial_epochs(sampler, pruner):
    budget = 15
    spec = StudySpec(f"{sampler}-{pruner}", SearchSpace({"lr": Float(1e-3, 3e-2, log=True),
                                                          "beta": Float(0.1, 1.0)}),
                     OBJECTIVE, sampler=sampler, pruner=pruner, n_startup_trials=2)
    study = run_study(spec, budget_epochs=budget)
    spent = sum(len(t.intermediate_values) for t in study.trials)
    assert budget <= spent < budget + OBJECTIVE.epochs  # the last trial may finish past the budget
    assert type(study.sampler).__name__ == {"random": "RandomSampler", "tpe": "TPESampler",
                                            "cmaes": "CmaEsSampler"}[sampler]
    if pruner == "none":
        assert all(t.state.name == "COMPLETE" for t in study.trials)
    if pruner == "asha":
        pruned = [t for t in study.trials if t.state.name == "PRUNED"]
        assert pruned, "ASHA with 1-epoch rungs should stop some of ~8 trials early"
        assert all(len(t.intermediate_values) < OBJECTIVE.epochs for t in pruned)
        assert len(study.trials) > budget // OBJECTIVE.epochs  # pruning buys more trials for the budget


def test_parallel_trials_share_one_journal_file(workers, tmp_path):
    spec = StudySpec("parallel", SPACE, OBJECTIVE, sampler="random", storage=str(tmp_path / "study.log"))
    study = run_study(spec, n_trials=6, workers=workers)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 6 <= len(done) <= 7  # two workers may both ask for the last place
    assert all(study.params_by_rank), "both workers ran trials"
    assert len({t.user_attrs["pid"] for t in done}) == 2
    # different seeds per worker
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == len(done)


def test_trial_that_is_a_two_rank_ddp_job(workers, tmp_path):
    spec = StudySpec("ddp", SPACE, OBJECTIVE, sampler="tpe", pruner="asha", n_startup_trials=2,
                     storage=f"sqlite:///{tmp_path / 'study.db'}")
    study = run_study(spec, n_trials=4, workers=workers, ranks_per_trial=2)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len(study.trials) == 4
    leader, follower = study.params_by_rank
    assert leader == follower and len(leader) == 4  # the follower trained exactly what the leader asked for
    assert len({t.user_attrs["pid"] for t in study.trials}) == 1  # only rank 0 talked to the study
    with pytest.raises(ValueError, match="multiple of ranks_per_trial"):
        run_study(spec, n_trials=4, workers=workers, ranks_per_trial=3)
