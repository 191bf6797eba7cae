"""Fuzz the export scan with mutated real and phantom DICOM (issue 3, "Bad input").

A few source files (phantom MR / CT / RLE from ``sample_dicom/export``, pydicom's CT_small,
MR_small, enhanced MR, JPEG 2000 and JPEG-LS files) are mutated with a fixed seed: truncation,
flipped bytes and bits in the header, patched element lengths, deleted required tags, headers
claiming gigabytes of pixels, a wrong TransferSyntaxUID, plus non-DICOM files named ``.dcm``,
empty files and directories named like files. Scanning them must not crash or hang, must stay
within bounded memory, and must account for every file with a reason; a header claiming more
pixels than the file holds must be quarantined before anything is allocated, so that
``load_volume`` is never given such a file.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import struct
import time
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info

from pipeline.ingest.catalog import Catalog
from pipeline.ingest.headers import read_header
from pipeline.ingest.scan import scan_export
from pipeline.ingest.volumes import VolumeError, load_volume

SEED = 20240611
EXPORT = Path(__file__).resolve().parents[3] / "sample_dicom" / "export"
WALL_LIMIT_S = 40.0  # the whole test
PER_FILE_LIMIT_S = 2.0  # one header read
PEAK_LIMIT_BYTES = 300 * 1024 * 1024  # traced peak while scanning and loading

NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
WRONG_TS = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.3.4",  # not a transfer syntax
    "",  # empty
]
REQUIRED = ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows"]
LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ", "UT", "UC", "UR"}


@dataclass(frozen=True)
class Source:
    name: str
    data: bytes
    ts: str
    pixel_offset: int  # where the pixel data element starts
    secrets: tuple[str, ...]  # PatientName and PatientID: must never reach a log


@dataclass(frozen=True)
class Fuzzed:
    path: Path
    kind: str
    source: str
    detail: str = ""


# --------------------------------------------------------------------------- sources


def _first_phantom(kind: Callable[[pydicom.Dataset], bool]) -> Path:
    for path in sorted(p for p in EXPORT.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "PixelData" not in pydicom.dcmread(path, specific_tags=["PixelData"]) or not kind(ds):
            continue
        return path
    raise AssertionError(f"no such phantom file in {EXPORT}")


def _source(name: str, path: Path | str) -> Source:
    """A source file re-saved by pydicom, with a PatientID (emri_small has none)."""
    ds = pydicom.dcmread(path)
    if not str(ds.get("PatientID", "")).strip():
        ds.PatientID = "FUZZ-NO-ID"  # emri_small and its JPEG-LS copy: one series, one patient
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    marker = b"\xe0\x7f\x10\x00" if ds.file_meta.TransferSyntaxUID.is_little_endian else b"\x7f\xe0\x00\x10"
    secrets = tuple(v for v in (str(ds.get("PatientName", "")), str(ds.PatientID)) if len(v) >= 4)
    return Source(name, data, str(ds.file_meta.TransferSyntaxUID), data.rindex(marker), secrets)


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[Source, ...]:
    rle = "1.2.840.10008.1.2.5"
    phantom = {
        "phantom_mr": _first_phantom(lambda ds: ds.Modality == "MR" and ds.file_meta.TransferSyntaxUID != rle),
        "phantom_mr_rle": _first_phantom(lambda ds: ds.Modality == "MR" and ds.file_meta.TransferSyntaxUID == rle),
        "phantom_ct_rle": _first_phantom(lambda ds: ds.Modality == "CT" and ds.file_meta.TransferSyntaxUID == rle),
    }
    test_files = {
        "ct_small": "CT_small.dcm",  # explicit VR little endian CT
        "mr_small": "MR_small.dcm",
        "mr_small_implicit": "MR_small_implicit.dcm",
        "mr_small_big_endian": "MR_small_bigendian.dcm",
        "emri_enhanced": "emri_small.dcm",  # enhanced MR, 10 frames (pydicom-data)
        "mr_j2k": "MR_small_jp2klossless.dcm",
        "emri_jpeg_ls": "emri_small_jpeg_ls_lossless.dcm",
    }
    sources = [_source(name, path) for name, path in phantom.items()]
    sources += [_source(name, get_testdata_file(file)) for name, file in test_files.items()]  # type: ignore[arg-type]
    return tuple(sources)


def _dataset_offset(data: bytes) -> int:
    """Byte offset of the dataset after the (explicit little-endian) file meta group."""
    position = 132
    while struct.unpack("<H", data[position : position + 2])[0] == 0x0002:
        if data[position + 4 : position + 6] in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            position += 12 + struct.unpack("<L", data[position + 8 : position + 12])[0]
        else:
            position += 8 + struct.unpack("<H", data[position + 6 : position + 8])[0]
    return position


def _length_fields(source: Source) -> list[tuple[int, int, str]]:
    """(offset of the length field, its size in bytes, keyword) of the top-level elements."""
    ds = pydicom.dcmread(io.BytesIO(source.data), stop_before_pixels=True)
    implicit, little = ds.original_encoding
    fp = io.BytesIO(source.data)
    fp.seek(_dataset_offset(source.data))
    fields = []
    for element in data_element_generator(fp, bool(implicit), bool(little), defer_size=64):
        if not isinstance(element, RawDataElement) or element.length == 0xFFFFFFFF:
            continue
        size = 4 if implicit or element.VR in LONG_VRS else 2
        keyword = pydicom.datadict.keyword_for_tag(element.tag) or str(element.tag)
        fields.append((element.value_tell - size, size, keyword))
    return fields


# --------------------------------------------------------------------------- mutations


def _with_dataset(source: Source, change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(source.data))
    change(ds)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _with_transfer_syntax(source: Source, ts: str) -> bytes:
    """The same dataset bytes under a file meta that names another transfer syntax."""
    meta = FileMetaDataset(pydicom.dcmread(io.BytesIO(source.data), stop_before_pixels=True).file_meta)
    meta.TransferSyntaxUID = ts
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=False)
    return buffer.getvalue() + source.data[_dataset_offset(source.data) :]


def _drop(keyword: str) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)

    return change


def _absurd(rows: int | None, columns: int | None, frames: int | None) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        if rows is not None and columns is not None:
            ds.Rows, ds.Columns = rows, columns
        if frames is not None:
            ds.NumberOfFrames = frames

    return change


def _mutations(source: Source, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(kind, detail, bytes) of every mutant of one source."""
    data, header_end = source.data, source.pixel_offset
    out: list[tuple[str, str, bytes]] = []
    for cut in [rng.randrange(1, header_end) for _ in range(3)] + [
        rng.randrange(header_end, len(data)) for _ in range(3)
    ]:
        out.append(("truncated", f"at {cut}", data[:cut]))
    for _ in range(6):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutant[rng.randrange(132, header_end)] = rng.randrange(256)
        out.append(("bytes_flipped", "", bytes(mutant)))
    for _ in range(4):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutant[rng.randrange(132, header_end)] ^= 1 << rng.randrange(8)
        out.append(("bits_flipped", "", bytes(mutant)))
    fields = _length_fields(source)
    pixel = [f for f in fields if f[2] == "PixelData"]
    little = source.ts != "1.2.840.10008.1.2.2"
    for offset, size, keyword in [*rng.sample(fields, 5), *pixel[:1]]:
        mutant = bytearray(data)
        old = int.from_bytes(mutant[offset : offset + size], "little" if little else "big")
        new = rng.choice([0, 1, old + 1, old + 2, old * 10 + 1000, (1 << (8 * size)) - 2, (1 << (8 * size)) - 1])
        mutant[offset : offset + size] = (new % (1 << (8 * size))).to_bytes(size, "little" if little else "big")
        out.append(("length_patched", f"{keyword} {old} -> {new}", bytes(mutant)))
    for keyword in REQUIRED:
        out.append(("missing_" + keyword, keyword, _with_dataset(source, _drop(keyword))))
    for rows, columns, frames in ((65535, 65535, 1000), (65535, 65535, None), (None, None, 2_000_000)):
        detail = f"Rows {rows}, Columns {columns}, NumberOfFrames {frames}"
        out.append(("absurd_size", detail, _with_dataset(source, _absurd(rows, columns, frames))))
    trailer = b"\xfc\xff\xfc\xffOB\x00\x00" if little else b"\xff\xfc\xff\xfcOB\x00\x00"
    out.append(("trailing_element", "4 GB after the pixels", data + trailer + b"\xf0\xff\xff\xff" + bytes(16)))
    for ts in rng.sample(WRONG_TS, 5):
        if ts != source.ts:
            out.append(("wrong_ts", ts, _with_transfer_syntax(source, ts)))
    return out


