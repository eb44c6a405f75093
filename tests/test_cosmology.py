"""Cosmology Monte Carlo physics (GRF, Zel'dovich, gas, flux) and the N-body -> hydro 3-D U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hepml_kit.data.cosmology import (
    GENERATOR_VERSION,
    CosmologyConfig,
    bbks_power,
    gaussian_random_field,
    generate_cosmology,
    power_spectrum,
    wavenumbers,
)
from hepml_kit.models import cosmo_unet as cu
from hepml_kit.models._testbed import fit

torch.set_num_threads(1)
SMALL = CosmologyConfig(grid=32, box_size=10.0)


# ----------------------------------------------------------------------------------------- generator
def test_power_spectrum_estimator_on_white_noise():
    rng = np.random.default_rng(0)
    k, p, n_modes = power_spectrum(rng.standard_normal((32, 32, 32)), 10.0)
    cell_volume = (10.0 / 32) ** 3
    assert np.average(p, weights=n_modes) == pytest.approx(cell_volume, rel=0.02)  # flat at sigma^2 dV
    assert 2 * math.pi / 10.0 <= k[0] < 1.5 * 2 * math.pi / 10.0 and np.all(np.diff(k) > 0)
    assert n_modes[0] == 6 * 3  # shell 1 (k_f/2, 3k_f/2]: the 6 axis modes and 12 face diagonals


def test_gaussian_random_field_has_the_input_spectrum():
    cfg = SMALL
    measured = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        delta, _ = gaussian_random_field(rng, 32, cfg.box_size, lambda k: bbks_power(k, cfg))
        measured.append(power_spectrum(delta, cfg.box_size)[1])
    # the expected binned spectrum: a field with |FFT|^2 = P N^6 / V exactly, through the same estimator
    kx, ky, kz = wavenumbers(32, cfg.box_size)
    amp = np.sqrt(bbks_power(np.sqrt(kx**2 + ky**2 + kz**2), cfg) * 32**6 / cfg.box_size**3)
    k, p_in, n_modes = power_spectrum(np.fft.irfftn(amp, s=(32,) * 3), cfg.box_size)
    ratio = np.mean(measured, 0) / p_in
    sigma = 1 / np.sqrt(n_modes * len(measured) / 2)  # each complex mode: two real Gaussian numbers
    assert np.all(np.abs(ratio - 1) < 4 * sigma + 0.01), (ratio, sigma)
    assert np.std(delta) > 0.5  # z = 3, 0.3 Mpc/h cells: mildly non-linear, as the U-Net's inputs


def test_zeldovich_cic_density_follows_the_linear_field_when_linear():
    cfg = SMALL.with_(sigma8=0.02)  # tiny displacements: 1 + delta_dm = 1 + delta_lin at first order
    d = generate_cosmology(2, 3, cfg)
    rho, lin = d["inputs"][:, 0].astype(np.float64), d["linear_density"].astype(np.float64)
    assert rho.mean() == pytest.approx(1.0, abs=1e-5)  # CIC conserves mass: one particle per cell
    k, p_dm, _ = power_spectrum(rho[0] - 1, cfg.box_size)
    _, p_lin, _ = power_spectrum(lin[0], cfg.box_size)
    low = k < 0.25 * math.pi / cfg.cell_size  # below half the Nyquist/2, lattice and CIC effects are small
    assert np.mean(p_dm[low] / p_lin[low]) == pytest.approx(1.0, abs=0.1)


def test_gas_is_the_filtered_dark_matter_and_temperature_density_relation():
    d = generate_cosmology(2, 5, SMALL)
    dm, gas, temp = d["inputs"][0, 0], d["targets"][0, 0], d["targets"][0, 1]
    assert (gas > 0).all() and gas.mean() == pytest.approx(1.0, abs=1e-3)
    assert gas.std() < dm.std()
    k, p_dm, _ = power_spectrum(dm - 1, SMALL.box_size)
    _, p_gas, _ = power_spectrum(gas - 1, SMALL.box_size)
    ratio = p_gas / p_dm
    assert ratio[0] > 0.97 and np.all(np.diff(ratio) < 0)  # smoothing grows with k
    # continuous filter 1/(1 + k^2/k_F^2)^2 bounds the lattice one from below
    assert np.all(ratio >= 1 / (1 + k**2 / SMALL.filtering_k**2) ** 2 - 0.02)
    slope, intercept = np.polyfit(np.log(gas.ravel()), np.log(temp.ravel()), 1)
    assert slope == pytest.approx(SMALL.gamma - 1, abs=1e-3)  # T = T0 (1 + delta_b)^(gamma - 1)
    assert math.exp(intercept) == pytest.approx(SMALL.t0_kelvin, rel=1e-3)


def test_lyman_alpha_flux_mean_and_density_dependence():
    d = generate_cosmology(3, 6, SMALL)
    flux, gas = d["flux"], d["targets"][:, 0]
    assert flux.mean(axis=(1, 2, 3)) == pytest.approx(np.full(3, 0.68), abs=1e-3)
    assert (flux > 0).all() and (flux < 1).all()
    order = np.argsort(gas[0].ravel())
    assert np.all(np.diff(flux[0].ravel()[order]) <= 1e-6)  # denser gas absorbs more
    tau = -np.log(flux[0].ravel().astype(np.float64))
    beta = np.polyfit(np.log(gas[0].ravel()), np.log(tau), 1)[0]
    assert beta == pytest.approx(2 - 0.7 * (SMALL.gamma - 1), abs=1e-3)


def test_velocity_inputs_are_the_zeldovich_flow():
    d = generate_cosmology(1, 7, SMALL)
    v = d["inputs"][0, 1:].astype(np.float64)  # (3, g, g, g) km/s
    kx, ky, kz = wavenumbers(32, SMALL.box_size)
    div_k = sum(1j * ki * np.fft.rfftn(v[i]) for i, ki in enumerate((kx, ky, kz)))
    div = np.fft.irfftn(div_k, s=(32,) * 3)
    # continuity: converging flow (div v < 0) where matter is dense
    assert np.corrcoef(div.ravel(), d["inputs"][0, 0].ravel())[0, 1] < -0.4
    assert 10 < v.std() < 300  # z = 3 peculiar velocities on Mpc scales: tens of km/s


def test_deterministic_and_rank_shards_union_to_serial():
    assert GENERATOR_VERSION
    cfg = CosmologyConfig(grid=16, box_size=5.0)
    serial = generate_cosmology(5, 11, cfg)
    for k, v in generate_cosmology(5, 11, cfg).items():
        np.testing.assert_array_equal(v, serial[k])
    shards = [generate_cosmology(5, 11, cfg, rank=r, world_size=2) for r in range(2)]
    for k in serial:
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), serial[k])
    assert not np.array_equal(generate_cosmology(1, 12, cfg)["inputs"], serial["inputs"][:1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="grid"):
        CosmologyConfig(grid=15)
    with pytest.raises(ValueError, match="mean_flux"):
        CosmologyConfig(mean_flux=1.2)
    with pytest.raises(ValueError, match="cubic"):
        power_spectrum(np.zeros((8, 8, 4)), 1.0)
    with pytest.raises(ValueError, match="divisible"):
        cu.UNetConfig(channels=(8, 16, 32), crop=20, data=SMALL)


# ----------------------------------------------------------------------------------------- model
def test_full_preset_has_the_tutorials_117m_parameters():
    cfg = cu.config("full")
    assert cfg.levels == 6 and cfg.channels == (64, 128, 256, 512, 512, 512)
    with torch.device("meta"):
        model = cu.build(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cu.parameter_count(cfg) == 116_977_029  # NERSC sc21-dl-tutorial networks/UNet.py
    assert abs(n / 117e6 - 1) < 0.1
    assert len(model.down) == len(model.up) == 6
    flops = [cu.flops_per_sample(cu.config(p)) for p in ("tiny", "small", "full")]
    assert 0 < flops[0] < flops[1] < flops[2]


def test_unet_shapes_and_output_range():
    cfg = cu.config("tiny")
    model = cu.build(cfg)
    out = model(torch.randn(2, 4, 16, 16, 16))
    assert out.shape == (2, 5, 16, 16, 16) and out.abs().max() <= 1.0
    assert model(torch.randn(1, 4, 32, 32, 32)).shape == (1, 5, 32, 32, 32)  # fully convolutional
    assert sum(p.numel() for p in model.parameters()) == cu.parameter_count(cfg)


def test_crops_keep_velocity_components_with_their_axes():
    cfg = cu.config("tiny")
    data = cu.generate(cfg, 3, 1)
    batch = next(cu.batches(data, 6, shuffle=True, seed=3))
    assert batch["x"].shape == (6, 4, 16, 16, 16) and batch["y"].shape == (6, 5, 16, 16, 16)
    x, y = batch["x"].numpy(), batch["y"].numpy()
    for i in range(3):  # gas velocity i is the smoothed DM velocity i, whatever rotation/flip was drawn
        for j in range(3):
            c = np.corrcoef(x[:, 1 + i].ravel(), y[:, 2 + j].ravel())[0, 1]
            assert (c > 0.8) if i == j else (abs(c) < 0.5)


def test_unet_lightning_step_runs():
    import lightning as L

    cfg = cu.config("tiny")
    module = cu.lightning(cfg, lr=1e-3)
    data = cu.generate(cfg, 2, 2)
    loader = torch.utils.data.DataLoader(list(cu.batches(data, 2, shuffle=True)), batch_size=None)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert not all(torch.equal(a, b) for a, b in zip(before, module.model.parameters()))


def test_unet_tiny_reaches_power_spectrum_threshold_from_fresh_data():
    """Threshold (module docstring): gas-density P(k) within 20% over the trained k range."""
    tb = cu.TESTBED
    cfg, d = tb.config("tiny"), tb.train_defaults["tiny"]
    train = tb.generate(cfg, d["events"], 2024)
    test = tb.generate(cfg, d["test_events"], 2025)
    untrained = tb.metrics(tb.build(cfg), test)
    assert untrained["pk_ratio_max_dev"] > 0.5 and not tb.threshold(untrained)
    model, history = fit(tb, cfg, train, epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"],
                         seed=2024, log=None)
    m = tb.metrics(model, test)
    assert history[-1] < history[0]
    assert m["pk_bins"] >= 4 and m["pk_k_min"] < m["pk_k_max"]
    assert tb.threshold(m) and m["pk_ratio_max_dev"] <= 0.2, m
    assert m["voxel_l1"] < untrained["voxel_l1"] / 3
