"""Known-answer tests for pipeline.response.height on voxelised boxes and wedges."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.response.height import (
    Heights,
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
