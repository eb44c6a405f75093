"""The thing every HPO backend optimises: a testbed model's validation physics metric, epoch by epoch.

`TestbedObjective` names a testbed model (``hepml_kit.models.get(name)``), the metric to optimise (one of
the keys its ``metrics(model, data)`` returns, e.g. the waveform VAE's anomaly AUC) and the direction.
A trial is a `TrialRun`: build the model from the preset's config with the trial's hyperparameters applied,
then ``train_epoch()`` returns the validation metrics after each epoch, which is what pruners (successive
halving, Hyperband, ASHA) and population-based training act on. Hyperparameters are the fields of the
model's config dataclass plus the training settings ``lr`` and ``batch_size``.

A trial may itself be data-parallel: give `TrialRun` a ``torch.distributed`` process group and each rank
trains on its share of the events with the model wrapped in `DistributedDataParallel`. A trial trains
through the kit's one driver: its model, optimizer and steps are a `hepml_kit.parallel.driver.Loop`
built from a `RunSpec`, kept across epochs.

Everything that can be wrong is checked by `check(space)` before any trial starts: unknown
hyperparameter names, a metric the model doesn't report, a direction that is neither min nor max.

Taught in curriculum/06_hpo.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hepml_kit.models import get as get_testbed
from hepml_kit.models import to_device
from hepml_kit.parallel.driver import Loop, RunSpec
from hepml_kit.parallel.spec import default_device

__all__ = ["ObjectiveError", "TestbedObjective", "TrialDiverged", "TrialRun", "TRAINING_SETTINGS"]

TRAINING_SETTINGS = ("lr", "batch_size")  # hyperparameters that are not fields of the model config


class ObjectiveError(ValueError):
    """The objective cannot run this study (unknown hyperparameter, unreported metric, bad direction)."""


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite: the trial stops and counts as failed."""


