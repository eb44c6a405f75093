"""Tensor parallelism (DTensor and hand-written Megatron) on 2 gloo ranks equals one process.

Model: the jet transformer testbed (tiny preset), 3 SGD steps on the same batches. Reference: one
process on the same batches. The row-parallel all-reduce adds two partial sums in another order than one
matrix product, so the admissible difference is float32 rounding: losses rtol 1e-5 / atol 1e-6,
parameters and gradients rtol 1e-4 / atol 1e-6. Checkpoints: stopped at step 2 and resumed on 2 ranks
equals the uninterrupted run bitwise; the TP checkpoint also resumes in one plain process.
"""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from hepml_kit.parallel.runner import run_strategy
from hepml_kit.parallel.tensor import (
    check_tensor_parallel,
    find_parallel_blocks,
    tensor_parallel_plan,
)

RUN = dict(steps=3, global_batch=32, lr=0.05, seed=0)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
TOL = dict(rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return run_strategy("single", **RUN, return_grads=True)


def test_plan_covers_attention_and_mlp_of_the_jet_transformer():
    from hepml_kit.models import get

    tb = get("jet_transformer")
    model = tb.build(tb.config("tiny"))
    attention, mlp = find_parallel_blocks(model)
    assert attention == [f"encoder.layers.{i}.attn" for i in range(len(model.encoder.layers))]
    assert mlp == [f"encoder.layers.{i}.mlp" for i in range(len(model.encoder.layers))]
    plan = tensor_parallel_plan(model)
    styles = {k: type(v).__name__ for k, v in plan.items()}
    assert styles["encoder.layers.0.attn.q_proj"] == "ColwiseParallel"
    assert styles["encoder.layers.0.attn.out_proj"] == "RowwiseParallel"
    assert styles["encoder.layers.1.mlp.fc1"] == "ColwiseParallel"
    assert styles["encoder.layers.1.mlp.fc2"] == "RowwiseParallel"
    assert len(plan) == 6 * len(model.encoder.layers)


def test_bad_split_is_refused_before_any_communication():
    from hepml_kit.models import get

    tb = get("jet_transformer")
    model = tb.build(tb.config("tiny"))  # 4 heads, MLP width 96
    check_tensor_parallel(model, 2)
    with pytest.raises(ValueError, match="4 heads do not split over 3 ranks"):
        check_tensor_parallel(model, 3)
    with pytest.raises(ValueError, match="nothing to split"):
        check_tensor_parallel(nn.Sequential(nn.Linear(2, 2)), 2)


def test_dtensor_tensor_parallel_equals_single_process(pool, reference):
    ranks = pool.run(run_strategy, "tensor", **RUN, return_grads=True)
    for r in ranks:
        assert_close(torch.tensor(r["losses"]), torch.tensor(reference["losses"]), **LOSS_TOL)
        assert r["params"].keys() == reference["params"].keys()
        for name, want in reference["grads"].items():
            assert_close(r["grads"][name], want, **TOL, msg=lambda m, name=name: f"gradient of {name}: {m}")
        for name, want in reference["params"].items():
            assert_close(r["params"][name], want, **TOL,
                         msg=lambda m, name=name: f"{name} after 3 steps: {m}")
    # each rank holds half of every split matrix: its parameter bytes are well below the full model's
    assert ranks[0]["state_bytes"]["params"] < 0.75 * reference["state_bytes"]["params"]
    # the comparison can fail: three steps moved the parameters far beyond the tolerance
    from hepml_kit.models import get

    tb = get("jet_transformer")
    torch.manual_seed(RUN["seed"])
    initial = dict(tb.build(tb.config("tiny")).named_parameters())
    q = "encoder.layers.0.attn.q_proj.weight"
    assert not torch.allclose(initial[q].detach(), ranks[0]["params"][q], **TOL)


def test_megatron_by_hand_equals_single_process(pool, reference):
    ranks = pool.run(run_strategy, "megatron", **RUN, return_grads=True)
    for rank, r in enumerate(ranks):
        assert_close(torch.tensor(r["losses"]), torch.tensor(reference["losses"]), **LOSS_TOL)
        for name, want in reference["params"].items():
            got = r["params"][name]
            if got.shape != want.shape:  # a shard: rows (column-parallel) or columns (row-parallel)
                dim = 0 if got.shape[0] != want.shape[0] else 1
                want = want.chunk(2, dim=dim)[rank]
            assert_close(got, want, **TOL, msg=lambda m, name=name, rank=rank: f"{name} on rank {rank}: {m}")
    assert ranks[0]["params"]["encoder.layers.0.mlp.fc1.weight"].shape[0] * 2 == \
        reference["params"]["encoder.layers.0.mlp.fc1.weight"].shape[0]


def test_tensor_parallel_checkpoint_resumes_bitwise_and_in_one_process(pool, tmp_path):
    run = dict(RUN, steps=4)
    full = pool.run(run_strategy, "tensor", **run)[0]
    first = pool.run(run_strategy, "tensor", **run, checkpoint_dir=str(tmp_path), stop_after=2)[0]
    resumed = pool.run(run_strategy, "tensor", **run, checkpoint_dir=str(tmp_path), resume=True)[0]
    assert first["losses"] + resumed["losses"] == full["losses"]
    for name, want in full["params"].items():
        assert torch.equal(resumed["params"][name], want), f"{name} differs after resuming"
    assert not torch.equal(first["params"]["encoder.layers.0.mlp.fc1.weight"],
                           full["params"]["encoder.layers.0.mlp.fc1.weight"])
    # the DTensor checkpoint (sharded parameters and momentum) loads into one plain process
    torch.set_num_threads(1)
    single = run_strategy("single", **run, checkpoint_dir=str(tmp_path), resume=True)
    assert_close(torch.tensor(single["losses"]), torch.tensor(full["losses"][2:]), **LOSS_TOL)
    for name, want in full["params"].items():
        assert_close(single["params"][name], want, **TOL, msg=lambda m, name=name: f"{name}: {m}")
