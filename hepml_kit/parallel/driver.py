"""The one training driver: `train(spec, strategy)` trains a testbed under any named strategy of the kit and
returns losses, profile and memory in one shape (what `hepml_kit.parallel.compare.table` tabulates).

    from hepml_kit.parallel.driver import RunSpec, train
    spec = RunSpec("jet_transformer", steps=4, global_batch=32, lr=0.05)
    ref = train(spec, "single")                       # one process
    ranks = pool.run(train, spec, "1f1b")             # every rank of a pool (hk.launch / Workers.run)

`STRATEGIES` is every name: the data-parallel ones (`compare.DATA_PARALLEL`: naive, bucket, ddp, fsdp, ...),
the model-parallel ones (`runner.MODEL_PARALLEL`: tensor, megatron, gpipe, 1f1b, graph, fsdp_tp, dp_pp),
``"gpipe_by_hand"``/``"1f1b_by_hand"`` (the hand-written schedules of `pipeline_schedules`) and
``"lightning"`` (Lightning's own Trainer, fed from the same spec). ``"single"`` is the one-process
reference, of the data-parallel kind; ``train(spec, "single", reference="model_parallel")`` gives the one
`run_strategy` computes (SGD with momentum, `spec.shards` × `spec.micro_batches` accumulation).
The spec's ``testbed`` may be a registry name or a user's own `Testbed` object.
"""

from __future__ import annotations

from typing import Any

from hepml_kit.parallel.compare import DATA_PARALLEL, train_data_parallel
from hepml_kit.parallel.runner import BY_HAND, MODEL_PARALLEL, train_model_parallel
from hepml_kit.parallel.spec import RunSpec, default_device, resolve_testbed

__all__ = ["RunSpec", "STRATEGIES", "default_device", "train"]

STRATEGIES = tuple(dict.fromkeys(DATA_PARALLEL + MODEL_PARALLEL + BY_HAND + ("lightning",)))


def train(spec: RunSpec, strategy: str = "single", *, reference: str = "data_parallel",
          **lightning_options: Any) -> dict[str, Any] | None:
    """Train `spec` under `strategy` on this rank (call it on every rank of a parallel run).

    Returns ``{"losses", "profile", "samples_per_s", "world_size", ...}`` plus, per family, ``state_bytes``,
    ``comm_share``, ``params``/``grads`` (see `compare.train_strategy`, `runner.run_strategy`,
    `lightning_ddp.fit_lightning`). `lightning_options` (``devices``, ``accelerator``, ``out_dir``, and
    ``lightning_strategy``: Lightning's own strategy name) go to Lightning.
    """
    if not isinstance(spec, RunSpec):
        raise TypeError(f"train takes a RunSpec, got {type(spec).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if reference not in ("data_parallel", "model_parallel"):
        raise ValueError(f"reference must be 'data_parallel' or 'model_parallel', got {reference!r}")
    if lightning_options and strategy != "lightning":
        raise TypeError(f"{sorted(lightning_options)} are options of strategy 'lightning' only")
    if strategy == "lightning":
        from hepml_kit.parallel.lightning_ddp import fit_lightning

        lightning_options.setdefault("devices", 1)
        if "lightning_strategy" in lightning_options:
            lightning_options["strategy"] = lightning_options.pop("lightning_strategy")
        return fit_lightning(resolve_testbed(spec.testbed or "jet_transformer"), preset=spec.preset,
                             steps=spec.steps, global_batch=spec.global_batch, lr=spec.lr, seed=spec.seed,
                             **lightning_options)
    if strategy == "single" and reference == "data_parallel" or strategy in DATA_PARALLEL[1:]:
        return train_data_parallel(spec, strategy)
    return train_model_parallel(spec, strategy)
