"""Your model through every entry point (issue 15, item 1): a user model and data set DEFINED IN THIS FILE
(not in the package) become a `Testbed` with `hepml_kit.models.user.testbed`, and every entry point that
takes a built-in name takes it: the data- and model-parallel strategies on 2 ranks (each equal to its
one-process reference), Lightning, checkpoints, the ladder, the scaling study and its projection, HPO on
Optuna and Ray Tune, the farm, serving and the Triton export, `models.get` and the CLI with a spec
``tests/test_platform_entry_points.py:TESTBED``. What a technique needs and the testbed lacks is a clear
error naming what to add, before any work."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hepml_kit as hk
from hepml_kit.models import get
from hepml_kit.models.user import testbed
from hepml_kit.parallel.driver import RunSpec, train
from hepml_kit.parallel.pipeline import StackRecipe

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()


# ---- the learner's work, as they would write it --------------------------------------------------------


class Block(nn.Module):
    """A residual MLP block under the learner's own names (`up`, `down`), not the kit's fc1/fc2."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Tagger(nn.Module):
    def __init__(self, features: int = 4, width: int = 8, layers: int = 2, classes: int = 3):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.layers = nn.ModuleList(Block(width, 16) for _ in range(layers))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h)


class Jets(torch.utils.data.Dataset):
    """Map-style: item i is (features, label); the label depends on the features, so there is something to
    learn."""

    def __init__(self, n: int = 256, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 1).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch["x"]), batch["y"])


def accuracy(model, batches):
    right = sum(int((model(b["x"]).argmax(1) == b["y"]).sum()) for b in batches)
    return {"accuracy": right / sum(len(b["y"]) for b in batches)}


def _entry(stage, x):
    return (stage.embed(x),)


def _layer(layer, acts):
    return (layer(acts[0]),)


def _exit(stage, acts):
    return (stage.head(acts[0]),)


def _pipeline_loss(model, outputs, micro_batch):
    # torch's schedules unwrap 1-tuples
    logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    return F.cross_entropy(logits, micro_batch["y"])


PIPELINE = StackRecipe(inputs=lambda batch: (batch["x"],), entry_modules=("embed",), stack="layers",
                       exit_modules=("head",), entry=_entry, layer=_layer, exit=_exit, loss=_pipeline_loss)

# the smallest testbed: a model factory, data, a loss; with plans and a metric for everything else
PLAIN = testbed("plain_tagger", model=Tagger, data=Jets(), loss=cross_entropy)
TESTBED = testbed("user_tagger", model=Tagger, data=Jets(), loss=cross_entropy, metrics=accuracy,
                  flops_per_sample=6 * 300, tensor_parallel={"mlp": (("up",), ("down",))}, pipeline=PIPELINE,
                  train={"epochs": 2, "batch_size": 32, "lr": 3e-3}, unit="jets")


# ---- the strategies, on 2 ranks, each against its one-process reference --------------------------------

RUN = {"steps": 3, "global_batch": 16, "lr": 0.05, "seed": 0, "timing_steps": 0}


def _on_ranks(strategy: str, spec: RunSpec):
    return train(spec, strategy)


@pytest.mark.parametrize("strategy", ["naive", "bucket", "ddp", "fsdp"])
def test_data_parallel_strategies_equal_one_process(pool, strategy):
    spec = RunSpec(TESTBED, **RUN)
    ref = train(spec, "single")
    got = [r for r in pool.run(_on_ranks, strategy, spec) if r is not None][0]
    assert got["world_size"] == 2
    torch.testing.assert_close(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy",
                         ["tensor", "megatron", "gpipe", "1f1b", "1f1b_by_hand", "fsdp_tp", "dp_pp"])
def test_model_parallel_strategies_follow_the_users_plans(pool, strategy):
    spec = RunSpec(TESTBED, micro_batches=2, **RUN)
    ref = train(spec, "single", reference="model_parallel")
    got = pool.run(_on_ranks, strategy, spec)[0]
    assert got["testbed"] == "user_tagger" and got["world_size"] == 2
    torch.testing.assert_close(got["losses"], ref["losses"], rtol=1e-4, atol=1e-5)


