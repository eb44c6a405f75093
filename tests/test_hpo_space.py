"""One search space for both backends, and bad input refused before any trial starts."""

import os

import pytest

from hepml_kit.hpo.objective import ObjectiveError, TestbedObjective
from hepml_kit.hpo.space import Categorical, Float, Int, SearchSpace, SearchSpaceError

optuna = pytest.importorskip("optuna")

VAE = dict(model="waveform_vae", metric="auc", events=128, val_events=128, epochs=2)


def _space():
    return SearchSpace({
        "lr": Float(1e-4, 1e-1, log=True, points=4),
        "latent_dim": Int(4, 16, step=4),
        "beta": Float(0.1, 1.0, grid=(0.1, 1.0)),
        "act": Categorical(["relu", "gelu"]),
    })


def test_dict_form_equals_dataclass_form():
    d = SearchSpace.from_dict({
        "lr": {"low": 1e-4, "high": 1e-1, "log": True, "points": 4},
        "latent_dim": {"low": 4, "high": 16, "step": 4},
        "beta": {"low": 0.1, "high": 1.0, "grid": [0.1, 1.0]},
        "act": ["relu", "gelu"],
    })
    assert d.fingerprint() == _space().fingerprint()
    assert isinstance(d.params["latent_dim"], Int) and isinstance(d.params["beta"], Float)


def test_grid_values_stay_inside_the_range_and_on_step():
    g = _space().grid()
    assert g["lr"][0] == 1e-4 and g["lr"][-1] == 1e-1 and len(g["lr"]) == 4
    assert g["lr"][1] == pytest.approx(1e-3) and g["lr"][2] == pytest.approx(1e-2)
    assert g["latent_dim"] == [4, 8, 16] or all((v - 4) % 4 == 0 for v in g["latent_dim"])
    assert g["beta"] == [0.1, 1.0] and g["act"] == ["relu", "gelu"]
    assert _space().grid_size() == 4 * len(g["latent_dim"]) * 2 * 2


def test_same_space_drives_optuna_and_ray():
    space = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        params = space.suggest(study.ask())
        assert 1e-4 <= params["lr"] <= 1e-1 and params["latent_dim"] in (4, 8, 12, 16)
        assert params["act"] in ("relu", "gelu")
    dists = space.optuna_distributions()
    assert dists["lr"].log and dists["latent_dim"].step == 4
    pytest.importorskip("ray.tune")
    from ray.tune.search.sample import Categorical as RayCat
    from ray.tune.search.sample import Float as RayFloat
    from ray.tune.search.sample import Integer as RayInt

    ray_space = space.ray_param_space()
    assert isinstance(ray_space["lr"], RayFloat) and isinstance(ray_space["act"], RayCat)
    assert isinstance(ray_space["latent_dim"], RayInt)
    samples = [ray_space["latent_dim"].sample() for _ in range(200)]
    assert set(samples) <= {4, 8, 12, 16} and 16 in samples  # upper bound included, as in Optuna
    grid = space.ray_param_space(grid=True)
    assert grid["beta"] == {"grid_search": [0.1, 1.0]}


