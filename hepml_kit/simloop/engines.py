"""Generator workers on a real engine, possibly on other nodes than the trainers: the kit's ipyparallel
engines (`hepml_kit.launch.workers.Workers`) or Ray actors.

    with hk.Workers(4, engines="slurm", device="cpu") as generators:      # CPU nodes simulating ...
        for batch in stream_batches(stream, workers=generators):         # ... for this GPU rank
            ...

The contract is the forked pool's (`hepml_kit.simloop.streaming`): batches in step order; at most `prefetch`
steps handed to each engine and not yet consumed (back-pressure: nothing runs further ahead); every wait
bounded by ``timeout_s``; an engine that dies or stays silent is reported by name, host and pid with the
step the stream had reached. Because a batch is a pure function of (seed, rank, step), *which* engine makes
a step does not matter: steps go to the least-loaded live engine, and the steps a failed engine owed go
again, first undelivered first, to the survivors (``restarts`` times, else `StreamError`). The stream is
sent to each engine once (``MonteCarloStream`` with its config), then each step is one small message
``(key, step)`` and one pickled batch back, the same bytes the forked workers queue.

Engines belong to the caller (a `Workers` pool is reused across streams and training calls): when the stream
ends, is closed early or fails, the steps still queued are aborted, a stuck one is interrupted (SIGINT
through ipyparallel's nanny), and the stream is removed from every engine; nothing keeps running. A dead
engine stays dead: ``Workers`` restarts its pool at its next ``run`` (or call ``close()``). Ray actors are
the stream's own: `RayGenerators` starts them for one stream and kills them after it.

Taught in curriculum/12_simulation_in_the_loop.
"""

from __future__ import annotations

import heapq
import os
import pickle
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import cloudpickle

from hepml_kit.simloop.mc_stream import MonteCarloStream, StreamError

__all__ = ["IpyparallelGenerators", "RayGenerators", "engine_backend", "stream_on_engines"]

_POLL_S = 0.02
_INSTALLED: dict[str, MonteCarloStream] = {}  # on each engine: the streams it makes chunks of, by key


# -- what runs on an engine -------------------------------------------------------------------------------
def _install(key: str, blob: bytes) -> tuple[str, int]:
    """Keep the stream on this engine under `key`; one core per generator. Returns (host, pid)."""
    import torch

    torch.set_num_threads(1)
    _INSTALLED[key] = cloudpickle.loads(blob)
    return socket.gethostname(), os.getpid()


def _make(key: str, step: int, kill: bool) -> bytes:
    """The pickled batch of `step` (`kill`: fault injection, die by SIGKILL before handing it over)."""
    batch = pickle.dumps(_INSTALLED[key].chunk(step), protocol=pickle.HIGHEST_PROTOCOL)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    return batch


def _uninstall(key: str) -> None:
    _INSTALLED.pop(key, None)


def _stream_blob(stream: MonteCarloStream) -> bytes:
    """The stream pickled once; a subclass from a test file or user script (not importable on the engines)
    travels by value."""
    module = sys.modules.get(type(stream).__module__)
    if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("hepml_kit"):
        cloudpickle.register_pickle_by_value(module)
    return cloudpickle.dumps(stream)