def test_a_plain_testbed_runs_ddp_and_fsdp_but_tp_and_pipelines_say_what_to_add(pool):
    spec = RunSpec(PLAIN, **RUN)
    assert [r for r in pool.run(_on_ranks, "fsdp", spec) if r][0]["losses"] == pytest.approx(
        train(spec, "single")["losses"], rel=1e-5)
    for strategy, plan, add in (("tensor", "tensor-parallel", "tensor_parallel=\\{'mlp'"),
                                ("fsdp_tp", "tensor-parallel", "tensor_parallel="),
                                ("1f1b", "pipeline", "pipeline=StackRecipe"),
                                ("dp_pp", "pipeline", "pipeline=")):
        with pytest.raises(ValueError, match=f"strategy '{strategy}' needs a {plan} plan, which testbed "
                                             f"'plain_tagger' does not give: add {add}"):
            train(spec, strategy)  # refused before it even asks for a process group
    with pytest.raises(hk.WorkerError,
                       match="rank 0 failed: ValueError: strategy 'megatron' needs a tensor-parallel"):
        pool.run(_on_ranks, "megatron", spec)


def test_lightning_and_checkpoints(tmp_path):
    out = train(RunSpec(TESTBED, steps=3, global_batch=16), "lightning", out_dir=str(tmp_path / "pl"))
    assert len(out["losses"]) == 3 and all(math.isfinite(x) for x in out["losses"])
    whole = train(RunSpec(TESTBED, steps=4, global_batch=16, lr=0.05), "single")
    ckpt = {"steps": 4, "global_batch": 16, "lr": 0.05, "checkpoint_dir": str(tmp_path / "ck")}
    first = train(RunSpec(TESTBED, stop_after=2, **ckpt), "single")
    second = train(RunSpec(TESTBED, resume=True, **ckpt), "single")
    assert first["losses"] + second["losses"] == pytest.approx(whole["losses"], rel=1e-6)


# ---- profiling: the ladder, the scaling study and its projection ----------------------------------------


def test_ladder_scaling_and_projection(pool):
    from hepml_kit.profile.ladder import Rung, climb
    from hepml_kit.profile.projection import project_scaling
    from hepml_kit.profile.scaling import scaling_study, train_testbed_ddp

    tb = TESTBED
    cfg = tb.config("tiny")
    df = climb(tb, cfg, tb.generate(cfg, 128, 0), [Rung("fp32 baseline")], batch_size=32, steps=3, log=None)
    assert df.attrs["unit"] == "jets" and df["samples_per_s"].iloc[0] > 0 and df["mfu"].notna().all()

    def launcher(fn, nprocs, **kw):
        return pool.run(fn,
                        **{k: v for k, v in kw.items() if k not in ("timeout", "device")}) if nprocs == 2 \
            else [fn(**{k: v for k, v in kw.items() if k not in ("timeout", "device")})]

    study = scaling_study(train_testbed_ddp, nprocs=[1, 2], batch_size=32, model=tb, steps=3, warmup_steps=1,
                          launcher=launcher, progress="none", log=None)
    assert list(study["nprocs"]) == [1, 2] and (study["samples_per_s"] > 0).all()
    grad_bytes = 4 * sum(p.numel() for p in tb.build(cfg).parameters())
    projected = project_scaling(step_compute_s=float(study["step_s"].iloc[0]), grad_bytes=grad_bytes)
    assert len(projected) > 0


# ---- HPO (Optuna, Ray Tune) and the farm ------------------------------------------------------------------


def test_optuna_study_on_the_users_model():
    from hepml_kit.hpo.objective import TestbedObjective
    from hepml_kit.hpo.optuna_backend import StudySpec, run_study
    from hepml_kit.hpo.space import Float, SearchSpace

    objective = TestbedObjective(TESTBED, metric="accuracy", epochs=2)
    spec = StudySpec("user", SearchSpace({"lr": Float(1e-3, 3e-2, log=True)}), objective, sampler="random")
    study = run_study(spec, n_trials=2)
    assert len(study.trials) == 2 and all(0 <= t.value <= 1 for t in study.trials)


