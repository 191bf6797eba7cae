"""Overlay pictures of the lesions a run classified differently from the phantom's truth.

Usage:
    python benchmarks/overlay_misclassified.py --cohort /tmp/c2n --results /tmp/acc-c2n \\
        --out /tmp/acc-c2n/misclassified

Run it after ``benchmarks/bench_accuracy.py``. ``--cohort`` is the phantom folder (truth.json and
truth/<lesion_id>/<timepoint>/{vertebra,cement,residual,ablation}.nii.gz on the fine truth grid);
``--results`` is the ``crav run`` folder (lesions.csv, measurements.csv, catalog.sqlite and
patients/<patient_id>/<lesion_id>/<timepoint>/*.nii.gz on the image grids).

A lesion is shown when any of outcome, j0_residual, height_loss or baseline_fracture differs
between truth.json and lesions.csv. Each such lesion gets one PNG, one row per visit
(PRE, J0, M1, M3, M6, M12 as present):

* left: the T1 sagittal slice nearest the truth vertebral body's centroid, with the truth body
  (green), the pipeline body (red) and the pipeline cement (cyan);
* right: the DCE enhancement (mean of the last quarter of the phases minus mean of the first two)
  on the DCE slice through the same physical point, with the truth residual (green), the pipeline
  residual (red) and the pipeline ablation zone (yellow); the truth body is dotted white. A residual
  with no voxel on the slice is drawn dashed as its projection across all slices, and named in
  the panel's corner.

Images are loaded with the run's own loader (``flows.patient.load_study``) so the geometry is the
pipeline's; every mask is resampled (nearest neighbour) onto the displayed grid. ``OUT/index.md``
lists the lesions, their differing fields and their PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from flows.patient import StudyImages, load_study
from pipeline.ingest.catalog import Catalog
from pipeline.outputs.paths import safe_path_component
from pipeline.segmentation.registration import resample_to

FIELDS = ("outcome", "j0_residual", "height_loss", "baseline_fracture")
TIMEPOINTS = ("PRE", "J0", "M1", "M3", "M6", "M12")
MASKS = ("vertebra", "cement", "residual", "ablation")
MARGIN_MM = 15.0
DPI = 70
PANEL_IN = 3.6

T1_CONTOURS = (("truth vertebra", "truth", "vertebra", "lime"),
               ("pipeline vertebra", "pipeline", "vertebra", "red"),
               ("pipeline cement", "pipeline", "cement", "cyan"))
DCE_CONTOURS = (("truth vertebra (dotted, DCE)", "truth", "vertebra", "white"),
                ("truth residual", "truth", "residual", "lime"),
                ("pipeline residual", "pipeline", "residual", "red"),
                ("pipeline ablation", "pipeline", "ablation", "yellow"))


def safe_name(text: str) -> str:
    """File-name version of an identifier: only ``[A-Za-z0-9._-]`` kept, never hidden or empty."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")
    return name or "_"


def as_text(value: object) -> str:
    """Lower-case comparison text of a truth.json value or a CSV cell ('true', 'false', '', names)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().lower()


def differing_fields(truth: dict[str, Any], row: dict[str, str] | None) -> list[tuple[str, str, str]]:
    """(field, truth, pipeline) for each compared field that differs; pipeline is '(missing)' without a row."""
    out = []
    for f in FIELDS:
        t = as_text(truth.get(f))
        p = as_text(row.get(f)) if row is not None else "(missing)"
        if t != p:
            out.append((f, t, p))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_mask(path: Path) -> sitk.Image | None:
    """A mask NIfTI as an 8-bit image, None when the file is absent."""
    if not path.is_file():
        return None
    return sitk.Cast(sitk.ReadImage(str(path)) > 0, sitk.sitkUInt8)


def centroid_mm(mask: sitk.Image) -> tuple[float, float, float] | None:
    """Physical centroid of a mask's voxels, None when it is empty."""
    arr = sitk.GetArrayFromImage(mask)
    idx = np.argwhere(arr > 0)
    if idx.size == 0:
        return None
    z, y, x = idx.mean(axis=0)
    p = mask.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
    return (float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True)
