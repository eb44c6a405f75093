"""Calorimeter showers for the FastCaloGAN testbed: EM (photon, electron) and pion showers, voxelised like
CaloChallenge dataset 1 (the ATLAS FastCaloGAN training data, |eta| 0.20-0.25).

Physics (see `shared/notes/physics.md` §3; Longo-Sestili / Grindhammer-Peters parametrisations):

* Longitudinal EM profile ``dE/dt = E b (bt)^(a-1) e^(-bt) / Gamma(a)``, t in radiation lengths X0, with
  ``t_max = (a-1)/b = ln(E/Ec) + C``, C = -0.5 (electron), +0.5 (photon): photons start later. Per-shower
  fluctuations of ln t_max (width falling with ln(E/Ec)) and of b.
* Radial profile ``f(r) = p 2r Rc^2/(r^2+Rc^2)^2 + (1-p) 2r Rt^2/(r^2+Rt^2)^2`` with core Rc and tail Rt in
  Moliere radii, both growing with depth tau = t / t_max (Rc = 0.2 R_M, Rt = R_M at the maximum).
* Transverse position: each shower's axis sits at a Gaussian offset (``axis_offset_mm`` rms per
  coordinate) from the voxel origin; the angular bins get the displaced profile g(|x - d|) to first order
  in d (negative bins set to 0 and each ring scaled back to its share, so no layer gains energy), so the
  energy-weighted centroid of every layer follows the axis (the first moment of a radially
  symmetric profile about a displaced axis is the displacement; Grindhammer & Peters, arXiv:hep-ex/0001020,
  parametrise the profile about the shower axis) and the layers' centroids are correlated.
* Upstream dead material (inner detector, solenoid, cryostat: ``upstream_x0`` X0 at eta = 0, times
  cosh eta) in front of the presampler: EM showers start there and what they deposit there is lost, a
  deficit that grows as E falls (the shower maximum moves up) and is larger for electrons than for
  photons (a photon first travels 9/7 X0 on average before converting; PDG, "Passage of particles through
  matter", section 34.4.5), giving the low-side tail of E_vis / E.
* Sampling fluctuations as Poisson energy spots: each voxel holds N ~ Poisson(E_voxel / e_spot) spots with
  e_spot = a^2 x 1 GeV, which gives sigma/E = a/sqrt(E) (a = 10%); a per-shower constant term (0.7%).
* Pions: a MIP track up to the first interaction (depth ~ Exp(1) in lambda_int; a pion that has not
  interacted when its ionisation loss reaches E stops there), then an EM core with
  fraction f_em = 1 - (E / 0.7 GeV)^(-0.18) (Beta-fluctuated) and a hadronic part with a Gamma profile in
  lambda_int (t_max = 0.2 ln E[GeV] + 0.7), broad radial profile, response h/e = 0.7 and 50%/sqrt(E) spots.
* Every layer reports *visible* energy: deposited energy times that layer's sampling fraction (LAr 0.2,
  Tile 0.035, typ.). Depths scale with cosh(eta) (projective barrel); `eta_bin` i means |eta| in
  [0.05 i, 0.05 (i+1)), as the 100 FastCaloGAN |eta| slices.

Voxels: photons/electrons use layers 0/1/2/3/12 with 8, 16x10, 19x10, 5, 5 (radial x angular) bins = 368;
pions add Tile layers 13/14: 8, 10x10, 10x10, 5, 15x10, 16x10, 10 = 533. Energies are in MeV; the incident
energies are the 15 powers of two 256 MeV ... 4 TeV of dataset 1.

Randomness is drawn per block of ``BLOCK`` consecutive global indices from a generator seeded by
(seed, block), so any rank can make just its shard and the union of the shards is the serial data set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.special import gammainc

from hepml_kit.data._seeding import check_seed, generate_blocks, rank_range, stream

__all__ = [
    "GENERATOR_VERSION",
    "PARTICLES",
    "CALOCHALLENGE_ENERGIES_MEV",
    "CaloLayer",
    "ShowerConfig",
    "calo_layers",
    "generate_showers",
    "shower_features",
    "voxel_coordinates",
    "rank_range",
]

GENERATOR_VERSION = "showers-1.2"  # 1.1: shower axis offsets (angular profile), upstream dead material;
# 1.2: E_expected <= E (rings keep their share where the displaced profile is clipped; MIPs stop at E)
PARTICLES = ("photon", "electron", "pion")
CALOCHALLENGE_ENERGIES_MEV = tuple(float(2**k) for k in range(8, 23))  # 256 MeV ... 4.19 TeV
BLOCK = 128  # samples per random-number block (the unit of rank-independent determinism)


@dataclass(frozen=True)
class CaloLayer:
    """One sampling layer: radial bin edges (mm), angular bins, thickness at eta = 0 in X0 and in
    lambda_int, and the sampling fraction (visible / deposited energy)."""

    layer_id: int
    radial_edges_mm: tuple
    n_alpha: int
    thickness_x0: float
    thickness_lambda: float
    sampling_fraction: float

    @property
    def n_voxels(self) -> int:
        return (len(self.radial_edges_mm) - 1) * self.n_alpha


_LAR, _TILE = 0.2, 0.035  # sampling fractions (typ.)
_EM_LAYERS = (  # ATLAS barrel: presampler (with ~2 X0 upstream), EMB1, EMB2, EMB3, TileBar0
    CaloLayer(0, (0, 5, 10, 20, 30, 50, 80, 130, 250), 1, 2.0, 0.10, _LAR),
    CaloLayer(1, (0, 1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 80, 150), 10, 4.3, 0.20, _LAR),
    CaloLayer(2, (0, 2, 4, 6, 8, 10, 13, 16, 20, 25, 30, 35, 40, 50, 60, 80, 100, 150, 200, 300), 10,
              16.0, 0.75, _LAR),
    CaloLayer(3, (0, 20, 40, 80, 150, 300), 1, 2.0, 0.10, _LAR),
    CaloLayer(12, (0, 50, 100, 200, 400, 800), 1, 13.5, 1.5, _TILE),
)
_PION_LAYERS = (
    CaloLayer(0, (0, 5, 10, 30, 50, 100, 200, 400, 600), 1, 2.0, 0.10, _LAR),
    CaloLayer(1, (0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10, 4.3, 0.20, _LAR),
    CaloLayer(2, (0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 450), 10, 16.0, 0.75, _LAR),
    CaloLayer(3, (0, 50, 100, 200, 400, 600), 1, 2.0, 0.10, _LAR),
    CaloLayer(12, (0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000), 10, 13.5, 1.5,
              _TILE),
    CaloLayer(13, (0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000, 2000), 10,
              36.9, 4.1, _TILE),
    CaloLayer(14, (0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1, 16.2, 1.8, _TILE),
)


def calo_layers(particle: str) -> tuple:
    """The layer geometry for `particle`: 368 voxels for photons/electrons, 533 for pions."""
    _check_particle(particle)
    return _PION_LAYERS if particle == "pion" else _EM_LAYERS


@dataclass(frozen=True)
class ShowerConfig:
    """Shower generator settings. Energies in MeV, lengths in mm, depths in X0 (EM) or lambda_int (hadronic).
    Values marked (typ.) in the physics notes are defaults, not constants."""

    particle: str = "photon"
    eta_bin: int = 4  # |eta| in [0.20, 0.25): CaloChallenge dataset 1
    energies_mev: tuple = CALOCHALLENGE_ENERGIES_MEV
    # longitudinal EM profile
    critical_energy_mev: float = 10.0
    c_electron: float = -0.5
    c_photon: float = 0.5
    b_longitudinal: float = 0.5
    sigma_ln_b: float = 0.10
    # radial EM profile
    moliere_radius_mm: float = 40.0
    core_fraction: float = 0.85  # p at the shower maximum
    core_radius_rm: tuple = (0.1, 0.1)  # Rc / R_M = c0 + c1 * tau
    tail_radius_rm: tuple = (0.6, 0.4)  # Rt / R_M = t0 + t1 * tau
    sigma_ln_radius: float = 0.08  # per-shower lateral-size fluctuation
    axis_offset_mm: float = 3.0  # rms per coordinate of the shower axis about the voxel origin (typ.)
    # upstream dead material (inner detector, solenoid, cryostat) in front of the presampler, X0 at eta = 0
    upstream_x0: float = 1.5  # (typ.) energy deposited there is lost
    # sampling fluctuations
    stochastic_term: float = 0.10  # a in sigma/E = a / sqrt(E[GeV])
    constant_term: float = 0.007
    # pions
    em_fraction_e0_gev: float = 0.7
    em_fraction_exponent: float = 0.18
    em_fraction_concentration: float = 8.0  # Beta(k m, k (1 - m)): larger k, smaller f_em spread
    hadronic_b: float = 0.8  # per lambda_int
    hadronic_h_over_e: float = 0.7
    hadronic_stochastic_term: float = 0.5
    hadronic_core_mm: float = 40.0
    hadronic_tail_mm: float = 200.0
    hadronic_core_fraction: float = 0.6
    mip_mev_per_lambda: float = 200.0
    layers: tuple = field(init=False, compare=False, repr=False)  # the geometry of `particle`

    def __post_init__(self):
        _check_particle(self.particle)
        if not (isinstance(self.eta_bin, (int, np.integer)) and 0 <= self.eta_bin < 100):
            raise ValueError(f"eta_bin must be an integer in [0, 100) (|eta| slices of 0.05), "
                             f"got {self.eta_bin!r}")
        if len(self.energies_mev) == 0 or min(self.energies_mev) <= 0:
            raise ValueError(f"energies_mev must be positive, got {self.energies_mev!r}")
        object.__setattr__(self, "layers", calo_layers(self.particle))

    @property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @property
    def spot_energy_mev(self) -> float:
        """Deposited energy of one EM sampling-fluctuation spot, a^2 x 1 GeV (the e_spot of `_block`): a
        voxel holds a whole number of spots, so it is empty or holds at least this much."""
        return self.stochastic_term**2 * 1000.0

    @property
    def eta_range(self) -> tuple[float, float]:
        return 0.05 * self.eta_bin, 0.05 * (self.eta_bin + 1)

    def with_(self, **changes) -> ShowerConfig:
        return replace(self, **changes)


def _check_particle(particle):
    if particle not in PARTICLES:
        raise ValueError(f"unknown particle {particle!r}; choose one of {PARTICLES}")


def _radial_cdf(r, p, rc, rt):
    """Cumulative two-component radial profile F(r) (fraction within radius r)."""
    r2 = r * r
    return p * r2 / (r2 + rc * rc) + (1 - p) * r2 / (r2 + rt * rt)


def _ring_moments(edges, r0):
    """Per radial bin of a profile with areal density g(r) = R^2 / (pi (r^2 + R^2)^2) (the radial profile
    per unit area): G = int g r dr and H = int g'(r) r dr over the bin, each (B, n_r) for R = r0 (B,)."""
    r, big_r = edges[None, :], r0[:, None]
    cdf = r * r / (r * r + big_r**2)  # 2 pi int g r dr
    g_r = big_r**2 / (math.pi * (r * r + big_r**2) ** 2) * r  # g(r) r
    int_g = (r / (r * r + big_r**2) + np.arctan(r / big_r) / big_r) / (2 * math.pi)  # int_0^r g dr
    return np.diff(cdf, axis=1) / (2 * math.pi), np.diff(g_r - int_g, axis=1)


