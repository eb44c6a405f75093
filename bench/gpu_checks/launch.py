"""GPU check for the launcher's batch path: `hepml-kit launch --nprocs N` (torchrun) with nccl on every GPU
(ipyparallel is not needed, so this runs on a bare GPU host). Run by bench/gpu_check.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

from gpu_checks.common import Check

SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from hepml_kit.launch.script import init_from_env
    backend = init_from_env()
    t = torch.ones(1 << 20, device="cuda" if backend == "nccl" else "cpu") * (dist.get_rank() + 1)
    dist.all_reduce(t)
    torch.cuda.synchronize() if backend == "nccl" else None
    print(f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} backend={backend} "
          f"device={torch.cuda.current_device() if backend == 'nccl' else -1} sum={t[0].item()}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
""")


def gpu_check_launch_nccl(ctx) -> dict:
    import torch

    n = max(1, torch.cuda.device_count()) if ctx.device.type == "cuda" else 1
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "job.py")
        with open(path, "w") as f:
            f.write(SCRIPT)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "hepml_kit.cli", "launch", "--nprocs", str(n), path],
                             capture_output=True, text=True, timeout=120, env={**os.environ})
        seconds = time.perf_counter() - t0
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    expected_sum = n * (n + 1) / 2
    ok = out.returncode == 0 and len(lines) == n and all(f"sum={expected_sum}" in line for line in lines)
    backend = lines[0].split("backend=")[1].split()[0] if lines else "?"
    row = {"ranks": n, "backend": backend, "wall_s": round(seconds, 1),
           "status": "ok" if ok and (backend == "nccl" or ctx.device.type != "cuda") else "FAILED"}
    if not ok:
        row["error"] = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return row


CHECKS = [Check("launch_nccl", gpu_check_launch_nccl, budget_s=40)]
