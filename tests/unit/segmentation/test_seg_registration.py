"""Rigid registration: recovers a known rotation + translation; resampling; cement surface distance."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from seg_phantoms import T1, build_phantom, make_grid

from pipeline.segmentation import common as cm
from pipeline.segmentation.registration import (
    cement_surface_distance_mm,
    crop_physical,
    register_rigid,
    resample_to,
)

CEMENT_C = (3.0, -2.0, 1.0)


def _truth() -> sitk.Euler3DTransform:
    """Fixed -> moving: 3 deg about an oblique axis, 8 mm translation."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter(CEMENT_C)
    tx.SetRotation(math.radians(2.0), math.radians(-1.5), math.radians(1.5))
    tx.SetTranslation((5.0, -4.0, 4.8))  # |t| = 8.0 mm
    return tx


@pytest.fixture(scope="module")
def pair() -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    grid = make_grid((1.2, 1.0, 1.5), extent_mm=(96, 96, 96))
    ph = build_phantom(
        grid,
        body_centers=((0.0, 0.0, 0.0), (0.0, 0.0, 33.0)),
        cements=((CEMENT_C, 7.0),),
        ablation_radius_mm=11.0,
    )
    fixed = ph.image(T1, seed=1)
    cement_fixed = ph.mask(ph.cement[0])
    # moving image: the same anatomy seen through the inverse transform, on another grid
    moving_grid = make_grid((1.0, 1.3, 1.4), extent_mm=(100, 100, 100), center_mm=(4.0, -3.0, 5.0))
    truth_inv = _truth().GetInverse()
    clean = build_phantom(
        grid,
        body_centers=((0.0, 0.0, 0.0), (0.0, 0.0, 33.0)),
        cements=((CEMENT_C, 7.0),),
        ablation_radius_mm=11.0,
    ).image(T1, noise=0.0)
    moving = sitk.Resample(clean, moving_grid, truth_inv, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(moving)
    rng = np.random.default_rng(7)
    noisy = sitk.GetImageFromArray(np.hypot(arr + rng.normal(0, 8, arr.shape), rng.normal(0, 8, arr.shape)))
    noisy.CopyInformation(moving)
    cement_moving = sitk.Resample(
        cement_fixed, moving_grid, truth_inv, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return fixed, noisy, cement_fixed, cement_moving


def _max_error_mm(estimate: sitk.Transform, center: tuple[float, float, float], half: float = 30.0) -> float:
    truth = _truth()
    pts = [
        (center[0] + dx, center[1] + dy, center[2] + dz)
        for dx in (-half, 0, half)
        for dy in (-half, 0, half)
        for dz in (-half, 0, half)
    ]
    return max(
        float(np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))) for p in pts
    )


@pytest.mark.parametrize("landmarks", [True, False], ids=["landmark-init", "centre-init"])
def test_recovers_rotation_and_translation(pair: tuple, landmarks: bool) -> None:
    fixed, moving, _, _ = pair
    kw: dict[str, Any] = {}
    if landmarks:
        kw = {
            "fixed_landmark_mm": CEMENT_C,
            "moving_landmark_mm": tuple(np.add(_truth().TransformPoint(CEMENT_C), (1.5, -1.0, 0.5))),
        }
    start = time.perf_counter()
    result = register_rigid(fixed, moving, crop_center_mm=CEMENT_C, crop_size_mm=90.0, **kw)
    elapsed = time.perf_counter() - start
    assert _max_error_mm(result.transform, CEMENT_C) < 1.0, result.reason
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert np.isfinite(result.metric)
    assert ("landmark" in result.reason) == landmarks
    assert elapsed < 10.0


def test_deterministic(pair: tuple) -> None:
    fixed, moving, _, _ = pair
    kw: dict[str, Any] = {
        "fixed_landmark_mm": CEMENT_C,
        "moving_landmark_mm": _truth().TransformPoint(CEMENT_C),
    }
    a = register_rigid(fixed, moving, crop_size_mm=60.0, **kw)
    b = register_rigid(fixed, moving, crop_size_mm=60.0, **kw)
    # fixed sampling seed: identical up to the multithreaded summation order
    assert np.allclose(a.transform.GetParameters(), b.transform.GetParameters(), rtol=0, atol=1e-9)


