"""Bad input (issue 3): hostile identifiers, odd files, headers that lie, registry bad rows,
registry patients without images, and patient data kept out of logs."""

from __future__ import annotations

import ast
import datetime as dt
import io
import logging
import os
import re
import shutil
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ingest_factory import make_dataset, write, write_series
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

import pipeline.ingest.headers as headers_module
from pipeline.ingest.catalog import IDENTITY_CONFLICT, Catalog
from pipeline.ingest.headers import NOT_DICOM_REASON, read_header
from pipeline.ingest.registry import RegistryProblem, read_registry
from pipeline.ingest.scan import scan_export
from pipeline.ingest.volumes import load_volume
from pipeline.outputs.paths import SAFE_COMPONENT, safe_path_component

# pydicom warns while these tests write deliberately invalid values, and while it reads garbage
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
    pytest.mark.filterwarnings("ignore:Value .* is not valid for elements:UserWarning"),
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning"),
]
LATER = 4_000_000_000.0  # a "now" long after every file was written
INGEST = Path(__file__).resolve().parents[3] / "pipeline" / "ingest"

HOSTILE = [
    "../../etc/passwd",
    "a/b\\c",  # a slash, and a backslash (the DICOM value separator) inside one value
    "nul\x00byte",
    "line1\nline2\r\nline3",
    "<script>alert(1)</script>",
    "x'); DROP TABLE files;--",
    "..",
    ".",
    "~root",
    "%2e%2e%2f",
]


def _scan(root: Path, catalog: Catalog, **kwargs: object) -> None:
    scan_export(root, catalog, quiet_period_s=0, now_s=LATER, **kwargs)  # type: ignore[arg-type]


def _status(catalog: Catalog) -> dict[Path, tuple[str, str]]:
    return {r.path: (r.status, r.reason) for r in catalog.file_accounting()}


def _tree(root: Path) -> set[Path]:
    return {Path(d, f) for d, dirs, files in os.walk(root) for f in [*files, *dirs]}


# --------------------------------------------------------------------------- identifiers


def test_hostile_identifiers_are_indexed_safely(tmp_path: Path) -> None:
    root, db = tmp_path / "export", tmp_path / "db" / "catalog.sqlite"
    for i, value in enumerate(HOSTILE):
        write_series(
            root / f"p{i}",
            2,
            patient_id=value,
            series_uid=f"1.2.3.{i}.1",
            StudyInstanceUID=f"1.2.3.{i}",
            SeriesDescription=value,
            StudyDescription=value,
            ProtocolName=value,
        )
    catalog = Catalog.open(db)
    before = _tree(tmp_path)
    _scan(root, catalog)
    created = _tree(tmp_path) - before
    assert {p.name for p in created} <= {db.name, db.name + "-wal", db.name + "-shm"}  # nothing built from a header

    # parameterised SQL: the values are stored verbatim, and the tables survived
    assert sorted(catalog.patients()) == sorted(HOSTILE)
    status = _status(catalog)
    assert len(status) == 2 * len(HOSTILE) and {s for s, _ in status.values()} == {"indexed"}
    for i, value in enumerate(HOSTILE):
        (series,) = catalog.series(value)
        assert series.description == value and series.series_uid == f"1.2.3.{i}.1"
        assert len(catalog.files(series.series_uid)) == 2
        assert catalog.unknown_patients([value]) == {}

    # each identifier becomes one safe path component, distinct from the others
    components = set()
    for value in HOSTILE + catalog.patients():
        component = safe_path_component(value)
        assert SAFE_COMPONENT.match(component) and re.fullmatch(r"[A-Za-z0-9._+=@-]+", component)
        assert component not in (".", "..") and not component.startswith(".")
        assert "/" not in component and "\x00" not in component and "\n" not in component
        components.add(component)
    assert len(components) == len(HOSTILE)


