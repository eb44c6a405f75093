"""A user's files -> checked shards (`hepml-kit data convert`): real ROOT files written by uproot from the
kit's jets (a variable number of tracks per jet) round-trip to the same arrays; bad input fails by name."""

from __future__ import annotations

import json
import re

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

from hepml_kit import models
from hepml_kit.cli import main as cli_main
from hepml_kit.data import ShardDataset, ShardSet
from hepml_kit.data.convert import ConvertError, convert_files


def _user_jets(n: int, seed: int) -> dict:
    """The kit's jets as a user's ntuple would hold them: per-jet numbers and jagged per-track lists."""
    tb = models.get("jet_transformer")
    data = tb.generate(tb.config("tiny"), n, seed)
    mask = np.asarray(data["mask"]).astype(bool)
    n_tracks = mask.sum(axis=1)
    tracks = np.asarray(data["tracks"])[mask]  # (total tracks, features), jet by jet
    return {"jet_pt": np.asarray(data["jet_pt"], dtype=np.float32),
            "label": np.asarray(data["flavour"]).astype(np.int32),
            "trk_d0": ak.unflatten(tracks[:, 0].astype(np.float32), n_tracks),
            "trk_z0": ak.unflatten(tracks[:, 1].astype(np.float64), n_tracks)}


@pytest.fixture(scope="module")
def root_files(tmp_path_factory):
    """Two files: a TTree (mktree/extend) and an RNTuple (uproot's default for a dict), 150 + 120 jets."""
    d = tmp_path_factory.mktemp("root")
    a, b = _user_jets(150, 1), _user_jets(120, 2)
    with uproot.recreate(d / "a.root") as f:
        f.mktree("jets",
                 {"jet_pt": "f4", "label": "i4", "trk_d0": "var * float32", "trk_z0": "var * float64"})
        f["jets"].extend(a)
    with uproot.recreate(d / "b.root") as f:
        f["jets"] = b
    return d, a, b


def _read_batches(path, batch_size=32):
    batches = list(ShardDataset(path, batch_size=batch_size, shuffle=False))
    return {k: ak.concatenate([ak.Array(b[k]) for b in batches]) for k in batches[0]}


def _equal(x, y) -> bool:
    """Same events, same lengths, same values (exactly) in each."""
    return ak.to_list(ak.Array(x)) == ak.to_list(ak.Array(y))


def test_root_round_trip_to_batches_equals_the_original_arrays(root_files, tmp_path):
    d, a, b = root_files
    with pytest.raises(ConvertError, match="b.root: columns .* differ from .*a.root's .*'ntrk_d0'"):
        convert_files([d / "a.root", d / "b.root"], 3, tmp_path / "out", tree="jets", log=lambda line: None)
    # the TTree also holds uproot's counter branches (ntrk_d0, ...): pick the same branches in both files
    m = convert_files([d / "a.root", d / "b.root"], 3, tmp_path / "out", tree="jets", branches=list(a),
                      progress=False, log=lambda line: None)
    assert m["n_events"] == 270 and m["layout"] == "table" and m["schema"]["trk_d0"]["ragged_axis"] == 0
    assert cli_main(["data", "verify", str(tmp_path / "out")]) == 0
    got = _read_batches(tmp_path / "out")
    assert set(got) == set(a)
    for key in a:
        want = ak.concatenate([ak.Array(a[key]), ak.Array(b[key])])
        assert _equal(got[key], want), key
    assert ak.Array(got["trk_z0"]).type.content.content.primitive == "float64"  # dtypes kept
    shards = ShardSet(tmp_path / "out")
    assert np.array_equal(shards.read_event(151)["trk_d0"], np.asarray(b["trk_d0"][1]))


