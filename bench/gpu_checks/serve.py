"""GPU check for serving, for hosts without PyTriton or tritonclient: export the served models to a Triton
model repository, load the TorchScript with `torch.jit.load` onto the GPU (as Triton's libtorch backend
does), check it reproduces eager inference, and time it against batch size: the in-process latency and
throughput a Triton server on that GPU would add its queueing and network to.

    python bench/gpu_check.py --only serve_torchscript
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch

from gpu_checks.common import Check


def _time(fn, repeats: int, sync) -> np.ndarray:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.array(times)


@torch.no_grad()
def gpu_check_serving(
    presets: dict | None = None, device: str | None = None, repeats: int = 30, batch_sizes: dict | None = None
) -> list[dict]:
    """Rows ``{model, preset, batch_size, eager_ms, torchscript_p50_ms, torchscript_p99_ms, samples_per_s,
    max_abs_diff, status}``; FAILED when TorchScript on the device differs from eager.

    `presets` maps a testbed to the presets to check (default: the jet tagger tiny/small/full, the
    tracking GNN tiny/small); `batch_sizes` maps it to the batch sizes to time."""
    from hepml_kit.serve.export import load_torchscript, trace_model
    from hepml_kit.serve.testbeds import served_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    presets = presets or {"jet_transformer": ("tiny", "small", "full"), "tracking_gnn": ("tiny", "small")}
    batch_sizes = {"jet_transformer": (1, 8, 64, 512), "tracking_gnn": (1, 4, 16), **(batch_sizes or {})}
    rows = []
    for name, names_presets in presets.items():
        sizes = batch_sizes[name]
        for preset in names_presets:
            served = served_model(name, preset=preset, device=device, name=f"{name}_{preset}")
            # the model file the repository export writes (the GPU host has no tritonclient for config.pbtxt)
            with tempfile.TemporaryDirectory() as repo:
                trace_model(served).save(f"{repo}/model.pt")
                scripted = load_torchscript(f"{repo}/model.pt", device)
            for b in sizes:
                request = served.example(b, 0)
                args = [torch.from_numpy(request[s.name]).to(device) for s in served.inputs]
                eager = served.module(*args)
                got = scripted(*args)
                diff = max(float((x - y).abs().max()) for x, y in zip(got, eager))
                for _ in range(3):
                    scripted(*args)
                sync()
                t_script = _time(lambda f=scripted, a=args: f(*a), repeats, sync)
                t_eager = _time(lambda f=served.module, a=args: f(*a), repeats, sync)
                rows.append(
                    {
                        "device": device,
                        "model": name,
                        "preset": preset,
                        "batch_size": b,
                        "eager_ms": float(np.median(t_eager) * 1e3),
                        "torchscript_p50_ms": float(np.percentile(t_script, 50) * 1e3),
                        "torchscript_p99_ms": float(np.percentile(t_script, 99) * 1e3),
                        "samples_per_s": float(b / np.median(t_script)),
                        "max_abs_diff": diff,
                        "status": "ok" if diff < 1e-3 else "FAILED",
                    }
                )
    return rows


CHECKS = [Check("serve_torchscript", gpu_check_serving, budget_s=60, cuda_only=True)]
