"""Many-model training: one calorimeter GAN per (particle, |eta| bin), farmed out over the workers.

FastCaloGAN (ATLAS AtlFast3, Comput. Softw. Big Sci. 6 (2022) 7) trains 300 independent GANs, one per
particle and |eta| slice: no communication between models, so the work is a queue of jobs, not a
data-parallel job. `farm_models` runs such a queue on a `hepml_kit.Workers` pool:

- every rank takes the next unclaimed job (a claim is a file created with O_EXCL in `results_dir`, so two
  ranks never train the same model, on one machine or on a shared file system), trains it, and writes
  the model's result to ``results_dir/done/<job>.json`` (atomically: written aside, then renamed);
- a model that raises is written to ``failed/<job>.attempt<k>.json`` and the rank moves on; after the
  pass, only the failed models are tried again (up to `retries` times), never the finished ones;
- a rerun with the same `results_dir` skips models already done, so a farm killed half-way continues;
- the notebook shows a progress bar filled from the result files while the workers run;
- every model's result ends in one pandas table.

Any testbed farms too (a built-in name, a learner's own `Testbed` or a spec ``file.py:NAME``): pass it as
``train=`` and each job trains one ensemble member, seeded by the job's index (`seed_jobs`), reporting the
testbed's metrics (`TrainTestbed`).

Taught in curriculum/07_ensembles.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FarmJob", "TrainTestbed", "farm_jobs", "farm_models", "farm_table", "seed_jobs"]


@dataclass(frozen=True)
class FarmJob:
    """One model of the farm: a particle and an |eta| bin."""

    particle: str
    eta_bin: int

    @property
    def key(self) -> str:
        return f"{self.particle}_eta{self.eta_bin:02d}"


def farm_jobs(particles, eta_bins) -> list[FarmJob]:
    """Every (particle, |eta| bin) pair, particles first; duplicates are refused."""
    jobs = [FarmJob(p, int(b)) for p in particles for b in eta_bins]
    if not jobs:
        raise ValueError("the farm needs at least one particle and one |eta| bin")
    if len({j.key for j in jobs}) != len(jobs):
        raise ValueError(f"duplicate jobs in {[j.key for j in jobs]}")
    return jobs


def seed_jobs(n: int, label: str = "model") -> list[FarmJob]:
    """`n` members of an ensemble of one testbed: ``FarmJob(label, i)``, member i trained with seed i."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"an ensemble needs n >= 1 members, got {n!r}")
    return farm_jobs([label], range(n))