class Plane:
    """A sagittal display plane of a 3-D grid: superior up, anterior left (LPS patient axes)."""

    axis: int  # numpy axis across the plane (left-right)
    index: int  # slice along it
    transpose: bool  # after slicing: swap so rows run head-foot
    flip_rows: bool
    flip_cols: bool
    row_mm: float
    col_mm: float

    def _orient(self, a: np.ndarray) -> np.ndarray:
        if self.transpose:
            a = a.T
        if self.flip_rows:
            a = a[::-1]
        if self.flip_cols:
            a = a[:, ::-1]
        return a

    def take(self, arr: np.ndarray) -> np.ndarray:
        """The plane's slice of a (z, y, x) array, oriented for display."""
        return self._orient(np.take(arr, self.index, axis=self.axis))

    def project(self, arr: np.ndarray) -> np.ndarray:
        """Maximum of a (z, y, x) array across the plane's axis, oriented like :meth:`take`."""
        return self._orient(arr.max(axis=self.axis))


def sagittal_plane(image: sitk.Image, point: tuple[float, float, float]) -> Plane:
    """The slice of ``image`` through ``point`` across its most left-right axis, oriented for display."""
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # column i: direction of index i
    sp = image.GetSpacing()
    lr = int(np.argmax(np.abs(d[0])))  # sitk index axis closest to patient x (left-right)
    rest = [i for i in range(3) if i != lr]  # sitk index axes, increasing
    vert = max(rest, key=lambda i: abs(d[2, i]))  # closest to head-foot
    horiz = next(i for i in rest if i != vert)
    cidx = image.TransformPhysicalPointToContinuousIndex(point)
    index = int(np.clip(round(cidx[lr]), 0, image.GetSize()[lr] - 1))
    # numpy axis of sitk index i is 2 - i; after removing the lr axis the remaining numpy axes keep
    # their order, i.e. rows = the larger sitk index of ``rest``
    rows_sitk = max(rest)
    transpose = rows_sitk != vert
    return Plane(axis=2 - lr, index=index, transpose=transpose,
                 flip_rows=bool(d[2, vert] > 0),  # rows must run towards the feet (-z in LPS)
                 flip_cols=bool(d[1, horiz] < 0),  # columns must run towards the back (+y in LPS)
                 row_mm=float(sp[vert]), col_mm=float(sp[horiz]))