#: Names that hold header values or identifiers in pipeline/ingest.
HEADER_NAMES = {
    "header", "headers", "h", "ds", "first", "patient_id", "series_uid", "study_uid", "sop_uid", "summary",
    "description", "PatientID", "PatientName", "PatientBirthDate", "SeriesDescription", "StudyDescription",
}  # fmt: skip
PATH_CALLS = {"Path", "open", "joinpath", "mkdir", "touch", "write_text", "write_bytes", "with_name", "FileIO"}


def _names(node: ast.AST) -> set[str]:
    """Variable and attribute names used in an expression (string constants excluded)."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
        elif isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant):
            out.add(str(sub.slice.value))
    return out


def _calls(module: Path, wanted: Callable[[ast.Call], bool], divisions: bool = False) -> list[tuple[int, set[str]]]:
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and wanted(node):
            names = set().union(*(_names(a) for a in [*node.args, *(k.value for k in node.keywords)]))
            found.append((node.lineno, names))
        if divisions and isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / part
            found.append((node.lineno, _names(node.right)))
    return found


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_path_call(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "join":  # os.path.join, not str.join
        return isinstance(func.value, ast.Attribute) and func.value.attr == "path"
    return _call_name(call) in PATH_CALLS


def test_no_ingest_code_builds_a_path_from_a_header_value() -> None:
    """No path operation of pipeline/ingest takes a header value or an identifier as argument."""
    offenders = []
    for module in sorted(INGEST.glob("*.py")):
        for line, names in _calls(module, _is_path_call, divisions=True):
            if names & HEADER_NAMES:
                offenders.append(f"{module.name}:{line}: {sorted(names & HEADER_NAMES)}")
    assert offenders == []


def test_patient_data_never_reaches_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    name, patient_id, birth = "Zzsecretname^Jehanne", "ZZPID-93715", "19230405"
    root = tmp_path / "export"
    identity = {"patient_id": patient_id, "PatientName": name, "PatientBirthDate": birth}
    files = write_series(root / "t1", 3, series_uid="1.2.9.1", **identity)
    write(make_dataset(series_uid="1.2.9.2", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], **identity), root / "loc")
    shutil.copy(files[0], root / "duplicate")
    (root / "cut").write_bytes(files[1].read_bytes()[:-30])
    # a corrupt length that makes a UID swallow the rest of the header (PatientName included): pydicom
    # would log the whole value while validating it
    data = bytearray(files[2].read_bytes())
    at = data.index(b"\x08\x00\x16\x00UI") + 6  # SOPClassUID length
    data[at : at + 2] = struct.pack("<H", 600)
    (root / "swallowing").write_bytes(bytes(data))
    latin = make_dataset(series_uid="1.2.9.3", patient_id="ZZPID-93715", PatientName="Zzsecretname^Jéhanne")
    latin.SpecificCharacterSet = "ISO_IR 100"
    write(latin, root / "latin1")
    conflict = make_dataset(series_uid="1.2.9.1", patient_id="OTHER-1", PatientName=name, instance=9)
    write(conflict, root / "conflict")
    registry = tmp_path / "treatments.csv"
    registry.write_text(
        f"patient_id,lesion_id,level,procedure_date\n{patient_id},{patient_id}-L4,L4,2021-06-15\n"
        f"{patient_id},{patient_id}-L4,L9,2021-06-15\n"
    )

    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    _scan(root, catalog)
    _scan(root, catalog)  # and a rescan
    lesions = read_registry(registry)
    assert catalog.unknown_patients([les.patient_id for les in lesions.lesions] + ["ZZ-ABSENT"])
    for series in catalog.series(patient_id):
        load_volume(catalog.files(series.series_uid))

    assert len(caplog.records) > 0  # the scan and the registry did log
    for secret in (name, "Zzsecretname", "Jehanne", "Jéhanne", patient_id, birth):
        leaked = [r.getMessage()[:120] for r in caplog.records if secret in r.getMessage()]
        assert leaked == [], (secret, leaked)
    assert not any(secret in str(r.args) for r in caplog.records for secret in (name, patient_id, birth))
    assert "PatientName" not in str(catalog.headers("1.2.9.1")) and birth not in str(catalog.headers("1.2.9.1"))


def test_logging_calls_in_ingest_take_no_patient_fields() -> None:
    """Every logging call of pipeline/ingest: its arguments hold no header value or identifier."""
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    checked = 0
    for module in sorted(INGEST.glob("*.py")):
        for line, names in _calls(module, lambda call: _call_name(call) in levels):
            checked += 1
            assert not names & HEADER_NAMES, f"{module.name}:{line} logs {sorted(names & HEADER_NAMES)}"
        assert "print(" not in module.read_text()
    assert checked >= 4


# --------------------------------------------------------------------------- odd files


def test_fifo_broken_link_undecodable_name_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "export"
    good = write_series(root, 2, series_uid="1.2.5.1")
    os.mkfifo(root / "pipe.dcm")  # reading it would block forever
    os.symlink(root / "nowhere", root / "broken_link")
    os.symlink(good[0], root / "good_link")
    odd_name = os.fsdecode(b"caf\xe9_\xff.dcm")  # not UTF-8: a surrogate-escaped str
    shutil.copy(good[1], root / odd_name)
    (root / "IM0001.dcm").mkdir()  # a directory named like a file
    (root / "empty.dcm").write_bytes(b"")

    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    _scan(root, catalog)
    status = _status(catalog)
    assert status[root / "pipe.dcm"] == ("ignored", "not a regular file (FIFO, socket or device)")
    assert status[root / "broken_link"] == ("quarantined", "cannot read the file: broken symbolic link")
    for copy, original in ((root / "good_link", good[0]), (root / odd_name, good[1])):  # the first path wins
        assert sorted([status[copy][0], status[original][0]]) == ["ignored", "indexed"]
        assert "duplicate of" in status[copy][1] + status[original][1]
    assert status[root / "empty.dcm"] == ("ignored", NOT_DICOM_REASON)
    assert root / "IM0001.dcm" not in status and len(status) == 7
    assert odd_name in {r.path.name for r in catalog.file_accounting()}
    assert len(catalog.files("1.2.5.1")) == 2

    good[1].unlink()  # the undecodable name now holds the only copy
    again = scan_export(root, catalog, quiet_period_s=0, now_s=LATER)
    assert again.deleted == 1 and again.new == 0 and again.changed == 0
    assert root / odd_name in catalog.files("1.2.5.1")
    assert load_volume(catalog.files("1.2.5.1")).GetSize()[2] == 2


def test_future_mtime_is_read_not_left_arriving(tmp_path: Path) -> None:
    root = tmp_path / "export"
    future, fresh = write_series(root, 2, series_uid="1.2.6.1")
    now = time.time()
    os.utime(future, (now + 10 * 86400, now + 10 * 86400))  # a wrong clock, not a file being written
    os.utime(fresh, (now - 5, now - 5))
    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    scan_export(root, catalog, quiet_period_s=60, now_s=now)
    status = _status(catalog)
    assert status[future] == ("indexed", "")
    assert status[fresh][0] == "arriving"


def test_deflated_dataset_read_and_decompression_bomb_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_dataset(SeriesDescription="deflated")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = write(ds, tmp_path / "deflated")
    result = read_header(path)
    assert result.status == "indexed" and result.header and result.header["SeriesDescription"] == "deflated"

    # a 300 kB file inflating to 60 MB (the cap is lowered to 8 MB to keep the test fast)
    monkeypatch.setattr(headers_module, "MAX_INFLATED_BYTES", 8 * 1024 * 1024)
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [packer.compress(b"\x09\x00\x10\x00OB\x00\x00" + struct.pack("<L", 60_000_000))]
    body += [packer.compress(bytes(1_000_000)) for _ in range(60)]
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(buffer.getvalue() + b"".join(body) + packer.flush())
    assert bomb.stat().st_size < 400_000
    tracemalloc.start()
    try:
        result = read_header(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "quarantined"
    assert result.reason.startswith("deflated dataset expands beyond 8.4 MB (the file holds ")
    assert result.reason.endswith("refused as a decompression bomb")
    assert peak < 32 * 1024 * 1024


# --------------------------------------------------------------------------- headers that lie


def _native(**fields: object) -> pydicom.Dataset:
    return make_dataset(pixels=np.zeros((8, 10), np.uint16), **fields)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Rows": 60000, "Columns": 60000}, "pixel data claims 7.2 GB (60000 x 60000, 16-bit) but the file holds 160"),
        ({"NumberOfFrames": "90000"}, "pixel data claims 14.4 MB (8 x 10 x 90000 frames, 16-bit) but the file holds"),
        ({"SamplesPerPixel": 3}, "pixel data claims 480 B (8 x 10 x 3 samples, 16-bit) but the file holds 160 B"),
        ({"BitsAllocated": 12}, "BitsAllocated 12 is not 1, 8, 16, 32 or 64: the pixel data cannot be decoded"),
        ({"SamplesPerPixel": 9}, "SamplesPerPixel 9 is not 1, 3 or 4: the pixel data cannot be decoded"),
        ({"Rows": 0}, "Rows is 0: the image has no pixels"),
        ({"NumberOfFrames": "0"}, "NumberOfFrames is 0: the image has no pixels"),
        ({"Rows": None}, "missing Rows: the pixel data cannot be decoded"),
        ({"Rows": None, "Columns": None}, "missing Rows, Columns: the pixel data cannot be decoded"),
        ({"PhotometricInterpretation": "MONOCHROMEX"}, "PhotometricInterpretation 'MONOCHROMEX' is not a DICOM"),
        ({"PhotometricInterpretation": None}, "missing PhotometricInterpretation: the pixel data cannot be decoded"),
        ({"SeriesInstanceUID": "../1.2.3"}, "SeriesInstanceUID holds characters no UID has (corrupt header)"),
        ({"SOPInstanceUID": "1.2.3\n4"}, "SOPInstanceUID holds characters no UID has (corrupt header)"),
    ],
)
def test_header_that_does_not_match_its_pixels_is_quarantined(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    result = read_header(write(_native(**change), tmp_path / "x"))
    assert result.status == "quarantined"
    assert result.reason.startswith(reason), result.reason


def test_plausible_headers_are_kept(tmp_path: Path) -> None:
    hashed = "05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758"  # an anonymiser's hash
    assert read_header(write(_native(SeriesInstanceUID=hashed), tmp_path / "hash")).status == "indexed"
    ybr = read_header(Path(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")))  # type: ignore[arg-type]
    assert (ybr.status, ybr.reason) == ("indexed", "")  # 4:2:2 pixels are 2/3 of 3 samples: the size is right
    big = make_dataset(pixels=np.zeros((2, 2), np.uint16))
    big.PixelData = bytes(16)  # more bytes than needed (padding): fine
    assert read_header(write(big, tmp_path / "padded")).status == "indexed"


def test_compressed_pixel_data_checked_against_the_header(tmp_path: Path) -> None:
    rle = _native()
    rle.compress(RLELossless)
    ok = write(rle, tmp_path / "rle")
    assert read_header(ok).status == "indexed"

    frames = pydicom.dcmread(ok)
    frames.NumberOfFrames = 5  # five frames claimed, one fragment stored
    reason = read_header(write(frames, tmp_path / "frames")).reason
    assert reason == "NumberOfFrames claims 5 frames but the compressed data holds 1 fragment(s)"

    wide = pydicom.dcmread(ok)
    wide.Rows, wide.Columns = 800, 1000  # 1.6 MB from a ~100-byte RLE stream: beyond RLE's 64:1
    reason = read_header(write(wide, tmp_path / "wide")).reason
    assert re.match(r"pixel data claims 1\.6 MB \(800 x 1000, 16-bit\) but the file holds \d+ B of compressed", reason)

    colour = pydicom.dcmread(ok)
    colour.BitsAllocated = 8  # the RLE stream has 2 byte-segments per pixel, the header now needs 1
    assert read_header(write(colour, tmp_path / "segments")).reason == (
        "RLE frame has 2 segment(s), the header needs 1"
    )

    j2k = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))  # type: ignore[arg-type]
    j2k.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # JPEG 2000 stream labelled JPEG baseline
    assert read_header(write(j2k, tmp_path / "label")).reason == (
        "the pixel data is not JPEG Baseline (Process 1) data: wrong TransferSyntaxUID?"
    )
    j2k = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))  # type: ignore[arg-type]
    j2k.Rows = 32
    assert read_header(write(j2k, tmp_path / "dims")).reason == (
        "compressed frame is 64 x 64 but the header says 32 x 64"
    )


def test_element_length_past_the_end_of_the_file(tmp_path: Path) -> None:
    data = bytearray(write(_native(), tmp_path / "x").read_bytes())
    at = data.index(b"\x10\x00\x10\x00PN") + 6  # PatientName: never read, pydicom seeks past it
    data[at : at + 2] = struct.pack("<H", 0xFFF0)
    (tmp_path / "y").write_bytes(bytes(data))
    assert read_header(tmp_path / "y").reason == (
        "corrupt or truncated header: an element of this MR Image Storage claims more bytes than the file "
        "holds, no pixel data found"
    )


def test_trailing_element_claiming_gigabytes(tmp_path: Path) -> None:
    path = write(_native(), tmp_path / "x")
    path.write_bytes(path.read_bytes() + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<L", 4_000_000_000) + bytes(8))
    assert read_header(path).reason == (
        "corrupt element after the pixel data: it claims 4 GB but the file ends 8 B later"
    )


def test_odd_numbers_and_backslashes_in_headers(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_series(
        root,
        2,
        series_uid="1.2.7.1",
        patient_id="A\\B",  # read back by pydicom as two values: must stay one PatientID
        SeriesNumber="99999999999999999999",  # overflows SQLite INTEGER
        EchoTime="nan",
        RepetitionTime="1e400",
        AcquisitionTime="1010inf",
    )
    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    _scan(root, catalog)
    assert catalog.patients() == ["A\\B"]
    (series,) = catalog.series("A\\B")
    assert series.series_number is None and series.acquisition_time_s is None
    header = catalog.headers("1.2.7.1")[0]
    assert "EchoTime" not in header and "RepetitionTime" not in header and header["PatientID"] == "A\\B"


# --------------------------------------------------------------------------- identity conflicts


def test_series_claimed_by_two_patients(tmp_path: Path) -> None:
    root = tmp_path / "export"
    main = write_series(root / "main", 5, series_uid="1.2.8.1", patient_id="P1")
    stray = write(make_dataset(series_uid="1.2.8.1", patient_id="P1-typo", instance=7), root / "stray")
    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    _scan(root, catalog)
    status = _status(catalog)
    assert status[stray][0] == "quarantined" and status[stray][1].startswith(IDENTITY_CONFLICT)
    assert "differs from that of the 5 other image(s)" in status[stray][1]
    assert all(status[p] == ("indexed", "") for p in main)
    assert catalog.files("1.2.8.1") == sorted(main) and catalog.patients() == ["P1"]
    assert "1 file(s) with this PatientID but no usable series: 1 quarantined (identity conflict" in (
        catalog.unknown_patients(["P1-typo"])["P1-typo"]
    )

    unchanged = scan_export(root, catalog, quiet_period_s=0, now_s=LATER)
    assert unchanged.changed_patients == [] and _status(catalog) == status  # a standing conflict is stable

    merged = write_series(root / "merged", 5, series_uid="1.2.8.1", patient_id="P2", origin=(0, 0, 50))
    _scan(root, catalog)  # 5 vs 5 (+1): a merged patient, nothing from that series is used
    status = _status(catalog)
    assert {status[p][0] for p in [*main, *merged, stray]} == {"quarantined"}
    assert "carry 3 different PatientIDs" in status[main[0]][1]
    assert catalog.series("P1") == [] and catalog.series("P2") == [] and catalog.files("1.2.8.1") == []

    for p in [*merged, stray]:
        p.unlink()
    _scan(root, catalog)  # the conflict is gone: the series comes back
    assert {_status(catalog)[p] for p in main} == {("indexed", "")}
    assert [s.series_uid for s in catalog.series("P1")] == ["1.2.8.1"]


# --------------------------------------------------------------------------- unknown patients


def test_unknown_patients_with_reasons(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_series(root / "a", 2, series_uid="1.2.4.1", patient_id="SION-001")
    write(_native(patient_id="SION-002", Rows=60000, Columns=60000), root / "liar")
    (root / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    _scan(root, catalog)
    unknown = catalog.unknown_patients(["SION-001", "SION-002", "sion 001", "SION-404", "SION-404", "SION-001"])
    assert list(unknown) == ["SION-002", "sion 001", "SION-404"]
    assert unknown["SION-002"].startswith(
        "1 file(s) with this PatientID but no usable series: 1 quarantined (pixel data claims 7.2 GB"
    )
    assert unknown["sion 001"].startswith(
        "no DICOM image with this PatientID in the export folder (similar PatientID 'SION-001' found"
    )
    assert unknown["SION-404"] == (
        "no DICOM image with this PatientID in the export folder; 1 unreadable file(s) in the export could "
        "belong to anyone"
    )
    assert catalog.unknown_patients([]) == {} and catalog.unknown_patients(["SION-001"]) == {}


# --------------------------------------------------------------------------- registry bad rows

REGISTRY = """patient_id,lesion_id,level,procedure_date,notes
P1,P1-L4,L4,2021-06-15,ok
P2,P2-XX,L6,2021-06-15,unknown level
P3,P3-C8,C8,2021-06-15,unknown level
P4,P4-T13,T13,2021-06-15,unknown level
P5,P5-HIP,HIP,2021-06-15,unknown site
P6,P6-L1,L1,2021-02-30,no such day
P7,P7-L1,L1,20210615,compact date
P8,P8-L1,L1,2021-W24-2,week date
P9,P9-L1,L1,15/06/2021,french date
P1,P1-L4,L3,2021-06-16,duplicate
P1,p1-l4,L3,2021-06-16,duplicate ignoring case
,P10-L1,L1,2021-06-15,no patient
P11,,L1,2021-06-15,no lesion
P12,P12-L1,,2021-06-15,no level
P13,P13-L1,L1,,no date
P14,P14-L1
P15,P15-T7,D7,2021-06-15,"a ""quoted"" note"
P16,P16-L1,L1,2021-06-15,"text"after
P17,P17-S1,s1,2021-06-15,last good row
"""


def test_registry_bad_rows_reported_by_line_others_returned(tmp_path: Path) -> None:
    path = tmp_path / "treatments.csv"
    path.write_text(REGISTRY)
    result = read_registry(path)
    assert [(les.lesion_id, les.level) for les in result.lesions] == [
        ("P1-L4", "L4"),
        ("P15-T7", "T7"),
        ("P17-S1", "S1"),
    ]
    assert result.lesions[1].extra["notes"] == 'a "quoted" note'
    problems = {p.line: p.reason for p in result.problems}
    for line in (3, 4, 5, 6):
        assert "is not a vertebral level" in problems[line]
    assert problems[7] == "procedure_date '2021-02-30' is not an ISO date (YYYY-MM-DD)"
    assert problems[8] == "procedure_date '20210615' is not an ISO date (YYYY-MM-DD)"
    assert problems[9] == "procedure_date '2021-W24-2' is not an ISO date (YYYY-MM-DD)"
    assert problems[10] == "procedure_date '15/06/2021' is not an ISO date (YYYY-MM-DD)"
    assert problems[11] == "duplicate lesion_id 'P1-L4' (first on line 2)"
    assert problems[12] == "duplicate lesion_id 'p1-l4' (same as 'P1-L4' when case is ignored) (first on line 2)"
    assert problems[13] == "missing patient_id"
    assert problems[14] == "missing lesion_id"
    assert problems[15] == "missing level"
    assert problems[16] == "missing procedure_date"
    assert problems[17] == "missing level, procedure_date"
    assert problems[19].startswith("unreadable CSV row (")
    assert sorted(problems) == [*range(3, 18), 19] and len(result.problems) == 16
    assert [p.line for p in result.problems] == sorted(p.line for p in result.problems)


def test_registry_encoding_quotes_and_oversized_fields(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("patient_id;lesion_id;level;procedure_date;notes\nP1;P1-L1;L1;2021-06-15;fémur\n".encode("cp1252"))
    result = read_registry(latin)
    assert result.lesions[0].extra["notes"] == "fémur"
    assert result.problems == [
        RegistryProblem(
            2, "the registry is not UTF-8 (first bad byte on this line): read as Windows-1252, check accents"
        )
    ]

    unterminated = tmp_path / "quote.csv"
    unterminated.write_text(
        'patient_id,lesion_id,level,procedure_date,notes\nP1,P1-L1,L1,2021-06-15,"never closed\n'
        "P2,P2-L1,L1,2021-06-15,x\nP3,P3-L1,L1,2021-06-15,y\n"
    )
    result = read_registry(unterminated)
    assert result.lesions == []
    assert result.problems == [
        RegistryProblem(2, "a quote opened on this line is never closed: this line and the 2 after it are unread")
    ]

    huge = tmp_path / "huge.csv"
    huge.write_text(
        "patient_id,lesion_id,level,procedure_date,notes,notes\n"
        f"P1,P1-L1,L1,2021-06-15,{'x' * 200_000},\nP2,P2-L1,L1,2021-06-15,a\x00b,y\n"
    )
    result = read_registry(huge)
    assert [les.lesion_id for les in result.lesions] == ["P2-L1"]
    assert result.lesions[0].extra["notes"] == "y"
    assert result.problems == [
        RegistryProblem(1, "column 'notes' appears more than once: the last one is used"),
        RegistryProblem(2, "unreadable CSV row (field larger than field limit (131072)); row skipped"),
    ]


def test_registry_values_are_text_only(tmp_path: Path) -> None:
    """Hostile identifiers in the registry are kept verbatim (the outputs make them safe)."""
    path = tmp_path / "treatments.csv"
    path.write_text(
        "patient_id,lesion_id,level,procedure_date\n"
        '../../etc,<script>x</script>,L1,2021-06-15\n"a/b","x\'); DROP TABLE files;--",L2,2021-06-15\n'
    )
    result = read_registry(path)
    assert [(les.patient_id, les.lesion_id) for les in result.lesions] == [
        ("../../etc", "<script>x</script>"),
        ("a/b", "x'); DROP TABLE files;--"),
    ]
    assert result.lesions[0].procedure_date == dt.date(2021, 6, 15)
    for les in result.lesions:
        for value in (les.patient_id, les.lesion_id):
            assert SAFE_COMPONENT.match(safe_path_component(value))


def test_read_header_never_raises_on_io_edge_cases(tmp_path: Path) -> None:
    assert read_header(tmp_path / "absent").reason.startswith("cannot read the file")
    directory = tmp_path / "dir.dcm"
    directory.mkdir()
    assert read_header(directory).status == "ignored"
    stream = io.BytesIO()
    _native().save_as(stream, enforce_file_format=True)
    data = stream.getvalue()
    for cut in range(0, len(data), 37):  # every truncation point of a small file
        (tmp_path / "cut").write_bytes(data[:cut])
        result = read_header(tmp_path / "cut")
        assert result.status in ("ignored", "quarantined") and result.reason


def test_unlistable_folder_is_reported_and_its_files_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "export"
    locked = write_series(root / "locked", 2, series_uid="1.2.10.1")
    write_series(root / "open", 2, series_uid="1.2.10.2")
    catalog = Catalog.open(tmp_path / "catalog.sqlite")
    first = scan_export(root, catalog, quiet_period_s=0, now_s=LATER)
    assert first.unlisted_folders == [] and first.new == 4

    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(str(path)) == root / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    again = scan_export(root, catalog, quiet_period_s=0, now_s=LATER)
    assert again.unlisted_folders == [str(root / "locked")]
    assert again.deleted == 0  # a folder we cannot list is not a folder whose files were deleted
    assert set(locked) <= set(_status(catalog)) and len(catalog.files("1.2.10.1")) == 2
