"""A request cannot kill the server, and a server that dies anyway is seen, named and restarted.

Issue 20, defect 5: one HTTP request declaring shape ``[2**40, 16]`` aborted tritonserver (``std::bad_alloc``)
while the kit still said "running". Here the guard must refuse it (and other hostile requests sent as raw
HTTP, as any client could) with a 4xx before Triton sees it; a tritonserver killed with SIGKILL must show in
`status`, be restarted on the same addresses, and after the last allowed restart be reported dead with the
reason, the guard answering 503.
"""

import contextlib
import http.client
import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from hepml_kit.serve import InferenceServer, ServiceClient, ServiceError, mlp_model
from hepml_kit.serve.guard import ModelLimits, RequestRefused
from hepml_kit.serve.server import model_limits

FEATURES = 16


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    server = InferenceServer([mlp_model()], restart=1).start()
    yield server
    server.stop()


def _post(server, body: bytes, headers: dict | None = None, path: str = "/v2/models/mlp/infer"):
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _json_request(shape, data=None, datatype="FP32", name="x", **parameters) -> bytes:
    tensor = {"name": name, "shape": shape, "datatype": datatype, "data": data or [0.0] * FEATURES}
    if parameters:
        tensor["parameters"] = parameters
    return json.dumps({"inputs": [tensor]}).encode()


