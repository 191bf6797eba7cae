"""A lean header walker for the common case: explicit-VR little-endian datasets held in the head bytes.

It reads, from the bytes :func:`pipeline.ingest.headers.read_header` already holds, the file
meta group and then the dataset's top-level elements up to the pixel data, decoding only the
fields the catalog stores, with the same decoder as :func:`header_from_dataset`. Anything out of
the ordinary (implicit VR, big endian, deflate, an undefined length, functional-group sequences,
a VR that differs from the dictionary's, a value that needs a character set, a header longer than
the head) returns ``None`` and pydicom reads the file as before. A differential test checks that
both paths store the same thing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

from pipeline.ingest.header_fields import (
    _HEADER_TAGS,
    _PER_FRAME_GROUPS,
    _SHARED_GROUPS,
    _SINGLE_VALUED,
    _SLOW,
    _fast_value,
)

_WANTED: dict[int, tuple[str, str]] = {int(tag): (keyword, vr) for keyword, tag, vr in _HEADER_TAGS}
_FALLBACK_TAGS = frozenset({int(_SHARED_GROUPS), int(_PER_FRAME_GROUPS)})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"SV", b"TM", b"UI", b"UL", b"US", b"UV"})
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from
_TAG = struct.Struct("<HH").unpack_from
#: Transfer syntaxes whose dataset is explicit VR little endian but which are not (these are not).
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


@dataclass(frozen=True)
class FastHeader:
    """What the walker found: the file meta values, the stored fields, and where the pixel data starts."""

    media_storage_sop_class_uid: str
    transfer_syntax_uid: str
    header: dict[str, Any]
    pixel_position: int | None  # offset of the pixel data element; None when the file has none


def _element(buf: bytes, pos: int) -> tuple[int, bytes, int, int] | None:
    """(tag, VR, value length, value offset) of the explicit-VR element at ``pos``; None past the buffer."""
    if pos + 8 > len(buf):
        return None
    group, elem = _TAG(buf, pos)
    vr = buf[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            return None
        return group << 16 | elem, vr, _U32(buf, pos + 8)[0], pos + 12
    return group << 16 | elem, vr, _U16(buf, pos + 6)[0], pos + 8


def _ordered(header: dict[str, Any]) -> dict[str, Any]:
    """The fields in the order :func:`header_from_dataset` stores them."""
    return {keyword: header[keyword] for keyword, _tag, _vr in _HEADER_TAGS if keyword in header}


def walk_header(head: bytes, size: int) -> FastHeader | None:
    """Read the stored header fields from ``head`` (the first bytes of a file of ``size`` bytes), or None."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    pos, meta = 132, {}
    while (el := _element(head, pos)) is not None and el[0] >> 16 == 0x0002:
        tag, _vr, length, vpos = el
        if length == 0xFFFFFFFF:
            return None
        meta[tag] = head[vpos : vpos + length].decode("ascii", "replace").strip(" \x00")
        pos = vpos + length
    ts = meta.get(0x00020010, "")
    media_class = meta.get(0x00020002, "")
    if not ts.startswith("1.2.840.10008.1.2") or ts in _NOT_EXPLICIT_LE or not media_class:
        return None
    header: dict[str, Any] = {}
    while True:
        if pos == size == len(head):  # the whole file read, no pixel data
            return FastHeader(media_class, ts, _ordered(header), None)
        el = _element(head, pos)
        if el is None:
            return None  # the header goes on past the head: pydicom reads the file
        tag, vr, length, vpos = el
        if vr not in _SHORT_VRS and vr not in _LONG_VRS:
            return None  # not explicit VR after all (a mislabelled transfer syntax): pydicom decides
        if tag >= 0x7FE00008:
            return FastHeader(media_class, ts, _ordered(header), pos) if tag in _PIXEL_TAGS else None
        if length == 0xFFFFFFFF or tag in _FALLBACK_TAGS or vpos + length > len(head):
            return None
        wanted = _WANTED.get(tag)
        if wanted is not None and length:
            keyword, dictionary_vr = wanted
            if vr.decode("ascii", "replace") != dictionary_vr:
                return None
            raw = RawDataElement(BaseTag(tag), dictionary_vr, length, head[vpos : vpos + length], vpos, False, True)
            value = _fast_value(raw, dictionary_vr, True)
            if value is _SLOW:
                return None
            if keyword in _SINGLE_VALUED and isinstance(value, list):
                value = "\\".join("" if v is None else str(v) for v in value)
            if value is not None and value != "" and value != []:
                header[keyword] = value
        pos = vpos + length
