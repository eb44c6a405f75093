"""Train one testbed model under each data-parallel strategy and compare them in one table.

`train_strategy` is the per-rank function (run it with ``hk.launch``/``Workers.run``; ``"single"`` runs
in one process, or on rank 0 alone of a pool, with one rank's share of the machine): every rank builds
the same model from the same seed, draws the same shuffled global batches and keeps its share
(`shard_batch`), trains, and reports the loss curve, the final parameters, the `StepProfiler` summary
(throughput, phases, peak memory), the model-state bytes it holds, and the communication share: the part
of the step time that the same local step on an unwrapped copy of the model does not need (NERSC's "DDP
on vs off", made to work for every strategy).

The single-process reference with ``micro_batches=N`` accumulates gradients over the same N shares of
each global batch, so it optimises exactly what N data-parallel ranks optimise (the mean of the shares'
losses; see `hepml_kit.parallel.ddp`), and the tests can compare them at float32 rounding.

`table` turns results into a pandas DataFrame; `lines_of_code` counts the lines a user writes.

Taught in curriculum/02_data_parallel and curriculum/03_sharded.
"""

from __future__ import annotations

import copy
import inspect
import io
import textwrap
import time
import tokenize
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hepml_kit.models import Testbed, to_device
from hepml_kit.parallel import checkpoint
from hepml_kit.parallel.ddp import DataParallelBucket, DataParallelNaive, shard_batch, wrap_ddp
from hepml_kit.parallel.fsdp import mixed_precision, model_state_bytes, shard_model
from hepml_kit.parallel.spec import RunSpec, resolve_testbed
from hepml_kit.profile.step import StepProfiler

__all__ = ["DATA_PARALLEL", "train_data_parallel", "train_strategy", "full_parameters", "table",
           "lines_of_code", "source_of"]

DATA_PARALLEL = ("single", "naive", "bucket", "ddp", "fsdp", "fsdp_bf16")  # part of driver.STRATEGIES


def _wrap(strategy: str, model: nn.Module, bucket_cap_mb: float) -> nn.Module:
    if strategy == "single":
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"strategy {strategy!r} needs torch.distributed: run it with hk.launch or "
                           "Workers.run")
    if strategy == "naive":
        return DataParallelNaive(model)
    if strategy == "bucket":
        return DataParallelBucket(model, bucket_cap_mb=bucket_cap_mb)
    if strategy == "ddp":
        return wrap_ddp(model, bucket_cap_mb=bucket_cap_mb)
    if strategy == "fsdp":
        return shard_model(model, mp_policy=mixed_precision(None))
    if strategy == "fsdp_bf16":
        return shard_model(model, mp_policy=mixed_precision("bf16"))
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(DATA_PARALLEL)}")


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().float().cpu().clone()


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded fp32 copies of all parameters on CPU, keyed by name (collective for sharded models)."""
    return {name.removeprefix("module."): _full(p) for name, p in model.named_parameters()}


def train_strategy(
    strategy: str,
    testbed: str | Testbed = "jet_transformer",
    *,
    preset: str = "tiny",
    steps: int = 8,
    global_batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    micro_batches: int = 1,
    bucket_cap_mb: float = 25.0,
    timing_steps: int = 3,
    return_params: bool = True,
    return_grads: bool = False,
    checkpoint_dir: str | None = None,
    stop_after: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `steps` optimizer steps of `testbed` under `strategy` on this rank; call on every rank.

    Args:
        strategy: one of `DATA_PARALLEL`. ``"single"`` is one process without communication; called on every
            rank of a pool it runs on rank 0 alone, with that rank's threads or GPU (one device: the
            unit of a speed-up), and the other ranks return None at once.
        testbed: a `hepml_kit.models` name or a `Testbed`.
        global_batch: samples per step over all ranks (divisible by the number of ranks).
        micro_batches: ``"single"`` only: accumulate over this many shares of each global batch (set it
            to the number of ranks of the run you compare with).
        checkpoint_dir, stop_after, resume: with `stop_after` the run saves a `checkpoint` after that many
            steps and stops; with `resume` it first loads `checkpoint_dir` (written by any strategy and
            number of ranks that can be resharded) and continues from the saved step.

    Returns a dict: ``losses`` (mean loss per step over the global batch), ``profile`` (the
    `StepProfiler` summary over all ranks), ``samples_per_s`` (global), ``state_bytes`` (this rank's
    parameter/gradient/optimizer bytes after the last optimizer step), ``comm_share``, ``n_params``,
    ``world_size``, ``rank`` and, on rank 0, ``params`` (final full parameters on CPU) and, with
    `return_grads`, ``grads`` (the full averaged gradients of the first step).
    """
    spec = RunSpec(testbed=testbed, preset=preset, steps=steps, global_batch=global_batch, lr=lr, seed=seed,
                   micro_batches=micro_batches, bucket_cap_mb=bucket_cap_mb, timing_steps=timing_steps,
                   return_params=return_params, return_grads=return_grads, checkpoint_dir=checkpoint_dir,
                   stop_after=stop_after, resume=resume)
    return train_data_parallel(spec, strategy)


