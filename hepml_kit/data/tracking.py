"""Silicon-tracker Monte Carlo: helical tracks in a solenoid, barrel hits, and the hit graph.

The event model behind the tracking GNN (`hepml_kit.models.tracking_gnn`), following the TrackML /
HEP.TrkX set-up (Farrell et al. 2018, arXiv:1810.06111; DeZoort et al. 2021, arXiv:2103.16701) with the
formulas of ``shared/notes/physics.md`` §1:

* Charged particles (charge ±1) from ``pileup`` overlaid vertices, each vertex at z ~ N(0, ``z0_sigma_mm``)
  with Poisson(``particles_per_vertex``) particles; pT from a falling power law dN/dpT ∝ pT^-n on
  [``pt_min_gev``, ``pt_max_gev``], η uniform in ±``eta_max``, φ uniform.
* Transport: exact helix arcs in a uniform field B along z, radius R[mm] = 1000·pT[GeV] / (0.3·B[T]),
  intersected with each barrel cylinder in turn. At every layer the particle gets a Highland multiple-
  scattering kink, θ0 = 13.6 MeV/(βcp)·√t·(1 + 0.038 ln t), t = (x/X0)/sin θ, in two orthogonal planes,
  after which the next arc starts from the hit with the new direction (so the kinks accumulate).
  A particle stops at the first layer it cannot reach (r > 2R: it curls up) or leaves through the end of
  a layer (|z| > half-length: it enters the end-caps, which are not simulated).
* Measurement: rφ and z smeared by Gaussians, hits dropped with probability ``hit_inefficiency``, and
  Poisson(``noise_fraction`` × true hits) noise hits per layer, uniform on the cylinder.
* Graph: directed edges inner → outer between hits up to ``max_layer_gap`` layers apart (1: adjacent
  layers only; 2: an edge may skip one layer, so a missed hit does not split a track, as in the
  Exa.TrkX / GNN4ITk module maps) with |Δφ/Δr| < ``phi_slope_max`` and |z0| < ``z0_max_mm`` (z0: the
  segment extrapolated to r = 0). An edge is true when both hits belong to one particle and are
  consecutive hits of it (no hit of that particle on a layer in between).

Event layout (one ``dict[str, np.ndarray]`` per event; N hits, P particles, E edges)::

    hit_r, hit_phi, hit_z      float32 (N,)   mm, rad in (-π, π], mm (measured, i.e. smeared)
    hit_layer                  int16   (N,)   0 = innermost layer
    hit_particle               int64   (N,)   index into the particle_* arrays; -1 for noise hits
    hit_pt                     float32 (N,)   truth pT (GeV) of the hit's particle at production; 0 for noise
    particle_pt, particle_eta, particle_phi, particle_z0    float32 (P,)  production kinematics, vertex z
    particle_q                 int8    (P,)   charge ±1
    particle_nhits             int16   (P,)   hits the particle left (after inefficiency)
    edge_index                 int64   (2, E) [inner hit, outer hit]
    edge_label                 bool    (E,)   consecutive hits of one particle
    n_true_segments            int64   ()     consecutive same-particle hit pairs at most max_layer_gap
                                              layers apart (what a perfect graph holds: the denominator
                                              of the graph efficiency)
    event_index                int64   ()     position of the event in the serial data set

Hits are sorted by (layer, φ). `generate_tracking_events` derives each event's random stream from
(seed, event index), so any split over ranks reproduces the serial data set exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hepml_kit.data._seeding import stream

__all__ = [
    "GENERATOR_VERSION",
    "TrackingConfig",
    "build_graph",
    "generate_tracking_event",
    "generate_tracking_events",
    "helix_radius_mm",
]

GENERATOR_VERSION = "tracking-1.1"  # 1.1: max_layer_gap (skip edges), consecutive-hit labels

_PIXEL_RADII = (32.0, 72.0, 115.0, 172.0)
_STRIP_RADII = (260.0, 360.0, 500.0, 660.0, 820.0, 1020.0)


@dataclass(frozen=True)
class TrackingConfig:
    """Detector and generator parameters (typical ATLAS-ITk / TrackML-like values; all in mm, GeV, T).

    ``pileup`` is the scale knob: the number of overlaid vertices, each with Poisson(``particles_per_vertex``)
    particles. Pileup 1: ~20 particles, ~150 hits, ~120 edges; pileup 200 (HL-LHC): ~4,000 particles,
    ~3×10^4 hits and ~3×10^5 edges in this barrel-only detector (the real ITk, with end-caps, has ~10^5
    space points). Edges grow ~ pileup²: 1.2 M at pileup 400, 4.5 M at 800, where one graph no longer
    fits an H200 (~140 GB) with the ``full`` GNN unless activations are checkpointed (measured: see
    `hepml_kit.models.tracking_gnn`).
    """

    layer_radii_mm: tuple[float, ...] = _PIXEL_RADII + _STRIP_RADII
    layer_half_length_mm: tuple[float, ...] = (491.0,) * 4 + (1150.0,) * 6
    b_field_t: float = 2.0
    pileup: int = 1
    particles_per_vertex: float = 20.0
    pt_min_gev: float = 0.5
    pt_max_gev: float = 20.0
    pt_power: float = 2.5  # dN/dpT ∝ pT^-pt_power
    eta_max: float = 2.5
    z0_sigma_mm: float = 50.0
    particle_mass_gev: float = 0.13957  # charged pion
    x_over_x0: float = 0.025  # material per layer at normal incidence; 0 switches multiple scattering off
    sigma_rphi_mm: float = 0.02
    sigma_z_mm: float = 0.08
    hit_inefficiency: float = 0.02
    noise_fraction: float = 0.15
    # Graph cuts: a pT = 0.5 GeV track bends 1/(2R) = 0.0006 rad/mm at 2 T; with multiple scattering and
    # smearing these keep 99.97% of true segments at the defaults (tests/test_tracking.py checks > 99.5%).
    phi_slope_max: float = 0.0008  # rad/mm
    z0_max_mm: float = 200.0
    max_layer_gap: int = 1  # 2 lets an edge skip one layer (a missed hit does not split the track)

    def __post_init__(self):
        radii, half = np.asarray(self.layer_radii_mm), np.asarray(self.layer_half_length_mm)
        if radii.ndim != 1 or len(radii) < 2 or np.any(radii <= 0) or np.any(np.diff(radii) <= 0):
            raise ValueError(f"layer_radii_mm must be ≥ 2 positive, increasing radii; got {radii.tolist()}")
        if half.shape != radii.shape or np.any(half <= 0):
            raise ValueError("layer_half_length_mm needs one positive half-length per layer "
                             f"({len(radii)}); got {self.layer_half_length_mm}")
        if not (isinstance(self.pileup, (int, np.integer)) and self.pileup >= 1):
            raise ValueError(f"pileup must be an int ≥ 1; got {self.pileup!r}")
        if not 0 < self.pt_min_gev < self.pt_max_gev:
            raise ValueError(f"need 0 < pt_min_gev < pt_max_gev; got {self.pt_min_gev}, {self.pt_max_gev}")
        for name in ("hit_inefficiency",):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1); got {getattr(self, name)}")
        for name in ("b_field_t", "eta_max", "phi_slope_max", "z0_max_mm", "particles_per_vertex"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("z0_sigma_mm", "x_over_x0", "sigma_rphi_mm", "sigma_z_mm", "noise_fraction", "pt_power"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0; got {getattr(self, name)}")
        if not (isinstance(self.max_layer_gap, (int, np.integer)) and 1 <= self.max_layer_gap < len(radii)):
            raise ValueError(f"max_layer_gap must be an int in [1, {len(radii) - 1}]; "
                             f"got {self.max_layer_gap!r}")
        widest_gap = float(np.max(radii[self.max_layer_gap:] - radii[: -self.max_layer_gap]))
        if self.phi_slope_max * widest_gap >= np.pi:
            raise ValueError("phi_slope_max × largest layer gap must stay below π (a half-turn window)")

    def with_(self, **changes) -> TrackingConfig:
        """A copy with some fields changed, e.g. ``cfg.with_(pileup=50)``."""
        return replace(self, **changes)


def helix_radius_mm(pt_gev, b_field_t: float):
    """Transverse radius of curvature of a unit-charge track: R[m] = pT[GeV] / (0.3·B[T])."""
    return 1000.0 * np.asarray(pt_gev) / (0.3 * b_field_t)


def _sample_pt(rng, n: int, cfg: TrackingConfig) -> np.ndarray:
    """Inverse-CDF sample of dN/dpT ∝ pT^-n on [pt_min, pt_max]."""
    a, b, k, u = cfg.pt_min_gev, cfg.pt_max_gev, 1.0 - cfg.pt_power, rng.random(n)
    if abs(k) < 1e-9:
        return a * (b / a) ** u
    return (a**k + u * (b**k - a**k)) ** (1.0 / k)


def _wrap(phi):
    return (phi + np.pi) % (2 * np.pi) - np.pi


def _propagate(rng, cfg: TrackingConfig, pt, eta, phi0, q, z0):
    """Transport P particles layer by layer; returns (layer, particle, phi, z) of the true crossings."""
    n = len(pt)
    p = pt * np.cosh(eta)  # |p| (GeV), constant: no energy loss
    beta = p / np.sqrt(p**2 + cfg.particle_mass_gev**2)
    x, y, z = np.zeros(n), np.zeros(n), z0.astype(np.float64).copy()
    phi_dir, theta = phi0.astype(np.float64).copy(), 2.0 * np.arctan(np.exp(-eta))
    alive = np.ones(n, dtype=bool)
    out_layer, out_particle, out_phi, out_z = [], [], [], []
    for layer, (r, half) in enumerate(zip(cfg.layer_radii_mm, cfg.layer_half_length_mm)):
        pt_now = p * np.sin(theta)
        R = helix_radius_mm(pt_now, cfg.b_field_t)
        cx, cy = x + q * R * np.sin(phi_dir), y - q * R * np.cos(phi_dir)  # centre of curvature
        d = np.hypot(cx, cy)
        a = (r**2 - R**2 + d**2) / (2 * d)  # intersection of circle (c, R) with the cylinder r
        h2 = r**2 - a**2
        alive &= h2 >= 0
        h = np.sqrt(np.clip(h2, 0, None))
        ux, uy = cx / d, cy / d
        best_psi, best_px, best_py = np.full(n, np.inf), np.zeros(n), np.zeros(n)
        for sign in (1.0, -1.0):  # two intersections; take the first one along the motion
            px, py = a * ux - sign * h * uy, a * uy + sign * h * ux
            w0x, w0y, w1x, w1y = x - cx, y - cy, px - cx, py - cy
            signed = np.arctan2(w0x * w1y - w0y * w1x, w0x * w1x + w0y * w1y)
            psi = np.mod(-q * signed, 2 * np.pi)  # q > 0 turns clockwise in B along +z
            better = psi < best_psi
            best_psi, best_px, best_py = (np.where(better, psi, best_psi), np.where(better, px, best_px),
                                          np.where(better, py, best_py))
        z_new = z + R * best_psi / np.tan(theta)
        alive &= np.abs(z_new) < half
        idx = np.flatnonzero(alive)
        out_layer.append(np.full(len(idx), layer)), out_particle.append(idx)
        out_phi.append(np.arctan2(best_py[idx], best_px[idx])), out_z.append(z_new[idx])
        # new state at the hit: tangent direction u = q·(w_y, -w_x)/R, then the multiple-scattering kink
        wx, wy = best_px - cx, best_py - cy
        phi_dir = np.where(alive, np.arctan2(-q * wx, q * wy), phi_dir)
        x, y, z = np.where(alive, best_px, x), np.where(alive, best_py, y), np.where(alive, z_new, z)
        if cfg.x_over_x0 > 0:
            t = cfg.x_over_x0 / np.sin(theta)
            theta0 = 0.0136 / (beta * p) * np.sqrt(t) * (1 + 0.038 * np.log(t))
            k1, k2 = rng.normal(size=n), rng.normal(size=n)  # drawn for every particle: a stable stream
            theta = np.where(alive, np.clip(theta + theta0 * k1, 1e-3, np.pi - 1e-3), theta)
            phi_dir = np.where(alive, phi_dir + theta0 * k2 / np.sin(theta), phi_dir)
    cat = np.concatenate
    return cat(out_layer), cat(out_particle), cat(out_phi), cat(out_z)


def build_graph(hit_layer, hit_phi, hit_z, radii, phi_slope_max: float, z0_max: float,
                max_layer_gap: int = 1) -> np.ndarray:
    """Edges between hits 1 to `max_layer_gap` layers apart passing the φ-slope and z0 cuts; int64 (2, E).

    Hits must be sorted by (layer, φ). For each layer pair the outer hits are searched in a φ window
    ±phi_slope_max·Δr around each inner hit (`np.searchsorted` on a copy extended by ±2π for the wrap),
    so the cost is O(N log N + E), not O(N²).
    """
    radii = np.asarray(radii, dtype=np.float64)
    starts = np.searchsorted(hit_layer, np.arange(len(radii) + 1))
    src_all, dst_all = [], []
    pairs = [(a, a + g) for a in range(len(radii)) for g in range(1, max_layer_gap + 1) if a + g < len(radii)]
    for layer, outer in pairs:
        i0, i1, o0, o1 = starts[layer], starts[layer + 1], starts[outer], starts[outer + 1]
        if i1 == i0 or o1 == o0:
            continue
        dr = radii[outer] - radii[layer]
        window = phi_slope_max * dr
        phi_in, phi_out = hit_phi[i0:i1].astype(np.float64), hit_phi[o0:o1].astype(np.float64)
        phi_ext = np.concatenate([phi_out - 2 * np.pi, phi_out, phi_out + 2 * np.pi])  # sorted (φ sorted)
        lo = np.searchsorted(phi_ext, phi_in - window, side="left")
        hi = np.searchsorted(phi_ext, phi_in + window, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if total == 0:
            continue
        src = np.repeat(np.arange(i0, i1), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        dst = o0 + (np.repeat(lo, counts) + offsets) % (o1 - o0)
        dphi = _wrap(hit_phi[dst].astype(np.float64) - hit_phi[src].astype(np.float64))
        z_in, z_out = hit_z[src].astype(np.float64), hit_z[dst].astype(np.float64)
        z0 = z_in - radii[layer] * (z_out - z_in) / dr
        keep = (np.abs(dphi) / dr < phi_slope_max) & (np.abs(z0) < z0_max)
        src_all.append(src[keep]), dst_all.append(dst[keep])
    if not src_all:
        return np.zeros((2, 0), dtype=np.int64)
    return np.stack([np.concatenate(src_all), np.concatenate(dst_all)]).astype(np.int64)


def generate_tracking_event(cfg: TrackingConfig, seed: int, event_index: int) -> dict[str, np.ndarray]:
    """One event (layout in the module docstring), from the random stream of (seed, event_index)."""
    rng = stream(seed, event_index)
    n_layers = len(cfg.layer_radii_mm)
    radii, half = np.asarray(cfg.layer_radii_mm), np.asarray(cfg.layer_half_length_mm)
    # --- particles: vertices, kinematics
    vertex_z = rng.normal(0.0, cfg.z0_sigma_mm, cfg.pileup)
    per_vertex = rng.poisson(cfg.particles_per_vertex, cfg.pileup)
    z0 = np.repeat(vertex_z, per_vertex)
    n_part = len(z0)
    pt = _sample_pt(rng, n_part, cfg)
    eta = rng.uniform(-cfg.eta_max, cfg.eta_max, n_part)
    phi0 = rng.uniform(-np.pi, np.pi, n_part)
    q = rng.choice(np.array([-1.0, 1.0]), n_part)
    # --- transport, smearing, inefficiency
    layer, particle, phi, z = _propagate(rng, cfg, pt, eta, phi0, q, z0)
    phi = _wrap(phi + rng.normal(0.0, cfg.sigma_rphi_mm, len(phi)) / radii[layer])
    z = z + rng.normal(0.0, cfg.sigma_z_mm, len(z))
    kept = rng.random(len(layer)) >= cfg.hit_inefficiency
    layer, particle, phi, z = layer[kept], particle[kept], phi[kept], z[kept]
    # --- noise hits: Poisson(noise_fraction × true hits) per layer, uniform on the cylinder
    n_noise = rng.poisson(cfg.noise_fraction * np.bincount(layer, minlength=n_layers))
    noise_layer = np.repeat(np.arange(n_layers), n_noise)
    noise_phi = rng.uniform(-np.pi, np.pi, len(noise_layer))
    noise_z = rng.uniform(-1.0, 1.0, len(noise_layer)) * half[noise_layer]
    layer = np.concatenate([layer, noise_layer])
    particle = np.concatenate([particle, np.full(len(noise_layer), -1)])
    phi, z = np.concatenate([phi, noise_phi]), np.concatenate([z, noise_z])
    order = np.lexsort((phi, layer))
    layer, particle, phi, z = layer[order], particle[order], phi[order], z[order]
    # --- truth bookkeeping: consecutive hits of one particle (what a perfect graph would hold)
    true = particle >= 0
    by_particle = np.flatnonzero(true)[np.lexsort((layer[true], particle[true]))]
    p_sorted, l_sorted = particle[by_particle], layer[by_particle]
    consecutive = p_sorted[1:] == p_sorted[:-1]
    gap = l_sorted[1:] - l_sorted[:-1]
    n_true_segments = int(np.sum(consecutive & (gap >= 1) & (gap <= cfg.max_layer_gap)))
    next_layer = np.full(len(layer), -1)  # layer of the same particle's next hit outwards (-1: none)
    next_layer[by_particle[:-1][consecutive]] = l_sorted[1:][consecutive]
    # --- graph
    edge_index = build_graph(layer, phi, z, radii, cfg.phi_slope_max, cfg.z0_max_mm, cfg.max_layer_gap)
    src_p, dst_p = particle[edge_index[0]], particle[edge_index[1]]
    consecutive_hits = next_layer[edge_index[0]] == layer[edge_index[1]]
    return {
        "hit_r": radii[layer].astype(np.float32),
        "hit_phi": phi.astype(np.float32),
        "hit_z": z.astype(np.float32),
        "hit_layer": layer.astype(np.int16),
        "hit_particle": particle.astype(np.int64),
        "hit_pt": np.append(pt, 0.0)[particle].astype(np.float32),  # index -1 (noise) picks the 0
        "particle_pt": pt.astype(np.float32),
        "particle_eta": eta.astype(np.float32),
        "particle_phi": phi0.astype(np.float32),
        "particle_z0": z0.astype(np.float32),
        "particle_q": q.astype(np.int8),
        "particle_nhits": np.bincount(particle[true], minlength=n_part).astype(np.int16),
        "edge_index": edge_index,
        "edge_label": (src_p == dst_p) & (src_p >= 0) & consecutive_hits,
        "n_true_segments": np.array(n_true_segments, dtype=np.int64),
        "event_index": np.array(event_index, dtype=np.int64),
    }


def generate_tracking_events(
    n_events: int, seed: int, cfg: TrackingConfig | None = None, rank: int = 0, world_size: int = 1
) -> list[dict[str, np.ndarray]]:
    """Events ``rank, rank + world_size, ...`` of an ``n_events`` data set (all of it when world_size = 1).

    Deterministic: event i depends only on (seed, i), so the union over ranks equals the serial set.
    """
    cfg = TrackingConfig() if cfg is None else cfg
    if not isinstance(cfg, TrackingConfig):
        raise TypeError(f"cfg must be a TrackingConfig; got {type(cfg).__name__}")
    if not (isinstance(n_events, (int, np.integer)) and n_events >= 0):
        raise ValueError(f"n_events must be an int ≥ 0; got {n_events!r}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"seed must be an int ≥ 0; got {seed!r}")
    if not (isinstance(world_size, (int, np.integer)) and world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"need world_size ≥ 1 and 0 ≤ rank < world_size; got rank={rank}, "
                         f"world_size={world_size}")
    return [generate_tracking_event(cfg, int(seed), i) for i in range(rank, n_events, world_size)]
