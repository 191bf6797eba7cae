"""What real exports hold besides clean series: junk files, a truncated file, a duplicate, a stranger."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from pipeline.phantom import design as ds
from pipeline.phantom import render as rd
from pipeline.phantom.acquire import Profile
from pipeline.phantom.dicom_writer import VENDOR_STYLES, SeriesSpec, StudySpec, uid, write_series


def add_export_noise(export: Path, first: ds.PatientDesign, seed: int, profile: Profile) -> dict[str, str]:
    """Add the export's noise files; return {relative path: what it is} for the truth."""
    rng = np.random.default_rng([seed, 99])
    files = sorted(p for p in export.rglob("*") if p.is_file())
    noise: dict[str, str] = {}
    (export / "README.txt").write_text("Exported by PACS on request 4711. Do not edit.\n", encoding="utf-8")
    noise["README.txt"] = "non-DICOM text file"
    jpg = files[0].parent / "preview.jpg"
    jpg.write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes() + b"\xff\xd9")
    noise[str(jpg.relative_to(export))] = "non-DICOM JPEG preview"
    src = files[int(rng.integers(0, len(files)))]
    dup = src.parent / f"copy_{src.name}"
    dup.write_bytes(src.read_bytes())
    noise[str(dup.relative_to(export))] = f"duplicate instance of {src.relative_to(export)}"
    src2 = files[int(rng.integers(0, len(files)))]
    data = src2.read_bytes()
    trunc = src2.parent / "0000TRUNC"
    trunc.write_bytes(data[: len(data) // 2])
    noise[str(trunc.relative_to(export))] = f"truncated copy of {src2.relative_to(export)}"
    # an unrelated patient (no registry row): one small sagittal T1 of a plain tissue block
    study = StudySpec(
        patient_id="OTHER-0001", patient_name="STRANGER^UNRELATED", birth_date="19700101", sex="M",
        study_uid=uid(seed, "stranger", "study"), study_date=first.procedure_date + dt.timedelta(days=40),
        study_time=dt.time(14, 0), accession=f"X{seed:05d}", frame_of_reference_uid=uid(seed, "stranger", "frame"),
        description="MR KNEE", vendor=VENDOR_STYLES["SIEMENS"])
    series = SeriesSpec("T1", uid(seed, "stranger", "series"), 3, "t1_tse_sag_knee", "MR",
                        dt.datetime.combine(study.study_date, study.study_time),
                        {"ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "", "RepetitionTime": 500.0,
                         "EchoTime": 12.0, "MRAcquisitionType": "2D", "EchoTrainLength": 1,
                         "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "MagneticFieldStrength": 1.5})
    geom = rd.Geometry.centred(np.zeros(3), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]), 2.0, 64, 64, 4,
                               4.0, 3.5)
    vol = rd.rician(np.full((4, 64, 64), 400.0), 12.0, rng)
    folder = export / "zz_other"
    write_series([folder / f"OT{i:04d}" for i in range(4)], study, series, geom, vol)
    noise["zz_other"] = "unrelated patient OTHER-0001 without registry row"
    return noise
