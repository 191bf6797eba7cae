"""Best Dice any mask on the pipeline's image grid can reach on the truth's finer grid.

Usage:
    python benchmarks/bench_grid_ceiling.py --cohort /tmp/c3 --results /tmp/acc-c3

For every lesion-visit where the pipeline wrote a mask, the truth mask is reduced to that mask's
grid (:func:`pipeline.evaluate.truth_fraction_on_grid`, voxels covered at least half) and the
result is scored like the pipeline's own masks: resampled by nearest neighbour onto the truth's
0.8 mm grid, Dice against the truth. Only the grid is taken from the results folder, never the
masks' content. Prints the median (min) per structure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.evaluate import truth_fraction_on_grid

STRUCTURES = ("vertebra", "cement", "ablation")


def ceiling_dice(truth_path: Path, grid_path: Path) -> float | None:
    truth = sitk.ReadImage(str(truth_path))
    grid = sitk.ReadImage(str(grid_path))
    best = sitk.GetImageFromArray((truth_fraction_on_grid(truth, grid) >= 0.5).astype(np.uint8))
    best.CopyInformation(grid)
    back = sitk.Resample(best, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    a = sitk.GetArrayFromImage(truth) > 0
    b = sitk.GetArrayFromImage(back) > 0
    size = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / size if size else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="phantom folder (truth.json, truth/)")
    ap.add_argument("--results", type=Path, required=True, help="a crav run output folder of that cohort")
    a = ap.parse_args()
    truth = json.loads((a.cohort / "truth.json").read_text(encoding="utf-8"))
    values: dict[str, list[float]] = {s: [] for s in STRUCTURES}
    for les in truth["lesions"]:
        days = {v["timepoint"]: v["days_from_procedure"] for v in les["visits"]}
        for tp in days:
            name = f"UNSCHEDULED_{days[tp]:+d}d" if tp == "UNSCHEDULED" else tp
            for structure in STRUCTURES:
                grid = a.results / "patients" / les["patient_id"] / les["lesion_id"] / name / f"{structure}.nii.gz"
                truth_path = a.cohort / "truth" / les["lesion_id"] / tp / f"{structure}.nii.gz"
                if grid.is_file() and truth_path.is_file():
                    value = ceiling_dice(truth_path, grid)
                    if value is not None:
                        values[structure].append(value)
    for structure, vals in values.items():
        if vals:
            print(f"{structure}: ceiling Dice median {statistics.median(vals):.3f} (min {min(vals):.3f}, "
                  f"{len(vals)} lesion-visits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