def train_data_parallel(spec: RunSpec, strategy: str) -> dict[str, Any] | None:
    """`train_strategy` for a `RunSpec` (what `hepml_kit.parallel.driver.train` calls)."""
    if strategy not in DATA_PARALLEL:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(DATA_PARALLEL)}")
    if spec.steps < 2:
        raise ValueError("steps must be >= 2 (the first step is a warm-up, not timed)")
    if (spec.stop_after is not None or spec.resume) and not spec.checkpoint_dir:
        raise ValueError("stop_after and resume need a checkpoint_dir")
    if spec.stop_after is not None and not 0 < spec.stop_after < spec.steps:
        raise ValueError(f"stop_after must be in 1..{spec.steps - 1}, got {spec.stop_after}")
    tb = resolve_testbed(spec.testbed or "jet_transformer")
    if tb.loss is None:
        raise ValueError(f"{tb.name} trains with a custom train_step; these strategies need "
                         "a loss(model, batch)")
    placed = rank_and_world(strategy)
    if placed is None:
        return None
    rank, world = placed
    return _train(strategy, tb, spec, rank, world)


def rank_and_world(strategy: str) -> tuple[int, int] | None:
    """This rank and the world size a run uses: ``"single"`` on a pool runs on rank 0 alone as a world of one
    (the other ranks get None and return at once); every other strategy uses the whole process group."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if strategy == "single" and world > 1:
        return (0, 1) if rank == 0 else None
    return rank, world


def _train(strategy: str, tb: Testbed, spec: RunSpec, rank: int, world: int) -> dict[str, Any]:
    steps, global_batch, lr, seed = spec.steps, spec.global_batch, spec.lr, spec.seed
    micro_batches = spec.micro_batches
    checkpoint_dir, stop_after = spec.checkpoint_dir, spec.stop_after
    if micro_batches != 1 and strategy != "single":
        raise ValueError("micro_batches is for the single-process reference only")
    if global_batch % (world * micro_batches):
        raise ValueError(f"global_batch={global_batch} must be divisible by {world * micro_batches} "
                         f"(ranks x micro-batches)")
    device = spec.torch_device()

    cfg = tb.config(spec.preset)
    data = tb.generate(cfg, steps * global_batch, seed)
    torch.manual_seed(seed)
    model = tb.build(cfg).to(device)
    plain = copy.deepcopy(model)  # the compute-only reference for the communication share
    wrapped = _wrap(strategy, model, spec.bucket_cap_mb)
    optimizer = tb.optimizer(model, cfg, lr)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # this rank's share of every global batch, cut into micro-batches (one unless accumulating)
    batches = [[to_device(shard_batch(shard_batch(b, rank, world), j, micro_batches), device)
                for j in range(micro_batches)]
               for b in tb.batches(data, global_batch, shuffle=True, seed=seed)][:steps]
    owner = wrapped if strategy == "ddp" else model  # the checkpoint API strips DDP's "module." itself
    alone = world == 1  # one process, possibly rank 0 of a pool: no collectives
    start = checkpoint.load(checkpoint_dir, owner, optimizer, no_dist=alone)["step"] if spec.resume else 0
    end = stop_after if stop_after is not None else steps

    flops = tb.flops_per_sample(cfg) if tb.flops_per_sample else None
    prof = StepProfiler(samples_per_step=global_batch // world, flops_per_sample=flops, unit=tb.unit,
                        device=device, warmup_steps=1 if end - start > 1 else 0)
    if strategy == "ddp":
        prof.attach_ddp(wrapped)
    with warnings.catch_warnings():
        # FSDP2 warns that a unit returned a view; the testbed losses never modify model outputs in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        losses, grads, state_bytes = _loop(tb, wrapped, model, optimizer, prof, batches, start, end,
                                           micro_batches, spec.return_grads, world, device)
    summary = prof.summary(gather=world > 1)  # a collective: every rank
    if stop_after is not None:
        checkpoint.save(checkpoint_dir, owner, optimizer, step=stop_after, extra={"strategy": strategy},
                        no_dist=alone)

    result = {
        "strategy": strategy, "rank": rank, "world_size": world, "losses": losses, "profile": summary,
        "samples_per_s": summary["global_samples_per_s"],
        "state_bytes": state_bytes,
        "n_params": sum(p.numel() for p in plain.parameters()),
    }
    params = full_parameters(model) if spec.return_params else None  # a collective for FSDP
    if rank == 0:
        if params is not None:
            result["params"] = params
        if grads is not None:
            result["grads"] = grads
    if strategy == "single":
        result["comm_share"] = 0.0
    else:
        result["comm_share"] = _comm_share(tb, cfg, lr, plain, batches, summary["step_s"], spec.timing_steps,
                                           sync)
    return result


def _loop(tb, wrapped, model, optimizer, prof, batches, start, end, micro_batches, return_grads, world,
          device):
    """The training steps; returns (losses, first-step gradients or None, model-state bytes at the end)."""
    losses, grads, state_bytes = [], None, {}
    for i in range(start, end):
        with prof.step():
            total = torch.zeros((), device=device)
            for micro in batches[i]:
                with prof.phase("forward"):
                    loss = tb.loss(wrapped, micro) / micro_batches
                with prof.phase("backward"):
                    loss.backward()
                total += loss.detach().float()
            if return_grads and i == start:
                grads = {n.removeprefix("module."): _full(p.grad) for n, p in model.named_parameters()
                         if p.grad is not None}
            with prof.phase("optimizer"):
                optimizer.step()
            if i == end - 1:  # everything is allocated now: parameters, gradients, optimizer state
                state_bytes = model_state_bytes(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(total)
            total /= world
        losses.append(float(total))
    return losses, grads, state_bytes


def _comm_share(tb, cfg, lr, plain, batches, step_s, timing_steps, sync) -> float:
    """1 - (the same local step without any wrapper) / (the measured parallel step)."""
    opt = tb.optimizer(plain, cfg, lr)
    times = []
    for micro_list in batches[: max(2, timing_steps + 1)]:
        sync()
        t = time.perf_counter()
        for micro in micro_list:
            tb.loss(plain, micro).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t)
    compute = sorted(times[1:])[len(times[1:]) // 2]
    return max(0.0, 1.0 - compute / step_s)


def table(results: dict[str, list[dict] | dict], lines: dict[str, int] | None = None):
    """One row per strategy: throughput, memory per rank, communication share, lines of user code.

    `results` maps a label to what ``Workers.run(train_strategy, ...)`` returned (a list over ranks; ranks
    that returned None are skipped), to one result dict, or to any dict with ``losses``, ``world_size`` and
    a `StepProfiler` ``profile`` (e.g. `fit_lightning`'s). ``samples/s`` is global; memory columns are
    the largest rank's: ``state MB/rank`` (parameters + gradients + optimizer state held) and
    ``peak MB/rank`` (CUDA max allocated on GPU, process RSS on CPU, from `StepProfiler`).
    """
    import pandas as pd

    nan = float("nan")
    rows = []
    for label, res in results.items():
        ranks = [r for r in (res if isinstance(res, list) else [res]) if r is not None]
        r0, prof = ranks[0], ranks[0]["profile"]
        states = [r["state_bytes"]["total"] for r in ranks if "state_bytes" in r]
        row = {
            "strategy": label,
            "ranks": r0["world_size"],
            "samples/s": prof["global_samples_per_s"],
            "state MB/rank": max(states) / 2**20 if states else nan,
            "peak MB/rank": prof.get("peak_memory_bytes_max", prof.get("peak_memory_bytes", nan)) / 2**20,
            "comm share": max((r["comm_share"] for r in ranks if "comm_share" in r), default=nan),
            "final loss": r0["losses"][-1],
        }
        if lines is not None:
            row["user lines"] = lines.get(label)
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")


def source_of(obj: Callable | type) -> str:
    """The source of a function or class; for a class made inside a function (inspect cannot find it),
    its ``class`` line followed by the source of each method defined in it."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        if not isinstance(obj, type):
            raise
        methods = [v for v in vars(obj).values() if inspect.isfunction(v)]
        bases = ", ".join(f"{b.__module__.split('.')[0]}.{b.__qualname__}" for b in obj.__bases__)
        body = "\n".join(textwrap.indent(textwrap.dedent(inspect.getsource(m)), "    ") for m in methods)
        return f"class {obj.__name__}({bases}):\n{body}"


def lines_of_code(*objects: Callable | type) -> int:
    """Lines of code in functions/classes, not counting blank lines, comments or docstrings."""
    total = 0
    for obj in objects:
        source = source_of(obj)
        lines = source.splitlines()
        code_lines: set[int] = set()
        start_of_statement = True
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
                start_of_statement = start_of_statement or tok.type == tokenize.NEWLINE
                continue
            rest = lines[tok.end[0] - 1][tok.end[1]:].strip()
            alone_on_line = rest == "" or rest.startswith("#")
            docstring = tok.type == tokenize.STRING and start_of_statement and alone_on_line
            start_of_statement = False
            if not docstring:
                code_lines.update(range(tok.start[0], tok.end[0] + 1))
        total += len(code_lines)
    return total
