"""One run spec, one driver, one gradient sync, one GPU-check group (issue 13, items 1 and 6).

- `RunSpec` is frozen and rejects bad fields before any work.
- `driver.train(spec, strategy)` gives exactly what the per-family functions give (same losses, bitwise:
  they are the same code), for a registry name and for a user's own `Testbed` object.
- `average_gradients` per tensor and flat agree; ``divide=False`` sums (graph partitioning's case).
- bench/gpu_checks: `one_rank_group()` makes and removes a gloo group on CPU; the model-parallel check's
  CPU pass runs every strategy through the driver, each equal to its reference.
"""

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from hepml_kit.models import get
from hepml_kit.parallel.compare import train_strategy
from hepml_kit.parallel.driver import STRATEGIES, RunSpec, train
from hepml_kit.parallel.runner import run_strategy

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_run_spec_is_frozen_and_checked():
    spec = RunSpec("jet_transformer", steps=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 3
    assert spec.replace(steps=3).steps == 3 and spec.steps == 2
    with pytest.raises(ValueError, match="RunSpec.steps must be a positive integer"):
        RunSpec(steps=0)
    with pytest.raises(ValueError, match="RunSpec.global_batch"):
        RunSpec(global_batch=2.5)
    with pytest.raises(TypeError, match="testbed name or a Testbed"):
        RunSpec(testbed=nn.Linear(2, 2))


def test_one_strategies_tuple_and_clear_errors():
    assert len(STRATEGIES) == len(set(STRATEGIES))
    assert {"single", "naive", "bucket", "ddp", "fsdp", "tensor", "gpipe", "1f1b", "graph", "dp_pp",
            "lightning"} <= set(STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'zero3'; choose one of single, naive"):
        train(RunSpec(), "zero3")
    with pytest.raises(TypeError, match="takes a RunSpec"):
        train({"steps": 2}, "single")
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        train(RunSpec(steps=2), "tensor")
    with pytest.raises(TypeError, match="options of strategy 'lightning' only"):
        train(RunSpec(steps=2), "single", devices=2)


def test_driver_equals_the_family_functions_for_a_name_and_a_testbed_object():
    run = dict(preset="tiny", steps=2, global_batch=16, lr=1e-3, seed=0, timing_steps=0)
    by_name = train(RunSpec("jet_transformer", **run), "single")
    by_object = train(RunSpec(get("jet_transformer"), **run), "single")
    old = train_strategy("single", "jet_transformer", **run)
    assert by_name["losses"] == by_object["losses"] == old["losses"]
    mp = dict(steps=2, global_batch=16, lr=0.05, seed=0, timing_steps=2, micro_batches=2, num_layers=2)
    new = train(RunSpec(**mp), "single", reference="model_parallel")
    assert new["losses"] == run_strategy("single", **mp)["losses"]
    assert new["testbed"] == "jet_transformer"


def _sync_three_ways():
    from hepml_kit.parallel.ddp import average_gradients

    rank = dist.get_rank()
    out = {}
    ways = {"per_tensor": {}, "flat": {"flat": True}, "sum": {"flat": True, "divide": False}}
    for name, kwargs in ways.items():
        net = nn.Linear(3, 2)
        for p in net.parameters():
            p.grad = torch.full_like(p, float(rank + 1))
        calls = average_gradients(net, **kwargs)
        out[name] = ([p.grad.flatten().tolist() for p in net.parameters()], calls)
    return out


def test_average_gradients_per_tensor_flat_and_sum(pool):
    for r in pool.run(_sync_three_ways):
        assert r["per_tensor"] == ([[1.5] * 6, [1.5] * 2], 2)  # one collective per tensor
        assert r["flat"] == ([[1.5] * 6, [1.5] * 2], 1)  # one for all
        assert r["sum"] == ([[3.0] * 6, [3.0] * 2], 1)  # graph partitioning: shares of one loss add up


@pytest.fixture
def gpu_checks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    yield importlib.import_module("gpu_checks")
    for name in [m for m in sys.modules if m == "gpu_checks" or m.startswith("gpu_checks.")]:
        monkeypatch.delitem(sys.modules, name)


def test_gpu_checks_live_outside_the_package(gpu_checks):
    package = Path(__file__).resolve().parents[1] / "hepml_kit"
    assert not [p for p in package.rglob("*.py") if "gpu_check" in p.name or "gpu_smoke" in p.name]
    names = [c.name for area in gpu_checks.AREAS
             for c in importlib.import_module(f"gpu_checks.{area}").CHECKS]
    assert len(names) == len(set(names))
    assert {"parallel_model", "launch_nccl", "serve_torchscript", "hpo_trial_auto_device"} <= set(names)


def test_one_rank_group_on_cpu(gpu_checks):
    from gpu_checks.common import one_rank_group

    assert not dist.is_initialized()
    with one_rank_group("cpu") as backend:
        assert backend == "gloo" and dist.get_world_size() == 1
        with one_rank_group("cpu") as inner:  # an existing one-rank group is reused, not replaced
            assert inner == "gloo"
        assert dist.is_initialized()
    assert not dist.is_initialized()


@pytest.mark.slow  # seven strategies and their references in one process: ~20 s on 2 cores
def test_model_parallel_gpu_check_cpu_pass(gpu_checks):
    from gpu_checks.parallel import gpu_check_model_parallel

    rows = gpu_check_model_parallel(preset="tiny", steps=2, global_batch=16, device="cpu")
    assert [r["name"] for r in rows] == ["tensor", "megatron", "gpipe", "1f1b", "graph", "fsdp_tp", "dp_pp"]
    assert all(r["status"] == "ok" for r in rows), rows


def test_models_carry_their_parallel_plans_and_parallel_stays_generic():
    """The jet transformer's file declares its plans; tensor.py follows any model's plan; a testbed without
    a pipeline plan gets a clear error; no parallel/ module names a model's submodules."""
    from hepml_kit.models import jet_transformer
    from hepml_kit.parallel import pipeline, tensor

    tb = get("jet_transformer")
    assert tb.extra["pipeline"] is jet_transformer.PIPELINE_PLAN is pipeline.recipe_for("jet_transformer")
    assert tb.extra["tensor_parallel"] is jet_transformer.TENSOR_PARALLEL_PLAN

    class Block(nn.Module):  # an MLP block under other names than the default fc1/fc2
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

    model = nn.Sequential(Block(), Block())
    assert tensor.find_parallel_blocks(model) == ([], [])
    plan = {"mlp": (("up",), ("down",))}
    assert tensor.find_parallel_blocks(model, plan) == ([], ["0", "1"])
    with pytest.raises(ValueError, match="MLP width 8 does not split over 3 ranks"):
        tensor.check_tensor_parallel(model, 3, plan)
    with pytest.raises(ValueError, match="no pipeline recipe for 'tracking_gnn'"):
        pipeline.recipe_for("tracking_gnn")
    sources = [p.read_text() for p in (Path(tensor.__file__).parent).glob("*.py")]
    assert not any("encoder.layers\"" in s or "flavour_head" in s or "origin_head" in s for s in sources)


# --- the ladder, the scaling study and the HPO trials train through the driver's plain loop (issue 13) ---
# Each reference below is the loop the caller had before it moved into `driver.Loop`, kept verbatim in
# substance: the same seeds, order of construction, data and steps must give the same losses, bitwise.

def _old_ladder_losses(tb, cfg, data, rung, batch_size, steps, warmup_steps, seed=0, lr=1e-3):
    from hepml_kit.parallel.streams import batch_stream

    torch.manual_seed(seed)
    model = tb.build(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True if rung.fused_optimizer else None)
    stream = batch_stream(tb, data, batch_size, torch.device("cpu"), seed, workers=rung.workers)
    losses = []
    for i, batch in enumerate(stream):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=rung.bf16):
            loss = tb.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if i + 1 >= warmup_steps + steps:
            break
    stream.close()
    return losses


def test_ladder_rungs_train_through_the_driver_with_the_same_losses():
    from hepml_kit.parallel.driver import StepOptions
    from hepml_kit.profile.ladder import run_rung, standard_ladder

    tb = get("jet_transformer")
    cfg = tb.config("tiny")
    data = tb.generate(cfg, 64, seed=0)
    base, loader, bf16 = standard_ladder(workers=1, compile=False)[:3]
    for rung in (base, loader, bf16):
        old = _old_ladder_losses(tb, cfg, data, rung, batch_size=16, steps=3, warmup_steps=1)
        spec = RunSpec(tb, steps=3, global_batch=16, config=cfg, optimizer="adamw", data="given",
                       step_options=rung.step_options(), warmup_steps=1, device="cpu")
        new = train(spec, "single", data=data)
        assert new["losses"] == old, rung.name
        assert run_rung(tb, cfg, data, rung, batch_size=16, steps=3, warmup_steps=1,
                        device="cpu")["final_loss"] == old[-1]
    with pytest.raises(ValueError, match="activation_memory_budget needs compile=True"):
        StepOptions(activation_memory_budget=0.5)
    with pytest.raises(ValueError, match="give data= .* or batches="):
        train(RunSpec(tb, data="given"), "single")
    with pytest.raises(ValueError, match="plain loop: strategy must be one of single, ddp"):
        train(RunSpec(tb, data="given"), "fsdp", data=data)
    with pytest.raises(ValueError, match="RunSpec.data must be one of shared, per_rank, given"):
        RunSpec(data="mine")


def _old_scaling_losses(batch_size, steps=3, warmup_steps=1, seed=0, lr=1e-3):
    from hepml_kit.models import to_device

    tb = get("jet_transformer")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    cfg = tb.config("tiny")
    data = tb.generate(cfg, batch_size * (steps + warmup_steps) * world, seed, rank=rank, world_size=world)
    torch.manual_seed(seed)
    net = tb.build(cfg)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    losses = []
    for batch in tb.batches(data, batch_size, shuffle=True, seed=seed):
        loss = tb.loss(net, to_device(batch, "cpu"))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def _scaling_old_and_new(batch_size):
    world = dist.get_world_size() if dist.is_initialized() else 1
    spec = RunSpec("jet_transformer", steps=3, warmup_steps=1, global_batch=batch_size * world,
                   optimizer="adamw", data="per_rank", device="cpu")
    new = train(spec, "ddp")
    return _old_scaling_losses(batch_size), new["losses"], new["profile"]["world_size"]


def test_scaling_study_rank_function_trains_through_the_driver_with_the_same_losses(pool):
    old, new, world = _scaling_old_and_new(16)  # one process
    assert new == old and world == 1
    for old, new, world in pool.run(_scaling_old_and_new, 8):  # two DDP ranks, each its own data
        assert new == old and world == 2


def test_hpo_trial_trains_through_the_driver_with_the_same_losses():
    from hepml_kit.hpo.objective import TestbedObjective, _data
    from hepml_kit.models import to_device

    objective = TestbedObjective("waveform_vae", "auc", events=128, val_events=64, epochs=2, batch_size=32)
    trial = objective.start({"lr": 2e-3})
    assert trial.device == torch.device("cpu") and trial.loop.spec.optimizer == "testbed"
    got = [trial.train_epoch()["train_loss"] for _ in range(2)]

    tb = objective.testbed  # the trial loop before the driver: testbed optimizer, Testbed.step per batch
    cfg = objective.base_config()
    torch.manual_seed(objective.seed)
    model = tb.build(cfg)
    opt = tb.optimizer(model, cfg, 2e-3)
    data = _data(objective, cfg, "train", 0, 1)
    want = []
    for epoch in range(2):
        model.train()
        losses = [tb.step(model, to_device(b, "cpu"), opt)
                  for b in tb.batches(data, 32, shuffle=True, seed=objective.seed + epoch)]
        want.append(sum(losses) / len(losses))
        model.eval()
        with torch.no_grad():
            tb.metrics(model, _data(objective, cfg, "val", 0, 1))
    assert got == want


def test_models_fit_is_the_drivers_plain_loop_by_epochs():
    """`models._testbed.fit` (below the driver in the import graph) takes exactly the driver loop's steps."""
    from hepml_kit.models._testbed import fit
    from hepml_kit.parallel.driver import Loop

    tb = get("jet_transformer")
    cfg = tb.config("tiny")
    data = tb.generate(cfg, 64, seed=3)
    _, history = fit(tb, cfg, data, epochs=2, batch_size=16, lr=2e-3, seed=3, log=None)
    loop = Loop(RunSpec(tb, config=cfg, lr=2e-3, seed=3, optimizer="testbed", data="given", device="cpu"))
    per_epoch = [loop.run(tb.batches(data, 16, shuffle=True, seed=3 + epoch)) for epoch in range(2)]
    assert history == [sum(losses) / len(losses) for losses in per_epoch]
