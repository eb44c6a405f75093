"""Checks for curriculum/09_data_delivery's exercises: split a data set's chunks over ranks; project how long
streaming a 5 PB run takes."""

from __future__ import annotations

import math

from hepml_kit.checks import CheckFailed, call, passed

__all__ = ["HINTS", "ex09_rank_chunks", "ex09_stream_hours"]

HINTS = {
    "ex09_rank_chunks": "Cut range(n_events) into chunks [s, min(s + chunk_events, n_events)) "
                        "for s = 0, chunk_events, "
    "...; permute the chunk list with np.random.default_rng([seed, epoch]) (the same on every rank, so ranks "
    "agree); rank r keeps every world_size-th chunk starting at r: order[rank::world_size].",
    "ex09_stream_hours": "Each GPU trains at the pace of the slower of its loader and its "
                         "model: min(...). N GPUs "
    "stream N times that, but never faster than the file system: time = max(events / (N x rate), "
    "total_bytes / fs_bytes_per_s), where events = total_bytes / bytes_per_event. Return hours (/ 3600).",
}



def ex09_rank_chunks(fn) -> None:
    """`fn(n_events, chunk_events, rank, world_size, seed, epoch) -> [(start, stop), ...]`: every event on
    exactly one rank, contiguous chunks of at most `chunk_events`, balanced, seeded per epoch."""
    cases = [(1000, 64, 2), (1000, 64, 3), (37, 10, 4), (5, 8, 2), (4096, 256, 8)]
    for n, chunk, world in cases:
        per_rank = []
        for rank in range(world):
            got = call(fn, n, chunk, rank, world, 0, 0)
            if got is None:
                raise CheckFailed("your function returned None; return a list of (start, stop) pairs")
            try:
                got = [(int(a), int(b)) for a, b in got]
            except (TypeError, ValueError):
                raise CheckFailed(f"return (start, stop) pairs; got {list(got)[:3]} ...") from None
            per_rank.append(got)
        seen = [0] * n
        for rank, chunks in enumerate(per_rank):
            for a, b in chunks:
                if not (0 <= a < b <= n):
                    raise CheckFailed(f"rank {rank} got chunk ({a}, {b}) outside [0, {n}) or empty")
                if b - a > chunk:
                    raise CheckFailed(f"rank {rank} got chunk ({a}, {b}) of {b - a} "
                                      f"events; chunks hold at most {chunk} (one read each)")
                for i in range(a, b):
                    seen[i] += 1
        twice = [i for i, c in enumerate(seen) if c > 1]
        if twice:
            raise CheckFailed(f"n={n}, world_size={world}: event {twice[0]} goes to more than one rank "
                              "(did every rank take every chunk, or overlapping slices?)")
        missing = [i for i, c in enumerate(seen) if c == 0]
        if missing:
            raise CheckFailed(f"n={n}, chunk={chunk}, world_size={world}: "
                              f"{len(missing)} events reach no rank, first {missing[0]} (the last, "
                              "shorter chunk? the last rank?)")
        sizes = [len(c) for c in per_rank]
        if max(sizes) - min(sizes) > 1:
            raise CheckFailed(f"n={n}, world_size={world}: ranks got {sizes} chunks; deal "
                              "them out so counts differ by at most one (rank r takes "
                              "chunks r, r + world_size, ...)")
    a0 = [(int(a), int(b)) for a, b in call(fn, 4096, 256, 0, 2, 0, 0)]
    if a0 != [(int(a), int(b)) for a, b in call(fn, 4096, 256, 0, 2, 0, 0)]:
        raise CheckFailed("two calls with the same seed and epoch gave different chunks: "
                          "every rank must compute the same permutation, so seed it with (seed, epoch) only")
    if a0 == sorted(a0) and a0 == [(s, s + 256) for s in range(0, 4096, 512)]:
        raise CheckFailed("the chunks come in file order: permute them (seeded) so each "
                          "epoch sees another order")
    if a0 == [(int(a), int(b)) for a, b in call(fn, 4096, 256, 0, 2, 0, 1)]:
        raise CheckFailed("epoch 0 and epoch 1 give rank 0 the same chunks: shuffle "
                          "the chunk order per epoch (seed the permutation with the epoch too)")
    passed("ex09_rank_chunks",
           f"{len(cases)} splits cover every event exactly once, balanced, reshuffled per epoch")


def _reference_hours(total_bytes, bytes_per_event, loader, model, n_gpus, fs):
    events = total_bytes / bytes_per_event
    return max(events / (n_gpus * min(loader, model)), total_bytes / fs) / 3600.0


def ex09_stream_hours(fn) -> None:
    """`fn(total_bytes, bytes_per_event, loader_events_per_s, model_events_per_s, n_gpus, fs_bytes_per_s) ->
    hours`."""
    pb = 1e15
    # (total, bytes/event, loader/s per GPU, model/s per GPU, GPUs, file system B/s): what limits it
    cases = [
        ((5 * pb, 2e3, 2e5, 5e4, 64, 5e12), "the model"),
        ((5 * pb, 2e3, 3e4, 2e5, 64, 5e12), "the loader"),
        ((5 * pb, 2e3, 2e5, 1e5, 65536, 5e12), "the file system"),
        ((1 * pb, 1e6, 1e3, 5e2, 1, 1e11), "the model, one GPU"),
    ]
    for args, limit in cases:
        got = call(fn, *args)
        if got is None:
            raise CheckFailed("your function returned None; return the time in hours")
        want = _reference_hours(*args)
        if math.isclose(float(got), want, rel_tol=1e-6):
            continue
        total, bpe, loader, model, n, fs = args
        events = total / bpe
        wrong = {
            "seconds, not hours": want * 3600,
            "the faster of loader and model (use min: the slower one sets the pace)":
                max(events / (n * max(loader, model)), total / fs) / 3600,
            "no file-system ceiling (N GPUs cannot read faster than the file system delivers)":
                events / (n * min(loader, model)) / 3600,
            "one GPU's rate for all of them (divide by the number of GPUs)":
                max(events / min(loader, model), total / fs) / 3600,
            "bytes where events are needed (events = total_bytes / bytes_per_event)":
                max(total / (n * min(loader, model)), total / fs) / 3600,
        }
        for reason, value in wrong.items():
            if math.isclose(float(got), value, rel_tol=1e-6):
                raise CheckFailed(f"case limited by {limit}: got {float(got):.4g} h, expected {want:.4g} h — "
                                  f"looks like {reason}")
        raise CheckFailed(f"case limited by {limit} {args}: got {float(got):.4g} h, expected {want:.4g} h")
    passed("ex09_stream_hours", "model-, loader- and file-system-limited cases all right")