@dataclass(frozen=True)
class TestbedObjective:
    """Train testbed `model` and score it by validation `metric` after every epoch.

    Args:
        model: testbed name, e.g. ``"waveform_vae"`` (see ``hepml_kit.models.names()``).
        metric: key of the model's ``metrics()`` dict to optimise, e.g. ``"auc"``.
        direction: ``"maximize"`` or ``"minimize"``.
        preset: model preset (``"tiny" | "small" | "full"``).
        epochs: the most epochs one trial trains (the "resource" of successive halving).
        events / val_events: training / validation events (default: the preset's training events, and half).
        lr / batch_size: defaults for trials whose search space does not set them (default: the preset's).
        fixed: config fields or training settings fixed for every trial, e.g. ``{"latent": 8}``.
        seed: one seed for data and weight initialisation, so two trials differ only by their hyperparameters.
        device: ``"auto"`` (`hepml_kit.parallel.spec.default_device`: the rank's GPU when there is one and
            the process group, if any, is nccl), ``"cpu"`` or ``"cuda"``.
    """

    __test__ = False  # not a pytest class, despite the name

    model: str
    metric: str
    direction: str = "maximize"
    preset: str = "tiny"
    epochs: int = 6
    events: int | None = None
    val_events: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    fixed: dict = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.direction not in ("maximize", "minimize"):
            raise ObjectiveError(f"direction must be 'maximize' or 'minimize', got {self.direction!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ObjectiveError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        get_testbed(self.model)  # unknown model -> ValueError naming the known ones
        unknown = set(self.fixed) - set(self.hyperparameter_names())
        if unknown:
            raise ObjectiveError(f"fixed settings {sorted(unknown)} are not hyperparameters of {self.model}; "
                                 f"known: {', '.join(self.hyperparameter_names())}")

    # --- what the objective offers ----------------------------------------------------------------
    @property
    def testbed(self):
        return get_testbed(self.model)

    @property
    def mode(self) -> str:
        """``"max"`` or ``"min"`` (Ray Tune's spelling of the direction)."""
        return "max" if self.direction == "maximize" else "min"

    def base_config(self):
        return self.testbed.config(self.preset)

    def defaults(self) -> dict:
        d = self.testbed.train_defaults[self.preset]
        events = self.events or d["events"]
        return {
            "events": events,
            "val_events": self.val_events or max(events // 2, 1),
            "lr": self.lr if self.lr is not None else d["lr"],
            "batch_size": self.batch_size or d["batch_size"],
        }

    def hyperparameter_names(self) -> list[str]:
        cfg = self.base_config()
        fields = [f.name for f in dataclasses.fields(cfg)] if dataclasses.is_dataclass(cfg) else []
        return list(TRAINING_SETTINGS) + fields

    def validation_data(self):
        """The validation events every trial is scored on (the testbed's data dict, the same on all ranks)."""
        return _data(self, _apply(self.base_config(), self.fixed), "val", 0, 1)

    def reported_metrics(self) -> list[str]:
        """The metric names the model reports (measured once on an untrained model, cached per process)."""
        key = repr(self)
        if key not in _REPORTED:
            _REPORTED[key] = _reported_metrics(self)
        return _REPORTED[key]

    def check(self, space) -> None:
        """Raise `ObjectiveError` unless every hyperparameter of `space` exists and `metric` is reported."""
        known = self.hyperparameter_names()
        unknown = [n for n in space.names if n not in known]
        if unknown:
            raise ObjectiveError(f"search space has {unknown}, which {self.model} does not take; "
                                 f"hyperparameters are: {', '.join(known)}")
        reported = self.reported_metrics()
        if self.metric not in reported:
            raise ObjectiveError(f"{self.model} does not report a metric {self.metric!r}; "
                                 f"it reports: {', '.join(reported)}")

    def start(self, params: dict, group=None) -> TrialRun:
        """A fresh trial with `params` (on this rank's share of the data if `group` has several ranks)."""
        return TrialRun(self, params, group=group)


_REPORTED: dict[str, list[str]] = {}


def _reported_metrics(obj: TestbedObjective) -> list[str]:
    tb = obj.testbed
    cfg = _apply(obj.base_config(), obj.fixed)
    torch.manual_seed(obj.seed)
    model = tb.build(cfg)
    model.eval()
    with torch.no_grad():
        return sorted(tb.metrics(model, obj.validation_data()))


def _apply(cfg, params: dict):
    fields = {k: v for k, v in params.items() if k not in TRAINING_SETTINGS}
    return dataclasses.replace(cfg, **fields) if fields else cfg


_DATA: dict = {}


def _data(obj: TestbedObjective, cfg, split: str, rank: int, world: int):
    """Events for a split, generated once per process (trials share them: only hyperparameters differ).

    Data depend on the preset's config, not on a trial's hyperparameters, so don't search over
    config fields that shape the data (e.g. the waveform length)."""
    d = obj.defaults()
    n, seed = (d["events"], obj.seed) if split == "train" else (d["val_events"], obj.seed + 7919)
    key = (obj.model, obj.preset, repr(_apply(obj.base_config(), obj.fixed)), split, n, seed, rank, world)
    if key not in _DATA:
        if len(_DATA) > 8:
            _DATA.clear()
        _DATA[key] = obj.testbed.generate(cfg, n, seed, rank=rank, world_size=world)
    return _DATA[key]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return default_device()  # the kit's one device rule
    if device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


class TrialRun:
    """One trial's model, optimiser and data; `train_epoch` trains one epoch and returns validation metrics.

    `state_dict`/`load_state_dict` let population-based training copy a better trial's weights (the
    learning rate of the receiving trial is kept, as PBT then perturbs it).
    """

    def __init__(self, objective: TestbedObjective, params: dict, group=None):
        import torch.distributed as dist

        self.objective, self.params = objective, dict(params)
        tb, d = objective.testbed, objective.defaults()
        settings = {**d, **{k: v for k, v in {**objective.fixed, **params}.items() if k in TRAINING_SETTINGS}}
        self.lr, self.batch_size = float(settings["lr"]), int(settings["batch_size"])
        base = _apply(objective.base_config(), objective.fixed)
        self.cfg = _apply(base, params)
        self.device = _resolve_device(objective.device)
        self.group = group
        self.world = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        # the one driver's loop: the same initial weights on every rank and for every trial (the seed),
        # DDP over `group` when it has several ranks, the testbed's own optimizer
        spec = RunSpec(tb, preset=objective.preset, global_batch=self.batch_size * self.world,
                       lr=self.lr, seed=objective.seed, device=str(self.device), config=self.cfg,
                       optimizer="testbed", data="given", warmup_steps=0)
        self.loop = Loop(spec, ddp=group is not None, group=group, cfg=self.cfg)
        self.model, self.trained, self.optimizer = self.loop.model, self.loop.trained, self.loop.optimizer
        self._fresh_lrs = [[g["lr"] for g in o.param_groups] for o in self._optimizers()]
        self.train_data = _data(objective, base, "train", self.rank, self.world)
        self.epoch = 0
        self.history: list[dict] = []

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def train_epoch(self) -> dict:
        """Train one epoch on this rank's share; return the validation metrics (every rank computes them)."""
        tb = self.objective.testbed
        self.model.train()
        batches = list(tb.batches(self.train_data, self.batch_size, shuffle=True,
                                  seed=self.objective.seed + self.epoch))
        n = self._common_batch_count(len(batches))  # DDP ranks must take the same number of steps
        losses = self.loop.run(to_device(b, self.device) for b in batches[:n])
        mean_loss = sum(losses) / max(len(losses), 1)
        self.epoch += 1
        if not math.isfinite(mean_loss):
            raise TrialDiverged(f"training loss is {mean_loss} after epoch {self.epoch} with {self.params}")
        metrics = self.evaluate()
        metrics["train_loss"] = mean_loss
        self.history.append(metrics)
        return metrics

    def evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in
                    self.objective.testbed.metrics(self.model, self.objective.validation_data()).items()}

    def value(self, metrics: dict) -> float:
        return float(metrics[self.objective.metric])

    def _common_batch_count(self, n: int) -> int:
        if self.world == 1:
            return n
        import torch.distributed as dist

        t = torch.tensor([n], device=self.device if dist.get_backend(self.group) == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    # --- population-based training --------------------------------------------------------------
    def _optimizers(self) -> list:
        return list(self.optimizer) if isinstance(self.optimizer, (list, tuple)) else [self.optimizer]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self._optimizers()],
                "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for opt, s, lrs in zip(self._optimizers(), state["optimizers"], self._fresh_lrs):
            opt.load_state_dict(s)
            for g, lr in zip(opt.param_groups, lrs):  # keep this trial's (perturbed) learning rate
                g["lr"] = lr
        self.epoch = state["epoch"]
