"""Compare a results folder with the phantom's exact truth (``truth.json`` + truth masks).

Lesion rows are matched by ``lesion_id``; visit rows by ``lesion_id`` + ``timepoint``
(``UNSCHEDULED`` rows by ``lesion_id`` + ``study_date``, as a lesion may have several).
Accuracies count a matched pair whose prediction is empty as wrong; missing and unexpected
rows are counted apart. Errors are computed over pairs where both sides hold a number.

Example (after ``make demo``)::

    report = evaluate(Path("sample_dicom/truth.json"), Path("out/demo"))
    print(format_report(report))

A results folder can also be compared with a reference read, the radiologists' outcome per
lesion in a CSV (:func:`read_reference_reads`, :func:`compare_reads`): confusion matrix,
observed agreement and Cohen's kappa with its standard error and 95 % CI::

    print(format_reads_report(compare_reads(Path("reads.csv"), Path("out/demo"))))
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.outputs.paths import SAFE_COMPONENT, safe_path_component

__all__ = ["Accuracy", "DiceStat", "ErrorStat", "EvaluationReport", "ReadsReport", "ReferenceRead", "ReferenceReads",
           "compare_reads", "evaluate", "format_reads_report", "format_report", "read_reference_reads"]

log = logging.getLogger(__name__)

OUTCOMES: tuple[str, ...] = ("local_control", "local_failure", "indeterminate")
STRUCTURES: tuple[str, ...] = ("vertebra", "cement", "residual", "ablation")
VISIT_ERRORS: tuple[tuple[str, str], ...] = (
    ("residual_enhancing_volume_ml", "mL"), ("cement_volume_ml", "mL"), ("ablation_zone_volume_ml", "mL"),
    ("height_anterior_mm", "mm"), ("height_middle_mm", "mm"), ("height_posterior_mm", "mm"),
    ("height_loss_pct", "%"),
)
HEIGHTS = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")
LESION_ERRORS: tuple[tuple[str, str], ...] = (("j0_residual_volume_ml", "mL"), ("max_height_loss_pct", "%"))
NA = "n/a (0 pairs)"


@dataclass
class Accuracy:
    """Agreement on a categorical value over matched pairs."""

    correct: int = 0
    total: int = 0
    unknown: int = 0  # pairs where the pipeline left the value empty (counted wrong)

    def add(self, truth: Any, predicted: Any) -> None:
        if truth is None:
            return
        self.total += 1
        if predicted is None:
            self.unknown += 1
        elif truth == predicted:
            self.correct += 1

    @property
    def value(self) -> float | None:
        return self.correct / self.total if self.total else None

    def __str__(self) -> str:
        if not self.total:
            return NA
        extra = f", {self.unknown} left empty" if self.unknown else ""
        return f"{self.value:.1%} ({self.correct}/{self.total}{extra})"

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "correct": self.correct, "total": self.total, "unknown": self.unknown}


@dataclass
class ErrorStat:
    """Absolute errors |pipeline - truth| of one quantity."""

    unit: str
    errors: list[float] = field(default_factory=list)

    def add(self, truth: float | None, predicted: float | None) -> None:
        if truth is not None and predicted is not None:
            self.errors.append(abs(predicted - truth))

    @property
    def median(self) -> float | None:
        return statistics.median(self.errors) if self.errors else None

    @property
    def maximum(self) -> float | None:
        return max(self.errors) if self.errors else None

    def __str__(self) -> str:
        if not self.errors:
            return NA
        return (f"median {self.median:.3f} {self.unit}, max {self.maximum:.3f} {self.unit} "
                f"({len(self.errors)} pairs)")

    def as_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "median_abs_error": self.median, "max_abs_error": self.maximum,
                "pairs": len(self.errors)}


@dataclass
class DiceStat:
    """Dice of one structure over the visits where both masks exist."""

    values: list[float] = field(default_factory=list)
    both_empty: int = 0  # both masks empty: agreement, left out of the Dice figures
    missing: int = 0  # a truth mask with no pipeline mask beside it

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def minimum(self) -> float | None:
        return min(self.values) if self.values else None

    def __str__(self) -> str:
        if not self.values:
            text = NA
        else:
            text = (f"mean {self.mean:.3f}, median {self.median:.3f}, min {self.minimum:.3f} "
                    f"({len(self.values)} pairs)")
        notes = [f"{self.both_empty} both empty"] if self.both_empty else []
        notes += [f"{self.missing} missing"] if self.missing else []
        return text + (f"; {', '.join(notes)}" if notes else "")

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "median": self.median, "min": self.minimum, "pairs": len(self.values),
                "both_empty": self.both_empty, "missing": self.missing}


@dataclass
class EvaluationReport:
    """Everything :func:`evaluate` measured; ``as_dict()`` for JSON, :func:`format_report` for a person."""

    truth_json: Path
    results_dir: Path
    n_truth_lesions: int = 0
    n_result_lesions: int = 0
    outcome: Accuracy = field(default_factory=Accuracy)
    confusion: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: dict.fromkeys(OUTCOMES, 0) for t in OUTCOMES})
    j0_residual: Accuracy = field(default_factory=Accuracy)
    height_loss: Accuracy = field(default_factory=Accuracy)
    baseline_fracture: Accuracy = field(default_factory=Accuracy)
    failure_timepoint: Accuracy = field(default_factory=Accuracy)  # over lesions both sides call failed
    visit_assignment: Accuracy = field(default_factory=Accuracy)
    errors: dict[str, ErrorStat] = field(default_factory=dict)
    dice: dict[str, DiceStat] = field(default_factory=lambda: {s: DiceStat() for s in STRUCTURES})
    #: Dice on the pipeline mask's own (image) grid, against the truth reduced to that grid.
    dice_source_grid: dict[str, DiceStat] = field(default_factory=lambda: {s: DiceStat() for s in STRUCTURES})
    missing: dict[str, int] = field(default_factory=lambda: {
        "lesion_rows_missing": 0, "lesion_rows_unexpected": 0,
        "visit_rows_missing": 0, "visit_rows_unexpected": 0, "masks_missing": 0})
    problems: list[str] = field(default_factory=list)
    #: The study table (SPEC top table) from the truth and from the results: row -> {truth, pipeline}.
    cohort: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "truth_json": str(self.truth_json), "results_dir": str(self.results_dir),
            "cohort_table": self.cohort,
            "n_truth_lesions": self.n_truth_lesions, "n_result_lesions": self.n_result_lesions,
            "outcome_accuracy": self.outcome.as_dict(),
            "outcome_confusion": {"rows_truth_columns_pipeline": list(OUTCOMES), "matrix": self.confusion},
            "j0_residual_accuracy": self.j0_residual.as_dict(),
            "height_loss_accuracy": self.height_loss.as_dict(),
            "baseline_fracture_accuracy": self.baseline_fracture.as_dict(),
            "failure_timepoint_accuracy": self.failure_timepoint.as_dict(),
            "visit_assignment_accuracy": self.visit_assignment.as_dict(),
            "errors": {k: v.as_dict() for k, v in self.errors.items()},
            "dice": {k: v.as_dict() for k, v in self.dice.items()},
            "dice_source_grid": {k: v.as_dict() for k, v in self.dice_source_grid.items()},
            "missing": dict(self.missing),
            "problems": list(self.problems),
        }


# ---------------------------------------------------------------- value parsing

def _number(value: Any) -> float | None:
    """A finite float, or None for empty / null / NaN / text."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    return {"true": True, "false": False, "1": True, "0": False}.get(text)


