"""Inference as a service: the testbed models behind a real NVIDIA Triton Inference Server.

* `server.py`    — `InferenceServer`: Triton through PyTriton, dynamic batching, loopback, clean shutdown,
                   a watchdog that reports the server's status truthfully and restarts it when it dies
* `served_model.py` — `ServedModel` (a module behind named tensors), `Batching`, `model_limits`
* `guard.py`     — `RequestGuard`: refuses HTTP requests beyond a model's stated shape, batch and bytes before
                   Triton sees them; `GuardProcess` runs it in a process of its own
* `encoding.py`  — how variable-size jets and graphs travel in fixed-shape requests
* `testbeds.py`  — the served models: a small MLP, the jet flavour tagger, the tracking GNN
* `client.py`    — `ServiceClient`: KServe v2 over HTTP or gRPC, for PyTriton, the Triton container or any v2
server
* `loadtest.py`  — latency percentiles and throughput vs concurrency and batch size; in-process baseline;
plots
* `export.py`    — the production path: a Triton model repository (TorchScript + config.pbtxt)

Importing this package needs neither PyTriton nor tritonclient (they are imported when used). Datatype names
and ``config.pbtxt`` come from tritonclient's own helpers (``np_to_triton_dtype``, the ``ModelConfig``
protobuf message), so the export needs tritonclient and protobuf (the ``serve`` extra) besides torch; the GPU
check (bench/gpu_checks/serve.py) times TorchScript alone. Taught in curriculum/08_inference_service;
running the Triton container on Perlmutter: docs/serving.md.
"""

from hepml_kit.serve.client import ServiceClient, ServiceError
from hepml_kit.serve.encoding import GraphEncoding, JetEncoding, TensorSpec
from hepml_kit.serve.export import (
    check_model_repository,
    export_model_repository,
    model_config,
    model_config_pbtxt,
    read_model_config,
)
from hepml_kit.serve.guard import ModelLimits, RequestGuard, RequestRefused
from hepml_kit.serve.loadtest import (
    LoadResult,
    client_process,
    in_process_baseline,
    load_test,
    plot_load_test,
    project_gpus,
    results_table,
    sweep,
)
from hepml_kit.serve.served_model import Batching, ServedModel, model_limits
from hepml_kit.serve.server import InferenceServer, serving_processes, start_server
from hepml_kit.serve.testbeds import jet_tagger_model, mlp_model, served_model, tracking_gnn_model

__all__ = [
    "Batching",
    "GraphEncoding",
    "InferenceServer",
    "JetEncoding",
    "LoadResult",
    "ModelLimits",
    "RequestGuard",
    "RequestRefused",
    "ServedModel",
    "ServiceClient",
    "ServiceError",
    "TensorSpec",
    "check_model_repository",
    "client_process",
    "export_model_repository",
    "in_process_baseline",
    "jet_tagger_model",
    "load_test",
    "mlp_model",
    "model_config",
    "model_config_pbtxt",
    "model_limits",
    "plot_load_test",
    "project_gpus",
    "read_model_config",
    "results_table",
    "served_model",
    "serving_processes",
    "start_server",
    "sweep",
    "tracking_gnn_model",
]
