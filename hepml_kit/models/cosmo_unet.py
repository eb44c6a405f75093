"""3-D U-Net mapping N-body dark matter to hydrodynamic gas fields.

After Harrington et al., "Fast, high-fidelity Lyman alpha forests with convolutional neural networks"
(2021, arXiv:2106.12662) and the network of NERSC's SC21/SC22 "Deep Learning at Scale" tutorials
(github NERSC/sc21-dl-tutorial, `networks/UNet.py`): Conv3d (kernel 4, stride 2, padding 1) + LeakyReLU
down-sampling blocks, ConvTranspose3d (kernel 4, stride 2) + ReLU up-sampling blocks with skip
concatenations, a final ConvTranspose3d and tanh; 4 input channels (DM density, DM velocity), 5 outputs
(gas density, temperature, gas velocity). The `full` preset (6 levels, 64-128-256-512-512-512) has
116,977,029 parameters, the tutorials' count. Loss: L1 on the scaled fields plus 0.01 x L1 on the density
mapped back to rho (the tutorials' ``exp(14 x)``; our scale is `density_log_scale`); the tiny preset adds
0.1 x the mean |ln P_pred(k) / P_true(k)| of the gas velocity over the crop's k shells up to half Nyquist
(`crop_power`): an L1 fit regresses towards the conditional median and, trained briefly, loses small-scale
power (the velocity spectrum fell 10-25% short at the top of the trained k range), which the bar's velocity
band measures. This term is our addition, not the tutorials'; its price shows in the velocity r(k) below
(power put back where the phases cannot be predicted is partly uncorrelated with the truth). The tiny
preset also drops the learning rate x0.2 for the last quarter of its steps (`lr_drop_step`).

Presets: tiny, 3 levels 8-16-32 on 16^3 crops of 32^3 boxes (97,365 parameters, trains on a CPU core in
~20 s); small, 4 levels 32-64-128-256 on 32^3 crops (6,189,765); full, the published 6 levels on the
tutorials' 64^3 crops (116,977,029).

The down and up blocks are `nn.ModuleList`s (`UNet3D.down`, `UNet3D.up`) so a pipeline strategy can split
them by level; the skips pair ``down[i]`` with ``up[levels - 1 - i]``.

Metrics (on whole held-out boxes, each wrapped around periodically by half a crop so that no cell sees the
convolutions' zero padding; over the trained k range: from the fundamental mode of a training crop,
2 pi / crop length, since larger scales were never seen, up to half the Nyquist frequency, above which the
stride-2 lattice aliases and the CIC window and filtering leave little signal): the ratio of predicted to
true gas-density power spectrum P(k); the cross-correlation coefficient r(k) = P_pred,true / sqrt(P_pred
P_true) of predicted and true overdensity, which tests the phases (P(k) alone is blind to them: a field with
the right amplitudes and random phases has r ~ 0); the gas-velocity P(k) (x + y + z); voxel L1.
Threshold (tiny): max |P_pred / P_true - 1| <= 0.2 and min r(k) >= 0.9 for the gas density, and gas-velocity
max |P_pred / P_true - 1| <= 0.25. Emulators of hydrodynamics are judged by these statistics: Harrington et
al. compare the predicted fields' power spectra and the Ly-alpha flux statistics that follow from them, and
r(k) is the standard test of phases for such field-to-field maps (e.g. the N-body emulator of He et al.,
PNAS 116 (2019) 13825, uses transfer function and r(k)). r >= 0.9 means at most 1 - r^2 ~ 19% of the
predicted power is uncorrelated with the truth on any resolved scale; a 30% error in the velocity power
(the issue's example) fails the velocity band. An untrained net, or one trained on shuffled (input, target)
pairs, fails all three (tests/test_physics_cosmo_unet.py).
Measured (`bench/physics_bars.py --models cosmo_unet --seeds 10 --first-seed 3400`, seeds 3400-3418, dev VM
with 2 cores shared with other jobs, 2026-12-07, ~23 s CPU per validate): met on 10 of 10 seeds. Density
P(k) max deviation 0.065 +- 0.036 (0.03-0.14), r_min 0.977 +- 0.006 (0.965-0.983); velocity P(k) max
deviation 0.126 +- 0.062 (0.04-0.24); temperature P(k) 0.11 +- 0.03; velocity r_min 0.73 +- 0.03
(0.69-0.77; reported, not part of the bar: the velocity phases decorrelate at the top of the trained k
range, and the spectrum term puts some power back there without them). Before (constant learning rate, no
spectrum term; seeds 1000-1008): 4 of 5, velocity deviation 0.17-0.29, the net under-predicting the
small-scale velocity power by up to 25%, velocity r_min 0.76-0.82. The learning-rate drop alone (x0.2 for
the last 10 of 40 epochs, no spectrum term) gave 9 of 10 on the same seeds: velocity deviation 0.165 +-
0.066 (0.06-0.28), velocity r_min 0.81 +- 0.04, density r_min 0.988; the spectrum term trades ~0.08 of
velocity r_min for the margin to the band. Intermediate variants (no learning-rate drop, spectrum term on
unwindowed or windowed crops; seeds 3100-3318) met the bar on 6-8 of 10, the misses spread over the
density, temperature and velocity spectra: the constant learning rate left the final weights wherever the
last steps put them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hepml_kit.data.cosmology import CosmologyConfig, cross_power_spectrum, generate_cosmology, power_spectrum
from hepml_kit.models._lightning import LazyLightningClass
from hepml_kit.models._testbed import Testbed, iterate_batches

__all__ = ["UNetConfig", "UNet3D", "config", "build", "generate", "batches", "loss", "metrics", "threshold",
           "flops_per_sample", "lightning", "samples_in", "parameter_count", "scale_fields", "gpu_check",
           "TESTBED"]


@dataclass(frozen=True)
class UNetConfig:
    """U-Net size, training crop and field scaling; `data` is the generator's config."""

    channels: tuple = (64, 128, 256, 512, 512, 512)  # one per level (down block output)
    in_channels: int = 4
    out_channels: int = 5
    crop: int = 64  # training crop side (cells); must be divisible by 2**levels
    crops_per_box: int = 4  # crops drawn from each box per epoch
    leaky_slope: float = 0.01
    density_loss_weight: float = 0.01  # weight of the L1 on rho = exp(scale * x)
    density_log_scale: float = 8.0  # x = ln(rho / rho_mean) / scale (the tutorials use 14)
    temperature_log_scale: float = 4.0  # x = ln(T / T0) / scale
    velocity_scale: float = 200.0  # km/s
    velocity_pk_loss_weight: float = 0.0  # weight of the crop power-spectrum term on the gas velocity
    lr_drop_step: int = 0  # optimizer steps after which the learning rate drops (0: constant)
    lr_drop_factor: float = 0.2
    k_max_nyquist_fraction: float = 0.5  # metric k range upper end, fraction of Nyquist
    data: CosmologyConfig = field(default_factory=CosmologyConfig)

    @property
    def levels(self) -> int:
        return len(self.channels)

    def __post_init__(self):
        if self.crop % (2**self.levels) or self.data.grid % (2**self.levels):
            raise ValueError(f"crop ({self.crop}) and data.grid ({self.data.grid}) must be divisible by "
                             f"2**levels = {2**self.levels}")
        if self.crop > self.data.grid:
            raise ValueError(f"crop {self.crop} larger than the box grid {self.data.grid}")

    def with_(self, **changes) -> UNetConfig:
        return replace(self, **changes)


