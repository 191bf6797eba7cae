"""The bundled sample cohort: regenerated once, compared byte for byte with ``sample_dicom/``, read back as a
PACS export, validated with dciodvfy, and checked against its own truth.

The sample is generated once per session (module-scoped fixture, ~8 s on 2 cores).
"""

from __future__ import annotations

import csv
import datetime as dt
import filecmp
import itertools
import json
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import RLELossless

from pipeline.phantom.generate import CohortResult, generate_sample
from pipeline.phantom.truth import truth_verdict

DCIODVFY = "/usr/bin/dciodvfy"
REGENERATE_HINT = "if the generator changed on purpose, run `crav phantom --sample --out sample_dicom` and commit"
MAX_SAMPLE_BYTES = 30_000_000  # DESIGN.md: sample_dicom/ targets 30 MB
MASKS = ("vertebra", "cement", "residual", "ablation")
VOLUME_KEYS = {"cement": "cement_volume_ml", "residual": "residual_enhancing_volume_ml",
               "ablation": "ablation_zone_volume_ml"}
REGISTRY_COLUMNS = ["patient_id", "lesion_id", "level", "procedure_date", "primary_tumor", "ebrt_date",
                    "vas_before", "vas_m1", "notes"]
PHASE_SUFFIX = re.compile(r"_ph(\d+)$")


@dataclass
class Noise:
    """The export's documented noise files (truth.json["export_noise"]), as paths relative to export/."""

    non_dicom: list[str] = field(default_factory=list)
    truncated: dict[str, str] = field(default_factory=dict)  # truncated copy -> its source
    duplicate: dict[str, str] = field(default_factory=dict)  # duplicate -> its source
    other_patient_dirs: list[str] = field(default_factory=list)

    @classmethod
    def from_truth(cls, entries: dict[str, str]) -> Noise:
        noise = cls()
        for rel, what in entries.items():
            if what.startswith("non-DICOM"):
                noise.non_dicom.append(rel)
            elif what.startswith("truncated copy of "):
                noise.truncated[rel] = what.removeprefix("truncated copy of ")
            elif what.startswith("duplicate instance of "):
                noise.duplicate[rel] = what.removeprefix("duplicate instance of ")
            elif what.startswith("unrelated patient"):
                noise.other_patient_dirs.append(rel)
            else:
                raise AssertionError(f"undocumented kind of export noise: {rel!r}: {what!r}")
        return noise


@dataclass
class Sample:
    root: Path
    result: CohortResult
    truth: dict[str, Any]
    noise: Noise
    headers: dict[str, FileDataset]  # every clean DICOM file under export/ (relative path -> header)

    @property
    def export(self) -> Path:
        return self.root / "export"


def _rel_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    root = tmp_path_factory.mktemp("phantom") / "sample_dicom"
    result = generate_sample(root, workers=2)
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    noise = Noise.from_truth(truth["export_noise"])
    skip = set(noise.non_dicom) | set(noise.truncated)
    headers = {rel: pydicom.dcmread(root / "export" / rel, stop_before_pixels=True)
               for rel in _rel_files(root / "export") if rel not in skip}
    return Sample(root, result, truth, noise, headers)


def _is_other_patient(sample: Sample, rel: str) -> bool:
    return any(rel.startswith(d.rstrip("/") + "/") for d in sample.noise.other_patient_dirs)


def _cohort_headers(sample: Sample) -> dict[str, FileDataset]:
    """Headers of the cohort's own instances: no stranger, no duplicate."""
    return {rel: ds for rel, ds in sample.headers.items()
            if not _is_other_patient(sample, rel) and rel not in sample.noise.duplicate}


def _seconds(tm: str) -> float:
    t = dt.datetime.strptime(tm.split(".")[0], "%H%M%S")
    frac = float("0." + tm.split(".")[1]) if "." in tm else 0.0
    return t.hour * 3600 + t.minute * 60 + t.second + frac