def crop_box(plane: Plane, body: np.ndarray | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns around the body's projection plus the margin; the whole slice without a body."""
    if body is None or not body.any():
        return slice(0, shape[0]), slice(0, shape[1])
    proj = plane.project(body)
    rr, cc = np.nonzero(proj)
    mr = int(np.ceil(MARGIN_MM / plane.row_mm))
    mc = int(np.ceil(MARGIN_MM / plane.col_mm))
    return (slice(max(0, int(rr.min()) - mr), min(shape[0], int(rr.max()) + mr + 1)),
            slice(max(0, int(cc.min()) - mc), min(shape[1], int(cc.max()) + mc + 1)))


def enhancement_image(phases: list[sitk.Image]) -> sitk.Image:
    """Mean of the last quarter of the phases minus the mean of the first two, on the DCE grid."""
    n = len(phases)
    n_last = max(1, n // 4)
    first = [sitk.GetArrayFromImage(p).astype(np.float32) for p in phases[: min(2, n)]]
    last = [sitk.GetArrayFromImage(p).astype(np.float32) for p in phases[n - n_last:]]
    diff = np.mean(last, axis=0) - np.mean(first, axis=0)
    out = sitk.GetImageFromArray(diff)
    out.CopyInformation(phases[0])
    return out


def fmt(value: object, digits: int = 1) -> str:
    """A number for a title; '-' for missing or empty values."""
    if value is None or value == "":
        return "-"
    try:
        return f"{float(str(value)):.{digits}f}"
    except ValueError:
        return str(value)


def heights_text(src: dict[str, Any] | dict[str, str] | None) -> str:
    """Anterior/middle/posterior heights as 'a/m/p'."""
    if src is None:
        return "-"
    return "/".join(fmt(src.get(f"height_{k}_mm")) for k in ("anterior", "middle", "posterior"))


def draw_panel(ax: Axes, image: sitk.Image, plane: Plane, masks: dict[tuple[str, str], sitk.Image | None],
               contours: tuple[tuple[str, str, str, str], ...], crop_mask: sitk.Image | None,
               title: str, symmetric: bool) -> list[str]:
    """One image slice with mask contours; returns the labels of masks present in the volume but not in the slice."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    sl = plane.take(arr)
    crop_arr = None
    if crop_mask is not None:
        crop_arr = sitk.GetArrayFromImage(resample_to(image, crop_mask, None, nearest=True)) > 0
    rows, cols = crop_box(plane, crop_arr, sl.shape)
    view = sl[rows, cols]
    if symmetric:
        hi = float(np.percentile(np.abs(view), 99.5)) or 1.0
        lo = -0.25 * hi
    else:
        lo, hi = (float(v) for v in np.percentile(view, (0.5, 99.5)))
        hi = hi if hi > lo else lo + 1.0
    ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, aspect=plane.row_mm / plane.col_mm, interpolation="nearest")
    off_slice = []
    for label, source, name, colour in contours:
        m = masks.get((source, name))
        if m is None:
            continue
        on_grid = sitk.GetArrayFromImage(resample_to(image, m, None, nearest=True)) > 0
        cut = plane.take(on_grid)[rows, cols]
        if cut.any():
            dotted = colour == "white"
            ax.contour(cut.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.7 if dotted else 1.2,
                       linestyles="dotted" if dotted else "solid")
        elif on_grid.any():
            off_slice.append(label)
            if name == "residual":  # where it is: its projection across the slices, dashed
                proj = plane.project(on_grid)[rows, cols]
                if proj.any():
                    ax.contour(proj.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0,
                               linestyles="dashed")
    # 10 mm scale bar, lower left
    bar = 10.0 / plane.col_mm
    y0 = view.shape[0] - 3
    ax.plot([2, 2 + bar], [y0, y0], color="white", linewidth=2)
    ax.text(2, y0 - 1.5, "10 mm", color="white", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return off_slice


def blank(ax: Axes, title: str, message: str) -> None:
    """A panel with only a message."""
    ax.set_title(title, fontsize=8)
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(message, 40)), ha="center", va="center", fontsize=8,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


class Studies:
    """load_study with a cache (the lesions of one patient share studies)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._cache: dict[str, StudyImages | str] = {}
        self._patient: str | None = None

    def get(self, patient_id: str, study_uid: str) -> StudyImages | str:
        """The study's images, or the reason it cannot be loaded."""
        if patient_id != self._patient:  # keep only one patient's studies in memory
            self._cache.clear()
            self._patient = patient_id
        if study_uid not in self._cache:
            series = [s for s in self.catalog.series(patient_id) if s.study_uid == study_uid]
            if not series:
                self._cache[study_uid] = "study not in the run's catalog"
            else:
                self._cache[study_uid] = load_study(self.catalog, study_uid, None, series)
        return self._cache[study_uid]


def lesion_figure(lesion: dict[str, Any], row: dict[str, str] | None, diffs: list[tuple[str, str, str]],
                  measurements: dict[str, dict[str, str]], cohort: Path, results: Path, studies: Studies,
                  out_png: Path) -> None:
    """Write the PNG of one lesion (rows = visits, columns = T1 / DCE enhancement)."""
    lid = str(lesion["lesion_id"])
    pid = str(lesion["patient_id"])
    order = {tp: i for i, tp in enumerate(TIMEPOINTS)}
    visits = sorted(lesion["visits"], key=lambda v: order.get(str(v["timepoint"]), len(order)))
    head = f"{lid}  (course {lesion.get('course')})\n" + "; ".join(f"{f}: {t} -> {p}" for f, t, p in diffs)
    reason = row.get("reason", "") if row is not None else "lesion not in lesions.csv"
    wrapped = textwrap.fill(f"pipeline reason: {reason}", width=100)
    n_lines = head.count("\n") + wrapped.count("\n") + 2
    top_in = 0.12 * n_lines + 0.4  # the suptitle, then the first row's two-line panel titles
    bottom_in = 0.5  # the legend
    height_in = (PANEL_IN + 0.35) * len(visits) + top_in + bottom_in
    fig, axes = plt.subplots(len(visits), 2, figsize=(2 * PANEL_IN, height_in), squeeze=False)
    pipe_dir = results / "patients" / safe_path_component(pid) / safe_path_component(lid)
    truth_dir = cohort / "truth" / lid
    for r, visit in enumerate(visits):
        tp = str(visit["timepoint"])
        meas = measurements.get(tp)
        masks: dict[tuple[str, str], sitk.Image | None] = {}
        for name in MASKS:
            masks[("truth", name)] = read_mask(truth_dir / tp / f"{name}.nii.gz")
            masks[("pipeline", name)] = read_mask(pipe_dir / safe_path_component(tp) / f"{name}.nii.gz")
        t1_title = (f"{tp} T1  heights a/m/p mm\ntruth {heights_text(visit)}  "
                    f"pipeline {heights_text(meas)}")
        res_t = fmt(visit.get("residual_enhancing_volume_ml"), 2)
        res_p = fmt(meas.get("residual_enhancing_volume_ml"), 2) if meas else "-"
        dce_title = f"{tp} DCE enhancement  residual mL\ntruth {res_t}  pipeline {res_p}"
        if meas is None:
            dce_title += " (no measurement row)"
        img = studies.get(pid, str(visit["study_uid"]))
        body = masks[("truth", "vertebra")]
        centre = centroid_mm(body) if body is not None else None
        if isinstance(img, str) or centre is None:
            why = img if isinstance(img, str) else "no truth vertebra mask for this visit"
            blank(axes[r, 0], t1_title, why)
            blank(axes[r, 1], dce_title, why)
            continue
        off = draw_panel(axes[r, 0], img.t1, sagittal_plane(img.t1, centre), masks, T1_CONTOURS, body,
                         t1_title, symmetric=False)
        if img.dce_phases:
            enh = enhancement_image(img.dce_phases)
            off += draw_panel(axes[r, 1], enh, sagittal_plane(enh, centre), masks, DCE_CONTOURS, body,
                              dce_title, symmetric=True)
        else:
            blank(axes[r, 1], dce_title, "no usable DCE: " + "; ".join(img.notes))
        if off:
            axes[r, 1].text(0.02, 0.98, "off this slice: " + ", ".join(off) + "\n(residual dashed: projection "
                            "across all slices)", transform=axes[r, 1].transAxes, fontsize=6, color="white",
                            va="top")
    fig.suptitle(f"{head}\n{wrapped}", fontsize=7, ha="left", x=0.01, y=0.998)
    handles = [Line2D([], [], color="black" if c == "white" else c, label=label,
                      linestyle="dotted" if c == "white" else "solid")
               for label, _, _, c in T1_CONTOURS + DCE_CONTOURS]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=bottom_in / height_in, top=1 - top_in / height_in,
                        hspace=0.35 / PANEL_IN * 1.6, wspace=0.04)
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    """Command line entry point; returns the exit code."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="phantom folder (truth.json, truth/)")
    ap.add_argument("--results", type=Path, required=True, help="results folder of `crav run`")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNGs and index.md")
    a = ap.parse_args(argv)
    truth = json.loads((a.cohort / "truth.json").read_text(encoding="utf-8"))
    rows = {r["lesion_id"]: r for r in read_csv(a.results / "lesions.csv")}
    meas: dict[str, dict[str, dict[str, str]]] = {}
    for m in read_csv(a.results / "measurements.csv"):
        meas.setdefault(m["lesion_id"], {})[m["timepoint"]] = m
    a.out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(a.results / "catalog.sqlite")
    studies = Studies(catalog)
    lesions = sorted(truth["lesions"], key=lambda x: (str(x["patient_id"]), str(x["lesion_id"])))
    index = ["# Lesions classified differently from the truth", "",
             f"cohort `{a.cohort}`, results `{a.results}`", "",
             "| lesion | course | differing fields (truth -> pipeline) | picture |", "|---|---|---|---|"]
    n = 0
    try:
        for lesion in lesions:
            lid = str(lesion["lesion_id"])
            row = rows.get(lid)
            diffs = differing_fields(lesion, row)
            if not diffs:
                continue
            png = f"{safe_name(lid)}.png"
            lesion_figure(lesion, row, diffs, meas.get(lid, {}), a.cohort, a.results, studies, a.out / png)
            fields = "; ".join(f"{f}: {t} -> {p}" for f, t, p in diffs)
            index.append(f"| {lid} | {lesion.get('course', '')} | {fields} | [{png}]({png}) |")
            log(f"{lid}: {fields} -> {a.out / png}")
            n += 1
    finally:
        catalog.close()
    if n == 0:
        index.append("| (none) | | | |")
    index += ["", f"{n} of {len(lesions)} lesions differ."]
    (a.out / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    log(f"{n} of {len(lesions)} lesions differ; index: {a.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
