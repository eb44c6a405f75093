"""Temporary folders that can hold Unix-domain sockets.

A socket's path is capped at 107 bytes (``sun_path`` in ``<sys/un.h>``). Ray (its raylet and plasma store)
and PyTriton (ZeroMQ ``ipc://`` sockets in its workspace) put their sockets a few levels below the folder
they are given, so a long ``TMPDIR`` -- pytest's ``tmp_path``, a deep ``$SCRATCH`` path at a facility --
makes them fail at start-up with errors that name neither TMPDIR nor the limit (Ray: "AF_UNIX path length
cannot exceed 107 bytes"; PyTriton: an ``EOFError`` in the model stub). `socket_dir` makes the folder under
TMPDIR when the deepest socket still fits, and under ``/tmp`` otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["AF_UNIX_PATH_MAX", "socket_dir"]

AF_UNIX_PATH_MAX = 107  # bytes of a socket path, not counting the terminating NUL (Linux)
_MKDTEMP_SUFFIX = 8  # the random characters tempfile.mkdtemp appends to the prefix


def socket_dir(prefix: str, deepest_socket: int) -> Path:
    """A new temporary folder in which a socket path `deepest_socket` characters long (counted from the
    folder's trailing slash) fits the AF_UNIX limit: under TMPDIR when it can, else under /tmp."""
    base = tempfile.gettempdir()
    if len(base) + 1 + len(prefix) + _MKDTEMP_SUFFIX + 1 + deepest_socket > AF_UNIX_PATH_MAX:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