@pytest.mark.parametrize("spec, message", [
    ({}, "empty"),
    ({"lr": Float(1e-2, 1e-3)}, "must be below high"),
    ({"lr": Float(0.0, 1.0, log=True)}, "low > 0"),
    ({"n": Int(1, 8, step=16)}, "step"),
    ({"n": Int(1.5, 8)}, "must be an integer"),
    ({"a": Categorical([])}, "at least one choice"),
    ({"a": Categorical(["x", "x"])}, "repeat"),
    ({"a": Categorical([[1, 2]])}, "numbers, strings"),
    ({"lr": Float(1e-3, 1e-2, grid=(1e-1,))}, "outside the range"),
    ({"lr": Float(1e-3, 1e-2, log=True, step=1e-3)}, "cannot have a step"),
    ({"bad name": Float(0.0, 1.0)}, "identifiers"),
])
def test_inconsistent_space_is_refused_with_a_clear_message(spec, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace(spec)


def test_dict_form_errors_name_the_parameter():
    with pytest.raises(SearchSpaceError, match="lr: a range needs 'low' and 'high'"):
        SearchSpace.from_dict({"lr": {"min": 1e-3, "max": 1e-1}})
    with pytest.raises(SearchSpaceError, match="dropout: give a list"):
        SearchSpace.from_dict({"dropout": 0.1})


def test_objective_refuses_unknown_hyperparameter_and_metric_before_training():
    objective = TestbedObjective(**VAE)
    with pytest.raises(ObjectiveError, match="does not take.*hyperparameters are: lr, batch_size"):
        objective.check(SearchSpace({"learning_rate": Float(1e-4, 1e-2, log=True)}))
    bad_metric = TestbedObjective(**{**VAE, "metric": "accuracy"})
    with pytest.raises(ObjectiveError, match="does not report a metric 'accuracy'.*auc"):
        bad_metric.check(SearchSpace({"lr": Float(1e-4, 1e-2, log=True)}))
    with pytest.raises(ObjectiveError, match="direction"):
        TestbedObjective(**{**VAE, "direction": "up"})


def test_bad_input_stops_a_study_before_any_trial(tmp_path):
    from hepml_kit.hpo.optuna_backend import StudyMismatch, StudySpec, run_study

    space = SearchSpace({"lr": Float(1e-3, 1e-2, log=True)})
    path = str(tmp_path / "study.log")
    bad = StudySpec("s", space, TestbedObjective(**{**VAE, "metric": "nope"}), sampler="random", storage=path)
    with pytest.raises(ObjectiveError, match="nope"):
        run_study(bad, n_trials=2)
    assert not os.path.exists(path) or os.path.getsize(path) == 0  # nothing was written

    good = StudySpec("s", space, TestbedObjective(**VAE), sampler="random", storage=path)
    run_study(good, n_trials=1)
    size = os.path.getsize(path)
    other_study = StudySpec("t", space, TestbedObjective(**VAE), sampler="random", storage=path)
    with pytest.raises(StudyMismatch, match="holds study 's', not 't'"):
        run_study(other_study, n_trials=2)
    other_space = StudySpec("s", SearchSpace({"lr": Float(1e-4, 1e-2, log=True)}), TestbedObjective(**VAE),
                            sampler="random", storage=path)
    with pytest.raises(StudyMismatch, match="set up differently \\(space\\)"):
        run_study(other_space, n_trials=2)
    other_metric = StudySpec("s", space, TestbedObjective(**{**VAE, "metric": "auc_neg_elbo"}),
                             sampler="random", storage=path)
    with pytest.raises(StudyMismatch, match="objective"):
        run_study(other_metric, n_trials=2)
    assert os.path.getsize(path) == size  # no trial started

    not_a_journal = tmp_path / "notes.log"
    not_a_journal.write_text("these are my notes, not a study\n")
    with pytest.raises(StudyMismatch, match="notes.log"):
        run_study(StudySpec("s", space, TestbedObjective(**VAE), storage=str(not_a_journal)), n_trials=1)


def test_trial_state_round_trip_keeps_the_receivers_learning_rate():
    """What PBT does when a member copies another: weights and epoch from the donor, its own learning rate."""
    import torch

    objective = TestbedObjective(**{**VAE, "batch_size": 32})
    donor = objective.start({"lr": 3e-3})
    donor.train_epoch()
    receiver = objective.start({"lr": 1e-3})
    receiver.load_state_dict(donor.state_dict())
    assert receiver.epoch == 1
    assert {g["lr"] for g in receiver.optimizer.param_groups} == {1e-3}
    for a, b in zip(donor.model.parameters(), receiver.model.parameters()):
        torch.testing.assert_close(a, b)
