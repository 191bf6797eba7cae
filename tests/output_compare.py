"""Compare two output folders of ``crav run``: what "the same results" means for the crash and scale-out tests.

Identical: the same set of files (no orphan, nothing missing, no temporary file left) and every
one of them byte for byte (tables, masks, transforms, each patient's state), the run's own
records excepted (``run.json``: times and decisions; the catalog).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    differ = [rel for rel in sorted(files_e)
              if hashlib.sha256((expected / rel).read_bytes()).digest()
              != hashlib.sha256((actual / rel).read_bytes()).digest()]
    assert not differ, f"{len(differ)} file(s) differ: {differ[:10]}"
