"""Survive a lost rank (issue 16 item 5): a rank SIGKILLed mid-run, the run resumed from its last distributed
checkpoint, the final weights equal to the uninterrupted run's (torch.equal on CPU), nothing left running; the
same through `hepml-kit launch --max-restarts` (torchrun), and resumed on another world size (DCP
reshards)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

import hepml_kit as hk
from hepml_kit.parallel import resilient
from hepml_kit.parallel.resilient import fault_marker, run_until_done, train_resilient
from hepml_kit.parallel.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1]
SPEC = RunSpec("jet_transformer", steps=6, global_batch=16, lr=1e-3, seed=0, device="cpu")


def _same_params(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _alive(pids) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.fixture(scope="module")
def uninterrupted(pool, tmp_path_factory):
    """The reference: 2 ranks of DDP, no fault, checkpoints every 2 steps."""
    spec = SPEC.replace(checkpoint_dir=str(tmp_path_factory.mktemp("clean") / "ckpt"))
    return pool.run(train_resilient, spec, "ddp", every=2, quiet=True)


def test_a_killed_rank_resumes_to_the_same_weights(pool, uninterrupted, tmp_path):
    pool.run(lambda: 0)
    engines = [e.pid for e in pool._engines]
    spec = SPEC.replace(checkpoint_dir=str(tmp_path / "ckpt"))
    run = run_until_done(pool, spec, "ddp", every=2, die=(1, 3))
    assert run.restarts == 1 and "rank 1" in run.attempts[0].failed and "SIGKILL" in run.attempts[0].failed
    assert run.resumed_from == 2, "the last checkpoint before step 3 is the one after step 2"
    assert fault_marker(spec.checkpoint_dir).exists()
    assert _alive(engines) == [], "the engines of the interrupted attempt are gone"
    assert run.results[0]["losses"] == uninterrupted[0]["losses"]
    assert _same_params(run.results[0]["params"], uninterrupted[0]["params"]) == [], "bitwise equal weights"


def test_a_resume_that_changes_the_run_is_caught(pool, uninterrupted, tmp_path):
    """The comparison can fail: the same kill and resume, but the resumed attempt draws other batches (as a
    loader whose shuffle restarts from another seed would) and ends with other weights. (Another learning
    rate would not show: the checkpoint restores the optimizer's own.)"""
    spec = SPEC.replace(checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(hk.WorkerError, match="rank 1 failed"):
        pool.run(train_resilient, spec, "ddp", every=2, die=(1, 3), quiet=True)
    changed = pool.run(train_resilient, spec.replace(seed=1), "ddp", every=2, quiet=True)
    assert changed[0]["resumed_from"] == 2 and changed[0]["losses"][:2] == uninterrupted[0]["losses"][:2]
    assert _same_params(changed[0]["params"], uninterrupted[0]["params"]) != []


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resumed_on_one_process_agrees_to_rounding(pool, uninterrupted, tmp_path, strategy):
    """Lost a rank for good: the 2-rank checkpoint (DDP, or FSDP2 shards) resumes on one process (accumulating
    the two shares); DCP reshards."""
    spec = SPEC.replace(checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(hk.WorkerError, match="rank 1 failed.*SIGKILL"):
        pool.run(train_resilient, spec, strategy, every=2, die=(1, 5), quiet=True)
    alone = train_resilient(spec.replace(micro_batches=2), "single", every=2)
    assert alone["resumed_from"] == 4 and alone["world_size"] == 1 and len(alone["losses"]) == SPEC.steps
    ref = uninterrupted[0]
    for got, want in zip(alone["losses"], ref["losses"]):
        assert got == pytest.approx(want, rel=1e-5)
    for k, v in ref["params"].items():
        torch.testing.assert_close(alone["params"][k], v, rtol=1e-5, atol=1e-6)


def test_bad_input_is_refused_before_any_work(pool):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_resilient(SPEC, "ddp")
    with pytest.raises(ValueError, match="every"):
        run_until_done(pool, SPEC.replace(checkpoint_dir="/tmp/x"), "ddp", every=0)
    with pytest.raises(ValueError, match="die"):
        train_resilient(SPEC.replace(checkpoint_dir="/tmp/x"), "ddp", die=(1, 99))
    with pytest.raises(ValueError, match="unknown strategy"):
        train_resilient(SPEC.replace(checkpoint_dir="/tmp/x"), "tensor")


def _launch(tmp_path, name, *launch_args, die=None):
    """`hepml-kit launch` of resilient.py on 2 ranks; returns the finished process with its wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hepml_kit.cli", "launch", "--nprocs", "2", *launch_args, resilient.__file__,
           "--", "--checkpoint-dir", str(tmp_path / name), "--out", str(tmp_path / f"{name}.pt"),
           "--steps", "6"]
    t0 = time.monotonic()
    out = subprocess.run(cmd + (["--die", die] if die else []), env=env, capture_output=True, text=True,
                         timeout=240, check=False)
    out.wall_s = time.monotonic() - t0
    return out


@pytest.mark.slow
def test_torchrun_max_restarts_resumes_to_the_same_weights(tmp_path):
    clean = _launch(tmp_path, "clean")
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = _launch(tmp_path, "killed", "--max-restarts", "1", die="1:3")
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert "--max-restarts=1" in killed.stderr, "hepml-kit launch passed the option to torchrun"
    a, b = torch.load(tmp_path / "clean.pt"), torch.load(tmp_path / "killed.pt")
    assert a["restart"] == 0 and b["restart"] == 1 and b["resumed_from"] == 2
    assert a["losses"] == b["losses"] and _same_params(a["params"], b["params"]) == []
    print(f"torchrun: uninterrupted {clean.wall_s:.1f} s, a rank killed and restarted {killed.wall_s:.1f} s, "
          f"lost {killed.wall_s - clean.wall_s:.1f} s")
    unrestarted = _launch(tmp_path, "lost", die="1:3")
    assert unrestarted.returncode != 0 and not (tmp_path / "lost.pt").exists(), "no restarts: the run fails"


def test_ex11_check_knows_the_planted_bug_and_says_what_is_wrong(capsys):
    """Lesson 11's exercise check (no pool): the planted fault per seed, and feedback on wrong answers."""
    from hepml_kit import checks as check
    from hepml_kit.checks import CheckFailed
    from hepml_kit.checks.ex11 import planted

    assert planted(0, 2) == {"rank": 1, "collective": "broadcast", "step": 1}
    assert planted(4, 4)["rank"] == 2 and planted(1, 4)["collective"] == "all_gather"
    check.ex11_find_the_bug({"rank": 1, "collective": "broadcast"}, seed=0, nprocs=2)
    assert "ex11_find_the_bug passed" in capsys.readouterr().out
    for wrong, says in [({"rank": 0, "collective": "broadcast"}, "rank 0 is where most ranks are"),
                        ({"rank": 1, "collective": "all_reduce"}, "what the healthy ranks wait in"),
                        ({"rank": 1, "collective": "barrier"}, "right rank"),
                        ({"rank": 1}, "keys 'rank' and 'collective'")]:
        with pytest.raises(CheckFailed, match=says):
            check.ex11_find_the_bug(wrong, seed=0, nprocs=2)
