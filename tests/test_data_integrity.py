"""Bit flips anywhere in a shard end in a `ShardError` naming the shard, or in identical data: never in
silently different data, an unnamed exception or a crash (issue 20, defect 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest

from hepml_kit.cli import main as cli_main
from hepml_kit.data import ShardError, ShardSet, write_shards

# Runs in a child process, so that a crash (a segfault while parsing a damaged file) fails the test instead
# of taking pytest down. For each seeded flip: reading the whole set with the default checks, and the
# full verification `hepml-kit data verify` runs; prints one JSON verdict per flip.
FLIPPER = r"""
import json, os, random, shutil, sys
import numpy as np
from hepml_kit.data import ShardDataset, ShardSet

src, flips, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shard = sorted(f for f in os.listdir(src) if f.endswith(".h5"))[1]

def read_all(path):
    return [{k: np.asarray(v) for k, v in b.items() if hasattr(v, "shape")}
            for b in ShardDataset(path, batch_size=40, shuffle=False)]

def verdict(fn, ref):
    try:
        got = fn()
    except Exception as e:
        return "named" if shard in str(e) else f"unnamed {type(e).__name__}: {e}"
    if ref is None:
        return "passed"
    same = len(got) == len(ref) and all(
        g.keys() == r.keys() and all(np.array_equal(g[k], r[k]) for k in g) for g, r in zip(got, ref))
    return "same" if same else "silently different"

def metadata_bytes(path):  # every byte outside the chunks' stored data: object headers, chunk index, heaps
    import h5py
    chunk = np.zeros(os.path.getsize(path), bool)
    with h5py.File(path, "r") as f:
        def mark(name, obj):
            if isinstance(obj, h5py.Dataset):
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    chunk[info.byte_offset : info.byte_offset + info.size] = True
        f.visititems(mark)
    return np.flatnonzero(~chunk)

ref = read_all(src)
size = os.path.getsize(os.path.join(src, shard))
meta = metadata_bytes(os.path.join(src, shard))
rng = random.Random(seed)
for trial in range(flips):
    where = trial % 3  # the first 16 KiB, anywhere, a metadata byte
    pos = [rng.randrange(min(size, 16384)), rng.randrange(size), int(meta[rng.randrange(len(meta))])][where]
    bit = rng.randrange(8)
    t = f"{src}-flip{trial}"
    shutil.copytree(src, t)
    with open(os.path.join(t, shard), "r+b") as f:
        f.seek(pos); b = f.read(1); f.seek(pos); f.write(bytes([b[0] ^ (1 << bit)]))
    print(json.dumps({"pos": pos, "bit": bit, "read": verdict(lambda: read_all(t), ref),
                      "verify": verdict(lambda: ShardSet(t, verify="full"), None)}), flush=True)
    shutil.rmtree(t)
"""


@pytest.fixture(scope="module")
def jets(tmp_path_factory):
    out = tmp_path_factory.mktemp("flips") / "ds"
    write_shards("jet_transformer", 2000, 2, out, seed=2, progress=False)  # several chunks per array
    return out


def test_seeded_bit_flips_are_named_or_harmless(jets):
    """60 flips, a third each in the first 16 KiB, anywhere, and in the metadata (bytes outside chunk data):
    the default read must name the shard or return the same data, and the full check must name the shard."""
    r = subprocess.run([sys.executable, "-c", FLIPPER, str(jets), "60", "20"], capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, f"the reader crashed (exit {r.returncode}): {r.stderr[-2000:]}"
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 60
    bad = [row for row in rows if row["read"] not in ("named", "same") or row["verify"] != "named"]
    assert not bad, f"{len(bad)} of 60 flips not caught by name: {bad[:5]}"


def test_metadata_flip_is_caught_before_hdf5_parses_the_file(jets, tmp_path):
    """A flip in the chunk index / object headers (not chunk data) is refused when the set is opened."""
    import shutil

    t = shutil.copytree(jets, tmp_path / "ds")
    path = t / "shard-00000-of-00002.h5"
    with h5py.File(path, "r") as f:
        data_start = min(f["tracks"].id.get_chunk_info(i).byte_offset
                         for i in range(f["tracks"].id.get_num_chunks()))
    with open(path, "r+b") as f:  # the superblock's end-of-file address region, before any chunk
        f.seek(min(40, data_start - 1))
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ShardError, match="shard-00000-of-00002.h5: .*metadata"):
        ShardSet(t)
    assert cli_main(["data", "verify", str(t)]) == 1


def test_written_shards_carry_checksummed_metadata(jets):
    m = json.loads((jets / "manifest.json").read_text())
    for entry in m["shards"]:
        assert set(entry["metadata"]) == {"ranges", "sha256"} and entry["metadata"]["ranges"]
        with h5py.File(jets / entry["file"], "r") as f:
            assert f.id.get_create_plist().get_version()[0] >= 2  # superblock v2+: checksummed
            assert all(f[k].fletcher32 for k in ("tracks", "mask", "flavour"))


def test_data_set_without_metadata_checksums_is_hashed_whole(jets, tmp_path):
    """Shards written before metadata checksums still read; their whole-file SHA-256 stands in."""
    import shutil

    t = shutil.copytree(jets, tmp_path / "old")
    manifest = json.loads((t / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["metadata"]
    (t / "manifest.json").write_text(json.dumps(manifest))
    assert len(ShardSet(t).read(0, 2000)["tracks"]) == 2000
    with open(t / "shard-00001-of-00002.h5", "r+b") as f:  # any byte, in a fresh file (the hash is per file)
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ShardError, match="shard-00001-of-00002.h5: SHA-256 differs"):
        ShardSet(t)
    manifest["shards"][0]["metadata"] = {"ranges": "10:5,0:3", "sha256": "0"}
    (t / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="manifest.json: shard 0's metadata checksum entry is malformed"):
        ShardSet(t)
