"""Ingest on real DICOM it must handle (issue 3): vendor MR, a JPEG 2000 CT, reference objects, pydicom's files.

Data, read in place and never copied (``../shared/realdata``, see its README.md; pydicom's own
test files and the ``pydicom-data`` package, through ``pydicom.data.get_testdata_files``):

- ``vendor-mr/{ge,philips-enh,sag}``: each ``In/`` folder is scanned into an in-memory
  catalog and every series is loaded (``load_dynamic`` when the dcm2niix reference is 4D),
  then compared with the dcm2niix reference in ``Ref/`` (matched by SeriesNumber and
  SeriesDescription; the echo and the complex component by the sidecar's EchoTime and
  ImageType: dcm2niix's ``_e2`` / ``_ph`` / ``_real`` suffixes).

  **Convention.** Our images are in DICOM LPS; a NIfTI affine is RAS, so its first two rows
  are negated to get LPS. dcm2niix reverses the row order of every image here (and may
  reverse the slice order), so the grids are compared as (a) the set of the 8 voxel-centre
  corner points in LPS (each within ``CORNER_TOL_MM``), (b) each direction column up to the
  sign that a reversed axis implies (within 1e-3), spacing within 0.01 mm and identical
  dimensions, and (c) the voxel values after reversing those same axes (correlation).
  The GE series has only a JSON sidecar upstream (no NIfTI): its orientation, slice spacing,
  phase-encoding matrix and slice count are compared with the sidecar / README instead.

  Measured on this data: dimensions identical; spacing within 2e-6 mm; direction columns
  within 3e-9 (up to the reversed axes: dcm2niix reversed the rows of every series, the
  columns of the Philips field map and the slices of the Siemens mosaic); every voxel-centre
  corner within 5e-5 mm; voxel values identical for both Siemens series (the 36 tiles of
  each of the 6 mosaics included) and correlation 1.000000 (to 9 digits) for the three
  Philips volumes (dcm2niix applies the Philips floating-point scale, we RescaleSlope: a
  linear map); fMRI volumes 3.2 s apart (RepetitionTime). GE: direction columns within
  7e-7 of the sidecar's ImageOrientationPatient, slice spacing 1.2 mm within 2e-8 mm,
  256 x 256 x 130.
"""

from __future__ import annotations

import functools
import json
import os
import tracemalloc
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import generate_uid

from pipeline.domain import SeriesRole
from pipeline.ingest import volumes
from pipeline.ingest.catalog import Catalog
from pipeline.ingest.roles import decide_role, summarise_series
from pipeline.ingest.scan import scan_export
from pipeline.ingest.volumes import VolumeError, load_dynamic, load_volume

pytestmark = [
    pytest.mark.realdata,
    # pydicom's deliberately broken files warn as they are read; what matters is what ingest makes of them
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning"),
]

#: Largest distance (mm) between a voxel-centre corner of ours and the nearest one of dcm2niix.
CORNER_TOL_MM = 0.05
#: Peak traced (Python + numpy) memory while loading every series of one folder (measured: 17 MB).
LOAD_PEAK_LIMIT_BYTES = 256 * 2**20
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _scan(root: Path) -> Catalog:
    catalog = Catalog.open(":memory:")
    report = scan_export(root, catalog, quiet_period_s=0)
    assert report.arriving == 0
    return catalog


# ----------------------------------------------------------------------------- geometry helpers