# -- the backends: submit a step to engine k, poll it, interrupt, close ------------------------------------
class IpyparallelGenerators:
    """The engines of a `Workers` pool (or of an ipyparallel DirectView) as generator workers.

    Engines on other nodes (``Workers(n, engines="slurm")``) work the same: only the stream, step numbers
    and pickled batches travel."""

    def __init__(self, view, stream: MonteCarloStream, timeout_s: float):
        if hasattr(view, "view") and hasattr(view, "run"):  # a Workers pool
            view = view.view()
        client = view.client
        targets = view.targets
        ids = list(client.ids) if targets in (None, "all") else (
            [targets] if isinstance(targets, int) else list(targets))
        if not ids:
            raise ValueError("the ipyparallel view has no engines")
        self.client, self.ids, self.key = client, ids, f"mc-stream-{uuid.uuid4().hex}"
        blob = _stream_blob(stream)
        probes = [client[e].apply_async(_install, self.key, blob) for e in ids]
        self.names = []
        for e, ar in zip(ids, probes):
            host, pid = _get(ar, timeout_s, f"engine {e} did not answer within timeout_s={timeout_s:g} s")
            self.names.append(f"ipyparallel engine {e} (host {host}, pid {pid})")
        self.n = len(ids)

    def submit(self, k: int, step: int, kill: bool):
        try:
            return self.client[self.ids[k]].apply_async(_make, self.key, step, kill)
        except Exception as exc:  # the engine is gone from the hub already
            return _Refused(f"died (ipyparallel: {exc})")

    def poll(self, handle, wait_s: float) -> tuple[str, object] | None:
        """None (not ready), ("batch", bytes), ("error", traceback of a bug) or ("failed", how it died)."""
        if isinstance(handle, _Refused):
            return "failed", handle.why
        handle.wait(wait_s)
        if not handle.ready():
            return None
        try:
            payload = handle.get(0)
        except Exception as exc:  # RemoteError; EngineError when the engine died
            from hepml_kit.launch.errors import describe_remote_failure

            if getattr(exc, "ename", None) == "EngineError" or type(exc).__name__ == "EngineError":
                said = str(getattr(exc, "evalue", exc)).split(" while ")[0]
                return "failed", f"died (ipyparallel: {said})"
            return "error", describe_remote_failure(exc)
        finally:
            self.client.purge_local_results(handle)  # the client would keep every batch otherwise
        return "batch", payload

    def interrupt(self, k: int, handles: list) -> None:
        """Stop engine k's queued steps and the running one (a stuck generator)."""
        self.discard(handles)
        try:
            self.client.send_signal(signal.SIGINT, targets=self.ids[k], block=True)
        except Exception:
            pass

    def discard(self, handles: list) -> None:
        for h in handles:
            try:
                if not isinstance(h, _Refused) and not h.ready():
                    self.client.abort(h, block=False)
            except Exception:
                pass

    def close(self, dead: set[int]) -> None:
        registered = [e for e in self.ids if e in self.client.ids]  # an interrupted engine too, not a dead
        try:
            if registered:
                self.client[registered].apply_async(_uninstall, self.key).get(10)
        except Exception:
            pass


@dataclass
class _Refused:
    why: str


@dataclass
class RayGenerators:
    """`n` Ray actors as generator workers for one stream (started for it, killed after it). Ray must be
    running (``hepml_kit.hpo.ray_backend.ray_session``, or ``ray.init(address=...)`` of a cluster whose CPU
    nodes then host the actors)."""

    n: int = 2
    num_cpus: float = 1.0

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1 or self.num_cpus <= 0:
            raise ValueError(f"RayGenerators needs n >= 1, num_cpus > 0; got {self.n}, {self.num_cpus}")

    def start(self, stream: MonteCarloStream, timeout_s: float) -> RayGenerators:
        import ray

        if not ray.is_initialized():
            raise ValueError("RayGenerators needs a running Ray: use hepml_kit.hpo.ray_backend.ray_session()")
        actor = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(_RayGenerator)
        blob = _stream_blob(stream)
        self.actors = [actor.remote(blob) for _ in range(self.n)]
        self.names = []
        try:
            for k, a in enumerate(self.actors):
                host, pid = _ray_get(a.whoami.remote(), timeout_s, f"Ray actor {k} did not start within "
                                     f"timeout_s={timeout_s:g} s")
                self.names.append(f"Ray actor {k} (host {host}, pid {pid})")
        except BaseException:
            self.close(set())
            raise
        return self

    def submit(self, k: int, step: int, kill: bool):
        return self.actors[k].make.remote(step, kill)

    def poll(self, handle, wait_s: float) -> tuple[str, object] | None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        ready, _ = ray.wait([handle], timeout=wait_s)
        if not ready:
            return None
        try:
            return "batch", ray.get(handle)
        except RayActorError as exc:
            return "failed", f"died (Ray: {str(exc).splitlines()[0][:160]})"
        except RayTaskError as exc:
            return "error", str(exc)

    def interrupt(self, k: int, handles: list) -> None:
        import ray

        ray.kill(self.actors[k])  # the actor is ours: a stuck one is killed

    def discard(self, handles: list) -> None:
        pass  # the actors are killed at close

    def close(self, dead: set[int]) -> None:
        import ray

        for a in getattr(self, "actors", []):
            try:
                ray.kill(a)
            except Exception:
                pass


class _RayGenerator:
    def __init__(self, blob: bytes):
        self.key = "ray"
        _install(self.key, blob)

    def whoami(self) -> tuple[str, int]:
        return socket.gethostname(), os.getpid()

    def make(self, step: int, kill: bool) -> bytes:
        return _make(self.key, step, kill)


