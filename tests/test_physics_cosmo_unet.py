"""Issue 14 item 5: the cosmology U-Net's bar tests phases (r(k)) and the velocity power, not only the
density P(k). Stand-in predictors built from the real simulation show which bar catches what; seeds
9501-9504 are used nowhere else."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hepml_kit.data.cosmology import cross_power_spectrum, gaussian_random_field, power_spectrum
from hepml_kit.models import cosmo_unet as cu

torch.set_num_threads(1)


class Lookup(nn.Module):
    """Predicts, for each input box, a stored field (network units): the truth, or a corrupted truth."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.x, self.y = x, y
        self.anchor = nn.Parameter(torch.zeros(()))  # predict() asks for a device

    def forward(self, x):
        rows = [int(torch.argmin((self.x - xi).abs().flatten(1).sum(1))) for xi in x]
        return self.y[rows]


def test_cross_correlation_of_a_field_with_itself_and_with_an_independent_one():
    """r(k) = 1 for identical phases whatever the amplitude; ~0 (within 1/sqrt(modes)) for independent
    Gaussian fields (the estimator's law)."""
    rng = np.random.default_rng(9501)
    a, _ = gaussian_random_field(rng, 32, 10.0, lambda k: 1.0 / np.maximum(k, 1e-3) ** 2)
    b, _ = gaussian_random_field(rng, 32, 10.0, lambda k: 1.0 / np.maximum(k, 1e-3) ** 2)
    _, p_aa, modes = power_spectrum(a, 10.0)
    assert np.allclose(cross_power_spectrum(a, 3 * a, 10.0)[1] / np.sqrt(p_aa * 9 * p_aa), 1.0)
    r = cross_power_spectrum(a, b, 10.0)[1] / np.sqrt(p_aa * power_spectrum(b, 10.0)[1])
    assert np.all(np.abs(r[4:]) < 4 / np.sqrt(modes[4:]))


def test_bar_passes_the_truth_and_catches_wrong_phases_wrong_velocity_and_an_untrained_net():
    cfg = cu.config("tiny")
    data = cu.generate(cfg, 3, 9502)
    x, y = data["x"], data["y"]
    truth = cu.metrics(Lookup(x, y), data)
    assert truth["pk_ratio_max_dev"] < 1e-6 and truth["r_min"] > 0.999 and cu.threshold(truth)
    # right amplitudes, wrong phases (each box predicts another box's gas): P(k) alone would pass
    shuffled = cu.metrics(Lookup(x, y[torch.tensor([1, 2, 0])]), data)
    assert shuffled["r_min"] < 0.5 and not cu.threshold(shuffled)
    # gas velocity 14% too fast: 30% too much velocity power (the example), density perfect
    fast = y.clone()
    fast[:, 2:] *= math.sqrt(1.3)
    wrong_v = cu.metrics(Lookup(x, fast), data)
    assert (wrong_v["pk_ratio_max_dev_velocity"] > 0.29 and wrong_v["r_min"] > 0.999
            and not cu.threshold(wrong_v))
    torch.manual_seed(9502)
    untrained = cu.metrics(cu.build(cfg), data)
    assert not cu.threshold(untrained)


def test_plots_write_power_spectra_and_cross_correlation(tmp_path):
    cfg = cu.config("tiny")
    data = cu.generate(cfg, 1, 9503)
    paths = cu.plots(Lookup(data["x"], data["y"]), data, tmp_path)
    assert [p.name for p in paths] == ["cosmo_unet_power_spectra.png", "cosmo_unet_cross_correlation.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert cu.TESTBED.plots is cu.plots


def test_velocity_power_loss_term_sees_missing_small_scale_power():
    """The (windowed) crop power spectrum of white noise is flat, scales as amplitude^2, ignores a uniform
    offset (a bulk flow carries no k > 0 power), and the loss's spectrum term
    is zero for the truth and grows when a prediction is smoothed (small-scale power lost, the L1 fit's bias
    that the velocity band of the bar catches)."""
    gen = torch.Generator().manual_seed(9504)
    noise = torch.randn(4, 3, 16, 16, 16, generator=gen)
    p = cu.crop_power(noise, 4)
    assert torch.allclose(p / p.mean(), torch.ones(4), atol=0.15)
    torch.testing.assert_close(cu.crop_power(3 * noise, 4), 9 * p)
    torch.testing.assert_close(cu.crop_power(noise + 5.0, 4), p, rtol=1e-3, atol=0)  # a bulk flow: no power
    cfg = cu.config("tiny").with_(velocity_pk_loss_weight=1.0, density_loss_weight=0.0)
    y = torch.rand(2, 5, 16, 16, 16, generator=gen) * 0.2
    y[:, 2:] = noise[:2] * 0.2

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    batch = {"x": torch.zeros(2, 4, 16, 16, 16), "y": y}
    assert float(cu.loss(Fixed(y), batch, cfg)) == pytest.approx(0.0, abs=1e-6)
    smooth = y.clone()
    smooth[:, 2:] = F.avg_pool3d(F.pad(y[:, 2:], (1,) * 6, mode="circular"), 3, stride=1)
    l1_only = cu.loss(Fixed(smooth), batch, cfg.with_(velocity_pk_loss_weight=0.0))
    assert float(cu.loss(Fixed(smooth), batch, cfg)) > float(l1_only) + 0.5  # ln P off by > 0.5 per shell


def test_tiny_learning_rate_drops_for_the_last_quarter_of_training():
    cfg = cu.config("tiny")
    d = cu.TRAIN_DEFAULTS["tiny"]
    steps = d["epochs"] * d["events"] * cfg.crops_per_box // d["batch_size"]
    assert cfg.lr_drop_step == 3 * steps // 4
    model = nn.Linear(2, 1)
    opt = cu.make_optimizer(model, cfg, d["lr"])
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[cfg.lr_drop_step - 2] == d["lr"] and lrs[-1] == pytest.approx(cfg.lr_drop_factor * d["lr"])
