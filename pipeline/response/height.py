"""Vertebral body heights on the body's own mid-sagittal plane, height loss and Genant grade.

Geometry convention
-------------------
``body_mask`` is a numpy array in ``(z, y, x)`` order, as ``SimpleITK.GetArrayFromImage``
returns it, and ``spacing_mm`` is in the same ``(z, y, x)`` order. ``direction`` is the
image's 3x3 direction matrix exactly as SimpleITK stores it
(``np.array(img.GetDirection()).reshape(3, 3)``): column ``j`` is the unit vector, in DICOM
patient coordinates LPS (+x left, +y posterior, +z superior), of SimpleITK index axis ``j``
(``j = 0`` the column index x, ``1`` the row index y, ``2`` the slice index z). So the numpy
voxel ``[k, j, i]`` sits at ``origin + direction @ (i * sx, j * sy, k * sz)``. The origin is
irrelevant to lengths and is taken as 0.

Example
-------
>>> import numpy as np
>>> m = np.zeros((30, 40, 40), bool)
>>> m[5:25, 5:35, 5:35] = True          # 20 slices of 1 mm: height 20 mm
>>> h = vertebral_heights(m, (1.0, 1.0, 1.0), np.eye(3))
>>> round(h.anterior_mm, 1), round(h.middle_mm, 1), round(h.posterior_mm, 1)
(20.0, 20.0, 20.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

FloatArray = NDArray[np.float64]

#: Fractions of the antero-posterior depth (from anterior) where heights are measured.
HEIGHT_FRACTIONS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Heights:
    """Anterior, middle and posterior heights of one vertebral body (mm).

    Attributes
    ----------
    anterior_mm, middle_mm, posterior_mm : float
        Endplate-to-endplate lengths along ``si_axis`` at 10 %, 50 % and 90 % of the depth.
    si_axis, ap_axis : ndarray, shape (3,)
        Unit vectors (LPS) of the body's superior (+) and posterior (+) axes.
    depth_mm : float
        Antero-posterior depth through the centroid along ``ap_axis``.
    centroid_mm : ndarray, shape (3,)
        Centroid in LPS relative to the image origin.
    """

    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    si_axis: FloatArray
    ap_axis: FloatArray
    depth_mm: float = float("nan")
    centroid_mm: FloatArray = field(default_factory=lambda: np.zeros(3))


def _body_axes(points: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Centroid, SI and AP unit vectors of a point cloud (principal axes, LPS signs)."""
    c = points.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((points - c).T))
    order = np.argsort(evals)
    evals, evecs = evals[order], evecs[:, order]
    j_si = int(np.argmax(np.abs(evecs[2, :])))
    si = evecs[:, j_si] * np.sign(evecs[2, j_si] or 1.0)
    others = [j for j in range(3) if j != j_si]
    ev_a, ev_b = evals[others[0]], evals[others[1]]
    y = np.array([0.0, 1.0, 0.0])
    if abs(ev_a - ev_b) > 0.1 * max(ev_a, ev_b):
        # distinct in-plane axes: the body's own AP axis is the one closest to patient y
        j_ap = max(others, key=lambda j: abs(evecs[1, j]))
        ap = evecs[:, j_ap]
    else:  # nearly circular cross-section: in-plane axes undefined, use patient y
        ap = y
    ap = ap - np.dot(ap, si) * si
    norm = np.linalg.norm(ap)
    if norm < 1e-6:
        raise ValueError("the body's superior-inferior axis is parallel to patient y: cannot orient AP")
    ap = ap / norm
    return c, si, ap * np.sign(ap[1] or 1.0)