@dataclass(frozen=True)
class TrainTestbed:
    """A farm's ``train`` for any testbed: job ``(label, i)`` trains member i (seed ``seed + i``) with `fit`
    on the preset's training settings (``epochs`` may be overridden) and returns its metrics."""

    testbed: Any

    def __call__(self, label: str, member: int, *, preset: str = "tiny", epochs: int | None = None,
                 seed: int = 0, device: str = "cpu") -> dict:
        from hepml_kit.models import fit, get

        tb = get(self.testbed)
        cfg, d = tb.config(preset), tb.train_defaults[preset]
        member_seed = seed + int(member)
        data = tb.generate(cfg, int(d["events"]), member_seed)
        model, history = fit(tb, cfg, data, epochs=int(epochs or d["epochs"]),
                             batch_size=int(d["batch_size"]), lr=float(d["lr"]), seed=member_seed,
                             device=device, log=None)
        test = tb.generate(cfg, int(d.get("test_events", max(1, d["events"] // 4))), member_seed + 1)
        return {**{k: float(v) for k, v in tb.metrics(model, test).items()}, "final_loss": history[-1],
                "seed": member_seed}


def _default_train():
    from hepml_kit.models.calo_gan import train_calo_gan

    return train_calo_gan


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, default=_plain))
    os.replace(tmp, path)  # atomic: a reader sees the whole file or none


def _plain(x):
    try:
        return x.item()  # numpy / torch scalars
    except Exception:
        return str(x)


def _claim(results: Path, job: FarmJob, attempt: int) -> bool:
    try:
        fd = os.open(results / "claims" / f"{job.key}.attempt{attempt}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def _farm_on_rank(jobs: list[FarmJob], attempt: int, results_dir: str, train: Callable | None,
                  kwargs: dict) -> int:
    """Runs on every rank: claim, train and record jobs until none is left; returns how many it trained."""
    import socket

    rank = int(os.environ.get("RANK", 0))
    train = train or _default_train()
    results, ran = Path(results_dir), 0
    for job in jobs:
        if (results / "done" / f"{job.key}.json").exists() or not _claim(results, job, attempt):
            continue
        ran += 1
        t0 = time.perf_counter()
        where = {"particle": job.particle, "eta_bin": job.eta_bin, "attempt": attempt, "rank": rank,
                 "host": socket.gethostname()}
        try:
            out = dict(train(job.particle, job.eta_bin, **kwargs))
        except Exception as e:
            _write_json(results / "failed" / f"{job.key}.attempt{attempt}.json",
                        {**where, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                         "seconds": time.perf_counter() - t0})
            continue
        out.update(where, seconds=time.perf_counter() - t0)
        _write_json(results / "done" / f"{job.key}.json", out)
    return ran


def farm_models(jobs: list[FarmJob], *, results_dir: str | os.PathLike, workers=None,
                train: Callable | None = None, retries: int = 1, progress: bool = True,
                timeout: float = 3600.0, **train_kwargs):
    """Train one model per job over `workers`; return the table of all models (see `farm_table`).

    Args:
        jobs: from `farm_jobs`.
        results_dir: where results persist; models already done there are skipped.
        workers: a `hepml_kit.Workers` pool, or ``None`` to train here one after the other.
        train: ``train(particle, eta_bin, **train_kwargs) -> dict`` of plain numbers (default
            `hepml_kit.models.calo_gan.train_calo_gan`, e.g. with ``preset="tiny", seed=0, epochs=5``), or a
            testbed (name, `Testbed` or spec): one ensemble member per job (`TrainTestbed`, `seed_jobs`).
        retries: how many more passes a failed model gets.
    """
    if not jobs:
        raise ValueError("no jobs: build them with farm_jobs(particles, eta_bins)")
    from hepml_kit.models import Testbed

    if isinstance(train, (Testbed, str)):
        train = TrainTestbed(train)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    results = Path(results_dir)
    for sub in ("done", "failed", "claims"):
        (results / sub).mkdir(parents=True, exist_ok=True)
    done_before = {j.key for j in jobs if (results / "done" / f"{j.key}.json").exists()}
    first = 1 + max((int(p.name.rsplit("attempt", 1)[1]) for p in (results / "claims").glob("*.attempt*")),
                    default=0)  # attempts of earlier calls keep their numbers
    bar = _progress_bar(len(jobs), len(done_before), progress)
    try:
        for attempt in range(first, first + retries + 1):
            pending = [j for j in jobs if not (results / "done" / f"{j.key}.json").exists()]
            if not pending:
                break
            _run_pass(pending, attempt, results, workers, train, train_kwargs, timeout, bar, jobs)
    finally:
        if bar is not None:
            bar.close()
    return farm_table(jobs, results, done_before)


def _run_pass(pending, attempt, results, workers, train, train_kwargs, timeout, bar, jobs) -> None:
    """One pass over the pending jobs; the bar follows the result files while the ranks work."""
    if workers is None:
        _farm_on_rank(pending, attempt, str(results), train, train_kwargs)
        _update(bar, results, jobs)
        return
    _send_by_value(train)
    error: list[BaseException] = []

    def work():
        try:
            workers.run(_farm_on_rank, pending, attempt, str(results), train, train_kwargs, timeout=timeout)
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        _update(bar, results, jobs)
    if error:
        raise error[0]


def _send_by_value(fn) -> None:
    """A train function from a test file or script the engines cannot import travels by value (as `fn`
    does)."""
    import sys

    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None) or ""
    if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("hepml_kit") \
            and "site-packages" not in path and not path.startswith(sys.base_prefix):
        cloudpickle.register_pickle_by_value(module)


def _progress_bar(total: int, initial: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="models trained", unit="model")


def _update(bar, results: Path, jobs) -> None:
    if bar is not None:
        done = sum((results / "done" / f"{j.key}.json").exists() for j in jobs)
        bar.update(done - bar.n)


def farm_table(jobs: list[FarmJob], results_dir: str | os.PathLike, done_before: set | None = None):
    """One row per job: ``status`` (done / failed / pending), ``attempts``, ``rank``, ``seconds``, ``reused``
    (done before this call) and every number the model reported, indexed by (particle, eta_bin)."""
    import pandas as pd

    results, rows = Path(results_dir), []
    for j in jobs:
        failures = sorted((results / "failed").glob(f"{j.key}.attempt*.json"))
        done = results / "done" / f"{j.key}.json"
        if done.exists():
            row = json.loads(done.read_text())
            row["status"] = "done"
        elif failures:
            last = json.loads(failures[-1].read_text())
            row = {k: last[k] for k in ("attempt", "rank", "host", "seconds", "error")}
            row["status"] = "failed"
        else:
            row = {"status": "pending"}
        row.update(particle=j.particle, eta_bin=j.eta_bin, failed_attempts=len(failures),
                   reused=j.key in (done_before or set()))
        if failures and "error" not in row:
            # a model that failed, then succeeded
            row["error"] = json.loads(failures[-1].read_text())["error"]
        rows.append(row)
    df = pd.DataFrame(rows).set_index(["particle", "eta_bin"])
    first = [c for c in ("status", "attempt", "failed_attempts", "rank", "seconds", "reused") if c in df]
    return df[first + [c for c in df.columns if c not in first]]