def _is_dce(ds: FileDataset) -> bool:
    return ds.Modality == "MR" and ds.get("ScanningSequence") == "GR" and "ContrastBolusAgent" in ds


# --- the committed sample is what the generator makes ----------------------------------------------


def test_regenerated_sample_equals_committed_byte_for_byte(sample: Sample, repo_root: Path) -> None:
    committed = repo_root / "sample_dicom"
    assert committed.is_dir(), f"{committed} is missing; {REGENERATE_HINT}"
    ours, theirs = _rel_files(committed), _rel_files(sample.root)
    only_committed = sorted(set(ours) - set(theirs))
    only_regenerated = sorted(set(theirs) - set(ours))
    assert not only_committed and not only_regenerated, (
        f"file lists differ: only in sample_dicom/ {only_committed[:10]} ({len(only_committed)}), only in the "
        f"regenerated sample {only_regenerated[:10]} ({len(only_regenerated)}); {REGENERATE_HINT}")
    differing = [rel for rel in ours if not filecmp.cmp(committed / rel, sample.root / rel, shallow=False)]
    assert not differing, (
        f"{len(differing)} of {len(ours)} files differ from the regenerated sample, first: {differing[:10]}; "
        f"{REGENERATE_HINT}")


def test_committed_sample_fits_the_size_budget(repo_root: Path) -> None:
    files = [p for p in (repo_root / "sample_dicom").rglob("*") if p.is_file()]
    assert files
    total = sum(p.stat().st_size for p in files)
    assert total <= MAX_SAMPLE_BYTES, f"sample_dicom/ holds {total / 1e6:.1f} MB (budget 30 MB)"


def test_cohort_result_counts_every_written_instance(sample: Sample) -> None:
    assert (sample.result.n_patients, sample.result.n_lesions) == (3, 4)
    cohort = _cohort_headers(sample)
    assert len(cohort) == sample.result.n_files, "an instance was overwritten or lost on the way to disk"
    assert len({ds.SOPInstanceUID for ds in cohort.values()}) == len(cohort)


# --- the export reads back -------------------------------------------------------------------------


def test_every_export_file_reads_back_except_documented_noise(sample: Sample) -> None:
    noise = sample.noise
    assert len(noise.non_dicom) >= 2 and len(noise.truncated) == 1 and len(noise.duplicate) == 1
    assert noise.other_patient_dirs
    for rel in [*noise.non_dicom, *noise.truncated, *noise.duplicate, *noise.other_patient_dirs]:
        assert (sample.export / rel).exists(), f"documented noise {rel} is missing"
    n_images = 0
    for rel in _rel_files(sample.export):
        path = sample.export / rel
        if rel in noise.non_dicom:
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path, force=False)
            continue
        if rel in noise.truncated:
            with pytest.raises((ValueError, EOFError, OSError, InvalidDicomError)):
                _ = pydicom.dcmread(path).pixel_array
            continue
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns), rel
        n_images += 1
    assert n_images == len(sample.headers)


def test_truncated_file_is_a_prefix_of_its_source(sample: Sample) -> None:
    for trunc, source in sample.noise.truncated.items():
        data, full = (sample.export / trunc).read_bytes(), (sample.export / source).read_bytes()
        assert 0 < len(data) < len(full) and full.startswith(data)


def test_duplicate_shares_its_sources_sop_instance_uid(sample: Sample) -> None:
    for dup, source in sample.noise.duplicate.items():
        a, b = sample.headers[dup], sample.headers[source]
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert dup != source


def test_unrelated_patient_has_no_registry_row(sample: Sample) -> None:
    with (sample.root / "treatments.csv").open(newline="") as fh:
        registered = {row["patient_id"] for row in csv.DictReader(fh)}
    strangers = {ds.PatientID for rel, ds in sample.headers.items() if _is_other_patient(sample, rel)}
    assert strangers and not strangers & registered


# --- DICOM conformance -----------------------------------------------------------------------------


