"""Sharded HDF5 data sets: write a testbed's Monte Carlo once, stream it to many ranks in chunks.

    write_shards("jet_transformer", 100_000, 8, "data/jets", seed=0)       # 8 files + manifest.json
    ds = ShardDataset("data/jets", batch_size=128, shuffle=True)           # this rank's share, in chunks
    for batch in ds.loader(num_workers=2, pin_memory=True): ...            # the testbed's batch dicts

What a data set holds is exactly what ``Testbed.generate(cfg, n, seed)`` returns, so a batch read from
shards is the batch the model would have trained on from memory. Two layouts are handled generically:

* ``columns``: a dict of arrays whose first axis is the event (jets, waveforms, showers, cosmology boxes);
  torch tensors are stored as arrays and come back as tensors; the model config (``cfg`` entries) is not
  stored but rebuilt from the manifest's preset.
* ``events``: a list of per-event dicts (tracking): fixed-shape entries are stacked; ragged entries
  (hits, particles, edges) are concatenated along their varying axis with ``offsets`` (n + 1) beside them.

Files: ``shard-00000-of-00008.h5`` ... and ``manifest.json`` (model, preset, config, generator module and
``GENERATOR_VERSION``, seed, events per shard, bytes and SHA-256 per file, the array schema). Each shard
carries the data set's id, its index and count as attributes, and every HDF5 chunk a Fletcher-32
checksum. Reading checks all of it: a missing, truncated or corrupt shard, a manifest that does not match
its shards, or a data set written by another generator version raises `ShardError` naming the file; data
is never silently wrong.

Reading in chunks is what makes this fast: one HDF5 read per array per chunk of thousands of events,
instead of one per array per event (`bench/data_loading.py` measures the ratio). Ranks split the data
like `torch.utils.data.DistributedSampler`, but in chunks (`rank_chunks`): each epoch the chunk order is
permuted with (seed, epoch), rank r takes every world_size-th chunk, and batches are shuffled inside a
chunk. `ShardEvents` is the per-event map-style twin for the naive path and for a plain
``DataLoader(..., sampler=DistributedSampler(...), collate_fn=events.collate)``.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np
import torch

__all__ = [
    "FORMAT",
    "GENERATORS",
    "ShardDataset",
    "ShardError",
    "ShardEvents",
    "ShardSet",
    "generator_of",
    "rank_chunks",
    "write_shards",
]

FORMAT = "hepml-kit-shards/1"
MANIFEST = "manifest.json"
GENERATORS = {  # testbed model -> the data module holding its generator and GENERATOR_VERSION
    "tracking_gnn": "hepml_kit.data.tracking",
    "waveform_vae": "hepml_kit.data.waveforms",
    "calo_gan": "hepml_kit.data.showers",
    "jet_transformer": "hepml_kit.data.jets",
    "cosmo_unet": "hepml_kit.data.cosmology",
}
_CHUNK_BYTES = 256 * 1024  # HDF5 chunk size target: big enough for fast range reads, small for event reads


class ShardError(ValueError):
    """A sharded data set cannot be read as written: the message names the file and what is wrong."""


def generator_of(model: str) -> tuple[str, str]:
    """(generator module, its ``GENERATOR_VERSION``) of testbed `model`."""
    key = model.replace("-", "_")
    if key not in GENERATORS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(GENERATORS)}")
    module = importlib.import_module(GENERATORS[key])
    return GENERATORS[key], module.GENERATOR_VERSION


# ------------------------------------------------------------------------------------------- schema
def _infer_schema(data, cfg) -> tuple[str, int, dict]:
    """(layout, number of events, {key: spec}) of one `Testbed.generate` output."""
    if isinstance(data, list):
        if not data or not all(isinstance(ev, dict) for ev in data):
            raise TypeError("an 'events' data set must be a non-empty list of dicts of arrays")
        schema = {}
        for key, first in data[0].items():
            values = [np.asarray(ev[key]) for ev in data]
            if any(v.dtype != values[0].dtype or v.ndim != values[0].ndim for v in values):
                raise TypeError(f"entry {key!r} changes dtype or rank between events")
            shapes = np.array([v.shape for v in values]).reshape(len(values), values[0].ndim)
            varying = [a for a in range(shapes.shape[1]) if len(set(shapes[:, a])) > 1]
            if len(varying) > 1:
                raise TypeError(f"entry {key!r} varies along axes {varying}; at most one ragged axis is supported")
            ragged = None if values[0].ndim == 0 else (varying[0] if varying else values[0].ndim - 1)
            shape = [None if a == ragged else int(s) for a, s in enumerate(values[0].shape)]
            schema[key] = {"dtype": values[0].dtype.str, "shape": shape, "ragged_axis": ragged}
        return "events", len(data), schema
    if not isinstance(data, dict):
        raise TypeError(f"cannot shard a {type(data).__name__}; expected a dict of arrays or a list of event dicts")
    n, schema = None, {}
    for key, value in data.items():
        if value is cfg:
            schema[key] = {"kind": "config"}
            continue
        is_torch = torch.is_tensor(value)
        if not (is_torch or isinstance(value, np.ndarray)) or value.ndim == 0:
            raise TypeError(f"entry {key!r} ({type(value).__name__}) is not a per-event array; cannot shard it")
        n = int(value.shape[0]) if n is None else n
        if value.shape[0] != n:
            raise TypeError(f"entry {key!r} has {value.shape[0]} rows, other entries {n}: not one row per event")
        dtype = value.numpy().dtype if is_torch else value.dtype
        schema[key] = {"dtype": dtype.str, "shape": [int(s) for s in value.shape[1:]], "torch": bool(is_torch)}
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
                raise TypeError(f"entry {key!r}: shape {v.shape} / dtype {v.dtype} does not fit the schema {spec}")
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
    ragged = layout == "events" and spec["ragged_axis"] is not None
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            self.log(f"shard {k + 1}/{n_shards}: {events} events, {size / 1e6:.1f} MB ({rate:.0f} events/s so far)")

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
            raise ValueError(f"{out / MANIFEST} exists; pass overwrite=True (--overwrite) to replace that data set")
        _remove_data_set(out)
    out.mkdir(parents=True, exist_ok=True)

    module = importlib.import_module(generator)
    shard_events = -(-n_events // n_shards)
    min_piece = 8 * getattr(module, "BLOCK", 1)  # block generators make whole blocks: keep pieces several blocks
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
            with h5py.File(partial, "w") as f:
                for j in range(per_shard):
                    piece = testbed.generate(cfg, n_events, seed, rank=k * per_shard + j, world_size=n_pieces)
                    layout, n, schema = _infer_schema(piece, cfg)
                    if manifest["schema"] is None:
                        manifest["layout"], manifest["schema"] = layout, schema
                    elif (layout, schema) != (manifest["layout"], manifest["schema"]):
                        raise TypeError(f"piece {k * per_shard + j} of {model} does not match the schema of the "
                                        f"first piece: {schema} vs {manifest['schema']}")
                    flat = _flatten(piece, layout, schema)
                    if j == 0:
                        for key, (rows, lengths) in flat.items():  # size chunks for this shard's expected rows
                            hint = shard_events if lengths is None else -(-len(rows) * shard_events // max(n, 1))
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
                                       "sha256": _sha256(out / name)})
            bar.shard_done(k, n_shards, count, done, size)
    finally:
        bar.close()
    if done != n_events:
        raise RuntimeError(f"the generator made {done} events, not {n_events}: shards in {out} are incomplete")
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


# ------------------------------------------------------------------------------------------- reading
class ShardSet:
    """An opened sharded data set: checks it against its manifest, reads events by global index.

    Global index i runs over shard 0's events, then shard 1's, ... `read(start, stop)` returns events in
    the testbed's data format (what ``Testbed.generate`` returns, ready for ``Testbed.batches``);
    `read_event(i)` returns one event as a dict of numpy arrays (the naive path).

    Args:
        path: the folder holding ``manifest.json`` (or the manifest itself).
        verify: ``"quick"`` (default: files, sizes, attributes, counts, schema, offsets; every chunk's
            Fletcher-32 checksum is verified when it is read) or ``"full"`` (also the SHA-256 of each file).
        cfg: the model config to hand back in the data (``cfg`` entries); default ``config(preset)`` of the
            manifest, which must then equal the config the data was written with.
    """

    def __init__(self, path: str | os.PathLike, verify: str = "quick", cfg: Any = None):
        if verify not in ("quick", "full"):
            raise ValueError(f"verify must be 'quick' or 'full'; got {verify!r}")
        path = Path(path)
        self.manifest_path = path if path.name == MANIFEST or path.is_file() else path / MANIFEST
        self.root = self.manifest_path.parent
        m = self.manifest = self._load_manifest()
        try:
            generator, version = generator_of(m["model"])
        except ValueError as e:
            raise ShardError(f"{self.manifest_path}: {e}") from None
        if m["generator_version"] != version:
            raise ShardError(f"{self.manifest_path}: written by generator {m['generator']} version "
                             f"{m['generator_version']!r}, but this code's generator is {version!r}; the events "
                             "would differ from fresh ones. Regenerate the data set (hepml-kit data generate).")
        from hepml_kit import models

        self.testbed = models.get(m["model"])
        if cfg is None:
            cfg = self.testbed.config(m["preset"])
            if repr(cfg) != m["config"]:
                raise ShardError(f"{self.manifest_path}: the data was written with a config other than today's "
                                 f"preset {m['preset']!r} of {m['model']}:\n  written: {m['config']}\n  now:     "
                                 f"{cfg!r}\nPass cfg= explicitly, or regenerate.")
        self.cfg, self.layout, self.schema = cfg, m["layout"], m["schema"]
        self.counts = np.array([s["n_events"] for s in m["shards"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        if int(self.starts[-1]) != m["n_events"]:
            raise ShardError(f"{self.manifest_path}: shard counts add up to {int(self.starts[-1])}, "
                             f"but n_events is {m['n_events']}")
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], h5py.Dataset] = {}  # handles cached: a lookup costs ~50 us
        self._pid = os.getpid()
        self._offsets: dict[tuple[int, str], np.ndarray] = {}
        for k in range(len(m["shards"])):
            self._check_shard(k, verify)
        self.close()  # reopened lazily, per process (DataLoader workers fork)

    # ---- checks
    def _load_manifest(self) -> dict:
        try:
            m = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise ShardError(f"{self.manifest_path}: no manifest; is this a folder written by write_shards?") from None
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.manifest_path}: unreadable manifest ({e})") from None
        need = ("format", "dataset_id", "model", "preset", "config", "generator", "generator_version", "seed",
                "n_events", "layout", "schema", "shards")
        missing = [k for k in need if not isinstance(m, dict) or k not in m]
        if missing:
            raise ShardError(f"{self.manifest_path}: not a shard manifest (missing {', '.join(missing)})")
        if m["format"] != FORMAT:
            raise ShardError(f"{self.manifest_path}: format {m['format']!r}, this code reads {FORMAT!r}")
        return m

    def _check_shard(self, k: int, verify: str) -> None:
        entry, m = self.manifest["shards"][k], self.manifest
        path = self.root / entry["file"]
        if not path.is_file():
            raise ShardError(f"{path}: shard {k} listed in {self.manifest_path} is missing")
        size = path.stat().st_size
        try:
            f = self._file(k)
            attrs = dict(f.attrs)
        except ShardError:
            if size != entry["bytes"]:
                raise ShardError(f"{path}: truncated or overwritten: {size} bytes, the manifest says "
                                 f"{entry['bytes']}") from None
            raise
        want = {"generator_version": m["generator_version"], "dataset_id": m["dataset_id"], "shard": k,
                "n_events": entry["n_events"], "model": m["model"]}
        for key, value in want.items():
            got = attrs.get(key)
            got = got.decode() if isinstance(got, bytes) else (got.item() if hasattr(got, "item") else got)
            if got != value:
                what = {"generator_version": "another generator version", "dataset_id": "another data set",
                        "shard": "another shard position", "n_events": "another event count",
                        "model": "another model"}[key]
                raise ShardError(f"{path}: {key} is {got!r} but {self.manifest_path} says {value!r}: the shard "
                                 f"comes from {what}; the manifest does not match its shards")
        if size != entry["bytes"]:
            raise ShardError(f"{path}: {size} bytes, {self.manifest_path} says {entry['bytes']}: truncated or "
                             "modified after writing")
        if verify == "full" and _sha256(path) != entry["sha256"]:
            raise ShardError(f"{path}: SHA-256 differs from {self.manifest_path}: the file is corrupt")
        n = entry["n_events"]
        for key, spec in self.schema.items():
            if spec.get("kind") == "config":
                continue
            ragged = self.layout == "events" and spec["ragged_axis"] is not None
            try:
                ds = f[key]["values"] if ragged else f[key]
                rows = ds.shape[0]
                if ds.dtype.str != spec["dtype"]:
                    raise ShardError(f"{path}: {key} has dtype {ds.dtype.str}, the manifest says {spec['dtype']}")
                if ragged:
                    off = self._read(k, lambda: f[key]["offsets"][:], key)
                    if len(off) != n + 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
                        raise ShardError(f"{path}: {key}/offsets do not describe {n} events over {rows} values")
                    self._offsets[(k, key)] = off
                elif rows != n:
                    raise ShardError(f"{path}: {key} has {rows} events, {self.manifest_path} says {n}")
            except KeyError:
                raise ShardError(f"{path}: no array {key!r}, which the manifest's schema lists") from None

    # ---- file access
    def _file(self, k: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker: never share the parent's HDF5 handles
            self._files, self._datasets, self._pid = {}, {}, os.getpid()
        if k not in self._files:
            path = self.root / self.manifest["shards"][k]["file"]
            try:
                self._files[k] = h5py.File(path, "r")
            except OSError as e:
                raise ShardError(f"{path}: cannot open as HDF5 ({e}): corrupt or truncated shard") from None
        return self._files[k]

    def _read(self, k: int, fn: Callable[[], np.ndarray], what: str) -> np.ndarray:
        try:
            return fn()
        except (OSError, RuntimeError) as e:
            path = self.root / self.manifest["shards"][k]["file"]
            raise ShardError(f"{path}: reading {what} failed ({e}): the shard is corrupt (run `hepml-kit data "
                             f"verify {self.root}`)") from None

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._datasets = {}, {}

    def __getstate__(self):  # picklable for DataLoader workers (spawn): handles are reopened there
        state = dict(self.__dict__)
        state["_files"], state["_datasets"] = {}, {}
        return state

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def n_events(self) -> int:
        return len(self)

    # ---- reads
    def _read_shard(self, k: int, a: int, b: int) -> dict[str, Any]:
        """Local events [a, b) of shard k: {key: rows} (ragged keys: (values, local offsets))."""
        out = {}
        for key, spec in self.schema.items():
            if spec.get("kind") == "config":
                continue
            ds = self._dataset(k, key)
            if self.layout == "events" and spec["ragged_axis"] is not None:
                off = self._offsets.get((k, key))
                if off is None:
                    f = self._file(k)
                    off = self._offsets[(k, key)] = self._read(k, lambda: f[key]["offsets"][:], f"{key}/offsets")
                lo, hi = int(off[a]), int(off[b])
                out[key] = (self._read(k, lambda: ds[lo:hi], f"{key}[{a}:{b}]"), off[a : b + 1] - lo)
            else:
                out[key] = self._read(k, lambda: ds[a:b], f"{key}[{a}:{b}]")
        return out

    def _dataset(self, k: int, key: str) -> h5py.Dataset:
        ds = self._datasets.get((k, key)) if self._pid == os.getpid() else None
        if ds is None:
            f = self._file(k)
            ragged = self.layout == "events" and self.schema[key]["ragged_axis"] is not None
            ds = self._datasets[(k, key)] = self._read(k, lambda: f[key]["values"] if ragged else f[key], key)
        return ds

    def _pieces(self, start: int, stop: int):
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"events [{start}, {stop}) outside [0, {len(self)})")
        k = int(np.searchsorted(self.starts, start, side="right") - 1)
        while start < stop:
            end = min(stop, int(self.starts[k + 1]))
            if end > start:
                yield self._read_shard(k, start - int(self.starts[k]), end - int(self.starts[k]))
            start, k = end, k + 1

    def read(self, start: int, stop: int):
        """Events [start, stop) (global indices) in the testbed's data format."""
        parts = list(self._pieces(start, stop))
        if self.layout == "events":
            return [ev for p in parts for ev in self._split_events(p)]
        out = {}
        for key, spec in self.schema.items():
            if spec.get("kind") == "config":
                out[key] = self.cfg
                continue
            rows = parts[0][key] if len(parts) == 1 else np.concatenate([p[key] for p in parts])
            out[key] = torch.from_numpy(rows) if spec["torch"] else rows
        return out

    def _split_events(self, part: dict) -> list[dict[str, np.ndarray]]:
        """{key: rows or (values, offsets)} -> one dict per event (column lists, then zipped: ~1 us per array)."""
        columns = {}
        for key, spec in self.schema.items():
            value, ax = part[key], spec["ragged_axis"]
            if ax is None:
                columns[key] = [value[i, ...] for i in range(len(value))]  # 0-d arrays, as generated
                continue
            values, off = value[0], value[1].tolist()
            rows = [values[a:b] for a, b in zip(off[:-1], off[1:])]
            if ax != 0:
                perm = (*range(1, ax + 1), 0, *range(ax + 1, values.ndim))  # ragged axis back in place
                rows = [np.ascontiguousarray(r.transpose(perm)) for r in rows]
            columns[key] = rows
        keys = list(columns)
        return [dict(zip(keys, event)) for event in zip(*columns.values())]

    def read_event(self, i: int) -> dict[str, np.ndarray]:
        """Event i alone, as {key: array} (no ``cfg``, tensors as numpy): one HDF5 read per array."""
        i = int(i)
        (part,) = list(self._pieces(i, i + 1))
        if self.layout == "events":
            return self._split_events(part)[0]
        return {key: rows[0] for key, rows in part.items()}

    def collate(self, events: list[dict[str, np.ndarray]]):
        """Events from `read_event` -> the testbed's data format (what `read` returns)."""
        if self.layout == "events":
            return list(events)
        out = {}
        for key, spec in self.schema.items():
            if spec.get("kind") == "config":
                out[key] = self.cfg
            else:
                rows = np.stack([ev[key] for ev in events])
                out[key] = torch.from_numpy(rows) if spec["torch"] else rows
        return out

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ShardSet({str(self.root)!r}: {m['model']} preset {m['preset']}, {len(self)} events in "
                f"{len(self.counts)} shards, {m['generator_version']}, seed {m['seed']})")


