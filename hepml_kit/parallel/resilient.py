"""Survive a lost rank: train with a distributed checkpoint every few steps, and after a rank dies resume from
the last one and finish with the SAME weights as an uninterrupted run (bitwise on CPU, deterministic
settings).

What makes the resumed run equal, not just close: the checkpoint holds model, optimizer state, the step and
the loss curve so far (`hepml_kit.parallel.checkpoint`, DCP); the data order is a function of the seed (every
step's global batch is regenerated, not iterated from a stateful loader); the random state is reseeded from
(seed, step) at every step; `torch.use_deterministic_algorithms` and a fixed number of threads pin the
kernels. This is the contract of TorchElastic (torchrun restarts every rank, which reload the last checkpoint;
PyTorch's "Fault-tolerant distributed training with torchrun" tutorial) and of Horovod Elastic.

Three ways to use it:

- per rank: ``train_resilient(spec, "ddp", every=2)`` (``spec.checkpoint_dir`` required); resumes by itself
  when a checkpoint is there. ``die=(rank, step)`` plants a fault: that rank SIGKILLs itself at that step
  (once: a marker file next to the checkpoint stops the resumed run from dying again).
- a notebook: ``run_until_done(pool, spec, "ddp", every=2, die=(1, 5))``: a rank that dies ends the call with
  a `WorkerError`, the pool restarts itself, the call is repeated and resumes; returns the results, each
  attempt's wall time and the steps recomputed.
- a script: ``hepml-kit launch --nprocs 2 --max-restarts 1 hepml_kit/parallel/resilient.py -- --checkpoint-dir
  DIR --out final.pt`` (torchrun restarts all ranks after one dies; one process:
  ``python -m hepml_kit.parallel.resilient``).

The checkpoint reshards (DCP), so the resumed run may have another world size: a 2-rank DDP run resumed on
one process with ``micro_batches=2`` (or 4 ranks) agrees to float32 rounding, not bitwise (another sum order).
Taught in curriculum/11_debugging.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hepml_kit.models import to_device
from hepml_kit.parallel import checkpoint
from hepml_kit.parallel.compare import DATA_PARALLEL, _wrap, full_parameters, rank_and_world
from hepml_kit.parallel.ddp import shard_batch
from hepml_kit.parallel.spec import RunSpec, resolve_testbed

__all__ = ["Attempt", "ResilientRun", "deterministic", "fault_marker", "main", "run_until_done",
           "train_resilient"]


def fault_marker(checkpoint_dir: str | os.PathLike) -> Path:
    """The file a planted fault leaves when it fires, so it fires once (beside, not in, the checkpoint)."""
    path = Path(os.path.abspath(checkpoint_dir))
    return path.parent / f".{path.name}.fault-fired"


@contextlib.contextmanager
def deterministic(threads: int):
    """Deterministic kernels and a fixed thread count for the duration (then restored: a warm pool goes on)"""
    was_det, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(was_threads)


def _check(spec: RunSpec, strategy: str, every: int, die) -> None:
    if not isinstance(spec, RunSpec):
        raise TypeError(f"train_resilient takes a RunSpec, got {type(spec).__name__}")
    if strategy not in DATA_PARALLEL:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(DATA_PARALLEL)}")
    if not spec.checkpoint_dir:
        raise ValueError("train_resilient needs spec.checkpoint_dir (where the checkpoints go)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive number of steps, got {every!r}")
    if die is not None and not (isinstance(die, tuple) and len(die) == 2 and 0 <= die[1] < spec.steps):
        raise ValueError(f"die must be (rank, step) with step in 0..{spec.steps - 1}, got {die!r}")


def train_resilient(spec: RunSpec, strategy: str = "ddp", *, every: int = 2,
                    die: tuple[int, int] | None = None, threads: int = 1) -> dict[str, Any] | None:
    """Train `spec` under a data-parallel `strategy` on this rank, saving a checkpoint to
    ``spec.checkpoint_dir`` after every `every` steps; if one is there already, resume from it. Call on every
    rank.

    ``die=(rank, step)``: that rank kills itself with SIGKILL at the start of `step` (once). Returns
    ``{"losses", "resumed_from", "world_size", "rank", "wall_s", "steps_run"}`` plus ``params`` on rank 0
    (``"single"`` on a pool: rank 0 alone, the others return None).
    """
    _check(spec, strategy, every, die)
    tb = resolve_testbed(spec.testbed or "jet_transformer")
    placed = rank_and_world(strategy)
    if placed is None:
        return None
    rank, world = placed
    micro = spec.micro_batches
    if micro != 1 and strategy != "single":
        raise ValueError("micro_batches is for the single-process strategy only")
    if spec.global_batch % (world * micro):
        raise ValueError(f"global_batch={spec.global_batch} must be divisible by {world * micro} "
                         "(ranks x micro-batches)")
    with deterministic(threads):
        return _train(tb, spec, strategy, every, die, rank, world, micro)


def _train(tb, spec, strategy, every, die, rank, world, micro) -> dict[str, Any]:
    t0 = time.perf_counter()
    device = spec.torch_device()
    cfg = tb.config(spec.preset)
    data = tb.generate(cfg, spec.steps * spec.global_batch, spec.seed)
    torch.manual_seed(spec.seed)
    model = tb.build(cfg).to(device)
    wrapped = _wrap(strategy, model, spec.bucket_cap_mb)
    optimizer = tb.optimizer(model, cfg, spec.lr)
    batches = [[to_device(shard_batch(shard_batch(b, rank, world), j, micro), device) for j in range(micro)]
               for b in tb.batches(data, spec.global_batch, shuffle=True, seed=spec.seed)][: spec.steps]
    owner = wrapped if strategy == "ddp" else model
    alone = world == 1
    losses: list[float] = []
    start = 0
    with contextlib.suppress(checkpoint.CheckpointMissing):
        got = checkpoint.load(spec.checkpoint_dir, owner, optimizer, no_dist=alone)
        start, losses = got["step"], list(got["extra"]["losses"])
    marker = fault_marker(spec.checkpoint_dir)
    for step in range(start, spec.steps):
        if die is not None and die == (rank, step) and not marker.exists():
            marker.write_text(f"rank {rank} killed itself at step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        torch.manual_seed(spec.seed * 1_000_003 + step)  # dropout & co: a function of the step, not history
        total = torch.zeros((), device=device)
        for b in batches[step]:
            loss = tb.loss(wrapped, b) / micro
            loss.backward()
            total += loss.detach().float()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not alone:
            dist.all_reduce(total)
            total /= world
        losses.append(float(total))
        done = step + 1
        if done % every == 0 and done < spec.steps:
            checkpoint.save(spec.checkpoint_dir, owner, optimizer, step=done, no_dist=alone,
                            extra={"losses": losses, "strategy": strategy, "world_size": world})
    result = {"strategy": strategy, "rank": rank, "world_size": world, "losses": losses,
              "resumed_from": start, "steps_run": spec.steps - start, "wall_s": time.perf_counter() - t0}
    params = full_parameters(model) if spec.return_params else None  # a collective for FSDP
    if rank == 0 and params is not None:
        result["params"] = params
    return result


# ---- the notebook side: repeat the call on the (restarted) pool until it completes ----

@dataclasses.dataclass
class Attempt:
    """One call of the pool: its wall time and, when it failed, why (the ranks that died)."""

    wall_s: float
    failed: str = ""


@dataclasses.dataclass
class ResilientRun:
    """What `run_until_done` returns: the final per-rank results and every attempt."""

    results: list
    attempts: list[Attempt]
    total_s: float

    @property
    def restarts(self) -> int:
        return len(self.attempts) - 1

    @property
    def resumed_from(self) -> int:
        return self.results[0]["resumed_from"]

    def lost_s(self, uninterrupted_s: float) -> float:
        """Wall time this run took beyond an uninterrupted one (`uninterrupted_s`, measured the same way)."""
        return self.total_s - uninterrupted_s


def _lost_a_rank(err) -> bool:
    return any("died" in err.failures[r] for r in err.root_ranks)


def run_until_done(pool, spec: RunSpec, strategy: str = "ddp", *, every: int = 2, die=None,
                   max_restarts: int = 2, timeout: float = 300.0, threads: int = 1) -> ResilientRun:
    """Run `train_resilient` on every rank of `pool`; when a rank dies (`WorkerError` naming a dead rank) the
    pool restarts itself (`Workers` kills and replaces its engines) and the call is repeated, resuming from
    the last checkpoint, at most `max_restarts` times. Other errors are raised at once."""
    from hepml_kit.launch.errors import WorkerError

    _check(spec, strategy, every, die)
    attempts: list[Attempt] = []
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        try:
            results = pool.run(train_resilient, spec, strategy, every=every, die=die, threads=threads,
                               timeout=timeout, quiet=True)
        except WorkerError as e:
            if not _lost_a_rank(e) or len(attempts) >= max_restarts:
                raise
            why = "; ".join(f"rank {r}: {e.failures[r].strip().splitlines()[-1]}" for r in e.root_ranks)
            attempts.append(Attempt(time.perf_counter() - t, why))
            continue
        attempts.append(Attempt(time.perf_counter() - t))
        return ResilientRun(results, attempts, time.perf_counter() - t0)


# ---- the script side: torchrun --max-restarts (hepml-kit launch --max-restarts) ----

def _parse(argv):
    p = argparse.ArgumentParser(description="Checkpoint every few steps; resume after a lost rank.")
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--out", required=True, help="rank 0 saves the final parameters and losses here")
    p.add_argument("--testbed", default="jet_transformer")
    p.add_argument("--strategy", default="ddp", choices=DATA_PARALLEL)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--die", default=None, help="RANK:STEP, a planted fault: that rank SIGKILLs itself once")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = _parse(argv)
    die = tuple(int(x) for x in a.die.split(":")) if a.die else None
    from hepml_kit.launch.script import init_from_env

    if "RANK" in os.environ:
        init_from_env()
    spec = RunSpec(a.testbed, steps=a.steps, global_batch=a.global_batch, lr=a.lr, seed=a.seed,
                   checkpoint_dir=a.checkpoint_dir, device="cpu")
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    try:
        result = train_resilient(spec, a.strategy, every=a.every, die=die)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result is not None and result["rank"] == 0:
        print(f"done: restart {restart}, resumed from step {result['resumed_from']}, "
              f"{result['steps_run']} steps in {result['wall_s']:.2f} s", flush=True)
        torch.save({"params": result["params"], "losses": result["losses"],
                    "resumed_from": result["resumed_from"], "restart": restart}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
