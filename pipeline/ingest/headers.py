"""Reading DICOM headers: header-only file reads, stored header fields, and header access.

A stored header is a JSON-able dict keyed by DICOM keyword (never PatientName or
PatientBirthDate). The accessors (``header_text`` ...) take such a dict or a pydicom Dataset.
"""

from __future__ import annotations

import io
import logging
import math
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

#: One image's header: a mapping keyed by DICOM keyword, or a pydicom Dataset.
Header = Mapping[str, Any] | Dataset

NOT_DICOM_REASON = "not a DICOM file (no DICM preamble)"

#: Largest ratio of decoded pixel bytes to stored bytes believed per transfer-syntax family:
#: native data cannot be compressed; RLE cannot beat 64:1 (2 bytes per 128-byte run); the
#: JPEG / JPEG-LS / JPEG 2000 families can reach ~2000:1 on blank frames (pydicom's
#: ``JPEG2000.dcm``), so they get a generous bound: an absurd header claims far more.
MAX_PIXEL_RATIO: dict[str, float] = {"native": 1.0, "rle": 64.0, "deflate": 1100.0, "other": 20000.0}
#: Largest inflated size (bytes) of a Deflated Explicit VR Little Endian dataset (zip-bomb guard).
MAX_INFLATED_BYTES = 128 * 1024 * 1024

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
_READ_TAGS: list[BaseTag] = [t for _, t, _ in _HEADER_TAGS] + [_SHARED_GROUPS, _PER_FRAME_GROUPS]
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})  # ASCII-only here
_SLOW = object()
_MAX_INT = 2**53  # larger numbers in a header are corrupt (and overflow SQLite)
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: Single-valued text fields: a backslash inside is part of the value, never a separator.
_SINGLE_VALUED = frozenset({"PatientID", *_UID_KEYWORDS, "SOPClassUID", "FrameOfReferenceUID", "Modality",
                            "SeriesDescription", "ProtocolName", "Manufacturer", "ContrastBolusAgent"})
#: Characters a UID may hold here: digits and dots, or letters of an anonymiser's hash; no spaces,
#: slashes or controls.
_UID_CHARS = re.compile(r"^[0-9A-Za-z._-]{1,128}$")
_PIXEL_TAGS = ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009))  # (float / double float) pixel data
_PIXEL_TAG_BYTES = frozenset(struct.pack(f"{e}HH", *t) for t in _PIXEL_TAGS for e in "<>")
_HEAD_BYTES = 65536  # read at once: holds the whole header of almost every file
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}
_LONG_VR_NAMES = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN"})
_ITEM, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_NATIVE_TS = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_JPEG_LS_TS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
_JPEG_TS = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70)}) | _JPEG_LS_TS
_J2K_TS = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                     "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                     "1.2.840.10008.1.2.4.203"})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK", "XYZ",
})  # fmt: skip
_Stream = BinaryIO | DicomBytesIO
_TRUNCATED_ENCAPSULATED = "truncated: compressed pixel data has no end marker (file cut short?)"


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


# --------------------------------------------------------------------------- pixel data checks


