"""A learner's own model as a `Testbed`: describe the work once, and every entry point of the kit takes it.

    from hepml_kit.models.user import testbed
    tb = testbed("deepsets", model=DeepSets, data=my_dataset, loss=my_loss)   # nn.Module factory, data, loss
    train(RunSpec(tb, steps=8), "ddp")                  # every strategy (on every rank of a pool)
    TestbedObjective(tb, metric="val_loss", direction="minimize")             # HPO, Optuna or Ray Tune
    served_model(tb, model=trained)                      # serving and the Triton export

Wherever the kit takes a built-in name (``"jet_transformer"``) it takes such a testbed, and
`hepml_kit.models.get` / the CLI also take a spec ``path/to/file.py:NAME`` or ``package.module:NAME``
naming one (`load`). Only what a technique needs is required: a model factory, data and a loss suffice
for single-device and data-parallel training (hand-written, DDP, FSDP2, Lightning), profiling, the
ladder, the scaling study and HPO; tensor parallelism needs a plan (``tensor_parallel=``, as
`hepml_kit.parallel.tensor` reads it), pipelines a `StackRecipe` (``pipeline=``); asking for one
without it fails before any work with the argument to add (`require_plan`).

Data: a map-style `torch.utils.data.Dataset`, a folder of the kit's shards (``hepml-kit data convert``
output: one item per event, ``{branch: array}``) or a dict of equal-length columns. Items become batch
dicts through ``collate`` (default: torch's ``default_collate``; tuple items get the keys ``fields``).
The last ``holdout`` share of the items (or ``val_data``) is the validation set: ``generate`` draws
training samples only, and ``metrics`` always measures the validation set (whatever data it is handed),
so no entry point ever scores a model on what it trained on.

Taught in curriculum/13_your_model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hepml_kit.models._lightning import LazyClass
from hepml_kit.models._testbed import Testbed, to_device

__all__ = ["PLAN_NEEDS", "Items", "Rows", "UserTestbed", "is_spec", "load", "pad_ragged", "require_plan",
           "samples", "send_by_value", "testbed"]

PRESETS = ("tiny", "small", "full")
# which Testbed.extra entry each model-parallel strategy needs, and the testbed() argument that gives it
PLAN_NEEDS = {**dict.fromkeys(("tensor", "megatron", "fsdp_tp"), "tensor_parallel"),
              **dict.fromkeys(("gpipe", "1f1b", "dp_pp", "gpipe_by_hand", "1f1b_by_hand"), "pipeline")}
_HOW = {"tensor_parallel": "tensor_parallel={'mlp': (('<column-wise Linear>',), ('<row-wise Linear>',))} "
                           "naming its Linear layers (see hepml_kit.parallel.tensor)",
        "pipeline": "pipeline=StackRecipe(...) naming its entry modules, layer stack and exit modules "
                    "(see hepml_kit.parallel.pipeline)"}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class UserTestbed(Testbed):
    """A `Testbed` made by `testbed`: the same fields; compared and hashed by identity (its `extra` is a
    dict), so caches keyed on the testbed (HPO's data cache) work; its repr is its name, the same in every
    process (HPO studies match workers by the objective's repr)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __repr__(self) -> str:
        return f"UserTestbed({self.name!r})"

    def __reduce__(self):
        """Pickled by (pip's) cloudpickle whatever pickler asks — Ray's vendored cloudpickle, plain pickle for
        spawned processes — so the learner's functions travel by value (`send_by_value`) everywhere."""
        import cloudpickle

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _unpickle_testbed, (cloudpickle.dumps(fields),)


def _unpickle_testbed(blob: bytes) -> UserTestbed:
    import cloudpickle

    return UserTestbed(**cloudpickle.loads(blob))


def require_plan(tb: Testbed, strategy: str) -> None:
    """Raise `ValueError` naming what to add when `strategy` needs a plan that user testbed `tb` lacks."""
    need = PLAN_NEEDS.get(strategy)
    if need and need not in tb.extra and isinstance(tb, UserTestbed):
        raise ValueError(f"strategy {strategy!r} needs a {need.replace('_', '-')} plan, which testbed "
                         f"{tb.name!r} does not give: add {_HOW[need]} to hepml_kit.models.user.testbed(...)")


# --------------------------------------------------------------------------------------------------------
# Data: a user's items, the training draw, batches
# --------------------------------------------------------------------------------------------------------


class Rows(torch.utils.data.Dataset):
    """Map-style rows of a table: ``{column: value}`` per item; jagged (awkward) columns come as numpy arrays.

    `source` is a dict of equal-length columns or a folder of the kit's shards (read once, checked)."""

    def __init__(self, source: dict | str | os.PathLike):
        if not isinstance(source, dict):
            from hepml_kit.data import ShardSet

            shards = ShardSet(source)
            source = shards.read(0, len(shards))
        lengths = {k: len(v) for k, v in source.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"columns differ in length: {lengths}")
        self.columns = {k: _rows(v) for k, v in source.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(v[int(i)]) for k, v in self.columns.items()}


def _rows(column):
    """A column as something cheap to index per row: numpy as it is; a jagged awkward column split once into
    a list of numpy arrays (indexing awkward per row costs tens of microseconds)."""
    if not type(column).__module__.startswith("awkward"):
        return np.asarray(column) if not isinstance(column, (list, torch.Tensor)) else column
    import awkward as ak

    if column.ndim == 1:
        return ak.to_numpy(column)
    counts = ak.to_numpy(ak.num(column, axis=1))
    return np.split(ak.to_numpy(ak.flatten(column, axis=1)), np.cumsum(counts)[:-1])


def pad_ragged(rows: list, length: int | None = None,
               dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths (arrays ``[n_i, ...]``) -> (padded ``[B, length, ...]``, mask ``[B,
    length]``,
    True for real entries); `length` defaults to the longest row. For a collate of jets' tracks."""
    rows = [torch.as_tensor(np.asarray(r), dtype=dtype) for r in rows]
    length = max([len(r) for r in rows] + [1]) if length is None else int(length)
    out = torch.zeros((len(rows), length, *rows[0].shape[1:]), dtype=dtype)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = min(len(r), length)
        out[i, :n], mask[i, :n] = r[:n], True
    return out, mask


class Items:
    """The dataset a data dict draws from. It has no length, so code that slices a testbed's data dict per
    sample (``{k: v[idx]}``, the ladder) slices the ``index`` and keeps this whole."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, i: int):
        return self.dataset[int(i)]


def samples(dataset, indices) -> dict:
    """A user testbed's data: ``{"index": item numbers, "items": Items(dataset)}`` (what `generate`
    returns)."""
    return {"index": np.asarray(indices, dtype=np.int64), "items": Items(dataset)}


@dataclasses.dataclass(frozen=True)
class _Data:
    """The testbed's data functions (a picklable object, not closures, so pools and Lightning can send it)."""

    train: Any
    val: Any
    collate: Callable | None
    fields: tuple

    def generate(self, cfg, n: int, seed: int, rank: int = 0, world_size: int = 1) -> dict:
        """`n` training items, order drawn by `seed` (cycled when `n` exceeds them); this rank's share."""
        order = np.random.default_rng(seed).permutation(len(self.train))
        return samples(self.train, np.resize(order, int(n))[rank::world_size])

    def batches(self, data: dict, batch_size: int, shuffle: bool = False, seed: int = 0):
        idx, items = data["index"], data["items"]
        if shuffle:
            idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        for i in range(0, len(idx), batch_size):
            yield self.collate_items([items[j] for j in idx[i : i + batch_size]])

    def collate_items(self, items: list) -> dict:
        batch = (self.collate or torch.utils.data.default_collate)(items)
        if isinstance(batch, (tuple, list)):
            if len(batch) != len(self.fields):
                raise ValueError(f"items have {len(batch)} parts but fields names {len(self.fields)}: "
                                 f"pass fields=(...) with one name per part")
            batch = dict(zip(self.fields, batch))
        if not isinstance(batch, dict):
            raise TypeError(f"a batch must be a dict of tensors (or tuple items with fields=...), got "
                            f"{type(batch).__name__}")
        return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}

    def val_batches(self, batch_size: int = 256) -> list[dict]:
        return list(self.batches(samples(self.val, np.arange(len(self.val))), batch_size))


@dataclasses.dataclass(frozen=True)
class _Metrics:
    """``metrics(model, data)`` of a user testbed: the validation loss plus the user's own figures, always
    on the validation set (the `data` handed in is ignored: it is a draw of training items)."""

    data: _Data
    loss: Callable
    user: Callable | None

    @torch.no_grad()
    def __call__(self, model: nn.Module, data=None) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        batches = [to_device(b, device) for b in self.data.val_batches()]
        sizes = [_samples_in(b) for b in batches]
        total = sum(float(self.loss(model, b)) * n for b, n in zip(batches, sizes))
        out = {"val_loss": total / max(sum(sizes), 1)}
        if self.user is not None:
            out.update({k: float(v) for k, v in self.user(model, batches).items()})
        model.train(was_training)
        return out


def _samples_in(batch: dict) -> int:
    return int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])


