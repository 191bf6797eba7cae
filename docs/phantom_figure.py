"""Draw one phantom visit (middle sagittal slice through the treated body of each series, with truth contours).

Usage: python docs/phantom_figure.py [--sample sample_dicom] [--lesion ID] [--visit J0] [--out docs/phantom_visit.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog
from pipeline.ingest.scan import scan_export
from pipeline.ingest.volumes import load_dynamic, load_volume

COLOURS = {"vertebra": "#ffd400", "cement": "#00e5ff", "ablation": "#7CFC00", "residual": "#ff3b3b"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=Path("sample_dicom"))
    ap.add_argument("--lesion", default="CRAV-20211003-L1")
    ap.add_argument("--visit", default="J0")
    ap.add_argument("--out", type=Path, default=Path("docs/phantom_visit.png"))
    a = ap.parse_args()
    truth = json.loads((a.sample / "truth.json").read_text(encoding="utf-8"))
    lesion = next(les for les in truth["lesions"] if les["lesion_id"] == a.lesion)
    visit = next(v for v in lesion["visits"] if v["timepoint"] == a.visit)
    catalog = Catalog.open(":memory:")
    scan_export(a.sample, catalog, quiet_period_s=0.0)
    series = [s for s in catalog.series(lesion["patient_id"]) if s.study_uid == visit["study_uid"]]
    panels: list[tuple[str, sitk.Image]] = []
    for role in (SeriesRole.T1, SeriesRole.STIR, SeriesRole.T1_FS_POST):
        rec = next(s for s in series if s.role == role)
        panels.append((f"{role.value}: {rec.description}", load_volume(catalog.files(rec.series_uid))))
    dce = [s for s in series if s.role == SeriesRole.DCE]
    group = next((s.dynamic_group for s in dce if s.dynamic_group), None)
    files = catalog.dynamic_files(group) if group else catalog.files(dce[0].series_uid)
    dyn = load_dynamic(files)
    panels.append((f"DCE, last phase ({dyn.times_s[-1]:.0f} s)", dyn.phases[-1]))
    masks = {name: sitk.ReadImage(str(a.sample / "truth" / a.lesion / a.visit / f"{name}.nii.gz"))
             for name in COLOURS}
    # the slice through the residual tumour when there is one, else through the cement (or the body)
    focus = next(masks[n] for n in ("residual", "cement", "vertebra") if sitk.GetArrayViewFromImage(masks[n]).any())
    idx = np.argwhere(sitk.GetArrayViewFromImage(focus))
    centre = focus.TransformContinuousIndexToPhysicalPoint([float(x) for x in idx.mean(axis=0)[::-1]])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.8), facecolor="black")
    for ax, (title, img) in zip(axes, panels, strict=True):
        ci = img.TransformPhysicalPointToContinuousIndex(centre)
        k = round(ci[2])
        arr = sitk.GetArrayViewFromImage(img)[k]
        sp = img.GetSpacing()
        extent = (0, arr.shape[1] * sp[0], arr.shape[0] * sp[1], 0)
        ax.imshow(arr, cmap="gray", extent=extent, vmin=0, vmax=np.percentile(arr, 99.5))
        for name, m in masks.items():
            res = sitk.GetArrayFromImage(sitk.Resample(m, img, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                       sitk.sitkFloat32))[k]
            if res.max() >= 0.5:
                ax.contour(np.linspace(0, extent[1], arr.shape[1]), np.linspace(0, extent[2], arr.shape[0]), res,
                           levels=[0.5], colors=COLOURS[name], linewidths=1.0)
        cx, cy = ci[0] * sp[0], ci[1] * sp[1]
        ax.set_xlim(cx - 60, cx + 60)
        ax.set_ylim(cy + 60, cy - 60)
        ax.set_title(title, color="white", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, labelcolor="white")
    fig.suptitle(f"Phantom {a.lesion} at {a.visit} (day {visit['days_from_procedure']}): truth contours",
                 color="white")
    fig.savefig(a.out, dpi=90, facecolor="black", bbox_inches="tight")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
