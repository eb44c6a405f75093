"""The second facility's batch path (issue 18): PBS Pro scripts for ALCF Polaris, submitted for real through
Debian's Torque-style qsub/qstat wrappers over the one-node test Slurm; `hepml-kit launch` mapping mpiexec's
rank variables under a real mpiexec (Open MPI) with a PBS_NODEFILE we write; the backend choice; engines.

The wrappers hand the script to sbatch, which reads `#PBS -N`, `-A`, `-q` and `-l walltime`/`select` itself;
`-l place=scatter`, `-l filesystems=...`, `system=polaris`, `-j oe` and `-o` are NOT checked by them (only a
real PBS Pro can: see docs/alcf.md)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from hepml_kit.batch import sbatch
from hepml_kit.batch.engines import engine_cluster_kwargs, pals_mpi_args, pbs_engine_template
from hepml_kit.launch import rendezvous
from hepml_kit.launch.script import mpiexec_command

ROOT = Path(__file__).resolve().parents[1]
EXE = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
HOSTILE = '"; touch /tmp/hepml_pwned_pbs; echo "'


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('LABEL = "x"\nN = 1',
                                                                   metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_polaris_script_for_lesson02_on_two_nodes(tmp_path):
    out = subprocess.run([EXE, "batch", "curriculum/02_data_parallel.ipynb", "--site", "polaris",
                          "-p", "NPROCS", "8", "--nodes", "2", "--gpus-per-node", "4", "--time", "00:30:00",
                          "--queue", "prod", "--account", "MYPROJ", "--conda-env",
                          "/eagle/MYPROJ/envs/kit", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    directives = [line for line in script.splitlines() if line.startswith("#PBS")]
    for want in ("#PBS -l select=2:system=polaris", "#PBS -l place=scatter", "#PBS -l walltime=00:30:00",
                 "#PBS -l filesystems=home:eagle", "#PBS -q prod", "#PBS -A MYPROJ"):
        assert want in directives, (want, directives)
    assert not any(line.startswith("#SBATCH") for line in script.splitlines())
    assert "mpiexec -n \"$NNODES\" --ppn 1" in script and "${PBS_JOBID:-local}" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("time, walltime",
                         [("30", "00:30:00"), ("90:00", "01:30:00"), ("48:00:00", "48:00:00")])
def test_walltime_forms(tmp_path, time, walltime):
    nb = _notebook(tmp_path / "nb.ipynb", "print(1)")
    job = sbatch.BatchJob(notebook=str(nb), time=time, site="polaris", out_dir=str(tmp_path))
    assert f"#PBS -l walltime={walltime}" in sbatch.render_sbatch(job, tmp_path / "j")
    with pytest.raises(sbatch.BatchError, match="PBS walltime has no days"):
        sbatch.render_sbatch(sbatch.BatchJob(notebook=str(nb), time="1-00:00:00", site="polaris"), tmp_path)


@pytest.fixture(scope="module")
def torque(tmp_path_factory):
    """The one-node Slurm (tests/slurm/cluster.sh, which also installs slurm-wlm-torque) with qsub on PATH."""
    from conftest import SLURM_DIR, slurm_up

    if not slurm_up():
        out = subprocess.run([str(ROOT / "tests" / "slurm" / "cluster.sh"), "start"],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            pytest.fail(f"could not start the one-node Slurm cluster:\n{out.stderr[-2000:]}")
    if not shutil.which("qsub"):
        pytest.fail("qsub missing: tests/slurm/cluster.sh start installs slurm-wlm-torque")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    index = tmp_path_factory.mktemp("jobs-index")
    old, sbatch.JOBS_INDEX = sbatch.JOBS_INDEX, index
    yield
    sbatch.JOBS_INDEX = old


def test_pbs_job_submitted_through_qsub_and_collected(torque, tmp_path):
    nb = _notebook(tmp_path / "lesson.ipynb", "import json\nprint(json.dumps([LABEL, N]))")
    job = sbatch.BatchJob(notebook=str(nb), parameters={"LABEL": HOSTILE, "N": 3},
                          time="00:05:00", site="polaris", queue="debug", account="m1234",
                          venv=str(Path(sys.executable).parents[1]), execution_timeout=300,
                          out_dir=str(tmp_path / "jobs"))
    job_id, job_dir, script = sbatch.submit(job)
    assert (job_dir / "job.pbs").read_text() == script
    st = sbatch.collect(job_id, to=tmp_path / "collected", wait=True, timeout=300)
    assert st["state"] == "COMPLETED", st
    executed = nbformat.read(tmp_path / "collected" / "lesson.executed.ipynb", as_version=4)
    assert json.loads("".join(o.get("text", "") for o in executed.cells[-1].outputs)) == [HOSTILE, 3]
    assert not Path("/tmp/hepml_pwned_pbs").exists()
    # what sbatch made of the #PBS directives (the wrapper's scheduler parsed them for real)
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "JobName=hepml-lesson" in shown and "Account=m1234" in shown and "TimeLimit=00:05:00" in shown
    assert "Partition=debug" in shown and "NumNodes=1" in shown


def test_failed_pbs_job_is_reported(torque, tmp_path):
    nb = _notebook(tmp_path / "broken.ipynb", "raise RuntimeError('on purpose')")
    job = sbatch.BatchJob(notebook=str(nb), time="00:05:00", site="polaris", queue="debug",
                          venv=str(Path(sys.executable).parents[1]), execution_timeout=300,
                          out_dir=str(tmp_path / "j"))
    job_id, _, _ = sbatch.submit(job)
    with pytest.raises(sbatch.BatchError, match=f"job {job_id} FAILED, exit code 1"):
        sbatch.collect(job_id, wait=True, timeout=300)


def test_pbs_rank_mapping_from_pals_variables(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x3005c0s13b0n0\n" * 4 + "x3005c0s13b1n0\n" * 4)
    env = {"PMI_RANK": "5", "PALS_LOCAL_RANKID": "1", "PMI_SIZE": "8", "PMI_LOCAL_SIZE": "4",
           "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "4321.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"}
    info = rendezvous.from_pbs(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.master_addr == "x3005c0s13b0n0" and info.master_port == 29500 + 4321
    env2 = {"PALS_RANKID": "6", "PMI_SIZE": "8", "PBS_NODEFILE": str(nodefile)}  # no local variables: derived
    assert rendezvous.from_pbs(env2).local_rank == 2
    with pytest.raises(RuntimeError, match="not inside an mpiexec rank"):
        rendezvous.from_pbs({"PBS_NODEFILE": str(nodefile)})


# torque: cluster.sh installs mpiexec
def test_launch_under_a_real_mpiexec_with_a_pbs_nodefile(torque, tmp_path):
    if not shutil.which("mpiexec"):
        pytest.fail("mpiexec missing: tests/slurm/cluster.sh start installs openmpi-bin")
    nodefile = tmp_path / "PBS_NODEFILE"
    nodefile.write_text(f"{socket.gethostname()}\n" * 2)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        from hepml_kit.launch.script import init_from_env
        backend = init_from_env()
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
        line = " ".join(f"{k}={os.environ[k]}" for k in keys) + f" backend={backend} sum={t.item():.0f}"
        open(f"{sys.argv[1]}/rank{dist.get_rank()}.txt", "w").write(line)
        dist.barrier()
        dist.destroy_process_group()
    """))
    env = {**os.environ, "PBS_JOBID": "77.pbs-test", "PBS_NODEFILE": str(nodefile),
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "MASTER_PORT": str(rendezvous.free_port()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for k in [k for k in env if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))]:
        env.pop(k)
    out = subprocess.run(["mpiexec", "--oversubscribe", "-n", "2", "-x", "PBS_JOBID", "-x", "PBS_NODEFILE",
                          "-x", "MASTER_PORT", "-x", "PYTHONPATH", EXE, "launch", str(script), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    host = socket.gethostname()
    assert sorted(p.read_text() for p in tmp_path.glob("rank*.txt")) == [
        f"RANK={r} WORLD_SIZE=2 LOCAL_RANK={r} LOCAL_WORLD_SIZE=2 "
        f"MASTER_ADDR={host} backend=gloo sum=3" for r in (0, 1)]


def test_mpiexec_command_uses_pals_flags(tmp_path, monkeypatch):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("a\na\na\na\nb\nb\nb\nb\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    cmd = mpiexec_command("train.py", ["--x", "1"], nprocs=4)
    assert cmd[:9] == ["mpiexec", "-n", "8", "--ppn", "4", "--depth", "8", "--cpu-bind", "depth"]
    assert cmd[-3:] == ["train.py", "--x", "1"]


class _FakeAccelerator:
    def __init__(self, kind, count):
        self.kind, self.count = kind, count

    def is_available(self):
        return self.count > 0

    def current_accelerator(self):
        import torch

        return torch.device(self.kind)

    def device_count(self):
        return self.count


@pytest.mark.parametrize("kind, count, local_world, want", [
    ("xpu", 6, 6, "xccl"), ("xpu", 6, 12, "gloo"), ("cuda", 4, 4, "nccl"), ("cuda", 1, 2, "gloo"),
    ("cpu", 0, 2, "gloo"), ("mps", 1, 1, "gloo"),
])
def test_backend_follows_the_accelerator(monkeypatch, kind, count, local_world, want):
    import torch

    monkeypatch.setattr(torch, "accelerator", _FakeAccelerator(kind, count), raising=False)
    assert rendezvous.pick_backend(local_world) == want


def test_pbs_engine_job_for_ipyparallel(tmp_path):
    from ipyparallel.cluster.launcher import PBSEngineSetLauncher

    kwargs = engine_cluster_kwargs("pbs", 8, queue="debug", account="MYPROJ", walltime="00:30:00")
    assert kwargs["engines"] == "pbs"
    launcher = PBSEngineSetLauncher(work_dir=str(tmp_path), config=kwargs["config"],
                                    profile_dir=str(tmp_path), cluster_id="t")
    launcher.n = 8
    launcher.write_batch_script(8)
    script = Path(launcher.batch_file).read_text()
    assert "#PBS -l select=2:system=polaris" in script and "#PBS -A MYPROJ" in script
    assert "mpiexec -n 8 --ppn 4 --depth 8 --cpu-bind depth" in script and "ipyparallel.engine" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert pals_mpi_args(4) == ["--ppn", "4", "--depth", "8", "--cpu-bind", "depth"]
    assert engine_cluster_kwargs("mpi", 2)["config"].MPIEngineSetLauncher.mpi_args[:2] == ["--ppn", "2"]
    with pytest.raises(sbatch.BatchError, match="queue"):
        pbs_engine_template(4, queue="debug -W x")


def test_workers_accept_pbs_engines_and_xpu_devices():
    """`Workers(engines="pbs")` passes ipyparallel the PBS Pro engine job; `device="xpu"` picks xccl."""
    import hepml_kit as hk
    from hepml_kit.batch.engines import engine_cluster_kwargs

    pool = hk.Workers(n=8, engines="pbs", device="xpu")
    assert pool._backend() == "xccl"
    kw = engine_cluster_kwargs("pbs", 8)
    template = kw["config"].PBSEngineSetLauncher.batch_template
    assert kw["engines"] == "pbs" and "#PBS -l select=2:system=polaris" in template and "--ppn 4" in template
