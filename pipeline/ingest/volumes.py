"""Turn the files of a series into SimpleITK images with correct geometry (SPEC section 2).

Slices are sorted by their position along the slice normal (never by InstanceNumber);
spacing comes from the position differences (never SliceThickness); duplicate instances are
dropped; missing slices, uneven spacing and gantry tilt are refused with a reason a
radiologist can read. Enhanced multi-frame files are read from their per-frame functional
groups. Pixel values are float32 with RescaleSlope / RescaleIntercept applied.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.ingest.headers import dicom_time_s, header_floats, header_number, header_text

log = logging.getLogger(__name__)

#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01


class VolumeError(ValueError):
    """A series cannot be made into a volume (the message says why, for a radiologist)."""


@dataclass(frozen=True)
class DynamicSeries:
    """Phases of a dynamic acquisition, on one grid, with their times (s) after the first."""

    phases: list[sitk.Image]
    times_s: np.ndarray


@dataclass
class _Frame:
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    pixels: np.ndarray
    sop_uid: str
    instance: int
    series_uid: str
    temporal: float | None
    time_s: float | None
    trigger_ms: float | None


# --------------------------------------------------------------------------- reading


def _datetime_s(value: Any) -> float | None:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``) to seconds since 0001-01-01."""
    text = str(value or "").strip().split("+")[0].split("-")[0]
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()
    except ValueError:
        return None
    tod = dicom_time_s(text[8:]) if len(text) > 8 else 0.0
    return day * 86400.0 + (tod or 0.0)