def test_resample_and_cement_surface_distance(pair: tuple) -> None:
    fixed, moving, cement_fixed, cement_moving = pair
    truth = _truth()
    back = resample_to(fixed, cement_moving, truth, nearest=True)
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == fixed.GetSize()
    good = cement_surface_distance_mm(cement_fixed, cement_moving, truth)
    bad = cement_surface_distance_mm(cement_fixed, cement_moving, sitk.Euler3DTransform())
    assert good < 1.0
    assert bad > 3.0
    linear = resample_to(fixed, moving, truth, nearest=False)
    assert linear.GetPixelID() == sitk.sitkFloat32
    empty = sitk.Image(cement_fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(cement_fixed)
    assert math.isnan(cement_surface_distance_mm(empty, cement_moving, truth))


def test_crop_physical_is_in_mm() -> None:
    img = make_grid((0.5, 1.0, 2.0), extent_mm=(100, 100, 100))
    crop = crop_physical(img, (0.0, 0.0, 0.0), 40.0)
    extent = np.asarray(crop.GetSize()) * np.asarray(crop.GetSpacing())
    assert np.all(np.abs(extent - 40.0) <= 2 * np.asarray(crop.GetSpacing()) + 1e-6)
    assert crop_physical(img, (500.0, 0.0, 0.0), 40.0).GetSize() == img.GetSize()


def test_register_rejects_bad_arguments() -> None:
    img = make_grid((1.0, 1.0, 1.0), extent_mm=(20, 20, 20))
    with pytest.raises(ValueError, match="give both fixed_landmark_mm and moving_landmark_mm"):
        register_rigid(img, img, fixed_landmark_mm=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="crop_center_mm must be a 3D point"):
        register_rigid(img, img, crop_center_mm=(0.0, 0.0))
    with pytest.raises(ValueError, match="crop_size_mm must be positive"):
        register_rigid(img, img, crop_size_mm=0.0)
    with pytest.raises(ValueError, match="moving must be a 3D image"):
        register_rigid(img, sitk.Image([4, 4], sitk.sitkFloat32))
    assert cm.same_grid(img, img)


def test_divergence_guard_keeps_the_initial_alignment(
    pair: tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image],
) -> None:
    """An optimiser result farther than the guard allows is rejected, with its reason."""
    fixed, moving, _, _ = pair
    # geometric-centre start, 8 mm from the truth: the optimiser must move more than 0.5 mm
    result = register_rigid(fixed, moving, crop_center_mm=CEMENT_C, max_shift_mm=0.5)
    assert math.isnan(result.metric)
    assert "diverged" in result.reason
    initial_translation = np.subtract(*(
        np.asarray(c) for c in (_centre(moving), _centre(fixed))))
    assert np.allclose(result.transform.GetTranslation(), initial_translation, atol=1e-6)
    assert np.allclose([result.transform.GetAngleX(), result.transform.GetAngleY(),
                        result.transform.GetAngleZ()], 0.0)


def _centre(image: sitk.Image) -> tuple[float, ...]:
    size = np.asarray(image.GetSize(), dtype=float)
    return tuple(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))


def test_translation_search_recovers_a_start_far_off(
    pair: tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image],
) -> None:
    """No landmark, a start 12 mm off: the search brings the treated level back within a voxel or two."""
    fixed, moving, _, _ = pair
    start = np.asarray(_truth().GetTranslation()) + np.array([8.0, -6.0, 6.0])
    result = register_rigid(fixed, moving, fixed_landmark_mm=CEMENT_C,
                            moving_landmark_mm=tuple(np.asarray(CEMENT_C) + start),
                            search_mm=15.0)
    assert math.isfinite(result.metric), result.reason
    assert "exhaustive translation search" in result.reason
    truth = _truth()
    err = np.linalg.norm(np.subtract(result.transform.TransformPoint(CEMENT_C), truth.TransformPoint(CEMENT_C)))
    assert err < 1.5, result.reason
