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

`ShardSet` opens and checks a data set (what ``hepml-kit data verify`` runs); the reading side (the
chunked `ShardDataset`, the per-event `ShardEvents`, the `rank_chunks` sampler, building events from
arrays) is `hepml_kit.data.loader`, whose names are re-exported here.

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
    "ShardDataset",  # from hepml_kit.data.loader
    "ShardError",
    "ShardEvents",  # from hepml_kit.data.loader
    "ShardSet",
    "generator_of",
    "rank_chunks",  # from hepml_kit.data.loader
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
        self.slabs: list[np.ndarray] = []  # chunk buffers the loader reuses once no event points into them
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
                    off = self.checked(k, lambda: f[key]["offsets"][:], key)
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
            self._files, self._datasets, self.slabs, self._pid = {}, {}, [], os.getpid()
        if k not in self._files:
            path = self.root / self.manifest["shards"][k]["file"]
            try:
                self._files[k] = h5py.File(path, "r")
            except OSError as e:
                raise ShardError(f"{path}: cannot open as HDF5 ({e}): corrupt or truncated shard") from None
        return self._files[k]

    def checked(self, k: int, fn: Callable[[], np.ndarray], what: str) -> np.ndarray:
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
        self._files, self._datasets, self.slabs = {}, {}, []

    def __getstate__(self):  # picklable for DataLoader workers (spawn): handles are reopened there
        state = dict(self.__dict__)
        state["_files"], state["_datasets"], state["slabs"] = {}, {}, []
        return state

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def n_events(self) -> int:
        return len(self)

    # ---- reads (events are built in `hepml_kit.data.loader`; these are the handles and offsets it reads)
    def read(self, start: int, stop: int):
        """Events [start, stop) (global indices) in the testbed's data format: one read per array per shard."""
        from hepml_kit.data import loader

        return loader.read_events(self, start, stop)

    def read_event(self, i: int) -> dict[str, np.ndarray]:
        """Event i alone, as {key: array} (no ``cfg``, tensors as numpy): one HDF5 read per array."""
        from hepml_kit.data import loader

        return loader.read_event(self, i)

    def collate(self, events: list[dict[str, np.ndarray]]):
        """Events from `read_event` -> the testbed's data format (what `read` returns)."""
        from hepml_kit.data import loader

        return loader.collate_events(self, events)

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard k, local start, local stop) for each shard that global events [start, stop) touch."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"events [{start}, {stop}) outside [0, {len(self)})")
        k = int(np.searchsorted(self.starts, start, side="right") - 1)
        while start < stop:
            end = min(stop, int(self.starts[k + 1]))
            if end > start:
                yield k, start - int(self.starts[k]), end - int(self.starts[k])
            start, k = end, k + 1

    def is_ragged(self, key: str) -> bool:
        return self.layout == "events" and self.schema[key]["ragged_axis"] is not None

    def dataset(self, k: int, key: str) -> h5py.Dataset:
        """The HDF5 dataset of `key` in shard k (ragged keys: their ``values``), handle cached per process."""
        ds = self._datasets.get((k, key)) if self._pid == os.getpid() else None
        if ds is None:
            f = self._file(k)
            ragged = self.is_ragged(key)
            ds = self._datasets[(k, key)] = self.checked(k, lambda: f[key]["values"] if ragged else f[key], key)
        return ds

    def offsets(self, k: int, key: str) -> np.ndarray:
        """Offsets (events + 1) of ragged `key` in shard k, read once and cached."""
        off = self._offsets.get((k, key))
        if off is None:
            f = self._file(k)
            off = self._offsets[(k, key)] = self.checked(k, lambda: f[key]["offsets"][:], f"{key}/offsets")
        return off

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ShardSet({str(self.root)!r}: {m['model']} preset {m['preset']}, {len(self)} events in "
                f"{len(self.counts)} shards, {m['generator_version']}, seed {m['seed']})")


_LOADER_NAMES = ("ShardDataset", "ShardEvents", "rank_chunks")


def __getattr__(name: str):  # the reading side, re-exported lazily (hepml_kit.data.loader imports this module)
    if name in _LOADER_NAMES:
        from hepml_kit.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
