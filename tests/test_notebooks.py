"""Exercise notebooks run headless and stop only at the learner's `NotImplementedError`.

(Lessons and solutions are executed by nbval in the same `make test` run: `pytest tests curriculum solutions
--nbval-lax`.)"""

from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_stops_only_at_not_implemented(path, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(path), str(tmp_path / path.name), cwd=str(path.parent), progress_bar=False,
                            execution_timeout=300)
    assert info.value.ename == "NotImplementedError", f"{path.name} failed before its exercise: {info.value}"
