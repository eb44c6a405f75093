"""Device peak FLOP/s, the denominator of MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM §B).

GPUs come from a table of vendor datasheet figures (dense, i.e. without 2:4 sparsity); a CPU, or a GPU
missing from the table, gets a measured matrix-multiply peak, cached per process.

Taught in curriculum/01_single_device.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

__all__ = ["DEVICE_PEAKS", "DevicePeak", "device_peak", "lookup_gpu", "measure_matmul_flops", "precision_of"]

TERA = 1e12


@dataclass(frozen=True)
class DevicePeak:
    """Peak dense throughput per precision (FLOP/s), memory size (bytes) and bandwidth (B/s)."""

    name: str
    flops: dict  # precision ("fp32" | "tf32" | "bf16" | "fp16") -> FLOP/s
    memory_bytes: float
    memory_bw: float
    source: str
    measured: bool = False


DEVICE_PEAKS: dict[str, DevicePeak] = {
    # NVIDIA A100 Tensor Core GPU datasheet (2021, nvidia.com/a100): FP32 19.5 TF, TF32 156 TF,
    # BF16/FP16 312 TF dense (the 312/624 figures with an asterisk are 2:4 sparse); HBM2 1,555 GB/s (40 GB),
    # HBM2e 2,039 GB/s (80 GB SXM). Perlmutter's GPU nodes carry the 40 GB SXM4 part (some 80 GB).
    "A100-40GB": DevicePeak(
        "A100-40GB", {"fp32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA},
        40e9, 1555e9, "NVIDIA A100 datasheet (SXM4 40GB)"),
    "A100-80GB": DevicePeak(
        "A100-80GB", {"fp32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA},
        80e9, 2039e9, "NVIDIA A100 datasheet (SXM4 80GB)"),
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM5 FP32 67 TF, TF32 989 TF and BF16 1,979 TF *with*
    # sparsity, i.e. 494.5 / 989.5 TF dense; HBM3 3.35 TB/s, 80 GB.
    # PCIe: FP32 51, TF32 378, BF16 756 dense, 2 TB/s.
    "H100-SXM": DevicePeak(
        "H100-SXM", {"fp32": 67 * TERA, "tf32": 494.5 * TERA, "bf16": 989.5 * TERA, "fp16": 989.5 * TERA},
        80e9, 3350e9, "NVIDIA H100 datasheet (SXM5)"),
    "H100-PCIe": DevicePeak(
        "H100-PCIe", {"fp32": 51 * TERA, "tf32": 378 * TERA, "bf16": 756 * TERA, "fp16": 756 * TERA},
        80e9, 2000e9, "NVIDIA H100 datasheet (PCIe)"),
    # NVIDIA H200 Tensor Core GPU datasheet (2024): same Hopper compute as H100 SXM (FP32 67 TF, BF16 1,979 TF
    # sparse = 989.5 dense), 141 GB HBM3e at 4.8 TB/s.
    "H200": DevicePeak(
        "H200", {"fp32": 67 * TERA, "tf32": 494.5 * TERA, "bf16": 989.5 * TERA, "fp16": 989.5 * TERA},
        141e9, 4800e9, "NVIDIA H200 datasheet (SXM)"),
}


def lookup_gpu(device_name: str) -> DevicePeak | None:
    """Table entry for a CUDA device name (``torch.cuda.get_device_name()``), or None if unknown."""
    n = device_name.upper()
    if "H200" in n:
        return DEVICE_PEAKS["H200"]
    if "H100" in n:
        return DEVICE_PEAKS["H100-PCIe" if "PCIE" in n else "H100-SXM"]
    if "A100" in n:
        return DEVICE_PEAKS["A100-80GB" if "80GB" in n.replace(" ", "") else "A100-40GB"]
    return None


def precision_of(dtype: torch.dtype | str | None, device_type: str) -> str:
    """The peak-table precision a compute dtype runs at: fp32 matmuls on CUDA count as tf32 when PyTorch
    allows TF32 (``torch.set_float32_matmul_precision("high")``)."""
    if isinstance(dtype, str):
        key = dtype.lower().replace("float", "fp").replace("bfloat16", "bf16")
        aliases = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "bfp16": "bf16", "fp16": "fp16",
                   "half": "fp16"}
        if key not in aliases:
            raise ValueError(f"unknown precision {dtype!r}; use fp32, tf32, bf16 or fp16")
        return aliases[key]
    if dtype in (None, torch.float32):
        if device_type == "cuda" and torch.get_float32_matmul_precision() != "highest":
            return "tf32"
        return "fp32"
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    raise ValueError(f"no peak for dtype {dtype}")


_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def measure_matmul_flops(device: str = "cpu", precision: str = "fp32", n: int = 768, repeats: int = 6,
                         threads: int | None = None) -> float:
    """Best-of-`repeats` FLOP/s of an n×n×n matrix product on `device` (cached per process).

    On a CPU shared with other work this is what the process can get now, which is the honest
    denominator for MFU there. Set ``HEPML_KIT_CPU_PEAK_FLOPS`` to pin the CPU figure instead.
    """
    if device == "cpu" and os.environ.get("HEPML_KIT_CPU_PEAK_FLOPS"):
        return float(os.environ["HEPML_KIT_CPU_PEAK_FLOPS"])
    dtype = _TORCH_DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeats + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        if i >= 2:  # two warm-ups
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def device_peak(device: torch.device | str | None = None,
                dtype: torch.dtype | str | None = torch.float32) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for `device` at compute `dtype`.

    Known GPUs use `DEVICE_PEAKS`; anything else a cached measured matmul peak.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = precision_of(dtype, device.type)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = lookup_gpu(name)
        if entry is not None:
            return entry.flops[precision], f"{entry.source}, {precision} dense"
        dev = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
        return measure_matmul_flops(dev, precision, n=4096), f"measured {precision} matmul on {name}"
    threads = torch.get_num_threads()
    peak = measure_matmul_flops("cpu", precision, threads=threads)
    return peak, f"measured {precision} matmul on CPU ({threads} threads)"
