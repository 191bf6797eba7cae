"""Stored header fields: the keywords kept per file, their decoding, and header access.

A stored header is a JSON-able dict keyed by DICOM keyword (never PatientName or
PatientBirthDate). The accessors (``header_text`` ...) take such a dict or a pydicom Dataset.
:func:`header_from_dataset` makes the dict from a dataset read by
:func:`pipeline.ingest.headers.read_header`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

#: One image's header: a mapping keyed by DICOM keyword, or a pydicom Dataset.
Header = Mapping[str, Any] | Dataset

_KEYWORDS = """
    PatientID StudyInstanceUID SeriesInstanceUID SOPInstanceUID SOPClassUID StudyDate SeriesDate
    AcquisitionDate StudyTime SeriesTime AcquisitionTime AcquisitionDateTime Modality Manufacturer
    ImageType SeriesDescription ProtocolName SeriesNumber InstanceNumber ScanningSequence
    SequenceVariant ScanOptions MRAcquisitionType RepetitionTime EchoTime InversionTime FlipAngle
    ContrastBolusAgent TemporalPositionIdentifier NumberOfTemporalPositions TemporalPositionIndex
    TriggerTime DiffusionBValue ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness
    FrameOfReferenceUID Rows Columns NumberOfFrames RescaleSlope RescaleIntercept EchoPulseSequence
    InversionRecovery SpectrallySelectedSuppression SamplesPerPixel BitsAllocated PhotometricInterpretation
"""
#: Top-level fields kept per file (never PatientName / PatientBirthDate).
HEADER_KEYWORDS: tuple[str, ...] = tuple(_KEYWORDS.split())
_SHARED_GROUPS = Tag("SharedFunctionalGroupsSequence")
_PER_FRAME_GROUPS = Tag("PerFrameFunctionalGroupsSequence")
_HEADER_TAGS: list[tuple[str, BaseTag, str]] = [(k, Tag(k), dictionary_VR(k)) for k in HEADER_KEYWORDS]
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})  # ASCII-only here
_SLOW = object()
_MAX_INT = 2**53  # larger numbers in a header are corrupt (and overflow SQLite)
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Single-valued text fields: a backslash inside is part of the value, never a separator.
_SINGLE_VALUED = frozenset({"PatientID", *_UID_KEYWORDS, "SOPClassUID", "FrameOfReferenceUID", "Modality",
                            "SeriesDescription", "ProtocolName", "Manufacturer", "ContrastBolusAgent"})


# --------------------------------------------------------------------------- header access


def header_text(h: Header, key: str) -> str:
    """A header value as one stripped string (multi-values joined by backslash); '' if absent."""
    value = h.get(key)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or (not isinstance(value, str | bytes) and hasattr(value, "__iter__")):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def header_values(h: Header, key: str) -> tuple[str, ...]:
    """A multi-valued header field as upper-case tokens (``'SE\\\\IR'`` -> ``('SE', 'IR')``)."""
    text = header_text(h, key)
    return tuple(t.strip().upper() for t in text.split("\\") if t.strip())


def header_number(h: Header, key: str) -> float | None:
    """First value of a numeric header field, or None when absent or not a number."""
    value = h.get(key)
    if value is None:
        return None
    if isinstance(value, list | tuple) or (not isinstance(value, str | bytes) and hasattr(value, "__iter__")):
        items = list(value)
        if not items:
            return None
        value = items[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def header_floats(h: Header, key: str) -> tuple[float, ...] | None:
    """A numeric multi-valued field (IPP, IOP) as floats, or None when absent or malformed."""
    value = h.get(key)
    if value is None:
        return None
    items = [value] if isinstance(value, str | bytes | int | float) else list(value)
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None


def dicom_time_s(value: Any) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF``, also ``HH:MM:SS``) to seconds after midnight; None when malformed."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def error_text(exc: BaseException, limit: int = 160) -> str:
    """An exception as a short reason: its type and message, with quoted values removed.

    Error messages of pydicom and of int()/float() quote the offending value, and in a corrupt
    header a value can hold any bytes of the file (the patient's name included): quoted parts
    become ``'…'``, control characters are escaped, and the text is cut at ``limit``.

    Example
    -------
    >>> error_text(ValueError("invalid literal for int() with base 10: 'Doe^Jane'"))
    "ValueError: invalid literal for int() with base 10: '…'"
    """
    message = _QUOTED.sub("'…'", str(exc))
    message = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"



# --------------------------------------------------------------------------- header reading


def _jsonable(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if abs(value) < _MAX_INT else None
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bytes | Dataset) or value is None:
        return None
    return str(value)


def _fg(item: Dataset | None, sequence: str, keyword: str) -> Any:
    """Value of ``keyword`` inside functional group ``sequence`` of a frame item."""
    if item is None or sequence not in item or not item[sequence].value:
        return None
    inner = item[sequence].value[0]
    return inner.get(keyword) if keyword in inner else None


def _enhanced_fields(ds: Dataset, header: dict[str, Any]) -> None:
    """Map enhanced multi-frame functional groups onto the classic keywords roles use."""
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    first = frames[0] if frames else None
    lookups = {
        "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
        "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
        "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
        "InversionTime": ("MRModifierSequence", "InversionTimes"),
        "DiffusionBValue": ("MRDiffusionSequence", "DiffusionBValue"),
        "ImageOrientationPatient": ("PlaneOrientationSequence", "ImageOrientationPatient"),
        "PixelSpacing": ("PixelMeasuresSequence", "PixelSpacing"),
        "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
        "ImagePositionPatient": ("PlanePositionSequence", "ImagePositionPatient"),
    }
    for keyword, (sequence, inner) in lookups.items():
        if keyword in header:
            continue
        value = _fg(shared, sequence, inner)
        if value is None:
            value = _fg(first, sequence, inner)
        if value is not None:
            header[keyword] = _jsonable(value)
    indexes = {
        v for f in frames if (v := _fg(f, "FrameContentSequence", "TemporalPositionIndex")) is not None
    }
    if indexes:
        header["TemporalPositionIndexCount"] = len(indexes)
    if "ScanningSequence" not in header:
        pulse = header_text(header, "EchoPulseSequence").upper()
        seq = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}.get(pulse, [])
        if header_text(header, "InversionRecovery").upper() == "YES":
            seq.append("IR")
        if seq:
            header["ScanningSequence"] = seq
    if "ScanOptions" not in header and header_text(header, "SpectrallySelectedSuppression").upper() in (
        "FAT",
        "FAT_AND_WATER",
    ):
        header["ScanOptions"] = ["FS"]


def _fast_value(raw: RawDataElement, vr: str, little: bool) -> Any:
    """Decode a raw element's bytes for the plain VRs we store; ``_SLOW`` when pydicom must do it."""
    data = raw.value
    if data is None or not isinstance(data, bytes):
        return _SLOW
    if vr == "US":
        count = len(data) // 2
        values = struct.unpack(f"{'<' if little else '>'}{count}H", data[: 2 * count])
        return values[0] if count == 1 else list(values)
    if vr not in _TEXT_VRS:
        return _SLOW
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return _SLOW
    if "\x1b" in text:  # ISO 2022 escape: let pydicom apply the character set
        return _SLOW
    parts = [p.strip(" \x00") for p in text.split("\\")]
    try:
        if vr == "DS":
            items: list[Any] = [float(p) for p in parts if p]
            if not all(map(math.isfinite, items)):
                return None  # NaN / infinity: dropped
        elif vr == "IS":
            items = [int(float(p)) for p in parts if p]
            if any(abs(v) >= _MAX_INT for v in items):
                return None  # absurdly large (and beyond SQLite INTEGER): dropped
        else:
            items = parts if len(parts) > 1 else [p for p in parts if p]
    except OverflowError:  # int(float("inf"))
        return None
    except ValueError:
        return _SLOW
    if not items:
        return None
    return items[0] if len(items) == 1 else items


class HeaderError(ValueError):
    """A header field that cannot be decoded (the message names the field)."""


def header_from_dataset(ds: Dataset) -> dict[str, Any]:
    """The stored header fields of a dataset, as a JSON-able dict keyed by DICOM keyword.

    Numbers that are not finite or absurdly large are dropped; single-valued text fields
    (PatientID, UIDs, descriptions) stay one string even when they contain a backslash.

    Raises
    ------
    HeaderError
        If a stored field cannot be decoded.
    """
    header: dict[str, Any] = {}
    little = ds.original_encoding[1] is not False
    for keyword, tag, dictionary_vr in _HEADER_TAGS:
        try:
            element = ds.get_item(tag)
            if element is None:
                continue
            value: Any = _SLOW
            if isinstance(element, RawDataElement):
                value = _fast_value(element, element.VR or dictionary_vr, little)
            if value is _SLOW:
                value = _jsonable(ds[tag].value)
        except Exception as exc:  # pydicom raises many types on corrupt values
            raise HeaderError(f"unreadable {keyword} ({error_text(exc)})") from exc
        if keyword in _SINGLE_VALUED and isinstance(value, list):
            value = "\\".join("" if v is None else str(v) for v in value)
        if value is not None and value != "" and value != []:
            header[keyword] = value
    if _SHARED_GROUPS in ds or _PER_FRAME_GROUPS in ds:
        try:
            _enhanced_fields(ds, header)
        except Exception as exc:
            raise HeaderError(f"unreadable functional groups ({error_text(exc)})") from exc
    return header

