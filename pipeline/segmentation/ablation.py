"""Ablation zone (non-enhancing region around the cement) and the residual-tumour search region."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from pipeline.segmentation import common as cm

logger = logging.getLogger(__name__)


def _on_grid(reference: sitk.Image, mask: sitk.Image, name: str) -> cm.BoolArray:
    cm.check_3d(mask, name)
    if not cm.same_grid(mask, reference):
        mask = cm.resample_like(reference, sitk.Cast(mask > 0, sitk.sitkUInt8), nearest=True)
    return cm.to_mask(mask)


def segment_ablation_zone(
    body: sitk.Image,
    cement: sitk.Image,
    enhancing: sitk.Image,
    stir: sitk.Image | None,
    *,
    stir_ratio: float = 1.6,
    marrow_percentile: float = 25.0,
    fallback_radius_mm: float = 10.0,
    t1: sitk.Image | None = None,
    marrow_t1_min: float | None = None,
    marrow_away_mm: float = 5.0,
    zone_shell_mm: float = 3.0,
    stir_muscle: float | None = None,
    oedema_muscle_ratio: float = 1.3,
    closing_mm: float = 2.5,
) -> sitk.Image:
    """The non-enhancing region around the cement inside the body (cement excluded).

    Candidates are body voxels that are neither cement nor enhancing. With STIR (resampled
    onto the body grid), the ablation zone is oedema-bright: STIR above ``stir_ratio`` x the
    normal-marrow STIR level, taken as the ``marrow_percentile`` percentile of the candidates
    deeper than 2.5 mm inside the body, away from the dark cortex (phantom: marrow 140,
    ablation zone 380, so the threshold ~225 sits between them). When ``t1`` and
    ``marrow_t1_min`` are given, the normal-marrow level is instead the median STIR of the
    interior candidates that are marrow-bright on T1 (>= ``marrow_t1_min``; the ablation zone and
    tumour are darker) and farther than ``marrow_away_mm`` from the cement: unlike the
    percentile, it stays right when the ablation zone fills most of the body. When the STIR
    muscle signal ``stir_muscle`` is given (the flow gives it), the threshold is simply
    ``oedema_muscle_ratio`` x that signal, which needs no normal marrow at all. Only the
    components touching the cement (within 2 mm) are kept; zone + cement is closed by
    ``closing_mm`` and its enclosed holes filled, except enhancing voxels (residual tumour stays
    out). Without STIR, the zone is
    the non-enhancing body within ``fallback_radius_mm`` of the cement, connected to it (a
    coarse stand-in, logged as such).

    Parameters
    ----------
    body, cement, enhancing : SimpleITK.Image
        Masks (same frame of reference); the result is on ``body``'s grid.
    stir : SimpleITK.Image or None
        STIR image of the same frame of reference.
    stir_ratio : float
        Oedema threshold as a multiple of the normal-marrow STIR level.
    marrow_percentile : float
        Percentile of the candidates' STIR taken as the normal-marrow level.
    fallback_radius_mm : float
        Radius (mm) of the zone around the cement when no STIR is available.
    t1 : SimpleITK.Image, optional
        T1 image of the same frame of reference, to find the normal marrow.
    marrow_t1_min : float, optional
        Lowest T1 signal (image units) of normal marrow, e.g. 1.3 x the T1 muscle signal.
    marrow_away_mm : float
        Normal marrow is looked for farther than this (mm) from the cement.
    stir_muscle : float, optional
        STIR signal of paraspinal muscle (e.g. ``CementResult.muscle_stir``); when given, the
        zone is the STIR above ``oedema_muscle_ratio`` x that level (oedema is brighter than
        muscle on STIR, fatty marrow darker) and the marrow-based thresholds above are not used.
    oedema_muscle_ratio : float
        Oedema threshold as a multiple of the STIR muscle signal (phantom: marrow 0.7, zone 1.9).
    closing_mm : float
        Radius (mm) of the closing of zone + cement: the voxels on the seam between them are
        part cement, too dark on STIR to pass the threshold on their own.
    zone_shell_mm : float
        Thickness (mm) of the shell around the cement, beyond its partial-volume voxels, where
        the zone's own STIR level is read; the threshold is lowered to half-way between
        marrow and that level when the latter is above ``stir_ratio`` x marrow.

    Returns
    -------
    SimpleITK.Image
        uint8 0/1 mask on ``body``'s grid (empty when the cement or the body is empty).

    Raises
    ------
    ValueError
        If an image is not 3D or ``stir_ratio`` <= 1.
    """
    cm.check_3d(body, "body")
    if stir_ratio <= 1.0:
        raise ValueError(f"stir_ratio must be > 1, got {stir_ratio}")
    body_m = cm.to_mask(body)
    cement_m = _on_grid(body, cement, "cement")
    enh_m = _on_grid(body, enhancing, "enhancing")
    spacing = cm.spacing_zyx(body)
    candidate = body_m & ~cement_m & ~enh_m
    if not cement_m.any() or not candidate.any():
        logger.info("ablation zone: empty (no cement or no non-enhancing body voxel)")
        return cm.mask_image(np.zeros_like(body_m), body)
    # "touching" must reach at least the neighbouring voxel, whatever the voxel size
    near_cement = cm.dilate_mm(cement_m, spacing, max(2.0, 1.01 * max(spacing)))
    if stir is not None:
        cm.check_3d(stir, "stir")
        stir_arr = cm.to_array(stir if cm.same_grid(stir, body) else cm.resample_like(body, stir))
        muscle_level = float(stir_muscle) if stir_muscle is not None else float("nan")
        if np.isfinite(muscle_level) and muscle_level > 0:
            # oedema is brighter than muscle on STIR, fatty marrow darker: a reference that does
            # not need normal marrow in the body (the zone may fill it)
            threshold = oedema_muscle_ratio * muscle_level
            logger.info("ablation zone: STIR > %.0f (%.1f x muscle)", threshold, oedema_muscle_ratio)
        else:
            threshold = _marrow_threshold(stir_arr, candidate, body_m, cement_m, near_cement, spacing, t1, body,
                                          stir_ratio, marrow_percentile, marrow_t1_min, marrow_away_mm,
                                          zone_shell_mm)
        hot = candidate & (stir_arr > threshold)
    else:
        hot = candidate & cm.dilate_mm(cement_m, spacing, fallback_radius_mm)
        logger.info(
            "ablation zone: no STIR, non-enhancing body within %.1f mm of the cement", fallback_radius_mm
        )
    zone = cm.component_touching(hot, near_cement)
    # the voxels between cement and zone are part cement (dark on STIR): close that seam
    zone = cm.fill_holes(cm.close_mm(zone | cement_m, spacing, closing_mm)) & candidate
    return cm.mask_image(zone, body)


def _marrow_threshold(stir_arr: cm.FloatArray, candidate: cm.BoolArray, body_m: cm.BoolArray,
                      cement_m: cm.BoolArray, near_cement: cm.BoolArray, spacing: tuple[float, float, float],
                      t1: sitk.Image | None, body: sitk.Image, stir_ratio: float, marrow_percentile: float,
                      marrow_t1_min: float | None, marrow_away_mm: float, zone_shell_mm: float) -> float:
    """STIR threshold relative to the normal marrow of the body (see :func:`segment_ablation_zone`)."""
    interior = candidate & cm.erode_mm(body_m, spacing, 2.5)  # away from the dark cortex
    reference = interior if interior.sum() >= 50 else candidate
    marrow = float(np.percentile(stir_arr[reference], marrow_percentile))
    if t1 is not None and marrow_t1_min is not None:
        cm.check_3d(t1, "t1")
        t1_arr = cm.to_array(t1 if cm.same_grid(t1, body) else cm.resample_like(body, t1))
        normal = interior & (t1_arr >= marrow_t1_min) & ~cm.dilate_mm(cement_m, spacing, marrow_away_mm)
        if normal.sum() >= 50:
            marrow = float(np.median(stir_arr[normal]))
    threshold = stir_ratio * marrow
    # the zone's own level, read in the shell just around the cement (past its partial volume)
    hug = candidate & cm.dilate_mm(cement_m, spacing, zone_shell_mm + max(spacing)) & ~near_cement
    if hug.sum() >= 50:
        zone_level = float(np.median(stir_arr[hug]))
        if zone_level > threshold:  # half-way between marrow and zone when the zone is that bright
            threshold = min(threshold, 0.5 * (marrow + zone_level))
    logger.info("ablation zone: STIR > %.0f (normal marrow %.0f)", threshold, marrow)
    return threshold


def residual_roi(body: sitk.Image, cement: sitk.Image, margin_mm: float = 10.0) -> sitk.Image:
    """Where residual enhancing tissue is searched: the body grown by ``margin_mm``, cement excluded.

    The growth is Euclidean in physical units (exact on anisotropic voxels), so it reaches the
    epidural and paravertebral surroundings within ``margin_mm`` of the body (SPEC default 10).

    Parameters
    ----------
    body, cement : SimpleITK.Image
        Masks of the same frame of reference; the result is on ``body``'s grid.
    margin_mm : float
        Margin (mm), >= 0.

    Returns
    -------
    SimpleITK.Image
        uint8 0/1 mask.

    Raises
    ------
    ValueError
        If ``margin_mm`` is negative or an image is not 3D.
    """
    cm.check_3d(body, "body")
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    body_m = cm.to_mask(body)
    cement_m = _on_grid(body, cement, "cement")
    roi = cm.dilate_mm(body_m, cm.spacing_zyx(body), margin_mm) & ~cement_m
    return cm.mask_image(roi, body)
