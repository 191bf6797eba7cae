"""The scan report for a person, on the bundled sample export."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.domain import Lesion
from pipeline.ingest.catalog import Catalog
from pipeline.ingest.registry import read_registry
from pipeline.ingest.scan import scan_export
from pipeline.outputs.scan_report import format_scan_report


@pytest.fixture(scope="module")
def sample_catalog(repo_root: Path) -> Catalog:
    catalog = Catalog.open(":memory:")
    scan_export(repo_root / "sample_dicom", catalog, quiet_period_s=0.0)
    return catalog


def test_report_accounts_for_every_file_and_patient(sample_catalog: Catalog, repo_root: Path) -> None:
    sample = repo_root / "sample_dicom"
    lesions = read_registry(sample / "treatments.csv").lesions
    ghost = Lesion("NO-IMAGES-1", "NO-IMAGES-1-L3", "L3", dt.date(2022, 1, 1))
    text = format_scan_report(sample_catalog, [*lesions, ghost], root=sample)
    n_files = sum(1 for p in sample.rglob("*") if p.is_file())
    assert text.splitlines()[0].startswith(f"{n_files} file(s): ")
    for pid in {les.patient_id for les in lesions}:
        assert f"patient {pid}: " in text
    assert "patient OTHER-0001: not in the registry" in text
    assert "patient NO-IMAGES-1: in the registry (1 lesion(s)) but no DICOM image with this PatientID" in text
    # every MR study of a registry patient got its visit, with the day offset
    study_lines = [ln for ln in text.splitlines() if ln.startswith("  study ") and " MR:" in ln]
    assert study_lines
    assert sum("no registry procedure date" in ln for ln in study_lines) == 1  # the unrelated patient only
    assert any(": J0 (day +0)" in ln or ": J0 (day +1)" in ln for ln in study_lines)
    # the set-aside files, each with its reason
    assert "quarantined files (1):" in text and "0000TRUNC" in text and "truncated" in text
    assert "x localizer series: ImageType" in text
    assert "duplicate of" in text


def test_scan_command_prints_the_report_and_flags_quarantine(repo_root: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["scan", "--input", str(repo_root / "sample_dicom"), "--quiet-period", "0"])
    out, err = capsys.readouterr()
    assert code == 1  # a truncated file is quarantined: the scan finished but something needs a look
    assert "2159 new" in out and "series    2  T1" in out
    assert "1 file(s) quarantined" in err
