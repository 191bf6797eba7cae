"""Overlays: planes in patient space, masks through physical space, contours on the mask boundary, PNG + sidecar.

Truth comes from the constructed volumes: the expected display grid is written here from the
radiological conventions (sagittal: anterior left, superior up; axial: patient's right left,
anterior up), and the expected 2D masks from each mask's own voxel grid (nearest voxel of each
pixel centre).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from pipeline.outputs.overlay_png import TimelineVisit, sidecar_path, write_timeline, write_visit_overlay
from pipeline.outputs.overlays import inner_contour, legend_entries, render_view
from pipeline.outputs.palette import STRUCTURES, structure

Inside = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]]

# (column direction, row direction) of each view, from the conventions (LPS: +x left, +y posterior, +z superior)
CONVENTIONS = {
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),
}
PX = 0.5
HALF = 25.0
H = round(HALF / PX)  # index of the middle row / column
ELLIPSOID_C = np.array([1.0, 2.0, -3.0])
ELLIPSOID_R = np.array([9.0, 14.0, 11.0])
CEMENT_BOX = ((28, 33), (30, 36), (5, 7))  # voxel index ranges (i, j, k), inclusive, on the T1 grid
RESIDUAL_C = ELLIPSOID_C + np.array([0.0, 8.0, 0.0])
RESIDUAL_R = np.array([5.0, 4.0, 6.0])
CENTRE = ELLIPSOID_C + np.array([0.3, -0.2, 0.1])


def _rot_x(a: float) -> npt.NDArray[np.float64]:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(a: float) -> npt.NDArray[np.float64]:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# A sagittal acquisition: i -> posterior, j -> inferior, k -> patient's right; tilted a little.
T1_DIRECTION = _rot_z(0.05) @ _rot_x(0.1) @ np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
T1_SPACING = np.array([1.25, 1.25, 4.4])
T1_SIZE = np.array([64, 64, 13])
T1_ORIGIN = -(T1_DIRECTION * T1_SPACING) @ ((T1_SIZE - 1) / 2) + np.array([0.123, -0.071, 0.037])
# A coarser axial DCE-like grid, rotated differently, another origin.
DCE_DIRECTION = _rot_z(-0.08)
DCE_SPACING = np.array([2.3, 2.3, 4.5])
DCE_SIZE = np.array([40, 40, 16])
DCE_ORIGIN = -(DCE_DIRECTION * DCE_SPACING) @ ((DCE_SIZE - 1) / 2) + np.array([0.61, 0.27, -0.33])


class Grid:
    def __init__(
        self,
        origin: npt.NDArray[np.float64],
        spacing: npt.NDArray[np.float64],
        direction: npt.NDArray[np.float64],
        size: npt.NDArray[np.int64],
    ) -> None:
        self.origin, self.size = origin, size
        self.matrix = direction * spacing  # index -> physical offset
        self.spacing, self.direction = spacing, direction

    def image(self, values: npt.NDArray[np.generic]) -> sitk.Image:
        img = sitk.GetImageFromArray(values)  # values indexed [k, j, i]
        img.SetOrigin(tuple(self.origin))
        img.SetSpacing(tuple(self.spacing))
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    def centres(self) -> npt.NDArray[np.float64]:
        """Physical centre of every voxel, [k, j, i, xyz]."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.size[::-1]), indexing="ij")
        idx = np.stack([i, j, k], axis=-1).astype(float)
        return self.origin + idx @ self.matrix.T

    def nearest_voxel(self, points: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        ci = (points - self.origin) @ np.linalg.inv(self.matrix).T
        frac = np.abs(ci - np.floor(ci) - 0.5)
        assert frac.min() > 1e-6, "test geometry puts a pixel centre on a voxel edge: move it"
        idx = np.floor(ci + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < self.size), axis=-1)
        return idx, inside


T1 = Grid(T1_ORIGIN, T1_SPACING, T1_DIRECTION, T1_SIZE)
DCE = Grid(DCE_ORIGIN, DCE_SPACING, DCE_DIRECTION, DCE_SIZE)


