"""Where am I: a NERSC Perlmutter node, a Slurm allocation or a plain machine; which devices and
torch.distributed backends are usable; which optional parts of the kit are installed.

`hepml-kit doctor` prints this as a table and exits non-zero, with a one-line fix, when a required part
is missing. Lessons call `device()` to use the GPUs when present.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass

__all__ = ["device", "gpu_count", "on_gpu", "site_name", "backends", "devices", "optional_parts", "doctor"]

REQUIRED = {"torch": "torch", "numpy": "numpy", "ipyparallel": "ipyparallel", "lightning": "lightning",
            "papermill": "papermill", "h5py": "h5py", "pandas": "pandas", "matplotlib": "matplotlib"}
OPTIONAL = {"nbval": "nbval", "optuna": "optuna", "ray": "ray", "triton (pytriton)": "pytriton",
            "tritonclient": "tritonclient", "jupyterlab": "jupyterlab", "mpi4py": "mpi4py"}
FIX = "make install   (or: pip install -c constraints.txt -e '.[all]')"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def on_gpu() -> bool:
    return gpu_count() > 0


def device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"`` (lessons use this to pick their device)."""
    return "cuda" if on_gpu() else "cpu"


def site_name(env: dict | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("NERSC_HOST") == "perlmutter":
        where = "NERSC Perlmutter"
        return where + (f" (Slurm job {env['SLURM_JOB_ID']})" if "SLURM_JOB_ID" in env else " (login/Jupyter node)")
    if "SLURM_JOB_ID" in env:
        return f"Slurm allocation (job {env['SLURM_JOB_ID']}, {env.get('SLURM_JOB_NUM_NODES', '?')} node(s))"
    return "plain machine"


def devices() -> list[dict]:
    import torch

    out = []
    for i in range(gpu_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_GiB": round(p.total_memory / 2**30, 1)})
    return out


def backends() -> dict[str, bool]:
    import torch.distributed as dist

    return {
        "gloo": dist.is_available() and dist.is_gloo_available(),
        "nccl": dist.is_available() and dist.is_nccl_available() and on_gpu(),
        "mpi": dist.is_available() and dist.is_mpi_available(),
        "mpiexec on PATH": shutil.which("mpiexec") is not None,
        "srun on PATH": shutil.which("srun") is not None,
    }


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def optional_parts() -> dict[str, bool]:
    return {name: _installed(mod) for name, mod in OPTIONAL.items()}


@dataclass
class _Row:
    what: str
    value: str
    ok: bool = True


def doctor() -> int:
    """Print the table; return 1 (with a fix) when something required is missing."""
    rows = [_Row("python", f"{platform.python_version()} ({sys.executable})"), _Row("site", site_name())]
    missing = [name for name, mod in REQUIRED.items() if not _installed(mod)]
    for name in REQUIRED:
        rows.append(_Row(name, "installed" if name not in missing else "MISSING", name not in missing))
    if "torch" not in missing:
        import torch

        rows.append(_Row("torch build", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"))
        gpus = devices()
        rows.append(_Row("devices", ", ".join(f"cuda:{d['index']} {d['name']} {d['memory_GiB']} GiB" for d in gpus)
                         or f"CPU only ({os.cpu_count()} cores)"))
        for name, ok in backends().items():
            rows.append(_Row(f"backend {name}", "yes" if ok else "no"))
    for name, ok in optional_parts().items():
        rows.append(_Row(name, "installed" if ok else "not installed (optional)"))
    width = max(len(r.what) for r in rows)
    for r in rows:
        print(f"{r.what:<{width}}  {r.value}" + ("" if r.ok else "   <-- required"))
    if missing:
        print(f"missing required: {', '.join(missing)}. Fix: {FIX}")
        return 1
    print("doctor: everything required is here")
    return 0
