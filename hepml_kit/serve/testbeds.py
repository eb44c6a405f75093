"""The models the kit serves, as `ServedModel`s: a small MLP (to learn the service on), the tracking GNN's edge
classifier ("tracking as a service", after the Exa.TrkX Triton service) and the GN2-style jet flavour tagger.

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
from hepml_kit.serve.server import Batching, ServedModel

__all__ = ["mlp_model", "jet_tagger_model", "tracking_gnn_model", "testbed_model"]


def mlp_model(name: str = "mlp", features: int = 16, hidden: int = 256, classes: int = 4,
              batching: Batching | None = None, device: str = "cpu", seed: int = 0) -> ServedModel:
    """A 3-layer MLP ``x [B, features] -> logits__0 [B, classes]``: the smallest thing worth serving."""
    torch.manual_seed(seed)
    module = _TupleOutput(nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                        nn.ReLU(), nn.Linear(hidden, classes)))

    def example(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        return {"x": np.random.default_rng(seed).normal(size=(batch, features)).astype(np.float32)}

    return ServedModel(
        name=name, module=module, example=example, batching=batching or Batching(), device=device,
        inputs=(TensorSpec("x", "float32", (features,)),),
        outputs=(TensorSpec("logits__0", "float32", (classes,)),),
    )


class _TupleOutput(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x),)
