"""Parallel training strategies, one per module, each proven equal to one process in tests/.

- `ddp`: data parallel from scratch (`DataParallelNaive`, `DataParallelBucket`) and torch DDP (`wrap_ddp`).
- `lightning_ddp`: the same training with Lightning (``ddp_notebook`` in notebooks, ``ddp`` in scripts).
- `fsdp`: sharded data parallel with FSDP2 ``fully_shard`` and memory per rank.
- `tensor`, `pipeline`, `pipeline_schedules` (GPipe/1F1B by hand), `hybrid`, `graph_partition`: model
  parallelism (lessons 04 and 05); `runner` trains a testbed under each of them.
- `checkpoint`: ``torch.distributed.checkpoint`` save/load for every strategy, resumable on other rank counts.
- `compare`: train a testbed under each data-parallel strategy and tabulate throughput, memory, comm share.
- `spec`: `RunSpec`, one run's description; `driver`: `train(spec, strategy)`, the one entry point over every
  strategy (data-parallel, model-parallel, Lightning).

Submodules are imported on first use (``from hepml_kit.parallel import ddp`` or ``hepml_kit.parallel.ddp``).
"""

from __future__ import annotations

import importlib

__all__ = ["checkpoint", "compare", "ddp", "driver", "fsdp", "graph_partition", "hybrid", "lightning_ddp",
           "pipeline", "pipeline_schedules", "runner", "spec", "tensor"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
