"""A real Triton server (PyTriton) with the MLP, the jet tagger and the tracking GNN: results against
in-process
inference over HTTP and gRPC, every kind of malformed request, the bounded load test, and a clean shutdown.

One server for the whole module (~5 s to start); the last test stops it and counts processes.
"""

import ipaddress

import numpy as np
import psutil
import pytest
import torch

from hepml_kit.serve import (
    Batching,
    InferenceServer,
    ServiceClient,
    ServiceError,
    load_test,
    served_model,
    serving_processes,
)

PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    mlp = served_model("mlp")
    return {
        "mlp": mlp,
        "mlp_b1": mlp.with_batching(Batching(dynamic=False), "mlp_b1"),
        "jet_transformer": served_model(
            "jet_transformer", batching=Batching(max_batch_size=32, max_queue_delay_us=200)
        ),
        "tracking_gnn": served_model("tracking_gnn"),
    }


@pytest.fixture(scope="module")
def server(models):
    before = {p.pid for p in serving_processes()}
    server = InferenceServer(list(models.values())).start()
    server.processes_before = before
    yield server
    server.stop()


def test_server_is_ready_and_listens_on_loopback_only(server):
    with ServiceClient(server.http_url) as client:
        assert client.is_ready(list(server.models))
    assert server.host == "127.0.0.1"
    triton = [p for p in server.processes() if p.name() == "tritonserver"]
    assert len(triton) == 1
    listening = {c.laddr for c in triton[0].net_connections(kind="inet") if c.status == "LISTEN"}
    ports = {server.triton_http_port, server.grpc_port}  # clients reach HTTP through the guard (next lines)
    assert ports <= {addr.port for addr in listening}
    assert all(_is_loopback(addr.ip) for addr in listening if addr.port in ports)
    guard = [c.laddr for c in psutil.Process(server._guard.pid).net_connections(kind="inet")
             if c.status == "LISTEN"]  # the guard's own process
    assert server.http_port in {addr.port for addr in guard} and server.http_port != server.triton_http_port
    assert all(_is_loopback(addr.ip) for addr in guard if addr.port == server.http_port)


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # gRPC listens on ::ffff:127.0.0.1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["mlp", "jet_transformer", "tracking_gnn"])
def test_server_matches_in_process_inference(server, models, name, protocol):
    model = models[name]
    request = model.example(3, 11)
    with ServiceClient(server.url(protocol), protocol) as client:
        got = client.infer(name, request)
    want = model.run(request)
    assert set(got) == {s.name for s in model.outputs}
    for key in want:
        assert got[key].shape == want[key].shape
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_jets_with_different_track_counts_match_per_jet_inference(server, models):
    """The padding + mask encoding: each jet's served result equals the model run on its tracks alone."""
    served = models["jet_transformer"]
    encoding_capacity = served.inputs[0].shape[0]
    rng = np.random.default_rng(0)
    jets = [
        rng.normal(size=(n, served.inputs[0].shape[1])).astype(np.float32) for n in (1, 5, encoding_capacity)
    ]
    from hepml_kit.serve import JetEncoding

    request = JetEncoding(encoding_capacity, served.inputs[0].shape[1]).encode(jets)
    with ServiceClient(server.http_url) as client:
        got = client.infer("jet_transformer", request)
    for i, jet in enumerate(jets):
        with torch.no_grad():
            flavour, origin = served.module.model(
                torch.from_numpy(jet)[None], torch.ones(1, len(jet), dtype=torch.bool)
            )
        np.testing.assert_allclose(got["flavour_logits__0"][i], flavour[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(got["origin_logits__1"][i, : len(jet)], origin[0].numpy(), atol=1e-5)


def test_graphs_of_different_sizes_match_per_graph_inference(server, models):
    """Tracking as a service: each event's edge logits equal the GNN run on that event's graph alone."""
    served = models["tracking_gnn"]
    request = served.example(4, 5)
    assert len(set(request["num_edges"][:, 0])) > 1, "examples should differ in size"
    with ServiceClient(server.grpc_url, "grpc") as client:
        got = client.infer("tracking_gnn", request)["edge_logits__0"]
    from hepml_kit.serve import GraphEncoding

    for b, logits in enumerate(GraphEncoding.decode(got, request["num_edges"])):
        n, e = int(request["num_nodes"][b, 0]), int(request["num_edges"][b, 0])
        with torch.no_grad():
            want = served.module.model(
                *(
                    torch.from_numpy(a)
                    for a in (
                        request["x"][b, :n],
                        request["edge_attr"][b, :e],
                        request["edge_index"][b, :, :e],
                    )
                )
            )
        assert logits.shape == (e,)
        np.testing.assert_allclose(logits, want.numpy(), atol=1e-5)
        assert not got[b, e:].any(), "padding edges must come back as zeros"


def _malformed(models, kind):
    x = models["mlp"].example(2, 0)["x"]
    graph = models["tracking_gnn"].example(1, 0)
    bad_graph = {k: v.copy() for k, v in graph.items()}
    bad_graph["edge_index"][0, 1, 0] = bad_graph["num_nodes"][0, 0] + 3  # an edge to a node that is not there
    return {
        "wrong input name": ("mlp", {"features": x}, "unexpected inference input 'features'"),
        "wrong shape": ("mlp", {"x": x[:, :5]}, "unexpected shape for input 'x'"),
        "wrong dtype": ("mlp", {"x": x.astype(np.float64)}, "FP64"),
        "batch too large": ("mlp", {"x": np.zeros((65, x.shape[1]), np.float32)}, "batch-size must be <= 64"),
        "unknown model": ("no_such_model", {"x": x}, "unknown model"),
        "bad content": ("tracking_gnn", bad_graph, "edge_index points outside"),
    }[kind]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "kind",
    ["wrong input name", "wrong shape", "wrong dtype", "batch too large", "unknown model", "bad content"],
)
def test_malformed_request_is_a_clear_client_error_and_server_keeps_serving(server, models, kind, protocol):
    model, request, message = _malformed(models, kind)
    with ServiceClient(server.url(protocol), protocol) as client:
        with pytest.raises(ServiceError) as err:
            client.infer(model, request)
        assert message in str(err.value)
        assert "Traceback" not in str(err.value)
        good = models["mlp"].example(2, 1)
        np.testing.assert_allclose(
            client.infer("mlp", good)["logits__0"], models["mlp"].run(good)["logits__0"], atol=1e-5
        )
        assert client.is_ready(list(server.models))


def test_load_test_1000_requests_from_8_clients_without_failure(server, models):
    server.reset_stats()
    result = load_test(
        server.http_url,
        "jet_transformer",
        models["jet_transformer"].example,
        requests=1000,
        concurrency=8,
        warmup=2,
    )
    assert result.failures == 0, result.errors
    assert len(result.latencies_s) == 1000
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.throughput_rps > 0
    stats = server.stats("jet_transformer")
    assert stats["requests"] == 1000 + 8 * 2 and stats["samples"] == stats["requests"]
    assert stats["executions"] <= stats["requests"]


def test_batch1_serving_runs_every_request_alone(server, models):
    server.reset_stats()
    result = load_test(
        server.grpc_url,
        "mlp_b1",
        models["mlp"].example,
        requests=80,
        concurrency=8,
        protocol="grpc",
        warmup=0,
    )
    assert result.failures == 0, result.errors
    stats = server.stats("mlp_b1")
    assert stats["executions"] == stats["requests"] == 80


def test_load_test_targets_loopback_only(models):
    with pytest.raises(ValueError, match="not a loopback address"):
        load_test("192.0.2.10:8000", "mlp", models["mlp"].example, requests=1)


def test_zz_shutdown_leaves_no_serving_process(server):
    """Runs last in this module: stop the shared server and count tritonserver and stub processes."""
    ours = server.processes()
    model_copies = list(server._model_copies)  # Triton's temporary copies of the model folders
    assert len(model_copies) == len(server.models) and all(f.exists() for f in model_copies)
    names = sorted(p.name() for p in ours)
    assert names.count("tritonserver") == 1
    assert sum("stub" in n for n in names) == len(server.models)  # one Python-backend stub per model
    server.stop()
    assert not [p for p in ours if p.is_running() and p.status() != "zombie"]
    assert server.processes() == []
    after = {p.pid for p in serving_processes()}
    assert not ({p.pid for p in ours} & after)
    assert len(after - server.processes_before) == 0, "a serving process appeared and stayed"
    assert not any(f.exists() for f in model_copies)
    server.stop()  # twice is fine
