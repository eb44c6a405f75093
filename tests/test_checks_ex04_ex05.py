"""The checks of exercises 04 and 05 pass the solutions and fail plausible wrong answers helpfully."""

import sys

import cloudpickle
import pytest
import torch
import torch.distributed as dist

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed

# the answers below travel to the engines by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---- ex04: row-parallel linear -------------------------------------------------------------------


def row_parallel(x_shard, w_shard, bias):
    y = x_shard @ w_shard.T
    dist.all_reduce(y)
    return y + bias


def row_parallel_partial_only(x_shard, w_shard, bias):
    return x_shard @ w_shard.T + bias


def row_parallel_bias_inside(x_shard, w_shard, bias):
    y = x_shard @ w_shard.T + bias
    dist.all_reduce(y)
    return y


def row_parallel_differentiable(x_shard, w_shard, bias):
    import torch.distributed.nn.functional as dfn

    return dfn.all_reduce(x_shard @ w_shard.T) + bias


def test_ex04_row_parallel_passes_the_solution(pool, capsys):
    check.ex04_row_parallel(row_parallel, workers=pool)
    assert "ex04_row_parallel passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, says", [
    (row_parallel_partial_only, "only its partial product"),
    (row_parallel_bias_inside, "bias was added 2 times"),
    (row_parallel_differentiable, "passes them through unchanged"),
])
def test_ex04_row_parallel_explains_wrong_answers(pool, wrong, says):
    with pytest.raises(CheckFailed, match=says):
        check.ex04_row_parallel(wrong, workers=pool)


# ---- ex04: bubble and halo (no ranks needed) -------------------------------------------------------


def test_ex04_bubble():
    check.ex04_bubble(lambda p, m: (p - 1) / (m + p - 1))
    with pytest.raises(CheckFailed, match="relative to the useful compute"):
        check.ex04_bubble(lambda p, m: (p - 1) / m)
    with pytest.raises(CheckFailed, match="busy share"):
        check.ex04_bubble(lambda p, m: m / (m + p - 1))


def halo(owner, edge_index, rank):
    src, dst = edge_index
    touching = (owner[src] == rank) | (owner[dst] == rank)
    ends = torch.unique(torch.cat([src[touching], dst[touching]]))
    return ends[owner[ends] != rank]


def test_ex04_halo():
    check.ex04_halo(halo)

    def outgoing_only(owner, edge_index, rank):
        src, dst = edge_index
        return torch.unique(dst[(owner[src] == rank) & (owner[dst] != rank)])

    with pytest.raises(CheckFailed, match="only outgoing edges"):
        check.ex04_halo(outgoing_only)

    def with_owned(owner, edge_index, rank):
        src, dst = edge_index
        touching = (owner[src] == rank) | (owner[dst] == rank)
        return torch.unique(torch.cat([src[touching], dst[touching]]))

    with pytest.raises(CheckFailed, match="contains nodes this rank owns"):
        check.ex04_halo(with_owned)


# ---- ex05: grid groups and local batch ---------------------------------------------------------------


def groups(world, dp, pp, tp, rank):
    grid = torch.arange(world).view(dp, pp, tp)
    d, p, t = (int(c) for c in torch.nonzero(grid == rank)[0])
    return {"dp": grid[:, p, t].tolist(), "pp": grid[d, :, t].tolist(), "tp": grid[d, p, :].tolist()}


def test_ex05_groups():
    check.ex05_groups(groups)

    def tp_slowest(world, dp, pp, tp, rank):  # the layout transposed: tp groups across "nodes"
        grid = torch.arange(world).view(tp, pp, dp).permute(2, 1, 0)
        d, p, t = (int(c) for c in torch.nonzero(grid == rank)[0])
        return {"dp": grid[:, p, t].tolist(), "pp": grid[d, :, t].tolist(), "tp": grid[d, p, :].tolist()}

    with pytest.raises(CheckFailed, match="dp and tp groups are swapped"):
        check.ex05_groups(tp_slowest)


def test_ex05_local_batch():
    check.ex05_local_batch(lambda batch, d, dp, t, tp: {k: v[d::dp] for k, v in batch.items()})
    with pytest.raises(CheckFailed, match="sharded by the global rank"):
        check.ex05_local_batch(lambda batch, d, dp, t, tp: {k: v[d * tp + t::dp * tp]
                                                            for k, v in batch.items()})


def test_hints_exist_for_every_check(capsys):
    check.hint("ex04")
    check.hint("ex05")
    out = capsys.readouterr().out
    for name in ("ex04_row_parallel", "ex04_bubble", "ex04_halo", "ex05_groups", "ex05_local_batch"):
        assert f"hint for {name}" in out
