"""One patient end to end: studies -> visits -> volumes -> masks -> measurements -> verdicts.

Plain functions (no Prefect): the flow wraps :func:`process_patient` in one task per patient.
Everything that reads DICOM goes through ``pipeline.ingest``, everything written goes through
``pipeline.outputs``; the maths is in ``pipeline.segmentation`` and ``pipeline.response``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from flows.patient_outputs import LesionWritten, write_lesion, write_patient_documents
from pipeline.domain import Lesion, LesionResult, Outcome, SeriesRole, Visit, VisitMeasurement, level_index
from pipeline.ingest.catalog import PatientIndex, SeriesRecord
from pipeline.ingest.visits import VisitAssignment, assign_visits
from pipeline.ingest.volumes import VolumeError, load_dynamic, load_volume
from pipeline.response import dce_region, enhancement, height
from pipeline.review.store import Corrections
from pipeline.segmentation import ablation, cement, registration, vertebra
from pipeline.segmentation.common import mask_image, overlap_share, physical_coordinates
from pipeline.settings import Settings

log = logging.getLogger(__name__)

_REVIEW_SEED_RADIUS_MM = 5.0  # a reviewer's seed point grows the vertebral body from a ball this size
_REVIEW_SEED_MAX_MM = 25.0  # a reviewer's seed picks the J0 cement mass within this distance (half a lumbar level)
_SAME_MASS_MAX_MM = 25.0  # a later visit's cement mass lies within this of the J0 one (scanner coordinates)


@dataclass
class StudyImages:
    """The volumes of one MR study that the analysis uses (loaded once, shared by its lesions)."""

    study_uid: str
    study_date: dt.date | None
    t1: sitk.Image
    stir: sitk.Image | None
    dce_phases: list[sitk.Image] | None
    dce_times_s: np.ndarray | None
    series_used: dict[str, str]
    dce_tr_s: float | None = None  # RepetitionTime of the DCE, for signal to concentration
    dce_flip_deg: float | None = None
    notes: list[str] = field(default_factory=list)
    cement: cement.CementResult | None = None
    maps: enhancement.EnhancementMaps | None = None  # on the DCE grid
    enhancing: np.ndarray | None = None  # on the DCE grid
    max_re: np.ndarray | None = None
    time_to_peak_s: np.ndarray | None = None
    stir_on_dce: sitk.Image | None = None
    dce_array: np.ndarray | None = None  # phases as one (T, z, y, x) array, made once per study
    t1_files: tuple[Path, ...] = ()  # the T1's DICOM files: the source images of the DICOM SEG


@dataclass
class PatientOutcome:
    """What one patient contributes to the cohort tables."""

    patient_id: str
    results: list[LesionResult]
    measurements: list[VisitMeasurement]
    problems: list[str]
    last_follow_up: dict[str, dt.date]
    series_used: list[str]
    failed: bool = False  # an unexpected error: nothing is saved, the next run tries again


def _pick(series: list[SeriesRecord], role: SeriesRole) -> SeriesRecord | None:
    cands = [s for s in series if s.role == role]
    return max(cands, key=lambda s: (s.n_files, s.series_uid)) if cands else None


class SeriesFiles(Protocol):
    """Where a study's files are listed: a :class:`PatientIndex` in the flow, the catalog itself in tools."""

    def files(self, series_uid: str) -> list[Path]: ...

    def dynamic_files(self, group_id: str) -> list[Path]: ...