def _spread(frac_layer, layer, p, rc, rt, axis):
    """Split each layer's energy fraction (B,) over its (radial x angular) voxels -> (B, n_voxels) for a
    shower whose axis sits at `axis` (B, 2) mm from the voxel origin.

    A displaced profile g(|x - d|) = g(r) - d cos(alpha - phi_d) g'(r) + O(d^2): each ring keeps its
    share and the angular bins get the first harmonic, so the energy-weighted centroid is the axis (the
    first moment of the displaced profile is d). Where d |g'| > g (inner rings, d beyond the core radius)
    the first-order term would make bins negative: they are set to 0 and the ring is scaled back to its
    share, so every layer holds exactly its energy fraction times the radial containment (energy
    conservation: the expected deposit never exceeds E) and the centroid still follows the axis."""
    edges = np.asarray(layer.radial_edges_mm, dtype=np.float64)
    g_c, h_c = _ring_moments(edges, rc)
    g_t, h_t = _ring_moments(edges, rt)
    g = p[:, None] * g_c + (1 - p[:, None]) * g_t  # (B, n_r), sums to (contained fraction) / 2 pi
    h = p[:, None] * h_c + (1 - p[:, None]) * h_t
    alpha = np.arange(layer.n_alpha + 1) * 2 * math.pi / layer.n_alpha  # (n_alpha + 1,)
    d = np.hypot(axis[:, 0], axis[:, 1])
    phi = np.arctan2(axis[:, 1], axis[:, 0])
    c = np.diff(np.sin(alpha[None, :] - phi[:, None]), axis=1) if layer.n_alpha > 1 else np.zeros((len(d), 1))
    per = g[:, :, None] * np.diff(alpha)[None, None, :] - d[:, None, None] * h[:, :, None] * c[:, None, :]
    share = g[:, :, None] * (2 * math.pi)  # (B, n_r, 1): each ring's share, what the harmonic must not change
    per = np.clip(per, 0.0, None)
    per *= share / np.maximum(per.sum(2, keepdims=True), 1e-300)  # clipping added energy: scale the ring back
    per = per * frac_layer[:, None, None]  # (B, n_r, n_alpha)
    return per.reshape(len(d), -1)  # alpha fastest


