"""Truth of the phantom, from the generator's own geometry: volumes, heights, verdicts and masks."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from pipeline.domain import Visit
from pipeline.phantom import anatomy as an
from pipeline.phantom import design as ds
from pipeline.phantom.acquire import Acquisition

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def genant_grade(ha: float, hm: float, hp: float) -> int:
    """Semi-quantitative Genant grade from the wedge and biconcavity ratios."""
    reduction = round(max(1 - ha / hp, 1 - hm / hp, 0.0), 9)  # 16/20 is a 20 % reduction, not 19.999...%
    if reduction < 0.20:
        return 0
    if reduction < 0.25:
        return 1
    if reduction <= 0.40:
        return 2
    return 3


class LesionTruth:
    """Accumulates one lesion's truth visit by visit."""

    def __init__(self, d: ds.LesionDesign, p: ds.PatientDesign) -> None:
        self.d, self.p = d, p
        self.visits: list[dict[str, Any]] = []

    def add_visit(self, study: ds.StudyDesign, acq: Acquisition, tm: an.TreatedMasks, state: an.LesionVisitState,
                  col: an.Column) -> None:
        voxel_ml = col.spacing_mm**3 / 1000.0
        ha, hm, hp = state.heights_mm
        self.visits.append({
            "timepoint": study.visit.value, "study_uid": acq.study_uid, "study_date": acq.study_date.isoformat(),
            "days_from_procedure": study.day,
            "cement_volume_ml": round(float(tm.cement.sum()) * voxel_ml, 4) if state.treated else None,
            "residual_enhancing_volume_ml": round(float(tm.residual.sum()) * voxel_ml, 4) if state.treated else None,
            "ablation_zone_volume_ml": round(float(tm.ablation.sum()) * voxel_ml, 4) if state.treated else None,
            "height_anterior_mm": round(ha, 3), "height_middle_mm": round(hm, 3), "height_posterior_mm": round(hp, 3),
            "genant_grade": genant_grade(ha, hm, hp),
            "rim_mm": state.rim_mm,
        })

    def as_dict(self) -> dict[str, Any]:
        d = self.d
        visits = sorted(self.visits, key=lambda v: v["days_from_procedure"])
        j0 = next((v for v in visits if v["timepoint"] == Visit.J0.value), None)
        pre = next((v for v in visits if v["timepoint"] == Visit.PRE.value), j0)
        losses = []
        for v in visits:
            if j0 is None:
                v["height_loss_pct"] = None
                continue
            keys = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")
            loss_pct = max((j0[k] - v[k]) / j0[k] * 100 for k in keys)
            loss_mm = max(j0[k] - v[k] for k in keys)
            v["height_loss_pct"] = round(loss_pct, 3)
            if v["days_from_procedure"] > (j0["days_from_procedure"]):
                losses.append((loss_pct, loss_mm))
        j0_res = j0["residual_enhancing_volume_ml"] if j0 else None
        return {
            "patient_id": self.p.patient_id, "lesion_id": d.lesion_id, "level": d.level,
            "procedure_date": self.p.procedure_date.isoformat(), "course": d.course.value,
            "outcome": "local_failure" if d.onset is not None else "local_control",
            "failure_timepoint": d.onset.value if d.onset is not None else None,
            "j0_residual": None if j0_res is None else bool(j0_res >= 0.2),
            "j0_residual_volume_ml": j0_res,
            "baseline_fracture": None if pre is None else bool(pre["genant_grade"] >= 1),
            "fracture_type": d.fracture,
            "height_loss": bool(any(p >= 15.0 or m >= 3.0 for p, m in losses)),
            "max_height_loss_pct": round(max((p for p, _ in losses), default=0.0), 3),
            "visits": visits,
        }


def truth_verdict(rec: dict[str, Any]) -> tuple[str, str | None]:
    """SPEC section 5 applied to the truth volumes (a consistency check of the design, not the pipeline's code)."""
    follow = [v for v in rec["visits"] if v["days_from_procedure"] > 2 and v["timepoint"] != "PRE"]
    j0 = next(v for v in rec["visits"] if v["timepoint"] == "J0")
    nadir = j0["residual_enhancing_volume_ml"]
    j0_total = nadir
    for i, v in enumerate(follow):
        vol = v["residual_enhancing_volume_ml"]
        if vol >= nadir + max(0.5, 0.73 * nadir) or (j0_total < 0.2 and vol >= 0.5):
            if v["timepoint"] == "M1" and i + 1 < len(follow):
                nxt = follow[i + 1]["residual_enhancing_volume_ml"]
                if nxt < nadir + max(0.5, 0.73 * nadir):
                    continue
            return "local_failure", v["timepoint"]
        nadir = min(nadir, vol)
    return "local_control", None


def truth_masks_nifti(folder: Path, tm: an.TreatedMasks, col: an.Column, rot: NDArray[np.float64],
                      trans: NDArray[np.float64], include_treatment: bool) -> None:
    """Write the truth masks of one lesion-visit as NIfTI in the scanner frame of that study."""
    folder.mkdir(parents=True, exist_ok=True)
    start = np.array([s.start for s in tm.box], float)
    affine = col.affine_patient()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    motion = np.eye(4)
    motion[:3, :3] = rot
    motion[:3, 3] = trans
    aff = LPS_TO_RAS @ motion @ affine
    masks = {"vertebra": tm.vertebra, "cement": tm.cement, "ablation": tm.ablation, "residual": tm.residual}
    for name, m in masks.items():
        data = m if include_treatment or name == "vertebra" else np.zeros_like(m)
        img = nib.Nifti1Image(data.astype(np.uint8), aff)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        # gzip with mtime 0 and no file name: the same truth gives the same bytes
        payload = gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, folder / f"{name}.nii.gz")
