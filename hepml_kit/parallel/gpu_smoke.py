"""One-GPU pass (world size 1, nccl) of every data-parallel strategy, for the GPU check script.

`gpu_check_parallel()` initialises a one-rank nccl process group (unless one exists), trains the same
testbed model under each strategy of `hepml_kit.parallel.compare` plus Lightning, checks each against the
one-process reference (losses within the stated tolerance), checks an FSDP2 checkpoint resume is exact,
and returns one row per strategy: ``{"name", "ok", "samples_per_s", "peak_mb", "state_mb", "detail"}``.
Communication is real (nccl collectives over one rank) but trivial: this checks the code paths and the
single-device throughput, not scaling.

    python -m hepml_kit.parallel.gpu_smoke        # prints the rows, exits 1 if any failed
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["gpu_check_parallel"]

# fp32 on GPU: cuDNN/cuBLAS may pick other kernels per wrapper, so not bitwise; bf16 has 8 mantissa bits
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def _init_one_rank() -> bool:
    """A one-rank group: nccl on GPU 0 (gloo without a GPU); returns True when this call created it."""
    if dist.is_initialized():
        return False
    from hepml_kit.launch.rendezvous import free_port

    kwargs = {}
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        kwargs["device_id"] = torch.device("cuda", 0)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, **kwargs)
    return True


def _row(name: str, fn) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        row = {"name": name, **fn()}
    except Exception as e:  # a failing strategy is a row, not the end of the check
        row = {"name": name, "ok": False, "samples_per_s": float("nan"), "peak_mb": float("nan"),
               "state_mb": float("nan"), "detail": f"{type(e).__name__}: {e}".splitlines()[0][:300],
               "traceback": traceback.format_exc()}
    row["seconds"] = time.perf_counter() - t0
    return row


def _max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def gpu_check_parallel(testbed: str = "jet_transformer", preset: str = "small", steps: int = 20,
                       global_batch: int = 256, lr: float = 1e-3,
                       require_gpu: bool = True) -> list[dict[str, Any]]:
    """Run each strategy for `steps` steps on GPU 0 and compare with the one-process reference.

    ``require_gpu=False`` runs the same pass on CPU with gloo (to check this function itself)."""
    if require_gpu and not torch.cuda.is_available():
        raise RuntimeError("gpu_check_parallel needs a CUDA GPU")
    from hepml_kit.parallel.compare import STRATEGIES, train_strategy

    created = _init_one_rank()
    run = dict(testbed=testbed, preset=preset, steps=steps, global_batch=global_batch, lr=lr, seed=0)
    rows: list[dict[str, Any]] = []
    try:
        reference = train_strategy("single", **run)

        def summarise(res, precision="fp32"):
            err = _max_rel(res["losses"], reference["losses"])
            prof = res["profile"]
            return {"ok": err <= TOLERANCE[precision], "samples_per_s": res["samples_per_s"],
                    "peak_mb": prof.get("peak_memory_bytes", float("nan")) / 2**20,
                    "state_mb": res.get("state_bytes", {}).get("total", float("nan")) / 2**20,
                    "detail": f"max relative loss difference {err:.1e} "
                              f"(tolerance {TOLERANCE[precision]:.0e})"}

        rows.append({"name": "single", "seconds": 0.0, **summarise(reference)})
        for strategy in STRATEGIES[1:]:
            rows.append(_row(strategy, lambda s=strategy: summarise(
                train_strategy(s, **run), "bf16" if s.endswith("bf16") else "fp32")))

        def checkpoint_resume():
            with tempfile.TemporaryDirectory() as d:
                full = train_strategy("fsdp", **run)
                train_strategy("fsdp", **run, checkpoint_dir=d, stop_after=steps // 2)
                resumed = train_strategy("fsdp", **run, checkpoint_dir=d, resume=True)
            worst = max(float((resumed["params"][k] - p).abs().max()) for k, p in full["params"].items())
            return {"ok": worst <= 1e-5, "samples_per_s": resumed["samples_per_s"],
                    "peak_mb": resumed["profile"].get("peak_memory_bytes", float("nan")) / 2**20,
                    "state_mb": resumed["state_bytes"]["total"] / 2**20,
                    "detail": f"fsdp stop at {steps // 2}, resume: max parameter difference {worst:.1e}"}

        rows.append(_row("checkpoint_fsdp_resume", checkpoint_resume))
    finally:
        if created:
            dist.destroy_process_group()

    def lightning():
        from hepml_kit.parallel.lightning_ddp import fit_lightning

        # Lightning makes its own process group: DDP over one device when none exists, plain otherwise
        with tempfile.TemporaryDirectory() as d:
            res = fit_lightning(testbed, preset=preset, steps=steps, global_batch=global_batch, lr=lr, seed=0,
                                devices=1, strategy="ddp" if not dist.is_initialized() else "auto",
                                accelerator="gpu" if torch.cuda.is_available() else "cpu", out_dir=d)
        return summarise(res)

    rows.append(_row("lightning_ddp", lightning))
    return rows


def main() -> int:
    rows = gpu_check_parallel()
    for r in rows:
        print(f"{r['name']:<24} {'ok' if r['ok'] else 'FAIL':<5} {r['samples_per_s']:>12.1f} samples/s "
              f"peak {r['peak_mb']:>9.1f} MB  state {r['state_mb']:>8.3f} MB  {r['detail']}")
        if not r["ok"] and "traceback" in r:
            print(r["traceback"], file=sys.stderr)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    raise SystemExit(main())
