"""How variable-size inputs travel in a fixed-shape KServe v2 request, so that Triton's dynamic batcher can
stack requests from different clients into one model execution.

Triton's dynamic batcher stacks requests along a new leading batch axis and only merges requests whose other
dimensions agree (ragged batching is not available through the Python backend that PyTriton uses). So a jet
with 7 tracks and a jet with 23 tracks, or two events with different numbers of hits and edges, are *padded to
a fixed capacity* and travel with their true sizes. The encoding is the same for PyTriton and for the exported
TorchScript model repository (`export.py`), so one client talks to both.

Jets (GN2-style flavour tagger, `jet_transformer`)::

    tracks  [B, T, F] float32   zero-padded to T = max_tracks tracks (the generator's track order is kept)
    mask    [B, T]    bool      True for a real track, False for padding (a jet may have no track)
    ->  flavour_logits__0 [B, C] float32      (b, c, light)
        origin_logits__1  [B, T, K] float32   per-track origin; rows where mask is False are padding

Graphs (interaction-network edge classifier, `tracking_gnn`; one graph = one event's hits)::

    x          [B, N, Fn] float32  node (hit) features, zero-padded to N = max_nodes
    edge_attr  [B, E, Fe] float32  edge features, zero-padded to E = max_edges
    edge_index [B, 2, E]  int64    (source, target) node numbers *within the graph* (0 .. num_nodes-1)
    num_nodes  [B, 1]     int64    true node count of each graph
    num_edges  [B, 1]     int64    true edge count of each graph
    ->  edge_logits__0 [B, E] float32     one logit per edge; zeros beyond num_edges

Server side, `PaddedGraphEdgeClassifier` turns a batch of padded graphs into one disjoint-union graph (padded
nodes and edges dropped, node numbers offset by the nodes of the graphs before), runs the GNN once, and
scatters the logits back: results equal per-graph inference, and padding costs no model compute.

Output names end in ``__<index>``: that is the Triton libtorch backend's naming convention for outputs (inputs
may use the forward-argument names), and PyTriton serves the same names so one client fits both servers.
A request whose content breaks the encoding (an edge pointing past num_nodes, a count above capacity) is
rejected by the PyTriton server with a message naming the request.

Taught in curriculum/08_inference_service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "GraphEncoding",
    "JetEncoding",
    "MaskedJetTagger",
    "PaddedGraphEdgeClassifier",
    "TensorSpec",
    "numpy_dtype",
    "triton_datatype",
]


def triton_datatype(dtype) -> str:
    """KServe v2 datatype of a numpy dtype: ``float32 -> "FP32"``, ``bool -> "BOOL"`` (tritonclient's
    ``np_to_triton_dtype``; ``"TYPE_" +`` this in config.pbtxt)."""
    from tritonclient.utils import np_to_triton_dtype

    dtype = np.dtype(dtype)
    datatype = np_to_triton_dtype(dtype)
    if datatype is None:
        raise ValueError(
            f"dtype {dtype.name} has no KServe v2 datatype (tritonclient.utils.np_to_triton_dtype)"
        )
    return datatype


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a KServe v2 datatype (tritonclient's ``triton_to_np_dtype``): ``"FP32" ->
    float32``."""
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise ValueError(f"{datatype!r} is not a KServe v2 datatype that numpy can hold")
    return np.dtype(dtype)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a served model; `shape` excludes the batch axis (-1 = any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def datatype(self) -> str:
        return triton_datatype(self.dtype)


@dataclass(frozen=True)
class JetEncoding:
    """Jets with different track counts, padded to `max_tracks` with a validity mask (see module
    docstring)."""

    max_tracks: int
    track_features: int
    n_flavours: int = 3
    n_origins: int = 0  # 0: the model has no per-track origin head

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("tracks", "float32", (self.max_tracks, self.track_features)),
            TensorSpec("mask", "bool", (self.max_tracks,)),
        )

    def output_specs(self) -> tuple[TensorSpec, ...]:
        out = [TensorSpec("flavour_logits__0", "float32", (self.n_flavours,))]
        if self.n_origins:
            out.append(TensorSpec("origin_logits__1", "float32", (self.max_tracks, self.n_origins)))
        return tuple(out)

    def encode(self, jets: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """A list of per-jet track arrays ``[n_i, F]`` -> ``{"tracks": [B, T, F], "mask": [B, T]}``."""
        tracks = np.zeros((len(jets), self.max_tracks, self.track_features), np.float32)
        mask = np.zeros((len(jets), self.max_tracks), bool)
        for i, jet in enumerate(jets):
            jet = np.asarray(jet, np.float32)
            if jet.ndim != 2 or jet.shape[1] != self.track_features:
                raise ValueError(f"jet {i}: tracks must be [n, {self.track_features}], got {list(jet.shape)}")
            if len(jet) > self.max_tracks:
                raise ValueError(f"jet {i}: {len(jet)} tracks > capacity max_tracks={self.max_tracks}")
            tracks[i, : len(jet)] = jet
            mask[i, : len(jet)] = True
        return {"tracks": tracks, "mask": mask}


@dataclass(frozen=True)
class GraphEncoding:
    """Graphs with different node and edge counts, padded to a fixed capacity (see module docstring)."""

    max_nodes: int
    max_edges: int
    node_features: int
    edge_features: int

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("x", "float32", (self.max_nodes, self.node_features)),
            TensorSpec("edge_attr", "float32", (self.max_edges, self.edge_features)),
            TensorSpec("edge_index", "int64", (2, self.max_edges)),
            TensorSpec("num_nodes", "int64", (1,)),
            TensorSpec("num_edges", "int64", (1,)),
        )

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("edge_logits__0", "float32", (self.max_edges,)),)

    def encode(self, graphs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """A list of ``(x [n, Fn], edge_attr [e, Fe], edge_index [2, e])`` -> the padded wire tensors."""
        b = len(graphs)
        out = {
            "x": np.zeros((b, self.max_nodes, self.node_features), np.float32),
            "edge_attr": np.zeros((b, self.max_edges, self.edge_features), np.float32),
            "edge_index": np.zeros((b, 2, self.max_edges), np.int64),
            "num_nodes": np.zeros((b, 1), np.int64),
            "num_edges": np.zeros((b, 1), np.int64),
        }
        for i, (x, edge_attr, edge_index) in enumerate(graphs):
            x, edge_attr, edge_index = np.asarray(x), np.asarray(edge_attr), np.asarray(edge_index)
            n, e = len(x), edge_index.shape[1]
            if n > self.max_nodes or e > self.max_edges:
                raise ValueError(
                    f"graph {i}: {n} nodes / {e} edges exceed capacity {self.max_nodes} / {self.max_edges}"
                )
            if e and (edge_index.min() < 0 or edge_index.max() >= n):
                raise ValueError(
                    f"graph {i}: edge_index must lie in [0, {n}) (node numbers within the graph)"
                )
            out["x"][i, :n] = x
            out["edge_attr"][i, :e] = edge_attr
            out["edge_index"][i, :, :e] = edge_index
            out["num_nodes"][i, 0], out["num_edges"][i, 0] = n, e
        return out

    @staticmethod
    def decode(edge_logits: np.ndarray, num_edges: np.ndarray) -> list[np.ndarray]:
        """Padded ``[B, E]`` logits -> one array of ``num_edges[b]`` logits per graph."""
        return [edge_logits[b, : int(num_edges[b, 0])] for b in range(len(edge_logits))]

    def validate(self, request: dict[str, np.ndarray]) -> None:
        n, e = request["num_nodes"][:, 0], request["num_edges"][:, 0]
        n_cap, e_cap = request["x"].shape[1], request["edge_attr"].shape[1]
        if (n < 1).any() or (n > n_cap).any() or (e < 0).any() or (e > e_cap).any():
            raise ValueError(f"num_nodes must be in [1, {n_cap}] and num_edges in [0, {e_cap}]")
        valid = np.arange(request["edge_index"].shape[2])[None, :] < e[:, None]  # [B, E]
        idx = request["edge_index"]  # [B, 2, E]
        bad = ((idx < 0) | (idx >= n[:, None, None])) & valid[:, None, :]
        if bad.any():
            g = int(np.nonzero(bad.any(axis=(1, 2)))[0][0])
            raise ValueError(
                f"graph {g} of the request: edge_index points outside [0, num_nodes={int(n[g])})"
            )


class MaskedJetTagger(nn.Module):
    """Serve a jet tagger ``forward(tracks, mask) -> (flavour_logits, origin_logits)`` with the wire mask
    convention True = real track (`valid_is_true=False` flips it for models that take a padding mask)."""

    def __init__(self, model: nn.Module, valid_is_true: bool = True, with_origin: bool = True):
        super().__init__()
        self.model, self.valid_is_true, self.with_origin = model, valid_is_true, with_origin

    def forward(self, tracks: torch.Tensor, mask: torch.Tensor):
        # tracks [B, T, F], mask [B, T] bool (True = real track)
        out = self.model(tracks, mask if self.valid_is_true else ~mask)
        if isinstance(out, (tuple, list)):
            return (out[0], out[1]) if self.with_origin else (out[0],)
        return (out,)


class PaddedGraphEdgeClassifier(nn.Module):
    """Serve an edge classifier ``forward(x, edge_attr, edge_index) -> logits [E]`` on a batch of padded
    graphs: one disjoint-union graph per batch (as PyG batches graphs; Fey & Lenssen, arXiv:1903.02428).

    Written with shape-following ops only (no Python ints from data, no device constants), so
    `torch.jit.trace` gives a TorchScript model that works for any batch, capacity and device.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, edge_attr, edge_index, num_nodes, num_edges):
        # x [B, N, Fn], edge_attr [B, E, Fe], edge_index [B, 2, E], num_nodes/num_edges [B, 1]
        b, _, fn = x.shape
        e = edge_attr.shape[1]
        node_slot = torch.ones_like(x[:, :, 0], dtype=torch.long).cumsum(1) - 1  # [B, N]: 0 .. N-1
        edge_slot = torch.ones_like(edge_index[:, 0, :]).cumsum(1) - 1  # [B, E]: 0 .. E-1
        node_valid = (node_slot < num_nodes).reshape(-1)  # [B*N]
        edge_valid = (edge_slot < num_edges).reshape(-1)  # [B*E]
        first_node = num_nodes.cumsum(0) - num_nodes  # [B, 1]: where graph b starts in the union
        union_index = (edge_index + first_node.unsqueeze(1)).permute(1, 0, 2).reshape(2, -1)  # [2, B*E]
        logits = self.model(
            x.reshape(-1, fn)[node_valid],  # [N_valid, Fn]: the real nodes of all graphs, in order
            edge_attr.reshape(b * e, -1)[edge_valid],  # [E_valid, Fe]
            union_index[:, edge_valid],  # [2, E_valid]
        )
        out = x.new_zeros(b * e)
        out[edge_valid] = logits.reshape(-1).to(out.dtype)
        return (out.reshape(b, e),)
