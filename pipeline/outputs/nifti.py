"""Masks as NIfTI files in physical space (SPEC section 3), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from pipeline.outputs.atomic import atomic_path

__all__ = ["write_mask_nifti"]

_SUFFIX = ".nii.gz"


def write_mask_nifti(
    path: str | os.PathLike[str],
    mask: sitk.Image,
    reference: sitk.Image | None = None,
) -> Path:
    """Write a binary mask as compressed NIfTI (``uint8``, 0/1) with its physical geometry.

    The file is written under a temporary name ending in ``.nii.gz`` in the same folder,
    then renamed onto ``path``, so a crash never leaves a truncated mask behind.

    Parameters
    ----------
    path
        Destination; must end in ``.nii.gz``.
    mask
        3D image; any non-zero voxel is inside the mask. Its origin, spacing and direction
        (LPS, mm) are written as they are.
    reference
        Optional source image: when given, the mask must have the same size and takes its
        origin, spacing and direction (for masks built from a bare array).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.nii.gz``, the mask is not 3D or not scalar, or its
        size differs from ``reference``.
    TypeError
        If ``mask`` (or ``reference``) is not a ``SimpleITK.Image``.
    """
    dest = Path(path)
    if not dest.name.endswith(_SUFFIX):
        raise ValueError(f"path must end in {_SUFFIX}, got {dest.name!r}")
    if not isinstance(mask, sitk.Image):
        raise TypeError(f"mask must be a SimpleITK.Image, got {type(mask).__name__}")
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"mask must be a scalar 3D image, got {mask.GetDimension()}D with "
            f"{mask.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    out = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)  # NotEqual keeps the geometry
    if reference is not None:
        if not isinstance(reference, sitk.Image):
            raise TypeError(f"reference must be a SimpleITK.Image, got {type(reference).__name__}")
        if tuple(reference.GetSize()) != tuple(mask.GetSize()):
            raise ValueError(f"mask size {mask.GetSize()} differs from reference size {reference.GetSize()}")
        out.CopyInformation(reference)
    with atomic_path(dest, suffix=_SUFFIX) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    return dest
