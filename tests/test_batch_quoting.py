"""Hostile values in `hepml-kit batch` (issue 20, defect 1; issue 18 for the PBS path): every value either
stays one shell word / one directive argument or is refused with a BatchError naming the option. No Slurm
needed: scripts are rendered with --dry-run, parsed with shlex and `bash -n`, and some actually run with
papermill, conda and module stubbed, to prove that nothing gets executed."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from hepml_kit.batch import sbatch
from hepml_kit.batch.quoting import BatchError, shell_word

EXE = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
SITES = ["perlmutter", "polaris"]


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('LABEL = "x"\nN = 1',
                                                                   metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(LABEL)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _render(tmp_path, site="perlmutter", **kw) -> str:
    nb = kw.pop("notebook", None) or _notebook(tmp_path / "nb.ipynb")
    job = sbatch.BatchJob(notebook=str(nb), time="00:05:00", out_dir=str(tmp_path / "jobs"), site=site, **kw)
    return sbatch.submit(job, dry_run=True)[2]


def _run_script(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the rendered script with papermill, conda, module, mpiexec, podman-hpc and shifter stubbed."""
    stub = tmp_path / "stubs"
    stub.mkdir(exist_ok=True)
    for tool in ("papermill", "conda", "module", "mpiexec", "podman-hpc", "shifter"):
        (stub / tool).write_text('#!/bin/sh\necho "STUB $0 $*" >> "$STUBLOG"\nexit 0\n')
        (stub / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}", "STUBLOG": str(tmp_path / "stub.log"),
           "SCRATCH": "/scratch/me"}
    return subprocess.run(["bash", "-c", script.replace("\nmodule ", "\nmodule ")], env=env, timeout=60,
                          capture_output=True, text=True)


def _directives(script: str) -> list[list[str]]:
    return [shlex.split(line) for line in script.splitlines() if line.startswith(("#SBATCH", "#PBS"))]


