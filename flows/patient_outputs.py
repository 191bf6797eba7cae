"""What one lesion writes: masks, transforms, table rows, overlays, DICOM SEG and SR; and its verdict.

Called once a lesion has been analysed at every visit (:func:`flows.patient.analyse_lesion`).
The masks, the transforms and the verdict are the results: a failure there is a failure of the
lesion. The overlays and the DICOM objects are views of those results: when one cannot be
written (a source series highdicom refuses, say), the lesion keeps its results and the reason
goes into the run's problems, so that nothing else is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline import __version__
from pipeline.domain import Lesion, LesionResult, VisitMeasurement, visit_label
from pipeline.ingest.catalog import PatientIndex
from pipeline.outputs.dicom_seg import write_seg
from pipeline.outputs.dicom_sr import write_sr
from pipeline.outputs.nifti import write_mask_nifti
from pipeline.outputs.overlay_png import TimelineVisit, write_timeline, write_visit_overlay
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.provenance import build_provenance, write_provenance
from pipeline.outputs.report import PatientReport, ReportLesion, ReportSeries, write_report
from pipeline.outputs.transforms import write_transform
from pipeline.response import classify, height
from pipeline.segmentation import registration
from pipeline.segmentation.common import centroid_mm, same_grid
from pipeline.settings import Settings

if TYPE_CHECKING:
    from flows.patient import LesionAnalysis, LesionVisitResult, PatientOutcome, PatientPlan, StudyImages

log = logging.getLogger(__name__)

T = TypeVar("T")

#: qa_status of a visit a reviewer excluded: measured and kept in measurements.csv, not used in the verdict
EXCLUDED = "excluded"


@dataclass
class LesionWritten:
    """One lesion's verdict, table rows and last follow-up date, and the files written for it."""

    result: LesionResult
    rows: list[VisitMeasurement]
    last_follow_up: dt.date | None
    files: list[Path]
    timeline_png: Path | None = None
    visit_pngs: list[tuple[str, Path]] = field(default_factory=list)  # (visit label, overlay PNG)
    problems: list[str] = field(default_factory=list)  # views that could not be written, with the reason


def lesion_folder(out_dir: Path, les: Lesion) -> Path:
    return out_dir / "patients" / safe_path_component(les.patient_id) / safe_path_component(les.lesion_id)


def write_lesion(analysis: LesionAnalysis, out_dir: Path, settings: Settings,
                 excluded_visits: frozenset[str] = frozenset()) -> LesionWritten:
    """Write one lesion's masks, transforms, overlays and DICOM SEG / SR; classify it.

    ``excluded_visits``: visit labels a QA reviewer excluded; they are written and kept in the
    table (``qa_status`` ``excluded``) but the verdict does not use them.
    """
    les, j0 = analysis.lesion, analysis.j0
    folder = lesion_folder(out_dir, les)
    result, rows = _classify_and_rows(les, analysis.per_visit, j0, settings, excluded_visits)
    written = LesionWritten(result, rows, None, [])
    for lv, row in zip(analysis.per_visit, written.rows, strict=True):
        label = visit_label(lv.visit.visit, lv.visit.days_from_procedure)
        vdir = folder / label
        written.files.extend(_write_masks(lv, vdir))
        title = f"{les.lesion_id} {les.level}  {label}  {lv.study.study_date or 'date unknown'}"
        png = _view(written, f"{label} overlay", partial(_write_overlay, lv, vdir, title))
        if png is not None:
            written.visit_pngs.append((label, png))
        seg = _view(written, f"{label} DICOM SEG", partial(_write_seg, les, lv, vdir, label))
        if seg is not None:  # kept even when its SR fails
            written.files.append(vdir / "seg.dcm")
            if _view(written, f"{label} DICOM SR", partial(
                    write_sr, vdir / "sr.dcm", seg, lv.study.t1_files, row, lesion=les, timepoint=label,
                    software_version=__version__)) is not None:
                written.files.append(vdir / "sr.dcm")
    written.timeline_png = _view(written, "timeline", partial(_write_timeline, les, analysis.per_visit, j0, folder))
    for png in [written.timeline_png, *(p for _, p in written.visit_pngs)]:
        if png is not None:
            written.files.extend([png, png.with_suffix(".json")])
    fu = [lv.study.study_date for lv in analysis.per_visit if lv.visit.visit.is_follow_up and lv.study.study_date
          and visit_label(lv.visit.visit, lv.visit.days_from_procedure) not in excluded_visits]
    written.last_follow_up = max(fu) if fu else None
    return written


