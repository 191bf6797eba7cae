"""Compare two output folders of ``crav run``: what "the same results" means for the crash and scale-out tests.

Identical: the set of files (no orphan, nothing missing), every table and every mask byte for
byte. Registration transforms are compared to 1e-9 (mm and radians): ITK sums its multi-threaded
Mattes metric in whatever order its threads finish, so two clean runs of the same export
differ there in the last digits, and in nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# files whose content records the run itself (times, decisions), not its results
RUN_RECORDS = {"run.json", "catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", ".crav.lock"}
TABLES = ("lesions.csv", "measurements.csv", "cohort_summary.json", "cohort_summary.md", "files.csv")
TRANSFORM_TOLERANCE = 1e-9


def result_files(out: Path) -> set[str]:
    """Paths (relative to ``out``) of every file of the results, the run's own records excepted."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name not in RUN_RECORDS}


def _tfm_parameters(path: Path) -> list[float]:
    values: list[float] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(("Parameters:", "FixedParameters:")):
            values.extend(float(v) for v in line.split(":", 1)[1].split())
    return values


def _state_results(path: Path) -> object:
    """A patient's state.json without its timestamps."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in doc.items() if k not in ("computed", "computed_at", "saved", "saved_at")}


def assert_same_results(expected: Path, actual: Path) -> None:
    """Assert that ``actual`` holds exactly the results of ``expected`` (see the module's docstring)."""
    files_e, files_a = result_files(expected), result_files(actual)
    assert files_a == files_e, (f"missing: {sorted(files_e - files_a)[:10]}; "
                                f"extra (orphans?): {sorted(files_a - files_e)[:10]}")
    temps = [f for f in files_a if ".crav-tmp-" in f]
    assert not temps, f"temporary files left behind: {temps[:10]}"
    for rel in sorted(files_e):
        e, a = expected / rel, actual / rel
        if rel.endswith(".tfm"):
            pe, pa = _tfm_parameters(e), _tfm_parameters(a)
            assert len(pe) == len(pa) and all(abs(x - y) <= TRANSFORM_TOLERANCE for x, y in zip(pe, pa, strict=True)), (
                f"{rel}: transform parameters differ beyond {TRANSFORM_TOLERANCE}: {pe} vs {pa}")
        elif e.name == "state.json":
            assert _state_results(a) == _state_results(e), f"{rel} differs"
        else:
            assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(e.read_bytes()).digest(), (
                f"{rel} differs")
