"""Hybrid parallelism on a 2 × 2 grid of 4 gloo ranks equals one process (the suite's one 4-rank pool).

- data × tensor (FSDP2 over dp, DTensor TP over tp), jet transformer tiny, 2 SGD steps. Reference: one
  process accumulating the loss over the two dp shares of each batch. Tolerances: losses rtol 1e-5 /
  atol 1e-6, parameters rtol 1e-4 / atol 1e-6 (float32 summation order of the reduce-scatter and the TP
  all-reduce).
- data × pipeline (2 replicas × 2 stages, 2 micro-batches, 4 layers). Reference: accumulation over the
  dp shares and, within each, the micro-batches. Same tolerances.
The process groups must be the picotron grid's lines: dp = grid[:, p, t], pp = grid[d, :, t], tp = grid[d, p,
:].
"""

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

import hepml_kit as hk
from hepml_kit.parallel.runner import run_strategy

LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
TOL = dict(rtol=1e-4, atol=1e-6)
TP_RUN = dict(steps=2, global_batch=32, lr=0.05, seed=0, dims={"dp": 2, "tp": 2})
PP_RUN = dict(steps=2, global_batch=32, lr=0.05, seed=0, dims={"dp": 2, "pp": 2},
              micro_batches=2, num_layers=4)


@pytest.fixture(scope="module")
def pool4():
    with hk.Workers(n=4) as w:
        yield w


def _groups_match_grid():
    from hepml_kit.parallel.hybrid import ProcessGroups

    out = {}
    for dims in ({"dp": 2, "tp": 2}, {"dp": 2, "pp": 2}, {"pp": 2, "tp": 2}):
        g = ProcessGroups(**dims)
        out[repr(g)] = {d: (g.ranks(d), dist.get_process_group_ranks(getattr(g, f"{d}_group")))
                        for d in ("dp", "pp", "tp")}
    try:
        ProcessGroups(dp=3, tp=2)
    except ValueError as e:
        out["error"] = str(e)
    return out


def test_process_groups_are_the_grid_lines(pool4):
    ranks = pool4.run(_groups_match_grid)
    for r in ranks:
        for name, lines in r.items():
            if name != "error":
                for dim, (from_grid, from_mesh) in lines.items():
                    assert from_grid == from_mesh, \
                        f"{name}: {dim} group {from_mesh} is not the grid line {from_grid}"
        assert "must equal the world size 4" in r["error"]
    dp_tp = ranks[3]["rank 3 = (dp 1, pp 0, tp 1) of dp=2 × pp=1 × tp=2"]
    assert dp_tp["tp"][0] == [2, 3] and dp_tp["dp"][0] == [1, 3]
    pp_tp = ranks[1]["rank 1 = (dp 0, pp 0, tp 1) of dp=1 × pp=2 × tp=2"]
    assert pp_tp["pp"][0] == [1, 3] and pp_tp["tp"][0] == [0, 1]


def test_fsdp_times_tensor_parallel_equals_single_process(pool4):
    torch.set_num_threads(1)
    reference = run_strategy("single", **{k: v for k, v in TP_RUN.items() if k != "dims"}, shards=2)
    ranks = pool4.run(run_strategy, "fsdp_tp", **TP_RUN)
    for r in ranks:
        assert_close(torch.tensor(r["losses"]), torch.tensor(reference["losses"]), **LOSS_TOL)
        for name, want in reference["params"].items():
            assert_close(r["params"][name], want, **TOL,
                         msg=lambda m, name=name: f"{name} after 2 steps: {m}")
    # sharded twice (tp slice, then dp shard): each rank keeps well under half of the parameters
    assert ranks[0]["state_bytes"]["params"] < 0.5 * reference["state_bytes"]["params"]


def test_data_times_pipeline_equals_single_process(pool4):
    torch.set_num_threads(1)
    reference = run_strategy("single", **{k: v for k, v in PP_RUN.items() if k != "dims"}, shards=2)
    ranks = pool4.run(run_strategy, "dp_pp", **PP_RUN)
    stage0, stage1 = set(ranks[0]["params"]), set(ranks[1]["params"])
    assert stage0 == set(ranks[2]["params"]) and stage1 == set(ranks[3]["params"])  # replicas of a stage
    assert stage0 | stage1 == set(reference["params"]) and stage0.isdisjoint(stage1)
    for r in ranks:
        assert_close(torch.tensor(r["losses"]), torch.tensor(reference["losses"]), **LOSS_TOL)
        for name, got in r["params"].items():
            assert_close(got, reference["params"][name], **TOL,
                         msg=lambda m, name=name: f"{name} after 2 steps: {m}")
