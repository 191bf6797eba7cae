"""Known-answer tests for pipeline.response.height on voxelised boxes, wedges and shaped bodies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.response.height import (
    Heights,
    _trimmed_lstsq,
    genant_grade,
    height_loss_mm,
    height_loss_pct,
    vertebral_heights,
)

# SimpleITK direction of a sagittal series (IOP 0,1,0 / 0,0,-1): columns are the LPS
# directions of index axes x (posterior), y (inferior), z (slice normal, -x = right).
SAGITTAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def _rotation(axis: tuple[float, float, float], deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    x, y, z = np.asarray(axis) / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _wedge(ha: float, hp: float, depth: float, width: float, rot: np.ndarray,
           spacing: tuple[float, float, float], direction: np.ndarray,
           shape: tuple[int, int, int]) -> np.ndarray:
    """Body with flat anterior / posterior walls; height varies linearly from ha (front) to hp.

    Body frame: e0 = left, e1 = posterior, e2 = superior, mapped to LPS by ``rot``; the body is
    centred in the field of view.
    """
    k, j, i = np.indices(shape)
    idx = np.stack([i, j, k], axis=-1).astype(float) * np.array(spacing[::-1])
    phys = idx @ direction.T
    local = (phys - phys.reshape(-1, 3).mean(axis=0)) @ rot
    lr, ap, si = local[..., 0], local[..., 1] + depth / 2, local[..., 2]
    h = ha + (hp - ha) * ap / depth
    return (np.abs(lr) <= width / 2) & (ap >= 0) & (ap <= depth) & (np.abs(si) <= h / 2)


GEOMETRIES = [
    pytest.param((0.7, 0.6, 0.5), np.eye(3), (80, 100, 120), id="axial-anisotropic"),
    pytest.param((3.0, 0.6, 0.6), SAGITTAL, (24, 110, 110), id="sagittal-3mm-slices"),
]
SHAPES = [pytest.param(24.0, 24.0, id="box"), pytest.param(15.0, 25.0, id="wedge")]
TILTS = [pytest.param(np.eye(3), id="straight"),
         pytest.param(_rotation((1, 0, 0), 12) @ _rotation((0, 1, 0), 6), id="tilted-12-6deg")]


@pytest.mark.parametrize(("spacing", "direction", "shape"), GEOMETRIES)
@pytest.mark.parametrize(("ha", "hp"), SHAPES)
@pytest.mark.parametrize("rot", TILTS)
def test_heights_of_tilted_box_and_wedge(spacing: tuple[float, float, float], direction: np.ndarray,
                                         shape: tuple[int, int, int], ha: float, hp: float,
                                         rot: np.ndarray) -> None:
    depth = 32.0
    mask = _wedge(ha, hp, depth, 40.0, rot, spacing, direction, shape)
    h = vertebral_heights(mask, spacing, direction)
    expected = [ha + (hp - ha) * f for f in (0.1, 0.5, 0.9)]
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx(expected, abs=0.5)
    assert h.depth_mm == pytest.approx(depth, abs=0.5)
    assert h.si_axis[2] > 0.95 and h.ap_axis[1] > 0.95  # superior and posterior
    # the measured SI axis is the body's own axis, not the scanner's
    assert abs(float(np.dot(h.si_axis, rot[:, 2]))) > 0.995


def _body(spacing: tuple[float, float, float], direction: np.ndarray, shape: tuple[int, int, int], rot: np.ndarray,
          heights: tuple[float, float, float] = (24.0, 24.0, 24.0), depth: float = 32.0, width: float = 40.0,
          shear_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body with a quadratic height profile through ``heights`` at 10 / 50 / 90 % of the depth.

    Endplates symmetric about the body's mid-plane (superior axis ``rot[:, 2]``); with
    ``shear_deg`` the anterior and posterior walls lean (a parallelogram in the sagittal plane)
    while the endplates stay perpendicular to the body's axis. Returns the mask, the (LPS, relative
    to the origin) body-frame origin, and the local (left, posterior, superior) coordinates.
    """
    k, j, i = np.indices(shape)
    idx = np.stack([i, j, k], axis=-1).astype(float) * np.array(spacing[::-1])
    phys = idx @ direction.T
    centre = phys.reshape(-1, 3).mean(axis=0)
    local = (phys - centre) @ rot
    lr, ap, si = local[..., 0], local[..., 1], local[..., 2]
    v = ap - si * np.tan(np.deg2rad(shear_deg))  # position along the depth, walls at -depth/2, depth/2
    coef = np.polyfit([-0.4 * depth, 0.0, 0.4 * depth], heights, 2)
    h = np.polyval(coef, v)
    mask = (np.abs(lr) <= width / 2) & (np.abs(v) <= depth / 2) & (np.abs(si) <= h / 2)
    return mask, centre, local


