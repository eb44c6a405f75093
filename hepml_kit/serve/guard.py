"""A gate in front of Triton's HTTP port: a request beyond a model's stated limits is refused before Triton
sees it.

Why: Triton's HTTP front-end allocates an input's buffer from the shape a JSON request *declares*, so one
request with shape ``[2**40, 16]`` makes ``tritonserver`` abort (``std::bad_alloc``) and every later client
gets
"connection refused". A declared batch of ``2**40`` also wraps to 0 in Triton's 32-bit batch size and slips
past its own ``max_batch_size`` check. So `RequestGuard` listens on the public HTTP port, reads each inference
request's header (the JSON part; binary tensor data follows it, KServe v2 binary-data extension) and refuses,
with HTTP 400 and a KServe v2 ``{"error": ...}`` body that tritonclient raises as is:

* an unknown model (404), input name, datatype or rank; a per-sample dimension other than the model's;
* a batch outside ``1 .. max_batch_size``; a tensor or request beyond the byte limit (413);
* binary data whose size disagrees with the declared shape; shared-memory inputs; compressed bodies.

Everything else (health, metadata, config, statistics, valid inference) is passed through byte for byte;
model-repository control and shared-memory registration are refused (403): a served model cannot be unloaded
or replaced from outside. While Triton is down or restarting the guard answers 503 naming why.
gRPC requests carry their bytes with them and are checked by Triton itself (batch and shape checks hold
there), so the guard fronts HTTP only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["GuardProcess", "ModelLimits", "RequestGuard", "RequestRefused"]

_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_READ_ONLY_PATH = re.compile(
    r"^/v2(/health/(live|ready)|/models/[^/]+(/versions/[^/]+)?(/ready|/config|/stats)?)?$"
)
_ITEMSIZE = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
_HEADER_LIMIT = 1 << 20  # slack for the JSON header of a request (binary data travels after it)
_JSON_BLOWUP = 8  # a tensor sent as JSON text takes up to ~8x its binary size


class RequestRefused(ValueError):
    """A request the guard refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelLimits:
    """What one model accepts: ``inputs`` maps name -> (KServe datatype, per-sample dims, -1 = any size)."""

    name: str
    inputs: dict[str, tuple[str, tuple[int, ...]]]
    max_batch_size: int
    max_request_bytes: int

    def check(self, header: dict, body_bytes: int) -> None:
        """Raise `RequestRefused` unless the request header fits this model (see module docstring)."""
        inputs = header.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise RequestRefused(f"model {self.name!r}: the request names no inputs")
        total = 0
        for tensor in inputs:
            if not isinstance(tensor, dict):
                raise RequestRefused(f"model {self.name!r}: each input must be a JSON object")
            name = tensor.get("name")
            if name not in self.inputs:
                raise RequestRefused(
                    f"unexpected inference input {name!r} for model {self.name!r}; it "
                    f"takes {list(self.inputs)}"
                )
            datatype, dims = self.inputs[name]
            if tensor.get("datatype") != datatype:
                raise RequestRefused(
                    f"input {name!r} of model {self.name!r} has datatype "
                    f"{tensor.get('datatype')}, expected {datatype}"
                )
            shape = tensor.get("shape")
            expected = [-1, *dims]
            if (
                not isinstance(shape, list)
                or len(shape) != len(expected)
                or not all(type(d) is int and d >= 0 for d in shape)
                or any(want not in (-1, got) for want, got in zip(expected, shape))
            ):
                raise RequestRefused(
                    f"unexpected shape for input {name!r} for model {self.name!r}. "
                    f"Expected {expected}, got {shape}"
                )
            if not 1 <= shape[0] <= self.max_batch_size:
                raise RequestRefused(
                    f"input {name!r} of model {self.name!r}: inference request batch-size must be <= "
                    f"{self.max_batch_size} (and >= 1), got {shape[0]}"
                )
            nbytes = math.prod(shape) * _ITEMSIZE[datatype]
            total += nbytes
            if total > self.max_request_bytes:
                raise RequestRefused(
                    f"model {self.name!r}: input {name!r} of shape {shape} makes the request {total} bytes, "
                    f"more than its limit of {self.max_request_bytes} bytes",
                    413,
                )
            parameters = tensor.get("parameters") or {}
            if any(k.startswith("shared_memory") for k in parameters):
                raise RequestRefused(
                    f"input {name!r}: shared-memory inputs are not accepted from the network"
                )
            if "binary_data_size" in parameters and parameters["binary_data_size"] != nbytes:
                raise RequestRefused(
                    f"input {name!r} of model {self.name!r}: binary_data_size "
                    f"{parameters['binary_data_size']} does not match shape {shape} ({nbytes} bytes)"
                )
        if body_bytes > _JSON_BLOWUP * self.max_request_bytes + _HEADER_LIMIT:
            raise RequestRefused(f"model {self.name!r}: request body of {body_bytes} bytes is too large", 413)


