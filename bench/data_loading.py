"""Benchmark: naive per-event reads against chunked shard reads, and generation speed, for every testbed.

For each model (tiny preset config) it generates a data set (events/s of ``Testbed.generate`` and of
`write_shards`, which adds HDF5 writing and checksums), then reads it back two ways, side by side in
interleaved repeats (the machine is shared and noisy: medians):

- naive: one event at a time in shuffled order (`ShardSet.read_event`, i.e. what a map-style Dataset does
  under ``DataLoader(shuffle=True)``): one HDF5 read per array per event;
- chunked: shuffled chunks of `CHUNK` consecutive events, at most a quarter of the set (`ShardSet.read`
  over `rank_chunks`, what `ShardDataset` does): one HDF5 read per array per chunk.

Both return the same events in the testbed's data format. Also timed: the full path to the model's batch
dicts, `ShardDataset` against ``DataLoader(ShardEvents, batch_size, collate_fn)``. Goal: chunked reads
>= 10x naive for the per-event-small testbeds (jets, waveforms, showers, tracking); a 3-D box of 2.5 MB
(cosmology) is a large read either way, so its ratio is reported but not held to the goal.

Integrity checks (issue 20): every shard is now written in HDF5's 1.10 format and its metadata ranges
(every byte outside the Fletcher-32-checked chunks) are hashed when a data set is opened, before HDF5
parses it. Timed side by side on the same events: opening with the old default (sizes, attributes,
structure), with the new default (plus the metadata SHA-256), with ``verify="full"`` (whole-file SHA-256),
and chunked reads of the old format (``libver="earliest"``) against the new one.

Tracking events are a list of per-event dicts of 16 ragged arrays (the testbed's data format): its chunked
path reads each chunk into a reused buffer (`hepml_kit.data.loader`, no fresh pages to fault in per chunk)
and hands out views per event; what remains is one HDF5 read per array per chunk and building the dicts.

    .venv/bin/python bench/data_loading.py [--quick] [--only MODEL ...]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hepml_kit import models  # noqa: E402
from hepml_kit.data import (  # noqa: E402
    ShardDataset,
    ShardEvents,
    ShardSet,
    rank_chunks,
    write_shards,
    writer,
)
from hepml_kit.data import shards as shards_module  # noqa: E402

# events per data set (full run, --quick); chosen so each generation takes seconds on 2 cores
EVENTS = {"tracking_gnn": (400, 100), "waveform_vae": (20_000, 4096), "calo_gan": (20_000, 4096),
          "jet_transformer": (20_000, 4096), "cosmo_unet": (32, 8)}
SMALL_EVENTS = ("tracking_gnn", "waveform_vae", "calo_gan", "jet_transformer")  # held to the >= 10x goal
CHUNK = 1024
NAIVE_MAX = 2000  # naive reads are timed on at most this many events (rates, not totals, are compared)


MIN_SECONDS = 0.3  # each timing repeats its pass until it has run this long: stable rates for small sets


def time_naive(shards: ShardSet, rng) -> float:
    """Events/s reading one event at a time, in shuffled order."""
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < MIN_SECONDS:
        for i in rng.permutation(len(shards))[:NAIVE_MAX]:
            shards.read_event(int(i))
            n += 1
    return n / (time.perf_counter() - t0)


def time_chunked(shards: ShardSet, epoch: int) -> float:
    """Events/s reading shuffled chunks (new chunk order every pass)."""
    chunk = min(CHUNK, max(1, len(shards) // 4))
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < MIN_SECONDS:
        for a, b in rank_chunks(len(shards), chunk, shuffle=True, seed=0, epoch=epoch):
            shards.read(a, b)
            n += b - a
        epoch += 1000
    return n / (time.perf_counter() - t0)


def time_batches(loader, samples_in, limit: int) -> float:
    """Events/s delivered as the model's batch dicts (stops after `limit` events)."""
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += samples_in(batch)
        if n >= limit:
            break
    return n / (time.perf_counter() - t0)


def time_open(path: str, verify: str, metadata_check: bool = True) -> float:
    """Seconds to open and check a data set (median of repeats until MIN_SECONDS); without
    `metadata_check` it is the old default: sizes, attributes and structure only."""
    check = shards_module.ShardSet._metadata_problem
    if not metadata_check:
        shards_module.ShardSet._metadata_problem = lambda *args: None
    try:
        times, t0 = [], time.perf_counter()
        while not times or time.perf_counter() - t0 < MIN_SECONDS:
            t = time.perf_counter()
            ShardSet(path, verify=verify)
            times.append(time.perf_counter() - t)
    finally:
        shards_module.ShardSet._metadata_problem = check
    return statistics.median(times)