PRESETS = {
    # tiny: a short CPU run; a stronger L1 on rho gets the density peaks (which carry P(k)) right sooner, the
    # velocity spectrum term keeps the small-scale velocity power the short L1 fit loses, and the learning
    # rate drops x0.2 for the last 10 of 40 epochs (24 steps each) so that the last steps settle
    "tiny": dict(channels=(8, 16, 32), crop=16, crops_per_box=8, density_loss_weight=0.1,
                 velocity_pk_loss_weight=0.1, lr_drop_step=720, data=CosmologyConfig(grid=32, box_size=10.0)),
    "small": dict(channels=(32, 64, 128, 256), crop=32, crops_per_box=8,
                  data=CosmologyConfig(grid=64, box_size=20.0)),
    "full": dict(channels=(64, 128, 256, 512, 512, 512), crop=64, crops_per_box=32,
                 data=CosmologyConfig(grid=128, box_size=40.0)),
}


def config(preset: str = "tiny") -> UNetConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return UNetConfig(**PRESETS[preset])


class UNet3D(nn.Module):
    """Harrington et al. / SC21 U-Net with `levels = len(channels)` down and up blocks."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = (cfg.in_channels, *cfg.channels)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(cfg.leaky_slope))
            for i in range(cfg.levels)
        )
        up = []
        for i in reversed(range(cfg.levels)):  # up block j undoes down block levels - 1 - j
            c_in = ch[i + 1] * (1 if i == cfg.levels - 1 else 2)  # deepest has no skip to concatenate
            if i == 0:
                last = nn.ConvTranspose3d(c_in, cfg.out_channels, 4, stride=2, padding=1)
                up.append(nn.Sequential(last, nn.Tanh()))
            else:
                up.append(nn.Sequential(nn.ConvTranspose3d(c_in, ch[i], 4, stride=2, padding=1), nn.ReLU()))
        self.up = nn.ModuleList(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 4, S, S, S) -> (B, 5, S, S, S), S divisible by 2**levels
        skips = []
        for block in self.down:
            x = block(x)  # (B, C_i, S / 2^(i+1), ...)
            skips.append(x)
        x = skips.pop()
        for j, block in enumerate(self.up):
            if j > 0:
                x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 C, ...)
            x = block(x)  # doubles the side
        return x


def build(cfg: UNetConfig) -> UNet3D:
    return UNet3D(cfg)


def parameter_count(cfg: UNetConfig) -> int:
    """Parameters from the config alone (no allocation): conv weights C_in C_out 4^3 plus biases."""
    ch = (cfg.in_channels, *cfg.channels)
    n = sum(ch[i] * ch[i + 1] * 64 + ch[i + 1] for i in range(cfg.levels))
    for i in reversed(range(cfg.levels)):
        c_in = ch[i + 1] * (1 if i == cfg.levels - 1 else 2)
        c_out = cfg.out_channels if i == 0 else ch[i]
        n += c_in * c_out * 64 + c_out
    return n


def flops_per_sample(cfg: UNetConfig) -> float:
    """Training FLOPs per crop (forward + backward = 3 x forward, 2 FLOPs per multiply-add)."""
    ch, s = (cfg.in_channels, *cfg.channels), cfg.crop
    macs = 0
    for i in range(cfg.levels):
        out_vox = (s // 2 ** (i + 1)) ** 3
        macs += out_vox * ch[i] * ch[i + 1] * 64  # Conv3d: every output voxel sees C_in x 4^3 inputs
        c_in = ch[i + 1] * (1 if i == cfg.levels - 1 else 2)
        c_out = cfg.out_channels if i == 0 else ch[i]
        macs += out_vox * c_in * c_out * 64  # ConvTranspose3d: every input voxel scatters C_out x 4^3
    return 3.0 * 2.0 * macs


# ---------------------------------------------------------------- data

def scale_fields(data: dict, cfg: UNetConfig) -> tuple[np.ndarray, np.ndarray]:
    """Physical fields -> network units: inputs (n, 4, g, g, g) with ln(rho_dm + 0.1) and v / v_scale;
    targets (n, 5, g, g, g) in tanh range: ln rho_b / s_rho, ln(T / T0) / s_T, v_b / v_scale."""
    inp, tar = data["inputs"], data["targets"]
    x = np.empty_like(inp)
    x[:, 0] = np.log(inp[:, 0] + 0.1)
    x[:, 1:] = inp[:, 1:] / cfg.velocity_scale
    y = np.empty_like(tar)
    y[:, 0] = np.log(tar[:, 0]) / cfg.density_log_scale
    y[:, 1] = np.log(tar[:, 1] / cfg.data.t0_kelvin) / cfg.temperature_log_scale
    y[:, 2:] = tar[:, 2:] / cfg.velocity_scale
    return x, y


def generate(cfg: UNetConfig, n: int, seed: int, rank: int = 0, world_size: int = 1) -> dict:
    """Fresh boxes (see `hepml_kit.data.cosmology.generate_cosmology`) plus their network-unit tensors."""
    data = generate_cosmology(n, seed, cfg.data, rank=rank, world_size=world_size)
    x, y = scale_fields(data, cfg)
    return dict(data, x=torch.from_numpy(x), y=torch.from_numpy(y), cfg=cfg)


def _augment(x, y, gen):
    """Random axis permutation and flips, applied to the velocity components consistently."""
    perm = torch.randperm(3, generator=gen).tolist()
    x = x.permute(0, 1, *(p + 2 for p in perm))
    y = y.permute(0, 1, *(p + 2 for p in perm))
    x = torch.cat([x[:, :1], x[:, 1:][:, perm]], 1)
    y = torch.cat([y[:, :2], y[:, 2:][:, perm]], 1)
    for axis in range(3):
        if torch.rand((), generator=gen) < 0.5:
            x, y = x.flip(axis + 2), y.flip(axis + 2)
            x[:, 1 + axis], y[:, 2 + axis] = -x[:, 1 + axis], -y[:, 2 + axis]
    return x, y


def batches(data: dict, batch_size: int, shuffle: bool = False, seed: int = 0):
    """Crops of side cfg.crop: random periodic crops, rotations and flips when shuffling (cfg.crops_per_box
    per box per epoch); the corner crop of each box otherwise. Yields {"x": (B,4,c,c,c), "y": (B,5,c,c,c)}."""
    cfg, x_all, y_all = data["cfg"], data["x"], data["y"]
    n, g, c = x_all.shape[0], x_all.shape[-1], cfg.crop
    gen = torch.Generator().manual_seed(seed)
    reps = cfg.crops_per_box if shuffle else 1
    for idx in iterate_batches(n * reps, batch_size, shuffle, seed):
        box = idx % n
        if shuffle:
            offs = torch.randint(0, g, (len(idx), 3), generator=gen)
            ar = torch.arange(c)
            xs, ys = [], []
            for b, o in zip(box.tolist(), offs.tolist()):
                ii = [((o[a] + ar) % g) for a in range(3)]  # periodic box: crops may wrap around
                xs.append(x_all[b][:, ii[0]][:, :, ii[1]][:, :, :, ii[2]])
                ys.append(y_all[b][:, ii[0]][:, :, ii[1]][:, :, :, ii[2]])
            xb, yb = _augment(torch.stack(xs), torch.stack(ys), gen)
        else:
            xb, yb = x_all[box, :, :c, :c, :c], y_all[box, :, :c, :c, :c]
        yield {"x": xb.contiguous(), "y": yb.contiguous()}


# ---------------------------------------------------------------- training

def crop_power(f: torch.Tensor, n_shells: int) -> torch.Tensor:
    """|FFT|^2 of (B, C, c, c, c) crops under a 3-D Hann window, summed over batch and channels, averaged in
    shells of integer |k| (in units of the crop's fundamental) 1 .. n_shells: (n_shells,). A crop is not
    periodic: the window tapers its edges, whose jump (and the net's zero-padding artefacts there, which
    whole-box predictions do not have) would otherwise leak power into every shell; the crop's (windowed)
    mean, its bulk flow, is removed first so that it does not leak into the lowest shell."""
    c = f.shape[-1]
    w = torch.hann_window(c, periodic=False, device=f.device)
    w = w[:, None, None] * w[None, :, None] * w[None, None, :]
    f = f.float()
    f = (f - (f * w).sum((-3, -2, -1), keepdim=True) / w.sum()) * w  # windowed mean removed: no k = 0 leak
    power = torch.fft.rfftn(f, dim=(-3, -2, -1)).abs().square().sum((0, 1)).flatten()
    k = torch.fft.fftfreq(c, 1.0 / c, device=f.device)
    kz = torch.fft.rfftfreq(c, 1.0 / c, device=f.device)
    shell = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2).round().long()
    shell = shell.flatten()
    sel = (shell >= 1) & (shell <= n_shells)
    total = torch.zeros(n_shells, device=f.device).index_add_(0, shell[sel] - 1, power[sel])
    count = torch.zeros(n_shells, device=f.device).index_add_(0, shell[sel] - 1, torch.ones_like(power[sel]))
    return total / count


def loss(model: nn.Module, batch: dict, cfg: UNetConfig | None = None) -> torch.Tensor:
    """L1 on the scaled channels + density_loss_weight x L1 on rho = exp(s x) of the density channel
    + velocity_pk_loss_weight x mean over crop shells up to half the Nyquist frequency (the metrics' k range)
    of |ln P_pred(k) - ln P_true(k)| of the gas velocity (a spectrum-matching term: an L1 fit regresses to
    the conditional median and loses small-scale power, which the velocity band of `threshold` measures)."""
    cfg = cfg or getattr(getattr(model, "module", model), "cfg", None) or UNetConfig()  # DDP: in .module
    pred, y = model(batch["x"]), batch["y"]
    total = F.l1_loss(pred, y)
    if cfg.density_loss_weight:
        s = cfg.density_log_scale
        rho_pred, rho_true = torch.exp(s * pred[:, 0]), torch.exp(s * y[:, 0])
        total = total + cfg.density_loss_weight * F.l1_loss(rho_pred, rho_true)
    if cfg.velocity_pk_loss_weight:
        n_shells = max(1, int(cfg.k_max_nyquist_fraction * pred.shape[-1] / 2))
        p_pred, p_true = crop_power(pred[:, 2:], n_shells), crop_power(y[:, 2:], n_shells)
        ratio = torch.log(p_pred + 1e-12) - torch.log(p_true + 1e-12)
        total = total + cfg.velocity_pk_loss_weight * ratio.abs().mean()
    return total


def make_optimizer(model: nn.Module, cfg: UNetConfig, lr: float):
    """Adam; with ``cfg.lr_drop_step`` the learning rate is multiplied by ``cfg.lr_drop_factor`` after that
    many steps (a step hook, so every loop that calls ``step()`` follows it): the last epochs settle."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if cfg.lr_drop_step:
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: cfg.lr_drop_factor if step >= cfg.lr_drop_step else 1.0)
        opt.register_step_post_hook(lambda *_: schedule.step())
    return opt


def samples_in(batch: dict) -> int:
    """Cubes in a batch (the throughput unit)."""
    return int(batch["x"].shape[0])


_LIGHTNING = LazyLightningClass(__name__, "UNetLightning", build=build, loss=loss,
                                make_optimizer=make_optimizer,
                                samples_in=samples_in)


def lightning(cfg: UNetConfig, lr: float = 1e-3):
    """A LightningModule over the same `UNet3D` (``.model``)."""
    return _LIGHTNING.cls()(cfg, lr)


__getattr__ = _LIGHTNING.module_getattr  # lets pickle (ddp_spawn) find the lazily made UNetLightning


# ---------------------------------------------------------------- metrics

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2,
            margin: int | None = None) -> torch.Tensor:
    """Whole-box predictions (fully convolutional), (n, 5, g, g, g) in network units. The boxes are
    periodic, so each is wrapped around by `margin` cells per side (default: half a training crop) before
    the net sees it and the margin is cut off after: every cell is predicted from its true neighbourhood,
    none from the zero padding of the convolutions (which training crops never see at their centres)."""
    model.eval()
    net = getattr(model, "module", model)
    cfg = getattr(net, "cfg", None)
    if margin is None:
        margin = cfg.crop // 2 if cfg is not None else 0
    levels = cfg.levels if cfg is not None else 0
    if margin % max(1, 2 ** (levels - 1)):
        raise ValueError(f"margin {margin} must be a multiple of 2**(levels - 1) = {2 ** (levels - 1)}")
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        if margin:
            xb = F.pad(xb, (margin,) * 6, mode="circular")
        yb = model(xb).float().cpu()
        out.append(yb[..., margin:-margin, margin:-margin, margin:-margin] if margin else yb)
    return torch.cat(out)