def _binary_request(shape, raw: bytes, binary_size: int) -> tuple[bytes, dict]:
    tensor = {
        "name": "x",
        "shape": shape,
        "datatype": "FP32",
        "parameters": {"binary_data_size": binary_size},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


HOSTILE = {  # kind -> (body, extra headers, HTTP status, words the error must contain)
    "declared batch of 2**40 (aborted Triton)": (_json_request([2**40, FEATURES]), {}, 400, "batch-size"),
    "declared sample of 2**40 values": (_json_request([1, 2**40]), {}, 400, "unexpected shape"),
    "batch of 0": (_json_request([0, FEATURES], data=[0.0]), {}, 400, "batch-size"),
    "negative dimension": (_json_request([-1, FEATURES]), {}, 400, "unexpected shape"),
    "dimension not an integer": (_json_request([1.5, FEATURES]), {}, 400, "unexpected shape"),
    "extra dimension": (_json_request([1, FEATURES, 1]), {}, 400, "unexpected shape"),
    "wrong datatype": (_json_request([1, FEATURES], datatype="FP64"), {}, 400, "FP64"),
    "unknown input": (_json_request([1, FEATURES], name="features"), {}, 400, "unexpected inference input"),
    "no inputs": (json.dumps({"inputs": []}).encode(), {}, 400, "no inputs"),
    "not JSON": (b"\xff{not json", {}, 400, "not valid KServe v2 JSON"),
    "header length beyond the body": (
        _json_request([1, FEATURES]),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "does not fit",
    ),
    "binary size disagrees with shape": (
        *_binary_request([2**40, FEATURES], np.zeros(FEATURES, np.float32).tobytes(), 4 * FEATURES),
        400,
        "batch-size",
    ),
    "binary size disagrees with a small shape": (
        *_binary_request([2, FEATURES], np.zeros(FEATURES, np.float32).tobytes(), 4 * FEATURES),
        400,
        "binary_data_size",
    ),
    "shared-memory input": (
        _json_request([1, FEATURES], shared_memory_region="r", shared_memory_byte_size=64),
        {},
        400,
        "shared-memory",
    ),
    "compressed body": (_json_request([1, FEATURES]), {"Content-Encoding": "gzip"}, 415, "compressed"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_http_request_is_refused_before_triton_and_server_keeps_serving(server, kind):
    body, headers, status, words = HOSTILE[kind]
    refused_before = server._guard.refused
    got_status, text = _post(server, body, headers)
    assert got_status == status, text
    assert words in json.loads(text)["error"]
    assert server._guard.refused == refused_before + 1, "the guard itself must have answered"
    assert server.status == "running" and server.is_alive()
    with ServiceClient(server.http_url) as client:
        x = np.ones((2, FEATURES), np.float32)
        np.testing.assert_allclose(
            client.infer("mlp", {"x": x})["logits__0"],
            server.models["mlp"].run({"x": x})["logits__0"],
            atol=1e-5,
        )


def test_huge_declared_batch_over_grpc_is_an_error_and_server_keeps_serving(server):
    """gRPC carries its bytes, so Triton refuses a size mismatch itself; a 2**40 batch (which wraps to 0 in
    Triton's 32-bit batch size) is caught by the inference function's shape check."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("x", [1, FEATURES], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, FEATURES), np.float32))
    tensor.set_shape([2**40, FEATURES])
    with pytest.raises(Exception, match="input .x. has shape"):
        client.infer("mlp", [tensor])
    client.close()
    assert server.status == "running" and server.is_alive()


def test_control_and_shared_memory_endpoints_are_not_served_through_the_guard(server):
    status, text = _post(server, b"", path="/v2/repository/models/mlp/unload")
    assert status == 403, text
    status, text = _post(server, b"{}", path="/v2/systemsharedmemory/region/r/register")
    assert status == 403, text
    with ServiceClient(server.http_url) as client:
        assert client.is_ready(["mlp"])


def test_unknown_model_is_404_from_the_guard(server):
    status, text = _post(server, _json_request([1, FEATURES]), path="/v2/models/no_such_model/infer")
    assert status == 404 and "unknown model" in text


def test_request_bytes_are_bounded_for_inputs_of_free_size():
    """A model whose input has a free dimension is bounded by bytes instead (413 from the guard)."""
    limits = ModelLimits("m", {"hits": ("FP32", (-1, 3))}, max_batch_size=8, max_request_bytes=1024)
    limits.check({"inputs": [{"name": "hits", "shape": [2, 40, 3], "datatype": "FP32"}]}, 960)
    with pytest.raises(RequestRefused, match="more than its limit of 1024 bytes") as err:
        limits.check({"inputs": [{"name": "hits", "shape": [2, 2**30, 3], "datatype": "FP32"}]}, 100)
    assert err.value.status == 413
    # fixed shapes: a full batch is the limit
    assert model_limits(mlp_model()).max_request_bytes == 64 * FEATURES * 4


def test_the_guard_runs_in_its_own_process_and_a_killed_one_is_started_again(server):
    """The guard is not in the owner's process (it would take the GIL from the model functions); it ignores
    a kernel interrupt; if its process dies, the watchdog starts another on the same port and clients go
    on."""
    import psutil

    guard = server._guard
    assert guard.pid != os.getpid() and psutil.Process(guard.pid).ppid() == os.getpid()
    x = np.ones((1, FEATURES), np.float32)
    want = server.models["mlp"].run({"x": x})["logits__0"]
    os.kill(guard.pid, signal.SIGINT)  # a notebook interrupt reaches the kernel's whole process group
    time.sleep(1)
    assert not guard.exited() and server.guard_restarts == 0, "the guard must outlive a kernel interrupt"
    restarts = server.guard_restarts
    os.kill(guard.pid, signal.SIGKILL)
    _wait_for(lambda: server.guard_restarts == restarts + 1 and server._guard is not guard, 30, server)
    assert server.status == "running"
    with ServiceClient(server.http_url) as client:
        np.testing.assert_allclose(client.infer("mlp", {"x": x})["logits__0"], want, atol=1e-5)


def test_unguarded_huge_request_kills_triton_and_the_watchdog_names_why_and_restarts_it():
    """The defect itself, with the guard off (as for a client that reaches Triton's port directly): Triton
    aborts on the ``[2**40, 16]`` request; the kit reports why, from Triton's log, and restarts it."""
    with InferenceServer([mlp_model("mlp_unguarded")], guard=False, restart=1) as server:
        assert server.triton_http_port == server.http_port
        with contextlib.suppress(ConnectionError, http.client.HTTPException):
            _post(server, _json_request([2**40, FEATURES]), path="/v2/models/mlp_unguarded/infer")
        _wait_for(lambda: server.restarts == 1 and server.status == "running", 120, server)
        assert "bad_alloc" in server.death, server.death
        x = np.ones((1, FEATURES), np.float32)
        with ServiceClient(server.http_url) as client:
            got = client.infer("mlp_unguarded", {"x": x})["logits__0"]
        np.testing.assert_allclose(got, server.models["mlp_unguarded"].run({"x": x})["logits__0"], atol=1e-5)


def test_status_is_true_a_killed_server_is_restarted_then_reported_dead(server):
    """Runs last in this module (it kills the shared server twice)."""
    x = np.ones((1, FEATURES), np.float32)
    want = server.models["mlp"].run({"x": x})["logits__0"]
    urls = (server.http_url, server.grpc_url)

    triton = next(p for p in server.processes() if p.name() == "tritonserver")
    triton.send_signal(signal.SIGKILL)
    _wait_for(lambda: server.restarts == 1 and server.status == "running", 120, server)
    assert "SIGKILL" in server.death, server.death
    assert (server.http_url, server.grpc_url) == urls, "clients keep their addresses across a restart"
    for protocol in ("http", "grpc"):
        with ServiceClient(server.url(protocol), protocol) as client:
            np.testing.assert_allclose(client.infer("mlp", {"x": x})["logits__0"], want, atol=1e-5)

    # restart=1: the second death is reported, not hidden
    triton = next(p for p in server.processes() if p.name() == "tritonserver")
    triton.send_signal(signal.SIGKILL)
    _wait_for(lambda: server.status.startswith("dead"), 60, server)
    assert "SIGKILL" in server.status and not server.is_alive()
    assert "dead" in repr(server)
    with ServiceClient(server.http_url) as client, pytest.raises(ServiceError) as err:
        client.infer("mlp", {"x": x})
    assert err.value.status == "503" and "dead" in str(err.value)
    server.stop()
    assert server.status == "stopped" and server.processes() == []
    with server:  # a stopped (once dead) server starts again on the same addresses
        assert server.status == "running" and (server.http_url, server.grpc_url) == urls
        with ServiceClient(server.http_url) as client:
            np.testing.assert_allclose(client.infer("mlp", {"x": x})["logits__0"], want, atol=1e-5)


def _wait_for(condition, timeout_s: float, server) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"after {timeout_s} s: status {server.status!r}"
        time.sleep(0.1)
