"""Where am I: a NERSC Perlmutter or ALCF Polaris node, a Slurm or PBS allocation, or a plain machine; which
devices and torch.distributed backends are usable; which optional parts of the kit are installed.

Facilities are data (`SITES`, one `Site` each): scheduler, launcher, GPUs per node, interconnect (the
projection's `Machine`), recommended NCCL/OFI environment, filesystems, environment activation and where
JupyterHub looks for kernels. Figures cite the facility's documentation; Aurora is described but untested.

`hepml-kit doctor` prints this as a table and exits non-zero, with a one-line fix, when a required part
is missing. Lessons call `device()` to use the GPUs when present.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import socket
import sys
from dataclasses import dataclass, field

__all__ = [
    "SITES",
    "Site",
    "backends",
    "detect_site",
    "device",
    "devices",
    "doctor",
    "gpu_count",
    "on_gpu",
    "optional_parts",
    "site_name",
]


@dataclass(frozen=True)
class Site:
    """One facility's GPU partition, as the kit needs to know it."""

    name: str
    facility: str
    scheduler: str  # "slurm" | "pbs"
    launcher: str  # how ranks start: "srun" | "mpiexec"
    gpus_per_node: int
    gpu: str
    cpu: str
    interconnect: str
    machine: str | None  # key of hepml_kit.profile.projection.MACHINES for the scaling projection
    dist_backend: str  # torch.distributed backend on this site's GPUs
    env: dict = field(default_factory=dict)  # recommended NCCL / libfabric (OFI) settings
    filesystems: dict = field(default_factory=dict)
    activate: str = ""  # shell lines that give a Python with torch
    jupyter_kernels: str = "~/.local/share/jupyter/kernels"
    hostnames: str = r"(?!)"  # regex for login/compute node names
    sources: str = ""


SITES = {
    "perlmutter": Site(
        name="perlmutter", facility="NERSC", scheduler="slurm", launcher="srun", gpus_per_node=4,
        gpu="NVIDIA A100 (40/80 GB, NVLink 3)", cpu="1x AMD EPYC 7763 (64 cores)",
        interconnect="HPE Slingshot-11, 4 NICs per GPU node (200 Gb/s each)", machine="perlmutter",
        dist_backend="nccl",
        env={"NCCL_NET_GDR_LEVEL": "PHB", "NCCL_SOCKET_IFNAME": "hsn", "NCCL_CROSS_NIC": "1",
             "FI_CXI_DISABLE_HOST_REGISTER": "1", "FI_MR_CACHE_MONITOR": "userfaultfd"},
        filesystems={"home": "$HOME", "scratch": "$SCRATCH (/pscratch, Lustre)",
                     "cfs": "/global/cfs/cdirs/PROJECT"},
        activate="module load pytorch   # or: module load conda; conda activate $SCRATCH/envs/hepml-kit",
        jupyter_kernels="$HOME/.local/share/jupyter/kernels (NERSC JupyterHub, jupyter.nersc.gov)",
        hostnames=r"(?!)",  # NERSC sets NERSC_HOST=perlmutter on every node: no host-name guessing
        sources="docs.nersc.gov: Perlmutter architecture, Running jobs, Using "
                "Python/PyTorch, Jupyter kernels"),
    "polaris": Site(
        name="polaris", facility="ALCF", scheduler="pbs", launcher="mpiexec", gpus_per_node=4,
        gpu="NVIDIA A100 SXM4 40 GB (NVLink 3)", cpu="1x AMD EPYC 7543P (32 cores)",
        interconnect="HPE Slingshot-11, 2 NICs per node (200 Gb/s each)", machine="polaris",
        dist_backend="nccl",
        env={"NCCL_NET_GDR_LEVEL": "PHB", "NCCL_CROSS_NIC": "1", "NCCL_COLLNET_ENABLE": "1",
             "NCCL_NET": "AWS Libfabric", "FI_CXI_DISABLE_HOST_REGISTER": "1",
             "FI_MR_CACHE_MONITOR": "userfaultfd", "FI_CXI_DEFAULT_CQ_SIZE": "131072"},
        filesystems={"home": "/home/$USER",
                     "eagle": "/eagle/PROJECT (Lustre; PBS: -l filesystems=home:eagle)"},
        activate="module use /soft/modulefiles; module load conda; conda activate base",
        jupyter_kernels="~/.local/share/jupyter/kernels (ALCF JupyterHub, jupyter.alcf.anl.gov)",
        hostnames=r"^(polaris-login-\d+|x3\d{3}c\d+s\d+b\d+n\d+)(\..*)?$",
        sources="docs.alcf.anl.gov: Polaris machine overview, Running jobs, NCCL (aws-ofi-nccl), JupyterHub"),
    "aurora": Site(
        name="aurora", facility="ALCF", scheduler="pbs", launcher="mpiexec", gpus_per_node=6,
        gpu="Intel Data Center GPU Max 1550 (2 tiles each)", cpu="2x Intel Xeon CPU Max 9470C",
        interconnect="HPE Slingshot-11, 8 NICs per node", machine=None, dist_backend="xccl",
        env={}, filesystems={"home": "/home/$USER", "flare": "/lus/flare/projects/PROJECT"},
        activate="module load frameworks", hostnames=r"^(aurora-uan-\d+|x4\d{3}c\d+s\d+b\d+n\d+)(\..*)?$",
        sources="docs.alcf.anl.gov: Aurora machine overview (untested by the kit: no Aurora access)"),
}


def detect_site(env: dict | None = None, hostname: str | None = None) -> Site | None:
    """The `Site` this process runs on (NERSC_HOST, a PBS job id naming the machine, or the host name)."""
    env = os.environ if env is None else env
    hostname = socket.gethostname() if hostname is None else hostname
    if env.get("NERSC_HOST") == "perlmutter":
        return SITES["perlmutter"]
    for site in SITES.values():
        if site.scheduler == "pbs" and site.name in env.get("PBS_JOBID", ""):
            return site
    return next((s for s in SITES.values() if re.match(s.hostnames, hostname)), None)

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


def site_name(env: dict | None = None, hostname: str | None = None) -> str:
    env = os.environ if env is None else env
    site = detect_site(env, hostname)
    job = (f"PBS job {env['PBS_JOBID']}" if "PBS_JOBID" in env else
           f"Slurm job {env['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in env else None)
    if site is not None:
        return f"{site.facility} {site.name.capitalize()} ({job or 'login/Jupyter node'})"
    if "SLURM_JOB_ID" in env:
        return f"Slurm allocation (job {env['SLURM_JOB_ID']}, {env.get('SLURM_JOB_NUM_NODES', '?')} node(s))"
    if job:
        return f"PBS allocation (job {env['PBS_JOBID']})"
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
        "qsub on PATH": shutil.which("qsub") is not None,
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
        rows.append(_Row("devices",
                         ", ".join(f"cuda:{d['index']} {d['name']} {d['memory_GiB']} GiB" for d in gpus)
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
