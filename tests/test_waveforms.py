"""Waveform generator physics (S1, S2, anomalies) and the waveform VAE: shapes, export, training bar."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hepml_kit.data.waveforms import (
    ANOMALY_KINDS,
    BLOCK,
    WaveformGenConfig,
    generate_waveforms,
    normalise_waveforms,
    s2_sigma_us,
)
from hepml_kit.models import fit
from hepml_kit.models import waveform_vae as wv

TINY = WaveformGenConfig(n_samples=256, dt_ns=100.0)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _rms_us(waveform, dt_ns):
    w = np.clip(waveform, 0, None)
    t = np.arange(w.shape[1]) * dt_ns * 1e-3
    mean = (w * t).sum(1) / w.sum(1)
    return np.sqrt((w * (t - mean[:, None]) ** 2).sum(1) / w.sum(1))


# ---- generator ------------------------------------------------------------------------------------


def test_s2_width_grows_as_sqrt_drift_time():
    cfg = replace(TINY, anomaly_rate=0.0)
    d = generate_waveforms(4000, seed=3, cfg=cfg)
    var = _rms_us(d["waveform"], cfg.dt_ns) ** 2
    drift = d["drift_time_us"]
    centres = np.arange(100, 1000, 200)
    medians = [np.median(var[np.abs(drift - c) < 100]) for c in centres]
    assert (np.diff(medians) > 0).all(), medians
    slope = np.polyfit(centres, medians, 1)[0]  # variance grows linearly: 2 D_L / v_d^2 per us of drift
    d_l = cfg.diffusion_cm2_s * 1e-4  # mm^2/us
    assert slope == pytest.approx(2 * d_l / cfg.drift_velocity_mm_us**2, rel=0.12)
    assert s2_sigma_us(500.0, cfg) == pytest.approx(1.0, rel=0.15)  # ~1 us at mid-drift (physics notes)


def test_s1_decay_shows_triplet_component():
    cfg = replace(TINY, anomaly_rate=0.0)
    s1 = generate_waveforms(3000, seed=4, cfg=cfg)["s1_waveform"].mean(0)
    t = np.arange(len(s1)) * cfg.s1_dt_ns - cfg.s1_pretrigger_ns
    late = (t > 40) & (t < 140)
    slope, log_amp = np.polyfit(t[late], np.log(s1[late]), 1)
    assert -1 / slope == pytest.approx(cfg.triplet_tau_ns, rel=0.12)
    # The fast singlet shows up as area above the triplet exponential extrapolated back to t = 0.
    triplet_area = np.exp(log_amp) * (-1 / slope) / cfg.s1_dt_ns
    singlet_fraction = 1 - triplet_area / s1.sum()
    assert 0.12 < singlet_fraction < 0.45
    # Control: without a triplet the late window is empty.
    fast = generate_waveforms(1000, seed=4, cfg=replace(cfg, singlet_fraction=1.0))["s1_waveform"].mean(0)
    assert fast[late].mean() < 0.01 * fast.max() < s1[late].mean()


def test_s2_size_follows_electron_lifetime_and_spe_gain():
    # A mono-energetic line (83mKr, 41.5 keV), as TPCs measure the electron lifetime.
    cfg = replace(TINY, anomaly_rate=0.0, electron_lifetime_us=1000.0,
                  er_energy_kev=(41.5, 41.5), nr_fraction=0.0)
    d = generate_waveforms(6000, seed=5, cfg=cfg)
    area, drift = d["waveform"].sum(1), d["drift_time_us"]
    ratio = area[drift > 900].mean() / area[drift < 100].mean()
    assert ratio == pytest.approx(np.exp(-900 / 1000), rel=0.1)
    expected = d["s2_electrons"] * cfg.phe_per_electron
    assert np.median(area / expected) == pytest.approx(1.0, abs=0.03)
    s1_gain = d["s1_waveform"].sum(1)[d["s1_phd"] > 20] / d["s1_phd"][d["s1_phd"] > 20]
    assert s1_gain.mean() == pytest.approx(1.0, abs=0.02)  # SPE areas average one photoelectron
    assert 0.02 < s1_gain.std() < 0.2  # gain spread (30%/sqrt(phd)) and noise


@pytest.mark.parametrize("rate", [0.01, 0.1])
def test_anomaly_rate_matches_config(rate):
    n = 12000
    d = generate_waveforms(n, seed=6, cfg=replace(TINY, anomaly_rate=rate))
    assert abs(d["anomaly"].mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / n)
    kinds = np.bincount(d["anomaly_kind"], minlength=len(ANOMALY_KINDS))
    assert kinds[0] == (d["anomaly"] == 0).sum() and (kinds[1:] > 0).all()


def test_anomalies_look_like_their_kind():
    cfg = replace(TINY, anomaly_rate=0.5)
    d = generate_waveforms(4000, seed=7, cfg=cfg)
    rms, kind = _rms_us(d["waveform"], cfg.dt_ns), d["anomaly_kind"]
    normal = rms[kind == 0]
    assert np.median(rms[kind == 2]) < np.quantile(normal, 0.02)  # gas S2s: narrower than any drift
    assert np.median(rms[kind == 1]) > np.median(normal)  # double S2s: wider
    assert np.median(rms[kind == 3]) > np.median(normal)  # electron trains: a long tail
    assert (d["pileup_phd"][kind == 4] >= 0).all() and (d["pileup_phd"][kind != 4] == 0).all()


def test_deterministic_and_rank_shards_union_equals_serial():
    n, world = BLOCK + 300, 2
    serial = generate_waveforms(n, seed=8, cfg=TINY)
    again = generate_waveforms(n, seed=8, cfg=TINY)
    shards = [generate_waveforms(n, seed=8, cfg=TINY, rank=r, world_size=world) for r in range(world)]
    for k in serial:
        np.testing.assert_array_equal(again[k], serial[k])
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), serial[k])
    assert not np.array_equal(generate_waveforms(50, seed=9, cfg=TINY)["waveform"], serial["waveform"][:50])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="anomaly_rate"):
        WaveformGenConfig(anomaly_rate=1.5)
    with pytest.raises(ValueError, match="rank"):
        generate_waveforms(10, seed=0, rank=-1, world_size=2)
    with pytest.raises(ValueError, match="divisible"):
        wv.config("tiny", channels=(8, 8, 8, 8, 8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="dt_ns"):
        normalise_waveforms(np.zeros((2, 16)), 0.0)
    with pytest.raises(ValueError, match="both classes"):
        wv.roc_auc(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="must be finite, got 1 NaN"):
        wv.roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.2, 0.3]))


# ---- model ----------------------------------------------------------------------------------------


def test_shapes_param_counts_and_flops():
    counts = {}
    for preset in ("tiny", "small", "full"):
        cfg = wv.config(preset)
        model = wv.build(cfg).eval()
        S = cfg.data.n_samples
        recon, mu, logvar = model(torch.zeros(3, S))
        assert recon.shape == (3, S) and mu.shape == logvar.shape == (3, cfg.latent_dim)
        counts[preset] = sum(p.numel() for p in model.parameters())
        assert wv.flops_per_sample(cfg) > 6 * counts[preset] * 0.5  # convolutions reuse weights
    assert counts["tiny"] < counts["small"] < counts["full"]


def test_roc_auc():
    label = np.array([0, 0, 0, 1, 1])
    assert wv.roc_auc(label, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == 1.0
    assert wv.roc_auc(label, np.array([0.9, 0.8, 0.7, 0.1, 0.2])) == 0.0
    assert wv.roc_auc(label, np.ones(5)) == 0.5
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (7, 100, 2048):  # rounded scores: many ties, which count one half as in sklearn
        label = rng.random(n) < 0.3
        label[:2] = [True, False]
        score = np.round(rng.normal(label * 0.5, 1.0), 1).astype(np.float32)
        assert wv.roc_auc(label, score) == pytest.approx(roc_auc_score(label, score), abs=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export_and_lightning_step(one_thread):
    import lightning as L

    cfg = wv.config("tiny")
    data = generate_waveforms(64, seed=1, cfg=cfg.data)
    model = wv.build(cfg).eval()
    x = next(wv.batches(data, 16))["waveform"]
    torch.testing.assert_close(torch.jit.script(model)(x)[0], model(x)[0])
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x)[0], model(x)[0])

    module = wv.lightning(cfg, lr=1e-3)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    loader = torch.utils.data.DataLoader(list(wv.batches(data, 16)), batch_size=None)  # already batched
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, module.model.parameters()))


def test_tiny_vae_finds_anomalies_from_fresh_data(one_thread):
    tb = wv.TESTBED
    cfg, d = tb.config("tiny"), tb.train_defaults["tiny"]
    train = tb.generate(cfg, d["events"], seed=31)
    test = tb.generate(cfg, d["test_events"], seed=32)
    assert 0.01 <= train["anomaly"].mean() <= 0.1  # trained on contaminated, mostly normal data
    torch.manual_seed(0)
    untrained = tb.metrics(tb.build(cfg), test)
    model, history = fit(tb, cfg, train, epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"], log=None)
    m = tb.metrics(model, test)
    assert history[-1] < history[0]
    assert tb.threshold(m), m
    assert m["auc"] > untrained["auc"] + 0.05, (m, untrained)
    assert m["efficiency_at_1pct_fpr"] > 0.2
