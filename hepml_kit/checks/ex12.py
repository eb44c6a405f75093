"""Checks for curriculum/12_simulation_in_the_loop's exercises: which events a rank streams at a step; how
many generator workers keep a GPU fed; where the next simulation budget goes."""

from __future__ import annotations

import math

import numpy as np

from hepml_kit.checks import CheckFailed, call, passed

__all__ = ["HINTS", "ex12_allocate", "ex12_stream_events", "ex12_workers_per_gpu"]

HINTS = {
    "ex12_stream_events": "Number the batches of all ranks in one sequence: at step s the ranks take chunks "
    "s * world_size + 0, ..., s * world_size + world_size - 1, so rank r takes chunk g = s * world_size + r. "
    "Chunk g holds the events range(g * batch_size, (g + 1) * batch_size).",
    "ex12_workers_per_gpu": "A GPU consumes peak_flops * mfu / flops_per_event events per second; one worker "
    "makes worker_events_per_s. Workers needed = consumption / production, rounded up (math.ceil).",
    "ex12_allocate": "Neyman: the total after this round, counts.sum() + budget, split "
                     "in proportion to sigma is "
    "the target. Each bin gets its shortfall max(0, target - counts); scale the shortfalls so they add up to "
    "budget; round down and hand the remaining events to the bins with the largest remainders.",
}



def ex12_stream_events(fn) -> None:
    """`fn(step, rank, world_size, batch_size) -> range | list` of global event indices: every event once,
    no gaps, the first S steps of all ranks are the first S * world_size * batch_size events."""
    for world, batch, steps in [(2, 4, 3), (4, 8, 5), (3, 1, 7), (1, 16, 2)]:
        seen = []
        for s in range(steps):
            for r in range(world):
                got = call(fn, s, r, world, batch)
                try:
                    got = [int(i) for i in got]
                except TypeError:
                    raise CheckFailed(f"return the event indices (a range or list), got {got!r}") from None
                if len(got) != batch:
                    raise CheckFailed(f"step {s} rank {r}: {len(got)} events, a batch has {batch}")
                seen += got
        if len(set(seen)) != len(seen):
            dup = [i for i in set(seen) if seen.count(i) > 1][:3]
            raise CheckFailed(f"world_size={world}, batch_size={batch}: events {dup} are streamed twice "
                              "(two ranks, or two steps, share events)")
        if sorted(seen) != list(range(steps * world * batch)):
            raise CheckFailed(f"world_size={world}, batch_size={batch}: after {steps} "
                              "steps the ranks should have seen exactly events "
                              f"0..{steps * world * batch - 1} (no gaps)")
    passed("ex12_stream_events", "every event on exactly one rank at one step, no gaps")


def ex12_workers_per_gpu(fn) -> None:
    """`fn(flops_per_event, peak_flops, mfu, worker_events_per_s) -> int` workers for one GPU."""
    for args in [(5.59e8, 312e12, 0.4, 1500.0), (1e12, 312e12, 0.3, 3.3), (1e6, 19.5e12, 0.5, 1e7)]:
        got = call(fn, *args)
        want = math.ceil(args[1] * args[2] / args[0] / args[3])
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise CheckFailed(f"return a whole number of workers (int), got {got!r}")
        if got != want:
            raise CheckFailed(f"for flops/event {args[0]:.3g}, peak {args[1]:.3g}, "
                              f"MFU {args[2]}, worker rate {args[3]:g}/s: {got} workers, expected {want}")
    passed("ex12_workers_per_gpu")


def ex12_allocate(fn) -> None:
    """`fn(sigma, counts, budget) -> new counts` (ints, sum = budget) moving the totals towards ∝ sigma."""
    from hepml_kit.simloop.active import allocate

    rng = np.random.default_rng(0)
    cases = [(np.array([4.0, 2.0, 1.0, 1.0]), np.array([10, 10, 10, 10]), 40),
             (np.array([1.0, 1.0, 1.0]), np.array([0, 5, 10]), 15),
             (rng.uniform(0.01, 0.2, 15), np.full(15, 10), 300),
             (np.array([0.2, 0.01]), np.array([5, 500]), 7)]
    for sigma, counts, budget in cases:
        got = np.asarray(call(fn, sigma.copy(), counts.copy(), budget))
        if got.shape != counts.shape:
            raise CheckFailed(f"return one count per bin ({len(counts)}), got shape {got.shape}")
        if not np.all(got == np.round(got)) or np.any(got < 0):
            raise CheckFailed(f"counts must be whole numbers >= 0, got {got.tolist()}")
        if int(got.sum()) != budget:
            raise CheckFailed(f"the new counts add up to {int(got.sum())}, the budget is {budget}")
        want = allocate(sigma, counts, budget)
        if np.abs(got - want).max() > 1:
            raise CheckFailed(f"sigma {np.round(sigma, 3).tolist()}, counts "
                              f"{counts.tolist()}, budget {budget}: got {got.astype(int).tolist()}, the "
                              f"Neyman shortfalls give {want.tolist()}")
    passed("ex12_allocate", "new simulation goes where the totals fall short of the Neyman split")
