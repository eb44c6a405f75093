"""A user's own files as checked shards: ROOT trees (uproot; TTree or RNTuple), HDF5, Parquet -> shards.

    hepml-kit data convert jets_*.root --tree jets --branches jet_pt,trk_pt --cut "jet_pt > 20" \\
        --shards 8 --out data/mine
    convert_files(["jets.root"], tree="jets", n_shards=8, out_dir="data/mine")   # the same from Python

Flat numeric branches become one column each; jagged branches (a variable number of tracks per jet) are
read through awkward and kept ragged, values + offsets, as `ShardSet` reads them back (awkward arrays).
The result is a ``table`` data set (`hepml_kit.data.shards`) with the same manifest, SHA-256 and
metadata checksums as generated data, so ``hepml-kit data verify DIR`` checks it and `ShardDataset`
streams it to ranks. `RootStream` (`hepml_kit.data.root_stream`) reads ROOT files directly instead.

Every input is checked before anything is written, and writing goes to a temporary folder that is
renamed at the end: a missing file, an unknown tree or branch, a truncated ROOT file, a non-numeric branch
or a cut that does not parse raises `ConvertError` naming the file and the fix, leaving no output behind.
The inputs are read into memory (one pass); for files larger than memory convert them in groups.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hepml_kit.data.writer import write_table

__all__ = ["ConvertError", "convert_files", "read_input"]

ROOT_SUFFIXES, HDF5_SUFFIXES, PARQUET_SUFFIXES = (".root",), (".h5", ".hdf5", ".hdf"), (".parquet", ".pq")


class ConvertError(ValueError):
    """An input cannot be converted: the message names the file and what to do."""


def _why(e: BaseException) -> str:
    """An exception as one line: its type and message (uproot's messages span lines)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _check_cut(cut: str | None) -> None:
    if cut is None:
        return
    try:
        compile(cut, "<cut>", "eval")
    except SyntaxError as e:
        raise ConvertError(f"--cut {cut!r} does not parse ({e.msg}); write a Python expression over branch "
                           "names, e.g. 'jet_pt > 20' or '(n_trk >= 2) & (abs(jet_eta) < 2.5)'") from None


def _numeric_columns(path: Path, arrays, names: list[str]) -> dict[str, Any]:
    """awkward record fields -> {name: numpy rows or (values, counts)}; refuses anything not numeric."""
    import awkward as ak

    out = {}
    for name in names:
        col = arrays[name]
        depth = col.ndim
        try:
            if depth == 1:
                rows = ak.to_numpy(col)
            elif depth == 2 and "var" in str(col.type):
                rows = (ak.to_numpy(ak.flatten(col)), ak.to_numpy(ak.num(col)))
            else:
                rows = ak.to_numpy(col)  # fixed-size arrays per event
        except (ValueError, TypeError) as e:
            raise ConvertError(f"{path}: branch {name!r} has type {col.type}, which is not a number, a fixed "
                               "array or one jagged list of numbers per event "
                               f"({_why(e)}); leave it out with --branches") from None
        values = rows[0] if isinstance(rows, tuple) else rows
        if values.dtype.kind not in "biuf":
            raise ConvertError(f"{path}: branch {name!r} holds {values.dtype} "
                               f"({col.type}), not numbers; leave it out with --branches")
        out[name] = rows
    return out


def _read_root(path: Path, tree: str | None, branches: list[str] | None, cut: str | None):
    import uproot

    try:
        f = uproot.open(path)
    except Exception as e:  # noqa: BLE001  (uproot raises many kinds on a damaged file)
        raise ConvertError(f"{path}: cannot open as a ROOT file ({_why(e)}): truncated or "
                           "corrupt; copy it again or rewrite it") from None
    with f:
        trees = [k.split(";")[0] for k, c in f.classnames().items()
                 if c.startswith(("TTree", "ROOT::RNTuple"))]
        if tree is None:
            if len(trees) != 1:
                raise ConvertError(f"{path}: holds the trees {trees}; name one with --tree")
            tree = trees[0]
        if tree not in trees:
            raise ConvertError(f"{path}: no tree {tree!r}; the trees in it are "
                               f"{trees or 'none'} (--tree NAME)")
        try:
            t = f[tree]
            known = list(t.keys())
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: cannot read tree {tree!r} ({_why(e)}): truncated or "
                               "corrupt; copy it again or rewrite it") from None
        names = branches or known
        missing = [b for b in names if b not in known]
        if missing:
            raise ConvertError(f"{path}: tree {tree!r} has no branch {', '.join(map(repr, missing))}; its "
                               f"branches are {', '.join(known)} (--branches a,b,...)")
        try:
            arrays = t.arrays(known if cut else names, library="ak")  # the cut may use branches not kept
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: reading tree {tree!r} failed ({_why(e)}): truncated or "
                               "corrupt; copy it again or rewrite it") from None
    return _apply_cut(path, arrays, names, cut), names


