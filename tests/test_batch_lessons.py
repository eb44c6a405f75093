"""`hepml-kit batch` and the lessons (issue 19): values are checked against the lesson's OWN validation cell
at render time, names are matched case-insensitively for the hint, papermill's parser sees every parameter
of every lesson, and lessons find their files from any working directory."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from hepml_kit.batch import BatchError, BatchJob, curriculum_dir, sbatch
from hepml_kit.teach import lesson

ROOT = Path(__file__).resolve().parents[1]
EXE = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
LESSONS = (sorted((ROOT / "curriculum").glob("[0-9]*.ipynb"))
           + [ROOT / "curriculum" / "batch" / "hello_batch.ipynb"])


def _batch(*args, cwd=ROOT):
    return subprocess.run([EXE, "batch", *args, "--dry-run"], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("nb", LESSONS, ids=lambda p: p.name)
def test_papermill_sees_every_name_of_the_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    src = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = {t.id for n in ast.parse(src).body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert declared and declared <= set(pm.inspect_notebook(str(nb))), \
        f"papermill misses {declared - set(pm.inspect_notebook(str(nb)))}"


@pytest.mark.parametrize("value, match",
                         [("four", "NPROCS='four': must be an integer"), ("-4", "NPROCS=-4: must be >= 1")])
def test_bad_values_are_refused_at_render_time_by_the_lessons_own_rules(value, match):
    out = _batch("curriculum/02_data_parallel.ipynb", "-p", "NPROCS", value, "--time", "00:30:00")
    assert out.returncode == 2 and match in out.stderr, out.stderr


def test_lesson_extra_rules_in_the_validation_cell_apply_too():
    assert _batch("curriculum/05_hybrid.ipynb", "-p", "NPROCS", "4", "--gpus-per-node", "4").returncode == 0
    out = _batch("curriculum/05_hybrid.ipynb", "-p", "NPROCS", "6")  # an integer the lesson refuses
    assert out.returncode == 2 and "NPROCS=6: must be one of (4, 8)" in out.stderr, out.stderr


def test_good_values_pass_and_land_in_the_script():
    out = _batch("curriculum/02_data_parallel.ipynb", "-p", "NPROCS", "4", "-p", "SCALE", "small")
    assert out.returncode == 0, out.stderr
    assert '"NPROCS": 4' in out.stdout and '"SCALE": "small"' in out.stdout


def test_lower_case_name_gets_a_did_you_mean_hint():
    out = _batch("curriculum/02_data_parallel.ipynb", "-p", "seed", "7")
    assert out.returncode == 2 and "did you mean SEED?" in out.stderr, out.stderr
    with pytest.raises(lesson.ParameterError,
                       match="seed: not a parameter of this lesson; did you mean SEED"):
        lesson.validate_parameters({"SEED": 0, "seed": 7}, SEED=lesson.integer(0))  # papermill's injection
    with pytest.raises(lesson.ParameterError, match="SEDE: .*did you mean SEED"):
        lesson.validate_parameters({"SEED": 0, "SEDE": 7}, SEED=lesson.integer(0))
    assert lesson.validate_parameters({"SEED": 3, "lesson": lesson}, SEED=lesson.integer(0)) == {"SEED": 3}


def test_batch_works_from_any_working_directory(tmp_path):
    out = _batch(str(ROOT / "curriculum" / "batch" / "hello_batch.ipynb"), "-p", "MESSAGE",
                 "hi", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"--cwd {ROOT / 'curriculum' / 'batch'}" in out.stdout
    assert curriculum_dir() == ROOT / "curriculum"


def test_lesson10_runs_from_the_repository_root(tmp_path):
    out = subprocess.run([sys.executable, "-m", "papermill", "curriculum/10_batch.ipynb",
                          str(tmp_path / "10.ipynb"), "-k", "python3", "-p", "SUBMIT", "False"], cwd=ROOT,
                          capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "10.ipynb").read_text()
    assert "#PBS -l select=1:system=polaris" in text and "#SBATCH --constraint=gpu" in text
    assert 'conda activate \\"${SCRATCH}\\"/envs/hepml-kit' in text  # $SCRATCH expands in the job


def test_job_status_asks_sacct_for_finished_jobs(tmp_path, monkeypatch):
    """squeue forgets a finished job; sacct (Slurm accounting) still knows it timed out. Our one-node test
    Slurm runs without slurmdbd, so sacct is stood in for by a script printing sacct's -P format."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool, body in (("squeue", ""), ("sacct", "echo '4242|TIMEOUT'\necho '4242.batch|CANCELLED'"),
                       ("scontrol", "exit 1")):
        (bin_ / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setattr(sbatch, "JOBS_INDEX", tmp_path / "jobs")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "4242.json").write_text(json.dumps({"job_dir": str(tmp_path / "j"),
                                                             "site": "perlmutter"}))
    assert sbatch.job_status("4242")["state"] == "TIMEOUT"
    with pytest.raises(BatchError, match="job 4242 TIMEOUT"):
        sbatch.collect("4242")


def test_render_checks_values_in_process():
    job = BatchJob(notebook=str(ROOT / "curriculum" / "04_model_parallel.ipynb"), parameters={"NPROCS": 1})
    with pytest.raises(BatchError, match=r"NPROCS=1: must be one of \(2, 4\)"):
        sbatch.render_sbatch(job, Path("/tmp/x"))


@pytest.mark.parametrize("nb", LESSONS, ids=lambda p: p.name)
def test_every_lesson_renders_with_its_defaults_from_elsewhere(nb, tmp_path, monkeypatch):
    """Each lesson's validation cell evaluates in-process with its own defaults, from any working
    directory."""
    monkeypatch.chdir(tmp_path)
    script = sbatch.render_sbatch(BatchJob(notebook=str(nb), out_dir=str(tmp_path)), tmp_path / "job")
    assert f"--cwd {nb.parent}" in script