def _gamma_layer_fractions(a, b, start, bounds):
    """Fraction of a Gamma(a, b) profile starting at depth `start` (B,) inside each layer, and the
    energy-weighted mean depth (relative to start) there. bounds: (B, L + 1) layer boundaries."""
    t = np.clip(bounds - start[:, None], 0.0, None) * b[:, None]  # (B, L + 1) in units of 1/b
    cdf = gammainc(a[:, None], t)
    cdf1 = gammainc(a[:, None] + 1, t)
    frac = np.diff(cdf, axis=1)  # (B, L)
    mean_t = (a / b)[:, None] * np.diff(cdf1, axis=1) / np.maximum(frac, 1e-12)
    return frac, mean_t


def _em_expectation(rng, energy, start_x0, bounds_x0, cfg, c_shift, axis):
    """Expected fraction of `energy` in every voxel for EM showers starting at `start_x0` (negative: in
    the upstream material, whose share is lost) with axis at `axis` (B, 2) mm, (B, V), the layer fractions,
    the per-shower depth of the maximum (X0 from the shower start) and the share lost upstream."""
    y = np.maximum(energy / cfg.critical_energy_mev, 1.5)
    t_max = np.maximum(np.log(y) + c_shift, 0.3)
    sigma_ln_t = np.clip(1.0 / (-1.4 + 1.26 * np.log(y)), 0.05, 0.5)  # Grindhammer-Peters
    t_max = t_max * np.exp(sigma_ln_t * rng.standard_normal(len(energy)))
    b = cfg.b_longitudinal * np.exp(cfg.sigma_ln_b * rng.standard_normal(len(energy)))
    a = 1.0 + b * t_max
    frac, mean_t = _gamma_layer_fractions(a, b, start_x0, bounds_x0)
    size = np.exp(cfg.sigma_ln_radius * rng.standard_normal(len(energy)))
    cols = []
    for j, layer in enumerate(cfg.layers):
        tau = mean_t[:, j] / t_max
        rc = cfg.moliere_radius_mm * size * (cfg.core_radius_rm[0] + cfg.core_radius_rm[1] * tau)
        rt = cfg.moliere_radius_mm * size * (cfg.tail_radius_rm[0] + cfg.tail_radius_rm[1] * tau)
        p = np.clip(cfg.core_fraction + 0.05 * (1 - tau), 0.5, 0.95)
        cols.append(_spread(frac[:, j], layer, p, rc, rt, axis))
    lost = gammainc(a, np.clip(bounds_x0[:, 0] - start_x0, 0.0, None) * b)  # share left upstream
    return np.concatenate(cols, axis=1), frac, t_max, lost