def _build_export(root: Path) -> list[Fuzzed]:
    rng = random.Random(SEED)
    made: list[Fuzzed] = []

    def put(relative: str, data: bytes, kind: str, source: str, detail: str = "") -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made.append(Fuzzed(path, kind, source, detail))

    for source in _sources():
        put(f"{source.name}/original.dcm", source.data, "original", source.name)
        for i, (kind, detail, data) in enumerate(_mutations(source, rng)):
            name = f"{kind}_{i:02d}" + (".dcm" if i % 2 else "")  # with and without extension
            put(f"{source.name}/{rng.choice(['', 'sub/', 'a/b/'])}{name}", data, kind, source.name, detail)
    noise = {
        "random.dcm": rng.randbytes(3000),
        "random_small.dcm": rng.randbytes(7),
        "text.dcm": b"PatientID,StudyDate\nP1,20210615\n",
        "png.dcm": b"\x89PNG\r\n\x1a\n" + rng.randbytes(500),
        "zip.dcm": b"PK\x03\x04" + rng.randbytes(500),
        "json.dcm": b'{"00100020": {"vr": "LO", "Value": ["P1"]}}',
        "dicm_then_garbage.dcm": b"\x00" * 128 + b"DICM" + rng.randbytes(400),
        "preamble_only.dcm": b"\x00" * 128 + b"DICM",
        "dicm_meta_garbage.dcm": b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00" + rng.randbytes(64),
        "nul_bytes.dcm": bytes(4096),
    }
    for name, data in noise.items():
        put(f"noise/{name}", data, "not_dicom", "noise")
    for name in ("empty.dcm", "IM000001", "deep/er/empty.dcm"):
        put(f"empty/{name}", b"", "empty", "empty")
    (root / "dirs" / "IM0001.dcm").mkdir(parents=True)  # an empty directory named like a file
    put("dirs/CT_0002.dcm/inside.dcm", rng.randbytes(100), "not_dicom", "dirs")  # a file inside one
    return made