def test_sheared_body_is_measured_along_its_endplate_normal() -> None:
    # a parallelogram (walls leaning 12 deg): the voxel cloud's principal axes lean ~15 deg, the
    # endplates do not; heights along the principal axis would come out 5-7 mm short at 10 / 90 %
    rot = _rotation((1, 0, 0), 6)
    mask, _, _ = _body((3.0, 0.6, 0.6), SAGITTAL, (24, 110, 110), rot, shear_deg=12.0)
    h = vertebral_heights(mask, (3.0, 0.6, 0.6), SAGITTAL)
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx([24.0, 24.0, 24.0], abs=0.5)
    assert np.degrees(np.arccos(abs(float(np.dot(h.si_axis, rot[:, 2]))))) < 1.0


@pytest.mark.parametrize(("spacing", "direction", "shape"), GEOMETRIES)
def test_biconcave_body_middle_height(spacing: tuple[float, float, float], direction: np.ndarray,
                                      shape: tuple[int, int, int]) -> None:
    rot = _rotation((1, 0, 0), 10) @ _rotation((0, 1, 0), 4)
    mask, _, _ = _body(spacing, direction, shape, rot, heights=(24.0, 16.0, 25.0))
    h = vertebral_heights(mask, spacing, direction)
    # the 90 % line sits where the profile climbs 1.4 mm per mm: allow for the depth's voxel error
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx([24.0, 16.0, 25.0], abs=0.6)
    assert h.middle_mm / h.posterior_mm == pytest.approx(0.64, abs=0.03)


@pytest.mark.parametrize("ap_range", [(-3.0, 3.0), (-12.0, -6.0), (9.0, 14.0)], ids=["middle", "anterior", "posterior"])
def test_leak_into_the_disc_is_left_out(ap_range: tuple[float, float]) -> None:
    """A segmentation leak (8 mm over part of the superior endplate) does not lengthen the heights."""
    spacing, shape = (0.7, 0.6, 0.5), (80, 100, 120)
    mask, _, local = _body(spacing, np.eye(3), shape, _rotation((1, 0, 0), 8))
    lr, ap, si = local[..., 0], local[..., 1], local[..., 2]
    leak = (np.abs(lr) <= 4) & (ap >= ap_range[0]) & (ap <= ap_range[1]) & (si > 0) & (si <= 20)
    h = vertebral_heights(mask | leak, spacing, np.eye(3))
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx([24.0, 24.0, 24.0], abs=0.5)


def test_posterior_element_leftovers_do_not_change_the_depth() -> None:
    spacing, shape = (0.7, 0.6, 0.5), (80, 100, 120)
    mask, _, local = _body(spacing, np.eye(3), shape, _rotation((1, 0, 0), 8))
    lr, ap, si = local[..., 0], local[..., 1], local[..., 2]
    pedicles = (np.abs(np.abs(lr) - 13) <= 3.5) & (ap >= 14) & (ap <= 28) & (si >= -2) & (si <= 10)  # attached
    fragment = (np.abs(lr) <= 5) & (ap >= 20) & (ap <= 45) & (np.abs(si) <= 4)  # separate, behind the body
    h = vertebral_heights(mask | pedicles | fragment, spacing, np.eye(3))
    assert h.depth_mm == pytest.approx(32.0, abs=0.5)
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx([24.0, 24.0, 24.0], abs=0.5)


def test_frame_true_and_wrong() -> None:
    """A rotated box measured with its own frame, and with a frame tilted 20 degrees."""
    spacing, shape = (3.0, 0.6, 0.6), (24, 110, 110)
    rot = _rotation((1, 0, 0), 15) @ _rotation((0, 0, 1), 5)
    mask, centre, _ = _body(spacing, SAGITTAL, shape, rot)
    true = vertebral_heights(mask, spacing, SAGITTAL, frame=(centre, rot[:, 2], rot[:, 1]))
    assert [true.anterior_mm, true.middle_mm, true.posterior_mm] == pytest.approx([24.0] * 3, abs=0.5)
    assert true.depth_mm == pytest.approx(32.0, abs=0.5)
    assert np.allclose(true.centroid_mm, centre) and np.allclose(true.si_axis, rot[:, 2])
    assert np.allclose(true.ap_axis, rot[:, 1])
    tilt = _rotation(tuple(rot[:, 0]), 20) @ rot  # frame leaning 20 deg in the sagittal plane
    wrong = vertebral_heights(mask, spacing, SAGITTAL, frame=(centre, tilt[:, 2], tilt[:, 1]))
    lean = 1.0 / np.cos(np.deg2rad(20))  # a slab of 24 mm crossed at 20 deg; the depth likewise
    assert wrong.middle_mm == pytest.approx(24.0 * lean, abs=0.5)
    assert wrong.depth_mm == pytest.approx(32.0 * lean, abs=0.5)
    assert np.allclose(wrong.si_axis, tilt[:, 2])  # not re-estimated


