"""FSDP2 on 2 gloo ranks: the same training as one process, with half the model state per rank.

Reference: `train_strategy("single", micro_batches=2)` (see test_parallel_ddp.py). fp32 FSDP: losses and
parameters rtol 1e-5 / atol 1e-6, gradients rtol 1e-5 / atol 1e-7 (summation order only). bf16 compute
(`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`): bf16 has 8 mantissa bits, so losses agree
to rtol 1e-2 and parameters to atol 1e-2 after 4 AdamW steps of lr 1e-3 (each step moves a weight ≤ lr).
"""

import pytest
import torch
from conftest import FP32_TOL as TOL
from conftest import JET_MODEL as MODEL
from conftest import JET_RUN as RUN
from torch import nn
from torch.testing import assert_close

from hepml_kit.parallel.compare import train_strategy
from hepml_kit.parallel.fsdp import (
    expected_state_bytes,
    find_blocks,
    mixed_precision,
    model_state_bytes,
    shard_model,
)


@pytest.fixture(scope="module")
def reference(jet_reference):
    return jet_reference


@pytest.fixture(scope="module")
def ddp(pool):
    return pool.run(train_strategy, "ddp", MODEL, return_params=False, **RUN)


def test_fsdp_equals_single_process(pool, reference):
    ranks = pool.run(train_strategy, "fsdp", MODEL, return_grads=True, **RUN)
    r0 = ranks[0]
    assert_close(torch.tensor(r0["losses"]), torch.tensor(reference["losses"]), **TOL)
    for name, g in reference["grads"].items():
        assert_close(r0["grads"][name], g, rtol=1e-5, atol=1e-7,
                     msg=lambda m, name=name: f"gradient of {name}: {m}")
    for name, p in reference["params"].items():
        assert_close(r0["params"][name], p, **TOL, msg=lambda m, name=name: f"parameter {name}: {m}")


def test_fsdp_bf16_close_to_single_process(pool, reference):
    r0 = pool.run(train_strategy, "fsdp_bf16", MODEL, **RUN)[0]
    assert r0["losses"] != reference["losses"], "bf16 compute should not be bitwise fp32"
    assert_close(torch.tensor(r0["losses"]), torch.tensor(reference["losses"]), rtol=1e-2, atol=0)
    for name, p in reference["params"].items():
        assert_close(r0["params"][name], p, rtol=0, atol=1e-2,
                     msg=lambda m, name=name: f"parameter {name}: {m}")
        assert r0["params"][name].dtype == torch.float32  # the sharded master weights stay fp32


def test_fsdp_holds_half_the_model_state(pool, ddp):
    fsdp = pool.run(train_strategy, "fsdp", MODEL, return_params=False, **RUN)
    n = ddp[0]["n_params"]
    for kind in ("params", "grads", "optimizer"):
        full = ddp[0]["state_bytes"][kind]
        assert all(r["state_bytes"][kind] == full for r in ddp), "DDP replicates everything"
        per_rank = [r["state_bytes"][kind] for r in fsdp]
        # each rank holds about half; shards of odd-sized dims and AdamW's step counters make it inexact
        assert all(abs(b - full / 2) <= 0.02 * full for b in per_rank), (kind, per_rank, full)
    want = expected_state_bytes(n, 2)
    assert abs(fsdp[0]["state_bytes"]["total"] - want["total"]) <= 0.02 * want["total"]
    assert ddp[0]["state_bytes"]["params"] == expected_state_bytes(n, 2, sharded=False)["params"]


def test_expected_state_bytes():
    ddp = expected_state_bytes(1000, 4, sharded=False)
    fsdp = expected_state_bytes(1000, 4)
    assert ddp == {"params": 4000, "grads": 4000, "optimizer": 8000, "total": 16000}
    assert fsdp["total"] == 4000
    assert expected_state_bytes(1000, 4, param_bytes=2, grad_bytes=2, optimizer_bytes=12)["total"] == 4000
    with pytest.raises(ValueError):
        expected_state_bytes(10, 0)


def test_blocks_and_policies():
    from hepml_kit.models import get

    tb = get(MODEL)
    model = tb.build(tb.config("tiny"))
    assert find_blocks(model) == list(model.encoder.layers)
    flat = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    assert find_blocks(flat) == [flat[0], flat[2]]  # no ModuleList: the children holding parameters
    assert mixed_precision(None).param_dtype is None
    assert mixed_precision("bf16").param_dtype == torch.bfloat16
    assert mixed_precision("bf16").reduce_dtype == torch.float32
    expected_auto = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    assert mixed_precision("auto").param_dtype == expected_auto


def test_model_state_bytes_counts_each_storage_once():
    model = nn.Linear(10, 10)  # 110 parameters
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    got = model_state_bytes(model, opt)
    assert got["params"] == 440 and got["grads"] == 440
    assert got["optimizer"] == 880 + 2 * 4  # two moments + one fp32 step counter per tensor
    tied = nn.Module()
    tied.a = nn.Linear(4, 4, bias=False)
    tied.b = nn.Linear(4, 4, bias=False)
    tied.b.weight = tied.a.weight
    assert model_state_bytes(tied)["params"] == 64


def _shard_twice():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    shard_model(model)
    try:
        shard_model(model)
    except ValueError as e:
        return str(e)
    return "no error"


def test_shard_twice_is_refused(pool):
    assert all("already sharded" in msg for msg in pool.run(_shard_twice))