def load_study(catalog: SeriesFiles, study_uid: str, study_date: dt.date | None, series: list[SeriesRecord]
                ) -> StudyImages | str:
    """Load T1 (required), STIR and the DCE of a study; a string is the reason it cannot be used."""
    t1_rec = _pick(series, SeriesRole.T1)
    if t1_rec is None:
        return "no sagittal T1 series in the study"
    used = {"T1": t1_rec.series_uid}
    try:
        t1 = load_volume(catalog.files(t1_rec.series_uid))
    except VolumeError as e:
        return f"T1 series {t1_rec.series_number} unusable: {e}"
    notes: list[str] = []
    stir = None
    stir_rec = _pick(series, SeriesRole.STIR)
    if stir_rec is not None:
        try:
            stir = load_volume(catalog.files(stir_rec.series_uid))
            used["STIR"] = stir_rec.series_uid
        except VolumeError as e:
            notes.append(f"STIR unusable: {e}")
    phases = times = None
    tr_s = flip_deg = None
    dce = [s for s in series if s.role == SeriesRole.DCE]
    if dce:
        groups = {s.dynamic_group for s in dce if s.dynamic_group}
        try:
            if groups:
                files = catalog.dynamic_files(sorted(groups)[0])
            else:
                rec = max(dce, key=lambda s: s.n_files)
                files = catalog.files(rec.series_uid)
            dyn = load_dynamic(files)
            phases, times = dyn.phases, np.asarray(dyn.times_s, dtype=float)
            tr_s, flip_deg = dyn.repetition_time_s, dyn.flip_angle_deg
            if tr_s is None or flip_deg is None:
                notes.append("DCE headers lack RepetitionTime or FlipAngle: Ktrans not computed")
            used["DCE"] = ",".join(sorted({s.series_uid for s in dce}))
        except VolumeError as e:
            notes.append(f"DCE unusable: {e}")
    else:
        notes.append("no DCE series: residual enhancement not measured")
    # the series of one visit are combined through their DICOM geometry: check it holds
    if stir is not None and stir_rec is not None and not _same_space(t1_rec, t1, stir_rec, stir, "STIR", notes):
        stir = None
        used.pop("STIR", None)
    if phases is not None and not _same_space(t1_rec, t1, dce[0], phases[0], "DCE", notes):
        phases = times = None
        used.pop("DCE", None)
    return StudyImages(study_uid, study_date, t1, stir, phases, times, used, tr_s, flip_deg, notes,
                       t1_files=tuple(catalog.files(t1_rec.series_uid)))


def _same_space(t1_rec: SeriesRecord, t1: sitk.Image, rec: SeriesRecord, image: sitk.Image, name: str,
                notes: list[str]) -> bool:
    """False (with a note) when a series does not cover the T1's anatomy; a note when its frame differs."""
    share = overlap_share(t1, image)
    if share < 0.2:
        notes.append(f"{name} series {rec.series_number} lies outside the T1's field of view "
                     f"({share:.0%} of it overlaps): not used")
        return False
    if rec.frame_of_reference_uid and t1_rec.frame_of_reference_uid and (
            rec.frame_of_reference_uid != t1_rec.frame_of_reference_uid):
        notes.append(f"{name} series {rec.series_number} has another frame of reference than the T1: "
                     "combined through the scanner coordinates as they are; check the overlay")
    return True


def _enhancement(img: StudyImages, settings: Settings) -> None:
    if img.dce_phases is None or img.dce_times_s is None or img.enhancing is not None:
        return
    arr = np.stack([sitk.GetArrayFromImage(p).astype(np.float64) for p in img.dce_phases])
    img.dce_array = arr.astype(np.float32)  # kept for Ktrans (the signal is integer: float32 is exact)
    maps = enhancement.relative_enhancement(arr, img.dce_times_s)
    img.maps = maps
    img.enhancing = enhancement.enhancing_mask(maps, re_threshold=settings.enhancement_re_threshold,
                                               noise_sigmas=settings.enhancement_noise_sigmas)
    s_pre = maps.s_pre if maps.s_pre is not None else arr[: maps.n_pre].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        re_t = np.where(s_pre[None] > 0, (arr - s_pre[None]) / s_pre[None], 0.0)
    img.max_re = re_t.max(axis=0)
    peak = np.argmax(arr, axis=0)
    img.time_to_peak_s = img.dce_times_s[peak] - img.dce_times_s[min(maps.arrival_index, len(img.dce_times_s) - 1)]


