"""The main job end to end on the bundled sample_dicom/, through the Prefect flow (local harness)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.evaluate import evaluate


@pytest.fixture(scope="module")
def sample_run(repo_root: Path, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, int]:
    from flows.crav_flow import run_export

    out = tmp_path_factory.mktemp("sample-run")
    code = run_export(repo_root / "sample_dicom", out, overrides={"quiet_period_s": 0.0})
    return out, code


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_outputs_follow_the_contract(sample_run: tuple[Path, int], repo_root: Path,
                                     check_outputs: Callable[..., str]) -> None:
    out, code = sample_run
    # the sample holds a truncated file on purpose: the run finishes and says something needs a look
    assert code == 1
    check_outputs(out, registry=repo_root / "sample_dicom" / "treatments.csv")
    lesions = _rows(out / "lesions.csv")
    assert [r["lesion_id"] for r in lesions] == [r["lesion_id"] for r in _rows(repo_root / "sample_dicom" /
                                                                                "treatments.csv")]
    assert all(r["reason"] for r in lesions)
    assert json.loads((out / "cohort_summary.json").read_text(encoding="utf-8"))
    assert (out / "cohort_summary.md").read_text(encoding="utf-8").strip()


def test_every_input_file_is_accounted_for(sample_run: tuple[Path, int], repo_root: Path) -> None:
    out, _ = sample_run
    export = repo_root / "sample_dicom"
    on_disk = {str(p.resolve()) for p in export.rglob("*") if p.is_file()}
    accounted = {str(Path(r["path"]).resolve()): r for r in _rows(out / "files.csv")}
    assert on_disk == set(accounted), sorted(on_disk ^ set(accounted))[:5]
    statuses = {r["status"] for r in accounted.values()}
    assert statuses <= {"indexed", "ignored", "quarantined"}
    for r in accounted.values():
        if r["status"] != "indexed":
            assert r["reason"], r
    truncated = [r for p, r in accounted.items() if p.endswith("0000TRUNC")]
    assert truncated and truncated[0]["status"] == "quarantined"


def test_evaluation_against_the_truth(sample_run: tuple[Path, int], repo_root: Path) -> None:
    out, _ = sample_run
    report = evaluate(repo_root / "sample_dicom" / "truth.json", out).as_dict()
    # every lesion and visit of the truth has a row, and every MR study got its visit
    assert report["missing"]["lesion_rows_missing"] == 0
    assert report["missing"]["visit_rows_missing"] == 0
    assert report["visit_assignment_accuracy"]["value"] == 1.0
    # masks were written and compared for every structure
    for structure in ("vertebra", "cement", "residual", "ablation"):
        assert report["dice"][structure]["pairs"] > 0, structure


def test_status_tells_what_the_run_did(sample_run: tuple[Path, int], repo_root: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli
    from pipeline.outputs.status import read_status

    out, code = sample_run
    status = read_status(out)
    truth = json.loads((repo_root / "sample_dicom" / "truth.json").read_text())
    assert {p.patient_id for p in status.patients} == {les["patient_id"] for les in truth["lesions"]}
    assert all(p.decision == "recomputed: no previous results" and p.computed_at for p in status.patients)
    lesions = {lid: o for p in status.patients for lid, o in p.outcomes.items()}
    assert lesions == {r["lesion_id"]: r["outcome"] for r in _rows(out / "lesions.csv")}
    assert status.run["input"] == str((repo_root / "sample_dicom").resolve()) and status.running is None
    assert status.changed_settings() == {"quiet_period_s": (60.0, 0.0)}
    assert cli.main(["status", "--output", str(out)]) == code  # exit 1 exactly when the run's was 1
    text = capsys.readouterr().out
    assert "quiet_period_s = 0.0 (default 60.0)" in text and "3 patient(s):" in text
