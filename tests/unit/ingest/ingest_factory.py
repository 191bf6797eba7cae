"""Small synthetic DICOM files for the ingest tests (written with pydicom to tmp_path)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

_counter = itertools.count(1)


def slice_pixels(k: int, shape: tuple[int, int] = (6, 5)) -> np.ndarray:
    """Distinct, recognisable pixels for slice ``k``: 100*k + (row*cols + col)."""
    return (100 * k + np.arange(shape[0] * shape[1]).reshape(shape)).astype(np.uint16)


def make_dataset(
    *,
    patient_id: str = "P001",
    study_uid: str = "1.2.3.1",
    series_uid: str = "1.2.3.1.1",
    sop_uid: str | None = None,
    modality: str = "MR",
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.8, 0.7),
    pixels: np.ndarray | None = None,
    instance: int = 1,
    **fields: Any,
) -> Dataset:
    """A single-frame image dataset with file meta, geometry and any extra keyword fields."""
    pixels = slice_pixels(instance) if pixels is None else pixels
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    sop_uid = sop_uid or generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = study_uid + ".9"
    ds.StudyDate = "20210615"
    ds.Modality = modality
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = "9.9"  # deliberately wrong: spacing must come from positions
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in fields.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    n: int = 5,
    *,
    orientation: Sequence[float] = AXIAL,
    spacing: float = 2.0,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    series_uid: str | None = None,
    positions: Sequence[float] | None = None,
    names: Callable[[int], str] | None = None,
    **fields: Any,
) -> list[Path]:
    """Write slices at ``origin + k*spacing*normal``; file k holds ``slice_pixels(k)``.

    Files are written in shuffled InstanceNumber order (instance numbers reversed and
    rotated) so that sorting by InstanceNumber would be wrong.
    """
    series_uid = series_uid or f"1.2.3.{next(_counter)}"
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    offsets = [k * spacing for k in range(n)] if positions is None else list(positions)
    paths = []
    for k, offset in enumerate(offsets):
        position = np.array(origin) + offset * normal
        instance = (n - k + 2) % n + 1
        ds = make_dataset(
            series_uid=series_uid,
            position=position,
            orientation=orientation,
            pixels=slice_pixels(k),
            instance=instance,
            **fields,
        )
        name = names(k) if names else f"img{next(_counter):05d}"
        paths.append(write(ds, folder / name))
    return paths
