"""Project data-parallel scaling past the machine you have: an alpha-beta model of DDP's all-reduce.

From one GPU's measured compute time per step and the gradient size, predict step time, throughput and
parallel efficiency on 1 to 1024 nodes. Every figure this module returns is a PROJECTION (columns are
named ``projected_*`` and the frame's ``attrs["title"]`` says so), never a measurement.

The model (Hockney's alpha-beta model; ring and tree all-reduce after Thakur, Rabenseifner & Gropp 2005,
"Optimization of collective communication operations in MPICH", with NCCL's own latency figures):

* DDP splits the gradients into buckets (first 1 MiB, then ``bucket_bytes`` = 25 MiB, PyTorch's defaults)
  and all-reduces each bucket separately, one after another on one communication stream.
* ring all-reduce of n bytes over P = nodes × G GPUs:
  ``t = a_base + (2(P-1) - s) a_intra + s a_inter + 2 (P-1)/P · n / B``, with s = 2(nodes-1) steps that cross
  a node boundary and B the bottleneck bus bandwidth: NVLink inside one node, otherwise
  min(NVLink, the node's NICs together) (each node sends 2(P-1)/P · n bytes through its NICs).
* tree (NCCL's double binary tree, chains inside nodes):
  ``t = a_base + 2 ((G-1) a_intra + ceil(log2 nodes) a_inter) + 2 n / (0.9 B)``.
  The ring's latency grows with P, the tree's with log P: past a few hundred nodes the tree wins.
* without overlap every bucket waits for the end of backward: exposed = sum of bucket times. With overlap
  bucket i is ready once its share of the gradients is computed (gradients produced evenly over the
  backward, ``backward_fraction`` of the step) and buckets queue on one stream; exposed = what runs past
  the backward.
* step = compute + exposed communication; efficiency = compute / step.

Validation (tests/test_projection.py): NERSC's SC21 and SC22 "Deep Learning at Scale" tutorials trained a
3-D U-Net (116,977,029 parameters, fp32 gradients ≈ 468 MB) on Perlmutter at local batch 64 and 128,
32 nodes / 128 GPUs, from ≈ 421 samples/s of compute on one A100 (0.152 s per step at batch 64):
published efficiency ≈ 78% (SC21, batch 64), 89% (SC21, batch 128), 84% (SC22, batch 64). With
``overlap=False`` the model gives 82%, 90% and 82%. The published runs sit near the no-overlap
line: SC21 measured ≈ 25% communication overhead with DDP on vs off, i.e. the all-reduce was mostly
exposed (NCCL kernels compete with backward kernels for SMs and memory bandwidth). ``overlap=True`` is
the optimistic bound. Larger local batches raise efficiency because compute grows with the batch while
the gradient size does not.

Taught in curriculum/02_data_parallel; the measured counterpart is `scaling_study`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Machine", "PERLMUTTER", "POLARIS", "MACHINES", "allreduce_time", "ddp_buckets", "project_scaling"]

US = 1e-6
MiB = 2**20


@dataclass(frozen=True)
class Machine:
    """A GPU cluster as the alpha-beta model sees it. Bandwidths in bytes/s, latencies in seconds."""

    name: str
    gpu: str  # key of hepml_kit.profile.DEVICE_PEAKS
    gpus_per_node: int
    intra_bus_bw: float  # all-reduce bus bandwidth inside a node (NVLink)
    nics_per_node: int
    nic_bw: float  # per NIC, per direction
    ring_latency: tuple[float, float, float]  # (base, per intra-node step, per inter-node step)
    tree_latency: tuple[float, float, float]
    tree_bw_factor: float = 0.9
    sources: str = ""

    @property
    def inter_bus_bw(self) -> float:
        """What one node can push through its NICs together."""
        return self.nics_per_node * self.nic_bw


PERLMUTTER = Machine(
    name="Perlmutter GPU node (4x A100, NVLink 3, 4x Slingshot-11)",
    gpu="A100-40GB",
    gpus_per_node=4,
    # A100 NVLink 3: 12 links x 25 GB/s per direction = 300 GB/s per GPU (A100 datasheet: 600 GB/s
    # bidirectional). NCCL's tuning model caps A100 (sm_80) all-reduce bus bandwidth at 235 GB/s
    # (NVIDIA/nccl src/graph/tuning.cc, `if (compCap80) busBw = std::min(busBw, 235.0f)`).
    intra_bus_bw=235e9,
    # NERSC Perlmutter architecture docs: 4 HPE Slingshot-11 NICs per GPU node, 200 Gb/s (25 GB/s) each.
    nics_per_node=4,
    nic_bw=25e9,
    # NCCL's latency tables (src/graph/tuning.cc, 2021 releases), Simple protocol, which NCCL uses for
    # DDP's 25 MiB buckets: ring base 8.4 us, 3.4 us per NVLink step, 9.6 us per network step;
    # tree base 0, 28 us per NVLink hop, 50 us per network hop (the latency of one 256 kB chunk).
    ring_latency=(8.4 * US, 3.4 * US, 9.6 * US),
    tree_latency=(0.0, 28 * US, 50 * US),
    sources="NERSC Perlmutter docs (node, NICs); NVIDIA A100 datasheet (NVLink 3); "
    "NCCL tuning.cc (latencies)",
)

POLARIS = Machine(
    name="Polaris node (4x A100, NVLink 3, 2x Slingshot-11)",
    gpu="A100-40GB",
    gpus_per_node=4,
    intra_bus_bw=235e9,  # the same A100 SXM4 NVLink 3 as Perlmutter (see above)
    # ALCF Polaris machine overview: 2 HPE Slingshot-11 (Cassini) NICs per node, 200 Gb/s (25 GB/s) each:
    # half of Perlmutter's injection bandwidth per node.
    nics_per_node=2,
    nic_bw=25e9,
    ring_latency=(8.4 * US, 3.4 * US, 9.6 * US),  # NCCL's tables, as for Perlmutter (same GPU, same network)
    tree_latency=(0.0, 28 * US, 50 * US),
    sources="ALCF Polaris docs (node: 4x A100 SXM4 40 GB, 2x Slingshot-11 NICs); NVIDIA A100 datasheet; "
    "NCCL tuning.cc (latencies)",
)
MACHINES = {"perlmutter": PERLMUTTER, "polaris": POLARIS}


def ddp_buckets(grad_bytes: float, bucket_bytes: float = 25 * MiB,
                first_bucket_bytes: float = 1 * MiB) -> list[float]:
    """Bucket sizes DDP all-reduces, in order (PyTorch defaults: first bucket 1 MiB, then 25 MiB)."""
    if grad_bytes <= 0:
        raise ValueError(f"grad_bytes must be positive, got {grad_bytes}")
    if bucket_bytes <= 0 or first_bucket_bytes <= 0:
        raise ValueError("bucket sizes must be positive")
    sizes = [min(first_bucket_bytes, grad_bytes)]
    left = grad_bytes - sizes[0]
    while left > 0:
        sizes.append(min(bucket_bytes, left))
        left -= sizes[-1]
    return sizes


def allreduce_time(nbytes: float, nodes: int, machine: Machine = PERLMUTTER,
                   algorithm: str = "ring") -> float:
    """Seconds for one all-reduce of `nbytes` over ``nodes * machine.gpus_per_node`` GPUs (alpha-beta)."""
    g = machine.gpus_per_node
    p = nodes * g
    if p == 1:
        return 0.0
    bw = machine.intra_bus_bw if nodes == 1 else min(machine.intra_bus_bw, machine.inter_bus_bw)
    if algorithm == "ring":
        base, intra, inter = machine.ring_latency
        steps, inter_steps = 2 * (p - 1), 2 * (nodes - 1)
        latency = base + (steps - inter_steps) * intra + inter_steps * inter
        return latency + 2 * (p - 1) / p * nbytes / bw
    if algorithm == "tree":
        base, intra, inter = machine.tree_latency
        latency = base + 2 * ((g - 1) * intra + math.ceil(math.log2(nodes)) * inter)
        return latency + 2 * nbytes / (machine.tree_bw_factor * bw)
    raise ValueError(f"algorithm must be 'ring' or 'tree', got {algorithm!r}")


def _exposed_comm(bucket_times: list[float], bucket_sizes: list[float], backward_s: float,
                  overlap: bool) -> float:
    if not overlap:
        return sum(bucket_times)
    total, done, finish = sum(bucket_sizes), 0.0, 0.0
    for size, t in zip(bucket_sizes, bucket_times):
        done += size
        ready = backward_s * done / total  # this bucket's gradients exist
        finish = max(ready, finish) + t  # one communication stream: buckets queue
    return max(finish - backward_s, 0.0)


def project_scaling(step_compute_s: float, grad_bytes: float, machine: Machine = PERLMUTTER,
                    nodes: list[int] | None = None, *, overlap: bool = False, algorithm: str = "ring",
                    local_batch: int | None = None, backward_fraction: float = 2 / 3,
                    bucket_bytes: float = 25 * MiB):
    """PROJECTED data-parallel scaling (pandas DataFrame, one row per node count).

    Args:
        step_compute_s: one GPU's compute time per step at the local batch (measure it, e.g. with
            `StepProfiler`: ``samples_per_step / samples_per_s``), without communication.
        grad_bytes: bytes all-reduced per step (parameters × 4 for fp32 gradients).
        machine: cluster description (`PERLMUTTER` preset).
        nodes: node counts (default 1, 2, 4, ..., 1024).
        overlap: overlap the all-reduce with the backward (optimistic bound) or not (what the published
            Perlmutter runs behaved like; see the module docstring).
        algorithm: ``"ring"`` or ``"tree"`` all-reduce.
        local_batch: samples per GPU per step; adds ``projected_samples_per_s``.
        backward_fraction: share of the compute step spent in backward (≈ 2/3: backward ≈ 2× forward).
        bucket_bytes: DDP ``bucket_cap_mb`` in bytes.
    """
    import pandas as pd

    nodes = list(nodes) if nodes is not None else [2**k for k in range(11)]
    if not step_compute_s > 0:
        raise ValueError(f"step_compute_s must be positive, got {step_compute_s}")
    if not nodes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in nodes):
        raise ValueError(f"nodes must be positive integers, got {nodes}")
    if algorithm not in ("ring", "tree"):
        raise ValueError(f"algorithm must be 'ring' or 'tree', got {algorithm!r}")
    if not 0 < backward_fraction < 1:
        raise ValueError(f"backward_fraction must be in (0, 1), got {backward_fraction}")
    if local_batch is not None and local_batch < 1:
        raise ValueError(f"local_batch must be >= 1, got {local_batch}")
    sizes = ddp_buckets(grad_bytes, bucket_bytes)
    rows = []
    for n in nodes:
        gpus = n * machine.gpus_per_node
        times = [allreduce_time(s, n, machine, algorithm) for s in sizes]
        exposed = _exposed_comm(times, sizes, backward_fraction * step_compute_s, overlap)
        step = step_compute_s + exposed
        row = {"nodes": n, "gpus": gpus, "buckets": len(sizes), "allreduce_s": sum(times),
               "projected_exposed_comm_s": exposed, "projected_step_s": step,
               "projected_comm_fraction": exposed / step, "projected_efficiency": step_compute_s / step,
               "projected_speedup": gpus * step_compute_s / step}
        if local_batch is not None:
            row["projected_samples_per_s"] = gpus * local_batch / step
        rows.append(row)
    df = pd.DataFrame(rows)
    df["algorithm"], df["overlap"], df["kind"] = algorithm, overlap, "projection"
    df.attrs["title"] = (f"PROJECTION, not a measurement: {machine.name.split(' (')[0]}, alpha-beta model, "
                         f"{algorithm} all-reduce, {'with' if overlap else 'no'} overlap")
    df.attrs["kind"] = "projection"
    df.attrs["sources"] = machine.sources
    return df
