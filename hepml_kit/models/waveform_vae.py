"""Convolutional variational autoencoder for anomaly detection on TPC S2 waveforms (LZ-style).

Follows LZ's unsupervised search for anomalous summed-PMT waveforms (T. Anderson for LZ, "Anomaly
Detection in the LZ Dark Matter Experiment using Variational Autoencoders", CHEP 2023; "Anomaly
Detection using Autoencoders on Fundamental LZ Signals", CHEP 2024; no public code): a VAE (Kingma &
Welling, arXiv:1312.6114) trained on mostly-normal pulses learns what an ordinary S2 looks like;
pulses it reconstructs badly are anomalies (LZ found unresolved multiple-scatter S2s this way). Here: a 1-D
conv encoder (stride-2 convolutions) to a Gaussian latent of 8-32 dimensions and a mirrored transposed-conv
decoder. Loss = Gaussian reconstruction term sum (x - x_hat)^2 / (2 sigma^2) + beta KL(q(z|x) || N(0, 1)).
Score = reconstruction error (mean squared error with z = mu); -ELBO is reported too.

Input: the S2 window from `hepml_kit.data.waveforms`, asinh-compressed (`normalise_waveforms`) so
small delayed-electron tails and large peaks both count. ``forward(waveform) -> (recon, mu, logvar)``
takes and returns tensors only (exportable for serving).

Metric: ROC AUC of the score for each injected anomaly kind against the normal events (``auc_<kind>``,
the kinds of `hepml_kit.data.waveforms.ANOMALY_KINDS`), the overall AUC, and the anomaly efficiency at 1%
false-positive rate, overall and per kind. The unresolved double scatter is reported on its own because it
is what LZ's VAE actually found among real S2s; the published LZ work (CHEP 2023/2024 talks) states that
finding but no ROC figures, so the bars cannot be copied from it. They are set instead so that each
kind must be found by a model that has learnt the normal S2 (whose size, width and place in the window
change with energy and drift time): `BARS` = overall AUC >= 0.80, double_s2 >= 0.62, gas_s2 >= 0.97,
electron_train >= 0.90, pileup >= 0.65, all at once. An untrained VAE, and any score evaluated against
shuffled labels (AUC 0.5), fail them (tests/test_physics_waveform_vae.py). Measured with ``hepml-kit
validate waveform_vae --seed S`` (dev VM, 2026-12-06, seeds 200-209, generator waveforms-1.1): overall AUC
0.82-0.90 (mean 0.867, sd 0.024), double_s2 0.65-0.78 (mean 0.724, sd 0.038), gas_s2 0.992-1.0,
electron_train 0.93-0.99 (mean 0.975), pileup 0.69-0.81 (mean 0.766), efficiency at 1% FPR 0.20-0.46;
10 of 10 seeds meet the bars. Two of the ten train less well (normal-pulse MSE twice the others: AUC
0.82-0.84, double_s2 0.65-0.71), which is why the bars sit below the typical seed. An AUC on ~120
anomalies of one kind carries a statistical error of ~0.02-0.03.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_curve
from torch import nn

from hepml_kit.data.waveforms import (
    ANOMALY_KINDS,
    GENERATOR_VERSION,
    WaveformGenConfig,
    generate_waveforms,
    normalise_waveforms,
)
from hepml_kit.models._lightning import LazyLightningClass
from hepml_kit.models._testbed import Testbed, iterate_batches

__all__ = [
    "TESTBED",
    "WaveformVAE",
    "WaveformVAEConfig",
    "anomaly_scores",
    "batches",
    "build",
    "config",
    "example_inputs",
    "generate",
    "flops_per_sample",
    "lightning",
    "samples_in",
    "loss",
    "metrics",
    "plots",
    "roc_auc",
    "threshold",
]

FALSE_POSITIVE_RATE = 0.01


@dataclass(frozen=True)
class WaveformVAEConfig:
    channels: tuple[int, ...] = (32, 64, 128, 128, 256)  # one stride-2 conv per entry
    kernel_size: int = 7
    latent_dim: int = 32
    beta: float = 1.0
    recon_sigma: float = 0.02  # sigma of the Gaussian likelihood, in normalised units
    data: WaveformGenConfig = field(default_factory=lambda: WaveformGenConfig(n_samples=2048, dt_ns=10.0))

    def __post_init__(self):
        down = 2 ** len(self.channels)
        if self.data.n_samples % down:
            raise ValueError(f"n_samples {self.data.n_samples} must be divisible by 2^len(channels) = {down}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")


PRESETS = {
    "tiny": WaveformVAEConfig(channels=(8, 16, 32, 32), kernel_size=5, latent_dim=8,
                              data=WaveformGenConfig(n_samples=256, dt_ns=100.0)),
    "small": WaveformVAEConfig(channels=(16, 32, 64, 64, 128), latent_dim=16,
                               data=WaveformGenConfig(n_samples=1024, dt_ns=20.0)),
    "full": WaveformVAEConfig(),
}  # fmt: skip


def config(preset: str = "tiny", **overrides) -> WaveformVAEConfig:
    """The preset's config (`tiny` | `small` | `full`), with optional field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **overrides)


