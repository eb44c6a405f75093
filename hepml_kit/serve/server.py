"""A real NVIDIA Triton Inference Server in front of PyTorch models, started from a notebook with PyTriton.

PyTriton (`nvidia-pytriton`) ships the Triton server binary; our inference function runs in this Python
process and Triton's Python-backend stub forwards each (dynamically batched) execution to it. Clients speak
the KServe v2 protocol over HTTP or gRPC (`client.py`), exactly as to the Triton container (`export.py`).

What this module adds to PyTriton, for teaching and for tests:

* models described once as a `ServedModel` (module + named tensors + `Batching`, `served_model.py`), served
  and run in-process by the same code, so server results can be compared with in-process inference;
* free ports on 127.0.0.1 unless told otherwise; health, readiness and every model's readiness are waited for
  before `start` returns;
* shutdown that leaves no process behind: a context manager, `atexit`, SIGTERM/SIGHUP handlers, the kernel's
  KeyboardInterrupt during start-up, and, as a last resort, the server's children are killed by pid;
* HTTP clients reach Triton through `RequestGuard` (`guard.py`, in a process of its own: `GuardProcess`),
  which refuses a request beyond a model's stated shape, batch or bytes before Triton parses it (a declared
  ``[2**40, 16]`` aborted tritonserver);
* a watchdog thread that checks Triton's process and ``/v2/health/live`` every 0.5 s: `status` says what
  is true now, a dead Triton is restarted on the same addresses (up to `restart` times) and the reason it
  died (its exit code or signal, ``std::bad_alloc`` from its output) is kept in `death`;
* the fix for Triton's Python-backend stub loading the system libpython instead of this interpreter's
  (`'_thread.RLock' object has no attribute '_recursion_count'`): this interpreter's LIBDIR is prepended to
  LD_LIBRARY_PATH before `triton.run()`.

Dynamic batching: Triton queues requests for up to `max_queue_delay_us` and merges what is queued (up to
`max_batch_size` samples) into one execution (Triton user guide, "Dynamic Batcher"). Taught in
curriculum/08_inference_service.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hepml_kit._tempdir import socket_dir
from hepml_kit.serve.guard import GuardProcess
from hepml_kit.serve.served_model import Batching, ServedModel, model_limits

__all__ = [
    "Batching",
    "InferenceServer",
    "ServedModel",
    "model_limits",
    "serving_processes",
    "start_server",
    "stop_all",
]

PROCESS_NAMES = ("tritonserver", "triton_python_backend_stub")
_WATCH_PERIOD_S = 0.5  # how often the watchdog looks at Triton
_WATCH_FAILURES = 2  # failed looks in a row that make Triton dead
_HEALTH_TIMEOUT_S = 5.0  # a health request slower than this counts as a failed look
_DEATH_CLUES = (  # what Triton's log says when it dies, and how the kit reports it
    ("std::bad_alloc", "out of memory allocating a request (std::bad_alloc)"),
    ("terminate called", "aborted by an uncaught C++ exception"),
    ("Signal (11)", "segmentation fault (signal 11)"),
    ("Signal (15)", "SIGTERM"),
    ("Signal (2)", "SIGINT"),
)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _answers_live(host: str, port: int) -> bool:
    """GET /v2/health/live answers 200 within `_HEALTH_TIMEOUT_S`."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=_HEALTH_TIMEOUT_S)
    try:
        conn.request("GET", "/v2/health/live")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _process_record(triton) -> tuple[Callable[[], str], Callable[[], int | None]]:
    """Triton's stdout/stderr as PyTriton records it (a C++ abort such as ``std::bad_alloc`` is printed there,
    not in the log file) and its exit code (negative: killed by that signal). PyTriton 0.7 keeps both on a
    private ``_triton_server`` (an `sh` command); without them the kit reports from the log file alone."""
    server = getattr(triton, "_triton_server", None)
    command = getattr(server, "_tritonserver_running_cmd", None)

    def output() -> str:
        with contextlib.suppress(Exception):
            return server.logs()[-20000:]
        return ""

    def exit_code() -> int | None:
        with contextlib.suppress(Exception):
            return command.process.exit_code
        return None

    return output, exit_code


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prepend_interpreter_libdir() -> None:
    """Make Triton's Python-backend stub load this interpreter's libpython (see module docstring)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
    if libdir and paths[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + [p for p in paths if p and p != libdir])


class _Stats:
    """Executions, requests and samples per model: how much the dynamic batcher merged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.executions = self.requests = self.samples = 0

    def reset(self) -> None:
        with self.lock:
            self.executions = self.requests = self.samples = 0

    def add(self, requests: int, samples: int) -> None:
        with self.lock:
            self.executions += 1
            self.requests += requests
            self.samples += samples

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "executions": self.executions,
                "requests": self.requests,
                "samples": self.samples,
                "requests_per_execution": self.requests / max(self.executions, 1),
            }


