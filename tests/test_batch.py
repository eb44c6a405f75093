"""Batch path against a real one-node Slurm (tests/slurm/cluster.sh starts munged, slurmctld, slurmd):
papermill jobs submitted and collected, hostile parameter values, srun DDP, Workers(engines="slurm")."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from hepml_kit.batch import sbatch
from hepml_kit.batch.kernel import kernelspec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
HOSTILE = '"; touch /tmp/hepml_pwned; echo "'
EXE = os.path.join(os.path.dirname(sys.executable), "hepml-kit")


def _notebook(path: Path, body: str, params: str = 'LABEL = "x"\nN = 1') -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The one-node Slurm cluster started for the session by conftest.py (started here when run alone)."""
    from conftest import SLURM_DIR, slurm_up

    if not slurm_up():
        out = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            pytest.fail(f"could not start the one-node Slurm cluster:\n{out.stderr[-2000:]}")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    os.environ["HEPML_KIT_JOBS"] = str(tmp_path_factory.mktemp("jobs-index"))
    sbatch.JOBS_INDEX = Path(os.environ["HEPML_KIT_JOBS"])
    yield SLURM_DIR / "slurm.conf"


def test_dry_run_quotes_hostile_values(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", "print(LABEL)")
    out = subprocess.run([EXE, "batch", str(nb), "-p", "LABEL", HOSTILE, "--nodes", "2",
                          "--gpus-per-node", "4", "--time", "00:10:00", "--account", "m1234", "--constraint",
                          "gpu", "--dry-run", "--out", str(tmp_path / "jobs")], capture_output=True,
                          text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    assert ("#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script
            and "#SBATCH --constraint=gpu" in script)
    assert "IPP_NONINTERACTIVE=1" in script and "--log-output" in script and "--execution-timeout" in script
    # run the script's shell with papermill stubbed: the hostile value must stay data
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "papermill").write_text("#!/bin/sh\nexit 0\n")
    (stub / "papermill").chmod(0o755)
    Path("/tmp/hepml_pwned").unlink(missing_ok=True)
    subprocess.run(["bash", "-c", script],
                   env={**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}, timeout=30,
                   capture_output=True)
    assert not Path("/tmp/hepml_pwned").exists(), "a parameter value was executed as shell code"
    params = json.loads(next((tmp_path / "jobs").glob("*/parameters.yaml")).read_text())
    assert params == {"LABEL": HOSTILE}


@pytest.mark.parametrize("args, match", [
    (["-p", "NOT_DECLARED", "1"], "declares no parameter NOT_DECLARED"),
    (["--time", "ten minutes"], "not a Slurm time"),
])
def test_bad_requests_fail_before_submission(tmp_path, args, match):
    nb = _notebook(tmp_path / "nb.ipynb", "print(LABEL)")
    out = subprocess.run([EXE, "batch", str(nb), *args, "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and match in out.stderr


def test_unknown_notebook_is_named():
    out = subprocess.run([EXE, "batch", "nowhere/none.ipynb", "--dry-run"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no such notebook: nowhere/none.ipynb" in out.stderr


def test_papermill_job_submitted_and_collected_with_exact_values(slurm, tmp_path):
    nb = _notebook(tmp_path / "lesson.ipynb", "import json\nprint(json.dumps([LABEL, N]))")
    job = sbatch.BatchJob(notebook=str(nb), parameters={"LABEL": HOSTILE, "N": 3}, time="00:05:00",
                          venv=str(Path(sys.executable).parents[1]), execution_timeout=300,
                          out_dir=str(tmp_path / "jobs"))
    job_id, job_dir, _ = sbatch.submit(job)
    st = sbatch.collect(job_id, to=tmp_path / "collected", wait=True, timeout=300)
    executed = nbformat.read(tmp_path / "collected" / "lesson.executed.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert json.loads(printed) == [HOSTILE, 3]
    assert st["state"] == "COMPLETED" and not Path("/tmp/hepml_pwned").exists()


def test_failed_job_reports_its_log(slurm, tmp_path):
    nb = _notebook(tmp_path / "broken.ipynb", "raise RuntimeError('lesson failed on purpose')")
    job = sbatch.BatchJob(notebook=str(nb), time="00:05:00", venv=str(Path(sys.executable).parents[1]),
                          execution_timeout=300, out_dir=str(tmp_path / "jobs"))
    job_id, _, _ = sbatch.submit(job)
    with pytest.raises(sbatch.BatchError, match=r"FAILED, exit code 1; log: .*slurm-\d+\.out") as info:
        sbatch.collect(job_id, wait=True, timeout=300)
    log = Path(str(info.value).split("log: ")[1])
    assert "lesson failed on purpose" in log.read_text()


def test_srun_two_task_ddp_job_through_hepml_kit_launch(slurm, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        from hepml_kit.launch.script import init_from_env
        init_from_env()
        torch.manual_seed(0)
        model = DDP(torch.nn.Linear(4, 1))
        x = torch.full((8, 4), float(dist.get_rank() + 1))
        model(x).sum().backward()
        g = model.module.weight.grad[0, 0].item()
        line = f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} grad={g:.3f}"
        open(f"{sys.argv[1]}/rank{dist.get_rank()}.txt", "w").write(line)  # tasks share srun's stdout
        dist.barrier()  # nobody tears down the store while a peer still uses it
        dist.destroy_process_group()
    """))
    out = subprocess.run(["srun", "-n", "2", "--time=00:05:00", EXE, "launch", str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MASTER_PORT": str(sbatch_port())})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    # both ranks hold the gradient averaged over ranks: mean of 8*1 and 8*2 = 12
    assert lines == ["RESULT rank=0 world=2 grad=12.000", "RESULT rank=1 world=2 grad=12.000"]


def sbatch_port() -> int:
    from hepml_kit.launch.rendezvous import free_port

    return free_port()


def test_workers_on_slurm_engines(slurm, tmp_path):
    import hepml_kit as hk

    def where():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size(), "SLURM_JOB_ID" in os.environ

    with hk.Workers(n=2, engines="slurm", start_timeout=180) as w:
        assert w.run(where, timeout=120) == [(0, 2, True), (1, 2, True)]
    time.sleep(2)
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()
    assert queue == "", f"engine job left in the queue: {queue}"


def test_kernel_install_and_papermill_runs_a_lesson_with_it(tmp_path):
    spec = kernelspec("x", image="registry.nersc.gov/das/hepml-kit:1.0", container="shifter")
    assert spec["argv"][:2] == ["shifter", "--image=registry.nersc.gov/das/hepml-kit:1.0"]
    assert "podman-hpc" in kernelspec("y", image="img:1")["argv"][0]
    prefix = tmp_path / "prefix"
    out = subprocess.run([EXE, "kernel", "install", "--name", "hepml-test", "--prefix", str(prefix)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv0 = json.loads((prefix / "share/jupyter/kernels/hepml-test/kernel.json").read_text())["argv"][0]
    assert Path(argv0).resolve() == Path(sys.executable).resolve()
    nb = _notebook(tmp_path / "k.ipynb", "import os\nprint(os.environ.get('HEPML_KIT_KERNEL'))")
    env = {**os.environ, "JUPYTER_PATH": str(prefix / "share" / "jupyter")}
    run = subprocess.run([sys.executable, "-m", "papermill", "-k", "hepml-test", str(nb),
                          str(tmp_path / "o.ipynb")],
                         capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    out_nb = nbformat.read(tmp_path / "o.ipynb", as_version=4)
    assert "".join(o.get("text", "") for o in out_nb.cells[-1].outputs).strip() == "hepml-test"


def test_cancelled_job_leaves_no_engines_behind(slurm, tmp_path):
    import psutil

    pids_file = tmp_path / "engine_pids.json"
    body = textwrap.dedent(f"""
        import json, time, hepml_kit as hk
        pool = hk.Workers(n=2).start()
        pids = [e.pid for e in pool._engines] + [h for e in pool._engines for h in e.helpers]
        open({str(pids_file)!r}, "w").write(json.dumps(pids))
        time.sleep(300)
    """)
    nb = _notebook(tmp_path / "long.ipynb", body)
    job = sbatch.BatchJob(notebook=str(nb), time="00:10:00", venv=str(Path(sys.executable).parents[1]),
                          execution_timeout=600, out_dir=str(tmp_path / "jobs"))
    job_id, _, _ = sbatch.submit(job)
    deadline = time.monotonic() + 180
    while not pids_file.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert pids_file.exists(), "the job never started its engines"
    pids = json.loads(pids_file.read_text())
    assert all(psutil.pid_exists(p) for p in pids[:2])
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 90
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids) \
            and time.monotonic() < deadline:
        time.sleep(1)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"engine processes outlived the cancelled job: {left}"


def test_ex10_check_passes_on_solution_and_explains_wrong_rank_count():
    from hepml_kit import checks as check
    from hepml_kit.batch import BatchJob

    def good():
        return BatchJob(notebook="02_data_parallel.ipynb",
                        parameters={"SCALE": "small", "NPROCS": 16}, nodes=4, gpus_per_node=4,
                        time="00:30:00", account="m0000", constraint="gpu")

    def one_node_ranks():
        return BatchJob(notebook="02_data_parallel.ipynb",
                        parameters={"SCALE": "small", "NPROCS": 4}, nodes=4, gpus_per_node=4, time="00:30:00",
                        account="m0000", constraint="gpu")

    check.ex10_perlmutter_job(good)
    with pytest.raises(check.CheckFailed, match="one rank per GPU over 4 nodes is 16"):
        check.ex10_perlmutter_job(one_node_ranks)


def test_a_requeued_job_resumes_from_its_checkpoint_to_the_same_weights(slurm, tmp_path):
    """Lesson 11 and docs/nersc.md: on Slurm, ``sbatch --requeue`` plus the same checkpoint folder survives
    a preemption. The job (2 srun tasks of hepml_kit/parallel/resilient.py) is requeued with ``scontrol
    requeue`` once its first checkpoint exists: Slurm kills both tasks and queues the job again (we lift the
    ~2 minutes Slurm holds a requeued job with ``scontrol update StartTime=now``). The second run resumes
    from the last checkpoint and ends with the weights of an uninterrupted run, bitwise."""
    import torch

    from hepml_kit.parallel import resilient

    steps = 80
    args = ["--steps", str(steps), "--every", "2"]
    clean = subprocess.run([EXE, "launch", "--nprocs", "2", resilient.__file__, "--", "--checkpoint-dir",
                            str(tmp_path / "clean"), "--out", str(tmp_path / "clean.pt"), *args],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    ckpt, log = tmp_path / "ckpt", tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --requeue --open-mode=append --output={log}
        #SBATCH --ntasks=2 --time=00:10:00
        export OMP_NUM_THREADS=1 MASTER_PORT={sbatch_port()}
        echo "attempt ${{SLURM_RESTART_COUNT:-0}}"
        srun {EXE} launch {resilient.__file__} --checkpoint-dir {ckpt} --out {tmp_path / "requeued.pt"} \\
            {" ".join(args)}
        """))
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 240
    while not (ckpt / "manifest.json").exists():  # the first checkpoint (saved atomically: whole or absent)
        assert time.monotonic() < deadline, f"no checkpoint after 240 s: {log.exists() and log.read_text()}"
        time.sleep(0.1)

    def scontrol(*words):
        out = subprocess.run(["scontrol", *words], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"scontrol {' '.join(words)}: {out.stderr}"

    scontrol("requeue", job_id)
    deadline = time.monotonic() + 120
    while sbatch._slurm_state(job_id) != "PENDING":  # the tasks are being killed (COMPLETING) first
        assert time.monotonic() < deadline, f"job {job_id} not pending again after 120 s"
        time.sleep(0.5)
    scontrol("update", f"jobid={job_id}", "StartTime=now")
    deadline = time.monotonic() + 300
    while (state := sbatch._slurm_state(job_id)) in (None, "PENDING", "RUNNING", "REQUEUED", "COMPLETING"):
        assert time.monotonic() < deadline, f"job {job_id} still {state} after 300 s"
        time.sleep(1)
    text = log.read_text()
    assert state == "COMPLETED", f"{state}: {text[-3000:]}"
    assert "attempt 0" in text and "attempt 1" in text, text[-3000:]  # --open-mode=append: both runs' logs
    a, b = torch.load(tmp_path / "clean.pt"), torch.load(tmp_path / "requeued.pt")
    assert 0 < b["resumed_from"] < steps, b["resumed_from"]
    assert a["losses"] == b["losses"] and _same(a["params"], b["params"]), "bitwise equal to a clean run"


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
