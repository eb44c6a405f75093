"""Sharded HDF5 data sets: write a testbed's Monte Carlo once, stream it to many ranks in chunks.

    write_shards("jet_transformer", 100_000, 8, "data/jets", seed=0)       # 8 files + manifest.json
    ds = ShardDataset("data/jets", batch_size=128, shuffle=True)           # this rank's share, in chunks
    for batch in ds.loader(num_workers=2, pin_memory=True): ...            # the testbed's batch dicts

What a data set holds is exactly what ``Testbed.generate(cfg, n, seed)`` returns, so a batch read from
shards is the batch the model would have trained on from memory. Three layouts are handled generically:

* ``columns``: a dict of arrays whose first axis is the event (jets, waveforms, showers, cosmology boxes);
  torch tensors are stored as arrays and come back as tensors; the model config (``cfg`` entries) is not
  stored but rebuilt from the manifest's preset.
* ``events``: a list of per-event dicts (tracking): fixed-shape entries are stacked; ragged entries
  (hits, particles, edges) are concatenated along their varying axis with ``offsets`` (n + 1) beside them.
* ``table``: a user's own files (``hepml-kit data convert``, `hepml_kit.data.convert`): one column per
  branch, jagged branches stored as values + offsets and read back as awkward arrays; no testbed.

Files: ``shard-00000-of-00008.h5`` ... and ``manifest.json`` (model, preset, config, generator module and
``GENERATOR_VERSION``, seed, events per shard, bytes and SHA-256 per file, the array schema). Each shard
carries the data set's id, its index and count as attributes. Every byte of a shard is covered by a
checksum that opening or reading verifies, so data is never silently wrong:

* chunk contents: every HDF5 chunk carries a Fletcher-32 checksum, verified when the chunk is read;
* everything else (superblock, object headers, attributes, the chunk index, heaps, free space): the
  manifest lists these byte ranges (the complement of the chunks) and their SHA-256, verified with plain
  file reads *before* HDF5 parses the file, so a damaged index can neither point at the wrong bytes nor
  crash the parser. Shards are written in HDF5's 1.10 format, whose metadata carries checksums of its own.

A missing, truncated or corrupt shard, a manifest that does not match its shards, or a data set written by
another generator version raises `ShardError` naming the file. A data set written before metadata
checksums existed is hashed whole (SHA-256, once per file per process) before it is parsed.

`ShardSet` opens and checks a data set (what ``hepml-kit data verify`` runs) and reads events back as the
testbed's data. Imports point one way: this module is the leaf; the writing side (`write_shards`) is
`hepml_kit.data.writer`, the feeding side (the chunked `ShardDataset`, the per-event `ShardEvents`, the
`rank_chunks` sampler) is `hepml_kit.data.loader`; both import this module, and `hepml_kit.data`
re-exports all of them.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import mmap
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

__all__ = [
    "FORMAT",
    "GENERATORS",
    "MANIFEST",
    "ShardError",
    "ShardSet",
    "collate_events",
    "file_sha256",
    "generator_of",
    "metadata_checksum",
    "read_event",
    "read_events",
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


class ShardError(ValueError):
    """A sharded data set cannot be read as written: the message names the file and what is wrong."""


def generator_of(model: str) -> tuple[str, str]:
    """(generator module, its ``GENERATOR_VERSION``) of testbed `model`."""
    key = model.replace("-", "_")
    if key not in GENERATORS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(GENERATORS)}")
    module = importlib.import_module(GENERATORS[key])
    return GENERATORS[key], module.GENERATOR_VERSION


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_sha256 = file_sha256  # the old private name


# ------------------------------------------------------------------------------------------ metadata checksum
def _chunk_extents(f: h5py.File) -> list[tuple[int, int]]:
    """[start, stop) in the file of every stored chunk of every dataset (what Fletcher-32 covers)."""
    extents = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                extents.append((int(info.byte_offset), int(info.byte_offset + info.size)))

    f.visititems(visit)
    return sorted(extents)


def metadata_checksum(path: str | os.PathLike) -> dict:
    """``{"ranges": "a:b,c:d,...", "sha256": hex}``: the byte ranges of `path` outside its chunks (HDF5's
    metadata, attributes and free space) and their SHA-256. Called by the writer on a finished shard, whose
    every chunk must be Fletcher-32 checksummed; `ShardSet` checks the same ranges before opening it."""
    size = os.path.getsize(path)
    with h5py.File(path, "r") as f:
        extents = _chunk_extents(f)
    ranges, at = [], 0
    for a, b in extents:
        if a > at:
            ranges.append((at, a))
        at = max(at, b)
    if at < size:
        ranges.append((at, size))
    return {"ranges": ",".join(f"{a}:{b}" for a, b in ranges), "sha256": _ranges_sha256(path, ranges)}


def _ranges_sha256(path: str | os.PathLike, ranges: list[tuple[int, int]]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for a, b in ranges:
            f.seek(a)
            h.update(f.read(b - a))
    return h.hexdigest()


def _parse_ranges(text: str, size: int) -> list[tuple[int, int]]:
    """The manifest's "a:b,..." -> [(a, b), ...], increasing and inside [0, size]; ValueError otherwise."""
    ranges = [tuple(int(x) for x in part.split(":")) for part in text.split(",")] if text else []
    at = 0
    for r in ranges:
        if len(r) != 2 or not at <= r[0] < r[1] <= size:
            raise ValueError(f"metadata range {r} out of order or outside the file's {size} bytes")
        at = r[1]
    if not ranges or ranges[0][0] != 0:
        raise ValueError("metadata ranges must start at byte 0 (the superblock)")
    return ranges