def _in_ellipsoid(
    points: npt.NDArray[np.float64], c: npt.NDArray[np.float64], r: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    return np.sum(((points - c) / r) ** 2, axis=-1) <= 1.0


def _ellipsoid_mask(grid: Grid, c: npt.NDArray[np.float64], r: npt.NDArray[np.float64]) -> sitk.Image:
    return grid.image(_in_ellipsoid(grid.centres(), c, r).astype(np.uint8))


def _box_mask(grid: Grid, box: tuple[tuple[int, int], ...]) -> sitk.Image:
    arr = np.zeros(tuple(grid.size[::-1]), np.uint8)
    (i0, i1), (j0, j1), (k0, k1) = box
    arr[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = 1
    return grid.image(arr)


def _plane_points(
    view: str, centre: npt.NDArray[np.float64], shift: npt.NDArray[np.float64] | None = None, half_px: int = H
) -> npt.NDArray[np.float64]:
    """Expected physical point of every pixel centre [row, col, xyz] (plus ``shift``: the transform)."""
    col, row = CONVENTIONS[view]
    r, c = np.mgrid[0 : 2 * half_px + 1, 0 : 2 * half_px + 1]
    pts = centre + (r - half_px)[..., None] * row * PX + (c - half_px)[..., None] * col * PX
    return pts + (shift if shift is not None else 0.0)


def _expected_ellipsoid_2d(
    grid: Grid, c: npt.NDArray[np.float64], r: npt.NDArray[np.float64], points: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    idx, inside = grid.nearest_voxel(points)
    centres = grid.origin + idx.astype(float) @ grid.matrix.T
    return inside & _in_ellipsoid(centres, c, r)


def _expected_box_2d(
    grid: Grid, box: tuple[tuple[int, int], ...], points: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    idx, inside = grid.nearest_voxel(points)
    ok = inside.copy()
    for axis, (lo, hi) in enumerate(box):
        ok &= (idx[..., axis] >= lo) & (idx[..., axis] <= hi)
    return ok


def _t1_image(marker_index: tuple[int, int, int] | None = None) -> sitk.Image:
    """Smooth background (so the windowing has something to show) plus an optional bright marker voxel."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in T1_SIZE[::-1]), indexing="ij")
    arr = (100.0 + 0.5 * i + 0.3 * j + 2.0 * k).astype(np.float32)
    if marker_index is not None:
        arr[marker_index[2], marker_index[1], marker_index[0]] = 5000.0
    return T1.image(arr)


def _masks() -> dict[str, sitk.Image | None]:
    return {
        "vertebra": _ellipsoid_mask(T1, ELLIPSOID_C, ELLIPSOID_R),
        "cement": _box_mask(T1, CEMENT_BOX),
        "ablation": None,
        "residual": _ellipsoid_mask(DCE, RESIDUAL_C, RESIDUAL_R),
    }


def _expected_masks(
    view: str, centre: npt.NDArray[np.float64] = CENTRE, shift: npt.NDArray[np.float64] | None = None
) -> dict[str, npt.NDArray[np.bool_]]:
    pts = _plane_points(view, centre, shift)
    return {
        "vertebra": _expected_ellipsoid_2d(T1, ELLIPSOID_C, ELLIPSOID_R, pts),
        "cement": _expected_box_2d(T1, CEMENT_BOX, pts),
        "residual": _expected_ellipsoid_2d(DCE, RESIDUAL_C, RESIDUAL_R, pts),
    }


def _boundary(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Mask pixels with an 8-neighbour outside the mask (beyond the array edge counts as inside)."""
    padded = np.pad(mask, 1, constant_values=True)
    all_in = np.ones_like(mask)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            all_in &= padded[1 + dr : 1 + dr + mask.shape[0], 1 + dc : 1 + dc + mask.shape[1]]
    return mask & ~all_in


# ----------------------------------------------------------------------------- geometry truth


@pytest.mark.parametrize("view", ["sagittal", "axial"])
def test_masks_resampled_through_physical_space(view: str) -> None:
    v = render_view(_t1_image(), _masks(), CENTRE, view, pixel_mm=PX, half_width_mm=HALF)
    expected = _expected_masks(view)
    assert list(v.masks) == ["vertebra", "cement", "residual"]  # drawing order, None left out
    for name, truth in expected.items():
        assert truth.sum() > 20, f"test geometry: {name} should cross the {view} plane"
        np.testing.assert_array_equal(v.masks[name], truth, err_msg=name)


@pytest.mark.parametrize("view", ["sagittal", "axial"])
def test_contour_pixels_lie_on_the_mask_boundary(view: str) -> None:
    v = render_view(_t1_image(), _masks(), CENTRE, view, pixel_mm=PX, half_width_mm=HALF)
    expected = _expected_masks(view)
    names = list(expected)  # drawing order
    for n, name in enumerate(names):
        colour = np.all(v.rgb == np.array(structure(name).rgb, np.uint8), axis=-1)
        boundary = _boundary(expected[name])
        assert colour.any()
        assert not (colour & ~boundary).any(), f"{name}: coloured pixels off the mask boundary"
        covered = np.zeros_like(boundary)
        for later in names[n + 1 :]:
            covered |= _boundary(expected[later])
        np.testing.assert_array_equal(colour, boundary & ~covered, err_msg=name)
    uncoloured = ~np.any([_boundary(m) for m in expected.values()], axis=0)
    assert np.all(v.rgb[uncoloured] == v.grey[uncoloured][:, None])  # grey everywhere else


@pytest.mark.parametrize("view", ["sagittal", "axial"])
def test_image_is_interpolated_in_physical_space_and_windowed(view: str) -> None:
    v = render_view(_t1_image(), {}, CENTRE, view, pixel_mm=PX, half_width_mm=45.0, window=(110.0, 140.0))
    ci = (_plane_points(view, CENTRE, half_px=90) - T1.origin) @ np.linalg.inv(T1.matrix).T
    truth = 100.0 + 0.5 * ci[..., 0] + 0.3 * ci[..., 1] + 2.0 * ci[..., 2]  # the background is linear in the index
    interior = np.all((ci >= 0) & (ci <= T1_SIZE - 1), axis=-1)
    outside = np.any((ci < -0.5) | (ci > T1_SIZE - 0.5), axis=-1)
    assert interior.sum() > 1000 and outside.sum() > 100
    np.testing.assert_allclose(v.intensity[interior], truth[interior], atol=1e-3)
    assert np.isnan(v.intensity[outside]).all() and (v.grey[outside] == 0).all()
    grey = np.clip((truth - 110.0) / 30.0, 0.0, 1.0) * 255.0
    assert np.abs(v.grey[interior].astype(float) - grey[interior]).max() <= 0.51


def test_thicker_contour_stays_inside_the_mask() -> None:
    mask = np.zeros((12, 12), bool)
    mask[2:10, 3:11] = True
    band = inner_contour(mask, width_px=2)
    truth = mask.copy()
    truth[4:8, 5:9] = False  # two pixels in from every side
    np.testing.assert_array_equal(band, truth)


@pytest.mark.parametrize(
    ("view", "offset_mm", "expected_rc"),
    [
        # marker 10 mm anterior and 5 mm superior of the centre: left of and above the middle
        ("sagittal", np.array([0.0, -10.0, 5.0]), (H - 10, H - 20)),
        # marker 8 mm to the patient's right and 6 mm anterior: left of and above the middle
        ("axial", np.array([-8.0, -6.0, 0.0]), (H - 12, H - 16)),
    ],
)
def test_orientation_conventions(view: str, offset_mm: npt.NDArray[np.float64], expected_rc: tuple[int, int]) -> None:
    marker = (30, 33, 6)
    marker_mm = T1.origin + T1.matrix @ np.array(marker, float)
    centre = marker_mm - offset_mm
    v = render_view(_t1_image(marker), {}, centre, view, pixel_mm=PX, half_width_mm=HALF)
    assert np.unravel_index(np.nanargmax(v.intensity), v.intensity.shape) == expected_rc
    col, row = CONVENTIONS[view]
    np.testing.assert_allclose(v.geometry.col_step_mm, col * PX, atol=1e-12)
    np.testing.assert_allclose(v.geometry.row_step_mm, row * PX, atol=1e-12)
    np.testing.assert_allclose(v.geometry.pixel_to_point(*expected_rc), marker_mm, atol=1e-9)
    np.testing.assert_allclose(v.geometry.point_to_pixel(marker_mm), expected_rc, atol=1e-9)
    np.testing.assert_allclose(v.geometry.pixel_to_point(H, H), centre, atol=1e-9)


def test_mask_on_a_coarser_grid_lands_at_the_same_place() -> None:
    on_t1 = _ellipsoid_mask(T1, RESIDUAL_C, RESIDUAL_R)
    on_dce = _ellipsoid_mask(DCE, RESIDUAL_C, RESIDUAL_R)
    a = render_view(_t1_image(), {"residual": on_t1}, CENTRE, "sagittal", pixel_mm=PX, half_width_mm=HALF)
    b = render_view(_t1_image(), {"ablation": on_dce}, CENTRE, "sagittal", pixel_mm=PX, half_width_mm=HALF)
    ca = np.array(ndimage.center_of_mass(a.masks["residual"]))
    cb = np.array(ndimage.center_of_mass(b.masks["ablation"]))
    assert np.linalg.norm(ca - cb) * PX < 2.0  # mm: within a coarse voxel
    truth = _expected_ellipsoid_2d(DCE, RESIDUAL_C, RESIDUAL_R, _plane_points("sagittal", CENTRE))
    np.testing.assert_array_equal(b.masks["ablation"], truth)


@pytest.mark.parametrize("view", ["sagittal", "axial"])
def test_translation_shifts_content_by_the_expected_pixels(view: str) -> None:
    marker = (30, 33, 6)
    marker_mm = T1.origin + T1.matrix @ np.array(marker, float)
    shift = np.array([0.0, 5.0, 0.0])  # display point q shows image point q + 5 mm posterior
    tx = sitk.TranslationTransform(3, tuple(shift))
    plain = render_view(_t1_image(marker), _masks(), marker_mm, view, pixel_mm=PX, half_width_mm=HALF)
    moved = render_view(_t1_image(marker), _masks(), marker_mm, view, pixel_mm=PX, half_width_mm=HALF, transform=tx)
    r0, c0 = np.unravel_index(np.nanargmax(plain.intensity), plain.intensity.shape)
    r1, c1 = np.unravel_index(np.nanargmax(moved.intensity), moved.intensity.shape)
    # content 5 mm posterior of where it was = 10 px: sagittal -> to the left (anterior left); axial -> up
    assert (r1 - r0, c1 - c0) == ((0, -10) if view == "sagittal" else (-10, 0))
    for name, truth in _expected_masks(view, marker_mm, shift).items():
        np.testing.assert_array_equal(moved.masks[name], truth, err_msg=name)


# ----------------------------------------------------------------------------- errors and edge cases


def test_centre_outside_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="outside the image"):
        render_view(_t1_image(), _masks(), (500.0, 0.0, 0.0), "axial")
    far = sitk.TranslationTransform(3, (0.0, 0.0, 300.0))
    with pytest.raises(ValueError, match="registration of this visit"):
        render_view(_t1_image(), _masks(), CENTRE, "axial", transform=far)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="view must be one of"):
        render_view(_t1_image(), {}, CENTRE, "coronal")
    with pytest.raises(ValueError, match="unknown structure 'tumour'"):
        render_view(_t1_image(), {"tumour": None}, CENTRE, "axial")
    with pytest.raises(ValueError, match="three finite numbers"):
        render_view(_t1_image(), {}, (0.0, float("nan"), 1.0), "axial")
    with pytest.raises(TypeError, match=r"mask 'cement' must be a 3D SimpleITK\.Image"):
        render_view(_t1_image(), {"cement": np.zeros((3, 3, 3))}, CENTRE, "axial")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"must end in \.png"):
        write_visit_overlay(tmp_path / "o.jpg", _t1_image(), {}, CENTRE, title="x")
    with pytest.raises(ValueError, match=r"window must be \(low, high\) with high > low"):
        render_view(_t1_image(), {}, CENTRE, "axial", window=(5.0, 5.0))
    with pytest.raises(ValueError, match="width_px must be at least 1"):
        inner_contour(np.ones((3, 3), bool), width_px=0)


def test_no_masks_gives_a_grey_image_and_says_so(tmp_path: Path) -> None:
    empty = T1.image(np.zeros(tuple(T1_SIZE[::-1]), np.uint8))
    masks: dict[str, sitk.Image | None] = {"vertebra": None, "cement": empty}
    side = write_visit_overlay(
        tmp_path / "o.png", _t1_image(), masks, CENTRE, title="L1 J0", pixel_mm=PX, half_width_mm=HALF
    )
    png = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    for p in side["panels"]:
        crop = png[p["y0_px"] : p["y0_px"] + p["height_px"], p["x0_px"] : p["x0_px"] + p["width_px"]]
        assert crop.std() > 0 and np.all(crop[..., 0] == crop[..., 1]) and np.all(crop[..., 1] == crop[..., 2])
    v = render_view(_t1_image(), masks, CENTRE, "axial")
    assert [text for _, text in legend_entries([masks], [v])] == [
        "Vertebral body (not segmented)",
        "Cement (empty)",
        "Ablation zone (not segmented)",
        "Residual enhancing tissue (not segmented)",
    ]
    far = {"residual": _ellipsoid_mask(T1, ELLIPSOID_C + np.array([0.0, 0.0, 20.0]), np.array([3.0, 3.0, 3.0]))}
    sag = render_view(_t1_image(), far, ELLIPSOID_C + np.array([12.0, 0.0, -15.0]), "sagittal")
    ax = render_view(_t1_image(), far, ELLIPSOID_C + np.array([12.0, 0.0, -15.0]), "axial")
    assert legend_entries([far], [sag, ax])[3][1] == "Residual enhancing tissue (not in these planes)"


# ----------------------------------------------------------------------------- PNG and sidecar


def _read_png(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im.convert("RGB"))


def _crop(png: npt.NDArray[np.uint8], panel: dict[str, Any]) -> npt.NDArray[np.uint8]:
    x0, y0, w, h = (int(panel[k]) for k in ("x0_px", "y0_px", "width_px", "height_px"))
    return png[y0 : y0 + h, x0 : x0 + w]


def test_visit_overlay_png_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "J0" / "overlay.png"
    side = write_visit_overlay(
        out, _t1_image(), _masks(), CENTRE, title="L1 · J0 · 2024-01-02", pixel_mm=PX, half_width_mm=HALF
    )
    assert json.loads(sidecar_path(out).read_text()) == side
    assert sidecar_path(out) == tmp_path / "J0" / "overlay.json"
    assert set(side) == {"width_px", "height_px", "panels"}
    png = _read_png(out)
    assert png.shape == (side["height_px"], side["width_px"], 3)
    assert [p["view"] for p in side["panels"]] == ["sagittal", "axial"]
    keys = {"view", "label", "x0_px", "y0_px", "width_px", "height_px", "origin_mm", "row_step_mm", "col_step_mm"}
    for p in side["panels"]:
        assert set(p) == keys and p["label"] == ""
        v = render_view(_t1_image(), _masks(), CENTRE, p["view"], pixel_mm=PX, half_width_mm=HALF)
        np.testing.assert_array_equal(_crop(png, p), v.rgb)  # placed pixel for pixel, never resampled
        # every cement-coloured pixel of the PNG, through the sidecar, falls in the physical cement box
        ys, xs = np.nonzero(np.all(_crop(png, p) == np.array(structure("cement").rgb, np.uint8), axis=-1))
        assert ys.size > 0
        rc = np.stack([ys, xs], axis=-1).astype(float)
        pts = (
            np.asarray(p["origin_mm"])
            + rc[:, :1] * np.asarray(p["row_step_mm"])
            + rc[:, 1:] * np.asarray(p["col_step_mm"])
        )
        assert _expected_box_2d(T1, CEMENT_BOX, pts).all()
        # and the middle pixel is the centre
        mid = np.asarray(p["origin_mm"]) + H * np.asarray(p["row_step_mm"]) + H * np.asarray(p["col_step_mm"])
        np.testing.assert_allclose(mid, CENTRE, atol=1e-5)
    assert side["panels"][0]["x0_px"] + side["panels"][0]["width_px"] <= side["panels"][1]["x0_px"]
    assert out.stat().st_size < 60_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.json", "overlay.png"]  # no temp file left


def test_png_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_visit_overlay(a, _t1_image(), _masks(), CENTRE, title="L1 · M3")
    write_visit_overlay(b, _t1_image(), _masks(), CENTRE, title="L1 · M3")
    first = a.read_bytes()
    assert first == b.read_bytes()
    write_visit_overlay(a, _t1_image(), _masks(), CENTRE, title="L1 · M3")
    assert a.read_bytes() == first
    assert b"tIME" not in first and b"Software" not in first


def _shifted(grid: Grid, img: sitk.Image, shift: npt.NDArray[np.float64]) -> sitk.Image:
    out = sitk.Image(img)
    out.SetOrigin(tuple(np.asarray(img.GetOrigin()) + shift))
    return out


def test_timeline_registered_visits_line_up(tmp_path: Path) -> None:
    shift = np.array([2.0, -3.0, 4.0])  # the M1 patient sits 2, -3, 4 mm away from J0 in scanner space
    m1_image = _shifted(T1, _t1_image(), shift)
    m1_masks = {k: (_shifted(T1, m, shift) if m is not None else None) for k, m in _masks().items()}
    visits = [
        TimelineVisit("J0", _t1_image(), _masks(), None, 0),
        ("M1", m1_image, m1_masks, sitk.TranslationTransform(3, tuple(shift)), 31),
        TimelineVisit("M3", _t1_image(), _masks(), sitk.TranslationTransform(3, (600.0, 0.0, 0.0)), 92),
    ]
    out = tmp_path / "timeline.png"
    side = write_timeline(out, visits, CENTRE, title="L1 · timeline", pixel_mm=PX, half_width_mm=HALF)
    assert json.loads(sidecar_path(out).read_text()) == side
    png = _read_png(out)
    assert png.shape == (side["height_px"], side["width_px"], 3)
    panels = side["panels"]
    assert [(p["label"], p["view"]) for p in panels] == [
        (label, view) for label in ("J0", "M1", "M3") for view in ("sagittal", "axial")
    ]
    sag = [p for p in panels if p["view"] == "sagittal"]
    assert sag[0]["x0_px"] < sag[1]["x0_px"] < sag[2]["x0_px"]
    for j0, m1 in zip(panels[0:2], panels[2:4], strict=True):
        a, b = _crop(png, j0), _crop(png, m1)
        truth = render_view(_t1_image(), _masks(), CENTRE, j0["view"], pixel_mm=PX, half_width_mm=HALF)
        np.testing.assert_array_equal(a, truth.rgb)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # registered: M1 on the J0 plane looks like J0
        for s in STRUCTURES:
            colour = np.array(s.rgb, np.uint8)
            np.testing.assert_array_equal(np.all(a == colour, -1), np.all(b == colour, -1))
        assert _same_geometry(j0, m1)
    for p in panels[4:6]:  # M3's transform sends the plane out of its image: a flat grey placeholder
        corner = _crop(png, p)[:10, :10]
        assert np.all(corner == corner[0, 0]) and corner[0, 0, 0] == corner[0, 0, 1] == corner[0, 0, 2] > 0
    again = tmp_path / "again.png"
    write_timeline(again, visits, CENTRE, title="L1 · timeline", pixel_mm=PX, half_width_mm=HALF)
    assert again.read_bytes() == out.read_bytes()


def _same_geometry(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("origin_mm", "row_step_mm", "col_step_mm", "width_px", "height_px"))


def test_timeline_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no visit to show"):
        write_timeline(tmp_path / "t.png", [], CENTRE, title="x")
    away = sitk.TranslationTransform(3, (0.0, 900.0, 0.0))
    with pytest.raises(ValueError, match="outside the image of every visit"):
        write_timeline(tmp_path / "t.png", [TimelineVisit("M1", _t1_image(), {}, away, 30)], CENTRE, title="x")
    assert not (tmp_path / "t.png").exists()
