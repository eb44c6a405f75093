"""Data parallel with Lightning: the same model, data and steps as the hand-written DDP loop.

Lightning owns the loop, the `DistributedDataParallel` wrapper and the `DistributedSampler`; the user writes
a `LightningModule` (the testbeds ship one: ``Testbed.lightning``) and one ``Trainer(...).fit`` call.
Which strategy launches the ranks depends on where the code runs:

- in a notebook (Jupyter, or papermill, whose kernel is interactive too): ``strategy="ddp_notebook"``, which
  *forks* the kernel once per rank (no CUDA call may happen in the kernel before ``fit``);
- in a script: ``strategy="ddp"``, which re-runs the script once per extra rank
  (``python -m hepml_kit.parallel.lightning_ddp --devices 2`` is such a script).

The forked or re-launched ranks cannot hand Python objects back, so rank 0 writes what the comparison
needs (loss per step, `ProfilerCallback` summary, final parameters) into `out_dir` and `fit_lightning`
reads it back in the calling process.

The data are the same as `hepml_kit.parallel.compare.train_strategy`'s: Lightning's `DistributedSampler`
shuffles with ``randperm(n, seed + epoch)`` and gives rank r the samples r, r + N, ..., exactly the global
batches and shares that `shard_batch` makes, so the loss curves agree to float rounding.

Taught in curriculum/02_data_parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hepml_kit.models import Testbed, get

__all__ = ["BatchOfEvents", "SampleDataset", "RankZeroReport", "default_strategy", "fit_lightning", "main"]


class SampleDataset(Dataset):
    """Samples of a dict of batch-first tensors; the default collate stacks them back into a batch dict."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        sizes = {k: v.shape[0] for k, v in tensors.items() if torch.is_tensor(v)}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"tensors must share their first dimension, got {sizes}")
        self.tensors, self.n = tensors, next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class BatchOfEvents:
    """``collate_fn`` for a testbed whose data are a list of events (the tracking graphs, a dataset as they
    are): the events of a batch -> one batch, as ``testbed.batches`` makes it (picklable, by name)."""

    def __init__(self, testbed: str):
        self.testbed = testbed

    def __call__(self, events: list) -> dict:
        return next(get(self.testbed).batches(events, len(events)))


def _callback_base():
    import lightning as L

    return L.Callback


class RankZeroReport(_callback_base()):
    """Records the loss of every step, averaged over the ranks (what the hand-written loops report), and
    at the end of training writes, from rank 0, ``rank0.json`` (losses, the profiler summary) and
    ``params.pt`` into `out_dir`. It runs inside the ranks, which ``ddp_notebook`` forks: code after
    ``trainer.fit`` runs only in the notebook's own process, which saw none of the training."""

    def __init__(self, out_dir: str | os.PathLike, profiler=None):
        super().__init__()
        self.out_dir, self.profiler = Path(out_dir), profiler
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(trainer.strategy.reduce(loss.detach(), reduce_op="mean")))

    def on_train_end(self, trainer, pl_module):
        if type(trainer.strategy.launcher).__name__ == "_MultiProcessingLauncher":
            # A forked/spawned rank 0 next saves the final weights into a fresh `tempfile.mkdtemp()` folder
            # for the notebook's process, which deletes the file but not the folder (Lightning 2.x): make
            # it inside out_dir, which the caller owns and removes. Only this rank process's tempfile changes.
            tempfile.tempdir = str(self.out_dir)
        if not trainer.is_global_zero:
            return
        inner = getattr(pl_module, "model", pl_module)
        params = {k: v.detach().float().cpu() for k, v in inner.named_parameters()}
        torch.save(params, self.out_dir / "params.pt")
        summary = self.profiler.summary if self.profiler is not None else None
        (self.out_dir / "rank0.json").write_text(json.dumps({
            "losses": self.losses, "profile": summary, "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "samples_per_s": summary["global_samples_per_s"] if summary else None,
        }, default=str))


