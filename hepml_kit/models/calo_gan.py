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
unit of the many-model farm. Shapes: z (B, 50), energy label (B, 1), voxels (B, V). The tiny preset
trains on square-root voxels with 3 critic steps per generator step, which converges in seconds on a CPU;
full keeps FastCaloGAN's linear voxels and 5 critic steps.

Metrics (on showers generated for the same incident energies as the simulated ones):
``feature_chi2``: mean over the high-level features (total energy ratio, layer energies, centroids, widths)
of the histogram chi2 separation 1/2 sum (p - q)^2 / (p + q) (0 identical, 1 disjoint; CaloChallenge's
"separation power"), with 20 quantile bins of the simulated distribution; ``feature_w1``: mean 1-D
Wasserstein distance of standardised features; ``classifier_auc``: a gradient-boosted classifier's AUC
separating generated from simulated showers on those features (0.5 = indistinguishable).
Threshold (tiny): ``feature_chi2 <= 0.5 x untrained_feature_chi2`` (an untrained generator of the same
architecture, evaluated identically). An untrained generator emits energy-independent voxel noise whose
feature histograms barely overlap the simulated ones; halving the separation requires the generator to
have learnt the energy response and how the shower shares itself among layers and radii. It is relative
so that it stays meaningful for every particle and |eta| bin the farm trains; the absolute values are
reported alongside.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from hepml_kit.data.showers import CALOCHALLENGE_ENERGIES_MEV, ShowerConfig, generate_showers, shower_features
from hepml_kit.models._lightning import LazyClass
from hepml_kit.models._testbed import Testbed, fit, iterate_batches

__all__ = ["CaloGANConfig", "CaloGAN", "config", "build", "generate", "batches", "train_step",
           "make_optimizer", "metrics", "threshold", "flops_per_sample", "lightning", "train_calo_gan",
           "gpu_check", "TESTBED"]

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
    shower: ShowerConfig = field(init=False, compare=False, repr=False)  # from particle, eta_bin, energies

    def __post_init__(self):
        shower = ShowerConfig(particle=self.particle, eta_bin=self.eta_bin,
                              energies_mev=tuple(self.energies_mev))
        object.__setattr__(self, "shower", shower)
        if self.n_critic < 1 or self.latent_dim < 1:
            raise ValueError("n_critic and latent_dim must be >= 1")

    @property
    def n_voxels(self) -> int:
        return self.shower.n_voxels

    @property
    def critic_layers(self) -> tuple:
        return self.critic_hidden if self.critic_hidden is not None else (self.n_voxels,) * 3

    def with_(self, **changes) -> CaloGANConfig:
        return replace(self, **changes)


def config(preset: str = "tiny", particle: str = "photon", eta_bin: int = 4) -> CaloGANConfig:
    """tiny: 4 energies (1-65 GeV), a 3x128 critic, 3 critic steps per generator step and square-root
    voxels (CPU in seconds); small: all 15 energies, FastCaloGAN nets, square-root voxels; full: FastCaloGAN
    (linear voxels, 5 critic steps, pions with a twice-as-wide generator)."""
    pion = particle == "pion"
    gen_full = (100, 200, 400) if pion else (50, 100, 200)
    presets = {
        "tiny": dict(generator_hidden=(50, 100, 200), critic_hidden=(128, 128, 128), n_critic=3,
                     voxel_power=0.5, energies_mev=tuple(float(2**k) for k in (10, 12, 14, 16))),
        "small": dict(generator_hidden=gen_full, critic_hidden=None, voxel_power=0.5),
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


class ShowerGenerator(nn.Module):
    """(z: (B, latent), label: (B, 1)) -> voxels (B, V), in units of incident energy x sampling fraction."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.net = _mlp((cfg.latent_dim + 1, *cfg.generator_hidden, cfg.n_voxels), nn.SiLU, nn.ReLU)

    def forward(self, z, label):
        return self.net(torch.cat([z, label], dim=1))


class ShowerCritic(nn.Module):
    """(voxels: (B, V), label: (B, 1)) -> Wasserstein critic score (B,)."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.net = _mlp((cfg.n_voxels + 1, *cfg.critic_layers, 1), nn.LeakyReLU)

    def forward(self, voxels, label):
        return self.net(torch.cat([voxels, label], dim=1)).squeeze(-1)


class CaloGAN(nn.Module):
    """Generator + critic of one (particle, |eta| bin) GAN."""

    def __init__(self, cfg: CaloGANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = ShowerGenerator(cfg)
        self.critic = ShowerCritic(cfg)
        sf = np.concatenate([np.full(ly.n_voxels, ly.sampling_fraction) for ly in cfg.shower.layers])
        self.register_buffer("sampling_fraction", torch.tensor(sf, dtype=torch.float32))  # (V,)
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))

    def forward(self, z, label):
        return self.generator(z, label)

    @torch.no_grad()
    def generate(self, energies_mev, generator: torch.Generator | None = None) -> torch.Tensor:
        """Showers for incident energies (n,) in MeV -> visible voxel energies (n, V) in MeV."""
        e = torch.as_tensor(energies_mev, dtype=torch.float32, device=self.sampling_fraction.device)
        z = torch.randn(len(e), self.cfg.latent_dim, generator=generator, device="cpu").to(e.device)
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