def _text(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _read_csv(path: Path, problems: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        problems.append(f"{path.name}: missing from the results folder")
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _visit_key(lesion_id: str, timepoint: str | None, study_date: str | None) -> tuple[str, str, str]:
    tp = timepoint or ""
    return (lesion_id, tp, (study_date or "") if tp == "UNSCHEDULED" else "")


# ---------------------------------------------------------------- masks

def _dice(truth_path: Path, pred_path: Path) -> float | None:
    """Dice of the pipeline mask resampled (nearest neighbour, physical space) onto the truth grid."""
    truth = sitk.ReadImage(str(truth_path))
    pred = sitk.ReadImage(str(pred_path))
    pred_on_truth = sitk.Resample(pred, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                                  pred.GetPixelID())
    a = sitk.GetArrayViewFromImage(truth) > 0
    b = sitk.GetArrayViewFromImage(pred_on_truth) > 0
    size = int(a.sum()) + int(b.sum())
    if size == 0:
        return None
    return 2.0 * int(np.logical_and(a, b).sum()) / size


def truth_fraction_on_grid(truth: sitk.Image, reference: sitk.Image, *, max_factor: int = 8) -> np.ndarray:
    """Share of each ``reference`` voxel covered by the (finer) ``truth`` mask, in [0, 1].

    The reference grid is cropped to the truth's bounding box, each voxel is split into
    ``ceil(2 x reference spacing / truth spacing)`` sub-voxels per axis (at most ``max_factor``),
    the truth is sampled (nearest neighbour, physical space) at the sub-voxel centres and
    averaged back. Returns a float32 array shaped like ``reference`` (``(z, y, x)``).
    """
    frac = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.float32)
    idx = np.argwhere(sitk.GetArrayViewFromImage(truth) > 0)
    if idx.size == 0:
        return frac
    first, last = idx.min(axis=0) - 1, idx.max(axis=0) + 1  # (k, j, i), one voxel of margin
    corners = [truth.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
               for k in (first[0], last[0]) for j in (first[1], last[1]) for i in (first[2], last[2])]
    cidx = np.array([reference.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(reference.GetSize())
    lo = np.clip(np.floor(cidx.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(cidx.max(axis=0)).astype(int) + 1, 0, size - 1)
    crop = sitk.RegionOfInterest(reference, [int(v) for v in hi - lo + 1], [int(v) for v in lo])
    factors = [int(min(max_factor, math.ceil(2.0 * rs / min(truth.GetSpacing()))))
               for rs in crop.GetSpacing()]
    fine = sitk.Image([n * f for n, f in zip(crop.GetSize(), factors, strict=True)], sitk.sitkUInt8)
    fine.SetSpacing([sp / f for sp, f in zip(crop.GetSpacing(), factors, strict=True)])
    direction = np.asarray(crop.GetDirection()).reshape(3, 3)
    shift = direction @ np.array([sp / 2.0 * (1.0 / f - 1.0)
                                  for sp, f in zip(crop.GetSpacing(), factors, strict=True)])
    fine.SetOrigin(tuple(float(v) for v in np.asarray(crop.GetOrigin()) + shift))
    fine.SetDirection(crop.GetDirection())
    sampled = sitk.Resample(sitk.Cast(truth > 0, sitk.sitkUInt8), fine, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0)
    share = sitk.GetArrayFromImage(sitk.BinShrink(sitk.Cast(sampled, sitk.sitkFloat32), factors))
    frac[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = share
    return frac


def _dice_source_grid(truth_path: Path, pred_path: Path) -> float | None:
    """Dice on the pipeline mask's own grid, the truth reduced to it (voxels at least half covered)."""
    truth = sitk.ReadImage(str(truth_path))
    pred = sitk.ReadImage(str(pred_path))
    a = truth_fraction_on_grid(truth, pred) >= 0.5
    b = sitk.GetArrayViewFromImage(pred) > 0
    size = int(a.sum()) + int(b.sum())
    if size == 0:
        return None
    return 2.0 * int(np.logical_and(a, b).sum()) / size


def _component_candidates(text: str) -> list[str]:
    names = [text] if SAFE_COMPONENT.match(text) and text not in (".", "..") else []
    safe = safe_path_component(text)
    return names + ([safe] if safe not in names else [])


def _first_dir(parent: Path, text: str) -> Path | None:
    for name in _component_candidates(text):
        if (parent / name).is_dir():
            return parent / name
    return None


def _evaluate_masks(report: EvaluationReport, truth_root: Path, results_dir: Path,
                    lesions: Sequence[Mapping[str, Any]]) -> None:
    for les in lesions:
        lesion_id, patient_id = str(les.get("lesion_id", "")), str(les.get("patient_id", ""))
        truth_lesion = _first_dir(truth_root, lesion_id)
        if truth_lesion is None:
            continue
        patient_dir = _first_dir(results_dir / "patients", patient_id)
        pred_lesion = _first_dir(patient_dir, lesion_id) if patient_dir else None
        days = {str(v.get("timepoint")): v.get("days_from_procedure") for v in les.get("visits") or []
                if isinstance(v, Mapping)}
        for visit_dir in sorted(p for p in truth_lesion.iterdir() if p.is_dir()):
            pred_name = visit_dir.name
            if pred_name == "UNSCHEDULED" and isinstance(days.get(pred_name), int):
                pred_name = f"UNSCHEDULED_{days[pred_name]:+d}d"  # the pipeline names it by its day
            for structure in STRUCTURES:
                truth_mask = visit_dir / f"{structure}.nii.gz"
                if not truth_mask.is_file():
                    continue
                pred_mask = (pred_lesion / pred_name / f"{structure}.nii.gz") if pred_lesion else None
                stat = report.dice[structure]
                if pred_mask is None or not pred_mask.is_file():
                    if not sitk.GetArrayFromImage(sitk.ReadImage(str(truth_mask))).any():
                        stat.both_empty += 1  # nothing to find (e.g. no cement before treatment)
                        continue
                    stat.missing += 1
                    report.missing["masks_missing"] += 1
                    continue
                try:
                    value = _dice(truth_mask, pred_mask)
                except RuntimeError as exc:  # SimpleITK's error for unreadable files
                    report.problems.append(f"{pred_mask.relative_to(results_dir)}: unreadable ({exc})")
                    continue
                if value is None:
                    stat.both_empty += 1
                else:
                    stat.values.append(value)
                    grid_value = _dice_source_grid(truth_mask, pred_mask)
                    if grid_value is not None:
                        report.dice_source_grid[structure].values.append(grid_value)


def _motion(study: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    move = study.get("patient_to_scanner")
    if not isinstance(move, Mapping):
        return None
    rot = np.asarray(move.get("rotation"), dtype=np.float64)
    trans = np.asarray(move.get("translation"), dtype=np.float64)
    return (rot, trans) if rot.shape == (3, 3) and trans.shape == (3,) else None


def registration_error_mm(truth_j0_body: Path, transform_path: Path, j0_motion: tuple[np.ndarray, np.ndarray],
                          visit_motion: tuple[np.ndarray, np.ndarray], *, max_points: int = 4000) -> float:
    """Mean target registration error (mm) over the J0 truth vertebral body.

    The pipeline's ``to_j0.tfm`` maps J0 scanner points to the visit's scanner points; the truth
    map is ``R_v R_j0^T (p - t_j0) + t_v`` from the generator's repositioning of each study
    (``patient_to_scanner``: scanner = R patient + t). The error is the mean distance between
    the two images of the body's voxel centres (at most ``max_points``, evenly subsampled).
    """
    body = sitk.ReadImage(str(truth_j0_body))
    idx = np.argwhere(sitk.GetArrayViewFromImage(body) > 0)
    if idx.size == 0:
        raise ValueError(f"{truth_j0_body}: empty truth body")
    idx = idx[:: max(1, len(idx) // max_points)]
    pts = np.array([body.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                    for k, j, i in idx])
    (r0, t0), (rv, tv) = j0_motion, visit_motion
    expected = (pts - t0) @ r0 @ rv.T + tv  # rows: R_v R_0^T (p - t_0) + t_v
    tx = sitk.ReadTransform(str(transform_path))
    found = np.array([tx.TransformPoint(tuple(float(c) for c in p)) for p in pts])
    return float(np.linalg.norm(found - expected, axis=1).mean())


def _evaluate_registration(report: EvaluationReport, truth_root: Path, results_dir: Path,
                           lesions: Sequence[Mapping[str, Any]], studies: Mapping[str, Mapping[str, Any]]) -> None:
    stat = report.errors["registration_tre_mm"]
    for les in lesions:
        lesion_id, patient_id = str(les.get("lesion_id", "")), str(les.get("patient_id", ""))
        visits = [v for v in les.get("visits") or [] if isinstance(v, Mapping)]
        j0 = next((v for v in visits if v.get("timepoint") == "J0"), None)
        truth_lesion = _first_dir(truth_root, lesion_id)
        patient_dir = _first_dir(results_dir / "patients", patient_id)
        pred_lesion = _first_dir(patient_dir, lesion_id) if patient_dir else None
        if j0 is None or truth_lesion is None or pred_lesion is None:
            continue
        j0_motion = _motion(studies.get(str(j0.get("study_uid")), {}))
        j0_body = truth_lesion / "J0" / "vertebra.nii.gz"
        if j0_motion is None or not j0_body.is_file():
            continue
        for visit in visits:
            tp = str(visit.get("timepoint"))
            tfm = pred_lesion / tp / "to_j0.tfm"
            motion = _motion(studies.get(str(visit.get("study_uid")), {}))
            if tp in ("J0", "UNSCHEDULED") or motion is None or not tfm.is_file():
                continue
            try:
                stat.add(0.0, registration_error_mm(j0_body, tfm, j0_motion, motion))
            except (RuntimeError, ValueError) as exc:
                report.problems.append(f"{tfm.relative_to(results_dir)}: registration not evaluated ({exc})")


# ---------------------------------------------------------------- main entry

def evaluate(truth_json: Path, results_dir: Path) -> EvaluationReport:
    """Compare ``results_dir`` (a ``crav run`` output folder) with a phantom ``truth.json``.

    Parameters
    ----------
    truth_json
        The generator's truth file; truth masks are read from ``truth/`` beside it.
    results_dir
        Folder holding ``lesions.csv``, ``measurements.csv`` and ``patients/``.

    Raises
    ------
    FileNotFoundError
        If ``truth_json`` or ``results_dir`` does not exist.
    ValueError
        If ``truth_json`` is not JSON with a ``lesions`` list.
    """
    truth_json, results_dir = Path(truth_json), Path(results_dir)
    if not truth_json.is_file():
        raise FileNotFoundError(f"truth file {truth_json} does not exist")
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder {results_dir} does not exist")
    try:
        truth = json.loads(truth_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"truth file {truth_json} is not valid JSON: {exc}") from exc
    if not isinstance(truth, dict) or not isinstance(truth.get("lesions"), list):
        raise ValueError(f"truth file {truth_json} has no 'lesions' list")

    report = EvaluationReport(truth_json=truth_json, results_dir=results_dir)
    report.errors = {name: ErrorStat(unit) for name, unit in (*LESION_ERRORS, *VISIT_ERRORS)}
    report.errors["heights_all_mm"] = ErrorStat("mm")
    report.errors["cement_volume_pct"] = ErrorStat("%")
    # the residual volume where the truth has residual (most visits have none, and agree at 0)
    report.errors["residual_ml_where_truth_positive"] = ErrorStat("mL")
    lesions: list[dict[str, Any]] = [les for les in truth["lesions"] if isinstance(les, dict)]
    report.n_truth_lesions = len(lesions)

    lesion_rows = _read_csv(results_dir / "lesions.csv", report.problems)
    pred_lesions = {r.get("lesion_id", ""): r for r in lesion_rows}
    report.n_result_lesions = len(pred_lesions)
    pred_visits: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in _read_csv(results_dir / "measurements.csv", report.problems):
        pred_visits.setdefault(_visit_key(r.get("lesion_id", ""), r.get("timepoint"), r.get("study_date")), r)

    truth_ids = {str(les.get("lesion_id", "")) for les in lesions}
    report.missing["lesion_rows_unexpected"] = len(set(pred_lesions) - truth_ids)
    truth_visit_keys: set[tuple[str, str, str]] = set()
    for les in lesions:
        lesion_id = str(les.get("lesion_id", ""))
        pred = pred_lesions.get(lesion_id)
        if pred is None:
            report.missing["lesion_rows_missing"] += 1
        else:
            _compare_lesion(report, les, pred)
        for visit in les.get("visits") or []:
            key = _visit_key(lesion_id, _text(visit.get("timepoint")), _text(visit.get("study_date")))
            truth_visit_keys.add(key)
            pred_visit = pred_visits.get(key)
            report.visit_assignment.add(
                _text(visit.get("study_date")), _text(pred_visit.get("study_date")) if pred_visit else None)
            if pred_visit is None:
                report.missing["visit_rows_missing"] += 1
                continue
            for name, _unit in VISIT_ERRORS:
                report.errors[name].add(_number(visit.get(name)), _number(pred_visit.get(name)))
            for name in HEIGHTS:
                report.errors["heights_all_mm"].add(_number(visit.get(name)), _number(pred_visit.get(name)))
            t_res = _number(visit.get("residual_enhancing_volume_ml"))
            if t_res:
                report.errors["residual_ml_where_truth_positive"].add(
                    t_res, _number(pred_visit.get("residual_enhancing_volume_ml")))
            t_cement, p_cement = _number(visit.get("cement_volume_ml")), _number(pred_visit.get("cement_volume_ml"))
            if t_cement and p_cement is not None:
                report.errors["cement_volume_pct"].add(0.0, 100.0 * (p_cement - t_cement) / t_cement)
    report.missing["visit_rows_unexpected"] = len(set(pred_visits) - truth_visit_keys)
    report.cohort = compare_cohort_tables(lesions, lesion_rows)
    _evaluate_masks(report, truth_json.parent / "truth", results_dir, lesions)
    studies = {str(st.get("study_uid")): st for st in truth.get("studies") or [] if isinstance(st, dict)}
    report.errors["registration_tre_mm"] = ErrorStat("mm")
    _evaluate_registration(report, truth_json.parent / "truth", results_dir, lesions, studies)
    return report


#: Rows of the study table compared by :func:`compare_cohort_tables`: (label, key, sub-key or None).
COHORT_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("local control", "local_control", None),
    ("local failure", "local_failure", None),
    ("J0 without residual", "j0_no_residual", None),
    ("  of which controlled", "j0_no_residual", "controlled"),
    ("J0 with residual", "j0_residual", None),
    ("  of which controlled", "j0_residual", "controlled"),
    ("baseline fracture", "baseline_fracture", None),
    ("  of which lost height", "baseline_fracture", "height_loss"),
)


def _as_result(row: Mapping[str, Any]) -> Any:
    """A truth.json lesion or a lesions.csv row as a :class:`pipeline.domain.LesionResult`."""
    from pipeline.domain import Lesion, LesionResult, Outcome

    try:
        outcome = Outcome(_text(row.get("outcome")) or "indeterminate")
    except ValueError:
        outcome = Outcome.INDETERMINATE
    lesion = Lesion(str(row.get("patient_id", "")), str(row.get("lesion_id", "")), str(row.get("level", "")),
                    dt.date.min)
    return LesionResult(lesion, _boolean(row.get("j0_residual")), _number(row.get("j0_residual_volume_ml")),
                        outcome, None, _boolean(row.get("baseline_fracture")), _boolean(row.get("height_loss")),
                        _number(row.get("max_height_loss_pct")), "")


def compare_cohort_tables(truth_lesions: Sequence[Mapping[str, Any]], result_rows: Sequence[Mapping[str, Any]]
                          ) -> dict[str, dict[str, str]]:
    """The study table computed the same way from the truth's verdicts and from ``lesions.csv``.

    Returns
    -------
    dict
        ``"<label>" -> {"truth": "n/N (p %)", "pipeline": "n/N (p %)", "match": "yes" | "no"}`` for
        the rows of :data:`COHORT_ROWS` (local control and failure, day-0 residual and the control
        in each group, baseline fracture and its height loss).
    """
    from pipeline.response.cohort import cohort_table

    def cell(table: Mapping[str, Any], key: str, sub: str | None) -> str:
        r = table.get(key) or {}
        r = r.get(sub) or {} if sub else r
        n, d = r.get("n"), r.get("N")
        pct = f" ({100.0 * n / d:.0f} %)" if isinstance(n, int) and isinstance(d, int) and d else ""
        return f"{n}/{d}{pct}"

    truth_table = cohort_table([_as_result(r) for r in truth_lesions])
    result_table = cohort_table([_as_result(r) for r in result_rows])
    out: dict[str, dict[str, str]] = {}
    for label, key, sub in COHORT_ROWS:
        name = f"{label} [{key}{'.' + sub if sub else ''}]"
        t, p = cell(truth_table, key, sub), cell(result_table, key, sub)
        out[name] = {"truth": t, "pipeline": p, "match": "yes" if t == p else "no"}
    return out


def _compare_lesion(report: EvaluationReport, truth: Mapping[str, Any], pred: Mapping[str, str]) -> None:
    t_outcome, p_outcome = _text(truth.get("outcome")), _text(pred.get("outcome"))
    report.outcome.add(t_outcome, p_outcome)
    if t_outcome in OUTCOMES and p_outcome in OUTCOMES:
        report.confusion[t_outcome][p_outcome] += 1
    elif t_outcome is not None:
        report.problems.append(f"lesion {truth.get('lesion_id')!r}: outcome {t_outcome!r} vs {p_outcome!r} "
                               "left out of the confusion matrix")
    for name, acc in (("j0_residual", report.j0_residual), ("height_loss", report.height_loss),
                      ("baseline_fracture", report.baseline_fracture)):
        acc.add(_boolean(truth.get(name)), _boolean(pred.get(name)))
    if t_outcome == "local_failure" and p_outcome == "local_failure":
        report.failure_timepoint.add(_text(truth.get("failure_timepoint")),
                                     _text(pred.get("failure_timepoint")))
    for name, _unit in LESION_ERRORS:
        report.errors[name].add(_number(truth.get(name)), _number(pred.get(name)))


# ---------------------------------------------------------------- for a person

def format_report(report: EvaluationReport) -> str:
    """The report as a plain-text table for a person."""
    rows: list[tuple[str, str]] = [
        ("lesions (truth / results)", f"{report.n_truth_lesions} / {report.n_result_lesions}"),
        ("outcome accuracy", str(report.outcome)),
        ("j0_residual accuracy", str(report.j0_residual)),
        ("height_loss accuracy", str(report.height_loss)),
        ("baseline_fracture accuracy", str(report.baseline_fracture)),
        ("failure_timepoint (both failed)", str(report.failure_timepoint)),
        ("visit assignment (study_date)", str(report.visit_assignment)),
    ]
    rows += [(f"|error| {name}", str(stat)) for name, stat in report.errors.items()]
    rows += [(f"Dice {name}", str(stat)) for name, stat in report.dice.items()]
    rows += [(f"Dice {name} (image grid)", str(stat)) for name, stat in report.dice_source_grid.items()]
    rows += [(name.replace("_", " "), str(count)) for name, count in report.missing.items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"Evaluation of {report.results_dir} against {report.truth_json}", ""]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    col = max(len(o) for o in OUTCOMES)
    lines += ["", "Outcome confusion matrix (rows: truth, columns: pipeline)",
              " " * col + "  " + "  ".join(o.rjust(col) for o in OUTCOMES)]
    for t in OUTCOMES:
        cells = "  ".join(str(report.confusion[t][p]).rjust(col) for p in OUTCOMES)
        lines.append(f"{t.ljust(col)}  {cells}")
    if report.cohort:
        width_c = max(len(k) for k in report.cohort)
        lines += ["", "Study table (truth vs pipeline)"]
        lines += [f"{k.ljust(width_c)}  {v['truth']:>14}  {v['pipeline']:>14}"
                  f"  {'' if v['match'] == 'yes' else 'differs'}" for k, v in report.cohort.items()]
    if report.problems:
        lines += ["", f"{len(report.problems)} problem(s):", *(f"  - {p}" for p in report.problems)]
    return "\n".join(lines)


# ---------------------------------------------------------------- reference read (radiologists)

#: Columns of a reference read: required, then optional (names compared lower-case, spaces -> ``_``).
READS_REQUIRED: tuple[str, ...] = ("lesion_id", "outcome")
READS_OPTIONAL: tuple[str, ...] = ("patient_id", "j0_residual", "reader")
_YES_NO: dict[str, bool] = {"true": True, "false": False, "yes": True, "no": False, "y": True, "n": False,
                            "1": True, "0": False}


def _token(text: str | None) -> str:
    """``" Local Control "`` -> ``"local_control"``: lower case, outer spaces off, inner spaces / hyphens ``_``."""
    return "_".join((text or "").strip().lower().replace("-", " ").split())


@dataclass(frozen=True)
class ReferenceRead:
    """One row of a reference read (``line``: its line number in the file, header = line 1)."""

    line: int
    lesion_id: str
    outcome: str
    patient_id: str | None = None
    j0_residual: bool | None = None
    reader: str | None = None


@dataclass(frozen=True)
class ReferenceReads:
    """A reference read file: its rows and which optional columns it has."""

    path: Path
    reads: tuple[ReferenceRead, ...]
    has_j0_residual: bool = False

    def outcomes(self) -> dict[str, str]:
        """lesion_id -> outcome value."""
        return {r.lesion_id: r.outcome for r in self.reads}

    def j0_residuals(self) -> dict[str, bool | None] | None:
        """lesion_id -> day-0 residual (None where left empty); None when the file has no such column."""
        return {r.lesion_id: r.j0_residual for r in self.reads} if self.has_j0_residual else None

    @property
    def readers(self) -> list[str]:
        """Distinct non-empty ``reader`` values, sorted."""
        return sorted({r.reader for r in self.reads if r.reader})


def read_reference_reads(path: Path) -> ReferenceReads:
    """Read a reference read CSV: one row per lesion, as radiologists classified it.

    Columns (header names are matched case- and space-insensitively, in any order):
    ``lesion_id`` and ``outcome`` required; ``patient_id``, ``j0_residual`` and ``reader``
    optional; any other column is ignored. The delimiter may be ``,``, ``;`` (spreadsheets in
    French / German locales) or a tab; a UTF-8 byte-order mark is accepted. ``outcome`` is one
    of ``local_control``, ``local_failure``, ``indeterminate``, tolerant of case, outer spaces
    and spaces / hyphens for ``_`` (``Local control`` is read as ``local_control``).
    ``j0_residual`` is ``true`` / ``false`` (also ``yes`` / ``no``, ``y`` / ``n``, ``1`` /
    ``0``) or empty (not read). Blank rows are skipped.

    Parameters
    ----------
    path : Path
        The CSV file.

    Returns
    -------
    ReferenceReads

    Raises
    ------
    ValueError
        If a required column is missing, or any row is wrong (empty ``lesion_id`` or
        ``outcome``, unknown outcome or ``j0_residual`` value, a ``lesion_id`` given twice):
        one message naming every bad row by its line number (header = line 1).
    OSError
        If the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save it as CSV UTF-8") from exc
    lines = text.splitlines()
    header = lines[0] if lines else ""
    delimiter = max((",", ";", "\t"), key=header.count) if header else ","
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        columns = [_token(c) for c in next(reader)]
    except StopIteration:
        raise ValueError(f"{path.name}: empty file (expected a header with lesion_id, outcome)") from None
    missing = [c for c in READS_REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)} (header: {', '.join(columns)}); "
                         f"expected {', '.join(READS_REQUIRED)} and optionally {', '.join(READS_OPTIONAL)}")
    where = {c: columns.index(c) for c in (*READS_REQUIRED, *READS_OPTIONAL) if c in columns}
    errors: list[str] = []
    first_line: dict[str, int] = {}
    reads: list[ReferenceRead] = []
    allowed = list(OUTCOMES)
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(name: str, row: list[str] = row) -> str:
            i = where.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        lesion_id, raw_outcome, raw_j0 = cell("lesion_id"), cell("outcome"), cell("j0_residual")
        outcome = _token(raw_outcome)
        problems: list[str] = []
        if not lesion_id:
            problems.append("lesion_id is empty")
        elif lesion_id in first_line:
            problems.append(f"lesion_id {lesion_id!r} already given on line {first_line[lesion_id]} "
                            "(one row per lesion: one file per reader, or a consensus read)")
        else:
            first_line[lesion_id] = line_no
        if not outcome:
            problems.append("outcome is empty (write indeterminate when the reader could not decide)")
        elif outcome not in allowed:
            problems.append(f"outcome {raw_outcome!r} is not one of {', '.join(allowed)}")
        j0: bool | None = None
        if raw_j0:
            j0 = _YES_NO.get(raw_j0.lower())
            if j0 is None:
                problems.append(f"j0_residual {raw_j0!r} is not true / false (or empty)")
        if problems:
            errors.append(f"line {line_no}: " + "; ".join(problems))
            continue
        reads.append(ReferenceRead(line_no, lesion_id, outcome, cell("patient_id") or None, j0,
                                   cell("reader") or None))
    if errors:
        shown = errors[:10] + ([f"... and {len(errors) - 10} more bad row(s)"] if len(errors) > 10 else [])
        raise ValueError(f"{path.name}: {len(errors)} bad row(s): " + " | ".join(shown))
    return ReferenceReads(path, tuple(reads), "j0_residual" in where)


@dataclass
class ReadsReport:
    """:func:`compare_reads`' result: ``as_dict()`` for JSON, :func:`format_reads_report` for a person."""

    reads_csv: Path
    results_dir: Path
    n_reference: int
    n_results: int
    readers: list[str]
    outcome: dict[str, Any]
    j0_residual: dict[str, Any] | None = None
    patient_mismatches: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def needs_a_look(self) -> bool:
        """True when a lesion is on one side only or unrated, or ids / patients disagree (exit code 1)."""
        tables = [self.outcome] + ([self.j0_residual] if self.j0_residual else [])
        unmatched = any(t[k] for t in tables for k in ("only_in_pipeline", "only_in_reference",
                                                        "unrated_pipeline"))
        return unmatched or bool(self.patient_mismatches or self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"reads_csv": str(self.reads_csv), "results_dir": str(self.results_dir),
                "n_reference_lesions": self.n_reference, "n_result_lesions": self.n_results,
                "readers": list(self.readers), "outcome_agreement": self.outcome,
                "j0_residual_agreement": self.j0_residual, "patient_mismatches": list(self.patient_mismatches),
                "problems": list(self.problems), "needs_a_look": self.needs_a_look}


def compare_reads(reads_csv: Path, results_dir: Path) -> ReadsReport:
    """Compare ``results_dir/lesions.csv`` with a reference read (:func:`read_reference_reads`).

    Outcomes: confusion matrix (rows = reference read, columns = pipeline), observed agreement,
    Cohen's kappa with its large-sample standard error and 95 % CI
    (:func:`pipeline.response.cohort.cohens_kappa`), per-class counts, the disagreeing lesions;
    the same for ``j0_residual`` when the read has that column. Lesions present in only one file,
    and lesions one side left unrated, are listed by id, never dropped; a ``patient_id`` of the
    read that differs from the results' is listed too.

    Raises
    ------
    FileNotFoundError
        If ``reads_csv`` or ``results_dir/lesions.csv`` does not exist.
    ValueError
        If the read is malformed (see :func:`read_reference_reads`) or ``lesions.csv`` has no
        ``lesion_id`` / ``outcome`` column.
    """
    from pipeline.response.cohort import BOOLEAN_LABELS, agreement

    reads_csv, results_dir = Path(reads_csv), Path(results_dir)
    if not reads_csv.is_file():
        raise FileNotFoundError(f"reads file {reads_csv} does not exist")
    lesions_csv = results_dir / "lesions.csv"
    if not lesions_csv.is_file():
        raise FileNotFoundError(f"results folder {results_dir} has no lesions.csv")
    reference = read_reference_reads(reads_csv)
    with lesions_csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        fields = reader.fieldnames or []
    if "lesion_id" not in fields or "outcome" not in fields:
        raise ValueError(f"{lesions_csv} has no lesion_id / outcome column: not a crav run output")
    problems: list[str] = []
    pipeline_outcome: dict[str, str | None] = {}
    pipeline_j0: dict[str, bool | None] = {}
    pipeline_patient: dict[str, str] = {}
    for line_no, r in enumerate(rows, start=2):
        lid = (r.get("lesion_id") or "").strip()
        outcome = _text(r.get("outcome"))
        if outcome not in OUTCOMES:
            problems.append(f"lesions.csv line {line_no}: outcome {outcome!r} is not an outcome; "
                            f"lesion {lid!r} counted as unrated by the pipeline")
            outcome = None
        pipeline_outcome[lid] = outcome
        pipeline_j0[lid] = _boolean(r.get("j0_residual"))
        pipeline_patient[lid] = (r.get("patient_id") or "").strip()
    out = agreement(pipeline_outcome, reference.outcomes())
    j0_ref = reference.j0_residuals()
    j0 = agreement(pipeline_j0, j0_ref, labels=BOOLEAN_LABELS) if j0_ref is not None else None
    mismatches = [{"lesion_id": r.lesion_id, "reference_patient_id": r.patient_id,
                   "results_patient_id": pipeline_patient[r.lesion_id]}
                  for r in reference.reads
                  if r.patient_id and r.lesion_id in pipeline_patient and r.patient_id != pipeline_patient[r.lesion_id]]
    folded = {k.casefold(): k for k in out["only_in_pipeline"]}
    for lid in out["only_in_reference"]:
        if lid.casefold() in folded:
            problems.append(f"lesion {lid!r} of the read matches {folded[lid.casefold()]!r} of the results only "
                            "when case is ignored: identifiers are compared exactly")
    return ReadsReport(reads_csv, results_dir, len(reference.reads), len(rows), reference.readers, out, j0,
                       mismatches, problems)


def _format_agreement(agree: Mapping[str, Any], what: str) -> list[str]:
    labels, matrix = agree["labels"], agree["matrix"]
    width = max(len(x) for x in (*labels, "reference \\ pipeline", "total"))
    cell = max(6, *(len(x) for x in labels))
    lines = [f"{what}: rows = reference read, columns = pipeline",
             "reference \\ pipeline".ljust(width) + "  " + "  ".join(x.rjust(cell) for x in (*labels, "total"))]
    for label, row in zip(labels, matrix, strict=True):
        lines.append(label.ljust(width) + "  " + "  ".join(str(c).rjust(cell) for c in (*row, sum(row))))
    cols = [sum(row[j] for row in matrix) for j in range(len(labels))]
    lines.append("total".ljust(width) + "  " + "  ".join(str(c).rjust(cell) for c in (*cols, sum(cols))))
    correct = sum(matrix[i][i] for i in range(len(labels)))
    if agree["n"]:
        lines.append(f"observed agreement  {agree['observed_agreement']:.1%} ({correct}/{agree['n']}); "
                     f"chance agreement {agree['chance_agreement']:.1%}")
    else:
        lines.append("observed agreement  n/a (no lesion rated on both sides)")
    if agree["kappa"] is None:
        lines.append("Cohen's kappa       n/a (undefined: no lesion, or one single category on both sides)")
    else:
        low, high = agree["kappa_ci95"]
        lines.append(f"Cohen's kappa       {agree['kappa']:.3f} (SE {agree['kappa_se']:.3f}, 95 % CI {low:.3f} "
                     f"to {high:.3f}; Fleiss, Cohen & Everitt 1969 large-sample SE)")
    lines.append("per class           " + "; ".join(
        f"{k}: reference {v['reference']}, pipeline {v['pipeline']}, both {v['agree']}"
        for k, v in agree["per_class"].items()))
    if agree["disagreements"]:
        lines.append(f"disagreements ({len(agree['disagreements'])}):")
        lines += [f"  - {d['lesion_id']}: reference {d['reference']}, pipeline {d['pipeline']}"
                  for d in agree["disagreements"]]
    from pipeline.response.cohort import UNMATCHED

    for key, label in UNMATCHED:
        ids = agree.get(key) or []
        if ids or key.startswith("only_in"):  # one-sided lesions always shown, even when none
            lines.append(f"{label} ({len(ids)}): " + (", ".join(ids) if ids else "none"))
    return lines


def format_reads_report(report: ReadsReport) -> str:
    """The comparison with a reference read as plain text for a person."""
    readers = f" (reader(s): {', '.join(report.readers)})" if report.readers else ""
    lines = [f"Comparison of {report.results_dir / 'lesions.csv'} with the reference read {report.reads_csv}"
             f"{readers}", "", f"lesions: {report.n_reference} in the read, {report.n_results} in the results, "
             f"{report.outcome['n'] + len(report.outcome['unrated_pipeline'])} in both", ""]
    lines += _format_agreement(report.outcome, "Outcome")
    if report.j0_residual is not None:
        lines += ["", *_format_agreement(report.j0_residual, "Day-0 residual (j0_residual)")]
    else:
        lines += ["", "Day-0 residual: the read has no j0_residual column"]
    if report.patient_mismatches:
        lines += ["", f"patient_id differs ({len(report.patient_mismatches)}):"]
        lines += [f"  - {m['lesion_id']}: read {m['reference_patient_id']}, results {m['results_patient_id']}"
                  for m in report.patient_mismatches]
    if report.problems:
        lines += ["", f"{len(report.problems)} problem(s):", *(f"  - {p}" for p in report.problems)]
    return "\n".join(lines)