def _run_length(values: FloatArray, pos: FloatArray) -> tuple[float, float]:
    """Start and end (sub-sample) of the longest run of ``values >= 0.5`` along ``pos``."""
    inside = values >= 0.5
    if not inside.any():
        return float("nan"), float("nan")
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    k = int(np.argmax(ends - starts))
    s, e = int(starts[k]), int(ends[k])

    def cross(i_out: int, i_in: int) -> float:
        if i_out < 0 or i_out >= values.size:
            return float(pos[i_in])
        v0, v1 = values[i_out], values[i_in]
        f = (0.5 - v0) / (v1 - v0) if v1 != v0 else 1.0
        return float(pos[i_out] + f * (pos[i_in] - pos[i_out]))

    return cross(s - 1, s), cross(e + 1, e)


def vertebral_heights(body_mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                      direction: NDArray[np.floating] | None = None, *,
                      step_mm: float | None = None, average_mm: float = 1.0) -> Heights:
    """Anterior, middle and posterior heights on the body's mid-sagittal plane.

    The body's principal axes in physical space give its own superior-inferior axis (the
    principal axis closest to patient z) and antero-posterior axis (the in-plane principal
    axis closest to patient y; patient y itself, orthogonalised, when the two in-plane
    moments differ by less than 10 %). On the plane through the centroid spanned by those
    axes, the depth is measured along AP through the centroid; at 10 %, 50 % and 90 % of it
    (anterior = most negative y), lines along SI sample the mask by trilinear interpolation
    (``scipy.ndimage.map_coordinates``) and the height is the length of the longest run above
    0.5, its ends located to a fraction of a sample (mean of 5 parallel lines, see
    ``average_mm``).

    Parameters
    ----------
    body_mask : ndarray of bool, shape (z, y, x)
        Vertebral body (cement included), one connected body.
    spacing_mm : (float, float, float)
        Voxel size (z, y, x) in mm.
    direction : ndarray, shape (3, 3), optional
        SimpleITK direction matrix (see module docstring); identity when omitted.
    step_mm : float, optional
        Sampling step along the lines; default a tenth of the smallest spacing.
    average_mm : float
        Each length is the mean over 5 parallel lines spread over +/- ``average_mm`` (across
        the line, in the mid-sagittal plane), which averages out the voxel staircase of a
        sloping endplate; 0 measures on a single line.

    Returns
    -------
    Heights

    Raises
    ------
    ValueError
        If the mask is empty, not 3-D, or the spacing / direction is invalid.
    """
    mask = np.asarray(body_mask, dtype=bool)
    if mask.ndim != 3 or len(spacing_mm) != 3 or any(s <= 0 for s in spacing_mm):
        raise ValueError(f"need a 3-D mask and positive (z, y, x) spacing, got {mask.shape}, {spacing_mm}")
    if mask.sum() < 4:
        raise ValueError("body_mask is empty (fewer than 4 voxels): no vertebral body to measure")
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or abs(np.linalg.det(d)) < 1e-6:
        raise ValueError(f"direction must be an invertible 3x3 matrix, got {d.tolist()}")
    sp_xyz = np.array(spacing_mm[::-1], dtype=np.float64)
    to_phys = d * sp_xyz[None, :]  # physical = to_phys @ (i, j, k)
    to_index = np.linalg.inv(to_phys)

    idx_xyz = np.argwhere(mask)[:, ::-1].astype(np.float64)
    points = idx_xyz @ to_phys.T
    c, si, ap = _body_axes(points)
    reach = float(np.max(np.linalg.norm(points - c, axis=1))) + 2.0 * float(sp_xyz.max())
    step = step_mm if step_mm is not None else float(sp_xyz.min()) / 10.0
    pos = np.arange(-reach, reach + step, step)
    field_ = mask.astype(np.float32)
    offsets = np.linspace(-average_mm, average_mm, 5) if average_mm > 0 else np.zeros(1)

    def sample(start: FloatArray, axis: FloatArray) -> FloatArray:
        phys = start[None, :] + pos[:, None] * axis[None, :]
        ijk = phys @ to_index.T  # (n, 3) as (x, y, z) indices
        coords = ijk[:, ::-1].T  # numpy order (z, y, x)
        return np.asarray(ndimage.map_coordinates(field_, coords, order=1, mode="constant", cval=0.0))

    def mean_run(start: FloatArray, axis: FloatArray, across: FloatArray) -> tuple[float, float]:
        ends = [_run_length(sample(start + o * across, axis), pos) for o in offsets]
        ok = [e for e in ends if np.isfinite(e[0])]
        if not ok:
            return float("nan"), float("nan")
        return float(np.mean([e[0] for e in ok])), float(np.mean([e[1] for e in ok]))

    a0, a1 = mean_run(c, ap, si)
    if not np.isfinite(a0):
        raise ValueError("the antero-posterior line through the centroid misses the body (non-convex mask)")
    heights = []
    for f in HEIGHT_FRACTIONS:
        h0, h1 = mean_run(c + (a0 + f * (a1 - a0)) * ap, si, ap)
        heights.append(h1 - h0 if np.isfinite(h0) else 0.0)
    return Heights(anterior_mm=heights[0], middle_mm=heights[1], posterior_mm=heights[2],
                   si_axis=si, ap_axis=ap, depth_mm=a1 - a0, centroid_mm=c)


