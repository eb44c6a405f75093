"""Ray Tune on a local Ray cluster, with the same `SearchSpace` and `TestbedObjective` as the Optuna backend.

- ASHA (Li et al. 2020, arXiv:1810.05934): `ASHAScheduler` stops poor trials at rungs of 1, η, η², ... epochs.
- Population-based training (Jaderberg et al. 2017, arXiv:1711.09846): `PopulationBasedTraining` lets weak
  members copy a strong member's weights (a checkpoint) and perturb its training hyperparameters.
- A Bayesian searcher: Ray's `OptunaSearch` wrapping Optuna's TPE (``search="tpe"``), beside random search.

Compute is counted as with Optuna, in trial-epochs: `TrialEpochBudget` ends the experiment once all trials
together have trained `budget_epochs` epochs. Every epoch's result is recorded, so `ray_history` gives the
best-so-far curve. Ray is heavy (``ray.init`` takes ~20 s on 2 cores): open one `ray_session` and run
several tunes in it. Ray Tune's own answer to "a trial that is itself distributed" (ray-project/ray#10910)
is a `ray.train.torch.TorchTrainer` passed to the `Tuner`; here the DDP trials live in the Optuna backend.

Resume: `run_tune` always starts a new experiment (a new `Tuner`), so it cannot replay an earlier run's
samples; it offers no resume. Continuing a killed experiment is Ray's ``tune.Tuner.restore(path, trainable)``
on ``storage_path/name``: Ray pickles the searcher with the experiment state (`BasicVariantGenerator` with
its random generator and sample count, `OptunaSearch` with its sampler and study), so the restored searcher
continues its stream rather than restarting it (Ray 2.60; random search over more than Ray's
serialisation threshold of pre-generated variants cannot resume at all). For a study that must survive a
kill with a guarantee the kit tests, use the Optuna backend's storage file.

Taught in curriculum/06_hpo.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from ray.tune import Callback, Stopper

from hepml_kit._tempdir import socket_dir
from hepml_kit.hpo.objective import TestbedObjective, TrialDiverged
from hepml_kit.hpo.space import SearchSpace

__all__ = ["EpochRecorder", "RAY_SCHEDULERS", "RAY_SEARCHERS", "TrialEpochBudget", "ray_history",
           "ray_session", "run_tune"]

RAY_SCHEDULERS = ("fifo", "asha", "pbt")
RAY_SEARCHERS = ("random", "grid", "tpe")


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None):
    """A local Ray cluster for the block (reuses one that is already running, and then leaves it running)."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # no TensorBoard/CSV/JSON loggers per trial
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Ray's own folder for the block, deleted after it (by default Ray leaves /tmp/ray/session_* behind);
    # its deepest socket is <dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
    deepest = len("session_2026-12-06_23-54-55_920058_4194304/sockets/plasma_store")
    temp_dir = socket_dir("hepml-ray-", deepest)
    try:
        for attempt in (1, 2):  # a loaded machine can miss Ray's fixed 30 s raylet start-up wait: try again
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", configure_logging=True, _temp_dir=str(temp_dir))
                break
            except Exception as e:
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(e):
                    raise
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


class TrialEpochBudget(Stopper):
    """A Ray Tune stopper: stop everything once the trials together have reported `budget_epochs` epochs."""

    def __init__(self, budget_epochs: int | None, max_epochs: int):
        self.budget_epochs, self.max_epochs, self.spent = budget_epochs, max_epochs, 0

    def __call__(self, trial_id, result) -> bool:
        self.spent += 1
        return result["epoch"] >= self.max_epochs or self.stop_all()

    def stop_all(self) -> bool:
        return self.budget_epochs is not None and self.spent >= self.budget_epochs


class EpochRecorder(Callback):
    """Keeps every epoch any trial reports (in the driver, as results arrive): the raw best-so-far data."""

    def __init__(self, metric: str):
        self.metric, self.rows = metric, []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:
            self.rows.append({"trial": trial.trial_id, "epoch": result["epoch"], "value": result[self.metric],
                              "wall_time": result["wall_time"], "params": dict(trial.config)})


def _trainable(config: dict, objective: TestbedObjective, names: list, checkpoint_every: int) -> None:
    """Runs in a Ray worker process: one trial, one report per epoch (with a checkpoint for PBT)."""
    import torch
    from ray import tune

    torch.set_num_threads(1)
    params = {k: config[k] for k in names}
    run = objective.start(params)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # PBT: continue from a (possibly other member's) checkpoint
        with ckpt.as_directory() as d:
            run.load_state_dict(torch.load(os.path.join(d, "state.pt"), weights_only=False))
    while run.epoch < objective.epochs:
        try:
            metrics = run.train_epoch()
        except TrialDiverged:
            return  # the trial ends; its epochs were counted when reported
        report = {objective.metric: run.value(metrics), "epoch": run.epoch, "wall_time": time.time()}
        if checkpoint_every and run.epoch % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(run.state_dict(), os.path.join(d, "state.pt"))
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(report)


