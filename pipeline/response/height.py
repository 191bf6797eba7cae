"""Vertebral body heights on the body's own mid-sagittal plane, height loss and Genant grade.

Geometry convention
-------------------
``body_mask`` is a numpy array in ``(z, y, x)`` order, as ``SimpleITK.GetArrayFromImage``
returns it, and ``spacing_mm`` is in the same ``(z, y, x)`` order. ``direction`` is the
image's 3x3 direction matrix exactly as SimpleITK stores it
(``np.array(img.GetDirection()).reshape(3, 3)``): column ``j`` is the unit vector, in DICOM
patient coordinates LPS (+x left, +y posterior, +z superior), of SimpleITK index axis ``j``
(``j = 0`` the column index x, ``1`` the row index y, ``2`` the slice index z). So the numpy
voxel ``[k, j, i]`` sits at ``origin + direction @ (i * sx, j * sy, k * sz)``. Positions
(``Heights.centroid_mm``, the ``frame`` argument) are in LPS millimetres **relative to the image
origin** (the centre of voxel ``[0, 0, 0]``): add ``img.GetOrigin()`` for scanner coordinates.

Method (SPEC section 4)
-----------------------
1. **Axes.** The superior-inferior (SI) axis is the bisector of the two endplates: least-squares
   planes are fitted to the superior and inferior surfaces of the body over the central 60 % x
   60 % of its footprint, and the SI axis is the normalised sum of their normals (iterated from
   the principal axis closest to patient z). For a wedge-shaped body this is the axis a reader
   draws heights along; the principal axes of the voxel cloud are not (a wedge or a lordotic
   parallelogram tilts them by up to tens of degrees). The antero-posterior (AP) axis is the
   principal axis of the body's cross-section (perpendicular to SI) closest to patient y.
2. **Depth.** Along AP through the centroid: the run of the mask *containing the centroid*
   (a separated posterior-element leftover does not count), mean of 5 parallel lines.
3. **Endplates.** On the mid-sagittal plane (through the centroid, spanned by SI and AP), the
   superior and inferior boundaries are located (to a fraction of a sample, mask interpolated
   trilinearly and thresholded at 0.5) on lines along SI every ~half voxel between 5 % and 95 %
   of the depth, and each endplate is fitted by a quadratic in the AP position (least squares;
   boundaries more than 2 voxels and 3 robust SD off the fit, such as a leak of the mask into
   the disc, are left out and the fit repeated).
4. **Heights** = superior minus inferior fitted endplate at 10 %, 50 % and 90 % of the depth
   (from anterior). The quadratic is the Genant deformity model (wedge = linear term,
   biconcavity = quadratic term); the fit averages out the voxel staircase of a sloping endplate
   and does not follow a one-voxel spur or marginal osteophyte at a corner.

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
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

FloatArray = NDArray[np.float64]

#: Fractions of the antero-posterior depth (from anterior) where heights are measured.
HEIGHT_FRACTIONS = (0.1, 0.5, 0.9)
#: Part of the depth (fractions from anterior) over which the endplates are fitted.
ENDPLATE_FIT_RANGE = (0.05, 0.95)
#: Endplate boundaries further than this many voxels (median voxel size) from the fitted
#: endplate, and more than 3 robust SD, are outliers (segmentation leak, large spur).
OUTLIER_VOXELS = 2.0
#: A step down in height by more than this share of the central height, within one voxel and
#: lasting at least 1.5 voxels before the wall, marks tissue attached beyond the body's wall
#: (epidural tumour, a root of a pedicle) that the depth must leave out.
ATTACHMENT_STEP = 0.25
#: Half-size (fraction of the extent through the centroid) of the central region of the
#: footprint whose endplate surfaces define the SI axis.
AXIS_FIT_HALF_WIDTH = 0.3


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
        Centroid in LPS relative to the image origin (or the given frame's centre).
    """

    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    si_axis: FloatArray
    ap_axis: FloatArray
    depth_mm: float = float("nan")
    centroid_mm: FloatArray = field(default_factory=lambda: np.zeros(3))

    @property
    def frame(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(centroid_mm, si_axis, ap_axis)``, the ``frame`` argument of :func:`vertebral_heights`."""
        return self.centroid_mm, self.si_axis, self.ap_axis


def _unit(v: FloatArray) -> FloatArray:
    return np.asarray(v / np.linalg.norm(v), dtype=np.float64)


def _pca_si_axis(points: FloatArray, c: FloatArray) -> FloatArray:
    """The principal axis of the voxel cloud closest to patient z, pointing superior."""
    _, evecs = np.linalg.eigh(np.cov((points - c).T))
    j = int(np.argmax(np.abs(evecs[2, :])))
    return np.asarray(evecs[:, j] * np.sign(evecs[2, j] or 1.0), dtype=np.float64)


def _ap_axis(points: FloatArray, c: FloatArray, si: FloatArray) -> FloatArray:
    """Posterior unit vector perpendicular to ``si``: the cross-section's principal axis closest to y.

    When the two in-plane moments differ by less than 10 % (nearly circular cross-section) the
    in-plane axes are undefined and patient y, orthogonalised, is used.
    """
    q = points - c
    q = q - np.outer(q @ si, si)
    evals, evecs = np.linalg.eigh(np.cov(q.T))
    order = np.argsort(evals)[1:]  # the smallest is along si (zero moment)
    ev_a, ev_b = evals[order[0]], evals[order[1]]
    distinct = abs(ev_a - ev_b) > 0.1 * max(ev_a, ev_b)
    ap = evecs[:, max(order, key=lambda j: abs(evecs[1, j]))] if distinct else np.array([0.0, 1.0, 0.0])
    ap = ap - np.dot(ap, si) * si
    if np.linalg.norm(ap) < 1e-6:
        raise ValueError("the body's superior-inferior axis is parallel to patient y: cannot orient AP")
    ap = _unit(ap)
    return ap * np.sign(ap[1] or 1.0)


def _run_ends(values: FloatArray, pos: FloatArray, at: float = 0.0) -> tuple[float, float]:
    """Ends (sub-sample) of the run of ``values >= 0.5`` containing, or else nearest to, ``pos = at``.

    Each end is where the linearly interpolated profile crosses 0.5; NaNs when nothing is inside.
    """
    inside = values >= 0.5
    if not inside.any():
        return float("nan"), float("nan")
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    i0 = int(np.argmin(np.abs(pos - at)))
    gap = np.where((starts <= i0) & (ends >= i0), 0, np.minimum(np.abs(starts - i0), np.abs(ends - i0)))
    k = int(np.argmin(gap))
    s, e = int(starts[k]), int(ends[k])

    def cross(i_out: int, i_in: int) -> float:
        if i_out < 0 or i_out >= values.size:
            return float(pos[i_in])
        v0, v1 = values[i_out], values[i_in]
        f = (0.5 - v0) / (v1 - v0) if v1 != v0 else 1.0
        return float(pos[i_out] + f * (pos[i_in] - pos[i_out]))

    return cross(s - 1, s), cross(e + 1, e)


class _LineSampler:
    """Samples the mask (trilinear, 0 outside) along straight lines given in physical LPS mm."""

    def __init__(self, mask: NDArray[np.bool_], to_phys: FloatArray, pos: FloatArray) -> None:
        self.field = mask.astype(np.float32)
        self.to_index = np.linalg.inv(to_phys)
        self.pos = pos

    def lines(self, starts: FloatArray, axis: FloatArray) -> FloatArray:
        """Profiles, shape ``(len(starts), len(pos))``, along ``axis`` from each start (``pos = 0``)."""
        phys = starts[:, None, :] + self.pos[None, :, None] * axis[None, None, :]
        ijk = phys @ self.to_index.T  # (..., 3) as (x, y, z) indices
        coords = np.moveaxis(ijk[..., ::-1], -1, 0).reshape(3, -1)  # numpy order (z, y, x)
        out = ndimage.map_coordinates(self.field, coords, order=1, mode="constant", cval=0.0)
        return np.asarray(out, dtype=np.float64).reshape(phys.shape[:2])

    def ends(self, starts: FloatArray, axis: FloatArray) -> FloatArray:
        """``(n, 2)`` run ends (see :func:`_run_ends`) along ``axis`` through each start."""
        return np.array([_run_ends(v, self.pos) for v in self.lines(starts, axis)]).reshape(-1, 2)


def _endplate_bisector(sampler: _LineSampler, c: FloatArray, si: FloatArray, ap: FloatArray, tol_mm: float,
                       n: int = 7) -> FloatArray | None:
    """SI axis re-estimated as the bisector of planes fitted to the two endplates (None if unfit).

    The endplates are located on ``n x n`` lines along ``si`` over the central
    ``+/- AXIS_FIT_HALF_WIDTH`` of the body's left-right and antero-posterior extents through ``c``
    (outliers further than ``tol_mm`` left out, see :func:`_trimmed_lstsq`).
    """
    lr = np.cross(si, ap)
    (l0, l1), (a0, a1) = sampler.ends(c[None, :], lr)[0], sampler.ends(c[None, :], ap)[0]
    if not (np.isfinite(l0) and np.isfinite(a0)):
        return None
    grid = np.linspace(-AXIS_FIT_HALF_WIDTH, AXIS_FIT_HALF_WIDTH, n)
    ls, as_ = np.meshgrid((l0 + l1) / 2 + grid * (l1 - l0), (a0 + a1) / 2 + grid * (a1 - a0), indexing="ij")
    ls, as_ = ls.ravel(), as_.ravel()
    ends = sampler.ends(c + ls[:, None] * lr + as_[:, None] * ap, si)
    ok = np.isfinite(ends[:, 0])
    if ok.sum() < 6:
        return None
    design = np.column_stack([np.ones(int(ok.sum())), ls[ok], as_[ok]])
    normals = []
    for col in (0, 1):  # inferior, superior surface: s = s0 + g_l * l + g_a * a
        coef = _trimmed_lstsq(design, ends[ok, col], tol_mm)
        normals.append(_unit(np.array([-coef[1], -coef[2], 1.0])))
    m = _unit(normals[0] + normals[1])  # components along (lr, ap, si)
    return _unit(m[0] * lr + m[1] * ap + m[2] * si)


def _frame_from_mask(points: FloatArray, c: FloatArray, sampler: _LineSampler, tol_mm: float,
                     iterations: int = 4) -> tuple[FloatArray, FloatArray]:
    """The body's own SI and AP unit vectors (LPS, superior and posterior positive)."""
    si = _pca_si_axis(points, c)
    ap = _ap_axis(points, c, si)
    for _ in range(iterations):
        new = _endplate_bisector(sampler, c, si, ap, tol_mm)
        if new is None:
            break
        new = new * np.sign(new[2] or 1.0)
        change = float(np.arccos(np.clip(np.dot(new, si), -1.0, 1.0)))
        si = new
        ap = _ap_axis(points, c, si)
        if change < np.deg2rad(0.05):
            break
    return si, ap


def _trim_attachments(sampler: _LineSampler, c: FloatArray, si: FloatArray, ap: FloatArray, a0: float, a1: float,
                      fine_mm: float, voxel_ap_mm: float) -> tuple[float, float]:
    """AP ends of the body with tissue attached beyond its anterior or posterior wall left out.

    Along AP, the body's height is a smooth profile (a wedge or a biconcave body changes it
    gradually) that falls to nothing at each wall. Tissue stuck to the outside of a wall
    (epidural tumour behind the posterior wall, the root of a pedicle) is much lower than the
    body, so the height steps down at the wall and stays down over the attachment: the end is
    moved to the first such step (a drop by more than :data:`ATTACHMENT_STEP` of the central
    height within one voxel, to below the central height by as much, holding for 1.5 voxels while
    some tissue remains; a leak above an endplate raises the height instead, and its far edge
    steps back down only to the body's own height).
    """
    step = 0.5 * fine_mm
    n = max(21, int(np.ceil((a1 - a0) / step)) + 1)
    x = np.linspace(a0, a1, n)
    ends = sampler.ends(c + x[:, None] * ap, si)
    h = np.nan_to_num(ends[:, 1] - ends[:, 0], nan=0.0)
    central = float(np.median(h[n // 4: 3 * n // 4 + 1]))
    if central <= 0:
        return a0, a1
    k = max(1, int(np.ceil(voxel_ap_mm / (x[1] - x[0]))))  # one voxel along AP, in lines
    hold = max(2, int(np.ceil(1.5 * voxel_ap_mm / (x[1] - x[0]))))
    drop, floor = ATTACHMENT_STEP * central, 0.1 * central

    def first_step(order: NDArray[np.intp]) -> int | None:
        hs = h[order]
        for i in range(len(hs) - k - hold):
            after = hs[i + k: i + k + hold]
            if hs[i] - after.max() > drop and after.max() < central - drop and after.min() > floor:
                return int(order[i + k // 2])
        return None

    mid = n // 2
    post = first_step(np.arange(mid, n))
    ant = first_step(np.arange(mid, -1, -1))
    return (float(x[ant]) if ant is not None else a0), (float(x[post]) if post is not None else a1)


def _trimmed_lstsq(design: FloatArray, y: FloatArray, tol_mm: float, iterations: int = 5) -> FloatArray:
    """Least-squares coefficients of ``y ~ design`` without the outliers.

    Outliers are the points further than ``max(3 robust SD, tol_mm)`` from a least-absolute-
    deviations fit (which a minority of outliers does not pull, unlike least squares): a
    segmentation leak into the disc or the next body, a large spur. They are left out and the
    least-squares fit repeated (outliers re-judged against it, at least half of the points
    kept). Voxel-level detail (staircase, endplate rims) stays in, so clean data get the plain
    least-squares fit.
    """
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    for _ in range(30):  # least absolute deviations by iteratively reweighted least squares
        sw = 1.0 / np.sqrt(np.maximum(np.abs(y - design @ coef), 1e-3))
        coef = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)[0]
    keep = np.ones(y.size, dtype=bool)
    for _ in range(iterations):
        r = y - design @ coef
        med = float(np.median(r[keep]))
        robust_sd = 1.4826 * float(np.median(np.abs(r[keep] - med)))
        new = np.abs(r - med) <= max(3.0 * robust_sd, tol_mm)
        if new.sum() < max(design.shape[1] + 2, y.size // 2):
            new = np.ones(y.size, dtype=bool)
        coef = np.linalg.lstsq(design[new], y[new], rcond=None)[0]
        if np.array_equal(new, keep):
            break
        keep = new
    return np.asarray(coef, dtype=np.float64)


def _check_frame(frame: tuple[ArrayLike, ArrayLike, ArrayLike]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Validated ``(centroid, si, ap)``: unit SI, AP made perpendicular to SI and unit."""
    try:
        c, si, ap = (np.asarray(v, dtype=np.float64).reshape(3) for v in frame)
    except (TypeError, ValueError) as e:
        raise ValueError(f"frame must be (centroid_mm, si_axis, ap_axis), three 3-vectors: {e}") from e
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(si)) and np.all(np.isfinite(ap))):
        raise ValueError("frame holds non-finite values")
    if np.linalg.norm(si) < 1e-6:
        raise ValueError("frame si_axis is a zero vector")
    si = _unit(si)
    ap = ap - np.dot(ap, si) * si
    if np.linalg.norm(ap) < 1e-6:
        raise ValueError("frame ap_axis is parallel to si_axis")
    return c, si, _unit(ap)


def vertebral_heights(body_mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                      direction: NDArray[np.floating] | None = None, *,
                      step_mm: float | None = None, average_mm: float = 1.0,
                      frame: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None) -> Heights:
    """Anterior, middle and posterior heights on the body's mid-sagittal plane (see the module doc).

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
        The depth is the mean over 5 lines parallel to AP spread over +/- ``average_mm`` along
        SI (0: a single line).
    frame : (centroid_mm, si_axis, ap_axis), optional
        Measure in this frame instead of the mask's own: ``centroid_mm`` in LPS mm relative to
        the image origin (the convention of ``Heights.centroid_mm``), ``si_axis`` and ``ap_axis``
        LPS directions (normalised here; AP is made perpendicular to SI; their signs are kept).
        Used to measure a follow-up visit with the J0 frame mapped through the registration, so
        that every visit is measured along the same anatomical lines. The axes are not
        re-estimated; the depth is still measured on the mask, along ``ap_axis`` through
        ``centroid_mm``, and the heights at 10 / 50 / 90 % of it.

    Returns
    -------
    Heights
        With ``centroid_mm``, ``si_axis`` and ``ap_axis`` those used (the frame's when given).

    Raises
    ------
    ValueError
        If the mask is empty, not 3-D, the spacing / direction / frame is invalid, the
        antero-posterior line through the centroid misses the body, or fewer than 5 lines of the
        mid-sagittal plane cross it.
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
    points = np.argwhere(mask)[:, ::-1].astype(np.float64) @ to_phys.T
    if frame is None:
        c = points.mean(axis=0)
    else:
        c, si, ap = _check_frame(frame)
    reach = float(np.max(np.linalg.norm(points - c, axis=1))) + 2.0 * float(sp_xyz.max())
    step = step_mm if step_mm is not None else float(sp_xyz.min()) / 10.0
    sampler = _LineSampler(mask, to_phys, np.arange(-reach, reach + step, step))
    tol = OUTLIER_VOXELS * float(np.median(sp_xyz))
    if frame is None:
        si, ap = _frame_from_mask(points, c, sampler, tol)

    offsets = np.linspace(-average_mm, average_mm, 5) if average_mm > 0 else np.zeros(1)
    depth_ends = sampler.ends(c + offsets[:, None] * si, ap)
    depth_ends = depth_ends[np.isfinite(depth_ends[:, 0])]
    if depth_ends.size == 0:
        raise ValueError("the antero-posterior line through the centroid misses the body")
    a0, a1 = (float(v) for v in depth_ends.mean(axis=0))
    voxel_ap_mm = float(np.sum(np.abs(d.T @ ap) * sp_xyz))  # the voxel's extent along AP
    a0, a1 = _trim_attachments(sampler, c, si, ap, a0, a1, float(sp_xyz.min()), voxel_ap_mm)
    depth = a1 - a0

    # endplates on the mid-sagittal plane: lines along SI every ~half voxel, quadratic fit
    lo, hi = ENDPLATE_FIT_RANGE
    n_lines = max(9, int(np.ceil((hi - lo) * depth / (0.5 * float(sp_xyz.min())))) + 1)
    fracs = np.linspace(lo, hi, n_lines)
    ends = sampler.ends(c + (a0 + fracs * depth)[:, None] * ap, si)
    ok = np.isfinite(ends[:, 0])
    x = fracs - 0.5
    at = np.asarray(HEIGHT_FRACTIONS) - 0.5
    if ok.sum() < 5:
        raise ValueError("fewer than 5 lines of the mid-sagittal plane cross the body: cannot fit the endplates")
    design = np.column_stack([np.ones(int(ok.sum())), x[ok], x[ok] ** 2])
    inferior = _trimmed_lstsq(design, ends[ok, 0], tol)
    superior = _trimmed_lstsq(design, ends[ok, 1], tol)
    at_design = np.column_stack([np.ones(at.size), at, at**2])
    heights = np.maximum(at_design @ superior - at_design @ inferior, 0.0)
    return Heights(anterior_mm=float(heights[0]), middle_mm=float(heights[1]), posterior_mm=float(heights[2]),
                   si_axis=si, ap_axis=ap, depth_mm=depth, centroid_mm=c)


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
