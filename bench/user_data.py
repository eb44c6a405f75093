"""Benchmark: a user's ROOT file -> checked shards (MB/s), then three ways for one rank of two to feed on it.

A ROOT file as an analysis framework writes it (jets: two per-jet branches, three jagged per-track float32
branches, 1-15 tracks per jet) is written with uproot, then:

- conversion: `hepml_kit.data.convert.convert_files` (what ``hepml-kit data convert`` runs: uproot read,
  awkward, HDF5 shards with checksums and a manifest), MB/s of the ROOT file read and jets/s;
- loaders, per rank (rank 0 of 2, shuffled, batches of `BATCH` jets as ``{branch: rows}``, jagged branches as
  awkward arrays), side by side in interleaved repeats (medians; the machine is shared and noisy):
  * shards: `hepml_kit.data.ShardDataset` over the converted set (chunked, checksummed reads);
  * ROOT: `hepml_kit.data.RootStream` over the file itself (``uproot.iterate`` per chunk, no copy);
  * in memory: a plain ``DataLoader`` with a ``DistributedSampler`` over a map-style dataset of the arrays
    already in memory (per-jet ``__getitem__``, a collate that stacks the rows): the baseline with no I/O.

    .venv/bin/python bench/user_data.py [--jets N] [--repeats R]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import awkward as ak
import numpy as np
import torch
import uproot

from hepml_kit.data import ShardDataset
from hepml_kit.data.convert import convert_files
from hepml_kit.data.root_stream import RootStream

BATCH = 256
RANK, WORLD = 0, 2


def write_root(path: str, n: int, seed: int = 0) -> dict:
    """A user's ntuple of `n` jets; returns the arrays written (awkward for the jagged branches)."""
    rng = np.random.default_rng(seed)
    ntrk = rng.integers(1, 16, n)
    total = int(ntrk.sum())
    arrays = {"jet_pt": rng.exponential(50, n).astype("f4"), "label": rng.integers(0, 3, n).astype("i4"),
              **{k: ak.unflatten(rng.normal(0, 1, total).astype("f4"), ntrk)
                 for k in ("trk_pt", "trk_d0", "trk_z0")}}
    with uproot.recreate(path) as f:
        f["jets"] = arrays
    return arrays


class InMemoryJets(torch.utils.data.Dataset):
    """Map-style, one jet per item: per-jet numbers and per-track numpy arrays, all in memory."""

    def __init__(self, arrays: dict):
        self.flat = {k: np.asarray(v) for k, v in arrays.items() if v.ndim == 1}
        counts = None
        self.jagged = {}
        for k, v in arrays.items():
            if v.ndim == 2:
                counts = ak.to_numpy(ak.num(v, axis=1)) if counts is None else counts
                self.jagged[k] = np.split(ak.to_numpy(ak.flatten(v)), np.cumsum(counts)[:-1])

    def __len__(self) -> int:
        return len(next(iter(self.flat.values())))

    def __getitem__(self, i: int) -> dict:
        return {**{k: v[i] for k, v in self.flat.items()}, **{k: v[i] for k, v in self.jagged.items()}}


def collate_rows(jets: list[dict]) -> dict:
    """The same shape the shard and ROOT loaders give: numpy per-jet columns, awkward jagged ones."""
    out = {}
    for k, v in jets[0].items():
        column = [j[k] for j in jets]
        if np.ndim(v):  # one concatenate + offsets, as awkward builds jagged arrays
            out[k] = ak.unflatten(np.concatenate(column),
                                  np.fromiter(map(len, column), np.int64, len(column)))
        else:
            out[k] = np.asarray(column)
    return out


def jets_per_s(make_iterable) -> tuple[float, int]:
    """One pass over this rank's share: (jets per second, jets seen)."""
    t0, n = time.perf_counter(), 0
    for batch in make_iterable():
        n += len(batch["label"])
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jets", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-user-data-") as tmp:
        root = os.path.join(tmp, "user.root")
        t0 = time.perf_counter()
        arrays = write_root(root, args.jets)
        root_mb = os.path.getsize(root) / 1e6
        print(f"wrote {args.jets} jets ({int(ak.sum(ak.num(arrays['trk_pt'])))} tracks) to "
              f"a {root_mb:.1f} MB ROOT file in {time.perf_counter() - t0:.1f} s")

        convert_s = []
        for r in range(args.repeats):
            out = os.path.join(tmp, f"shards{r}")
            t0 = time.perf_counter()
            m = convert_files([root], 4, out, tree="jets", progress=False, log=lambda line: None)
            convert_s.append(time.perf_counter() - t0)
        shard_dir = out
        shards_mb = sum(s["bytes"] for s in m["shards"]) / 1e6
        conv = statistics.median(convert_s)
        print(f"convert ROOT -> 4 shards: {conv:.2f} s (median of {args.repeats}) = "
              f"{root_mb / conv:.1f} MB/s of ROOT read, {args.jets / conv:,.0f} jets/s; "
              f"shards {shards_mb:.1f} MB")

        memory = InMemoryJets(arrays)
        ways = {
            "shards (ShardDataset)": lambda: ShardDataset(shard_dir, batch_size=BATCH,
                                                          shuffle=True, rank=RANK, world_size=WORLD),
            "ROOT directly (RootStream)": lambda: RootStream([root], "jets", BATCH, shuffle=True, rank=RANK,
                                                             world_size=WORLD),
            "in memory (DataLoader)": lambda: torch.utils.data.DataLoader(
                memory, batch_size=BATCH, collate_fn=collate_rows,
                sampler=torch.utils.data.DistributedSampler(memory, num_replicas=WORLD,
                                                            rank=RANK, shuffle=True)),
        }
        rates = {name: [] for name in ways}
        seen = {}
        for _ in range(args.repeats):  # interleaved: each repeat runs every way once
            for name, make in ways.items():
                rate, seen[name] = jets_per_s(make)
                rates[name].append(rate)
        med = {name: statistics.median(v) for name, v in rates.items()}
        base = med["in memory (DataLoader)"]
        print(f"\nloader throughput, rank {RANK} of {WORLD}, batches of {BATCH} (median of {args.repeats}):")
        print(f"{'loader':<28} {'jets/s per rank':>16} {'jets':>8} {'vs in memory':>13}")
        for name, rate in med.items():
            print(f"{name:<28} {rate:>16,.0f} {seen[name]:>8} {rate / base:>12.2f}x")
    shards_r, root_r = med["shards (ShardDataset)"], med["ROOT directly (RootStream)"]
    print(f"RESULT convert_MB_per_s={root_mb / conv:.2f} convert_jets_per_s={args.jets / conv:.0f} "
          f"shards_jets_per_s_per_rank={shards_r:.0f} root_stream_jets_per_s_per_rank={root_r:.0f} "
          f"in_memory_dataloader_jets_per_s_per_rank={base:.0f} "
          f"shards_over_root_stream={shards_r / root_r:.3f} shards_over_in_memory={shards_r / base:.3f} "
          f"jets={args.jets}")


if __name__ == "__main__":
    main()
