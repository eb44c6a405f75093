"""Planted faults on 2 CPU ranks (issue 16): each report names the right rank(s) and collective within a
stated
time, and nothing is left running afterwards; per-rank inspection; the fork guard."""

import os
import threading
import time

import psutil
import pytest

import hepml_kit as hk
from hepml_kit.launch.fork_guard import CudaBeforeForkError, check_no_cuda_before_fork, watch_cuda_init
from hepml_kit.launch.magic import _exec_cell


def _pool_processes(pool) -> list[int]:
    """The pool's engines and controller that are still alive (killed ones must be gone)."""
    alive = []
    for pid in [e.pid for e in pool._engines] + list(pool._launched):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _run_fault(pool, fn, *, timeout: float, bound_s: float, killed: bool = True, **kw) -> hk.WorkerError:
    """Run a planted fault; `killed`: the ranks were stuck, so the pool's processes must be gone after."""
    pool.run(lambda: 0)  # warm, so the bound measures the diagnosis, not a start
    procs = _pool_processes(pool)
    t0 = time.monotonic()
    with pytest.raises(hk.WorkerError) as info:
        pool.run(fn, timeout=timeout, quiet=True, **kw)
    elapsed = time.monotonic() - t0
    assert elapsed < bound_s, f"reported after {elapsed:.1f} s (bound {bound_s} s)"
    if not killed:  # the ranks raised by themselves: the pool stays warm, and no rank is still busy
        assert all(s and s["phase"] != "in" for s in pool._ask(range(pool.n)).values())
        assert pool.run(lambda: 2) == [2, 2]
        return info.value
    time.sleep(0.5)
    left = [p for p in procs if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes of the faulty call still running: {left}"
    return info.value


def _planted_hang():
    import torch
    import torch.distributed as dist

    if dist.get_rank() == 1:
        time.sleep(600)  # rank 1 never reaches the all-reduce
    t = torch.ones(3)
    dist.all_reduce(t)


def test_a_hang_reports_every_ranks_stack_and_collective(pool):
    err = _run_fault(pool, _planted_hang, timeout=8, bound_s=8 + 10)
    text = str(err)
    assert "rank 0 is in all_reduce #1 with shapes [[3]]" in text
    assert "rank 1 is running the function, not in a collective" in text
    assert "_planted_hang" in text and "time.sleep(600)" in text, "rank 1's stack shows where it sits"
    assert text == str(err) and err.diagnosis in text


def _skips_a_collective():
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)
    if dist.get_rank() != 1:
        dist.all_reduce(t)  # rank 1 skips the second all-reduce


def test_a_skipped_collective_is_an_error_not_a_hang(pool):
    err = _run_fault(pool, _skips_a_collective, timeout=300, bound_s=20)
    assert ("desync" in str(err)
            and "rank(s) 1 returned from the function while rank 0 waits in all_reduce #2" in str(err))


def _different_collectives():
    import torch
    import torch.distributed as dist

    t = torch.ones(4)
    if dist.get_rank() == 1:
        dist.barrier()
    else:
        dist.all_reduce(t)


def test_different_collectives_are_an_error_naming_both(pool):
    err = _run_fault(pool, _different_collectives, timeout=300, bound_s=20)
    assert "rank 0 is in all_reduce #1" in str(err) and "rank 1 is in barrier #1" in str(err)


def _different_shapes():
    import torch
    import torch.distributed as dist

    dist.all_reduce(torch.ones(4 + dist.get_rank()))


def test_different_shapes_are_named_with_check_collectives():
    with hk.Workers(n=2, check_collectives=True) as checked:
        err = _run_fault(checked, _different_shapes, timeout=300, bound_s=20, killed=False)
    assert "TensorShape=[4]" in str(err) and "TensorShape=[5]" in str(err) and "Rank 1" in str(err)


def _dozes():
    import torch.distributed as dist

    if dist.get_rank() == 0:
        time.sleep(6)
    return dist.get_rank()


def test_stacks_on_request_while_a_call_runs(pool):
    pool.run(lambda: 0)
    seen = {}
    asker = threading.Timer(2.5, lambda: seen.setdefault("stacks", pool.stacks()))
    asker.start()
    assert pool.run(_dozes, timeout=60, quiet=True) == [0, 1]
    asker.join()
    assert ("--- rank 0 stack" in seen["stacks"] and "_dozes" in seen["stacks"]
            and "time.sleep(6)" in seen["stacks"])
    assert "rank 1 is back from the function" in seen["stacks"]


def test_rank_monitors_answer_only_their_pools_driver(pool):
    """Stacks show code and values: a process that does not hold the pool's secret gets no answer, the
    driver does (the monitors listen on 127.0.0.1 here, on a routable address for engines on other nodes)."""
    from hepml_kit.launch import diagnose

    pool.run(lambda: 0)
    port = pool._engines[0].monitor_port
    assert diagnose.ask("127.0.0.1", port, "stacks", timeout=1.0) is None
    assert diagnose.ask("127.0.0.1", port, "stacks", timeout=1.0, token="0" * 32) is None
    answer = diagnose.ask("127.0.0.1", port, "state", timeout=2.0, token=pool._monitor_token)
    assert answer is not None and answer["phase"] in ("idle", "done", "running")


def test_one_rank_can_be_inspected_without_the_others(pool, capsys):
    pool.run(_exec_cell, "import torch.distributed as dist\nlost = 10 * dist.get_rank()", quiet=True)
    capsys.readouterr()
    assert pool.run(_exec_cell, "print('lost is', lost)", ranks=[1]) == [None]
    assert capsys.readouterr().out.splitlines() == ["[rank 1] lost is 10"], "only rank 1 ran the cell"
    assert pool.run(lambda: os.environ["RANK"]) == ["0", "1"], "the pool goes on as before"
    with pytest.raises(ValueError, match="ranks must be"):
        pool.run(lambda: 0, ranks=[2])


def test_the_fork_guard_names_the_cause_and_the_fix(monkeypatch):
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    from hepml_kit.launch import fork_guard

    monkeypatch.setattr(fork_guard, "_first_cuda_cell", None)
    check_no_cuda_before_fork()  # CUDA untouched (or no GPU at all): nothing to say
    shell = InteractiveShell.instance()
    watch_cuda_init(shell)
    shell.run_cell("x = 1", store_history=True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as if the next cell had touched CUDA
    cell = shell.run_cell("y = 2  # stands for model.cuda()", store_history=True)
    shell.run_cell("z = 3", store_history=True)
    with pytest.raises(CudaBeforeForkError) as info:
        check_no_cuda_before_fork()
    text = str(info.value)
    assert "ddp_notebook" in text and "restart the kernel" in text and "ddp_spawn" in text
    assert f"cell In[{cell.execution_count}] (starting 'y = 2" in text, \
        "the first cell after which CUDA was on"
