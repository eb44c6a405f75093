"""Optuna studies over the kit's workers: samplers, pruners, a storage file, resume, and DDP trials.

- Samplers: random, grid, TPE (Bergstra et al. 2011) and CMA-ES (Hansen 2016) as the evolutionary method.
- Pruners: successive halving in its asynchronous form, ASHA (Li et al. 2020, arXiv:1810.05934), and
  Hyperband (Li et al. 2018, arXiv:1603.06560), acting on the metric each trial reports per epoch.
- Parallel trials: every worker (an ipyparallel engine) runs the same ask/train/tell loop against one study
  in a storage file: an Optuna journal file (``*.log``, `JournalFileBackend`, file locks) or SQLite
  (``sqlite:///study.db``). Several samplers asking at once is fine: TPE uses the "constant liar" so
  running trials are not proposed twice, and each worker's sampler gets its own seed (`sampler_seed`).
- A trial that is itself a DDP job (``ranks_per_trial=2``; optuna/optuna#4835): the workers split into
  groups; in each group only the leader (its first rank) talks to the study. It asks for the trial and
  broadcasts the sampled parameters to its group; every rank trains its share; the leader reports the
  validation metric, asks the pruner, and broadcasts the decision, so all ranks stop together.
- Resume (`run_study` on a storage file that already holds the study) guarantees: finished trials are kept
  and count towards the budget; trials left RUNNING by a process that is gone (killed, node lost) are marked
  FAIL and re-queued with the same parameters (up to 3 times) (Optuna's `RetryHeartbeatStaleTrialCallback`);
  and the sampler continues instead of replaying: its seed is derived from (seed, worker, trials already in
  the study), so the random draws of random search, of TPE/CMA-ES start-up and of the grid order differ from
  those of the earlier run. Model-based samplers (TPE, CMA-ES) rebuild their model from the stored trials.
  Not guaranteed: the same sequence of trials as an uninterrupted run (a resumed study draws from a
  different, equally valid random stream); runs on other hosts cannot be checked for being over.
- Bad input is refused before any trial starts: an inconsistent space (`SearchSpaceError`), an unknown
  hyperparameter or metric (`ObjectiveError`), a storage file that holds another study or the same
  study with another space/objective/sampler (`StudyMismatch`).

Taught in curriculum/06_hpo.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from hepml_kit.hpo.objective import TestbedObjective, TrialDiverged
from hepml_kit.hpo.space import SearchSpace

__all__ = [
    "PRUNERS", "SAMPLERS", "StudyBusy", "StudyMismatch", "StudySpec", "make_pruner", "make_sampler",
    "open_storage", "open_study", "retry_stale_trials", "run_study", "sampler_seed", "study_history",
    "trial_loop",
]

SAMPLERS = ("random", "grid", "tpe", "cmaes")
PRUNERS = ("none", "asha", "hyperband", "median")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyMismatch(ValueError):
    """The storage file holds another study, or this study with a different set-up."""


class StudyBusy(RuntimeError):
    """A live process is still running trials of this study."""


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to join a study (it travels to the engines by pickle).

    Args:
        name: study name (one study per storage file).
        space: the `SearchSpace`.
        objective: the `TestbedObjective` (model, metric, direction, epochs).
        sampler: one of `SAMPLERS`; pruner: one of `PRUNERS`.
        storage: ``None`` (in memory, one process), a journal file path, or ``"sqlite:///path.db"``.
        seed: sampler seed (worker w of a new study uses ``seed + w``; a resumed study see `sampler_seed`).
        n_startup_trials: random trials before TPE/CMA-ES start modelling.
        min_epochs / reduction_factor: the first rung and the keep-1-in-η of ASHA/Hyperband.
    """

    name: str
    space: SearchSpace
    objective: TestbedObjective
    sampler: str = "tpe"
    pruner: str = "none"
    storage: str | None = None
    seed: int = 0
    n_startup_trials: int = 5
    min_epochs: int = 1
    reduction_factor: int = 3

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner must be one of {PRUNERS}, got {self.pruner!r}")
        if not isinstance(self.space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace (SearchSpace.from_dict for the dict form), "
                            f"got {type(self.space).__name__}")
        if not 1 <= self.min_epochs <= self.objective.epochs:
            raise ValueError(f"min_epochs must be in [1, epochs={self.objective.epochs}], got "
                             f"{self.min_epochs}")

    def signature(self) -> dict:
        """What must match for a stored study to be continued by this spec."""
        return {"space": self.space.fingerprint(), "objective": repr(self.objective),
                "sampler": self.sampler, "pruner": self.pruner}


