"""GPU checks of the host: what it offers, and its measured matmul rate against the peak table."""

from __future__ import annotations

import platform

import torch

from gpu_checks.common import Check, Context


def check_env(ctx: Context) -> dict:
    """What the host offers (informational; never fails)."""
    row = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "-"}
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=props.name, sm=f"{props.major}.{props.minor}",
                   mem_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("lightning", "pandas", "matplotlib", "psutil", "ipyparallel", "papermill"):
        try:
            row[dist] = version(dist)
        except PackageNotFoundError:
            row[dist] = "missing"
    return row


def check_matmul_peak(ctx: Context) -> dict:
    """Measured dense matmul rate against the peak table MFU divides by."""
    from hepml_kit.profile import device_peak, measure_matmul_flops

    if ctx.device.type != "cuda":
        return {"cpu_fp32_gflops": round(measure_matmul_flops("cpu", "fp32") / 1e9, 1)}
    n, reps = 8192, 10
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    measured = 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)
    peak, source = device_peak("cuda", torch.bfloat16)
    return {"bf16_tflops": round(measured / 1e12, 1), "table_tflops": round(peak / 1e12, 1),
            "share_of_table": round(measured / peak, 3), "table": source}


CHECKS = [Check("env", check_env, budget_s=10), Check("matmul_peak", check_matmul_peak, budget_s=15)]
