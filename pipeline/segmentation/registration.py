"""Rigid registration of a visit onto J0 (or of a pre-procedure CT onto the post CT).

Transforms follow the SimpleITK convention: they map points of the *fixed* physical space to
the *moving* physical space, so ``sitk.Resample(moving, fixed, transform)`` brings the moving
image onto the fixed grid (see :func:`resample_to`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.segmentation import common as cm

logger = logging.getLogger(__name__)

_SEED = 20240615
# ITK's v4 registration sums its metric over work units in whatever order they finish: with
# several, two runs of the same registration differ by up to ~1e-5 mm, which breaks bit-for-bit
# reproducible results (a re-run, a run on another machine of a Dask cluster). One work unit
# per registration keeps its threads for the rest and makes it reproducible to the last bit.
_WORK_UNITS = 1


@dataclass(frozen=True)
class RigidResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    transform : SimpleITK.Euler3DTransform
        Maps fixed physical points (LPS, mm) to moving physical points.
    metric : float
        Final Mattes mutual information (negative: lower is better); NaN when the optimiser
        failed or diverged and the initial alignment was kept.
    reason : str
        Initialisation, crop, optimiser stop condition.
    """

    transform: sitk.Euler3DTransform
    metric: float
    reason: str


def _point(p: Sequence[float], name: str) -> tuple[float, float, float]:
    if len(p) != 3:
        raise ValueError(f"{name} must be a 3D point (x, y, z) in mm, got {p!r}")
    return (float(p[0]), float(p[1]), float(p[2]))


