"""Active learning: the model decides at which energies the next showers are simulated.

The task: a fast-simulation surrogate must reproduce the calorimeter's mean response (visible energy over
incident energy, the ``energy_ratio`` of `hepml_kit.data.showers.shower_features`) for photons at the 15
CaloChallenge energies, 256 MeV ... 4 TeV; its figure of merit is the RMS over energies of the relative
error of the predicted mean response against a high-statistics reference, in per mille (a calibration
bias every energy must get right). The surrogate is a `StackedEnsemble` of Gaussian MLPs conditioned on
log E.

Why simulation budget matters here: a shower's response fluctuates by sigma/E = 10%/sqrt(E/GeV) (Poisson
sampling) plus 0.7%: ~19% at 256 MeV, ~0.7% at 4 TeV. To pin down a mean to the same error, low energies need
far more showers. Uniform sampling spends 1/15 of the budget on every energy. For the worst-energy error
(``metric``, the default figure) the best split equalises the errors, n_i ∝ sigma_i^2 (``power=2``), which
needs ~15% of uniform's events in the ideal case of independent bins (sum sigma^2 / (15 max sigma^2)); for
the RMS over energies (``rms``) it is the Neyman split n_i ∝ sigma_i (``power=1``, ideally ~43%). The
network shares information between neighbouring energies, which helps uniform sampling most at small
budgets, so the measured gains are smaller than these ideals (`bench/active_learning.py`).

The model does not know the sigmas: it learns them. Each round the ensemble is trained (warm start) on all
showers so far; its *disagreement* s_i at energy i (the spread of the members' means: the epistemic error,
~ sigma_i / sqrt(n_i)) gives sigma_i^2 ~ s_i^2 n_i, and the next round's showers go where the cumulative
counts fall furthest short of the split ∝ sigma_i^power (``acquisition="disagreement"``). ``"aleatoric"``
uses the members' own predicted spread instead; ``"uniform"`` is the baseline. Every round simulates the
same number of events, so the curves of metric vs events simulated compare equal budgets.

Taught in curriculum/12_simulation_in_the_loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hepml_kit.data._seeding import stream
from hepml_kit.data.showers import CALOCHALLENGE_ENERGIES_MEV, ShowerConfig, generate_showers
from hepml_kit.simloop.ensemble import EnsembleConfig, StackedEnsemble

__all__ = ["ACQUISITIONS", "ActiveConfig", "ResponseProblem", "allocate", "events_to_reach",
           "run_loop", "uniform_split"]

ACQUISITIONS = ("uniform", "disagreement", "aleatoric")


@dataclass(frozen=True)
class ResponseProblem:
    """Photon showers at the CaloChallenge energies; y = visible / incident energy of each shower."""

    particle: str = "photon"
    eta_bin: int = 4
    energies_mev: tuple = CALOCHALLENGE_ENERGIES_MEV

    def features(self, energy_index: np.ndarray) -> torch.Tensor:
        """(N, 1): log2(E / E_min), scaled to [0, 1]."""
        e = np.asarray(self.energies_mev, dtype=np.float64)
        x = np.log2(e[np.asarray(energy_index)] / e.min()) / max(np.log2(e.max() / e.min()), 1e-12)
        return torch.as_tensor(x, dtype=torch.float32)[:, None]

    def simulate(self, counts, seed: int, key: int, truth: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``counts[i]`` fresh showers at energy i -> (energy index (N,), response (N,)); deterministic in
        (seed, key, i): each call with a new key is new showers. ``truth``: the expected response of each
        shower (``response_true``) instead of the measured one."""
        idx, resp = [], []
        for i, n in enumerate(np.asarray(counts, dtype=np.int64)):
            if n <= 0:
                continue
            cfg = ShowerConfig(particle=self.particle, eta_bin=self.eta_bin,
                               energies_mev=(self.energies_mev[i],))
            sub_seed = int(stream(seed, key, i, 0xAC7).integers(2**31))
            d = generate_showers(int(n), sub_seed, cfg)
            sf = np.concatenate([np.full(ly.n_voxels, ly.sampling_fraction) for ly in cfg.layers])
            idx.append(np.full(int(n), i))
            resp.append((d["voxels"] / sf).sum(1, dtype=np.float64) / d["energy"] if not truth
                        else d["response_true"])
        if not idx:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(idx), np.concatenate(resp)

    def reference(self, per_energy: int, seed: int = 10**6) -> tuple[np.ndarray, np.ndarray]:
        """(mean expected response, its standard error) at each energy from `per_energy` showers each (a seed
        apart from any training data)."""
        idx, resp = self.simulate(np.full(len(self.energies_mev), per_energy), seed, key=0, truth=True)
        k = len(self.energies_mev)
        return (np.array([resp[idx == i].mean() for i in range(k)]),
                np.array([resp[idx == i].std() / np.sqrt(per_energy) for i in range(k)]))


