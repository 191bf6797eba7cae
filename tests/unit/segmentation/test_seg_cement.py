"""Cement on MRI and CT: volume, overlap, air, ordering, clipping, pre-CT subtraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from seg_phantoms import CT, STIR, T1, build_phantom, dice, make_grid

from pipeline.segmentation import common as cm
from pipeline.segmentation.cement import find_cement_mr
from pipeline.segmentation.cement_ct import find_cement_ct

SAGITTAL = (0, 0, -1, 1, 0, 0, 0, -1, 0)  # rows along +y (A->P), columns along -z, slices along -x

GRIDS = [
    pytest.param(dict(spacing=(1.6, 0.9, 1.2)), id="axial-uneven"),
    pytest.param(
        dict(spacing=(0.9, 0.9, 2.0), extent_mm=(100, 100, 70), direction=SAGITTAL), id="sagittal-2mm"
    ),
]


@pytest.mark.parametrize("grid_kw", GRIDS)
def test_sphere_volume_and_dice(grid_kw: dict) -> None:
    ph = build_phantom(make_grid(**grid_kw))
    result = find_cement_mr(ph.image(T1, seed=1), ph.image(STIR, seed=2))
    assert len(result.masses) == 1
    true_ml = 4.0 / 3.0 * math.pi * 7.0**3 / 1000.0
    assert result.masses[0].volume_ml == pytest.approx(true_ml, rel=0.10)
    assert dice(cm.to_mask(result.mask), ph.cement[0]) > 0.9
    assert result.muscle_signal == pytest.approx(420, rel=0.15)
    assert np.allclose(result.masses[0].centroid_mm, (3.0, -2.0, 1.0), atol=1.0)
    assert result.mask.GetPixelID() == sitk.sitkUInt8


def test_stir_on_another_grid_is_resampled() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)))
    stir_grid = make_grid((2.0, 2.0, 2.0), extent_mm=(110, 110, 110), center_mm=(1.0, -1.0, 2.0))
    stir = build_phantom(stir_grid).image(STIR, seed=3)
    result = find_cement_mr(ph.image(T1, seed=1), stir)
    assert len(result.masses) == 1
    assert dice(cm.to_mask(result.mask), ph.cement[0]) > 0.85


def test_air_around_body_and_no_cement() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)), cements=())
    result = find_cement_mr(ph.image(T1, seed=1), ph.image(STIR, seed=2))
    assert result.masses == []
    assert result.reason.startswith("no cement")
    assert not cm.to_mask(result.mask).any()


def test_small_void_is_rejected_with_reason() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)), cements=(((0.0, 0.0, 0.0), 3.5),))
    result = find_cement_mr(ph.image(T1, seed=1), ph.image(STIR, seed=2), min_volume_ml=0.5)
    assert result.masses == []
    assert "< 0.5 mL" in result.reason


def test_t1_only() -> None:
    ph = build_phantom(make_grid((1.6, 0.9, 1.2)))
    result = find_cement_mr(ph.image(T1, seed=1), None)
    assert len(result.masses) == 1
    assert "no STIR" in result.reason


def test_two_masses_sorted_cranio_caudally() -> None:
    grid = make_grid((1.6, 0.9, 1.5), extent_mm=(100, 100, 110))
    ph = build_phantom(
        grid,
        body_centers=((0.0, 0.0, 16.5), (0.0, 0.0, -16.5)),
        cements=(((0.0, 0.0, -16.0), 8.0), ((2.0, 1.0, 17.0), 6.0)),
    )
    result = find_cement_mr(ph.image(T1, seed=1), ph.image(STIR, seed=2))
    assert [m.label for m in result.masses] == [1, 2]
    z = [m.centroid_mm[2] for m in result.masses]
    assert z[0] > z[1]
    assert result.masses[0].volume_ml == pytest.approx(4 / 3 * math.pi * 6.0**3 / 1000, rel=0.1)
    assert result.masses[1].volume_ml == pytest.approx(4 / 3 * math.pi * 8.0**3 / 1000, rel=0.1)
    assert dice(cm.to_mask(result.masses[0].mask), ph.cement[1]) > 0.9
    assert result.volume_ml == pytest.approx(sum(m.volume_ml for m in result.masses))


def test_mr_rejects_bad_arguments() -> None:
    img = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    with pytest.raises(ValueError, match="muscle_ratio"):
        find_cement_mr(img, None, muscle_ratio=1.5)
    with pytest.raises(ValueError, match="t1 must be a 3D image"):
        find_cement_mr(sitk.Image([8, 8], sitk.sitkFloat32), None)
    with pytest.raises(TypeError, match=r"t1 must be a SimpleITK\.Image"):
        find_cement_mr(np.zeros((8, 8, 8)), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too few body voxels"):
        find_cement_mr(img, None)


def _ct(
    ph_kw: dict, *, spacing: tuple[float, float, float] = (1.0, 1.0, 2.0), **grid_kw: object
) -> sitk.Image:
    ph = build_phantom(make_grid(spacing, extent_mm=(100, 100, 80), **grid_kw), **ph_kw)  # type: ignore[arg-type]
    return ph.image(CT, noise=15.0, bias=0.0, rician=False, seed=4)


def test_ct_cement_with_clipping_and_pre_subtraction() -> None:
    blastic = ((-8.0, 4.0, -4.0), 4.0)
    post = _ct({"blastic": blastic})
    arr = sitk.GetArrayFromImage(post)
    arr[arr > 2400] = 3071.0  # saturated cement core
    arr[sitk.GetArrayFromImage(post) >= 1000] += 600.0  # dense cortex / blastic bone >= 1600 HU
    clipped = sitk.GetImageFromArray(np.minimum(arr, 3071.0))
    clipped.CopyInformation(post)
    # pre-procedure CT: no cement, same dense bone, another frame of reference (shifted 6 mm)
    pre = _ct({"cements": (), "blastic": blastic}, center_mm=(6.0, -4.0, 3.0))
    pre_arr = sitk.GetArrayFromImage(pre)
    pre_arr[pre_arr >= 1000] += 600.0
    pre_img = sitk.GetImageFromArray(pre_arr)
    pre_img.CopyInformation(pre)
    pre_img.SetOrigin([o + d for o, d in zip(pre.GetOrigin(), (6.0, -4.0, 3.0), strict=True)])

    without_pre = find_cement_ct(clipped, None)
    with_pre = find_cement_ct(clipped, pre_img)
    truth = build_phantom(make_grid((1.0, 1.0, 2.0), extent_mm=(100, 100, 80))).cement[0]
    assert "saturated at 3071 HU" in with_pre.reason
    assert len(with_pre.masses) == 1
    assert dice(cm.to_mask(with_pre.mask), truth) > 0.9
    assert with_pre.masses[0].volume_ml == pytest.approx(4 / 3 * math.pi * 7.0**3 / 1000, rel=0.1)
    assert math.isnan(with_pre.muscle_signal)
    assert without_pre.volume_ml > with_pre.volume_ml + 0.2  # blastic bone / cortex kept without pre CT


def test_ct_rejects_threshold_above_clip() -> None:
    img = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    with pytest.raises(ValueError, match="must be below clip_hu"):
        find_cement_ct(img, None, threshold_hu=3100.0)


def _pv_sphere_ct(spacing: tuple[float, float, float], radius_mm: float) -> tuple[sitk.Image, np.ndarray]:
    """A 2500 HU sphere in 100 HU marrow with partial volume (4 x 4 x 4 sub-samples a voxel).

    Truth: the voxels at least half inside the sphere.
    """
    grid = make_grid(spacing, extent_mm=(60, 60, 60))
    x, y, z = cm.physical_coordinates(grid)
    frac = np.zeros(x.shape)
    offsets = (np.arange(4) - 1.5) / 4.0
    d = np.asarray(grid.GetDirection()).reshape(3, 3) * np.asarray(spacing)  # columns: voxel steps (LPS)
    for a in offsets:
        for b in offsets:
            for c in offsets:
                sx, sy, sz = d @ np.array([a, b, c])
                frac += ((x + sx - 1.3) ** 2 + (y + sy + 0.7) ** 2 + (z + sz - 0.4) ** 2 <= radius_mm**2) / 64.0
    hu = 100.0 + frac * 2400.0 + np.random.default_rng(5).normal(0.0, 15.0, x.shape)
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.CopyInformation(grid)
    return img, frac >= 0.5


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5)], ids=["1mm", "2.5mm-slices"])
def test_ct_partial_volume_edge(spacing: tuple[float, float, float]) -> None:
    """The 1600 HU threshold keeps only the voxels over ~60 % cement; the edge step restores the rest."""
    ct, truth = _pv_sphere_ct(spacing, 9.0)
    truth_ml = float(truth.sum()) * cm.voxel_volume_ml(ct)
    with_edge = find_cement_ct(ct, None)
    without = find_cement_ct(ct, None, partial_volume_edge=False)
    assert "partial-volume edge" in with_edge.reason
    assert with_edge.volume_ml == pytest.approx(truth_ml, rel=0.02)
    assert dice(cm.to_mask(with_edge.mask), truth) > 0.99
    assert without.volume_ml < 0.97 * truth_ml  # what the edge step recovers (measured -4 % / -7 %)
