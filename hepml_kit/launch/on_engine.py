"""What runs on each engine of a `Workers` pool (workers.py is the driver's side).

`_probe_engine` once at start (who and where am I; start the rank monitor); `_run_rank` for every call (wire
the rank into the process group, run the function, leave together, unwire); `_run_plain` for a call without a
process group. `diagnose` and `errors` find a rank's own frames by these functions' names.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import cloudpickle

from hepml_kit.launch import diagnose
from hepml_kit.launch.rendezvous import RankInfo


@dataclass(frozen=True)
class _Engine:
    engine_id: int
    host: str
    pid: int
    gpus: int
    helpers: tuple[int, ...] = ()
    monitor_port: int = 0


def _probe_engine(bind_host: str = "127.0.0.1", token: str = "") -> dict:
    """Runs on each engine once at start: who and where am I; start the rank monitor (`diagnose`)."""
    import socket

    os.environ.setdefault("IPP_NONINTERACTIVE", "1")
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # torch import problems surface at the first call instead
        pass
    try:  # the engine's nanny (ipyparallel's signal relay) is its child: remember it so close() can reap it
        import psutil

        helpers = [c.pid for c in psutil.Process().children(recursive=True)]
    except Exception:
        helpers = []
    port = diagnose.start_monitor(bind_host, token)
    return {"host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus, "helpers": helpers, "port": port}


def _run_rank(info: RankInfo, backend: str, threads: int, timeout_s: float, payload: bytes,
              check_collectives: bool = False, diagnostics: bool = True):
    """Runs on each engine for every call: wire the rank, run the function, unwire together."""
    import torch
    import torch.distributed as dist

    from hepml_kit.launch.rendezvous import init_process_group

    fn, args, kwargs = cloudpickle.loads(payload)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    mon = diagnose.monitor()
    # torch's own desync check (TORCH_DISTRIBUTED_DEBUG=DETAIL): every collective first compares op and
    # shapes across ranks, so a shape mismatch is an error naming both ranks, not a crash or garbage
    dist.set_debug_level(dist.DebugLevel.DETAIL if check_collectives else dist.DebugLevel.OFF)
    # The rank-0 engine hosts the store the ranks meet at; holding it lets the ranks leave together (below).
    store = dist.TCPStore(info.master_addr, info.master_port, info.world_size, info.rank == 0,
                          timedelta(seconds=timeout_s))
    init_process_group(info, backend=backend, timeout_s=timeout_s, store=store)
    finished = False
    if mon:
        mon.armed = diagnostics
        mon.begin_call()
    try:
        result = fn(*args, **kwargs)
        finished = True
        return result
    finally:
        if mon:
            mon.end_call("returned" if finished else "raised")
        _leave_together(store, info, finished, timeout_s)
        if dist.is_initialized():
            dist.destroy_process_group()
        if mon:
            mon.end_call("idle")
        sys.stdout.flush()
        sys.stderr.flush()


def _run_plain(payload: bytes):
    """Runs on the chosen engines of `Workers.run(fn, ranks=...)`: the function alone, no process group."""
    fn, args, kwargs = cloudpickle.loads(payload)
    try:
        return fn(*args, **kwargs)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _leave_together(store, info: RankInfo, finished: bool, timeout_s: float) -> None:
    """Don't tear down the process group while a peer may still be connecting to it.

    gloo's init is not a barrier: a rank whose function needs no collective can finish, close its sockets
    and (rank 0) the store while a slower peer is still in its full-mesh handshake, which then fails with
    "connectFullMesh failed ... Connection closed by peer" or waits for a store that is gone (both seen with
    mpiexec-started engines). So a rank whose function returned waits until every rank has left its
    function; a rank whose function raised leaves at once (a peer may be blocked in a collective on it).
    Rank 0 hosts the store and goes last."""
    timeout = timedelta(seconds=timeout_s)
    try:
        _count_in(store, "hepml/left_fn", info.world_size)
        if finished:
            store.wait(["hepml/left_fn/all"], timeout)
        if info.rank != 0:
            _count_in(store, "hepml/done_with_store", info.world_size - 1)
        elif finished and info.world_size > 1:
            store.wait(["hepml/done_with_store/all"], timeout)
    except Exception:  # the store is gone: rank 0 left (it failed, and reports that itself)
        pass


def _count_in(store, key: str, expected: int) -> None:
    """Count this rank in at `key`; the last of the `expected` ranks sets the flag ``<key>/all``."""
    if store.add(key, 1) == expected:
        store.set(f"{key}/all", "1")
