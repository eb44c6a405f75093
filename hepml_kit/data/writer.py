"""Writing sharded HDF5 data sets: a testbed's Monte Carlo (`write_shards`) or a user's table (`write_table`).

    write_shards("jet_transformer", 100_000, 8, "data/jets", seed=0)       # 8 files + manifest.json

The format (file names, manifest, attributes, checksums) is described in `hepml_kit.data.shards`, whose
`ShardSet` opens and checks what this module writes; `hepml_kit.data` re-exports `write_shards`. Every
shard is written in HDF5's 1.10 format with Fletcher-32 on every chunk, and the manifest records its
SHA-256 and the checksum of its metadata ranges (`metadata_checksum`). The schema of a generated data set
is inferred from the first generated piece: ``columns`` (a dict of per-event arrays) or ``events`` (a list
of per-event dicts; ragged entries stored as values + offsets). `write_table` writes what
`hepml_kit.data.convert` read from a user's files (layout ``table``), into a temporary folder renamed at
the end.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from hepml_kit.data.shards import FORMAT, MANIFEST, file_sha256, generator_of, metadata_checksum

__all__ = ["write_shards", "write_table"]

_CHUNK_BYTES = 256 * 1024  # HDF5 chunk size target: big enough for fast range reads, small for event reads
# HDF5 1.10's file format: superblock v3, v2 object headers and the chunk indexes carry checksums of their
# own (readable by HDF5 >= 1.10); the manifest's metadata checksum covers the same bytes before parsing
_LIBVER = ("v110", "latest")


# ------------------------------------------------------------------------------------------- schema
def _infer_schema(data, cfg) -> tuple[str, int, dict]:
    """(layout, number of events, {key: spec}) of one `Testbed.generate` output."""
    if isinstance(data, list):
        if not data or not all(isinstance(ev, dict) for ev in data):
            raise TypeError("an 'events' data set must be a non-empty list of dicts of arrays")
        schema = {}
        for key in data[0]:
            values = [np.asarray(ev[key]) for ev in data]
            if any(v.dtype != values[0].dtype or v.ndim != values[0].ndim for v in values):
                raise TypeError(f"entry {key!r} changes dtype or rank between events")
            shapes = np.array([v.shape for v in values]).reshape(len(values), values[0].ndim)
            varying = [a for a in range(shapes.shape[1]) if len(set(shapes[:, a])) > 1]
            if len(varying) > 1:
                raise TypeError(f"entry {key!r} varies along axes {varying}; at most one "
                                "ragged axis is supported")
            ragged = None if values[0].ndim == 0 else (varying[0] if varying else values[0].ndim - 1)
            shape = [None if a == ragged else int(s) for a, s in enumerate(values[0].shape)]
            schema[key] = {"dtype": values[0].dtype.str, "shape": shape, "ragged_axis": ragged}
        return "events", len(data), schema
    if not isinstance(data, dict):
        raise TypeError(f"cannot shard a {type(data).__name__}; expected a dict of arrays "
                        "or a list of event dicts")
    n, schema = None, {}
    for key, value in data.items():
        if value is cfg:
            schema[key] = {"kind": "config"}
            continue
        is_torch = torch.is_tensor(value)
        if not (is_torch or isinstance(value, np.ndarray)) or value.ndim == 0:
            raise TypeError(f"entry {key!r} ({type(value).__name__}) is not a "
                            "per-event array; cannot shard it")
        n = int(value.shape[0]) if n is None else n
        if value.shape[0] != n:
            raise TypeError(f"entry {key!r} has {value.shape[0]} rows, other entries "
                            f"{n}: not one row per event")
        dtype = value.numpy().dtype if is_torch else value.dtype
        schema[key] = {"dtype": dtype.str, "shape": [int(s) for s in value.shape[1:]],
                       "torch": bool(is_torch)}
    if n is None:
        raise TypeError("the data set has no arrays")
    return "columns", n, schema


def _flatten(data, layout: str, schema: dict) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{key: (rows to append, lengths of ragged rows or None)} for one generated piece."""
    out = {}
    for key, spec in schema.items():
        if spec.get("kind") == "config":
            continue
        if layout == "columns":
            v = data[key]
            out[key] = (v.numpy() if torch.is_tensor(v) else np.asarray(v), None)
            continue
        values = [np.asarray(ev[key]) for ev in data]
        ax = spec["ragged_axis"]
        for v in values:
            fixed = [s for a, s in enumerate(v.shape) if a != ax]
            if v.dtype.str != spec["dtype"] or fixed != [s for s in spec["shape"] if s is not None]:
                raise TypeError(f"entry {key!r}: shape {v.shape} / dtype {v.dtype} does "
                                f"not fit the schema {spec}")
        if ax is None:
            out[key] = (np.stack(values), None)
        else:
            moved = [np.moveaxis(v, ax, 0) for v in values]
            out[key] = (np.concatenate(moved), np.array([len(m) for m in moved], dtype=np.int64))
    return out


