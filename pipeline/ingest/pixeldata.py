"""Pixel data checked against the header before anything is allocated.

A corrupt or hostile header can claim gigabytes of pixels in a file of kilobytes, pixel data
in a transfer syntax it is not in, or elements longer than the file: :func:`_pixel_problem`
walks the pixel data element (and the encapsulated fragments) in the file, without reading
the pixels, and says why it cannot be what the header claims. Used by
:func:`pipeline.ingest.headers.read_header`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID

from pipeline.ingest.header_fields import header_number, header_text

#: Largest ratio of decoded pixel bytes to stored bytes believed per transfer-syntax family:
#: native data cannot be compressed; RLE cannot beat 64:1 (2 bytes per 128-byte run); the
#: JPEG / JPEG-LS / JPEG 2000 families can reach ~2000:1 on blank frames (pydicom's
#: ``JPEG2000.dcm``), so they get a generous bound: an absurd header claims far more.
MAX_PIXEL_RATIO: dict[str, float] = {"native": 1.0, "rle": 64.0, "deflate": 1100.0, "other": 20000.0}
_PIXEL_TAGS = ((0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009))  # (float / double float) pixel data
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}
_LONG_VR_NAMES = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN"})
_ITEM, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_NATIVE_TS = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
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

