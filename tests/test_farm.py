"""Many-model training: calorimeter GANs farmed over the workers, a failed model retried alone, reruns
skip."""

import os
from pathlib import Path

import pytest

import hepml_kit as hk
from hepml_kit.hpo.farm import farm_jobs, farm_models

TINY = dict(preset="tiny", seed=0, epochs=1, events=256)


def train_logged(particle, eta_bin, log_dir, crash=None, **kwargs):
    """The real GAN training, logging each call; `crash` fails once (a simulated node failure)."""
    from hepml_kit.models.calo_gan import train_calo_gan

    log = Path(log_dir)
    with open(log / "calls.txt", "a") as f:
        f.write(f"{particle}_{eta_bin}\n")
    if crash == (particle, eta_bin) and not (log / "crashed").exists():
        (log / "crashed").touch()
        raise RuntimeError("simulated node failure")
    if crash == (particle, eta_bin, "always"):
        raise RuntimeError("this model never trains")
    return train_calo_gan(particle, eta_bin, **kwargs)


def _calls(log_dir):
    return sorted(Path(log_dir, "calls.txt").read_text().split())


def test_farm_over_workers_retries_only_the_failed_model_and_reruns_skip(tmp_path):
    jobs = farm_jobs(["photon", "pion"], [0, 3])
    results = tmp_path / "farm"
    with hk.Workers(n=2) as w:
        table = farm_models(jobs, results_dir=results, workers=w, train=train_logged, progress=False,
                            log_dir=str(tmp_path), crash=("pion", 0), **TINY)
    assert list(table.index) == [("photon", 0), ("photon", 3), ("pion", 0), ("pion", 3)]
    assert (table["status"] == "done").all()
    assert table.loc[("pion", 0), "failed_attempts"] == 1 and table.loc[("pion", 0), "attempt"] == 2
    assert "simulated node failure" in table.loc[("pion", 0), "error"]
    assert (table.drop(index=[("pion", 0)])["attempt"] == 1).all()
    # others not redone
    assert _calls(tmp_path) == sorted(["photon_0", "photon_3", "pion_0", "pion_0", "pion_3"])
    assert set(table["rank"]) == {0, 1}  # both workers trained models
    for col in ("feature_chi2", "classifier_auc", "parameters", "train_seconds"):
        assert table[col].notna().all()
    assert table.loc[("pion", 0), "parameters"] > table.loc[("photon", 0), "parameters"]  # 533 vs 368 voxels

    rerun = farm_models(jobs, results_dir=results, workers=None, train=train_logged, progress=False,
                        log_dir=str(tmp_path), **TINY)
    assert rerun["reused"].all() and len(_calls(tmp_path)) == 5  # nothing trained again
    assert rerun["feature_chi2"].tolist() == table["feature_chi2"].tolist()


def test_a_model_that_keeps_failing_is_reported_and_the_rest_finish(tmp_path):
    jobs = farm_jobs(["photon"], [0, 1])
    table = farm_models(jobs, results_dir=tmp_path / "farm", train=train_logged, retries=2, progress=False,
                        log_dir=str(tmp_path), crash=("photon", 1, "always"), **TINY)
    assert table.loc[("photon", 0), "status"] == "done"
    bad = table.loc[("photon", 1)]
    assert bad["status"] == "failed" and bad["failed_attempts"] == 3 and "never trains" in bad["error"]
    assert _calls(tmp_path).count("photon_0") == 1
    assert len(os.listdir(tmp_path / "farm" / "failed")) == 3


def test_bad_farm_input_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        farm_jobs([], [0])
    with pytest.raises(ValueError, match="duplicate"):
        farm_jobs(["photon", "photon"], [0])
    with pytest.raises(ValueError, match="retries"):
        farm_models(farm_jobs(["photon"], [0]), results_dir="/tmp/unused-farm", retries=-1)
