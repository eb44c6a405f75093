"""Ray and Triton start under a long TMPDIR (pytest's tmp_path, a deep $SCRATCH): their Unix sockets would
pass the 107-byte AF_UNIX limit, so `socket_dir` moves their folder to /tmp; and neither leaves its folder."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hepml_kit._tempdir import AF_UNIX_PATH_MAX, socket_dir

LONG = "a-deep-scratch-folder-like-pytest-tmp-path/test_lesson_runs_at_nprocs_4_f13/tmp"


def test_socket_dir_stays_under_tmpdir_when_the_socket_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    short = socket_dir("x-", 10)
    assert short.parent == tmp_path and short.is_dir()
    long_tmp = tmp_path / LONG
    long_tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    moved = socket_dir("x-", 62)
    try:
        assert moved.parent == Path("/tmp") and len(f"{moved}/" + "s" * 62) <= AF_UNIX_PATH_MAX
    finally:
        moved.rmdir()


CHILD = """
import os, sys
from hepml_kit.hpo.ray_backend import ray_session
from hepml_kit.serve import InferenceServer, ServiceClient, mlp_model
if sys.argv[1] == "ray":
    import ray
    with ray_session(num_cpus=1):
        print("CPUS", ray.cluster_resources()["CPU"], flush=True)
else:
    model = mlp_model()
    with InferenceServer([model]) as server, ServiceClient(server.http_url) as client:
        print("SERVED", client.infer("mlp", model.example(2))["logits__0"].shape, flush=True)
"""


def test_ray_and_triton_start_under_a_long_tmpdir(tmp_path):
    long_tmp = tmp_path / LONG
    long_tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(long_tmp)}
    children = {kind: subprocess.Popen([sys.executable, "-c", CHILD, kind], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for kind in ("ray", "triton")}
    for kind, child in children.items():
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, f"{kind} failed under a long TMPDIR:\n{err[-3000:]}"
        assert ("CPUS 1.0" if kind == "ray" else "SERVED") in out
    assert sorted(p.name for p in long_tmp.iterdir()) == []  # nothing left in TMPDIR
    assert not [p for p in Path("/tmp").glob("hepml-ray-*") if p.stat().st_mtime > tmp_path.stat().st_mtime]
