"""The comparison study: which search method finds a good model with the least compute?

Same objective, same space, same budget in trial-epochs (the grid's: grid points x max epochs) for
grid, random, TPE, ASHA+TPE (Optuna) and ASHA, PBT (Ray Tune). Each method's history lists every epoch
trained, in the order the compute was spent; its best-so-far curve is the best validation metric any
trial has reported so far (the best model you could have kept). The headline number is the compute each
method needs to reach the grid's best (optionally to within the metric's statistical error), as a fraction of
the grid's compute: the MLPF authors found
ASHA + a Bayesian sampler best per unit compute (Pata et al. 2023, arXiv:2303.17657).

Taught in curriculum/06_hpo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hepml_kit.hpo.objective import TestbedObjective
from hepml_kit.hpo.space import SearchSpace

__all__ = ["METHODS", "Comparison", "auc_standard_error", "compare_methods", "compute_to_reach",
           "run_optuna_method"]

# method -> (backend, sampler or search, pruner or scheduler)
METHODS = {
    "grid": ("optuna", "grid", "none"),
    "random": ("optuna", "random", "none"),
    "tpe": ("optuna", "tpe", "none"),
    "asha_tpe": ("optuna", "tpe", "asha"),
    "ray_asha": ("ray", "random", "asha"),
    "ray_pbt": ("ray", "random", "pbt"),
}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Statistical error of an ROC AUC measured on `positives` + `negatives` events (Hanley & McNeil,
    Radiology 143 (1982) 29, eq. 1): what separates two trials' validation AUCs that differ by chance. Its
    exponential score model overstates the spread of binormal scores a little (0.029 against 0.025 for lesson
    06's 92 + 1956 events at AUC 0.77, tests/test_hpo_compare.py)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2))
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def compute_to_reach(history, target: float, maximize: bool = True) -> float:
    """Trial-epochs spent when the best-so-far first reaches `target` (NaN if it never does)."""
    hit = history["best_so_far"] >= target if maximize else history["best_so_far"] <= target
    return float(history["compute"][hit].iloc[0]) if hit.any() else math.nan


@dataclass
class Comparison:
    """The histories of every method at one budget, and the table and plot made from them."""

    objective: TestbedObjective
    budget_epochs: int
    # method -> DataFrame(trial, epoch, value, compute, best_so_far)
    histories: dict = field(default_factory=dict)

    @property
    def maximize(self) -> bool:
        return self.objective.direction == "maximize"

    @property
    def grid_best(self) -> float:
        h = self.histories["grid"]
        return float(h["value"].max() if self.maximize else h["value"].min())

    def table(self, tolerance: float = 0.0):
        """One row per method: trials, compute, best metric, compute to reach the grid's best (and its
        fraction of the grid's compute). With `tolerance` (e.g. the metric's statistical error,
        `auc_standard_error`), reaching the grid's best means coming within `tolerance` of it: the grid's
        exact best on a small validation set is partly luck, and chasing it measures noise."""
        import pandas as pd

        rows = []
        for method, h in self.histories.items():
            spent = h[h["compute"] <= self.budget_epochs]  # every method judged within the same budget
            best = spent["value"].max() if self.maximize else spent["value"].min()
            target = self.grid_best - tolerance if self.maximize else self.grid_best + tolerance
            need = compute_to_reach(spent, target, self.maximize) if "grid" in self.histories else math.nan
            rows.append({"method": method, "trials": spent["trial"].nunique(), "compute": int(len(spent)),
                         f"best_{self.objective.metric}": float(best), "compute_to_grid_best": need,
                         "fraction_of_grid_compute": need / self.budget_epochs})
        return pd.DataFrame(rows).set_index("method")

    def as_study(self, space: SearchSpace):
        """Every trial of every method that trained all its epochs, as one in-memory Optuna study (its last
        reported value), for parameter importance and parallel coordinates over all the runs."""
        import json

        import optuna

        study = optuna.create_study(direction=self.objective.direction)
        dists = space.optuna_distributions()
        for method, h in self.histories.items():
            for _, rows in h.groupby("trial", sort=False):
                last = rows.sort_values("epoch").iloc[-1]
                if last["epoch"] < self.objective.epochs:
                    continue  # stopped early: its value is not comparable
                params = {k: json.loads(last["params"])[k] for k in dists}
                if not all(d._contains(d.to_internal_repr(params[k])) for k, d in dists.items()):
                    continue  # PBT perturbs the learning rate by x0.8 / x1.2 and may leave the range
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                          value=float(last["value"]),
                                                          user_attrs={"method": method}))
        return study

    def plot(self, ax=None):
        """Best-so-far against compute (trial-epochs), one curve per method, the grid's best as a line."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(7, 4))[1]
        for method, h in self.histories.items():
            ax.step(h["compute"], h["best_so_far"], where="post", label=method)
        if "grid" in self.histories:
            ax.axhline(self.grid_best, color="grey", ls=":", lw=1, label="grid's best")
            ax.axvline(0.3 * self.budget_epochs, color="grey", ls="--", lw=1, label="30% of grid compute")
        ax.set_xlim(0, self.budget_epochs)
        ax.set_xlabel("compute [trial-epochs]")
        ax.set_ylabel(f"best {self.objective.metric} so far")
        ax.legend(fontsize=8)
        return ax