def _rescaled(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    out = pixels.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def _pixels(ds: Dataset, name: str) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{name}: colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not a volume")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise VolumeError(f"{name}: cannot decode the pixel data (transfer syntax {ts}): {exc}") from exc


def _classic_frame(ds: Dataset, name: str) -> _Frame:
    ipp, iop = header_floats(ds, "ImagePositionPatient"), header_floats(ds, "ImageOrientationPatient")
    ps = header_floats(ds, "PixelSpacing")
    if ipp is None or len(ipp) != 3 or iop is None or len(iop) != 6:
        raise VolumeError(
            f"{name}: no ImagePositionPatient / ImageOrientationPatient, the slice cannot be placed"
        )
    if ps is None or len(ps) != 2:
        raise VolumeError(f"{name}: no PixelSpacing, the pixel size is unknown")
    date = header_text(ds, "AcquisitionDate") or header_text(ds, "SeriesDate") or header_text(ds, "StudyDate")
    tod = dicom_time_s(ds.get("AcquisitionTime"))
    day = _datetime_s(date)
    return _Frame(
        position=np.array(ipp),
        orientation=np.array(iop),
        pixel_spacing=(ps[0], ps[1]),
        slice_thickness=header_number(ds, "SliceThickness"),
        pixels=_rescaled(
            _pixels(ds, name), header_number(ds, "RescaleSlope"), header_number(ds, "RescaleIntercept")
        ),
        sop_uid=header_text(ds, "SOPInstanceUID"),
        instance=int(header_number(ds, "InstanceNumber") or 0),
        series_uid=header_text(ds, "SeriesInstanceUID"),
        temporal=header_number(ds, "TemporalPositionIdentifier"),
        time_s=None if tod is None else tod + (day or 0.0),
        trigger_ms=header_number(ds, "TriggerTime"),
    )


def _group_value(frame: Dataset, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    for item in (frame, shared):
        if item is not None and sequence in item and item[sequence].value:
            inner = item[sequence].value[0]
            if keyword in inner:
                return inner[keyword].value
    return None


def _enhanced_frames(ds: Dataset, name: str) -> list[_Frame]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise VolumeError(f"{name}: multi-frame image without per-frame functional groups is not supported")
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    pixels = _pixels(ds, name)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape[0] != len(per_frame):
        raise VolumeError(
            f"{name}: {pixels.shape[0]} frames of pixels but {len(per_frame)} frame descriptions"
        )
    frames = []
    for i, item in enumerate(per_frame):
        ipp = _group_value(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        iop = _group_value(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _group_value(item, shared, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise VolumeError(f"{name}: frame {i + 1} lacks plane position, orientation or pixel spacing")
        slope = _group_value(item, shared, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(item, shared, "PixelValueTransformationSequence", "RescaleIntercept")
        thickness = _group_value(item, shared, "PixelMeasuresSequence", "SliceThickness")
        temporal = _group_value(item, shared, "FrameContentSequence", "TemporalPositionIndex")
        when = _group_value(item, shared, "FrameContentSequence", "FrameAcquisitionDateTime")
        trigger = _group_value(
            item, shared, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"
        )
        frames.append(
            _Frame(
                position=np.array([float(v) for v in ipp]),
                orientation=np.array([float(v) for v in iop]),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slice_thickness=float(thickness) if thickness is not None else None,
                pixels=_rescaled(
                    pixels[i],
                    float(slope) if slope is not None else None,
                    float(intercept) if intercept is not None else None,
                ),
                sop_uid=f"{header_text(ds, 'SOPInstanceUID')}#{i + 1}",
                instance=i + 1,
                series_uid=header_text(ds, "SeriesInstanceUID"),
                temporal=float(temporal) if temporal is not None else None,
                time_s=_datetime_s(when),
                trigger_ms=float(trigger) if trigger is not None else None,
            )
        )
    return frames


def _read_frames(files: Sequence[Path]) -> list[_Frame]:
    if not files:
        raise VolumeError("no image files were given")
    frames: list[_Frame] = []
    for path in files:
        name = Path(path).name
        try:
            ds = pydicom.dcmread(path, force=False)
        except InvalidDicomError as exc:
            raise VolumeError(f"{name}: not a DICOM file (no DICM preamble)") from exc
        except (OSError, EOFError) as exc:
            raise VolumeError(f"{name}: cannot be read ({exc})") from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise VolumeError(f"{name}: has no pixel data")
        if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            frames.extend(_enhanced_frames(ds, name))
        else:
            frames.append(_classic_frame(ds, name))
    return frames


# --------------------------------------------------------------------------- stacking


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _stack(
    frames: list[_Frame], *, max_spacing_deviation: float, max_tilt_deg: float, what: str
) -> sitk.Image:
    """Sort, check and stack the frames of one 3D volume."""
    ref = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - ref.orientation)) > 1e-3:
            raise VolumeError(f"{what}: images with different orientations are not one volume")
        if f.pixels.shape != ref.pixels.shape:
            raise VolumeError(f"{what}: images of different sizes ({f.pixels.shape} vs {ref.pixels.shape})")
        if max(abs(a - b) for a, b in zip(f.pixel_spacing, ref.pixel_spacing, strict=True)) > 1e-3:
            raise VolumeError(f"{what}: images with different pixel spacing are not one volume")
    row, col = _unit(ref.orientation[:3]), _unit(ref.orientation[3:])
    normal = np.cross(row, col)
    ordered = sorted(frames, key=lambda f: (float(f.position @ normal), f.instance))
    kept: list[_Frame] = [ordered[0]]
    for f in ordered[1:]:
        last = kept[-1]
        if abs(float((f.position - last.position) @ normal)) >= SAME_POSITION_MM:
            kept.append(f)
            continue
        if f.sop_uid != last.sop_uid and (f.temporal != last.temporal or f.time_s != last.time_s):
            raise VolumeError(
                f"{what}: several images at one slice position with different acquisition times "
                "(a dynamic series); load it as a dynamic"
            )
        log.debug("%s: duplicate slice position dropped", what)
    proj = np.array([float(f.position @ normal) for f in kept])
    if len(kept) == 1:
        dz = ref.slice_thickness or 1.0
    else:
        steps = np.diff(proj)
        shifts = np.diff(np.array([f.position for f in kept]), axis=0)
        off_normal = np.linalg.norm(shifts - np.outer(steps, normal), axis=1)
        tilt = float(np.degrees(np.max(np.arctan2(off_normal, steps))))
        if tilt > max_tilt_deg:
            raise VolumeError(
                f"{what}: gantry tilt / sheared stack: successive slices are shifted {tilt:.1f} degrees off "
                "the slice normal; the series must be resampled before it can be measured"
            )
        median = float(np.median(steps))
        bad = np.abs(steps - median) > max_spacing_deviation * median
        if bad.any():
            worst = int(np.argmax(np.abs(steps - median)))
            gap = float(steps[worst])
            n_missing = int(sum(max(round(s / median) - 1, 0) for s in steps[bad]))
            if gap > median and n_missing > 0:
                raise VolumeError(
                    f"{what}: {n_missing} slice(s) missing: a gap of {gap:.1f} mm between slices at "
                    f"{proj[worst]:.1f} and {proj[worst + 1]:.1f} mm where slices are {median:.1f} mm apart"
                )
            raise VolumeError(
                f"{what}: uneven slice spacing: gaps from {steps.min():.2f} to {steps.max():.2f} mm "
                f"differ by more than {max_spacing_deviation:.0%} from the usual {median:.2f} mm"
            )
        dz = float(proj[-1] - proj[0]) / (len(kept) - 1)
    image = sitk.GetImageFromArray(np.stack([f.pixels for f in kept]).astype(np.float32, copy=False))
    image.SetSpacing((ref.pixel_spacing[1], ref.pixel_spacing[0], dz))
    image.SetOrigin(tuple(float(v) for v in kept[0].position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return image


def load_volume(
    files: Sequence[Path], *, max_spacing_deviation: float = 0.10, max_tilt_deg: float = 0.5
) -> sitk.Image:
    """Load one series (classic single-frame files or one enhanced multi-frame file) as a 3D image.

    Parameters
    ----------
    files
        The files of the series, in any order.
    max_spacing_deviation
        Largest relative deviation of a slice gap from the median gap.
    max_tilt_deg
        Largest angle (degrees) between the slice-to-slice shift and the slice normal.

    Returns
    -------
    SimpleITK.Image
        3D float32; spacing (mm) from PixelSpacing and the slice positions, origin of the
        first slice along the normal, direction columns = row, column, normal (LPS).

    Raises
    ------
    VolumeError
        On missing slices, uneven spacing, gantry tilt, mixed orientations or sizes,
        several acquisition times at one position, or unreadable pixel data.
    """
    return _stack(
        _read_frames(files),
        max_spacing_deviation=max_spacing_deviation,
        max_tilt_deg=max_tilt_deg,
        what="series",
    )


def _split_phases(frames: list[_Frame]) -> list[list[_Frame]]:
    temporal = sorted({f.temporal for f in frames if f.temporal is not None})
    if len(temporal) > 1:
        if any(f.temporal is None for f in frames):
            raise VolumeError("dynamic series: some images have a temporal position, others none")
        return [[f for f in frames if f.temporal == t] for t in temporal]
    series_order = list(dict.fromkeys(f.series_uid for f in frames))
    if len(series_order) > 1:
        return [[f for f in frames if f.series_uid == uid] for uid in series_order]
    by_position: dict[float, list[_Frame]] = defaultdict(list)
    normal = np.cross(_unit(frames[0].orientation[:3]), _unit(frames[0].orientation[3:]))
    for f in frames:
        by_position[round(float(f.position @ normal), 2)].append(f)
    counts = {len(v) for v in by_position.values()}
    if len(counts) != 1:
        raise VolumeError(
            "dynamic series: slice positions have different numbers of phases "
            f"({min(counts)} to {max(counts)})"
        )
    n = counts.pop()
    for stack in by_position.values():
        stack.sort(key=lambda f: (f.time_s if f.time_s is not None else 0.0, f.trigger_ms or 0.0, f.instance))
    return [[stack[k] for stack in by_position.values()] for k in range(n)]


def _phase_times(phases: list[list[_Frame]]) -> np.ndarray:
    for attr, scale in (("time_s", 1.0), ("trigger_ms", 1e-3)):
        values = [[getattr(f, attr) for f in phase] for phase in phases]
        if all(v is not None for phase in values for v in phase):
            t = np.array([min(phase) for phase in values], dtype=float) * scale
            if len(t) == 1 or np.all(np.diff(t) > 0):
                return t - t[0]
    raise VolumeError(
        "dynamic series: the phase times are unknown or not increasing (no usable AcquisitionTime, "
        "FrameAcquisitionDateTime or TriggerTime)"
    )


def load_dynamic(
    files: Sequence[Path], *, max_spacing_deviation: float = 0.10, max_tilt_deg: float = 0.5
) -> DynamicSeries:
    """Load a dynamic (DCE) acquisition as a list of 3D phases and their times.

    Phases are split by TemporalPositionIdentifier / TemporalPositionIndex; when absent,
    by series (a DCE exported one series per phase: the order of first appearance in
    ``files`` is the phase order, e.g. ``Catalog.dynamic_files``); otherwise by the
    distinct acquisition / trigger times at each slice position.

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
    frames = _read_frames(files)
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
    return DynamicSeries(phases=phases, times_s=_phase_times(groups))