def sampler_seed(spec: StudySpec, worker: int = 0, trials_before: int = 0) -> int:
    """The seed of worker `worker`'s sampler when the study already holds `trials_before` trials.

    A new study: ``spec.seed + worker``. A continued one: a seed derived from (seed, worker, trials_before)
    by NumPy's `SeedSequence`, so a resumed run does not replay the random draws of the run it continues
    (every run that added trials leaves the count higher, so no two runs share a seed).
    """
    if trials_before == 0:
        return spec.seed + worker
    import numpy as np

    return int(np.random.SeedSequence([spec.seed & 0xFFFFFFFF, worker, trials_before]).generate_state(1)[0])


def make_sampler(spec: StudySpec, worker: int = 0, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of `spec` for `worker`, seeded by `sampler_seed` (`trials_before`: trials already
    stored)."""
    seed = sampler_seed(spec, worker, trials_before)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.space.grid(), seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                          constant_liar=True)
    with warnings.catch_warnings():  # categorical parameters fall back to random sampling, said once here
        warnings.simplefilter("ignore")
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                            warn_independent_sampling=False)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_epochs,
                                                      reduction_factor=spec.reduction_factor)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_epochs,
                                              max_resource=spec.objective.epochs,
                                              reduction_factor=spec.reduction_factor)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                           n_warmup_steps=spec.min_epochs)
    return optuna.pruners.NopPruner()


def open_storage(storage: str | None):
    """``None`` -> in memory; ``sqlite:///x.db`` (or any RDB URL) -> `RDBStorage`; else a journal file."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    path = os.fspath(storage)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            first = f.readline()
        try:
            ok = "op_code" in json.loads(first)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise StudyMismatch(f"{path} is not an Optuna journal file (its first line is {first[:60]!r})")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    except Exception as e:  # not a journal (e.g. some other file): say which file
        raise StudyMismatch(f"{storage} is not an Optuna journal file ({type(e).__name__}: {e})") from e


def open_study(spec: StudySpec, worker: int = 0, *, resume: bool = True, storage=None) -> optuna.Study:
    """Create the study, or load it and check it is the same study; with `resume`, retry stale trials.

    A loaded study's sampler is seeded from the number of trials it holds (`sampler_seed`), so it does not
    repeat the parameter sets the earlier run drew.

    Everything here runs before any trial: the space and objective are checked, the storage file must
    hold this study (or nothing), set up the same way.
    """
    spec.objective.check(spec.space)
    storage = storage if storage is not None else open_storage(spec.storage)
    try:
        names = [s.study_name for s in storage.get_all_studies()]
    except Exception as e:
        raise StudyMismatch(f"cannot read studies from {spec.storage}: {type(e).__name__}: {e}") from e
    others = [n for n in names if n != spec.name]
    if others:
        raise StudyMismatch(f"{spec.storage} holds study {others[0]!r}, not {spec.name!r}: "
                            "give this study its own storage file (or name it "
                            f"{others[0]!r} to continue that one)")
    if spec.name not in names:
        study = optuna.create_study(direction=spec.objective.direction, study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec, worker), pruner=make_pruner(spec))
        study.set_user_attr("hepml_kit", spec.signature())
        return study
    # a continued study: the sampler goes on from where the stored trials left it, not from the start
    stored_trials = len(storage.get_all_trials(storage.get_study_id_from_name(spec.name), deepcopy=False))
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec),
                              sampler=make_sampler(spec, worker, stored_trials))
    stored = study.user_attrs.get("hepml_kit")
    if stored is None:
        raise StudyMismatch(f"study {spec.name!r} in {spec.storage} was not made by "
                            "hepml_kit.hpo; use a new file")
    diff = [k for k, v in spec.signature().items() if stored.get(k) != v]
    if diff:
        lines = [f"  {k}: stored {stored.get(k)} / now {spec.signature()[k]}" for k in diff]
        raise StudyMismatch(f"study {spec.name!r} in {spec.storage} was set up differently "
                            f"({', '.join(diff)}):\n" + "\n".join(lines))
    if resume:
        retry_stale_trials(study)
    return study


