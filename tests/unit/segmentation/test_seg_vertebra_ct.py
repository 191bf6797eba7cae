"""CT vertebral body from a seed: body only, on small synthetic vertebrae with posterior elements.

The phantom is painted in physical (LPS, mm) space so that any grid can sample it: a body
(elliptic cylinder, 1.5 mm cortex), discs above and below, the neighbouring bodies, two pedicles
whose marrow is continuous with the body's (no cortex between: only the posterior-wall cut can
stop there), a lamina and the spinal canal (CSF) between them. Marrow can be as dark as muscle
(osteoporotic, like the real VerSe cases) or dense (young bone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.segmentation import common as cm
from pipeline.segmentation.vertebra_ct import segment_body_ct

BODY_SEMI_MM = (20.0, 15.0)  # LR, AP
BODY_HALF_HEIGHT_MM = 13.0
DISC_MM = 9.0
CORTEX_MM = 1.5
POSTERIOR_WALL_MM = 11.0
PIR = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # i -> posterior, j -> inferior, k -> right


@dataclass
class Vertebra:
    ct: sitk.Image
    body: cm.BoolArray
    posterior: cm.BoolArray  # pedicles and lamina
    discs: cm.BoolArray
    neighbours: cm.BoolArray
    cement: cm.BoolArray
    canal: cm.BoolArray


def _grid(spacing: tuple[float, float, float], direction: tuple[float, ...], extent_mm: float = 96.0) -> sitk.Image:
    size = [round(extent_mm / s) for s in spacing]
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    d = np.asarray(direction).reshape(3, 3)
    half = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
    img.SetOrigin([float(v) for v in np.array([0.0, 10.0, 0.0]) - d @ half])  # centred 10 mm behind the body
    return img


def _paint(
    x: cm.FloatArray,
    y: cm.FloatArray,
    z: cm.FloatArray,
    marrow_hu: float,
    cement_center: tuple[float, float, float] | None,
    wall_hu: float,
) -> tuple[cm.FloatArray, dict[str, cm.BoolArray]]:
    """HU at physical points (LPS, mm) and the tissue masks there."""

    def cylinder(z0: float, z1: float, shrink: float = 0.0) -> cm.BoolArray:
        """An elliptic cylinder with a flat back (the posterior wall, at y = POSTERIOR_WALL_MM)."""
        ax, ay = BODY_SEMI_MM[0] - shrink, BODY_SEMI_MM[1] - shrink
        section = ((x / ax) ** 2 + (y / ay) ** 2 <= 1.0) & (y <= POSTERIOR_WALL_MM - shrink)
        return section & (z >= z0 + shrink) & (z <= z1 - shrink)

    h = BODY_HALF_HEIGHT_MM
    levels = [(-h, h), (h + DISC_MM, 3 * h + DISC_MM), (-3 * h - DISC_MM, -h - DISC_MM)]
    body = cylinder(*levels[0])
    neighbours = cylinder(*levels[1]) | cylinder(*levels[2])
    discs = (cylinder(h, h + DISC_MM) | cylinder(-h - DISC_MM, -h)) & ~body & ~neighbours
    canal = (x**2 / 49.0 + ((y - 24.0) / 12.0) ** 2 <= 1.0) & ~body
    pedicles = np.zeros(x.shape, dtype=bool)
    pedicle_marrow = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        along = (y >= POSTERIOR_WALL_MM - 3.0) & (y <= 36.0)
        pedicles |= (((x - side * 10.0) / 5.0) ** 2 + (z / 8.0) ** 2 <= 1.0) & along
        pedicle_marrow |= (((x - side * 10.0) / 3.5) ** 2 + (z / 6.5) ** 2 <= 1.0) & along
    lamina = (np.abs(x) <= 19.0) & (y >= 36.0) & (y <= 41.0) & (np.abs(z) <= 9.0)
    posterior = (pedicles | lamina) & ~body
    hu = np.full(x.shape, 40.0)  # muscle / soft tissue
    hu[discs] = 80.0
    hu[canal] = 10.0
    for z0, z1 in levels:
        hu[cylinder(z0, z1)] = 600.0
        hu[cylinder(z0, z1) & (y > POSTERIOR_WALL_MM - CORTEX_MM)] = wall_hu
        hu[cylinder(z0, z1, CORTEX_MM)] = marrow_hu
    hu[posterior] = 600.0
    hu[pedicle_marrow] = marrow_hu  # no cortex between the pedicles and the body: one marrow space
    cement = np.zeros(x.shape, dtype=bool)
    if cement_center is not None:
        cx, cy, cz = cement_center
        cement = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 7.0**2
        hu[cement] = 2500.0
    masks = {
        "body": body,
        "posterior": posterior,
        "discs": discs,
        "neighbours": neighbours,
        "cement": cement,
        "canal": canal & ~posterior,
    }
    return hu, masks


def _vertebra(
    *,
    marrow_hu: float = 50.0,
    cement_center: tuple[float, float, float] | None = None,
    spacing: tuple[float, float, float] = (1.2, 1.2, 1.2),
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    wall_hu: float = 600.0,
    seed: int = 0,
) -> Vertebra:
    """The phantom on a grid: partial volume along the coarsest axis (5 sub-samples), noise SD 20 HU."""
    grid = _grid(spacing, direction)
    x, y, z = cm.physical_coordinates(grid)
    hu, masks = _paint(x, y, z, marrow_hu, cement_center, wall_hu)
    axis = int(np.argmax(spacing))
    if spacing[axis] > 1.5 * min(spacing):  # a 1.5 mm cortex may fall between coarse slices
        step = np.asarray(direction, dtype=np.float64).reshape(3, 3)[:, axis] * spacing[axis]
        subs = [
            _paint(x + f * step[0], y + f * step[1], z + f * step[2], marrow_hu, cement_center, wall_hu)[0]
            for f in (-0.4, -0.2, 0.2, 0.4)
        ]
        hu = (hu + sum(subs)) / 5.0
    hu = hu + np.random.default_rng(seed).normal(0.0, 20.0, hu.shape)
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.CopyInformation(grid)
    return Vertebra(img, **masks)


def _dice(a: cm.BoolArray, b: cm.BoolArray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(a.sum() + b.sum())


def _farther_than(got: cm.BoolArray, part: cm.BoolArray, ph: Vertebra, mm: float) -> int:
    """Voxels of ``got & part`` farther than ``mm`` from the true body (more than an edge layer)."""
    return int(np.count_nonzero(got & part & ~cm.dilate_mm(ph.body, cm.spacing_zyx(ph.ct), mm)))


@pytest.mark.parametrize("marrow_hu", [50.0, 250.0], ids=["osteoporotic", "dense"])
def test_body_only_no_pedicles_discs_or_neighbours(marrow_hu: float) -> None:
    ph = _vertebra(marrow_hu=marrow_hu)
    result = segment_body_ct(ph.ct, (2.0, -3.0, 1.0))
    assert result.ok, result.reason
    assert "posterior wall cut" in result.reason
    got = cm.to_mask(result.mask)
    assert _dice(got, ph.body) > 0.88
    # at most the partial-volume layer of the pedicles and discs (the pedicles reach 25 mm back)
    assert _farther_than(got, ph.posterior, ph, 2.5) == 0
    assert _farther_than(got, ph.discs, ph, 1.5) == 0
    assert not (got & ph.neighbours).any()


def test_faint_posterior_wall_is_found_from_the_canal() -> None:
    """An osteoporotic posterior wall below the cortex threshold: rays run into the canal.

    The wall is then found where the canal's dark run starts (CSF 10 HU, marrow 50 HU).
    """
    ph = _vertebra(wall_hu=110.0)
    seed = (2.0, -3.0, 1.0)
    cut = segment_body_ct(ph.ct, seed)
    uncut = cm.to_mask(segment_body_ct(ph.ct, seed, posterior_cut=False).mask)
    assert "posterior wall cut" in cut.reason
    got = cm.to_mask(cut.mask)
    assert _dice(got, ph.body) > 0.85
    leaked = _farther_than(uncut, ph.canal, ph, 2.5)
    assert leaked > 300  # without the cut, the rays through the faint wall fill part of the canal
    assert _farther_than(got, ph.canal, ph, 2.5) < 0.1 * leaked


def test_cement_at_the_seed_is_inside_the_body() -> None:
    centre = (-6.0, -4.0, 3.0)
    ph = _vertebra(cement_center=centre)
    result = segment_body_ct(ph.ct, centre)
    assert result.ok, result.reason
    assert "cement read as marrow" in result.reason
    got = cm.to_mask(result.mask)
    assert _dice(got, ph.body) > 0.88
    assert np.count_nonzero(ph.cement & ~got) == 0


def test_same_body_on_a_pir_grid() -> None:
    """VerSe files are PIR: the LPS frame handling must give the same physical body."""
    lps = _vertebra(spacing=(1.2, 1.2, 1.2))
    pir = _vertebra(spacing=(1.2, 1.2, 1.2), direction=PIR)
    seed = (2.0, -3.0, 1.0)
    got_lps = segment_body_ct(lps.ct, seed)
    got_pir = segment_body_ct(pir.ct, seed)
    assert got_lps.ok and got_pir.ok, (got_lps.reason, got_pir.reason)
    assert _dice(cm.to_mask(got_pir.mask), pir.body) > 0.88
    on_lps = cm.resample_like(lps.ct, got_pir.mask, nearest=True)
    assert _dice(cm.to_mask(on_lps), cm.to_mask(got_lps.mask)) > 0.95


def test_anisotropic_grid() -> None:
    ph = _vertebra(spacing=(0.8, 0.8, 2.5))
    result = segment_body_ct(ph.ct, (2.0, -3.0, 1.0))
    assert result.ok, result.reason
    assert _dice(cm.to_mask(result.mask), ph.body) > 0.85
