"""What the DICOM SEG and SR writers share: deterministic UIDs, codes, series numbers, source headers.

Determinism. Every UID the writers make is derived from a content digest with
:func:`pydicom.uid.generate_uid` (``entropy_srcs``): the same content gives the same UIDs (a
PACS recognises a re-sent object as a duplicate), any change of content gives new ones. The
only attributes that depend on the clock are listed in :data:`TIME_ATTRIBUTES`;
:func:`time_masked_bytes` blanks them, so two writes of the same content compare equal.

Source series. :func:`read_source_series` reads the headers (never the pixel data, which may
be JPEG 2000 or RLE compressed: highdicom needs only the metadata) of the files the
``reference`` image was loaded from and maps every image, or every frame of one enhanced
multi-frame file, to its slice of the reference grid through the geometry
(ImagePositionPatient), never through the file or frame order.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pipeline.domain import NON_VERTEBRAL_SITES, VERTEBRAL_LEVELS, normalise_level
from pipeline.ingest.headers import quiet_pydicom
from pipeline.outputs.atomic import atomic_path

__all__ = [
    "MANUFACTURER",
    "PRIVATE_SCHEME",
    "TIME_ATTRIBUTES",
    "SourceSeries",
    "content_digest",
    "deterministic_uid",
    "private_code",
    "read_headers",
    "read_source_series",
    "save_dataset",
    "series_number",
    "silence_person_name_warning",
    "site_code",
    "time_masked_bytes",
    "tracking_uid",
]

#: Manufacturer, model name and algorithm name written in every object.
MANUFACTURER = "crav-followup"

#: Every attribute whose value depends on the clock at writing time (at any depth of the dataset):
#: the only attributes allowed to differ between two writes of the same content.
TIME_ATTRIBUTES: tuple[str, ...] = (
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContributionDateTime",  # highdicom's own item of the ContributingEquipmentSequence
)

#: Coding scheme of the concepts DICOM has no code for; declared in CodingSchemeIdentificationSequence.
PRIVATE_SCHEME = "99CRAV"

#: Largest distance (voxels) of a source image from the reference slice it is mapped to.
_ON_GRID_VOXELS = 0.5
#: Largest in-plane shift per mm along the normal of a sheared stack the loader accepts (tan 0.5 deg).
_MAX_SHEAR = float(np.tan(np.radians(0.5)))
#: Images closer than this along the slice normal (mm) are at one slice position (as the loader).
_SAME_POSITION_MM = 0.01

_LEVEL_CODES: dict[str, Code] = {
    "C1": Code("14806007", "SCT", "C1 vertebra"), "C2": Code("39976000", "SCT", "C2 vertebra"),
    "C3": Code("113205007", "SCT", "C3 vertebra"), "C4": Code("5329002", "SCT", "C4 vertebra"),
    "C5": Code("36978003", "SCT", "C5 vertebra"), "C6": Code("36054005", "SCT", "C6 vertebra"),
    "C7": Code("87391001", "SCT", "C7 vertebra"), "T1": Code("64864005", "SCT", "T1 vertebra"),
    "T2": Code("53733008", "SCT", "T2 vertebra"), "T3": Code("1626008", "SCT", "T3 vertebra"),
    "T4": Code("73071006", "SCT", "T4 vertebra"), "T5": Code("56401006", "SCT", "T5 vertebra"),
    "T6": Code("45296009", "SCT", "T6 vertebra"), "T7": Code("62487009", "SCT", "T7 vertebra"),
    "T8": Code("11068009", "SCT", "T8 vertebra"), "T9": Code("82687006", "SCT", "T9 vertebra"),
    "T10": Code("7610001", "SCT", "T10 vertebra"), "T11": Code("12989004", "SCT", "T11 vertebra"),
    "T12": Code("23215003", "SCT", "T12 vertebra"), "L1": Code("66794005", "SCT", "L1 vertebra"),
    "L2": Code("14293000", "SCT", "L2 vertebra"), "L3": Code("36470004", "SCT", "L3 vertebra"),
    "L4": Code("11994002", "SCT", "L4 vertebra"), "L5": Code("49668003", "SCT", "L5 vertebra"),
    "S1": Code("54735007", "SCT", "Sacrum"), "SACRUM": Code("54735007", "SCT", "Sacrum"),
    "ILIAC_L": Code("22356005", "SCT", "Ilium"), "ILIAC_R": Code("22356005", "SCT", "Ilium"),
    "ACETABULUM_L": Code("37783008", "SCT", "Acetabulum"), "ACETABULUM_R": Code("37783008", "SCT", "Acetabulum"),
}


_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def silence_person_name_warning() -> None:
    """Keep highdicom's warning about a one-component PatientName, which quotes the name, out of the logs.

    The name is the source's, copied as it is; a patient name must never reach a log (warnings
    may be routed to logging). A process-wide filter, added once (``warnings.catch_warnings``
    is not thread-safe), and again if something reset the filters.
    """
    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == _PERSON_NAME_WARNING
               for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)


def site_code(level: str) -> Code:
    """SNOMED CT code of the treated bone: the vertebra of ``level`` (CID 7151/7192), else the site.

    Raises
    ------
    ValueError
        If ``level`` is neither a vertebral level nor a known site.

    Example
    -------
    >>> site_code("d12").meaning
    'T12 vertebra'
    """
    return _LEVEL_CODES[normalise_level(level)]


def private_code(value: str, meaning: str) -> Code:
    """A concept of the ``99CRAV`` scheme (one DICOM does not define)."""
    return Code(value, PRIVATE_SCHEME, meaning)


def series_number(level: str, kind: Literal["SEG", "SR"]) -> int:
    """SeriesNumber of a lesion's SEG or SR: ``9000 + 10 * site rank + (1 SEG | 2 SR)``.

    The rank runs C1 = 0 ... S1 = 23, then the non-vertebral sites (24+), so an L1 lesion's
    SEG is series 9191 and its SR 9192: after the acquired series, the two side by side,
    one pair per treated level of a study.

    Example
    -------
    >>> series_number("L1", "SEG"), series_number("L1", "SR")
    (9191, 9192)
    """
    sites = VERTEBRAL_LEVELS + NON_VERTEBRAL_SITES
    return 9000 + 10 * sites.index(normalise_level(level)) + (1 if kind == "SEG" else 2)


def content_digest(*parts: str | bytes) -> str:
    """SHA-256 (hex) of ``parts``, each length-prefixed so that no two lists of parts collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def deterministic_uid(*parts: str) -> str:
    """A UID that depends on ``parts`` only (pydicom's root, SHA-512 of the parts).

    Example
    -------
    >>> deterministic_uid("a", "b") == deterministic_uid("a", "b") != deterministic_uid("a", "c")
    True
    """
    return str(generate_uid(entropy_srcs=["crav-followup", *parts]))


def tracking_uid(patient_id: str, lesion_id: str, structure: str) -> str:
    """Tracking Unique Identifier of one structure of one lesion: the same at every visit."""
    return deterministic_uid("tracking", patient_id, lesion_id, structure)


def save_dataset(path: str | os.PathLike[str], ds: Dataset) -> Path:
    """Write ``ds`` as a DICOM file (with its File Meta Information) atomically; return ``path``."""
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _blank_times(items: Iterable[Dataset]) -> None:
    for ds in items:
        for elem in ds:
            if elem.VR == "SQ":
                _blank_times(elem.value)
            elif elem.keyword in TIME_ATTRIBUTES:
                elem.value = ""


def time_masked_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's dataset re-encoded with every :data:`TIME_ATTRIBUTES` value emptied, at any depth.

    Two writes of the same content give equal bytes here (and differ only there).
    """
    with quiet_pydicom():
        ds = pydicom.dcmread(path)
    _blank_times([ds])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- source series


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
        for label, ipp, iop, rows, cols in _planes(ds, Path(str(ds.filename or "source")).name):
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
