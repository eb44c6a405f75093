"""`%%distributed` in a real kernel, executed by papermill: output prefixed by rank, in rank order, stable."""

import nbformat
import papermill as pm
import pytest

from hepml_kit.launch.magic import _parse

CELL = """%%distributed -n 2
import time, torch, torch.distributed as dist
time.sleep(0.3 * (1 - dist.get_rank()))  # rank 1 finishes printing first
t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)
print(f"rank {dist.get_rank()} sum {t.item()}")
kept = dist.get_rank()"""

SECOND = """%%distributed -n 2
print("kept", kept)"""

ONE_RANK = """%%distributed -n 2 --ranks 1
print("only", kept)"""


def _stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_magic_runs_cell_on_every_rank_in_rank_order(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("N = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("%load_ext hepml_kit"),
        nbformat.v4.new_code_cell(CELL),
        nbformat.v4.new_code_cell(SECOND),
        nbformat.v4.new_code_cell(ONE_RANK),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "magic.ipynb"
    nbformat.write(nb, src)
    outs = []
    for i in range(2):
        out = pm.execute_notebook(str(src), str(tmp_path / f"out{i}.ipynb"), progress_bar=False,
                                  execution_timeout=240)
        outs.append((_stream_text(out.cells[2]), _stream_text(out.cells[3]), _stream_text(out.cells[4])))
    assert outs[0][0] == "[rank 0] rank 0 sum 3.0\n[rank 1] rank 1 sum 3.0\n"
    assert outs[0][1] == "[rank 0] kept 0\n[rank 1] kept 1\n", "names a cell defines stay on the engines"
    assert outs[0][2] == "[rank 1] only 1\n", "--ranks 1 runs the cell on rank 1 of the warm pool only"
    assert outs[0] == outs[1], "output must be identical from run to run"


@pytest.mark.parametrize("line", ["-n 0", "--bogus", "-n two"])
def test_magic_rejects_bad_options(line):
    with pytest.raises(ValueError, match="%%distributed"):
        _parse(line)


def test_magic_ranks_option_picks_ranks_of_the_warm_pool():
    assert _parse("-n 2 --ranks 1").ranks == [1]
    assert _parse("-n 3 --ranks 0,2").ranks == [0, 2]
    assert _parse("-n 2").ranks is None
    for bad in ("-n 2 --ranks 2", "-n 2 --ranks one"):
        with pytest.raises(ValueError, match="--ranks"):
            _parse(bad)
