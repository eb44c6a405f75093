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

Nothing lost, nothing silently wrong:
- A save writes into a hidden sibling folder ``.<name>.partial`` (same filesystem; every rank writes its
  files there) and only when all files and a manifest are complete and fsynced does rank 0 rename it into
  place. An existing checkpoint is first renamed to ``.<name>.previous`` and deleted only after the new one
  is in place, so a process killed at any moment leaves the old or the new checkpoint complete; `load`
  falls back to ``.<name>.previous`` when the kill came between the two renames.
- The manifest (``manifest.json``, written last) holds each file's size and SHA-256 and a checksum of
  itself; `load` verifies every file before reading (the ranks split the files), so a flipped bit is a
  `CheckpointError` naming the damaged file, never changed weights.
- Every failure (including DCP's ``CheckpointException``, a `BaseException` that ``except Exception``
  misses) is raised as `CheckpointError` (a `ValueError`) naming the checkpoint or the file.

Taught in curriculum/03_sharded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

__all__ = ["MANIFEST", "CheckpointError", "CheckpointMissing", "TrainState", "load", "save", "saved_keys",
           "verify"]

# Optimizer state keyed by parameter name, not by position in param_groups: pipeline stages hold different
# parameters, and positional keys from two stages collide in one checkpoint.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
MANIFEST = "manifest.json"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint could not be written or read (damaged file, wrong model, failed write); names the file."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """There is no checkpoint at the given folder."""


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


# ---- the folders: where a save is written, where the replaced checkpoint waits, what may be replaced ----

def _partial(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def _previous(path: Path) -> Path:
    return path.parent / f".{path.name}.previous"


def _is_checkpoint_file(name: str) -> bool:
    return name in (".metadata", MANIFEST) or name.endswith(".distcp")


def _prepare(path: Path) -> None:
    """Rank 0, before any data is written: refuse a target that is not a checkpoint, start a clean partial."""
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"cannot save a checkpoint to {path}: it is a file, not a folder")
        others = sorted(p.name for p in path.iterdir() if not _is_checkpoint_file(p.name))
        if others:
            raise CheckpointError(f"will not replace {path}: it holds {', '.join(others[:3])}, which are not "
                                  f"checkpoint files; save into a new or empty folder")
    partial = _partial(path)
    shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
    partial.mkdir(parents=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(partial: Path, path: Path) -> None:
    """Rank 0: rename the complete `partial` into place; the old checkpoint goes only once the new is
    there."""
    previous = _previous(path)
    if path.exists():
        if any(path.iterdir()):
            # `path` is complete, so an older previous is not needed
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(path, previous)
        else:
            path.rmdir()
    os.rename(partial, path)
    _fsync_dir(path.parent)
    shutil.rmtree(previous, ignore_errors=True)


def _resolve(path: Path) -> Path:
    """The folder to read: `path`, or the previous checkpoint if a save was killed between its two renames."""
    if (path / MANIFEST).exists() or (path / ".metadata").exists():
        return path
    if (_previous(path) / MANIFEST).exists():
        warnings.warn(f"{path} is missing because a save was interrupted; loading the previous checkpoint "
                      f"{_previous(path)}", stacklevel=3)
        return _previous(path)
    raise CheckpointMissing(f"no checkpoint at {path} (missing {path / '.metadata'})")


# ---- the manifest: size and SHA-256 of every file, and a checksum of the list itself ----

def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _list_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _describe_files(folder: Path, names) -> dict[str, dict]:
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in names}


def _write_manifest(folder: Path, files: dict[str, dict]) -> None:
    doc = {"format": _FORMAT, "files": files, "files_sha256": _list_digest(files)}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, sort_keys=True, separators=(",", ":")))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, folder / MANIFEST)
    _fsync_dir(folder)


def _read_manifest(folder: Path) -> dict[str, dict]:
    file = folder / MANIFEST
    if not file.exists():
        raise CheckpointError(f"{folder} has no {MANIFEST} (saved without checksums or "
                              "by an older hepml_kit): its files cannot be checked; load(..., "
                              "verify=False) reads it unchecked")
    try:
        doc = json.loads(file.read_bytes())
        files = doc["files"]
        ok = doc["format"] == _FORMAT and doc["files_sha256"] == _list_digest(files)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file} is damaged (not a checkpoint manifest: "
                              f"{type(e).__name__}: {e})") from e
    if not ok:
        raise CheckpointError(f"{file} is damaged (its own checksum does not match its contents)")
    return files


def _check_files(folder: Path, files: dict[str, dict], names) -> None:
    for name in names:
        file, want = folder / name, files[name]
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (listed in {folder / MANIFEST})")
        size = file.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{file} is damaged: {size} bytes, the manifest says {want['bytes']}")
        got = _sha256(file)
        if got != want["sha256"]:
            raise CheckpointError(f"{file} is damaged: SHA-256 {got[:16]}... differs from the manifest's "
                                  f"{want['sha256'][:16]}...")


def verify(path: str | os.PathLike) -> Path:
    """Check every file of the checkpoint at `path` against its manifest (one process); return the folder.

    Raises `CheckpointError` naming the damaged or missing file.
    """
    folder = _resolve(Path(path))
    files = _read_manifest(folder)
    _check_files(folder, files, sorted(files))
    return folder


# ---- errors: DCP's BaseException and everything else become CheckpointError naming the folder ----

def _summary(e: BaseException) -> str:
    if isinstance(e, CheckpointException):
        parts = []
        for rank, failure in sorted(e.failures.items()):
            exc = failure[0] if isinstance(failure, tuple) else failure
            parts.append(f"rank {rank}: {type(exc).__name__}: {exc}")
        return "; ".join(parts)
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _as_checkpoint_error(what: str):
    try:
        yield
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{what}: {_summary(e)}") from e


def _agree(distributed: bool, problem: str | None, src_only: bool = True) -> None:
    """Raise the same `CheckpointError` on every rank when rank 0 (or any rank) found a problem."""
    if distributed:
        if src_only:
            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problems = box
        else:
            problems = [None] * dist.get_world_size()
            dist.all_gather_object(problems, problem)
        problem = next((p for p in problems if p), None)
    if problem:
        raise CheckpointError(problem)


def _on_rank0(distributed: bool, fn, *args) -> None:
    """Run `fn` on rank 0 (or alone); every rank raises if it failed."""
    problem = None
    if not distributed or dist.get_rank() == 0:
        try:
            fn(*args)
        except CheckpointError as e:
            problem = str(e)
        except Exception as e:  # noqa: BLE001  (OSError mostly; any failure must reach the other ranks)
            problem = f"cannot write checkpoint {args[-1]}: {type(e).__name__}: {e}"
    _agree(distributed, problem)


def save(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
         step: int = 0, extra: dict | None = None, no_dist: bool = False, checksums: bool = True) -> Path:
    """Write a checkpoint of `model` (and `optimizer`) to the folder `path`; call on every rank.

    Works for plain modules (no process group needed), DDP, FSDP2 and DTensor tensor-parallel models.
    `extra` must be JSON-serialisable (seed, config name, metrics...). ``no_dist=True``: this process
    saves alone although a process group exists (one rank training an unsharded model). The files go to
    ``.<name>.partial`` and are renamed into place when complete, replacing an earlier checkpoint at `path`
    (a folder holding other files is refused). ``checksums=False`` skips the manifest (for benchmarks;
    such a checkpoint loads only with ``verify=False``). Returns the folder.
    """
    path = Path(os.path.abspath(path))
    if extra is not None:
        json.dumps(extra)  # fail before any collective if it cannot be stored
    distributed = not no_dist and dist.is_initialized()
    _on_rank0(distributed, _prepare, path)
    partial = _partial(path)
    with _quiet_single_process(), _as_checkpoint_error(f"cannot save checkpoint {path}"):
        state = {"train": TrainState(model, optimizer, step, extra)}
        dcp.save(state, checkpoint_id=str(partial), no_dist=no_dist)
    # every rank hashes the data files it wrote (DCP names them __<rank>_<n>.distcp), rank 0 the rest
    rank = dist.get_rank() if distributed else 0
    problem, files = None, {}
    if checksums:
        try:
            files = _describe_files(partial,
                                    [p.name for p in partial.iterdir() if p.name.startswith(f"__{rank}_")])
        except OSError as e:
            problem = f"cannot read back checkpoint file {e.filename}: {e}"
    if distributed:  # also the barrier after which rank 0 may rename: every rank has written its files
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (problem, files))
        problem = next((p for p, _ in gathered if p), None)
        files = {k: v for _, f in gathered for k, v in f.items()}
    _agree(False, problem)

    def finish(partial, path):
        if checksums:
            rest = [p.name for p in partial.iterdir() if p.is_file() and p.name not in files]
            _write_manifest(partial, {**files, **_describe_files(partial, rest)})
        _commit(partial, path)

    _on_rank0(distributed, finish, partial, path)
    return path


def load(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
         no_dist: bool = False, verify: bool = True) -> dict[str, Any]:
    """Restore `model` (and `optimizer`) in place from the checkpoint folder `path`; call on every rank.

    The model must already be built, moved and wrapped/sharded as it will be trained; the number of ranks
    may differ from the one that saved (FSDP2 and plain/DDP layouts reshard on load). ``no_dist``: as in
    `save`. Every file is checked against the manifest first (``verify=False`` skips that); any problem
    is a `CheckpointError` naming the file (`CheckpointMissing` if there is no checkpoint). Returns
    ``{"step": int, "extra": dict}``.
    """
    folder = _resolve(Path(path))
    distributed = not no_dist and dist.is_initialized()
    if verify:
        files = _read_manifest(folder)  # small: every rank reads it; the data files are split between ranks
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        problem = None
        try:
            _check_files(folder, files, sorted(files)[rank::world])
        except CheckpointError as e:
            problem = str(e)
        _agree(distributed, problem, src_only=False)
    state = TrainState(model, optimizer)
    with _quiet_single_process(), _as_checkpoint_error(f"cannot load checkpoint {folder}"):
        dcp.load({"train": state}, checkpoint_id=str(folder), no_dist=no_dist)
    return {"step": state.step, "extra": state.extra}


def saved_keys(path: str | os.PathLike) -> list[str]:
    """The fully qualified names stored in a checkpoint (to inspect one without loading it)."""
    folder = _resolve(Path(path))
    with _as_checkpoint_error(f"cannot read checkpoint {folder}"):
        reader = dcp.FileSystemReader(str(folder))
        return sorted(reader.read_metadata().state_dict_metadata)