def _sphere_seed(reference: sitk.Image, centre_mm: tuple[float, float, float], radius_mm: float) -> sitk.Image:
    x, y, z = physical_coordinates(reference)
    cx, cy, cz = centre_mm
    return mask_image((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius_mm**2, reference)


def _spacing_zyx(img: sitk.Image) -> tuple[float, float, float]:
    sx, sy, sz = img.GetSpacing()
    return (sz, sy, sx)


@dataclass
class LesionVisitResult:
    visit: VisitAssignment
    study: StudyImages
    body: sitk.Image | None = None
    cement_mask: sitk.Image | None = None
    residual: sitk.Image | None = None
    ablation: sitk.Image | None = None
    new_nodule_ml: float = 0.0
    heights: height.Heights | None = None
    to_j0: sitk.Transform | None = None  # J0 physical space -> this visit's physical space
    measurement: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _analyse(lv: LesionVisitResult, seed: sitk.Image, is_pre: bool, j0: LesionVisitResult | None,
             transform: sitk.Transform | None, settings: Settings) -> None:
    img = lv.study
    muscle = img.cement.muscle_signal if img.cement is not None else None
    body = vertebra.segment_body(img.t1, seed, stir=img.stir, muscle_signal=muscle)
    if not body.ok:
        lv.notes.append(f"vertebral body: {body.reason}")
    lv.body = body.mask
    arr = sitk.GetArrayFromImage(body.mask).astype(bool)
    if arr.any():
        try:
            lv.heights = height.vertebral_heights(arr, _spacing_zyx(body.mask),
                                                  np.asarray(body.mask.GetDirection()).reshape(3, 3))
        except ValueError as e:
            lv.notes.append(f"heights not measured: {e}")
    m = lv.measurement
    if lv.heights is not None:
        m["height_anterior_mm"] = lv.heights.anterior_mm
        m["height_middle_mm"] = lv.heights.middle_mm
        m["height_posterior_mm"] = lv.heights.posterior_mm
        m["genant_grade"] = height.genant_grade(lv.heights)
    if is_pre or lv.cement_mask is None:
        return
    cm_arr = sitk.GetArrayFromImage(lv.cement_mask).astype(bool)
    m["cement_volume_ml"] = float(cm_arr.sum()) * float(np.prod(lv.cement_mask.GetSpacing())) / 1000.0
    if j0 is not None and j0 is not lv and j0.cement_mask is not None and transform is not None:
        m["registration_error_mm"] = registration.cement_surface_distance_mm(j0.cement_mask, lv.cement_mask,
                                                                             transform)
    _enhancement(img, settings)
    if img.enhancing is None or img.dce_phases is None or img.maps is None:
        return
    grid = img.dce_phases[0]
    body_d = registration.resample_to(grid, body.mask, None, nearest=True)
    cem_d = registration.resample_to(grid, lv.cement_mask, None, nearest=True)
    roi = sitk.GetArrayFromImage(ablation.residual_roi(body_d, cem_d, settings.residual_margin_mm)).astype(bool)
    sp = _spacing_zyx(grid)
    residual = enhancement.residual_mask(img.maps, roi, sp, re_threshold=settings.enhancement_re_threshold,
                                         noise_sigmas=settings.enhancement_noise_sigmas,
                                         rim_mm=settings.rim_max_thickness_mm,
                                         peak_fraction=settings.residual_peak_fraction,
                                         peak_radius_mm=settings.residual_peak_radius_mm)
    m["residual_enhancing_volume_ml"] = enhancement.residual_volume_ml(residual, sp)
    lv.residual = mask_image(residual, grid)
    if img.stir is not None and img.stir_on_dce is None:  # once per study, whatever its number of lesions
        img.stir_on_dce = registration.resample_to(grid, img.stir, None, nearest=False)
    stir_muscle = img.cement.muscle_stir if img.cement is not None else None
    abl = ablation.segment_ablation_zone(body_d, cem_d, mask_image(img.enhancing, grid), img.stir_on_dce,
                                         stir_muscle=stir_muscle)
    abl_arr = sitk.GetArrayFromImage(abl).astype(bool)
    m["ablation_zone_volume_ml"] = enhancement.residual_volume_ml(abl_arr, sp)
    lv.ablation = abl
    region = residual if residual.any() else abl_arr
    if img.max_re is not None and img.time_to_peak_s is not None and region.any():
        m["max_relative_enhancement"] = float(np.percentile(img.max_re[region], 90))
        m["time_to_peak_s"] = float(max(np.median(img.time_to_peak_s[region]), 0.0))
    if region.any():
        _ktrans(lv, region, settings)
    if j0 is not None and j0 is not lv and j0.residual is not None and transform is not None:
        j0_res = registration.resample_to(grid, _enhancing_at_j0(j0.residual, j0.study), transform.GetInverse(),
                                         nearest=True)
        nodules = enhancement.new_nodules(residual, sitk.GetArrayFromImage(j0_res).astype(bool), sp,
                                          min_ml=settings.new_nodule_ml)
        lv.new_nodule_ml = max(nodules, default=0.0)


def _enhancing_at_j0(residual: sitk.Image, img: StudyImages) -> sitk.Image:
    """What already enhanced at J0: its residual, and any enhancing tissue of its DCE field of view.

    A nodule is new when it overlaps none of it: tissue that enhanced from the start (a vessel,
    another level's tumour) may drift into this body's 10 mm margin with the patient's
    repositioning, without being new.
    """
    if img.enhancing is None or img.dce_phases is None or img.enhancing.shape != residual.GetSize()[::-1]:
        return residual
    return mask_image(sitk.GetArrayFromImage(residual).astype(bool) | img.enhancing, img.dce_phases[0])


def _ktrans(lv: LesionVisitResult, region: np.ndarray, settings: Settings) -> None:
    """Extended-Tofts Ktrans of the region's median curve (Parker AIF at the detected bolus arrival).

    Extended, because residual tumour is vascular (vp > 0 biases a standard-Tofts Ktrans upwards);
    without a T1 map the SPEC's assumed T10 is used, which biases Ktrans when the tissue's own T10
    differs (see benchmarks/RESULTS.md).
    """
    img = lv.study  # _enhancement has stacked the phases into dce_array
    if img.dce_array is None or img.dce_times_s is None or img.dce_tr_s is None or img.dce_flip_deg is None:
        return
    fit = dce_region.region_tofts(img.dce_array, img.dce_times_s, region, tr_s=img.dce_tr_s,
                                  flip_deg=img.dce_flip_deg, assumed_t10_ms=settings.assumed_t10_ms, extended=True,
                                  r1_per_mM_s=settings.relaxivity_per_mm_s, hematocrit=settings.hematocrit,
                                  noise_sigma=img.maps.noise_sigma if img.maps is not None else None,
                                  ktrans_max_per_min=settings.ktrans_max_per_min, ve_min=settings.ve_min,
                                  ve_max=settings.ve_max, vp_max=settings.vp_max)
    if fit.reason:  # e.g. an ablation zone that does not enhance: the column stays empty, no QA flag
        log.debug("Ktrans not computed: %s", fit.reason)
    elif np.isfinite(fit.ktrans_per_min):
        lv.measurement["ktrans_per_min"] = fit.ktrans_per_min


@dataclass
class PatientPlan:
    """What one patient's analysis will do: the MR studies to read and, per lesion, its visits."""

    patient_id: str
    lesions: list[Lesion]  # vertebral lesions, cranio-caudal order, each with a J0 study
    study_dates: dict[str, dt.date | None]  # MR studies to read (those of some lesion's visits)
    visits: dict[str, dict[str, VisitAssignment]]  # lesion_id -> study_uid -> visit
    vertebral: list[Lesion]  # every vertebral lesion of the patient (the cement masses are shared by level)
    done: list[LesionResult]  # lesions already decided without images (non-vertebral, no J0 study, no series)
    problems: list[str] = field(default_factory=list)
    corrections: dict[str, Corrections] = field(default_factory=dict)  # lesion_id -> a QA reviewer's corrections


def plan_patient(index: PatientIndex, lesions: list[Lesion],
                 corrections: Mapping[str, Corrections] | None = None) -> PatientPlan:
    """The studies each lesion's visits need, from the catalog's index alone (no image is read).

    ``corrections``: lesion_id -> what a QA reviewer corrected (a moved vertebra seed is used by
    :func:`analyse_lesion`, excluded visits by :func:`write_lesion`).
    """
    if not index.series:
        reason = f"{index.missing_reason or 'no usable DICOM series'}: check the registry's patient_id against " \
                 "the PACS export"
        return PatientPlan(index.patient_id, [], {}, {}, [], [_indeterminate(les, reason) for les in lesions],
                           [f"patient {index.patient_id}: {reason}"])
    mr_dates = {st.study_uid: st.study_date for st in index.studies
                if any(s.study_uid == st.study_uid and s.role == SeriesRole.T1 for s in index.series)}
    ordered = sorted(lesions, key=lambda les: (level_index(les.level) if les.is_vertebral else 99, les.lesion_id))
    plan = PatientPlan(index.patient_id, [], {}, {}, [les for les in ordered if les.is_vertebral], [],
                       corrections=dict(corrections or {}))
    dates = {uid: d for uid, d in mr_dates.items() if d is not None}
    for les in ordered:
        if not les.is_vertebral:
            plan.done.append(_indeterminate(les, f"non-vertebral site {les.level}: this version segments vertebral "
                                                 "bodies only"))
            continue
        visits = assign_visits(dates, les.procedure_date)
        if not any(a.visit == Visit.J0 for a in visits.values()):
            plan.done.append(_indeterminate(les, "no MR study in the J0 window (day 0 to +2)"))
            continue
        plan.lesions.append(les)
        plan.visits[les.lesion_id] = visits
        plan.study_dates.update({uid: mr_dates[uid] for uid in visits})
    return plan


def read_study(index: PatientIndex, study_uid: str, study_date: dt.date | None) -> StudyImages | str:
    """Read the volumes of one MR study (I/O only); a string is the reason the study cannot be used."""
    return load_study(index, study_uid, study_date, [s for s in index.series if s.study_uid == study_uid])


def prepare_study(img: StudyImages | str, settings: Settings, post_treatment: bool) -> StudyImages | str:
    """The study-level analysis every lesion of the study shares: cement, and for a treated spine the DCE maps.

    Done once per study before any lesion looks at it, so that the lesions of a patient can then
    be analysed concurrently without writing to the study.
    """
    if isinstance(img, str):
        return img
    if img.cement is None:
        img.cement = cement.find_cement_mr(img.t1, img.stir, muscle_ratio=settings.cement_mr_muscle_ratio)
    if post_treatment:
        _enhancement(img, settings)
        if img.stir is not None and img.dce_phases is not None and img.stir_on_dce is None:
            img.stir_on_dce = registration.resample_to(img.dce_phases[0], img.stir, None, nearest=False)
    return img


@dataclass
class LesionAnalysis:
    """One lesion analysed at every visit, in memory, before anything is written."""

    lesion: Lesion
    per_visit: list[LesionVisitResult]
    j0: LesionVisitResult
    problems: list[str]


def analyse_lesion(les: Lesion, plan: PatientPlan, images: dict[str, StudyImages | str],
                   settings: Settings) -> LesionAnalysis | LesionResult:
    """Segment and measure one lesion at each of its visits; an indeterminate result when J0 cannot be used.

    ``images`` holds the prepared studies of ``plan`` (see :func:`prepare_study`); they are only read.
    """
    visits = plan.visits[les.lesion_id]
    j0_uid = next(u for u, a in visits.items() if a.visit == Visit.J0)
    j0_img = images[j0_uid]
    if isinstance(j0_img, str):
        return _indeterminate(les, f"J0 MR study unusable: {j0_img}")
    assert j0_img.cement is not None, "prepare_study runs before analyse_lesion"
    masses = j0_img.cement.masses
    same_day = [x for x in plan.vertebral if x.procedure_date == les.procedure_date]
    rank = same_day.index(les)
    seed_mm = plan.corrections[les.lesion_id].seed_mm if les.lesion_id in plan.corrections else None
    if seed_mm is not None:  # a reviewer placed the seed: the cement mass nearest to it is this level's
        nearest = _nearest_mass(masses, seed_mm, _REVIEW_SEED_MAX_MM)
        if nearest is None:
            return _indeterminate(les, f"J0: no cement mass within {_REVIEW_SEED_MAX_MM:.0f} mm of the vertebra seed a "
                                       f"QA reviewer placed at ({seed_mm[0]:.1f}, {seed_mm[1]:.1f}, {seed_mm[2]:.1f}) "
                                       "mm: place it in the treated vertebral body")
        j0_mass = nearest
    elif len(masses) < len(same_day):
        return _indeterminate(les, f"J0: {len(masses)} cement mass(es) for {len(same_day)} treated level(s) "
                                   f"({j0_img.cement.reason})")
    else:
        chosen = sorted(sorted(masses, key=lambda m: -m.volume_ml)[: len(same_day)],
                        key=lambda m: -m.centroid_mm[2])
        j0_mass = chosen[rank]
    problems: list[str] = []
    per_visit: list[LesionVisitResult] = []
    j0_lv = LesionVisitResult(visits[j0_uid], j0_img, cement_mask=j0_mass.mask)
    body_seed = j0_mass.mask
    if seed_mm is not None:
        body_seed = _sphere_seed(j0_img.t1, seed_mm, _REVIEW_SEED_RADIUS_MM)
        j0_lv.notes.append("vertebral body seeded at the point a QA reviewer placed "
                           f"({seed_mm[0]:.1f}, {seed_mm[1]:.1f}, {seed_mm[2]:.1f}) mm")
    elif len(masses) > len(same_day):
        j0_lv.notes.append(f"{len(masses)} cement masses for {len(same_day)} level(s): the largest kept")
    _analyse(j0_lv, body_seed, False, None, None, settings)
    for uid, assign in sorted(visits.items(), key=lambda kv: kv[1].days_from_procedure):
        if uid == j0_uid:
            per_visit.append(j0_lv)
            continue
        img = images[uid]
        if isinstance(img, str):
            problems.append(f"{les.lesion_id} {assign.visit.value}: {img}")
            continue
        assert img.cement is not None, "prepare_study runs before analyse_lesion"
        lv = LesionVisitResult(assign, img)
        is_pre = assign.days_from_procedure < 0
        landmark = j0_mass.centroid_mm  # no cement before treatment: start from the J0 position
        if not is_pre:  # a reviewer's choice of mass at J0 is followed by position, not by cranio-caudal rank
            found = (_nearest_mass(img.cement.masses, j0_mass.centroid_mm, _SAME_MASS_MAX_MM) if seed_mm is not None
                     else _same_level_mass(img.cement.masses, len(same_day), rank, j0_mass.centroid_mm))
            if found is not None:
                lv.cement_mask = found.mask
                landmark = found.centroid_mm
            else:
                lv.notes.append("treated cement mass not found at this visit")
        # without cement on this visit the start is the J0 position itself, off by the patient's
        # repositioning: a translation search finds the level first
        reg = registration.register_rigid(j0_img.t1, img.t1, fixed_landmark_mm=j0_mass.centroid_mm,
                                          moving_landmark_mm=landmark, crop_center_mm=j0_mass.centroid_mm,
                                          search_mm=0.0 if lv.cement_mask is not None else 15.0)
        if not np.isfinite(reg.metric):
            lv.notes.append(f"registration to J0 failed, initial alignment kept: {reg.reason}")
        if seed_mm is not None:  # the reviewer's point, carried to this visit by the registration
            seed = _sphere_seed(img.t1, reg.transform.TransformPoint(seed_mm), _REVIEW_SEED_RADIUS_MM)
        elif lv.cement_mask is not None:
            seed = lv.cement_mask
        else:
            seed = _sphere_seed(img.t1, reg.transform.TransformPoint(j0_mass.centroid_mm), 6.0)
        lv.to_j0 = reg.transform
        _analyse(lv, seed, is_pre, j0_lv, reg.transform, settings)
        per_visit.append(lv)
    return LesionAnalysis(les, per_visit, j0_lv, problems)


def prune_patient_folder(folder: Path, keep: set[Path]) -> list[Path]:
    """Delete the files under a patient's output folder that its latest analysis did not write.

    Masks of a visit that is gone (a study deleted from the export, a registry row changed) or of
    an interrupted run must not stay beside the current results. ``state.json`` is always kept.
    """
    keep = {p.resolve() for p in keep}
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob("*"), reverse=True):  # files first, then their emptied folders
        if path.is_file() or path.is_symlink():
            if path.name != "state.json" and path.resolve() not in keep:
                path.unlink()
                removed.append(path)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return removed


