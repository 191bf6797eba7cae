"""Stopping the processes the integration tests start (each in its own session, as a service would)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace_s: float = 30.0) -> None:
    """Send ``first`` to the process group of ``proc`` if it runs, SIGKILL it after ``grace_s``, then
    SIGKILL whatever of the group lingers (a child the leader left behind)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