def test_dciodvfy_finds_no_error_in_any_series_kind(sample: Sample) -> None:
    kinds: dict[tuple[str, str, str, str], str] = {}
    for rel, ds in sample.headers.items():
        kind = (str(ds.get("Manufacturer", "")), ds.Modality,
                PHASE_SUFFIX.sub("", str(ds.get("SeriesDescription", ""))), str(ds.file_meta.TransferSyntaxUID))
        kinds.setdefault(kind, rel)
    assert {k[0] for k in kinds} >= {"SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems"}
    assert {k[1] for k in kinds} == {"MR", "CT"}
    failures = []
    for kind, rel in sorted(kinds.items()):
        proc = subprocess.run([DCIODVFY, str(sample.export / rel)], capture_output=True, text=True, timeout=60,
                              check=False)
        output = proc.stdout + proc.stderr
        iod = {"MR": "MRImage", "CT": "CTImage"}[kind[1]]
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        if errors or iod not in output:
            failures.append(f"--- {kind} {rel} (expected IOD {iod}):\n{output}")
    assert not failures, "dciodvfy reports errors:\n" + "\n".join(failures)


# --- consistent as a PACS export -------------------------------------------------------------------


def test_one_frame_of_reference_per_study_distinct_between_studies(sample: Sample) -> None:
    frames: dict[str, set[str]] = defaultdict(set)
    for ds in sample.headers.values():
        frames[ds.StudyInstanceUID].add(ds.FrameOfReferenceUID)
    assert all(len(f) == 1 for f in frames.values()), {s: f for s, f in frames.items() if len(f) > 1}
    per_study = [next(iter(f)) for f in frames.values()]
    assert len(set(per_study)) == len(per_study), "two studies share a FrameOfReferenceUID"
    truth_studies = {s["study_uid"] for s in sample.truth["studies"]}
    assert truth_studies <= set(frames), "a study of truth.json is missing from the export"


def test_slices_evenly_spaced_along_the_normal(sample: Sample) -> None:
    groups: dict[tuple[str, tuple[float, ...]], list[FileDataset]] = defaultdict(list)
    for ds in _cohort_headers(sample).values():
        groups[(ds.SeriesInstanceUID, tuple(float(x) for x in ds.ImageOrientationPatient))].append(ds)
    n_checked = 0
    for (series_uid, iop), members in groups.items():
        row, col = np.array(iop[:3]), np.array(iop[3:])
        normal = np.cross(row, col)
        assert abs(float(row @ col)) < 1e-5 and np.linalg.norm(normal) == pytest.approx(1.0, abs=1e-5)
        positions = np.unique(np.array([[float(x) for x in ds.ImagePositionPatient] for ds in members]), axis=0)
        if len(positions) == 1:
            assert "LOCALIZER" in members[0].ImageType, f"single-slice series {series_uid} is not a localizer"
            continue
        spacing = float(members[0].SpacingBetweenSlices)
        along = positions @ normal
        order = np.argsort(along)
        np.testing.assert_allclose(np.diff(along[order]), spacing, atol=2e-3, err_msg=series_uid)
        inplane = positions - along[:, None] * normal[None, :]
        np.testing.assert_allclose(inplane, np.broadcast_to(inplane[0], inplane.shape), atol=2e-3,
                                   err_msg=f"{series_uid}: slices are not stacked along the normal")
        repeats = len(members) / len(positions)
        assert repeats == int(members[0].get("NumberOfTemporalPositions", 1)), series_uid
        n_checked += 1
    assert n_checked > 20


def _dce_by_study(sample: Sample) -> dict[str, dict[str, list[FileDataset]]]:
    studies: dict[str, dict[str, list[FileDataset]]] = defaultdict(lambda: defaultdict(list))
    for ds in _cohort_headers(sample).values():
        if _is_dce(ds):
            studies[ds.StudyInstanceUID][ds.SeriesInstanceUID].append(ds)
    return studies


