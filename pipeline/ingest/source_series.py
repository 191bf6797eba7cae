"""The headers of the series a DICOM SEG or SR is made from, and where each image lies on the mask grid.

:func:`read_source_series` reads the headers (never the pixel data, which may be JPEG 2000 or
RLE compressed: highdicom needs only the metadata) of the files the ``reference`` image was
loaded from, and maps every image, or every frame of one enhanced multi-frame file, to its
slice of the reference grid through the geometry (ImagePositionPatient), never through the
file or frame order. Used by :mod:`pipeline.outputs.dicom_seg` and :mod:`pipeline.outputs.dicom_sr`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.ingest.headers import quiet_pydicom

__all__ = ["SourceSeries", "read_headers", "read_source_series"]

#: Largest distance (voxels) of a source image from the reference slice it is mapped to.
_ON_GRID_VOXELS = 0.5
#: Images closer than this along the slice normal (mm) are at one slice position (as the loader).
_SAME_POSITION_MM = 0.01
#: Largest in-plane shift per mm along the normal of a sheared stack the loader accepts (tan 0.5 deg).
_MAX_SHEAR = float(np.tan(np.radians(0.5)))




@dataclass(frozen=True)
class SourceSeries:
    """The headers of a source series and where each of its slices lies on the reference grid.

    Attributes
    ----------
    datasets
        Header-only datasets (no pixel data), one per SOPInstanceUID, sorted by it.
    multiframe
        True for one enhanced multi-frame file.
    slice_positions
        ImagePositionPatient (mm, LPS) of the source image (or frame) at each slice index
        ``k`` of the reference (the mask array's first axis).
    """

    datasets: list[Dataset]
    multiframe: bool
    slice_positions: list[tuple[float, float, float]]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def _read_header(path: Path) -> Dataset:
    try:
        with quiet_pydicom():  # pydicom must not log header values (PatientName...) while reading
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on malformed files
        raise ValueError(f"{path.name}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _group_value(frame: Dataset, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    for item in (frame, shared):
        if item is not None and item.get(sequence):
            inner = item[sequence].value[0]
            if keyword in inner:
                return inner[keyword].value
    return None


def _planes(ds: Dataset, name: str) -> list[tuple[str, Any, Any, int, int]]:
    """(label, ImagePositionPatient, ImageOrientationPatient, rows, columns) of each image / frame."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return [(name, ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), rows, cols)]
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    return [
        (
            f"{name} frame {i + 1}",
            _group_value(item, shared, "PlanePositionSequence", "ImagePositionPatient"),
            _group_value(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"),
            rows,
            cols,
        )
        for i, item in enumerate(per_frame)
    ]


def read_headers(files: Sequence[str | os.PathLike[str]]) -> list[Dataset]:
    """Header-only datasets of ``files`` (no pixel data read), one per SOPInstanceUID, sorted by it.

    Raises
    ------
    ValueError
        If no file is given or a file is not a readable DICOM file.
    """
    if not files:
        raise ValueError("no source image files were given: the object must reference the series it was made from")
    seen: dict[str, Dataset] = {}
    for f in files:
        ds = _read_header(Path(f))
        seen.setdefault(str(ds.get("SOPInstanceUID", "")), ds)
    return [seen[uid] for uid in sorted(seen)]


def read_source_series(files: Sequence[str | os.PathLike[str]], reference: sitk.Image) -> SourceSeries:
    """Read the headers of ``files`` and map each image (or frame) to its slice of ``reference``.

    Parameters
    ----------
    files
        The files ``reference`` was loaded from, in any order: single-frame images, or one
        enhanced multi-frame file.
    reference
        The 3D image loaded from them (its geometry defines the mask grid).

    Returns
    -------
    SourceSeries

    Raises
    ------
    ValueError
        If no file is given, a file is not DICOM, the files belong to several series, several
        multi-frame files are given, or an image is not part of the reference geometry
        (another orientation or matrix size, off the grid), or the images hold another number
        of slice positions than the reference has slices.
    """
    datasets = read_headers(files)
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) != 1:
        raise ValueError(f"the source files belong to {len(series)} series; give the files of one series")
    multiframe = any(int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds
                     for ds in datasets)
    if multiframe and len(datasets) > 1:
        raise ValueError(f"{len(datasets)} files given with a multi-frame image: give the one multi-frame file alone")
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    nx, ny, nz = reference.GetSize()
    planes: list[tuple[str, tuple[float, float, float]]] = []
    for ds in datasets:
        name = str(ds.filename or "source").replace(os.sep, "/").rsplit("/", 1)[-1]  # the file read: no header
        for label, ipp, iop, rows, cols in _planes(ds, name):
            if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
                raise ValueError(f"{label}: no ImagePositionPatient / ImageOrientationPatient: it cannot be placed")
            iop_f = np.array([float(v) for v in iop])
            if (rows, cols) != (ny, nx) or np.max(np.abs(iop_f - direction[:, :2].T.ravel())) > 1e-3:
                raise ValueError(
                    f"{label}: not part of the reference geometry ({rows}x{cols} pixels, orientation "
                    f"{np.round(iop_f, 4).tolist()}; the reference has {ny}x{nx} pixels, orientation "
                    f"{np.round(direction[:, :2].T.ravel(), 4).tolist()})"
                )
            planes.append((label, (float(ipp[0]), float(ipp[1]), float(ipp[2]))))
    # slice k of the reference is the k-th distinct position along the normal, as the loader stacks them
    planes.sort(key=lambda p: float(np.dot(p[1], direction[:, 2])))
    ranks: list[int] = []
    for i, (_, pos) in enumerate(planes):
        step = float(np.dot(np.subtract(pos, planes[i - 1][1]), direction[:, 2])) if i else np.inf
        ranks.append(ranks[-1] + (step >= _SAME_POSITION_MM) if ranks else 0)
    if ranks[-1] + 1 != nz:
        raise ValueError(
            f"the source images hold {ranks[-1] + 1} slice positions but the reference image has {nz} slices: "
            "they are not the files it was loaded from"
        )
    spacing = reference.GetSpacing()
    by_slice: dict[int, tuple[float, float, float]] = {}
    for (label, pos), k in zip(planes, ranks, strict=True):
        ci = reference.TransformPhysicalPointToContinuousIndex(pos)
        off_plane_mm = float(np.hypot(ci[0] * spacing[0], ci[1] * spacing[1]))
        allowed_mm = _ON_GRID_VOXELS * min(spacing[0], spacing[1]) + _MAX_SHEAR * abs(ci[2]) * spacing[2]
        if abs(ci[2] - k) > _ON_GRID_VOXELS or off_plane_mm > allowed_mm:
            raise ValueError(
                f"{label}: not part of the reference geometry (at voxel index "
                f"({ci[0]:.2f}, {ci[1]:.2f}, {ci[2]:.2f}) of a {nx}x{ny}x{nz} grid, expected slice {k})"
            )
        by_slice.setdefault(k, pos)
    return SourceSeries(datasets, multiframe, [by_slice[k] for k in range(nz)])