class RequestGuard:
    """Listen on ``host:port``, check inference requests against `limits`, pass the rest to Triton's HTTP
    port.

    Args:
        limits: `ModelLimits` per served model name.
        upstream: a callable returning Triton's ``(host, port)`` now (it changes when Triton is restarted).
        unavailable: a callable returning None while Triton serves, else why it does not (answered as 503).
        on_refusal: called (in the request's thread) after each request the guard answers itself with 4xx.
    """

    def __init__(
        self,
        limits: dict[str, ModelLimits],
        host: str,
        port: int,
        upstream: Callable[[], tuple[str, int]],
        unavailable: Callable[[], str | None] = lambda: None,
        on_refusal: Callable[[], None] = lambda: None,
    ):
        self.limits, self.upstream, self.unavailable = limits, upstream, unavailable
        self.on_refusal = on_refusal
        self.refused = 0  # requests answered by the guard itself with 4xx
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"guard": self})
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": _family(host)})
        self._server = server_class((host, port), handler, bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> RequestGuard:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hepml-serve-guard", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def count_refusal(self) -> None:
        with self._lock:
            self.refused += 1
        self.on_refusal()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient reuses its connections
    disable_nagle_algorithm = True
    timeout = 120  # s: a client that stalls mid-request (or idles) loses its connection, not a thread forever
    guard: RequestGuard
    _upstream: http.client.HTTPConnection | None = None
    _upstream_address: tuple[str, int] | None = None

    def log_message(self, *args) -> None:  # quiet: no line per request on stderr
        pass

    def do_GET(self) -> None:
        if not _READ_ONLY_PATH.match(self.path.split("?")[0]):
            return self._answer(403, f"{self.path} is not served through the kit's guard")
        self._forward(b"")

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        match = _INFER_PATH.match(path)
        try:
            body = self._read_body()
            if match is None:
                raise RequestRefused(f"POST {path} is not served through the kit's guard", 403)
            limits = self.guard.limits.get(match.group(1))
            if limits is None:
                raise RequestRefused(f"Request for unknown model: {match.group(1)!r} (unknown model)", 404)
            limits.check(self._header(body), len(body))
        except RequestRefused as err:
            self.guard.count_refusal()
            return self._answer(err.status, str(err))
        self._forward(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise RequestRefused("chunked requests are not accepted: send Content-Length", 411)
        if self.headers.get("Content-Encoding", "identity") != "identity":
            raise RequestRefused("compressed requests are not accepted", 415)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestRefused("Content-Length is not a number") from None
        largest = _JSON_BLOWUP * max((m.max_request_bytes for m in self.guard.limits.values()), default=0)
        largest += _HEADER_LIMIT
        if not 0 <= length <= largest:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise RequestRefused(f"request body of {length} bytes is larger than any model accepts", 413)
        return self.rfile.read(length)

    def _header(self, body: bytes) -> dict:
        size = self.headers.get("Inference-Header-Content-Length")
        try:
            n = int(size) if size is not None else len(body)
            if not 0 < n <= len(body):
                raise ValueError(f"inference header length {n} does not fit a body of {len(body)} bytes")
            header = json.loads(body[:n])
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestRefused(f"the request header is not valid KServe v2 JSON: {err}") from None
        if not isinstance(header, dict):
            raise RequestRefused("the request header must be a JSON object")
        return header

    def _forward(self, body: bytes) -> None:
        why = self.guard.unavailable()
        if why is not None:
            return self._answer(503, why)
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("content-type", "inference-header-content-length", "accept-encoding")
        }
        headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed by a restart
            try:
                conn = self._connection()
                conn.request(self.command, self.path, body if self.command == "POST" else None, headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                if attempt:
                    why = self.guard.unavailable() or f"the Triton server is not reachable ({err})"
                    return self._answer(503, why)
        self.send_response_only(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() in ("content-type", "inference-header-content-length", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _connection(self) -> http.client.HTTPConnection:
        address = self.guard.upstream()
        if self._upstream is None or self._upstream_address != address:
            self._drop_connection()
            self._upstream = http.client.HTTPConnection(*address, timeout=300)
            self._upstream.connect()
            self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream_address = address
        return self._upstream

    def _drop_connection(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        self._upstream = None

    def _answer(self, status: int, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def finish(self) -> None:
        super().finish()
        self._drop_connection()


class GuardProcess:
    """`RequestGuard` in a process of its own (the default of `InferenceServer`).

    PyTriton runs the model functions in the owner's Python process; a guard in that process too would take
    the GIL from them for every request it reads, checks and forwards. `bench/serving_guard.py` (2 cores,
    batch-1 requests to the cheapest model, 2026-12-07): 0.85 of Triton's direct throughput through the
    guard's own process, 0.69 through the same guard in the owner's process (docs/serving.md).

    The process is ``python guard.py`` (this file, no torch: it starts in a fraction of a second); it reads
    its settings as one JSON line on stdin, then state updates (`update`); it exits when its stdin closes
    (`stop`, or its owner died, even by SIGKILL) or when it is orphaned. ``refused`` counts the
    requests it answered itself with 4xx, exact at the time of asking.
    """

    def __init__(
        self,
        limits: dict[str, ModelLimits],
        host: str,
        port: int,
        upstream: tuple[str, int],
        unavailable: str | None = None,
    ):
        self._settings = {
            "limits": _limits_to_json(limits),
            "host": host,
            "port": port,
            "upstream": list(upstream),
            "unavailable": unavailable,
        }
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._first: list[dict] = []
        self._refused = 0
        self._synced = 0
        self._asked = 0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._port: int | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the guard process is not started")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 30.0) -> GuardProcess:
        """Start the process; return once it listens (raise `OSError` naming the address if it cannot)."""
        if self._proc is not None:
            raise RuntimeError("the guard process was started already")
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="hepml-serve-guard-reader", daemon=True)
        self._reader.start()
        self._send(self._settings)
        with self._cond:
            if not self._cond.wait_for(lambda: self._first or self.exited(), timeout_s):
                self.stop()
                raise OSError(f"the request guard did not start listening within {timeout_s:.0f} s")
        first = self._first[0] if self._first else {"error": f"it exited with code {self._proc.poll()}"}
        if "port" not in first:
            self.stop()
            address = f"{self._settings['host']}:{self._settings['port']}"
            raise OSError(f"the request guard could not listen on {address}: {first['error']}")
        self._port = int(first["port"])
        return self

    def update(self, upstream: tuple[str, int], unavailable: str | None) -> None:
        """Tell the guard where Triton's HTTP port is now and whether it serves (None) or why not (503)."""
        self._send({"upstream": list(upstream), "unavailable": unavailable})

    @property
    def refused(self) -> int:
        """Requests the guard answered itself with 4xx so far (every answer already sent is counted)."""
        with self._cond:
            self._asked += 1
            ask = self._asked
        self._send({"sync": ask})
        with self._cond:
            self._cond.wait_for(lambda: self._synced >= ask or self.exited(), 10)
            return self._refused

    def stop(self) -> None:
        """Close its stdin (it exits at once); kill it if it has not after 5 s. Safe to call twice."""
        proc = self._proc
        if proc is None or self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError, ValueError), self._write_lock:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        proc.stdout.close()

    @property
    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def exited(self) -> bool:
        """True once the process has ended (or was never started)."""
        return self._proc is None or self._proc.poll() is not None

    def _send(self, message: dict) -> None:
        proc = self._proc
        if proc is None or self._stopped:
            return
        with contextlib.suppress(OSError, ValueError), self._write_lock:  # a dead guard: the watchdog sees it
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()

    def _read(self) -> None:
        proc = self._proc
        for line in proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                if line == "R":
                    self._refused += 1
                elif line.startswith("S "):
                    self._synced = int(line[2:])
                else:
                    self._first.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()


def _limits_to_json(limits: dict[str, ModelLimits]) -> dict:
    """`ModelLimits` per model as JSON for the guard's process (`_limits_from_json` reads it back)."""
    return {
        name: {
            "inputs": {k: [dt, list(dims)] for k, (dt, dims) in m.inputs.items()},
            "max_batch_size": m.max_batch_size,
            "max_request_bytes": m.max_request_bytes,
        }
        for name, m in limits.items()
    }


def _limits_from_json(settings: dict) -> dict[str, ModelLimits]:
    return {
        name: ModelLimits(
            name,
            {k: (dt, tuple(dims)) for k, (dt, dims) in m["inputs"].items()},
            m["max_batch_size"],
            m["max_request_bytes"],
        )
        for name, m in settings["limits"].items()
    }


def _serve_until_stdin_closes() -> None:
    """The body of `GuardProcess`'s process."""
    # A notebook interrupt is SIGINT to the kernel's whole process group: meant for the cell, not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(sys.stdin.readline())
    state = {"now": (tuple(settings["upstream"]), settings["unavailable"])}
    out = threading.Lock()

    def say(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    try:
        guard = RequestGuard(
            _limits_from_json(settings),
            settings["host"],
            settings["port"],
            upstream=lambda: state["now"][0],
            unavailable=lambda: state["now"][1],
            on_refusal=lambda: say("R"),
        )
    except OSError as err:
        say(json.dumps({"error": str(err)}))
        return
    guard.start()
    say(json.dumps({"port": guard.port}))
    parent = os.getppid()

    def exit_when_orphaned() -> None:  # stdin normally tells; this covers a pipe end kept open by a fork
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    for line in sys.stdin:
        message = json.loads(line)
        if "sync" in message:
            say(f"S {message['sync']}")
        else:
            state["now"] = (tuple(message["upstream"]), message["unavailable"])
    os._exit(0)  # stdin closed: stopped, or the owner died


if __name__ == "__main__":
    _serve_until_stdin_closes()