def engine_backend(workers, stream: MonteCarloStream, timeout_s: float):
    """The backend of `stream_batches(workers=...)`: a `Workers` pool, ipyparallel view, `RayGenerators`."""
    if isinstance(workers, RayGenerators):
        return workers.start(stream, timeout_s)
    if hasattr(workers, "apply_async") or (hasattr(workers, "view") and hasattr(workers, "run")):
        return IpyparallelGenerators(workers, stream, timeout_s)
    raise TypeError("workers must be a number of forked processes, a started hepml_kit Workers pool, an "
                    f"ipyparallel view or RayGenerators; got {type(workers).__name__}")


# -- the scheduler: same contract whatever the engine -------------------------------------------------------
def stream_on_engines(stream: MonteCarloStream, backend, *, prefetch: int, timeout_s: float, restarts: int,
                      log) -> Iterator[dict]:
    """The batches of `stream` in step order, made by `backend`'s engines (see the module docstring)."""
    stop = stream.steps if stream.steps is not None else 2**62
    live = list(range(backend.n))
    owed: dict[int, tuple[int, object]] = {}  # step -> (engine, handle): submitted, not yet delivered
    again: list[int] = []  # steps a failed engine owed, to submit first (a heap)
    fresh, next_step, failures = stream.start_step, stream.start_step, 0
    inject = stream.kill_at_step
    try:
        while next_step < stop:
            while live and (again or fresh < stop):  # hand out steps while an engine has a free slot
                load = {k: 0 for k in live}
                for k, _ in owed.values():
                    load[k] += 1
                k = min(live, key=lambda k: (load[k], k))
                if load[k] >= prefetch:
                    break
                if again:
                    step = heapq.heappop(again)
                else:
                    step, fresh = fresh, fresh + 1
                owed[step] = (k, backend.submit(k, step, step == inject))
            if next_step not in owed:  # a failed engine owed it and the survivors' slots are full: one extra
                heapq.heappop(again)
                k = min(live, key=lambda k: (sum(j == k for j, _ in owed.values()), k))
                owed[next_step] = (k, backend.submit(k, next_step, False))
            k, handle = owed[next_step]
            deadline = time.monotonic() + timeout_s
            while (got := backend.poll(handle, _POLL_S)) is None:
                if time.monotonic() > deadline:
                    backend.interrupt(k, [h for j, h in owed.values() if j == k])
                    got = ("failed", f"sent no batch within timeout_s={timeout_s:g} s (interrupted)")
                    break
            kind, payload = got
            if kind == "batch":
                del owed[next_step]
                next_step += 1
                yield pickle.loads(payload)
                continue
            if kind == "error":
                raise StreamError(f"the generator raised at step {next_step} of rank {stream.rank} "
                                  f"({stream.model}) on {backend.names[k]}:\n{payload}")
            what = f"generator {backend.names[k]} {payload}"
            live.remove(k)
            inject = None  # the fault is injected once, as with the forked workers
            if failures >= restarts or not live:
                why = "no generator is left" if not live else f"restarts={restarts} used up"
                raise StreamError(f"{what} at step {next_step} of rank {stream.rank} ({stream.model}, "
                                  f"seed {stream.seed}); {why}. The batches are a pure function of (seed, "
                                  f"rank, step): rerun with start_step={next_step} to go on exactly where it "
                                  "stopped.")
            failures += 1
            lost = sorted(s for s, (j, _) in owed.items() if j == k)
            for s in lost:
                del owed[s]
                heapq.heappush(again, s)
            if log:
                log(f"[stream rank {stream.rank}] {what} at step {next_step}; its steps {lost} go to the "
                    f"{len(live)} other engine(s), from step {next_step} (restart {failures} of {restarts})")
    finally:
        backend.discard([h for _, h in owed.values()])
        backend.close({k for k in range(backend.n) if k not in live})


def _get(ar, timeout_s: float, message: str):
    try:
        return ar.get(timeout_s)
    except TimeoutError:
        raise StreamError(message) from None
    except Exception as exc:
        if type(exc).__name__ == "TimeoutError":
            raise StreamError(message) from None
        raise StreamError(f"{message.split(' did not')[0]} failed to take the stream: {exc}") from exc


def _ray_get(ref, timeout_s: float, message: str):
    import ray

    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise StreamError(message) from None
