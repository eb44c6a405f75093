"""Dark-matter and gas boxes for the N-body -> hydrodynamics U-Net testbed (after Harrington et al. 2021,
arXiv:2106.12662, the model of NERSC's SC21/22 "Deep Learning at Scale" tutorials).

Physics (see `shared/notes/physics.md` §5):

* Linear density: a Gaussian random field ``delta(k) = FFT(white noise) sqrt(P(k) / dV)`` with
  ``P(k) = A k^n_s T^2(k)``, the BBKS transfer function T(q), q = k / (Omega_m h), normalised to sigma_8
  and scaled by the linear growth factor D(z).
* "N-body" dark matter: Zel'dovich displacement ``psi(k) = i k delta(k) / k^2`` moves one particle per cell,
  ``x = q + psi``, velocity ``v = a H f psi``; cloud-in-cell deposit gives the DM density and the
  mass-weighted DM velocity (the 4 input channels, as the paper's DM density + velocity).
* Gas: the DM density and velocity smoothed on the Jeans (filtering) scale,
  ``delta_b(k) = delta_dm(k) / (1 + k^2 / k_F^2)`` (with the lattice Laplacian, whose kernel is positive, so
  1 + delta_b > 0); temperature ``T = T0 (1 + delta_b)^(gamma - 1)``; Ly-alpha flux (fluctuating
  Gunn-Peterson) ``F = exp(-A (1 + delta_b)^beta)``, beta = 2 - 0.7 (gamma - 1), with A solved per box so
  that <F> = 0.68 (the z = 3 mean flux), as simulations are rescaled to the observed mean flux.
* Targets: 5 channels as the paper's hydro outputs: gas density, temperature, gas velocity (3). The flux
  (and the linear field) come along as truth; the flux is a pointwise function of delta_b.

Units: lengths in Mpc/h, k in h/Mpc, velocities in km/s, temperatures in K. Each sample is one periodic
box; its generator is seeded by (seed, global index), so ranks can make just their share.

`power_spectrum(field, box)` is the spherically averaged P(k) estimator used by tests and metrics;
`cross_power_spectrum(a, b, box)` the cross spectrum behind the cross-correlation r(k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hepml_kit.data._seeding import check_seed, rank_range, stream

__all__ = [
    "GENERATOR_VERSION",
    "INPUT_CHANNELS",
    "TARGET_CHANNELS",
    "CosmologyConfig",
    "bbks_power",
    "cic_deposit",
    "cross_power_spectrum",
    "gaussian_random_field",
    "generate_cosmology",
    "power_spectrum",
    "wavenumbers",
]

GENERATOR_VERSION = "cosmology-1.0"
INPUT_CHANNELS = ("dm_density", "dm_velocity_x", "dm_velocity_y", "dm_velocity_z")
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz
TARGET_CHANNELS = ("gas_density", "temperature", "gas_velocity_x", "gas_velocity_y", "gas_velocity_z")


@dataclass(frozen=True)
class CosmologyConfig:
    """Box, cosmology and intergalactic-medium settings (typical values at z = 3)."""

    grid: int = 32  # cells per side
    box_size: float = 5.0  # Mpc/h per side
    redshift: float = 3.0
    omega_m: float = 0.31
    h: float = 0.68
    n_s: float = 0.965
    sigma8: float = 0.81
    filtering_k: float = 10.0  # k_F, h/Mpc: the gas (Jeans) filtering scale
    t0_kelvin: float = 1.0e4
    gamma: float = 1.5  # temperature-density slope is gamma - 1
    mean_flux: float = 0.68

    def __post_init__(self):
        if not (isinstance(self.grid, (int, np.integer)) and self.grid >= 4 and self.grid % 2 == 0):
            raise ValueError(f"grid must be an even integer >= 4, got {self.grid!r}")
        if self.box_size <= 0 or self.filtering_k <= 0 or self.t0_kelvin <= 0:
            raise ValueError("box_size, filtering_k and t0_kelvin must be positive")
        if not 1.0 <= self.gamma <= 2.0:
            raise ValueError(f"gamma must be in [1, 2], got {self.gamma}")
        if not 0.0 < self.mean_flux < 1.0:
            raise ValueError(f"mean_flux must be in (0, 1), got {self.mean_flux}")

    @property
    def cell_size(self) -> float:
        return self.box_size / self.grid

    @property
    def beta(self) -> float:
        """Flux-density exponent of the fluctuating Gunn-Peterson approximation."""
        return 2.0 - 0.7 * (self.gamma - 1.0)

    def with_(self, **changes) -> CosmologyConfig:
        return replace(self, **changes)


def _growth(cfg: CosmologyConfig) -> tuple[float, float, float]:
    """Linear growth D(z) (normalised to 1 today), growth rate f and H(z) / (100 h km/s/Mpc) for flat LCDM
    (Carroll, Press & Turner 1992 approximation)."""

    def g(z):
        a3 = (1 + z) ** 3
        e2 = cfg.omega_m * a3 + 1 - cfg.omega_m
        om, ol = cfg.omega_m * a3 / e2, (1 - cfg.omega_m) / e2
        return 2.5 * om / (om ** (4 / 7) - ol + (1 + om / 2) * (1 + ol / 70)), om, math.sqrt(e2)

    gz, om_z, e_z = g(cfg.redshift)
    g0, _, _ = g(0.0)
    return gz / g0 / (1 + cfg.redshift), om_z**0.55, e_z


def bbks_power(k, cfg: CosmologyConfig, normalise: bool = True):
    """Linear P(k) in (Mpc/h)^3 at `cfg.redshift`: A k^n_s T_BBKS^2(k), normalised to sigma_8 today."""
    k = np.asarray(k, dtype=np.float64)
    q = np.where(k > 0, k, 1.0) / (cfg.omega_m * cfg.h)
    poly = 1 + 3.89 * q + (16.1 * q) ** 2 + (5.46 * q) ** 3 + (6.71 * q) ** 4
    t = np.log(1 + 2.34 * q) / (2.34 * q) * poly**-0.25
    p = np.where(k > 0, np.where(k > 0, k, 1.0) ** cfg.n_s * t**2, 0.0)
    if not normalise:
        return p
    return p * _amplitude(cfg) * _growth(cfg)[0] ** 2


def _amplitude(cfg: CosmologyConfig) -> float:
    """A such that sigma(R = 8 Mpc/h) = sigma_8 today (top-hat window)."""
    k = np.logspace(-4, 2, 4000)
    x = 8.0 * k
    w = 3 * (np.sin(x) - x * np.cos(x)) / x**3
    integrand = bbks_power(k, cfg, normalise=False) * w**2 * k**3 / (2 * math.pi**2)
    return cfg.sigma8**2 / _trapezoid(integrand, np.log(k))


def wavenumbers(grid: int, box: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kx, ky, kz (h/Mpc) broadcastable to the (grid, grid, grid // 2 + 1) rfftn layout."""
    k1 = 2 * math.pi * np.fft.fftfreq(grid, d=box / grid)
    kz = 2 * math.pi * np.fft.rfftfreq(grid, d=box / grid)
    return k1[:, None, None], k1[None, :, None], kz[None, None, :]


