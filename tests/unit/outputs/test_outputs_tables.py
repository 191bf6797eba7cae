"""lesions.csv, measurements.csv and cohort summary: column order, cell format, atomicity."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import domain
from pipeline.outputs import tables
from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.tables import (
    LESION_COLUMNS,
    MEASUREMENT_COLUMNS,
    write_cohort_summary,
    write_lesions_csv,
    write_measurements_csv,
)

SPEC_LESION_COLUMNS = [
    "patient_id", "lesion_id", "level", "procedure_date", "j0_residual", "j0_residual_volume_ml",
    "outcome", "failure_timepoint", "baseline_fracture", "height_loss", "max_height_loss_pct", "reason",
]
SPEC_MEASUREMENT_COLUMNS = [
    "patient_id", "lesion_id", "timepoint", "study_date", "days_from_procedure", "cement_volume_ml",
    "residual_enhancing_volume_ml", "ablation_zone_volume_ml", "max_relative_enhancement", "time_to_peak_s",
    "ktrans_per_min", "height_anterior_mm", "height_middle_mm", "height_posterior_mm", "height_loss_pct",
    "genant_grade", "registration_error_mm", "qa_status",
]


def _lesion(lesion_id: str, extra: dict[str, str] | None = None) -> domain.Lesion:
    return domain.Lesion("SION-007", lesion_id, "L4", dt.date(2021, 6, 15), extra=extra or {})


def _result(lesion: domain.Lesion, **kw: object) -> domain.LesionResult:
    values: dict[str, object] = dict(
        j0_residual=True, j0_residual_volume_ml=0.123456, outcome=domain.Outcome.LOCAL_FAILURE,
        failure_timepoint=domain.Visit.M3, baseline_fracture=False, height_loss=None,
        max_height_loss_pct=float("nan"), reason="residual 1.2 mL >= nadir 0.3 + 0.5 mL at M3",
    )
    values.update(kw)
    return domain.LesionResult(lesion=lesion, **values)  # type: ignore[arg-type]


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_column_constants_match_spec() -> None:
    assert list(LESION_COLUMNS) == SPEC_LESION_COLUMNS
    assert list(MEASUREMENT_COLUMNS) == SPEC_MEASUREMENT_COLUMNS


def test_lesions_csv_columns_and_cells(tmp_path: Path) -> None:
    results = [
        _result(_lesion("SION-007-L4", {"primary_tumor": "breast", "notes": "a, \"quoted\" note"})),
        _result(_lesion("SION-007-T12", {"ebrt_date": "2021-07-01", "primary_tumor": "lung"}),
                j0_residual=None, j0_residual_volume_ml=None, outcome=domain.Outcome.LOCAL_CONTROL,
                failure_timepoint=None, height_loss=True, max_height_loss_pct=17.0),
    ]
    path = tmp_path / "lesions.csv"
    write_lesions_csv(path, results)
    header, rows = _read(path)
    assert header == [*SPEC_LESION_COLUMNS, "primary_tumor", "notes", "ebrt_date"]
    first, second = rows
    assert first["j0_residual"] == "true" and first["baseline_fracture"] == "false"
    assert first["height_loss"] == "" and first["max_height_loss_pct"] == ""  # None and NaN
    assert first["j0_residual_volume_ml"] == "0.123"
    assert first["outcome"] == "local_failure" and first["failure_timepoint"] == "M3"
    assert first["procedure_date"] == "2021-06-15"
    assert first["notes"] == "a, \"quoted\" note" and first["ebrt_date"] == ""
    assert second["j0_residual"] == "" and second["failure_timepoint"] == ""
    assert second["max_height_loss_pct"] == "17" and second["primary_tumor"] == "lung"
    assert path.read_bytes().decode("utf-8")  # UTF-8


def test_registry_column_named_like_spec_column_is_prefixed(tmp_path: Path) -> None:
    path = tmp_path / "lesions.csv"
    write_lesions_csv(path, [_result(_lesion("A", {"reason": "palliation"}))])
    header, rows = _read(path)
    assert header[-1] == "registry_reason" and rows[0]["registry_reason"] == "palliation"
    assert rows[0]["reason"].startswith("residual")


def test_measurements_csv(tmp_path: Path) -> None:
    rows = [
        domain.VisitMeasurement("P", "P-L1", domain.Visit.J0, dt.date(2021, 6, 16), 1,
                                cement_volume_ml=4.56789, genant_grade=1, residual_enhancing_volume_ml=0.0,
                                notes=("a", "b")),
        domain.VisitMeasurement("P", "P-L1", domain.Visit.UNSCHEDULED, None, None),
    ]
    path = tmp_path / "measurements.csv"
    write_measurements_csv(path, rows)
    header, out = _read(path)
    assert header == [*SPEC_MEASUREMENT_COLUMNS, "notes"]
    assert out[0]["timepoint"] == "J0" and out[0]["study_date"] == "2021-06-16"
    assert out[0]["days_from_procedure"] == "1" and out[0]["cement_volume_ml"] == "4.568"
    assert out[0]["residual_enhancing_volume_ml"] == "0" and out[0]["genant_grade"] == "1"
    assert out[0]["qa_status"] == "pending" and out[0]["notes"] == "a; b"
    assert out[1]["study_date"] == "" and out[1]["cement_volume_ml"] == ""


@pytest.mark.parametrize(
    ("value", "cell"),
    [(None, ""), (True, "true"), (False, "false"), (1.23456, "1.235"), (2.5, "2.5"), (-0.0004, "0"),
     (float("inf"), ""), (float("nan"), ""), (3, "3"), (domain.Outcome.INDETERMINATE, "indeterminate"),
     ("SION-007", "SION-007")],
)
def test_format_cell(value: object, cell: str) -> None:
    assert tables.format_cell(value) == cell


def test_write_failure_keeps_previous_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lesions.csv"
    write_lesions_csv(path, [_result(_lesion("OLD"))])
    before = path.read_bytes()
    real = tables.format_cell
    calls = {"n": 0}

    def failing(value: object) -> str:
        calls["n"] += 1
        if calls["n"] > 20:  # second row, after the first row reached the temp file
            raise RuntimeError("crash while writing")
        return real(value)

    monkeypatch.setattr(tables, "format_cell", failing)
    with pytest.raises(RuntimeError, match="crash while writing"):
        write_lesions_csv(path, [_result(_lesion(f"NEW{i}")) for i in range(3)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions.csv"]


def test_cohort_summary(tmp_path: Path) -> None:
    table = {"local_control": {"n": 36, "of": 44, "pct": 81.8}, "kappa": float("nan"),
             "outcome": domain.Outcome.LOCAL_CONTROL, "date": dt.date(2024, 1, 2), "levels": ("L4", "T12")}
    write_cohort_summary(tmp_path / "out", table, "| result | value |\n|---|---|")
    data = json.loads((tmp_path / "out" / "cohort_summary.json").read_text(encoding="utf-8"))
    assert data == {"local_control": {"n": 36, "of": 44, "pct": 81.8}, "kappa": None,
                    "outcome": "local_control", "date": "2024-01-02", "levels": ["L4", "T12"]}
    assert (tmp_path / "out" / "cohort_summary.md").read_text(encoding="utf-8").endswith("|---|---|\n")


def test_cohort_summary_unserialisable_raises_before_writing(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot write a object"):
        write_cohort_summary(tmp_path, {"x": object()}, "md")
    assert list(tmp_path.iterdir()) == []


def test_written_folder_passes_the_output_checker(tmp_path: Path, check_outputs: Callable[..., str]) -> None:
    """The writers together produce what ../shared/tools/check_outputs.py accepts."""
    lesions = [_lesion("SION-007-L4", {"notes": "x"}), _lesion("../evil id", {"notes": "y"})]
    results = [
        _result(lesions[0]),
        _result(lesions[1], outcome=domain.Outcome.INDETERMINATE, failure_timepoint=None,
                reason="no usable J0"),
    ]
    out = tmp_path / "out"
    write_lesions_csv(out / "lesions.csv", results)
    write_measurements_csv(out / "measurements.csv", [
        domain.VisitMeasurement("SION-007", "SION-007-L4", domain.Visit.J0, dt.date(2021, 6, 16), 1,
                                cement_volume_ml=4.2, height_loss_pct=-0.5, genant_grade=0),
        domain.VisitMeasurement("SION-007", "SION-007-L4", domain.Visit.UNSCHEDULED, dt.date(2021, 8, 1), 47),
        domain.VisitMeasurement("SION-007", "SION-007-L4", domain.Visit.UNSCHEDULED, dt.date(2021, 8, 9), 55),
    ])
    write_cohort_summary(out, {"lesions": 2}, "# Cohort\n")
    mask = sitk.GetImageFromArray(np.ones((2, 2, 2), np.uint8))
    for les in lesions:
        folder = out / "patients" / safe_path_component(les.patient_id) / safe_path_component(les.lesion_id)
        write_mask_nifti(folder / "J0" / "cement.nii.gz", mask)
    registry = tmp_path / "treatments.csv"
    registry.write_text("patient_id,lesion_id,level,procedure_date\nSION-007,SION-007-L4,L4,2021-06-15\n"
                        "SION-007,../evil id,L4,2021-06-15\n", encoding="utf-8")
    assert "0 problems" in check_outputs(out, registry=registry)