def pk_ratio(pred: np.ndarray, true: np.ndarray, box: float) -> tuple[np.ndarray, np.ndarray]:
    """k and <P_pred(k)> / <P_true(k)> over boxes of (n, g, g, g) fields (overdensities taken per box)."""
    pp, pt = [], []
    for a, b in zip(pred, true):
        k, p1, _ = power_spectrum(a / a.mean() - 1, box)
        _, p2, _ = power_spectrum(b / b.mean() - 1, box)
        pp.append(p1)
        pt.append(p2)
    return k, np.mean(pp, 0) / np.maximum(np.mean(pt, 0), 1e-30)


def spectra(model: nn.Module, data: dict, margin: int | None = None) -> dict:
    """The spectra behind `metrics` and the plots, averaged over boxes: ``k``, ``trained`` (mask of the
    trained k range), gas-density ``p_true``, ``p_pred``, ``r`` (cross-correlation of predicted and true
    overdensity), the same ``_temperature``, and the gas-velocity spectra summed over x, y, z
    (``pv_true``, ``pv_pred``, ``rv``)."""
    cfg = data["cfg"]
    pred = predict(model, data["x"], margin=margin).numpy()
    y = data["y"].numpy()
    d = cfg.data
    k_lo = 2 * math.pi / (cfg.crop * d.cell_size)
    k_hi = cfg.k_max_nyquist_fraction * math.pi / d.cell_size
    fields = {
        "": (np.exp(cfg.density_log_scale * pred[:, 0]), np.exp(cfg.density_log_scale * y[:, 0])),
        "_temperature": (np.exp(cfg.temperature_log_scale * pred[:, 1]),
                         np.exp(cfg.temperature_log_scale * y[:, 1])),
    }
    out = {"pred": pred, "y": y}
    for name, (a_all, b_all) in fields.items():
        pab, paa, pbb = 0.0, 0.0, 0.0
        for a, b in zip(a_all, b_all):
            da, db = a / a.mean() - 1, b / b.mean() - 1
            k, c, _ = cross_power_spectrum(da, db, d.box_size)
            paa, pbb, pab = (paa + power_spectrum(da, d.box_size)[1], pbb + power_spectrum(db, d.box_size)[1],
                             pab + c)
        out[f"p_pred{name}"], out[f"p_true{name}"] = paa / len(a_all), pbb / len(a_all)
        out[f"r{name}"] = pab / np.sqrt(np.maximum(paa * pbb, 1e-60))
    pv_p = pv_t = pv_c = 0.0
    for i in range(len(pred)):
        for c in range(2, 5):
            k, cr, _ = cross_power_spectrum(pred[i, c], y[i, c], d.box_size)
            pv_p = pv_p + power_spectrum(pred[i, c], d.box_size)[1]
            pv_t = pv_t + power_spectrum(y[i, c], d.box_size)[1]
            pv_c = pv_c + cr
    out.update(k=k, trained=(k >= k_lo * 0.999) & (k <= k_hi * 1.001), k_lo=k_lo, k_hi=k_hi,
               pv_pred=pv_p / len(pred), pv_true=pv_t / len(pred),
               rv=pv_c / np.sqrt(np.maximum(pv_p * pv_t, 1e-60)))
    return out


