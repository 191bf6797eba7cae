"""Vertebral body heights (SPEC section 4): method error on phantom bodies, agreement with TotalSegmentator.

Usage: python benchmarks/bench_heights.py [--synthetic 300] [--seed 11] [--cohort /tmp/c3]
       [--pairs 100] [--no-realdata] [--impl PATH] [--json PATH]

Prints markdown tables. Four parts:

1. Synthetic bodies (``--synthetic N``, exact truth). Bodies built with the phantom's own shape,
   ``pipeline.phantom.anatomy.body_shape`` (super-ellipse cross-section, quadratic height profile
   through the heights at 10 / 50 / 90 % of the depth), level T10-L5 with the generator's
   dimensions (x U(0.95, 1.05)); shape class normal (40 %: Ha, Hm = Hp x U(0.92, 0.99),
   U(0.92, 0.97)), wedge (30 %: Ha = Hp x U(0.63, 0.71)) or biconcave (30 %: Hm = Hp x
   U(0.63, 0.71)); half the fractured bodies collapsed further by f = U(0, 0.45) as in
   ``pipeline.phantom.design.heights_at`` (wedge: Ha x (1 - f), Hm x (1 - f/2); biconcave: Hm x
   (1 - f), Ha x (1 - f/3)). Sagittal lean U(-10, 10) deg, patient rotation U(-3, 3) deg about
   each axis, sagittal T1 grid of 1.25 x 1.25 mm pixels and 4.4 mm slices (left-right), oblique
   about z by U(-4, 4) deg, random sub-voxel position. Mask = voxels at least half inside the
   body (3 x 3 x 7 sub-samples per voxel). Error = measured - designed height.
2. Phantom cohort truth masks (``--cohort``, e.g. ``/tmp/c3``): each lesion-visit's
   ``truth/<lesion>/<visit>/vertebra.nii.gz`` (0.8 mm grid, in that study's scanner frame)
   reduced to a T1-like grid as above (voxels at least half covered,
   ``pipeline.evaluate.truth_fraction_on_grid`` with 3 x 3 x 3 sub-samples: with its default 4
   in-plane a boundary voxel can be exactly half covered, and counting those inside lengthens
   every height by ~1/8 pixel per end); truth = ``truth.json`` heights. Reported on
   all visits and on the *clean* ones: PRE visits, and visits of non-fractured lesions whose
   heights are still those of PRE. Elsewhere the truth mask is ``body | cement`` with the cement
   drawn once, inside the *non-collapsed* body: once the body is designed lower than that
   (baseline fracture or collapse), the cement sticks out of the endplate and the mask is
   taller than the designed heights (a phantom artefact, see the discussion in RESULTS.md).
3. Frame option (``--pairs N``): the same synthetic body acquired twice (independent patient
   rotation, obliquity and grid position). Height differences between the two acquisitions
   (truth: none) when the second is measured in its own frame, and when it is measured with the
   first acquisition's frame mapped through the (exactly known) rigid transform, as the flow does
   with the J0 frame and the registration. Once on exact masks, once on masks whose boundary
   wanders (smooth random displacement, SD 0.6 mm, correlation ~3 mm, independent at each
   acquisition: segmentation variability).
4. Real data (``../shared/realdata/totalseg``, read in place): heights of L1-L5 on the
   TotalSegmentator example CT (3 mm) compared with ``spine_report.json``, on the masks the
   report used (``test_result/totalseg_vertebrae_pp_refined.nii.gz``, 20 = L1 ... 24 = L5: the
   volumes match the report) and on ``example_ct_report``'s body label x vertebra label
   (``totalseg_vertebrae_body.nii.gz`` label 1 x ``totalseg.nii.gz`` 31 = L1 ... 27 = L5). To
   explain the differences, the report's own method is re-measured (:func:`totalseg_heights`,
   written here from the description of TotalSegmentator @ d6dca2bf,
   ``totalsegmentator/spine_report/measure_verte_height.py``, Apache-2.0): SI axis = the line
   between the neighbouring bodies' centroids (of the masks eroded by a 3x3x3 cube), sagittal
   slice = among those in the central half of the body's left-right extent, 5 mm apart, the one
   whose three heights spread most; on it, an AP line through the centroid perpendicular to that
   axis, heights at 15 / 50 / 85 % of it, each end = the last point inside (bilinear value > 0.5)
   on a half-voxel grid walked out from the start point. Variants: ``quantized`` (as published:
   reproduces the JSON), ``continuous`` (ends at the exact 0.5 crossing) and ``continuous, centroid
   slice`` (the sagittal slice nearest the centroid instead of the most spread one).

``--impl PATH`` measures with the ``vertebral_heights`` of another file (e.g. a previous version of
``pipeline/response/height.py``) for before / after comparisons.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import inspect
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.phantom import anatomy as an  # noqa: E402
from pipeline.phantom.render import rotation_xyz  # noqa: E402
from pipeline.response import height as height_module  # noqa: E402

F64 = NDArray[np.float64]
HeightsFn = Callable[..., Any]
#: SimpleITK direction of a sagittal series (IOP 0,1,0 / 0,0,-1): x posterior, y inferior, z right.
SAGITTAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
T1_SPACING_XYZ = (1.25, 1.25, 4.4)
LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
NAMES = ("anterior", "middle", "posterior")
#: Boundary displacement (SD, mm) of the second frame-option experiment.
PAIR_NOISE = 0.6


@dataclass
class Case:
    """One body on one grid: mask (z, y, x), spacing (z, y, x), SimpleITK direction, truth heights."""

    case_id: str
    mask: NDArray[np.bool_]
    spacing_zyx: tuple[float, float, float]
    direction: F64
    origin: F64
    truth: tuple[float, float, float]
    kind: str


# --------------------------------------------------------------------------------------------
# synthetic bodies
# --------------------------------------------------------------------------------------------

def _rz(deg: float) -> F64:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def design_body(rng: np.random.Generator) -> tuple[an.Vertebra, tuple[float, float, float], str]:
    """A random body (phantom dimensions and shape classes, see the module doc) and its heights."""
    level = str(rng.choice(LEVELS))
    w, d, h, _ = an.level_dimensions_mm(level)
    scale = float(rng.uniform(0.95, 1.05))
    hp = h * scale
    ha, hm = hp * rng.uniform(0.92, 0.99), hp * rng.uniform(0.92, 0.97)
    u = rng.uniform()
    kind = "normal" if u < 0.4 else ("wedge" if u < 0.7 else "biconcave")
    if kind == "wedge":
        ha = hp * rng.uniform(0.63, 0.71)
    elif kind == "biconcave":
        hm = hp * rng.uniform(0.63, 0.71)
    if kind != "normal" and rng.uniform() < 0.5:
        f = float(rng.uniform(0.0, 0.45))
        if kind == "biconcave":
            hm, ha = hm * (1 - f), ha * (1 - f / 3)
        else:
            ha, hm = ha * (1 - f), hm * (1 - f / 2)
    tilt = float(np.deg2rad(rng.uniform(-10.0, 10.0)))
    vert = an.Vertebra(level, (0.0, 0.0, 0.0), tilt, w * scale, d * scale, (hp, hp, hp))
    return vert, (float(ha), float(hm), float(hp)), kind


def rasterise_body(vert: an.Vertebra, heights: tuple[float, float, float], patient_rot: F64, centre: F64,
                   direction: F64, spacing_xyz: Sequence[float], rng: np.random.Generator,
                   sub: tuple[int, int, int] = (3, 3, 7), noise: float = 0.0) -> tuple[NDArray[np.bool_], F64]:
    """Voxels of a grid (``direction``, ``spacing_xyz``) at least half inside the body; and the grid origin.

    The body sits at scanner point ``centre`` with orientation ``patient_rot @ vert.rotation()``.
    The grid's origin is placed at a random sub-voxel position around the body's bounding box.
    ``noise`` > 0 (mm) moves the boundary by a smooth random displacement of that standard
    deviation (white noise smoothed by a Gaussian of 3 mm, added to the signed distance to the
    boundary): a segmentation whose boundary wanders by about a voxel in patches, differently at
    each acquisition, without holes or islands.
    """
    sp = np.asarray(spacing_xyz, dtype=np.float64)
    rot = patient_rot @ vert.rotation()  # columns: body u, v, w in scanner LPS
    half = np.array([vert.width_mm, vert.depth_mm, max(heights)]) / 2 + 1.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    grid_coords = (corners @ rot.T + centre) @ direction  # coordinates along the grid axes
    lo = grid_coords.min(axis=0) - sp * (1.0 + rng.uniform(0.0, 1.0, 3))
    size = np.ceil((grid_coords.max(axis=0) + 2 * sp - lo) / sp).astype(int)
    origin = direction @ lo
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in sub]
    frac = np.zeros(tuple(int(v) for v in size[::-1]), dtype=np.float32)  # (z, y, x)
    k, j, i = np.meshgrid(*(np.arange(int(n), dtype=np.float64) for n in size[::-1]), indexing="ij")
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                idx = np.stack([i + ox, j + oy, k + oz], axis=-1) * sp
                local = (idx @ direction.T + origin - centre) @ rot  # (u, v, w)
                frac += an.body_shape(local[..., 0], local[..., 1], local[..., 2], vert, heights)
    frac /= len(offsets[0]) * len(offsets[1]) * len(offsets[2])
    mask = frac >= 0.5
    if noise > 0:
        sp_zyx = sp[::-1]
        field = ndimage.gaussian_filter(rng.standard_normal(frac.shape), 3.0 / sp_zyx)
        signed = (np.asarray(ndimage.distance_transform_edt(mask, sampling=sp_zyx))
                  - np.asarray(ndimage.distance_transform_edt(~mask, sampling=sp_zyx)))
        mask = signed + noise * field / field.std() > 0
    return mask, origin


def synthetic_cases(n: int, seed: int) -> list[Case]:
    """``n`` random bodies on random T1-like sagittal grids (see the module doc)."""
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        vert, heights, kind = design_body(rng)
        patient_rot = rotation_xyz(rng.uniform(-3.0, 3.0, 3))
        direction = _rz(float(rng.uniform(-4.0, 4.0))) @ SAGITTAL
        centre = rng.uniform(-20.0, 20.0, 3)
        mask, origin = rasterise_body(vert, heights, patient_rot, centre, direction, T1_SPACING_XYZ, rng)
        cases.append(Case(f"syn{k:04d}-{vert.level}", mask, T1_SPACING_XYZ[::-1], direction, origin, heights, kind))
    return cases


# --------------------------------------------------------------------------------------------
# phantom cohort truth masks
# --------------------------------------------------------------------------------------------

def cohort_cases(cohort: Path, seed: int) -> list[Case]:
    """Truth bodies of a generated cohort reduced to T1-like grids (kind ``clean`` or ``cement``)."""
    import SimpleITK as sitk

    from pipeline.evaluate import truth_fraction_on_grid

    truth = json.loads((cohort / "truth.json").read_text())
    rng = np.random.default_rng(seed)
    keys = ("height_anterior_mm", "height_middle_mm", "height_posterior_mm")
    cases = []
    for les in truth["lesions"]:
        pre = next((v for v in les["visits"] if v["timepoint"] == "PRE"), None)
        for v in les["visits"]:
            img = sitk.ReadImage(str(cohort / "truth" / les["lesion_id"] / v["timepoint"] / "vertebra.nii.gz"))
            direction = _rz(float(rng.uniform(-4.0, 4.0))) @ SAGITTAL
            idx = np.argwhere(sitk.GetArrayViewFromImage(img) > 0)
            lo_i, hi_i = idx.min(axis=0) - 2, idx.max(axis=0) + 2
            corners = np.array([img.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                                for k in (lo_i[0], hi_i[0]) for j in (lo_i[1], hi_i[1]) for i in (lo_i[2], hi_i[2])])
            sp = np.asarray(T1_SPACING_XYZ)
            loc = corners @ direction
            lo = loc.min(axis=0) - sp * (1.0 + rng.uniform(0.0, 1.0, 3))
            size = np.ceil((loc.max(axis=0) + 2 * sp - lo) / sp).astype(int)
            ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
            ref.SetSpacing([float(s) for s in sp])
            ref.SetDirection([float(x) for x in direction.ravel()])
            ref.SetOrigin([float(x) for x in direction @ lo])
            mask = truth_fraction_on_grid(img, ref, max_factor=3) >= 0.5  # 27 sub-samples: no tie at 0.5
            clean = v["timepoint"] == "PRE" or (les["fracture_type"] is None and pre is not None
                                                 and all(abs(v[k] - pre[k]) < 1e-6 for k in keys))
            cases.append(Case(f"{les['lesion_id']}/{v['timepoint']}", mask, T1_SPACING_XYZ[::-1], direction,
                              np.asarray(ref.GetOrigin()), (v[keys[0]], v[keys[1]], v[keys[2]]),
                              "clean" if clean else "cement"))
    return cases


# --------------------------------------------------------------------------------------------
# error tables
# --------------------------------------------------------------------------------------------

def measure(fn: HeightsFn, case: Case, **kw: Any) -> Any:
    return fn(case.mask, case.spacing_zyx, case.direction, **kw)


def errors(fn: HeightsFn, cases: Sequence[Case]) -> tuple[F64, float]:
    """``(n, 3)`` measured - truth (anterior, middle, posterior) and the mean time per body (s)."""
    out = []
    t0 = time.perf_counter()
    for c in cases:
        h = measure(fn, c)
        out.append(np.array([h.anterior_mm, h.middle_mm, h.posterior_mm]) - np.asarray(c.truth))
    return np.array(out).reshape(-1, 3), (time.perf_counter() - t0) / max(len(cases), 1)


def error_stats(e: F64) -> dict[str, dict[str, float]]:
    if not len(e):
        return {}
    a = np.abs(e)
    return {name: {"median_abs_mm": float(np.median(a[:, k])), "bias_mm": float(np.mean(e[:, k])),
                   "p95_abs_mm": float(np.percentile(a[:, k], 95)), "max_abs_mm": float(np.max(a[:, k]))}
            for k, name in enumerate(NAMES)}


def error_table(groups: dict[str, F64]) -> str:
    lines = ["| set | n | height | median abs error (mm) | bias (mm) | p95 abs (mm) | max abs (mm) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for label, e in groups.items():
        for name, s in error_stats(e).items():
            lines.append(f"| {label} | {len(e)} | {name} | {s['median_abs_mm']:.2f} | {s['bias_mm']:+.2f} | "
                         f"{s['p95_abs_mm']:.2f} | {s['max_abs_mm']:.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# frame option: the same body acquired twice
# --------------------------------------------------------------------------------------------

def frame_pairs(fn: HeightsFn, n: int, seed: int, noise: float = 0.0) -> dict[str, F64]:
    """|H2 - H1| of an unchanged body, acquisition 2 in its own frame vs in acquisition 1's frame."""
    rng = np.random.default_rng(seed)
    own, mapped = [], []
    for _ in range(n):
        vert, heights, _ = design_body(rng)
        acq = []
        for _ in range(2):
            rot = rotation_xyz(rng.uniform(-3.0, 3.0, 3))
            direction = _rz(float(rng.uniform(-4.0, 4.0))) @ SAGITTAL
            centre = rng.uniform(-20.0, 20.0, 3)
            mask, origin = rasterise_body(vert, heights, rot, centre, direction, T1_SPACING_XYZ, rng, noise=noise)
            acq.append((Case("pair", mask, T1_SPACING_XYZ[::-1], direction, origin, heights, ""), rot, centre))
        (c1, r1, t1), (c2, r2, t2) = acq
        h1, h2 = measure(fn, c1), measure(fn, c2)
        # body point p -> scanner k: r_k p + t_k; so scanner 1 -> scanner 2: x2 = r2 r1^T (x1 - t1) + t2
        m = r2 @ r1.T
        centroid = m @ (c1.origin + h1.centroid_mm - t1) + t2 - c2.origin
        h2f = measure(fn, c2, frame=(centroid, m @ h1.si_axis, m @ h1.ap_axis))
        v1 = np.array([h1.anterior_mm, h1.middle_mm, h1.posterior_mm])
        own.append(np.abs(np.array([h2.anterior_mm, h2.middle_mm, h2.posterior_mm]) - v1))
        mapped.append(np.abs(np.array([h2f.anterior_mm, h2f.middle_mm, h2f.posterior_mm]) - v1))
    return {"own frame": np.array(own), "J0 frame mapped": np.array(mapped)}


