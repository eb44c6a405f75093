"""Each lesson with ranks accepts exactly the NPROCS values it runs, refusing the others in its validation
cell (the one calling ``lesson.validate_parameters``) with the reason (issue 19, item 1, lessons 02, 04, 05
and their exercises). The cells run as papermill runs them: the parameters cell, the injected values, then
validation; that every accepted value trains is checked by running the lessons (at NPROCS=4 under papermill).
"""

import json
from pathlib import Path

import pytest

from hepml_kit.teach.lesson import ParameterError

ROOT = Path(__file__).resolve().parents[1]


def _validate(notebook: str, **injected):
    cells = [c for c in json.loads((ROOT / notebook).read_text())["cells"] if c["cell_type"] == "code"]
    params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    check = next(c for c in cells if "validate_parameters" in "".join(c["source"]))
    namespace: dict = {}
    exec("".join(params["source"]), namespace)  # noqa: S102 (the lesson's own cells, as papermill runs them)
    namespace.update(injected)
    exec("".join(check["source"]), namespace)  # noqa: S102
    return namespace["P"]


CASES = {  # notebook: (accepted NPROCS, (refused NPROCS, a phrase of the reason))
    "curriculum/02_data_parallel.ipynb": ((1, 2, 3, 4, 64),
                                          ((0, "at least one jet"), (65, "at least one jet"))),
    "solutions/02_data_parallel.ipynb": ((1, 2, 3, 4, 32), ((33, "global batch of 32"),)),
    "curriculum/04_model_parallel.ipynb": ((2, 4), ((3, "4 attention heads"), (8, "micro-batches"))),
    "solutions/04_model_parallel.ipynb": ((2, 4), ((3, "4 attention heads"),)),
    "curriculum/05_hybrid.ipynb": ((4, 8), ((6, "global batch of 32"), (2, "dp × 2"), (16, "one or two"))),
    "solutions/05_hybrid.ipynb": ((4, 8), ((6, "global batch of 32"),)),
}


@pytest.mark.parametrize("notebook", sorted(CASES))
def test_validation_accepts_exactly_the_supported_nprocs(notebook, capsys):
    accepted, refused = CASES[notebook]
    for n in accepted:
        assert _validate(notebook, NPROCS=n)["NPROCS"] == n
    for n, reason in refused:
        with pytest.raises(ParameterError, match=f"NPROCS={n}: .*{reason}"):
            _validate(notebook, NPROCS=n)
    assert 4 in accepted  # one Perlmutter node
