"""Distributed checkpoints: stop, save, resume gives the weights of an uninterrupted run.

Same number of ranks: bitwise (CPU, same operations in the same order). Different number of ranks
(FSDP2 2 -> 1 and 1 -> 2, via the single-process reference that accumulates over the same two shares):
float32 rounding, rtol 1e-5 / atol 1e-6. Tensor parallel (DTensor) checkpoints load into a plain module.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.testing import assert_close

from hepml_kit.parallel import checkpoint
from hepml_kit.parallel.compare import train_strategy

MODEL = "jet_transformer"
RUN = dict(steps=4, global_batch=32, lr=1e-3, seed=0, return_params=True)
STOP = 2
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(pool):
    torch.set_num_threads(1)
    runs = {s: pool.run(train_strategy, s, MODEL, **RUN)[0] for s in ("ddp", "fsdp")}
    runs["single"] = train_strategy("single", MODEL, micro_batches=2, **RUN)
    return runs


def _assert_params(got, want, exact):
    assert got.keys() == want.keys()
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), f"{name} differs after resuming"
        else:
            assert_close(got[name], want[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_same_ranks_is_bitwise(pool, uninterrupted, tmp_path, strategy):
    first = pool.run(train_strategy, strategy, MODEL, **RUN, checkpoint_dir=str(tmp_path), stop_after=STOP)[0]
    assert len(first["losses"]) == STOP
    resumed = pool.run(train_strategy, strategy, MODEL, **RUN, checkpoint_dir=str(tmp_path), resume=True)[0]
    full = uninterrupted[strategy]
    assert first["losses"] + resumed["losses"] == full["losses"]
    _assert_params(resumed["params"], full["params"], exact=True)
    # the comparison can fail: the weights at the stop differ from the final ones
    assert not all(torch.equal(first["params"][k], full["params"][k]) for k in full["params"])


def test_fsdp_checkpoint_resumes_on_one_process(pool, uninterrupted, tmp_path):
    pool.run(train_strategy, "fsdp", MODEL, **RUN, checkpoint_dir=str(tmp_path), stop_after=STOP)
    keys = checkpoint.saved_keys(tmp_path)
    assert any(k.startswith("train.model.encoder.layers.0.") for k in keys)
    assert any(k.startswith("train.optim.state.") for k in keys)
    resumed = train_strategy("single", MODEL, micro_batches=2, **RUN, checkpoint_dir=str(tmp_path),
                             resume=True)
    assert_close(torch.tensor(resumed["losses"]), torch.tensor(uninterrupted["fsdp"]["losses"][STOP:]), **TOL)
    _assert_params(resumed["params"], uninterrupted["fsdp"]["params"], exact=False)


def test_single_process_checkpoint_resumes_sharded_on_two_ranks(pool, uninterrupted, tmp_path):
    train_strategy("single", MODEL, micro_batches=2, **RUN, checkpoint_dir=str(tmp_path), stop_after=STOP)
    resumed = pool.run(train_strategy, "fsdp", MODEL, **RUN, checkpoint_dir=str(tmp_path), resume=True)[0]
    _assert_params(resumed["params"], uninterrupted["single"]["params"], exact=False)


def _tensor_parallel_save(path):
    """A Colwise/Rowwise-sharded MLP (DTensor parameters and optimizer state) saved by 2 ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 8, generator=torch.Generator().manual_seed(1))).square().mean().backward()
    opt.step()
    local_rows = model[0].weight.to_local().shape[0]
    checkpoint.save(path, model, opt, step=1, extra={"layout": "tp"})
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    moment = opt.state[model[0].weight]["exp_avg"].full_tensor()
    return local_rows, full, moment


def test_tensor_parallel_checkpoint_loads_into_plain_module(pool, tmp_path):
    (rows0, full, moment), (rows1, *_) = pool.run(_tensor_parallel_save, str(tmp_path))
    assert rows0 == rows1 == 8  # each rank held half of the column-sharded layer
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    info = checkpoint.load(tmp_path, plain, opt)
    assert info == {"step": 1, "extra": {"layout": "tp"}}
    for name, p in plain.named_parameters():
        assert torch.equal(p.detach(), full[name]), name
    assert torch.equal(opt.state[plain[0].weight]["exp_avg"], moment)


def test_plain_module_round_trip_without_process_group(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path / "ck", model, opt, step=7, extra={"seed": 0, "note": "x"})
    other = nn.Linear(3, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    info = checkpoint.load(tmp_path / "ck", other, other_opt)
    assert info == {"step": 7, "extra": {"seed": 0, "note": "x"}}
    assert torch.equal(other.weight, model.weight)
    momentum = other_opt.state[other.weight]["momentum_buffer"]
    assert torch.equal(momentum, opt.state[model.weight]["momentum_buffer"])
    # model only
    bare = nn.Linear(3, 2)
    checkpoint.save(tmp_path / "m", model)
    assert checkpoint.load(tmp_path / "m", bare)["step"] == 0
    assert torch.equal(bare.bias, model.bias)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing", nn.Linear(2, 2))
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "bad", nn.Linear(2, 2), extra={"f": object()})
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_strategy("single", MODEL, resume=True)
    with pytest.raises(ValueError, match="stop_after"):
        train_strategy("single", MODEL, steps=4, checkpoint_dir=str(tmp_path), stop_after=4)


def _sharded_save_flip_load(path, flip_file):
    """2 FSDP2 ranks save; rank 0 flips one bit of `flip_file`; both ranks load (each checks part of the
    files)."""
    from torch.distributed.fsdp import fully_shard

    from hepml_kit.parallel.checkpoint import CheckpointError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    fully_shard(model)
    checkpoint.save(path, model, step=1)
    files = sorted(p.name for p in Path(path).iterdir())
    dist.barrier()
    if flip_file and dist.get_rank() == 0:
        file = Path(path) / flip_file
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0x10
        file.write_bytes(bytes(data))
    dist.barrier()
    try:
        return files, checkpoint.load(path, model)["step"]
    except CheckpointError as e:
        return files, str(e)


def test_sharded_save_is_atomic_checksummed_and_verified_by_all_ranks(pool, tmp_path):
    path = tmp_path / "ck"
    (files0, step0), (files1, step1) = pool.run(_sharded_save_flip_load, str(path), None)
    assert files0 == files1 == [".metadata", "__0_0.distcp", "__1_0.distcp", checkpoint.MANIFEST]
    assert step0 == step1 == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # renamed into place, nothing left beside
    # a flipped bit in a file that only one rank checks (the ranks split the files): every rank raises,
    # naming it
    results = pool.run(_sharded_save_flip_load, str(path), "__1_0.distcp")
    for _, message in results:
        assert f"{path / '__1_0.distcp'} is damaged" in message
