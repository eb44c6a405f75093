"""project_scaling against the published Perlmutter data-parallel results (shared/notes/scaling.md).

NERSC's SC21/SC22 "Deep Learning at Scale" tutorials: 3-D U-Net, 116,977,029 parameters (fp32 gradients),
≈ 421 samples/s of compute on one A100 at local batch 64, DDP + NCCL on 32 Perlmutter nodes (128 GPUs):
scaling efficiency ≈ 78% (SC21, batch 64), ≈ 89% (SC21, batch 128), ≈ 84% (SC22, batch 64),
communication ≈ 25% (SC21) and ≈ 12% (SC22) of the step. The projection must land within 10 points of
each.
"""

import math

import pytest

from hepml_kit.profile import PERLMUTTER, allreduce_time, ddp_buckets, plot_scaling, project_scaling

UNET_GRAD_BYTES = 116_977_029 * 4
COMPUTE_SAMPLES_PER_S = 421.0  # one A100, synthetic data (compute only)
PUBLISHED = [  # (case, local batch, nodes, efficiency)
    ("SC21", 64, 32, 0.78),
    ("SC21", 128, 32, 0.89),
    ("SC22", 64, 32, 0.84),
]
PUBLISHED_COMM_SHARE = [("SC21", 0.25), ("SC22", 0.12)]


def _unet(local_batch, **kw):
    return project_scaling(local_batch / COMPUTE_SAMPLES_PER_S, UNET_GRAD_BYTES, PERLMUTTER,
                           nodes=[1, 2, 4, 8, 16, 32], local_batch=local_batch, **kw)


@pytest.mark.parametrize("case,local_batch,nodes,published", PUBLISHED)
def test_projection_reproduces_published_efficiency(case, local_batch, nodes, published):
    row = _unet(local_batch).set_index("nodes").loc[nodes]
    assert row["gpus"] == 4 * nodes
    assert abs(row["projected_efficiency"] - published) <= 0.10, (case, row["projected_efficiency"])


@pytest.mark.parametrize("case,published", PUBLISHED_COMM_SHARE)
def test_projected_communication_share_matches_published(case, published):
    row = _unet(64).set_index("nodes").loc[32]
    assert abs(row["projected_comm_fraction"] - published) <= 0.10, (case, row["projected_comm_fraction"])


def test_larger_local_batch_raises_efficiency():
    small, large = _unet(64), _unet(128)
    assert (large["projected_efficiency"] > small["projected_efficiency"]).all()
    # the all-reduce does not depend on the batch: same communication, twice the compute
    assert list(large["allreduce_s"]) == list(small["allreduce_s"])


def test_model_structure():
    no_overlap, overlap = _unet(64), _unet(64, overlap=True)
    assert (overlap["projected_efficiency"] >= no_overlap["projected_efficiency"]).all()
    eff = no_overlap["projected_efficiency"]
    assert all(a >= b for a, b in zip(eff, eff[1:])), "efficiency must not rise with more nodes"
    far = dict(nodes=[1024], local_batch=64)
    ring = project_scaling(64 / 421, UNET_GRAD_BYTES, **far)
    tree = project_scaling(64 / 421, UNET_GRAD_BYTES, algorithm="tree", **far)
    # the ring's latency grows with the GPU count, the tree's with its logarithm
    assert tree["projected_efficiency"].iloc[0] > ring["projected_efficiency"].iloc[0]
    assert ring["projected_speedup"].iloc[0] == pytest.approx(4096 * ring["projected_efficiency"].iloc[0])
    default = project_scaling(0.1, 1e8)
    assert list(default["nodes"]) == [2**k for k in range(11)]


def test_alpha_beta_terms():
    assert allreduce_time(1e9, 1, PERLMUTTER.__class__(**{**PERLMUTTER.__dict__, "gpus_per_node": 1})) == 0.0
    # inside one node: NVLink only, ring bandwidth term 2 (P-1)/P n / B plus 2 (P-1) NVLink steps
    base, intra, _ = PERLMUTTER.ring_latency
    expected = base + 6 * intra + 2 * 3 / 4 * 1e9 / PERLMUTTER.intra_bus_bw
    assert allreduce_time(1e9, 1) == pytest.approx(expected)
    # across nodes the NICs (4 x 25 GB/s) are the bottleneck, not NVLink
    assert PERLMUTTER.inter_bus_bw == 100e9 < PERLMUTTER.intra_bus_bw
    two = allreduce_time(1e9, 2)
    assert two > 2 * 7 / 8 * 1e9 / 100e9
    sizes = ddp_buckets(UNET_GRAD_BYTES)
    assert sizes[0] == 2**20 and max(sizes) == 25 * 2**20 and sum(sizes) == UNET_GRAD_BYTES
    assert len(sizes) == 1 + math.ceil((UNET_GRAD_BYTES - 2**20) / (25 * 2**20))


def test_output_is_labelled_as_a_projection():
    df = _unet(64)
    assert df.attrs["kind"] == "projection" and "PROJECTION" in df.attrs["title"]
    assert (df["kind"] == "projection").all()
    measured_looking = {"efficiency", "step_s", "samples_per_s", "speedup"}
    assert not measured_looking & set(df.columns)
    assert {"projected_efficiency", "projected_step_s", "projected_samples_per_s"} <= set(df.columns)
    fig = plot_scaling(df)
    assert "PROJECTION" in fig._suptitle.get_text()
    assert fig.axes[0].get_ylabel().startswith("projected")


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="step_compute_s"):
        project_scaling(0, 1e6)
    with pytest.raises(ValueError, match="grad_bytes"):
        project_scaling(0.1, -1)
    with pytest.raises(ValueError, match="nodes"):
        project_scaling(0.1, 1e6, nodes=[0, 2])
    with pytest.raises(ValueError, match="algorithm"):
        project_scaling(0.1, 1e6, algorithm="butterfly")