# (path, size, mtime, inode) -> SHA-256, for shards without metadata sums
_WHOLE_FILE_HASHES: dict[tuple, str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _WHOLE_FILE_HASHES:
        _WHOLE_FILE_HASHES[key] = file_sha256(path)
    return _WHOLE_FILE_HASHES[key]


_READ_ATTRIBUTES = """
import json, sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    print(json.dumps({k: (v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v)
                      for k, v in f.attrs.items()
                      if isinstance(v, (bytes, str, int, float)) or hasattr(v, "item")}))
"""


def _holds(path: Path, text: str) -> bool:
    """Whether the bytes of `text` occur in the file (a plain scan, no HDF5 parsing)."""
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m.find(text.encode()) >= 0
        except ValueError:  # an empty file
            return False


def _attributes_in_child(path: Path) -> dict | None:
    """A damaged shard's attributes read in a child process (a corrupt file can crash the HDF5 parser,
    which must not take the caller down), or None when they cannot be read. Used on the error path only."""
    try:
        r = subprocess.run([sys.executable, "-c", _READ_ATTRIBUTES, str(path)],
                           capture_output=True, text=True, timeout=60, check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------- reading
class ShardSet:
    """An opened sharded data set: checks it against its manifest, reads events by global index.

    Global index i runs over shard 0's events, then shard 1's, ... `read(start, stop)` returns events in
    the testbed's data format (what ``Testbed.generate`` returns, ready for ``Testbed.batches``);
    `read_event(i)` returns one event as a dict of numpy arrays (the naive path).

    Args:
        path: the folder holding ``manifest.json`` (or the manifest itself).
        verify: ``"quick"`` (default: files, sizes, the SHA-256 of each file's metadata ranges before
            HDF5 parses it, attributes, counts, schema, offsets; every chunk's Fletcher-32 checksum is
            verified when it is read) or ``"full"`` (also the SHA-256 of each whole file, first).
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
        if m["model"] is None:  # a user's own files (`hepml-kit data convert`): a table, no testbed behind it
            self.testbed, cfg = None, None
        else:
            cfg = self._check_generator(m, cfg)
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

    def _check_generator(self, m: dict, cfg: Any) -> Any:
        """The testbed and config of a generated data set, refusing another generator version or config."""
        try:
            _, version = generator_of(m["model"])
        except ValueError as e:
            raise ShardError(f"{self.manifest_path}: {e}") from None
        if m["generator_version"] != version:
            raise ShardError(f"{self.manifest_path}: written by generator {m['generator']} version "
                             f"{m['generator_version']!r}, but this code's generator is "
                             f"{version!r}; the events would differ from fresh ones. Regenerate the data set "
                             "(hepml-kit data generate).")
        from hepml_kit import models

        self.testbed = models.get(m["model"])
        if cfg is None:
            cfg = self.testbed.config(m["preset"])
            if repr(cfg) != m["config"]:
                raise ShardError(f"{self.manifest_path}: the data was written with a "
                                 f"config other than today's preset {m['preset']!r} of "
                                 f"{m['model']}:\n  written: {m['config']}\n  now:     {cfg!r}\nPass cfg= "
                                 "explicitly, or regenerate.")
        return cfg

    # ---- checks
    def _load_manifest(self) -> dict:
        try:
            m = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise ShardError(f"{self.manifest_path}: no manifest; is this a folder "
                             "written by write_shards?") from None
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
        entry = self.manifest["shards"][k]
        path = self.root / entry["file"]
        if not path.is_file():
            raise ShardError(f"{path}: shard {k} listed in {self.manifest_path} is missing")
        # bytes first, HDF5 last: the parser only ever sees a file whose every metadata byte is as written
        size, problem = path.stat().st_size, None
        if size != entry["bytes"]:
            problem = (f"{path}: truncated or modified after writing: {size} bytes, "
                       f"{self.manifest_path} says {entry['bytes']}")
        elif verify == "full" and file_sha256(path) != entry["sha256"]:
            problem = f"{path}: SHA-256 differs from {self.manifest_path}: the file is corrupt"
        else:
            problem = self._metadata_problem(k, path, entry, verify)
        if problem:  # a shard of another data set (its id is not in it): say which, if it is readable at all
            attrs = None if _holds(path, self.manifest["dataset_id"]) else _attributes_in_child(path)
            raise ShardError((attrs is not None and self._attributes_problem(k, path, attrs)) or problem)
        try:
            self._check_contents(k, path, entry)
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001  (anything h5py raises on a shard is about that shard)
            raise ShardError(f"{path}: cannot read as a shard ({type(e).__name__}: {e}): corrupt "
                             "shard") from None

    def _metadata_problem(self, k: int, path: Path, entry: dict, verify: str) -> str | None:
        meta = entry.get("metadata")
        if meta is None:  # written before metadata checksums: hash the whole file (once per process)
            if verify != "full" and _cached_sha256(path) != entry["sha256"]:
                return f"{path}: SHA-256 differs from {self.manifest_path}: the file is corrupt"
            return None
        try:
            ranges = _parse_ranges(meta["ranges"], entry["bytes"])
            want = meta["sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{self.manifest_path}: shard {k}'s metadata checksum entry is malformed ({e}); "
                             "regenerate the data set (hepml-kit data generate --overwrite)") from None
        if _ranges_sha256(path, ranges) != want:
            return (f"{path}: cannot open as HDF5: its metadata (superblock, headers, "
                    f"chunk index) differs from the SHA-256 in {self.manifest_path}: the file "
                    "is corrupt; regenerate it")
        return None

    def _attributes_problem(self, k: int, path: Path, attrs: dict) -> str | None:
        """Why a shard with these attributes does not belong at position k of this data set, or None."""
        m, entry = self.manifest, self.manifest["shards"][k]
        want = {"generator_version": m["generator_version"], "dataset_id": m["dataset_id"], "shard": k,
                "n_events": entry["n_events"], "model": m["model"] or ""}
        for key, value in want.items():
            got = attrs.get(key)
            got = got.decode() if isinstance(got, bytes) else (got.item() if hasattr(got, "item") else got)
            if got != value:
                what = {"generator_version": "another generator version", "dataset_id": "another data set",
                        "shard": "another shard position", "n_events": "another event count",
                        "model": "another model"}[key]
                return (f"{path}: {key} is {got!r} but {self.manifest_path} says "
                        f"{value!r}: the shard comes from {what}; the manifest does not match its shards")
        return None

    def _check_contents(self, k: int, path: Path, entry: dict) -> None:
        f = self._file(k)
        problem = self._attributes_problem(k, path, dict(f.attrs))
        if problem:
            raise ShardError(problem)
        n = entry["n_events"]
        for key, spec in self.schema.items():
            if spec.get("kind") == "config":
                continue
            ragged = self.is_ragged(key)
            try:
                ds = f[key]["values"] if ragged else f[key]
                rows = ds.shape[0]
                if ds.dtype.str != spec["dtype"]:
                    raise ShardError(f"{path}: {key} has dtype {ds.dtype.str}, the "
                                     f"manifest says {spec['dtype']}")
                if ragged:
                    off = self.checked(k, lambda key=key: f[key]["offsets"][:], key)
                    if len(off) != n + 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
                        raise ShardError(f"{path}: {key}/offsets do not describe {n} "
                                         f"events over {rows} values")
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
            except Exception as e:  # noqa: BLE001  (h5py raises OSError, RuntimeError, KeyError, ... on damage)
                raise ShardError(f"{path}: cannot open as HDF5 ({e}): corrupt or truncated shard") from None
        return self._files[k]

    def checked(self, k: int, fn: Callable[[], np.ndarray], what: str) -> np.ndarray:
        try:
            return fn()
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001  (a failed Fletcher-32 check is an OSError; any h5py error counts)
            path = self.root / self.manifest["shards"][k]["file"]
            raise ShardError(f"{path}: reading {what} failed ({e}): the shard is "
                             f"corrupt (run `hepml-kit data verify {self.root}`)") from None

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

    # ---- reads (events are built from arrays by the functions below the class)
    def read(self, start: int, stop: int):
        """Events [start, stop) (global indices) in the testbed's data format: one read per array per
        shard."""
        return read_events(self, start, stop)

    def read_event(self, i: int) -> dict[str, np.ndarray]:
        """Event i alone, as {key: array} (no ``cfg``, tensors as numpy): one HDF5 read per array."""
        return read_event(self, i)

    def collate(self, events: list[dict[str, np.ndarray]]):
        """Events from `read_event` -> the testbed's data format (what `read` returns)."""
        return collate_events(self, events)

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
        return self.layout in ("events", "table") and self.schema[key].get("ragged_axis") is not None

    def dataset(self, k: int, key: str) -> h5py.Dataset:
        """The HDF5 dataset of `key` in shard k (ragged keys: their ``values``), handle cached per process."""
        ds = self._datasets.get((k, key)) if self._pid == os.getpid() else None
        if ds is None:
            f = self._file(k)
            ragged = self.is_ragged(key)
            ds = self._datasets[(k, key)] = self.checked(k,
                                                         lambda: f[key]["values"] if ragged else f[key], key)
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
        if m["model"] is None:
            return (f"ShardSet({str(self.root)!r}: {len(self)} events of {', '.join(self.schema)} in "
                    f"{len(self.counts)} shards, converted from {len(m['source']['inputs'])} file(s))")
        return (f"ShardSet({str(self.root)!r}: {m['model']} preset {m['preset']}, {len(self)} events in "
                f"{len(self.counts)} shards, {m['generator_version']}, seed {m['seed']})")


# ----------------------------------------------------------------------------------------- events from arrays
# Per-event data (tracking: a list of dicts of ragged arrays) is read a chunk at a time into one buffer, a
# "slab": every array of the chunk in one low-level HDF5 read each, then each event's arrays are views into
# it. Slabs are reused, but only once no array from them is alive any more (their reference count says so),
# so the pages stay mapped instead of faulting in afresh for every chunk, and returned events never change.
_ALIGN = 64  # bytes: each array of a slab starts on a cache line
_SLABS_KEPT = 2  # per process: the chunk being read while the previous one is still in use


def _read_plain(shards: ShardSet, k: int, a: int, b: int) -> dict[str, Any]:
    """Local events [a, b) of shard k with ordinary h5py slicing: {key: rows} (ragged: (values, offsets))."""
    out = {}
    for key, spec in shards.schema.items():
        if spec.get("kind") == "config":
            continue
        ds = shards.dataset(k, key)
        if shards.is_ragged(key):
            off = shards.offsets(k, key)
            lo, hi = int(off[a]), int(off[b])
            out[key] = (shards.checked(k, lambda ds=ds, lo=lo, hi=hi: ds[lo:hi], f"{key}[{a}:{b}]"),
                        off[a : b + 1] - lo)
        else:
            out[key] = shards.checked(k, lambda ds=ds: ds[a:b], f"{key}[{a}:{b}]")
    return out


def _slab(shards: ShardSet, nbytes: int) -> np.ndarray:
    """A byte buffer of at least `nbytes` that no live array points into (reused when possible)."""
    pool = shards.slabs
    for i in range(len(pool)):
        # references: the pool's list, getrefcount's argument; a view of the slab adds one (numpy views
        # point at the array that owns the memory), so 2 means nothing read from it is alive
        if sys.getrefcount(pool[i]) == 2 and pool[i].nbytes >= nbytes:
            return pool[i]
    slab = np.empty(nbytes + nbytes // 4, np.uint8)  # headroom: chunks vary in size
    free = [i for i in range(len(pool)) if sys.getrefcount(pool[i]) == 2]
    if free:
        pool[free[0]] = slab
    elif len(pool) < _SLABS_KEPT:
        pool.append(slab)
    return slab


def _read_into_slab(shards: ShardSet, k: int, a: int, b: int) -> dict[str, Any]:
    """`_read_plain`'s result, every array a view of one slab, one low-level HDF5 read per array."""
    plan, nbytes = [], 0
    for key, spec in shards.schema.items():
        if spec.get("kind") == "config":
            continue
        ds = shards.dataset(k, key)
        if shards.is_ragged(key):
            off = shards.offsets(k, key)
            lo, hi, local = int(off[a]), int(off[b]), off[a : b + 1] - off[a]
        else:
            lo, hi, local = a, b, None
        shape = (hi - lo, *ds.shape[1:])
        plan.append((key, ds, lo, shape, nbytes, local))
        nbytes += -(-int(np.prod(shape)) * ds.dtype.itemsize // _ALIGN) * _ALIGN
    slab, out = _slab(shards, nbytes), {}
    for key, ds, lo, shape, start, local in plan:
        rows = slab[start : start + int(np.prod(shape)) * ds.dtype.itemsize].view(ds.dtype).reshape(shape)
        if shape[0]:
            file_space = ds.id.get_space()
            file_space.select_hyperslab((lo,) + (0,) * (len(shape) - 1), shape)

            def read_rows(ds=ds, shape=shape, file_space=file_space, rows=rows):
                return ds.id.read(h5py.h5s.create_simple(shape), file_space, rows)

            shards.checked(k, read_rows, f"{key}[{a}:{b}]")
        out[key] = rows if local is None else (rows, local)
    return out


def _split_events(shards: ShardSet, part: dict) -> list[dict[str, np.ndarray]]:
    """{key: rows or (values, offsets)} -> one dict per event (column lists, then zipped: views, no copies
    except for a ragged axis other than the first, which is moved back in place per event)."""
    columns = {}
    for key, spec in shards.schema.items():
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


def read_events(shards: ShardSet, start: int, stop: int):
    """Events [start, stop) (global indices) of `shards` in the testbed's data format (`ShardSet.read`)."""
    pieces = list(shards.pieces(start, stop))
    if shards.layout == "events":
        return [ev for k, a, b in pieces
                for ev in _split_events(shards, shards.checked(k, lambda: _read_into_slab(shards, k, a, b),  # noqa: B023
                                                               f"events [{a}, {b})"))]
    parts = [shards.checked(k, lambda: _read_plain(shards, k, a, b), f"events [{a}, {b})")  # noqa: B023
             for k, a, b in pieces]
    if shards.layout == "table":
        return _table(shards, parts)
    out = {}
    for key, spec in shards.schema.items():
        if spec.get("kind") == "config":
            out[key] = shards.cfg
            continue
        rows = parts[0][key] if len(parts) == 1 else np.concatenate([p[key] for p in parts])
        out[key] = torch.from_numpy(rows) if spec["torch"] else rows
    return out


def _table(shards: ShardSet, parts: list[dict]) -> dict:
    """A user's table (`hepml-kit data convert`): {branch: numpy rows, or an awkward array if jagged}."""
    import awkward as ak

    out = {}
    for key in shards.schema:
        if shards.is_ragged(key):
            values = np.concatenate([p[key][0] for p in parts])
            counts = np.concatenate([np.diff(p[key][1]) for p in parts])
            out[key] = ak.unflatten(values, counts)
        else:
            out[key] = parts[0][key] if len(parts) == 1 else np.concatenate([p[key] for p in parts])
    return out


def read_event(shards: ShardSet, i: int) -> dict[str, np.ndarray]:
    """Event i alone, as {key: array} (`ShardSet.read_event`): one ordinary h5py read per array."""
    i = int(i)
    ((k, a, b),) = list(shards.pieces(i, i + 1))
    part = shards.checked(k, lambda: _read_plain(shards, k, a, b), f"event {i}")
    if shards.layout == "events":
        return _split_events(shards, part)[0]
    return {key: rows[0] for key, rows in part.items()}  # ragged: (this event's values, offsets)


def collate_events(shards: ShardSet, events: list[dict[str, np.ndarray]]):
    """Events from `read_event` -> the testbed's data format (`ShardSet.collate`)."""
    if shards.layout == "events":
        return list(events)
    if shards.layout == "table":
        import awkward as ak

        return {key: ak.Array([ev[key] for ev in events]) if shards.is_ragged(key) else
                np.stack([ev[key] for ev in events]) for key in shards.schema}
    out = {}
    for key, spec in shards.schema.items():
        if spec.get("kind") == "config":
            out[key] = shards.cfg
        else:
            rows = np.stack([ev[key] for ev in events])
            out[key] = torch.from_numpy(rows) if spec["torch"] else rows
    return out


_MOVED = {"ShardDataset", "ShardEvents", "rank_chunks", "write_shards"}


# old spelling `from hepml_kit.data.shards import ShardDataset`: the package has them
def __getattr__(name: str):
    if name in _MOVED:
        import hepml_kit.data

        return getattr(hepml_kit.data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
