"""Energy-conditioned Wasserstein GAN with gradient penalty for calorimeter showers, after FastCaloGAN.

ATLAS, "AtlFast3: the next generation of fast simulation in ATLAS", Comput. Softw. Big Sci. 6 (2022) 7
(arXiv:2109.02551): 300 GANs, one per particle (photon, electron, pion) and |eta| slice of 0.05, each an MLP
generator (latent 50 + energy label -> hidden 50-100-200 for photons/electrons, 100-200-400 for pions ->
voxels, ReLU output) against an MLP critic (3 hidden layers as wide as the voxel count), trained as a
WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028: gradient penalty weight 10, several critic steps per
generator step, Adam with beta1 = 0.5). Data: CaloChallenge-dataset-1-like showers from
`hepml_kit.data.showers` (368 voxels for photons/electrons, 533 for pions).

`CaloGAN` holds both nets (`.generator`, `.critic`) and `generate(energies)`; `train_step` does one critic
step per batch and a generator step every `n_critic` batches; `make_optimizer` returns (opt_g, opt_d).
`train_calo_gan(particle, eta_bin, preset, seed, epochs)` trains one GAN end to end from fresh data: the
unit of the many-model farm. Shapes: z (B, 50), energy label (B, 1), voxels (B, V). The nets see voxels
normalised by the incident energy E and the sampling fraction, to a power (`voxel_power`: square roots at
tiny and small, linear at full); the label is log E.

Generators. ``full`` keeps FastCaloGAN's (`ShowerGenerator`: an MLP with a ReLU voxel output). ``tiny`` uses
an energy-conserving one with the calorimeter's readout (`FractionGenerator`): the deposited total, its
sharing among layers and each layer's sharing among voxels (softmaxes), read out as Poisson energy spots of
the shower model's sampling term (a^2 x 1 GeV) times a per-shower gain 1 +- c (its constant term), so empty
voxels are exactly 0 as in the simulation, and turned/mirrored at random in azimuth (the showers'
symmetry). Still a WGAN-GP (2 critic steps per generator step at tiny). A plain MLP generator spreads faint
energy over the outer voxels that the sparse simulation leaves empty (transverse widths separated at 0.9,
classifier AUC 1.00 before this change).

Feature matching (Salimans et al. 2016) adds to the generator loss, per incident energy of the batch, the
mismatch of mean and spread of the layer and total energies (`sum_matching_loss`; tiny and small) and of
the layers' centroids and widths (``shape_matching``; tiny): the voxel-space critic resolves the 1-10%
total-energy resolution only slowly.

Validation (the figures of merit, the absolute bar, the status across seeds, the plots, and the choice of
the checkpoint by those figures, `CheckpointSelection`): `hepml_kit.models.calo_gan_validation`, re-exported
here (`metrics`, `threshold`, `plots`, `BARS`, `chi2_two_sample`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from hepml_kit.data.showers import CALOCHALLENGE_ENERGIES_MEV, ShowerConfig, generate_showers
from hepml_kit.models._lightning import LazyClass
from hepml_kit.models._testbed import Testbed, fit, iterate_batches
from hepml_kit.models.calo_gan_validation import (
    BARS,
    CheckpointSelection,
    chi2_two_sample,
    metrics,
    plots,
    threshold,
)

__all__ = ["CaloGANConfig", "CaloGAN", "config", "build", "generate", "batches", "train_step",
           "make_optimizer", "metrics", "threshold", "plots", "BARS", "chi2_two_sample",
           "CheckpointSelection", "flops_per_sample", "lightning", "train_calo_gan", "gpu_check", "TESTBED"]

E_MIN_MEV, E_MAX_MEV = CALOCHALLENGE_ENERGIES_MEV[0], CALOCHALLENGE_ENERGIES_MEV[-1]


@dataclass(frozen=True)
class CaloGANConfig:
    """One GAN: its particle and |eta| bin, network sizes and WGAN-GP settings."""

    particle: str = "photon"
    eta_bin: int = 4
    latent_dim: int = 50
    generator_hidden: tuple = (50, 100, 200)
    critic_hidden: tuple | None = None  # None: three layers as wide as the voxel count (FastCaloGAN)
    n_critic: int = 5
    gp_weight: float = 10.0
    betas: tuple = (0.5, 0.9)
    energies_mev: tuple = CALOCHALLENGE_ENERGIES_MEV
    feature_bins: int = 20
    voxel_power: float = 1.0  # the nets see (E_voxel / (E sf))^power; < 1 lifts the faint outer voxels
    sum_matching: float = 0.0  # weight of the energy-sum feature-matching term in the generator loss
    # "voxels": FastCaloGAN's ReLU voxel output; "fractions": total x layer fractions x voxel shares,
    # read out as Poisson energy spots (`FractionGenerator`)
    parametrisation: str = "voxels"
    shape_matching: float = 0.0  # weight of the centroid/width feature matching
    critic_features: bool = False  # the critic also reads the high-level features (`ShowerCritic`)
    response_step: float = 0.1  # scale of the total-response outputs of `FractionGenerator` (their step size)
    # checkpoint selection (`CheckpointSelection`): every `select_every` generator steps from `select_after`
    # on, on `validation_events` showers; 0: off (`generate` uses the last weights)
    select_every: int = 0
    select_after: int = 0
    validation_events: int = 1024
    shower: ShowerConfig = field(init=False, compare=False, repr=False)  # from particle, eta_bin, energies

    def __post_init__(self):
        shower = ShowerConfig(particle=self.particle, eta_bin=self.eta_bin,
                              energies_mev=tuple(self.energies_mev))
        object.__setattr__(self, "shower", shower)
        if self.n_critic < 1 or self.latent_dim < 1:
            raise ValueError("n_critic and latent_dim must be >= 1")
        if self.parametrisation not in ("voxels", "fractions"):
            raise ValueError(f"parametrisation must be 'voxels' or 'fractions', got {self.parametrisation!r}")

    @property
    def n_voxels(self) -> int:
        return self.shower.n_voxels

    @property
    def critic_layers(self) -> tuple:
        return self.critic_hidden if self.critic_hidden is not None else (self.n_voxels,) * 3

    def with_(self, **changes) -> CaloGANConfig:
        return replace(self, **changes)


def config(preset: str = "tiny", particle: str = "photon", eta_bin: int = 4) -> CaloGANConfig:
    """tiny: 4 energies (1-65 GeV), the energy-conserving generator with the spot readout
    (`FractionGenerator`),
    a 3x128 critic, 2 critic steps per generator step, square-root voxels, feature matching of the energies,
    centroids and widths, the checkpoint picked by validation chi2 over the last 25 of its 45 epochs
    (`CheckpointSelection`; CPU in seconds); small: all 15 energies, FastCaloGAN nets, square-root voxels,
    energy-sum matching; full: FastCaloGAN (linear voxels, 5 critic steps, pions with a twice-as-wide
    generator)."""
    pion = particle == "pion"
    gen_full = (100, 200, 400) if pion else (50, 100, 200)
    presets = {
        "tiny": dict(generator_hidden=(50, 100, 200), critic_hidden=(128, 128, 128), n_critic=2,
                     voxel_power=0.5, sum_matching=5.0, parametrisation="fractions", shape_matching=1.0,
                     energies_mev=tuple(float(2**k) for k in (10, 12, 14, 16)),
                     select_every=16, select_after=320),  # every epoch of 4096 showers from epoch 20 on
        "small": dict(generator_hidden=gen_full, critic_hidden=None, voxel_power=0.5, sum_matching=5.0),
        "full": dict(generator_hidden=gen_full, critic_hidden=None),
    }
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    return CaloGANConfig(particle=particle, eta_bin=eta_bin, **presets[preset])


def energy_label(energy_mev: torch.Tensor) -> torch.Tensor:
    """Conditioning label in [0, 1]: log2 of the energy across 256 MeV ... 4 TeV. (n,) -> (n, 1)."""
    return (torch.log2(energy_mev / E_MIN_MEV) / math.log2(E_MAX_MEV / E_MIN_MEV)).unsqueeze(-1).float()


def _mlp(sizes, act, out_act=None):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    if out_act is not None:
        layers.append(out_act())
    return nn.Sequential(*layers)


def _layer_slices(cfg: CaloGANConfig) -> list[slice]:
    bounds = np.cumsum([0] + [ly.n_voxels for ly in cfg.shower.layers])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class ShowerGenerator(nn.Module):
    """(z: (B, latent), label: (B, 1)) -> voxels (B, V) in network units (E_voxel / (E sf))^power."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.net = _mlp((cfg.latent_dim + 1, *cfg.generator_hidden, cfg.n_voxels), nn.SiLU, nn.ReLU)

    def forward(self, z, label, generator: torch.Generator | None = None):
        return self.net(torch.cat([z, label], dim=1))


