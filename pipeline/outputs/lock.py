"""One writer per output folder: an advisory lock that a crash releases by itself.

``crav run`` holds an exclusive ``flock`` on ``<output>/.crav.lock`` for the whole run. A second
run on the same folder is refused at once with who holds it (process id, host, start time), so
two runs never interleave their writes. The kernel drops the lock when the holding process
ends, however it ends (SIGKILL included), so there is no stale lock to clean up; the file itself
stays and only records the last holder.

Example
-------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with output_lock(folder):
...     (folder / ".crav.lock").is_file()
True
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".crav.lock"


class OutputLockedError(RuntimeError):
    """Another process is writing into the output folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"process {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


@contextmanager
def output_lock(output_dir: Path) -> Iterator[Path]:
    """Hold the exclusive lock of ``output_dir`` for the ``with`` block (created if missing).

    Raises
    ------
    OutputLockedError
        If another process holds it; the message names the holder.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLockedError(f"output folder {output_dir} is being written by {_holder(path)}: wait for that "
                               "run to end, or give another --output") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
