"""`hepml-kit validate`, `hepml-kit models`: the help names the five models, a real validation run ends
with a RESULT line carrying threshold_met, bad input is refused before any work."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hepml_kit import models
from hepml_kit.cli import main as cli_main
from hepml_kit.models import validate as validate_mod
from hepml_kit.models.cli import MODEL_NAMES
from hepml_kit.models.tracking_gnn import TRAIN_DEFAULTS as TRACKING_DEFAULTS

HEPML_KIT = Path(sys.executable).with_name("hepml-kit")
# as 04-testbeds
ACCEPTANCE_PATTERN = re.compile(r"\b(tracking|waveform|vae|calo|jet|cosmo|unet)[a-z0-9_-]*", re.I)


def _run(*args, timeout=600):
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)  # the CLI must set it itself
    return subprocess.run([str(HEPML_KIT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_parser_names_are_the_registry():
    assert list(MODEL_NAMES) == models.names()


def test_validate_help_names_exactly_the_five_models():
    done = _run("validate", "--help", timeout=60)
    assert done.returncode == 0
    found = {m.group(0) for m in ACCEPTANCE_PATTERN.finditer(done.stdout + done.stderr)}
    assert found == set(MODEL_NAMES)  # nothing else in the help text looks like a model name
    assert "threshold_met" in done.stdout and "--seed" in done.stdout


@pytest.mark.slow
def test_validate_tracking_prints_result_with_threshold():
    """The real thing on the cheapest model (tiny GNN, ~10 s of training on a quiet 2-core machine); the
    hyphenated name is accepted."""
    done = _run("validate", "tracking-gnn", "--seed", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT ")
    fields = dict(item.split("=", 1) for item in lines[-1].split()[1:])
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", k) for k in fields)
    values = {k: float(v) for k, v in fields.items()}  # plain numbers only
    assert values["threshold_met"] == 1.0 and values["edge_auc"] >= 0.95  # the tiny bar, any seed (docstring)
    tiny = TRACKING_DEFAULTS["tiny"]  # the preset decides the sample sizes; validate reports what it used
    assert values["seed"] == 3 and values["train_events"] == tiny["events"]
    assert values["test_events"] == tiny.get("test_events", tiny["events"] // 4)
    assert values["epochs"] == tiny["epochs"]
    assert any(line.startswith(f"[tracking_gnn] epoch {tiny['epochs']}/{tiny['epochs']}") for line in lines)


def test_bad_input_is_refused_before_work(capsys):
    for argv in (["validate", "jets"], ["validate", "calo_gan", "--preset", "huge"],
                 ["validate", "calo_gan", "--seed", "x"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2
    assert "invalid choice: 'jets'" in capsys.readouterr().err
    assert cli_main(["validate", "calo_gan", "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        validate_mod.validate("calo_gan", seed=-1)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        validate_mod.validate("calo_gan", preset="huge")


def test_exit_status_and_strict(monkeypatch, capsys):
    """Exit 0 whenever validation ran, the verdict in threshold_met; --strict turns a miss into 3."""
    results = {"edge_auc": 0.5, "note": "text is skipped", "threshold_met": False}
    monkeypatch.setattr(validate_mod, "validate", lambda *a, **k: dict(results))
    assert cli_main(["validate", "tracking_gnn", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "RESULT edge_auc=0.5 threshold_met=0"
    assert cli_main(["validate", "tracking_gnn", "--strict"]) == 3
    results["threshold_met"] = True
    assert cli_main(["validate", "tracking_gnn", "--strict"]) == 0


def test_result_line_is_plain_numbers():
    line = validate_mod.result_line({"auc": np.float32(0.93), "n": 4, "ok": True, "x": torch.tensor(2.5),
                                     "bad name": 1.0, "nan": math.nan, "list": [1, 2], "threshold_met": 1})
    assert line == "RESULT auc=0.93 n=4 ok=1 x=2.5 bad_name=1 nan=nan threshold_met=1"


def test_models_lists_every_model_and_preset(capsys):
    assert cli_main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["preset"]) for r in rows] == \
        [(m, p) for m in MODEL_NAMES for p in ("tiny", "small", "full")]
    assert all(r["parameters"] > 0 and r["flops_per_sample"] > 0 for r in rows)
    size = {(r["model"], r["preset"]): r["parameters"] for r in rows}
    assert size[("jet_transformer", "full")] == pytest.approx(2.3e6, rel=0.1)  # GN2 (issue 4)
    assert size[("cosmo_unet", "full")] == pytest.approx(117e6, rel=0.1)  # Harrington et al.'s U-Net
    assert size[("cosmo_unet", "tiny")] == sum(p.numel() for p in models.get("cosmo_unet").build(
        models.get("cosmo_unet").config("tiny")).parameters())  # the meta-device count is the real count
    assert cli_main(["models", "cosmo-unet"]) == 0
    table = capsys.readouterr().out
    assert "117 M" in table and "tracking_gnn" not in table
    assert cli_main(["models", "jets"]) == 2


def test_gpu_data_check_path_runs_on_cpu():
    """The lead's GPU data-delivery check, on the CPU path (no autocast, no pinning): finite figures."""
    out = validate_mod.gpu_data_check("jet_transformer", "tiny", events=1024, workers=(0, 1),
                                      steps=4, device="cpu")
    assert set(out) == {"workers0_jets_per_s", "workers0_data_frac", "workers1_jets_per_s",
                        "workers1_data_frac"}
    assert all(v > 0 and math.isfinite(v) for k, v in out.items() if k.endswith("_per_s"))
    assert all(0 <= v <= 1 for k, v in out.items() if k.endswith("_frac"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            validate_mod.gpu_data_check()