def pairs_table(res: dict[str, F64]) -> str:
    lines = ["| second acquisition measured in | height | median abs change (mm) | p95 (mm) | max (mm) |",
             "|---|---|---:|---:|---:|"]
    for label, d in res.items():
        for k, name in enumerate(NAMES):
            lines.append(f"| {label} | {name} | {np.median(d[:, k]):.2f} | {np.percentile(d[:, k], 95):.2f} | "
                         f"{np.max(d[:, k]):.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# real data: TotalSegmentator example
# --------------------------------------------------------------------------------------------

def load_nifti_zyx(path: Path) -> tuple[NDArray[Any], tuple[float, float, float], F64]:
    """A NIfTI as our convention: array (z, y, x), spacing (z, y, x), SimpleITK-style LPS direction."""
    import nibabel as nib

    img = cast("nib.Nifti1Image", nib.load(str(path)))
    data = np.asarray(img.dataobj)
    zooms = np.array(img.header.get_zooms()[:3], dtype=np.float64)
    direction = np.diag([-1.0, -1.0, 1.0]) @ (img.affine[:3, :3] / zooms[None, :])  # RAS -> LPS columns
    return data.transpose(2, 1, 0), (float(zooms[2]), float(zooms[1]), float(zooms[0])), direction


def _ts_inside(sl: NDArray[Any], y: float, z: float) -> bool:
    """TotalSegmentator's inside test: bilinear value > 0.5, False outside the slice."""
    if not (0 <= y < sl.shape[0] and 0 <= z < sl.shape[1]):
        return False
    yi, zi = int(y), int(z)
    val = 0.0
    for dy in (0, 1):
        for dz in (0, 1):
            if yi + dy < sl.shape[0] and zi + dz < sl.shape[1]:
                val += float(sl[yi + dy, zi + dz]) * (1 - abs(dy - (y - yi))) * (1 - abs(dz - (z - zi)))
    return val > 0.5


def _ts_exit(sl: NDArray[Any], start: tuple[float, float], axis: F64, sign: int,
             quantized: bool) -> tuple[float, float] | None:
    """Where a walk from ``start`` along ``sign * axis`` (voxel units) leaves the slice's mask."""
    a = axis / np.linalg.norm(axis)
    if quantized:
        last = None
        for s in np.arange(0.5, max(sl.shape) * 1.5, 0.5):
            p = (start[0] + sign * a[0] * s, start[1] + sign * a[1] * s)
            if not _ts_inside(sl, *p):
                return last
            last = p
        return last
    s = np.arange(0.0, max(sl.shape) * 1.5, 0.02)
    ys, zs = start[0] + sign * a[0] * s, start[1] + sign * a[1] * s
    v = ndimage.map_coordinates(sl.astype(np.float64), [ys, zs], order=1, mode="constant", cval=0.0)
    out = np.nonzero(v <= 0.5)[0]
    if out.size == 0 or out[0] == 0:
        return None
    k = int(out[0])
    f = (0.5 - v[k - 1]) / (v[k] - v[k - 1]) if v[k] != v[k - 1] else 0.0
    sk = s[k - 1] + f * (s[k] - s[k - 1])
    return (start[0] + sign * a[0] * sk, start[1] + sign * a[1] * sk)


def totalseg_heights(labels: NDArray[Any], spacing_xyz: tuple[float, float, float], order: Sequence[int], *,
                     quantized: bool = True, centroid_slice: bool = False,
                     fractions: tuple[float, float, float] = (0.15, 0.5, 0.85)) -> dict[int, tuple[float, ...]]:
    """The spine report's heights (see the module doc) per label of a RAS label array ``(x, y, z)``.

    ``order`` lists the labels cranial to caudal (neighbours give the SI axis). Returns
    ``{label: (h at fractions[0], h at [1], h at [2], sagittal slice)}``; the fractions run from
    the AP line's first end, which is posterior for this orientation (15 % = "posterior").
    """
    masks = {lab: labels == lab for lab in order}
    cents: list[F64 | None] = []
    for lab in order:
        m = masks[lab]
        if not m.any():
            cents.append(None)
            continue
        er = ndimage.binary_erosion(m, np.ones((3, 3, 3)), border_value=1)
        cents.append(np.argwhere(er if er.any() else m).mean(axis=0))
    out: dict[int, tuple[float, ...]] = {}
    sp = spacing_xyz
    for i, lab in enumerate(order):
        c = cents[i]
        if c is None:
            continue
        prv = cents[i - 1] if i > 0 else None
        nxt = cents[i + 1] if i + 1 < len(order) else None
        h = (nxt - prv if prv is not None and nxt is not None else c - prv if prv is not None
             else nxt - c if nxt is not None else np.array([0.0, 0.0, 1.0]))
        h = h / np.linalg.norm(h)
        horiz = np.array([-h[2] * sp[2] / sp[1], h[1] * sp[1] / sp[2]])  # perpendicular, physical space
        m = masks[lab]
        er = ndimage.binary_erosion(m, np.ones((3, 3, 3)), border_value=1)
        if centroid_slice:
            cand: Sequence[int] = [round(float(c[0]))]
        else:
            xs = np.nonzero(er.any(axis=(1, 2)))[0]
            margin = round(0.25 * float(xs[-1] - xs[0] + 1))
            cand = range(xs[0] + margin, xs[-1] - margin + 1, max(1, round(5.0 / sp[0])))
        best: tuple[float, ...] | None = None
        spread = -1.0
        for x in cand:
            sl = m[x].astype(np.float64)
            a, b = (_ts_exit(sl, (c[1], c[2]), horiz, s, quantized) for s in (-1, 1))
            if a is None or b is None:
                continue
            hs = []
            for f in fractions:
                p = (a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]))
                e0, e1 = (_ts_exit(sl, p, h[1:], s, quantized) for s in (-1, 1))
                hs.append(float(np.hypot((e1[0] - e0[0]) * sp[1], (e1[1] - e0[1]) * sp[2])) if e0 and e1 else 0.0)
            if all(v > 0 for v in hs) and max(hs) - min(hs) > spread:
                best, spread = (*hs, float(x)), max(hs) - min(hs)
        if best is not None:
            out[lab] = best
    return out


