"""A pool's watchdog: when the driver dies (SIGKILL, SIGTERM, a crashed kernel), kill what it started.

`Workers` starts this (`main`) in a Python process of its own session, so a signal to the
driver's process group does not reach it, and keeps the write end of a pipe to its stdin. The driver tells it
what to clean up, one line each: ``pid <pid> <create_time>``, ``tag <value>`` (every process started for the
pool carries ``HEPML_POOL=<value>`` in its environment, so engines' helpers and mpiexec's children are found
too), ``dir <path>``. ``bye`` (an orderly close) ends it quietly. When the pipe reaches end-of-file without
``bye`` (the kernel closes a dead process's pipes at once) or the driver's pid is gone, it SIGKILLs every
listed process and every process carrying the tag, removes the folders and exits: cleanup within a second
of the driver's death instead of never (atexit does not run after SIGKILL or an unhandled SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

TAG_VARIABLE = "HEPML_POOL"

__all__ = ["Reaper", "TAG_VARIABLE", "kill_tagged"]


class Reaper:
    """Driver side: start the watchdog and tell it what to clean up."""

    def __init__(self):
        self._proc = subprocess.Popen(
            # run as a file, not through the package: a bare interpreter starts in a fraction of the time
            [sys.executable, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, text=True,
        )

    def watch_pid(self, pid: int) -> None:
        try:
            import psutil

            self._send(f"pid {pid} {psutil.Process(pid).create_time()!r}")
        except Exception:  # already gone
            pass

    def watch_tag(self, tag: str) -> None:
        self._send(f"tag {tag}")

    def watch_dir(self, path: str) -> None:
        self._send(f"dir {path}")

    def dismiss(self) -> None:
        """An orderly close happened: end the watchdog without killing anything."""
        self._send("bye")
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except Exception:
            self._proc.kill()

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass


def kill_tagged(tag: str, exclude: int | None = None) -> list[int]:
    """SIGKILL every process of this user whose environment has ``HEPML_POOL=<tag>`` (Linux /proc)."""
    needle = f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    killed = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit() or int(name) in (os.getpid(), exclude):
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read() + b"\0"
            if b"\0" + needle in b"\0" + env:
                os.kill(int(name), signal.SIGKILL)
                killed.append(int(name))
        except OSError:
            pass
    return killed


def _watch(driver_pid: int) -> None:
    pids: list[tuple[int, float]] = []
    tags: list[str] = []
    dirs: list[str] = []
    done = threading.Event()
    dismissed = threading.Event()

    def read_orders():
        for line in sys.stdin:
            kind, _, rest = line.strip().partition(" ")
            if kind == "bye":
                dismissed.set()
                break
            if kind == "pid":
                pid, created = rest.split()
                pids.append((int(pid), float(created)))
            elif kind == "tag":
                tags.append(rest)
            elif kind == "dir":
                dirs.append(rest)
        done.set()

    threading.Thread(target=read_orders, daemon=True).start()
    # end-of-file is the fast signal; the pid check catches a pipe kept open by a fork
    while not done.wait(1.0):
        if os.getppid() != driver_pid and not _alive(driver_pid):
            break
    if dismissed.is_set():
        return
    _clean(pids, tags, dirs)


def _clean(pids, tags, dirs) -> None:
    import psutil

    for pid, created in pids:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3:  # not a newer process that reused the pid
                p.kill()
        except Exception:
            pass
    for _ in range(2):  # a second sweep catches helpers a dying parent was still starting
        for tag in tags:
            kill_tagged(tag)
        time.sleep(0.2)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(driver_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the driver's terminal is the driver's business
    _watch(driver_pid)


if __name__ == "__main__":
    main(int(sys.argv[1]))
