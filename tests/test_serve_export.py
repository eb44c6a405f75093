"""The production path and the encodings, without a running server: the Triton model repository's TorchScript
loads with torch.jit.load and reproduces in-process inference, config.pbtxt is well-formed for Triton's own
schema and parser, and variable-size jets and graphs survive their padded encoding."""

import os
import re
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from hepml_kit.serve import (
    Batching,
    GraphEncoding,
    JetEncoding,
    check_model_repository,
    export_model_repository,
    model_config_pbtxt,
    project_gpus,
    read_model_config,
    served_model,
)
from hepml_kit.serve.encoding import triton_datatype
from hepml_kit.serve.export import load_torchscript, trace_model


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return [
        served_model("mlp", batching=Batching(dynamic=False)),
        served_model("jet_transformer"),
        served_model(
            "tracking_gnn",
            batching=Batching(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(4, 8)),
        ),
    ]


@pytest.fixture(scope="module")
def repository(models, tmp_path_factory):
    return export_model_repository(
        models, tmp_path_factory.mktemp("triton") / "repository", instance_kind="KIND_CPU"
    )


def test_repository_torchscript_reproduces_in_process_inference(repository, models):
    rows = check_model_repository(repository, models)
    assert [r["model"] for r in rows] == sorted(m.name for m in models)
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)
    gnn = next(r for r in rows if r["model"] == "tracking_gnn")
    assert gnn["inputs"] == ["x", "edge_attr", "edge_index", "num_nodes", "num_edges"]
    assert gnn["outputs"] == ["edge_logits__0"]


def test_repository_torchscript_handles_other_batch_and_graph_sizes(repository, models):
    gnn = models[2]
    scripted = load_torchscript(repository / "tracking_gnn" / "1" / "model.pt")
    for batch in (1, 7):
        request = gnn.example(batch, 100 + batch)
        with torch.no_grad():
            got = scripted(*(torch.from_numpy(request[s.name]) for s in gnn.inputs))[0].numpy()
        np.testing.assert_allclose(got, gnn.run(request)["edge_logits__0"], atol=1e-5)


def test_config_pbtxt_is_well_formed_for_triton(repository, models):
    from tritonclient.grpc import model_config_pb2

    for model in models:
        config = read_model_config(repository / model.name / "config.pbtxt")
        assert config.name == model.name and config.platform == "pytorch_libtorch"
        assert config.max_batch_size == model.batching.max_batch_size
        assert [i.name for i in config.input] == [s.name for s in model.inputs]
        assert [list(i.dims) for i in config.input] == [list(s.shape) for s in model.inputs]
        assert config.HasField("dynamic_batching") == model.batching.dynamic
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    gnn = read_model_config(repository / "tracking_gnn" / "config.pbtxt")
    assert gnn.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(gnn.dynamic_batching.preferred_batch_size) == [4, 8]
    jet = read_model_config(repository / "jet_transformer" / "config.pbtxt")
    assert [i.data_type for i in jet.input] == [model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_BOOL]


def test_malformed_config_is_caught(tmp_path, models):
    from google.protobuf.text_format import ParseError

    text = model_config_pbtxt(models[0], "KIND_GPU").replace("max_batch_size", "max_batchsize")
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(ParseError, match="max_batchsize"):
        read_model_config(tmp_path / "config.pbtxt")
    with pytest.raises(ValueError, match="instance_kind"):
        model_config_pbtxt(models[0], "KIND_TPU")


def test_export_refuses_to_overwrite(repository, models):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_model_repository(models[:1], repository)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_trace_check_catches_data_dependent_control_flow(models):
    class Branchy(nn.Module):
        def forward(self, x):
            return (x * 2,) if x.shape[0] < 3 else (x * 3,)  # a trace bakes in one branch

    bad = models[0].with_batching(models[0].batching)
    bad.module = Branchy()
    with pytest.raises(RuntimeError, match="differs from eager"):
        trace_model(bad)


def _tritonserver():
    import pytriton

    root = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
    return os.path.join(root, "bin", "tritonserver"), os.path.join(root, "backends")


def test_pytriton_tritonserver_accepts_the_repository_configs(repository):
    """PyTriton's Triton (2.51) parses every config.pbtxt; it ships only the Python backend, so each model
    must fail for the missing libtorch backend and for nothing else. (With a libtorch backend, serve it.)"""
    from pytriton.utils.distribution import get_libs_path

    from hepml_kit.serve.server import _free_port

    binary, backends = _tritonserver()
    if os.path.isdir(os.path.join(backends, "pytorch")):
        pytest.skip("this tritonserver has a libtorch backend: the repository can be served for real")
    cmd = [
        binary,
        "--model-repository",
        str(repository),
        "--backend-directory",
        backends,
        "--exit-on-error",
        "true",
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(_free_port("127.0.0.1")),
        "--allow-grpc",
        "false",
        "--allow-metrics",
        "false",
        "--exit-timeout-secs",
        "2",
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=get_libs_path())
    log = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False
    ).stdout
    failures = dict(re.findall(r"failed to load '(\w+)' version 1: (.*?)\"?$", log, re.MULTILINE))
    assert set(failures) == {p.name for p in repository.iterdir()}, log[-2000:]
    assert all("unable to find backend library for backend 'pytorch'" in why for why in failures.values()), (
        failures
    )