# ------------------------------------------------------------------------------------------- writing
def _create(f: h5py.File, key: str, spec: dict, layout: str, rows_hint: int) -> None:
    """An empty resizable dataset for `key`; chunks of ~_CHUNK_BYTES, fewer rows for small shards."""
    dtype = np.dtype(spec["dtype"])
    ragged = layout != "columns" and spec.get("ragged_axis") is not None
    rest = [int(s) for a, s in enumerate(spec["shape"]) if not (ragged and a == spec["ragged_axis"])]
    rows = max(1, min(_CHUNK_BYTES // (dtype.itemsize * math.prod(rest)), rows_hint))
    if not ragged:
        f.create_dataset(key, shape=(0, *rest), maxshape=(None, *rest), dtype=dtype, fletcher32=True,
                         chunks=(rows, *rest))
        return
    g = f.create_group(key)
    g.create_dataset("values", shape=(0, *rest), maxshape=(None, *rest), dtype=dtype, fletcher32=True,
                     chunks=(rows, *rest))
    g.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), fletcher32=True,
                     chunks=(min(4096, rows_hint + 1),))


def _append(f: h5py.File, key: str, rows: np.ndarray, lengths: np.ndarray | None) -> None:
    ds = f[key]["values"] if lengths is not None else f[key]
    n0 = ds.shape[0]
    ds.resize(n0 + len(rows), axis=0)
    ds[n0:] = rows
    if lengths is not None:
        off = f[key]["offsets"]
        m0 = off.shape[0]
        off.resize(m0 + len(lengths), axis=0)
        off[m0:] = off[m0 - 1] + np.cumsum(lengths)