def test_frame_axes_are_normalised_and_orthogonalised() -> None:
    spacing, shape = (0.7, 0.6, 0.5), (80, 100, 120)
    mask, centre, _ = _body(spacing, np.eye(3), shape, np.eye(3))
    h = vertebral_heights(mask, spacing, np.eye(3), frame=(centre, [0.0, 0.0, 3.0], [0.0, 2.0, 0.5]))
    assert np.allclose(h.si_axis, [0, 0, 1]) and np.allclose(h.ap_axis, [0, 1, 0])
    assert h.middle_mm == pytest.approx(24.0, abs=0.5)


def test_frame_mapped_between_two_acquisitions() -> None:
    """J0's frame mapped into a differently oriented follow-up grid gives J0's heights."""
    rot_body = _rotation((1, 0, 0), 9)  # the body in the patient, at the centre of each field of view
    wedge = (16.0, 21.0, 25.0)
    acq1 = ((3.0, 0.6, 0.6), SAGITTAL, (24, 110, 110), rot_body)
    turn = _rotation((0, 0, 1), 7) @ _rotation((1, 0, 0), -4)  # patient repositioned at the follow-up
    acq2 = ((0.7, 0.6, 0.5), np.eye(3), (80, 100, 120), turn @ rot_body)
    m1, c1, _ = _body(*acq1, heights=wedge)
    m2, c2, _ = _body(*acq2, heights=wedge)
    h1 = vertebral_heights(m1, acq1[0], acq1[1])
    # follow-up physical = turn @ (J0 physical - c1) + c2 (each grid holds the body at its centre)
    frame = (turn @ (h1.centroid_mm - c1) + c2, turn @ h1.si_axis, turn @ h1.ap_axis)
    h2 = vertebral_heights(m2, acq2[0], acq2[1], frame=frame)
    assert [h2.anterior_mm, h2.middle_mm, h2.posterior_mm] == pytest.approx(
        [h1.anterior_mm, h1.middle_mm, h1.posterior_mm], abs=0.5)
    assert [h2.anterior_mm, h2.middle_mm, h2.posterior_mm] == pytest.approx(list(wedge), abs=0.6)
    assert np.allclose(h2.centroid_mm, frame[0]) and np.allclose(h2.si_axis, frame[1])


def test_heights_frame_round_trip() -> None:
    mask = _wedge(15.0, 25.0, 32.0, 40.0, _rotation((1, 0, 0), 12), (0.7, 0.6, 0.5), np.eye(3), (80, 100, 120))
    h = vertebral_heights(mask, (0.7, 0.6, 0.5), np.eye(3))
    again = vertebral_heights(mask, (0.7, 0.6, 0.5), np.eye(3), frame=h.frame)
    assert [again.anterior_mm, again.middle_mm, again.posterior_mm] == pytest.approx(
        [h.anterior_mm, h.middle_mm, h.posterior_mm], abs=1e-6)
    assert again.depth_mm == pytest.approx(h.depth_mm, abs=1e-6)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (([0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]), "three 3-vectors"),
        (([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]), "zero vector"),
        (([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -2.0]), "parallel"),
        (([np.nan, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]), "non-finite"),
        (([500.0, 500.0, 500.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]), "misses the body"),
    ],
)
def test_frame_errors(frame: tuple[list[float], list[float], list[float]], match: str) -> None:
    mask = np.zeros((30, 40, 40), bool)
    mask[5:25, 5:35, 5:35] = True
    with pytest.raises(ValueError, match=match):
        vertebral_heights(mask, (1.0, 1.0, 1.0), np.eye(3), frame=frame)


def test_trimmed_lstsq_clean_data_and_outliers() -> None:
    x = np.linspace(-0.45, 0.45, 60)
    design = np.column_stack([np.ones_like(x), x, x**2])
    y = 12.0 + 2.0 * x - 5.0 * x**2 + 0.2 * np.sin(37 * x)  # voxel-level wiggle, no outlier
    assert np.allclose(_trimmed_lstsq(design, y, 1.0), np.polyfit(x, y, 2)[::-1])
    leaked = y + np.where(np.abs(x) < 0.1, 8.0, 0.0)  # 22 % of the points 8 mm off
    assert np.allclose(_trimmed_lstsq(design, leaked, 1.0), [12.0, 2.0, -5.0], atol=0.15)


