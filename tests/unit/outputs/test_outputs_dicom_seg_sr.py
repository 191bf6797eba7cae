"""DICOM SEG + SR TID 1500 writers: round trip through the files, codes, determinism, dciodvfy, errors.

The source series is built here: 6 single-frame sagittal MR images tilted 17 degrees, written
in shuffled order under random names; slice k lies at origin + k * 3 mm along the normal, so
the truth (which file is slice k, which voxels each mask holds) comes from that geometry.
Masks are read back with highdicom (by source SOP Instance UID, in the truth's slice order)
and, independently, from the SEG's own frames (pixel data + plane position + segment number).
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr._concepts_dict import concepts
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from pipeline.domain import Lesion, Visit, VisitMeasurement
from pipeline.ingest.volumes import load_volume
from pipeline.outputs import dicom_common, dicom_seg, dicom_sr
from pipeline.outputs.dicom_common import TIME_ATTRIBUTES, time_masked_bytes
from pipeline.outputs.dicom_seg import write_seg
from pipeline.outputs.dicom_sr import write_sr
from pipeline.outputs.palette import STRUCTURES
from pipeline.outputs.tables import format_cell, write_measurements_csv

ANGLE = np.radians(17.0)
IOP = (0.0, float(np.cos(ANGLE)), float(np.sin(ANGLE)), 0.0, -float(np.sin(ANGLE)), float(np.cos(ANGLE)))
NORMAL = np.cross(IOP[:3], IOP[3:])
ORIGIN, GAP_MM, N, ROWS, COLS = np.array([-4.0, -20.0, 30.0]), 3.0, 6, 7, 5
LESION = Lesion("P001", "P001-L1", "L1", dt.date(2021, 6, 1))
LABELS = {s.name: s.label for s in STRUCTURES}


def _image(k: int, study: str, series: str, position: np.ndarray, instance: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P001", "19600101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, study + ".1"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20210901", "101500", "77", "A1"
    ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "MR", "Acme"
    ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = 3, instance, "SPINE"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in IOP]
    ds.PixelSpacing, ds.SliceThickness = ["0.9", "0.8"], "3"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (100 * k + np.arange(ROWS * COLS, dtype=np.uint16)).tobytes()
    return ds


def write_series(folder: Path, offsets_mm: list[float] | None = None, series: str | None = None) -> list[Path]:
    """Files of slices at ``ORIGIN + offset * NORMAL`` (default k * GAP_MM), returned in slice order."""
    rng = np.random.default_rng(7)
    offsets = offsets_mm if offsets_mm is not None else [k * GAP_MM for k in range(N)]
    study, series = "1.2.826.0.1.3680043.8.498.1", series or generate_uid()
    paths = [folder / f"{rng.integers(1 << 40):x}" for _ in offsets]
    folder.mkdir(parents=True, exist_ok=True)
    for k in rng.permutation(len(offsets)):  # written (and numbered) in shuffled order
        _image(int(k), study, series, ORIGIN + offsets[k] * NORMAL, int(rng.integers(1, 99))).save_as(
            paths[k], enforce_file_format=True)
    return paths


def truth_masks() -> dict[str, np.ndarray]:
    """(slice, row, column) boxes; the residual is empty (no residual found)."""
    vertebra, cement = np.zeros((N, ROWS, COLS), bool), np.zeros((N, ROWS, COLS), bool)
    vertebra[1:5, 1:6, 1:4] = True
    cement[2:4, 2:4, 2] = True
    return {"vertebra": vertebra, "cement": cement, "ablation": vertebra & ~cement & (np.arange(N) >= 2)[:, None, None],
            "residual": np.zeros((N, ROWS, COLS), bool)}


def measurement(**changes: object) -> VisitMeasurement:
    values: dict[str, object] = dict(
        patient_id="P001", lesion_id="P001-L1", timepoint=Visit.M3, study_date=dt.date(2021, 9, 1),
        days_from_procedure=92, cement_volume_ml=4.2500001, residual_enhancing_volume_ml=0.0,
        ablation_zone_volume_ml=6.123456789, max_relative_enhancement=0.123456, time_to_peak_s=61.5,
        ktrans_per_min=0.0525, height_anterior_mm=24.51, height_middle_mm=22.1, height_posterior_mm=27.0,
        height_loss_pct=-3.3335, genant_grade=1, registration_error_mm=1.2)
    values.update(changes)
    return VisitMeasurement(**values)  # type: ignore[arg-type]


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's warnings on ``path``; fails on any line starting with Error."""
    exe = shutil.which("dciodvfy")
    assert exe is not None, "dciodvfy (Debian dicom3tools) is not installed"
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    return [line for line in lines if line.startswith("Warning")]


