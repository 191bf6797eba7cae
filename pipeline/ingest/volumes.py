"""Turn the files of a series into SimpleITK images with correct geometry (SPEC section 2).

Slices are sorted by their position along the slice normal (never by InstanceNumber);
spacing comes from the position differences (never SliceThickness); duplicate instances are
dropped; missing slices, uneven spacing, gantry tilt and several different images at one
position (a dynamic, several echoes, magnitude and phase) are refused with a reason a
radiologist can read. Enhanced multi-frame files are read from their per-frame functional
groups; Siemens MOSAIC images are unpacked into their slices. Pixel values are float32 with
RescaleSlope / RescaleIntercept applied. Only :class:`VolumeError` is raised for bad input.

The work is shared by three modules: :mod:`pipeline.ingest.frames` (classic and enhanced
datasets -> frames), :mod:`pipeline.ingest.stacking` (frames -> checked 3D images, dynamic
phases) and this one (files -> frames, Siemens MOSAIC unpacking, :func:`load_volume`,
:func:`load_dynamic`); the public names of the other two are importable from here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.ingest.frames import COMPONENTS, VolumeError, _classic_frame, _enhanced_frames, _Frame
from pipeline.ingest.header_fields import header_number, header_values
from pipeline.ingest.headers import quiet_pydicom
from pipeline.ingest.stacking import SAME_POSITION_MM, _phase_times, _select, _split_phases, _stack, _unit

__all__ = [
    "COMPONENTS",
    "MAX_FILE_PIXEL_BYTES",
    "SAME_POSITION_MM",
    "DynamicSeries",
    "VolumeError",
    "load_dynamic",
    "load_volume",
]

#: Largest decoded pixel data (bytes) one file may claim; larger claims are refused undecoded.
MAX_FILE_PIXEL_BYTES = 2**30
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class DynamicSeries:
    """Phases of a dynamic acquisition, on one grid, with their times (s) after the first."""

    phases: list[sitk.Image]
    times_s: np.ndarray
    repetition_time_s: float | None = None  # RepetitionTime of the first frame, for signal to concentration
    flip_angle_deg: float | None = None  # FlipAngle of the first frame


# --------------------------------------------------------------------------- reading files


def _siemens_csa(ds: Dataset) -> dict[str, list[Any]]:
    """Items of the Siemens CSA image header (0029,xx10) by tag name; {} when absent or unreadable."""
    with warnings.catch_warnings():  # nibabel.nicom warns on import that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    try:
        raw = ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value
        tags = csareader.read(raw)["tags"] if isinstance(raw, bytes) else {}
    except Exception:  # absent block, or a corrupt header (nibabel raises CSAError, struct.error ...)
        return {}
    return {name: list(tag["items"]) for name, tag in tags.items()}


def _mosaic_frames(ds: Dataset, name: str) -> list[_Frame]:
    """Unpack a Siemens MOSAIC (one 3D volume tiled in one 2D image) into its slices.

    As nibabel's ``MosaicWrapper`` and dcm2niix: ``NumberOfImagesInMosaic`` tiles on a
    ceil(sqrt(n)) square grid, row by row; ImagePositionPatient is that of the whole mosaic,
    so it is moved to the centre-aligned first tile; tiles follow the CSA SliceNormalVector,
    SpacingBetweenSlices apart.
    """
    csa = _siemens_csa(ds)
    n = (csa.get("NumberOfImagesInMosaic") or [0])[0]
    slice_normal = csa.get("SliceNormalVector") or []
    if not n or len(slice_normal) != 3:
        raise VolumeError(
            f"{name}: Siemens MOSAIC without NumberOfImagesInMosaic / SliceNormalVector in its CSA header: "
            "its slices cannot be unpacked"
        )
    n, rows, cols = int(n), int(ds.Rows), int(ds.Columns)
    grid = math.ceil(math.sqrt(n))
    gap = header_number(ds, "SpacingBetweenSlices")
    if rows % grid or cols % grid:
        raise VolumeError(f"{name}: a MOSAIC of {rows}x{cols} pixels cannot hold {n} equal tiles")
    if gap is None or gap <= 0:
        raise VolumeError(f"{name}: Siemens MOSAIC without SpacingBetweenSlices: the slice positions are unknown")
    whole = _classic_frame(ds, name)
    r, c = rows // grid, cols // grid
    tiles = whole.pixels.reshape(grid, r, grid, c).transpose(0, 2, 1, 3).reshape(grid * grid, r, c)[:n]
    row_cos, col_cos = _unit(whole.orientation[:3]), _unit(whole.orientation[3:])
    normal = np.cross(row_cos, col_cos)
    dot = float(np.dot(np.asarray(slice_normal, dtype=float), normal))
    if abs(abs(dot) - 1.0) > 1e-3:
        raise VolumeError(f"{name}: the CSA SliceNormalVector is not perpendicular to the image plane")
    normal = normal if dot > 0 else -normal
    ps = whole.pixel_spacing
    first = whole.position + col_cos * ps[0] * (rows - r) / 2 + row_cos * ps[1] * (cols - c) / 2
    return [
        dataclasses.replace(
            whole,
            position=first + k * gap * normal,
            pixels=np.ascontiguousarray(tiles[k]),
            sop_uid=f"{whole.sop_uid}#{k + 1}",
            slice_gap=gap,
            source=f"{name} tile {k + 1}",
        )
        for k in range(n)
    ]


def _claimed_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames * samples * math.ceil(bits / 8)


def _dataset_frames(ds: Dataset, name: str) -> list[_Frame]:
    if str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE:
        raise VolumeError(f"{name}: a DICOM SEG (segmentation object) is not an image series")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise VolumeError(f"{name}: has no pixel data")
    claimed = _claimed_bytes(ds)
    if claimed > MAX_FILE_PIXEL_BYTES:
        raise VolumeError(
            f"{name}: claims {claimed / 2**20:.0f} MiB of pixel data (Rows x Columns x frames), more than "
            f"the {MAX_FILE_PIXEL_BYTES / 2**20:.0f} MiB limit; not decoded"
        )
    if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return _enhanced_frames(ds, name)
    if "MOSAIC" in header_values(ds, "ImageType"):
        return _mosaic_frames(ds, name)
    return [_classic_frame(ds, name)]


def _read_frames(files: Sequence[Path]) -> list[_Frame]:
    if not files:
        raise VolumeError("no image files were given")
    frames: list[_Frame] = []
    for path in files:
        name = Path(path).name
        try:
            with quiet_pydicom():  # pydicom must not log header values (PatientName...) while decoding
                ds = pydicom.dcmread(path, force=False)
                frames.extend(_dataset_frames(ds, name))
        except VolumeError:
            raise
        except InvalidDicomError as exc:
            raise VolumeError(f"{name}: not a DICOM file (no DICM preamble)") from exc
        except (OSError, EOFError) as exc:
            raise VolumeError(f"{name}: cannot be read ({exc})") from exc
        except Exception as exc:  # pydicom / numpy raise many types on malformed values
            raise VolumeError(f"{name}: malformed DICOM header ({type(exc).__name__}: {exc})") from exc
    return frames


# --------------------------------------------------------------------------- loading


def load_volume(
    files: Sequence[Path],
    *,
    max_spacing_deviation: float = 0.10,
    max_tilt_deg: float = 0.5,
    component: str | None = None,
    echo_time_ms: float | None = None,
) -> sitk.Image:
    """Load one series (classic single-frame files, Siemens mosaics or one enhanced multi-frame file) as 3D.

    Parameters
    ----------
    files
        The files of the series, in any order.
    max_spacing_deviation
        Largest relative deviation of a slice gap from the median gap.
    max_tilt_deg
        Largest angle (degrees) between the slice-to-slice shift and the slice normal.
    component
        Keep only the images of this complex component (``MAGNITUDE``, ``PHASE``, ``REAL``,
        ``IMAGINARY``; from ComplexImageComponent or ImageType). None: the magnitude images
        when the series mixes magnitude with other components (logged), else every image.
    echo_time_ms
        Keep only the images of this echo time (ms, within 0.01 ms): needed for a
        multi-echo series, which is refused otherwise.

    Returns
    -------
    SimpleITK.Image
        3D float32; spacing (mm) from PixelSpacing and the slice positions, origin of the
        first slice along the normal, direction columns = row, column, normal (LPS).

    Raises
    ------
    VolumeError
        On missing slices, uneven spacing, gantry tilt, mixed orientations or sizes,
        several acquisition times, echoes or components at one position, a DICOM SEG, an
        unpackable mosaic, a malformed header, or pixel data that cannot (or, over
        ``MAX_FILE_PIXEL_BYTES``, will not) be decoded.
    ValueError
        If ``component`` is not one of :data:`COMPONENTS`.
    """
    return _stack(
        _select(_read_frames(files), component, echo_time_ms, "series"),
        max_spacing_deviation=max_spacing_deviation,
        max_tilt_deg=max_tilt_deg,
        what="series",
    )


def load_dynamic(
    files: Sequence[Path],
    *,
    max_spacing_deviation: float = 0.10,
    max_tilt_deg: float = 0.5,
    component: str | None = None,
    echo_time_ms: float | None = None,
) -> DynamicSeries:
    """Load a dynamic (DCE) acquisition as a list of 3D phases and their times.

    Phases are split by TemporalPositionIdentifier / TemporalPositionIndex; when absent,
    by series (a DCE exported one series per phase: the order of first appearance in
    ``files`` is the phase order, e.g. ``Catalog.dynamic_files``); otherwise by the
    distinct acquisition / trigger times at each slice position (Siemens mosaics: one
    mosaic per phase). ``component`` and ``echo_time_ms`` select images as in
    :func:`load_volume`.

    Returns
    -------
    DynamicSeries
        ``phases`` share one grid; ``times_s`` are seconds after the first phase.

    Raises
    ------
    VolumeError
        If a phase fails the :func:`load_volume` checks, phases differ in geometry, or the
        phase times are unknown or not increasing.
    """
    frames = _select(_read_frames(files), component, echo_time_ms, "dynamic series")
    groups = _split_phases(frames)
    phases = [
        _stack(
            g, max_spacing_deviation=max_spacing_deviation, max_tilt_deg=max_tilt_deg, what=f"phase {i + 1}"
        )
        for i, g in enumerate(groups)
    ]
    ref = phases[0]
    for i, image in enumerate(phases[1:], start=2):
        same = (
            image.GetSize() == ref.GetSize()
            and np.allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-3)
            and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=0.05)
            and np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-4)
        )
        if not same:
            raise VolumeError(
                f"dynamic series: phase {i} is not on the grid of phase 1 (size, position or spacing)"
            )
    first = groups[0][0]
    return DynamicSeries(phases=phases, times_s=_phase_times(groups),
                         repetition_time_s=first.repetition_ms / 1000.0 if first.repetition_ms else None,
                         flip_angle_deg=first.flip_deg if first.flip_deg else None)