def excluded_visits(plan: PatientPlan, les: Lesion) -> frozenset[str]:
    """The visit labels of ``les`` a QA reviewer excluded from its verdict."""
    corr = plan.corrections.get(les.lesion_id)
    return frozenset(corr.exclude_visits) if corr is not None else frozenset()


def is_post_treatment(plan: PatientPlan, study_uid: str) -> bool:
    """True when some lesion sees the study on or after its procedure (its DCE will be analysed)."""
    return any(uid == study_uid and a.days_from_procedure >= 0 for v in plan.visits.values() for uid, a in v.items())


def assemble_outcome(plan: PatientPlan, images: dict[str, StudyImages | str],
                     analysed: list[LesionResult | LesionWritten], extra_problems: list[str]) -> PatientOutcome:
    """The patient's contribution to the cohort tables, lesions in the plan's order."""
    results = list(plan.done)
    measurements: list[VisitMeasurement] = []
    last_fu: dict[str, dt.date] = {}
    for item in analysed:
        if isinstance(item, LesionResult):
            results.append(item)
            continue
        results.append(item.result)
        measurements.extend(item.rows)
        extra_problems = [*extra_problems, *item.problems]
        if item.last_follow_up is not None:
            last_fu[item.result.lesion.lesion_id] = item.last_follow_up
    used = sorted({u for im in images.values() if not isinstance(im, str) for u in im.series_used.values()})
    return PatientOutcome(plan.patient_id, results, measurements, plan.problems + extra_problems, last_fu, used)


