"""The one interface every testbed model module exposes, so that profiling, parallel strategies,
HPO, serving and `hepml-kit validate` can treat the five models alike.

Each model file (`tracking_gnn.py`, `waveform_vae.py`, `calo_gan.py`, `jet_transformer.py`,
`cosmo_unet.py`) ends with a module-level ``TESTBED = Testbed(...)``. Downstream code never
special-cases a model: it asks the `Testbed` for a config, a model, data, batches, a loss and metrics.

Batches are ``dict[str, torch.Tensor]``; `to_device` moves one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Testbed:
    """What a testbed model offers the rest of the kit.

    Attributes:
        name: registry key, e.g. ``"jet_transformer"``.
        unit: what one sample is, plural, for throughput labels: ``"jets"``, ``"graphs"``, ``"events"``.
        paper: short citation of the paper the model follows.
        config: ``config(preset) -> cfg`` with preset in ``"tiny" | "small" | "full"``.
        build: ``build(cfg) -> nn.Module``.
        generate: ``generate(cfg, n, seed, rank=0, world_size=1) -> data``: fresh Monte Carlo, deterministic
            given the seed; with ``world_size > 1`` only this rank's share.
        batches: ``batches(data, batch_size, shuffle=False, seed=0) -> Iterator[dict[str, Tensor]]``.
        loss: ``loss(model, batch) -> scalar Tensor`` (one optimiser step's objective; ``None`` for models
            trained by a custom `train_step`, the GAN).
        train_step: ``train_step(model, batch, optimizer) -> float``; default is loss/backward/step.
        make_optimizer: ``make_optimizer(model, cfg, lr) -> optimizer`` (the GAN returns a pair).
        metrics: ``metrics(model, data) -> dict[str, float]``, the physics figures of merit.
        threshold: ``threshold(metrics) -> bool``: the tiny-preset physics bar (justified in the model
            docstring).
        train_defaults: ``dict`` of the preset's training settings: ``{"tiny": {"events": .., "epochs": ..,
            "batch_size": .., "lr": ..}, ...}`` used by `fit` and `hepml-kit validate`.
        flops_per_sample: ``flops_per_sample(cfg) -> float`` (forward+backward FLOPs, ~3x forward) or
            ``None``.
        lightning: ``lightning(cfg, lr) -> lightning.LightningModule`` over the same ``nn.Module`` (made by
            `hepml_kit.models._lightning.LazyLightningClass` for every model trained by `loss`).
        samples_in: ``samples_in(batch) -> int`` number of samples (in `unit`) in a batch.
        plots: ``plots(model, data, outdir) -> list[Path]``: the physicist's plots of the metrics (ROC,
            efficiency vs pT, shower profiles, ...) drawn with `hepml_kit.plots.style` and written by
            `hepml_kit.plots.save`; ``None`` where a model has none yet.
    """

    name: str
    unit: str
    paper: str
    config: Callable[[str], Any]
    build: Callable[[Any], nn.Module]
    generate: Callable[..., Any]
    batches: Callable[..., Iterator[dict]]
    metrics: Callable[[nn.Module, Any], dict]
    threshold: Callable[[dict], bool]
    train_defaults: dict
    samples_in: Callable[[dict], int]
    loss: Callable[[nn.Module, dict], torch.Tensor] | None = None
    train_step: Callable[[nn.Module, dict, Any], float] | None = None
    make_optimizer: Callable[[nn.Module, Any, float], Any] | None = None
    flops_per_sample: Callable[[Any], float] | None = None
    lightning: Callable[..., Any] | None = None
    plots: Callable[..., list] | None = None
    extra: dict = field(default_factory=dict)

    def step(self, model: nn.Module, batch: dict, optimizer) -> float:
        """One optimisation step; returns the loss as a float."""
        if self.train_step is not None:
            return self.train_step(model, batch, optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def optimizer(self, model: nn.Module, cfg, lr: float):
        if self.make_optimizer is not None:
            return self.make_optimizer(model, cfg, lr)
        return torch.optim.AdamW(model.parameters(), lr=lr)


def to_device(batch: dict, device) -> dict:
    """Move every tensor of a batch to `device` (non-blocking when pinned)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def fit(
    testbed: Testbed,
    cfg,
    data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[nn.Module, list[float]]:
    """Plain single-process training loop; returns the model and the mean loss per epoch.

    The same steps as the kit's one driver loop (`hepml_kit.parallel.driver.Loop` with the testbed's own
    optimizer; a test holds them equal); it stays here because the driver builds on this module.
    """
    torch.manual_seed(seed)
    model = testbed.build(cfg).to(device)
    opt = testbed.optimizer(model, cfg, lr)
    history = []
    for epoch in range(epochs):
        model.train()
        t0, losses = time.perf_counter(), []
        for batch in testbed.batches(data, batch_size, shuffle=True, seed=seed + epoch):
            losses.append(testbed.step(model, to_device(batch, device), opt))
        history.append(sum(losses) / max(len(losses), 1))
        if log:
            log(f"[{testbed.name}] epoch {epoch + 1}/{epochs} loss {history[-1]:.4f} "
                f"({time.perf_counter() - t0:.1f} s)")
        if on_epoch:
            on_epoch(epoch, history[-1])
    return model, history


def iterate_batches(n: int, batch_size: int, shuffle: bool, seed: int) -> Iterable[torch.Tensor]:
    """Index batches over `n` samples (a helper for `Testbed.batches` implementations)."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield idx[i : i + batch_size]
