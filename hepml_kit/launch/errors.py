"""How a failed call is reported: `WorkerError` names the rank(s) that failed first-hand, with their remote
tracebacks, apart from the ranks that only lost a peer in a collective. Used by `Workers.run`."""

from __future__ import annotations

import re
import traceback

__all__ = ["WorkerError", "describe_exit", "describe_remote_failure"]

_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "NCCL communicator was aborted",
              "Broken pipe", "failed to recv", "Socket Timeout")


class WorkerError(RuntimeError):
    """One or more ranks failed. `failures` maps rank -> remote traceback (or cause); `root_ranks` are the
    ranks that failed first-hand (the others only lost a peer in a collective); `diagnosis` (after a timeout
    or a desync) says where every rank was: its collective and its Python stack."""

    def __init__(self, failures: dict[int, str], note: str = "", diagnosis: str = ""):
        self.failures = dict(sorted(failures.items()))
        self.diagnosis = diagnosis
        secondary = {r for r, t in self.failures.items() if any(s in t for s in _PEER_LOST)}
        self.root_ranks = [r for r in self.failures if r not in secondary] or list(self.failures)
        released = [r for r in self.failures if r not in self.root_ranks]
        head = [f"rank {r} failed: {_last_line(self.failures[r])}" for r in self.root_ranks]
        if released:
            head.append(f"rank(s) {', '.join(map(str, released))} stopped because a peer "
                        "failed during a collective")
        if note:
            head.append(note)
        body = [f"--- rank {r} traceback ---\n{t.rstrip()}" for r, t in self.failures.items()
                if r in self.root_ranks and "\n" in t.strip()]
        super().__init__("\n".join(head + body + ([diagnosis] if diagnosis else [])))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no message)"


def describe_exit(code: int | None) -> str:
    """A dead process's exit status in words: "killed by SIGKILL (exit code -9)"."""
    import signal

    if code is None:
        return "exit code unknown (killed or out of memory)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""
        return f"killed by {name}{why}, exit code {code}"
    return f"exited with code {code}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_remote_failure(exc: BaseException) -> str:
    """Plain-text traceback of a remote failure (ANSI colours stripped, engine plumbing frames dropped)."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # ipyparallel RemoteError / EngineError
        tb = _ANSI.sub("", getattr(exc, "traceback", "") or "")
        # keep the frames from our rank wrapper on (the user's code), drop the kernel's exec plumbing
        cut = max(tb.find("_run_rank"), tb.find("_run_plain"))
        tb = tb[tb.rfind("File", 0, cut) :] if cut > 0 else tb
        text = tb.rstrip()
        exc_line = f"{ename}: {evalue}" if evalue else ename
        if text.endswith(f"\n{ename}:"):  # IPython ends a bare `raise MemoryError` in "MemoryError: "
            text = text[: -len(ename) - 1] + ename
        # name the exception once: add its line only when the traceback does not end with it
        return text if _last_line(text) == exc_line else f"{text}\n{exc_line}".strip()
    return "".join(traceback.format_exception(exc))