def process_patient(index: PatientIndex, lesions: list[Lesion], out_dir: Path, settings: Settings,
                    corrections: Mapping[str, Corrections] | None = None) -> PatientOutcome:
    """Analyse every registry lesion of one patient in one thread (the Prefect flow runs the same steps as tasks).

    Never raises for bad images: the reasons are kept in the results and problems.
    """
    plan = plan_patient(index, lesions, corrections)
    images = {uid: prepare_study(read_study(index, uid, date), settings, is_post_treatment(plan, uid))
              for uid, date in plan.study_dates.items()}
    analysed: list[LesionResult | LesionWritten] = []
    problems: list[str] = []
    for les in plan.lesions:
        a = analyse_lesion(les, plan, images, settings)
        if isinstance(a, LesionResult):
            analysed.append(a)
        else:
            problems.extend(a.problems)
            analysed.append(write_lesion(a, out_dir, settings, excluded_visits(plan, les)))
    outcome = assemble_outcome(plan, images, analysed, problems)
    write_patient_documents(index, plan, images, analysed, outcome, out_dir, settings)
    return outcome


def _nearest_mass(masses: list[cement.CementMass], point_mm: tuple[float, float, float],
                  max_mm: float) -> cement.CementMass | None:
    """The mass whose centroid is nearest to ``point_mm``, if within ``max_mm``."""
    if not masses:
        return None
    pick = min(masses, key=lambda m: float(np.linalg.norm(np.subtract(m.centroid_mm, point_mm))))
    return pick if float(np.linalg.norm(np.subtract(pick.centroid_mm, point_mm))) < max_mm else None


