"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

A reader never sees a half-written file, and a failure mid-write (exception, crash, full
disk) leaves the previous version of the file untouched (SPEC section 7).

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "hello\\n")
>>> (d / "a.txt").read_text()
'hello\\n'
>>> with atomic_path(d / "b.nii.gz", suffix=".nii.gz") as tmp:
...     _ = tmp.write_bytes(b"...")  # any writer that wants a file name
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["TEMP_MARK", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "sweep_orphans"]

TEMP_MARK = ".crav-tmp-"  # in every temporary name, so that a sweep can tell them from anything else

def _default_mode() -> int:
    """Permission bits an ordinary ``open()`` would give a new file (0o666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _default_mode()


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; silently skipped where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return _NEW_FILE_MODE


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; rename it onto ``path`` on success.

    Use it for writers that want a file name rather than a file object (SimpleITK,
    pydicom, matplotlib). The temporary name starts with ``.`` and ends with ``suffix``
    (give ``.nii.gz`` for writers that choose the format from the extension).

    Parameters
    ----------
    path
        Final destination. Its folder is created when missing.
    suffix
        Ending of the temporary file name.

    Raises
    ------
    FileNotFoundError
        If the writer inside the ``with`` block produced no file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{TEMP_MARK}", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer produced no file at {tmp} (destination {dest})")
        os.chmod(tmp, _target_mode(dest))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "w",
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a file for writing atomically; the file appears at ``path`` only on success.

    Parameters
    ----------
    path
        Final destination.
    mode
        ``"w"`` (text, default) or ``"wb"`` (bytes).
    encoding
        Text encoding (ignored in binary mode). UTF-8 by default.
    newline
        As for :func:`open` (give ``""`` for the :mod:`csv` module).

    Raises
    ------
    ValueError
        If ``mode`` is not a write mode.

    Example
    -------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> with atomic_open(p, newline="") as fh:
    ...     _ = fh.write("a,b\\n")
    >>> p.read_text()
    'a,b\\n'
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        if "b" in mode:
            with open(tmp, "wb") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, newlines written as given)."""
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def sweep_orphans(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left under ``root``; return their paths.

    Only call it while no writer works under ``root`` (hold :func:`pipeline.outputs.lock.output_lock`):
    every temporary file is then an orphan of a process that died before its rename.
    """
    removed = []
    for tmp in Path(root).rglob(f".*{TEMP_MARK}*"):
        if tmp.is_file() and not tmp.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return sorted(removed)