def height_loss_pct(j0: Heights, visit: Heights) -> float:
    """Largest relative height loss since J0, in % (``max (H_J0 - H) / H_J0 x 100``).

    Raises
    ------
    ValueError
        If a J0 height is not positive.
    """
    pairs = _pairs(j0, visit)
    return max((h0 - h) / h0 * 100.0 for h0, h in pairs)


def height_loss_mm(j0: Heights, visit: Heights) -> float:
    """Largest absolute height loss since J0, in mm (``max H_J0 - H``)."""
    return max(h0 - h for h0, h in _pairs(j0, visit))


def _pairs(j0: Heights, visit: Heights) -> list[tuple[float, float]]:
    pairs = [(j0.anterior_mm, visit.anterior_mm), (j0.middle_mm, visit.middle_mm),
             (j0.posterior_mm, visit.posterior_mm)]
    if any(not h0 > 0 for h0, _ in pairs):
        raise ValueError(f"J0 heights must be > 0 mm, got {[h0 for h0, _ in pairs]}")
    return pairs


def genant_reduction(h: Heights, adjacent_posterior_mm: float | None = None) -> float:
    """Largest height reduction (fraction): wedge ``1-Ha/Hp``, biconcave ``1-Hm/Hp``, crush ``1-Hp/Hp_adj``.

    Raises
    ------
    ValueError
        If the posterior height (or the adjacent one, when given) is not positive.
    """
    if not h.posterior_mm > 0:
        raise ValueError(f"posterior height must be > 0 mm, got {h.posterior_mm}")
    ratios = [1.0 - h.anterior_mm / h.posterior_mm, 1.0 - h.middle_mm / h.posterior_mm]
    if adjacent_posterior_mm is not None:
        if not adjacent_posterior_mm > 0:
            raise ValueError(f"adjacent_posterior_mm must be > 0 mm, got {adjacent_posterior_mm}")
        ratios.append(1.0 - h.posterior_mm / adjacent_posterior_mm)
    return max(ratios)


def genant_grade(h: Heights, adjacent_posterior_mm: float | None = None) -> int:
    """Semi-quantitative Genant grade from the height ratios.

    Grade 0: reduction < 20 %; 1: 20 % to < 25 %; 2: 25 % to 40 % inclusive; 3: > 40 %.
    The reduction is rounded to 1e-9 so exact ratios (20/25) fall on their boundary.

    Parameters
    ----------
    h : Heights
    adjacent_posterior_mm : float, optional
        Posterior height of an adjacent normal vertebra (mm), for the crush ratio.

    Returns
    -------
    int
        0 to 3.
    """
    r = round(genant_reduction(h, adjacent_posterior_mm), 9)
    if r < 0.20:
        return 0
    if r < 0.25:
        return 1
    if r <= 0.40:
        return 2
    return 3
