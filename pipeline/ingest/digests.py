"""Content digests (SHA-256) of the input files: what decides whether a patient's inputs changed.

A file's digest is computed once and kept in the catalog; the scan resets it whenever the file's
size or modification time changes, and the next run hashes it again. A PACS export written
anew with the same images (new modification times, same bytes) therefore changes no patient's
fingerprint, while a single changed byte does.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.ingest.catalog import Catalog

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_HASH_THREADS = 4  # hashlib and file reads release the GIL


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.dcm"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_unchanged(path: Path, size: int, mtime_ns: int) -> str | None:
    """The digest of a file still as the scan saw it; None when it changed since, vanished or cannot be read."""
    try:
        before = path.stat()
        if (before.st_size, before.st_mtime_ns) != (size, mtime_ns):
            return None
        digest = file_sha256(path)
        after = path.stat()
    except OSError:
        return None
    return digest if (after.st_size, after.st_mtime_ns) == (size, mtime_ns) else None


def input_digests(catalog: Catalog, patient_ids: Iterable[str]) -> dict[str, list[str]]:
    """PatientID -> the content digests of its readable files, computing (and recording) the missing ones.

    A file that cannot be hashed now (changed since the scan, unreadable) is represented by its
    path, size and modification time instead: its patient is recomputed, never wrongly reused.
    """
    files = catalog.input_files(patient_ids)
    todo = [(path, size, mtime) for entries in files.values() for path, size, mtime, d in entries if d is None]
    known: dict[Path, str] = {}
    if todo:
        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            digests = list(pool.map(lambda t: _hash_unchanged(*t), todo))
        done = [(p, size, mtime, d) for (p, size, mtime), d in zip(todo, digests, strict=True) if d is not None]
        catalog.set_digests(done)
        known = {p: d for p, _, _, d in done}
        log.info("hashed %d input file(s) (%d could not be hashed now)", len(done), len(todo) - len(done))
    return {pid: sorted(d or known.get(path) or f"unhashed:{os.fsencode(path).hex()}:{size}:{mtime}"
                        for path, size, mtime, d in entries)
            for pid, entries in files.items()}