def _view(written: LesionWritten, what: str, make: Callable[[], T]) -> T | None:
    """Run one view writer; a failure becomes a problem of the lesion (None), never a lost result."""
    try:
        return make()
    except Exception as e:  # a view must never cost the lesion its results: record why, go on
        log.error("%s not written: %s", what, type(e).__name__)
        written.problems.append(f"{written.result.lesion.lesion_id} {what} not written: {type(e).__name__}: {e}")
        return None


def _masks(lv: LesionVisitResult) -> dict[str, sitk.Image | None]:
    return {"vertebra": lv.body, "cement": lv.cement_mask, "residual": lv.residual, "ablation": lv.ablation}


def _write_masks(lv: LesionVisitResult, vdir: Path) -> list[Path]:
    files: list[Path] = []
    for name, mask in _masks(lv).items():
        if isinstance(mask, sitk.Image):
            write_mask_nifti(vdir / f"{name}.nii.gz", mask)
            files.append(vdir / f"{name}.nii.gz")
    if lv.to_j0 is not None:
        files.append(write_transform(vdir / "to_j0.tfm", lv.to_j0))
    return files


def _centre_mm(lv: LesionVisitResult) -> tuple[float, float, float] | None:
    """The treated body's centroid at this visit (its cement's when the body was not segmented)."""
    for mask in (lv.body, lv.cement_mask):
        if mask is not None:
            arr = sitk.GetArrayFromImage(mask).astype(bool)
            if arr.any():
                c = centroid_mm(arr, mask)
                return (float(c[0]), float(c[1]), float(c[2]))
    return None


def _write_overlay(lv: LesionVisitResult, vdir: Path, title: str) -> Path:
    centre = _centre_mm(lv)
    if centre is None:
        raise ValueError("neither the vertebral body nor the cement was segmented at this visit")
    path = vdir / "overlay.png"
    write_visit_overlay(path, lv.study.t1, _masks(lv), centre, title=title)
    return path


def _write_timeline(les: Lesion, per_visit: list[LesionVisitResult], j0: LesionVisitResult, folder: Path) -> Path:
    centre = _centre_mm(j0)
    if centre is None:
        raise ValueError("the J0 vertebral body was not segmented")
    visits = [TimelineVisit(visit_label(lv.visit.visit, lv.visit.days_from_procedure), lv.study.t1, _masks(lv),
                            None if lv is j0 else lv.to_j0, lv.visit.days_from_procedure)
              for lv in per_visit if lv is j0 or lv.to_j0 is not None]
    path = folder / "timeline.png"
    write_timeline(path, visits, centre, title=f"{les.lesion_id} {les.level}: every visit registered to J0")
    return path


def _write_seg(les: Lesion, lv: LesionVisitResult, vdir: Path, label: str) -> Dataset:
    """``seg.dcm`` on the visit's T1 grid, residual and ablation resampled onto it (nearest neighbour)."""
    if not lv.study.t1_files:
        raise ValueError("the T1 series' files are not known")
    t1 = lv.study.t1
    arrays: dict[str, np.ndarray] = {}
    for name, mask in _masks(lv).items():
        if mask is None:
            continue
        on_t1 = mask if same_grid(mask, t1) else registration.resample_to(t1, mask, None, nearest=True)
        arrays[name] = sitk.GetArrayFromImage(on_t1).astype(bool)
    if not any(a.any() for a in arrays.values()):
        raise ValueError("no structure was segmented at this visit")
    return write_seg(vdir / "seg.dcm", lv.study.t1_files, t1, arrays, lesion_id=les.lesion_id, level=les.level,
                     timepoint=label, software_version=__version__)


