"""The main job end to end on the bundled sample_dicom/, through the Prefect flow (local harness)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.evaluate import evaluate
from pipeline.outputs.dicom_sr import DCE_REGION, SR_MEASUREMENTS
from pipeline.outputs.palette import STRUCTURES
from pipeline.outputs.tables import format_cell
from pipeline.review.store import visit_label


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


def _seg_masks(path: Path, grid: sitk.Image) -> dict[str, np.ndarray]:
    """Each segment of a SEG as a mask on ``grid``, frame by frame through its plane position (not its order)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    out = {label: np.zeros(sitk.GetArrayFromImage(grid).shape, bool) for label in labels.values()}
    shared = ds.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        ident = item if "SegmentIdentificationSequence" in item else shared  # one segment: shared by every frame
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        ci = grid.TransformPhysicalPointToContinuousIndex(ipp)
        k = round(ci[2])
        assert max(abs(ci[0]), abs(ci[1]), abs(ci[2] - k)) < 1e-2, ci  # the frame is a slice of the T1 grid
        out[labels[int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]][k] = frame > 0
    return out


def _on_a_voxel_border(grid: sitk.Image, other: sitk.Image, kji: np.ndarray) -> bool:
    """True when voxel ``kji`` of ``grid`` is centred on a voxel border of ``other`` (to 1e-3 voxel).

    There nearest-neighbour resampling is a tie, which the NIfTI header's float32 geometry may
    break the other way than the in-memory grid the SEG was made from.
    """
    centre = grid.TransformIndexToPhysicalPoint([int(v) for v in kji[::-1]])
    ci = np.asarray(other.TransformPhysicalPointToContinuousIndex(centre))
    return bool(np.any(np.abs(ci - np.floor(ci) - 0.5) < 1e-3))


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe is not None, "dciodvfy (Debian dicom3tools) is not installed"
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def test_seg_and_sr_of_every_visit_match_its_masks_and_measurements(sample_run: tuple[Path, int]) -> None:
    out, _ = sample_run
    rows = {(r["lesion_id"], visit_label(r["timepoint"], r["days_from_procedure"])): r
            for r in _rows(out / "measurements.csv")}
    visit_dirs = sorted(p.parent for p in out.glob("patients/*/*/*/vertebra.nii.gz"))
    assert visit_dirs and sorted(p.parent for p in out.glob("patients/*/*/*/seg.dcm")) == visit_dirs
    label = {s.name: s.label for s in STRUCTURES}
    for vdir in visit_dirs:
        lesion_id, visit = vdir.parent.name, vdir.name  # the sample's ids are safe path names as they are
        t1_grid = sitk.ReadImage(str(vdir / "vertebra.nii.gz"))  # the vertebra is segmented on the T1 grid
        seg = _seg_masks(vdir / "seg.dcm", t1_grid)
        for name in ("vertebra", "cement", "ablation", "residual"):
            if not (vdir / f"{name}.nii.gz").exists():
                assert label[name] not in seg, (vdir, name)
                continue
            mask = sitk.ReadImage(str(vdir / f"{name}.nii.gz"))  # residual, ablation: on the DCE grid
            on_t1 = sitk.Resample(mask, t1_grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            differ = np.argwhere(seg[label[name]] != (sitk.GetArrayFromImage(on_t1) > 0))
            assert all(_on_a_voxel_border(t1_grid, mask, kji) for kji in differ), (vdir, name, len(differ))
        row = rows[(lesion_id, visit)]
        content = hd.sr.srread(vdir / "sr.dcm").content
        assert isinstance(content, hd.sr.MeasurementReport)
        found = {(str(g.tracking_identifier).removeprefix(f"{lesion_id} "), m.name.meaning): float(m.value)
                 for g in content.get_volumetric_roi_measurement_groups() for m in g.get_measurements()}
        for spec in SR_MEASUREMENTS:
            groups = ([label["residual"], label["ablation"]] if spec.structure == DCE_REGION
                      else [label[spec.structure]])
            values = [found.pop((g, spec.concept.meaning)) for g in groups if (g, spec.concept.meaning) in found]
            assert [format_cell(v) for v in values] == ([row[spec.field]] if row[spec.field] else []), (vdir, spec)
        assert found == {}, (vdir, found)  # nothing in the SR that the table does not hold
        for name in ("seg.dcm", "sr.dcm"):
            ds = pydicom.dcmread(vdir / name, stop_before_pixels=True)
            assert ds.ClinicalTrialTimePointID == visit
            assert _dciodvfy_errors(vdir / name) == [], vdir / name
