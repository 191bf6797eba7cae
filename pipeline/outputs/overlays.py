"""Sagittal and axial views through the treated vertebral body, with the contour of each structure.

Pure rendering: a SimpleITK image and masks in, arrays out (the PNG figure is
:mod:`pipeline.outputs.overlay_png`). Everything happens in physical space (LPS, mm):

- the display plane is built in patient coordinates, not in voxel axes, through ``centre_mm``,
  on an isotropic grid of ``pixel_mm``, ``2 * half_width_mm`` wide and tall (an odd number of
  pixels, so ``centre_mm`` is the centre of the middle pixel);
- **sagittal**: anterior on the left of the screen, superior at the top (columns run towards
  posterior, rows towards inferior); **axial**: the patient's right on the left of the screen,
  anterior at the top (columns run towards the patient's left, rows towards posterior) -- the
  radiological conventions;
- the image (linear interpolation) and every mask (nearest neighbour) are resampled onto that
  plane through their own geometry, so masks on another grid (residual and ablation on the DCE
  grid) land where they belong; an optional transform maps the plane's points (J0 space) into the
  image's physical space (the pipeline's ``to_j0`` transforms), so every visit can be shown on the
  J0 plane;
- a contour is the inner boundary of the 2D display-grid mask: the mask pixels that have an
  8-neighbour outside the mask (``mask & ~binary_erosion(mask, 3x3 square)``), repeated
  ``contour_px`` times for a thicker line; a mask cut by the edge of the panel is not outlined
  along that edge. Structures are drawn in :data:`pipeline.outputs.palette.STRUCTURES` order,
  later ones over earlier ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from pipeline.outputs.palette import STRUCTURES, Structure, structure

__all__ = [
    "VIEWS",
    "PlaneGeometry",
    "PlaneOutsideImageError",
    "View",
    "inner_contour",
    "legend_entries",
    "plane_geometry",
    "render_view",
]

logger = logging.getLogger(__name__)

ViewName = Literal["sagittal", "axial"]
VIEWS: tuple[ViewName, ...] = ("sagittal", "axial")

Vec3 = tuple[float, float, float]
BoolArray = npt.NDArray[np.bool_]

#: Unit steps (LPS) of a column and of a row of each view: see the module docstring.
_AXES: dict[str, tuple[Vec3, Vec3]] = {
    # view: (column direction, row direction)
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # columns -> posterior, rows -> inferior
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # columns -> patient's left, rows -> posterior
}


class PlaneOutsideImageError(ValueError):
    """The display plane's centre lies outside the image (wrong seed, or a registration gone astray)."""


@dataclass(frozen=True)
class PlaneGeometry:
    """Where the pixels of a display plane are in patient space (LPS, mm).

    The centre of pixel (row ``r``, column ``c``) is ``origin_mm + r * row_step_mm + c * col_step_mm``.
    """

    view: ViewName
    origin_mm: Vec3
    row_step_mm: Vec3
    col_step_mm: Vec3
    shape: tuple[int, int]  # (rows, columns)

    def pixel_to_point(self, row: float, col: float) -> Vec3:
        """Physical point (LPS, mm) of the centre of pixel (``row``, ``col``); fractions allowed."""
        o, r, c = np.asarray(self.origin_mm), np.asarray(self.row_step_mm), np.asarray(self.col_step_mm)
        p = o + row * r + col * c
        return (float(p[0]), float(p[1]), float(p[2]))

    def point_to_pixel(self, point_mm: Sequence[float]) -> tuple[float, float]:
        """(row, column) of the projection of ``point_mm`` (LPS, mm) onto the plane; fractional."""
        d = np.asarray(point_mm, float) - np.asarray(self.origin_mm)
        r, c = np.asarray(self.row_step_mm), np.asarray(self.col_step_mm)
        return (float(d @ r / (r @ r)), float(d @ c / (c @ c)))


@dataclass(frozen=True, eq=False)
class View:
    """One rendered plane.

    Attributes
    ----------
    geometry
        Where each pixel is (in the display plane's space: J0 when a transform was given).
    intensity
        Resampled image, float32 (rows, cols); NaN where the plane leaves the image.
    window
        (low, high) intensities mapped to black and white.
    grey
        Windowed image, uint8 (rows, cols); 0 outside the image.
    masks
        Resampled 2D masks (bool), one per structure given (not None), in drawing order.
    contours
        Contour pixels of each mask (bool), as drawn.
    rgb
        The composite, uint8 (rows, cols, 3): ``grey`` with the contours in the palette's colours.
    """

    geometry: PlaneGeometry
    intensity: npt.NDArray[np.float32]
    window: tuple[float, float]
    grey: npt.NDArray[np.uint8]
    masks: dict[str, BoolArray]
    contours: dict[str, BoolArray]
    rgb: npt.NDArray[np.uint8]

    @property
    def view(self) -> ViewName:
        return self.geometry.view

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape


def _vec3(value: Sequence[float], name: str) -> Vec3:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be three numbers (LPS, mm), got {value!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be three finite numbers (LPS, mm), got {value!r}")
    return (out[0], out[1], out[2])


def plane_geometry(
    centre_mm: Sequence[float],
    view: str,
    *,
    pixel_mm: float = 0.5,
    half_width_mm: float = 40.0,
) -> PlaneGeometry:
    """The display grid of ``view`` through ``centre_mm``.

    Parameters
    ----------
    centre_mm
        Centre of the plane (LPS, mm): the treated vertebral body's centroid. It is the centre of
        the middle pixel.
    view
        ``"sagittal"`` or ``"axial"``.
    pixel_mm
        Pixel size (mm), the same along rows and columns.
    half_width_mm
        Half the field of view (mm); the grid has ``2 * round(half_width_mm / pixel_mm) + 1`` pixels
        a side.

    Raises
    ------
    ValueError
        On an unknown view, a non-positive size, or a centre that is not three finite numbers.

    Example
    -------
    >>> g = plane_geometry((0.0, 0.0, 0.0), "sagittal", pixel_mm=1.0, half_width_mm=2.0)
    >>> g.shape, g.origin_mm, g.col_step_mm, g.row_step_mm
    ((5, 5), (0.0, -2.0, 2.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    """
    if view not in _AXES:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    if not (pixel_mm > 0 and half_width_mm > 0):
        raise ValueError(f"pixel_mm and half_width_mm must be positive, got {pixel_mm} and {half_width_mm}")
    centre = np.asarray(_vec3(centre_mm, "centre_mm"))
    half_px = max(1, round(half_width_mm / pixel_mm))
    n = 2 * half_px + 1
    col_dir, row_dir = (np.asarray(a) for a in _AXES[view])
    origin = centre - half_px * pixel_mm * (col_dir + row_dir)

    def tup(v: npt.NDArray[np.float64]) -> Vec3:
        return (float(v[0]) + 0.0, float(v[1]) + 0.0, float(v[2]) + 0.0)  # + 0.0: no negative zeros

    return PlaneGeometry(
        view="sagittal" if view == "sagittal" else "axial",
        origin_mm=tup(origin),
        row_step_mm=tup(row_dir * pixel_mm),
        col_step_mm=tup(col_dir * pixel_mm),
        shape=(n, n),
    )


def _reference(geometry: PlaneGeometry) -> sitk.Image:
    """A one-slice 3D image whose voxels are the plane's pixels (index (col, row, 0))."""
    rows, cols = geometry.shape
    col = np.asarray(geometry.col_step_mm)
    row = np.asarray(geometry.row_step_mm)
    pixel_mm = float(np.linalg.norm(col))
    col_dir, row_dir = col / pixel_mm, row / float(np.linalg.norm(row))
    normal = np.cross(col_dir, row_dir)
    ref = sitk.Image(cols, rows, 1, sitk.sitkUInt8)
    ref.SetOrigin(geometry.origin_mm)
    ref.SetSpacing((pixel_mm, float(np.linalg.norm(row)), pixel_mm))
    ref.SetDirection(tuple(float(v) for v in np.column_stack([col_dir, row_dir, normal]).ravel()))
    return ref


def inner_contour(mask: BoolArray, width_px: int = 1) -> BoolArray:
    """The inner boundary of a 2D mask: its pixels within ``width_px`` (8-connected steps) of the outside.

    Pixels beyond the array's edge count as inside, so a mask cut by the edge is not outlined there.

    Example
    -------
    >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
    >>> inner_contour(m).astype(int)[1:4, 1:4].tolist()
    [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    """
    if width_px < 1:
        raise ValueError(f"width_px must be at least 1, got {width_px}")
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros_like(mask)
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=width_px, border_value=1)
    return mask & ~eroded


