"""Patient processing without images: every registry lesion still gets a verdict with a reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flows.patient import process_patient
from pipeline.domain import Lesion, Outcome
from pipeline.ingest.catalog import Catalog
from pipeline.settings import Settings


def test_registry_patient_without_dicom_is_indeterminate_with_reason(tmp_path: Path) -> None:
    lesions = [Lesion("GHOST-1", "GHOST-1-L2", "L2", dt.date(2021, 3, 1)),
               Lesion("GHOST-1", "GHOST-1-ILIAC", "ILIAC_L", dt.date(2021, 3, 1))]
    out = process_patient("GHOST-1", lesions, Catalog.open(":memory:"), tmp_path, Settings())
    assert [r.lesion.lesion_id for r in out.results] == ["GHOST-1-L2", "GHOST-1-ILIAC"]
    assert all(r.outcome == Outcome.INDETERMINATE for r in out.results)
    assert all("no DICOM image with this PatientID" in r.reason for r in out.results)
    assert out.measurements == [] and out.problems