@pytest.mark.slow  # Ray starts a local cluster: ~20 s on 2 cores, more when they are busy
def test_ray_tune_on_the_users_model(tmp_path):
    pytest.importorskip("ray")
    from hepml_kit.hpo.objective import TestbedObjective
    from hepml_kit.hpo.ray_backend import ray_session, run_tune
    from hepml_kit.hpo.space import Float, SearchSpace

    objective = TestbedObjective(TESTBED, metric="val_loss", direction="minimize", epochs=1)
    with ray_session(num_cpus=2):
        run = run_tune(SearchSpace({"lr": Float(1e-3, 3e-2, log=True)}), objective, scheduler="fifo",
                       num_samples=2, storage_path=str(tmp_path))
    assert len(run.history) >= 2


def test_the_farm_trains_one_model_per_seed(pool, tmp_path):
    from hepml_kit.hpo.farm import farm_models, seed_jobs

    table = farm_models(seed_jobs(3, TESTBED.name), results_dir=tmp_path, workers=pool, train=TESTBED,
                        progress=False, epochs=1)
    assert (table["status"] == "done").all() and table["accuracy"].between(0, 1).all()
    assert table["final_loss"].nunique() == 3  # three seeds, three models


# ---- serving and the Triton export -----------------------------------------------------------------------


def test_serving_and_triton_export(tmp_path):
    pytest.importorskip("tritonclient")
    from hepml_kit.serve.export import check_model_repository, export_model_repository
    from hepml_kit.serve.testbeds import served_model

    served = served_model(TESTBED)
    assert [s.name for s in served.inputs] == ["x"] and served.outputs[0].shape == (3,)
    reply = served.run(served.example(4, 0))
    assert reply["output__0"].shape == (4, 3)
    repo = export_model_repository([served], tmp_path / "repo", instance_kind="KIND_CPU")
    rows = check_model_repository(repo, [served])
    assert rows[0]["name"] == "user_tagger" if "name" in rows[0] else rows


# ---- get, specs and the CLI ----------------------------------------------------------------------------


def test_get_takes_an_object_a_name_and_specs():
    assert get(TESTBED) is TESTBED
    by_file = get(f"{HERE}:TESTBED")
    assert (by_file.name == "user_tagger" and by_file.extra["tensor_parallel"]
            == TESTBED.extra["tensor_parallel"])
    assert get("hepml_kit.models.jet_transformer:TESTBED") is get("jet_transformer")
    with pytest.raises(ValueError, match="no such file"):
        get("nowhere/model.py:TB")
    with pytest.raises(ValueError, match="has no 'NOPE'; its testbeds: PLAIN, TESTBED"):
        get(f"{HERE}:NOPE")
    with pytest.raises(ValueError, match="is a type, not a Testbed"):
        get(f"{HERE}:Block")
    with pytest.raises(ValueError, match="or name your own as path/to/file.py:NAME"):
        get("deepsets")


def test_bad_descriptions_fail_before_any_run():
    with pytest.raises(TypeError, match="map-style Dataset"):
        testbed("t", model=Tagger, data=iter([]), loss=cross_entropy)
    with pytest.raises(ValueError, match="inputs \\['tracks'\\] are not batch keys; a batch has x, y"):
        testbed("t", model=Tagger, data=Jets(), loss=cross_entropy, inputs=("tracks",))
    with pytest.raises(ValueError, match="pass fields"):
        testbed("t", model=Tagger, data=Jets(), loss=cross_entropy, fields=("x",))


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hepml_kit.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_cli_validate_models_and_data_take_a_spec(tmp_path):
    spec = "tests/test_platform_entry_points.py:TESTBED"
    out = _cli("validate", spec)
    assert out.returncode == 0, out.stderr[-2000:]
    result = dict(f.split("=") for f in out.stdout.strip().splitlines()[-1].split()[1:])
    assert 0 <= float(result["accuracy"]) <= 1 and result["threshold_met"] == "1"
    out = _cli("models", spec)
    assert out.returncode == 0 and "user_tagger" in out.stdout, out.stderr[-2000:]
    out = _cli("validate", "tests/test_platform_entry_points.py:MISSING")
    assert out.returncode == 2 and "has no 'MISSING'" in out.stderr
    out = _cli("data", "generate", spec, "--events", "40", "--shards", "2", "--out",
               str(tmp_path / "d"), "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    again = testbed("again", model=Tagger, data=str(tmp_path / "d"), loss=cross_entropy)
    assert len(again.extra["data"].train) == 32 and train(RunSpec(again, **RUN), "single")["losses"]
