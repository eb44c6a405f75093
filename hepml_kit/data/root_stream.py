"""Stream ROOT files directly, each rank its share in chunks, for users who won't convert them to shards.

    stream = RootStream(["jets_0.root", "jets_1.root"], tree="jets", batch_size=128, shuffle=True)
    for batch in stream.loader(num_workers=2): ...       # {branch: numpy rows, or awkward if jagged}

The entries of all files are cut into chunks of `chunk_events` (never across a file's end); ranks deal
them out like `rank_chunks` (order permuted per (seed, epoch), rank r takes every world_size-th chunk, so
every entry goes to exactly one rank) and read each chunk with uproot's ``iterate`` over its entry range,
one basket read per branch instead of one per event. Batches are what `ShardDataset` yields for a
converted data set (`hepml-kit data convert`); converting is faster to read and checksummed, streaming
needs no copy. Input problems raise `ConvertError` naming the file when the stream is built.

Taught in curriculum/09_data_delivery.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from hepml_kit.data.convert import ConvertError, _apply_cut, _check_cut, _numeric_columns, _why
from hepml_kit.data.loader import _dist_rank_world, table_batches

__all__ = ["RootStream"]


class RootStream(torch.utils.data.IterableDataset):
    """This rank's share of ROOT files' entries, read in chunks, as batches of {branch: rows}.

    Args:
        files: ROOT files (TTree or RNTuple named `tree` in each).
        tree, branches, cut: as for ``hepml-kit data convert`` (the cut applies inside each chunk).
        batch_size, chunk_events, shuffle, seed, rank, world_size, drop_last: as for `ShardDataset`.
    """

    def __init__(self, files: list[str | os.PathLike], tree: str, batch_size: int, *,
                 branches: list[str] | None = None, cut: str | None = None, chunk_events: int = 4096,
                 shuffle: bool = False, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False):
        import uproot

        super().__init__()
        if batch_size < 1 or chunk_events < 1:
            raise ValueError(f"batch_size and chunk_events must be >= 1; got {batch_size}, {chunk_events}")
        _check_cut(cut)
        self.files, self.tree, self.cut = [str(f) for f in files], tree, cut
        self.batch_size, self.chunk_events, self.shuffle, self.seed = (int(batch_size),
                                                                       int(chunk_events), shuffle, seed)
        r, w = _dist_rank_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank={self.rank}, "
                             f"world_size={self.world_size}")
        self.drop_last, self.epoch, self._chunks = drop_last, 0, []
        for path in self.files:  # check every file now: a bad one is named before any rank starts reading
            if not os.path.isfile(path):
                raise ConvertError(f"{path}: no such file; check the path")
            try:
                with uproot.open(path) as f:
                    t = f[tree]
                    known, n = list(t.keys()), int(t.num_entries)
            except Exception as e:  # noqa: BLE001  (missing tree, truncated or corrupt file)
                raise ConvertError(f"{path}: cannot read tree {tree!r} ({_why(e)}); "
                                   "check --tree and the file") from None
            missing = [b for b in branches or [] if b not in known]
            if missing:
                raise ConvertError(f"{path}: tree {tree!r} has no branch {', '.join(map(repr, missing))}; "
                                   f"its branches are {', '.join(known)}")
            self.branches = branches or known
            self._chunks += [(path, a, min(a + self.chunk_events, n)) for a in range(0, n, self.chunk_events)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunks(self, worker: int = 0, num_workers: int = 1) -> list[tuple[str, int, int]]:
        """(file, entry start, entry stop) this rank (and DataLoader worker) reads this epoch."""
        chunks = self._chunks
        if self.drop_last:
            chunks = [c for c in chunks if c[2] - c[1] == self.chunk_events]
        order = np.arange(len(chunks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(chunks))
        if self.drop_last:
            order = order[: len(order) // self.world_size * self.world_size]
        mine = [chunks[i] for i in order[self.rank :: self.world_size]]
        return mine[worker::num_workers]

    def _read(self, path: str, a: int, b: int) -> dict:
        import uproot

        try:
            with uproot.open(path) as f:
                t = f[self.tree]
                names = list(t.keys()) if self.cut else self.branches
                (arrays,) = list(t.iterate(names, entry_start=a, entry_stop=b, step_size=b - a, library="ak"))
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: reading entries [{a}, {b}) of {self.tree!r} failed "
                               f"({_why(e)})") from None
        arrays = _apply_cut(path, arrays, self.branches, self.cut)
        import awkward as ak

        return {k: ak.unflatten(*v) if isinstance(v, tuple) else v
                for k, v in _numeric_columns(path, arrays, self.branches).items()}

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for path, a, b in self.chunks(worker, n_workers):
            data = self._read(path, a, b)
            if len(next(iter(data.values()))) == 0:
                continue
            batch_seed = int(np.random.SeedSequence([self.seed, self.epoch, a]).generate_state(1)[0])
            yield from table_batches(data, self.batch_size, shuffle=self.shuffle, seed=batch_seed)

    def loader(self, **kwargs) -> torch.utils.data.DataLoader:
        """``DataLoader(self, batch_size=None, **kwargs)``: batches are already made here."""
        kwargs["batch_size"] = None
        return torch.utils.data.DataLoader(self, **kwargs)
