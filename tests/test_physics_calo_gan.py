"""Issue 14 item 1: the calorimeter GAN's absolute bar (chi2/ndf of total and layer energies against
held-out simulation, classifier AUC, sigma(E_vis/E) ratio). The bar is met by the simulation itself, missed
by an untrained generator; seeds 9401-9404 are used nowhere else."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hepml_kit.data.showers import ShowerConfig, generate_showers
from hepml_kit.models import calo_gan as cg

torch.set_num_threads(1)


class SimulationAsGenerator(nn.Module):
    """A perfect generator: fresh Geant4-like showers (the real Monte Carlo, another seed) for the asked
    incident energies, in the layout `CaloGAN.generate` returns."""

    def __init__(self, cfg: cg.CaloGANConfig, seed: int):
        super().__init__()
        self.cfg, self.seed = cfg, seed

    def generate(self, energies_mev, generator=None):
        energies = np.asarray(energies_mev, dtype=np.float64)
        out = np.zeros((len(energies), self.cfg.n_voxels), np.float32)
        for i, e in enumerate(np.unique(energies)):
            sel = np.flatnonzero(energies == e)
            shower_cfg = ShowerConfig(particle=self.cfg.particle, eta_bin=self.cfg.eta_bin,
                                      energies_mev=(float(e),))
            out[sel] = generate_showers(len(sel), self.seed + i, shower_cfg)["voxels"]
        return torch.from_numpy(out)


def test_two_sample_chi2_is_one_per_degree_of_freedom_for_one_distribution():
    """Gagunashvili's two-sample chi2 follows chi2(ndf): mean ndf, so chi2/ndf ~ 1 within sqrt(2/ndf)."""
    rng = np.random.default_rng(9401)
    values = [cg.chi2_two_sample(rng.normal(size=2000), rng.normal(size=1500), 20) for _ in range(40)]
    ratio = np.mean([c for c, _ in values]) / values[0][1]
    assert values[0][1] == 19 and abs(ratio - 1) < 3 * np.sqrt(2 / 19 / 40)
    c, ndf = cg.chi2_two_sample(rng.normal(size=1000), rng.normal(0.5, 1, size=1000), 20)
    assert c / ndf > 5  # the tiny bar: a half-sigma shift with 1000 showers per energy is flagged


def test_bar_is_met_by_the_simulation_and_missed_by_an_untrained_generator():
    cfg = cg.config("tiny")
    held_out = cg.generate(cfg, 2048, 9402)
    perfect = cg.metrics(SimulationAsGenerator(cfg, 9403), held_out)
    assert perfect["chi2_ndf_total_energy"] < 2.0 and perfect["chi2_ndf_layer_energy"] < 2.0, perfect
    assert perfect["classifier_auc"] < 0.6 and 0.85 < perfect["resolution_ratio"] < 1.15
    assert cg.threshold(perfect)
    torch.manual_seed(9404)
    untrained = cg.metrics(cg.build(cfg), held_out)
    assert untrained["chi2_ndf_total_energy"] > 20 and untrained["classifier_auc"] > 0.95
    assert not cg.threshold(untrained)
    too_wide = dict(perfect, resolution_ratio=8.0)  # the case: energy spread 8x the simulated one
    assert not cg.threshold(too_wide)


def test_plots_write_the_shower_profiles_and_energy_response(tmp_path):
    cfg = cg.config("tiny")
    torch.manual_seed(0)
    paths = cg.plots(cg.build(cfg), cg.generate(cfg, 256, 9405), tmp_path)
    assert [p.name for p in paths] == ["calo_gan_longitudinal_profile.png", "calo_gan_energy_response.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert cg.TESTBED.plots is cg.plots  # `hepml-kit validate calo_gan --plots DIR` draws them


def test_fractions_generator_conserves_energy_and_reads_out_sampling_fluctuations():
    """The tiny generator's readout: total x layer shares x voxel shares is the expected shower; the drawn
    voxels are whole numbers of spots of a^2 x 1 GeV (empty voxels exactly 0, as in the simulation) times a
    per-shower gain, so one expected shower read out many times fluctuates as sigma/E = a / sqrt(E_dep)
    (+) c, the sampling-calorimeter law the simulation obeys (Fabjan & Gianotti, RMP 75 (2003) 1243)."""
    cfg = cg.config("tiny")
    torch.manual_seed(9406)
    gen = cg.build(cfg).generator
    n, energy = 4000, 4096.0
    z = torch.randn(1, cfg.latent_dim).expand(n, -1)  # one shower, read out n times
    label = cg.energy_label(torch.full((n,), energy))
    with torch.no_grad():
        gen.head.bias[-1] = -300.0  # no response noise: one expected shower
        expected, drawn = gen.sample(z, label, torch.Generator().manual_seed(9407))
        # the total
        head = torch.exp(cfg.response_step * gen.head(gen.net(torch.cat([z, label], 1)))[:, -2] - 0.1)
    total = float(expected[0].sum())
    assert torch.allclose(expected.sum(1), head) and 0.5 < total < 1.0  # shares sum to one: E conserved
    spot = cfg.shower.spot_energy_mev / energy
    occupied = drawn[drawn > 0] / spot
    assert (drawn == 0).float().mean() > 0.3 and occupied.min() > 0.95  # empty or at least one spot
    a, c = cfg.shower.stochastic_term, cfg.shower.constant_term
    law = np.hypot(a / np.sqrt(energy / 1000 * total), c)
    measured = float(drawn.sum(1).std() / drawn.sum(1).mean())
    assert abs(measured / law - 1) < 0.08, (measured, law)
    assert abs(float(drawn.sum(1).mean()) / total - 1) < 0.01  # the readout is unbiased


def test_gan_trained_on_shuffled_energy_labels_misses_every_bar():
    """Issue 14: a broken model must fail the bar. Trained as the tiny preset but with the incident
    energies shuffled among the showers, the GAN cannot learn sigma/E ~ 1/sqrt(E) nor the energy dependence
    of the longitudinal profile (shower maximum ~ ln E)."""
    from hepml_kit.models._testbed import fit

    cfg = cg.config("tiny")
    d = cg.TRAIN_DEFAULTS["tiny"]
    train = cg.generate(cfg, d["events"], 9408)
    train["label"] = train["label"][torch.randperm(len(train["label"]),
                                                   generator=torch.Generator().manual_seed(9408))]
    model, _ = fit(cg.TESTBED, cfg, train, epochs=d["epochs"], batch_size=d["batch_size"],
                   lr=d["lr"], seed=9408, log=None)
    m = cg.metrics(model, cg.generate(cfg, 4096, 9409))
    assert m["chi2_ndf_total_energy"] > cg.BARS["chi2_ndf_total_energy"], m
    assert m["chi2_ndf_layer_energy"] > cg.BARS["chi2_ndf_layer_energy"], m
    assert m["classifier_auc"] > cg.BARS["classifier_auc"], m
    lo, hi = cg.BARS["resolution_ratio"]
    assert not lo <= m["resolution_ratio"] <= hi, m
    assert not cg.threshold(m)