def _infer_function(model: ServedModel, stats: _Stats):
    """The callable PyTriton runs for each execution: a list of requests (merged by Triton) -> responses."""

    def infer(requests):
        arrays = [{s.name: np.asarray(r[s.name]) for s in model.inputs} for r in requests]
        for i, req in enumerate(arrays):  # gRPC requests reach here unguarded: a batch of 2**40 wraps to 0
            for s in model.inputs:
                shape = req[s.name].shape
                if (
                    len(shape) != 1 + len(s.shape)
                    or shape[0] < 1
                    or any(want not in (-1, got) for want, got in zip(s.shape, shape[1:]))
                ):
                    raise ValueError(
                        f"model {model.name!r}, request {i} of this batch: input {s.name!r} has shape "
                        f"{list(shape)}, expected [-1, {', '.join(map(str, s.shape))}]"
                    )
        if model.validate is not None:
            for i, req in enumerate(arrays):
                try:
                    model.validate(req)
                except ValueError as err:
                    raise ValueError(f"model {model.name!r}, request {i} of this batch: {err}") from None
        sizes = [len(req[model.inputs[0].name]) for req in arrays]
        merged = {s.name: np.concatenate([req[s.name] for req in arrays]) for s in model.inputs}
        out = model.run(merged)
        stats.add(len(requests), sum(sizes))
        bounds = np.cumsum([0] + sizes)
        return [{k: v[bounds[i] : bounds[i + 1]] for k, v in out.items()} for i in range(len(requests))]

    return infer


_LIVE: set[InferenceServer] = set()
_LIVE_LOCK = threading.Lock()
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def stop_all() -> None:
    """Stop every server this process started (atexit and signal handlers call this)."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.stop()


def _install_signal_handlers() -> None:
    """On SIGTERM/SIGHUP: kill our servers' processes, then do what the previous handler would have done."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _HANDLED_SIGNALS:
        previous = signal.getsignal(sig)
        if getattr(previous, "_hepml_serve", False):
            continue

        def handler(signum, frame, previous=previous):
            with _LIVE_LOCK:
                servers = list(_LIVE)
            for server in servers:
                server._signalled = True  # the watchdog must not restart what the handler kills
                server._kill_processes()  # no PyTriton locks: safe inside a signal handler
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        handler._hepml_serve = True
        signal.signal(sig, handler)


atexit.register(stop_all)


