"""Where each rank learns who it is: rank, world size, local rank and the master address.

The same variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) come from
one of four places: the kit's ipyparallel engines (`Workers`), torchrun, Slurm's srun
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, first node of SLURM_JOB_NODELIST: the NERSC pattern), or
``mpiexec`` in a PBS job (Cray PALS on ALCF Polaris: PMI_RANK/PALS_RANKID, PALS_LOCAL_RANKID, PMI_SIZE, first
host of $PBS_NODEFILE; MPICH's and Open MPI's own variables are read as well).
The backend follows the device: nccl on CUDA GPUs, xccl on Intel XPUs (Aurora; untested on hardware), else
gloo.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

__all__ = [
    "RankInfo",
    "free_port",
    "from_pbs",
    "from_slurm",
    "in_mpiexec_rank",
    "init_process_group",
    "pick_backend",
    "rank_env",
    "routable_address",
]

# (rank, local rank, world size, local world size) as PALS, MPICH (hydra) and Open MPI name them, in that
# order
_MPI_RANK = ("PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK")
_MPI_LOCAL = ("PALS_LOCAL_RANKID", "PMI_LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")
_MPI_SIZE = ("PMI_SIZE", "PALS_SIZE", "OMPI_COMM_WORLD_SIZE")
_MPI_LOCAL_SIZE = ("PMI_LOCAL_SIZE", "PALS_LOCAL_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    def env(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def free_port(host: str = "") -> int:
    """A TCP port free right now (other programs share the machine: never a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def routable_address() -> str:
    """An address of this host that other nodes can reach (falls back to the hostname)."""
    host = socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _first_slurm_node(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    # "nid[001-004],nid010" -> "nid001" without scontrol
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def from_slurm(env: dict[str, str] | None = None, port: int | None = None) -> RankInfo:
    """Map a Slurm task's SLURM_* variables to torch.distributed's (the NERSC recipe)."""
    env = dict(os.environ if env is None else env)
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID") if k not in env]
    if missing:
        raise RuntimeError(f"not inside a Slurm task (missing {', '.join(missing)})")
    world = int(env["SLURM_NTASKS"])
    nnodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    local_world = (int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0)
                   or max(1, world // max(nnodes, 1)))
    master = env.get("MASTER_ADDR") or _first_slurm_node(env.get("SLURM_JOB_NODELIST",
                                                                 env.get("SLURM_NODELIST", "localhost")))
    port = port or int(env.get("MASTER_PORT", 0)) or 29500 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    return RankInfo(int(env["SLURM_PROCID"]), world, int(env["SLURM_LOCALID"]), local_world, master, port)


def _first(env: dict, names: tuple[str, ...]) -> str | None:
    return next((env[n] for n in names if env.get(n, "") != ""), None)


def in_mpiexec_rank(env: dict | None = None) -> bool:
    """True inside a process started by mpiexec (PALS, MPICH or Open MPI)."""
    env = os.environ if env is None else env
    return _first(env, _MPI_RANK) is not None and _first(env, _MPI_SIZE) is not None


def from_pbs(env: dict[str, str] | None = None, port: int | None = None) -> RankInfo:
    """Map an mpiexec rank's variables in a PBS job to torch.distributed's (the ALCF Polaris recipe):
    rank from PMI_RANK/PALS_RANKID, local rank from PALS_LOCAL_RANKID, size from PMI_SIZE, master = first
    host of $PBS_NODEFILE, port from MASTER_PORT or derived from the job id (the same on every rank)."""
    env = dict(os.environ if env is None else env)
    rank, size = _first(env, _MPI_RANK), _first(env, _MPI_SIZE)
    if rank is None or size is None:
        raise RuntimeError("not inside an mpiexec rank (no PMI_RANK/PALS_RANKID and PMI_SIZE)")
    hosts = []
    if env.get("PBS_NODEFILE"):
        try:
            with open(env["PBS_NODEFILE"]) as f:
                hosts = [h.strip() for h in f if h.strip()]
        except OSError as e:
            raise RuntimeError(f"cannot read PBS_NODEFILE {env['PBS_NODEFILE']}: {e}") from None
    nodes = list(dict.fromkeys(hosts)) or ["localhost"]
    world = int(size)
    local = _first(env, _MPI_LOCAL)
    local_size = _first(env, _MPI_LOCAL_SIZE)
    local_world = int(local_size) if local_size else max(1, world // len(nodes))
    local_rank = int(local) if local is not None else int(rank) % local_world
    master = env.get("MASTER_ADDR") or nodes[0]
    job_number = "".join(c for c in env.get("PBS_JOBID", "0").split(".")[0] if c.isdigit()) or "0"
    port = port or int(env.get("MASTER_PORT", 0)) or 29500 + int(job_number) % 20000
    return RankInfo(int(rank), world, local_rank, local_world, master, port)


def rank_env() -> RankInfo:
    """This process's RankInfo from the environment (torchrun, the kit's engines, or Slurm)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        e = os.environ
        return RankInfo(
            int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)),
            int(e.get("LOCAL_WORLD_SIZE", e["WORLD_SIZE"])), e.get("MASTER_ADDR", "127.0.0.1"),
            int(e.get("MASTER_PORT", 29500)),
        )
    if "SLURM_PROCID" in os.environ:
        return from_slurm()
    if in_mpiexec_rank():
        return from_pbs()
    return RankInfo(0, 1, 0, 1, "127.0.0.1", free_port())


def pick_backend(local_world_size: int = 1) -> str:
    """nccl when each local rank can have its own CUDA GPU, xccl for Intel XPUs (torch >= 2.8 names
    oneCCL's backend so; found through `torch.accelerator` where available), else gloo."""
    import torch

    accel = getattr(torch, "accelerator", None)
    if accel is not None and accel.is_available():
        kind, count = accel.current_accelerator().type, accel.device_count()
    elif torch.cuda.is_available():
        kind, count = "cuda", torch.cuda.device_count()
    else:
        return "gloo"
    if count < local_world_size:
        return "gloo"
    return {"cuda": "nccl", "xpu": "xccl"}.get(kind, "gloo")


def init_process_group(info: RankInfo, backend: str | None = None, timeout_s: float = 300.0,
                       store=None) -> str:
    """Set the environment from `info` and initialise torch.distributed (`pick_backend`: nccl or xccl when
    this rank has its own GPU, else gloo); returns the backend used. With `store` (a
    `torch.distributed.Store`) the ranks meet there instead of at ``tcp://MASTER_ADDR:MASTER_PORT``."""
    import torch
    import torch.distributed as dist

    os.environ.update(info.env())
    backend = backend or pick_backend(info.local_world_size)
    kwargs = {}
    if backend in ("nccl", "xccl"):
        kind = "cuda" if backend == "nccl" else "xpu"
        getattr(torch, kind).set_device(info.local_rank)
        kwargs["device_id"] = torch.device(kind, info.local_rank)
    if store is None:
        kwargs["init_method"] = f"tcp://{info.master_addr}:{info.master_port}"
    else:
        kwargs["store"] = store
    dist.init_process_group(
        backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s), **kwargs
    )
    return backend