def _block(rng, idx, cfg):
    """Generate the samples with global indices `idx` (one block) from `rng`."""
    n = len(idx)
    layers = cfg.layers
    energy = np.asarray(cfg.energies_mev, dtype=np.float64)[rng.integers(0, len(cfg.energies_mev), n)]
    eta = rng.uniform(*cfg.eta_range, n)
    path = np.cosh(eta)[:, None]  # projective barrel: depth grows as 1 / sin(theta)
    bounds_x0 = np.concatenate([[0.0], np.cumsum([ly.thickness_x0 for ly in layers])])[None, :] * path
    bounds_lam = np.concatenate([[0.0], np.cumsum([ly.thickness_lambda for ly in layers])])[None, :] * path
    sf = np.concatenate([np.full(ly.n_voxels, ly.sampling_fraction) for ly in layers])  # (V,)
    gain = np.clip(1.0 + cfg.constant_term * rng.standard_normal(n), 0.5, None)  # constant term
    e_spot = cfg.stochastic_term**2 * 1000.0  # MeV of deposited energy per spot: a / sqrt(E)
    axis = cfg.axis_offset_mm * rng.standard_normal((n, 2))  # shower axis in the voxel frame (mm)

    if cfg.particle != "pion":
        c = cfg.c_photon if cfg.particle == "photon" else cfg.c_electron
        upstream = cfg.upstream_x0 * path[:, 0]
        phi, layer_frac, t_max, lost = _em_expectation(rng, energy, -upstream, bounds_x0, cfg, c, axis)
        spots = rng.poisson(energy[:, None] * phi / e_spot)
        deposited = spots * e_spot
        truth = dict(t_max=t_max, em_fraction=np.ones(n), first_interaction=np.zeros(n),
                     response_true=phi.sum(1), upstream_loss=lost)
    else:
        # first inelastic interaction and the MIP track before it (central radial bin of each layer)
        t_int = rng.exponential(1.0, n) * path[:, 0]
        reach = np.minimum(bounds_lam[:, 1:], t_int[:, None])  # (B, L): how far the track gets in each layer
        path_in = np.clip(reach - bounds_lam[:, :-1], 0.0, None)
        mip = path_in * cfg.mip_mev_per_lambda * np.exp(0.1 * rng.standard_normal((n, len(layers))))
        mip = np.diff(np.minimum(np.cumsum(mip, 1), energy[:, None]), axis=1, prepend=0.0)  # ranges out at E
        e_avail = np.clip(energy - mip.sum(1), 0.0, None)
        e_scaled = np.maximum(e_avail, 1.0) / (1e3 * cfg.em_fraction_e0_gev)
        mean_fem = np.clip(1 - e_scaled**-cfg.em_fraction_exponent, 0.02, 0.95)
        k = cfg.em_fraction_concentration
        f_em = rng.beta(k * mean_fem, k * (1 - mean_fem))
        # EM core: starts where the pion interacts, converted to X0 inside that layer
        j = np.clip((t_int[:, None] >= bounds_lam[:, 1:]).sum(1), 0, len(layers) - 1)
        rows = np.arange(n)
        w = np.clip((t_int - bounds_lam[rows, j]) / (bounds_lam[rows, j + 1] - bounds_lam[rows, j]), 0, 1)
        start_x0 = bounds_x0[rows, j] + w * (bounds_x0[rows, j + 1] - bounds_x0[rows, j])
        e_em = f_em * e_avail
        phi_em, frac_em, _, _ = _em_expectation(rng, np.maximum(e_em, 1.0), start_x0, bounds_x0, cfg,
                                             cfg.c_electron, axis)
        # hadronic part: Gamma profile in lambda_int, broad radial profile
        e_had = (1 - f_em) * e_avail
        t_max_h = np.clip(0.2 * np.log(np.maximum(e_had, 1.0) / 1e3) + 0.7, 0.1, None)
        t_max_h = t_max_h * np.exp(0.2 * rng.standard_normal(n))
        b_h = cfg.hadronic_b * np.exp(0.1 * rng.standard_normal(n))
        frac_h, _ = _gamma_layer_fractions(1 + b_h * t_max_h, b_h, t_int, bounds_lam)
        size = np.exp(0.15 * rng.standard_normal(n))
        rc, rt = cfg.hadronic_core_mm * size, cfg.hadronic_tail_mm * size
        p_h = np.full(n, cfg.hadronic_core_fraction)
        phi_h = np.concatenate([_spread(frac_h[:, i], ly, p_h, rc, rt, axis)
                                for i, ly in enumerate(layers)], 1)
        e_spot_h = cfg.hadronic_stochastic_term**2 * 1000.0
        dep_em = rng.poisson(e_em[:, None] * phi_em / e_spot) * e_spot
        dep_h = rng.poisson(e_had[:, None] * phi_h / e_spot_h) * e_spot_h * cfg.hadronic_h_over_e
        deposited = dep_em + dep_h
        first_bin = np.cumsum([0] + [ly.n_voxels for ly in layers[:-1]])  # r-bin 0, alpha 0 of each layer
        for i, ly in enumerate(layers):  # the track crosses the centre: spread over the alpha bins of r-bin 0
            deposited[:, first_bin[i] : first_bin[i] + ly.n_alpha] += mip[:, i : i + 1] / ly.n_alpha
        layer_frac = (mip + e_em[:, None] * frac_em + e_had[:, None] * frac_h) / energy[:, None]
        response = (mip.sum(1) + e_em * phi_em.sum(1) + cfg.hadronic_h_over_e * e_had * phi_h.sum(1)) / energy
        truth = dict(t_max=t_int + t_max_h, em_fraction=f_em, first_interaction=t_int, response_true=response,
                     upstream_loss=np.zeros(n))  # ~0.1 lambda_int upstream: pions arrive as MIPs
    voxels = deposited * sf[None, :] * gain[:, None]
    out = dict(voxels=voxels.astype(np.float32), energy=energy, eta=eta,
               index=np.asarray(idx, dtype=np.int64),
               layer_fraction_true=layer_frac.astype(np.float32))
    out.update({k: v.astype(np.float64) for k, v in truth.items()})
    out["axis_mm"] = axis
    return out





