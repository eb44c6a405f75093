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
            shower_cfg = ShowerConfig(particle=self.cfg.particle, eta_bin=self.cfg.eta_bin, energies_mev=(float(e),))
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
