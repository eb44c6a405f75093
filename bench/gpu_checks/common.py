"""What every GPU check shares: the run's `Context`, the `Check` record, the row schema, and
`one_rank_group()`, the one-rank process group (nccl on GPU 0, gloo on CPU) the distributed checks run in."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

# A row as the runner records it: the check's name, its status, seconds, the values the check returned
# (minus ``status``/``ok``), and the error line of a check that raised.
ROW_KEYS = ("check", "status", "seconds", "values", "error")
STATUSES = ("ok", "below goal", "FAILED", "ERROR", "TIMEOUT", "SKIPPED")


@dataclasses.dataclass
class Context:
    device: torch.device
    smoke: bool  # tiny shapes (CPU fallback): proves the code paths, not the speed
    results_dir: Path
    deadline: float  # time.monotonic() by which the whole check must end

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        print(f"    {msg}", flush=True)


@dataclasses.dataclass
class Check:
    name: str
    target: Callable | str  # function(ctx) -> dict | list[dict], or "module:function" imported when it runs
    budget_s: float
    cuda_only: bool = False


class CheckTimeout(Exception):
    """Raised (by the runner's alarm) inside a check that ran past its time limit."""


def status_of(values: dict) -> str:
    """Pop ``status`` / ``ok`` from a check's values and return the row status."""
    ok = values.pop("ok", True)
    status = str(values.pop("status", "ok"))
    return "FAILED" if ok is False else status


def sync(ctx: Context) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def one_rank_group(device: torch.device | str | None = None):
    """A world-size-1 process group for the body: nccl on GPU 0 when `device` is CUDA (default: CUDA when
    available), gloo otherwise; yields the backend. Reuses an existing one-rank group and leaves it."""
    from hepml_kit.launch.rendezvous import free_port

    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError("a GPU check is a world-size-1 pass; run it in one process")
        yield dist.get_backend()
        return
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(0)
        kwargs["device_id"] = torch.device("cuda", 0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            **kwargs)
    try:
        yield backend
    finally:
        dist.destroy_process_group()
