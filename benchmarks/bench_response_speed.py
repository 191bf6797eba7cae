"""Wall time of the response step of one visit (issue 5: under 3 s per visit).

Usage:
    python benchmarks/bench_response_speed.py --cohort /tmp/c2n --results /tmp/acc-c2n --patients 5

Reads a phantom cohort and the folder a ``crav run`` wrote for it (its ``catalog.sqlite`` and
masks), so the masks are the pipeline's own. For each treated visit (J0 on) of each vertebral
lesion of the first ``--patients`` patients, the study is loaded and the masks are put on the DCE
grid (not timed: that is ingest and segmentation), then the ``pipeline.response`` work of the visit
is timed stage by stage, as ``crav run`` does it: relative-enhancement maps and the maximum-RE /
time-to-peak maps (once per study in the run; timed for every visit here, the worst case),
residual mask (enhancing, half-maximum edge, rim opening), extended-Tofts Ktrans of the region,
heights on the T1 body, new nodules against J0, height loss and the lesion's classification.
Prints per-stage medians and the median / max total per visit, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flows.patient import load_study
from pipeline.domain import Visit
from pipeline.ingest.catalog import Catalog
from pipeline.response import classify, dce_region, enhancement, height
from pipeline.segmentation import ablation, registration
from pipeline.settings import Settings


@contextmanager
def _stage(times: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``times[name]``."""
    t0 = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="phantom folder (truth.json)")
    ap.add_argument("--results", type=Path, required=True, help="the crav run output folder of that cohort")
    ap.add_argument("--patients", type=int, default=5, help="first N patients (default 5)")
    ap.add_argument("--json", type=Path, help="write the per-visit timings here")
    a = ap.parse_args()
    settings = Settings()
    truth = json.loads((a.cohort / "truth.json").read_text())
    catalog = Catalog.open(a.results / "catalog.sqlite")
    patients = sorted({les["patient_id"] for les in truth["lesions"]})[: a.patients]
    load_before = os.getloadavg()[0]
    rows: list[dict[str, float | str]] = []
    for les in [x for x in truth["lesions"] if x["patient_id"] in patients]:
        pid, lid = les["patient_id"], les["lesion_id"]
        j0_residual: sitk.Image | None = None
        summaries: list[classify.VisitSummary] = []
        j0_heights: height.Heights | None = None
        for v in les["visits"]:
            folder = a.results / "patients" / pid / lid / v["timepoint"]
            if v["timepoint"] == "PRE" or not (folder / "cement.nii.gz").is_file():
                continue
            img = load_study(catalog, v["study_uid"], None,
                             [s for s in catalog.series(pid) if s.study_uid == v["study_uid"]])
            if isinstance(img, str) or img.dce_phases is None or img.dce_times_s is None:
                continue
            grid = img.dce_phases[0]
            body_t1 = sitk.ReadImage(str(folder / "vertebra.nii.gz"))
            body = registration.resample_to(grid, body_t1, None, nearest=True)
            cem = registration.resample_to(grid, sitk.ReadImage(str(folder / "cement.nii.gz")), None, nearest=True)
            roi = sitk.GetArrayFromImage(ablation.residual_roi(body, cem, settings.residual_margin_mm)).astype(bool)
            abl = sitk.GetArrayFromImage(registration.resample_to(
                grid, sitk.ReadImage(str(folder / "ablation.nii.gz")), None, nearest=True)).astype(bool)
            body_arr = sitk.GetArrayFromImage(body_t1).astype(bool)
            sx, sy, sz = grid.GetSpacing()
            sp = (sz, sy, sx)
            tx, ty, tz = body_t1.GetSpacing()
            times: dict[str, float] = {}
            t_start = time.perf_counter()
            with _stage(times, "maps"):
                arr = np.stack([sitk.GetArrayFromImage(p).astype(np.float64) for p in img.dce_phases])
                maps = enhancement.relative_enhancement(arr, img.dce_times_s)
                s_pre = maps.s_pre if maps.s_pre is not None else arr[: maps.n_pre].mean(axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    re_t = np.where(s_pre[None] > 0, (arr - s_pre[None]) / s_pre[None], 0.0)
                _peak_maps = (re_t.max(axis=0), np.argmax(arr, axis=0))  # max RE and time-to-peak, as the run
            with _stage(times, "residual"):
                residual = enhancement.residual_mask(maps, roi, sp, rim_mm=settings.rim_max_thickness_mm)
            region = residual if residual.any() else abl
            if region.any() and img.dce_tr_s and img.dce_flip_deg:
                with _stage(times, "ktrans"):
                    dce_region.region_tofts(arr, img.dce_times_s, region, tr_s=img.dce_tr_s, extended=True,
                                            flip_deg=img.dce_flip_deg, noise_sigma=maps.noise_sigma)
            with _stage(times, "heights"):
                heights = height.vertebral_heights(body_arr, (tz, ty, tx),
                                                   np.asarray(body_t1.GetDirection()).reshape(3, 3))
            new_ml = 0.0
            if j0_residual is not None:
                j0_res = sitk.GetArrayFromImage(registration.resample_to(grid, j0_residual, None, nearest=True))
                with _stage(times, "new_nodules"):
                    new_ml = max(enhancement.new_nodules(residual, j0_res.astype(bool), sp), default=0.0)
            else:
                j0_residual = sitk.GetImageFromArray(residual.astype(np.uint8))
                j0_residual.CopyInformation(grid)
                j0_heights = heights
            loss = height.height_loss_pct(j0_heights, heights) if j0_heights is not None else None
            summaries.append(classify.VisitSummary(
                visit=Visit(v["timepoint"]), days_from_procedure=int(v["days_from_procedure"]),
                residual_ml=enhancement.residual_volume_ml(residual, sp), new_nodule_ml=new_ml,
                height_loss_pct=loss, height_loss_mm=None, genant_grade=height.genant_grade(heights)))
            with _stage(times, "classify"):
                classify.classify_lesion(summaries, settings=settings)
            total = time.perf_counter() - t_start
            rows.append({"visit": f"{lid} {v['timepoint']}", "total_s": total, **{k: t for k, t in times.items()}})
            print(f"{lid:18} {v['timepoint']:4} total {total:5.2f} s  "
                  + "  ".join(f"{k} {t:.2f}" for k, t in times.items()), flush=True)
    load_after = os.getloadavg()[0]
    if not rows:
        print("no visit timed")
        return 1
    print(f"\n{len(rows)} visits; load average {load_before:.2f} before, {load_after:.2f} after")
    for stage in ("maps", "residual", "ktrans", "heights", "new_nodules", "classify", "total_s"):
        vals = [float(r[stage]) for r in rows if stage in r]
        if vals:
            print(f"{stage:12} median {statistics.median(vals):6.3f} s   max {max(vals):6.3f} s   ({len(vals)} visits)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
