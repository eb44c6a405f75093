"""Checks for curriculum/03_sharded's exercise: what FSDP saves, and sharding a model with it.

``ex03_expected_bytes(my_bytes)``: model-state bytes per rank (fp32 AdamW) under DDP and under FSDP.
``ex03_shard(my_shard)``: apply FSDP2 ``fully_shard`` to the jet transformer, one unit per encoder layer.
"""

from __future__ import annotations

from hepml_kit.checks import CheckFailed, passed

__all__ = ["ex03_expected_bytes", "ex03_shard", "HINTS"]

HINTS = {
    "ex03_expected_bytes": "Per parameter, fp32 AdamW keeps 4 bytes of weight, 4 of gradient and 8 of "
    "optimizer state (two moments, exp_avg and exp_avg_sq). DDP keeps all of it on every rank; FSDP "
    "(ZeRO-3) keeps 1/N of each on each of the N ranks.",
    "ex03_shard": "Call fully_shard(layer) for every layer in model.encoder.layers first (each becomes one "
    "all-gather unit), then fully_shard(model) for the parameters left outside the layers. fully_shard "
    "changes the module in place; return the model.",
}

# sharded cases first: a wrong count of bytes per parameter shows there unambiguously
_CASES = [(1000, 4, True), (46475, 2, True), (2_300_000, 8, True), (2_300_000, 1, False), (1000, 4, False)]


def ex03_expected_bytes(fn) -> None:
    """`fn(n_params, world_size, sharded) -> bytes per rank`, compared with the ZeRO arithmetic."""
    from hepml_kit.parallel.fsdp import expected_state_bytes

    for n, world, sharded in _CASES:
        want = expected_state_bytes(n, world, sharded=sharded)["total"]
        got = fn(n, world, sharded)
        if not isinstance(got, (int, float)):
            raise CheckFailed(f"return a number of bytes, got {type(got).__name__}")
        where = f"{n:,} parameters on {world} ranks, {'FSDP' if sharded else 'DDP'}"
        share = world if sharded else 1
        if abs(got - want) <= 1e-6 * want:
            continue
        if not sharded and world > 1 and abs(got - 16 * n / world) < 1:
            raise CheckFailed(f"{where}: {got:,.0f}: DDP does not shard, every rank keeps everything")
        if abs(got - 4 * n / share) < 1:
            raise CheckFailed(f"{where}: {got:,.0f} counts only the weights; add gradients and optimizer "
                              "state")
        if abs(got - 8 * n / share) < 1:
            raise CheckFailed(f"{where}: {got:,.0f} counts weights and gradients; AdamW also keeps two "
                              "moments")
        if abs(got - 12 * n / share) < 1:
            raise CheckFailed(f"{where}: {got:,.0f}: AdamW keeps *two* fp32 moments per parameter (8 bytes)")
        if sharded and abs(got - 16 * n) < 1:
            raise CheckFailed(f"{where}: {got:,.0f} is the unsharded size; FSDP divides it by the {world} "
                              "ranks")
        raise CheckFailed(f"{where}: got {got:,.0f} bytes per rank, expected {want:,.0f}")
    passed("ex03_expected_bytes", "the ZeRO arithmetic is right for DDP and FSDP")


def _shard_trial(fn):
    import torch
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from hepml_kit.models import get

    tb = get("jet_transformer")
    cfg = tb.config("tiny")
    torch.manual_seed(0)
    model = tb.build(cfg)
    reference = tb.build(cfg)
    reference.load_state_dict(model.state_dict())
    out = fn(model)
    model = out if out is not None else model
    batch = next(tb.batches(tb.generate(cfg, 8, 0), 8))
    info = {
        "root": isinstance(model, FSDPModule),
        "layers": [isinstance(layer, FSDPModule) for layer in model.encoder.layers],
        "dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters()),
        "total": sum(p.numel() for p in reference.parameters()),
    }
    if info["root"]:
        with torch.no_grad():
            got = model(batch["tracks"], batch["mask"])[0]
            want = reference(batch["tracks"], batch["mask"])[0]
        info["max_diff"] = float((got - want).abs().max())
    return info


def ex03_shard(fn, nprocs: int = 2, workers=None) -> None:
    """Run the learner's `fn(model)` on `nprocs` ranks (or a warm `Workers` pool of >= 2 ranks) and inspect
    the sharded jet transformer."""
    import hepml_kit as hk

    n = max(2, nprocs)
    if workers is not None:
        ranks = workers.run(_shard_trial, fn, timeout=180)
    else:
        ranks = hk.launch(_shard_trial, fn, nprocs=n, timeout=180)
    info, n = ranks[0], len(ranks)
    if n < 2:
        raise ValueError("this check needs at least 2 ranks")
    if not all(info["layers"]):
        raise CheckFailed(f"encoder layers sharded as their own units: {info['layers']}. Call fully_shard on "
                          "each layer, so only one layer is gathered at a time")
    if not info["root"]:
        raise CheckFailed("the model itself is not an FSDPModule: also call fully_shard(model) after the "
                          "layers, for the embedding, pooling and heads")
    if not info["dtensor"]:
        raise CheckFailed("some parameters are not sharded DTensors; every parameter must belong to a unit")
    if info["local"] > 0.6 * info["total"]:
        raise CheckFailed(f"rank 0 holds {info['local']} of {info['total']} parameters; sharded over {n} "
                          f"ranks it should hold about {info['total'] // n}")
    if info["max_diff"] > 1e-5:
        raise CheckFailed(f"the sharded model's output differs from the unsharded one by "
                          f"{info['max_diff']:.2e}: shard in fp32 (no mixed-precision policy) for this check")
    passed("ex03_shard", f"rank 0 holds {info['local']:,} of {info['total']:,} parameters; same outputs")
