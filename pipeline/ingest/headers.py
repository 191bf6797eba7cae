"""Reading DICOM headers: header-only file reads, stored header fields, and header access.

A stored header is a JSON-able dict keyed by DICOM keyword (never PatientName or
PatientBirthDate). The accessors (``header_text`` ...) take such a dict or a pydicom Dataset.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

#: One image's header: a mapping keyed by DICOM keyword, or a pydicom Dataset.
Header = Mapping[str, Any] | Dataset

NOT_DICOM_REASON = "not a DICOM file (no DICM preamble)"

_KEYWORDS = """
    PatientID StudyInstanceUID SeriesInstanceUID SOPInstanceUID SOPClassUID StudyDate SeriesDate
    AcquisitionDate StudyTime SeriesTime AcquisitionTime AcquisitionDateTime Modality Manufacturer
    ImageType SeriesDescription ProtocolName SeriesNumber InstanceNumber ScanningSequence
    SequenceVariant ScanOptions MRAcquisitionType RepetitionTime EchoTime InversionTime FlipAngle
    ContrastBolusAgent TemporalPositionIdentifier NumberOfTemporalPositions TemporalPositionIndex
    TriggerTime DiffusionBValue ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness
    FrameOfReferenceUID Rows Columns NumberOfFrames RescaleSlope RescaleIntercept EchoPulseSequence
    InversionRecovery SpectrallySelectedSuppression
"""
#: Top-level fields kept per file (never PatientName / PatientBirthDate).
HEADER_KEYWORDS: tuple[str, ...] = tuple(_KEYWORDS.split())
_SHARED_GROUPS = Tag("SharedFunctionalGroupsSequence")
_PER_FRAME_GROUPS = Tag("PerFrameFunctionalGroupsSequence")
_HEADER_TAGS: list[tuple[str, BaseTag, str]] = [(k, Tag(k), dictionary_VR(k)) for k in HEADER_KEYWORDS]
_READ_TAGS: list[BaseTag] = [t for _, t, _ in _HEADER_TAGS] + [_SHARED_GROUPS, _PER_FRAME_GROUPS]
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})  # ASCII-only here
_SLOW = object()
_ENCAPSULATED_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
_DICOMDIR_UID = "1.2.840.10008.1.3.10"


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
    """DICOM TM (``HHMMSS.FFFFFF``, also ``HH:MM:SS``) to seconds after midnight."""
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
    return hours * 3600.0 + minutes * 60.0 + seconds


@dataclass(frozen=True)
class HeaderRead:
    """Outcome of reading one file's header."""

    status: str
    reason: str
    header: dict[str, Any] | None = None


# --------------------------------------------------------------------------- header reading


def _jsonable(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
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
        elif vr == "IS":
            items = [int(float(p)) for p in parts if p]
        else:
            items = parts if len(parts) > 1 else [p for p in parts if p]
    except ValueError:
        return _SLOW
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def header_from_dataset(ds: Dataset) -> dict[str, Any]:
    """The stored header fields of a dataset, as a JSON-able dict keyed by DICOM keyword."""
    header: dict[str, Any] = {}
    little = ds.original_encoding[1] is not False
    for keyword, tag, dictionary_vr in _HEADER_TAGS:
        element = ds.get_item(tag)
        if element is None:
            continue
        value: Any = _SLOW
        if isinstance(element, RawDataElement):
            value = _fast_value(element, element.VR or dictionary_vr, little)
        if value is _SLOW:
            value = _jsonable(ds[tag].value)
        if value is not None and value != "":
            header[keyword] = value
    if _SHARED_GROUPS in ds or _PER_FRAME_GROUPS in ds:
        _enhanced_fields(ds, header)
    return header


def _pixel_data_problem(fp: Any, size: int, implicit: bool, little: bool) -> str | None:
    """Why the pixel data element at the file position is cut short, or None when complete."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return f"truncated: the file ends at byte {size} before the pixel data"
    endian = "<" if little else ">"
    if implicit:
        length = struct.unpack(f"{endian}L", head[4:8])[0]
        offset = 8
    elif head[4:6] in _LONG_VRS:
        length = struct.unpack(f"{endian}L", head[8:12])[0]
        offset = 12
    else:
        length = struct.unpack(f"{endian}H", head[6:8])[0]
        offset = 8
    if length == 0xFFFFFFFF:
        fp.seek(max(start, size - 1024))
        if _ENCAPSULATED_END not in fp.read():
            return "truncated: compressed pixel data has no end marker (file cut short?)"
        return None
    missing = start + offset + length - size
    if missing > 0:
        return f"truncated: pixel data needs {length} bytes, the file is {missing} bytes short"
    return None


def read_header(path: Path) -> HeaderRead:
    """Read one file's header (no pixels) and decide its file status.

    Never raises for bad content: unreadable files come back ``quarantined`` with the reason.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_READ_TAGS, force=False)
            except InvalidDicomError:
                return HeaderRead("ignored", NOT_DICOM_REASON)
            media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
            if media_class == _DICOMDIR_UID:
                return HeaderRead("ignored", "DICOMDIR (media directory index, not an image)")
            sop_class = UID(media_class or str(ds.get("SOPClassUID", "") or ""))
            ts = ds.file_meta.get("TransferSyntaxUID")
            at_pixels = fp.tell() < size
            if at_pixels and ts is not None and not UID(str(ts)).is_deflated:
                ts_uid = UID(str(ts))
                problem = _pixel_data_problem(fp, size, ts_uid.is_implicit_VR, ts_uid.is_little_endian)
                if problem is not None:
                    return HeaderRead("quarantined", problem)
        if not at_pixels:
            if "Image Storage" in sop_class.name or sop_class.name == str(sop_class):
                kind = sop_class.name if sop_class.name != str(sop_class) else "image"
                return HeaderRead("quarantined", f"truncated: {kind} without pixel data (file cut short?)")
            return HeaderRead("ignored", f"not an image ({sop_class.name})")
        header = header_from_dataset(ds)
    except OSError as exc:
        return HeaderRead("quarantined", f"cannot read the file: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many types on corrupt input
        return HeaderRead("quarantined", f"unreadable DICOM header ({type(exc).__name__}: {exc})")
    missing = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID") if not header.get(k)]
    if missing:
        return HeaderRead("quarantined", f"missing {', '.join(missing)}: cannot place the image in a series")
    if not header.get("PatientID"):
        return HeaderRead("quarantined", "missing PatientID: cannot link the image to a patient")
    return HeaderRead("indexed", "", header)
