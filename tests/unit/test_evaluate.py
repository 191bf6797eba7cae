"""evaluate(): known truth vs known results -> known accuracies, confusion matrix and Dice; reference reads."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import domain
from pipeline.evaluate import compare_reads, evaluate, format_reads_report, format_report, read_reference_reads
from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.tables import write_lesions_csv, write_measurements_csv

V = domain.Visit
O = domain.Outcome  # noqa: E741


def _truth_lesion(pid: str, lid: str, outcome: str, j0: bool, visits: list[dict[str, Any]],
                  failure: str | None = None, height_loss: bool | None = False) -> dict[str, Any]:
    return {"patient_id": pid, "lesion_id": lid, "level": "L2", "procedure_date": "2021-01-10",
            "outcome": outcome, "failure_timepoint": failure, "j0_residual": j0,
            "j0_residual_volume_ml": 0.5 if j0 else 0.0, "baseline_fracture": False,
            "height_loss": height_loss, "max_height_loss_pct": 5.0, "visits": visits}


def _truth_visit(tp: str, date: str, residual: float, cement: float | None = 3.0,
                 height: float | None = 25.0) -> dict[str, Any]:
    return {"timepoint": tp, "study_date": date, "days_from_procedure": 0, "study_uid": "1.2.3",
            "cement_volume_ml": cement, "residual_enhancing_volume_ml": residual,
            "ablation_zone_volume_ml": 2.0, "height_anterior_mm": height, "height_middle_mm": height,
            "height_posterior_mm": height, "height_loss_pct": 0.0, "genant_grade": 0}


def _box(shape: tuple[int, int, int], spacing: tuple[float, float, float],
         lo_mm: float, hi_mm: float) -> sitk.Image:
    """Mask of the physical cube [lo_mm, hi_mm)^3 on a grid with origin 0 and the given spacing."""
    arr = np.zeros(shape[::-1], np.uint8)
    zz, yy, xx = np.indices(arr.shape)
    inside = np.ones(arr.shape, bool)
    for index, step in zip((xx, yy, zz), spacing, strict=True):
        centre = index * step
        inside &= (centre >= lo_mm) & (centre < hi_mm)
    arr[inside] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


@pytest.fixture()
def cohort(tmp_path: Path) -> tuple[Path, Path]:
    truth_dir, results = tmp_path / "phantom", tmp_path / "out"
    lesions = [
        _truth_lesion("P1", "P1-L2", "local_control", False,
                      [_truth_visit("J0", "2021-01-10", 0.0), _truth_visit("M1", "2021-02-09", 0.0)]),
        _truth_lesion("P1", "P1-L3", "local_failure", True,
                      [_truth_visit("J0", "2021-01-10", 0.5), _truth_visit("M3", "2021-04-10", 2.0)],
                      failure="M3"),
        _truth_lesion("P2", "P2/L1", "local_failure", True,  # unsafe id: safe_path_component on both sides
                      [_truth_visit("J0", "2021-01-11", 0.4)], failure="M1"),
        _truth_lesion("P3", "P3-L1", "local_control", False, [_truth_visit("J0", "2021-03-01", 0.1)]),
    ]
    truth_dir.mkdir()
    (truth_dir / "truth.json").write_text(json.dumps({"lesions": lesions, "studies": []}), encoding="utf-8")

    def lesion(pid: str, lid: str) -> domain.Lesion:
        return domain.Lesion(pid, lid, "L2", dt.date(2021, 1, 10))

    def result(pid: str, lid: str, outcome: domain.Outcome, j0: bool | None,
               failure: domain.Visit | None = None) -> domain.LesionResult:
        return domain.LesionResult(lesion(pid, lid), j0, 0.6 if j0 else 0.0, outcome, failure,
                                   False, False, 8.0, "test")

    write_lesions_csv(results / "lesions.csv", [
        result("P1", "P1-L2", O.LOCAL_CONTROL, False),  # right
        result("P1", "P1-L3", O.LOCAL_FAILURE, True, V.M6),  # right outcome, wrong timepoint
        result("P2", "P2/L1", O.INDETERMINATE, None),  # wrong outcome, j0 left empty
        # P3-L1 missing
    ])
    m = domain.VisitMeasurement
    write_measurements_csv(results / "measurements.csv", [
        m("P1", "P1-L2", V.J0, dt.date(2021, 1, 10), 0, cement_volume_ml=3.5,
          residual_enhancing_volume_ml=0.0, height_anterior_mm=24.0, height_middle_mm=25.0,
          height_posterior_mm=25.0),
        m("P1", "P1-L2", V.M1, dt.date(2021, 2, 10), 31, cement_volume_ml=2.0,
          residual_enhancing_volume_ml=0.1, height_anterior_mm=float("nan")),
        m("P1", "P1-L3", V.J0, dt.date(2021, 1, 10), 0, residual_enhancing_volume_ml=0.8),
        m("P1", "P1-L3", V.M6, dt.date(2021, 7, 10), 181, residual_enhancing_volume_ml=3.0),  # unexpected
        m("P2", "P2/L1", V.J0, dt.date(2021, 1, 11), 1),
    ])
    # Masks. Truth: a 4 mm cube on a 1 mm grid. Pipeline: the same cube shifted by 1 mm (Dice 0.75)
    # and, for the vertebra, the very same cube on a 0.5 mm grid (Dice 1 after physical resampling).
    truth_cube = _box((10, 10, 10), (1.0, 1.0, 1.0), 2.0, 6.0)
    write_mask_nifti(truth_dir / "truth" / "P1-L2" / "J0" / "cement.nii.gz", truth_cube)
    write_mask_nifti(truth_dir / "truth" / "P1-L2" / "J0" / "vertebra.nii.gz", truth_cube)
    write_mask_nifti(truth_dir / "truth" / "P1-L2" / "J0" / "residual.nii.gz", truth_cube * 0)
    write_mask_nifti(truth_dir / "truth" / "P1-L2" / "J0" / "ablation.nii.gz", truth_cube)  # no prediction
    pred = results / "patients" / "P1" / "P1-L2" / "J0"
    write_mask_nifti(pred / "cement.nii.gz", _shifted(truth_cube))
    write_mask_nifti(pred / "vertebra.nii.gz", _box((20, 20, 20), (0.5, 0.5, 0.5), 2.0, 6.0))
    write_mask_nifti(pred / "residual.nii.gz", truth_cube * 0)
    # An unsafe lesion_id: both sides use safe_path_component; identical masks (Dice 1).
    safe = safe_path_component("P2/L1")
    write_mask_nifti(truth_dir / "truth" / safe / "J0" / "cement.nii.gz", truth_cube)
    write_mask_nifti(results / "patients" / "P2" / safe / "J0" / "cement.nii.gz", truth_cube)
    return truth_dir / "truth.json", results


def _shifted(img: sitk.Image) -> sitk.Image:
    arr = np.roll(sitk.GetArrayFromImage(img), 1, axis=2)  # +1 voxel along x
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def test_known_answers(cohort: tuple[Path, Path]) -> None:
    report = evaluate(*cohort)
    assert report.n_truth_lesions == 4 and report.n_result_lesions == 3
    assert (report.outcome.correct, report.outcome.total) == (2, 3)
    assert report.confusion["local_control"]["local_control"] == 1
    assert report.confusion["local_failure"]["local_failure"] == 1
    assert report.confusion["local_failure"]["indeterminate"] == 1
    assert sum(sum(row.values()) for row in report.confusion.values()) == 3
    assert (report.j0_residual.correct, report.j0_residual.total, report.j0_residual.unknown) == (2, 3, 1)
    assert (report.failure_timepoint.correct, report.failure_timepoint.total) == (0, 1)
    # visits: 6 in truth; 3 right dates (P1-L2 J0, P1-L3 J0, P2 J0), P1-L2 M1 wrong date, 2 missing
    assert (report.visit_assignment.correct, report.visit_assignment.total) == (3, 6)
    assert report.missing == {"lesion_rows_missing": 1, "lesion_rows_unexpected": 0, "visit_rows_missing": 2,
                              "visit_rows_unexpected": 1, "masks_missing": 1}
    # residual |errors| over pairs: 0, 0.1, 0.3 (P2 J0 empty -> not a pair)
    assert report.errors["residual_enhancing_volume_ml"].median == pytest.approx(0.1)
    assert report.errors["cement_volume_ml"].errors == pytest.approx([0.5, 1.0])
    assert report.errors["height_anterior_mm"].errors == pytest.approx([1.0])  # NaN is not a pair
    assert report.errors["j0_residual_volume_ml"].errors == pytest.approx([0.0, 0.1, 0.5])
    assert sorted(report.dice["cement"].values) == pytest.approx([0.75, 1.0])
    assert report.dice["vertebra"].values == pytest.approx([1.0])
    assert report.dice["residual"].both_empty == 1 and report.dice["residual"].values == []
    assert report.dice["ablation"].missing == 1


def test_report_text_and_json(cohort: tuple[Path, Path]) -> None:
    report = evaluate(*cohort)
    text = format_report(report)
    assert "outcome accuracy" in text and "66.7% (2/3)" in text
    assert "Dice cement" in text and "min 0.750" in text
    assert "n/a (0 pairs)" in text  # e.g. Dice of residual: both empty only
    data = json.loads(json.dumps(report.as_dict()))
    assert data["outcome_accuracy"]["value"] == pytest.approx(2 / 3)
    assert data["outcome_confusion"]["matrix"]["local_failure"]["indeterminate"] == 1
    assert data["dice"]["cement"]["mean"] == pytest.approx(0.875)


def test_empty_results_folder(tmp_path: Path, cohort: tuple[Path, Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    report = evaluate(cohort[0], empty)
    assert report.outcome.total == 0 and str(report.outcome) == "n/a (0 pairs)"
    assert report.missing["lesion_rows_missing"] == 4
    assert any("lesions.csv: missing" in p for p in report.problems)
    assert "n/a (0 pairs)" in format_report(report)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"truth file .* does not exist"):
        evaluate(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "truth.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        evaluate(bad, tmp_path)
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'lesions' list"):
        evaluate(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"results folder .* does not exist"):
        evaluate(bad, tmp_path / "missing")


def test_truth_fraction_on_a_coarser_grid_is_the_covered_share() -> None:
    """A 0.5 mm truth slab covering exactly 1.5 of the 3 mm slices reads 1.0 and 0.5 there, 0 elsewhere."""
    import numpy as np
    import SimpleITK as sitk

    from pipeline.evaluate import truth_fraction_on_grid

    coarse = sitk.Image([4, 4, 6], sitk.sitkUInt8)
    coarse.SetSpacing((2.0, 2.0, 3.0))  # voxel k covers z in [3k - 1.5, 3k + 1.5]
    fine_arr = np.zeros((36, 16, 16), dtype=np.uint8)  # 0.5 mm voxels, centres at z = -1.25 + 0.5 k
    z = -1.25 + 0.5 * np.arange(36)
    fine_arr[(z > 4.5) & (z < 9.0)] = 1  # all of coarse slice 2 ([4.5, 7.5]) and half of slice 3
    fine = sitk.GetImageFromArray(fine_arr)
    fine.SetSpacing((0.5, 0.5, 0.5))
    fine.SetOrigin((-0.75, -0.75, -1.25))
    frac = truth_fraction_on_grid(fine, coarse)
    assert frac.shape == (6, 4, 4)
    assert np.allclose(frac[2], 1.0) and np.allclose(frac[3], 0.5)
    assert np.allclose(np.delete(frac, [2, 3], axis=0), 0.0)


# ---------------------------------------------------------------- reference read

LESIONS_HEADER = ("patient_id,lesion_id,level,procedure_date,j0_residual,j0_residual_volume_ml,outcome,"
                  "failure_timepoint,baseline_fracture,height_loss,max_height_loss_pct,reason\n")


def _lesions_csv(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """rows: (patient_id, lesion_id, j0_residual, outcome)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = LESIONS_HEADER + "".join(f"{p},{lid},L2,2021-01-10,{j0},,{o},,,,,r\n" for p, lid, j0, o in rows)
    (folder / "lesions.csv").write_text(text, encoding="utf-8")
    return folder