def label_energy(label: torch.Tensor) -> torch.Tensor:
    """Inverse of `energy_label`: (n, 1) label -> (n,) energy in MeV."""
    return E_MIN_MEV * torch.exp2(label[:, 0] * math.log2(E_MAX_MEV / E_MIN_MEV))


class FractionGenerator(nn.Module):
    """Energy-conserving generator with the calorimeter's sampling readout: (z, label) -> voxels (B, V) in
    network units (E_voxel / (E sf))^power, like `ShowerGenerator`.

    An MLP trunk gives three heads: the deposited fraction of E (log-normal), its sharing among the layers
    (softmax over layers) and each layer's sharing among its voxels (softmax within the layer); their
    product is the expected deposited energy of every voxel (the parametrisation of CaloFlow, Krause &
    Shih, arXiv:2106.05285, and of the CaloChallenge models). The readout then draws a whole number of
    energy spots per voxel, Poisson with that mean (the sampling fluctuations sigma/E = a / sqrt(E) of the
    shower model: spot energy a^2 x 1 GeV, `ShowerConfig.spot_energy_mev`), so that empty voxels are exactly
    0 and the occupied ones hold at least one spot, as in the simulation; a per-shower gain 1 +- c (the
    constant term, `ShowerConfig.constant_term`) scales the whole shower, as a calibration spread does.
    Gradients pass the draw straight through to the expected energies (Bengio et al., arXiv:1308.3432)."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.cfg = cfg
        self.slices = _layer_slices(cfg)
        self.net = _mlp((cfg.latent_dim + 1, *cfg.generator_hidden), nn.SiLU, nn.SiLU)
        self.head = nn.Linear(cfg.generator_hidden[-1], cfg.n_voxels + len(self.slices) + 2)
        self.spot_mev = cfg.shower.spot_energy_mev

    def sample(self, z, label, generator: torch.Generator | None = None):
        """(expected, drawn) deposited energy per voxel over E, each (B, V); `drawn` carries no gradient."""
        out = self.head(self.net(torch.cat([z, label], dim=1)))
        n_vox, n_layers = self.cfg.n_voxels, len(self.slices)
        layer_share = torch.softmax(out[:, n_vox : n_vox + n_layers], dim=1)
        # the deposited total (starts near 0.9 E; log-normal, not bounded by E, though the simulation's
        # expected deposit is), with a per-shower noise of learned relative width (log-sigma head)
        noise = torch.randn(len(out), 1, generator=generator).to(out.device)
        k = self.cfg.response_step  # < 1: smaller steps for the two response outputs than for the shares
        total = torch.exp(k * out[:, -2:-1] - 0.1 + torch.exp(k * out[:, -1:] - 4.5) * noise)
        expected = torch.cat([total * layer_share[:, i : i + 1] * torch.softmax(out[:, sl], dim=1)
                              for i, sl in enumerate(self.slices)], dim=1)
        expected = self._rotate(expected, generator)
        energy = label_energy(label)[:, None]
        rate = (expected.detach() * energy / self.spot_mev).float()
        gain = 1.0 + self.cfg.shower.constant_term * torch.randn(len(rate), 1, generator=generator)
        if generator is not None and generator.device != rate.device:
            spots = torch.poisson(rate.cpu(), generator=generator).to(rate.device)
        else:
            spots = torch.poisson(rate, generator=generator)
        drawn = spots * gain.clamp_min(0.5).to(rate.device) * self.spot_mev / energy
        return expected, drawn.to(expected.dtype)

    def _rotate(self, expected, generator):
        """Turn each shower by a random multiple of the angular bin and mirror it at random, the same way in
        every layer: the showers are symmetric about the particle's direction and the axis offsets isotropic,
        so the generator need only learn one orientation (an exact symmetry, as in group-equivariant nets)."""
        n_alpha = max(ly.n_alpha for ly in self.cfg.shower.layers)
        if n_alpha == 1:
            return expected
        b = len(expected)
        shift = torch.randint(0, n_alpha, (b, 1), generator=generator).to(expected.device)
        mirror = torch.randint(0, 2, (b, 1), generator=generator).to(expected.device).bool()
        cols = []
        for ly, sl in zip(self.cfg.shower.layers, self.slices):
            block = expected[:, sl]
            if ly.n_alpha > 1:
                a = torch.arange(ly.n_alpha, device=expected.device)[None, :]
                k = shift % ly.n_alpha
                idx = torch.where(mirror, (k - a) % ly.n_alpha, (a + k) % ly.n_alpha)  # (B, n_alpha)
                block = block.reshape(b, -1, ly.n_alpha)
                block = block.gather(2, idx[:, None, :].expand_as(block)).reshape(b, -1)
            cols.append(block)
        return torch.cat(cols, dim=1)

    def forward(self, z, label, generator: torch.Generator | None = None):
        expected, drawn = self.sample(z, label, generator)
        p = self.cfg.voxel_power
        smooth = expected.clamp_min(1e-12) ** p
        return drawn**p + (smooth - smooth.detach())  # value: the drawn voxels; gradient: the expected ones


class ShowerCritic(nn.Module):
    """(voxels: (B, V), label: (B, 1)) -> Wasserstein critic score (B,). With ``critic_features`` the critic
    also reads the showers' high-level features (layer and total energies, centroids, widths), computed
    from the voxels inside the net so that the gradient penalty still acts on the voxels."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.cfg = cfg
        n_extra = 0
        if cfg.critic_features:
            n_layers = len(cfg.shower.layers)
            n_extra = n_layers + 2 + 3 * sum(ly.n_alpha > 1 for ly in cfg.shower.layers)
        self.net = _mlp((cfg.n_voxels + 1 + n_extra, *cfg.critic_layers, 1), nn.LeakyReLU)

    def forward(self, voxels, label):
        parts = [voxels, label]
        if self.cfg.critic_features:
            frac = voxels.clamp_min(0) ** (1.0 / self.cfg.voxel_power)
            sums = _sums(self, frac)
            parts += [sums, shape_features(self, frac) / 20.0]  # mm / 20: order one
        return self.net(torch.cat(parts, dim=1)).squeeze(-1)