def serving_processes(root: str | Path | None = None) -> list:
    """Live `tritonserver` and Python-backend stub processes (`psutil.Process`); with `root`, only those
    started from that workspace folder. Tests count these before and after a shutdown."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        ours = root is None or str(root) in " ".join(cmdline)
        if cmdline and os.path.basename(cmdline[0]) in PROCESS_NAMES and ours:
            found.append(p)
    return found


class InferenceServer:
    """Triton (through PyTriton) serving `models`; use as a context manager or call `start`/`stop`.

    Args:
        models: the `ServedModel`s to bind (names must be unique).
        host: address to bind HTTP and gRPC to; 127.0.0.1 unless told otherwise (other hosts get a warning
            in `start`: anything that reaches the port can then run the model).
        http_port, grpc_port: None picks free ports.
        ready_timeout_s: how long `start` waits for the server and every model to be ready.
        guard: put `RequestGuard` on `http_port` and Triton's HTTP on an internal port (False: Triton itself
            listens on `http_port`, as before; any HTTP client can then crash it with a huge declared shape).
        restart: how many times the watchdog restarts a Triton that died (0: only report it in `status`).
        max_request_bytes: the guard's byte limit per request for models with a free (-1) dimension; models
            with fixed shapes are limited to one full batch.
    """

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        ready_timeout_s: float = 120.0,
        guard: bool = True,
        restart: int = 3,
        max_request_bytes: int = 64 << 20,
    ):
        models = list(models)
        if not models:
            raise ValueError("InferenceServer needs at least one ServedModel")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(
                    f"model name {name!r}: use letters, digits, '.', '_' and '-' only (a URL path part)"
                )
        for port in (http_port, grpc_port):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"port {port} is not a TCP port")
        self.models = {m.name: m for m in models}
        self.host = host
        self.http_port = http_port or _free_port(host)
        self.grpc_port = grpc_port or _free_port(host)
        self.ready_timeout_s = ready_timeout_s
        if restart < 0:
            raise ValueError(
                f"restart must be >= 0 (how many times a dead server is restarted), got {restart}"
            )
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
        self.guarded = guard
        self.max_restarts = restart
        self.limits = {m.name: model_limits(m, max_request_bytes) for m in models}
        self._guard: GuardProcess | None = None
        self._triton_http_port = self.http_port  # Triton's own HTTP port: an internal one behind the guard
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()
        self._signalled = False  # set by the SIGTERM/SIGHUP handler (no locks there, so not an Event)
        self._state = "stopped"
        self.restarts = 0  # how many times a dead Triton was restarted
        self.guard_restarts = 0  # how many times the request guard's process ended and was started again
        self.death: str | None = None  # why Triton last died (None: it never did)
        self._process_output: Callable[[], str] = lambda: ""  # Triton's stdout/stderr so far
        self._exit_code: Callable[[], int | None] = lambda: None  # Triton's exit code once it has exited
        self._stats = {name: _Stats() for name in names}
        self._triton = None
        self._dir: Path | None = None
        self._pids: set[int] = set()
        self._model_copies: list[Path] = []  # Triton's temporary copies of the model folders
        self._lock = threading.Lock()
        self.startup_s: float | None = None  # seconds from `start` to every model ready

    # --- addresses -----------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def triton_http_port(self) -> int:
        """Triton's own HTTP port; behind the guard (the default) an internal one that clients do not use."""
        return self._triton_http_port

    def url(self, protocol: str = "http") -> str:
        return {"http": self.http_url, "grpc": self.grpc_url}[protocol]

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> InferenceServer:
        """Start Triton (behind the guard), bind the models, return once the server and every model are ready;
        then watch it (`status`)."""
        if self._triton is not None:
            raise RuntimeError("server already started")
        if self._guard is not None or self._watchdog is not None:  # a dead server: start afresh
            self.stop()
        t0 = time.perf_counter()
        if not _is_loopback(self.host):
            warnings.warn(
                f"binding Triton to {self.host}: every host that reaches it can run the models", stacklevel=2
            )
        _prepend_interpreter_libdir()
        _remove_stale_folders()
        with _LIVE_LOCK:
            _LIVE.add(self)
        _install_signal_handlers()
        self._stopping.clear()
        self._set_state("starting")
        try:
            if self.guarded:
                self._guard = self._start_guard()
            self._launch()
            self.startup_s = time.perf_counter() - t0
        except BaseException as err:  # KeyboardInterrupt from the kernel included: leave nothing behind
            tail = self.log_tail()
            self.stop()
            if isinstance(err, Exception):
                raise RuntimeError(f"Triton did not start: {err}\n--- server log (tail) ---\n{tail}") from err
            raise
        self._set_state("running")
        self._watchdog = threading.Thread(target=self._watch, name="hepml-serve-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def _launch(self) -> None:
        """One Triton process in a fresh folder, models bound, ready (used by `start` and by a restart)."""
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        # PyTriton's sockets: <dir>/workspace/<model>_0_<i>-server.sock (a long TMPDIR would overflow them)
        longest = max(len(name) for name in self.models) + len("workspace/_0_99-server.sock")
        self._dir = socket_dir(f"{_FOLDER_PREFIX}{os.getpid()}-", longest)
        if self.guarded:
            self._triton_http_port = _free_port(self.host)
        config = TritonConfig(
            http_address=self.host,
            http_port=self._triton_http_port,
            grpc_address=self.host,
            grpc_port=self.grpc_port,
            allow_metrics=False,
            log_file=self._dir / "tritonserver.log",
            exit_timeout_secs=5,
        )
        self._triton = Triton(config=config, workspace=self._dir / "workspace")
        for m in self.models.values():
            b = m.batching
            batcher = (
                DynamicBatcher(
                    max_queue_delay_microseconds=b.max_queue_delay_us,
                    preferred_batch_size=list(b.preferred_batch_sizes) or None,
                )
                if b.dynamic
                else None
            )
            self._triton.bind(
                model_name=m.name,
                infer_func=_infer_function(m, self._stats[m.name]),
                inputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype).type, shape=s.shape) for s in m.inputs],
                outputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype).type, shape=s.shape) for s in m.outputs],
                config=ModelConfig(max_batch_size=b.max_batch_size, batcher=batcher),
                strict=True,
            )
        self._triton.run()
        self._process_output, self._exit_code = _process_record(self._triton)
        self._remember_processes()
        self._wait_ready()

    def _wait_ready(self) -> None:
        from hepml_kit.serve.client import ServiceClient

        with ServiceClient(f"{self.host}:{self._triton_http_port}") as client:
            client.wait_ready(models=list(self.models), timeout_s=self.ready_timeout_s)

    def _triton_http_address(self) -> tuple[str, int]:
        return self.host, self._triton_http_port

    def _start_guard(self) -> GuardProcess:
        """The request guard's process on `http_port`, told where Triton is and whether it serves."""
        return GuardProcess(
            self.limits, self.host, self.http_port, self._triton_http_address(), self._unavailable()
        ).start()

    def _set_state(self, state: str) -> None:
        """Change `status` and tell the guard (where Triton's HTTP port is, and whether it serves)."""
        self._state = state
        if self._guard is not None:
            self._guard.update(self._triton_http_address(), self._unavailable())

    def _unavailable(self) -> str | None:
        """None while Triton serves; otherwise why not (the guard answers 503 with this)."""
        return None if self._state == "running" else f"the Triton server is {self.status}"

    # --- liveness -------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """What the server is doing now, checked, not assumed: ``running``, ``starting``, ``stopped``,
        ``restarting after: <why it died>`` or ``dead: <why>`` (then `stop` it, or start a new one)."""
        return self._state

    def is_alive(self) -> bool:
        """Triton's process runs and its health endpoint answers "live" (asked now, not remembered)."""
        triton = [p for p in self.processes() if p.name() == "tritonserver"]
        if not triton or any(p.status() == "zombie" for p in triton):
            return False
        return _answers_live(self.host, self._triton_http_port)

    def _watch(self) -> None:
        """Watchdog thread: notice a dead or unresponsive Triton, say why, restart it up to `max_restarts`
        times."""
        failures = 0
        while not self._stopping.wait(_WATCH_PERIOD_S):
            self._restart_guard_if_it_died()
            try:
                alive = self.is_alive()
            except Exception:  # noqa: BLE001 - a process vanishing between two psutil calls is a death too
                alive = False
            failures = 0 if alive else failures + 1
            if alive or failures < _WATCH_FAILURES or self._stopping.is_set() or self._signalled:
                continue
            with self._lock:
                if self._stopping.is_set() or self._signalled or self._triton is None:
                    return
                self.death = self._death_reason()
                if self.restarts >= self.max_restarts:
                    self._set_state(
                        f"dead: {self.death} (restarted {self.restarts} time(s) already; not again)"
                    )
                    self._discard_triton()
                    return
                self._set_state(f"restarting after: {self.death}")
                self._discard_triton()
                try:
                    self._launch()
                except Exception as err:  # noqa: BLE001 - reported through `status`
                    self._set_state(f"dead: {self.death}; the restart failed: {err}")
                    self._discard_triton()
                    return
                self.restarts += 1
                self._set_state("running")
                failures = 0

    def _restart_guard_if_it_died(self) -> None:
        """The guard's process should never end on its own; if it did, start a new one on the same port."""
        guard = self._guard
        if guard is None or not guard.exited() or self._stopping.is_set() or self._signalled:
            return
        with self._lock:
            if self._guard is not guard or self._stopping.is_set():
                return
            code = guard.exit_code
            guard.stop()  # already ended: this closes its pipes and joins its reader thread
            self.guard_restarts += 1
            try:
                self._guard = self._start_guard()
            except OSError as err:
                self._guard = None
                self._set_state(f"dead: the request guard exited (code {code}) and could not restart: {err}")

    def _death_reason(self) -> str:
        """Why Triton stopped answering, from its process and its log (read before the folder goes)."""
        triton = [p for p in self.processes() if p.name() == "tritonserver"]
        if triton and triton[0].status() != "zombie":
            return f"tritonserver (pid {triton[0].pid}) stopped answering its health endpoint"
        log = self.log_tail(200) + "\n" + self._process_output()
        code = None
        for _ in range(20):  # PyTriton's thread records the exit code just after the process ends
            code = self._exit_code()
            if code is not None:
                break
            time.sleep(0.05)
        if code is not None and code < 0 and -code in signal.valid_signals():
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}" if code is not None else "exit code unknown"
        for clue, why in _DEATH_CLUES:
            if clue in log:
                return f"tritonserver exited ({how}): {why}"
        if how.startswith("killed"):
            return f"tritonserver was {how} (from outside, or by the out-of-memory killer)"
        return f"tritonserver exited ({how}) without a word in its log or output"

    def _discard_triton(self) -> None:
        """Forget a dead Triton: stop PyTriton's side, kill what is left of its processes, delete its
        folder."""
        triton, self._triton = self._triton, None
        if triton is not None:
            self._pids |= {p.pid for p in self.processes()}
            with contextlib.suppress(Exception), warnings.catch_warnings():
                # after a crash PyTriton finds its sockets gone and warns that it cannot clean its workspace
                warnings.filterwarnings("ignore", message="Could not clean workspace")
                triton.stop()
        self._kill_processes()

    def _remember_processes(self) -> None:
        procs = serving_processes(self._dir)
        self._pids = {p.pid for p in procs}
        self._model_copies = _model_copies(procs)

    def processes(self) -> list:
        """This server's live tritonserver and stub processes."""
        return serving_processes(self._dir) if self._dir else []

    def stop(self) -> None:
        """Stop the watchdog, the guard, the server and its stubs, delete the workspace; safe to call twice,
        from any thread.

        Close clients first: Triton waits for open HTTP connections (up to 5 s) before it unloads the models,
        then this kills whatever is left."""
        self._stopping.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join()
        with self._lock:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            guard, self._guard = self._guard, None
            if guard is not None:
                guard.stop()
            self._discard_triton()
            self._state = "stopped"

    def _kill_processes(self, grace_s: float = 5.0) -> None:
        """SIGINT, wait, SIGKILL every process this server started; remove its folder."""
        import psutil

        procs = []
        for pid in set(self._pids) | {p.pid for p in self.processes()}:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        procs = [p for p in procs if _is_ours(p, self._dir)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGINT)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        self._pids.clear()
        for folder in [self._dir, *self._model_copies]:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._model_copies = []

    def __enter__(self) -> InferenceServer:
        return self.start() if self._triton is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- introspection --------------------------------------------------------------------------------------
    def stats(self, model: str) -> dict:
        """Executions, requests and samples the model has run since start (or `reset_stats`)."""
        return self._stats[model].snapshot()

    def reset_stats(self) -> None:
        for stats in self._stats.values():
            stats.reset()

    def log_tail(self, lines: int = 30) -> str:
        path = self._dir / "tritonserver.log" if self._dir else None
        if not path or not path.exists():
            return "(no server log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __repr__(self) -> str:
        return (f"InferenceServer({', '.join(self.models)}; http {self.http_url}, grpc "
                f"{self.grpc_url}; {self.status})")


