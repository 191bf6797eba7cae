"""provenance.json: every series with its role, reason, use and file digests; relative paths; deterministic."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pipeline.domain import Lesion, SeriesRole
from pipeline.ingest.catalog import PatientIndex, SeriesRecord, StudyRecord
from pipeline.outputs.provenance import build_provenance, software_versions, write_provenance


def _index(root: Path) -> PatientIndex:
    t1 = SeriesRecord("1.2.840.1.1", "1.2.840.1", "P-1", dt.date(2021, 6, 16), "MR", SeriesRole.T1,
                      "sagittal, T1-weighted (TR 500 ms, TE 10 ms)", "SAG T1 <b>", "1.2.840.9", 2, series_number=3)
    loc = SeriesRecord("1.2.840.1.2", "1.2.840.1", "P-1", dt.date(2021, 6, 16), "MR", SeriesRole.LOCALIZER,
                       "ImageType LOCALIZER", "scout", "1.2.840.9", 1, series_number=1)
    files = {t1.series_uid: (root / "p1" / "b.dcm", root / "p1" / "a.dcm"), loc.series_uid: (root / "p1" / "s.dcm",)}
    digests = {root / "p1" / "a.dcm": "aa" * 32, root / "p1" / "b.dcm": "bb" * 32}
    return PatientIndex("P-1", (t1, loc), (StudyRecord("1.2.840.1", "P-1", dt.date(2021, 6, 16), ("MR",), 2),),
                        files, file_sha256=digests, root=root)


def test_provenance_lists_every_series_with_role_use_and_relative_hashed_files(tmp_path: Path) -> None:
    root = tmp_path / "export of Doe^Jane"  # the mount point must not leak into the record
    les = Lesion("P-1", "P-1-L1", "L1", dt.date(2021, 6, 15))
    prov = build_provenance(_index(root), [les], {"1.2.840.1.1": ["T1"]}, {"j0_residual_ml": 0.2},
                            {"P-1-L1": {"exclude_visits": ["M3"], "seed_mm": None}})
    loc, t1 = prov["series"]  # ordered by date, then series number
    assert (loc["series_number"], t1["series_number"]) == (1, 3)
    assert t1["used"] is True and t1["used_as"] == ["T1"] and t1["role"] == SeriesRole.T1.value
    assert t1["role_reason"].startswith("sagittal") and t1["description"] == "SAG T1 <b>"
    assert t1["files"] == [{"path": "p1/a.dcm", "sha256": "aa" * 32}, {"path": "p1/b.dcm", "sha256": "bb" * 32}]
    assert loc["used"] is False and loc["files"] == [{"path": "p1/s.dcm", "sha256": None}]  # not hashed yet
    assert prov["lesions"][0]["qa_corrections"] == {"exclude_visits": ["M3"], "seed_mm": None}
    assert prov["settings"] == {"j0_residual_ml": 0.2}
    assert prov["software"] == software_versions() and "SimpleITK" in prov["software"]
    out = write_provenance(tmp_path / "provenance.json", prov)
    text = out.read_text(encoding="utf-8")
    assert "Doe^Jane" not in text and str(tmp_path) not in text
    assert json.loads(text)["lesions"][0]["procedure_date"] == "2021-06-15"
    again = write_provenance(tmp_path / "again.json", build_provenance(
        _index(root), [les], {"1.2.840.1.1": ["T1"]}, {"j0_residual_ml": 0.2},
        {"P-1-L1": {"exclude_visits": ["M3"], "seed_mm": None}}))
    assert again.read_bytes() == out.read_bytes()


def test_a_file_outside_the_export_folder_is_recorded_by_name_only(tmp_path: Path) -> None:
    index = _index(tmp_path / "export")
    moved = PatientIndex(index.patient_id, index.series, index.studies,
                         {**index.series_files, "1.2.840.1.2": (Path("/elsewhere/secret/s.dcm"),)},
                         file_sha256=index.file_sha256, root=index.root)
    prov = build_provenance(moved, [], {}, {})
    assert prov["series"][0]["files"] == [{"path": "s.dcm", "sha256": None}]  # the localizer: series number 1
