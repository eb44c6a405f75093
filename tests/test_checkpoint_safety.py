"""Checkpoints are never silently wrong and never lost: checksums, atomic replacement, the kit's own errors.

Seeded single-bit flips in every file of a checkpoint are `CheckpointError`s naming that file (the model is
left untouched); a process SIGKILLed at several moments of a save leaves the old or the new complete
checkpoint; DCP's `CheckpointException` (a BaseException) arrives as `CheckpointError` (a ValueError).
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from hepml_kit.parallel import checkpoint
from hepml_kit.parallel.checkpoint import CheckpointError, CheckpointMissing


def _trained(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(8, 16)).square().mean().backward()
    opt.step()
    return model, opt


def _fresh():
    model, opt = _trained(seed=1)
    return model, opt, {k: v.clone() for k, v in model.state_dict().items()}


def test_bit_flips_in_every_file_are_named_and_change_nothing(tmp_path):
    model, opt = _trained()
    good = checkpoint.save(tmp_path / "good", model, opt, step=3, extra={"seed": 0})
    names = sorted(p.name for p in good.iterdir())
    assert names == sorted([".metadata", "__0_0.distcp", checkpoint.MANIFEST])
    rng = random.Random(20)
    for name in names:
        size = (good / name).stat().st_size
        for i in range(8):
            bad = tmp_path / f"bad_{name.strip('.')}_{i}"
            shutil.copytree(good, bad)
            data = bytearray((bad / name).read_bytes())
            offset, bit = rng.randrange(size), rng.randrange(8)
            data[offset] ^= 1 << bit
            (bad / name).write_bytes(bytes(data))
            other, other_opt, before = _fresh()
            with pytest.raises(CheckpointError, match=re.escape(str(bad / name))):
                checkpoint.load(bad, other, other_opt)
            for k, v in other.state_dict().items():  # nothing was loaded from the damaged checkpoint
                assert torch.equal(v, before[k]), (name, offset, bit, k)
            with pytest.raises(CheckpointError, match=re.escape(str(bad / name))):
                checkpoint.verify(bad)
            shutil.rmtree(bad)
    other, other_opt, _ = _fresh()
    assert checkpoint.load(good, other, other_opt) == {"step": 3, "extra": {"seed": 0}}
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters()))


def test_missing_and_truncated_files_are_named(tmp_path):
    model, opt = _trained()
    good = checkpoint.save(tmp_path / "good", model, opt)
    for name in sorted(p.name for p in good.iterdir()):
        bad = shutil.copytree(good, tmp_path / "bad")
        (bad / name).write_bytes((bad / name).read_bytes()[:-7])
        with pytest.raises(CheckpointError, match=re.escape(str(bad / name))):
            checkpoint.load(bad, *_fresh()[:2])
        (bad / name).unlink()
        named = f"{bad} has no {name}" if name == checkpoint.MANIFEST else f"{bad / name} is missing"
        with pytest.raises(CheckpointError, match=re.escape(named)):
            checkpoint.load(bad, *_fresh()[:2])
        shutil.rmtree(bad)


def test_dcp_failures_arrive_as_checkpoint_error(tmp_path):
    model, opt = _trained()
    path = checkpoint.save(tmp_path / "ck", model, opt)
    wrong = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4), nn.Linear(4, 2))
    try:  # DCP raises CheckpointException, a BaseException that `except Exception` does not catch
        checkpoint.load(path, wrong)
    except Exception as e:  # noqa: BLE001  (the point: it is an Exception)
        assert isinstance(e, CheckpointError) and isinstance(e, ValueError)
        assert str(path) in str(e) and "Missing key" in str(e) and "3.weight" in str(e)
        assert type(e.__cause__).__name__ == "CheckpointException"
    else:
        pytest.fail("loading into a model with an extra layer did not fail")
    with pytest.raises(CheckpointMissing, match="no checkpoint") as info:
        checkpoint.load(tmp_path / "nothing", model)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)


def test_save_replaces_atomically_and_refuses_foreign_folders(tmp_path):
    model, opt = _trained()
    path = tmp_path / "ck"
    checkpoint.save(path, model, opt, step=1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    checkpoint.save(path, model, opt, step=2)
    other, other_opt, _ = _fresh()
    assert checkpoint.load(path, other, other_opt)["step"] == 2
    assert torch.equal(other[0].weight, model[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no partial or previous folder left
    # a folder holding anything but checkpoint files is refused before anything is written
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt"):
        checkpoint.save(tmp_path / "work", model, opt)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["notes.txt"]
    assert not (tmp_path / ".work.partial").exists()
    # an empty folder (e.g. made by the user) becomes the checkpoint
    (tmp_path / "empty").mkdir()
    checkpoint.save(tmp_path / "empty", model, step=5)
    assert checkpoint.load(tmp_path / "empty", _fresh()[0])["step"] == 5


def test_interrupted_rename_loads_the_previous_checkpoint(tmp_path):
    """The state a kill between the two renames leaves: the old checkpoint moved aside, the new one
    partial."""
    model, opt = _trained()
    path = checkpoint.save(tmp_path / "ck", model, opt, step=1)
    path.rename(tmp_path / ".ck.previous")
    with pytest.warns(UserWarning, match="interrupted"):
        assert checkpoint.load(path, *_fresh()[:2])["step"] == 1
    checkpoint.save(path, model, opt, step=2)  # the next save completes the replacement
    assert checkpoint.load(path, *_fresh()[:2])["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_unchecked_checkpoint_needs_verify_false(tmp_path):
    model, _ = _trained()
    path = checkpoint.save(tmp_path / "ck", model, step=4, checksums=False)
    with pytest.raises(CheckpointError, match="verify=False"):
        checkpoint.load(path, _fresh()[0])
    assert checkpoint.load(path, _fresh()[0], verify=False)["step"] == 4


# Imports torch once, then forks one saving process per line read: each saves steps base+1, base+2, ...
# (every parameter filled with the step) into the folder until it is killed. Forking keeps the test fast.
SAVER = """
import os, sys, time, torch
from torch import nn
from hepml_kit.parallel import checkpoint
torch.set_num_threads(1)
model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])  # 4 MiB in 8 tensors
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        print("child", os.getpid(), flush=True)
        step = int(line)
        while True:
            step += 1
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(step)
            print("start", step, flush=True)
            t = time.perf_counter()
            checkpoint.save(sys.argv[1], model, step=step)
            print("done", step, time.perf_counter() - t, flush=True)
    _, status = os.waitpid(pid, 0)
    print("exit", os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
"""


def _model_of_saver():
    return nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])


def test_sigkill_during_save_keeps_old_or_new_checkpoint(tmp_path):
    """Kill a saving process at 0, 20, ... 95 % of a save's duration after a save starts; load in between."""
    path, step = tmp_path / "ck", 1
    model = _model_of_saver()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    checkpoint.save(path, model, step=step)
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        for fraction in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95):
            saver.stdin.write(f"{step}\n")
            saver.stdin.flush()
            duration, last_done, pid, killed = None, step, None, False
            for line in saver.stdout:
                word, number, *rest = line.split()
                if word == "child":
                    pid = int(number)
                elif word == "done":  # (lines read after the kill were printed before it)
                    duration, last_done = float(rest[0]), int(number)
                elif word == "start" and not killed and duration is not None and int(number) >= step + 3:
                    time.sleep(fraction * duration)  # saves step+1 and step+2 replaced earlier checkpoints
                    os.kill(pid, signal.SIGKILL)
                    killed = True
                elif word == "exit":
                    assert int(number) == signal.SIGKILL
                    break
            loaded = _model_of_saver()
            step = checkpoint.load(path, loaded)["step"]  # (warns if the kill came between the two renames)
            assert step >= last_done, fraction  # never older than the last complete save ...
            for name, p in loaded.named_parameters():  # ... and one complete state, not a mix
                assert torch.all(p == step), \
                    f"{name} holds values of another save than step {step} ({fraction})"
    finally:
        saver.kill()
        saver.wait()
    checkpoint.save(path, loaded, step=step + 1)  # the leftovers of the killed saves are cleared
    assert checkpoint.load(path, loaded)["step"] == step + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
