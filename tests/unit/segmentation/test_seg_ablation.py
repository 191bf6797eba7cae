"""Ablation zone around the cement and the residual-tumour search region (margin in mm)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from seg_phantoms import STIR, build_phantom, dice, make_grid

from pipeline.segmentation import common as cm
from pipeline.segmentation.ablation import residual_roi, segment_ablation_zone


def test_ablation_zone_matches_truth_and_skips_enhancing() -> None:
    grid = make_grid((1.6, 0.9, 1.2))
    ph = build_phantom(grid, ablation_radius_mm=11.0)
    assert ph.ablation is not None
    body = ph.mask(ph.bodies[0])
    cement = ph.mask(ph.cement[0])
    x, y, z = (np.asarray(a) for a in cm.physical_coordinates(grid))
    enhancing = ph.bodies[0] & ((x - 12) ** 2 + (y + 2) ** 2 + (z - 1) ** 2 < 16)  # nodule at the zone edge
    zone = cm.to_mask(segment_ablation_zone(body, cement, ph.mask(enhancing), ph.image(STIR, seed=2)))
    assert dice(zone, ph.ablation & ~enhancing) > 0.9
    assert not (zone & ph.cement[0]).any()
    assert not (zone & enhancing).any()


def test_ablation_zone_without_stir_is_a_shell_around_cement() -> None:
    grid = make_grid((1.6, 0.9, 1.2))
    ph = build_phantom(grid, ablation_radius_mm=11.0)
    none = ph.mask(np.zeros_like(ph.cement[0]))
    zone = cm.to_mask(
        segment_ablation_zone(
            ph.mask(ph.bodies[0]), ph.mask(ph.cement[0]), none, None, fallback_radius_mm=4.0
        )
    )
    assert ph.ablation is not None
    assert dice(zone, ph.ablation) > 0.5
    assert not (zone & ph.cement[0]).any()


def test_ablation_zone_empty_without_cement() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)), cements=())
    none = ph.mask(np.zeros(ph.labels.shape, dtype=bool))
    zone = segment_ablation_zone(ph.mask(ph.bodies[0]), none, none, None)
    assert not cm.to_mask(zone).any()
    with pytest.raises(ValueError, match="stir_ratio must be > 1"):
        segment_ablation_zone(none, none, none, None, stir_ratio=0.9)


@pytest.mark.parametrize("spacing", [(0.5, 0.7, 3.0), (2.0, 1.0, 0.6)])
def test_residual_roi_margin_in_mm(spacing: tuple[float, float, float]) -> None:
    grid = make_grid(spacing, extent_mm=(80, 80, 80))
    x, y, z = (np.asarray(a) for a in cm.physical_coordinates(grid))
    r = np.sqrt(x**2 + y**2 + z**2)
    body = r <= 12.0
    cement = r <= 4.0
    img = sitk.GetImageFromArray(body.astype(np.uint8))
    img.CopyInformation(grid)
    cem = sitk.GetImageFromArray(cement.astype(np.uint8))
    cem.CopyInformation(grid)
    roi = cm.to_mask(residual_roi(img, cem, margin_mm=10.0))
    assert not (roi & cement).any()
    assert (roi | cement)[r <= 12.0 + 10.0 - 1e-6 - max(spacing)].all()
    # every ROI voxel lies within margin of a body voxel: within ~22 mm of the centre
    assert r[roi].max() <= 22.0 + max(spacing)
    # the margin reaches ~22 mm along each axis, whatever the voxel size along it
    for coord in (x, y, z):
        along = roi & (np.abs(r - np.abs(coord)) < 1e-6 + 0.5 * max(spacing))
        assert abs(r[along].max() - 22.0) <= max(spacing)
    with pytest.raises(ValueError, match="margin_mm must be >= 0"):
        residual_roi(img, cem, margin_mm=-1.0)


def test_ablation_zone_filling_the_body_is_found_against_muscle() -> None:
    """No normal marrow left in the body: the marrow-relative threshold has nothing to read,
    the muscle-relative one (oedema brighter than muscle on STIR) still finds the zone."""
    grid = make_grid((1.6, 0.9, 1.2))
    ph = build_phantom(grid, ablation_radius_mm=40.0)
    assert ph.ablation is not None
    body, cement = ph.mask(ph.bodies[0]), ph.mask(ph.cement[0])
    none = ph.mask(np.zeros_like(ph.cement[0]))
    stir = ph.image(STIR, seed=2)
    truth = ph.ablation & ph.bodies[0]
    by_muscle = cm.to_mask(segment_ablation_zone(body, cement, none, stir, stir_muscle=float(STIR["muscle"])))
    by_marrow = cm.to_mask(segment_ablation_zone(body, cement, none, stir))
    assert dice(by_muscle, truth) > 0.85
    assert dice(by_muscle, truth) > dice(by_marrow, truth) + 0.2