def _classify_and_rows(les: Lesion, per_visit: list[LesionVisitResult], j0: LesionVisitResult, settings: Settings,
                       excluded: frozenset[str]) -> tuple[LesionResult, list[VisitMeasurement]]:
    rows: list[VisitMeasurement] = []
    summaries: list[classify.VisitSummary] = []
    for lv in per_visit:
        m = lv.measurement
        loss_pct = loss_mm = None
        if lv.heights is not None and j0.heights is not None:
            loss_pct = height.height_loss_pct(j0.heights, lv.heights)
            loss_mm = height.height_loss_mm(j0.heights, lv.heights)
        tp = lv.visit.visit
        label = visit_label(tp, lv.visit.days_from_procedure)
        notes = list(lv.notes + lv.study.notes)
        if label in excluded:
            qa = EXCLUDED
            notes.append("excluded from the verdict by a QA review")
        else:
            qa = "needs_review" if notes else "pending"
        grade = m.get("genant_grade")
        genant = grade if isinstance(grade, int) else None
        rows.append(VisitMeasurement(
            patient_id=les.patient_id, lesion_id=les.lesion_id, timepoint=tp, study_date=lv.study.study_date,
            days_from_procedure=lv.visit.days_from_procedure,
            cement_volume_ml=_f(m.get("cement_volume_ml")),
            residual_enhancing_volume_ml=_f(m.get("residual_enhancing_volume_ml")),
            ablation_zone_volume_ml=_f(m.get("ablation_zone_volume_ml")),
            max_relative_enhancement=_f(m.get("max_relative_enhancement")),
            time_to_peak_s=_f(m.get("time_to_peak_s")), ktrans_per_min=_f(m.get("ktrans_per_min")),
            height_anterior_mm=_f(m.get("height_anterior_mm")), height_middle_mm=_f(m.get("height_middle_mm")),
            height_posterior_mm=_f(m.get("height_posterior_mm")), height_loss_pct=loss_pct,
            genant_grade=genant,
            registration_error_mm=_f(m.get("registration_error_mm")), qa_status=qa,
            notes=tuple(notes),
        ))
        if label in excluded:
            continue
        summaries.append(classify.VisitSummary(
            visit=tp, days_from_procedure=lv.visit.days_from_procedure,
            residual_ml=_f(m.get("residual_enhancing_volume_ml")), new_nodule_ml=lv.new_nodule_ml,
            height_loss_pct=loss_pct, height_loss_mm=loss_mm,
            genant_grade=genant,
        ))
    verdict = classify.classify_lesion(summaries, settings=settings)
    result = LesionResult(les, verdict.j0_residual, verdict.j0_residual_volume_ml, verdict.outcome,
                          verdict.failure_timepoint, verdict.baseline_fracture, verdict.height_loss,
                          verdict.max_height_loss_pct, verdict.reason)
    return result, rows


def _f(x: object) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def series_roles(images: Mapping[str, StudyImages | str]) -> dict[str, list[str]]:
    """SeriesInstanceUID -> what the analysis used it as (``T1``, ``STIR``, ``DCE``)."""
    roles: dict[str, list[str]] = {}
    for img in images.values():
        if isinstance(img, str):
            continue
        for role, uids in img.series_used.items():
            for uid in uids.split(","):  # a DCE split into one series per phase lists them all
                roles.setdefault(uid, []).append(role)
    return roles


def write_patient_documents(index: PatientIndex, plan: PatientPlan, images: Mapping[str, StudyImages | str],
                            analysed: Sequence[LesionResult | LesionWritten], outcome: PatientOutcome,
                            out_dir: Path, settings: Settings) -> list[Path]:
    """``provenance.json`` and ``report.html`` of one patient; returns the files written.

    Written after every lesion of the patient, from what they wrote (their overlays go into the
    report). The registry's lesions that were decided without images get their section too.
    """
    folder = out_dir / "patients" / safe_path_component(index.patient_id)
    roles = series_roles(images)
    lesions = [r.lesion for r in outcome.results]
    corrections = {lid: c.to_json() for lid, c in plan.corrections.items() if c}
    provenance = build_provenance(index, lesions, roles, settings.analysis_dict(), corrections)
    files = [write_provenance(folder / "provenance.json", provenance)]
    written = {item.result.lesion.lesion_id: item for item in analysed if isinstance(item, LesionWritten)}
    sections = []
    for res in outcome.results:
        item = written.get(res.lesion.lesion_id)
        rows = [m for m in outcome.measurements if m.lesion_id == res.lesion.lesion_id]
        sections.append(ReportLesion(res, rows, item.timeline_png if item else None,
                                     list(item.visit_pngs) if item else []))
    series = [ReportSeries(rec.series_uid, rec.study_date, rec.series_number, rec.modality, rec.description,
                           rec.role.value, rec.role_reason, rec.series_uid in roles)
              for rec in sorted(index.series, key=lambda r: (r.study_date or dt.date.min, r.series_number or 0,
                                                             r.series_uid))]
    report = PatientReport(index.patient_id, sections, series, outcome.problems, provenance)
    try:
        write_report(folder / "report.html", report)
    except OSError:
        raise  # storage: the task retries
    except Exception as e:  # the report is a view of the results: its failure must not cost them
        log.error("report.html not written: %s", type(e).__name__)
        outcome.problems.append(f"patient {index.patient_id}: report.html not written: {type(e).__name__}: {e}")
        return files
    files.append(folder / "report.html")
    return files
