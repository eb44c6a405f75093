"""Jet physics laws the generator must obey, GN2's track-origin classes, and a tagger trained on shuffled
labels failing its bar. Seeds 1501-1509 are used by no other test.

- Charged multiplicity in jets grows ~logarithmically with jet pT: about x1.4-1.5 from 50-100 to 200-400
  GeV (ATLAS, "Measurement of the charged-particle multiplicity inside jets", EPJC 76 (2016) 322), not
  in proportion to pT (x3.8 in mean pT over that range).
- Impact parameters are measured from a reference point (beam spot / fitted primary vertex) that misses
  the true vertex by ~10-20 um (ATLAS, EPJC 77 (2017) 332): prompt tracks have a true d0 of that size,
  common to the tracks of one jet, so at high pT (where the track resolution reaches its ~10 um floor)
  the d0 pull widens beyond 1 and two prompt tracks of one jet have correlated d0.
- GN2's 8 track-origin classes include FromTau (ATLAS, arXiv:2505.19689; salt's label order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hepml_kit.data.jets import TRACK_FEATURES, TRACK_ORIGINS, JetGenConfig, generate_jets
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
                        track_origin=rng.permutation(train["track_origin"]))
        model, _ = fit(tb, cfg, shuffled, epochs=1, batch_size=128, lr=2e-3, log=None)
        m = tb.metrics(model, test)
    finally:
        torch.set_num_threads(old)
    assert not tb.threshold(m), m
    assert m["light_rejection"] < 0.2 * jt.BARS["light_rejection"], m


def test_plots_draw_rejection_curves(tmp_path):
    cfg = jt.config("tiny")
    data = jt.generate(cfg, 1500, seed=1508)
    torch.manual_seed(0)
    (path,) = jt.TESTBED.plots(jt.build(cfg), data, tmp_path)
    assert path.name == "jet_transformer_rejection.png" and path.stat().st_size > 10_000
