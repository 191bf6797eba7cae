"""treatments.csv reading (pipeline.ingest.registry)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipeline.ingest.registry import RegistryProblem, read_registry

HEADER = (
    "patient_id,lesion_id,level,procedure_date,primary_tumor,ebrt_date,vas_before,vas_m1,notes,site_code\n"
)
GOOD_AND_BAD = (
    HEADER
    + """SION-001,SION-001-L4,l4,2021-06-15,breast,,8,2,first,A
SION-001,SION-001-T7,D7,2021-06-15,breast,2021-07-01,7,3,,B
SION-002,SION-002-L1,L9,2021-06-20,lung,,,,,C

SION-003,,T12,2021-06-21,lung,,,,,D
SION-004,SION-004-S,SACRUM,15/06/2021,myeloma,,,,,E
SION-001,SION-001-L4,L4,2021-06-15,breast,,,,dup,F
SION-005,SION-005-ILIAC,iliac_l,2021-08-01,kidney,not-a-date,11,,"multi
line note",G
SION-006,SION-006-T1,T1,2021-08-02,kidney,,,,,H
"""
)


def _write(tmp_path: Path, text: str, name: str = "treatments.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_good_rows_kept_bad_rows_reported_with_line_numbers(tmp_path: Path) -> None:
    result = read_registry(_write(tmp_path, GOOD_AND_BAD))
    assert [les.lesion_id for les in result.lesions] == [
        "SION-001-L4",
        "SION-001-T7",
        "SION-005-ILIAC",
        "SION-006-T1",
    ]
    first, second, iliac, last = result.lesions
    assert first.level == "L4" and second.level == "T7" and iliac.level == "ILIAC_L"
    assert not iliac.is_vertebral
    assert first.procedure_date == dt.date(2021, 6, 15)
    assert list(first.extra) == ["primary_tumor", "ebrt_date", "vas_before", "vas_m1", "notes", "site_code"]
    assert first.extra["notes"] == "first" and first.extra["site_code"] == "A"
    assert iliac.extra["notes"] == "multi\nline note"
    problems = {p.line: p.reason for p in result.problems}
    assert "level 'L9' is not a vertebral level" in problems[4]
    assert problems[6] == "missing lesion_id"
    assert problems[7] == "procedure_date '15/06/2021' is not an ISO date (YYYY-MM-DD)"
    assert problems[8] == "duplicate lesion_id 'SION-001-L4' (first on line 2)"
    assert [p for p in result.problems if p.line == 9] == [
        RegistryProblem(9, "ebrt_date 'not-a-date' is not an ISO date (YYYY-MM-DD); row kept, value ignored"),
        RegistryProblem(9, "vas_before '11' is not a pain score 0-10; row kept, value ignored"),
    ]
    assert last.lesion_id == "SION-006-T1"  # after the two-line row: line 11
    assert 11 not in problems


def test_semicolon_and_bom(tmp_path: Path) -> None:
    text = "patient_id;lesion_id;level;procedure_date\nP1;P1-L2;L2;2020-01-02\n"
    result = read_registry(_write(tmp_path, text, encoding="utf-8-sig"))
    assert result.problems == []
    assert result.lesions[0].patient_id == "P1"
    assert result.lesions[0].extra == {}


def test_missing_required_column(tmp_path: Path) -> None:
    result = read_registry(_write(tmp_path, "patient_id,lesion_id,procedure_date\nP1,L,2020-01-01\n"))
    assert result.lesions == []
    assert result.problems == [RegistryProblem(1, "missing required column(s) level; no row can be read")]


def test_empty_file_and_extra_fields(tmp_path: Path) -> None:
    assert read_registry(_write(tmp_path, "")).problems == [
        RegistryProblem(1, "the registry is empty (no header line)")
    ]
    text = "patient_id,lesion_id,level,procedure_date\nP1,P1-L2,L2,2020-01-02,surplus\n"
    assert read_registry(_write(tmp_path, text, "b.csv")).problems == [
        RegistryProblem(2, "5 fields but the header has 4 columns")
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"treatment registry not found: .*nowhere.csv .*--registry"):
        read_registry(tmp_path / "nowhere.csv")
