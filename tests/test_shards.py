"""Sharded HDF5 data sets: round trips equal the generators, ranks split exactly, damage is caught by name."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from hepml_kit import models
from hepml_kit.cli import main as cli_main
from hepml_kit.data import shards as shards_mod
from hepml_kit.data import showers
from hepml_kit.data.shards import ShardDataset, ShardError, ShardEvents, ShardSet, rank_chunks, write_shards

SIZES = {"tracking_gnn": 12, "waveform_vae": 300, "calo_gan": 200, "jet_transformer": 300, "cosmo_unet": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def jets_dir(tmp_path_factory):
    """300 jets in 3 shards (seed 4): the data set most tests read; copy it before damaging it."""
    out = tmp_path_factory.mktemp("jets") / "ds"
    write_shards("jet_transformer", 300, 3, out, seed=4, progress=False)
    return out


@pytest.fixture
def jets_copy(jets_dir, tmp_path):
    return shutil.copytree(jets_dir, tmp_path / "ds")


def _same(a, b, key):
    assert type(a) is type(b), key
    if torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    else:
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key


@pytest.mark.parametrize("model", list(SIZES))
def test_round_trip_equals_the_generator(model, tmp_path):
    n = SIZES[model]
    manifest = write_shards(model, n, 3, tmp_path / model, seed=7, progress=False)
    assert [s["n_events"] for s in manifest["shards"]] and sum(s["n_events"] for s in manifest["shards"]) == n
    tb, shards = models.get(model), ShardSet(tmp_path / model, verify="full")
    ref, got = tb.generate(tb.config("tiny"), n, 7), shards.read(0, n)
    if isinstance(ref, list):  # tracking: ragged per-event arrays, dealt to shards round-robin
        assert manifest["layout"] == "events" and manifest["schema"]["edge_index"]["ragged_axis"] == 1
        got = sorted(got, key=lambda ev: int(ev["event_index"]))
        assert len(got) == n
        for ev_ref, ev_got in zip(ref, got):
            assert ev_ref.keys() == ev_got.keys()
            for key in ev_ref:
                _same(ev_ref[key], ev_got[key], key)
    else:
        assert ref.keys() == got.keys()
        for key in ref:
            if key == "cfg":
                assert got[key] == ref[key]
            else:
                _same(ref[key], got[key], key)
    # a range across a shard boundary equals the same slice of the full read
    a, b = int(shards.starts[1]) - 1, int(shards.starts[1]) + 1
    part, whole = shards.read(a, b), shards.read(0, n)
    if isinstance(part, list):
        assert [int(e["event_index"]) for e in part] == [int(e["event_index"]) for e in whole[a:b]]
    else:
        k = next(k for k in part if k != "cfg")
        assert np.array_equal(np.asarray(part[k]), np.asarray(whole[k][a:b]))
    # per-event reads collate to the same batch the model gets from memory
    events = ShardEvents(shards)
    batch = events.collate([events[i] for i in range(2)])
    first = next(iter(tb.batches(shards.read(0, 2), 2)))
    assert batch.keys() == first.keys()
    for key in batch:
        assert torch.equal(batch[key], first[key]), key


@pytest.mark.parametrize("n,chunk,world", [(100, 7, 1), (100, 7, 3), (5, 10, 2), (64, 8, 4), (1, 1, 3)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_rank_chunks_cover_every_event_exactly_once(n, chunk, world, shuffle):
    seen = np.zeros(n, int)
    for rank in range(world):
        for a, b in rank_chunks(n, chunk, rank, world, shuffle=shuffle, seed=3, epoch=2):
            seen[a:b] += 1
    assert np.all(seen == 1)
    equal = [rank_chunks(n, chunk, r, world, shuffle=shuffle, drop_last=True) for r in range(world)]
    assert len({sum(b - a for a, b in c) for c in equal}) == 1  # drop_last: same events on every rank
    if shuffle and n // chunk > 2:
        assert rank_chunks(n, chunk, 0, world, shuffle=True, epoch=0) != rank_chunks(n, chunk, 0, world,
                                                                                     shuffle=True, epoch=1)


def test_ranks_and_workers_read_each_event_once(jets_dir):
    """Two ranks x (0 and 2 DataLoader workers) of the jets set: together every jet exactly once."""
    fingerprint = lambda batches: sorted(  # noqa: E731  (one number per jet: the sum of its track features)
        round(float(x), 3) for b in batches for x in b["tracks"].double().sum(dim=(1, 2)))
    everything = fingerprint(ShardDataset(jets_dir, batch_size=50, rank=0, world_size=1))
    assert len(everything) == 300
    per_rank = []
    for rank in range(2):
        ds = ShardDataset(jets_dir, batch_size=16, chunk_events=32, shuffle=True, seed=1,
                          rank=rank, world_size=2)
        ds.set_epoch(3)
        serial, workers = fingerprint(ds), fingerprint(ds.loader(num_workers=2))
        assert serial == workers and len(serial) == ds.events_per_epoch()
        per_rank.append(serial)
    assert sorted(per_rank[0] + per_rank[1]) == everything
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 32


def test_dataloader_with_two_workers_gives_the_model_batches(jets_dir):
    ds = ShardDataset(jets_dir, batch_size=25, chunk_events=50, rank=0, world_size=1)
    serial = list(ds)
    loaded = list(ds.loader(num_workers=2, pin_memory=False, persistent_workers=True, prefetch_factor=2))
    assert len(serial) == len(loaded) == 12
    key = lambda b: float(b["tracks"].sum())  # noqa: E731
    for a, b in zip(sorted(serial, key=key), sorted(loaded, key=key)):
        assert a.keys() == {"tracks", "mask", "flavour", "track_origin"}
        for k in a:
            assert torch.equal(a[k], b[k])
    # the chunked batches are the ones the model's own batching makes from memory
    tb = models.get("jet_transformer")
    mem = list(tb.batches(tb.generate(tb.config("tiny"), 300, 4), 25))
    assert all(torch.equal(m["tracks"], s["tracks"]) for m, s in zip(mem, serial))
    # the map-style twin under a DistributedSampler and the usual DataLoader options
    events = ShardEvents(jets_dir)
    sampler = torch.utils.data.DistributedSampler(events, num_replicas=2, rank=1, shuffle=False)
    loader = torch.utils.data.DataLoader(events, batch_size=10, sampler=sampler, collate_fn=events.collate,
                                         num_workers=2)
    got = torch.cat([b["flavour"] for b in loader])
    assert len(got) == 150 and set(next(iter(loader))) == {"tracks", "mask", "flavour", "track_origin"}


def test_truncated_shard_is_named(jets_copy):
    path = jets_copy / "shard-00001-of-00003.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="shard-00001-of-00003.h5.*(truncated|cannot open)"):
        ShardSet(jets_copy)


def _flip_data_bytes(path, key="tracks"):
    with h5py.File(path, "r") as f:
        offset = f[key].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset + 100)
        block = bytearray(f.read(64))
        f.seek(offset + 100)
        f.write(bytes(b ^ 0xFF for b in block))


def test_corrupt_shard_is_named_on_read_and_by_full_verify(jets_copy):
    path = jets_copy / "shard-00002-of-00003.h5"
    _flip_data_bytes(path)
    shards = ShardSet(jets_copy)  # quick: size and structure still fine ...
    with pytest.raises(ShardError, match="shard-00002-of-00003.h5.*corrupt"):  # ... the chunk checksum is not
        shards.read(0, 300)
    with pytest.raises(ShardError, match="shard-00002-of-00003.h5: SHA-256"):
        ShardSet(jets_copy, verify="full")
    assert cli_main(["data", "verify", str(jets_copy)]) == 1


def test_corrupt_header_is_named(jets_copy):
    path = jets_copy / "shard-00000-of-00003.h5"
    with open(path, "r+b") as f:
        f.write(b"\0" * 16)
    with pytest.raises(ShardError, match="shard-00000-of-00003.h5: cannot open as HDF5"):
        ShardSet(jets_copy)


def test_manifest_that_does_not_match_its_shards(jets_copy):
    manifest = json.loads((jets_copy / "manifest.json").read_text())
    manifest["shards"][1]["n_events"] += 5
    manifest["n_events"] += 5
    (jets_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError,
                       match="shard-00001-of-00003.h5: n_events is 100 but .*manifest.json says 105"):
        ShardSet(jets_copy)
    manifest["n_events"] -= 1
    (jets_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="manifest.json: shard counts add up to 305, but n_events is 304"):
        ShardSet(jets_copy)
    (jets_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: unreadable manifest"):
        ShardSet(jets_copy)


def test_missing_shard_and_shard_of_another_data_set(jets_copy, tmp_path):
    other = tmp_path / "other"
    write_shards("jet_transformer", 300, 3, other, seed=5, progress=False)
    shutil.copy(other / "shard-00001-of-00003.h5", jets_copy / "shard-00001-of-00003.h5")
    with pytest.raises(ShardError, match="shard-00001-of-00003.h5: dataset_id .*another data set"):
        ShardSet(jets_copy)
    (jets_copy / "shard-00001-of-00003.h5").unlink()
    with pytest.raises(ShardError, match="shard-00001-of-00003.h5: shard 1 .* is missing"):
        ShardSet(jets_copy)


def test_other_generator_version_is_refused(jets_copy, tmp_path, monkeypatch):
    import hepml_kit.data.jets as jets

    monkeypatch.setattr(jets, "GENERATOR_VERSION", "jets-0.9")
    with pytest.raises(ShardError, match="manifest.json: written by generator .*'jets-1.1'.*'jets-0.9'"):
        ShardSet(jets_copy)  # the whole data set is older than the code
    old = tmp_path / "old"
    write_shards("jet_transformer", 300, 3, old, seed=4, progress=False)  # written by "jets-0.9"
    monkeypatch.undo()
    with h5py.File(old / "shard-00000-of-00003.h5", "r") as f:
        assert f.attrs["generator_version"] == "jets-0.9"
    manifest = json.loads((jets_copy / "manifest.json").read_text())
    shutil.copy(old / "shard-00000-of-00003.h5", jets_copy / "shard-00000-of-00003.h5")
    with pytest.raises(ShardError,
                       match="shard-00000-of-00003.h5: generator_version is 'jets-0.9' but .*'jets-1.1'"):
        ShardSet(jets_copy)
    assert manifest["generator_version"] == "jets-1.1" and manifest["generator"] == "hepml_kit.data.jets"


def test_config_mismatch_and_bad_writes_are_refused(jets_dir, tmp_path):
    import hepml_kit.models.jet_transformer as jt

    original = jt.config
    manifest = json.loads((jets_dir / "manifest.json").read_text())
    changed = tmp_path / "changed"
    shutil.copytree(jets_dir, changed)
    manifest["config"] = manifest["config"].replace("JetTransformerConfig(",
                                                    "JetTransformerConfig(old=1, ", 1)
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="written with a config other than today's preset 'tiny'"):
        ShardSet(changed)
    assert len(ShardSet(changed, cfg=original("tiny"))) == 300  # an explicit cfg is the caller's word
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        write_shards("jet_transformer", 10, 2, jets_dir, progress=False)
    with pytest.raises(ValueError, match="cannot exceed n_events"):
        write_shards("jet_transformer", 2, 3, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="unknown model 'jets'"):
        write_shards("jets", 10, 2, tmp_path / "y", progress=False)
    with pytest.raises(ValueError, match="n_events must be an integer >= 1"):
        write_shards("jet_transformer", 0, 1, tmp_path / "z", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()  # refused before any work


def test_cli_generate_overwrite_and_verify(tmp_path, capsys):
    out = tmp_path / "calo"
    args = ["data", "generate", "calo-gan", "--events", "200", "--shards", "2", "--out",
            str(out), "--seed", "3"]
    assert cli_main(args) == 0
    log = capsys.readouterr().out
    version = showers.GENERATOR_VERSION
    assert "shard 2/2: 100 events" in log and f"wrote 200 events of calo_gan ({version}, seed 3)" in log
    assert cli_main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite", "--quiet", "--shards", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == \
        ["manifest.json"] + [f"shard-0000{k}-of-00004.h5" for k in range(4)]
    assert cli_main(["data", "verify", str(out)]) == 0 and "SHA-256" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 3 and m["generator_version"] == shards_mod.generator_of("calo_gan")[1]
    assert {"voxels", "x", "label", "cfg"} <= set(m["schema"]) and m["schema"]["x"]["torch"] is True
