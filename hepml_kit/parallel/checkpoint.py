"""Distributed checkpoints that work for every strategy: plain modules, DDP, FSDP2, tensor parallel (DTensor).

``torch.distributed.checkpoint`` (DCP) writes one file per rank plus a metadata file; every rank saves
only what it owns (its FSDP shard, its tensor-parallel slice; replicated tensors once), in parallel. On
load, each rank reads the pieces that overlap what it owns *now*, so a checkpoint written by 2 FSDP ranks
can be loaded by 1 plain process, or by 4, without a conversion step.
``get_state_dict``/``set_state_dict`` hide each wrapper's details: they strip DDP's ``module.`` prefix,
return sharded DTensors for FSDP2/TP, and key optimizer state by parameter name (not by position), which
is what makes optimizer state portable across layouts.

    save("ckpt/step_100", model, optimizer, step=100, extra={"seed": 0})  # on every rank
    info = load("ckpt/step_100", model, optimizer)  # on every rank; info["step"] == 100

Build (and wrap/shard) the model and optimizer exactly as for training before calling `load`. Resuming is
exact when the rest of training is a function of (seed, step), as in `hepml_kit.parallel.compare`.

Taught in curriculum/03_sharded.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

__all__ = ["TrainState", "save", "load", "saved_keys"]

# Optimizer state keyed by parameter name, not by position in param_groups: pipeline stages hold different
# parameters, and positional keys from two stages collide in one checkpoint.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


class TrainState(Stateful):
    """Model + optimizer + a step counter and JSON-able extras, as one DCP `Stateful`.

    DCP calls `state_dict` when saving and `load_state_dict` after reading, on every rank.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 step: int = 0, extra: dict | None = None):
        self.model, self.optimizer = model, optimizer
        self.step, self.extra = step, dict(extra or {})

    def state_dict(self) -> dict[str, Any]:
        if self.optimizer is None:
            state = {"model": get_model_state_dict(self.model)}
        else:
            model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_FLAT)
            state = {"model": model_sd, "optim": optim_sd}
        # Tensors and plain strings survive any world size; a JSON string carries the extras.
        state["step"] = torch.tensor(self.step, dtype=torch.int64)
        state["extra"] = json.dumps(self.extra, sort_keys=True)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is None:
            set_model_state_dict(self.model, state["model"])
        else:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"], options=_FLAT)
        self.step = int(state["step"])
        self.extra = json.loads(state["extra"])


@contextlib.contextmanager
def _quiet_single_process():
    """Without a process group DCP warns that it assumes one process: that is the intended use here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def save(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
         step: int = 0, extra: dict | None = None, no_dist: bool = False) -> Path:
    """Write a checkpoint of `model` (and `optimizer`) to the folder `path`; call on every rank.

    Works for plain modules (no process group needed), DDP, FSDP2 and DTensor tensor-parallel models.
    `extra` must be JSON-serialisable (seed, config name, metrics...). ``no_dist=True``: this process
    saves alone although a process group exists (one rank training an unsharded model). Returns the folder.
    """
    path = Path(path)
    if extra is not None:
        json.dumps(extra)  # fail before any collective if it cannot be stored
    if no_dist or not dist.is_initialized() or dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    with _quiet_single_process():
        state = {"train": TrainState(model, optimizer, step, extra)}
        dcp.save(state, checkpoint_id=str(path), no_dist=no_dist)
    return path


def load(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
         no_dist: bool = False) -> dict[str, Any]:
    """Restore `model` (and `optimizer`) in place from the checkpoint folder `path`; call on every rank.

    The model must already be built, moved and wrapped/sharded as it will be trained; the number of ranks
    may differ from the one that saved (FSDP2 and plain/DDP layouts reshard on load). ``no_dist``: as in
    `save`. Returns
    ``{"step": int, "extra": dict}``.
    """
    path = Path(path)
    if not (path / ".metadata").exists():
        raise FileNotFoundError(f"no checkpoint at {path} (missing {path / '.metadata'})")
    state = TrainState(model, optimizer)
    with _quiet_single_process():
        dcp.load({"train": state}, checkpoint_id=str(path), no_dist=no_dist)
    return {"step": state.step, "extra": state.extra}


def saved_keys(path: str | os.PathLike) -> list[str]:
    """The fully qualified names stored in a checkpoint (to inspect one without loading it)."""
    reader = dcp.FileSystemReader(str(path))
    return sorted(reader.read_metadata().state_dict_metadata)