_FOLDER_PREFIX = "hepml-serve-"


def _remove_stale_folders() -> None:
    """Delete server folders (~30 MB: a copy of Triton) left by processes that were SIGKILLed."""
    import psutil

    bases = {Path(tempfile.gettempdir()), Path("/tmp")}  # `socket_dir` falls back to /tmp for a long TMPDIR
    for folder in (f for base in bases for f in base.glob(f"{_FOLDER_PREFIX}*-*")):
        pid = folder.name[len(_FOLDER_PREFIX) :].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _model_copies(procs) -> list[Path]:
    """The temporary folders Triton copied our models to (``/tmp/folderXXXXXX``, named in each stub's command
    line); Triton deletes them when it exits cleanly, not when it is killed."""
    folders = []
    for p in procs:
        with contextlib.suppress(Exception):
            for arg in p.cmdline()[1:2]:
                path = Path(arg)
                if path.name == "model.py" and path.parent.parent.name.startswith("folder"):
                    folders.append(path.parent.parent)
    return folders


def _is_ours(proc, root: Path | None) -> bool:
    """A pid from our list still names a serving process of our workspace (pids can be reused)."""
    import psutil

    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return root is not None and str(root) in cmd and any(n in cmd for n in PROCESS_NAMES)


def start_server(models: Sequence[ServedModel], **kwargs) -> InferenceServer:
    """Start an `InferenceServer` (see its arguments) and return it once ready; stop it with ``.stop()``
    or use ``with start_server(...) as server:``."""
    return InferenceServer(models, **kwargs).start()