class WaveformVAE(nn.Module):
    """waveform (B, S) -> reconstruction (B, S), mu (B, Z), logvar (B, Z)."""

    def __init__(self, cfg: WaveformVAEConfig):
        super().__init__()
        k, ch = cfg.kernel_size, cfg.channels
        self.short = cfg.data.n_samples // 2 ** len(ch)  # length after the encoder
        enc, c_in = [], 1
        for c in ch:
            enc += [nn.Conv1d(c_in, c, k, stride=2, padding=k // 2), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Linear(ch[-1] * self.short, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, ch[-1] * self.short)
        dec = []
        outs = [*reversed(ch[:-1]), 1]
        for i, (c_in, c_out) in enumerate(zip(reversed(ch), outs)):
            dec.append(nn.ConvTranspose1d(c_in, c_out, 4, stride=2, padding=1))  # doubles the length
            if i < len(ch) - 1:
                dec.append(nn.SiLU())
        self.decoder = nn.Sequential(*dec)
        self.beta, self.recon_sigma = cfg.beta, cfg.recon_sigma  # read by `loss`

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = waveform.shape[0]
        h = self.encoder(waveform.unsqueeze(1))  # (B, 1, S) -> (B, C, S / 2^n)
        mu, logvar = self.to_latent(h.flatten(1)).chunk(2, dim=-1)  # (B, Z) each
        logvar = logvar.clamp(-12.0, 8.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu  # (B, Z)
        h = self.from_latent(z).view(B, -1, self.short)  # (B, C, S / 2^n)
        return self.decoder(h).squeeze(1), mu, logvar  # (B, S), (B, Z), (B, Z)


def build(cfg: WaveformVAEConfig) -> WaveformVAE:
    return WaveformVAE(cfg)


def flops_per_sample(cfg: WaveformVAEConfig) -> float:
    """Training FLOPs per waveform (3 x forward; convolutions and linear layers)."""
    S, k, ch = cfg.data.n_samples, cfg.kernel_size, cfg.channels
    fwd, c_in, L = 0.0, 1, S
    for c in ch:  # encoder: output length L / 2
        L //= 2
        fwd += 2 * c_in * c * k * L
        c_in = c
    fwd += 2 * (ch[-1] * L) * (2 * cfg.latent_dim) + 2 * cfg.latent_dim * (ch[-1] * L)  # to / from latent
    for c_in, c_out in zip(reversed(ch), [*reversed(ch[:-1]), 1]):  # decoder: each input sample x 4 taps
        fwd += 2 * c_in * c_out * 4 * L
        L *= 2
    return 3.0 * fwd


# ---- data ---------------------------------------------------------------------------------------


def generate(cfg: WaveformVAEConfig, n: int, seed: int, rank: int = 0, world_size: int = 1) -> dict:
    return generate_waveforms(n, seed, cfg.data, rank=rank, world_size=world_size)


def batches(data: dict, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Yield {"waveform" (B, S) float32 normalised, "anomaly" (B,), "anomaly_kind" (B,)}."""
    for idx in iterate_batches(len(data["anomaly"]), batch_size, shuffle, seed):
        i = idx.numpy()
        if len(i) == 0:
            continue
        dt_ns = float(data["dt_ns"][i[0]])
        yield {
            "waveform": torch.from_numpy(normalise_waveforms(data["waveform"][i], dt_ns)),
            "anomaly": torch.from_numpy(data["anomaly"][i]),
            "anomaly_kind": torch.from_numpy(data["anomaly_kind"][i]),
        }


def _terms(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(squared error per event (B,), KL per event (B,), recon_sigma) - labels are never used."""
    recon, mu, logvar = model(x)
    sq = (recon.float() - x.float()).pow(2).sum(-1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum(-1)
    return sq, kl, getattr(getattr(model, "module", model), "recon_sigma", 0.02)


def loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """-ELBO per sample of the waveform: (sq / (2 sigma^2) + beta KL) / S, averaged over the batch."""
    x = batch["waveform"]
    sq, kl, sigma = _terms(model, x)
    beta = getattr(getattr(model, "module", model), "beta", 1.0)
    return (sq / (2 * sigma**2) + beta * kl).mean() / x.shape[-1]


# ---- metrics ------------------------------------------------------------------------------------


@torch.no_grad()
def anomaly_scores(model: nn.Module, data: dict, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction MSE with z = mu, -ELBO) per event, each (N,).

    The scores do not depend on `batch_size` (bitwise on CPU); on a CPU core, batches of 512 waveforms
    score the tiny preset faster than batches of 1024 (their activations stay in the core's cache)."""
    model.eval()
    device = next(model.parameters()).device
    mse, nelbo = [], []
    for b in batches(data, batch_size):
        x = b["waveform"].to(device)
        sq, kl, sigma = _terms(model, x)
        mse.append((sq / x.shape[-1]).cpu())
        nelbo.append((sq / (2 * sigma**2) + kl).cpu())
    return torch.cat(mse).numpy(), torch.cat(nelbo).numpy()


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (sklearn's `roc_auc_score`, its argument order; ties count half); label 1 =
    anomaly. Computed as the Mann-Whitney statistic, P(score of an anomaly > score of a normal event), from
    the ranks of the scores (ties get their mean rank): the same number as sklearn's trapezoids to rounding,
    without its input checks' cost (the HPO lesson evaluates six AUCs after every trial-epoch). Unlike
    sklearn's, the error for a sample without both classes says which class is missing."""
    label = np.asarray(label).astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need both classes for an AUC, got {n_pos} anomalies and {n_neg} normal events")
    score = np.asarray(score, dtype=np.float64)
    if not np.isfinite(score).all():  # as sklearn refuses them (a diverged model scores NaN)
        raise ValueError(f"anomaly scores must be finite, got {int((~np.isfinite(score)).sum())} NaN or inf")
    rank_sum = rankdata(score)[label].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def metrics(model: nn.Module, data: dict) -> dict:
    """Anomaly ROC AUC and efficiency at 1% false-positive rate (overall and per kind)."""
    mse, nelbo = anomaly_scores(model, data)
    label, kind = data["anomaly"].astype(bool), data["anomaly_kind"]
    cut = np.quantile(mse[~label], 1 - FALSE_POSITIVE_RATE)
    out = {
        "auc": roc_auc(label, mse),
        "auc_neg_elbo": roc_auc(label, nelbo),
        "efficiency_at_1pct_fpr": float((mse[label] > cut).mean()),
        "normal_mse": float(mse[~label].mean()),
        "anomalies": float(label.sum()),
        "waveforms": float(len(label)),
    }
    for k, name in enumerate(ANOMALY_KINDS[1:], start=1):
        if (kind == k).any():
            sel = (kind == k) | ~label
            out[f"auc_{name}"] = roc_auc(label[sel], mse[sel])
            out[f"efficiency_at_1pct_fpr_{name}"] = float((mse[kind == k] > cut).mean())
    return out


# Per-kind bars (see the module docstring): each kind must be found on its own, the hard ones included.
BARS = {"auc": 0.80, "auc_double_s2": 0.62, "auc_gas_s2": 0.97, "auc_electron_train": 0.90,
        "auc_pileup": 0.65}


def threshold(m: dict) -> bool:
    """Every per-kind AUC of `BARS` met (a kind absent from the test events fails)."""
    return all(m.get(name, 0.0) >= bar for name, bar in BARS.items())


def plots(model: nn.Module, data: dict, outdir) -> list:
    """Anomaly-score distributions per kind and the ROC curve per kind (normal events as background)."""
    import matplotlib.pyplot as plt

    from hepml_kit.plots import save, style

    mse, _ = anomaly_scores(model, data)
    kind, label = data["anomaly_kind"], data["anomaly"].astype(bool)
    log_score = np.log10(np.maximum(mse, 1e-8))
    bins = np.linspace(np.quantile(log_score, 0.001), log_score.max(), 60)
    paths = []
    with style():
        fig, ax = plt.subplots()
        for k, name in enumerate(ANOMALY_KINDS):
            if (kind == k).any():
                ax.hist(log_score[kind == k], bins=bins, density=True, histtype="step", lw=1.5,
                        label=f"{name} ({int((kind == k).sum())})")
        ax.set_xlabel("log10 reconstruction MSE (anomaly score)")
        ax.set_ylabel("events (normalised)")
        ax.set_yscale("log")
        ax.legend()
        paths.append(save(fig, outdir, "waveform_vae_scores"))
        fig, ax = plt.subplots()
        for k, name in enumerate(ANOMALY_KINDS[1:], start=1):
            if (kind == k).any():
                sel = (kind == k) | ~label
                fpr, tpr, _ = roc_curve(label[sel], mse[sel])
                ax.plot(fpr, tpr, label=f"{name}: AUC {roc_auc(label[sel], mse[sel]):.3f}")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.axvline(FALSE_POSITIVE_RATE, ls="--", c="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
        ax.set_xlabel("false-positive rate (normal waveforms)")
        ax.set_ylabel("anomaly efficiency")
        ax.legend(loc="lower right")
        paths.append(save(fig, outdir, "waveform_vae_roc"))
    return paths


# ---- Lightning ------------------------------------------------------------------------------------


def samples_in(batch: dict) -> int:
    """Waveforms in a batch (the throughput unit)."""
    return int(batch["waveform"].shape[0])


_LIGHTNING = LazyLightningClass(__name__, "WaveformVAELightning", build=build, loss=loss,
                                samples_in=samples_in)


def lightning(cfg: WaveformVAEConfig, lr: float = 1e-3):
    """A LightningModule wrapping `build(cfg)` and `loss` (lightning is imported only here)."""
    return _LIGHTNING.cls()(cfg, lr)


__getattr__ = _LIGHTNING.module_getattr  # lets pickle (ddp_spawn) find the lazily made WaveformVAELightning


def example_inputs(cfg: WaveformVAEConfig, batch_size: int = 2) -> tuple[torch.Tensor]:
    """A random normalised waveform batch (B, S), for export and tracing."""
    return (torch.randn(batch_size, cfg.data.n_samples) * 0.05,)


TESTBED = Testbed(
    name="waveform_vae",
    unit="waveforms",
    paper="T. Anderson (LZ), VAE anomaly detection on LZ waveforms, CHEP 2023/2024; "
    "Kingma & Welling, arXiv:1312.6114",
    config=config,
    build=build,
    generate=generate,
    batches=batches,
    metrics=metrics,
    threshold=threshold,
    train_defaults={
        "tiny": {"events": 8000, "test_events": 10000, "epochs": 8, "batch_size": 128, "lr": 2e-3},
        "small": {"events": 200_000, "test_events": 50_000, "epochs": 20, "batch_size": 256, "lr": 1e-3},
        "full": {"events": 2_000_000, "test_events": 200_000, "epochs": 30, "batch_size": 512, "lr": 5e-4},
    },
    samples_in=samples_in,
    loss=loss,
    flops_per_sample=flops_per_sample,
    lightning=lightning,
    plots=plots,
    extra={"generator_version": GENERATOR_VERSION, "example_inputs": example_inputs,
           "inputs": ("waveform",), "outputs": ("recon", "mu", "logvar")},
)  # fmt: skip
