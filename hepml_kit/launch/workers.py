"""`Workers`: a warm pool of ipyparallel engines, each wired as one torch.distributed rank.

The recipe (ipyparallel issue #813 asks for it): start engines with `ipyparallel.Cluster`, learn each
engine's host, pid and GPUs once, then for every call send *one* blocking message per engine that carries
its rank, the rendezvous address and the pickled function — never a `push` followed by an `apply`, which
can leave one engine without its rank and the others waiting in rendezvous forever. Each rank initialises
the process group, runs the function, and destroys the group once every rank is done with it (gloo's init
is not a barrier: a fast rank must not leave a slow one mid-handshake). Every wait has a timeout; a rank
that raises or dies ends the call with a `WorkerError` naming it (and, for a dead one, how it died); ranks
left blocked in a collective, or past the call's timeout, are SIGKILLed at once and the pool restarted, so
nothing hangs and a timeout is reported within seconds of its limit. A timeout or a desync (ranks that can
never meet, found by asking each rank's monitor where it is: `diagnose`) is reported with every rank's
stack and collective. A watchdog process (`reaper`) kills the pool and removes its folders when the driver
dies without closing it.

Taught in curriculum/00_setup (the pool) and curriculum/11_debugging (the reports).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from hepml_kit.launch import diagnose
from hepml_kit.launch.errors import WorkerError, describe_exit, describe_remote_failure
from hepml_kit.launch.on_engine import _Engine, _probe_engine, _run_plain, _run_rank
from hepml_kit.launch.payload import check_sendable
from hepml_kit.launch.reaper import TAG_VARIABLE, Reaper, kill_tagged
from hepml_kit.launch.rendezvous import RankInfo, free_port

__all__ = ["Workers", "WorkerError", "launch", "ENGINE_KINDS"]

ENGINE_KINDS = ("local", "mpi", "slurm", "pbs")
# Rendezvous failures that happen before `fn` starts on any rank, so the call can safely be retried: another
# program took the port between our choice and rank 0's bind, or gloo's full-mesh connect lost a peer.
_RENDEZVOUS_FAILED = ("EADDRINUSE", "connectFullMesh failed")
_ERROR_GRACE_S = 3.0  # after one rank fails, how long the others get to finish or fail by themselves
_DESYNC_STALL_S = 3.0  # ranks that can never meet, unchanged this long, end the call as a desync
_WATCH_EVERY_S = 1.0  # how often a running call asks the ranks where they are
_POLL_S = 0.005
_live_pools: weakref.WeakSet[Workers] = weakref.WeakSet()


class Workers:
    """A warm pool of N ranks for running functions with torch.distributed wired.

    Args:
        n: number of ranks (engines).
        engines: ``"local"`` (this machine), ``"mpi"`` (mpiexec, e.g. inside an allocation) or ``"slurm"``
            (engines submitted through Slurm); the controller listens on all interfaces for the last two.
        device: ``"auto"`` (one GPU per rank when there are enough, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"xpu"`` (Intel GPUs, e.g. Aurora: the xccl backend; untested on hardware).
        start_timeout: seconds to wait for the engines to register.
        check_collectives: run torch's collective checks (``TORCH_DISTRIBUTED_DEBUG=DETAIL``): before every
            collective the ranks compare op and shapes, so a shape mismatch, which gloo may answer with a
            crash or garbage, becomes an error naming the ranks and both collectives. It costs one extra small
            collective per collective (bench/debug_overhead.py), so it is off by default; the kit's own
            checks (skipped or different collectives, reported within seconds) come with `diagnostics`.
        diagnostics: record each rank's collectives (op, number, shapes) and ask the ranks where they are once
            a second during a call, so desyncs end the call and timeouts say which collective each rank is in
            (bench/debug_overhead.py measures the cost). Stacks on request work either way.
        cluster_kwargs: passed to `ipyparallel.Cluster` (e.g. ``{"engine_launcher_class": ...}``,
            batch-system options).

    ``with Workers(n=2) as w: w.run(fn, *args)`` returns ``fn``'s return values in rank order.
    """

    def __init__(self, n: int = 2, engines: str = "local", *, device: str = "auto",
                 start_timeout: float = 120.0, check_collectives: bool = False, diagnostics: bool = True,
                 **cluster_kwargs):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Workers needs n >= 1 ranks, got {n!r}")
        if engines not in ENGINE_KINDS:
            raise ValueError(f"unknown engines kind {engines!r}; choose one of {', '.join(ENGINE_KINDS)}")
        if device not in ("auto", "cpu", "cuda", "xpu"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and engines == "local":
            gpus = _local_gpu_count()
            if n > gpus:
                raise ValueError(f"asked for {n} GPU ranks but this machine has {gpus} "
                                 f"GPU(s); use n <= {gpus} or device='cpu'")
        self.n, self.engines_kind, self.device = n, engines, device
        self.start_timeout = start_timeout
        self.check_collectives = bool(check_collectives)
        self.diagnostics = bool(diagnostics)
        self.cluster_kwargs = cluster_kwargs
        self._cluster = None
        self._client = None
        self._engines: list[_Engine] = []
        self._profile_dir: str | None = None
        self._workdir: str | None = None
        self._reaper: Reaper | None = None
        self._tag: str | None = None
        self._monitor_token = ""  # set by start(): the secret the ranks' monitors ask for
        self._launched: dict[int, Any] = {}  # pid -> psutil.Process of what ipyparallel started
        self._one_shot = False  # set by `launch`: no "restarted" in its reports
        self._sent_code: dict[str, str] = {}  # function name -> file, for the ranks' stacks

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Workers:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._client is not None

    def start(self) -> Workers:
        """Start the controller and engines (about 5-10 s) and learn each engine's host, pid and GPUs.

        A watchdog process (`reaper`) kills them and removes the pool's folders if this process dies
        without closing the pool (SIGKILL, SIGTERM, a crashed kernel)."""
        if self.started:
            return self
        import ipyparallel as ipp

        os.environ.setdefault("IPP_NONINTERACTIVE", "1")
        self._reaper = Reaper()
        self._tag = uuid.uuid4().hex
        self._monitor_token = secrets.token_hex(16)  # the ranks' monitors answer only this pool's driver
        self._reaper.watch_tag(self._tag)
        self._profile_dir = tempfile.mkdtemp(prefix="hepml-ipp-")
        self._workdir = tempfile.mkdtemp(prefix="hepml-ipp-work-")  # batch launchers write scripts here
        for d in (self._profile_dir, self._workdir):
            self._reaper.watch_dir(d)
        # The hub admits a new engine only after its first heartbeat: ipyparallel's default 3 s period makes
        # two local engines take ~6.5 s to register, a 0.5 s period ~2.5 s (measured on 2 cores).
        period_ms = 500 if self.engines_kind == "local" else 1000
        kwargs = dict(n=self.n, engines=self.engines_kind, profile_dir=self._profile_dir, log_level=40,
                      engine_timeout=int(self.start_timeout),
                      controller_args=[f"--HeartMonitor.period={period_ms}"])
        if self.engines_kind != "local":
            kwargs.update(controller_ip="*", controller_location=_routable())
        if self.engines_kind == "pbs" or (self.engines_kind == "mpi" and "PBS_JOBID" in os.environ):
            from hepml_kit.batch.engines import engine_cluster_kwargs  # PBS Pro job / Cray PALS mpiexec flags

            kwargs.update(engine_cluster_kwargs(self.engines_kind, self.n))
        elif self.engines_kind == "mpi":
            kwargs.setdefault("config", _mpi_config(self.n))
        kwargs.update(self.cluster_kwargs)
        _live_pools.add(self)
        cwd = os.getcwd()
        before = os.environ.get(TAG_VARIABLE)
        try:
            os.chdir(self._workdir)
            os.environ[TAG_VARIABLE] = self._tag  # every process started for the pool carries the tag
            self._cluster = ipp.Cluster(**kwargs)
            self._cluster.start_cluster_sync(n=self.n)
            self._watch_launched()
            self._client = self._cluster.connect_client_sync()
            # no progress bar: its output would make notebooks differ from run to run
            self._client.wait_for_engines(self.n, timeout=self.start_timeout, interactive=False)
            ids = sorted(self._client.ids)[: self.n]
            bind = "127.0.0.1" if self.engines_kind == "local" else ""
            infos = {eid: self._client[eid].apply_async(_probe_engine, bind, self._monitor_token)
                     for eid in ids}
            probed = {eid: ar.get(timeout=self.start_timeout) for eid, ar in infos.items()}
        except BaseException:
            self.close()
            raise
        finally:
            os.chdir(cwd)
            if before is None:
                os.environ.pop(TAG_VARIABLE, None)
            else:
                os.environ[TAG_VARIABLE] = before
        # ranks: grouped by host (so local ranks are contiguous), engine id within a host
        self._engines = sorted(
            (_Engine(eid, p["host"], p["pid"], p["gpus"], tuple(p["helpers"]),
                     p["port"]) for eid, p in probed.items()),
            key=lambda e: (e.host != probed[ids[0]]["host"], e.host, e.engine_id),
        )
        for proc in self._local_engine_processes():
            self._reaper.watch_pid(proc.pid)
        if self.device == "cuda":
            for host in {e.host for e in self._engines}:
                on_host = [e for e in self._engines if e.host == host]
                if len(on_host) > on_host[0].gpus:
                    self.close()
                    raise ValueError(f"{len(on_host)} GPU ranks on {host}, which has "
                                     f"{on_host[0].gpus} GPU(s)")
        return self

    def _watch_launched(self) -> None:
        """Remember the processes ipyparallel started (controller, engines or mpiexec) for the watchdog and
        for exit codes."""
        launchers = [getattr(self._cluster, "controller", None)]
        for engine_set in (getattr(self._cluster, "engines", None) or {}).values():
            launchers += list(getattr(engine_set, "launchers", {}).values()) or [engine_set]
        for launcher in launchers:
            proc = getattr(launcher, "process", None)
            if proc is not None:
                self._launched[proc.pid] = proc
                self._reaper.watch_pid(proc.pid)

    def close(self) -> None:
        """Stop engines and controller; nothing is left running. Safe to call twice."""
        self._shut_down(fast=False)

    def _shut_down(self, fast: bool) -> None:
        """`fast`: SIGKILL the local processes at once (a timeout or a stuck collective: a busy engine ignores
        SIGTERM, and ipyparallel's own stop then waits ~10 s per process before it kills)."""
        cluster, client = self._cluster, self._client
        self._cluster = self._client = None
        procs = self._local_engine_processes()  # before stopping: afterwards pids could be reused
        local = self.engines_kind == "local"
        if fast and local:
            procs += [p for p in self._launched.values() if p.pid not in {q.pid for q in procs}]
            self._reap(procs, wait_s=2.0)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        if not (fast and local):
            # engines first (ipyparallel's own stop waits on each in turn): ~1 s not ~5 s
            self._terminate(procs)
        if cluster is not None:
            try:
                cluster.stop_cluster_sync()
            except Exception:
                pass
        self._reap(procs)
        if local and self._tag:
            kill_tagged(self._tag)  # helpers the engines started (nannies, data loader workers)
        self._engines = []
        self._launched = {}
        for d in (self._profile_dir, self._workdir):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        self._profile_dir = self._workdir = None
        if self._reaper is not None:
            self._reaper.dismiss()
            self._reaper = None
        _live_pools.discard(self)

    def _local_engine_processes(self) -> list:
        import psutil

        me, procs = socket_hostname(), []
        for e in self._engines:
            if e.host != me:
                continue
            for pid in (e.pid, *e.helpers):
                try:
                    procs.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        return procs

    @staticmethod
    def _terminate(procs, wait_s: float = 3.0) -> None:
        import psutil

        alive = [p for p in procs if p.is_running()]
        for p in alive:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=wait_s)

    @staticmethod
    def _reap(procs, wait_s: float = 5.0) -> None:
        """Kill engines (and their nannies) that outlived the orderly stop, e.g. ones stuck in a
        collective."""
        import psutil

        alive = [p for p in procs if p.is_running()]
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=wait_s)

    # -- running ---------------------------------------------------------------------------------
    def view(self):
        """An ipyparallel DirectView of the pool's engines in rank order, for work without torch.distributed:
        e.g. Monte Carlo generators (`hepml_kit.simloop.engines`). The pool is started if need be, and
        restarted if one of its engines died."""
        if self.started and not {e.engine_id for e in self._engines} <= set(self._client.ids):
            self.close()
        self.start()
        return self._client[[e.engine_id for e in self._engines]]

    def _restart_if_an_engine_was_lost(self) -> None:
        """An engine can vanish between calls: killed while idle, or dropped by the controller after missed
        heartbeats on a starved machine. Its rank cannot take the next call (ipyparallel would say only "No
        such engine"), so the pool starts afresh first, and says so."""
        known = set(self._client.ids)
        lost = [rank for rank, e in enumerate(self._engines) if e.engine_id not in known]
        if lost:
            print(f"the engine(s) of rank(s) {lost} left the pool since the last call (the controller no "
                  "longer lists them): starting a fresh pool", file=sys.stderr)
            self.close()
            self.start()

    def rank_infos(self) -> list[RankInfo]:
        hosts = [e.host for e in self._engines]
        local = self.engines_kind == "local"
        master = "127.0.0.1" if local else self._engines[0].host
        port = free_port() if local else self._remote_free_port()
        infos = []
        for rank, e in enumerate(self._engines):
            same = [i for i, h in enumerate(hosts) if h == e.host]
            infos.append(RankInfo(rank, self.n, same.index(rank), len(same), master, port))
        return infos

    def _remote_free_port(self) -> int:
        return self._client[self._engines[0].engine_id].apply_sync(free_port)

    def _backend(self) -> str:
        if self.device == "cpu":
            return "gloo"
        if self.device == "xpu":
            return "xccl"
        per_host = {}
        for e in self._engines:
            per_host.setdefault(e.host, []).append(e)
        enough = all(len(es) <= es[0].gpus for es in per_host.values())
        if self.device == "cuda" or enough and all(e.gpus > 0 for e in self._engines):
            return "nccl"
        return "gloo"

    def run(self, fn: Callable, *args, timeout: float = 600.0, quiet: bool = False, ranks=None,
            **kwargs) -> list:
        """Run ``fn(*args, **kwargs)`` on every rank; return the results in rank order.

        Raises `WorkerError` naming the failing rank(s) with their tracebacks if any rank raises or dies, if
        the ranks desynchronise (one skips a collective, calls another, or passes other shapes: reported
        within seconds), or if the call outlives `timeout` seconds; a desync or timeout report shows every
        rank's stack and collective. Each rank's printed output is shown afterwards, prefixed ``[rank r]``,
        in rank order.

        ``ranks=[1]`` runs ``fn`` on those ranks' engines only, without a process group and without touching
        the others: for looking at a rank's state (its engine namespace, loaded modules) after an error.
        """
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if ranks is not None:
            ranks = self._check_ranks(ranks)
        payload = check_sendable(fn, args, kwargs)
        self._sent_code = diagnose.code_files(fn, *args, *kwargs.values())
        if ranks is not None:
            return self._run_once(payload, timeout, quiet, ranks)
        for attempt in range(3):
            try:
                return self._run_once(payload, timeout, quiet)
            except WorkerError as e:
                # the rendezvous failed before `fn` started anywhere: retry on a fresh pool with a fresh port
                if attempt == 2 or not any(m in t for t in e.failures.values() for m in _RENDEZVOUS_FAILED):
                    raise
                self.close()  # a half-done init can leave torch.distributed's state behind on an engine
        raise AssertionError("unreachable")

    def _check_ranks(self, ranks) -> list[int]:
        if isinstance(ranks, int) and not isinstance(ranks, bool):
            ranks = [ranks]
        try:
            chosen = sorted(set(ranks))
        except TypeError:
            chosen = None
        if not chosen or not all(isinstance(r, int) and not isinstance(r, bool)
                                 and 0 <= r < self.n for r in chosen):
            raise ValueError(f"ranks must be a non-empty list of ranks in 0..{self.n - 1}, got {ranks!r}")
        return chosen

    def stacks(self, timeout: float = 2.0) -> str:
        """Every rank's current Python stack and collective, e.g. from another thread while a call hangs."""
        if not self.started:
            return "the pool is not running"
        return self._diagnose(range(self.n), timeout)

    def _diagnose(self, ranks, timeout: float = 2.0) -> str:
        answers = self._ask(ranks, "stacks", timeout)
        lines = ["where the ranks are: " + diagnose.collective_summary(answers)]
        for rank, answer in answers.items():
            stack = (diagnose.resolve_sent_code(answer["stack"], self._sent_code) if answer
                     else "  (no answer: the process is gone or holds the GIL)")
            lines.append(f"--- rank {rank} stack (most recent call last) ---\n{stack}")
        return "\n".join(lines)

    def _ask(self, ranks: list[int] | range, what: str = "state",
             timeout: float = 2.0) -> dict[int, dict | None]:
        from concurrent.futures import ThreadPoolExecutor

        local = self.engines_kind == "local"
        with ThreadPoolExecutor(max(1, len(ranks))) as ex:
            futures = {r: ex.submit(diagnose.ask, "127.0.0.1" if local else self._engines[r].host,
                                    self._engines[r].monitor_port, what, timeout, self._monitor_token)
                       for r in ranks}
            return {r: f.result() for r, f in futures.items()}

    def _run_once(self, payload: bytes, timeout: float, quiet: bool, ranks: list[int] | None = None) -> list:
        self.start()
        self._restart_if_an_engine_was_lost()
        pending = {}
        if ranks is None:
            infos = self.rank_infos()
            backend = self._backend()
            local_sizes = {i.local_world_size for i in infos}
            threads = max(1, (os.cpu_count() or 1) // max(local_sizes))
            for info, e in zip(infos, self._engines):
                pending[info.rank] = self._client[e.engine_id].apply_async(
                    _run_rank, info, backend, threads, float(timeout), payload, self.check_collectives,
                    self.diagnostics,
                )
        else:
            for rank in ranks:
                pending[rank] = self._client[self._engines[rank].engine_id].apply_async(_run_plain, payload)
        ars = dict(pending)
        results: dict[int, Any] = {}
        failures: dict[int, str] = {}
        first_failure_at = None
        engine_died = False
        started = time.monotonic()
        deadline = started + timeout
        next_watch, desync, desync_since = started + _WATCH_EVERY_S, None, None
        restarted = "" if self._one_shot else "; the pool was restarted"
        note = diagnosis = ""
        try:
            while pending:
                for rank in list(pending):
                    ar = pending[rank]
                    if not ar.ready():
                        continue
                    del pending[rank]
                    try:
                        results[rank] = ar.get(timeout=5)
                    except Exception as exc:  # RemoteError, or EngineError when the hub saw the engine die
                        failures[rank] = describe_remote_failure(exc)
                        engine_died = engine_died or type(exc).__name__ == "EngineError"
                        first_failure_at = first_failure_at or time.monotonic()
                dead = self._dead_ranks(pending)
                for rank, why in dead.items():
                    failures[rank], engine_died = why, True
                    pending.pop(rank, None)
                    first_failure_at = first_failure_at or time.monotonic()
                now = time.monotonic()
                if pending and first_failure_at and now - first_failure_at > _ERROR_GRACE_S:
                    diagnosis = self._diagnose(sorted(pending)) if ranks is None else ""
                    note = (f"rank(s) {', '.join(map(str, sorted(pending)))} were "
                            "still waiting (probably in a collective on a failed rank) "
                            f"and were stopped{restarted}")
                    if engine_died and not self.check_collectives and "is in " in diagnosis:
                        note += ("; a rank that crashes in a collective may have been "
                                 "passed other shapes than its peers: Workers(check_collectives=True) names "
                                 "them")
                    break
                if pending and now > deadline:
                    diagnosis = self._diagnose(range(self.n) if ranks is None else ranks)
                    for rank in pending:
                        failures[rank] = f"timed out after {timeout:g} s (still running)"
                    note = f"the call outlived its {timeout:g} s timeout; its ranks were killed{restarted}"
                    break
                if (self.diagnostics and ranks is None and pending and not first_failure_at
                        and now >= next_watch):
                    next_watch = now + _WATCH_EVERY_S
                    states = self._ask(range(self.n), "state", timeout=1.0)
                    why = diagnose.find_desync(states)
                    key = (why, tuple(sorted((r, _state_key(s)) for r, s in states.items())))
                    desync, desync_since = ((key, desync_since if key == desync else now) if why
                                            else (None, None))
                    if why and now - desync_since >= _DESYNC_STALL_S:
                        diagnosis = self._diagnose(range(self.n))
                        for rank in range(self.n):
                            failures.setdefault(rank, f"desynchronised: {why}")
                        note = (f"desync: {why}; detected after {_DESYNC_STALL_S:g} s without progress, the "
                                f"ranks were killed{restarted}")
                        break
                if pending:
                    time.sleep(_POLL_S)
        except KeyboardInterrupt:  # a frozen cell interrupted: say where every rank was before killing them
            if ranks is None:
                print(self._diagnose(range(self.n)), file=sys.stderr)
            self._shut_down(fast=True)
            raise
        if pending or engine_died:
            self._shut_down(fast=True)  # engines stuck in C++ collectives cannot be interrupted: start afresh
        if not quiet:
            _show_output(ars)
        if failures:
            raise WorkerError(failures, note, diagnosis)
        return [results[r] for r in (range(self.n) if ranks is None else ranks)]

    def _dead_ranks(self, pending) -> dict[int, str]:
        if self.engines_kind != "local" or not pending:
            return {}
        import psutil

        dead = {}
        for rank in pending:
            e = self._engines[rank]
            try:
                alive = psutil.Process(e.pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                dead[rank] = (f"the rank's process (engine {e.engine_id}, pid {e.pid}) died: "
                              f"{describe_exit(self._exit_code(e.pid))}")
        return dead

    def _exit_code(self, pid: int, wait_s: float = 1.5) -> int | None:
        """The exit code ipyparallel's launcher collected (its waiter thread is the only one that reaps the
        engine: a second waiter would race it for the status); None when unknown."""
        proc = self._launched.get(pid)
        end = time.monotonic() + wait_s
        while proc is not None and time.monotonic() < end:
            code = getattr(proc, "_exitcode", None)  # psutil keeps the status its wait() collected
            if isinstance(code, int):
                return int(code)
            time.sleep(0.05)
        return None

    def __repr__(self) -> str:
        state = "running" if self.started else "stopped"
        return f"Workers(n={self.n}, engines={self.engines_kind!r}, device={self.device!r}) [{state}]"


def launch(fn: Callable, *args, nprocs: int = 2, timeout: float = 600.0, engines: str = "local",
           device: str = "auto", check_collectives: bool = False, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` on `nprocs` ranks with torch.distributed initialised; return the results in
    rank order. A one-shot `Workers` pool: started, used once, closed (also on error)."""
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be an integer >= 1, got {nprocs!r}")
    check_sendable(fn, args, kwargs)  # fail before starting anything
    with Workers(n=nprocs, engines=engines, device=device, check_collectives=check_collectives) as w:
        w._one_shot = True
        return w.run(fn, *args, timeout=timeout, **kwargs)


def _state_key(state: dict | None) -> str:
    """A rank's state without its clock, to tell "no progress" from "moving on"."""
    return "gone" if state is None else f"{state['phase']} {state['op']} {state['seq']} {state['shapes']}"


def _show_output(ars: dict) -> None:
    for rank in sorted(ars):
        ar = ars[rank]
        try:
            if ar.ready():
                ar.wait_for_output(5)  # the result can arrive before the last printed output
            out, err = ar.stdout or "", ar.stderr or ""
        except Exception:
            continue
        for stream, text in ((sys.stdout, out), (sys.stderr, err)):
            for line in text.splitlines():
                print(f"[rank {rank}] {line}", file=stream)


def _mpi_config(n: int):
    """mpiexec settings for engines: Open MPI refuses root and oversubscription unless told."""
    from traitlets.config import Config

    args = []
    if os.geteuid() == 0:  # containers and CI run as root; Open MPI needs both variables then
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if n > (os.cpu_count() or 1) and "SLURM_JOB_ID" not in os.environ:
        args.append("--oversubscribe")
    return Config({"MPILauncher": {"mpi_args": args}})


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def socket_hostname() -> str:
    import socket

    return socket.gethostname()


def _routable() -> str:
    from hepml_kit.launch.rendezvous import routable_address

    return routable_address()


@atexit.register
def _close_all_pools() -> None:  # the kernel's shutdown or the interpreter's exit
    for pool in list(_live_pools):
        pool.close()
