"""Export-folder scan into the catalog (pipeline.ingest.scan, pipeline.ingest.catalog)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ingest_factory import SAGITTAL, make_dataset, write, write_series
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog, parse_da
from pipeline.ingest.headers import NOT_DICOM_REASON, read_header
from pipeline.ingest.scan import scan_export
from pipeline.ingest.volumes import load_dynamic, load_volume

LATER = 4_000_000_000.0  # a "now" long after every file was written
T1 = {
    "ScanningSequence": "SE",
    "SequenceVariant": ["SK", "SP"],
    "RepetitionTime": 550,
    "EchoTime": 12,
    "SeriesDescription": "t1_tse_sag",
}
DCE_PHASE = {
    "ScanningSequence": "GR",
    "SequenceVariant": "SP",
    "ScanOptions": "FS",
    "RepetitionTime": 5,
    "EchoTime": 2,
    "FlipAngle": 12,
    "ContrastBolusAgent": "Gd",
}


def _export(root: Path) -> dict[str, list[Path]]:
    """A small mixed export: two patients, nested folders, noise files."""
    files: dict[str, list[Path]] = {}
    files["t1"] = write_series(
        root / "a" / "b", 4, orientation=SAGITTAL, spacing=4.0, series_uid="1.2.3.1.10", **T1
    )
    files["ct"] = write_series(
        root / "ct",
        3,
        spacing=2.0,
        series_uid="1.2.3.1.20",
        modality="CT",
        StudyInstanceUID="1.2.3.2",
        StudyDate="20210610",
        names=lambda k: f"CT{k}.dcm",
    )
    files["loc"] = [
        write(
            make_dataset(series_uid="1.2.3.1.30", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
            root / "loc" / "x",
        )
    ]
    files["dce"] = []
    for t in range(4):
        files["dce"] += write_series(
            root / "dce" / f"ph{t}",
            3,
            orientation=SAGITTAL,
            spacing=3.0,
            series_uid=f"1.2.3.1.4{t}",
            AcquisitionTime=f"1010{15 * t:02d}",
            SeriesDescription=f"vibe_ph{t}",
            **DCE_PHASE,
        )
    files["other"] = write_series(
        root / "p2", 2, patient_id="P002", series_uid="9.9.1", StudyInstanceUID="9.9", **T1
    )
    (root / "README.txt").write_text("export notes")
    (root / "picture.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    dup = root / "zz_duplicate"
    shutil.copy(files["t1"][0], dup)
    files["dup"] = [dup]
    truncated = root / "cut"
    data = files["ct"][0].read_bytes()
    truncated.write_bytes(data[:-20])
    files["truncated"] = [truncated]
    return files


def _status(catalog: Catalog) -> dict[Path, tuple[str, str]]:
    return {r.path: (r.status, r.reason) for r in catalog.file_accounting()}


@pytest.fixture
def scanned(tmp_path: Path) -> tuple[Path, Catalog, dict[str, list[Path]]]:
    root = tmp_path / "export"
    files = _export(root)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'db' / 'catalog.sqlite'}")
    return root, catalog, files


def test_first_scan_accounts_for_every_file(scanned: tuple[Path, Catalog, dict[str, list[Path]]]) -> None:
    root, catalog, files = scanned
    calls: list[tuple[int, int]] = []
    report = scan_export(root, catalog, now_s=LATER, progress=lambda done, total: calls.append((done, total)))
    n_files = sum(len(v) for v in files.values()) + 2
    assert report.new == n_files and report.changed == report.unchanged == report.deleted == 0
    assert calls[-1] == (n_files, n_files)
    status = _status(catalog)
    assert len(status) == n_files
    assert status[root / "README.txt"] == ("ignored", NOT_DICOM_REASON)
    assert status[root / "picture.jpg"] == ("ignored", NOT_DICOM_REASON)
    assert status[files["truncated"][0]][0] == "quarantined"
    assert status[files["truncated"][0]][1].startswith(
        "truncated: pixel data needs 60 bytes, the file is 20 bytes"
    )
    assert status[files["dup"][0]] == ("ignored", f"duplicate of {files['t1'][0]}")
    assert status[files["loc"][0]][0] == "ignored"
    assert status[files["loc"][0]][1].startswith("localizer series: ImageType=ORIGINAL\\PRIMARY\\LOCALIZER")
    assert all(status[p] == ("indexed", "") for p in files["t1"] + files["ct"] + files["dce"])
    assert (report.quarantined, report.ignored, report.arriving) == (1, 4, 0)
    assert report.changed_patients == ["P001", "P002"]
    assert catalog.patients() == ["P001", "P002"]


def test_series_roles_and_split_dce(scanned: tuple[Path, Catalog, dict[str, list[Path]]]) -> None:
    root, catalog, files = scanned
    scan_export(root, catalog, now_s=LATER)
    series = {s.series_uid: s for s in catalog.series("P001")}
    assert series["1.2.3.1.10"].role is SeriesRole.T1
    assert series["1.2.3.1.10"].n_files == 4  # duplicate not counted
    assert "ScanningSequence=SE" in series["1.2.3.1.10"].role_reason
    assert series["1.2.3.1.20"].role is SeriesRole.CT
    assert series["1.2.3.1.30"].role is SeriesRole.LOCALIZER
    dce = [series[f"1.2.3.1.4{t}"] for t in range(4)]
    assert {s.role for s in dce} == {SeriesRole.DCE}
    assert len({s.dynamic_group for s in dce}) == 1 and dce[0].dynamic_group is not None
    assert [s.dynamic_index for s in dce] == [0, 1, 2, 3]
    assert "(phase 4 of 4)" in dce[3].role_reason
    group = catalog.dynamic_group(dce[0].dynamic_group)
    assert [s.series_uid for s in group] == [f"1.2.3.1.4{t}" for t in range(4)]
    dynamic = load_dynamic(catalog.dynamic_files(dce[0].dynamic_group))
    np.testing.assert_allclose(dynamic.times_s, [0, 15, 30, 45])
    assert series["1.2.3.1.10"].study_date == dt.date(2021, 6, 15)
    studies = catalog.studies("P001")
    assert [(s.study_uid, s.study_date, s.modalities) for s in studies] == [
        ("1.2.3.2", dt.date(2021, 6, 10), ("CT",)),
        ("1.2.3.1", dt.date(2021, 6, 15), ("MR",)),
    ]
    assert catalog.series_record("1.2.3.1.20") is not None and catalog.series_record("nope") is None
    assert len(catalog.series()) == 8
    assert len(catalog.headers("1.2.3.1.10")) == 4
    t1_files = catalog.files("1.2.3.1.10")
    assert len(t1_files) == 4 and files["dup"][0] not in t1_files
    assert load_volume(t1_files).GetSize() == (5, 6, 4)


def test_incremental_rescan(scanned: tuple[Path, Catalog, dict[str, list[Path]]]) -> None:
    root, catalog, files = scanned
    first = scan_export(root, catalog, now_s=LATER)
    again = scan_export(root, catalog, now_s=LATER)
    assert (again.new, again.changed, again.deleted, again.unchanged) == (0, 0, 0, first.new)
    assert again.changed_patients == []

    # change one file, delete the primary of the duplicated instance, add one still being written
    changed = files["other"][0]
    changed.write_bytes(changed.read_bytes() + b"")  # same bytes, new mtime
    os.utime(changed, ns=(1, 1))
    files["t1"][0].unlink()
    late = write(
        make_dataset(series_uid="1.2.3.1.10", position=(99, 0, 0), instance=9), root / "new" / "late"
    )
    now = late.stat().st_mtime + 10
    third = scan_export(root, catalog, now_s=now, quiet_period_s=60)
    assert (third.new, third.changed, third.deleted, third.arriving) == (0, 1, 1, 1)
    assert third.changed_patients == ["P001", "P002"]
    status = _status(catalog)
    assert status[late][0] == "arriving" and "quiet period" in status[late][1]
    assert status[files["dup"][0]] == ("indexed", "")  # the remaining copy takes over
    assert catalog.series_record("1.2.3.1.10") is not None
    assert catalog.series_record("1.2.3.1.10").n_files == 4  # type: ignore[union-attr]

    fourth = scan_export(root, catalog, now_s=now + 120, quiet_period_s=60)
    assert (fourth.new, fourth.changed, fourth.arriving) == (1, 0, 0)
    assert _status(catalog)[late] == ("indexed", "")


def test_read_header_edge_cases(tmp_path: Path) -> None:
    ok = write(make_dataset(), tmp_path / "ok")
    assert read_header(ok).status == "indexed"
    assert "PatientName" not in (read_header(ok).header or {})
    cut = tmp_path / "cut_header"
    cut.write_bytes(ok.read_bytes()[:400])
    result = read_header(cut)
    assert result.status == "quarantined" and "truncated" in result.reason
    no_patient = write(make_dataset(PatientID=None), tmp_path / "nopid")
    assert read_header(no_patient).reason == "missing PatientID: cannot link the image to a patient"
    no_series = write(make_dataset(SeriesInstanceUID=None), tmp_path / "noseries")
    assert read_header(no_series).reason == "missing SeriesInstanceUID: cannot place the image in a series"
    sr = make_dataset()
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    assert read_header(write(sr, tmp_path / "sr")).reason == "not an image (Enhanced SR Storage)"
    rle = make_dataset()
    rle.compress(RLELossless)
    rle_path = write(rle, tmp_path / "rle")
    assert read_header(rle_path).status == "indexed"
    rle_cut = tmp_path / "rle_cut"
    rle_cut.write_bytes(rle_path.read_bytes()[:-12])
    assert "compressed pixel data has no end marker" in read_header(rle_cut).reason
    dicomdir = Dataset()
    from pydicom.dataset import FileMetaDataset

    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    dicomdir.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    dicomdir.FileSetID = "X"
    assert "DICOMDIR" in read_header(write(dicomdir, tmp_path / "DICOMDIR")).reason
    assert read_header(tmp_path / "absent").reason.startswith("cannot read the file")


def test_enhanced_header_mapped_to_classic_fields(tmp_path: Path) -> None:
    from pydicom.sequence import Sequence as DicomSequence

    ds = make_dataset(ScanningSequence=None)
    ds.EchoPulseSequence = "GRADIENT"
    ds.SpectrallySelectedSuppression = "FAT"
    shared, timing = Dataset(), Dataset()
    timing.RepetitionTime = 4.5
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for t in (1, 2, 3):
        item, content = Dataset(), Dataset()
        content.TemporalPositionIndex = t
        item.FrameContentSequence = DicomSequence([content])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    header = read_header(write(ds, tmp_path / "enh")).header or {}
    assert header["ScanningSequence"] == ["GR"] and header["ScanOptions"] == ["FS"]
    assert header["RepetitionTime"] == 4.5 and header["TemporalPositionIndexCount"] == 3


def test_catalog_inside_export_is_skipped_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_series(root, 2)
    catalog = Catalog.open(root / "catalog.sqlite")
    scan_export(root, catalog, now_s=LATER)
    assert all(r.path.name.startswith("img") for r in catalog.file_accounting())
    with pytest.raises(FileNotFoundError, match="export folder not found"):
        scan_export(tmp_path / "missing", catalog)


def test_catalog_urls(tmp_path: Path) -> None:
    Catalog.open(f"sqlite:///{tmp_path}/x/c.sqlite").close()
    assert (tmp_path / "x" / "c.sqlite").exists()
    with Catalog.open("sqlite:///:memory:") as memory:
        assert memory.patients() == [] and memory.status_counts()["indexed"] == 0
    with pytest.raises(ValueError, match="only sqlite:///path"):
        Catalog.open("postgresql://host/db")
    with pytest.raises(ValueError, match="must look like sqlite:///path"):
        Catalog.open("sqlite://relative.db")
    assert parse_da("20210615") == dt.date(2021, 6, 15)
    assert parse_da("2021-06-15") == dt.date(2021, 6, 15)
    assert parse_da("20211345") is None and parse_da("") is None


def test_parallel_header_reading_matches_serial(tmp_path: Path) -> None:
    root = tmp_path / "export"
    files = _export(root)
    serial, parallel = Catalog.open(tmp_path / "s.sqlite"), Catalog.open(tmp_path / "p.sqlite")
    scan_export(root, serial, now_s=LATER, workers=1)
    scan_export(root, parallel, now_s=LATER, workers=2)
    assert _status(serial) == _status(parallel)
    assert len(_status(parallel)) == sum(len(v) for v in files.values()) + 2


def test_implicit_vr_truncation_detected(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write(ds, tmp_path / "implicit")
    assert read_header(path).status == "indexed"
    cut = tmp_path / "implicit_cut"
    cut.write_bytes(path.read_bytes()[:-7])
    assert read_header(cut).reason == "truncated: pixel data needs 60 bytes, the file is 7 bytes short"
