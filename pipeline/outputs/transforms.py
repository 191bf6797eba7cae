"""Registration transforms as ITK transform files (readable by SimpleITK, 3D Slicer, ANTs), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from pipeline.outputs.atomic import atomic_path

__all__ = ["read_transform", "write_transform"]


def write_transform(path: str | os.PathLike[str], transform: sitk.Transform) -> Path:
    """Write ``transform`` as an ITK text transform file (``.tfm``).

    The transform keeps SimpleITK's convention: it maps points of the fixed (J0) physical space,
    LPS mm, to the moving (visit) physical space, so ``sitk.Resample(visit_image, j0_image,
    transform)`` brings the visit onto the J0 grid.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.tfm``.
    """
    dest = Path(path)
    if dest.suffix != ".tfm":
        raise ValueError(f"path must end in .tfm, got {dest.name!r}")
    with atomic_path(dest, suffix=".tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return dest


def read_transform(path: str | os.PathLike[str]) -> sitk.Transform:
    """Read a transform written by :func:`write_transform` (a composite read back is flattened)."""
    tx = sitk.ReadTransform(str(path))
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        return tx.GetNthTransform(0)
    return tx