def gaussian_random_field(rng: np.random.Generator, grid: int, box: float,
                          power) -> tuple[np.ndarray, np.ndarray]:
    """A periodic Gaussian field with spectrum `power(k)`: (delta (g, g, g), delta_k in the rfftn layout)."""
    noise = rng.standard_normal((grid, grid, grid))
    kx, ky, kz = wavenumbers(grid, box)
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    cell_volume = (box / grid) ** 3
    delta_k = np.fft.rfftn(noise) * np.sqrt(power(k) / cell_volume)
    delta_k[0, 0, 0] = 0.0
    return np.fft.irfftn(delta_k, s=(grid,) * 3), delta_k


def cic_deposit(pos: np.ndarray, grid: int, box: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Cloud-in-cell assignment of particles at `pos` (n, 3) onto a periodic grid; returns the summed
    weights per cell (grid, grid, grid) (the particle count per cell when `weights` is None)."""
    x = pos / (box / grid) - 0.5  # cell centres at integer + 0.5
    i0 = np.floor(x).astype(np.int64)
    f = x - i0
    w = np.ones(len(pos)) if weights is None else weights
    out = np.zeros(grid**3)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wx = f[:, 0] if dx else 1 - f[:, 0]
                wy = f[:, 1] if dy else 1 - f[:, 1]
                wz = f[:, 2] if dz else 1 - f[:, 2]
                ix, iy, iz = (i0[:, 0] + dx) % grid, (i0[:, 1] + dy) % grid, (i0[:, 2] + dz) % grid
                idx = (ix * grid + iy) * grid + iz
                out += np.bincount(idx, weights=w * wx * wy * wz, minlength=grid**3)
    return out.reshape(grid, grid, grid)


def _smooth(field: np.ndarray, cfg: CosmologyConfig) -> np.ndarray:
    """Filter by 1 / (1 + k~^2 / k_F^2) with the lattice Laplacian k~^2 (positive real-space kernel)."""
    kx, ky, kz = wavenumbers(cfg.grid, cfg.box_size)
    d = cfg.cell_size
    k2 = sum((2 / d * np.sin(ki * d / 2)) ** 2 for ki in (kx, ky, kz))
    return np.fft.irfftn(np.fft.rfftn(field) / (1 + k2 / cfg.filtering_k**2), s=field.shape)


def _flux_amplitude(rho_b: np.ndarray, beta: float, mean_flux: float) -> float:
    """A with <exp(-A rho^beta)> = mean_flux (bisection in log A; <F> falls monotonically with A)."""
    tau0 = rho_b.ravel() ** beta
    lo, hi = -12.0, 8.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.exp(-math.exp(mid) * tau0).mean() > mean_flux:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def _box(rng: np.random.Generator, cfg: CosmologyConfig) -> dict:
    g, box = cfg.grid, cfg.box_size
    growth, f_rate, e_z = _growth(cfg)
    delta_lin, delta_k = gaussian_random_field(rng, g, box, lambda k: bbks_power(k, cfg))
    kx, ky, kz = wavenumbers(g, box)
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    psi = np.stack([np.fft.irfftn(1j * ki * delta_k / k2, s=(g,) * 3) for ki in (kx, ky, kz)], -1)  # g,g,g,3
    q = (np.stack(np.meshgrid(*(np.arange(g),) * 3, indexing="ij"), axis=-1) + 0.5) * cfg.cell_size
    pos = (q + psi).reshape(-1, 3) % box
    vel = (100.0 * e_z / (1 + cfg.redshift) * f_rate) * psi.reshape(-1, 3)  # km/s: v = a H f psi
    mass = cic_deposit(pos, g, box)  # particles per cell; mean 1
    momentum = [cic_deposit(pos, g, box, vel[:, i]) for i in range(3)]
    v_dm = np.stack([m / np.maximum(mass, 1e-3) for m in momentum])  # mass-weighted velocity, (3, g, g, g)
    rho_b = np.clip(_smooth(mass, cfg), 1e-6, None)  # 1 + delta_b
    v_b = np.stack([_smooth(v, cfg) for v in v_dm])
    temperature = cfg.t0_kelvin * rho_b ** (cfg.gamma - 1)
    amp = _flux_amplitude(rho_b, cfg.beta, cfg.mean_flux)
    flux = np.exp(-amp * rho_b**cfg.beta)
    return dict(
        dm_density=mass,
        dm_velocity=v_dm,
        gas_density=rho_b,
        temperature=temperature,
        gas_velocity=v_b,
        flux=flux,
        flux_amplitude=np.float64(amp),
        linear_density=delta_lin,
    )


def generate_cosmology(n: int, seed: int, cfg: CosmologyConfig | None = None, rank: int = 0,
                       world_size: int = 1) -> dict:
    """`rank`'s share of `n` boxes, deterministic given `seed` (box i's generator is seeded by (seed, i)).

    Returns numpy arrays, one row per box of side g = cfg.grid:
      ``inputs`` (n, 4, g, g, g) float32: DM density rho/rho_mean, DM velocity x/y/z (km/s);
      ``targets`` (n, 5, g, g, g) float32: gas density rho_b/rho_mean, temperature (K), gas velocity x/y/z;
      truth: ``flux`` (n, g, g, g) Ly-alpha transmitted flux, ``flux_amplitude`` (n,) the tuned A,
      ``linear_density`` (n, g, g, g) the Gaussian field; ``index`` (n,) global box index.
    Channel names: `INPUT_CHANNELS`, `TARGET_CHANNELS`. Physical units: models scale them (see cosmo_unet).
    """
    cfg = cfg or CosmologyConfig()
    seed = check_seed(seed)
    lo, hi = rank_range(int(n), rank, world_size)
    g = cfg.grid
    out = dict(
        inputs=np.empty((hi - lo, 4, g, g, g), np.float32),
        targets=np.empty((hi - lo, 5, g, g, g), np.float32),
        flux=np.empty((hi - lo, g, g, g), np.float32),
        flux_amplitude=np.empty(hi - lo),
        linear_density=np.empty((hi - lo, g, g, g), np.float32),
        index=np.arange(lo, hi, dtype=np.int64),
    )
    for row, i in enumerate(range(lo, hi)):
        b = _box(stream(seed, i, 0xC05), cfg)
        out["inputs"][row, 0] = b["dm_density"]
        out["inputs"][row, 1:] = b["dm_velocity"]
        out["targets"][row, 0] = b["gas_density"]
        out["targets"][row, 1] = b["temperature"]
        out["targets"][row, 2:] = b["gas_velocity"]
        out["flux"][row] = b["flux"]
        out["flux_amplitude"][row] = b["flux_amplitude"]
        out["linear_density"][row] = b["linear_density"]
    return out


def power_spectrum(field, box: float, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherically averaged power spectrum of a periodic (g, g, g) field (overdensity or any field).

    Returns (k, P(k), n_modes): bin-mean |k| (h/Mpc), P in (Mpc/h)^3, and the number of Fourier modes per
    bin (counting the Hermitian half twice). Bins are shells of width k_f = 2 pi / box from k_f up to
    the Nyquist frequency; P = V |FFT(field)|^2 / N^6 (numpy's unnormalised FFT)."""
    return cross_power_spectrum(field, field, box, n_bins)


