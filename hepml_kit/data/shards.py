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

`ShardSet` opens and checks a data set (what ``hepml-kit data verify`` runs). The writing side
(`write_shards`, inferring the schema) is `hepml_kit.data.writer`; the reading side (the chunked
`ShardDataset`, the per-event `ShardEvents`, the `rank_chunks` sampler, building events from arrays) is
`hepml_kit.data.loader`. Their names are re-exported here.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

__all__ = [
    "FORMAT",
    "GENERATORS",
    "ShardDataset",  # from hepml_kit.data.loader
    "ShardError",
    "ShardEvents",  # from hepml_kit.data.loader
    "ShardSet",
    "generator_of",
    "rank_chunks",  # from hepml_kit.data.loader
    "write_shards",  # from hepml_kit.data.writer
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


_REEXPORTED = {"ShardDataset": "loader", "ShardEvents": "loader", "rank_chunks": "loader", "write_shards": "writer"}


def __getattr__(name: str):  # the reading and writing sides, re-exported lazily (both import this module)
    if name in _REEXPORTED:
        module = importlib.import_module(f"hepml_kit.data.{_REEXPORTED[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
