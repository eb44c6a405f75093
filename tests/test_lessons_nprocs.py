"""Every value a lesson's validation accepts runs: each lesson with an NPROCS parameter runs headless at
NPROCS=4 (one Perlmutter GPU node), from the repository root, with a temporary folder of its own, which must
be empty afterwards (torch's compile cache aside).

Lesson 05's default is already 4 (nbval runs it), and lesson 10 runs with SUBMIT=False here: the test Slurm
node has 2 CPUs, so a 4-task job is refused by the cluster, not by the lesson."""

import ast
import json
import time
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]


def parameters_cell(nb: Path) -> dict:
    cells = json.loads(nb.read_text())["cells"]
    src = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(src).body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}


LESSONS = [nb for nb in sorted((ROOT / "curriculum").glob("[0-9][0-9]_*.ipynb"))
           if parameters_cell(nb).get("NPROCS", 4) != 4]


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("nb", LESSONS, ids=[nb.stem for nb in LESSONS])
def test_lesson_runs_at_nprocs_4_from_the_repository_root(nb, tmp_path, monkeypatch):
    extra = {"SUBMIT": False} if "SUBMIT" in parameters_cell(nb) else {}
    # the kernel, its engines and everything they start get a temporary folder of their own: after the run
    # it must be empty (other processes on the machine cannot blur this)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"NPROCS": 4, **extra}, cwd=str(ROOT),
                        progress_bar=False, execution_timeout=600, kernel_name="hepml-kit")
    deadline = time.monotonic() + 10  # the pool's watchdog removes its folders just after the kernel exits
    while any(scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_"))  # a cache
    assert left == [], f"{nb.name} left temporary files behind: {left}"
