"""Wall time of the segmentation and registration of one visit (issue 4: under 5 s median).

Usage:
    python benchmarks/bench_segmentation_speed.py --cohort /tmp/dev5 --patients 4 [--json OUT]

For the first ``--patients`` patients of a phantom cohort (or any export with a registry), every
MR study is loaded once (not timed: that is ingest), then each visit of each vertebral lesion is
timed stage by stage, as ``crav run`` does it: MR cement (T1 + STIR signal void), treated body,
rigid registration onto J0 (not at J0 itself; with the +-15 mm translation search when the
visit has no cement, as before treatment), residual search region and ablation zone on the
DCE grid (the DCE enhancement map itself is response, timed apart). Prints per-stage medians
and the median total per visit, in one process, with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flows.patient import StudyImages, load_study
from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog
from pipeline.ingest.registry import read_registry
from pipeline.ingest.scan import scan_export
from pipeline.ingest.visits import assign_visits
from pipeline.response import enhancement
from pipeline.segmentation import ablation, cement, registration, vertebra
from pipeline.segmentation.common import mask_image, physical_coordinates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="folder with export/ (or DICOM) and treatments.csv")
    ap.add_argument("--patients", type=int, default=4, help="first N registry patients (default 4)")
    ap.add_argument("--json", type=Path, help="write the per-visit timings here")
    a = ap.parse_args()
    export = a.cohort / "export" if (a.cohort / "export").is_dir() else a.cohort
    catalog = Catalog.open(":memory:")
    scan_export(export, catalog, quiet_period_s=0)
    lesions = [les for les in read_registry(a.cohort / "treatments.csv").lesions if les.is_vertebral]
    patients = sorted({les.patient_id for les in lesions})[: a.patients]
    load_before = os.getloadavg()[0]
    rows: list[dict[str, float | str]] = []
    for pid in patients:
        series = catalog.series(pid)
        studies = {st.study_uid: st for st in catalog.studies(pid)
                   if any(s.study_uid == st.study_uid and s.role == SeriesRole.T1 for s in series)}
        images: dict[str, StudyImages] = {}
        for uid, st in studies.items():
            loaded = load_study(catalog, uid, st.study_date, [s for s in series if s.study_uid == uid])
            if isinstance(loaded, str):
                print(f"study skipped: {loaded}")
                continue
            images[uid] = loaded
        for les in [x for x in lesions if x.patient_id == pid]:
            dates = {uid: st.study_date for uid, st in studies.items() if st.study_date is not None}
            visits = assign_visits(dates, les.procedure_date)
            order = sorted(visits.items(), key=lambda kv: kv[1].days_from_procedure)
            order = [(uid, v) for uid, v in order if uid in images]
            j0 = next((uid for uid, v in order if v.visit.value == "J0"), None)
            if j0 is None:
                continue
            j0_cement = cement.find_cement_mr(images[j0].t1, images[j0].stir)
            if not j0_cement.masses:
                continue
            j0_mass = j0_cement.masses[0]
            for uid, visit in order:
                img = images[uid]
                t1, stir = img.t1, img.stir
                row: dict[str, float | str] = {"lesion_id": les.lesion_id, "visit": visit.visit.value}
                t0 = time.perf_counter()
                found = cement.find_cement_mr(t1, stir)
                t_cement = time.perf_counter()
                landmark = found.masses[0].centroid_mm if found.masses else j0_mass.centroid_mm
                transform = None
                if uid != j0:
                    reg = registration.register_rigid(images[j0].t1, t1,
                                                      fixed_landmark_mm=j0_mass.centroid_mm,
                                                      moving_landmark_mm=landmark,
                                                      crop_center_mm=j0_mass.centroid_mm,
                                                      search_mm=0.0 if found.masses else 15.0)
                    transform = reg.transform
                t_reg = time.perf_counter()
                if found.masses:
                    seed = found.masses[0].mask
                else:
                    centre = transform.TransformPoint(j0_mass.centroid_mm) if transform else j0_mass.centroid_mm
                    x, y, z = physical_coordinates(t1)
                    seed = mask_image((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= 36, t1)
                body = vertebra.segment_body(t1, seed, stir=stir, muscle_signal=found.muscle_signal)
                t_body = time.perf_counter()
                row.update(cement_s=t_cement - t0, registration_s=t_reg - t_cement, body_s=t_body - t_reg)
                phases, times = img.dce_phases, img.dce_times_s
                if phases is not None and times is not None and found.masses:
                    t2 = time.perf_counter()
                    arr = np.stack([sitk.GetArrayFromImage(p).astype(np.float64) for p in phases])
                    enh = enhancement.enhancing_mask(enhancement.relative_enhancement(arr, times))
                    t3 = time.perf_counter()
                    grid = phases[0]
                    body_d = registration.resample_to(grid, body.mask, None, nearest=True)
                    cem_d = registration.resample_to(grid, found.masses[0].mask, None, nearest=True)
                    ablation.residual_roi(body_d, cem_d)
                    stir_d = registration.resample_to(grid, stir, None, nearest=False) if stir else None
                    ablation.segment_ablation_zone(body_d, cem_d, mask_image(enh, grid), stir_d,
                                                   stir_muscle=found.muscle_stir)
                    t4 = time.perf_counter()
                    row.update(enhancement_map_s=t3 - t2, ablation_roi_s=t4 - t3)
                row["segmentation_registration_s"] = sum(
                    float(row.get(k, 0.0)) for k in ("cement_s", "registration_s", "body_s", "ablation_roi_s"))
                rows.append(row)
    load_after = os.getloadavg()[0]
    keys = ["cement_s", "registration_s", "body_s", "ablation_roi_s", "segmentation_registration_s",
            "enhancement_map_s"]
    print(f"{len(rows)} lesion-visits of {len(patients)} patients; load average {load_before:.2f} -> "
          f"{load_after:.2f} (2-core machine)")
    print("| stage | median s | max s | n |\n|---|---|---|---|")
    for k in keys:
        vals = [float(r[k]) for r in rows if k in r and not (k == "registration_s" and r["visit"] == "J0")]
        if vals:
            print(f"| {k} | {statistics.median(vals):.2f} | {max(vals):.2f} | {len(vals)} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