# ------------------------------------------------------------------------------------------- ranks
def rank_chunks(n_events: int, chunk_events: int, rank: int = 0, world_size: int = 1, *, shuffle: bool = False,
                seed: int = 0, epoch: int = 0, drop_last: bool = False) -> list[tuple[int, int]]:
    """This rank's chunks [(start, stop), ...] of global events, DistributedSampler-style but in chunks.

    The events are cut into chunks of `chunk_events` (the last one may be shorter); with `shuffle` their
    order is permuted with (seed, epoch); rank r takes chunks r, r + world_size, ... Without `drop_last`
    every event goes to exactly one rank (counts may differ by one chunk); with `drop_last` only full
    chunks are dealt and each rank gets the same number (so DDP ranks run the same number of steps).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size; got rank={rank}, world_size={world_size}")
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1; got {chunk_events}")
    starts = np.arange(0, n_events, chunk_events)
    chunks = [(int(s), int(min(s + chunk_events, n_events))) for s in starts]
    if drop_last:
        chunks = [c for c in chunks if c[1] - c[0] == chunk_events]
    order = np.arange(len(chunks))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(chunks))
    if drop_last:
        order = order[: len(order) // world_size * world_size]
    return [chunks[i] for i in order[rank::world_size]]


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(torch.utils.data.IterableDataset):
    """This rank's share of a sharded data set, read in chunks, as the testbed's batch dicts.

    Each chunk of `chunk_events` consecutive events is one HDF5 read per array; its batches come from
    ``Testbed.batches(chunk, batch_size, shuffle, seed)``, so they are exactly the model's batches.
    `rank`/`world_size` default to ``torch.distributed``'s (0/1 without a process group); DataLoader
    workers split the rank's chunks again. Call `set_epoch(e)` before each epoch when shuffling (as with
    DistributedSampler; with ``persistent_workers`` the workers keep the epoch they started with).

    Use `loader(...)` (a DataLoader with ``batch_size=None``: batching is done here) with the usual
    options: ``num_workers``, ``pin_memory``, ``prefetch_factor``, ``persistent_workers``.
    """

    def __init__(self, path: str | os.PathLike | ShardSet, batch_size: int, *, chunk_events: int | None = None,
                 shuffle: bool = False, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False, verify: str = "quick", cfg: Any = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.shards = path if isinstance(path, ShardSet) else ShardSet(path, verify=verify, cfg=cfg)
        self.testbed = self.shards.testbed
        self.batch_size = int(batch_size)
        # whole batches per chunk, so ranks with equal chunk counts run equal numbers of steps
        chunk = chunk_events or max(1, 4096 // batch_size) * batch_size
        self.chunk_events = int(-(-int(chunk) // self.batch_size) * self.batch_size)
        r, w = _dist_rank_world()
        self.rank, self.world_size = (r if rank is None else int(rank)), (w if world_size is None else int(world_size))
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0
        rank_chunks(len(self.shards), self.chunk_events, self.rank, self.world_size)  # validates rank/world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunks(self, worker: int = 0, num_workers: int = 1) -> list[tuple[int, int]]:
        """The [start, stop) event ranges this rank (and DataLoader worker) reads this epoch."""
        mine = rank_chunks(len(self.shards), self.chunk_events, self.rank, self.world_size, shuffle=self.shuffle,
                           seed=self.seed, epoch=self.epoch, drop_last=self.drop_last)
        return mine[worker::num_workers]

    def events_per_epoch(self) -> int:
        """Events this rank reads per epoch (all workers together)."""
        return sum(b - a for a, b in self.chunks())

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for a, b in self.chunks(worker, n_workers):
            data = self.shards.read(a, b)
            batch_seed = int(np.random.SeedSequence([self.seed, self.epoch, a]).generate_state(1)[0])
            yield from self.testbed.batches(data, self.batch_size, shuffle=self.shuffle, seed=batch_seed)

    def loader(self, **kwargs) -> torch.utils.data.DataLoader:
        """``DataLoader(self, batch_size=None, **kwargs)``: batches are already made here."""
        if kwargs.get("batch_size") is not None:
            raise ValueError("ShardDataset makes its own batches: set batch_size on the ShardDataset")
        kwargs["batch_size"] = None
        return torch.utils.data.DataLoader(self, **kwargs)


class ShardEvents(torch.utils.data.Dataset):
    """Map-style, one event per item: ``DataLoader(events, batch_size=B, sampler=DistributedSampler(events),
    collate_fn=events.collate)`` yields the testbed's batch dicts. Simple, and slow: every item is one HDF5
    read per array (the naive baseline of `bench/data_loading.py`)."""

    def __init__(self, path: str | os.PathLike | ShardSet, verify: str = "quick", cfg: Any = None):
        self.shards = path if isinstance(path, ShardSet) else ShardSet(path, verify=verify, cfg=cfg)
        self.testbed = self.shards.testbed

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.shards.read_event(i)

    def collate(self, events: list[dict[str, np.ndarray]]) -> dict:
        """A list of events -> one batch dict of the testbed (all events in one batch, in order)."""
        data = self.shards.collate(events)
        return next(iter(self.testbed.batches(data, len(events), shuffle=False)))