def generate_showers(n: int, seed: int, cfg: ShowerConfig | None = None, rank: int = 0,
                     world_size: int = 1) -> dict:
    """`rank`'s share of `n` showers (all of them for world_size 1), deterministic given `seed`.

    Returns a dict of numpy arrays, one row per shower:
      ``voxels`` (n, V) float32 visible energy per voxel in MeV (V = 368 photons/electrons, 533 pions);
      ``energy`` (n,) incident energy, MeV; ``eta`` (n,); ``index`` (n,) global sample index;
      truth: ``t_max`` depth of the shower maximum from the shower start (X0 for EM, from the front of
      the upstream material; lambda_int from the calorimeter front for pions), ``axis_mm`` (n, 2) the shower
      axis in the voxel frame, ``upstream_loss`` share of E deposited in the upstream dead material,
      ``em_fraction``, ``first_interaction`` (lambda_int; 0 for EM), ``layer_fraction_true`` (n, L) expected
      deposited fraction of the incident energy per layer (before sampling fluctuations), ``response_true``
      (n,) expected sum over voxels of visible / sampling fraction, over E (lateral and rear leakage, and h/e
      for pions, taken into account).
    Layer geometry and feature helpers: `calo_layers`, `voxel_coordinates`, `shower_features`.
    """
    cfg = cfg or ShowerConfig()
    seed = check_seed(seed)

    def make_block(b):  # the whole block, so it does not depend on where ranks cut
        return _block(stream(seed, b, 0x5C0), np.arange(b * BLOCK, (b + 1) * BLOCK), cfg)

    return generate_blocks(make_block, n, rank, world_size, BLOCK)


