"""Jet generator physics and the GN2-style tagger: shapes, parallel-friendly structure, training bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hepml_kit.data.jets import (
    BLOCK,
    CHARM_HADRONS,
    TRACK_FEATURES,
    JetGenConfig,
    generate_jets,
    normalise_tracks,
)
from hepml_kit.models import fit
from hepml_kit.models import jet_transformer as jt

FEAT = {name: i for i, name in enumerate(TRACK_FEATURES)}


@pytest.fixture(scope="module")
def jets():
    return generate_jets(6000, seed=11)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- generator ------------------------------------------------------------------------------------


def test_b_jet_tracks_are_more_displaced_than_light(jets):
    sig = np.abs(jets["tracks"][..., FEAT["d0_signed_sig"]])
    mean = {f: sig[(jets["flavour"] == f)[:, None] & jets["mask"]].mean() for f in (0, 1, 2)}
    assert mean[0] > 3 * mean[2], mean  # b >> light
    assert mean[0] > mean[1] > mean[2], mean  # b > c > light
    # Heavy-flavour tracks carry the lifetime sign: mostly positive signed significance.
    origin = jets["track_origin"]
    from_b = (origin == 3) | (origin == 4)
    assert (jets["tracks"][..., FEAT["d0_signed_sig"]][from_b] > 0).mean() > 0.75
    prompt = jets["tracks"][..., FEAT["d0_signed_sig"]][origin == 2]
    assert abs((prompt > 0).mean() - 0.5) < 0.03


def test_flight_length_mean_is_betagamma_ctau(jets):
    cfg = JetGenConfig()
    b = jets["flavour"] == 0
    ctau_b = (jets["hadron_flight_mm"][b] / jets["hadron_betagamma"][b]).mean() * 1e3  # um
    assert ctau_b == pytest.approx(cfg.b_ctau_um, rel=0.07)  # Exp(1) mean over ~2000 jets: 2.2% error
    c = jets["flavour"] == 1
    ctau_c = (jets["hadron_flight_mm"][c] / jets["hadron_betagamma"][c]).mean() * 1e3
    mix = sum(f * ct for _, ct, f in CHARM_HADRONS.values()) / sum(f for *_, f in CHARM_HADRONS.values())
    assert ctau_c == pytest.approx(mix, rel=0.1)
    assert (jets["hadron_flight_mm"][jets["flavour"] == 2] == 0).all()
    assert (jets["charm_flight_mm"][b] > 0).all()  # cascade B -> D


def test_impact_parameter_resolution_follows_formula():
    cfg = JetGenConfig(pv_offset_um=0.0)  # the track fit alone: no primary-vertex offset (tested below)
    jets = generate_jets(6000, seed=11, cfg=cfg)
    prompt = (jets["track_origin"] == 2) & (jets["tracks"][..., FEAT["n_ibl_hits"]] == 1)
    t = jets["tracks"][prompt]
    pt = t[:, FEAT["pt_frac"]] * np.exp(t[:, FEAT["log_jet_pt"]])
    expected = np.hypot(cfg.d0_res_um[0], cfg.d0_res_um[1] / pt) * 1e-3
    np.testing.assert_allclose(t[:, FEAT["sigma_d0_mm"]], expected, rtol=1e-3)
    pull = t[:, FEAT["d0_mm"]] / t[:, FEAT["sigma_d0_mm"]]
    robust_sigma = 1.4826 * np.median(np.abs(pull - np.median(pull)))  # insensitive to the tail
    assert robust_sigma == pytest.approx(1.0, abs=0.05)
    assert np.abs(pull).max() > 5  # the non-Gaussian tail is there


def test_padding_mask_is_consistent(jets):
    mask, tracks = jets["mask"], jets["tracks"]
    assert mask.shape == tracks.shape[:2] and tracks.shape[-1] == len(TRACK_FEATURES) == 21
    assert (tracks[~mask] == 0).all()
    assert ((jets["track_origin"] == -1) == ~mask).all() and ((jets["track_vertex"] == -1) == ~mask).all()
    assert (jets["n_tracks"] == mask.sum(1)).all()
    assert (np.diff(mask.astype(int), axis=1) <= 0).all()  # real tracks first, then padding
    sig = np.where(mask, np.abs(tracks[..., FEAT["d0_signed_sig"]]), -1)
    assert (np.diff(sig, axis=1) <= 1e-6).all()  # sorted by |d0 significance|, as GN2
    counts = mask.sum(1)
    assert counts.min() >= 0 and counts.max() <= tracks.shape[1] and len(np.unique(counts)) > 5  # variable
    x = normalise_tracks(tracks, mask)
    assert np.isfinite(x).all() and (x[~mask] == 0).all() and np.abs(x).max() < 30


def test_deterministic_and_prefix_stable():
    a, b = generate_jets(300, seed=5), generate_jets(300, seed=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(generate_jets(300, seed=6)["tracks"], a["tracks"])
    longer = generate_jets(BLOCK + 50, seed=5)
    np.testing.assert_array_equal(longer["tracks"][:300], a["tracks"])


def test_rank_shards_union_equals_serial():
    n, world = BLOCK + 700, 3  # shard edges fall inside and across blocks
    serial = generate_jets(n, seed=3)
    shards = [generate_jets(n, seed=3, rank=r, world_size=world) for r in range(world)]
    assert sum(len(s["flavour"]) for s in shards) == n
    for k in serial:
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shards]), serial[k])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="events"):
        generate_jets(-1, seed=0)
    with pytest.raises(ValueError, match="rank"):
        generate_jets(10, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="flavour_fractions"):
        JetGenConfig(flavour_fractions=(1.0, -1.0, 1.0))
    with pytest.raises(TypeError):
        generate_jets(10, seed=0, cfg={"max_tracks": 10})
    with pytest.raises(ValueError, match="preset"):
        jt.config("huge")
    with pytest.raises(ValueError, match="divisible"):
        jt.config("tiny", num_heads=5)


# ---- model ----------------------------------------------------------------------------------------


def test_shapes_and_padding_does_not_change_outputs(jets):
    torch.manual_seed(0)
    cfg = jt.config("tiny", data=JetGenConfig(max_tracks=40))
    model = jt.build(cfg).eval()
    batch = next(jt.batches(jets, 64))
    with torch.no_grad():
        flav, origin = model(batch["tracks"], batch["mask"])
        assert flav.shape == (64, 3) and origin.shape == (64, 40, 8)  # GN2: 8 track origins
        vertex = model(batch["tracks"], batch["mask"], True)[2]
        assert vertex.shape == (64, 40, 40)  # GN1/GN2 track-pair vertexing: one logit per pair
        junk = torch.where(batch["mask"][..., None], batch["tracks"], torch.randn_like(batch["tracks"]) * 5)
        flav2, origin2 = model(junk, batch["mask"])
        empty = torch.zeros_like(batch["mask"])  # a jet with no tracks still gives finite numbers
        assert torch.isfinite(model(batch["tracks"], empty)[0]).all()
    torch.testing.assert_close(flav2, flav)
    valid = batch["mask"]
    torch.testing.assert_close(origin2[valid], origin[valid])


def test_full_preset_matches_gn2_size_and_is_split_friendly():
    presets = ("tiny", "small", "full")
    counts = {p: sum(x.numel() for x in jt.build(jt.config(p)).parameters()) for p in presets}
    assert counts["full"] == pytest.approx(2.3e6, rel=0.10), counts
    assert counts["tiny"] < counts["small"] < counts["full"]
    model = jt.build(jt.config("full"))
    assert len(model.encoder.layers) == 4
    layer = model.encoder.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert isinstance(getattr(layer.attn, name), torch.nn.Linear)
    assert layer.attn.head_dim == 32 and isinstance(layer.mlp.fc1, torch.nn.Linear)
    assert jt.flops_per_sample(jt.config("full")) > jt.flops_per_sample(jt.config("tiny")) > 0


def test_attention_split_by_heads_adds_up():
    """Column-shard q/k/v and row-shard out_proj in two (what tensor parallelism does): same output."""
    torch.manual_seed(0)
    attn = jt.SelfAttention(32, 4)
    x, mask = torch.randn(3, 7, 32), torch.rand(3, 7) > 0.3
    mask[:, 0] = True
    full = attn(x, mask)
    halves = []
    for part in (slice(0, 16), slice(16, 32)):
        shard = jt.SelfAttention(32, 4)
        shard.head_dim = attn.head_dim
        for name in ("q_proj", "k_proj", "v_proj"):
            src = getattr(attn, name)
            lin = torch.nn.Linear(32, 16)
            lin.weight.data, lin.bias.data = src.weight.data[part].clone(), src.bias.data[part].clone()
            setattr(shard, name, lin)
        out = torch.nn.Linear(16, 32, bias=part.start == 0)
        out.weight.data = attn.out_proj.weight.data[:, part].clone()
        if part.start == 0:
            out.bias.data = attn.out_proj.bias.data.clone()
        shard.out_proj = out
        halves.append(shard(x, mask))
    torch.testing.assert_close(halves[0] + halves[1], full)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_export_and_lightning_step(one_thread):
    import lightning as L

    cfg = jt.config("tiny")
    data = generate_jets(64, seed=1, cfg=cfg.data)
    model = jt.build(cfg).eval()
    scripted = torch.jit.script(model)
    b = next(jt.batches(data, 16))
    torch.testing.assert_close(scripted(b["tracks"], b["mask"])[0], model(b["tracks"], b["mask"])[0])
    vertex = model(b["tracks"], b["mask"], True)[2]
    torch.testing.assert_close(scripted(b["tracks"], b["mask"], True)[2], vertex)
    exported = torch.export.export(model, (b["tracks"], b["mask"]))
    torch.testing.assert_close(exported.module()(b["tracks"], b["mask"])[1], model(b["tracks"], b["mask"])[1])

    module = jt.lightning(cfg, lr=1e-3)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    loader = torch.utils.data.DataLoader(list(jt.batches(data, 16)), batch_size=None)  # already batched
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, module.model.parameters()))


def test_rejection_helpers():
    flavour = np.array([0] * 10 + [1] * 10 + [2] * 10)
    disc = np.concatenate([np.arange(10) + 100.0, np.arange(10) + 50.0, np.arange(10)])
    light, c = jt.rejection_at(disc, flavour)
    assert light == 10 and c == 10  # none pass: bounded by 1 / (1 / count)
    light, c = jt.rejection_at(-disc, flavour)
    assert light == 1 and c == 1


def test_tiny_preset_beats_track_counting_from_fresh_data(one_thread):
    tb = jt.TESTBED
    cfg, d = tb.config("tiny"), tb.train_defaults["tiny"]
    train = tb.generate(cfg, d["events"], seed=2024)
    test = tb.generate(cfg, d["test_events"], seed=2025)
    untrained = tb.metrics(tb.build(cfg), test)
    assert not tb.threshold(untrained), untrained
    model, history = fit(tb, cfg, train, epochs=d["epochs"], batch_size=d["batch_size"], lr=d["lr"], log=None)
    m = tb.metrics(model, test)
    assert history[-1] < history[0]
    assert tb.threshold(m), m
    assert m["baseline_light_rejection"] > 3  # the baseline itself works on these jets
    assert m["c_rejection"] > m["baseline_c_rejection"]
