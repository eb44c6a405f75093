"""The launcher: ranks wired, results in rank order, errors not hangs, nothing left behind (2 ranks, gloo)."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
import torch.distributed as dist

import hepml_kit as hk
from hepml_kit.launch.rendezvous import from_slurm

# Every process this test session starts inherits this tag, so other programs on the machine (which may run
# their own ipyparallel clusters) do not disturb the leftover counts.
TAG = f"hepml-test-{os.getpid()}"
os.environ["HEPML_KIT_TEST_TAG"] = TAG


def ipp_processes() -> set[int]:
    """ipyparallel controller/engine processes started by this test session, orphaned or not."""
    me = os.getpid()
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] == me or not ("ipyparallel" in cmd or "ipengine" in cmd or "ipcontroller" in cmd):
            continue
        try:
            if p.environ().get("HEPML_KIT_TEST_TAG") == TAG:
                out.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.fixture(scope="module")
def pool():
    before = ipp_processes()
    with hk.Workers(n=2) as w:
        yield w
    time.sleep(1)
    assert ipp_processes() - before == set(), "engines or controller left behind after closing the pool"


def _rank_and_env():
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size(), os.environ["LOCAL_RANK"], os.environ["MASTER_ADDR"],
            dist.get_backend())


def _allreduce():
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return t.item()


def _raise_on_rank_1():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("planted failure on rank 1")
    dist.barrier()
    return "rank 0 finished"


def _sigkill_rank_1():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


def test_results_in_rank_order_with_env_wired(pool):
    results = pool.run(_rank_and_env)
    assert [r[0] for r in results] == [0, 1]
    assert all(r[1] == 2 and r[3] == "127.0.0.1" and r[4] == "gloo" for r in results)
    assert [r[2] for r in results] == ["0", "1"]


def test_allreduce_sums_over_ranks(pool):
    assert pool.run(_allreduce) == [3.0, 3.0]


def test_args_and_kwargs_reach_every_rank(pool):
    def scaled(x, factor=1):
        import torch.distributed as dist

        return (dist.get_rank() + x) * factor

    assert pool.run(scaled, 10, factor=2) == [20, 22]


class _HasConfig:
    def config(self, preset):
        return {"preset": preset}


_TESTBED_LIKE = _HasConfig()


def _uses_dist_and_a_config_attribute():
    # cloudpickle alone fails here: it finds `torch.distributed.config` (a ModuleType subclass) from the names
    # `dist` and `config` and cannot pickle it
    return dist.get_rank(), _TESTBED_LIKE.config("tiny")["preset"]


def _late_store_use_on_rank_1():
    """Rank 0 returns at once; rank 1 still talks to the store (hosted by rank 0) a second later."""
    if dist.get_rank() == 1:
        time.sleep(1.0)
        store = dist.distributed_c10d._get_default_store()
        store.set("late", "1")
        return store.get("late").decode()
    return "early"


def test_ranks_leave_together_so_rank_0_keeps_the_store_for_slower_peers(pool):
    # Without the leave-together step rank 0 tore the store down on return, and a slower peer still connecting
    # (seen as gloo "connectFullMesh failed ... Connection closed by peer" under mpiexec) or still using
    # it failed.
    assert pool.run(_late_store_use_on_rank_1, timeout=60) == ["early", "1"]


def test_functions_using_dist_and_config_names_can_be_sent(pool):
    assert pool.run(_uses_dist_and_a_config_attribute) == [(0, "tiny"), (1, "tiny")]


def test_rank_output_is_prefixed_in_rank_order(pool, capsys):
    def talk():
        import torch.distributed as dist

        time.sleep(0.2 * (1 - dist.get_rank()))  # rank 1 prints first in wall-clock time
        print(f"hello from {dist.get_rank()}")

    pool.run(talk)
    assert capsys.readouterr().out.splitlines() == ["[rank 0] hello from 0", "[rank 1] hello from 1"]


def test_failing_rank_raises_worker_error_naming_it(pool):
    t0 = time.monotonic()
    with pytest.raises(hk.WorkerError) as info:
        pool.run(_raise_on_rank_1, timeout=120)
    assert time.monotonic() - t0 < 60, "the error should come within seconds, not after the timeout"
    assert info.value.root_ranks == [1]
    assert "rank 1 failed" in str(info.value) and "planted failure on rank 1" in str(info.value)
    assert pool.run(_allreduce) == [3.0, 3.0], "the pool must be usable after a failure"


def test_killed_rank_raises_and_pool_recovers(pool):
    with pytest.raises(hk.WorkerError) as info:
        pool.run(_sigkill_rank_1, timeout=120)
    assert 1 in info.value.root_ranks and "died" in str(info.value)
    assert pool.run(_allreduce) == [3.0, 3.0]


def test_timeout_names_the_ranks_still_running(pool):
    def sleepy():
        import torch.distributed as dist

        if dist.get_rank() == 0:
            time.sleep(30)

    with pytest.raises(hk.WorkerError, match="timed out"):
        pool.run(sleepy, timeout=3)
    assert pool.run(_allreduce) == [3.0, 3.0]


def test_launch_one_shot_leaves_nothing_behind():
    before = ipp_processes()
    assert hk.launch(lambda: __import__("torch.distributed").distributed.get_rank(), nprocs=2) == [0, 1]
    time.sleep(1)
    assert ipp_processes() - before == set()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"nprocs": 0}, "nprocs must be"), ({"nprocs": 2, "engines": "lsf"}, "unknown engines kind"),
     ({"nprocs": 1, "device": "cuda"}, "GPU")],
)
def test_bad_input_fails_before_anything_starts(kwargs, match):
    if kwargs.get("device") == "cuda":
        import torch

        if torch.cuda.is_available():
            kwargs["nprocs"] = torch.cuda.device_count() + 1
    before = ipp_processes()
    with pytest.raises(ValueError, match=match):
        hk.launch(_allreduce, **kwargs)
    assert ipp_processes() == before


def test_unsendable_function_fails_before_anything_starts():
    lock = threading.Lock()
    before = ipp_processes()
    with pytest.raises(TypeError, match="cannot send"):
        hk.launch(lambda: lock.locked(), nprocs=2)
    assert ipp_processes() == before


def test_slurm_variables_map_to_torch_distributed():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "nid[001234-001235]", "SLURM_JOB_ID": "42"}
    info = from_slurm(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (5, 8, 1, 4)
    assert info.master_addr == "nid001234" and 1024 < info.master_port < 65536


def test_cli_launch_runs_a_script_under_torchrun(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from hepml_kit.launch.script import init_from_env
        init_from_env()
        t = torch.ones(1) * (dist.get_rank() + 1); dist.all_reduce(t)
        line = f"RESULT rank={dist.get_rank()} sum={t.item()} arg={sys.argv[1]}"
        # ranks share stdout: lines can interleave
        open(f"{sys.argv[2]}/rank{dist.get_rank()}.txt", "w").write(line)
        dist.barrier()  # nobody tears down the store while a peer still uses it
        dist.destroy_process_group()
    """))
    exe = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
    out = subprocess.run([exe, "launch", "--nprocs", "2", str(script), "hello", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert lines == ["RESULT rank=0 sum=3.0 arg=hello", "RESULT rank=1 sum=3.0 arg=hello"]


def test_doctor_reports_and_exits_zero():
    exe = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
    out = subprocess.run([exe, "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backend gloo" in out.stdout and "site" in out.stdout


def test_two_torchrun_nodes_on_localhost_join_by_c10d_rendezvous(tmp_path):
    """Multi-node on one machine: two `hepml-kit launch` "nodes" of 2 ranks each, world size 4."""
    from hepml_kit.launch.rendezvous import free_port

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        from hepml_kit.launch.script import init_from_env
        init_from_env()
        t = torch.ones(1); dist.all_reduce(t)
        line = (f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} "
                f"node={os.environ['GROUP_RANK']} sum={t.item()}")
        # ranks share stdout: lines interleave
        open(f"{sys.argv[1]}/rank{dist.get_rank()}.txt", "w").write(line)
        dist.barrier()  # nobody tears down the store while a peer still uses it
        dist.destroy_process_group()
    """))
    exe = os.path.join(os.path.dirname(sys.executable), "hepml-kit")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([exe, "launch", "--nprocs", "2", "--nnodes", "2", "--node-rank", str(i),
                               "--rdzv-endpoint", endpoint, "--rdzv-id", f"test-{os.getpid()}",
                               str(script), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert [line.split()[1] for line in lines] == ["rank=0", "rank=1", "rank=2", "rank=3"]
    assert all("world=4" in line and "sum=4.0" in line for line in lines)
    assert {line.split()[3] for line in lines} == {"node=0", "node=1"}


@pytest.fixture(scope="module")
def mpi_site(tmp_path_factory):
    """Open MPI (Debian's openmpi-bin) and mpi4py for the engines only: mpi4py goes to a folder of its own
    that
    only the engines see (PYTHONPATH), as an MPI site module would; see pyproject.toml's `mpi` extra."""
    import shutil

    if not shutil.which("mpiexec"):
        out = subprocess.run(["bash", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                              "--no-install-recommends openmpi-bin >/dev/null || (apt-get update -qq && "
                              "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                              "--no-install-recommends openmpi-bin)"],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or not shutil.which("mpiexec"):
            pytest.fail(f"could not install Open MPI (openmpi-bin): {out.stderr[-1000:]}")
    site = tmp_path_factory.mktemp("mpi-site")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "mpi4py>=4.0"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(f"could not install mpi4py for the engines: {out.stderr[-1000:]}")
    return site


@pytest.mark.mpi
def test_workers_on_mpi_engines(mpi_site, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(mpi_site))
    before = ipp_processes()
    with hk.Workers(n=2, engines="mpi") as w:
        assert w.run(_rank_and_env, timeout=120)[1][:2] == (1, 2)
        assert w.run(_allreduce, timeout=120) == [3.0, 3.0]
    time.sleep(1)
    assert ipp_processes() - before == set()


def test_rendezvous_port_taken_by_another_program_is_retried(pool, monkeypatch):
    import socket

    from hepml_kit.launch import workers

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    ports = iter([squatter.getsockname()[1]])
    real = workers.free_port
    monkeypatch.setattr(workers, "free_port", lambda: next(ports, None) or real())
    try:
        assert pool.run(_allreduce, timeout=120) == [3.0, 3.0]
    finally:
        squatter.close()


def test_functions_passed_as_arguments_travel_by_value(pool):
    def apply_twice(f):
        return f(f(1))

    def plus_rank(x):
        return x + dist.get_rank()

    assert pool.run(apply_twice, plus_rank) == [1, 3]