def voxel_coordinates(cfg: ShowerConfig) -> dict:
    """Per-voxel layer index, radius (bin centre, mm) and x/y of the bin centre (0 in layers with one
    angular bin)."""
    layer_idx, r, x, y = [], [], [], []
    for i, ly in enumerate(cfg.layers):
        edges = np.asarray(ly.radial_edges_mm, dtype=np.float64)
        r_mid = np.repeat(0.5 * (edges[1:] + edges[:-1]), ly.n_alpha)
        alpha = np.tile((np.arange(ly.n_alpha) + 0.5) * 2 * math.pi / ly.n_alpha, len(edges) - 1)
        on = ly.n_alpha > 1
        layer_idx.append(np.full(ly.n_voxels, i))
        r.append(r_mid)
        x.append(r_mid * np.cos(alpha) if on else np.zeros_like(r_mid))
        y.append(r_mid * np.sin(alpha) if on else np.zeros_like(r_mid))
    return {k: np.concatenate(v) for k, v in dict(layer=layer_idx, r=r, x=x, y=y).items()}


def shower_features(voxels: np.ndarray, energy: np.ndarray, cfg: ShowerConfig) -> dict:
    """High-level shower features (the CaloChallenge / FastCaloGAN validation set), each an (n,) array:
    ``energy_ratio`` (total visible / incident), per layer L: ``e_layer{L}`` (MeV), ``centroid_x_layer{L}``,
    ``centroid_y_layer{L}`` (mm, layers with angular bins) and ``width_layer{L}`` (rms transverse size, mm).
    """
    voxels = np.asarray(voxels, dtype=np.float64)
    if voxels.ndim != 2 or voxels.shape[1] != cfg.n_voxels:
        raise ValueError(f"voxels must be (n, {cfg.n_voxels}) for {cfg.particle}, got {voxels.shape}")
    coords = voxel_coordinates(cfg)
    feats = {"energy_ratio": voxels.sum(1) / np.asarray(energy, dtype=np.float64)}
    start = 0
    for ly in cfg.layers:
        sl = slice(start, start + ly.n_voxels)
        start += ly.n_voxels
        e = voxels[:, sl]
        tot = e.sum(1)
        safe = np.where(tot > 0, tot, 1.0)
        cx = (e * coords["x"][sl]).sum(1) / safe
        cy = (e * coords["y"][sl]).sum(1) / safe
        r2 = (e * coords["r"][sl] ** 2).sum(1) / safe
        feats[f"e_layer{ly.layer_id}"] = tot
        if ly.n_alpha > 1:
            feats[f"centroid_x_layer{ly.layer_id}"] = cx
            feats[f"centroid_y_layer{ly.layer_id}"] = cy
        feats[f"width_layer{ly.layer_id}"] = np.sqrt(np.clip(r2 - cx**2 - cy**2, 0.0, None))
    return feats