def cross_power_spectrum(a, b, box: float,
                         n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherically averaged cross spectrum Re <a(k) b*(k)> of two periodic (g, g, g) fields, binned as
    `power_spectrum` (which is the cross spectrum of a field with itself). The cross-correlation coefficient
    r(k) = P_ab / sqrt(P_aa P_bb) measures how well the phases agree (1: identical up to amplitude)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 3 or len(set(a.shape)) != 1 or a.shape != b.shape:
        raise ValueError(f"power_spectrum needs cubic 3-D fields of one shape, got {a.shape} and {b.shape}")
    g = a.shape[0]
    fa = np.fft.rfftn(a)
    fb = fa if b is a else np.fft.rfftn(b)
    power = (fa * np.conj(fb)).real * box**3 / g**6
    kx, ky, kz = wavenumbers(g, box)
    k = np.sqrt(kx**2 + ky**2 + kz**2)
    weight = np.full(k.shape, 2.0)  # modes kz > 0 stand for their conjugates too
    weight[..., 0] = 1.0
    if g % 2 == 0:
        weight[..., -1] = 1.0
    kf = 2 * math.pi / box
    n_bins = n_bins or g // 2
    shell = np.floor(k / kf + 0.5).astype(np.int64)  # shell j holds (j - 1/2, j + 1/2] k_f
    sel = (shell >= 1) & (shell <= n_bins)
    s = shell[sel] - 1
    n_modes = np.bincount(s, weights=weight[sel], minlength=n_bins)
    p = np.bincount(s, weights=(weight * power)[sel], minlength=n_bins) / np.maximum(n_modes, 1)
    kmean = np.bincount(s, weights=(weight * k)[sel], minlength=n_bins) / np.maximum(n_modes, 1)
    return kmean, p, n_modes
