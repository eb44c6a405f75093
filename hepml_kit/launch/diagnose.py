"""Why is the cell frozen? Every rank's Python stack and the collective it sits in, asked from the driver.

Engine side, a `RankMonitor` started once per engine: a daemon thread that answers on a TCP socket with the
rank's state (``running``, ``in all_reduce #41 [(1024,)] float32``, ``returned``) and, on request, the Python
stack of its main thread. A thread answers while the main thread blocks in a collective or a sleep (both
release the GIL); a rank stuck in native code that holds the GIL does not answer, and the report says so.
The state comes from the kit's light wrapper around ``torch.distributed``'s Python collectives (one tuple
stored per call), numbered per call on the default group. Collectives issued from C++ (DDP's gradient
buckets) bypass it; PyTorch's flight recorder sees those too: start the pool with ``TORCH_FR_BUFFER_SIZE``
set (e.g. 2000) and the report adds each rank's last recorded collectives with their sequence numbers, sizes
and states. Checked here on gloo (torch 2.13 CPU: entries such as ``gloo:all_reduce``); on nccl it is
PyTorch's documented default use (not checked here: no GPU).

Driver side: `ask` fetches a rank's answer, `collective_summary` names the odd rank out ("ranks 0, 2 are in
all_reduce #41; rank 1 is in barrier #40"), `find_desync` spots ranks that can never meet (a rank returned
while another waits in a collective, or ranks wait in different collectives or with different shapes).

Taught in curriculum/11_debugging.
"""

from __future__ import annotations

import dis
import functools
import hmac
import inspect
import json
import linecache
import os
import re
import socket
import sys
import threading
import time

__all__ = ["RankMonitor", "ask", "code_files", "collective_summary", "find_desync", "format_stacks",
           "resolve_sent_code", "start_monitor"]

# collectives on a group, and the index of their `group` parameter (found once from the signature)
COLLECTIVES = ("all_reduce", "broadcast", "barrier", "all_gather", "all_gather_into_tensor", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "all_to_all",
               "all_to_all_single", "all_gather_object", "broadcast_object_list", "gather_object",
               "scatter_object_list", "monitored_barrier")
_monitor: RankMonitor | None = None


