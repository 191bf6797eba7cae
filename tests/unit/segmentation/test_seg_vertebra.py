"""Treated vertebral body on T1 and CT: overlap with the truth, no leak into the discs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from seg_phantoms import CT, STIR, T1, build_phantom, dice, make_grid

from pipeline.segmentation import common as cm
from pipeline.segmentation.vertebra import segment_body
from pipeline.segmentation.vertebra_ct import segment_body_ct

SAGITTAL = (0, 0, -1, 1, 0, 0, 0, -1, 0)


@pytest.mark.parametrize(
    "grid_kw",
    [
        pytest.param(dict(spacing=(1.6, 0.9, 1.2)), id="axial-uneven"),
        pytest.param(
            dict(spacing=(0.9, 0.9, 2.0), extent_mm=(100, 100, 70), direction=SAGITTAL), id="sagittal"
        ),
    ],
)
@pytest.mark.parametrize("with_stir", [True, False])
def test_body_from_cement_no_disc_leak(grid_kw: dict, with_stir: bool) -> None:
    ph = build_phantom(
        make_grid(**grid_kw), body_centers=((0.0, 0.0, 0.0), (0.0, 0.0, 33.0)), ablation_radius_mm=11.0
    )
    t1 = ph.image(T1, seed=1)
    stir = ph.image(STIR, seed=2) if with_stir else None
    result = segment_body(t1, ph.mask(ph.cement[0]), stir=stir)
    body = cm.to_mask(result.mask)
    assert result.ok, result.reason
    assert dice(body, ph.bodies[0]) > 0.9
    assert ph.discs is not None
    assert np.count_nonzero(body & ph.discs) < 0.01 * np.count_nonzero(ph.discs)
    assert not (body & ph.bodies[1]).any()  # the neighbouring vertebra stays out
    assert (body | ~ph.cement[0]).all()  # cement included


def test_body_with_fracture_line_and_tumour() -> None:
    """A dark fracture line across the marrow and a tumour nodule stay inside the body."""
    grid = make_grid((1.6, 0.9, 1.2))
    ph = build_phantom(grid)
    x, y, z = (np.asarray(a) for a in cm.physical_coordinates(grid))
    inside = ph.bodies[0] & (ph.labels == 5)  # marrow
    ph.labels[inside & (np.abs(z + 5.0) < 1.0)] = 4  # cortex-dark fracture band
    ph.labels[inside & ((x + 10) ** 2 + (y + 5) ** 2 + (z - 3) ** 2 < 36)] = 9  # tumour nodule
    result = segment_body(ph.image(T1, seed=1), ph.mask(ph.cement[0]), stir=ph.image(STIR, seed=2))
    assert result.ok, result.reason
    assert dice(cm.to_mask(result.mask), ph.bodies[0]) > 0.9


def test_empty_cement_is_not_ok() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)))
    empty = ph.mask(np.zeros_like(ph.cement[0]))
    result = segment_body(ph.image(T1), empty)
    assert not result.ok
    assert "no cement" in result.reason


def test_body_ct() -> None:
    grid = make_grid((0.8, 0.8, 2.0), extent_mm=(100, 100, 80))
    ph = build_phantom(grid)
    ct = ph.image(CT, noise=15.0, bias=0.0, rician=False, seed=3)
    result = segment_body_ct(ct, (3.0, -2.0, 1.0))
    assert result.ok, result.reason
    body = cm.to_mask(result.mask)
    assert dice(body, ph.bodies[0]) > 0.9
    assert ph.discs is not None
    assert np.count_nonzero(body & ph.discs) < 0.01 * np.count_nonzero(ph.discs)


def test_body_ct_rejects_seed_outside() -> None:
    ct = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    with pytest.raises(ValueError, match="lies outside the CT image"):
        segment_body_ct(ct, (500.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="seed_mm must be a 3D point"):
        segment_body_ct(ct, (1.0, 2.0))