def bench_integrity(name: str, path: str, n: int, root: str, repeats: int) -> dict:
    """Open cost of the checks, and read rates of the old file format against the new one."""
    old_path = os.path.join(root, name + "-v0")
    libver = writer._LIBVER
    writer._LIBVER = ("earliest", "latest")  # the format shards had before issue 20
    try:
        write_shards(name, n, 4, old_path, seed=0, progress=False)
    finally:
        writer._LIBVER = libver
    old, new = ShardSet(old_path), ShardSet(path)
    read_old, read_new = [], []
    for r in range(repeats):
        read_old.append(time_chunked(old, r))
        read_new.append(time_chunked(new, r))
    med = statistics.median
    out = {"open_old": time_open(old_path, "quick", metadata_check=False),
           "open_new": time_open(path, "quick"), "open_full": time_open(path, "full"),
           "read_old": med(read_old), "read_new": med(read_new)}
    out["open_ratio"] = out["open_new"] / out["open_old"]
    out["read_ratio"] = out["read_new"] / out["read_old"]
    print(f"{name:16} checks: open old default {out['open_old'] * 1e3:7.2f} ms  new "
          f"default (+metadata SHA-256) {out['open_new'] * 1e3:7.2f} ms  x{out['open_ratio']:4.2f}  full "
          f"{out['open_full'] * 1e3:7.2f} ms  |  chunked read old format {out['read_old']:9.0f}  new "
          f"{out['read_new']:9.0f} ev/s  x{out['read_ratio']:4.2f}",
          flush=True)
    return out


def bench_model(name: str, n: int, root: str, repeats: int) -> dict:
    tb = models.get(name)
    cfg = tb.config("tiny")
    t0 = time.perf_counter()
    tb.generate(cfg, n, 0)
    gen = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    m = write_shards(name, n, 4, os.path.join(root, name), seed=0, progress=False)
    write = n / (time.perf_counter() - t0)
    mb = sum(s["bytes"] for s in m["shards"]) / 1e6
    shards = ShardSet(os.path.join(root, name))
    rng = np.random.default_rng(0)
    naive, chunked = [], []
    for r in range(repeats):
        naive.append(time_naive(shards, rng))
        chunked.append(time_chunked(shards, r))
    bs = tb.train_defaults["tiny"]["batch_size"]
    limit = min(n, NAIVE_MAX)
    events = ShardEvents(shards)
    naive_loader = torch.utils.data.DataLoader(events, batch_size=bs, shuffle=True, collate_fn=events.collate)
    batched_naive = time_batches(naive_loader, tb.samples_in, limit)
    batched_chunked = time_batches(ShardDataset(shards, batch_size=bs, shuffle=True), tb.samples_in, n)
    med = statistics.median
    out = {"gen": gen, "write": write, "mb": mb, "naive": med(naive), "chunked": med(chunked),
           "ratio": med(chunked) / med(naive), "batch_naive": batched_naive, "batch_chunked": batched_chunked}
    out.update(bench_integrity(name, os.path.join(root, name), n, root, repeats))
    print(f"{name:16} n={n:6d} {mb:7.1f} MB  generate {gen:9.0f} ev/s  write {write:9.0f} ev/s  read naive "
          f"{out['naive']:9.0f} ev/s  chunked {out['chunked']:10.0f} ev/s  x{out['ratio']:6.1f}  |  batches "
          f"naive {batched_naive:8.0f}  chunked {batched_chunked:8.0f} ev/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data sets, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", nargs="*", choices=list(EVENTS), help="only these models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}; "
          f"chunk {CHUNK} events, medians of {repeats} interleaved repeats")
    results = {}
    with tempfile.TemporaryDirectory(prefix="hepml-bench-data-") as root:
        for name, (full, quick) in EVENTS.items():
            if not args.only or name in args.only:
                results[name] = bench_model(name, quick if args.quick else full, root, repeats)
    short = {"tracking_gnn": "tracking", "waveform_vae": "waveforms", "calo_gan": "showers",
             "jet_transformer": "jets", "cosmo_unet": "cosmology"}
    small = [results[m]["ratio"] for m in SMALL_EVENTS if m in results]
    parts = [f"read_ratio_min_small_events={min(small):.1f}"] if small else []
    for name, r in results.items():
        s = short[name]
        parts += [f"read_ratio_{s}={r['ratio']:.1f}", f"naive_{s}_events_per_s={r['naive']:.0f}",
                  f"chunked_{s}_events_per_s={r['chunked']:.0f}", f"generate_{s}_events_per_s={r['gen']:.1f}",
                  f"write_{s}_events_per_s={r['write']:.1f}", f"open_old_default_{s}_s={r['open_old']:.5f}",
                  f"open_new_default_{s}_s={r['open_new']:.5f}", f"open_full_{s}_s={r['open_full']:.5f}",
                  f"open_ratio_new_to_old_{s}={r['open_ratio']:.2f}",
                  f"read_ratio_new_to_old_format_{s}={r['read_ratio']:.2f}"]
    print("RESULT " + " ".join(parts))


if __name__ == "__main__":
    main()
