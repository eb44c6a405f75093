"""Checks of exercises 02 and 03: solutions pass, plausible wrong answers fail with a useful message."""

import sys

import cloudpickle
import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed

# The learner's functions travel to the ranks as arguments of the check's own rank function; engines cannot
# import this test file, so send its functions by value (notebook functions travel by value anyway).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- ex02 ------------------------------------------------------------------------------------------------

def shard_solution(batch, rank, world_size):
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            if v.shape[0] % world_size:
                raise ValueError("batch does not split evenly")
            v = v[rank::world_size]
        out[k] = v
    return out


def shard_contiguous(batch, rank, world_size):
    n = len(batch["x"]) // world_size
    if len(batch["x"]) % world_size:
        raise ValueError("uneven")
    return {k: (v[rank * n:(rank + 1) * n] if torch.is_tensor(v) else v) for k, v in batch.items()}


def shard_no_check(batch, rank, world_size):
    return {k: (v[rank::world_size] if torch.is_tensor(v) else v) for k, v in batch.items()}


def test_ex02_shard(capsys):
    check.ex02_shard(shard_solution)
    assert "passed" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="contiguous block"):
        check.ex02_shard(shard_contiguous)
    with pytest.raises(CheckFailed, match="raise ValueError"):
        check.ex02_shard(shard_no_check)
    with pytest.raises(CheckFailed, match="pass through"):
        check.ex02_shard(lambda b, r, w: {k: v[r::w] for k, v in b.items() if torch.is_tensor(v)})


def average_solution(model):
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def average_sum_only(model):
    for p in model.parameters():
        dist.all_reduce(p.grad)


def test_ex02_average_gradients(pool, capsys):
    check.ex02_average_gradients(average_solution, workers=pool)
    assert "passed" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="sum over ranks; divide by the world size"):
        check.ex02_average_gradients(average_sum_only, workers=pool)


# ---- ex03 ------------------------------------------------------------------------------------------------

def bytes_solution(n_params, world_size, sharded):
    per_param = 4 + 4 + 8
    return n_params * per_param / (world_size if sharded else 1)


def test_ex03_expected_bytes(capsys):
    check.ex03_expected_bytes(bytes_solution)
    assert "passed" in capsys.readouterr().out
    wrong = {
        "AdamW also keeps two moments": lambda n, w, s: n * 8 / (w if s else 1),
        "only the weights": lambda n, w, s: n * 4 / (w if s else 1),
        "divides it by the": lambda n, w, s: n * 16,
        "DDP does not shard": lambda n, w, s: n * 16 / w,
    }
    for message, fn in wrong.items():
        with pytest.raises(CheckFailed, match=message):
            check.ex03_expected_bytes(fn)


def shard_fsdp_solution(model):
    for layer in model.encoder.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def shard_root_only(model):
    fully_shard(model)
    return model


def test_ex03_shard(pool, capsys):
    check.ex03_shard(shard_fsdp_solution, workers=pool)
    assert "passed" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="Call fully_shard on each layer"):
        check.ex03_shard(shard_root_only, workers=pool)


def test_hints_exist_without_solutions(capsys):
    check.hint("ex02")
    check.hint("ex03")
    text = capsys.readouterr().out
    assert "ex02_average_gradients" in text and "ex03_shard" in text
    assert "all_reduce" in text and "p.grad /=" not in text