def _center(image: sitk.Image) -> tuple[float, float, float]:
    """Physical centre of the image's voxel grid."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    c = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in (size - 1) / 2.0))
    return (float(c[0]), float(c[1]), float(c[2]))


def crop_physical(image: sitk.Image, center_mm: Sequence[float], size_mm: float) -> sitk.Image:
    """Sub-image covering the axis-aligned (LPS) cube of side ``size_mm`` around ``center_mm``.

    The cube is clamped to the image; the whole image is returned when they do not overlap.
    """
    half = size_mm / 2.0
    corners = [
        (center_mm[0] + dx, center_mm[1] + dy, center_mm[2] + dz)
        for dx in (-half, half)
        for dy in (-half, half)
        for dz in (-half, half)
    ]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int), 0, size - 1)
    extent = hi - lo + 1
    if np.any(extent < 4):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in extent], [int(v) for v in lo])


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_landmark_mm: Sequence[float] | None = None,
    moving_landmark_mm: Sequence[float] | None = None,
    crop_center_mm: Sequence[float] | None = None,
    crop_size_mm: float = 90.0,
    iterations: int = 200,
    search_mm: float = 0.0,
    search_step_mm: float = 3.0,
    max_shift_mm: float = 20.0,
    max_rotation_deg: float = 15.0,
) -> RigidResult:
    """Rigid (6 degrees of freedom) registration by Mattes mutual information.

    Initialisation: the translation between the landmarks (cement centroids) when both are
    given, else between the images' geometric centres; the rotation centre is the fixed
    landmark (or the crop centre). The metric is computed on a cube of ``crop_size_mm`` around
    ``crop_center_mm`` (default: fixed landmark, else fixed centre) of the fixed image, with a
    three-level pyramid (shrink 4, 2, 1; smoothing 2, 1, 0 mm), 50 histogram bins, 25 % random
    sampling with a fixed seed (deterministic), regular-step gradient descent with scales from
    physical shifts.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        3D images (any grids, any frames of reference).
    fixed_landmark_mm, moving_landmark_mm : tuple of float, optional
        The same anatomical point (LPS, mm) in each image, e.g. the cement centroid.
    crop_center_mm : tuple of float, optional
        Centre (fixed space, mm) of the region that drives the metric.
    crop_size_mm : float
        Side (mm) of that region.
    iterations : int
        Maximum optimiser iterations per level.
    search_mm, search_step_mm : float
        When ``search_mm`` > 0 (no landmark on the moving image, e.g. a pre-treatment visit),
        the initial translation is first refined by an exhaustive search over a grid of
        translations within +-``search_mm`` (step ``search_step_mm``), rotation fixed, by
        mutual information on a 60 mm cube around the crop centre resampled to
        ``search_step_mm`` voxels (deterministic, every voxel used). Keep ``search_mm`` under
        half the distance between two vertebrae (~30 mm) so the search cannot pick a
        neighbouring level.
    max_shift_mm, max_rotation_deg : float
        Divergence guard: when the optimiser moves the crop centre farther than
        ``max_shift_mm`` from the initial alignment, or ends with a rotation beyond
        ``max_rotation_deg`` about any axis, its result is rejected, the initial (landmark)
        alignment is returned with a NaN metric and the reason says so (patients move a few
        millimetres and degrees between visits; the landmarks already bring the treated level
        within a few millimetres).

    Returns
    -------
    RigidResult
        The fixed-to-moving transform, the final metric and a reason.

    Raises
    ------
    ValueError
        If an image is not 3D, a point is not 3D, or only one landmark is given.
    """
    cm.check_3d(fixed, "fixed")
    cm.check_3d(moving, "moving")
    if (fixed_landmark_mm is None) != (moving_landmark_mm is None):
        raise ValueError("give both fixed_landmark_mm and moving_landmark_mm, or neither")
    if crop_size_mm <= 0:
        raise ValueError(f"crop_size_mm must be positive, got {crop_size_mm}")
    if fixed_landmark_mm is not None and moving_landmark_mm is not None:
        f_pt = _point(fixed_landmark_mm, "fixed_landmark_mm")
        m_pt = _point(moving_landmark_mm, "moving_landmark_mm")
        init = "landmark translation"
    else:
        f_pt, m_pt = _center(fixed), _center(moving)
        init = "geometric centres"
    center = _point(crop_center_mm, "crop_center_mm") if crop_center_mm is not None else f_pt
    tx = sitk.Euler3DTransform()
    tx.SetCenter(center)
    tx.SetTranslation(tuple(m - f for m, f in zip(m_pt, f_pt, strict=True)))

    if search_mm > 0:
        init += _translation_search(fixed, moving, tx, center, search_mm, search_step_mm)
    fixed_f = sitk.Cast(crop_physical(fixed, center, crop_size_mm), sitk.sitkFloat32)
    moving_center = tx.TransformPoint(center)
    moving_f = sitk.Cast(crop_physical(moving, moving_center, crop_size_mm * 1.6), sitk.sitkFloat32)

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfWorkUnits(_WORK_UNITS)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, _SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    initial = sitk.Euler3DTransform(tx)
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(fixed_f, moving_f)
        metric = float(reg.GetMetricValue())
        stop = reg.GetOptimizerStopConditionDescription()
        result = sitk.Euler3DTransform(tx)
    except RuntimeError as exc:  # ITK raises when too few samples overlap
        logger.warning("rigid registration failed: %s", exc)
        metric, stop = math.nan, f"optimiser failed ({exc}); initial transform kept"
        result = sitk.Euler3DTransform(initial)  # the optimiser may have moved it before failing
    angles = np.degrees([result.GetAngleX(), result.GetAngleY(), result.GetAngleZ()])
    shift = float(np.linalg.norm(np.subtract(result.TransformPoint(center), initial.TransformPoint(center))))
    if math.isfinite(metric) and (shift > max_shift_mm or float(np.abs(angles).max()) > max_rotation_deg):
        logger.warning("rigid registration diverged (%.1f mm from the initial alignment, rotation up to "
                       "%.1f deg): initial alignment kept", shift, float(np.abs(angles).max()))
        stop = (f"diverged: the optimiser moved the crop centre {shift:.1f} mm from the initial alignment "
                f"(limit {max_shift_mm:.0f} mm) or rotated beyond {max_rotation_deg:.0f} deg; "
                f"initial alignment kept ({stop})")
        metric = math.nan
        result = sitk.Euler3DTransform(initial)
        angles = np.degrees([result.GetAngleX(), result.GetAngleY(), result.GetAngleZ()])
    reason = (
        f"init {init}; crop {crop_size_mm:.0f} mm around "
        f"({center[0]:.1f}, {center[1]:.1f}, {center[2]:.1f}); "
        f"rotation ({angles[0]:.2f}, {angles[1]:.2f}, {angles[2]:.2f}) deg, translation "
        f"({', '.join(f'{v:.2f}' for v in result.GetTranslation())}) mm; {stop}"
    )
    logger.info("rigid registration: %s", reason)
    return RigidResult(transform=result, metric=metric, reason=reason)


def _translation_search(fixed: sitk.Image, moving: sitk.Image, tx: sitk.Euler3DTransform,
                        center: tuple[float, float, float], search_mm: float, step_mm: float) -> str:
    """Move ``tx``'s translation to the best of a grid search (in place); returns a note for the reason."""
    crop = crop_physical(fixed, center, 60.0)
    size = [max(4, round(n * sp / step_mm)) for n, sp in zip(crop.GetSize(), crop.GetSpacing(), strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetDirection(crop.GetDirection())
    grid.SetSpacing([step_mm] * 3)
    first = np.asarray(crop.GetOrigin()) + np.asarray(crop.GetDirection()).reshape(3, 3) @ (
        (np.full(3, step_mm) - np.asarray(crop.GetSpacing())) / 2.0)
    grid.SetOrigin(tuple(float(v) for v in first))
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(crop, sitk.sitkFloat32), step_mm / 2.0)
    fixed_small = sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    reach = 60.0 * 1.8 + 2.0 * search_mm
    moving_crop = sitk.Cast(crop_physical(moving, tx.TransformPoint(center), reach), sitk.sitkFloat32)
    n = math.ceil(search_mm / step_mm)
    search = sitk.ImageRegistrationMethod()
    search.SetNumberOfWorkUnits(_WORK_UNITS)
    search.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    search.SetMetricSamplingStrategy(search.NONE)
    search.SetInterpolator(sitk.sitkLinear)
    search.SetOptimizerAsExhaustive([0, 0, 0, n, n, n], stepLength=step_mm)
    search.SetOptimizerScales([1.0] * 6)
    start = tx.GetTranslation()
    search.SetInitialTransform(tx, inPlace=True)
    try:
        search.Execute(fixed_small, moving_crop)
    except RuntimeError as exc:
        tx.SetTranslation(start)
        return f"; translation search failed ({exc}), start kept"
    moved = np.subtract(tx.GetTranslation(), start)
    return (f"; exhaustive translation search +-{search_mm:.0f} mm (step {step_mm:.0f} mm) moved it by "
            f"({', '.join(f'{v:.0f}' for v in moved)}) mm")


def resample_to(
    reference: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform | None,
    *,
    nearest: bool,
    default: float = 0.0,
) -> sitk.Image:
    """Bring ``moving`` onto ``reference``'s grid through ``transform`` (reference -> moving).

    ``nearest=True`` for masks/labels (pixel type kept), else linear (float32).
    """
    cm.check_3d(reference, "reference")
    cm.check_3d(moving, "moving")
    return cm.resample_like(reference, moving, transform, nearest=nearest, default=default)


def _surface(mask: cm.BoolArray) -> cm.BoolArray:
    return mask & ~ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(3, 1), border_value=0)


def cement_surface_distance_mm(
    fixed_cement: sitk.Image, moving_cement: sitk.Image, transform: sitk.Transform | None
) -> float:
    """Mean symmetric surface distance (mm) between two cement masks after registration.

    The moving mask is mapped onto the fixed grid (nearest neighbour) through ``transform``
    (fixed -> moving); the distance from each surface voxel to the other surface is measured
    with Euclidean distance maps on the fixed spacing, and the two directions are averaged.
    NaN when either mask is empty (after mapping).
    """
    cm.check_3d(fixed_cement, "fixed_cement")
    cm.check_3d(moving_cement, "moving_cement")
    a = cm.to_mask(fixed_cement)
    b = cm.to_mask(
        resample_to(fixed_cement, sitk.Cast(moving_cement > 0, sitk.sitkUInt8), transform, nearest=True)
    )
    if not a.any() or not b.any():
        return math.nan
    spacing = cm.spacing_zyx(fixed_cement)
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
    values = np.concatenate([dist_to_b[sa], dist_to_a[sb]])
    return float(values.mean())