def run_optuna_method(method: str, objective: TestbedObjective, space: SearchSpace, budget_epochs: int,
                      seed: int = 0, min_epochs: int = 1, reduction_factor: int = 3,
                      n_startup_trials: int = 5):
    """One Optuna method of `METHODS`, trials one after the other in this process; returns its history."""
    from hepml_kit.hpo.optuna_backend import StudySpec, run_study, study_history

    _, sampler, pruner = METHODS[method]
    spec = StudySpec(method, space, objective, sampler=sampler, pruner=pruner, seed=seed,
                     min_epochs=min_epochs, reduction_factor=reduction_factor,
                     n_startup_trials=n_startup_trials)
    study = run_study(spec, budget_epochs=budget_epochs)
    return study_history(study)


def _optuna_methods_on_rank(methods, objective, space, budget_epochs, seed, min_epochs, reduction_factor,
                            n_startup_trials):
    """Runs on a worker: this rank's share of the Optuna methods (each a sequential study)."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return {m: run_optuna_method(m, objective, space, budget_epochs, seed, min_epochs, reduction_factor,
                                 n_startup_trials) for m in methods[rank::world]}


def compare_methods(objective: TestbedObjective, space: SearchSpace, *, methods=tuple(METHODS), seed: int = 0,
                    min_epochs: int = 1, reduction_factor: int = 3, n_startup_trials: int = 5,
                    perturbation_interval: int = 2, workers=None, ray_cpus: int = 2,
                    timeout: float = 3600.0) -> Comparison:
    """Run every method at the grid's budget (grid size x ``objective.epochs`` trial-epochs).

    Optuna methods run as sequential studies (exact compute order), spread over `workers` if given (each
    rank runs whole studies); the Ray methods then run on a local Ray cluster of `ray_cpus` CPUs. PBT's
    population is the budget divided by the epochs per member.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    objective.check(space)
    budget = space.grid_size() * objective.epochs
    result = Comparison(objective, budget)
    optuna_methods = [m for m in methods if METHODS[m][0] == "optuna"]
    args = (objective, space, budget, seed, min_epochs, reduction_factor, n_startup_trials)
    if workers is not None and optuna_methods:
        for part in workers.run(_optuna_methods_on_rank, optuna_methods, *args, timeout=timeout):
            result.histories.update(part)
    else:
        result.histories.update(_optuna_methods_on_rank(optuna_methods, *args))
    ray_methods = [m for m in methods if METHODS[m][0] == "ray"]
    if ray_methods:
        from hepml_kit.hpo.ray_backend import ray_session, run_tune

        with ray_session(num_cpus=ray_cpus):
            for m in ray_methods:
                _, search, scheduler = METHODS[m]
                pop = max(2, budget // objective.epochs)
                run = run_tune(space, objective, scheduler=scheduler, search=search, budget_epochs=budget,
                               num_samples=pop if scheduler == "pbt" else None, min_epochs=min_epochs,
                               reduction_factor=reduction_factor, perturbation_interval=perturbation_interval,
                               seed=seed, name=m)
                result.histories[m] = run.history
    result.histories = {m: result.histories[m] for m in methods}  # keep the caller's order
    return result
