"""Small geometry and tissue helpers shared by the segmentation modules.

Everything here is pure: SimpleITK images or numpy arrays in, arrays / images out.
Arrays follow SimpleITK's ``GetArrayFromImage`` axis order ``(z, y, x)`` = ``(k, j, i)``; the
matching spacing is :func:`spacing_zyx`. Morphology is done with Euclidean distance transforms
on the voxel spacing, so every radius is in millimetres and exact on anisotropic grids.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int32]
Point = tuple[float, float, float]

_FACE = ndi.generate_binary_structure(3, 1)


def check_3d(image: sitk.Image, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``image`` is a 3D SimpleITK image.

    Raises
    ------
    TypeError
        If ``image`` is not a ``SimpleITK.Image``.
    ValueError
        If ``image`` is not 3D.
    """
    if not isinstance(image, sitk.Image):
        raise TypeError(f"{name} must be a SimpleITK.Image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(f"{name} must be a 3D image, got {image.GetDimension()}D")


def to_array(image: sitk.Image) -> FloatArray:
    """Voxel values as float64, axis order ``(z, y, x)``."""
    return np.asarray(sitk.GetArrayFromImage(image), dtype=np.float64)


def to_mask(image: sitk.Image) -> BoolArray:
    """Non-zero voxels of a mask image as a boolean array ``(z, y, x)``."""
    return np.asarray(sitk.GetArrayFromImage(image)) > 0


def spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing (mm) in array axis order ``(z, y, x)``."""
    sx, sy, sz = image.GetSpacing()
    return (float(sz), float(sy), float(sx))


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def mask_image(mask: BoolArray, reference: sitk.Image) -> sitk.Image:
    """A uint8 0/1 image carrying ``reference``'s geometry."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when ``a`` and ``b`` share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def resample_like(
    reference: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    nearest: bool = False,
    default: float = 0.0,
) -> sitk.Image:
    """Resample ``moving`` onto ``reference``'s grid.

    ``transform`` maps reference physical points to moving physical points (SimpleITK
    convention); identity when ``None`` (same frame of reference). Nearest-neighbour keeps the
    pixel type (for masks); linear interpolation returns float32.
    """
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    if nearest:
        return sitk.Resample(moving, reference, tx, sitk.sitkNearestNeighbor, default, moving.GetPixelID())
    return sitk.Resample(moving, reference, tx, sitk.sitkLinear, default, sitk.sitkFloat32)


# --------------------------------------------------------------------------- morphology (mm)


def dilate_mm(mask: BoolArray, spacing: tuple[float, float, float], radius_mm: float) -> BoolArray:
    """Voxels within ``radius_mm`` (Euclidean, physical) of ``mask``."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    if mask.all():
        return mask.copy()
    dist = ndi.distance_transform_edt(~mask, sampling=spacing)
    return np.asarray(dist <= radius_mm + 1e-6)


def erode_mm(mask: BoolArray, spacing: tuple[float, float, float], radius_mm: float) -> BoolArray:
    """Voxels of ``mask`` farther than ``radius_mm`` from its outside (Euclidean, physical).

    Voxels beyond the array border count as inside the mask (no erosion from the border).
    """
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    if mask.all():
        return mask.copy()
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    return np.asarray(dist > radius_mm + 1e-6)


def open_mm(mask: BoolArray, spacing: tuple[float, float, float], radius_mm: float) -> BoolArray:
    """Morphological opening by a ball of ``radius_mm``: removes structures thinner than 2 r."""
    return dilate_mm(erode_mm(mask, spacing, radius_mm), spacing, radius_mm) & mask


def close_mm(mask: BoolArray, spacing: tuple[float, float, float], radius_mm: float) -> BoolArray:
    """Morphological closing by a ball of ``radius_mm`` (fills gaps narrower than 2 r)."""
    grown = dilate_mm(mask, spacing, radius_mm)
    return erode_mm(grown, spacing, radius_mm) | mask


def fill_holes(mask: BoolArray) -> BoolArray:
    """Fill cavities not connected to the array border (3D, face connectivity)."""
    return np.asarray(ndi.binary_fill_holes(mask, structure=_FACE))


def label(mask: BoolArray) -> tuple[IntArray, int]:
    """Connected components with face (6-) connectivity, so diagonal contacts do not merge."""
    labels, n = ndi.label(mask, structure=_FACE)
    return np.asarray(labels, dtype=np.int32), int(n)


def border_labels(labels: IntArray) -> set[int]:
    """Labels of the components that touch the array border."""
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    found: set[int] = set()
    for face in faces:
        found.update(int(v) for v in np.unique(face))
    found.discard(0)
    return found


def component_touching(mask: BoolArray, seed: BoolArray) -> BoolArray:
    """Union of the components of ``mask`` that overlap ``seed``."""
    labels, n = label(mask)
    if n == 0:
        return np.zeros_like(mask)
    hit = np.unique(labels[seed & mask])
    hit = hit[hit > 0]
    return np.isin(labels, hit)


# --------------------------------------------------------------------------- physical coordinates


def index_to_physical(image: sitk.Image, idx_zyx: npt.ArrayLike) -> FloatArray:
    """Physical (LPS, mm) coordinates of array indices ``(N, 3)`` given as ``(k, j, i)``."""
    idx = np.atleast_2d(np.asarray(idx_zyx, dtype=np.float64))[:, ::-1]  # -> (i, j, k)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    return np.asarray(origin + (idx * spacing) @ direction.T)


def physical_coordinates(image: sitk.Image) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Physical x, y, z (LPS, mm) of every voxel, each shaped like the image array."""
    nx, ny, nz = image.GetSize()
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    u, v, w = i * sx, j * sy, k * sz
    xs = ox + direction[0, 0] * u + direction[0, 1] * v + direction[0, 2] * w
    ys = oy + direction[1, 0] * u + direction[1, 1] * v + direction[1, 2] * w
    zs = oz + direction[2, 0] * u + direction[2, 1] * v + direction[2, 2] * w
    return np.asarray(xs), np.asarray(ys), np.asarray(zs)