def test_split_dce_has_one_series_per_phase_with_increasing_time(sample: Sample) -> None:
    n_split = 0
    for study_uid, series in _dce_by_study(sample).items():
        first = next(iter(series.values()))[0]
        if first.Manufacturer != "GE MEDICAL SYSTEMS":
            continue
        n_split += 1
        assert len(series) >= 3, f"GE-style study {study_uid} has {len(series)} DCE series"
        phases = []
        for members in series.values():
            match = PHASE_SUFFIX.search(members[0].SeriesDescription)
            assert match, f"split DCE series without phase suffix: {members[0].SeriesDescription!r}"
            assert all("TemporalPositionIdentifier" not in ds for ds in members)
            times = {ds.AcquisitionTime for ds in members}
            assert len(times) == 1
            geometry = sorted(tuple(float(x) for x in ds.ImagePositionPatient) for ds in members)
            phases.append((int(match.group(1)), _seconds(times.pop()), geometry,
                           tuple(members[0].ImageOrientationPatient)))
        phases.sort()
        assert [p[0] for p in phases] == list(range(1, len(phases) + 1))
        assert all(b[1] > a[1] for a, b in itertools.pairwise(phases)), "AcquisitionTime not increasing"
        assert all(p[2] == phases[0][2] and p[3] == phases[0][3] for p in phases), "phases differ in geometry"
    assert n_split >= 3, "the GE-style patient's MR studies hold split DCE"


def test_single_series_dce_has_temporal_positions(sample: Sample) -> None:
    n_single = 0
    for study_uid, series in _dce_by_study(sample).items():
        if len(series) != 1:
            continue
        n_single += 1
        members = next(iter(series.values()))
        n = int(members[0].NumberOfTemporalPositions)
        assert n >= 3
        by_phase: dict[int, list[FileDataset]] = defaultdict(list)
        for ds in members:
            by_phase[int(ds.TemporalPositionIdentifier)].append(ds)
        assert sorted(by_phase) == list(range(1, n + 1)), study_uid
        assert len({len(v) for v in by_phase.values()}) == 1, "every phase has the same slices"
        times = [_seconds(by_phase[k][0].AcquisitionTime) for k in range(1, n + 1)]
        assert all(len({ds.AcquisitionTime for ds in by_phase[k]}) == 1 for k in by_phase)
        assert all(b > a for a, b in itertools.pairwise(times))
    assert n_single >= 6


def test_philips_mr_is_rescaled(sample: Sample) -> None:
    philips = [ds for ds in _cohort_headers(sample).values()
               if ds.Modality == "MR" and ds.Manufacturer == "Philips Medical Systems"]
    assert philips
    for ds in philips:
        assert float(ds.RescaleSlope) != 1.0 and float(ds.RescaleIntercept) == 0.0
    others = [ds for ds in _cohort_headers(sample).values()
              if ds.Modality == "MR" and ds.Manufacturer != "Philips Medical Systems"]
    assert others and all("RescaleSlope" not in ds for ds in others)


def test_some_files_are_rle_lossless(sample: Sample) -> None:
    rle = [ds for ds in sample.headers.values() if ds.file_meta.TransferSyntaxUID == RLELossless]
    assert rle
    assert {ds.Modality for ds in rle} == {"MR", "CT"}
    assert len(rle) < len(sample.headers), "the export mixes transfer syntaxes"


def test_ct_is_axial_hounsfield(sample: Sample) -> None:
    ct = [ds for ds in _cohort_headers(sample).values() if ds.Modality == "CT"]
    assert ct
    for ds in ct:
        assert [float(x) for x in ds.ImageOrientationPatient] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0


# --- truth ----------------------------------------------------------------------------------------