def realdata(fn: HeightsFn, root: Path) -> dict[str, Any]:
    """Our heights and the report's re-measured ones against ``spine_report.json``, per level."""
    import nibabel as nib

    rep = root / "totalseg" / "spine_report"
    ref = json.loads((rep / "example_ct_report" / "spine_report.json").read_text())["results"]
    pp, spacing, direction = load_nifti_zyx(rep / "test_result" / "totalseg_vertebrae_pp_refined.nii.gz")
    total, _, _ = load_nifti_zyx(rep / "example_ct_report" / "totalseg.nii.gz")
    body, _, _ = load_nifti_zyx(rep / "example_ct_report" / "totalseg_vertebrae_body.nii.gz")
    levels = [f"L{k}" for k in range(1, 6)]
    res: dict[str, Any] = {"reference": {lv: [ref[f"vertebrae_{lv}_height_{n}_mm"] for n in NAMES] for lv in levels}}
    for label, masks in (("ours, pp_refined mask", {lv: pp == 19 + k for k, lv in enumerate(levels, 1)}),
                         ("ours, body x vertebra mask", {lv: (body == 1) & (total == 32 - k)
                                                         for k, lv in enumerate(levels, 1)})):
        rows = {}
        for lv, m in masks.items():
            h = fn(m, spacing, direction)
            rows[lv] = [h.anterior_mm, h.middle_mm, h.posterior_mm]
        res[label] = rows
    lab_img = cast("nib.Nifti1Image", nib.load(str(rep / "test_result" / "totalseg_vertebrae_pp_refined.nii.gz")))
    lab_xyz = np.asarray(lab_img.dataobj)
    sp_xyz = (spacing[2], spacing[1], spacing[0])
    order = [lab for lab in range(1, 25) if (lab_xyz == lab).any()]  # cranial -> caudal (T12 = 19 ... L5 = 24)
    for label, quantized, centroid_slice in (("report method, quantized (as published)", True, False),
                                             ("report method, continuous ends", False, False),
                                             ("report method, continuous, centroid slice", False, True)):
        got = totalseg_heights(lab_xyz, sp_xyz, order, quantized=quantized, centroid_slice=centroid_slice)
        res[label] = {lv: [got[19 + k][2], got[19 + k][1], got[19 + k][0]] for k, lv in enumerate(levels, 1)}
        res[label + " [x]"] = {lv: int(got[19 + k][3]) for k, lv in enumerate(levels, 1)}
    return res


