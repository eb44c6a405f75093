"""The production path: the same served models as a Triton model repository (TorchScript + ``config.pbtxt``)
that the official Triton container (``nvcr.io/nvidia/tritonserver:<yy.mm>-py3``) serves unchanged, e.g. on
Perlmutter with podman-hpc or shifter, one server per GPU (docs/serving.md).

    repository/
      jet_transformer/
        config.pbtxt          platform "pytorch_libtorch", inputs/outputs, dynamic_batching, instance_group
        1/model.pt            torch.jit.trace of the ServedModel's module (wrapper + model)

Inputs carry the forward-argument names and outputs the libtorch backend's ``<name>__<index>`` names, the
same names PyTriton serves, so one client (`client.py`) talks to both. The padded-graph and jet wrappers
(`encoding.py`) are traced too: the container receives exactly the wire encoding PyTriton receives.

Tracing is checked, not trusted: `trace_model` re-runs the traced module on a request of another batch size
and compares it with eager PyTorch (a trace that baked in a shape or a branch fails there).

Taught in curriculum/08_inference_service.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hepml_kit.serve.served_model import ServedModel

__all__ = [
    "check_model_repository",
    "export_model_repository",
    "load_torchscript",
    "model_config",
    "model_config_pbtxt",
    "read_model_config",
    "trace_model",
]

_KINDS = ("KIND_GPU", "KIND_CPU")


@contextlib.contextmanager
def _quiet_torchscript():
    """torch >= 2.10 marks torch.jit deprecated (for torch.export); Triton's libtorch backend still loads
    TorchScript, so we keep using it and silence only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def load_torchscript(path: str | Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """`torch.jit.load` a repository's ``model.pt`` onto `device`, as Triton's libtorch backend does."""
    with _quiet_torchscript():
        return torch.jit.load(str(path), map_location=device).eval()


def _args(
    model: ServedModel, request: dict[str, np.ndarray], device: str = "cpu"
) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(request[s.name])).to(device) for s in model.inputs)