def metrics(model: nn.Module, data: dict) -> dict:
    """Power spectra, cross-correlations and voxel L1 on whole boxes, over the trained k range
    [2 pi / (crop cell), k_max_nyquist_fraction x k_Nyquist]:

    ``pk_ratio_max_dev``: max |P_pred / P_true - 1| of the gas overdensity (also ``_temperature``);
    ``r_min``: min r(k) of predicted and true gas overdensity (the phases; also ``r_min_temperature``);
    ``pk_ratio_max_dev_velocity``: max |P_pred / P_true - 1| of the gas velocity (x + y + z) and
    ``r_min_velocity``; ``voxel_l1`` (network units, all channels) and ``density_l1_rel``
    (mean |rho_pred - rho_true| / mean rho)."""
    cfg = data["cfg"]
    s = spectra(model, data)
    sel = s["trained"]
    out = {}
    for name in ("", "_temperature"):
        out[f"pk_ratio_max_dev{name}"] = float(np.max(np.abs(s[f"p_pred{name}"][sel]
                                                             / s[f"p_true{name}"][sel] - 1)))
        out[f"r_min{name}"] = float(np.min(s[f"r{name}"][sel]))
    out["pk_ratio_max_dev_velocity"] = float(np.max(np.abs(s["pv_pred"][sel] / s["pv_true"][sel] - 1)))
    out["r_min_velocity"] = float(np.min(s["rv"][sel]))
    out["pk_k_min"], out["pk_k_max"], out["pk_bins"] = float(s["k_lo"]), float(s["k_hi"]), int(sel.sum())
    pred, y = s["pred"], s["y"]
    rho_p, rho_t = np.exp(cfg.density_log_scale * pred[:, 0]), np.exp(cfg.density_log_scale * y[:, 0])
    out["voxel_l1"] = float(np.abs(pred - y).mean())
    out["density_l1_rel"] = float(np.abs(rho_p - rho_t).mean() / rho_t.mean())
    return out


