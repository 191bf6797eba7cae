"""write_mask_nifti: uint8 0/1 mask, geometry preserved, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.outputs.nifti import write_mask_nifti


def _oblique_image(values: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(values)
    img.SetSpacing((0.7, 1.1, 4.0))
    img.SetOrigin((-12.5, 30.25, 101.0))
    c, s = np.cos(0.2), np.sin(0.2)
    img.SetDirection((0.0, c, s, 0.0, -s, c, 1.0, 0.0, 0.0))  # sagittal, slightly oblique
    return img


def test_geometry_and_values_preserved(tmp_path: Path) -> None:
    arr = np.zeros((6, 7, 8), np.float32)
    arr[1:4, 2:5, 3:6] = 3.7
    src = _oblique_image(arr)
    out = write_mask_nifti(tmp_path / "patients" / "P" / "cement.nii.gz", src)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-5)
    got = sitk.GetArrayFromImage(back)
    assert set(np.unique(got)) == {0, 1} and int(got.sum()) == 27
    assert [p.name for p in out.parent.iterdir()] == ["cement.nii.gz"]


def test_reference_geometry_is_copied(tmp_path: Path) -> None:
    ref = _oblique_image(np.zeros((4, 5, 6), np.int16))
    bare = sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8))
    back = sitk.ReadImage(str(write_mask_nifti(tmp_path / "m.nii.gz", bare, reference=ref)))
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_failed_write_keeps_previous_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "residual.nii.gz"
    write_mask_nifti(target, sitk.GetImageFromArray(np.ones((2, 2, 2), np.uint8)))
    before = target.read_bytes()

    def broken(image: sitk.Image, name: str, useCompression: bool = False) -> None:
        Path(name).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mask_nifti(target, sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["residual.nii.gz"]


def test_errors(tmp_path: Path) -> None:
    img3 = sitk.GetImageFromArray(np.ones((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"must end in \.nii\.gz"):
        write_mask_nifti(tmp_path / "m.nii", img3)
    with pytest.raises(ValueError, match="scalar 3D"):
        write_mask_nifti(tmp_path / "m.nii.gz", sitk.GetImageFromArray(np.ones((2, 2), np.uint8)))
    with pytest.raises(TypeError, match=r"mask must be a SimpleITK\.Image"):
        write_mask_nifti(tmp_path / "m.nii.gz", np.ones((2, 2, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differs from reference"):
        write_mask_nifti(tmp_path / "m.nii.gz", img3,
                         reference=sitk.GetImageFromArray(np.ones((3, 2, 2), np.uint8)))