def _max_abs_diff(a, b) -> float:
    return max(float((x.float() - y.float()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


@torch.no_grad()
def trace_model(
    model: ServedModel, batch: int = 2, check_batch: int = 5, atol: float = 1e-4
) -> torch.jit.ScriptModule:
    """`torch.jit.trace` of the served module on CPU, checked against eager on another batch size."""
    module = copy.deepcopy(model.module).cpu().eval()
    names = list(inspect.signature(module.forward).parameters)
    if names != [s.name for s in model.inputs]:
        raise ValueError(
            f"{model.name}: forward takes {names} but the inputs are {[s.name for s in model.inputs]}; "
            "the libtorch backend matches inputs to forward arguments by name"
        )
    with _quiet_torchscript():
        traced = torch.jit.trace(module, _args(model, model.example(batch, 0)), check_trace=False)
    check = _args(model, model.example(check_batch, 1))
    diff = _max_abs_diff(traced(*check), module(*check))
    if not diff <= atol:
        raise RuntimeError(
            f"traced {model.name} differs from eager by {diff:.3g} on a batch of {check_batch} "
            "(data-dependent control flow or a shape baked into the trace)"
        )
    return traced


def model_config(model: ServedModel, instance_kind: str = "KIND_GPU", instances: int = 1):
    """The model's configuration as Triton's own ``ModelConfig`` protobuf message (from `tritonclient`), for
    the libtorch backend: inputs/outputs, max batch, dynamic batching, instance group, inference mode."""
    from tritonclient.grpc import model_config_pb2 as pb

    if instance_kind not in _KINDS:
        raise ValueError(f"instance_kind must be one of {_KINDS}, got {instance_kind!r}")
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")

    def tensors(specs, message):
        return [
            message(name=s.name, data_type=pb.DataType.Value(f"TYPE_{s.datatype}"), dims=s.shape)
            for s in specs
        ]

    b = model.batching
    config = pb.ModelConfig(
        name=model.name,
        platform="pytorch_libtorch",
        max_batch_size=b.max_batch_size,
        input=tensors(model.inputs, pb.ModelInput),
        output=tensors(model.outputs, pb.ModelOutput),
        instance_group=[
            pb.ModelInstanceGroup(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
        ],
    )
    if b.dynamic:
        config.dynamic_batching.SetInParent()  # present even with every field at its default
        config.dynamic_batching.max_queue_delay_microseconds = b.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(b.preferred_batch_sizes)
    config.parameters["INFERENCE_MODE"].string_value = "true"
    return config


def model_config_pbtxt(model: ServedModel, instance_kind: str = "KIND_GPU", instances: int = 1) -> str:
    """The model's ``config.pbtxt``: `model_config` written by protobuf's own text format."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(model, instance_kind, instances))


def export_model_repository(
    models: Sequence[ServedModel],
    repository: str | Path,
    *,
    instance_kind: str = "KIND_GPU",
    instances: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write ``repository/<name>/config.pbtxt`` and ``repository/<name>/1/model.pt`` for every model.

    `instance_kind` ``"KIND_GPU"`` (the container on a GPU node: each server sees the GPUs it is given) or
    ``"KIND_CPU"``. An existing model folder is an error unless `overwrite`.
    """
    repository = Path(repository)
    for model in models:
        folder = repository / model.name
        if folder.exists():
            if not overwrite:
                raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
            shutil.rmtree(folder)
    for model in models:
        config = model_config_pbtxt(model, instance_kind, instances)  # validates before any file is written
        traced = trace_model(model)
        folder = repository / model.name
        (folder / "1").mkdir(parents=True)
        traced.save(str(folder / "1" / "model.pt"))
        (folder / "config.pbtxt").write_text(config)
    return repository


def read_model_config(path: str | Path):
    """Parse a ``config.pbtxt`` with Triton's own ModelConfig protobuf schema (from `tritonclient`); a
    misspelt field or a malformed value raises ``google.protobuf.text_format.ParseError``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def check_model_repository(
    repository: str | Path, models: Sequence[ServedModel] = (), atol: float = 1e-4, device: str = "cpu"
) -> list[dict]:
    """Check every model folder: config parses and names the folder, TorchScript loads with `torch.jit.load`,
    its forward arguments are the config's inputs in order, and (for the `models` given) it reproduces
    in-process inference on an example request. Returns one row per model; raises on the first problem."""
    repository = Path(repository)
    by_name = {m.name: m for m in models}
    folders = sorted(p for p in repository.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"no model folders in {repository}")
    rows = []
    for folder in folders:
        config = read_model_config(folder / "config.pbtxt")
        if config.name != folder.name:
            raise ValueError(f"{folder}/config.pbtxt names model {config.name!r}, folder is {folder.name!r}")
        if config.platform != "pytorch_libtorch":
            raise ValueError(f"{folder.name}: platform {config.platform!r}, expected 'pytorch_libtorch'")
        scripted = load_torchscript(folder / "1" / "model.pt", device)
        arguments = [a.name for a in scripted.forward.schema.arguments[1:]]  # [0] is self
        inputs = [i.name for i in config.input]
        if arguments != inputs:
            raise ValueError(
                f"{folder.name}: TorchScript forward takes {arguments}, config.pbtxt lists {inputs}"
            )
        for k, out in enumerate(config.output):
            if not out.name.endswith(f"__{k}"):
                raise ValueError(f"{folder.name}: output {out.name!r} must end in '__{k}' (libtorch naming)")
        row = {
            "model": folder.name,
            "inputs": inputs,
            "outputs": [o.name for o in config.output],
            "max_batch_size": config.max_batch_size,
            "dynamic_batching": config.HasField("dynamic_batching"),
        }
        if folder.name in by_name:
            served = by_name[folder.name]
            request = served.example(3, 7)
            with torch.no_grad():
                got = scripted(*_args(served, request, device))
            want = served.run(request)
            row["max_abs_diff"] = _max_abs_diff(
                got, [torch.from_numpy(want[s.name]).to(device) for s in served.outputs]
            )
            if not row["max_abs_diff"] <= atol:
                raise ValueError(
                    f"{folder.name}: TorchScript differs from in-process inference by "
                    f"{row['max_abs_diff']:.3g}"
                )
        rows.append(row)
    return rows