def realdata_table(res: dict[str, Any]) -> str:
    ref = res["reference"]
    lines = ["| measurement | " + " | ".join(f"{lv} a / m / p (mm)" for lv in ref) + " | max abs diff (mm) |",
             "|---|" + "---|" * len(ref) + "---:|",
             "| spine_report.json | " + " | ".join(" / ".join(f"{v:.1f}" for v in r) for r in ref.values()) + " | |"]
    for label, rows in res.items():
        if label == "reference" or label.endswith(" [x]"):
            continue
        diffs = np.array([np.array(rows[lv]) - np.array(ref[lv]) for lv in ref])
        cells = [" / ".join(f"{v:.1f} ({d:+.1f})" for v, d in zip(rows[lv], diffs[k], strict=True))
                 for k, lv in enumerate(ref)]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.abs(diffs).max():.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------

def load_impl(path: Path | None) -> HeightsFn:
    """``vertebral_heights`` of this repository, or of the file ``path``."""
    if path is None:
        return height_module.vertebral_heights
    spec = importlib.util.spec_from_file_location("bench_heights_impl", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_heights_impl"] = mod
    spec.loader.exec_module(mod)
    fn: HeightsFn = mod.vertebral_heights
    return fn


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=(__doc__ or "").split("\n", 2)[2])
    ap.add_argument("--synthetic", type=int, default=300, help="number of synthetic bodies (0: skip)")
    ap.add_argument("--seed", type=int, default=11, help="seed of the synthetic bodies and grids")
    ap.add_argument("--cohort", type=Path, action="append", default=[],
                    help="phantom cohort folder with truth.json and truth/ (repeatable)")
    ap.add_argument("--pairs", type=int, default=100, help="number of two-acquisition bodies for the frame option")
    ap.add_argument("--no-realdata", action="store_true", help="skip the TotalSegmentator example")
    ap.add_argument("--realdata-root", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--impl", type=Path, help="measure with vertebral_heights from this file instead")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args()
    fn = load_impl(args.impl)
    out: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
                           "impl": str(args.impl or "pipeline/response/height.py"), "argv": sys.argv[1:]}
    print(f"# vertebral heights: {out['impl']} ({out['date']}, Python {out['python']})\n")
    if args.synthetic > 0:
        cases = synthetic_cases(args.synthetic, args.seed)
        e, per_body = errors(fn, cases)
        kinds = np.array([c.kind for c in cases])
        groups = {"all": e, **{k: e[kinds == k] for k in ("normal", "wedge", "biconcave")}}
        print(f"## synthetic bodies (seed {args.seed}), T1 grid 1.25 x 1.25 x 4.4 mm\n")
        print(error_table(groups))
        print(f"\n{per_body * 1000:.0f} ms per body\n")
        out["synthetic"] = {k: error_stats(v) | {"n": len(v)} for k, v in groups.items()}
        out["synthetic_ms_per_body"] = per_body * 1000
    for cohort in args.cohort:
        cases = cohort_cases(cohort, args.seed)
        e, _ = errors(fn, cases)
        kinds = np.array([c.kind for c in cases])
        groups = {"clean visits": e[kinds == "clean"], "cement sticks out": e[kinds == "cement"], "all visits": e}
        print(f"## phantom cohort {cohort} truth masks on a T1 grid\n")
        print(error_table(groups) + "\n")
        out[f"cohort {cohort}"] = {k: error_stats(v) | {"n": len(v)} for k, v in groups.items()}
    if args.pairs > 0 and "frame" in inspect.signature(fn).parameters:
        for noise in (0.0, PAIR_NOISE):
            res = frame_pairs(fn, args.pairs, args.seed + 1, noise)
            what = "exact masks" if noise == 0 else f"masks with a wandering boundary (SD {noise} mm)"
            print(f"## frame option: {args.pairs} unchanged bodies acquired twice, {what}\n")
            print(pairs_table(res) + "\n")
            out[f"pairs noise {noise}"] = {k: {"median": np.median(v, axis=0).tolist(),
                                               "p95": np.percentile(v, 95, axis=0).tolist(),
                                               "max": v.max(axis=0).tolist()} for k, v in res.items()}
    if not args.no_realdata:
        res = realdata(fn, args.realdata_root)
        print("## TotalSegmentator example CT (3 mm): L1-L5 against spine_report.json\n")
        print("Cells: anterior / middle / posterior height (difference to the report).\n")
        print(realdata_table(res) + "\n")
        print("report method's sagittal slice (RAS index x): "
              + "; ".join(f"{k[:-4]}: {v}" for k, v in res.items() if k.endswith(" [x]")) + "\n")
        out["realdata"] = res
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