def _corners(index_to_point: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """The 8 voxel-centre corners of a grid, from a 4x4 index -> LPS point matrix."""
    ijk = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    return (index_to_point @ ijk.T).T[:, :3]


def _sitk_matrix(image: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def _compare_with_nifti(image: sitk.Image, affine_ras: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Grid and voxel values of ``image`` against a dcm2niix volume (see the module docstring)."""
    zooms = np.linalg.norm(affine_ras[:3, :3], axis=0)
    ref_dirs = LPS_FROM_RAS @ affine_ras[:3, :3] / zooms
    ref_matrix = np.eye(4)
    ref_matrix[:3, :] = LPS_FROM_RAS @ affine_ras[:3, :]
    assert image.GetSize() == reference.shape[:3], f"{what}: dimensions"
    np.testing.assert_allclose(image.GetSpacing(), zooms, atol=0.01, err_msg=f"{what}: spacing (mm)")
    ours = np.array(image.GetDirection()).reshape(3, 3)
    signs = np.sign(np.sum(ours * ref_dirs, axis=0))  # -1 where dcm2niix reversed that axis
    np.testing.assert_allclose(ours * signs, ref_dirs, atol=1e-3, err_msg=f"{what}: direction columns")
    mine, theirs = _corners(_sitk_matrix(image), image.GetSize()), _corners(ref_matrix, reference.shape)
    distances = np.linalg.norm(mine[:, None, :] - theirs[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    assert sorted(nearest) == list(range(8)), f"{what}: corners do not pair up one to one"
    assert distances.min(axis=1).max() < CORNER_TOL_MM, f"{what}: corner offsets {distances.min(axis=1)} mm"
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))  # -> (x, y, z) like NIfTI
    array = array[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in signs)]
    correlation = np.corrcoef(array.ravel(), np.asarray(reference, dtype=np.float64).ravel())[0, 1]
    assert correlation > 0.9999, f"{what}: voxel values correlate {correlation:.6f} with dcm2niix's"


def _selection(sidecar: dict) -> dict:
    """load_volume keywords that pick the echo / component a dcm2niix output holds."""
    image_type = [t.upper() for t in sidecar.get("ImageType", [])]
    component = next((c for c in ("PHASE", "REAL", "IMAGINARY") if c in image_type), None)
    return {"echo_time_ms": sidecar["EchoTime"] * 1000.0, "component": component}


def _references(ref_dir: Path) -> list[tuple[dict, Path | None]]:
    out = []
    for path in sorted(ref_dir.glob("*.json")):
        images = [p for p in (path.with_suffix(".nii"), path.with_suffix(".nii.gz")) if p.is_file()]
        out.append((json.loads(path.read_text()), images[0] if images else None))
    return out


# ----------------------------------------------------------------------------- 1. vendor MR


@pytest.mark.parametrize(("vendor", "n_compared"), [("ge", 1), ("philips-enh", 3), ("sag", 2)])
def test_vendor_mr_geometry_matches_dcm2niix(realdata: Path, vendor: str, n_compared: int) -> None:
    root = realdata / "vendor-mr" / vendor
    catalog = _scan(root / "In")
    references = _references(root / "Ref")
    for record in catalog.file_accounting():
        assert record.status == "indexed" or record.reason, f"{record.path.name}: {record.status} without reason"
    compared = 0
    for series in catalog.series():
        files = catalog.files(series.series_uid)
        matches = [
            (sidecar, nifti)
            for sidecar, nifti in references
            if sidecar["SeriesNumber"] == series.series_number and sidecar["SeriesDescription"] == series.description
        ]
        assert matches, f"no dcm2niix reference for series {series.series_number} {series.description!r}"
        for sidecar, nifti in matches:
            what = f"{vendor} series {series.series_number} {series.description!r} vs {nifti or 'sidecar'}"
            if nifti is None:
                _compare_with_sidecar(load_volume(files, **_selection(sidecar)), sidecar, what)
            else:
                img = nib.load(nifti)
                data = np.asanyarray(img.dataobj)
                if data.ndim == 4:  # a 4D series must not come back as one 3D stack
                    with pytest.raises(VolumeError, match="load it as a dynamic"):
                        load_volume(files)
                    dynamic = load_dynamic(files, **_selection(sidecar))
                    assert len(dynamic.phases) == data.shape[3]
                    np.testing.assert_allclose(np.diff(dynamic.times_s), sidecar["RepetitionTime"], atol=0.05)
                    for t, phase in enumerate(dynamic.phases):
                        _compare_with_nifti(phase, img.affine, data[..., t], f"{what}, volume {t + 1}")
                else:
                    _compare_with_nifti(load_volume(files, **_selection(sidecar)), img.affine, data, what)
            compared += 1
    assert compared == n_compared


def _compare_with_sidecar(image: sitk.Image, sidecar: dict, what: str) -> None:
    """GE: no NIfTI upstream; orientation, slice spacing, matrix and slice count from JSON / README."""
    iop = np.array(sidecar["ImageOrientationPatientDICOM"])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-3, err_msg=what)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-3, err_msg=what)
    np.testing.assert_allclose(direction[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-3, err_msg=what)
    np.testing.assert_allclose(image.GetSpacing()[2], sidecar["SpacingBetweenSlices"], atol=0.01, err_msg=what)
    phase_axis = 0 if sidecar["InPlanePhaseEncodingDirectionDICOM"] == "ROW" else 1
    assert image.GetSize()[phase_axis] == sidecar["ReconMatrixPE"], what
    assert image.GetSize()[2] == 130, f"{what}: the README's 130 oblique slices"


def test_enhanced_multiframe_spacing_and_selection(realdata: Path) -> None:
    """Philips enhanced: spacing from the functional groups (not 1 mm); echoes and components kept apart."""
    folder = realdata / "vendor-mr" / "philips-enh" / "In"
    asl = load_volume([folder / "enh_1901" / "1901_WIP_3DpCASL_real.dcm"])
    np.testing.assert_allclose(asl.GetSpacing(), (2.5, 2.5, 4.0), atol=1e-3)
    field_map = [folder / "enh_2001" / "2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm"]
    with pytest.raises(VolumeError, match=r"different echo times \(2.3, 4.6 ms: a multi-echo series\)"):
        load_volume(field_map)
    magnitude = load_volume(field_map, echo_time_ms=4.6)  # MAGNITUDE by default: PHASE frames left out
    phase = load_volume(field_map, echo_time_ms=4.6, component="phase")
    assert magnitude.GetSize() == phase.GetSize() == (80, 80, 53)
    np.testing.assert_allclose(magnitude.GetSpacing(), (3.0, 3.0, 3.0), atol=1e-3)
    assert not np.allclose(sitk.GetArrayViewFromImage(magnitude), sitk.GetArrayViewFromImage(phase))
    with pytest.raises(VolumeError, match=r"no REAL images \(the series has MAGNITUDE, PHASE images\)"):
        load_volume(field_map, component="REAL")
    with pytest.raises(VolumeError, match=r"no images with echo time 9.9 ms \(echo times: 2.3, 4.6 ms\)"):
        load_volume(field_map, echo_time_ms=9.9)
    with pytest.raises(ValueError, match="component='MIXED': expected one of MAGNITUDE"):
        load_volume(field_map, component="MIXED")


def test_siemens_mosaic_unpacked_and_4d_roles(realdata: Path) -> None:
    folder = realdata / "vendor-mr" / "sag" / "In" / "2_fmri_SagAP"
    files = sorted(folder.iterdir())
    one = load_volume(files[:1])  # one mosaic = one 3D volume of 36 sagittal slices, 3.6 mm apart
    assert one.GetSize() == (64, 64, 36)
    np.testing.assert_allclose(one.GetSpacing(), (3.203125, 3.203125, 3.6), atol=1e-4)
    catalog = _scan(folder)
    (series,) = catalog.series()
    summary = summarise_series(catalog.headers(series.series_uid))
    assert summary.n_temporal_positions == 6  # 6 mosaics at one position: 6 time points
    assert series.role is not SeriesRole.DCE  # echo-planar fMRI, not a fat-sat gradient-echo dynamic


def _mosaic_variant(realdata: Path, tmp_path: Path, change: str) -> Path:
    mosaic = sorted((realdata / "vendor-mr" / "sag" / "In" / "2_fmri_SagAP").iterdir())[0]
    ds = pydicom.dcmread(mosaic)
    if change == "no-csa":
        del ds[ds.private_block(0x0029, "SIEMENS CSA HEADER").get_tag(0x10)]
    elif change == "no-spacing":
        del ds.SpacingBetweenSlices
    elif change == "odd-size":
        ds.Rows = 380
    out = tmp_path / f"{change}.dcm"
    ds.save_as(out)
    return out


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("no-csa", "without NumberOfImagesInMosaic / SliceNormalVector"),
        ("no-spacing", "without SpacingBetweenSlices"),
        ("odd-size", "a MOSAIC of 380x384 pixels cannot hold 36 equal tiles"),
    ],
)
def test_broken_mosaic_refused(realdata: Path, tmp_path: Path, change: str, match: str) -> None:
    with pytest.raises(VolumeError, match=match):
        load_volume([_mosaic_variant(realdata, tmp_path, change)])


def test_mosaic_with_inconsistent_slice_normal_refused(realdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_csa = volumes._siemens_csa

    def tilted(ds: pydicom.Dataset) -> dict:
        return real_csa(ds) | {"SliceNormalVector": [0.0, 0.6, 0.8]}

    monkeypatch.setattr(volumes, "_siemens_csa", tilted)
    mosaic = sorted((realdata / "vendor-mr" / "sag" / "In" / "2_fmri_SagAP").iterdir())[0]
    with pytest.raises(VolumeError, match="SliceNormalVector is not perpendicular"):
        load_volume([mosaic])


# ----------------------------------------------------------------------------- 2. JPEG 2000 CT


def _tissue_peaks_hu(values: np.ndarray) -> dict[str, float]:
    """Histogram modes (HU, 5 HU bins) of air and fat."""
    counts, edges = np.histogram(values, bins=np.arange(-1100.0, 301.0, 5.0))
    centres = (edges[:-1] + edges[1:]) / 2
    peaks = {}
    for name, low, high in (("air", -1100.0, -900.0), ("fat", -200.0, -50.0)):
        window = (centres >= low) & (centres < high)
        peaks[name] = float(centres[window][np.argmax(counts[window])])
    return peaks


def test_totalseg_jpeg2000_ct_decodes_to_hu(realdata: Path) -> None:
    """The 20-slice JPEG 2000 lossless CT decodes to HU, identical to an independent decoder.

    Measured: the scan quarantines the 20 files (they are anonymised down to empty
    Patient / Study / Series / SOP Instance UIDs in the dataset), so the series is loaded
    straight from its files. Our HU equal GDCM's (SimpleITK's reader, another JPEG 2000
    decoder) exactly (max |difference| 0 HU) at identical slice positions.

    ``example_ct.nii.gz`` is **not** this acquisition: the DICOM covers z -804.5 to -766.5 mm
    (upper abdomen, arms down, PET/CT table), the NIfTI z 94.3 to 427.3 mm (LPS, pelvis to
    kidneys, another patient); translation-only registration of the two found no match
    (best normalised correlation 0.79, driven by the body outline, at a pelvic level), so
    there is no overlap to resample and compare voxel by voxel. What both share is the HU
    scale: the air and fat histogram modes agree (DICOM -1022.5 / -82.5 HU, NIfTI -997.5 /
    -102.5 HU; without RescaleIntercept -1024 they would sit near 0 / +940).
    """
    folder = realdata / "totalseg" / "example_ct_dicom"
    files = sorted(folder.iterdir())
    assert len(files) == 20
    catalog = _scan(folder)
    for record in catalog.file_accounting():
        assert record.status in ("indexed", "quarantined") and (record.status == "indexed" or record.reason)
    ct = load_volume(files)
    assert ct.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(ct.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-4)
    np.testing.assert_allclose(ct.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    hu = sitk.GetArrayFromImage(ct)
    gdcm = sorted((sitk.ReadImage(str(f), sitk.sitkFloat32) for f in files), key=lambda im: im.GetOrigin()[2])
    for k, image in enumerate(gdcm):
        np.testing.assert_allclose(ct.TransformIndexToPhysicalPoint((0, 0, k)), image.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(hu[k], sitk.GetArrayViewFromImage(image)[0])
    nifti = sitk.ReadImage(str(realdata / "totalseg" / "example_ct.nii.gz"), sitk.sitkFloat32)
    z_dicom = [ct.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, ct.GetSize()[2] - 1)]
    z_nifti = sorted(nifti.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, nifti.GetSize()[2] - 1))
    assert max(z_dicom) < z_nifti[0], "the two CTs now overlap: compare them voxel by voxel instead"
    mine, theirs = _tissue_peaks_hu(hu), _tissue_peaks_hu(sitk.GetArrayViewFromImage(nifti))
    for tissue in ("air", "fat"):
        assert abs(mine[tissue] - theirs[tissue]) <= 40.0, (tissue, mine, theirs)


# ----------------------------------------------------------------------------- 3. every file accounted


@functools.cache
def _pydicom_roots() -> dict[str, Path]:
    """Folders holding every file of ``get_testdata_files()``: pydicom's own and pydicom-data's."""
    files = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
    own = Path(pydicom.data.__file__).parent / "test_files"
    others = [f for f in files if own not in f.parents]
    assert others, "pydicom-data is not installed (its files are part of this test)"
    return {"pydicom-test-files": own, "pydicom-data": Path(os.path.commonpath(others))}


def _root(realdata: Path, name: str) -> Path:
    return realdata / "dicom-objects" if name == "dicom-objects" else _pydicom_roots()[name]


@pytest.mark.parametrize("name", ["dicom-objects", "pydicom-test-files", "pydicom-data"])
def test_every_file_accounted_and_every_series_loads_or_is_refused(realdata: Path, name: str) -> None:
    """Every file is indexed with a role or ignored / quarantined with a reason; every series
    (any role: a superset of the image series that matter) loads as 3D with positive spacing
    or is refused with a VolumeError reason, and nothing else is raised.

    Measured (pydicom 3, pydicom-data; the header rules are being refined, so the counts may
    move): dicom-objects 12 files: 1 indexed, 11 ignored (SR / RWVM not images, 5 SEG derived,
    LICENSE / README not DICOM); 6 series: the CT slice loads, the 5 SEG are refused.
    pydicom test files 176: 36 indexed, 69 ignored, 71 quarantined; 25 series (6 DERIVED,
    12 OTHER, 4 CT, 3 LOCALIZER): 10 load, 15 refused (no ImagePositionPatient on US / CR /
    NM / OT, several orientations, multi-frame without functional groups, missing slices,
    SEG). pydicom-data 68: 28 indexed, 31 ignored, 9 quarantined; 17 series: 4 load, 13
    refused (the same reasons, and lossy / lossless copies of one slice).
    """
    root = _root(realdata, name)
    catalog = _scan(root)
    records = catalog.file_accounting()
    on_disk = {Path(d) / f for d, _, names in os.walk(root) for f in names}
    assert {r.path for r in records} == {p.resolve() for p in on_disk}
    if name != "dicom-objects":
        wanted = {Path(f).resolve() for f in get_testdata_files() if os.path.isfile(f) and root in Path(f).parents}
        assert wanted <= {r.path for r in records}
    statuses = Counter(r.status for r in records)
    assert set(statuses) <= {"indexed", "ignored", "quarantined"}
    for record in records:
        if record.status == "indexed":
            series = catalog.series_record(record.series_uid or "")
            assert series is not None and series.role_reason, f"{record.path.name}: indexed without a role"
        else:
            assert record.reason.strip(), f"{record.path.name}: {record.status} without a reason"
    outcomes: Counter[str] = Counter()
    tracemalloc.start()  # numpy's buffers are traced: a file claiming huge pixel data must not be decoded
    try:
        for series in catalog.series():
            try:
                image = load_volume(catalog.files(series.series_uid))
            except VolumeError as exc:
                assert str(exc).strip()
                outcomes["refused"] += 1
                continue
            assert image.GetDimension() == 3 and image.GetPixelID() == sitk.sitkFloat32
            assert min(image.GetSpacing()) > 0, f"{series.description!r}: spacing {image.GetSpacing()}"
            outcomes["loaded"] += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < LOAD_PEAK_LIMIT_BYTES, f"loading took {peak / 1e6:.0f} MB at its peak"
    assert outcomes["loaded"] >= 1 and sum(outcomes.values()) == len(catalog.series())
    by_name = {r.path.name: r for r in records}
    for seg in ("seg.dcm", "liver.dcm", "liver_1frame.dcm"):
        if seg in by_name:
            assert by_name[seg].status == "ignored" and "Modality=SEG" in by_name[seg].reason


def test_seg_and_rtdose_are_derived(realdata: Path) -> None:
    catalog = _scan(realdata / "dicom-objects")
    segs = [s for s in catalog.series() if s.modality == "SEG"]
    assert len(segs) == 5 and all(s.role is SeriesRole.DERIVED for s in segs)
    with pytest.raises(VolumeError, match="a DICOM SEG"):
        load_volume([realdata / "dicom-objects" / "dcmqi-sr-example" / "seg.dcm"])
    rtdose = [pydicom.dcmread(_data_file("rtdose.dcm"), stop_before_pixels=True)]
    assert decide_role(rtdose).role is SeriesRole.DERIVED


def test_three_plane_scout_is_a_localizer() -> None:
    """GE 'T/S/C RF FAST PILOT' (pydicom's dicomdirtests): no LOCALIZER in ImageType, but its three
    images lie in three orthogonal planes; it is ignored as a localizer, and would not stack anyway."""
    root = _pydicom_roots()["pydicom-test-files"] / "dicomdirtests" / "98892003" / "MR2"
    catalog = _scan(root)
    pilots = [s for s in catalog.series() if s.description == "T/S/C RF FAST PILOT"]
    assert len(pilots) == 2
    for pilot in pilots:
        assert pilot.role is SeriesRole.LOCALIZER and "three-plane scout" in pilot.role_reason
        with pytest.raises(VolumeError, match="different orientations"):
            load_volume(catalog.files(pilot.series_uid))
    ignored = [r for r in catalog.file_accounting() if r.series_uid in {p.series_uid for p in pilots}]
    assert len(ignored) == 6 and all(r.status == "ignored" and "localizer series" in r.reason for r in ignored)


def _data_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(path)


def test_same_position_images_dropped_only_when_identical() -> None:
    """MR2 of pydicom-data: lossless J2K and uncompressed copies (identical pixels, other UIDs)
    are one slice; the lossy J2K copy at the same position is a different image: refused."""
    lossless, uncompressed, lossy = (_data_file(n) for n in ("MR2_J2KR.dcm", "MR2_UNCR.dcm", "MR2_J2KI.dcm"))
    assert load_volume([lossless, uncompressed]).GetSize() == (1024, 1024, 1)
    with pytest.raises(VolumeError, match=r"two different images at one slice position .*MR2_J2KR.dcm and MR2_J2KI"):
        load_volume([lossless, lossy])


def test_real_and_imaginary_at_one_position_refused(tmp_path: Path) -> None:
    paths = []
    for token in ("R", "I"):
        ds = pydicom.dcmread(_data_file("MR_small.dcm"))
        ds.ImageType = ["ORIGINAL", "PRIMARY", token]
        ds.SOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"{token}.dcm")
        ds.save_as(paths[-1])
    with pytest.raises(VolumeError, match=r"REAL and IMAGINARY images at one slice position; choose one"):
        load_volume(paths)
    assert load_volume(paths, component="IMAGINARY").GetSize() == (64, 64, 1)


def test_malformed_and_oversized_files_refused(tmp_path: Path) -> None:
    """Bad values give a VolumeError; a file claiming huge pixel data is refused before decoding."""
    with pytest.raises(VolumeError, match=r"badVR.dcm: malformed DICOM header \(ValueError"):
        load_volume([_data_file("badVR.dcm")])
    ds = pydicom.dcmread(_data_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 60000
    ds.NumberOfFrames = 500
    huge = tmp_path / "huge.dcm"
    ds.save_as(huge)
    with pytest.raises(VolumeError, match=r"huge.dcm: claims \d+ MiB of pixel data .* not decoded"):
        load_volume([huge])
    j2k = pydicom.dcmread(_data_file("JPEG2000-embedded-sequence-delimiter.dcm"))  # codestream claims 1024 x 3.7e9
    j2k.ImagePositionPatient, j2k.ImageOrientationPatient, j2k.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1]
    j2k.save_as(tmp_path / "j2k.dcm")
    with pytest.raises(VolumeError, match="cannot decode the pixel data"):
        load_volume([tmp_path / "j2k.dcm"])
