"""Compare two output folders of ``crav run``: what "the same results" means for the crash and scale-out tests.

Identical: the same set of files (no orphan, nothing missing, no temporary file left) and every
one of them byte for byte (tables, masks, transforms, overlays, reports, each patient's state), the
run's own records excepted (``run.json``: times and decisions; the catalog). The DICOM SEG and SR
are compared with their creation date and time emptied (``TIME_ATTRIBUTES``): everything else in
them, their UIDs included, must be identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.outputs.dicom_common import time_masked_bytes

# files whose content records the run itself (times, decisions), not its results
RUN_RECORDS = {"run.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", ".crav.lock"}


def result_files(out: Path) -> set[str]:
    """Paths (relative to ``out``) of every file of the results, the run's own records excepted."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name not in RUN_RECORDS}


def assert_same_results(expected: Path, actual: Path) -> None:
    """Assert that ``actual`` holds exactly the results of ``expected`` (see the module's docstring)."""
    files_e, files_a = result_files(expected), result_files(actual)
    assert files_a == files_e, (f"missing: {sorted(files_e - files_a)[:10]}; "
                                f"extra (orphans?): {sorted(files_a - files_e)[:10]}")
    temps = [f for f in files_a if ".crav-tmp-" in f]
    assert not temps, f"temporary files left behind: {temps[:10]}"
    differ = [rel for rel in sorted(files_e) if _digest(expected / rel) != _digest(actual / rel)]
    assert not differ, f"{len(differ)} file(s) differ: {differ[:10]}"


def _digest(path: Path) -> bytes:
    data = time_masked_bytes(path) if path.suffix == ".dcm" else path.read_bytes()
    return hashlib.sha256(data).digest()
