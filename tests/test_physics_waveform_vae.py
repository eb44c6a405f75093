"""Liquid-xenon physics laws the waveform generator must obey, and a broken VAE failing its bar.

Each test checks a law measured in liquid xenon, not a constant of the generator, on seeds no other test
uses (1401-1409):
- one deposit makes both signals: E = W (n_gamma + n_e) (Doke et al., Jpn. J. Appl. Phys. 41 (2002) 1538),
  recombination fluctuations anti-correlate S1 and S2 at fixed energy, so the combined energy scale is
  sharper than either signal (Conti et al., PRB 68 (2003) 054201; LUX/LZ "combined energy");
- nuclear recoils give less charge per light than electron recoils: the NR band lies below the ER band in
  log10(S2/S1) (LUX, PRL 118 (2017) 021303; NEST);
- the S1->S2 time is the drift time, and the S2 width grows with it (diffusion, sigma^2 ~ 2 D_L t_d).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hepml_kit.data.waveforms import WaveformGenConfig, generate_waveforms
from hepml_kit.models import waveform_vae as wv

TINY = WaveformGenConfig(n_samples=256, dt_ns=100.0, anomaly_rate=0.0)


@pytest.fixture(scope="module")
def events():
    return generate_waveforms(6000, seed=1401, cfg=TINY)


def _s2_area_at_gate(d, cfg):
    """S2 area corrected for the electron lifetime (what an analysis calls S2c)."""
    return d["waveform"].sum(1) / np.exp(-d["drift_time_us"] / cfg.electron_lifetime_us)


def test_s1_and_s2_come_from_one_deposit_and_anticorrelate(events):
    cfg, d = TINY, events
    s1, s2 = d["s1_waveform"].sum(1), _s2_area_at_gate(d, TINY)
    er, energy = d["recoil"] == 0, d["energy_kev"]
    # Over the spectrum both grow with the deposit...
    assert np.corrcoef(np.log(np.clip(s1[er], 1, None)), np.log(s2[er]))[0, 1] > 0.8
    # ...but at fixed energy, recombination moves quanta from charge to light: anti-correlated.
    for lo in (30.0, 60.0):
        band = er & (energy > lo) & (energy < lo * 1.06)
        assert band.sum() > 80
        assert np.corrcoef(s1[band], s2[band])[0, 1] < -0.3
    # Energy scale E = W (S1 / g1 + S2 / g2), g2 = extraction x single-electron size (the Doke plot).
    g2 = cfg.extraction_efficiency * cfg.phe_per_electron
    combined = cfg.w_ev * 1e-3 * (s1 / cfg.g1 + s2 / g2)
    assert np.median(combined[er] / energy[er]) == pytest.approx(1.0, abs=0.05)
    band = er & (energy > 30) & (energy < 32)
    spread = {name: np.std(x[band]) / np.mean(x[band]) for name, x in
              (("s1", s1 / cfg.g1), ("s2", s2 / g2), ("combined", combined))}
    assert spread["combined"] < min(spread["s1"], spread["s2"]), spread


def test_nuclear_recoils_sit_below_the_electron_recoil_band(events):
    d = events
    s1, s2 = d["s1_waveform"].sum(1), _s2_area_at_gate(d, TINY)
    log_ratio = np.log10(s2 / np.clip(s1, 1, None))
    nr = d["recoil"] == 1
    assert 0.1 < nr.mean() < 0.3
    for lo, hi in ((20, 40), (40, 80)):
        s1_bin = (s1 > lo) & (s1 < hi)
        assert (s1_bin & nr).sum() > 30 and (s1_bin & ~nr).sum() > 30
        assert np.median(log_ratio[s1_bin & nr]) < np.median(log_ratio[s1_bin & ~nr]) - 0.15


def test_s1_to_s2_time_is_the_drift_time_and_sets_the_width(events):
    d, dt_us = events, TINY.dt_ns * 1e-3
    w = np.clip(d["waveform"], 0, None)
    t = np.arange(w.shape[1]) * dt_us
    centroid = (w * t).sum(1) / w.sum(1)
    s1_to_s2 = d["window_start_us"] + centroid  # the S2's time after the S1, as the digitiser records it
    lag = s1_to_s2 - d["drift_time_us"]  # light follows the electron by ~half the luminescence time
    assert 0 < np.median(lag) < TINY.luminescence_us and np.std(lag) < 0.15  # us, out of up to 1000
    # The place of the S2 in its window moves with the drift time (within one digitiser frame).
    frame = d["window_start_us"] == np.median(d["window_start_us"])
    slope = np.polyfit(d["drift_time_us"][frame], centroid[frame], 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)
    # Diffusion: the S2 variance grows linearly with the measured S1 -> S2 time.
    var = (w * (t - centroid[:, None]) ** 2).sum(1) / w.sum(1)
    early, late = s1_to_s2 < 200, s1_to_s2 > 800
    assert np.median(var[late]) > 2.5 * np.median(var[early])


def test_broken_vae_fails_the_bar(one_thread):
    """An untrained VAE, and the metrics with the anomaly labels shuffled, both miss the bar."""
    cfg = wv.config("tiny")
    test = generate_waveforms(4000, seed=1402, cfg=replace(cfg.data, anomaly_rate=0.1))
    torch.manual_seed(0)
    model = wv.build(cfg)
    untrained = wv.metrics(model, test)
    assert not wv.threshold(untrained), untrained
    perm = np.random.default_rng(1403).permutation(len(test["anomaly"]))
    shuffled = dict(test, anomaly=test["anomaly"][perm], anomaly_kind=test["anomaly_kind"][perm])
    m = wv.metrics(model, shuffled)
    assert all(abs(m[k] - 0.5) < 0.1 for k in wv.BARS), m
    assert not wv.threshold(m)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_plots_draw_scores_and_roc_per_kind(tmp_path, one_thread):
    cfg = wv.config("tiny")
    data = generate_waveforms(1500, seed=1404, cfg=replace(cfg.data, anomaly_rate=0.2))
    torch.manual_seed(0)
    paths = wv.TESTBED.plots(wv.build(cfg), data, tmp_path)
    assert [p.name for p in paths] == ["waveform_vae_scores.png", "waveform_vae_roc.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