def test_jet_encoding_pads_and_masks():
    enc = JetEncoding(max_tracks=4, track_features=2)
    out = enc.encode([np.ones((1, 2)), np.full((4, 2), 2.0), np.zeros((0, 2))])
    assert out["tracks"].shape == (3, 4, 2) and out["tracks"].dtype == np.float32
    assert out["mask"].tolist() == [[True, False, False, False], [True] * 4, [False] * 4]
    assert out["tracks"][0, 1:].sum() == 0
    with pytest.raises(ValueError, match="5 tracks > capacity max_tracks=4"):
        enc.encode([np.ones((5, 2))])
    with pytest.raises(ValueError, match=r"tracks must be \[n, 2\]"):
        enc.encode([np.ones((2, 3))])


def test_graph_encoding_round_trip_and_checks():
    enc = GraphEncoding(max_nodes=5, max_edges=4, node_features=1, edge_features=1)
    g1 = (np.ones((3, 1)), np.ones((2, 1)), np.array([[0, 1], [1, 2]]))
    g2 = (np.ones((5, 1)), np.ones((4, 1)), np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))
    out = enc.encode([g1, g2])
    assert out["num_nodes"][:, 0].tolist() == [3, 5] and out["num_edges"][:, 0].tolist() == [2, 4]
    enc.validate(out)
    logits = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert [x.tolist() for x in GraphEncoding.decode(logits, out["num_edges"])] == [[0, 1], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="exceed capacity"):
        enc.encode([(np.ones((6, 1)), np.ones((1, 1)), np.array([[0], [1]]))])
    with pytest.raises(ValueError, match=r"edge_index must lie in \[0, 3\)"):
        enc.encode([(np.ones((3, 1)), np.ones((1, 1)), np.array([[0], [3]]))])
    out["edge_index"][1, 1, 3] = 9
    with pytest.raises(ValueError, match="graph 1 of the request"):
        enc.validate(out)


def test_triton_datatypes():
    assert [triton_datatype(t) for t in (np.float32, bool, np.int64)] == ["FP32", "BOOL", "INT64"]
    with pytest.raises(ValueError, match="no KServe v2 datatype"):
        triton_datatype(np.complex64)
    from hepml_kit.serve.encoding import numpy_dtype

    assert [numpy_dtype(t) for t in ("FP32", "BOOL", "INT64")] == [np.float32, bool, np.int64]
    for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, bool):
        assert numpy_dtype(triton_datatype(t)) == t  # tritonclient's own pair of maps, both ways
    with pytest.raises(ValueError, match="not a KServe v2 datatype"):
        numpy_dtype("FP33")


def test_config_is_triton_s_protobuf_message(models):
    """config.pbtxt is written by protobuf from tritonclient's ModelConfig, so it parses back to the same
    message; a dynamic batcher with every field at its default is still present."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from hepml_kit.serve.export import model_config

    for model in [*models, models[0].with_batching(Batching(max_queue_delay_us=0), "m0")]:
        message = model_config(model, "KIND_CPU", 2)
        assert isinstance(message, model_config_pb2.ModelConfig)
        parsed = text_format.Parse(model_config_pbtxt(model, "KIND_CPU", 2), model_config_pb2.ModelConfig())
        assert parsed == message
        assert parsed.HasField("dynamic_batching") == model.batching.dynamic
        assert parsed.instance_group[0].count == 2
        assert parsed.parameters["INFERENCE_MODE"].string_value == "true"


def test_projection_to_n_gpus_is_linear_until_the_network_saturates():
    rows = project_gpus(samples_per_s_per_gpu=1e5, bytes_per_sample=1e4, gpus=(1, 4, 8, 64))
    assert [r["samples_per_s"] for r in rows[:2]] == [1e5, 4e5]
    assert rows[0]["bound"] == "compute"
    heavy = project_gpus(samples_per_s_per_gpu=1e6, bytes_per_sample=1e6, gpus=(4, 8))
    assert heavy[0]["bound"] == "network" and heavy[0]["samples_per_s"] == pytest.approx(1e5)
    assert heavy[1]["samples_per_s"] == pytest.approx(2e5)  # two nodes, two nodes' NICs


def test_bad_server_arguments_fail_before_anything_starts(models):
    from hepml_kit.serve import InferenceServer, serving_processes

    before = len(serving_processes())
    mlp = models[0]
    with pytest.raises(ValueError, match="at least one"):
        InferenceServer([])
    with pytest.raises(ValueError, match="unique"):
        InferenceServer([mlp, mlp])
    with pytest.raises(ValueError, match="letters, digits"):
        InferenceServer([mlp.with_batching(mlp.batching, "jet tagger")])
    with pytest.raises(ValueError, match="not a TCP port"):
        InferenceServer([mlp], http_port=70000)
    with pytest.raises(ValueError, match="max_batch_size"):
        Batching(max_batch_size=0)
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        Batching(max_batch_size=8, preferred_batch_sizes=(16,))
    assert len(serving_processes()) == before
