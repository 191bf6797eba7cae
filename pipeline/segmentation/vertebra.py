"""The treated vertebral body (body only: no posterior elements, no discs), cement included.

The body is grown from the cement over marrow-like / tumour-like voxels; the dark cortex and
endplates stop the growth; an opening cuts thin leaks (through a partial-volumed endplate or
cortex) before the body is rebuilt within a few millimetres of the opened core; holes are
filled (cement, sclerotic spots, fracture lines) and the result is checked against the size of
a vertebral body (a lumbar body is about 40-50 mm wide, 30-35 mm deep, 25-30 mm tall).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.segmentation import common as cm

logger = logging.getLogger(__name__)

#: Semi-axes (mm) of the LPS-aligned ellipsoid around the seed that bounds the growth
#: (left-right, antero-posterior, superior-inferior): a large lumbar body with an eccentric seed.
SEARCH_SEMI_AXES_MM: tuple[float, float, float] = (32.0, 24.0, 22.0)
#: Plausible body volume (mL) and largest plausible extents (mm, LR/AP/SI).
BODY_VOLUME_RANGE_ML: tuple[float, float] = (3.0, 90.0)
BODY_MAX_EXTENT_MM: tuple[float, float, float] = (64.0, 48.0, 44.0)
#: Lowest STIR signal (x the STIR muscle signal) of marrow: fat and cortex are darker (~0.2),
#: so a voxel half fat, half cortex (marrow-bright on T1) is rejected; marrow itself is ~0.7.
STIR_MARROW_MIN = 0.4
#: Lowest STIR signal (x muscle) of a thick-slice voxel cutting the cortex tangentially that is
#: at least half body: cortex + marrow reads ~0.45, cortex + fat ~0.2.
STIR_SHELL_MIN = 0.33
#: Highest T1 signal (x muscle) read as disc in the profile pass (phantom disc 0.83, lesion with cortex ~1.0).
DISC_T1_MAX = 0.92


@dataclass(frozen=True)
class BodyResult:
    """Outcome of a vertebral-body segmentation.

    Attributes
    ----------
    mask : SimpleITK.Image
        uint8 0/1 body mask on the input grid (empty when nothing could be grown).
    reason : str
        Method, volume and extents, or why the result is not usable.
    ok : bool
        False when the result failed the plausibility checks (volume, extents).
    """

    mask: sitk.Image
    reason: str
    ok: bool


def search_region(
    image: sitk.Image, center_mm: Sequence[float], semi_axes_mm: Sequence[float]
) -> cm.BoolArray:
    """Voxels of ``image`` inside the LPS-aligned ellipsoid of ``semi_axes_mm`` around ``center_mm``."""
    xs, ys, zs = cm.physical_coordinates(image)
    ax, ay, az = semi_axes_mm
    return np.asarray(
        ((xs - center_mm[0]) / ax) ** 2 + ((ys - center_mm[1]) / ay) ** 2 + ((zs - center_mm[2]) / az) ** 2
        <= 1.0
    )


def _extents_mm(mask: cm.BoolArray, image: sitk.Image) -> tuple[float, float, float]:
    pts = cm.index_to_physical(image, np.argwhere(mask))
    span = pts.max(axis=0) - pts.min(axis=0)
    return (float(span[0]), float(span[1]), float(span[2]))


def _profile(mask: cm.BoolArray, spacing: tuple[float, float, float]) -> cm.BoolArray | None:
    """The mask's projection along its thick-slice axis, repeated over every slice (a prism).

    ``None`` when the grid has no thick axis (largest spacing < 1.8 x the smallest): on near
    isotropic grids the growth itself sees the endplates.
    """
    axis = int(np.argmax(spacing))
    if spacing[axis] < 1.8 * min(spacing):
        return None
    return np.broadcast_to(mask.any(axis=axis, keepdims=True), mask.shape)


def check_body(mask: cm.BoolArray, image: sitk.Image, method: str) -> BodyResult:
    """Wrap a body mask as a :class:`BodyResult`: volume and extents in the reason, ``ok`` False
    when they are not those of a vertebral body (:data:`BODY_VOLUME_RANGE_ML`,
    :data:`BODY_MAX_EXTENT_MM`) or the mask is empty."""
    if not mask.any():
        return BodyResult(cm.mask_image(mask, image), f"{method}: nothing grown from the seed", False)
    volume = float(mask.sum()) * cm.voxel_volume_ml(image)
    ext = _extents_mm(mask, image)
    problems = []
    lo, hi = BODY_VOLUME_RANGE_ML
    if not lo <= volume <= hi:
        problems.append(f"volume {volume:.1f} mL outside {lo:.0f}-{hi:.0f} mL")
    for name, value, limit in zip(("LR", "AP", "SI"), ext, BODY_MAX_EXTENT_MM, strict=True):
        if value > limit:
            problems.append(f"{name} extent {value:.0f} mm > {limit:.0f} mm (leak?)")
    reason = f"{method}: body {volume:.1f} mL, extents LR {ext[0]:.0f} / AP {ext[1]:.0f} / SI {ext[2]:.0f} mm"
    if problems:
        reason += "; implausible: " + "; ".join(problems)
    logger.info(reason)
    return BodyResult(cm.mask_image(mask, image), reason, not problems)


def segment_body(
    t1: sitk.Image,
    cement_mass: sitk.Image,
    *,
    stir: sitk.Image | None = None,
    muscle_signal: float | None = None,
    marrow_range: tuple[float, float] = (1.2, 1.9),
    lesion_range: tuple[float, float] = (0.55, 1.9),
    near_cement_mm: float = 8.0,
    opening_mm: float = 2.0,
    closing_mm: float = 2.0,
    cortex_mm: float = 2.0,
) -> BodyResult:
    """Segment the treated vertebral body on T1, grown from its cement mass.

    Signals are read as multiples of the paraspinal-muscle signal ``m`` (phantom: marrow
    1.55, ablation zone 1.14, tumour 0.79, disc 0.83, muscle 1.0, cortex 0.14, CSF 0.38, fat
    2.26 on T1). Muscle is the tissue a leak through a partial-volumed lateral cortex would
    invade, so it is never allowed as such. Allowed voxels are:

    * marrow-like: T1 in ``marrow_range`` x m (default 1.2-1.9);
    * lesion-like, when STIR is given: T1 in ``lesion_range`` x m and STIR 1.5-4 x the STIR
      muscle signal (tumour, ablation zone, oedema; CSF, ~5, is out), except the disc
      signature (T1 < 1.0 x m with STIR < 2.8 x: phantom disc 0.83 / 2.25, while tumour is
      0.79 / 3.25 and the ablation zone 1.14 / 1.9);
    * T1 1.05-1.9 x m within ``near_cement_mm`` of the cement (the ablation zone that
      surrounds the cement, also without STIR; discs and muscle stay out).

    With STIR, a marrow-bright T1 voxel must also reach :data:`STIR_MARROW_MIN` x the STIR
    muscle signal: a thick slice grazing the lateral cortex and the fat beside it is
    marrow-bright on T1 but dark on STIR.

    Growth starts from the cement inside an LPS ellipsoid of semi-axes
    :data:`SEARCH_SEMI_AXES_MM` around its centroid and is stopped by the dark cortex and
    endplates; an opening of ``opening_mm`` cuts thin leaks. On grids with a thick slice axis
    (sagittal 3-5 mm slices) and with STIR, a second growth also accepts lesion-like voxels
    that the disc rule rejected (lesion partial-volumed with the tangential cortex reads
    T1 ~1.0 x m, close to disc) where the first growth found body on some slice (its projection
    along the thick axis), except the disc itself (T1 < :data:`DISC_T1_MAX` x m, STIR < 2.8 x).
    Then the non-fluid voxels darker than marrow (cortex, and cortex / marrow partial volume on
    coarse grids) within ``cortex_mm`` (at least one in-plane voxel) of the grown marrow are
    added, and, one slice across the thick axis, those that still hold marrow (STIR >=
    :data:`STIR_SHELL_MIN` x); enclosed holes (cement, tumour without STIR, fracture lines) are
    filled and a ``closing_mm`` closing smooths the outline.

    Parameters
    ----------
    t1 : SimpleITK.Image
        3D T1 image; the result is on its grid.
    cement_mass : SimpleITK.Image
        Mask of this body's cement mass (any grid of the same frame of reference).
    stir : SimpleITK.Image, optional
        STIR of the same frame of reference (any grid).
    muscle_signal : float, optional
        T1 muscle reference (e.g. ``CementResult.muscle_signal``); estimated when omitted.
    marrow_range, lesion_range : tuple of float
        Allowed T1 signal (multiples of the muscle signal) for marrow and for lesions.
    near_cement_mm : float
        Distance (mm) from the cement within which any lesion-range T1 voxel is allowed.
    opening_mm, closing_mm : float
        Radii (mm) of the leak-cutting opening and the smoothing closing.
    cortex_mm : float
        Thickness (mm) of the dark cortical shell added around the grown marrow.

    Returns
    -------
    BodyResult
        ``ok`` is False (with the reason) when the cement mask is empty or the body is
        implausible (volume or extents).

    Raises
    ------
    ValueError
        If an image is not 3D.
    """
    cm.check_3d(t1, "t1")
    cm.check_3d(cement_mass, "cement_mass")
    if not cm.same_grid(cement_mass, t1):
        cement_mass = cm.resample_like(t1, sitk.Cast(cement_mass > 0, sitk.sitkUInt8), nearest=True)
    seed = cm.to_mask(cement_mass)
    if not seed.any():
        return BodyResult(cm.mask_image(seed, t1), "no cement voxel to grow the body from", False)
    spacing = cm.spacing_zyx(t1)
    t1_arr = cm.to_array(t1)
    body = cm.body_mask(t1_arr)
    if muscle_signal is None or not np.isfinite(muscle_signal) or muscle_signal <= 0:
        muscle_signal, muscle_like = cm.estimate_muscle_t1(t1_arr, body)
    else:
        muscle_like = body & (np.abs(t1_arr - muscle_signal) <= 0.15 * muscle_signal)
    rel = t1_arr / muscle_signal
    lesion_t1 = (rel >= lesion_range[0]) & (rel <= lesion_range[1])
    allowed = (rel >= marrow_range[0]) & (rel <= marrow_range[1])
    allowed |= (rel >= 1.05) & (rel <= lesion_range[1]) & cm.dilate_mm(seed, spacing, near_cement_mm)
    edge = rel < marrow_range[0]  # cortex and cortex/marrow partial volume (not fat)
    lesion_like: cm.BoolArray | None = None
    not_disc_pv = np.ones(rel.shape, dtype=bool)
    holds_marrow = np.ones(rel.shape, dtype=bool)
    method = f"T1 region growing (muscle {muscle_signal:.0f}; marrow {marrow_range[0]}-{marrow_range[1]} x"
    if stir is not None:
        cm.check_3d(stir, "stir")
        stir_arr = cm.to_array(stir if cm.same_grid(stir, t1) else cm.resample_like(t1, stir))
        sample = stir_arr[muscle_like & (stir_arr > 0)]
        if sample.size >= 50:
            stir_rel = stir_arr / cm.histogram_mode(sample)
            not_disc = (rel >= 1.0) | (stir_rel >= 2.8)
            # on the body's footprint, lesion partial-volumed with cortex (T1 ~1.0 x muscle) is
            # accepted; the disc itself (T1 ~0.83 x) still is not
            not_disc_pv = (rel >= DISC_T1_MAX) | (stir_rel >= 2.8)
            allowed &= stir_rel >= STIR_MARROW_MIN  # fat / cortex partial volume: marrow-bright T1, dark STIR
            holds_marrow = stir_rel >= STIR_SHELL_MIN
            lesion_like = lesion_t1 & (stir_rel >= 1.5) & (stir_rel <= 4.0)
            allowed |= lesion_like & not_disc
            allowed &= stir_rel <= 4.0
            edge &= stir_rel < 2.0
            method += "; lesions by STIR 1.5-4 x muscle"
    method += ")"
    region = search_region(t1, cm.centroid_mm(seed, t1), SEARCH_SEMI_AXES_MM)
    allowed &= region
    mask = cm.component_touching(allowed | seed, seed)
    mask = cm.component_touching(cm.open_mm(mask, spacing, opening_mm) | seed, seed)
    if lesion_like is not None:
        # Second pass on the body's own profile: lesion signal partial-volumed with the tangential
        # cortex of the lateral slices (T1 ~1.0 x muscle, close to disc) is accepted where the first
        # pass found body on some thick slice (its projection across them); the disc itself stays out.
        within = _profile(mask, spacing)
        if within is not None:
            second = (allowed | (lesion_like & within & not_disc_pv)) & region
            mask = cm.component_touching(second | seed, seed)
            mask = cm.component_touching(cm.open_mm(mask, spacing, opening_mm) | seed, seed)
            method += "; lesion signal accepted on the body's profile across thick slices"
    if cortex_mm > 0:
        shell_mm = max(cortex_mm, float(np.median(spacing)))  # at least one in-plane voxel
        shell = cm.dilate_mm(mask, spacing, shell_mm)
        within = _profile(mask, spacing)
        mask |= shell & edge & body
        if within is not None:  # the tangential cortex of the outermost thick slices, if it holds marrow
            across = ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(3, 1)) & within
            mask |= across & edge & body & holds_marrow
    mask = cm.fill_holes(mask)
    mask = cm.fill_holes(cm.close_mm(mask, spacing, closing_mm))
    return check_body(mask, t1, method)