@dataclass(frozen=True)
class _Recorded:
    """The results of one `run_tune`: Ray's `ResultGrid` and every epoch reported (`history`)."""

    results: object
    history: object
    objective: TestbedObjective


def run_tune(space: SearchSpace, objective: TestbedObjective, *, scheduler: str = "asha",
             search: str = "random", num_samples: int | None = None, budget_epochs: int | None = None,
             max_concurrent: int | None = None, min_epochs: int = 1, reduction_factor: int = 3,
             perturbation_interval: int = 2, mutable: list[str] | None = None, seed: int = 0,
             storage_path: str | None = None, name: str = "tune") -> _Recorded:
    """Run a Ray Tune experiment over `space` on `objective` (inside a `ray_session`).

    Args:
        scheduler: ``"fifo"`` (every trial trains all epochs), ``"asha"`` or ``"pbt"``.
        search: ``"random"``, ``"grid"`` (`SearchSpace.grid`) or ``"tpe"`` (Ray's `OptunaSearch`, Bayesian).
        num_samples: trials to start (default: the grid for grid search, else as many as the budget allows).
        budget_epochs: stop all trials once this many trial-epochs were trained.
        mutable: hyperparameters PBT may perturb (default: the training settings ``lr``/``batch_size`` in the
            space: architecture parameters stay fixed, as a copied checkpoint must fit the model).
        storage_path: Ray's folder for the experiment (trials, checkpoints); default a temporary folder,
            removed when the process exits.
    Returns:
        an object with ``results`` (Ray's `ResultGrid`) and ``history`` (see `ray_history`).
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if scheduler not in RAY_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {RAY_SCHEDULERS}, got {scheduler!r}")
    if search not in RAY_SEARCHERS:
        raise ValueError(f"search must be one of {RAY_SEARCHERS}, got {search!r}")
    if scheduler == "pbt" and search != "random":
        raise ValueError("PBT samples its initial population at random: use "
                         "search='random' with scheduler='pbt'")
    objective.check(space)  # unknown hyperparameters or metric: refused before Ray starts anything
    if num_samples is None and budget_epochs is None and search != "grid":
        raise ValueError("give num_samples or budget_epochs (trial-epochs) so the "
                         "experiment knows when to stop")
    if not ray.is_initialized():
        raise RuntimeError("start Ray first: `with ray_session(num_cpus=2): run_tune(...)`")

    metric, mode, epochs = objective.metric, objective.mode, objective.epochs
    checkpoint_every = 0
    if scheduler == "asha":
        sched = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min_epochs,
                              reduction_factor=reduction_factor)
    elif scheduler == "pbt":
        mutable = mutable if mutable is not None else [n for n in ("lr", "batch_size") if n in space.names]
        if not mutable:
            raise ValueError("PBT needs at least one hyperparameter it may change during training (e.g. lr)")
        sched = PopulationBasedTraining(time_attr="epoch", perturbation_interval=perturbation_interval,
                                        hyperparam_mutations=space.subset(mutable).ray_param_space())
        checkpoint_every = perturbation_interval
    else:
        sched = FIFOScheduler()

    if search == "grid":
        param_space, searcher = space.ray_param_space(grid=True), None
        num_samples = 1 if num_samples is None else num_samples
    elif search == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        param_space = {}
        searcher = OptunaSearch(space=space.optuna_distributions(), metric=metric, mode=mode,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
    else:
        param_space, searcher = space.ray_param_space(), None
    if num_samples is None:
        num_samples = max(1, budget_epochs // min_epochs)
    if searcher is not None and max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        max_concurrent = None
    if search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)
        max_concurrent = None

    if storage_path is None:  # the trials' checkpoints stay readable until the process exits, then go
        storage_path = tempfile.mkdtemp(prefix="hepml-tune-")
        atexit.register(shutil.rmtree, storage_path, ignore_errors=True)
    storage_path = os.path.abspath(storage_path)
    trainable = tune.with_parameters(_trainable, objective=objective, names=space.names,
                                     checkpoint_every=checkpoint_every)
    trainable = tune.with_resources(trainable, {"cpu": 1})
    budget = TrialEpochBudget(budget_epochs, epochs)
    recorder = EpochRecorder(metric)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=sched, search_alg=searcher,
                                    num_samples=num_samples, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, stop=budget, verbose=0,
                                  callbacks=[recorder],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
    )
    results = tuner.fit()
    return _Recorded(results, ray_history(recorder.rows, objective), objective)


def ray_history(rows: list[dict], objective: TestbedObjective):
    """Every reported epoch of every trial, in wall-clock order: trial, epoch, value, params, compute,
    best_so_far (as `optuna_backend.study_history`)."""
    import json

    import pandas as pd

    df = pd.DataFrame(rows, columns=["trial", "epoch", "value", "wall_time", "params"])
    df["params"] = [json.dumps(p, sort_keys=True) for p in df["params"]]
    df = df.sort_values("wall_time", kind="stable").drop(columns="wall_time").reset_index(drop=True)
    df["compute"] = range(1, len(df) + 1)
    df["best_so_far"] = df["value"].cummax() if objective.mode == "max" else df["value"].cummin()
    return df