def _same_level_mass(masses: list[cement.CementMass], n_levels: int, rank: int,
                     j0_centroid_mm: tuple[float, float, float],
                     max_mm: float = _SAME_MASS_MAX_MM) -> cement.CementMass | None:
    """This lesion's cement mass at a later visit, the way J0 mapped masses to levels.

    When the visit shows at least as many masses as levels treated that day, the largest
    ``n_levels`` are sorted cranio-caudally and the one of the lesion's ``rank`` is taken, as at
    J0 (a patient who moved by more than half a level between visits keeps the right level);
    otherwise the mass nearest the J0 position. Either way it must lie within ``max_mm`` of the
    J0 position (scanner coordinates, which the repositioning shifts by a few millimetres).
    """
    if len(masses) < n_levels:
        return _nearest_mass(masses, j0_centroid_mm, max_mm)
    chosen = sorted(sorted(masses, key=lambda m: -m.volume_ml)[:n_levels], key=lambda m: -m.centroid_mm[2])
    pick = chosen[rank]
    return pick if float(np.linalg.norm(np.subtract(pick.centroid_mm, j0_centroid_mm))) < max_mm else None


def _indeterminate(les: Lesion, reason: str) -> LesionResult:
    return LesionResult(les, None, None, Outcome.INDETERMINATE, None, None, None, None, reason)