def _apply_cut(path: Path, arrays, names: list[str], cut: str | None):
    if cut is None:
        return arrays
    import awkward as ak

    scope = {name: arrays[name] for name in arrays.fields}
    scope.update(abs=abs, np=np, ak=ak)
    try:
        # the user's own cut, over their own columns
        mask = eval(compile(cut, "<cut>", "eval"), {"__builtins__": {}}, scope)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: --cut {cut!r} cannot be evaluated ({_why(e)}); use the "
                           f"column names: {', '.join(arrays.fields)}") from None
    return arrays[mask]


def _read_hdf5(path: Path, group: str | None, branches: list[str] | None, cut: str | None):
    import awkward as ak
    import h5py

    try:
        with h5py.File(path, "r") as f:
            g = f if group is None else f.get(group)
            if not isinstance(g, h5py.Group):
                raise ConvertError(f"{path}: no group {group!r}; groups in it: "
                                   f"{[k for k in f if isinstance(f[k], h5py.Group)]}")
            known = [k for k in g if isinstance(g[k], h5py.Dataset)]
            names = branches or known
            missing = [b for b in names if b not in known]
            if missing:
                raise ConvertError(f"{path}: no dataset {', '.join(map(repr, missing))}; "
                                   f"datasets: {', '.join(known)}")
            arrays = ak.zip({name: g[name][()] for name in names}, depth_limit=1)
    except ConvertError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: cannot read as HDF5 ({_why(e)}): truncated or corrupt") from None
    return _apply_cut(path, arrays, names, cut), names


def _read_parquet(path: Path, branches: list[str] | None, cut: str | None):
    import awkward as ak

    try:
        arrays = ak.from_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: cannot read as Parquet ({_why(e)}): truncated or corrupt") from None
    names = branches or list(arrays.fields)
    missing = [b for b in names if b not in arrays.fields]
    if missing:
        raise ConvertError(f"{path}: no column {', '.join(map(repr, missing))}; columns: "
                           f"{', '.join(arrays.fields)}")
    return _apply_cut(path, arrays, names, cut), names


def read_input(path: str | os.PathLike, tree: str | None = None, branches: list[str] | None = None,
               cut: str | None = None) -> dict[str, Any]:
    """One input file -> {branch: numpy rows or (values, counts)}, after the cut. ROOT: `tree` is the
    TTree; HDF5: the group holding one dataset per column (default: the file's top level)."""
    path = Path(path)
    _check_cut(cut)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file; check the path")
    suffix = path.suffix.lower()
    if suffix in ROOT_SUFFIXES:
        arrays, names = _read_root(path, tree, branches, cut)
    elif suffix in HDF5_SUFFIXES:
        arrays, names = _read_hdf5(path, tree, branches, cut)
    elif suffix in PARQUET_SUFFIXES:
        arrays, names = _read_parquet(path, branches, cut)
    else:
        raise ConvertError(f"{path}: unknown input type {suffix!r}; give .root, .h5/.hdf5 or .parquet files")
    return _numeric_columns(path, arrays, names)


def convert_files(inputs: list[str | os.PathLike], n_shards: int, out_dir: str | os.PathLike, *,
                  tree: str | None = None, branches: list[str] | None = None, cut: str | None = None,
                  overwrite: bool = False, progress: bool | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Read every input (same columns in each), concatenate, write `n_shards` shards to `out_dir`.
    Returns the manifest. Raises `ConvertError` (naming the file) before anything is written."""
    if not inputs:
        raise ConvertError("no input files given")
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1:
        raise ConvertError(f"--shards must be an integer >= 1; got {n_shards!r}")
    parts, first = [], None
    for path in inputs:
        cols = read_input(path, tree, branches, cut)
        if first is not None and list(cols) != list(first[1]):
            raise ConvertError(f"{path}: columns {list(cols)} differ from "
                               f"{first[0]}'s {list(first[1])}; pass --branches to pick the same ones")
        first = first or (path, cols)
        n = len(next(iter(cols.values()))[1] if isinstance(next(iter(cols.values())), tuple)
                else next(iter(cols.values())))
        log(f"read {path}: {n} events, {len(cols)} columns")
        parts.append(cols)
    columns = {}
    for name, rows in parts[0].items():
        if isinstance(rows, tuple):
            columns[name] = (np.concatenate([p[name][0] for p in parts]),
                             np.concatenate([p[name][1] for p in parts]))
        else:
            columns[name] = np.concatenate([p[name] for p in parts])
    n_events = len(columns[name][1]) if isinstance(columns[name], tuple) else len(columns[name])
    if n_events < n_shards:
        raise ConvertError(f"{n_events} events after the cut, fewer than --shards "
                           f"{n_shards}; loosen the cut or write fewer shards")
    source = {"inputs": [{"path": str(Path(p).resolve()), "bytes": Path(p).stat().st_size} for p in inputs],
              "tree": tree, "branches": list(columns), "cut": cut}
    try:
        return write_table(columns, n_shards, out_dir, source=source, overwrite=overwrite,
                           progress=progress, log=log)
    except ValueError as e:
        raise ConvertError(str(e)) from None