class CaloGAN(nn.Module):
    """Generator + critic of one (particle, |eta| bin) GAN (and, with ``select_every``, the checkpoint of the
    generator that `generate` uses, `CheckpointSelection`)."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = (FractionGenerator(cfg) if cfg.parametrisation == "fractions"
                          else ShowerGenerator(cfg))
        self.critic = ShowerCritic(cfg)
        self.selection = CheckpointSelection(cfg, self.generator) if cfg.select_every > 0 else None
        sf = np.concatenate([np.full(ly.n_voxels, ly.sampling_fraction) for ly in cfg.shower.layers])
        self.register_buffer("sampling_fraction", torch.tensor(sf, dtype=torch.float32))  # (V,)
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))

    def forward(self, z, label):
        return self.generator(z, label)

    @torch.no_grad()
    def generate(self, energies_mev, generator: torch.Generator | None = None,
                 selected: bool = True) -> torch.Tensor:
        """Showers for incident energies (n,) in MeV -> visible voxel energies (n, V) in MeV, from the
        selected checkpoint where one has been kept (`selected`), else from the live generator."""
        if selected and self.selection is not None and int(self.selection.best_step) >= 0:
            with self.selection.swapped_into(self.generator):
                return self.generate(energies_mev, generator, selected=False)
        e = torch.as_tensor(energies_mev, dtype=torch.float32, device=self.sampling_fraction.device)
        z = torch.randn(len(e), self.cfg.latent_dim, generator=generator, device="cpu").to(e.device)
        if isinstance(self.generator, FractionGenerator):
            x = self.generator.sample(z, energy_label(e), generator)[1]
        else:
            x = self.generator(z, energy_label(e)) ** (1.0 / self.cfg.voxel_power)
        return x * e[:, None] * self.sampling_fraction


def build(cfg: CaloGANConfig) -> CaloGAN:
    return CaloGAN(cfg)


# ---------------------------------------------------------------- data

def generate(cfg: CaloGANConfig, n: int, seed: int, rank: int = 0, world_size: int = 1) -> dict:
    """Fresh showers (see `generate_showers`) plus network tensors: ``x`` (n, V) = (voxels / (E sf))^power,
    and ``label`` (n, 1)."""
    data = generate_showers(n, seed, cfg.shower, rank=rank, world_size=world_size)
    sf = np.concatenate([np.full(ly.n_voxels, ly.sampling_fraction) for ly in cfg.shower.layers])
    x = (data["voxels"] / (data["energy"][:, None] * sf[None, :])) ** cfg.voxel_power
    energy = torch.from_numpy(data["energy"]).float()
    return dict(data, x=torch.from_numpy(x.astype(np.float32)), label=energy_label(energy), cfg=cfg)


def batches(data: dict, batch_size: int, shuffle: bool = False, seed: int = 0):
    """{"voxels": (B, V), "label": (B, 1)}."""
    for idx in iterate_batches(len(data["x"]), batch_size, shuffle, seed):
        yield {"voxels": data["x"][idx], "label": data["label"][idx]}


# ---------------------------------------------------------------- training

def make_optimizer(model: CaloGAN, cfg: CaloGANConfig, lr: float):
    """(opt_g, opt_d): Adam for each net (beta1 = 0.5, as for WGAN-GP)."""
    return (torch.optim.Adam(model.generator.parameters(), lr=lr, betas=cfg.betas),
            torch.optim.Adam(model.critic.parameters(), lr=lr, betas=cfg.betas))


def critic_loss(model: CaloGAN, real, label):
    """E[D(fake)] - E[D(real)] + lambda E[(|grad D(interp)| - 1)^2]; returns (loss, wasserstein estimate)."""
    z = torch.randn(len(real), model.cfg.latent_dim, device=real.device)
    with torch.no_grad():
        fake = model.generator(z, label)
    eps = torch.rand(len(real), 1, device=real.device)
    interp = (eps * real + (1 - eps) * fake).requires_grad_(True)  # (B, V)
    grad = torch.autograd.grad(model.critic(interp, label).sum(), interp, create_graph=True)[0]
    gp = ((grad.norm(2, dim=1) - 1) ** 2).mean()
    w = model.critic(real, label).mean() - model.critic(fake, label).mean()
    return -w + model.cfg.gp_weight * gp, w


def _deposited(model: CaloGAN, x: torch.Tensor) -> torch.Tensor:
    """Network-unit voxels (B, V) -> deposited energy per voxel over E."""
    return x.clamp_min(0) ** (1.0 / model.cfg.voxel_power)


def _sums(model: CaloGAN, frac: torch.Tensor) -> torch.Tensor:
    layers = torch.stack([frac[:, sl].sum(1) for sl in _layer_slices(model.cfg)], 1)
    sf = torch.tensor([ly.sampling_fraction for ly in model.cfg.shower.layers], dtype=frac.dtype,
                      device=frac.device)
    # E_vis / (E sf_max): what the response is judged on
    visible = (layers * sf).sum(1, keepdim=True) / sf.max()
    return torch.cat([layers, layers.sum(1, keepdim=True), visible], 1)


def energy_sums(model: CaloGAN, x: torch.Tensor) -> torch.Tensor:
    """Deposited fraction of E per layer and in total, and the visible total over the largest sampling
    fraction, from network-unit voxels: (B, V) -> (B, L + 2)."""
    return _sums(model, _deposited(model, x))


def shape_features(model: CaloGAN, frac: torch.Tensor) -> torch.Tensor:
    """Energy-weighted centroid x, y and rms width (mm) of every layer with angular bins, as in
    `shower_features`, from deposited fractions (B, V) -> (B, 3 x layers)."""
    from hepml_kit.data.showers import voxel_coordinates

    coords = {k: torch.as_tensor(v, dtype=frac.dtype, device=frac.device)
              for k, v in voxel_coordinates(model.cfg.shower).items()}
    cols = []
    for ly, sl in zip(model.cfg.shower.layers, _layer_slices(model.cfg)):
        if ly.n_alpha == 1:
            continue
        e = frac[:, sl]
        tot = e.sum(1).clamp_min(1e-9)
        cx, cy = (e * coords["x"][sl]).sum(1) / tot, (e * coords["y"][sl]).sum(1) / tot
        r2 = (e * coords["r"][sl] ** 2).sum(1) / tot
        cols += [cx, cy, (r2 - cx**2 - cy**2).clamp_min(1e-6).sqrt()]
    return torch.stack(cols, 1)


def _moment_matching(fake: torch.Tensor, real: torch.Tensor, label, floor: float) -> torch.Tensor:
    """Per incident energy of the batch, sum over features of ((mu_f - mu_r)^2 + (sd_f - sd_r)^2) /
    (sd_r^2 + floor); mean over energies."""
    keys = label[:, 0]
    terms = []
    for e in torch.unique(keys):
        sel = keys == e
        if int(sel.sum()) < 4:
            continue
        mr, sdr = real[sel].mean(0), real[sel].std(0)
        mf, sdf = fake[sel].mean(0), fake[sel].std(0)
        terms.append((((mf - mr) ** 2 + (sdf - sdr) ** 2) / (sdr**2 + floor)).sum())
    return torch.stack(terms).mean() if terms else fake.sum() * 0.0


def sum_matching_loss(model: CaloGAN, fake, real, label) -> torch.Tensor:
    """Feature matching (Salimans et al. 2016, arXiv:1606.03498) on the energy sums, per incident energy of
    the batch: sum over features of ((mu_fake - mu_real)^2 + (sigma_fake - sigma_real)^2) / sigma_real^2.
    It hands the generator the total-energy response and resolution and the sharing among layers, the
    quantities FastCaloGAN is judged on, which a voxel-space critic resolves only slowly. `fake`, `real`:
    network-unit voxels."""
    # floor 1e-6: 0.1% of E, so near-empty layers (Tile for photons) do not dominate
    return _moment_matching(energy_sums(model, fake), energy_sums(model, real), label, 1e-6)


def generator_loss(model: CaloGAN, label, real=None):
    """-E[D(fake)], plus ``sum_matching`` x `sum_matching_loss` (and, for the fractions generator,
    ``shape_matching`` x the same moment matching of the layers' centroids and widths) against `real` when
    both are given."""
    z = torch.randn(len(label), model.cfg.latent_dim, device=label.device)
    cfg = model.cfg
    if isinstance(model.generator, FractionGenerator):
        expected, drawn = model.generator.sample(z, label)
        frac = drawn + (expected - expected.detach())  # the drawn showers, gradient to the expected ones
        smooth = expected.clamp_min(1e-12) ** cfg.voxel_power
        fake = drawn**cfg.voxel_power + (smooth - smooth.detach())
    else:
        fake = model.generator(z, label)
        frac = _deposited(model, fake)
    loss = -model.critic(fake, label).mean()
    if real is not None and cfg.sum_matching > 0:
        loss = loss + cfg.sum_matching * _moment_matching(_sums(model, frac),
                                                          energy_sums(model, real), label, 1e-6)
    if real is not None and cfg.shape_matching > 0:
        real_shape = shape_features(model, _deposited(model, real))
        loss = loss + cfg.shape_matching * _moment_matching(shape_features(model, frac),
                                                            real_shape, label, 0.01)
    return loss


def _select(model: CaloGAN) -> None:
    """After a generator step: hand the generator to the checkpoint selection when a check is due."""
    cfg = model.cfg
    step = int(model.critic_steps) // cfg.n_critic  # generator steps so far
    if model.selection is not None and step >= cfg.select_after and \
            (step - cfg.select_after) % cfg.select_every == 0:
        model.selection.consider(model, step)


def train_step(model: CaloGAN, batch: dict, optimizers) -> float:
    """One critic step on this batch; every n_critic-th call also a generator step. Returns the critic
    loss."""
    opt_g, opt_d = optimizers
    real, label = batch["voxels"], batch["label"]
    opt_d.zero_grad(set_to_none=True)
    loss_d, _ = critic_loss(model, real, label)
    loss_d.backward()
    opt_d.step()
    model.critic_steps += 1
    if int(model.critic_steps) % model.cfg.n_critic == 0:
        opt_g.zero_grad(set_to_none=True)
        model.critic.requires_grad_(False)
        generator_loss(model, label, real).backward()
        model.critic.requires_grad_(True)
        opt_g.step()
        _select(model)
    return float(loss_d.detach())


def _macs(sizes) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_per_sample(cfg: CaloGANConfig) -> float:
    """Training FLOPs per shower per `train_step` (estimate): a critic step costs a generator forward,
    three critic forwards + backwards and the gradient-penalty double backward (~11 critic forwards);
    a generator step (1/n_critic of the steps) a generator and critic forward + backward (3x each)."""
    m_g = _macs((cfg.latent_dim + 1, *cfg.generator_hidden, cfg.n_voxels))
    m_d = _macs((cfg.n_voxels + 1, *cfg.critic_layers, 1))
    return 2.0 * (m_g + 11 * m_d + 3 * (m_g + m_d) / cfg.n_critic)


def _lightning_class() -> type:
    import lightning as L

    class CaloGANLightning(L.LightningModule):
        """The same `CaloGAN` (``.model``) under Lightning, with manual optimisation of both nets."""

        def __init__(self, cfg: CaloGANConfig, lr: float = 1e-4):
            super().__init__()
            self.save_hyperparameters()
            self.cfg, self.lr, self.model = cfg, lr, CaloGAN(cfg)
            self.automatic_optimization = False

        def forward(self, z, label):
            return self.model(z, label)

        def training_step(self, batch, batch_idx):
            opt_g, opt_d = self.optimizers()
            loss_d, w = critic_loss(self.model, batch["voxels"], batch["label"])
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            opt_d.step()
            self.model.critic_steps += 1
            if (batch_idx + 1) % self.cfg.n_critic == 0:
                loss_g = generator_loss(self.model, batch["label"], batch["voxels"])
                opt_g.zero_grad()
                self.manual_backward(loss_g)
                opt_g.step()
                _select(self.model)
            self.log_dict({"critic_loss": loss_d, "wasserstein": w}, prog_bar=True,
                          batch_size=len(batch["label"]))
            return loss_d

        def configure_optimizers(self):
            return list(make_optimizer(self.model, self.cfg, self.lr))

    return CaloGANLightning


_LIGHTNING = LazyClass(__name__, "CaloGANLightning", _lightning_class)


def lightning(cfg: CaloGANConfig, lr: float = 1e-4):
    """A LightningModule over the same `CaloGAN` (``.model``), with manual optimisation of both nets."""
    return _LIGHTNING.cls()(cfg, lr)


__getattr__ = _LIGHTNING.module_getattr  # lets pickle (ddp_spawn) find the lazily made CaloGANLightning


TRAIN_DEFAULTS = {
    "tiny": {"events": 4096, "test_events": 4096, "epochs": 45, "batch_size": 128, "lr": 3e-3},
    "small": {"events": 60_000, "test_events": 20_000, "epochs": 200, "batch_size": 128, "lr": 1e-4},
    "full": {"events": 120_000, "test_events": 40_000, "epochs": 2000, "batch_size": 128, "lr": 1e-4},
}


def train_calo_gan(particle: str, eta_bin: int, preset: str = "tiny", seed: int = 0,
                   epochs: int | None = None, events: int | None = None, device: str = "cpu",
                   return_model: bool = False) -> dict:
    """Train one (particle, |eta| bin) GAN from freshly generated showers and return its metrics.

    The unit of work of many-model training (FastCaloGAN's 300 GANs): independent, no communication.
    Evaluation uses a second fresh set (``test_events`` of the preset, another seed). Returns a dict of
    plain numbers plus ``particle``, ``eta_bin``, ``preset``, ``seed``, ``threshold_met``, ``train_seconds``,
    ``parameters`` (and ``model`` when `return_model`)."""
    cfg = config(preset, particle=particle, eta_bin=eta_bin)
    d = TRAIN_DEFAULTS[preset]
    epochs = d["epochs"] if epochs is None else int(epochs)
    events = d["events"] if events is None else int(events)
    if epochs < 1 or events < 2:
        raise ValueError(f"need epochs >= 1 and events >= 2, got epochs={epochs} events={events}")
    train = generate(cfg, events, seed)
    held_out = generate(cfg, d["test_events"], seed + 7919)
    t0 = time.perf_counter()
    model, history = fit(TESTBED, cfg, train, epochs=epochs, batch_size=d["batch_size"], lr=d["lr"],
                         seed=seed, device=device, log=None)
    seconds = time.perf_counter() - t0
    out = metrics(model.cpu(), held_out, seed=seed)
    out.update(particle=particle, eta_bin=eta_bin, preset=preset, seed=seed, epochs=epochs,
               threshold_met=bool(threshold(out)), train_seconds=seconds, final_critic_loss=history[-1],
               parameters=sum(p.numel() for p in model.parameters()))
    if return_model:
        out["model"] = model
    return out


def gpu_check(device: str = "cuda", steps: int = 50, bf16: bool = True) -> dict:
    """Device smoke test: `small`-preset photon and pion GAN steps under bf16 autocast, showers/s, and the
    separation power of the briefly trained model. Raises if the device is missing or a loss is not finite."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpu_check needs a CUDA device")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for particle in ("photon", "pion"):
        cfg = config("small", particle=particle)
        torch.manual_seed(0)
        model = CaloGAN(cfg).to(dev)
        opts = make_optimizer(model, cfg, 1e-4)
        data = generate(cfg, 2048, 0)
        batch_list = [{k: v.to(dev) for k, v in b.items()} for b in batches(data, 128, shuffle=True)]
        for i in range(steps + 5):
            if i == 5:
                sync()
                t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                value = train_step(model, batch_list[i % len(batch_list)], opts)
        sync()
        if not math.isfinite(value):
            raise RuntimeError(f"{particle}: critic loss is {value}")
        out[f"{particle}_showers_per_s"] = steps * 128 / (time.perf_counter() - t0)
        out[f"{particle}_separation_power"] = metrics(model.float().cpu(), data)["separation_power"]
    return out


TESTBED = Testbed(
    name="calo_gan",
    unit="showers",
    paper="ATLAS, AtlFast3 / FastCaloGAN, Comput. Softw. Big Sci. 6 (2022) 7",
    config=config,
    build=build,
    generate=generate,
    batches=batches,
    metrics=metrics,
    threshold=threshold,
    train_defaults=TRAIN_DEFAULTS,
    samples_in=lambda batch: int(batch["voxels"].shape[0]),
    loss=None,
    train_step=train_step,
    make_optimizer=make_optimizer,
    flops_per_sample=flops_per_sample,
    lightning=lightning,
    plots=plots,
    extra={"train_calo_gan": train_calo_gan},
)
