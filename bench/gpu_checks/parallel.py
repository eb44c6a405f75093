"""GPU checks of hepml_kit.parallel: a one-GPU pass (world size 1, nccl) of every strategy beside its
one-process reference.

- ``parallel_dp_fsdp``: each data-parallel strategy of `hepml_kit.parallel.compare`, an FSDP2 checkpoint
  resume, and Lightning DDP; losses within `TOLERANCE` of the reference.
- ``parallel_model``: each model-parallel strategy of `hepml_kit.parallel.runner`; losses equal the
  reference's (rtol 1e-4: the same kernels, TF32 off).

Communication is real (nccl collectives over one rank) but trivial: these check the code paths and the
single-device throughput, not scaling. Every run goes through `hepml_kit.parallel.driver.train`.
Multi-GPU: ``hepml-kit launch --nprocs 4`` a script calling it.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

from gpu_checks.common import Check, one_rank_group

# fp32 on GPU: cuDNN/cuBLAS may pick other kernels per wrapper, so not bitwise; bf16 has 8 mantissa bits
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def _max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def _row(name: str, fn) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        row = {"name": name, **fn()}
    except Exception as e:  # a failing strategy is a row, not the end of the check
        row = {"name": name, "status": "FAILED", "detail": f"{type(e).__name__}: {e}".splitlines()[0][:300],
               "traceback": traceback.format_exc()}
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def gpu_check_parallel(testbed: str = "jet_transformer", preset: str = "small", steps: int = 20,
                       global_batch: int = 256, lr: float = 1e-3, require_gpu: bool = True) -> list[dict]:
    """Each data-parallel strategy for `steps` steps on GPU 0 against the one-process reference, rows
    ``{name, status, samples_per_s, peak_mb, state_mb, detail}``; ``require_gpu=False`` runs it on CPU/gloo.
    """
    if require_gpu and not torch.cuda.is_available():
        raise RuntimeError("gpu_check_parallel needs a CUDA GPU")
    from hepml_kit.parallel.compare import DATA_PARALLEL
    from hepml_kit.parallel.driver import RunSpec, train

    spec = RunSpec(testbed, preset=preset, steps=steps, global_batch=global_batch, lr=lr, seed=0)
    rows: list[dict[str, Any]] = []
    with one_rank_group():
        reference = train(spec, "single")

        def summarise(res, precision="fp32"):
            err = _max_rel(res["losses"], reference["losses"])
            prof = res["profile"]
            return {"status": "ok" if err <= TOLERANCE[precision] else "FAILED",
                    "samples_per_s": res["samples_per_s"],
                    "peak_mb": prof.get("peak_memory_bytes", float("nan")) / 2**20,
                    "state_mb": res.get("state_bytes", {}).get("total", float("nan")) / 2**20,
                    "detail": f"max relative loss difference {err:.1e} "
                              f"(tolerance {TOLERANCE[precision]:.0e})"}

        rows.append({"name": "single", "seconds": 0.0, **summarise(reference)})
        for strategy in DATA_PARALLEL[1:]:
            rows.append(_row(strategy, lambda s=strategy: summarise(
                train(spec, s), "bf16" if s.endswith("bf16") else "fp32")))

        def checkpoint_resume():
            with tempfile.TemporaryDirectory() as d:
                full = train(spec, "fsdp")
                train(spec.replace(checkpoint_dir=d, stop_after=steps // 2), "fsdp")
                resumed = train(spec.replace(checkpoint_dir=d, resume=True), "fsdp")
            worst = max(float((resumed["params"][k] - p).abs().max()) for k, p in full["params"].items())
            return {"status": "ok" if worst <= 1e-5 else "FAILED", "samples_per_s": resumed["samples_per_s"],
                    "peak_mb": resumed["profile"].get("peak_memory_bytes", float("nan")) / 2**20,
                    "state_mb": resumed["state_bytes"]["total"] / 2**20,
                    "detail": f"fsdp stop at {steps // 2}, resume: max parameter difference {worst:.1e}"}

        rows.append(_row("checkpoint_fsdp_resume", checkpoint_resume))

    def lightning():
        # Lightning makes its own process group: DDP over one device when none exists, plain otherwise
        with tempfile.TemporaryDirectory() as d:
            res = train(spec, "lightning", devices=1,
                        lightning_strategy="ddp" if not dist.is_initialized() else "auto",
                        accelerator="gpu" if torch.cuda.is_available() else "cpu", out_dir=d)
        return summarise(res)

    rows.append(_row("lightning_ddp", lightning))
    return rows


MODEL_PARALLEL_RUNS = (  # (strategy, run_strategy keyword arguments, the one-process reference's arguments)
    ("tensor", {}, {}),
    ("megatron", {}, {}),
    ("gpipe", {"micro_batches": 4, "num_layers": 4}, {"micro_batches": 4, "num_layers": 4}),
    ("1f1b", {"micro_batches": 4, "num_layers": 4}, {"micro_batches": 4, "num_layers": 4}),
    ("graph", {"global_batch": 4}, {"global_batch": 4}),
    ("fsdp_tp", {"dims": {"dp": 1, "tp": 1}}, {}),
    ("dp_pp", {"dims": {"dp": 1, "pp": 1}, "micro_batches": 4, "num_layers": 4},
     {"micro_batches": 4, "num_layers": 4}),
)


def gpu_check_model_parallel(preset: str = "small", steps: int = 6, global_batch: int = 256,
                             device: str | None = None) -> list[dict]:
    """One pass of every model-parallel strategy on one device (world size 1), each beside its one-process
    reference. Rows ``{name, status, throughput, unit, peak_memory_bytes, reference_throughput,
    reference_peak_memory_bytes, max_loss_rel_diff}``; FAILED unless the losses equal the reference's (rtol
    1e-4). ``device="cpu"`` runs the same pass with gloo."""
    from hepml_kit.parallel.driver import RunSpec, train

    device = torch.device(device or "cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("gpu_check_model_parallel needs a CUDA GPU (or device='cpu' for a CPU pass)")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows, references = [], {}
    with one_rank_group(device):
        for strategy, kwargs, ref_kwargs in MODEL_PARALLEL_RUNS:
            testbed = "tracking_gnn" if strategy == "graph" else "jet_transformer"
            spec = RunSpec(testbed, preset=preset, steps=steps, global_batch=global_batch, lr=0.05,
                           return_params=False, timing_steps=0)  # run_strategy's defaults
            key = (testbed, tuple(sorted(ref_kwargs.items())))
            if key not in references:
                references[key] = train(spec.replace(**ref_kwargs), "single", reference="model_parallel")
            ref = references[key]
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            res = train(spec.replace(**kwargs), strategy)
            diff = _max_rel(res["losses"], ref["losses"])
            rows.append({"name": strategy, "status": "ok" if diff <= 1e-4 else "FAILED",
                         "throughput": res["samples_per_s"], "unit": f"{res['profile']['unit']}/s",
                         "peak_memory_bytes": res["profile"].get("peak_memory_bytes", float("nan")),
                         "reference_throughput": ref["samples_per_s"],
                         "reference_peak_memory_bytes": ref["profile"].get("peak_memory_bytes", float("nan")),
                         "max_loss_rel_diff": diff})
    return rows


CHECKS = [Check("parallel_dp_fsdp", gpu_check_parallel, budget_s=60, cuda_only=True),
          Check("parallel_model", gpu_check_model_parallel, budget_s=60, cuda_only=True)]