def retry_stale_trials(study: optuna.Study, max_retry: int = 3) -> list[int]:
    """Mark RUNNING trials whose process is gone as FAIL and queue a retry of each; return their numbers.

    Raises `StudyBusy` if a RUNNING trial's process (or, for a trial asked for a moment ago that has no
    pid yet, any process registered as working on the study) is still alive on this host. Processes on
    other hosts cannot be checked: resuming assumes the earlier run there is over.
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    here, me = socket.gethostname(), os.getpid()
    live_workers = [int(k.rsplit(":", 1)[1]) for k in study.user_attrs if k.startswith(f"worker:{here}:")]
    live_workers = [pid for pid in live_workers if pid != me and _alive(pid)]
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        busy = (pid is None and live_workers) or (host == here and pid not in (None, me) and _alive(pid))
        if busy:
            who = pid if pid is not None else live_workers[0]
            raise StudyBusy(f"trial {t.number} of study {study.study_name!r} is still "
                            f"being run by pid {who} on {here}; wait for it or stop "
                            "that process before resuming")
        stale.append(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for t in stale:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            retry(study, study._storage.get_trial(t._trial_id))
    return [t.number for t in stale]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _study_done(study: optuna.Study, spec: StudySpec, n_trials, budget_epochs) -> bool:
    """Whether to stop asking for trials: queued retries always run; then the trial count, the trial-epoch
    budget and an exhausted grid stop the study. (Parallel workers may overshoot by the trials in flight.)"""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return False
    # trials that used up a place: finished, running, or failed by themselves (diverged, raised);
    # a stale trial (failed by `retry_stale_trials`, no "error") is replaced by its retry instead
    started = sum(t.state in _FINISHED or t.state == TrialState.RUNNING
                  or (t.state == TrialState.FAIL and "error" in t.user_attrs) for t in trials)
    spent = sum(len(t.intermediate_values) for t in trials)
    return ((n_trials is not None and started >= n_trials)
            or (budget_epochs is not None and spent >= budget_epochs)
            or (spec.sampler == "grid" and study.sampler.is_exhausted(study)))


def _train_trial(spec: StudySpec, params: dict, trial, group, leader: int) -> float:
    """Every rank of a trial: train epoch by epoch; the leader reports and asks the pruner, all ranks obey."""
    import torch.distributed as dist

    run = spec.objective.start(params, group=group)
    value = None
    for epoch in range(1, spec.objective.epochs + 1):
        metrics = run.train_epoch()
        value = run.value(metrics)
        decision = [False]
        if trial is not None:
            trial.report(value, step=epoch)
            decision = [epoch < spec.objective.epochs and trial.should_prune()]  # the last epoch completes
        if group is not None:
            dist.broadcast_object_list(decision, src=leader, group=group)  # all ranks stop together
        if decision[0]:
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
    return value


def trial_loop(spec: StudySpec, n_trials=None, budget_epochs=None, *, study=None, group=None, leader: int = 0,
               worker: int = 0) -> list[dict]:
    """Run trials until the study is done; returns the parameters of the trials this rank trained.

    With a process `group` of several ranks every rank calls this; `leader` (a global rank) talks to the
    study through `study.optimize`, the other ranks follow the parameters and decisions it broadcasts.
    """
    import torch.distributed as dist

    ran: list[dict] = []
    if group is not None and dist.get_rank() != leader:  # a follower: train whatever the leader sends
        while True:
            msg = [None]
            dist.broadcast_object_list(msg, src=leader, group=group)
            if msg[0] is None:
                return ran
            ran.append(msg[0])
            try:
                _train_trial(spec, msg[0], None, group, leader)
            except (optuna.TrialPruned, TrialDiverged):
                pass

    if study is None:
        study = open_study(spec, worker, resume=False)  # the driver resumed it before starting the workers
    study.set_user_attr(f"worker:{socket.gethostname()}:{os.getpid()}", True)  # see `retry_stale_trials`

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = spec.space.suggest(trial)
        if group is not None:
            dist.broadcast_object_list([params], src=leader, group=group)  # every rank trains the same params
        ran.append(params)
        try:
            return _train_trial(spec, params, trial, group, leader)
        except optuna.TrialPruned:
            raise
        except BaseException as e:  # recorded, so the trial is not mistaken for a stale one later
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise

    def stop_when_done(study: optuna.Study, trial) -> None:
        if _study_done(study, spec, n_trials, budget_epochs):
            study.stop()

    try:
        if not _study_done(study, spec, n_trials, budget_epochs):
            study.optimize(objective, callbacks=[stop_when_done], catch=(TrialDiverged,),
                           gc_after_trial=False)
    finally:
        if group is not None:
            dist.broadcast_object_list([None], src=leader, group=group)
    return ran


def _optimize_on_rank(spec: StudySpec, n_trials, budget_epochs, ranks_per_trial: int) -> list[dict]:
    """Runs on every worker: split the ranks into trial groups and run the loop (one study, many groups)."""
    import torch.distributed as dist

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial per engine is noise

    rank, world = dist.get_rank(), dist.get_world_size()
    groups = [dist.new_group(list(range(s, s + ranks_per_trial))) for s in range(0, world, ranks_per_trial)]
    index = rank // ranks_per_trial
    group = groups[index] if ranks_per_trial > 1 else None
    return trial_loop(spec, n_trials, budget_epochs, group=group,
                      leader=index * ranks_per_trial, worker=index)


def run_study(spec: StudySpec, *, n_trials: int | None = None, budget_epochs: int | None = None, workers=None,
              ranks_per_trial: int = 1, resume: bool = True, timeout: float = 3600.0) -> optuna.Study:
    """Run (or continue) a study until `n_trials` trials finished or `budget_epochs` trial-epochs were spent.

    Args:
        workers: a started `hepml_kit.Workers` pool for parallel trials (needs a storage file), or ``None`` to
            run trials one after the other in this process.
        ranks_per_trial: ranks per trial; 2 makes each trial a 2-rank DDP job (``workers.n`` must be a
        multiple). resume: retry trials left RUNNING by a dead process (see `retry_stale_trials`). A study
        found in the
            storage is always continued (see the module docstring for what that guarantees).
    Returns:
        the `optuna.Study` (reloaded from storage after parallel runs, with ``params_by_rank``: the parameters
        each rank trained in this run).
    """
    if spec.sampler == "grid" and n_trials is None and budget_epochs is None:
        n_trials = spec.space.grid_size()
    if n_trials is None and budget_epochs is None:
        raise ValueError("give n_trials or budget_epochs (trial-epochs) so the study knows when to stop")
    if workers is None and ranks_per_trial != 1:
        raise ValueError("a trial of several ranks needs workers: run_study(..., workers=hk.Workers(n=2))")
    if workers is not None:
        if spec.storage is None:
            raise ValueError("parallel trials share the study through a storage file: "
                             "set StudySpec(storage=...)")
        if ranks_per_trial < 1 or workers.n % ranks_per_trial:
            raise ValueError(f"workers.n={workers.n} is not a multiple of ranks_per_trial={ranks_per_trial}")
    study = open_study(spec, resume=resume)  # validation and resume happen here, before any trial
    if workers is None:
        trial_loop(spec, n_trials, budget_epochs, study=study)
        return study
    trained = workers.run(_optimize_on_rank, spec, n_trials, budget_epochs, ranks_per_trial, timeout=timeout)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage))
    study.params_by_rank = trained  # what each rank trained in this run (followers mirror their leader)
    return study


def study_history(study: optuna.Study):
    """One row per trained epoch, in the order compute was spent: the best-so-far curve's raw material.

    Columns: trial, epoch, value, state, compute (cumulative trial-epochs), best_so_far (best validation
    metric any trial has reported so far, i.e. the best model seen). Epochs of parallel trials are placed in
    time by interpolating between each trial's start and end.
    """
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        n = len(t.intermediate_values)
        if n == 0:
            continue
        t0 = t.datetime_start.timestamp() if t.datetime_start else float(t.number)
        t1 = t.datetime_complete.timestamp() if t.datetime_complete else t0
        for i, (epoch, value) in enumerate(sorted(t.intermediate_values.items()), start=1):
            rows.append({"trial": t.number, "epoch": epoch, "value": value, "state": t.state.name,
                         "params": json.dumps(t.params, sort_keys=True), "_t": t0 + (t1 - t0) * i / n})
    df = pd.DataFrame(rows, columns=["trial", "epoch", "value", "state", "params", "_t"])
    df = df.sort_values(["_t", "trial", "epoch"], kind="stable").drop(columns="_t").reset_index(drop=True)
    df["compute"] = range(1, len(df) + 1)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    df["best_so_far"] = df["value"].cummax() if maximize else df["value"].cummin()
    return df
