"""The models the kit serves, as `ServedModel`s: a small MLP (to learn the service on), the tracking GNN's
edge
classifier ("tracking as a service", after the Exa.TrkX Triton service), the GN2-style jet flavour tagger, and
a learner's own testbed (`user_model`, curriculum/13_your_model).

Each comes with its wire encoding (`encoding.py`) and an `example(batch, seed)` request built from the
testbed's own generator, so tests, load tests and the lesson send physics-like inputs.

Taught in curriculum/08_inference_service.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hepml_kit.serve.encoding import (
    GraphEncoding,
    JetEncoding,
    MaskedJetTagger,
    PaddedGraphEdgeClassifier,
    TensorSpec,
)
from hepml_kit.serve.served_model import Batching, ServedModel

__all__ = ["jet_tagger_model", "mlp_model", "served_model", "tracking_gnn_model", "user_model"]


def mlp_model(
    name: str = "mlp",
    features: int = 16,
    hidden: int = 256,
    classes: int = 4,
    batching: Batching | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> ServedModel:
    """A 3-layer MLP ``x [B, features] -> logits__0 [B, classes]``: the smallest thing worth serving."""
    torch.manual_seed(seed)
    module = _TupleOutput(
        nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )
    )

    def example(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        return {"x": np.random.default_rng(seed).normal(size=(batch, features)).astype(np.float32)}

    return ServedModel(
        name=name,
        module=module,
        example=example,
        batching=batching or Batching(),
        device=device,
        inputs=(TensorSpec("x", "float32", (features,)),),
        outputs=(TensorSpec("logits__0", "float32", (classes,)),),
    )


class _TupleOutput(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x),)


def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def jet_tagger_model(
    model: nn.Module | None = None,
    cfg=None,
    *,
    preset: str = "tiny",
    name: str = "jet_transformer",
    batching: Batching | None = None,
    device: str = "cpu",
    pool: int = 512,
    seed: int = 0,
) -> ServedModel:
    """The GN2-style flavour tagger behind the jet encoding: ``tracks, mask -> flavour_logits__0,
    origin_logits__1``. `model` defaults to a freshly initialised `preset` model (pass a trained one);
    example requests are jets from the testbed generator, padded by `JetEncoding.encode`."""
    from hepml_kit.data.jets import FLAVOURS, TRACK_ORIGINS, normalise_tracks
    from hepml_kit.models import get

    testbed = get("jet_transformer")
    cfg = cfg if cfg is not None else testbed.config(preset)
    if model is None:
        torch.manual_seed(seed)
        model = testbed.build(cfg)
    encoding = JetEncoding(
        max_tracks=cfg.data.max_tracks,
        track_features=cfg.n_features,
        n_flavours=len(FLAVOURS),
        n_origins=len(TRACK_ORIGINS),
    )
    data = testbed.generate(cfg, pool, seed + 1)
    tracks = normalise_tracks(data["tracks"], data["mask"])
    jets = [tracks[i][data["mask"][i]] for i in range(pool)]  # variable-size: [n_tracks_i, F]

    def example(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        idx = np.random.default_rng(seed).integers(0, pool, batch)
        return encoding.encode([jets[i] for i in idx])

    return ServedModel(
        name=name,
        module=MaskedJetTagger(model),
        example=example,
        batching=batching or Batching(),
        device=device,
        inputs=encoding.input_specs(),
        outputs=encoding.output_specs(),
        unit="jets",
    )


def tracking_gnn_model(
    model: nn.Module | None = None,
    cfg=None,
    *,
    preset: str = "tiny",
    name: str = "tracking_gnn",
    batching: Batching | None = None,
    device: str = "cpu",
    max_nodes: int | None = None,
    max_edges: int | None = None,
    pool: int = 16,
    seed: int = 0,
) -> ServedModel:
    """Tracking as a service: the interaction-network edge classifier behind the padded-graph encoding.

    Capacity defaults to twice the preset's typical graph (``cfg.graph_nodes``/``graph_edges``), rounded up
    to a multiple of 128, and at least the largest example event."""
    from hepml_kit.models import get
    from hepml_kit.models.tracking_gnn import event_to_graph

    testbed = get("tracking_gnn")
    cfg = cfg if cfg is not None else testbed.config(preset)
    if model is None:
        torch.manual_seed(seed)
        model = testbed.build(cfg)
    graphs = [event_to_graph(ev) for ev in testbed.generate(cfg, pool, seed + 1)]
    graphs = [(g["x"].numpy(), g["edge_attr"].numpy(), g["edge_index"].numpy()) for g in graphs]
    max_nodes = max_nodes or _round_up(max(2 * cfg.graph_nodes, *(len(g[0]) for g in graphs)), 128)
    max_edges = max_edges or _round_up(max(2 * cfg.graph_edges, *(g[2].shape[1] for g in graphs)), 128)
    encoding = GraphEncoding(
        max_nodes=max_nodes,
        max_edges=max_edges,
        node_features=graphs[0][0].shape[1],
        edge_features=graphs[0][1].shape[1],
    )

    def example(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        idx = np.random.default_rng(seed).integers(0, pool, batch)
        return encoding.encode([graphs[i] for i in idx])

    return ServedModel(
        name=name,
        module=PaddedGraphEdgeClassifier(model),
        example=example,
        batching=batching or Batching(max_batch_size=16),
        device=device,
        inputs=encoding.input_specs(),
        outputs=encoding.output_specs(),
        validate=encoding.validate,
        unit="events",
    )


def user_model(
    testbed,
    model: nn.Module | None = None,
    cfg=None,
    *,
    preset: str = "tiny",
    name: str | None = None,
    batching: Batching | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> ServedModel:
    """A learner's own testbed (`hepml_kit.models.user.testbed`, or a spec ``file.py:NAME``) behind named
    tensors: its ``inputs`` (batch keys, in ``forward`` order) in, its ``outputs`` out. Example requests are
    validation batches; a non-batch axis that differs between two of them (padded tracks) is free (-1)."""
    from hepml_kit.models import get
    from hepml_kit.models.user import UserTestbed

    tb = get(testbed)
    if not isinstance(tb, UserTestbed):
        raise ValueError(f"{tb.name!r} is not a user testbed; serve built-ins with served_model(name)")
    cfg = cfg if cfg is not None else tb.config(preset)
    if model is None:
        torch.manual_seed(seed)
        model = tb.build(cfg)
    inputs, data = tb.extra["inputs"], tb.extra["data"]
    pool = data.val_batches(batch_size=1)

    def example(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        idx = np.random.default_rng(seed).integers(0, len(pool), batch)
        items = [data.val[int(i)] for i in idx]
        merged = data.collate_items(items)
        return {k: merged[k].numpy() for k in inputs}

    module = _NamedForward.around(model, inputs)
    a, b = example(3, 0), example(5, 1)
    free = {k: tuple(-1 if x != y else x for x, y in zip(a[k].shape[1:], b[k].shape[1:])) for k in inputs}
    with torch.no_grad():
        outs = module.eval()(*(torch.from_numpy(a[k]) for k in inputs))
    names = tb.extra["outputs"]
    if len(names) != len(outs):
        names = tuple(f"output{i}" for i in range(len(outs))) if len(outs) > 1 else names[:1]
    return ServedModel(
        name=name or tb.name,
        module=module,
        example=example,
        batching=batching or Batching(),
        device=device,
        inputs=tuple(TensorSpec(k, a[k].dtype.name, free[k]) for k in inputs),
        outputs=tuple(TensorSpec(f"{n}__{i}", str(o.dtype).removeprefix("torch."), tuple(o.shape[1:]))
                      for i, (n, o) in enumerate(zip(names, outs))),
        unit=tb.unit,
    )


class _NamedForward(nn.Module):
    """A user's model behind ``forward(<input names>)`` returning a tuple (what tracing and Triton's libtorch
    backend match inputs and outputs by)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @classmethod
    def around(cls, model: nn.Module, inputs: tuple[str, ...]) -> nn.Module:
        bad = [k for k in inputs if not k.isidentifier() or k in ("self", "model")]
        if bad:
            raise ValueError(f"input names {bad} cannot be forward arguments; rename those batch keys")
        args = ", ".join(inputs)
        scope: dict = {}
        exec(f"def forward(self, {args}):\n    out = self.model({args})\n"  # noqa: S102  (names checked above)
             "    return tuple(out) if isinstance(out, (tuple, list)) else (out,)\n", scope)
        named = type(f"Served_{'_'.join(inputs)}", (cls,), {"forward": scope["forward"]})
        return named(model)


def served_model(testbed, **kwargs) -> ServedModel:
    """`mlp_model`, `jet_tagger_model` or `tracking_gnn_model` by testbed name (``"mlp"``,
    ``"jet_transformer"``, ``"tracking_gnn"``), or `user_model` for a learner's own testbed (a `Testbed` or a
    spec ``file.py:NAME``); keyword arguments (``name=``, ``preset=``, ``model=``, ...) go to it."""
    from hepml_kit.models import Testbed

    if isinstance(testbed, Testbed) or ":" in testbed:
        return user_model(testbed, **kwargs)
    makers = {"mlp": mlp_model, "jet_transformer": jet_tagger_model, "tracking_gnn": tracking_gnn_model}
    key = testbed.replace("-", "_")
    if key not in makers:
        raise ValueError(f"no served version of {testbed!r}; choose one of {', '.join(makers)}")
    return makers[key](**kwargs)