def physical_bounds(image: sitk.Image) -> tuple[FloatArray, FloatArray]:
    """Lowest and highest physical coordinates (LPS, mm) of the image's voxel-edge corners."""
    size = image.GetSize()
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(
        (i - 0.5, j - 0.5, k - 0.5)) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    return corners.min(axis=0), corners.max(axis=0)


def overlap_share(a: sitk.Image, b: sitk.Image) -> float:
    """Share of ``b``'s axis-aligned physical bounding box that lies inside ``a``'s (0-1).

    >>> img = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    >>> moved = sitk.Image(img); moved.SetOrigin((5.0, 0.0, 0.0))
    >>> overlap_share(img, moved)
    0.5
    """
    a_lo, a_hi = physical_bounds(a)
    b_lo, b_hi = physical_bounds(b)
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0.0, None)
    volume = float(np.prod(b_hi - b_lo))
    return float(np.prod(inter)) / volume if volume > 0 else 0.0


def centroid_mm(mask: BoolArray, image: sitk.Image) -> Point:
    """Physical centroid (LPS, mm) of a non-empty mask on ``image``'s grid."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("centroid of an empty mask is undefined")
    p = index_to_physical(image, idx.mean(axis=0))[0]
    return (float(p[0]), float(p[1]), float(p[2]))


# --------------------------------------------------------------------------- tissue levels


def body_mask(values: FloatArray, *, fraction: float = 0.1) -> BoolArray:
    """The patient's body: voxels above ``fraction`` x the 99th percentile, holes filled.

    Internal signal voids (cement, cortex, gas enclosed in the body) become part of the body;
    the air around the patient, connected to the array border, does not.
    """
    positive = values[values > 0]
    if positive.size == 0:
        return np.zeros(values.shape, dtype=bool)
    tissue = values > fraction * float(np.percentile(positive, 99))
    return fill_holes(tissue)


def histogram_mode(values: FloatArray, *, bins: int = 64, smooth_bins: float = 1.5) -> float:
    """Location of the highest peak of the Gaussian-smoothed histogram of ``values``."""
    if values.size == 0:
        raise ValueError("histogram_mode needs at least one value")
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        return lo
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    smooth = ndi.gaussian_filter1d(counts.astype(np.float64), smooth_bins, mode="constant")
    k = int(np.argmax(smooth))
    return float(0.5 * (edges[k] + edges[k + 1]))


def estimate_muscle_t1(t1: FloatArray, body: BoolArray) -> tuple[float, BoolArray]:
    """Paraspinal-muscle signal on a T1 (spin echo, no fat saturation) image.

    Method: fat is the brightest tissue on T1 (its level is taken as the 98th percentile of the
    body); skeletal muscle is the most populated intermediate tissue, found as the mode of the
    smoothed histogram of body voxels between 0.25 and 0.6 x the fat level (muscle / fat is
    0.3-0.5 on T1 SE; marrow, fat and voids fall outside that window). The estimate is then
    refined as the median of the voxels within +-15 % of that mode.

    Returns
    -------
    tuple
        ``(signal, muscle_like_mask)``: the T1 muscle signal (image units) and the voxels
        taken as muscle-like (used to read the same tissue on other sequences).
    """
    values = t1[body]
    if values.size < 100:
        raise ValueError("the T1 image has too few body voxels (< 100) to estimate the muscle signal")
    fat = float(np.percentile(values, 98))
    window = values[(values >= 0.25 * fat) & (values <= 0.6 * fat)]
    if window.size < 50:
        window = values[values > 0.1 * fat]
    mode = histogram_mode(window)
    near = body & (np.abs(t1 - mode) <= 0.15 * mode)
    signal = float(np.median(t1[near])) if near.any() else mode
    return signal, near
