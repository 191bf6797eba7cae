"""Per-patient state: fingerprint sensitivity and an exact round trip of the results."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from pipeline.domain import Lesion, LesionResult, Outcome, Visit, VisitMeasurement
from pipeline.outputs.patient_state import fingerprint, load_patient_state, save_patient_state

LESION = Lesion("P-1", "P-1-L2", "L2", dt.date(2021, 6, 15), {"primary_tumor": "lung", "notes": "x"})
FILES = [("/e/a", 100, 1), ("/e/b", 200, 2)]
SETTINGS = {"j0_residual_ml": 0.2}


def test_fingerprint_changes_with_each_input_and_not_with_file_order() -> None:
    base = fingerprint(FILES, [LESION], SETTINGS, "1.0")
    assert fingerprint(list(reversed(FILES)), [LESION], SETTINGS, "1.0") == base
    assert fingerprint([("/e/a", 100, 1), ("/e/b", 200, 3)], [LESION], SETTINGS, "1.0") != base
    assert fingerprint(FILES[:1], [LESION], SETTINGS, "1.0") != base
    assert fingerprint(FILES, [dataclasses.replace(LESION, level="L3")], SETTINGS, "1.0") != base
    assert fingerprint(FILES, [LESION], {"j0_residual_ml": 0.3}, "1.0") != base
    assert fingerprint(FILES, [LESION], SETTINGS, "1.1") != base


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