class _Progress:
    """A tqdm bar on a terminal; plain log lines (one per shard) elsewhere, or nothing."""

    def __init__(self, total: int, desc: str, mode: bool | None, log: Callable[[str], None]):
        self.log, self.t0, self.bar = log, time.perf_counter(), None
        self.quiet = mode is False
        if mode is None:
            mode = sys.stderr.isatty()
        if mode and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="events", desc=desc, unit_scale=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def shard_done(self, k: int, n_shards: int, events: int, done: int, size: int) -> None:
        if self.bar is None and not self.quiet:
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            self.log(f"shard {k + 1}/{n_shards}: {events} events, {size / 1e6:.1f} MB "
                     f"({rate:.0f} events/s so far)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_shards(
    model: str,
    n_events: int,
    n_shards: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    preset: str = "tiny",
    cfg: Any = None,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Generate `n_events` of testbed `model` with `seed` and write them as `n_shards` HDF5 files.

    Shard k holds the events that ``Testbed.generate(cfg, n_events, seed, rank=k, world_size=n_shards)``
    would make (for the contiguous generators exactly that; the tracking generator deals events out
    round-robin), produced in pieces so memory stays bounded and the progress bar moves. `cfg` defaults to
    ``testbed.config(preset)``. `progress`: True (tqdm), False (silent), None (tqdm on a terminal, one
    `log` line per shard otherwise). Returns the manifest (also written to ``out_dir/manifest.json``).
    """
    from hepml_kit import models

    testbed = models.get(model)  # clear error for an unknown model
    generator, version = generator_of(model)
    for name, value, lo in (("n_events", n_events, 1), ("n_shards", n_shards, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {value!r}")
    if n_shards > n_events:
        raise ValueError(f"n_shards ({n_shards}) cannot exceed n_events ({n_events}): a shard would be empty")
    cfg = testbed.config(preset) if cfg is None else cfg
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if (out / MANIFEST).exists():
        if not overwrite:
            raise ValueError(f"{out / MANIFEST} exists; pass overwrite=True (--overwrite) "
                             "to replace that data set")
        _remove_data_set(out)
    out.mkdir(parents=True, exist_ok=True)

    module = importlib.import_module(generator)
    shard_events = -(-n_events // n_shards)
    # block generators make whole blocks: keep pieces several blocks
    min_piece = 8 * getattr(module, "BLOCK", 1)
    per_shard = max(1, min(n_events // n_shards, shard_events // max(min_piece, 1), 20))  # pieces per shard
    n_pieces = n_shards * per_shard
    dataset_id = uuid.uuid4().hex
    manifest = {
        "format": FORMAT, "dataset_id": dataset_id, "model": testbed.name, "preset": preset,
        "config": repr(cfg), "generator": generator, "generator_version": version, "seed": int(seed),
        "n_events": int(n_events), "layout": None, "schema": None, "shards": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    bar = _Progress(n_events, f"{testbed.name} -> {out}", progress, log)
    done = 0
    try:
        for k in range(n_shards):
            name = f"shard-{k:05d}-of-{n_shards:05d}.h5"
            partial = out / (name + ".partial")
            count = 0
            with h5py.File(partial, "w", libver=_LIBVER) as f:
                for j in range(per_shard):
                    piece = testbed.generate(cfg, n_events, seed, rank=k * per_shard + j, world_size=n_pieces)
                    layout, n, schema = _infer_schema(piece, cfg)
                    if manifest["schema"] is None:
                        manifest["layout"], manifest["schema"] = layout, schema
                    elif (layout, schema) != (manifest["layout"], manifest["schema"]):
                        raise TypeError(f"piece {k * per_shard + j} of {model} does not "
                                        "match the schema of the first piece: "
                                        f"{schema} vs {manifest['schema']}")
                    flat = _flatten(piece, layout, schema)
                    if j == 0:
                        # size chunks for this shard's expected rows
                        for key, (rows, lengths) in flat.items():
                            hint = (shard_events if lengths is None
                                    else -(-len(rows) * shard_events // max(n, 1)))
                            _create(f, key, schema[key], layout, hint)
                    for key, (rows, lengths) in flat.items():
                        _append(f, key, rows, lengths)
                    count, done = count + n, done + n
                    bar.update(n)
                f.attrs.update(format=FORMAT, dataset_id=dataset_id, model=testbed.name, generator=generator,
                               generator_version=version, seed=int(seed), shard=k, n_shards=n_shards,
                               n_events=count)
            os.replace(partial, out / name)
            size = (out / name).stat().st_size
            manifest["shards"].append({"file": name, "n_events": count, "bytes": size,
                                       "sha256": file_sha256(out / name),
                                       "metadata": metadata_checksum(out / name)})
            bar.shard_done(k, n_shards, count, done, size)
    finally:
        bar.close()
    if done != n_events:
        raise RuntimeError(f"the generator made {done} events, not {n_events}: "
                           f"shards in {out} are incomplete")
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _remove_data_set(out: Path) -> None:
    """Delete the manifest and the shard files it lists (nothing else in the folder)."""
    try:
        old = json.loads((out / MANIFEST).read_text())
        files = [s["file"] for s in old.get("shards", [])]
    except (OSError, ValueError, KeyError, TypeError):
        files = []
    for name in files:
        if "/" not in name and name.endswith(".h5"):
            (out / name).unlink(missing_ok=True)
    (out / MANIFEST).unlink()


# ------------------------------------------------------------------------------------------- a user's table
TABLE_VERSION = "table-1"  # the layout `write_table` writes; readers check it like a generator version


def write_table(columns: dict[str, Any], n_shards: int, out_dir: str | os.PathLike, *, source: dict,
                overwrite: bool = False, progress: bool | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Write a user's events as `n_shards` checksummed shards + manifest (layout ``table``, no testbed).

    `columns`: {name: rows} with one row per event, either a numpy array (n, ...) or, for a jagged
    column, a tuple (values, counts) with ``len(counts) == n``. `source` (the input files, tree, cut) is
    stored in the manifest. Everything is written into a temporary folder beside `out_dir` and moved in
    place at the end, the manifest last: a failure leaves no half-written data set.
    """
    names = list(columns)
    if not names:
        raise ValueError("nothing to write: no columns")
    lengths = {k: len(v[1]) if isinstance(v, tuple) else len(v) for k, v in columns.items()}
    n_events = lengths[names[0]]
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns have different numbers of events: {lengths}")
    if not 1 <= n_shards <= max(n_events, 1) or n_events < 1:
        raise ValueError(f"need 1 <= shards <= events; got {n_shards} shards for {n_events} events")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir()
                         or (any(out.iterdir()) and not (overwrite and (out / MANIFEST).exists()))):
        raise ValueError(f"{out} exists and is not an empty folder" + (
            "; pass --overwrite to replace the data set in it" if (out / MANIFEST).exists() else ""))
    schema, offsets = {}, {}
    for k, v in columns.items():
        if isinstance(v, tuple):
            values, counts = np.ascontiguousarray(v[0]), np.asarray(v[1], dtype=np.int64)
            schema[k] = {"dtype": values.dtype.str, "shape": [None, *values.shape[1:]], "ragged_axis": 0,
                         "torch": False}
            offsets[k] = np.concatenate([[0], np.cumsum(counts)])
        else:
            schema[k] = {"dtype": v.dtype.str, "shape": list(v.shape[1:]),
                         "ragged_axis": None, "torch": False}
    dataset_id = uuid.uuid4().hex
    manifest = {"format": FORMAT, "dataset_id": dataset_id, "model": None, "preset": None, "config": None,
                "generator": "hepml_kit.data.writer.write_table",
                "generator_version": TABLE_VERSION, "seed": None, "n_events": int(n_events),
                "layout": "table", "schema": schema, "shards": [], "source": source,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{dataset_id[:8]}"
    tmp.mkdir()
    bar = _Progress(n_events, f"writing {out}", progress, log)
    bounds = [n_events * k // n_shards for k in range(n_shards + 1)]
    try:
        for k in range(n_shards):
            a, b = bounds[k], bounds[k + 1]
            name = f"shard-{k:05d}-of-{n_shards:05d}.h5"
            with h5py.File(tmp / name, "w", libver=_LIBVER) as f:
                for key, v in columns.items():
                    if key in offsets:
                        lo, hi = int(offsets[key][a]), int(offsets[key][b])
                        rows, lengths_ = v[0][lo:hi], np.diff(offsets[key][a : b + 1])
                        _create(f, key, schema[key], "table", max(1, hi - lo))
                    else:
                        rows, lengths_ = v[a:b], None
                        _create(f, key, schema[key], "table", b - a)
                    _append(f, key, rows, lengths_)
                f.attrs.update(format=FORMAT, dataset_id=dataset_id, model="",
                               generator=manifest["generator"], generator_version=TABLE_VERSION, shard=k,
                               n_shards=n_shards, n_events=b - a)
            size = (tmp / name).stat().st_size
            manifest["shards"].append({"file": name, "n_events": b - a, "bytes": size,
                                       "sha256": file_sha256(tmp / name),
                                       "metadata": metadata_checksum(tmp / name)})
            bar.update(b - a)
            bar.shard_done(k, n_shards, b - a, b, size)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if not out.exists():
            os.replace(tmp, out)
        else:  # an empty folder, or a data set to overwrite: shards first, the manifest last
            if (out / MANIFEST).exists():
                _remove_data_set(out)
            for entry in manifest["shards"]:
                os.replace(tmp / entry["file"], out / entry["file"])
            os.replace(tmp / MANIFEST, out / MANIFEST)
            tmp.rmdir()
    finally:
        bar.close()
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest
