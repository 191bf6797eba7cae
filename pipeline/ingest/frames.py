"""One DICOM dataset -> the frames (2D images placed in space) that volumes are stacked from.

Classic single-frame images and enhanced multi-frame images (read from their per-frame
functional groups) become :class:`_Frame` records: position, orientation, pixel spacing,
float32 pixels with RescaleSlope / RescaleIntercept applied, and the timing, echo and complex
component that tell the images at one position apart. Siemens MOSAIC unpacking, the size
check before decoding and the reading of files are in :mod:`pipeline.ingest.volumes`; only
:class:`VolumeError` is raised for bad input.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from pipeline.ingest.header_fields import dicom_time_s, header_floats, header_number, header_text, header_values

#: Values of ``component=`` (DICOM ComplexImageComponent).
COMPONENTS = ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY")
# ImageType value 3+ tokens naming the complex component (Siemens M/P/R/I, Philips M/P/R/I, spelled out)
_TYPE_COMPONENT = {"M": "MAGNITUDE", "P": "PHASE", "R": "REAL", "I": "IMAGINARY"} | {c: c for c in COMPONENTS}


class VolumeError(ValueError):
    """A series cannot be made into a volume (the message says why, for a radiologist)."""


@dataclass
class _Frame:
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_gap: float | None  # SpacingBetweenSlices, else SliceThickness: only for a one-slice volume
    pixels: np.ndarray
    sop_uid: str
    instance: int
    series_uid: str
    temporal: float | None
    time_s: float | None
    trigger_ms: float | None
    echo_ms: float | None = None
    repetition_ms: float | None = None  # RepetitionTime (0018,0080)
    flip_deg: float | None = None  # FlipAngle (0018,1314)
    component: str = ""
    source: str = ""  # file name (and frame / tile) for messages


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


def _component(explicit: Any, image_type: Sequence[str]) -> str:
    """MAGNITUDE / PHASE / REAL / IMAGINARY from ComplexImageComponent or ImageType (values 3+), else ''."""
    text = str(explicit or "").strip().upper()
    if text in COMPONENTS:
        return text
    return next((_TYPE_COMPONENT[t] for t in image_type[2:] if t in _TYPE_COMPONENT), "")


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
        slice_gap=header_number(ds, "SpacingBetweenSlices") or header_number(ds, "SliceThickness"),
        pixels=_rescaled(
            _pixels(ds, name), header_number(ds, "RescaleSlope"), header_number(ds, "RescaleIntercept")
        ),
        sop_uid=header_text(ds, "SOPInstanceUID"),
        instance=int(header_number(ds, "InstanceNumber") or 0),
        series_uid=header_text(ds, "SeriesInstanceUID"),
        temporal=header_number(ds, "TemporalPositionIdentifier"),
        time_s=None if tod is None else tod + (day or 0.0),
        trigger_ms=header_number(ds, "TriggerTime"),
        echo_ms=header_number(ds, "EchoTime"),
        repetition_ms=header_number(ds, "RepetitionTime"),
        flip_deg=header_number(ds, "FlipAngle"),
        component=_component(ds.get("ComplexImageComponent"), header_values(ds, "ImageType")),
        source=name,
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
    image_type = header_values(ds, "ImageType")
    frames = []
    for i, item in enumerate(per_frame):

        def value(sequence: str, keyword: str, item: Dataset = item) -> Any:
            return _group_value(item, shared, sequence, keyword)

        ipp = value("PlanePositionSequence", "ImagePositionPatient")
        iop = value("PlaneOrientationSequence", "ImageOrientationPatient")
        ps = value("PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise VolumeError(f"{name}: frame {i + 1} lacks plane position, orientation or pixel spacing")
        slope = value("PixelValueTransformationSequence", "RescaleSlope")
        intercept = value("PixelValueTransformationSequence", "RescaleIntercept")
        gap = value("PixelMeasuresSequence", "SpacingBetweenSlices") or value(
            "PixelMeasuresSequence", "SliceThickness"
        )
        temporal = value("FrameContentSequence", "TemporalPositionIndex")
        trigger = value("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")
        echo = value("MREchoSequence", "EffectiveEchoTime")
        tr = value("MRTimingAndRelatedParametersSequence", "RepetitionTime")
        flip = value("MRTimingAndRelatedParametersSequence", "FlipAngle")
        frame_type = value("MRImageFrameTypeSequence", "FrameType") or value("CTImageFrameTypeSequence", "FrameType")
        component = value("MRImageFrameTypeSequence", "ComplexImageComponent") or ds.get("ComplexImageComponent")
        frames.append(
            _Frame(
                position=np.array([float(v) for v in ipp]),
                orientation=np.array([float(v) for v in iop]),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slice_gap=float(gap) if gap is not None else None,
                pixels=_rescaled(
                    pixels[i],
                    float(slope) if slope is not None else None,
                    float(intercept) if intercept is not None else None,
                ),
                sop_uid=f"{header_text(ds, 'SOPInstanceUID')}#{i + 1}",
                instance=i + 1,
                series_uid=header_text(ds, "SeriesInstanceUID"),
                temporal=float(temporal) if temporal is not None else None,
                time_s=_datetime_s(value("FrameContentSequence", "FrameAcquisitionDateTime")),
                trigger_ms=float(trigger) if trigger is not None else None,
                echo_ms=float(echo) if echo is not None else None,
                repetition_ms=float(tr) if tr is not None else None,
                flip_deg=float(flip) if flip is not None else None,
                component=_component(
                    component, [str(t).upper() for t in frame_type] if frame_type else image_type
                ),
                source=f"{name} frame {i + 1}",
            )
        )
    return frames