def _no_bar(metrics: dict) -> bool:
    """No physics bar was given: `hepml-kit validate` reports the metrics and passes."""
    return True


@dataclasses.dataclass(frozen=True)
class _Build:
    factory: Callable
    takes_config: bool

    def __call__(self, cfg) -> nn.Module:
        model = self.factory(cfg) if self.takes_config else self.factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory returned {type(model).__name__}, not an nn.Module")
        return model


@dataclasses.dataclass(frozen=True)
class _Config:
    value: Any

    def __call__(self, preset: str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        return self.value(preset) if callable(self.value) else self.value


@dataclasses.dataclass(frozen=True)
class _Flops:
    value: Any

    def __call__(self, cfg) -> float:
        return float(self.value(cfg) if callable(self.value) else self.value)


# --------------------------------------------------------------------------------------------------------
# Lightning: one generic LightningModule over any build + loss (made on first use; lightning is slow to
# import)
# --------------------------------------------------------------------------------------------------------


def _make_lightning_class() -> type:
    import lightning as L

    class UserLightning(L.LightningModule):
        def __init__(self, build, loss, make_optimizer, cfg, lr: float = 1e-3):
            super().__init__()
            self.loss_fn, self.make_optimizer, self.cfg, self.lr = loss, make_optimizer, cfg, lr
            self.model = build(cfg)

        def forward(self, *inputs):
            return self.model(*inputs)

        def training_step(self, batch, batch_idx):
            value = self.loss_fn(self.model, batch)
            self.log("train_loss", value, prog_bar=True, batch_size=_samples_in(batch))
            return value

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.loss_fn(self.model, batch),
                     batch_size=_samples_in(batch), sync_dist=True)

        def configure_optimizers(self):
            if self.make_optimizer is not None:
                return self.make_optimizer(self.model, self.cfg, self.lr)
            return torch.optim.AdamW(self.model.parameters(), lr=self.lr)

    return UserLightning