def test_truth_covers_the_documented_cases(sample: Sample) -> None:
    lesions = sample.truth["lesions"]
    assert len(lesions) == 4
    assert len({les["patient_id"] for les in lesions}) == 3
    assert {les["outcome"] for les in lesions} == {"local_control", "local_failure"}
    for les in lesions:
        expected = "M3" if les["outcome"] == "local_failure" else None
        assert les["failure_timepoint"] == expected, les["lesion_id"]
    assert {les["j0_residual"] for les in lesions} == {True, False}
    assert any(les["baseline_fracture"] and les["height_loss"] for les in lesions)


def test_truth_verdicts_follow_the_spec_rule(sample: Sample) -> None:
    for les in sample.truth["lesions"]:
        assert truth_verdict(les) == (les["outcome"], les["failure_timepoint"]), les["lesion_id"]


def test_a_visit_is_missed(sample: Sample) -> None:
    mr_visits: dict[str, set[str]] = defaultdict(set)
    for st in sample.truth["studies"]:
        if st["modality"] == "MR":
            mr_visits[st["patient_id"]].add(st["visit"])
    assert len(mr_visits) == 3
    assert any("M6" not in visits for visits in mr_visits.values()), "some patient has no M6 MR"
    assert all({"PRE", "J0", "M1"} <= visits for visits in mr_visits.values())


def test_truth_studies_match_the_dicom(sample: Sample) -> None:
    by_study: dict[str, FileDataset] = {}
    for ds in _cohort_headers(sample).values():
        by_study.setdefault(ds.StudyInstanceUID, ds)
    assert len(by_study) == len(sample.truth["studies"])
    for st in sample.truth["studies"]:
        ds = by_study[st["study_uid"]]
        assert ds.PatientID == st["patient_id"]
        assert ds.StudyDate == st["study_date"].replace("-", "")
        assert ds.Modality == st["modality"]


def test_truth_masks_exist_and_match_truth_volumes(sample: Sample) -> None:
    n_checked = 0
    for les in sample.truth["lesions"]:
        for visit in les["visits"]:
            folder = sample.root / "truth" / les["lesion_id"] / visit["timepoint"]
            for name in MASKS:
                assert (folder / f"{name}.nii.gz").is_file(), f"missing {folder / name}.nii.gz"
            vertebra = nib.load(folder / "vertebra.nii.gz")
            assert np.asarray(vertebra.dataobj).any(), f"{folder}: empty vertebra mask"
            for name, key in VOLUME_KEYS.items():
                img = nib.load(folder / f"{name}.nii.gz")
                voxel_ml = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0
                volume_ml = float(np.count_nonzero(np.asarray(img.dataobj))) * voxel_ml
                expected = visit[key]
                where = f"{les['lesion_id']} {visit['timepoint']} {name}"
                if not expected:  # None before treatment, 0 for no residual
                    assert volume_ml == 0.0, f"{where}: {volume_ml} mL where truth.json says {expected}"
                else:
                    assert volume_ml == pytest.approx(expected, rel=0.01), where
                    n_checked += 1
    assert n_checked >= 30