def seg_masks_by_source(path: Path, slice_files: list[Path]) -> dict[str, np.ndarray]:
    """Masks per segment label, through highdicom, source images in the truth's slice order."""
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in slice_files]
    stack = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    return {str(item.SegmentLabel): stack[..., i].astype(bool) for i, item in enumerate(seg.SegmentSequence)}


def seg_masks_by_frames(path: Path) -> dict[str, np.ndarray]:
    """Masks per segment label from the SEG's frames: plane position -> slice (truth geometry)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    out = {str(s.SegmentLabel): np.zeros((N, ROWS, COLS), bool) for s in ds.SegmentSequence}
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        offset = float((ipp - ORIGIN) @ NORMAL)
        k = round(offset / GAP_MM)
        assert abs(offset - k * GAP_MM) < 1e-3 and np.allclose(ipp, ORIGIN + k * GAP_MM * NORMAL, atol=1e-3)
        out[labels[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]][k] = frames[i] > 0
    return out


@pytest.fixture
def series(tmp_path: Path) -> tuple[list[Path], sitk.Image]:
    files = write_series(tmp_path / "t1")
    reference = load_volume(sorted(files))
    assert np.array_equal(sitk.GetArrayFromImage(reference)[:, 0, 0], 100 * np.arange(N))  # slice k is file k
    return files, reference


def _write_pair(out: Path, files: list[Path], reference: sitk.Image, masks: dict[str, np.ndarray] | None = None,
                meas: VisitMeasurement | None = None, timepoint: str = "M3") -> tuple[Dataset, Dataset]:
    seg = write_seg(out / "seg.dcm", files, reference, truth_masks() if masks is None else masks,
                    lesion_id="P001-L1", level="L1", timepoint=timepoint, software_version="9.9.9")
    sr = write_sr(out / "sr.dcm", seg, files, meas or measurement(), lesion=LESION, timepoint=timepoint,
                  software_version="9.9.9")
    return seg, sr


def test_seg_masks_read_back_voxel_for_voxel(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    seg, _ = _write_pair(tmp_path / "out", files, reference)
    path = tmp_path / "out" / "seg.dcm"
    truth = {LABELS[k]: v for k, v in truth_masks().items()}
    for read in (seg_masks_by_source(path, files), seg_masks_by_frames(path)):
        assert list(read) == [LABELS[s.name] for s in STRUCTURES]
        for label, mask in truth.items():
            assert np.array_equal(read[label], mask), label
    back = pydicom.dcmread(path)
    assert (back.ClinicalTrialTimePointID, back.SeriesDescription, int(back.SeriesNumber)) == (
        "M3", "CRAV SEG L1 M3", 9191)
    assert back.SOPInstanceUID == seg.SOPInstanceUID and back.BodyPartExamined == "SPINE"
    # the empty residual is described, with no frame; every other segment has frames
    referenced = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                  for f in back.PerFrameFunctionalGroupsSequence}
    assert referenced == {1, 2, 3} and int(back.SegmentSequence[3].SegmentNumber) == 4
    for item, s in zip(back.SegmentSequence, STRUCTURES, strict=True):
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentationAlgorithmIdentificationSequence
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert max(abs(a - b) for a, b in zip(rgb, s.rgb, strict=True)) <= 1, s.name
        assert item.TrackingUID == dicom_common.tracking_uid("P001", "P001-L1", s.name)
    assert [i.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for i in back.SegmentSequence] == [
        "L1 vertebra", "Acrylic resin", "Necrosis", "Neoplasm"]
    assert dciodvfy(path) == []


def test_absent_or_none_mask_is_no_segment(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    masks: dict[str, np.ndarray | None] = {"cement": truth_masks()["cement"], "residual": None}
    seg = write_seg(tmp_path / "seg.dcm", files, reference, masks, lesion_id="P001-L1", level="L1", timepoint="J0",
                    software_version="1")
    assert [(int(s.SegmentNumber), s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "Cement")]


EXPECTED_GROUP = {  # field -> segment label of its measurement group (residual volume 0: DCE in the ablation zone)
    "height_anterior_mm": "Vertebral body", "height_middle_mm": "Vertebral body",
    "height_posterior_mm": "Vertebral body", "height_loss_pct": "Vertebral body", "genant_grade": "Vertebral body",
    "cement_volume_ml": "Cement", "registration_error_mm": "Cement", "ablation_zone_volume_ml": "Ablation zone",
    "residual_enhancing_volume_ml": "Residual enhancing tissue", "max_relative_enhancement": "Ablation zone",
    "time_to_peak_s": "Ablation zone", "ktrans_per_min": "Ablation zone",
}
UNITS = {"ml": "_ml", "mm": "_mm", "%": "_pct", "s": "_s", "/min": "_per_min", "{ratio}": "enhancement",
         "{grade}": "grade"}


def report(path: Path) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree of an SR file, parsed by highdicom."""
    content = hd.sr.srread(path).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def sr_values(path: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """(group tracking identifier, concept meaning) -> (value, UCUM unit), read with highdicom."""
    content = report(path)
    out = {}
    groups = [*content.get_volumetric_roi_measurement_groups(), *content.get_image_measurement_groups()]
    for group in groups:
        for m in group.get_measurements():
            out[(str(group.tracking_identifier), m.name.meaning)] = (float(m.value), m.unit.value)
    return out


def test_sr_values_equal_the_measurement_and_the_csv(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    meas = measurement()
    seg, _ = _write_pair(tmp_path / "out", files, reference, meas=meas)
    values = sr_values(tmp_path / "out" / "sr.dcm")
    write_measurements_csv(tmp_path / "measurements.csv", [meas])
    with (tmp_path / "measurements.csv").open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    concept = {spec.field: spec.concept.meaning for spec in dicom_sr.SR_MEASUREMENTS}
    assert set(concept) == set(EXPECTED_GROUP)
    for field, label in EXPECTED_GROUP.items():
        value, unit = values.pop((f"P001-L1 {label}", concept[field]))
        assert value == pytest.approx(getattr(meas, field), rel=1e-12, abs=0), field
        assert format_cell(value) == format_cell(getattr(meas, field)) == row[field], field
        assert UNITS[unit] in field, (field, unit)
    assert values == {}
    back = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    assert (back.ClinicalTrialTimePointID, int(back.SeriesNumber), back.PreliminaryFlag) == ("M3", 9192, "PRELIMINARY")
    assert [(c.CodingSchemeDesignator, c.CodingSchemeName) for c in back.CodingSchemeIdentificationSequence] == [
        ("99CRAV", "crav-followup local concepts")]
    parsed = report(tmp_path / "out" / "sr.dcm")
    for group in parsed.get_volumetric_roi_measurement_groups():
        ref = group.referenced_segment
        assert ref is not None and ref.referenced_segment_numbers is not None
        item = seg.SegmentSequence[int(ref.referenced_segment_numbers[0]) - 1]
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.tracking_uid == item.TrackingUID
        assert group.tracking_identifier == f"P001-L1 {item.SegmentLabel}"
    text = {(i.ConceptNameCodeSequence[0].CodeMeaning, i.get("TextValue")) for g in parsed[0].ContentSequence
            for gg in g.get("ContentSequence", []) for i in gg.get("ContentSequence", [])}
    assert ("Time Point", "M3") in text
    warnings = dciodvfy(tmp_path / "out" / "sr.dcm")
    assert warnings and all("<99CRAV>" in w for w in warnings), warnings


def test_sr_placement_follows_what_was_measured(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    masks = {"vertebra": truth_masks()["vertebra"], "residual": truth_masks()["ablation"]}
    meas = measurement(residual_enhancing_volume_ml=0.8, height_middle_mm=None, ktrans_per_min=float("nan"))
    _write_pair(tmp_path, files, reference, masks=masks, meas=meas)
    values = sr_values(tmp_path / "sr.dcm")
    assert values[("P001-L1 Residual enhancing tissue", "Time To Peak")] == (61.5, "s")  # DCE: residual > 0
    assert not any(name in ("Ktrans", "Middle vertebral body height") for _, name in values)  # None / NaN: absent
    parsed = report(tmp_path / "sr.dcm")
    no_roi = parsed.get_image_measurement_groups()  # cement and ablation values, no segment: TID 1501
    assert sorted(str(g.tracking_identifier) for g in no_roi) == ["P001-L1 Ablation zone", "P001-L1 Cement"]
    assert len(parsed.get_volumetric_roi_measurement_groups()) == 2


def test_tracking_uids_follow_the_lesion_across_visits(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    m3 = _write_pair(tmp_path / "m3", files, reference)
    grown = truth_masks()
    grown["residual"][3, 3, 3] = True
    later = _write_pair(tmp_path / "m6", files, reference, masks=grown,
                        meas=measurement(timepoint=Visit.UNSCHEDULED, residual_enhancing_volume_ml=0.1),
                        timepoint="UNSCHEDULED_+45d")
    for a, b in zip(m3, later, strict=True):
        assert a.SOPInstanceUID != b.SOPInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID
    assert [s.TrackingUID for s in m3[0].SegmentSequence] == [s.TrackingUID for s in later[0].SegmentSequence]
    groups = report(tmp_path / "m6" / "sr.dcm").get_volumetric_roi_measurement_groups()
    assert {g.tracking_uid for g in groups} == {s.TrackingUID for s in later[0].SegmentSequence}
    assert later[1].ClinicalTrialTimePointID == "UNSCHEDULED_+45d"


def _fixed_clock(monkeypatch: pytest.MonkeyPatch, when: dt.datetime) -> None:
    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Clock:
            return cls.fromtimestamp(when.timestamp(), tz)

    for module in ("highdicom.base", "highdicom.sr.sop", "highdicom.base_content"):
        monkeypatch.setattr(f"{module}.datetime", types.SimpleNamespace(datetime=Clock, date=dt.date, time=dt.time))


def _flat(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, object]]:
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _flat(item, f"{prefix}{elem.keyword}[{i}].")
        else:
            yield f"{prefix}{elem.keyword or elem.tag}", elem.value


def test_same_content_same_bytes_but_the_clock(tmp_path: Path, series: tuple[list[Path], sitk.Image],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    files, reference = series
    _fixed_clock(monkeypatch, dt.datetime(2030, 1, 2, 3, 4, 5, 600000))
    first = _write_pair(tmp_path / "a", files, reference)
    _fixed_clock(monkeypatch, dt.datetime(2031, 7, 8, 9, 10, 11, 120000))
    second = _write_pair(tmp_path / "b", files, reference)
    for name, a, b in (("seg", first[0], second[0]), ("sr", first[1], second[1])):
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
        pa, pb = tmp_path / "a" / f"{name}.dcm", tmp_path / "b" / f"{name}.dcm"
        assert pa.read_bytes() != pb.read_bytes()
        assert time_masked_bytes(pa) == time_masked_bytes(pb)
        fa, fb = dict(_flat(pydicom.dcmread(pa))), dict(_flat(pydicom.dcmread(pb)))
        differ = {key.rsplit(".", 1)[-1] for key in fa.keys() | fb.keys() if fa.get(key) != fb.get(key)}
        assert differ and differ <= set(TIME_ATTRIBUTES), (name, differ)


def test_changed_content_changes_the_uids(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    seg, sr = _write_pair(tmp_path / "a", files, reference)
    masks = truth_masks()
    masks["cement"][0, 0, 0] = True
    seg2, sr2 = _write_pair(tmp_path / "b", files, reference, masks=masks)
    assert seg2.SOPInstanceUID != seg.SOPInstanceUID and seg2.SeriesInstanceUID != seg.SeriesInstanceUID
    assert sr2.SOPInstanceUID != sr.SOPInstanceUID  # it references another SEG
    _, sr3 = _write_pair(tmp_path / "c", files, reference, meas=measurement(cement_volume_ml=4.26))
    assert sr3.SOPInstanceUID != sr.SOPInstanceUID and sr3.SeriesInstanceUID != sr.SeriesInstanceUID
    _, sr4 = _write_pair(tmp_path / "d", files, reference, meas=measurement(qa_status="accepted"))
    assert sr4.PreliminaryFlag == "FINAL" and sr4.SOPInstanceUID != sr.SOPInstanceUID
    # a re-export that corrects the patient's name: same images, same masks, but another object
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName = "Corrected^Name"
        ds.save_as(path, enforce_file_format=True)
    seg5, sr5 = _write_pair(tmp_path / "e", files, reference)
    assert seg5.PatientName == "Corrected^Name"
    assert seg5.SOPInstanceUID != seg.SOPInstanceUID and sr5.SOPInstanceUID != sr.SOPInstanceUID


def test_every_standard_code_is_the_standard_s() -> None:
    """Each SCT / DCM / LN / UMLS code written exists in pydicom's DICOM code tables with that meaning."""
    known: dict[tuple[str, str], set[str]] = {}
    for scheme, by_keyword in concepts.items():
        for entry in by_keyword.values():
            for value, (meaning, _) in cast(dict[str, tuple[str, list[int]]], entry).items():
                known.setdefault((scheme, value), set()).add(meaning.lower())
    used = [c for name in LABELS for c in dicom_seg.segment_codes(name, "L1")]
    used += [dicom_common.site_code(level) for level in ("C1", "T12", "L5", "S1", "SACRUM", "ILIAC_L", "ACETABULUM_R")]
    used += [spec.concept for spec in dicom_sr.SR_MEASUREMENTS] + [spec.unit for spec in dicom_sr.SR_MEASUREMENTS]
    used += list(dicom_sr._TIME_POINT_TYPES.values())
    for code in used:
        if code.scheme_designator in ("99CRAV", "UCUM"):
            continue
        assert code.meaning.lower() in known.get((code.scheme_designator, code.value), set()), code


# ------------------------------------------------------------------------------------------- errors


def test_mask_errors(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    good = truth_masks()["vertebra"]

    def write(masks: dict[str, np.ndarray | None], **kw: str) -> None:
        args = dict(lesion_id="P001-L1", level="L1", timepoint="M3") | kw
        write_seg(tmp_path / "seg.dcm", files, reference, masks, software_version="1", **args)

    with pytest.raises(ValueError, match=r"mask 'cement' has shape \(6, 5, 7\) but the reference .* \(6, 7, 5\)"):
        write({"cement": np.zeros((N, COLS, ROWS), bool)})
    with pytest.raises(ValueError, match="unknown structure 'tumour'"):
        write({"tumour": good})
    with pytest.raises(ValueError, match="holds values other than 0 and 1"):
        write({"vertebra": good * 2})
    with pytest.raises(ValueError, match="no mask was given"):
        write({"vertebra": None})
    with pytest.raises(ValueError, match="timepoint '' must be 1 to 64 characters"):
        write({"vertebra": good}, timepoint="")
    with pytest.raises(ValueError, match="lesion_id is empty"):
        write({"vertebra": good}, lesion_id=" ")
    with pytest.raises(ValueError, match="level 'Q9' is not a vertebral level"):
        write({"vertebra": good}, level="Q9")
    assert not (tmp_path / "seg.dcm").exists()
    write({"vertebra": good.astype(np.uint8)})  # 0/1 integers are a binary mask
    assert (tmp_path / "seg.dcm").exists()


def test_source_file_errors(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    masks = {"vertebra": truth_masks()["vertebra"]}

    def write(sources: list[Path]) -> None:
        write_seg(tmp_path / "seg.dcm", sources, reference, masks, lesion_id="L", level="L1", timepoint="M3",
                  software_version="1")

    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    off_grid = write_series(tmp_path / "off", [1.5], series=uid)  # half a slice away from slices 0 and 1
    with pytest.raises(ValueError, match="the source images hold 7 slice positions but the reference image has 6"):
        write([*files, *off_grid])
    with pytest.raises(ValueError, match="the source images hold 5 slice positions but the reference image has 6"):
        write([p for k, p in enumerate(files) if k != 3])
    shifted = pydicom.dcmread(files[2])  # slice 2 moved 4 mm within its plane: another field of view
    shifted.ImagePositionPatient = [f"{v:.4f}" for v in ORIGIN + 2 * GAP_MM * NORMAL + 4.0 * np.array(IOP[:3])]
    shifted.save_as(tmp_path / "shifted.dcm")
    with pytest.raises(ValueError, match=r"shifted.dcm: not part of the reference geometry \(at voxel index "
                                         r"\(5.00, 0.00, 2.00\) of a 5x7x6 grid, expected slice 2\)"):
        write([*files[:2], tmp_path / "shifted.dcm", *files[3:]])
    with pytest.raises(ValueError, match="the source files belong to 2 series"):
        write([*files, *write_series(tmp_path / "other", [0.0])])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(ValueError, match=r"junk\.dcm: not a readable DICOM file"):
        write([*files, junk])
    with pytest.raises(ValueError, match="no source image files were given"):
        write([])
    bent = pydicom.dcmread(files[0])
    bent.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    bent.save_as(tmp_path / "bent.dcm")
    with pytest.raises(ValueError, match=r"bent.dcm: not part of the reference geometry \(7x5 pixels, orientation"):
        write([*files[1:], tmp_path / "bent.dcm"])
    lost = pydicom.dcmread(files[0])
    del lost.ImagePositionPatient
    lost.save_as(tmp_path / "lost.dcm")
    with pytest.raises(ValueError, match=r"lost\.dcm: no ImagePositionPatient / ImageOrientationPatient"):
        write([*files[1:], tmp_path / "lost.dcm"])
    multi = pydicom.dcmread(files[0])
    multi.NumberOfFrames = 2
    multi.save_as(tmp_path / "multi.dcm")
    with pytest.raises(ValueError, match="6 files given with a multi-frame image: give the one multi-frame file"):
        write([*files[1:], tmp_path / "multi.dcm"])
    with pytest.raises(ValueError, match="unknown structure 'bone'"):
        dicom_seg.segment_codes("bone", "L1")


def test_sr_errors(tmp_path: Path, series: tuple[list[Path], sitk.Image]) -> None:
    files, reference = series
    seg, _ = _write_pair(tmp_path, files, reference)

    def write(s: Dataset = seg, meas: VisitMeasurement | None = None, lesion: Lesion = LESION, tp: str = "M3",
              sources: list[Path] = files) -> None:
        write_sr(tmp_path / "x.dcm", s, sources, meas or measurement(), lesion=lesion, timepoint=tp,
                 software_version="9.9.9")

    with pytest.raises(ValueError, match="seg is not a DICOM Segmentation"):
        write(s=pydicom.dcmread(files[0], stop_before_pixels=True))
    with pytest.raises(ValueError, match="the measurement is of lesion 'P001-L1' of patient 'P001', not of lesion 'X'"):
        write(lesion=Lesion("P001", "X", "L1", dt.date(2021, 6, 1)))
    with pytest.raises(ValueError, match="timepoint 'M6' does not name the measurement's visit M3"):
        write(tp="M6")
    with pytest.raises(ValueError, match="the SEG is of visit 'M3', not of visit 'UNSCHEDULED_-3d'"):
        write(meas=measurement(timepoint=Visit.UNSCHEDULED), tp="UNSCHEDULED_-3d")
    other = write_seg(tmp_path / "o.dcm", files, reference, truth_masks(), lesion_id="P001-L2", level="L1",
                      timepoint="M3", software_version="9.9.9")
    with pytest.raises(ValueError, match="'Vertebral body' segment was written for another lesion than 'P001-L1'"):
        write(s=other)
    with pytest.raises(ValueError, match="the source files are not"):
        write(sources=write_series(tmp_path / "else", [0.0]))
    assert not (tmp_path / "x.dcm").exists()