class RankMonitor:
    """Engine side: the rank's current state, and a thread answering ``state`` / ``stacks`` requests."""

    def __init__(self, bind_host: str = "127.0.0.1", token: str = ""):
        self.token = token
        self.state = ("idle", None, 0, None, time.time())  # phase, op, seq, shapes, since
        self.seq = 0
        self.armed = True
        self._server = socket.create_server((bind_host, 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, name="hepml-rank-monitor", daemon=True).start()

    def begin_call(self) -> None:
        self.seq = 0
        self.state = ("running", None, 0, None, time.time())

    def end_call(self, phase: str) -> None:
        _, op, seq, shapes, _ = self.state
        self.state = (phase, op, seq, shapes, time.time())

    def _serve(self) -> None:
        while True:
            conn, _ = self._server.accept()
            try:
                with conn:
                    conn.settimeout(2)
                    given, _, request = conn.recv(128).decode(errors="replace").strip().rpartition(" ")
                    if not hmac.compare_digest(given, self.token):
                        continue  # not the pool's driver: no answer (stacks show code and values)
                    answer = self.describe()
                    if request == "stacks":
                        answer["stack"] = format_stacks() + flight_recorder_tail()
                    conn.sendall(json.dumps(answer).encode())
            except OSError:
                pass

    def describe(self) -> dict:
        phase, op, seq, shapes, since = self.state
        return {"phase": phase, "op": op, "seq": seq, "shapes": shapes,
                "for_s": round(time.time() - since, 1)}


def start_monitor(bind_host: str = "127.0.0.1", token: str = "") -> int:
    """Start this engine's monitor (once) and wrap torch.distributed's collectives; returns its port.

    The monitor answers only requests that carry `token` (the pool's secret, sent to its engines over
    ipyparallel's authenticated channel): on a shared login node, or bound to a routable address for engines
    on other nodes, anyone could otherwise connect and read every rank's stack."""
    global _monitor
    if _monitor is None:
        _monitor = RankMonitor(bind_host, token)
        _wrap_collectives(_monitor)
    return _monitor.port


def monitor() -> RankMonitor | None:
    return _monitor


def _wrap_collectives(mon: RankMonitor) -> None:
    import torch.distributed as dist

    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None and not getattr(fn, "_hepml_recorded", False):
            setattr(dist, name, recorded(mon, fn, name))


def recorded(mon: RankMonitor, fn, name: str):
    """`fn` (a torch.distributed collective) that first stores what it is about to do in `mon.state`."""
    import torch
    import torch.distributed as dist

    params = list(inspect.signature(fn).parameters)
    at = params.index("group") if "group" in params else None

    @functools.wraps(fn)
    def collective(*args, **kwargs):
        if not mon.armed:
            return fn(*args, **kwargs)
        group = kwargs.get("group") if at is None or len(args) <= at else args[at]
        world = group is None or group is dist.GroupMember.WORLD
        if world:
            mon.seq += 1
        shapes = [list(a.shape) for a in args if isinstance(a, torch.Tensor)]
        for a in args:
            if isinstance(a, (list, tuple)):
                shapes += [list(t.shape) for t in a if isinstance(t, torch.Tensor)]
        mon.state = ("in", name if world else f"{name} (subgroup)", mon.seq, shapes, time.time())
        try:
            return fn(*args, **kwargs)
        finally:
            mon.state = ("running", *mon.state[1:4], time.time())

    collective._hepml_recorded = True
    return collective


def format_stacks() -> str:
    """The main thread's Python stack from the rank's function down (engine plumbing dropped), each frame
    with its source line, or, when the source is not on this machine, the call being made (``time.sleep``)."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    names = [f.f_code.co_name for f in frames]
    calls = [i for i, name in enumerate(names) if name in ("_run_rank", "_run_plain")]
    if not calls:
        return "  (idle: not running a call)"
    start = calls[0] + 1
    lines = []
    for f in frames[start:]:
        code = f.f_code
        if code.co_name == "collective" and code.co_filename == __file__:
            continue
        lines.append(f'  File "{code.co_filename}", line {f.f_lineno}, in {code.co_name}')
        source = linecache.getline(code.co_filename, f.f_lineno).strip()
        hint = source or _call_in_progress(code, f.f_lineno, f.f_lasti)
        if hint:
            lines.append(f"    {hint}" if source else f"    (calling {hint})")
    return "\n".join(lines) or "  (idle: not running a call)"


def flight_recorder_tail(last: int = 3) -> str:
    """This rank's last collectives from PyTorch's flight recorder, when ``TORCH_FR_BUFFER_SIZE`` is set."""
    if not os.environ.get("TORCH_FR_BUFFER_SIZE"):
        return ""
    try:
        import pickle

        import torch

        entries = pickle.loads(torch._C._distributed_c10d._dump_fr_trace()).get("entries", [])[-last:]
    except Exception as e:  # no process group yet, or a torch without the recorder
        return f"\n  flight recorder: unavailable ({type(e).__name__})"
    lines = [f"    {e['profiling_name']} #{e['collective_seq_id']} sizes {e['input_sizes']} {e['state']}"
             for e in entries]
    return "\n  flight recorder, last collectives:\n" + "\n".join(lines) if lines else ""


def _call_in_progress(code, lineno: int, lasti: int) -> str:
    """The dotted name of the last call started on `lineno` at or before instruction `lasti`, found by
    replaying the line's loads and calls on a small stack (``dist.all_reduce(t)`` -> ``dist.all_reduce``)."""
    stack: list[str] = []
    last = ""
    for ins in dis.get_instructions(code):
        if ins.offset > lasti:
            break
        if ins.positions is None or ins.positions.lineno != lineno:
            continue
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF", "LOAD_CONST"):
            stack.append(str(ins.argval) if ins.opname != "LOAD_CONST" else "")
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and stack:
            stack[-1] = f"{stack[-1]}.{ins.argval}" if stack[-1] else ""
        elif ins.opname == "CALL":
            del stack[len(stack) - (ins.arg or 0):]
            last = stack.pop() if stack else ""
            stack.append("")
    return last


# -- driver side -----------------------------------------------------------------------------------------
def ask(host: str, port: int, what: str = "state", timeout: float = 2.0, token: str = "") -> dict | None:
    """A rank monitor's answer, or None when it does not answer within `timeout` (process gone, GIL held,
    or a wrong `token`)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"{token} {what}".encode())
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return json.loads(b"".join(chunks).decode())
    except (OSError, ValueError):
        return None


def code_files(*objects) -> dict[str, str]:
    """Function name -> source file for the functions sent to the ranks (and functions they define):
    cloudpickle sends code by value under the file name ``<dynamic-code>``; the driver still knows it."""
    files: dict[str, str] = {}
    todo = [getattr(o, "__code__", None) for o in objects]
    while todo:
        code = todo.pop()
        if code is None or not hasattr(code, "co_consts"):
            continue
        files.setdefault(code.co_name, code.co_filename)
        todo += [c for c in code.co_consts if hasattr(c, "co_consts")]
    return files


_FRAME = re.compile(r'  File "<dynamic-code>", line (\d+), in (\S+)')


def resolve_sent_code(stack: str, files: dict[str, str]) -> str:
    """Put back the file names and source lines of sent functions (from this process's linecache, which
    also holds notebook cells) in a rank's stack."""
    out, skip_hint = [], False
    for line in stack.splitlines():
        m = _FRAME.fullmatch(line)
        if m and m.group(2) in files:
            path, lineno = files[m.group(2)], int(m.group(1))
            source = linecache.getline(path, lineno).strip()
            out.append(f'  File "{path}", line {lineno}, in {m.group(2)}')
            if source:
                out.append(f"    {source}")
                skip_hint = True
            continue
        if skip_hint and line.startswith("    (calling "):
            skip_hint = False
            continue
        skip_hint = False
        out.append(line)
    return "\n".join(out)


def _where(state: dict | None) -> str:
    if state is None:
        return "does not answer (dead, or stuck in native code holding the GIL)"
    if state["phase"] == "in":
        shapes = f" with shapes {state['shapes']}" if state["shapes"] else ""
        return f"in {state['op']} #{state['seq']}{shapes}"
    last = f" (last collective: {state['op']} #{state['seq']})" if state["op"] else " (no collective yet)"
    return {"running": "running the function, not in a collective", "returned": "back from the function",
            "raised": "raised", "idle": "idle"}.get(state["phase"], state["phase"]) + last


def collective_summary(states: dict[int, dict | None]) -> str:
    """One line grouping ranks by where they are, e.g. "ranks 0, 2, 3 are in all_reduce #41; rank 1 is
    ..."."""
    groups: dict[str, list[int]] = {}
    for rank in sorted(states):
        groups.setdefault(_where(states[rank]), []).append(rank)
    parts = []
    for where, ranks in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        who = f"rank {ranks[0]} is" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} are"
        parts.append(f"{who} {where}")
    return "; ".join(parts)


def find_desync(states: dict[int, dict | None]) -> str | None:
    """A reason the ranks can never meet, or None. Only collectives on the default group count."""
    known = {r: s for r, s in states.items() if s is not None}
    waiting = {r: s for r, s in known.items() if s["phase"] == "in" and "(subgroup)" not in (s["op"] or "")}
    if not waiting:
        return None
    returned = [r for r, s in known.items() if s["phase"] == "returned"]
    if returned:
        r0, s0 = next(iter(waiting.items()))
        return (f"rank(s) {', '.join(map(str, returned))} returned from the function "
                f"while rank {r0} waits in {s0['op']} #{s0['seq']}: a rank skipped a collective")
    if len(waiting) == len(states):
        prints = {(s["op"], s["seq"], json.dumps(s["shapes"])) for s in waiting.values()}
        if len(prints) > 1:
            return ("the ranks wait in different collectives or with different shapes: "
                    + collective_summary(states))
    return None
