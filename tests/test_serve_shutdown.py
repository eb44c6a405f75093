"""No serving process outlives its owner: a notebook kernel interrupted inside ``with InferenceServer(...)``
(SIGINT -> KeyboardInterrupt), a kernel shut down while a server started without ``with`` runs (SIGTERM),
and a kernel killed outright (SIGKILL: Triton gets SIGTERM from the kernel's death, its stubs follow, the
request guard's process sees its stdin close, and the next server start deletes the left-over folder). Each
case runs in a child Python process."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from hepml_kit.serve import serving_processes
from hepml_kit.serve.server import _remove_stale_folders

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from hepml_kit.serve import InferenceServer, mlp_model, start_server
if sys.argv[1] == "with":
    with InferenceServer([mlp_model()]) as server:
        print("READY", server._dir, server._guard.pid, flush=True)
        while True:
            time.sleep(0.05)   # a long-running notebook cell
else:
    server = start_server([mlp_model()])
    print("READY", server._dir, server._guard.pid, flush=True)
    while True:
        time.sleep(0.05)
"""


def _alive(processes) -> list:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


SCENARIOS = {
    "kernel interrupted in a with block (SIGINT)": ("with", signal.SIGINT),
    "kernel shut down, server started without with (SIGTERM)": ("plain", signal.SIGTERM),
    "kernel killed (SIGKILL)": ("plain", signal.SIGKILL),
}


def test_no_serving_process_survives_its_owner():
    """The three owners run side by side (one start-up's worth of waiting instead of three)."""
    children = {
        name: subprocess.Popen([sys.executable, "-c", CHILD, how], stdout=subprocess.PIPE, text=True)
        for name, (how, _) in SCENARIOS.items()
    }
    try:
        folders, ours = {}, {}
        for name, child in children.items():
            line = child.stdout.readline()
            assert line.startswith("READY"), f"{name}: child did not start a server: {line!r}"
            folders[name] = Path(line.split()[1])
            ours[name] = serving_processes(folders[name])
            assert sorted(p.name() for p in ours[name]) == ["triton_python_backend_stub", "tritonserver"], (
                name
            )
            ours[name].append(psutil.Process(int(line.split()[2])))  # the request guard's process
        for name, child in children.items():
            child.send_signal(SCENARIOS[name][1])
        for name, child in children.items():
            assert child.wait(timeout=60) != 0, name
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in ours.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in SCENARIOS:
            assert not _alive(ours[name]), f"{name}: left behind {[p.name() for p in _alive(ours[name])]}"
            assert serving_processes(folders[name]) == [], name
        # SIGKILL: nothing ran in that child, so its folder (a ~30 MB copy of Triton) stays until the next
        # server start sweeps folders of dead processes; the others cleaned up after themselves.
        assert folders["kernel killed (SIGKILL)"].exists()
        _remove_stale_folders()
        for name, folder in folders.items():
            assert not folder.exists(), name
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
