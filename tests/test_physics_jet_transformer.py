"""Jet physics laws the generator must obey, GN2's track-origin classes, and a tagger trained on shuffled
labels failing its bar, and GN1/GN2's track-pair vertexing head. Seeds 1501-1512 are used by no other test.

- Charged multiplicity in jets grows ~logarithmically with jet pT: about x1.4-1.5 from 50-100 to 200-400
  GeV (ATLAS, "Measurement of the charged-particle multiplicity inside jets", EPJC 76 (2016) 322), not
  in proportion to pT (x3.8 in mean pT over that range).
- Impact parameters are measured from a reference point (beam spot / fitted primary vertex) that misses
  the true vertex by ~10-20 um (ATLAS, EPJC 77 (2017) 332): prompt tracks have a true d0 of that size,
  common to the tracks of one jet, so at high pT (where the track resolution reaches its ~10 um floor)
  the d0 pull widens beyond 1 and two prompt tracks of one jet have correlated d0.
- GN2's 8 track-origin classes include FromTau (ATLAS, arXiv:2505.19689; salt's label order).
- Vertexing (GN1, ATL-PHYS-PUB-2022-027): two tracks are compatible when they come from one vertex. In a
  b-jet the B decays at one point and its D flies on (c*tau ~ 120-310 um) before decaying at another, so
  B-vertex and D-vertex tracks are not one vertex; prompt tracks share the primary vertex; fakes none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hepml_kit.data.jets import TRACK_FEATURES, TRACK_ORIGINS, JetGenConfig, generate_jets, same_vertex_pairs
from hepml_kit.models import fit
from hepml_kit.models import jet_transformer as jt

FEAT = {name: i for i, name in enumerate(TRACK_FEATURES)}


@pytest.fixture(scope="module")
def light_jets():
    """Light jets on a flat-ish spectrum (enough jets at high pT)."""
    return generate_jets(6000, seed=1501, cfg=JetGenConfig(flavour_fractions=(0, 0, 1), pt_index=1.5))


def test_charged_multiplicity_grows_logarithmically_with_jet_pt(light_jets):
    pt, n = light_jets["jet_pt"], light_jets["n_tracks"]
    mean = {lo: n[(pt >= lo) & (pt < 2 * lo)].mean() for lo in (50, 100, 200)}
    assert 1.3 < mean[200] / mean[50] < 1.6, mean  # ATLAS: ~1.4-1.5
    # Logarithmic: each doubling of pT adds about the same number of tracks.
    first, second = mean[100] - mean[50], mean[200] - mean[100]
    assert second == pytest.approx(first, rel=0.4), mean
    assert 6 < mean[50] < 12, mean  # ~10 charged particles above 0.5 GeV at 50-100 GeV, fewer reconstructed


def test_prompt_tracks_have_a_true_d0_from_the_vertex_offset(light_jets):
    t, origin = light_jets["tracks"], light_jets["track_origin"]
    track_pt = t[..., FEAT["pt_frac"]] * light_jets["jet_pt"][:, None]
    prompt = (origin == 2) & (t[..., FEAT["n_ibl_hits"]] == 1)
    pull = t[..., FEAT["d0_mm"]] / np.where(prompt, t[..., FEAT["sigma_d0_mm"]], 1.0)

    def width(x):  # robust: the +-1 sigma quantiles, blind to the non-Gaussian tail
        lo, hi = np.quantile(x, [0.16, 0.84])
        return (hi - lo) / 2

    assert width(pull[prompt & (track_pt < 1.0)]) == pytest.approx(1.0, abs=0.08)  # scattering dominates
    assert width(pull[prompt & (track_pt > 20.0)]) > 1.25  # the vertex offset adds to the 10 um floor
    # Two energetic prompt tracks of one jet share the offset: their d0 correlate.
    d0, pick = t[..., FEAT["d0_mm"]], prompt & (track_pt > 10.0)
    pairs = np.array([d0[i, np.flatnonzero(pick[i])[:2]] for i in np.flatnonzero(pick.sum(1) >= 2)])
    assert len(pairs) > 300
    assert np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1] > 0.3


def test_gn2_track_origins_include_tau_decays():
    assert TRACK_ORIGINS == ("pileup", "fake", "primary", "from_b", "from_bc", "from_c", "from_tau",
                             "other_secondary")
    jets = generate_jets(3000, seed=1502,
                         cfg=JetGenConfig(flavour_fractions=(1, 0, 0), b_to_tau_fraction=0.3))
    origin, t = jets["track_origin"], jets["tracks"]
    from_tau = origin == TRACK_ORIGINS.index("from_tau")
    assert from_tau.sum() > 200
    assert (jets["track_vertex"][from_tau] == 6).all()
    # The tau flies on from the B vertex: its tracks are displaced like the B's, unlike prompt tracks.
    sig = t[..., FEAT["d0_signed_sig"]]
    assert np.median(sig[from_tau]) > 2 and abs(np.median(sig[origin == 2])) < 0.3
    none = generate_jets(2000, seed=1503, cfg=JetGenConfig(flavour_fractions=(0, 1, 1)))
    assert not (none["track_origin"] == TRACK_ORIGINS.index("from_tau")).any()  # only B -> tau here


def test_rejection_curves_agree_with_the_working_point():
    rng = np.random.default_rng(1504)
    flavour = rng.integers(0, 3, 6000)
    disc = rng.normal(np.where(flavour == 0, 2.0, np.where(flavour == 1, 1.0, 0.0)), 1.0)
    curves = jt.rejection_curves(disc, flavour)
    light, c = jt.rejection_at(disc, flavour)
    for name, expected in (("light", light), ("c", c)):
        b_eff, rej = curves[name]
        assert np.all(np.diff(b_eff) >= 0) and np.all(np.diff(rej) <= 0)  # rejection falls as b-eff grows
        assert np.interp(jt.B_EFFICIENCY, b_eff, rej) == pytest.approx(expected, rel=0.1)


def test_tagger_trained_on_shuffled_labels_fails_the_bar():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tb, cfg = jt.TESTBED, jt.config("tiny")
        train, test = tb.generate(cfg, 3000, seed=1505), tb.generate(cfg, 4000, seed=1506)
        rng = np.random.default_rng(1507)
        shuffled = dict(train, flavour=rng.permutation(train["flavour"]),
                        track_origin=rng.permutation(train["track_origin"]),
                        track_vertex=rng.permutation(train["track_vertex"]))
        model, _ = fit(tb, cfg, shuffled, epochs=1, batch_size=128, lr=2e-3, log=None)
        m = tb.metrics(model, test)
        honest, _ = fit(tb, cfg, train, epochs=1, batch_size=128, lr=2e-3, log=None)
        h = tb.metrics(honest, test)
    finally:
        torch.set_num_threads(old)
    assert not tb.threshold(m), m
    assert m["light_rejection"] < 0.2 * jt.BARS["light_rejection"], m
    # The vertex head learns which tracks share a vertex from the true labels, and nothing from shuffled ones.
    assert m["vertex_pair_auc"] < 0.6 and h["vertex_pair_auc"] > 0.7, (m, h)


def test_same_vertex_pairs_follow_the_decay_chain():
    jets = generate_jets(2000, seed=1510, cfg=JetGenConfig(flavour_fractions=(1, 0, 0)))
    same, origin, mask = same_vertex_pairs(jets["track_vertex"]), jets["track_origin"], jets["mask"]
    T = mask.shape[1]
    assert (same == same.transpose(0, 2, 1)).all() and not same[:, np.arange(T), np.arange(T)].any()
    o_i, o_j = origin[:, :, None], origin[:, None, :]
    real = mask[:, :, None] & mask[:, None, :] & ~np.eye(T, dtype=bool)
    idx = {name: TRACK_ORIGINS.index(name) for name in ("from_b", "from_bc", "primary", "fake")}
    b_b = real & (o_i == idx["from_b"]) & (o_j == idx["from_b"])
    b_d = (o_i == idx["from_b"]) & (o_j == idx["from_bc"])
    assert b_b.sum() > 1000 and same[b_b].all()  # the B decays at one point
    assert b_d.sum() > 1000 and not same[b_d].any()  # its D flies on and decays elsewhere
    assert same[real & (o_i == idx["primary"]) & (o_j == idx["primary"])].all()  # the primary vertex
    assert not same[(o_i == idx["from_b"]) & (o_j == idx["primary"])].any()
    assert not same[origin == idx["fake"]].any() and not same[~mask].any()
    # training reads the targets from the origin labels: the same pairs (with taus, whose vertex is its own)
    assert (jt.same_vertex_from_origin(torch.from_numpy(origin)).numpy() == same).all()
    tau_cfg = JetGenConfig(flavour_fractions=(1, 0, 0), b_to_tau_fraction=0.5)
    taus = generate_jets(1000, seed=1512, cfg=tau_cfg)
    want = same_vertex_pairs(taus["track_vertex"])
    assert (jt.same_vertex_from_origin(torch.from_numpy(taus["track_origin"])).numpy() == want).all()
    # The pairs the label joins are displaced alike: B-vertex tracks have large signed d0 significance.
    sig = jets["tracks"][..., FEAT["d0_signed_sig"]]
    prompt_median = abs(np.median(sig[origin == idx["primary"]]))
    assert np.median(sig[origin == idx["from_b"]]) > 3 * max(prompt_median, 0.3)
    with pytest.raises(ValueError, match="track_vertex must be"):
        same_vertex_pairs(jets["track_vertex"][0])


def test_vertex_head_is_symmetric_masked_and_matches_the_concatenated_mlp():
    torch.manual_seed(1511)
    cfg = jt.config("tiny")
    model = jt.build(cfg).eval()
    batch = next(jt.batches(jt.generate(cfg, 64, seed=1511), 32))
    with torch.no_grad():
        flavour, origin, vertex = model(batch["tracks"], batch["mask"], True)
        assert len(model(batch["tracks"], batch["mask"])) == 2  # serving sees flavour and origin only
        torch.testing.assert_close(vertex, vertex.transpose(1, 2))
        # salt's VertexingTask: the MLP on the concatenation [x_i, x_j, jet], here for pair (0, 1) of jet 0
        head, x = model.vertex_head, model.encoder(model.init(batch["tracks"]), batch["mask"])
        jet = model.pool(x, batch["mask"])
        def pair(i, j):
            return head.rest(F.silu(head.first(torch.cat([x[0, i], x[0, j], jet[0]]))))[0]
        torch.testing.assert_close(vertex[0, 0, 1], 0.5 * (pair(0, 1) + pair(1, 0)))
        junk = torch.where(batch["mask"][..., None], batch["tracks"], torch.randn_like(batch["tracks"]) * 5)
        vertex2 = model(junk, batch["mask"], True)[2]
    pairs = jt.real_pairs(batch["mask"])
    torch.testing.assert_close(vertex2[pairs], vertex[pairs])  # padding changes no real pair


def test_plots_draw_rejection_curves(tmp_path):
    cfg = jt.config("tiny")
    data = jt.generate(cfg, 1500, seed=1508)
    torch.manual_seed(0)
    (path,) = jt.TESTBED.plots(jt.build(cfg), data, tmp_path)
    assert path.name == "jet_transformer_rejection.png" and path.stat().st_size > 10_000
