"""Where each rank learns who it is: rank, world size, local rank and the master address.

The same variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) come from
one of three places: the kit's ipyparallel engines (`Workers`), torchrun, or Slurm's srun
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, first node of SLURM_JOB_NODELIST: the NERSC pattern).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["RankInfo", "free_port", "from_slurm", "init_process_group", "rank_env", "routable_address"]


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
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
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
    local_world = int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0) or max(1, world // max(nnodes, 1))
    master = env.get("MASTER_ADDR") or _first_slurm_node(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost")))
    port = port or int(env.get("MASTER_PORT", 0)) or 29500 + int(env.get("SLURM_JOB_ID", "0")) % 20000
    return RankInfo(int(env["SLURM_PROCID"]), world, int(env["SLURM_LOCALID"]), local_world, master, port)


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
    return RankInfo(0, 1, 0, 1, "127.0.0.1", free_port())


def init_process_group(info: RankInfo, backend: str | None = None, timeout_s: float = 300.0, store=None) -> str:
    """Set the environment from `info` and initialise torch.distributed (nccl when this rank has its
    own GPU, else gloo); returns the backend used. With `store` (a `torch.distributed.Store`) the ranks meet
    there instead of at ``tcp://MASTER_ADDR:MASTER_PORT``."""
    import torch
    import torch.distributed as dist

    os.environ.update(info.env())
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= info.local_world_size else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    if store is None:
        kwargs["init_method"] = f"tcp://{info.master_addr}:{info.master_port}"
    else:
        kwargs["store"] = store
    dist.init_process_group(
        backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s), **kwargs
    )
    return backend