# --------------------------------------------------------------------------- the test


def test_fuzzed_export_is_scanned_safely(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    root = tmp_path / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fuzzed = _build_export(root)
    assert len(fuzzed) >= 300
    on_disk = sorted(Path(d, f) for d, _, files in os.walk(root) for f in files)
    assert on_disk == sorted(f.path for f in fuzzed)

    # every header read is fast on its own (no hang on any mutant)
    slowest = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in fuzzed:
            t0 = time.monotonic()
            read_header(item.path)
            slowest = max(slowest, time.monotonic() - t0)
    assert slowest < PER_FILE_LIMIT_S, f"one header read took {slowest:.1f} s"

    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = scan_export(root, catalog, quiet_period_s=0, workers=1)
        scan_s = time.monotonic() - t0
        scan_peak = tracemalloc.get_traced_memory()[1]

        accounting = {r.path: r for r in catalog.file_accounting()}
        assert sorted(accounting) == on_disk  # every file, nothing else (the directories are not files)
        outcome = Counter(r.status for r in accounting.values())
        assert set(outcome) <= {"indexed", "ignored", "quarantined"}
        assert sum(outcome.values()) == len(fuzzed) == report.new
        unexplained = [r.path.name for r in accounting.values() if r.status != "indexed" and not r.reason.strip()]
        assert unexplained == []

        by_kind: dict[str, Counter[str]] = {}
        for item in fuzzed:
            by_kind.setdefault(item.kind, Counter())[accounting[item.path].status] += 1
            record = accounting[item.path]
            if item.kind == "trailing_element" and record.status != "ignored":  # ignored: a duplicate
                assert record.status == "quarantined", (item, record.reason)
            if item.kind == "absurd_size":
                assert record.status == "quarantined", (item, record.reason)
                assert record.reason.startswith("pixel data claims"), (item, record.reason)
                assert " GB " in record.reason or " TB " in record.reason, (item, record.reason)
            if item.kind.startswith("missing_"):
                assert record.status == "quarantined", (item, record.reason)
                assert f"missing {item.detail}" in record.reason or item.detail in record.reason, (item, record)
            if item.kind in ("not_dicom", "empty"):
                assert record.status in ("ignored", "quarantined") and record.reason, (item, record)
            if item.kind == "wrong_ts" and ((item.detail in NATIVE_TS) != (_source_ts(fuzzed, item) in NATIVE_TS)):
                assert record.status == "quarantined", (item, record.reason)
            if item.kind == "wrong_ts" and item.detail in ("", "1.2.3.4"):
                assert record.status == "quarantined", (item, record.reason)
            if item.kind == "original":
                assert record.status in ("indexed", "ignored"), (item, record.reason)

        # what load_volume may be given: never a quarantined file, one patient per series
        quarantined = {p for p, r in accounting.items() if r.status == "quarantined"}
        loaded = refused = 0
        tracemalloc.reset_peak()
        for series in catalog.series():
            files = catalog.files(series.series_uid)
            assert files and not set(files) & quarantined
            assert {accounting[p].patient_id for p in files} == {series.patient_id}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_volume(files)
                loaded += 1
            except VolumeError:
                refused += 1
        load_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    parallel = Catalog.open(tmp_path / "parallel.sqlite")  # forked header readers decide the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan_export(root, parallel, quiet_period_s=0, workers=2)
    assert {r.path: (r.status, r.reason) for r in parallel.file_accounting()} == {
        p: (r.status, r.reason) for p, r in accounting.items()
    }
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz: {len(fuzzed)} files, {dict(outcome)}; slowest header {slowest * 1000:.0f} ms; "
        f"scan {scan_s:.1f} s, peak {scan_peak / 1e6:.1f} MB; "
        f"{loaded} series loaded, {refused} refused (peak {load_peak / 1e6:.1f} MB); total {elapsed:.1f} s"
    )
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:28} {dict(counts)}")
    assert scan_peak < PEAK_LIMIT_BYTES and load_peak < PEAK_LIMIT_BYTES
    secrets = {secret for source in _sources() for secret in source.secrets}
    leaks = [r.getMessage()[:200] for r in caplog.records if any(s in r.getMessage() for s in secrets)]
    assert secrets and leaks == []  # no PatientName / PatientID in any log record
    reasons = [r.reason for r in accounting.values()]  # they go to files.csv and the report
    assert not [r for r in reasons if any(secret in r for secret in secrets)]
    assert all(r.isprintable() for r in reasons)
    assert outcome["indexed"] > 0 and outcome["quarantined"] > 0 and outcome["ignored"] > 0
    assert elapsed < WALL_LIMIT_S, f"the fuzz test took {elapsed:.0f} s"


def _source_ts(fuzzed: list[Fuzzed], item: Fuzzed) -> str:
    original = next(f for f in fuzzed if f.kind == "original" and f.source == item.source)
    return str(pydicom.dcmread(original.path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1"])
def test_gigabyte_claim_refused_before_allocation(tmp_path: Path, ts: str) -> None:
    """A small file claiming 4.3 GB of pixels is quarantined by the header read, with both sizes."""
    source = next(s for s in _sources() if s.ts == ts)
    path = tmp_path / "claims.dcm"
    path.write_bytes(_with_dataset(source, _absurd(65535, 32768, 1)))
    tracemalloc.start()
    try:
        result = read_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "quarantined"
    assert result.reason.startswith("pixel data claims 4.3 GB (65535 x 32768, 16-bit) but the file holds ")
    assert " kB" in result.reason and "the header does not match the pixel data" in result.reason
    assert result.header is not None and result.header["PatientID"]  # still attributed to its patient
    assert peak < 20 * 1024 * 1024