@pytest.mark.parametrize("container", ["podman-hpc", "shifter"])
def test_hostile_image_is_refused_naming_the_option(tmp_path, container):
    nb = _notebook(tmp_path / "nb.ipynb")
    out = subprocess.run([EXE, "batch", str(nb), "--image", f"img; touch {tmp_path}/pwned",
                          "--container", container, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--image" in out.stderr and "not allowed" in out.stderr, \
        out.stdout + out.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("container", ["podman-hpc", "shifter"])
def test_image_and_pwd_are_single_words(tmp_path, container):
    script = _render(tmp_path, image="registry.nersc.gov/das/hepml-kit:1.0",
                     container=container, gpus_per_node=4)
    line = next(x for x in script.splitlines() if "papermill -k" in x)
    words = shlex.split(line)
    assert ("registry.nersc.gov/das/hepml-kit:1.0" in words
            or "--image=registry.nersc.gov/das/hepml-kit:1.0" in words)
    assert "$PWD" not in line.replace('"$PWD"', "")  # $PWD only ever inside double quotes
    # run it from a folder whose name would split: the container still gets one mount argument
    odd = tmp_path / "a b;touch pwned"
    odd.mkdir()
    r = subprocess.run(["bash", "-c", f"cd {shlex.quote(str(odd))} && " + _stubbed(tmp_path) + script],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "STUBLOG": str(tmp_path / "log")})
    assert r.returncode == 0, r.stderr
    assert not (odd / "pwned").exists() and not Path("pwned").exists()
    if container == "podman-hpc":
        assert f"-v {odd}:{odd}" in (tmp_path / "log").read_text()


def _stubbed(tmp_path: Path) -> str:
    stub = tmp_path / "stubs"
    stub.mkdir(exist_ok=True)
    for tool in ("papermill", "podman-hpc", "shifter", "mpiexec"):
        (stub / tool).write_text('#!/bin/sh\necho "STUB $0 $*" >> "$STUBLOG"\nexit 0\n')
        (stub / tool).chmod(0o755)
    return f"export PATH={shlex.quote(str(stub))}:$PATH; "


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("option, value", [
    ("account", "m1234 --chdir=/tmp"), ("account", "a\n#SBATCH --wrap=id"), ("qos", "regular;id"),
    ("constraint", "gpu --chdir=/"), ("job_name", "x --output=/etc/passwd"), ("account", "m\udcff12"),
    ("queue", "debug -W depend=x"),
])
def test_hostile_directive_values_are_refused(tmp_path, site, option, value):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(BatchError, match=flag):
        _render(tmp_path, site=site, **{option: value})


@pytest.mark.parametrize("site", SITES)
def test_notebook_path_with_spaces_and_semicolon_stays_data(tmp_path, site):
    marker = tmp_path / "pwned"
    nb = _notebook(tmp_path / f"my lessons; touch {marker}" / f"a b;$(touch {marker}).ipynb")
    script = _render(tmp_path, site=site, notebook=nb, account="m1234")
    for words in _directives(script):
        assert len(words) in (2, 3) and ";" not in " ".join(words), words  # "#SBATCH --x=y" / "#PBS -A m1234"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    r = _run_script(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "a notebook path was executed as shell code"
    call = next(x for x in (tmp_path / "stub.log").read_text().splitlines() if "papermill" in x)
    assert str(nb.resolve()) in call


@pytest.mark.parametrize("site", SITES)
def test_out_folder_a_directive_cannot_carry_is_refused(tmp_path, site):
    nb = _notebook(tmp_path / "nb.ipynb")
    job = sbatch.BatchJob(notebook=str(nb), out_dir=str(tmp_path / "out put"), site=site)
    with pytest.raises(BatchError, match="--out .* is not allowed here"):
        sbatch.submit(job, dry_run=True)


def test_non_utf8_values_are_refused_before_submission(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb")
    for args in ([b"-p", b"LABEL", b"caf\xe9"], [b"--venv", b"/opt/v\xff"], [b"--account", b"m\xff"]):
        out = subprocess.run([EXE.encode(), b"batch", str(nb).encode(), *args, b"--dry-run"],
                             capture_output=True, timeout=60)
        assert out.returncode == 2 and b"UTF-8" in out.stderr or b"not allowed" in out.stderr, \
            (args, out.stderr)


def test_shell_word_expands_variables_only():
    assert shell_word("$SCRATCH/envs/kit", expand_variables=True) == '"${SCRATCH}"/envs/kit'
    assert shell_word("${HOME}", expand_variables=True) == '"${HOME}"'
    for hostile in ("$(touch x)", "`touch x`", "a b; c", "$((1+1))", "'", ""):
        words = shlex.split("echo " + shell_word(hostile, expand_variables=True))
        assert words[1:] == [hostile] or (hostile == "" and words[1:] == [""])


@pytest.mark.parametrize("site", SITES)
def test_environment_variables_expand_but_parameter_values_never(tmp_path, site):
    marker = tmp_path / "pwned"
    script = _render(tmp_path, site=site, conda_env="$SCRATCH/envs/hepml-kit",
                     parameters={"LABEL": f"$SCRATCH $(touch {marker})"})
    r = _run_script(script, tmp_path)
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "stub.log").read_text()
    assert "conda activate /scratch/me/envs/hepml-kit" in log
    params = json.loads(next((tmp_path / "jobs").glob("*/parameters.yaml")).read_text())
    assert params == {"LABEL": f"$SCRATCH $(touch {marker})"} and not marker.exists()


def test_hostile_venv_path_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    script = _render(tmp_path, venv=f"/opt/$(touch {marker})/v")
    line = next(x for x in script.splitlines() if x.startswith("source "))
    # only the activation line: sourcing a missing file fails harmlessly, the $(...) never runs
    subprocess.run(["bash", "-c", line], capture_output=True, timeout=30)
    assert not marker.exists()
