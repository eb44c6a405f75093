"""Liquid-xenon TPC pulse waveforms (S1 and S2) with injected anomalies, for the LZ-style VAE.

Physics (see ../shared/notes/physics.md §2; typical values exposed in `WaveformGenConfig`):

- One energy deposit makes both signals. An electron recoil (ER, energy log-uniform in keV) or, a
  fraction `nr_fraction` of the time, a nuclear recoil (NR, Lindhard-quenched) gives n_q ~ Poisson(L E / W)
  quanta (W = 13.7 eV); excitons / ions = alpha (~0.2 ER, ~1 NR); a per-event recombination fraction
  r ~ N(r_mean, sigma_r) of the ions recombines into photons, so n_gamma = n_ex + r n_i and
  n_e = (1 - r) n_i with n_gamma + n_e = n_q (Doke et al., Jpn. J. Appl. Phys. 41 (2002) 1538; NEST,
  Szydagis et al., JINST 6 (2011) P10002; Lindhard et al. 1963). Recombination fluctuations
  anti-correlate S1 and S2 at fixed energy, the combined energy W (S1/g1 + S2/g2) is sharper than either,
  and NR events sit below the ER band in log(S2/S1) (lower charge-to-light ratio).
- S1: detected photons ~ Poisson(g1 * N_gamma), g1 ~ 0.1; emission times from the singlet (tau ~ 3 ns)
  and triplet (tau ~ 24 ns) exponentials; each photon a Gaussian single-photoelectron (SPE) pulse
  whose area has a ~30% gain spread. Recorded in a short fine-binned window (`s1_waveform`).
- S2: of the n_e electrons a fraction `extraction_efficiency` reaches the gas and n = n_e exp(-t_d /
  tau_e) of them survive a drift time t_d (uniform up to ~1 ms; electron lifetime tau_e a few ms); they arrive
  spread by longitudinal diffusion, sigma_t = sqrt(sigma0^2 +
  2 D_L t_d) / v_d (D_L ~ 25 cm^2/s, v_d ~ 1.6 mm/us: ~1 us at mid-drift, so width ~ sqrt(t_d)); each
  electron emits a ~0.8 us box of ~50 photoelectrons in the gas. Counts are drawn per sample
  (Poisson electrons, Poisson photoelectrons, Gaussian gain spread), then baseline noise is added; a
  few random single electrons sit in every window. The S2 window (`waveform`) is what the VAE sees.
- Timing: the digitiser records frames of `n_samples` aligned to the S1 (time 0), one every
  `frame_step` of a frame; the S2 window is the frame whose central part [s2_window_lo, s2_window_lo +
  frame_step) holds the S2 centre. So the S2 sits at sample (t_d - window_start_us) / dt: its place in
  the window moves with the drift time (a saw-tooth of period frame_step), and drift time =
  window_start_us + position * dt, as an S1-S2 time difference gives it in a real TPC.
- Anomalies, a fraction `anomaly_rate` (down to 1%) of events, kinds drawn with `anomaly_weights`:
  1 double_s2 (two scatters closer than ~3 S2 widths: unresolved), 2 gas_s2 (narrow S2 from the gas
  phase: no diffusion, short luminescence), 3 electron_train (a delayed-electron tail after the S2),
  4 pileup (the S1 of another interaction landing in the S2 window).

Waveforms are in photoelectrons (phe) per sample. Events are made in fixed blocks of `BLOCK` global
indices, each from its own random stream seeded by (seed, block): an event depends only on (seed,
its global index), so rank shards concatenate to the serial set and prefixes agree.

Taught in curriculum/09_data_delivery; used by `hepml_kit.models.waveform_vae`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import convolve1d
from scipy.special import ndtr

from hepml_kit.data._seeding import check_seed, generate_blocks, rank_range, stream

__all__ = [
    "ANOMALY_KINDS",
    "BLOCK",
    "GENERATOR_VERSION",
    "RECOILS",
    "WaveformGenConfig",
    "generate_waveforms",
    "normalise_waveforms",
    "rank_range",
    "s2_sigma_us",
]

GENERATOR_VERSION = "waveforms-1.1"  # 1.1: S1 and S2 from one deposit; S2 place follows drift
BLOCK = 1024  # events per random stream; part of the generator version
ANOMALY_KINDS = ("none", "double_s2", "gas_s2", "electron_train", "pileup")
RECOILS = ("ER", "NR")  # recoil label 0, 1


@dataclass(frozen=True)
class WaveformGenConfig:
    """Typical LZ-like parameters (see module docstring)."""

    n_samples: int = 512  # S2 window
    dt_ns: float = 50.0  # S2 sampling (LZ digitises at 10 ns; coarser binning keeps tiny models fast)
    s2_window_lo: float = 0.15  # the S2 centre lies in [lo, lo + frame_step) of its window
    frame_step: float = 0.3  # digitiser frames start every frame_step * n_samples samples after the S1
    s1_samples: int = 128
    s1_dt_ns: float = 2.0
    s1_pretrigger_ns: float = 20.0
    drift_max_us: float = 1000.0
    drift_velocity_mm_us: float = 1.6
    diffusion_cm2_s: float = 25.0  # longitudinal, D_L
    sigma0_mm: float = 0.2
    electron_lifetime_us: float = 5000.0
    er_energy_kev: tuple[float, float] = (10.0, 100.0)  # ER deposit, log-uniform
    nr_energy_kev: tuple[float, float] = (30.0, 300.0)  # NR deposit (keVnr), log-uniform
    nr_fraction: float = 0.2  # share of nuclear recoils among normal events (neutron-calibration-like)
    w_ev: float = 13.7  # mean energy per quantum in liquid xenon
    exciton_ratio: tuple[float, float] = (0.2, 1.0)  # N_ex / N_i for ER, NR
    recombination: tuple[float, float] = (0.35, 0.3)  # mean recombined fraction r for ER, NR
    recombination_sigma: float = 0.06  # event-to-event spread of r (the S1-S2 anti-correlation)
    lindhard_k: float = 0.166
    extraction_efficiency: float = 0.8
    phe_per_electron: float = 50.0  # single-electron S2 size
    luminescence_us: float = 0.8  # box length of one electron's light
    s1_photons: tuple[float, float] = (100.0, 3000.0)  # N_gamma of a piled-up S1, log-uniform
    g1: float = 0.1
    singlet_fraction: float = 0.25
    singlet_tau_ns: float = 3.1
    triplet_tau_ns: float = 24.0
    spe_sigma_ns: float = 2.0  # SPE pulse width in the S1 window
    gain_spread: float = 0.3  # sigma of one photoelectron's area, relative
    noise_phe: float = 0.3  # baseline noise per sample (phe)
    single_electron_rate_per_us: float = 0.02  # random single electrons in every window
    anomaly_rate: float = 0.05
    anomaly_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # double, gas, train, pileup
    double_separation: tuple[float, float] = (1.0, 3.0)  # in units of the S2's rms width
    double_split: tuple[float, float] = (0.25, 0.75)  # fraction of electrons in the first S2
    gas_luminescence_us: float = 0.2
    train_fraction: tuple[float, float] = (0.02, 0.08)  # delayed electrons / S2 electrons
    train_tau_us: tuple[float, float] = (3.0, 10.0)

    def __post_init__(self):
        if self.n_samples < 16 or self.s1_samples < 16:
            raise ValueError("n_samples and s1_samples must be >= 16")
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be in [0, 1], got {self.anomaly_rate}")
        w = np.asarray(self.anomaly_weights, float)
        if w.shape != (4,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"anomaly_weights must be 4 non-negative numbers, got {self.anomaly_weights}")
        if self.dt_ns <= 0 or self.s1_dt_ns <= 0:
            raise ValueError("sampling intervals must be positive")
        frame_end = self.s2_window_lo + self.frame_step
        if not (0 < self.frame_step <= 1 and 0 <= self.s2_window_lo and frame_end <= 1):
            raise ValueError(f"need 0 < frame_step <= 1 and s2_window_lo + frame_step <= 1, got "
                             f"{self.frame_step}, {self.s2_window_lo}")
        if not 0.0 <= self.nr_fraction <= 1.0:
            raise ValueError(f"nr_fraction must be in [0, 1], got {self.nr_fraction}")


def s2_sigma_us(drift_us, cfg: WaveformGenConfig):
    """rms spread of S2 electron arrival times: sqrt(sigma0^2 + 2 D_L t_d) / v_d, in us."""
    d_l = cfg.diffusion_cm2_s * 100.0 * 1e-6  # cm^2/s -> mm^2/us
    return np.sqrt(cfg.sigma0_mm**2 + 2 * d_l * np.asarray(drift_us)) / cfg.drift_velocity_mm_us


def lindhard(energy_kev, k: float = 0.166):
    """Lindhard quenching L(E) of a xenon nuclear recoil: k g / (1 + k g), g = 3 e^0.15 + 0.7 e^0.6 + e,
    e = 11.5 E[keV] Z^(-7/3) (Lindhard et al. 1963; as in NEST)."""
    eps = 11.5 * np.asarray(energy_kev, float) * 54.0 ** (-7 / 3)
    g = 3 * eps**0.15 + 0.7 * eps**0.6 + eps
    return k * g / (1 + k * g)


def quanta(rng, energy_kev, nr, cfg: WaveformGenConfig):
    """(n_gamma, n_e) per event from one deposit: n_q ~ Poisson(L E / W), ions ~ Binomial(n_q, 1 / (1 +
    alpha)), a fraction r ~ N(r_mean, sigma_r) of them recombines; n_gamma + n_e = n_q."""
    quench = np.where(nr, lindhard(energy_kev, cfg.lindhard_k), 1.0)
    n_q = rng.poisson(quench * energy_kev * 1e3 / cfg.w_ev)
    alpha = np.where(nr, cfg.exciton_ratio[1], cfg.exciton_ratio[0])
    n_i = rng.binomial(n_q, 1 / (1 + alpha))
    r = np.clip(rng.normal(np.where(nr, cfg.recombination[1], cfg.recombination[0]),
                           cfg.recombination_sigma), 0, 1)
    n_e = rng.binomial(n_i, 1 - r)
    return n_q - n_e, n_e


def generate_waveforms(
    n: int, seed: int, cfg: WaveformGenConfig | None = None, rank: int = 0, world_size: int = 1
) -> dict:
    """This rank's share of `n` events (all when world_size == 1), as a dict of numpy arrays.

    Keys (N events): waveform (N, n_samples) float32 S2 window in phe/sample; s1_waveform (N, s1_samples)
    float32; anomaly (N,) int64 0/1; anomaly_kind (N,) int64 into `ANOMALY_KINDS`; drift_time_us (N,);
    energy_kev (N,) deposit; recoil (N,) 0 ER / 1 NR (`RECOILS`); n_photons, n_electrons (N,) quanta;
    s2_sigma_us (N,) true diffusion spread (0 for gas S2s); s2_electrons (N,) expected electrons after
    extraction and the lifetime loss; s1_phd (N,) detected S1 photons; window_start_us (N,) the S2
    window's start after the S1;
    pileup_phd, pileup_sample (N,): the piled-up S1's photons and time in samples (0 and -1 without);
    s2_center_sample (N,) float; dt_ns (N,) the sampling of `waveform`; event_index (N,).
    """
    cfg = cfg or WaveformGenConfig()
    if not isinstance(cfg, WaveformGenConfig):
        raise TypeError(f"cfg must be a WaveformGenConfig, got {type(cfg).__name__}")
    seed = check_seed(seed)
    return generate_blocks(lambda b: _block(seed, b, cfg), n, rank, world_size, BLOCK)


def _block(seed: int, block: int, cfg: WaveformGenConfig) -> dict:
    rng = stream(seed, 0x5A5E, block)
    n, S, dt = BLOCK, cfg.n_samples, cfg.dt_ns * 1e-3  # dt in us
    anomaly = rng.random(n) < cfg.anomaly_rate
    w = np.asarray(cfg.anomaly_weights, float)
    kind = np.where(anomaly, 1 + rng.choice(4, size=n, p=w / w.sum()), 0)

    drift = rng.uniform(0, cfg.drift_max_us, n)
    nr = rng.random(n) < cfg.nr_fraction
    energy = np.where(nr, _log_uniform(rng, cfg.nr_energy_kev, n), _log_uniform(rng, cfg.er_energy_kev, n))
    n_gamma, n_elec = quanta(rng, energy, nr, cfg)
    n_e = n_elec * cfg.extraction_efficiency * np.exp(-drift / cfg.electron_lifetime_us)
    sigma = np.where(kind == 2, 0.0, s2_sigma_us(drift, cfg))
    # The frame holding the S2 centre in its [lo, lo + step) part: the S2's place follows the drift time.
    step, lo = cfg.frame_step * S, cfg.s2_window_lo * S
    t_s2 = drift / dt  # S2 centre in samples after the S1
    start = np.floor((t_s2 - lo) / step) * step  # < 0: the window opens before the S1 (pretrigger)
    center = t_s2 - start  # in samples
    edges = (np.arange(S + 1)[None, :] - center[:, None]) * dt  # (n, S+1) us from the S2 centre

    # Expected electrons per sample: one S2, or two overlapping ones, plus trains and a flat background.
    split = np.where(kind == 1, rng.uniform(*cfg.double_split, n), 1.0)
    width = np.sqrt(sigma**2 + cfg.luminescence_us**2 / 12)
    sep = np.where(kind == 1, rng.uniform(*cfg.double_separation, n) * width, 0.0)
    # The two scatters sit at -sep (1 - f) and +sep f, keeping the charge centroid at `center`.
    f, ne, sp = split[:, None], n_e[:, None], sep[:, None]
    lam = f * ne * _gauss_bins(edges + sp * (1 - f), sigma)
    d = kind == 1
    lam[d] += ((1 - f) * ne)[d] * _gauss_bins(edges[d] - sp[d] * f[d], sigma[d])
    train = rng.uniform(*cfg.train_fraction, n) * n_e
    tau = rng.uniform(*cfg.train_tau_us, n)
    t0 = 2 * width + cfg.luminescence_us  # the tail starts where the S2 fades
    e = kind == 3
    cdf = 1 - np.exp(-np.clip(edges[e] - t0[e, None], 0, None) / tau[e, None])
    lam[e] += train[e, None] * np.diff(cdf, axis=1)
    lam += cfg.single_electron_rate_per_us * dt
    electrons = rng.poisson(lam)

    # Each electron lights a box of `luminescence` (shorter for gas events) with ~phe_per_electron phe.
    box = np.where(kind == 2, cfg.gas_luminescence_us, cfg.luminescence_us) / dt  # samples
    mean_phe = _box_smear(electrons.astype(float), box) * cfg.phe_per_electron
    # Pile-up: another interaction's S1 in the window, at a random time away from the S2 centre.
    s1_pu = np.where(kind == 4, rng.poisson(cfg.g1 * _log_uniform(rng, cfg.s1_photons, n)), 0)
    t_pu = (center + rng.choice([-1, 1], n) * rng.uniform(0.1, 0.6, n) * S) * dt  # us from window start
    t_pu = np.mod(t_pu, S * dt)
    p = kind == 4
    grid = np.arange(S + 1)[None, :] * dt - t_pu[p, None]
    mean_phe[p] += s1_pu[p, None] * np.diff(_s1_cdf(grid * 1e3, cfg), axis=1)
    waveform = _photoelectrons(rng, mean_phe, cfg)

    # The event's own S1 (its photons from the same deposit), in its fine-binned window.
    s1_phd = rng.binomial(n_gamma, cfg.g1)
    s1 = _s1_waveform(rng, s1_phd, cfg)
    return {
        "waveform": waveform.astype(np.float32),
        "s1_waveform": s1.astype(np.float32),
        "anomaly": anomaly.astype(np.int64),
        "anomaly_kind": kind.astype(np.int64),
        "drift_time_us": drift.astype(np.float32),
        "energy_kev": energy.astype(np.float32),
        "recoil": nr.astype(np.int64),
        "n_photons": n_gamma.astype(np.int64),
        "n_electrons": n_elec.astype(np.int64),
        "window_start_us": (start * dt).astype(np.float32),
        "s2_sigma_us": sigma.astype(np.float32),
        "s2_electrons": n_e.astype(np.float32),
        "s1_phd": s1_phd.astype(np.int64),
        "pileup_phd": s1_pu.astype(np.int64),
        "pileup_sample": np.where(kind == 4, t_pu / dt, -1.0).astype(np.float32),
        "s2_center_sample": center.astype(np.float32),
        "dt_ns": np.full(n, cfg.dt_ns, np.float32),
        "event_index": np.arange(block * BLOCK, (block + 1) * BLOCK, dtype=np.int64),
    }


def _log_uniform(rng, lo_hi, n):
    lo, hi = lo_hi
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _gauss_bins(edges, sigma):
    """Probability per bin of N(0, sigma) given bin edges (n, S+1); sigma = 0 puts all in one bin."""
    s = np.maximum(sigma, 1e-6)[:, None]
    return np.diff(ndtr(edges / s), axis=1)


def _box_smear(x, box_samples):
    """Each row of x (n, S) smeared by a causal box of `box_samples` (n,) samples and unit area:
    out[i] = (C(i + 1) - C(i + 1 - L)) / L with C the cumulative sum, linear between sample edges."""
    n, S = x.shape
    c = np.concatenate([np.zeros((n, 1)), np.cumsum(x, axis=1)], axis=1)  # c[:, j] = sum of x[:, :j]
    out = np.empty_like(x)
    for L in np.unique(box_samples):  # one length per pulse kind: loop over a handful of values
        rows = box_samples == L
        L = max(float(L), 1.0)
        lo = np.arange(1, S + 1) - L  # lower edge of the box ending at sample i's upper edge
        lo_i = np.floor(lo).astype(int)
        frac = lo - lo_i
        cr = c[rows]  # c = 0 left of the window, hence the clip to column 0
        c_lo = cr[:, np.clip(lo_i, 0, S)] * (1 - frac) + cr[:, np.clip(lo_i + 1, 0, S)] * frac
        out[rows] = (cr[:, 1:] - c_lo) / L
    return out


def _s1_cdf(t_ns, cfg):
    """Fraction of S1 photons emitted before t_ns (singlet + triplet exponentials); 0 for t < 0."""
    t = np.clip(t_ns, 0, None)
    f = cfg.singlet_fraction
    return f * (1 - np.exp(-t / cfg.singlet_tau_ns)) + (1 - f) * (1 - np.exp(-t / cfg.triplet_tau_ns))


def _photoelectrons(rng, mean_phe, cfg):
    """Poisson photoelectrons with Gaussian gain spread, plus baseline noise (phe per sample)."""
    k = rng.poisson(mean_phe).astype(float)
    return k + np.sqrt(cfg.gain_spread**2 * k + cfg.noise_phe**2) * rng.normal(size=k.shape)


def _s1_waveform(rng, phd, cfg):
    """Photon by photon: singlet/triplet times and SPE areas with gain spread, binned, then shaped by
    the Gaussian SPE pulse (a convolution) and given baseline noise."""
    n, S, dt = len(phd), cfg.s1_samples, cfg.s1_dt_ns
    event = np.repeat(np.arange(n), phd)
    m = len(event)
    tau = np.where(rng.random(m) < cfg.singlet_fraction, cfg.singlet_tau_ns, cfg.triplet_tau_ns)
    t = cfg.s1_pretrigger_ns + rng.exponential(tau)
    area = np.maximum(rng.normal(1.0, cfg.gain_spread, m), 0.0)
    sample = np.floor(t / dt).astype(int)
    ok = sample < S
    s1 = np.bincount(event[ok] * S + sample[ok], weights=area[ok], minlength=n * S).reshape(n, S)
    half = int(np.ceil(4 * cfg.spe_sigma_ns / dt))
    edges = (np.arange(-half, half + 2) - 0.5) * dt
    kernel = np.diff(ndtr(edges / cfg.spe_sigma_ns))  # SPE pulse shape per sample, unit area
    s1 = convolve1d(s1, kernel, axis=1, mode="constant")
    return s1 + cfg.noise_phe * rng.normal(size=s1.shape)


def normalise_waveforms(waveform: np.ndarray, dt_ns: float, scale_phe_per_ns: float = 0.2, norm: float = 6.0):
    """phe per sample -> asinh(w / a) / norm as float32, a = scale_phe_per_ns * dt_ns: linear below a
    few single electrons, logarithmic in the S2 peak, so tails (electron trains) and pile-up pulses
    stay visible beside the peak; the same physical pulse gives the same values at any sampling."""
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be (N, samples), got shape {waveform.shape}")
    if dt_ns <= 0:
        raise ValueError(f"dt_ns must be positive, got {dt_ns}")
    return (np.arcsinh(waveform / (scale_phe_per_ns * dt_ns)) / norm).astype(np.float32)
