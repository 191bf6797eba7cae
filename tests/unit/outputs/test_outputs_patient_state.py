"""Per-patient state: fingerprint sensitivity and an exact round trip of the results."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from pipeline.domain import Lesion, LesionResult, Outcome, Visit, VisitMeasurement
from pipeline.outputs.patient_state import fingerprint, load_patient_state, save_patient_state

LESION = Lesion("P-1", "P-1-L2", "L2", dt.date(2021, 6, 15), {"primary_tumor": "lung", "notes": "x"})
FILES = ["9f86d081884c7d65", "60303ae22b998861"]  # content digests (shortened)
SETTINGS = {"j0_residual_ml": 0.2}


def test_fingerprint_changes_with_each_input_and_not_with_file_order() -> None:
    base = fingerprint(FILES, [LESION], SETTINGS, "1.0")
    assert fingerprint(list(reversed(FILES)), [LESION], SETTINGS, "1.0") == base
    assert fingerprint([FILES[0], "fd61a03af4f77d87"], [LESION], SETTINGS, "1.0") != base
    assert fingerprint(FILES[:1], [LESION], SETTINGS, "1.0") != base
    assert fingerprint(FILES, [dataclasses.replace(LESION, level="L3")], SETTINGS, "1.0") != base
    assert fingerprint(FILES, [LESION], {"j0_residual_ml": 0.3}, "1.0") != base
    assert fingerprint(FILES, [LESION], SETTINGS, "1.1") != base
    # a QA reviewer's corrections recompute the patient; none at all is the same as no corrections argument
    assert fingerprint(FILES, [LESION], SETTINGS, "1.0", {}) == base
    moved = fingerprint(FILES, [LESION], SETTINGS, "1.0", {"P-1-L2": {"exclude_visits": [], "seed_mm": [1, 2, 3]}})
    assert moved != base
    assert fingerprint(FILES, [LESION], SETTINGS, "1.0", {"P-1-L2": {"exclude_visits": ["M3"], "seed_mm": None}}
                       ) not in (base, moved)


def test_round_trip_is_exact_and_a_stale_or_broken_state_is_ignored(tmp_path: Path) -> None:
    result = LesionResult(LESION, True, 0.61, Outcome.LOCAL_FAILURE, Visit.M3, False, True, 18.5, "M3 rule")
    row = VisitMeasurement("P-1", "P-1-L2", Visit.M3, dt.date(2021, 9, 13), 90, cement_volume_ml=4.2,
                           residual_enhancing_volume_ml=2.4, genant_grade=1, qa_status="pending",
                           notes=("registration ok",))
    path = tmp_path / "state.json"
    save_patient_state(path, "fp1", [result], [row], {"P-1-L2": dt.date(2021, 9, 13)}, ["a problem"])
    loaded = load_patient_state(path, "fp1")
    assert loaded is not None
    results, rows, last_fu, problems = loaded
    assert results == [result] and list(results[0].lesion.extra) == ["primary_tumor", "notes"]
    assert rows == [row]
    assert last_fu == {"P-1-L2": dt.date(2021, 9, 13)} and problems == ["a problem"]
    assert load_patient_state(path, "another fingerprint") is None
    assert load_patient_state(path, None) is not None  # --patient keeps whatever was there
    path.write_text("{not json", encoding="utf-8")
    assert load_patient_state(path, "fp1") is None
    assert load_patient_state(tmp_path / "missing.json", "fp1") is None


def test_digests_follow_content_not_names_or_times(tmp_path: Path) -> None:
    """A file written anew with the same bytes keeps its digest; one changed byte changes it."""
    import os

    from pipeline.ingest.catalog import Catalog
    from pipeline.ingest.digests import input_digests

    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    a.write_bytes(b"DICM" * 100)
    b.write_bytes(b"other" * 100)
    catalog = Catalog.open(":memory:")

    def index() -> None:
        catalog.upsert_files([(str(p), p.stat().st_size, p.stat().st_mtime_ns, "indexed", "", "P-1", "1.2", "1.2.3",
                               f"1.2.3.{i}", {}) for i, p in enumerate((a, b))])

    index()
    first = input_digests(catalog, ["P-1"])["P-1"]
    assert len(first) == 2 and all(len(d) == 64 for d in first)
    assert [d for *_, d in catalog.input_files(["P-1"])["P-1"]] != [None, None]  # recorded once computed
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))  # re-exported, same bytes
    index()  # the scan rewrites the row: its digest is computed again
    assert catalog.input_files(["P-1"])["P-1"][0][3] is None
    assert input_digests(catalog, ["P-1"])["P-1"] == first
    a.write_bytes(b"DICN" + b"DICM" * 99)
    index()
    assert input_digests(catalog, ["P-1"])["P-1"] != first
    index()  # the scan sees a file that is then rewritten before it is hashed: never taken as known
    a.write_bytes(b"a file changed after the scan")
    assert any(d.startswith("unhashed:") for d in input_digests(catalog, ["P-1"])["P-1"])