def test_anterior_is_the_negative_y_side() -> None:
    mask = _wedge(15.0, 25.0, 32.0, 40.0, np.eye(3), (0.7, 0.6, 0.5), np.eye(3), (80, 100, 120))
    flipped = np.eye(3)
    flipped[1, 1] = -1.0  # image rows run anterior: the array is mirrored in patient space
    h = vertebral_heights(mask, (0.7, 0.6, 0.5), flipped)
    assert h.anterior_mm == pytest.approx(24.0, abs=0.5) and h.posterior_mm == pytest.approx(16.0, abs=0.5)


def test_height_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        vertebral_heights(np.zeros((5, 5, 5), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        vertebral_heights(np.ones((5, 5, 5), bool), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="invertible 3x3"):
        vertebral_heights(np.ones((5, 5, 5), bool), (1.0, 1.0, 1.0), np.zeros((3, 3)))


def _h(a: float, m: float, p: float) -> Heights:
    return Heights(a, m, p, si_axis=np.array([0.0, 0.0, 1.0]), ap_axis=np.array([0.0, 1.0, 0.0]))


def test_height_loss() -> None:
    j0, later = _h(20.0, 22.0, 25.0), _h(16.0, 21.0, 25.0)
    assert height_loss_pct(j0, later) == pytest.approx(20.0)
    assert height_loss_mm(j0, later) == pytest.approx(4.0)
    assert height_loss_pct(j0, j0) == 0.0
    with pytest.raises(ValueError, match="J0 heights must be > 0"):
        height_loss_pct(_h(0.0, 1.0, 1.0), later)


@pytest.mark.parametrize(
    ("ha", "hm", "hp", "adjacent", "grade"),
    [
        (20.5, 25.0, 25.0, None, 0),    # 18 %
        (20.0, 25.0, 25.0, None, 1),    # exactly 20 % -> grade 1
        (19.0, 25.0, 25.0, None, 1),    # 24 %
        (25.0, 18.75, 25.0, None, 2),   # exactly 25 % biconcave -> grade 2
        (15.0, 25.0, 25.0, None, 2),    # exactly 40 % -> still grade 2
        (14.9, 25.0, 25.0, None, 3),    # 40.4 %
        (25.0, 25.0, 25.0, 30.0, 0),    # crush 16.7 %
        (25.0, 25.0, 20.0, 25.0, 1),    # crush exactly 20 % (wedge term negative) -> grade 1
        (25.0, 25.0, 24.0, 40.0, 2),    # crush 40 %
        (25.0, 25.0, 23.0, 40.0, 3),    # crush 42.5 %
    ],
)
def test_genant_grade_boundaries(ha: float, hm: float, hp: float, adjacent: float | None, grade: int) -> None:
    h = _h(ha, hm, hp)
    assert genant_grade(h, adjacent) == grade


def test_genant_errors() -> None:
    with pytest.raises(ValueError, match="posterior height must be > 0"):
        genant_grade(_h(1.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="adjacent_posterior_mm must be > 0"):
        genant_grade(_h(1.0, 1.0, 1.0), 0.0)


@pytest.mark.parametrize("side", ["posterior", "anterior"])
def test_tissue_attached_beyond_a_wall_is_left_out_of_the_depth(side: str) -> None:
    """Epidural tumour bulging behind the posterior wall (or soft tissue in front) is not body.

    Without the trim the depth runs into the 10 mm tall bulge and the 90 % (10 %) height is read
    through it; on a sagittal T1 grid (4.4 mm slices), as the pipeline sees it.
    """
    spacing, shape = (4.4, 1.25, 1.25), (16, 70, 70)
    mask, _, local = _body(spacing, SAGITTAL, shape, _rotation((1, 0, 0), 6))
    lr, ap, si = local[..., 0], local[..., 1], local[..., 2]
    sign = 1.0 if side == "posterior" else -1.0
    bulge = (np.abs(lr) <= 8) & (sign * ap >= 15) & (sign * ap <= 22) & (np.abs(si) <= 5)
    h = vertebral_heights(mask | bulge, spacing, SAGITTAL)
    assert h.depth_mm == pytest.approx(32.0, abs=1.0)
    assert [h.anterior_mm, h.middle_mm, h.posterior_mm] == pytest.approx([24.0, 24.0, 24.0], abs=1.0)
