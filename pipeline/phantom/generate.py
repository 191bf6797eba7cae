"""Generate a phantom cohort: DICOM export, treatments.csv, truth.json and truth masks.

Example (writes about 250 MB and takes about 20 s)::

    generate_cohort(Path("/tmp/cohort"), n_patients=2, seed=5)
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.domain import Visit
from pipeline.phantom import anatomy as an
from pipeline.phantom import design as ds
from pipeline.phantom.acquire import Profile, acquire_study
from pipeline.phantom.export_noise import add_export_noise
from pipeline.phantom.truth import LesionTruth, truth_masks_nifti, truth_verdict

log = logging.getLogger(__name__)

FULL = Profile(
    name="full", sag_matrix=224, sag_pixel_mm=1.25, sag_slices=15, sag_spacing_mm=4.4, sag_thickness_mm=4.0,
    dce_matrix=128, dce_pixel_mm=1.25, dce_slices=20, dce_spacing_mm=3.0, dce_phases=25, dce_dt_s=12.0,
    ct_matrix=256, ct_pixel_mm=0.7, ct_slices=55, ct_spacing_mm=2.0, compress_roles=("STIR",),
)
SAMPLE = Profile(
    name="sample", sag_matrix=88, sag_pixel_mm=2.8, sag_slices=12, sag_spacing_mm=5.0, sag_thickness_mm=4.5,
    dce_matrix=60, dce_pixel_mm=2.3, dce_slices=11, dce_spacing_mm=4.5, dce_phases=8, dce_dt_s=20.0,
    ct_matrix=112, ct_pixel_mm=1.5, ct_slices=32, ct_spacing_mm=3.0, compress_roles=("STIR", "CT"),
)
SAMPLE_SEED = 20211


@dataclass(frozen=True)
class CohortResult:
    out_dir: Path
    n_patients: int
    n_lesions: int
    n_files: int


def _lesion_geometry(rng: np.random.Generator, col: an.Column, vert: an.Vertebra, d: ds.LesionDesign
                     ) -> an.LesionGeometry:
    w2, d2, h = vert.width_mm / 2, vert.depth_mm / 2, vert.heights_mm[2]
    side = float(rng.choice([-1.0, 1.0]))
    tumour = an.random_blob(rng, (float(rng.uniform(-0.2, 0.2) * w2), float(rng.uniform(-0.2, 0.1) * d2), 0.0),
                            (0.55 * w2, 0.55 * d2, 0.38 * h))
    epidural = an.random_blob(rng, (side * -0.2 * w2, d2 + 3.0, 0.0), (7.0, 4.5, 8.0)) if d.epidural else None
    blobs = []
    for s in ([side, -side] if d.cement_bipedicular else [side]):
        start = np.array([s * 0.45 * w2, 0.55 * d2, 0.0])
        end = np.array([s * 0.08 * w2, -0.5 * d2, float(rng.uniform(-0.1, 0.1) * h)])
        for f in np.linspace(0.15, 0.95, 4):
            c = start + f * (end - start) + rng.normal(0, 0.8, 3)
            r = np.array([0.28 * w2, 0.3 * d2, 0.3 * h]) * rng.uniform(0.8, 1.2, 3) * (0.6 + 0.6 * f)
            blobs.append(an.random_blob(rng, (float(c[0]), float(c[1]), float(c[2])),
                                        (float(r[0]), float(r[1]), float(r[2])), 0.1))
    _, u, v, w = an.local_coords(col, vert)
    allowed = an.body_shape(u, v, w, vert, vert.heights_mm, an.CORTEX_MM + 0.5)
    voxel_ml = col.spacing_mm**3 / 1000.0
    cement_scale = an.scale_for_volume(d.cement_ml, tuple(blobs), u, v, w, allowed, voxel_ml)
    residual = None
    if d.j0_residual_ml > 0:
        residual = an.random_blob(rng, (-side * 0.5 * w2, (0.95 if d.epidural else 0.55) * d2,
                                        float(rng.uniform(-0.15, 0.15) * h)), (6.0, 5.0, 6.0), 0.15)
    nodule = None
    if d.course == ds.Course.FAILURE_NEW_NODULE:
        nodule = an.random_blob(rng, (-side * 0.55 * w2, -0.55 * d2, 0.0), (5.0, 5.0, 5.0), 0.15)
    return an.LesionGeometry(tumour, epidural, tuple(blobs), cement_scale, float(rng.uniform(3.0, 6.0)),
                             residual, nodule, covers_tumour=d.j0_residual_ml == 0)


def _visit_days(p: ds.PatientDesign) -> dict[Visit, int]:
    return {s.visit: s.day for s in p.studies if s.modality == "MR" and s.visit != Visit.UNSCHEDULED}


def generate_patient(p: ds.PatientDesign, out_dir: Path, profile: Profile) -> dict[str, Any]:
    """Render, write and return the truth of one patient (runs in a worker process)."""
    rng = np.random.default_rng([p.seed, p.index, 29])
    col = an.build_column(rng, p.levels)
    verts = {v.level: v for v in col.vertebrae}
    geoms = {d.lesion_id: _lesion_geometry(rng, col, verts[d.level], d) for d in p.lesions}
    treated = {d.level for d in p.lesions}
    base = an.base_labels(col, treated)
    days = _visit_days(p)
    truths = {d.lesion_id: LesionTruth(d, p) for d in p.lesions}
    studies_truth = []
    n_files = 0
    for si, study in enumerate(p.studies):
        labels = base.copy()
        masks = {}
        for d in p.lesions:
            vert = verts[d.level]
            treated_now = study.day > 0 or (study.day == 0 and (study.modality == "MR" or study.post_procedure))
            treated_now = treated_now or (study.visit == Visit.J0)
            res_ml, nod_ml = ds.residual_ml_at(d, study.day, days) if treated_now else (0.0, 0.0)
            state = an.LesionVisitState(
                heights_mm=ds.heights_at(vert.heights_mm, d, study.day, days), treated=treated_now,
                residual_ml=res_ml, new_nodule_ml=nod_ml,
                rim_mm=d.rim_mm if (study.visit == Visit.J0 and study.modality == "MR") else 0.0)
            masks[d.lesion_id] = (an.draw_treated(col, labels, vert, geoms[d.lesion_id], state), state)
        study_rng = np.random.default_rng([p.seed, p.index, 31, si])
        acq = acquire_study(p, study, si, col, labels, [verts[d.level] for d in p.lesions], out_dir, profile,
                            study_rng)
        n_files += acq.n_files
        studies_truth.append({"patient_id": p.patient_id, "study_uid": acq.study_uid,
                              "study_date": acq.study_date.isoformat(), "modality": study.modality,
                              "visit": study.visit.value, "days_from_procedure": study.day,
                              # repositioning of this study, LPS mm: scanner = rotation @ patient + translation
                              "patient_to_scanner": {"rotation": np.round(acq.rotation, 12).tolist(),
                                                     "translation": np.round(acq.translation, 9).tolist()}})
        if study.modality == "MR":
            for d in p.lesions:
                tm, state = masks[d.lesion_id]
                truths[d.lesion_id].add_visit(study, acq, tm, state, col)
                truth_masks_nifti(out_dir / "truth" / d.lesion_id / study.visit.value, tm, col, acq.rotation,
                                  acq.translation, include_treatment=state.treated)
    lesions = []
    for d in p.lesions:
        rec = truths[d.lesion_id].as_dict()
        verdict = truth_verdict(rec)
        designed = "local_failure" if d.onset is not None else "local_control"
        if verdict[0] != designed or (d.onset is not None and verdict[1] != d.onset.value):
            raise RuntimeError(f"phantom design inconsistent for {d.lesion_id}: designed {designed} "
                               f"{d.onset}, truth volumes give {verdict}")
        lesions.append(rec)
    return {"lesions": lesions, "studies": studies_truth, "n_files": n_files}


def _write_registry(path: Path, patients: list[ds.PatientDesign]) -> None:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["patient_id", "lesion_id", "level", "procedure_date", "primary_tumor", "ebrt_date",
                 "vas_before", "vas_m1", "notes"])
    for p in patients:
        for d in p.lesions:
            ebrt = "" if d.ebrt_after_days is None else (
                p.procedure_date + dt.timedelta(days=d.ebrt_after_days)).isoformat()
            wr.writerow([p.patient_id, d.lesion_id, d.level, p.procedure_date.isoformat(), p.primary_tumor, ebrt,
                         d.vas_before, d.vas_m1, f"phantom course {d.course.value}"])
    path.write_text(buf.getvalue(), encoding="utf-8")


def _generate(out_dir: Path, patients: list[ds.PatientDesign], profile: Profile, seed: int,
              workers: int) -> CohortResult:
    out_dir = Path(out_dir)
    if out_dir.exists():
        for sub in ("export", "truth"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / "export").mkdir(parents=True, exist_ok=True)
    if workers > 1 and len(patients) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(generate_patient, patients, [out_dir] * len(patients),
                                    [profile] * len(patients)))
    else:
        results = [generate_patient(p, out_dir, profile) for p in patients]
    n_noise = add_export_noise(out_dir / "export", patients[0], seed, profile)
    _write_registry(out_dir / "treatments.csv", patients)
    lesions = [les for r in results for les in r["lesions"]]
    truth: dict[str, Any] = {
        "generator": "pipeline.phantom", "seed": seed, "profile": profile.name,
        "lesions": lesions,
        "studies": [st for r in results for st in r["studies"]],
        "export_noise": n_noise,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n_files = sum(r["n_files"] for r in results)
    return CohortResult(out_dir, len(patients), len(lesions), n_files)


PROFILES = {"full": FULL, "sample": SAMPLE}


def generate_cohort(out_dir: Path, n_patients: int, seed: int, workers: int | None = None,
                    resolution: str = "full") -> CohortResult:
    """Generate ``n_patients`` designed patients from ``seed`` under ``out_dir``.

    ``resolution``: ``"full"`` (clinical matrices, the accuracy benchmarks) or ``"sample"`` (the
    coarse grids of ``sample_dicom/``: the same patients, courses and export noise, about a quarter
    of the files, for tests of orchestration that need many patients quickly).
    """
    if resolution not in PROFILES:
        raise ValueError(f"resolution must be one of {sorted(PROFILES)}, got {resolution!r}")
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if seed == SAMPLE_SEED:
        raise ValueError(f"seed {SAMPLE_SEED} is reserved for the bundled sample; choose another")
    patients = ds.design_cohort(n_patients, seed)
    return _generate(out_dir, patients, PROFILES[resolution], seed, workers or min(2, os.cpu_count() or 1))


def sample_design() -> list[ds.PatientDesign]:
    """The bundled sample: 3 patients, 4 lesions covering the four courses the README describes."""
    patients = ds.design_cohort(3, SAMPLE_SEED)
    wanted: list[list[tuple[ds.Course, str | None, Visit | None]]] = [
        [(ds.Course.CONTROL_NO_RESIDUAL, None, None)],
        [(ds.Course.CONTROL_RESIDUAL, None, None), (ds.Course.CONTROL_NO_RESIDUAL, "wedge", Visit.M3)],
        [(ds.Course.FAILURE_RESIDUAL, None, None)],
    ]
    for p, lesions in zip(patients, wanted, strict=True):
        rng = np.random.default_rng([SAMPLE_SEED, p.index, 5])
        first = p.levels.index("L1") if "L1" in p.levels else 3
        levels = p.levels[first:first + len(lesions)]
        present = [s.visit for s in p.studies if s.modality == "MR"]
        if p.index == 0 and Visit.M6 in present:
            p.studies = [s for s in p.studies if not (s.modality == "MR" and s.visit == Visit.M6)]
            present.remove(Visit.M6)
        p.studies = [s for s in p.studies if s.visit != Visit.UNSCHEDULED]
        for s in p.studies:
            if s.modality == "MR" and s.visit == Visit.M3:
                s.day = 90
        p.lesions = []
        for (course, fracture, collapse), lv in zip(lesions, levels, strict=True):
            d = ds.design_lesion(rng, f"{p.patient_id}-{lv}", lv, course, present)
            d.fracture, d.collapse_from = fracture, collapse
            d.onset = Visit.M3 if course == ds.Course.FAILURE_RESIDUAL else None
            d.rim_mm = 1.5 if p.index == 0 else d.rim_mm
            p.lesions.append(d)
        p.dce_split = p.index == 1
        p.vendor = ds.VENDORS[p.index]
    return patients


def generate_sample(out_dir: Path, workers: int | None = None) -> CohortResult:
    """Regenerate the bundled ``sample_dicom/`` (byte for byte: everything derives from SAMPLE_SEED)."""
    return _generate(out_dir, sample_design(), SAMPLE, SAMPLE_SEED, workers or min(2, os.cpu_count() or 1))