def _human(n: float) -> str:
    """A byte count for people: ``4.3 GB``, ``12 kB``, ``60 B``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} B"


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int
    bits: int
    frames: int
    subsampled: bool = False  # YBR_FULL_422: two chroma samples per pixel pair

    @property
    def nbytes(self) -> int:
        samples = 2 if self.subsampled and self.samples == 3 else self.samples
        return (self.rows * self.columns * samples * self.bits * self.frames + 7) // 8

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        samples = f" x {self.samples} samples" if self.samples > 1 else ""
        return f"{self.rows} x {self.columns}{frames}{samples}, {self.bits}-bit"


def _pixel_geometry(header: dict[str, Any], native: bool) -> _Geometry | str:
    """The image size the stored header fields claim, or why it is unusable."""
    values: dict[str, int] = {}
    missing = []
    for keyword, default in (("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1), ("BitsAllocated", 0),
                             ("NumberOfFrames", 1)):
        number = header_number(header, keyword)
        if number is None and keyword in header:
            return f"{keyword} is not a number: the image size is unknown"
        if number is None and not default:
            missing.append(keyword)
        values[keyword] = default if number is None else int(number)
    photometric = header_text(header, "PhotometricInterpretation").upper()
    if not photometric:
        missing.append("PhotometricInterpretation")
    if missing:
        return f"missing {', '.join(missing)}: the pixel data cannot be decoded"
    if photometric not in _PHOTOMETRIC:
        return f"PhotometricInterpretation {photometric[:20]!r} is not a DICOM value: the pixel data cannot be decoded"
    subsampled = native and photometric == "YBR_FULL_422"
    g = _Geometry(values["Rows"], values["Columns"], values["SamplesPerPixel"], values["BitsAllocated"],
                  values["NumberOfFrames"], subsampled)
    for keyword, value in (("Rows", g.rows), ("Columns", g.columns), ("NumberOfFrames", g.frames)):
        if value <= 0:
            return f"{keyword} is {value}: the image has no pixels"
    if g.bits not in (1, 8, 16, 32, 64):
        return f"BitsAllocated {g.bits} is not 1, 8, 16, 32 or 64: the pixel data cannot be decoded"
    if g.samples not in (1, 3, 4):
        return f"SamplesPerPixel {g.samples} is not 1, 3 or 4: the pixel data cannot be decoded"
    return g


def _pixel_element(fp: _Stream, size: int) -> tuple[int, int, str, bool] | str:
    """(value offset, value length, endianness, explicit VR) of the pixel data element, or a problem.

    The encoding is read from the element itself (pydicom may have switched between implicit
    and explicit VR while reading): pixel VRs are long (4-byte length) and a pixel element's
    length is even, so an implicit length never looks like ``OB``/``OW`` + two zero bytes.
    """
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return f"truncated: the file ends at byte {size} before the pixel data"
    if struct.unpack("<HH", head[:4]) in _PIXEL_TAGS:
        endian = "<"
    elif struct.unpack(">HH", head[:4]) in _PIXEL_TAGS:
        endian = ">"
    else:
        return "unreadable pixel data element (corrupt tag where the pixel data starts)"
    if head[4:6] in _PIXEL_VRS and head[6:8] == b"\x00\x00":
        if len(head) < 12:
            return f"truncated: the file ends at byte {size} before the pixel data"
        return start + 12, struct.unpack(f"{endian}L", head[8:12])[0], endian, True
    return start + 8, struct.unpack(f"{endian}L", head[4:8])[0], endian, False


def _trailing_problem(fp: _Stream, position: int, size: int, endian: str, explicit: bool) -> str | None:
    """Elements after the pixel data must fit in the file (a full read would allocate their length)."""
    for _ in range(10_000):
        fp.seek(position)
        head = fp.read(12)
        if len(head) < 8:
            return None
        if explicit and head[4:6] in _LONG_VR_NAMES:
            if len(head) < 12:
                return None
            length, header = struct.unpack(f"{endian}L", head[8:12])[0], 12
        elif explicit:
            length, header = struct.unpack(f"{endian}H", head[6:8])[0], 8
        else:
            length, header = struct.unpack(f"{endian}L", head[4:8])[0], 8
        if length == 0xFFFFFFFF:
            return None
        if position + header + length > size:
            return (
                f"corrupt element after the pixel data: it claims {_human(length)} but the file ends "
                f"{_human(max(size - position - header, 0))} later"
            )
        position += header + length
    return None


def _fragments(fp: _Stream, start: int, size: int) -> tuple[int, int, bytes, int] | str:
    """Walk encapsulated pixel data: (fragments after the offset table, their bytes, head of the
    first, end position)."""
    position, count, stored, first, table = start, 0, 0, b"", True
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            return _TRUNCATED_ENCAPSULATED
        group, element, length = struct.unpack("<HHL", head)
        if (group, element) == _SEQ_END:
            return count, stored, first, position + 8
        if (group, element) != _ITEM or length == 0xFFFFFFFF:
            return f"corrupt compressed pixel data: no fragment item at byte {position}"
        if position + 8 + length > size:
            return _TRUNCATED_ENCAPSULATED
        if not table:
            if count == 0:
                first = fp.read(min(length, 65536))
            count, stored = count + 1, stored + length
        table = False
        position += 8 + length


def _ratio_problem(g: _Geometry, stored: int, family: str) -> str | None:
    """Refuse a header that claims more pixels than the stored bytes can possibly decode to."""
    ratio = MAX_PIXEL_RATIO[family]
    if g.nbytes <= ratio * max(stored, 1):
        return None
    held = _human(stored) if family == "native" else f"{_human(stored)} of compressed data"
    return (
        f"pixel data claims {_human(g.nbytes)} ({g.describe()}) but the file holds {held}: "
        "the header does not match the pixel data"
    )


def _codestream_problem(ts: UID, first: bytes, g: _Geometry) -> str | None:
    """Check the first compressed frame against the transfer syntax and Rows / Columns."""
    wrong = f"the pixel data is not {ts.name} data: wrong TransferSyntaxUID?"
    size: tuple[int, int] | None = None
    if ts == "1.2.840.10008.1.2.5":
        if len(first) < 64:
            return wrong
        segments, offset = struct.unpack("<LL", first[:8])
        if not 1 <= segments <= 15 or offset != 64:
            return wrong
        if g.bits >= 8 and segments != g.samples * g.bits // 8:
            return f"RLE frame has {segments} segment(s), the header needs {g.samples * g.bits // 8}"
    elif ts in _J2K_TS:
        if first.startswith(b"\xff\x4f\xff\x51") and len(first) >= 24:
            x, y, x0, y0 = struct.unpack(">4L", first[8:24])
            size = (y - y0, x - x0)
        elif not first.startswith(_JP2_SIGNATURE):
            return wrong
    elif ts in _JPEG_TS:
        if not first.startswith(b"\xff\xd8"):
            return wrong
        marker = _jpeg_frame(first)
        if marker is not None:
            is_ls = marker[0] == 0xF7
            if is_ls != (ts in _JPEG_LS_TS):
                return wrong
            size = marker[1:]
    if size is not None and size[0] and size != (g.rows, g.columns):
        return f"compressed frame is {size[0]} x {size[1]} but the header says {g.rows} x {g.columns}"
    return None


def _jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(SOF marker, lines, samples per line) of a JPEG / JPEG-LS stream, None if not found."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            lines, samples = struct.unpack(">HH", data[i + 5 : i + 9])
            return marker, lines, samples
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _pixel_problem(fp: _Stream, size: int, header: dict[str, Any], ts: UID | None) -> str | None:
    """Why the pixel data at the file position cannot be what the header says, or None."""
    element = _pixel_element(fp, size)
    if isinstance(element, str):
        return element
    value_start, length, endian, explicit = element
    walked: tuple[int, int, bytes, int] | None = None
    if length == 0xFFFFFFFF:
        fragments = _fragments(fp, value_start, size)
        if isinstance(fragments, str):
            return fragments
        walked = fragments
    elif value_start + length > size:
        return f"truncated: pixel data needs {length} bytes, the file is {value_start + length - size} bytes short"
    trailing = _trailing_problem(fp, walked[3] if walked else value_start + length, size, endian, explicit)
    if trailing is not None:
        return trailing
    if ts is None or not ts:
        return "no TransferSyntaxUID in the file meta: the pixel data cannot be decoded"
    if ts.type != "Transfer Syntax":
        return f"transfer syntax {str(ts)[:64]!r} is unknown: the pixel data cannot be decoded"
    geometry = _pixel_geometry(header, ts in _NATIVE_TS)
    if isinstance(geometry, str):
        return geometry
    if ts in _NATIVE_TS:
        if walked is not None:
            return f"the pixel data is compressed but the transfer syntax is {ts.name}: wrong TransferSyntaxUID?"
        return _ratio_problem(geometry, length, "native")
    if walked is None:
        return f"{ts.name} needs compressed (encapsulated) pixel data, not uncompressed: wrong TransferSyntaxUID?"
    count, stored, first, _ = walked
    family = {"1.2.840.10008.1.2.5": "rle", "1.2.840.10008.1.2.8.1": "deflate"}.get(str(ts), "other")
    problem = _ratio_problem(geometry, stored, family)
    if problem is None and geometry.frames > count:
        problem = f"NumberOfFrames claims {geometry.frames} frames but the compressed data holds {count} fragment(s)"
    return problem or _codestream_problem(ts, first, geometry)


# --------------------------------------------------------------------------- reading a file


def _inflated_file(fp: BinaryIO, path: Path) -> tuple[DicomBytesIO, int] | str | None:
    """A Deflated Explicit VR Little Endian file as an in-memory Explicit VR Little Endian file.

    None when the file is not deflated after all. Inflates at most ``MAX_INFLATED_BYTES``: a
    small file can expand to gigabytes (a decompression bomb), which is refused with a reason.
    """
    meta = read_file_meta_info(path)
    if str(meta.get("TransferSyntaxUID", "")).strip(" \x00") != _DEFLATED_TS:
        return None
    fp.seek(0)
    preamble = fp.read(128)
    position = 132
    while True:  # skip the (always explicit little-endian) group 0002 elements
        fp.seek(position)
        head = fp.read(12)
        if len(head) < 12 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        if head[4:6] in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            position += 12 + struct.unpack("<L", head[8:12])[0]
        else:
            position += 8 + struct.unpack("<H", head[6:8])[0]
    fp.seek(position)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while chunk := fp.read(1 << 20):
        while chunk:
            out += inflater.decompress(chunk, MAX_INFLATED_BYTES + 1 - len(out))
            if len(out) > MAX_INFLATED_BYTES:
                return (
                    f"deflated dataset expands beyond {_human(MAX_INFLATED_BYTES)} (the file holds "
                    f"{_human(path.stat().st_size)}): refused as a decompression bomb"
                )
            chunk = inflater.unconsumed_tail
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    buffer = DicomBytesIO()
    buffer.write(preamble + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=False)
    buffer.write(bytes(out))
    size = buffer.tell()
    buffer.seek(0)
    return buffer, size


class _CappedReader(io.BufferedReader):
    """A file whose large reads never ask for more than the bytes left.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading: a corrupt element length
    (4 GB in a 4 kB file) would allocate 4 GB inside pydicom. Small reads pass straight through.
    """

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(io.FileIO(path, "r"))
        self._size = size

    def read(self, n: int | None = -1, /) -> bytes:
        if n is not None and n > 65536:
            n = min(n, max(self._size - self.tell(), 0))
        return super().read(n)


class _ThisThreadReading(logging.Filter):
    """Drops pydicom's log records emitted by a thread while it reads a header (see ``quiet_pydicom``)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


