"""Acquire one phantom study: position the patient, plan the series, render and write them as DICOM."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.phantom import anatomy as an
from pipeline.phantom import design as ds
from pipeline.phantom import render as rd
from pipeline.phantom.dicom_writer import VENDOR_STYLES, SeriesSpec, StudySpec, uid, write_series

F64 = NDArray[np.float64]
SAG_ROW = np.array([0.0, 1.0, 0.0])
SAG_COL = np.array([0.0, 0.0, -1.0])
AX_ROW = np.array([1.0, 0.0, 0.0])
AX_COL = np.array([0.0, 1.0, 0.0])
COR_ROW = np.array([1.0, 0.0, 0.0])
COR_COL = np.array([0.0, 0.0, -1.0])
FIRST_NAMES = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL", "INDIA", "JULIETT")


@dataclass(frozen=True)
class Profile:
    """Acquisition sizes: the full cohort and the small bundled sample differ only here."""

    name: str
    sag_matrix: int
    sag_pixel_mm: float
    sag_slices: int
    sag_spacing_mm: float
    sag_thickness_mm: float
    dce_matrix: int
    dce_pixel_mm: float
    dce_slices: int
    dce_spacing_mm: float
    dce_phases: int
    dce_dt_s: float
    ct_matrix: int
    ct_pixel_mm: float
    ct_slices: int
    ct_spacing_mm: float
    compress_roles: tuple[str, ...]


@dataclass(frozen=True)
class Acquisition:
    study_uid: str
    study_date: dt.date
    rotation: F64  # patient -> scanner: P = R p + t
    translation: F64
    n_files: int
    series: dict[str, str]  # role -> SeriesInstanceUID (first phase for split DCE)


class FileNamer:
    """Opaque, deterministic file names in mixed nesting, as PACS exports produce."""

    def __init__(self, root: Path, rng: np.random.Generator) -> None:
        self.root, self.rng = root, rng
        self.study_dir = root / self._hex(8)
        self.style = int(rng.integers(0, 3))
        self.next_number = int(rng.integers(1, 90000))  # IMnnnnnn numbering runs on across the study
        self.used: set[Path] = set()

    def _hex(self, n: int) -> str:
        return "".join(f"{x:x}" for x in self.rng.integers(0, 16, n))

    def series_dir(self) -> Path:
        return self.study_dir / self._hex(6) if self.rng.uniform() < 0.6 else self.study_dir

    def _name(self, folder: Path) -> Path:
        if self.style == 1:
            self.next_number += 1
            return folder / f"IM{self.next_number:06d}"
        return folder / (self._hex(16) if self.style == 0 else f"{self._hex(12)}.dcm")

    def names(self, folder: Path, n: int) -> list[Path]:
        """``n`` new paths in ``folder``, never one already handed out (series share study folders)."""
        out: list[Path] = []
        while len(out) < n:
            path = self._name(folder)
            if path not in self.used:
                self.used.add(path)
                out.append(path)
        return out


def _oblique(rng: np.random.Generator, row: F64, col: F64, max_deg: float) -> tuple[F64, F64]:
    if rng.uniform() < 0.5:
        return row, col
    rot = rd.rotation_xyz(np.array([0.0, 0.0, rng.uniform(-max_deg, max_deg)]))
    return rot @ row, rot @ col


def _study_spec(p: ds.PatientDesign, study: ds.StudyDesign, si: int, frame_uid: str) -> StudySpec:
    date = p.procedure_date + dt.timedelta(days=study.day)
    return StudySpec(
        patient_id=p.patient_id, patient_name=f"PHANTOM^{FIRST_NAMES[p.index % len(FIRST_NAMES)]}",
        birth_date=f"19{50 + p.index % 30:02d}0{1 + p.index % 9}1{p.index % 10}", sex="FM"[p.index % 2],
        study_uid=uid(p.seed, p.patient_id, "study", si), study_date=date,
        study_time=dt.time(8 + si % 9, 10 * (si % 6), 0), accession=f"A{p.seed:03d}{p.index:03d}{si:03d}",
        frame_of_reference_uid=frame_uid,
        description="MR RACHIS" if study.modality == "MR" else "CT RACHIS",
        vendor=VENDOR_STYLES[p.vendor],
    )


def _mr_tags(role: str, vendor: str) -> dict[str, object]:
    v = VENDOR_STYLES[vendor]
    common: dict[str, object] = {"MagneticFieldStrength": 1.5, "ImagingFrequency": 63.87, "MRAcquisitionType": "2D",
                                 "EchoTrainLength": 1, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}
    if role == "T1":
        return {**common, "ScanningSequence": "SE", "SequenceVariant": "SK\\SP", "ScanOptions": "PFP",
                "RepetitionTime": 560.0, "EchoTime": 11.0, "FlipAngle": 150.0, "EchoTrainLength": 3}
    if role == "STIR":
        return {**common, "ScanningSequence": v.stir_sequence, "SequenceVariant": "SK\\SP\\MP",
                "ScanOptions": "IR", "RepetitionTime": 3800.0, "EchoTime": 42.0, "InversionTime": 160.0,
                "FlipAngle": 150.0, "EchoTrainLength": 13}
    if role == "T1_FS_POST":
        return {**common, "ScanningSequence": "SE", "SequenceVariant": "SK\\SP", "ScanOptions": v.scan_options_fs,
                "RepetitionTime": 620.0, "EchoTime": 12.0, "FlipAngle": 150.0, "EchoTrainLength": 3,
                "ContrastBolusAgent": v.contrast_agent, "ContrastBolusRoute": "IV"}
    if role == "DCE":
        return {**common, "ScanningSequence": "GR", "SequenceVariant": v.dce_variant, "ScanOptions": v.scan_options_fs,
                "MRAcquisitionType": "3D", "RepetitionTime": 5.0, "EchoTime": 2.1, "FlipAngle": 12.0,
                "ContrastBolusAgent": v.contrast_agent, "ContrastBolusRoute": "IV"}
    return {**common, "ScanningSequence": "GR", "SequenceVariant": "SP", "ScanOptions": "", "RepetitionTime": 8.6,
            "EchoTime": 4.0, "FlipAngle": 20.0, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}


def _render_mr(frac: NDArray[np.float32], lut: F64, geom: rd.Geometry, rng: np.random.Generator,
               sigma: float) -> F64:
    clean = np.asarray(frac @ lut.astype(np.float32), dtype=np.float64)
    return rd.rician(clean * rd.bias_field(geom, rng), sigma, rng)


def acquire_study(p: ds.PatientDesign, study: ds.StudyDesign, si: int, col: an.Column, labels: NDArray[np.uint8],
                  treated: list[an.Vertebra], out_dir: Path, profile: Profile, rng: np.random.Generator
                  ) -> Acquisition:
    """Reposition the patient, render every series of the study and write it under ``out_dir/export``."""
    rot = rd.rotation_xyz(rng.uniform(-3.0, 3.0, 3))
    trans = rng.uniform(-8.0, 8.0, 3)
    frame_uid = uid(p.seed, p.patient_id, "frame", si)
    spec = _study_spec(p, study, si, frame_uid)
    namer = FileNamer(out_dir / "export", rng)
    centre = rot @ np.mean([v.center_mm for v in treated], axis=0) + trans
    t0 = dt.datetime.combine(spec.study_date, spec.study_time)
    series: dict[str, str] = {}
    n_files = 0
    style = VENDOR_STYLES[p.vendor]

    def emit(role: str, number: int, geom: rd.Geometry, vol: F64, tags: dict[str, object], minutes: float,
             modality: str = "MR", per_slice: list[dict[str, object]] | None = None, series_uid: str | None = None,
             description: str | None = None, offset: int = 0) -> None:
        nonlocal n_files
        suid = series_uid or uid(spec.study_uid, "series", number)
        default = (VENDOR_STYLES["SIEMENS"] if modality == "CT" else style).descriptions[role]
        sspec = SeriesSpec(role, suid, number, description or default, modality,
                           t0 + dt.timedelta(minutes=minutes), tags)
        n = vol.shape[0]
        paths = namer.names(namer.series_dir(), n)
        compress = role in profile.compress_roles and (profile.name == "sample" or p.index % 3 == 2)
        write_series(paths, spec, sspec, geom, vol, per_slice_tags=per_slice, compress=compress,
                     instance_offset=offset)
        series.setdefault(role, suid)
        n_files += n

    if study.modality == "CT":
        geom = rd.Geometry.centred(centre + np.array([0, 15.0, 0]), AX_ROW, AX_COL, profile.ct_pixel_mm,
                                   profile.ct_matrix, profile.ct_matrix, profile.ct_slices, profile.ct_spacing_mm,
                                   profile.ct_spacing_mm)
        frac = rd.label_fractions(geom, labels, col, rot, trans)
        lut = rd.ct_lut(float(rng.uniform(1800, 3000)), float(rng.uniform(150, 250)), float(rng.uniform(1000, 1400)))
        vol = np.asarray(frac @ lut.astype(np.float32), np.float64) + rng.normal(0, 12.0, frac.shape[:3])
        emit("CT", 2, geom, vol, {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": 120,
                                  "ConvolutionKernel": "B60f", "AcquisitionNumber": 1}, 2.0, modality="CT")
        return Acquisition(spec.study_uid, spec.study_date, rot, trans, n_files, series)

    # localizer: three orthogonal single images in one series
    loc_uid = uid(spec.study_uid, "series", 1)
    for i, (r, c) in enumerate(((SAG_ROW, SAG_COL), (COR_ROW, COR_COL), (AX_ROW, AX_COL))):
        g = rd.Geometry.centred(centre, r, c, 3.0, 96, 96, 1, 8.0, 8.0)
        f = rd.label_fractions(g, labels, col, rot, trans, sub=(1, 1, 2))
        emit("LOCALIZER", 1, g, _render_mr(f, rd.LOCALIZER_LUT, g, rng, 10.0), _mr_tags("LOCALIZER", p.vendor),
             0.5, series_uid=loc_uid, offset=i)
    row, colv = _oblique(rng, SAG_ROW, SAG_COL, 4.0)
    sag = rd.Geometry.centred(centre + np.array([0, 12.0, 0]), row, colv, profile.sag_pixel_mm,
                              profile.sag_matrix, profile.sag_matrix, profile.sag_slices, profile.sag_spacing_mm,
                              profile.sag_thickness_mm)
    frac = rd.label_fractions(sag, labels, col, rot, trans)
    emit("T1", 2, sag, _render_mr(frac, rd.T1_LUT, sag, rng, 12.0), _mr_tags("T1", p.vendor), 3.0)
    emit("STIR", 3, sag, _render_mr(frac, rd.STIR_LUT, sag, rng, 12.0), _mr_tags("STIR", p.vendor), 7.0)
    # DCE: 3D spoiled gradient echo, cropped around the treated level(s)
    dce = rd.Geometry.centred(centre + np.array([0, 5.0, 0]), row, colv, profile.dce_pixel_mm, profile.dce_matrix,
                              profile.dce_matrix, profile.dce_slices, profile.dce_spacing_mm, profile.dce_spacing_mm)
    dfrac = rd.label_fractions(dce, labels, col, rot, trans)
    params = rd.DCE_PARAMS.copy()
    prng = np.random.default_rng([p.seed, p.index, 41])
    tumour = (1.0, 1200.0, prng.uniform(0.15, 0.35), prng.uniform(0.3, 0.4), prng.uniform(0.03, 0.06))
    params[an.TUMOUR] = params[an.RESIDUAL] = tumour
    n_pre = int(rng.integers(3, 6)) if profile.dce_phases >= 20 else 3
    times = np.arange(profile.dce_phases, dtype=np.float64) * profile.dce_dt_s
    injection = (n_pre - 0.5) * profile.dce_dt_s + float(rng.uniform(-2.0, 2.0))
    curves = rd.dce_curves(params, times, injection, 5.0, 12.0) * 10000.0  # (L, T)
    bias = rd.bias_field(dce, rng)
    flat = dfrac.reshape(-1, an.N_LABELS).astype(np.float64)
    dyn = (flat @ curves).T.reshape(profile.dce_phases, *dfrac.shape[:3]) * bias[None]
    dyn = rd.rician(dyn, 8.0, rng)
    base_tags = _mr_tags("DCE", p.vendor)
    if p.dce_split:
        for ph in range(profile.dce_phases):
            emit("DCE", 10 + ph, dce, dyn[ph], {**base_tags}, 10.0 + times[ph] / 60.0,
                 description=f"{style.descriptions['DCE']}_ph{ph + 1}")
    else:
        per_slice: list[dict[str, object]] = []
        for ph in range(profile.dce_phases):
            when = t0 + dt.timedelta(minutes=10.0, seconds=float(times[ph]))
            for _ in range(profile.dce_slices):
                per_slice.append({"TemporalPositionIdentifier": ph + 1,
                                  "AcquisitionTime": when.strftime("%H%M%S.%f")[:13]})
        emit("DCE", 10, dce, dyn.reshape(-1, *dyn.shape[2:]),
             {**base_tags, "NumberOfTemporalPositions": profile.dce_phases}, 10.0, per_slice=per_slice)
    emit("T1_FS_POST", 40, sag, _render_mr(frac, rd.T1FS_POST_LUT, sag, rng, 12.0),
         _mr_tags("T1_FS_POST", p.vendor), 18.0)
    return Acquisition(spec.study_uid, spec.study_date, rot, trans, n_files, series)