@dataclass(frozen=True)
class ActiveConfig:
    """initial: showers per energy simulated uniformly before the model decides; per_round: showers per
    round; rounds: rounds after the initial one; power: the split aimed at is ∝ sigma^power (2: equal errors,
    for the worst-energy metric; 1: Neyman, for the RMS); the ensemble trains ``ensemble.steps`` Adam steps on
    the first round's showers and `steps_per_round` more (warm start) after each later round."""

    acquisition: str = "disagreement"
    initial: int = 10
    per_round: int = 300
    rounds: int = 8
    steps_per_round: int = 300
    power: float = 2.0
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def __post_init__(self):
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {self.acquisition!r}")
        if self.initial < 2 or self.per_round < 1 or self.rounds < 0:
            raise ValueError(f"need initial >= 2, per_round >= 1, rounds >= 0; got {self.initial}, "
                             f"{self.per_round}, {self.rounds}")


def allocate(sigma: np.ndarray, counts: np.ndarray, budget: int) -> np.ndarray:
    """Split `budget` new events over the bins so that the totals approach a split ∝ `sigma` (Neyman; pass
    sigma^2 to equalise the errors instead):
    each bin gets its shortfall ``max(0, target - counts)``, shortfalls scaled to the budget, rounded so the
    parts add up to `budget` exactly."""
    sigma, counts = np.clip(np.asarray(sigma, np.float64), 1e-12, None), np.asarray(counts, np.float64)
    target = sigma / sigma.sum() * (counts.sum() + budget)
    short = np.clip(target - counts, 0, None)
    share = short / short.sum() * budget if short.sum() > 0 else np.full(len(sigma), budget / len(sigma))
    out = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - out))[: budget - int(out.sum())]:  # largest remainders
        out[i] += 1
    return out


def uniform_split(budget: int, bins: int, offset: int = 0) -> np.ndarray:
    out = np.full(bins, budget // bins, dtype=np.int64)
    out[(offset + np.arange(budget % bins)) % bins] += 1
    return out


def run_loop(problem: ResponseProblem, cfg: ActiveConfig, reference_mean: np.ndarray, seed: int = 0) -> dict:
    """One active-learning (or uniform) run. Returns per round: ``events`` simulated so far, ``metric`` (worst
    relative error of the mean response over the energies, per mille), ``rms`` (its RMS over energies), the
    ``counts`` per energy, and the final ensemble (``model``)."""
    k = len(problem.energies_mev)
    counts = np.zeros(k, dtype=np.int64)
    idx_all, y_all = [], []
    new = np.full(k, cfg.initial, dtype=np.int64)
    grid = problem.features(np.arange(k))
    out = {"events": [], "metric": [], "rms": [], "counts": []}
    model = StackedEnsemble(1,
                            EnsembleConfig(**{**cfg.ensemble.__dict__,
                                              "seed": cfg.ensemble.seed + 97 * seed}))
    boot = torch.Generator().manual_seed(int(stream(seed, 0xB007).integers(2**31)))
    w_all = []
    for r in range(cfg.rounds + 1):
        idx, y = problem.simulate(new, seed, key=r + 1)
        idx_all.append(idx)
        y_all.append(y)
        w_all.append(model.bootstrap_weights(len(idx), boot))  # each event keeps its weights in later rounds
        counts += new
        idx_cat, y_cat = np.concatenate(idx_all), np.concatenate(y_all)
        model.fit(problem.features(idx_cat), torch.as_tensor(y_cat, dtype=torch.float32), torch.cat(w_all, 1),
                  steps=None if r == 0 else cfg.steps_per_round)
        pred = model.predict(grid)
        rel = (pred["mean"].numpy() - reference_mean) / reference_mean
        out["events"].append(int(counts.sum()))
        out["metric"].append(1e3 * float(np.abs(rel).max()))
        out["rms"].append(1e3 * float(np.sqrt(np.mean(rel**2))))
        out["counts"].append(counts.copy())
        if cfg.acquisition == "uniform":
            new = uniform_split(cfg.per_round, k, offset=r)
        elif cfg.acquisition == "disagreement":
            new = allocate((pred["epistemic"].numpy() * counts) ** (cfg.power / 2), counts, cfg.per_round)
        else:
            new = allocate(pred["aleatoric"].numpy() ** (cfg.power / 2), counts, cfg.per_round)
    out["model"] = model
    return out


def events_to_reach(events, metric, target: float) -> float:
    """The events simulated at which the curve `metric` (falling with `events`) first reaches `target`,
    interpolated linearly between rounds; ``inf`` if it never does."""
    events, metric = np.asarray(events, np.float64), np.asarray(metric, np.float64)
    for i in range(len(events)):
        if metric[i] <= target:
            if i == 0:
                return float(events[0])
            f = (metric[i - 1] - target) / (metric[i - 1] - metric[i])
            return float(events[i - 1] + f * (events[i] - events[i - 1]))
    return float("inf")