_LIGHTNING = LazyClass(__name__, "UserLightning", _make_lightning_class)
__getattr__ = _LIGHTNING.module_getattr  # lets pickle find the lazily made class


@dataclasses.dataclass(frozen=True)
class _Lightning:
    build: Callable
    loss: Callable
    make_optimizer: Callable | None

    def __call__(self, cfg, lr: float = 1e-3):
        return _LIGHTNING.cls()(self.build, self.loss, self.make_optimizer, cfg, lr)


# --------------------------------------------------------------------------------------------------------
# The one function a learner calls
# --------------------------------------------------------------------------------------------------------


def _dataset(data, what: str):
    if isinstance(data, (str, os.PathLike, dict)):
        return Rows(data)
    if isinstance(data, torch.utils.data.IterableDataset) or not hasattr(data, "__getitem__"):
        raise TypeError(f"{what} must be a map-style Dataset (with __getitem__ and "
                        f"__len__), a folder of shards or a dict of columns, got {type(data).__name__}; for "
                        "streaming ROOT files convert them first (hepml-kit data convert)")
    return data


def testbed(
    name: str,
    *,
    model: Callable[..., nn.Module],
    data,
    loss: Callable[[nn.Module, dict], torch.Tensor],
    val_data=None,
    holdout: float = 0.2,
    collate: Callable[[list], Any] | None = None,
    fields: tuple[str, ...] = ("x", "y"),
    config: Any = None,
    metrics: Callable[[nn.Module, list[dict]], dict] | None = None,
    threshold: Callable[[dict], bool] | None = None,
    flops_per_sample: float | Callable[[Any], float] | None = None,
    lightning: Callable[..., Any] | None = None,
    make_optimizer: Callable[[nn.Module, Any, float], Any] | None = None,
    tensor_parallel: dict | None = None,
    pipeline: Any = None,
    inputs: tuple[str, ...] | None = None,
    outputs: tuple[str, ...] | None = None,
    train: dict | None = None,
    unit: str = "samples",
    paper: str = "",
) -> UserTestbed:
    """A `Testbed` of your own model and data.

    Args:
        name: what the kit calls it (results, checkpoints, served model name).
        model: the ``nn.Module`` factory: ``model(cfg)`` when `config` is given, else ``model()``.
        data: a map-style Dataset, a folder of shards or a dict of columns (see the module docstring).
        loss: ``loss(model, batch) -> scalar Tensor``; a batch is a dict of tensors.
        val_data / holdout: the validation set, or the share of `data` (its last items) held out for it.
        collate, fields: items -> batch dict (``default_collate``; tuple items are named by `fields`).
        config: a config (a dataclass: its fields become HPO hyperparameters) or ``config(preset)``.
        metrics: ``metrics(model, val_batches) -> dict`` of floats, beside ``val_loss`` (always reported).
        threshold: ``threshold(metrics) -> bool``, the physics bar of ``hepml-kit validate`` (default: none).
        flops_per_sample: forward+backward FLOPs per sample (a number or ``f(cfg)``) for MFU figures.
        lightning: ``lightning(cfg, lr) -> LightningModule`` (default: a generic one over model + loss).
        make_optimizer: ``make_optimizer(model, cfg, lr)`` (default AdamW).
        tensor_parallel: the Megatron plan (`hepml_kit.parallel.tensor`); pipeline: a `StackRecipe`.
        inputs / outputs: batch keys fed to ``forward`` in order / names of its outputs (serving; default:
            the first batch key / ``"output"``).
        train: training settings of `fit` and ``hepml-kit validate``: ``events``, ``epochs``, ``batch_size``,
            ``lr`` (defaults: every training item, 2, 64, 1e-3).
        unit, paper: what one sample is (plural) and what the model follows.
    """
    if not name or not isinstance(name, str):
        raise ValueError("a testbed needs a name (a non-empty string)")
    for arg, value in (("model", model), ("loss", loss)):
        if not callable(value):
            raise TypeError(f"{arg} must be callable, got {type(value).__name__}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    full = _dataset(data, "data")
    if val_data is not None:
        train_set, val_set = full, _dataset(val_data, "val_data")
    else:
        n_val = int(round(len(full) * holdout))
        if n_val < 1:
            raise ValueError(f"{len(full)} items leave no validation set at holdout={holdout}: pass val_data")
        cut = len(full) - n_val
        train_set = torch.utils.data.Subset(full, range(cut))
        val_set = torch.utils.data.Subset(full, range(cut, len(full)))
    if len(train_set) < 1:
        raise ValueError("no training items")
    funcs = _Data(train_set, val_set, collate, tuple(fields))
    first = funcs.collate_items([train_set[0]])  # a bad item or collate fails here, before any run
    inputs = tuple(inputs or (next(iter(first)),))
    missing = [k for k in inputs if k not in first]
    if missing:
        raise ValueError(f"inputs {missing} are not batch keys; a batch has {', '.join(first)}")
    settings = {"events": len(train_set), "epochs": 2, "batch_size": 64, "lr": 1e-3, **(train or {})}
    settings.setdefault("test_events", len(val_set))
    build = _Build(model, config is not None)
    if pipeline is not None and isinstance(pipeline, dict):
        from hepml_kit.parallel.pipeline import StackRecipe

        pipeline = StackRecipe(**pipeline)
    extra = {"user": True, "inputs": inputs, "outputs": tuple(outputs or ("output",)), "data": funcs}
    if tensor_parallel is not None:
        extra["tensor_parallel"] = tensor_parallel
    if pipeline is not None:
        extra["pipeline"] = pipeline
    for fn in (model, loss, collate, metrics, threshold, lightning, make_optimizer, config, flops_per_sample):
        send_by_value(fn)
    return UserTestbed(
        name=name, unit=unit, paper=paper or "a learner's own model", config=_Config(config), build=build,
        generate=funcs.generate, batches=funcs.batches, metrics=_Metrics(funcs, loss, metrics),
        threshold=threshold or _no_bar, train_defaults={p: dict(settings) for p in PRESETS},
        samples_in=_samples_in, loss=loss, make_optimizer=make_optimizer,
        flops_per_sample=_Flops(flops_per_sample) if flops_per_sample is not None else None,
        lightning=lightning or _Lightning(build, loss, make_optimizer), extra=extra,
    )


testbed.__test__ = False  # not a pytest test, despite the name


def send_by_value(fn) -> None:
    """A function from a test file or script the engines (and Ray workers) cannot import travels by value."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None) or ""
    if module is not None and module.__name__ != "__main__" and not module.__name__.startswith("hepml_kit") \
            and "site-packages" not in path and not path.startswith(sys.base_prefix):
        cloudpickle.register_pickle_by_value(module)


# --------------------------------------------------------------------------------------------------------
# Specs: "path/to/file.py:NAME" or "package.module:NAME"
# --------------------------------------------------------------------------------------------------------


def is_spec(text: str) -> bool:
    """Whether `text` names a user testbed (``file.py:NAME`` / ``module:NAME``) rather than a built-in."""
    return isinstance(text, str) and ":" in text


def load(spec: str) -> Testbed:
    """The `Testbed` named by ``path/to/file.py:NAME`` or ``package.module:NAME`` (NAME may also be a function
    of no arguments returning one)."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ValueError(f"{spec!r}: a model spec is path/to/file.py:NAME or package.module:NAME")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{spec!r}: no such file {where}")
        module_name = "hepml_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"{spec!r}: cannot import {where} ({e})") from None
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, Testbed)]
        raise ValueError(f"{spec!r}: {where} has no {attr!r}"
                         + (f"; its testbeds: {', '.join(found)}" if found else ""))
    value = getattr(module, attr)
    if inspect.isfunction(value):
        value = value()
    if not isinstance(value, Testbed):
        raise ValueError(f"{spec!r} is a {type(value).__name__}, not a Testbed (make one with "
                         "hepml_kit.models.user.testbed)")
    return value
