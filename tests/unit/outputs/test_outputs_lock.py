"""One writer per output folder: the lock refuses a second holder and dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.outputs.lock import LOCK_NAME, OutputLockedError, output_lock


def test_second_holder_is_refused_with_the_first_named(tmp_path: Path) -> None:
    with output_lock(tmp_path / "out"), pytest.raises(
            OutputLockedError, match=rf"being written by process {os.getpid()} on "), output_lock(tmp_path / "out"):
        pass  # pragma: no cover - never reached
    with output_lock(tmp_path / "out") as path:  # released at the end of the block
        assert path.name == LOCK_NAME


def test_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    """SIGKILL leaves the lock file behind but not the lock: the next run goes ahead."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pipeline.outputs.lock import output_lock
        with output_lock(Path({str(out)!r})):
            print("held", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"process {proc.pid} "), output_lock(out):
            pass  # pragma: no cover - never reached
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while True:
            try:
                with output_lock(out):
                    break
            except OutputLockedError:  # pragma: no cover - only while the kernel reaps the process
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert (out / LOCK_NAME).is_file()
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion failed
            proc.kill()
            proc.wait()
