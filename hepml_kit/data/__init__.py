"""Data: the testbeds' Monte Carlo generators (one module each) and sharded HDF5 data sets.

The sharded data sets' public names live here: the format, checks and reads in `hepml_kit.data.shards`
(the leaf), writing in `hepml_kit.data.writer`, feeding ranks in `hepml_kit.data.loader`, a user's own
files in `hepml_kit.data.convert` (to shards) and `hepml_kit.data.root_stream` (read directly). They are
loaded on first use, so importing a generator does not import torch's data loading or h5py.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "FORMAT": "shards", "GENERATORS": "shards", "MANIFEST": "shards", "ShardError": "shards",
    "ShardSet": "shards", "file_sha256": "shards", "generator_of": "shards", "metadata_checksum": "shards",
    "write_shards": "writer",
    "ShardDataset": "loader", "ShardEvents": "loader", "rank_chunks": "loader",
    "ConvertError": "convert", "convert_files": "convert", "RootStream": "root_stream",
}
__all__ = ["FORMAT", "GENERATORS", "MANIFEST", "ConvertError", "RootStream", "ShardDataset", "ShardError",
           "ShardEvents", "ShardSet", "convert_files", "file_sha256", "generator_of", "metadata_checksum",
           "rank_chunks", "write_shards"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
