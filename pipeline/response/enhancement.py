"""Relative enhancement, enhancing mask, benign-rim removal and residual volumes (SPEC section 4).

Pure numpy / scipy: arrays and spacing in, arrays and numbers out. Array axes are numpy order
``(z, y, x)`` and every ``spacing_mm`` argument is in the same ``(z, y, x)`` order, in mm.

Example
-------
>>> import numpy as np
>>> t = np.arange(8) * 10.0
>>> curve = np.array([100, 100, 100, 180, 200, 200, 200, 200], dtype=float)
>>> phases = np.broadcast_to(curve[:, None, None, None], (8, 2, 2, 2)).copy()
>>> maps = relative_enhancement(phases, t)
>>> maps.n_pre, maps.arrival_index, round(float(maps.re[0, 0, 0]), 2)
(3, 3, 1.0)
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Consistency constant between the median absolute deviation and a Gaussian sigma.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class EnhancementMaps:
    """Voxel-wise enhancement of one DCE series (or pre/post pair).

    Attributes
    ----------
    re : ndarray, shape (z, y, x)
        Relative enhancement ``(S_post - S_pre) / S_pre`` (dimensionless).
    delta : ndarray, shape (z, y, x)
        ``S_post - S_pre`` in signal units.
    noise_sigma : float
        Standard deviation of the image noise in signal units (see :func:`estimate_noise_sigma`).
    n_pre : int
        Number of pre-contrast phases (= ``arrival_index``).
    arrival_index : int
        Index of the first phase of the tissue curve above ``S_pre + 3 sigma`` (bolus arrival).
    peak_index : int
        Index of the peak of the tissue curve; ``S_post`` averages phases ``[peak_index, T)``.
    arrival_detected : bool
        False when no phase crossed the threshold and the arrival fell back to the largest jump
        of the tissue curve (a series without visible enhancement).
    s_pre, s_post : ndarray, shape (z, y, x), optional
        Mean pre-contrast signal (phases ``[0, n_pre)``) and mean signal from the peak phase on.
    """

    re: FloatArray
    delta: FloatArray
    noise_sigma: float
    n_pre: int
    arrival_index: int
    peak_index: int = 0
    arrival_detected: bool = True
    s_pre: FloatArray | None = None
    s_post: FloatArray | None = None


def estimate_noise_sigma(phases: FloatArray, pre_indices: tuple[int, ...] | None = None) -> float:
    """Estimate the per-voxel noise sigma from differences of unenhanced phases.

    Two acquisitions of the same unenhanced anatomy differ only by noise, so the difference of
    two phases has standard deviation ``sqrt(2) sigma``. The robust estimate
    ``1.4826 MAD(d) / sqrt(2)`` over every voxel and every consecutive pair of ``pre_indices``
    ignores the few voxels that move or enhance, is insensitive to the multiplicative bias
    field (it does not change the noise), and needs no air in the field of view. For Rician
    magnitude data it is exact in tissue (high SNR) and slightly low in air.

    Parameters
    ----------
    phases : ndarray, shape (T, z, y, x)
        Signal of every phase (arbitrary signal units).
    pre_indices : tuple of int, optional
        Phases known to be unenhanced (at least two). Default: the first two phases.

    Returns
    -------
    float
        Noise standard deviation in signal units (0 for noise-free data).

    Raises
    ------
    ValueError
        If fewer than two phases are given.
    """
    idx = pre_indices if pre_indices is not None else (0, 1)
    if len(idx) < 2 or phases.shape[0] < 2:
        raise ValueError("estimate_noise_sigma needs at least two unenhanced phases (pre_indices)")
    diffs = np.concatenate(
        [(phases[b] - phases[a]).ravel() for a, b in itertools.pairwise(idx)]
    )
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return MAD_TO_SIGMA * mad / float(np.sqrt(2.0))


def _tissue_curve(phases: FloatArray, roi: BoolArray | None, sigma: float) -> FloatArray:
    """Robust tissue curve (inside ``roi`` when given).

    The mean curve of the voxels that clearly enhance: mean of the last half of the phases
    above phase 0 by more than 5 noise sigmas (noise alone passes with probability ~3e-7, so
    the curve is not diluted by unenhanced tissue). Without any such voxel, the mean curve of
    the decile of tissue voxels that rise most.
    """
    n_t = phases.shape[0]
    flat = phases.reshape(n_t, -1)
    if roi is not None:
        sel = roi.ravel()
        if not sel.any():
            raise ValueError("roi is empty: it selects no voxel of the DCE phases")
        flat = flat[:, sel]
    mean_signal = flat.mean(axis=0)
    tissue = mean_signal > 5.0 * sigma if sigma > 0 else mean_signal > 0
    if tissue.sum() >= 1:
        flat = flat[:, tissue]
    late = flat[n_t // 2:].mean(axis=0) - flat[0]
    strong = late > 5.0 * sigma * np.sqrt(1.0 + 2.0 / n_t) if sigma > 0 else late > 0
    if strong.any():
        return np.asarray(flat[:, strong].mean(axis=1), dtype=np.float64)
    rise = flat.max(axis=0) - flat[0]
    if rise.size >= 10:
        cut = np.quantile(rise, 0.9)
        flat = flat[:, rise >= cut]
    return np.asarray(flat.mean(axis=1), dtype=np.float64)


def detect_arrival(curve: FloatArray, sigma: float, *, noise_sigmas: float = 3.0) -> tuple[int, bool]:
    """Index of bolus arrival on a tissue curve: first phase with ``S > S_pre + k sigma``.

    ``S_pre`` at phase ``i`` is the mean of phases ``[0, i)``. When no phase crosses, the
    arrival falls back to the phase after the largest jump of the curve.

    Parameters
    ----------
    curve : ndarray, shape (T,)
        Tissue signal per phase.
    sigma : float
        Noise standard deviation (signal units).
    noise_sigmas : float
        Multiple of sigma above baseline that marks arrival (SPEC: 3).

    Returns
    -------
    (int, bool)
        Arrival index (>= 1) and whether it was detected (False = fallback).
    """
    for i in range(1, curve.size):
        if curve[i] > curve[:i].mean() + noise_sigmas * sigma:
            return i, True
    jump = int(np.argmax(np.diff(curve))) + 1 if curve.size > 1 else 1
    return jump, False


def relative_enhancement(
    phases: NDArray[np.floating],
    times_s: NDArray[np.floating],
    *,
    roi: BoolArray | None = None,
    noise_sigmas: float = 3.0,
    noise_sigma: float | None = None,
) -> EnhancementMaps:
    """Relative enhancement maps of a DCE series.

    Steps: (1) noise sigma from the difference of the first two phases (assumed pre-contrast;
    the protocol has 3-5), (2) bolus arrival on a robust tissue curve (mean curve of the
    voxels that clearly enhance, inside ``roi`` when given) as the first phase above
    ``S_pre + 3 sigma``, (3) sigma re-estimated from every pre-contrast pair, (4)
    ``S_pre`` = mean of phases before arrival, ``S_post`` = mean of phases from the curve's
    peak on, ``RE = (S_post - S_pre) / max(S_pre, sigma)`` (the floor keeps air finite).

    Parameters
    ----------
    phases : ndarray, shape (T, z, y, x)
        Signal of each phase, phases in acquisition order (T >= 2).
    times_s : ndarray, shape (T,)
        Acquisition time of each phase in seconds, strictly increasing.
    roi : ndarray of bool, shape (z, y, x), optional
        Region whose tissue curve defines arrival and peak (e.g. treated body + margin).
    noise_sigmas : float
        Arrival threshold in multiples of sigma (SPEC: 3).
    noise_sigma : float, optional
        Known noise sigma (signal units); estimated when omitted.

    Returns
    -------
    EnhancementMaps

    Raises
    ------
    ValueError
        If ``phases`` is not 4-D with at least two phases, ``times_s`` does not match or is not
        strictly increasing, or ``roi`` does not match the volume shape or is empty.
    """
    data = np.asarray(phases, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if data.ndim != 4 or data.shape[0] < 2:
        raise ValueError(f"phases must have shape (T, z, y, x) with T >= 2, got {data.shape}")
    if t.shape != (data.shape[0],):
        raise ValueError(f"times_s must have shape ({data.shape[0]},), got {t.shape}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("times_s must be strictly increasing (phases in acquisition order)")
    if roi is not None and roi.shape != data.shape[1:]:
        raise ValueError(f"roi shape {roi.shape} does not match the volume shape {data.shape[1:]}")

    sigma0 = noise_sigma if noise_sigma is not None else estimate_noise_sigma(data)
    curve = _tissue_curve(data, roi, sigma0)
    arrival, detected = detect_arrival(curve, sigma0, noise_sigmas=noise_sigmas)
    if not detected:
        logger.info("no bolus arrival above %.1f sigma; fallback to largest jump at phase %d",
                    noise_sigmas, arrival)
    sigma = sigma0
    if noise_sigma is None:
        if arrival >= 3:
            sigma = estimate_noise_sigma(data, tuple(range(arrival)))
        elif arrival < 2:  # phases 0 and 1 straddle arrival: use the two last (slow) phases
            sigma = estimate_noise_sigma(data, (data.shape[0] - 2, data.shape[0] - 1))
    peak = arrival + int(np.argmax(curve[arrival:]))
    s_pre = data[:arrival].mean(axis=0)
    s_post = data[peak:].mean(axis=0)
    delta = s_post - s_pre
    re = delta / np.maximum(s_pre, max(sigma, np.finfo(np.float64).tiny))
    return EnhancementMaps(re=re, delta=delta, noise_sigma=float(sigma), n_pre=arrival,
                           arrival_index=arrival, peak_index=peak, arrival_detected=detected,
                           s_pre=s_pre, s_post=s_post)


def enhancing_mask(maps: EnhancementMaps, *, re_threshold: float = 0.15,
                   noise_sigmas: float = 3.0) -> BoolArray:
    """Voxels that enhance: ``RE > re_threshold`` and ``S_post - S_pre > noise_sigmas * sigma``.

    Parameters
    ----------
    maps : EnhancementMaps
    re_threshold : float
        Relative-enhancement threshold (dimensionless, SPEC 0.15).
    noise_sigmas : float
        Absolute threshold in multiples of the noise sigma (SPEC 3).

    Returns
    -------
    ndarray of bool, shape (z, y, x)
    """
    return np.asarray((maps.re > re_threshold) & (maps.delta > noise_sigmas * maps.noise_sigma))


def _check_spacing(spacing_mm: tuple[float, float, float], ndim: int) -> tuple[float, float, float]:
    if len(spacing_mm) != 3 or ndim != 3:
        raise ValueError(f"expected a 3-D mask and a (z, y, x) spacing, got {ndim}-D and {spacing_mm}")
    if any(not np.isfinite(s) or s <= 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    return (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))


def ball(radius_mm: float, spacing_mm: tuple[float, float, float]) -> BoolArray:
    """Ellipsoidal voxel footprint of a physical ball: offsets whose centre lies within the ball.

    Parameters
    ----------
    radius_mm : float
        Ball radius in mm.
    spacing_mm : (float, float, float)
        Voxel size (z, y, x) in mm.

    Returns
    -------
    ndarray of bool
        Odd-sized structuring element; an axis whose spacing exceeds the radius has extent 1.
    """
    half = [int(np.floor(radius_mm / s + 1e-9)) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm, strict=True))
    return np.asarray(dist2 <= radius_mm**2 + 1e-9)


def remove_rim(mask: BoolArray, spacing_mm: tuple[float, float, float], *, rim_mm: float = 2.0) -> BoolArray:
    """Remove thin enhancing shells by a morphological opening with a ball of radius ``rim_mm``.

    The opening keeps the union of every ball of radius ``rim_mm`` that fits inside the mask,
    so a shell thinner than ``2 * rim_mm`` vanishes while a nodule or thick rind that contains
    such a ball keeps its full extent. Note the radius convention: with the default 2 mm
    radius, any enhancing structure thinner than 4 mm is removed.

    The ball is physical, whatever the voxels: with ``step`` the finer of the finest spacing and
    half the ball radius, every axis whose spacing exceeds 1.5 ``step`` is first divided into
    ``ceil(spacing / step)`` sub-slices (each voxel repeated), the opening runs on that
    near-isotropic grid fine enough to resolve the ball, and a voxel stays when at least half of
    its sub-voxels do (on DCE voxels coarser than the ball, 2.3 mm say, a raw-grid ball would be
    a single voxel and the opening would remove nothing). On 3 mm DCE slices a one-slice sheet
    is 3 mm thick, thinner than the ball, so a rim lying parallel to the slices goes too (on the
    raw grid the ball would be one slice thick and such a sheet would survive).

    A conditional 6-neighbour dilation inside the original mask then restores the border voxels
    that the discrete ball cannot reach (a 5 mm nodule on 1 mm voxels keeps ~40 % of its voxels
    after the bare opening, all of them after this step); a removed shell has no seed left, so
    it does not grow back.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        Enhancing mask.
    spacing_mm : (float, float, float)
        Voxel size (z, y, x) in mm.
    rim_mm : float
        Ball radius in mm (setting ``rim_max_thickness_mm``). ``0`` returns the mask unchanged.

    Returns
    -------
    ndarray of bool, shape (z, y, x)

    Raises
    ------
    ValueError
        If the mask is not 3-D, the spacing is not positive or ``rim_mm`` is negative.
    """
    spacing = _check_spacing(spacing_mm, np.ndim(mask))
    if rim_mm < 0:
        raise ValueError(f"rim_mm must be >= 0, got {rim_mm}")
    m = np.asarray(mask, dtype=bool)
    if rim_mm == 0 or not m.any():
        return m.copy()
    target = min(min(spacing), rim_mm / 2.0)
    factors = tuple(int(np.ceil(s / target - 1e-9)) if s > 1.5 * target else 1 for s in spacing)
    fine_spacing = (spacing[0] / factors[0], spacing[1] / factors[1], spacing[2] / factors[2])
    structure = ball(rim_mm, fine_spacing)
    # work on the mask's bounding box with some background around it; where the box meets the
    # image border, edge replication treats a structure cut by the border as continuing beyond it
    bbox = ndimage.find_objects(m.astype(np.uint8))[0]
    margin = [int(np.ceil(rim_mm / sp)) + 1 for sp in spacing]  # background around it, where there is some
    box = tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(bbox, margin, m.shape, strict=True))
    sub = m[box]
    fine = sub
    for axis, f in enumerate(factors):
        fine = np.repeat(fine, f, axis=axis)
    pad = [(h // 2, h // 2) for h in structure.shape]
    opened = ndimage.binary_opening(np.pad(fine, pad, mode="edge"), structure=structure)
    opened = opened[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, fine.shape, strict=True))]
    shape6 = (sub.shape[0], factors[0], sub.shape[1], factors[1], sub.shape[2], factors[2])
    kept = np.zeros_like(m)
    kept[box] = opened.reshape(shape6).mean(axis=(1, 3, 5)) >= 0.5
    kept &= m
    cross = ndimage.generate_binary_structure(3, 1)
    return np.asarray(kept | (ndimage.binary_dilation(kept, cross) & m))


def half_maximum_boundary(mask: BoolArray, delta: FloatArray, spacing_mm: tuple[float, float, float], *,
                          radius_mm: float = 5.0, fraction: float = 0.5) -> BoolArray:
    """Keep the voxels of ``mask`` whose enhancement reaches ``fraction`` of the local peak.

    Under partial volume a voxel's signal is the volume-weighted mix of its tissues, so its
    enhancement ``S_post - S_pre`` grows linearly with the share of enhancing tissue in it. The
    threshold of :func:`enhancing_mask` (``RE > 0.15``) accepts voxels that hold only a small
    share of a strongly enhancing nodule, which inflates its volume by up to a voxel on every
    side (+50 % for a 1 mL nodule on 1.25 x 1.25 x 3 mm DCE voxels). The half-maximum rule, the
    usual edge of an object blurred by the point-spread function, places the border where the
    voxel is half inside: a voxel stays when its enhancement is at least ``fraction`` of the
    largest enhancement of the mask within ``radius_mm`` (the local peak, so a slowly varying
    coil bias and nodules of different strengths are each judged against their own core).

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        Enhancing voxels (:func:`enhancing_mask`, already restricted to the region of interest).
    delta : ndarray, shape (z, y, x)
        ``S_post - S_pre`` (:attr:`EnhancementMaps.delta`).
    spacing_mm : (float, float, float)
        Voxel size (z, y, x) in mm.
    radius_mm : float
        Neighbourhood of the local peak (mm); larger than the partial-volume blur (one voxel) and
        at most the radius of the smallest nodule that counts (0.5 mL: 4.9 mm).
    fraction : float
        Share of the local peak a voxel must reach (0.5: half maximum). ``0`` keeps the mask.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        A subset of ``mask``.

    Raises
    ------
    ValueError
        If the shapes differ, the spacing is not positive, ``radius_mm`` is not positive or
        ``fraction`` is outside ``[0, 1]``.
    """
    spacing = _check_spacing(spacing_mm, np.ndim(mask))
    if np.shape(delta) != np.shape(mask):
        raise ValueError(f"delta {np.shape(delta)} and mask {np.shape(mask)} must have one shape")
    if radius_mm <= 0 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"need radius_mm > 0 and 0 <= fraction <= 1, got {radius_mm}, {fraction}")
    m = np.asarray(mask, dtype=bool)
    if fraction == 0 or not m.any():
        return m.copy()
    d = np.where(m, np.asarray(delta, dtype=np.float64), 0.0)
    peak = ndimage.maximum_filter(d, footprint=ball(radius_mm, spacing), mode="nearest")
    return np.asarray(m & (d >= fraction * peak))


def residual_mask(maps: EnhancementMaps, roi: BoolArray, spacing_mm: tuple[float, float, float], *,
                  re_threshold: float = 0.15, noise_sigmas: float = 3.0, rim_mm: float = 2.0,
                  peak_fraction: float = 0.5, peak_radius_mm: float = 5.0) -> BoolArray:
    """Residual enhancing tissue (SPEC section 4): enhancing, inside ``roi``, benign rim removed.

    The steps, in order: :func:`enhancing_mask` (``RE > re_threshold`` and
    ``S_post - S_pre > noise_sigmas x sigma``) inside ``roi`` (treated body and its margin,
    cement excluded); :func:`half_maximum_boundary` (partial-volume edge, ``peak_fraction`` 0
    skips it); :func:`remove_rim` (opening with a ball of radius ``rim_mm``). The edge comes
    before the opening: a thin rim blurred over two or three voxels is narrowed to its own width
    first, and then is thinner than the ball.

    Returns
    -------
    ndarray of bool, shape (z, y, x)

    Raises
    ------
    ValueError
        If ``roi`` does not match the maps' shape (and as the steps raise).
    """
    if np.shape(roi) != maps.re.shape:
        raise ValueError(f"roi {np.shape(roi)} does not match the enhancement maps {maps.re.shape}")
    enh = enhancing_mask(maps, re_threshold=re_threshold, noise_sigmas=noise_sigmas) & np.asarray(roi, dtype=bool)
    if peak_fraction > 0:
        enh = half_maximum_boundary(enh, maps.delta, spacing_mm, radius_mm=peak_radius_mm, fraction=peak_fraction)
    return remove_rim(enh, spacing_mm, rim_mm=rim_mm)


def residual_volume_ml(mask: BoolArray, spacing_mm: tuple[float, float, float]) -> float:
    """Volume of a mask in mL (voxel count x voxel volume in mm3 / 1000)."""
    spacing = _check_spacing(spacing_mm, np.ndim(mask))
    return float(np.count_nonzero(mask)) * spacing[0] * spacing[1] * spacing[2] / 1000.0


def new_nodules(current_mask: BoolArray, j0_mask: BoolArray, spacing_mm: tuple[float, float, float],
                *, min_ml: float = 0.5) -> list[float]:
    """Volumes of residual components that are new since J0.

    A connected component (26-connectivity) of ``current_mask`` is new when it shares no voxel
    with ``j0_mask``; it counts when its volume is ``>= min_ml``. Both masks must already be
    on one grid (the visit registered to J0).

    Parameters
    ----------
    current_mask, j0_mask : ndarray of bool, shape (z, y, x)
        Residual enhancing masks of the visit and of J0, same grid.
    spacing_mm : (float, float, float)
        Voxel size (z, y, x) in mm.
    min_ml : float
        Smallest volume reported, in mL (setting ``new_nodule_ml``).

    Returns
    -------
    list of float
        Volumes in mL, largest first (empty when none).

    Raises
    ------
    ValueError
        If the masks differ in shape.
    """
    if np.shape(current_mask) != np.shape(j0_mask):
        raise ValueError(f"current_mask {np.shape(current_mask)} and j0_mask {np.shape(j0_mask)} "
                         "must be on one grid (register the visit to J0 first)")
    spacing = _check_spacing(spacing_mm, np.ndim(current_mask))
    labels, n = ndimage.label(np.asarray(current_mask, dtype=bool), structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, idx)
    overlap = ndimage.sum_labels(np.asarray(j0_mask, dtype=bool), labels, idx)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    vols = [float(s) * voxel_ml for s, o in zip(sizes, overlap, strict=True) if o == 0]
    return sorted((v for v in vols if v >= min_ml), reverse=True)