_PYDICOM_FILTER = _ThisThreadReading()


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Keep DICOM values out of logs while pydicom reads a file (use it around any dcmread).

    pydicom logs (and warns) invalid values verbatim; in a corrupt header a value can swallow
    any bytes of the file, PatientName included. Inside, pydicom's value validation is off
    (a process-wide pydicom setting, restored on exit) and the "pydicom" logger drops the
    records of the current thread.
    """
    logger = logging.getLogger("pydicom")
    if _PYDICOM_FILTER not in logger.filters:
        logger.addFilter(_PYDICOM_FILTER)
    settings = pydicom.config.settings
    previous, was_on = settings.reading_validation_mode, getattr(_PYDICOM_FILTER.active, "on", False)
    settings.reading_validation_mode = pydicom.config.IGNORE
    _PYDICOM_FILTER.active.on = True
    try:
        yield
    finally:  # restored as found: the context nests
        _PYDICOM_FILTER.active.on = was_on
        settings.reading_validation_mode = previous


def _dcmread(fp: _Stream) -> Dataset:
    return pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_READ_TAGS, force=False)


def _dataset(head: bytes, fp: _Stream, size: int) -> tuple[Dataset, _Stream]:
    """The header dataset, and the stream positioned where it ends (at the pixel data, if any).

    Parsed from the first ``_HEAD_BYTES`` already in memory when they hold the whole header
    (the usual case, and faster than reading through the file); otherwise from the file.
    """
    if head and len(head) == size:
        memory = io.BytesIO(head)
        return _dcmread(memory), memory
    if head:
        memory = io.BytesIO(head)
        try:
            ds = _dcmread(memory)
        except InvalidDicomError:
            raise
        except Exception:  # maybe cut by the end of the head: read the file itself
            ds = None
        end = memory.tell()
        if ds is not None and end + 12 <= len(head) and head[end : end + 4] in _PIXEL_TAG_BYTES:
            fp.seek(end)
            return ds, fp
    fp.seek(0)
    return _dcmread(fp), fp


def _quarantined(reason: str, header: dict[str, Any] | None) -> HeaderRead:
    """Quarantine, keeping the identifiers when known (so the file is attributed to its patient)."""
    return HeaderRead("quarantined", reason, header)


def read_header(path: Path) -> HeaderRead:
    """Read one file's header (no pixels) and decide its file status.

    Never raises for bad content: unreadable files come back ``quarantined`` with the reason,
    and so do images whose header does not match their pixel data (a header claiming
    gigabytes of pixels in a file of kilobytes is refused here, before anything is allocated).
    Quarantined files keep their header fields when they could be read. Nothing read from
    the file reaches a log.
    """
    with quiet_pydicom():
        return _read_header(path)


def _read_header(path: Path) -> HeaderRead:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return HeaderRead("ignored", "not a regular file (FIFO, socket or device)")
        with _CappedReader(path, st.st_size) as raw:
            fp: _Stream = raw
            size = st.st_size
            head = raw.read(_HEAD_BYTES)
            if _DEFLATED_TS.encode() in head[:4096]:
                try:
                    inflated = _inflated_file(raw, path)
                except InvalidDicomError:
                    return HeaderRead("ignored", NOT_DICOM_REASON)
                except (zlib.error, ValueError, struct.error) as exc:
                    return HeaderRead("quarantined", f"deflated dataset cannot be inflated ({error_text(exc)})")
                if isinstance(inflated, str):
                    return HeaderRead("quarantined", inflated)
                if inflated is not None:
                    fp, size = inflated
                    head = b""
            try:
                ds, fp = _dataset(head, fp, size)
            except InvalidDicomError:
                return HeaderRead("ignored", NOT_DICOM_REASON)
            media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
            if media_class == _DICOMDIR_UID:
                return HeaderRead("ignored", "DICOMDIR (media directory index, not an image)")
            sop_class = UID(media_class or str(ds.get("SOPClassUID", "") or ""))
            ts_value = ds.file_meta.get("TransferSyntaxUID")
            ts = UID(str(ts_value).strip(" \x00")) if ts_value is not None else None
            position = fp.tell()
            at_pixels = position < size
            header = header_from_dataset(ds) if at_pixels else None
            problem = _pixel_problem(fp, size, header, ts) if header is not None else None
    except OSError as exc:
        if path.is_symlink() and not path.exists():
            return HeaderRead("quarantined", "cannot read the file: broken symbolic link")
        return HeaderRead("quarantined", f"cannot read the file: {exc.strerror or exc}")
    except HeaderError as exc:
        return HeaderRead("quarantined", f"unreadable DICOM header: {exc}")
    except Exception as exc:  # pydicom raises many types on corrupt input
        return HeaderRead("quarantined", f"unreadable DICOM header ({error_text(exc)})")
    if header is None:
        if "Image Storage" in sop_class.name or sop_class.name == str(sop_class):
            kind = sop_class.name if sop_class.name != str(sop_class) else "image"
            if position > size:  # pydicom skipped an element whose length runs past the end
                return HeaderRead("quarantined", f"corrupt or truncated header: an element of this {kind} "
                                  "claims more bytes than the file holds, no pixel data found")
            return HeaderRead("quarantined", f"truncated: {kind} without pixel data (file cut short?)")
        return HeaderRead("ignored", f"not an image ({sop_class.name})")
    missing = [k for k in ("SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID") if not header.get(k)]
    if missing:
        return _quarantined(f"missing {', '.join(missing)}: cannot place the image in a series", header)
    if not header.get("PatientID"):
        return _quarantined("missing PatientID: cannot link the image to a patient", header)
    for keyword in _UID_KEYWORDS:
        if not _UID_CHARS.match(str(header[keyword])):
            return _quarantined(f"{keyword} holds characters no UID has (corrupt header)", header)
    if problem is not None:
        return _quarantined(problem, header)
    return HeaderRead("indexed", "", header)
