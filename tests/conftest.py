"""Shared test set-up: stable notebook output, passive OpenMP waits, and a real one-node Slurm cluster for the
whole session (tests/slurm/cluster.sh: started here if not running, stopped at the end if we started it), so
the batch tests and lesson 10 (executed by nbval in the same session) submit real jobs."""

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("IPP_NONINTERACTIVE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads that spin while waiting for a core make a shared 2-core machine crawl (20-60x measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CLUSTER = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
SLURM_DIR = Path(os.environ.get("HEPML_SLURM_DIR", "/tmp/hepml-slurm"))
_started_slurm = False


def slurm_up() -> bool:
    conf = SLURM_DIR / "slurm.conf"
    if not conf.exists():
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, "SLURM_CONF": str(conf)},
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() != ""


def _wants_slurm(session) -> bool:
    if os.environ.get("HEPML_TEST_SLURM", "1") == "0":
        return False
    args = " ".join(str(a) for a in session.config.args)
    return any(k in args for k in ("test_batch", "curriculum",
                                   "solutions")) or args.strip() in ("tests", "tests/", "")


def pytest_sessionstart(session):
    global _started_slurm
    if not _wants_slurm(session):
        return
    if not slurm_up():
        out = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError("could not start the one-node Slurm cluster for the "
                               f"tests:\n{out.stderr[-3000:]}")
        _started_slurm = True
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")


def pytest_sessionfinish(session, exitstatus):
    if _started_slurm:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def pool():
    """One warm 2-rank pool shared by every test module that runs functions on ranks (starting one costs
    ~10 s on 2 cores); a test that breaks it (a killed rank) gets a fresh one on the next call."""
    import hepml_kit as hk

    with hk.Workers(n=2) as w:
        yield w


# The one-process reference the data-parallel and FSDP tests compare with: the jet transformer taking the same
# steps on the same global batches, accumulating over the two shares two ranks get (see
# hepml_kit.parallel.ddp), so the only admissible difference is float32 summation order (tolerances below).
JET_MODEL = "jet_transformer"
JET_RUN = dict(steps=4, global_batch=32, lr=1e-3, seed=0)
FP32_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="session")
def jet_reference():
    """`train_strategy("single", micro_batches=2)` on one thread, with first-step gradients (computed
    once)."""
    import torch

    from hepml_kit.parallel.compare import train_strategy

    torch.set_num_threads(1)
    return train_strategy("single", JET_MODEL, micro_batches=2, return_grads=True, **JET_RUN)
