"""Curriculum tooling: exercises generated from solutions, parameter validation, records, the runner."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml

from hepml_kit.teach import exercises, lesson
from hepml_kit.teach.curriculum_run import run_curriculum

ROOT = Path(__file__).resolve().parents[1]

SOLUTION_CELL = '''def f(x):
    y = 1
    # BEGIN SOLUTION
    y = x * 2
    return y
    # END SOLUTION

print("after")'''


def _notebook(path: Path, *sources: str, params: str = 'SCALE = "tiny"\nSEED = 0') -> Path:
    cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_solution_regions_become_not_implemented_stubs(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    _notebook(sol / "02_demo.ipynb", SOLUTION_CELL)
    exercises.build(sol, ex)
    src = nbformat.read(ex / "02_demo.ipynb", as_version=4).cells[1].source
    assert "x * 2" not in src and "BEGIN SOLUTION" not in src
    assert "    raise NotImplementedError(" in src and "check.hint('ex02')" in src
    assert src.startswith("def f(x):\n    y = 1\n") and src.endswith('print("after")')
    assert exercises.check(sol, ex) == []


def test_check_reports_stale_missing_and_orphan_exercises(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    _notebook(sol / "02_demo.ipynb", SOLUTION_CELL)
    exercises.build(sol, ex)
    _notebook(sol / "02_demo.ipynb", SOLUTION_CELL.replace("x * 2", "x * 3"))
    _notebook(sol / "03_new.ipynb", SOLUTION_CELL)
    _notebook(ex / "99_orphan.ipynb", "1")
    problems = "\n".join(exercises.check(sol, ex))
    assert "02_demo.ipynb differs" in problems and "03_new.ipynb is missing" in problems
    assert "99_orphan.ipynb has no solution" in problems


@pytest.mark.parametrize("bad, match", [
    ("# BEGIN SOLUTION\nx = 1", "without END"),
    ("x = 1\n# END SOLUTION", "without BEGIN"),
    ("x = 1", "no '# BEGIN SOLUTION' region"),
])
def test_malformed_regions_are_named(tmp_path, bad, match):
    sol = tmp_path / "solutions"
    sol.mkdir()
    _notebook(sol / "05_bad.ipynb", bad)
    with pytest.raises(exercises.ExerciseError, match=match):
        exercises.build(sol, tmp_path / "ex")


def test_repository_exercises_in_sync_and_notebooks_output_free():
    out = subprocess.run([sys.executable, "-m", "hepml_kit.cli", "exercises", "build", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_lesson_follows_the_conventions():
    for path in sorted((ROOT / "curriculum").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), \
            f"{path.name}: first code cell is not tagged parameters"
        assert "SCALE" in code[0].source, f"{path.name}: parameters cell lacks SCALE"
        assert "validate_parameters" in code[1].source, \
            f"{path.name}: second code cell must validate the parameters"
        head = nb.cells[0].source.lower()
        assert nb.cells[0].cell_type == "markdown" and "time" in head and "prerequisite" in head, path.name
        assert "exercises/" in nb.cells[-1].source, f"{path.name}: must end with links to its exercises"
        assert (ROOT / "solutions" / path.name).exists(), f"{path.name} has no solution notebook"


def test_validate_parameters_accepts_good_values(capsys):
    ns = {"SCALE": "tiny", "NPROCS": 2, "SEED": 0, "lesson": lesson, "np": sys}
    got = lesson.validate_parameters(ns, SCALE=lesson.choice(*lesson.SCALES), NPROCS=lesson.integer(1, 8),
                                     SEED=lesson.integer(0))
    assert got == {"SCALE": "tiny", "NPROCS": 2, "SEED": 0}


@pytest.mark.parametrize("ns, match", [
    ({"SCALE": "huge", "NPROCS": 2}, "SCALE='huge': must be one of"),
    ({"SCALE": "tiny", "NPROCS": 0}, "NPROCS=0: must be >= 1"),
    ({"SCALE": "tiny", "NPROCS": "2"}, "must be an integer"),
    ({"SCALE": "tiny", "NPROCS": 2, "NPROC": 4}, "NPROC: not a parameter of this lesson"),
    ({"SCALE": "tiny"}, "NPROCS: missing"),
])
def test_validate_parameters_stops_on_bad_or_unknown_names(ns, match):
    with pytest.raises(lesson.ParameterError, match=match):
        lesson.validate_parameters(ns, SCALE=lesson.choice(*lesson.SCALES), NPROCS=lesson.integer(1, 8))


def test_record_appends_to_the_run_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(lesson.RECORD_ENV, str(tmp_path / "r.jsonl"))
    lesson.record("speedup", 1.8, goal=">= 1.5")
    lesson.record("memory_ratio", 0.6, unit="x", goal="<= 0.5")
    import numpy as np
    import torch

    lesson.record("equal", np.float32(1.0), passed=np.bool_(True))  # numpy/torch scalars are written as JSON
    lesson.record("loss", torch.tensor(0.25))
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False, True, None]
    assert rows[3]["value"] == 0.25
    assert "PASS" in capsys.readouterr().out


def test_runner_writes_summary_and_names_failing_lesson(tmp_path):
    folder = tmp_path / "curriculum"
    folder.mkdir()
    _notebook(folder / "00_ok.ipynb",
              "from hepml_kit.teach import lesson\nlesson.record('answer', 42, goal='>= 40')")
    _notebook(folder / "01_broken.ipynb", "raise RuntimeError('lesson bug')")
    results = run_curriculum(folder, tmp_path / "build", "tiny", log=lambda m: None)
    assert [r.ok for r in results] == [True, False]
    summary = (tmp_path / "build" / "summary.md").read_text()
    assert "answer = 42 (goal >= 40: PASS)" in summary and "01_broken | FAILED" in summary
    assert (tmp_path / "build" / "executed" / "00_ok.ipynb").exists()


def test_bad_papermill_parameter_stops_the_lesson(tmp_path):
    import papermill as pm

    nb = _notebook(tmp_path / "x.ipynb", "from hepml_kit.teach import lesson\n"
                   "lesson.validate_parameters(globals(), SCALE=lesson.choice('tiny'), "
                   "SEED=lesson.integer(0))\nprint('heavy work')")
    with pytest.raises(pm.PapermillExecutionError, match="NPROC: not a parameter"):
        pm.execute_notebook(str(nb), str(tmp_path / "o.ipynb"), parameters={"NPROC": 4}, progress_bar=False)


def test_environment_yml_installs_what_pyproject_names():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "-c constraints.txt" in pip and '-e ".[all]"' in pip
    extras = pyproject["project"]["optional-dependencies"]
    all_extras = {x for e in extras["all"] for x in e.split("[")[1].rstrip("]").split(",")}
    assert all_extras == {k for k in extras if k not in ("all", "mpi")}, \
        "the 'all' extra must include every other extra (but mpi, see pyproject.toml)"

    def names(reqs):
        return {r.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower() for r in reqs}

    declared = (names(pyproject["project"]["dependencies"])
                | {n for k in extras if k != "all" for n in names(extras[k])})
    others = names(conda) - {"python", "pip"}
    assert others <= declared, f"environment.yml names packages pyproject.toml does not: {others - declared}"


def test_ex00_check_passes_on_solution_and_explains_a_sum():
    from hepml_kit import checks as check

    def average(t):
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t / dist.get_world_size()

    def summed(t):
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t

    check.ex00_average(average)
    with pytest.raises(check.CheckFailed, match="Divide by the world size"):
        check.ex00_average(summed)


def test_hint_without_solution(capsys):
    from hepml_kit import checks as check

    check.hint("ex00")
    out = capsys.readouterr().out
    assert "all_reduce" in out and "hint for ex00_average" in out
    with pytest.raises(KeyError):
        check.hint("ex99")


def test_a_lessons_scratch_folder_goes_even_when_the_kernel_is_killed(tmp_path):
    """A kernel SIGKILLed at shutdown (slow to stop its servers) runs no atexit handler: the watchdog
    removes the folder; a normal exit removes it too."""
    import os
    import signal
    import time

    child = ("import sys, time\nfrom hepml_kit.teach import lesson\nprint(lesson.scratch('l-'), flush=True)\n"
             "time.sleep(60) if sys.argv[1] == 'kill' else None\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for how in ("exit", "kill"):
        proc = subprocess.Popen([sys.executable, "-c", child, how], stdout=subprocess.PIPE, text=True,
                                env=env)
        folder = Path(proc.stdout.readline().strip())
        assert folder.parent == tmp_path
        if how == "kill":
            assert folder.is_dir()
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not folder.exists(), f"the scratch folder outlived a kernel that ended by {how}"