def default_strategy() -> str:
    """``"ddp_notebook"`` inside IPython (a Jupyter or papermill kernel), ``"ddp"`` in a script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return "ddp"
    return "ddp_notebook" if get_ipython() is not None else "ddp"


def fit_lightning(
    testbed: str | Testbed = "jet_transformer",
    *,
    preset: str = "tiny",
    steps: int = 8,
    global_batch: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    devices: int = 2,
    strategy: str | None = None,
    accelerator: str = "auto",
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train `testbed` with Lightning on `devices` ranks; returns rank 0's results in the calling process.

    Under ``strategy="ddp"`` every rank runs this function; ranks other than 0 return ``{}``. Returns
    ``{"losses", "profile" (ProfilerCallback summary over ranks), "samples_per_s", "params",
    "world_size", "strategy"}``. `strategy` defaults to `default_strategy()` on several devices, to
    ``"auto"`` (no DDP) on one. Rank 0 writes its results into `out_dir` (default: a temporary folder,
    removed before returning).
    """
    tb = get(testbed) if isinstance(testbed, str) else testbed
    if tb.lightning is None:
        raise ValueError(f"testbed {tb.name} has no LightningModule (Testbed.lightning)")
    if devices < 1 or global_batch % devices:
        raise ValueError(f"global_batch={global_batch} must be divisible by devices={devices} >= 1")
    if strategy is None:
        strategy = default_strategy() if devices > 1 else "auto"
    if strategy in ("ddp_notebook", "ddp_fork"):  # a CUDA context in the kernel breaks every forked rank
        from hepml_kit.launch.fork_guard import check_no_cuda_before_fork

        check_no_cuda_before_fork(f"Lightning's strategy={strategy!r}")
    owned = out_dir is None  # our own folder is removed once rank 0's results are read
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="hepml-lightning-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _fit(tb, preset, steps, global_batch, lr, seed, devices, strategy, accelerator, out_dir)
    finally:
        if owned:
            shutil.rmtree(out_dir, ignore_errors=True)


def _fit(tb: Testbed, preset: str, steps: int, global_batch: int, lr: float, seed: int, devices: int,
         strategy: str, accelerator: str, out_dir: Path) -> dict[str, Any]:
    import lightning as L

    from hepml_kit.profile.lightning_callback import ProfilerCallback

    results = out_dir / "rank0.json"
    results.unlink(missing_ok=True)

    cfg = tb.config(preset)
    data = tb.generate(cfg, steps * global_batch, seed)
    collate = None
    if isinstance(data, list):  # events (graphs): merged per batch, as the testbed's hand-written loop does
        dataset, collate = data, BatchOfEvents(tb.name)
    else:
        dataset = SampleDataset(next(tb.batches(data, steps * global_batch)))
    L.seed_everything(seed, verbose=False)  # also seeds Lightning's DistributedSampler (PL_GLOBAL_SEED)
    module = tb.lightning(cfg, lr)
    # One device: the same sampler one rank of N would use, so the order matches the reference's.
    sampler = None
    if devices == 1:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=global_batch // devices, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate)
    profiler = ProfilerCallback(verbose=False, unit=tb.unit,
                                flops_per_sample=tb.flops_per_sample(cfg) if tb.flops_per_sample else None)
    report = RankZeroReport(out_dir, profiler)
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy,
        max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[profiler, report], num_sanity_val_steps=0,
    )
    trainer.fit(module, loader)
    if trainer.global_rank != 0:  # the other ranks of a script launch: rank 0 reports
        return {}
    if not results.exists():
        raise RuntimeError(f"Lightning finished but rank 0 wrote no results to {results}")
    out = json.loads(results.read_text())
    out["params"] = torch.load(out_dir / "params.pt")
    out["strategy"] = strategy
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m hepml_kit.parallel.lightning_ddp --devices 2``: the script form (``strategy="ddp"``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="jet_transformer")
    p.add_argument("--preset", default="tiny", choices=("tiny", "small", "full"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--out-dir", required=True, help="where rank 0 writes rank0.json and params.pt")
    a = p.parse_args(argv)
    out = fit_lightning(a.model, preset=a.preset, steps=a.steps, global_batch=a.global_batch, lr=a.lr,
                        seed=a.seed, devices=a.devices, strategy=a.strategy, accelerator=a.accelerator,
                        out_dir=a.out_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"lightning {a.strategy} x{out['world_size']}: final loss {out['losses'][-1]:.4f}, "
              f"{out['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