def generator_loss(model: CaloGAN, label):
    z = torch.randn(len(label), model.cfg.latent_dim, device=label.device)
    return -model.critic(model.generator(z, label), label).mean()


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
        generator_loss(model, label).backward()
        model.critic.requires_grad_(True)
        opt_g.step()
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
            if (batch_idx + 1) % self.cfg.n_critic == 0:
                loss_g = generator_loss(self.model, batch["label"])
                opt_g.zero_grad()
                self.manual_backward(loss_g)
                opt_g.step()
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


# ---------------------------------------------------------------- metrics

def _separation(ref: np.ndarray, gen: np.ndarray, n_bins: int) -> float:
    """1/2 sum (p - q)^2 / (p + q) over quantile bins of `ref` (with under/overflow)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    q = np.bincount(np.searchsorted(edges, gen, side="right"), minlength=len(edges) + 1) / len(gen)
    s = p + q
    return float(0.5 * np.sum(np.where(s > 0, (p - q) ** 2 / np.where(s > 0, s, 1), 0.0)))


def compare_features(sim: dict, gen: dict, n_bins: int = 20) -> dict:
    """Per-feature separation (chi2) and standardised 1-D Wasserstein distance; their means."""
    from scipy.stats import wasserstein_distance

    sep, w1 = {}, {}
    for name, ref in sim.items():
        sep[name] = _separation(ref, gen[name], n_bins)
        scale = ref.std() if ref.std() > 0 else 1.0
        w1[name] = wasserstein_distance(ref / scale, gen[name] / scale)
    return dict(feature_chi2=float(np.mean(list(sep.values()))), feature_w1=float(np.mean(list(w1.values()))),
                per_feature_chi2=sep)


def classifier_auc(sim: dict, gen: dict, energy: np.ndarray, seed: int = 0) -> float:
    """AUC of a gradient-boosted classifier telling generated from simulated showers (features + log E),
    trained on half of each set and scored on the other half."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    x = np.concatenate([np.column_stack([*sim.values(), np.log(energy)]),
                        np.column_stack([*gen.values(), np.log(energy)])])
    y = np.r_[np.zeros(len(energy)), np.ones(len(energy))]
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[: len(y) // 2], perm[len(y) // 2 :]
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(x[tr], y[tr])
    return float(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))


def metrics(model: CaloGAN, data: dict, seed: int = 0) -> dict:
    """Feature chi2 / W1 / classifier AUC of `model` against the simulated showers in `data`, and the
    feature chi2 of an untrained generator of the same config (the threshold's reference)."""
    cfg = data["cfg"]
    energy = data["energy"]
    sim = shower_features(data["voxels"], energy, cfg.shower)
    model.eval()
    fake = model.generate(energy, generator=torch.Generator().manual_seed(seed)).cpu().numpy()
    gen = shower_features(fake, energy, cfg.shower)
    out = compare_features(sim, gen, cfg.feature_bins)
    per_feature = out.pop("per_feature_chi2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        untrained = CaloGAN(cfg)
    ref = shower_features(untrained.generate(energy, generator=torch.Generator().manual_seed(seed)).numpy(),
                          energy, cfg.shower)
    out["untrained_feature_chi2"] = compare_features(sim, ref, cfg.feature_bins)["feature_chi2"]
    out["classifier_auc"] = classifier_auc(sim, gen, energy, seed)
    out["energy_response_ratio"] = float(gen["energy_ratio"].mean() / sim["energy_ratio"].mean())
    out["worst_feature_chi2"] = float(max(per_feature.values()))
    return out


def threshold(m: dict) -> bool:
    """Tiny-preset bar: feature chi2 at most half that of an untrained generator (see module docstring)."""
    return m["feature_chi2"] <= 0.5 * m["untrained_feature_chi2"]


TRAIN_DEFAULTS = {
    "tiny": {"events": 4096, "test_events": 4096, "epochs": 30, "batch_size": 128, "lr": 1e-3},
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
    feature chi2 of the briefly trained model. Raises if the device is missing or a loss is not finite."""
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
        out[f"{particle}_feature_chi2"] = metrics(model.float().cpu(), data)["feature_chi2"]
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
    extra={"train_calo_gan": train_calo_gan},
)
