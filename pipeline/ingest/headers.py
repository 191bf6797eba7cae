"""Reading DICOM headers: header-only file reads, stored header fields, and header access.

A stored header is a JSON-able dict keyed by DICOM keyword (never PatientName or
PatientBirthDate). The accessors (``header_text`` ...) take such a dict or a pydicom Dataset.

This module reads files (:func:`read_header`, :func:`quiet_pydicom`, deflated datasets); the
stored fields and their accessors live in :mod:`pipeline.ingest.header_fields`, the checks of
pixel data against the header in :mod:`pipeline.ingest.pixeldata`, and their public names are
importable from here too.
"""

from __future__ import annotations

import io
import logging
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID

from pipeline.ingest.fast_header import walk_header
from pipeline.ingest.header_fields import (
    _HEADER_TAGS,
    _PER_FRAME_GROUPS,
    _SHARED_GROUPS,
    _UID_KEYWORDS,
    HEADER_KEYWORDS,
    Header,
    HeaderError,
    dicom_time_s,
    error_text,
    header_floats,
    header_from_dataset,
    header_number,
    header_text,
    header_values,
)
from pipeline.ingest.pixeldata import _PIXEL_TAGS, MAX_PIXEL_RATIO, _human, _pixel_problem, _Stream

__all__ = [
    "HEADER_KEYWORDS",
    "MAX_INFLATED_BYTES",
    "MAX_PIXEL_RATIO",
    "NOT_DICOM_REASON",
    "Header",
    "HeaderError",
    "HeaderRead",
    "dicom_time_s",
    "error_text",
    "header_floats",
    "header_from_dataset",
    "header_number",
    "header_text",
    "header_values",
    "quiet_pydicom",
    "read_header",
]

NOT_DICOM_REASON = "not a DICOM file (no DICM preamble)"
#: Largest inflated size (bytes) of a Deflated Explicit VR Little Endian dataset (zip-bomb guard).
MAX_INFLATED_BYTES = 128 * 1024 * 1024
_READ_TAGS: list[BaseTag] = [t for _, t, _ in _HEADER_TAGS] + [_SHARED_GROUPS, _PER_FRAME_GROUPS]
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
#: Characters a UID may hold here: digits and dots, or letters of an anonymiser's hash; no spaces,
#: slashes or controls.
_UID_CHARS = re.compile(r"^[0-9A-Za-z._-]{1,128}$")
_PIXEL_TAG_BYTES = frozenset(struct.pack(f"{e}HH", *t) for t in _PIXEL_TAGS for e in "<>")
_HEAD_BYTES = 65536  # read at once: holds the whole header of almost every file
#: Read plain explicit-VR little-endian headers with the lean walker (pydicom for everything else).
FAST_PATH = True
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class HeaderRead:
    """Outcome of reading one file's header."""

    status: str
    reason: str
    header: dict[str, Any] | None = None


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
            fast = walk_header(head, size) if FAST_PATH and head else None
            if fast is not None:  # the common case, without building a pydicom Dataset
                media_class = fast.media_storage_sop_class_uid
                if media_class == _DICOMDIR_UID:
                    return HeaderRead("ignored", "DICOMDIR (media directory index, not an image)")
                sop_class = UID(media_class)
                ts: UID | None = UID(fast.transfer_syntax_uid)
                position = size if fast.pixel_position is None else fast.pixel_position
                if fast.pixel_position is not None and len(head) == size:
                    fp = io.BytesIO(head)
                fp.seek(position)
                header = fast.header if fast.pixel_position is not None else None
                problem = _pixel_problem(fp, size, header, ts) if header is not None else None
            else:
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