def test_registry_rows_match_truth_lesions(sample: Sample) -> None:
    with (sample.root / "treatments.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == REGISTRY_COLUMNS
        rows = list(reader)
    key = ("patient_id", "lesion_id", "level", "procedure_date")
    assert sorted(tuple(r[k] for k in key) for r in rows) == sorted(
        tuple(les[k] for k in key) for les in sample.truth["lesions"])
    for r in rows:
        assert 0 <= int(r["vas_m1"]) <= 10 and 0 <= int(r["vas_before"]) <= 10
        if r["ebrt_date"]:
            assert dt.date.fromisoformat(r["ebrt_date"]) > dt.date.fromisoformat(r["procedure_date"])


# --- truth masks overlay the images -----------------------------------------------------------------


@dataclass
class _Volume:
    origin: np.ndarray  # ImagePositionPatient of the first slice along the normal (LPS mm)
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    pixel_mm: tuple[float, float]  # (between rows, between columns)
    slice_mm: float
    values: np.ndarray  # (slices, rows, cols), real values (rescaled)

    def sample_ras(self, ras_mm: np.ndarray) -> np.ndarray:
        """Nearest-voxel values at RAS points (NIfTI world); all points must fall inside the volume."""
        d = ras_mm * np.array([-1.0, -1.0, 1.0]) - self.origin
        k = np.rint(d @ self.normal / self.slice_mm).astype(int)
        i = np.rint(d @ self.col_dir / self.pixel_mm[0]).astype(int)
        j = np.rint(d @ self.row_dir / self.pixel_mm[1]).astype(int)
        shape = self.values.shape
        inside = (k >= 0) & (k < shape[0]) & (i >= 0) & (i < shape[1]) & (j >= 0) & (j < shape[2])
        assert inside.all(), f"{(~inside).sum()} mask voxels fall outside the series"
        return np.asarray(self.values[k, i, j])


def _load_series(sample: Sample, study_uid: str, role: str) -> _Volume:
    def wanted(ds: FileDataset) -> bool:
        if ds.StudyInstanceUID != study_uid or ds.Modality != "MR" or ds.get("ScanningSequence") != "SE":
            return False
        if role == "T1":
            return "ContrastBolusAgent" not in ds and "InversionTime" not in ds and "LOCALIZER" not in ds.ImageType
        return "ContrastBolusAgent" in ds  # T1_FS_POST

    rels = [rel for rel, ds in _cohort_headers(sample).items() if wanted(ds)]
    assert rels, f"no {role} series in study {study_uid}"
    assert len({sample.headers[r].SeriesInstanceUID for r in rels}) == 1
    dss = [pydicom.dcmread(sample.export / rel) for rel in rels]
    iop = np.array([float(x) for x in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.array([float(x) for x in d.ImagePositionPatient]) @ normal))
    values = np.stack([d.pixel_array * float(d.get("RescaleSlope", 1.0)) + float(d.get("RescaleIntercept", 0.0))
                       for d in dss])
    ps = [float(x) for x in dss[0].PixelSpacing]
    return _Volume(np.array([float(x) for x in dss[0].ImagePositionPatient]), iop[:3], iop[3:], normal,
                   (ps[0], ps[1]), float(dss[0].SpacingBetweenSlices), values)


def _mask_ras(path: Path) -> np.ndarray:
    img = nib.load(path)
    return nib.affines.apply_affine(img.affine, np.argwhere(np.asarray(img.dataobj) > 0))


def test_truth_masks_overlay_the_dicom_images(sample: Sample) -> None:
    """Cement is a signal void on T1 and residual tumour enhances on T1 FS post, where the truth masks say.

    Checks the masks' NIfTI geometry (RAS, per-study patient motion) against the DICOM's (LPS).
    """
    n_checked = 0
    for les in sample.truth["lesions"]:
        for visit in les["visits"]:
            if not visit["cement_volume_ml"]:
                continue
            folder = sample.root / "truth" / les["lesion_id"] / visit["timepoint"]
            where = f"{les['lesion_id']} {visit['timepoint']}"
            t1 = _load_series(sample, visit["study_uid"], "T1")
            cement = float(np.median(t1.sample_ras(_mask_ras(folder / "cement.nii.gz"))))
            ablation = float(np.median(t1.sample_ras(_mask_ras(folder / "ablation.nii.gz"))))
            assert cement < 0.2 * ablation, f"{where}: T1 median {cement:.0f} in cement vs {ablation:.0f} in ablation"
            if visit["residual_enhancing_volume_ml"]:
                post = _load_series(sample, visit["study_uid"], "T1_FS_POST")
                residual = float(np.median(post.sample_ras(_mask_ras(folder / "residual.nii.gz"))))
                zone = float(np.median(post.sample_ras(_mask_ras(folder / "ablation.nii.gz"))))
                assert residual > 2.0 * zone, f"{where}: T1 FS post {residual:.0f} in residual vs {zone:.0f}"
            n_checked += 1
    assert n_checked >= 15