def _window(intensity: npt.NDArray[np.float32], geometry: PlaneGeometry) -> tuple[float, float]:
    """Percentiles 1 and 99 of the body's neighbourhood: the central half of the field of view."""
    rows, cols = geometry.shape
    half = max(2, (rows // 2) // 2)
    r0, c0 = rows // 2, cols // 2
    region = intensity[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
    values = region[np.isfinite(region)]
    if values.size < 16:
        values = intensity[np.isfinite(intensity)]
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if not hi > lo:
        hi = lo + 1.0
    return (lo, hi)


def _check_inputs(image: sitk.Image, masks: Mapping[str, sitk.Image | None]) -> list[tuple[Structure, sitk.Image]]:
    if not isinstance(image, sitk.Image):
        raise TypeError(f"image must be a SimpleITK.Image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"image must be a scalar 3D image, got {image.GetDimension()}D")
    given = {structure(name).name: m for name, m in masks.items()}  # unknown names raise ValueError
    out = []
    for s in STRUCTURES:
        m = given.get(s.name)
        if m is None:
            continue
        if not isinstance(m, sitk.Image) or m.GetDimension() != 3:
            raise TypeError(f"mask {s.name!r} must be a 3D SimpleITK.Image or None, got {type(m).__name__}")
        out.append((s, m))
    return out


def render_view(
    image: sitk.Image,
    masks: Mapping[str, sitk.Image | None],
    centre_mm: Sequence[float],
    view: str,
    *,
    transform: sitk.Transform | None = None,
    pixel_mm: float = 0.5,
    half_width_mm: float = 40.0,
    contour_px: int = 1,
    window: tuple[float, float] | None = None,
) -> View:
    """Render one plane of ``image`` with the contours of ``masks``.

    Parameters
    ----------
    image
        The visit's T1, any orientation and spacing.
    masks
        Structure name (``vertebra``, ``cement``, ``ablation``, ``residual``) -> mask (non-zero
        inside), on any grid of the same physical space as ``image``, or None when not segmented.
    centre_mm
        Centre of the plane (LPS, mm) in the display space (J0 when ``transform`` is given).
    view
        ``"sagittal"`` or ``"axial"``.
    transform
        Maps display-plane points to ``image``'s (and the masks') physical space; None: identity.
    pixel_mm, half_width_mm
        Display grid: pixel size and half the field of view (mm).
    contour_px
        Contour width in pixels (see :func:`inner_contour`).
    window
        (low, high) intensities shown black and white; None: percentiles 1 and 99 of the central
        half of the plane (the body's neighbourhood).

    Returns
    -------
    View

    Raises
    ------
    PlaneOutsideImageError
        (a ValueError) If ``centre_mm`` (through ``transform``) lies outside ``image``.
    ValueError
        On an unknown view or structure name, a non-3D image, or an empty ``window``.
    TypeError
        If ``image`` or a mask is not a SimpleITK image.
    """
    given = _check_inputs(image, masks)
    if window is not None and not window[1] > window[0]:
        raise ValueError(f"window must be (low, high) with high > low, got {window!r}")
    geometry = plane_geometry(centre_mm, view, pixel_mm=pixel_mm, half_width_mm=half_width_mm)
    centre = _vec3(centre_mm, "centre_mm")
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    centre_in_image = tx.TransformPoint(centre)
    index = image.TransformPhysicalPointToContinuousIndex(centre_in_image)
    size = image.GetSize()
    if not all(-0.5 <= index[k] <= size[k] - 0.5 for k in range(3)):
        where = ", ".join(f"{v:.1f}" for v in centre_in_image)
        raise PlaneOutsideImageError(
            f"the {view} plane's centre ({where}) mm is outside the image ({size[0]}x{size[1]}x{size[2]} voxels): "
            "check the vertebra seed, or the registration of this visit to J0"
        )
    ref = _reference(geometry)
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), ref, tx, sitk.sitkLinear, float("nan"), sitk.sitkFloat32
    )
    intensity = sitk.GetArrayFromImage(resampled)[0].astype(np.float32)
    lo, hi = window if window is not None else _window(intensity, geometry)
    scaled = np.clip((np.nan_to_num(intensity, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    grey = np.round(scaled * 255.0).astype(np.uint8)
    grey[~np.isfinite(intensity)] = 0
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    masks_2d: dict[str, BoolArray] = {}
    contours: dict[str, BoolArray] = {}
    for s, m in given:
        plane = sitk.Resample(m, ref, tx, sitk.sitkNearestNeighbor, 0.0)
        mask_2d = sitk.GetArrayFromImage(plane)[0] != 0
        masks_2d[s.name] = mask_2d
        contours[s.name] = inner_contour(mask_2d, contour_px)
        rgb[contours[s.name]] = s.rgb
    return View(geometry, intensity, (float(lo), float(hi)), grey, masks_2d, contours, rgb)


def _mask_is_empty(mask: sitk.Image) -> bool:
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(mask)
    return bool(stats.GetMaximum() == 0 and stats.GetMinimum() == 0)


def legend_entries(
    masks: Sequence[Mapping[str, sitk.Image | None]],
    views: Sequence[View],
) -> list[tuple[Structure, str]]:
    """Legend lines for every structure, in drawing order: (structure, text).

    The text is the structure's label, followed by ``(not segmented)`` when no mask was given at any
    visit, ``(empty)`` when every given mask is empty, ``(not in these planes)`` when no view shows
    it.

    Parameters
    ----------
    masks
        The masks of each visit shown (one mapping per visit).
    views
        The rendered views.
    """
    out = []
    for s in STRUCTURES:
        given = [m for visit in masks if (m := visit.get(s.name)) is not None]
        if not given:
            note = " (not segmented)"
        elif all(_mask_is_empty(m) for m in given):
            note = " (empty)"
        elif not any(v.masks.get(s.name) is not None and v.masks[s.name].any() for v in views):
            note = " (not in these planes)"
        else:
            note = ""
        out.append((s, s.label + note))
    return out
