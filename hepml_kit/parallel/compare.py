"""Train one testbed model under each data-parallel strategy and compare them in one table.

`train_strategy` is the per-rank function (run it with ``hk.launch``/``Workers.run``, or directly in one
process for ``"single"``): it builds the same model from the same seed on every rank, cuts every global
batch into rank slices (`shard_batch`), trains `steps` steps and reports the loss curve, the final
parameters (rank 0), throughput, model-state memory per rank, and the communication share: the part of the
step time that the same local step on an unwrapped copy of the model does not need.

`table` turns results into a pandas DataFrame; `lines_of_code` counts the lines a user writes.

Taught in curriculum/02_data_parallel and curriculum/03_sharded.
"""

from __future__ import annotations

import copy
import inspect
import io
import time
import tokenize
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from hepml_kit.models import Testbed, get, to_device
from hepml_kit.parallel import checkpoint
from hepml_kit.parallel.ddp import DataParallelBucket, DataParallelNaive, shard_batch, wrap_ddp
from hepml_kit.parallel.fsdp import mixed_precision, model_state_bytes, shard_model

__all__ = ["STRATEGIES", "train_strategy", "full_parameters", "table", "lines_of_code"]

STRATEGIES = ("single", "naive", "bucket", "ddp", "fsdp", "fsdp_bf16")