def test_read_reference_reads_is_tolerant(tmp_path: Path) -> None:
    f = tmp_path / "reads.csv"
    f.write_text("\ufeff Lesion ID ; OUTCOME ;Patient_ID;J0 residual;Reader;comment\n"
                 " A-1 ; Local Control ;P1;yes;dr X;ok\n"
                 "\n"
                 ";;;;;\n"
                 "A-2;local-failure;P1;;dr Y;\n"
                 "B-1;INDETERMINATE;P2;0;;\n", encoding="utf-8")
    reads = read_reference_reads(f)
    assert [(r.line, r.lesion_id, r.outcome, r.j0_residual) for r in reads.reads] == [
        (2, "A-1", "local_control", True), (5, "A-2", "local_failure", None), (6, "B-1", "indeterminate", False)]
    assert reads.has_j0_residual and reads.readers == ["dr X", "dr Y"]
    assert reads.outcomes() == {"A-1": "local_control", "A-2": "local_failure", "B-1": "indeterminate"}
    assert reads.j0_residuals() == {"A-1": True, "A-2": None, "B-1": False}
    g = tmp_path / "minimal.csv"
    g.write_text("lesion_id,outcome\nA-1,local_control\n", encoding="utf-8")
    minimal = read_reference_reads(g)
    assert not minimal.has_j0_residual and minimal.j0_residuals() is None and minimal.reads[0].patient_id is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lesion_id,outcome\nA,cured\n", r"line 2: outcome 'cured' is not one of local_control, local_failure"),
        ("lesion_id,outcome\nA,local_control\nB,\n", r"line 3: outcome is empty"),
        ("lesion_id,outcome\n,local_control\n", r"line 2: lesion_id is empty"),
        ("lesion_id,outcome\nA,local_control\nA,local_failure\n", r"line 3: lesion_id 'A' already given on line 2"),
        ("lesion_id,outcome,j0_residual\nA,local_control,maybe\n", r"line 2: j0_residual 'maybe'"),
        ("lesion,outcome\nA,local_control\n", r"missing column\(s\) lesion_id"),
        ("", r"empty file"),
    ],
)
def test_read_reference_reads_refuses_bad_rows(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "reads.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_reference_reads(f)


def test_read_reference_reads_lists_every_bad_row(tmp_path: Path) -> None:
    f = tmp_path / "reads.csv"
    f.write_text("lesion_id,outcome\n" + "".join(f"L{i},bad\n" for i in range(12)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"12 bad row\(s\): line 2: .* \| line 3: .*and 2 more bad row"):
        read_reference_reads(f)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("lesion_id,outcome\nL\xe9,local_control\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_reference_reads(latin)


def test_compare_reads_known_answers(tmp_path: Path) -> None:
    results = _lesions_csv(tmp_path / "out", [
        ("P1", "A", "false", "local_control"), ("P1", "B", "true", "local_failure"),
        ("P2", "C", "true", "local_control"), ("P2", "D", "", "indeterminate"),
        ("P3", "E", "false", "local_control"), ("P3", "ONLY-RESULTS", "false", "local_control"),
    ])
    reads = tmp_path / "reads.csv"
    reads.write_text("patient_id,lesion_id,outcome,j0_residual,reader\n"
                     "P1,A,local_control,false,R1\nP1,B,local_failure,true,R1\nP2,C,local_failure,true,R1\n"
                     "P2,D,indeterminate,false,R1\nPX,E,local_control,,R1\nP9,ONLY-READ,local_control,,R1\n",
                     encoding="utf-8")
    report = compare_reads(reads, results)
    o = report.outcome
    # rows = reference, columns = pipeline: A C/C, B F/F, C F/C, D I/I, E C/C
    assert o["matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert o["n"] == 5 and o["accuracy"] == pytest.approx(0.8)
    # p_e = (2 x 3 + 2 x 1 + 1 x 1) / 25 = 9 / 25; kappa = (0.8 - 0.36) / 0.64
    assert o["kappa"] == pytest.approx(0.44 / 0.64)
    assert o["kappa_se"] is not None and o["kappa_ci95"][0] < o["kappa"] < o["kappa_ci95"][1]
    assert o["only_in_reference"] == ["ONLY-READ"] and o["only_in_pipeline"] == ["ONLY-RESULTS"]
    assert o["disagreements"] == [{"lesion_id": "C", "reference": "local_failure", "pipeline": "local_control"}]
    j0 = report.j0_residual
    assert j0 is not None and j0["matrix"] == [[2, 0], [0, 1]]
    assert j0["unrated_pipeline"] == ["D"] and j0["unrated_reference"] == ["E"]
    assert report.patient_mismatches == [{"lesion_id": "E", "reference_patient_id": "PX",
                                          "results_patient_id": "P3"}]
    assert report.readers == ["R1"] and report.needs_a_look
    text = format_reads_report(report)
    assert "Outcome: rows = reference read, columns = pipeline" in text
    assert "observed agreement  80.0% (4/5)" in text and "Cohen's kappa       0.688 (SE" in text
    assert "only in the reference read (1): ONLY-READ" in text and "only in the results (1): ONLY-RESULTS" in text
    assert "  - C: reference local_failure, pipeline local_control" in text
    assert "E: read PX, results P3" in text
    data = json.loads(json.dumps(report.as_dict()))
    assert data["outcome_agreement"]["matrix"] == o["matrix"] and data["needs_a_look"] is True


def test_compare_reads_clean_and_without_j0(tmp_path: Path) -> None:
    results = _lesions_csv(tmp_path / "out", [("P1", "A", "false", "local_control"),
                                              ("P1", "B", "true", "local_failure")])
    reads = tmp_path / "reads.csv"
    reads.write_text("lesion_id,outcome\nA,local_control\nB,local_failure\n", encoding="utf-8")
    report = compare_reads(reads, results)
    assert report.outcome["kappa"] == 1.0 and report.j0_residual is None and not report.needs_a_look
    assert "the read has no j0_residual column" in format_reads_report(report)


def test_compare_reads_errors_and_odd_results(tmp_path: Path) -> None:
    reads = tmp_path / "reads.csv"
    reads.write_text("lesion_id,outcome\nA,local_control\nb,local_control\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"has no lesions\.csv"):
        compare_reads(reads, tmp_path)
    with pytest.raises(FileNotFoundError, match="reads file"):
        compare_reads(tmp_path / "none.csv", tmp_path)
    (tmp_path / "lesions.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a crav run output"):
        compare_reads(reads, tmp_path)
    _lesions_csv(tmp_path, [("P", "A", "", "cured"), ("P", "B", "", "local_control")])
    report = compare_reads(reads, tmp_path)
    assert report.outcome["unrated_pipeline"] == ["A"] and report.needs_a_look
    assert any("outcome 'cured' is not an outcome" in p for p in report.problems)
    assert any("'b' of the read matches 'B'" in p for p in report.problems)


def test_compare_cohort_tables_counts_both_sides() -> None:
    from pipeline.evaluate import compare_cohort_tables

    def row(lid: str, outcome: str, j0: bool, fracture: bool, loss: bool) -> dict[str, object]:
        return {"patient_id": "P", "lesion_id": lid, "level": "L1", "outcome": outcome, "j0_residual": j0,
                "baseline_fracture": fracture, "height_loss": loss}

    truth = [row("a", "local_control", False, True, True), row("b", "local_failure", True, False, False),
             row("c", "local_control", True, False, False)]
    # the CSV side has strings, as lesions.csv does; lesion c is called failed
    results = [{k: str(v).lower() for k, v in r.items()} for r in truth]
    results[2]["outcome"] = "local_failure"
    table = compare_cohort_tables(truth, results)
    control = table["local control [local_control]"]
    assert (control["truth"], control["pipeline"], control["match"]) == ("2/3 (67 %)", "1/3 (33 %)", "no")
    no_res = table["J0 without residual [j0_no_residual]"]
    assert no_res == {"truth": "1/3 (33 %)", "pipeline": "1/3 (33 %)", "match": "yes"}
    lost = table["  of which lost height [baseline_fracture.height_loss]"]
    assert lost["truth"] == lost["pipeline"] == "1/1 (100 %)"