BARS = {"pk_ratio_max_dev": 0.2, "r_min": 0.9, "pk_ratio_max_dev_velocity": 0.25}


def threshold(m: dict) -> bool:
    """Tiny-preset bar (module docstring): on the trained k range, gas-density P(k) within 20%, its
    cross-correlation r(k) >= 0.9, and gas-velocity P(k) within 25%."""
    return bool(m["pk_ratio_max_dev"] <= BARS["pk_ratio_max_dev"] and m["r_min"] >= BARS["r_min"]
                and m["pk_ratio_max_dev_velocity"] <= BARS["pk_ratio_max_dev_velocity"])


def plots(model: nn.Module, data: dict, outdir) -> list:
    """P(k) of predicted and true gas density and velocity with their ratio, and r(k), over the test boxes;
    the trained k range is shaded. Returns the written PNG paths."""
    import matplotlib.pyplot as plt

    from hepml_kit.plots import save, style

    s = spectra(model, data)
    k, lo, hi = s["k"], s["k_lo"], s["k_hi"]
    paths = []
    with style():
        fig, (ax, ax_r) = plt.subplots(2, 1, sharex=True, figsize=(7, 7),
                                       gridspec_kw={"height_ratios": [3, 1]})
        for key, label, colour in (("", "gas density", "C0"), ("v", "gas velocity", "C1")):
            true, pred = (s["p_true"], s["p_pred"]) if key == "" else (s["pv_true"], s["pv_pred"])
            ax.loglog(k, true, color=colour, label=f"{label}, hydro (truth)")
            ax.loglog(k, pred, color=colour, ls="--", label=f"{label}, U-Net")
            ax_r.semilogx(k, pred / true, color=colour)
        for a in (ax, ax_r):
            a.axvspan(lo, hi, color="grey", alpha=0.12, lw=0)
        ax_r.axhspan(1 - BARS["pk_ratio_max_dev"], 1 + BARS["pk_ratio_max_dev"],
                     color="green", alpha=0.1, lw=0)
        ax.set_ylabel(r"$P(k)$ [(Mpc/h)$^3$; (km/s)$^2$ (Mpc/h)$^3$]")
        ax_r.set(xlabel=r"$k$ [h/Mpc]", ylabel="U-Net / truth", ylim=(0.5, 1.5))
        ax.legend()
        paths.append(save(fig, outdir, "cosmo_unet_power_spectra"))
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.semilogx(k, s["r"], label="gas density")
        ax.semilogx(k, s["r_temperature"], label="temperature")
        ax.semilogx(k, s["rv"], label="gas velocity")
        ax.axvspan(lo, hi, color="grey", alpha=0.12, lw=0, label="trained k range")
        ax.axhline(BARS["r_min"], color="k", ls=":", label=f"bar (gas density): r = {BARS['r_min']}")
        ax.set(xlabel=r"$k$ [h/Mpc]", ylabel="r(k), U-Net x truth",
               ylim=(0, 1.05))
        ax.legend()
        paths.append(save(fig, outdir, "cosmo_unet_cross_correlation"))
    return paths