def _device() -> torch.device:
    if torch.cuda.is_available() and (not dist.is_initialized() or dist.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _wrap(strategy: str, model: nn.Module, bucket_cap_mb: float) -> nn.Module:
    if strategy == "single":
        return model
    if not dist.is_initialized():
        raise RuntimeError(f"strategy {strategy!r} needs torch.distributed: run it with hk.launch / Workers.run")
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
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded fp32 copies of all parameters on CPU, keyed by name (collective for sharded models)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[name.removeprefix("module.")] = t.float().cpu().clone()
    return out


def train_strategy(
    strategy: str,
    testbed: str | Testbed = "jet_transformer",
    *,
    preset: str = "tiny",
    steps: int = 8,
    global_batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    bucket_cap_mb: float = 25.0,
    timing_steps: int = 3,
    return_params: bool = True,
    return_grads: bool = False,
    checkpoint_dir: str | None = None,
    stop_after: int | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `steps` optimizer steps of `testbed` under `strategy` on this rank; call on every rank.

    All ranks generate the same data, draw the same shuffled global batches of `global_batch` samples and
    keep their contiguous slice, so every strategy takes exactly the steps of ``"single"`` (up to rounding).

    Returns a dict with ``losses`` (global mean loss per step), ``samples_per_s`` (global samples over the
    steps after the first), ``seconds_per_step``, ``state_bytes`` (`model_state_bytes` of this rank),
    ``comm_share``, ``peak_bytes`` (GPU only, else 0), ``world_size``, ``rank`` and, on rank 0,
    ``params`` (the final full parameters on CPU) and with `return_grads` ``grads`` (the full gradients
    of the first step, before the optimizer used them).

    Checkpoints (`hepml_kit.parallel.checkpoint`): with `stop_after` the run saves to `checkpoint_dir`
    after that many steps and stops; with `resume` it first loads `checkpoint_dir` (written by any strategy
    and number of ranks that can be resharded) and continues from the saved step.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if steps < 2:
        raise ValueError("steps must be >= 2 (the first step is a warm-up, not timed)")
    if (stop_after is not None or resume) and not checkpoint_dir:
        raise ValueError("stop_after and resume need a checkpoint_dir")
    if stop_after is not None and not 0 < stop_after < steps:
        raise ValueError(f"stop_after must be in 1..{steps - 1}, got {stop_after}")
    tb = get(testbed) if isinstance(testbed, str) else testbed
    if tb.loss is None:
        raise ValueError(f"{tb.name} trains with a custom train_step; these strategies need a loss(model, batch)")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if strategy == "single" and world > 1:
        raise ValueError("strategy 'single' is the one-process reference: run it without launch")
    if global_batch % world:
        raise ValueError(f"global_batch={global_batch} must be divisible by the {world} ranks")
    device = _device()

    cfg = tb.config(preset)
    data = tb.generate(cfg, steps * global_batch, seed)
    torch.manual_seed(seed)
    model = tb.build(cfg).to(device)
    plain = copy.deepcopy(model)  # the compute-only reference for the communication share
    wrapped = _wrap(strategy, model, bucket_cap_mb)
    optimizer = tb.optimizer(model, cfg, lr)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    batches = [to_device(shard_batch(b, rank, world), device)
               for b in tb.batches(data, global_batch, shuffle=True, seed=seed)][:steps]
    owner = wrapped if strategy == "ddp" else model  # checkpoint API handles DDP's "module." prefix
    start = checkpoint.load(checkpoint_dir, owner, optimizer)["step"] if resume else 0
    end = stop_after if stop_after is not None else steps
    losses, grads, t0 = [], None, 0.0
    for i in range(start, end):
        batch = batches[i]
        if i == start + 1:
            sync()
            t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = tb.loss(wrapped, batch)
        loss.backward()
        if return_grads and i == start:
            grads = {n.removeprefix("module."): (p.grad.full_tensor() if hasattr(p.grad, "full_tensor")
                                                 else p.grad).float().cpu().clone()
                     for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        mean = loss.detach().float().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
    sync()
    seconds = (time.perf_counter() - t0) / max(end - start - 1, 1) if end - start > 1 else float("nan")
    if stop_after is not None:
        checkpoint.save(checkpoint_dir, owner, optimizer, step=stop_after, extra={"strategy": strategy})

    result = {
        "strategy": strategy, "rank": rank, "world_size": world, "losses": losses,
        "seconds_per_step": seconds, "samples_per_s": global_batch / seconds,
        "state_bytes": model_state_bytes(model, optimizer),
        "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
        "n_params": sum(p.numel() for p in plain.parameters()),
    }
    params = full_parameters(model) if return_params else None
    if rank == 0 and params is not None:
        result["params"] = params
    if rank == 0 and grads is not None:
        result["grads"] = grads

    # Communication share: the same local step on an unwrapped copy needs no collective at all.
    plain_opt = tb.optimizer(plain, cfg, lr)
    times = []
    for batch in batches[: max(2, timing_steps + 1)]:
        sync()
        t = time.perf_counter()
        plain_opt.zero_grad(set_to_none=True)
        tb.loss(plain, batch).backward()
        plain_opt.step()
        sync()
        times.append(time.perf_counter() - t)
    compute = sorted(times[1:])[len(times[1:]) // 2]
    result["compute_seconds_per_step"] = compute
    result["comm_share"] = max(0.0, 1.0 - compute / seconds) if strategy != "single" else 0.0
    return result


def table(results: dict[str, list[dict]] | dict[str, dict], lines: dict[str, int] | None = None):
    """One row per strategy: throughput, model-state MB per rank, communication share, lines of user code.

    `results` maps a label to the per-rank list returned by ``launch(train_strategy, ...)`` (or one dict
    for a single-process run). Throughput is global samples/s; memory is the largest rank's.
    """
    import pandas as pd

    rows = []
    for label, res in results.items():
        ranks = res if isinstance(res, list) else [res]
        r0 = ranks[0]
        row = {
            "strategy": label,
            "ranks": r0["world_size"],
            "samples/s": max(r["samples_per_s"] for r in ranks) if r0["world_size"] == 1
            else min(r["samples_per_s"] for r in ranks),
            "state MB/rank": max(r["state_bytes"]["total"] for r in ranks) / 2**20,
            "comm share": max(r["comm_share"] for r in ranks),
            "final loss": r0["losses"][-1],
        }
        if any(r.get("peak_bytes") for r in ranks):
            row["peak GPU MB/rank"] = max(r["peak_bytes"] for r in ranks) / 2**20
        if lines is not None:
            row["user lines"] = lines.get(label)
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")


def lines_of_code(*objects: Callable | type) -> int:
    """Lines of code in functions/classes, not counting blank lines, comments or docstrings."""
    total = 0
    for obj in objects:
        source = inspect.getsource(obj)
        code_lines: set[int] = set()
        prev = None
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
                if tok.type == tokenize.NEWLINE:
                    prev = tok
                continue
            is_docstring = tok.type == tokenize.STRING and (prev is None or prev.type in (
                tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)) and _statement_is_string(tok, source)
            prev = tok
            if not is_docstring:
                code_lines.update(range(tok.start[0], tok.end[0] + 1))
        total += len(code_lines)
    return total


def _statement_is_string(tok, source: str) -> bool:
    line = source.splitlines()[tok.end[0] - 1][tok.end[1]:].strip()
    return line == "" or line.startswith("#")
