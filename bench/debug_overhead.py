"""Benchmark: what the launcher's diagnostics cost on a normal data-parallel step (2 CPU ranks, gloo).

The step: a small MLP's forward and backward, then one ``dist.all_reduce`` per parameter tensor from Python
(the worst case for the kit's collective recorder: every gradient passes through it; DDP's C++ buckets
would bypass it) and an SGD step. Three arms, interleaved in blocks on one warm pool, medians:
- off: ``Workers(diagnostics=False)``: no collective recording, no polling of the ranks;
- armed (the default): every collective recorded, the driver asks the ranks where they are once a second,
  stack capture on request ready;
- checked: armed plus ``check_collectives=True`` (``TORCH_DISTRIBUTED_DEBUG=DETAIL``'s per-collective check).
Goal: armed/off >= 0.97 (steps per second). On a shared machine the blocks scatter widely, so the recorder's
own cost is also timed in this process (a recorded no-op collective against the bare no-op, many calls) and
set against the step's time: a bound that does not depend on the noise. Ends with one `RESULT ...` line.
"""

from __future__ import annotations

import argparse
import statistics

import hepml_kit as hk


def train_steps(steps: int, width: int) -> float:
    """Runs on every rank: `steps` data-parallel steps; returns steps per second on this rank."""
    import time

    import torch
    import torch.distributed as dist

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 64), torch.randn(256, 1)
    world = dist.get_world_size()

    def step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()

    for _ in range(5):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    return steps / (time.perf_counter() - t0)


def recorder_cost_s(calls: int = 200_000) -> float:
    """Seconds the collective recorder adds per call (a recorded no-op against the bare no-op)."""
    import time

    import torch

    from hepml_kit.launch.diagnose import RankMonitor, recorded

    def all_reduce(tensor, op=None, group=None, async_op=False):
        return None

    wrapped, t = recorded(RankMonitor(), all_reduce, "all_reduce"), torch.ones(4)
    best = {}
    for fn in (all_reduce, wrapped, all_reduce, wrapped):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(t)
        best[fn] = min(best.get(fn, 1e9), (time.perf_counter() - t0) / calls)
    return best[wrapped] - best[all_reduce]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=5, help="interleaved blocks per arm")
    ap.add_argument("--steps", type=int, default=200, help="steps per block")
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    arms = {"off": dict(diagnostics=False, check_collectives=False),
            "armed": dict(diagnostics=True, check_collectives=False),
            "checked": dict(diagnostics=True, check_collectives=True)}
    rates: dict[str, list[float]] = {a: [] for a in arms}
    with hk.Workers(n=2, device="cpu") as pool:
        pool.run(train_steps, 5, args.width, quiet=True)
        for block in range(args.blocks):
            order = list(arms) if block % 2 == 0 else list(reversed(arms))
            for arm in order:
                pool.diagnostics, pool.check_collectives = (arms[arm]["diagnostics"],
                                                            arms[arm]["check_collectives"])
                rates[arm].append(min(pool.run(train_steps, args.steps, args.width, quiet=True)))
    med = {a: statistics.median(r) for a, r in rates.items()}
    per_call = recorder_cost_s()
    collectives_per_step = 6  # one per parameter tensor of the 3-layer MLP
    bound = 1 / (1 + collectives_per_step * per_call * med["off"])
    print(f"{'arm':8s} {'steps/s (median)':>17s} {'ratio vs off':>13s}   blocks")
    for a in arms:
        print(f"{a:8s} {med[a]:17.1f} {med[a] / med['off']:13.3f}   {' '.join(f'{r:.0f}' for r in rates[a])}")
    print(f"recorder: {per_call * 1e6:.2f} us per collective; x{collectives_per_step} per step against "
          f"{1e3 / med['off']:.1f} ms per step -> armed/off >= {bound:.4f} from the recorder alone")
    print(f"RESULT off_steps_per_s={med['off']:.1f} armed_steps_per_s={med['armed']:.1f} "
          f"checked_steps_per_s={med['checked']:.1f} armed_ratio={med['armed'] / med['off']:.3f} "
          f"checked_ratio={med['checked'] / med['off']:.3f} recorder_s_per_call={per_call:.2e} "
          f"recorder_bound_ratio={bound:.4f}")


if __name__ == "__main__":
    main()
