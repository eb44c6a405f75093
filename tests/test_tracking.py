"""Tracking Monte Carlo physics and the interaction-network edge classifier (tiny preset, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hepml_kit.data.tracking import (
    GENERATOR_VERSION,
    TrackingConfig,
    build_graph,
    generate_tracking_events,
    helix_radius_mm,
)
from hepml_kit.models import tracking_gnn as gnn
from hepml_kit.models._testbed import fit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small graphs: one intra-op thread is fastest, and on a shared 2-core machine OpenMP threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IDEAL = TrackingConfig(x_over_x0=0.0, sigma_rphi_mm=0.0, sigma_z_mm=0.0, hit_inefficiency=0.0,
                       noise_fraction=0.0)  # no scattering, smearing, losses or noise: exact helices


def _track_hits(ev, pid):
    sel = ev["hit_particle"] == pid
    order = np.argsort(ev["hit_layer"][sel])
    return (ev["hit_r"][sel][order].astype(float), ev["hit_phi"][sel][order].astype(float),
            ev["hit_z"][sel][order].astype(float))


def _fit_circle_through_origin(x, y):
    """Least-squares circle through (0, 0): x² + y² = 2a·x + 2b·y -> radius √(a² + b²)."""
    (a2, b2), *_ = np.linalg.lstsq(np.stack([x, y], 1), x**2 + y**2, rcond=None)
    return np.hypot(a2 / 2, b2 / 2)


# ----------------------------------------------------------------------------------------- generator
def test_helix_radius_matches_pt_over_0p3_b():
    ev = generate_tracking_events(5, 11, IDEAL)
    n_checked = 0
    for e in ev:
        for pid in np.flatnonzero(e["particle_nhits"] >= 4):
            r, phi, z = _track_hits(e, pid)
            fitted = _fit_circle_through_origin(r * np.cos(phi), r * np.sin(phi))
            expected = helix_radius_mm(e["particle_pt"][pid], IDEAL.b_field_t)
            assert fitted == pytest.approx(expected, rel=2e-3)
            # closed forms (physics notes): φ(r) = φ0 - q·asin(r/2R), z(r) = z0 + 2R·asin(r/2R)·sinh η
            q, eta = e["particle_q"][pid], e["particle_eta"][pid]
            turn = np.arcsin(r / (2 * expected))
            dphi = (phi - (e["particle_phi"][pid] - q * turn) + np.pi) % (2 * np.pi) - np.pi
            np.testing.assert_allclose(dphi, 0, atol=1e-5)
            z_expected = e["particle_z0"][pid] + 2 * expected * turn * np.sinh(eta)
            np.testing.assert_allclose(z, z_expected, rtol=1e-4, atol=1e-3)
            n_checked += 1
    assert n_checked > 50


def test_realistic_tracks_keep_their_radius_within_scattering():
    ev = generate_tracking_events(5, 3, TrackingConfig())
    ratios = []
    for e in ev:
        for pid in np.flatnonzero((e["particle_nhits"] >= 6) & (e["particle_pt"] < 3)):
            r, phi, _ = _track_hits(e, pid)
            ratios.append(_fit_circle_through_origin(r * np.cos(phi), r * np.sin(phi))
                          / helix_radius_mm(e["particle_pt"][pid], 2.0))
    assert len(ratios) > 20 and abs(np.median(ratios) - 1) < 0.03 and np.std(ratios) > 1e-3  # kinks are there


def test_multiple_scattering_grows_at_low_momentum():
    """Highland: θ0 ∝ 1/p, so the scatter of hits about the ideal helix shrinks with pT."""
    cfg = IDEAL.with_(x_over_x0=0.03, pileup=10)
    ideal = generate_tracking_events(2, 5, IDEAL.with_(pileup=10))
    kinked = generate_tracking_events(2, 5, cfg)  # same particles: kinematics come before the kinks
    low, high = [], []
    for a, b in zip(ideal, kinked):
        for pid in np.flatnonzero((a["particle_nhits"] == 10) & (b["particle_nhits"] == 10)):
            dphi = (_track_hits(a, pid)[1] - _track_hits(b, pid)[1] + np.pi) % (2 * np.pi) - np.pi
            res = abs(dphi[-1]) * 1020  # rφ displacement (mm) at the outermost layer
            (low if a["particle_pt"][pid] < 1 else high if a["particle_pt"][pid] > 3 else []).append(res)
    assert len(low) > 5 and len(high) > 5
    assert np.median(low) > 3 * np.median(high) > 0


def test_hits_inside_detector_acceptance_and_spectrum():
    cfg = TrackingConfig(pileup=5)
    ev = generate_tracking_events(6, 2, cfg)
    radii, half = np.array(cfg.layer_radii_mm), np.array(cfg.layer_half_length_mm)
    for e in ev:
        layer = e["hit_layer"]
        np.testing.assert_allclose(e["hit_r"], radii[layer], rtol=1e-6)
        assert np.all(np.abs(e["hit_z"]) < half[layer]) and np.all(np.abs(e["hit_phi"]) <= np.pi + 1e-6)
        assert np.all(np.abs(e["particle_eta"]) < cfg.eta_max)
        assert np.all((e["particle_pt"] >= cfg.pt_min_gev) & (e["particle_pt"] <= cfg.pt_max_gev))
        assert np.all(np.lexsort((e["hit_phi"], layer)) == np.arange(len(layer)))  # sorted (layer, φ)
        true = e["hit_particle"] >= 0
        np.testing.assert_allclose(e["hit_pt"][true], e["particle_pt"][e["hit_particle"][true]])
        assert 0.05 < np.mean(~true) < 0.3  # noise_fraction 0.15 of the true hits
    pt = np.concatenate([e["particle_pt"] for e in ev])
    a, b, k = cfg.pt_min_gev, cfg.pt_max_gev, 1 - cfg.pt_power  # falling spectrum: CDF at 1 GeV
    assert np.mean(pt < 1.0) == pytest.approx((1.0**k - a**k) / (b**k - a**k), abs=0.05)


def test_true_edges_connect_consecutive_layers_of_one_particle():
    ev = generate_tracking_events(6, 4, TrackingConfig(pileup=8))
    for e in ev:
        src, dst = e["edge_index"]
        assert np.all(e["hit_layer"][dst] == e["hit_layer"][src] + 1)
        same = (e["hit_particle"][src] == e["hit_particle"][dst]) & (e["hit_particle"][src] >= 0)
        np.testing.assert_array_equal(e["edge_label"], same)
        assert e["edge_label"].sum() <= int(e["n_true_segments"])
    kept = sum(int(e["edge_label"].sum()) for e in ev) / sum(int(e["n_true_segments"]) for e in ev)
    assert kept > 0.995  # the φ-slope and z0 cuts keep (almost) every true segment


def test_graph_building_matches_brute_force():
    cfg = TrackingConfig(pileup=6)
    e = generate_tracking_events(1, 9, cfg)[0]
    r, phi, z, layer = (e[k].astype(np.float64) for k in ("hit_r", "hit_phi", "hit_z", "hit_layer"))
    src, dst = np.meshgrid(np.arange(len(r)), np.arange(len(r)), indexing="ij")
    src, dst = src.ravel(), dst.ravel()
    adjacent = layer[dst] == layer[src] + 1
    src, dst = src[adjacent], dst[adjacent]
    dr = r[dst] - r[src]
    dphi = (phi[dst] - phi[src] + np.pi) % (2 * np.pi) - np.pi
    z0 = z[src] - r[src] * (z[dst] - z[src]) / dr
    keep = (np.abs(dphi) / dr < cfg.phi_slope_max) & (np.abs(z0) < cfg.z0_max_mm)
    expected = set(zip(src[keep].tolist(), dst[keep].tolist()))
    assert expected == set(zip(*e["edge_index"].tolist())) and len(expected) > 100
    # a hit on each side of φ = ±π is found across the wrap
    phi = np.array([np.pi - 1e-3, -np.pi + 1e-3])
    edges = build_graph(np.array([0, 1]), phi, np.zeros(2), (100.0, 200.0), 1e-4, 50)
    np.testing.assert_array_equal(edges, [[0], [1]])


def test_rank_shards_union_equals_serial_and_determinism():
    cfg = TrackingConfig(pileup=2)
    serial = generate_tracking_events(7, 123, cfg)
    shards = [generate_tracking_events(7, 123, cfg, rank=k, world_size=3) for k in range(3)]
    merged = sorted((e for s in shards for e in s), key=lambda e: int(e["event_index"]))
    assert [int(e["event_index"]) for e in merged] == list(range(7))
    for a, b in zip(serial, merged):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    again, other = generate_tracking_events(2, 123, cfg), generate_tracking_events(2, 124, cfg)
    np.testing.assert_array_equal(again[1]["hit_phi"], serial[1]["hit_phi"])
    assert not np.array_equal(other[0]["hit_phi"], serial[0]["hit_phi"])
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION


def test_pileup_grows_the_graph():
    sizes = {}
    for pu in (1, 4, 16):
        ev = generate_tracking_events(3, 0, TrackingConfig(pileup=pu))
        sizes[pu] = (np.mean([len(e["hit_r"]) for e in ev]), np.mean([e["edge_index"].shape[1] for e in ev]),
                     np.mean([e["edge_label"].mean() for e in ev]))
    assert sizes[4][0] > 3 * sizes[1][0] and sizes[16][0] > 3 * sizes[4][0]  # hits ~ pileup
    assert sizes[16][1] / sizes[4][1] > sizes[16][0] / sizes[4][0]  # edges faster than hits (combinatorics)
    assert sizes[16][2] < sizes[4][2] < sizes[1][2]  # purity of the graph drops


@pytest.mark.parametrize("bad", [dict(pileup=0), dict(hit_inefficiency=1.0), dict(layer_radii_mm=(50.0, 30.0),
                                  layer_half_length_mm=(100.0, 100.0)), dict(pt_min_gev=5.0, pt_max_gev=1.0)])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TrackingConfig(**bad)


def test_bad_call_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        generate_tracking_events(4, 0, TrackingConfig(), rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        generate_tracking_events(4, -1, TrackingConfig())
    with pytest.raises(TypeError):
        generate_tracking_events(4, 0, gnn.config("tiny"))


# --------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def tiny_batch():
    cfg = gnn.config("tiny")
    events = gnn.generate(cfg, 3, 0)
    return cfg, events, next(gnn.batches(events, 3))


def test_batch_is_a_disjoint_union(tiny_batch):
    cfg, events, b = tiny_batch
    n, e = [len(ev["hit_r"]) for ev in events], [ev["edge_index"].shape[1] for ev in events]
    assert b["x"].shape == (sum(n), 3) and b["edge_attr"].shape == (sum(e), 4) and b["y"].shape == (sum(e),)
    second = b["edge_index"][:, e[0] : e[0] + e[1]]
    assert second.min() >= n[0] and second.max() < n[0] + n[1]
    assert gnn.TESTBED.samples_in(b) == 3 and gnn.TESTBED.unit == "graphs"


def test_forward_composes_the_parts_and_trains_every_weight(tiny_batch):
    cfg, _, b = tiny_batch
    torch.manual_seed(0)
    model = gnn.build(cfg)
    logits = model(b["x"], b["edge_attr"], b["edge_index"])
    assert logits.shape == (b["edge_index"].shape[1],)
    h_n, h_e = model.encode_nodes(b["x"]), model.encode_edges(b["edge_attr"])
    assert h_n.shape == (len(b["x"]), cfg.hidden) and h_e.shape == (b["edge_index"].shape[1], cfg.hidden)
    for layer in model.layers:
        h_n, h_e = layer(h_n, h_e, b["edge_index"])
    torch.testing.assert_close(model.classify(h_e), logits)
    gnn.loss(model, b).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_checkpointing_and_torchscript_give_the_same_results(tiny_batch):
    cfg, events, b = tiny_batch
    torch.manual_seed(0)
    plain, ckpt = gnn.build(cfg), gnn.build(cfg.with_(checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    gnn.loss(plain, b).backward(), gnn.loss(ckpt, b).backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    scripted = torch.jit.script(plain.eval())
    other = next(gnn.batches(events[:1], 1))  # another graph size through the same scripted model
    torch.testing.assert_close(scripted(other["x"], other["edge_attr"], other["edge_index"]),
                               plain(other["x"], other["edge_attr"], other["edge_index"]))


def test_presets_parameter_counts_and_flops():
    counts = {p: sum(w.numel() for w in gnn.build(gnn.config(p)).parameters()) for p in gnn.PRESETS}
    assert counts["tiny"] < counts["small"] < counts["full"]
    full = gnn.config("full")
    assert full.hidden == 128 and full.n_iterations == 8 and full.checkpointing
    for p in gnn.PRESETS:
        cfg = gnn.config(p)
        assert gnn.TESTBED.flops_per_sample(cfg) == gnn.flops_per_sample(cfg) > 0
        assert gnn.flops_per_sample(cfg, 1000, 4000) > gnn.flops_per_sample(cfg, 1000, 2000)
    # the graph size flops_per_sample assumes is what the generator makes (tiny and small re-measured)
    for p in ("tiny", "small"):
        cfg = gnn.config(p)
        ev = gnn.generate(cfg, 8, 0)
        assert np.mean([len(e["hit_r"]) for e in ev]) == pytest.approx(cfg.graph_nodes, rel=0.1)
        assert np.mean([e["edge_index"].shape[1] for e in ev]) == pytest.approx(cfg.graph_edges, rel=0.1)
    with pytest.raises(ValueError, match="preset"):
        gnn.config("huge")


def test_track_metrics_on_a_hand_made_event():
    """Particle 0: 4 hits (pT 2), particle 1: 3 hits (pT 0.7), one noise hit; edges chain them."""
    ev = {
        "hit_r": np.ones(8, np.float32), "hit_particle": np.array([0, 0, 0, 0, 1, 1, 1, -1]),
        "particle_pt": np.array([2.0, 0.7], np.float32), "particle_nhits": np.array([4, 3]),
        "edge_index": np.array([[0, 1, 2, 4, 5, 3], [1, 2, 3, 5, 6, 7]]),
    }
    n_tracks, n_fake, n_found, n_wanted = gnn._tracks(ev, np.ones(6, bool))  # noise joins track 0: still 4/5
    assert (n_tracks, n_fake, n_found, n_wanted) == (2, 0, 1, 1)
    ev["hit_particle"] = np.array([0, 1, 0, 1, 1, 0, 1, -1])  # a 2-2 split still has its 50% majority
    assert gnn._tracks(ev, np.array([1, 1, 1, 0, 0, 0], bool)) == (1, 0, 1, 1)
    ev["hit_particle"] = np.array([0, 1, 2, 3, 1, 0, 1, -1])
    assert gnn._tracks(ev, np.array([1, 1, 1, 0, 0, 0], bool))[:2] == (1, 1)
    assert gnn.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_lightning_module_runs_one_step(tiny_batch):
    lightning = pytest.importorskip("lightning")
    cfg, events, _ = tiny_batch
    module = gnn.lightning(cfg, lr=1e-3)
    trainer = lightning.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer.fit(module, train_dataloaders=gnn.dataloader(events, batch_size=2, shuffle=True))
    assert trainer.global_step == 1
    assert any(not torch.equal(a, p) for a, p in zip(before, module.model.parameters()))


def test_tiny_preset_trains_to_the_physics_threshold():
    """Fresh data, the preset's training defaults, metrics on independent events: edge AUC ≥ 0.95."""
    tb, cfg = gnn.TESTBED, gnn.config("tiny")
    d = tb.train_defaults["tiny"]
    train, test = tb.generate(cfg, d["events"], 2024), tb.generate(cfg, 40, 777)
    model, history = fit(tb, cfg, train, epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"], seed=1,
                         log=None)
    m = tb.metrics(model, test)
    assert history[-1] < 0.5 * history[0]
    assert tb.threshold(m), m
    assert m["edge_auc"] > m["baseline_auc"] + 0.05  # message passing beats one edge's geometry
    assert m["track_efficiency"] > 0.8 and m["track_fake_rate"] < 0.1 and m["track_efficiency_truth"] > 0.95