def test_branches_and_cut_select(root_files, tmp_path):
    d, a, _ = root_files
    assert cli_main(["data", "convert", str(d / "a.root"), "--tree", "jets", "--branches", "trk_d0,label",
                     "--cut", "(label == 0) & (jet_pt > 30)", "--shards", "2", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 0
    keep = (a["label"] == 0) & (a["jet_pt"] > 30)
    got = ShardSet(tmp_path / "o").read(0, int(keep.sum()))
    assert list(got) == ["trk_d0", "label"] and _equal(got["trk_d0"], a["trk_d0"][keep])


def test_hdf5_and_parquet_inputs(root_files, tmp_path):
    _, a, _ = root_files
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["jet_pt"], f["label"] = a["jet_pt"], a["label"]
    ak.to_parquet(ak.zip({k: ak.Array(v) for k, v in a.items()}, depth_limit=1), tmp_path / "in.parquet")
    convert_files([tmp_path / "in.h5"], 2, tmp_path / "h", cut="label > 0", log=lambda line: None)
    got = ShardSet(tmp_path / "h").read(0, int((a["label"] > 0).sum()))
    assert np.array_equal(got["jet_pt"], a["jet_pt"][a["label"] > 0])
    convert_files([tmp_path / "in.parquet"], 2, tmp_path / "p", log=lambda line: None)
    got = ShardSet(tmp_path / "p", verify="full").read(0, 150)
    assert all(_equal(got[k], a[k]) for k in a)


def test_bad_input_fails_by_name_and_leaves_nothing(root_files, tmp_path, capsys):
    d, _, _ = root_files
    broken = tmp_path / "broken.root"
    broken.write_bytes((d / "a.root").read_bytes()[:4000])
    ak.to_parquet(ak.zip({"name": ["a", "b", "c"], "x": [1.0, 2.0, 3.0]}), tmp_path / "strings.parquet")
    cases = [
        ([str(tmp_path / "missing.root"), "--tree", "jets"], "missing.root: no such file"),
        ([str(d / "a.root"), "--tree", "tracks"], "a.root: no tree 'tracks'.*'jets'"),
        ([str(d / "a.root"), "--tree", "jets", "--branches", "jet_pt,trk_phi"],
         "a.root: .*no branch 'trk_phi'"),
        ([str(broken), "--tree", "jets"], "broken.root: .*(truncated or corrupt|no tree)"),
        ([str(tmp_path / "strings.parquet")], "strings.parquet: .*'name'.*not .*--branches"),
        ([str(d / "a.root"), "--tree", "jets", "--cut", "jet_pt >"], "--cut 'jet_pt >' does not parse"),
        ([str(d / "a.root"), "--tree", "jets", "--cut", "pt > 3"],
         "a.root: --cut 'pt > 3' cannot be evaluated"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert cli_main(["data", "convert", *args, "--shards", "2", "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err, re.DOTALL), (message, err)
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*")), args


def test_failed_write_leaves_no_partial_folder(root_files, tmp_path, monkeypatch):
    d, _, _ = root_files
    from hepml_kit.data import writer

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "metadata_checksum", fail)  # fails after the first shard file is written
    with pytest.raises(OSError, match="disk full"):
        convert_files([d / "a.root"], 2, tmp_path / "out", tree="jets", log=lambda line: None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(ConvertError, match="not an empty folder"):
        convert_files([d / "a.root"], 2, tmp_path / "out", tree="jets", log=lambda line: None)
    assert json.dumps(sorted(p.name for p in (tmp_path / "out").iterdir())) == '["mine.txt"]'


def test_root_stream_reads_each_ranks_share_directly(root_files):
    from hepml_kit.data.root_stream import RootStream

    d, a, b = root_files
    files, keep = [d / "a.root", d / "b.root"], list(a)
    one = list(RootStream(files, "jets", 40, branches=keep, chunk_events=64))
    for key in keep:  # one rank, in order: exactly the files' arrays
        assert _equal(ak.concatenate([ak.Array(x[key]) for x in one]),
                      ak.concatenate([ak.Array(a[key]), ak.Array(b[key])])), key
    seen = []
    for rank in range(2):
        stream = RootStream(files, "jets", 40, branches=keep, chunk_events=64, shuffle=True,
                            seed=1, rank=rank, world_size=2)
        stream.set_epoch(2)
        serial = [float(x) for batch in stream for x in batch["jet_pt"]]
        workers = [float(x) for batch in stream.loader(num_workers=2) for x in batch["jet_pt"]]
        assert sorted(serial) == sorted(workers)
        seen += serial
    assert sorted(seen) == sorted(np.concatenate([a["jet_pt"], b["jet_pt"]]).tolist())  # each jet once
    with pytest.raises(ConvertError, match="a.root: tree 'jets' has no branch 'nope'"):
        RootStream(files, "jets", 40, branches=["nope"])
