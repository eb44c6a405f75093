"""The stacked ensemble trains K independent members at once, and its uncertainty is calibrated
(hepml_kit.simloop.ensemble)."""

from __future__ import annotations

import pytest
import torch

from hepml_kit.simloop.ensemble import EnsembleConfig, StackedEnsemble, calibration_error, coverage


def _data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    sigma = 0.05 + 0.3 * x[:, 0]  # heteroscedastic: noise grows with x
    y = torch.sin(3 * x[:, 0]) + sigma * torch.randn(n, generator=g)
    return x, y


def test_each_member_is_the_same_network_trained_alone():
    x, y = _data()
    ens = StackedEnsemble(1, EnsembleConfig(members=3, hidden=8, steps=30, lr=1e-2))
    w = ens.bootstrap_weights(len(x))
    ens.fit(x, y, w)
    k = 1
    alone = StackedEnsemble(1, EnsembleConfig(members=3, hidden=8, steps=30, lr=1e-2)).members[k]
    opt = torch.optim.Adam(alone.parameters(), lr=1e-2)
    z = (y - y.mean()) / y.std()
    for _ in range(30):
        opt.zero_grad()
        mean, log_var = alone(x)
        # beta-NLL
        nll = 0.5 * (log_var + (z - mean) ** 2 * torch.exp(-log_var)) * torch.exp(0.5 * log_var.detach())
        loss = (nll * w[k]).sum() / w[k].sum()
        loss.backward()
        opt.step()
    for a, b in zip(ens.member(k).parameters(), alone.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ens.member(0).net[0].weight, ens.member(k).net[0].weight), "members must differ"


def test_predictive_intervals_cover_held_out_data_as_stated():
    x, y = _data(2000, seed=1)
    ens = StackedEnsemble(1, EnsembleConfig(members=6, hidden=32, steps=400))
    ens.fit(x, y)
    xt, yt = _data(2000, seed=2)
    pred = ens.predict(xt)
    for level in (0.68, 0.9):
        assert abs(coverage(yt, pred["mean"], pred["std"], level) - level) < 0.05
    assert calibration_error(yt, pred["mean"], pred["std"]) < 0.05
    # an honest check can fail: intervals from a wrong (constant, too small) std are badly calibrated
    assert calibration_error(yt, pred["mean"], torch.full_like(yt, 0.05)) > 0.2
    # the aleatoric part follows the noise: larger where x is larger
    assert pred["aleatoric"][xt[:, 0] > 0.8].mean() > 4 * pred["aleatoric"][xt[:, 0] < 0.2].mean()


def test_disagreement_shrinks_with_more_data():
    small, big = [StackedEnsemble(1, EnsembleConfig(members=8, steps=300)) for _ in range(2)]
    small.fit(*_data(50, seed=3))
    big.fit(*_data(3000, seed=3))
    grid = torch.linspace(0, 1, 20)[:, None]
    assert big.predict(grid)["epistemic"].mean() < 0.3 * small.predict(grid)["epistemic"].mean()


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="members"):
        EnsembleConfig(members=1)
    ens = StackedEnsemble(1, EnsembleConfig(members=2, steps=1))
    with pytest.raises(ValueError, match=r"x \(N, 1\)"):
        ens.fit(torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="weight"):
        ens.fit(torch.zeros(5, 1), torch.zeros(5), torch.ones(3, 5))
    with pytest.raises(ValueError, match="level"):
        coverage(torch.zeros(3), torch.zeros(3), torch.ones(3), level=1.5)