def gpu_check(device: str = "cuda", presets=("small", "full"), steps: int = 20, batch_size: int = 64,
              bf16: bool = True) -> dict:
    """Device smoke test and throughput: `small` steps on fresh boxes, `full` steps on synthetic 64^3 crops
    (SC21 measured ~421 crops/s compute-only on one A100 at batch 64), bf16 autocast, cuDNN autotuning
    on (measured on one H200: 1540 crops/s bf16, 1000 TF32; without autotuning 510 and 710). Returns
    plain numbers; raises if the device is missing or a loss is not finite."""
    import time

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpu_check needs a CUDA device")
    torch.backends.cudnn.benchmark = True  # 3-D (transposed) convolutions: pick kernels by timing
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for preset in presets:
        cfg = config(preset)
        torch.manual_seed(0)
        model = UNet3D(cfg).to(dev)
        opt = make_optimizer(model, cfg, 1e-4)
        if preset != "full":
            batch = next(batches(generate(cfg, 2, 0), batch_size, shuffle=True))
        else:
            c = cfg.crop
            batch = {"x": torch.randn(batch_size, 4, c, c, c), "y": torch.rand(batch_size, 5, c, c, c) * 0.2}
        batch = {k: v.to(dev) for k, v in batch.items()}
        for i in range(steps + 2):  # two warm-up steps
            if i == 2:
                sync()
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                value = loss(model, batch, cfg)
            value.backward()
            opt.step()
        sync()
        value = value.detach()
        rate = steps * batch_size / (time.perf_counter() - t0)
        if not math.isfinite(float(value)):
            raise RuntimeError(f"{preset}: loss is {float(value)}")
        out.update({f"{preset}_crops_per_s": rate, f"{preset}_tflops": rate * flops_per_sample(cfg) / 1e12,
                    f"{preset}_loss": float(value)})
        if dev.type == "cuda":
            out[f"{preset}_max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
            del model, opt, batch
            torch.cuda.empty_cache()
    return out


TRAIN_DEFAULTS = {
    "tiny": {"events": 24, "test_events": 4, "epochs": 40, "batch_size": 8, "lr": 3e-3},
    "small": {"events": 32, "test_events": 8, "epochs": 20, "batch_size": 8, "lr": 1e-3},
    "full": {"events": 32, "test_events": 4, "epochs": 50, "batch_size": 64, "lr": 2e-4},
}

TESTBED = Testbed(
    name="cosmo_unet",
    unit="cubes",
    paper="Harrington et al. 2021 (arXiv:2106.12662); NERSC sc21-dl-tutorial U-Net",
    config=config,
    build=build,
    generate=generate,
    batches=batches,
    metrics=metrics,
    threshold=threshold,
    train_defaults=TRAIN_DEFAULTS,
    samples_in=samples_in,
    loss=loss,
    make_optimizer=make_optimizer,
    flops_per_sample=flops_per_sample,
    lightning=lightning,
    plots=plots,
    extra={"parameter_count": parameter_count},
)
