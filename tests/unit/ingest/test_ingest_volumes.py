"""Series -> SimpleITK image: geometry, ordering, refusals (pipeline.ingest.volumes)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ingest_factory import AXIAL, ENHANCED_MR, SAGITTAL, make_dataset, slice_pixels, write, write_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipeline.ingest.volumes import VolumeError, load_dynamic, load_volume


def _expected_point(
    origin: np.ndarray, orientation: tuple[float, ...], ij: tuple[int, int], ps: tuple[float, float]
):
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    return origin + ij[0] * ps[1] * row + ij[1] * ps[0] * col


@pytest.mark.parametrize(
    ("orientation", "spacing"),
    [(AXIAL, 2.0), (SAGITTAL, 4.0), ((0.0, 0.9961947, -0.0871557, 0.0, -0.0871557, -0.9961947), 3.0)],
    ids=["axial", "sagittal", "oblique-sagittal"],
)
def test_geometry_and_order_from_positions(
    tmp_path: Path, orientation: tuple[float, ...], spacing: float
) -> None:
    paths = write_series(tmp_path, 6, orientation=orientation, spacing=spacing)
    random.Random(3).shuffle(paths)
    image = load_volume(paths)
    assert image.GetSize() == (5, 6, 6)
    assert image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, spacing), atol=1e-4)  # not SliceThickness 9.9
    array = sitk.GetArrayFromImage(image)
    for k in range(6):  # slice k along the normal holds slice_pixels(k), whatever InstanceNumber says
        np.testing.assert_array_equal(array[k], slice_pixels(k))
    normal = np.cross(orientation[:3], orientation[3:])
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3)[:, 2], normal, atol=1e-5)
    origin = np.array((-10.0, -20.0, 30.0))
    for ij, k in (((0, 0), 0), ((4, 5), 3)):
        point = image.TransformIndexToPhysicalPoint((ij[0], ij[1], k))
        expected = _expected_point(origin + k * spacing * normal, orientation, ij, (0.8, 0.7))
        np.testing.assert_allclose(point, expected, atol=1e-3)


def test_rescale_slope_intercept_applied(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 3, RescaleSlope="2.5", RescaleIntercept="-1024")
    array = sitk.GetArrayFromImage(load_volume(paths))
    np.testing.assert_allclose(array[1], slice_pixels(1) * 2.5 - 1024)


def test_duplicate_instance_dropped(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 4)
    copy = tmp_path / "copy_of_first"
    shutil.copy(paths[0], copy)
    image = load_volume([*paths, copy])
    assert image.GetSize()[2] == 4


def test_rle_compressed_series(tmp_path: Path) -> None:
    paths = []
    for k in range(3):
        ds = make_dataset(position=(0, 0, 3.0 * k), pixels=slice_pixels(k), instance=k + 1)
        ds.compress(RLELossless)
        paths.append(write(ds, tmp_path / f"rle{k}"))
    array = sitk.GetArrayFromImage(load_volume(paths))
    np.testing.assert_array_equal(array[2], slice_pixels(2))


def test_enhanced_multiframe_from_functional_groups(tmp_path: Path) -> None:
    order = [2, 0, 3, 1]  # frames stored out of spatial order
    ds = make_dataset(pixels=slice_pixels(0))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        delattr(ds, keyword)
    ds.NumberOfFrames = len(order)
    ds.PixelData = np.stack([slice_pixels(k) for k in order]).tobytes()
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = list(SAGITTAL)
    measures.PixelSpacing = [0.8, 0.7]
    measures.SliceThickness = 9.9
    transform.RescaleSlope, transform.RescaleIntercept = 1, 10
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [5.0 - 3.0 * k, 0.0, 0.0]  # normal of SAGITTAL is -x
        item.PlanePositionSequence = DicomSequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    image = load_volume([write(ds, tmp_path / "enhanced.dcm")])
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 3.0), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), (5.0, 0.0, 0.0), atol=1e-4)
    array = sitk.GetArrayFromImage(image)
    for k in range(4):
        np.testing.assert_array_equal(array[k], slice_pixels(k) + 10)


# ----------------------------------------------------------------------------- refusals


def test_missing_slice_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 6, spacing=3.0)
    with pytest.raises(VolumeError, match=r"1 slice\(s\) missing: a gap of 6.0 mm .* 3.0 mm apart"):
        load_volume(paths[:2] + paths[3:])


def test_uneven_spacing_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 4, positions=[0.0, 3.0, 6.0, 7.5])
    with pytest.raises(VolumeError, match="uneven slice spacing"):
        load_volume(paths)


def test_gantry_tilt_refused(tmp_path: Path) -> None:
    paths = [
        write(
            make_dataset(position=(0.0, 0.5 * k, 2.0 * k), pixels=slice_pixels(k), instance=k + 1),
            tmp_path / f"t{k}",
        )
        for k in range(4)
    ]
    with pytest.raises(VolumeError, match="gantry tilt"):
        load_volume(paths)


def test_several_times_at_one_position_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, 3, AcquisitionTime="101010")
    paths += write_series(tmp_path, 3, AcquisitionTime="101110")
    with pytest.raises(VolumeError, match="load it as a dynamic"):
        load_volume(paths)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"ImageOrientationPatient": None}, "cannot be placed"),
        ({"PixelSpacing": None}, "pixel size is unknown"),
        ({"SamplesPerPixel": 3}, "colour images"),
    ],
)
def test_bad_headers_refused(tmp_path: Path, fields: dict[str, object], match: str) -> None:
    path = write(make_dataset(**fields), tmp_path / "bad")
    with pytest.raises(VolumeError, match=match):
        load_volume([path])


def test_mixed_geometry_refused(tmp_path: Path) -> None:
    a = write_series(tmp_path, 2)
    b = write_series(tmp_path, 1, orientation=SAGITTAL, origin=(50.0, 0.0, 0.0))
    with pytest.raises(VolumeError, match="different orientations"):
        load_volume(a + b)
    c = [write(make_dataset(position=(0, 0, 9.0), pixels=np.zeros((4, 4), np.uint16)), tmp_path / "small")]
    with pytest.raises(VolumeError, match="different sizes"):
        load_volume(a + c)
    d = [write(make_dataset(position=(0, 0, 9.0), pixel_spacing=(1.0, 1.0)), tmp_path / "spacing")]
    with pytest.raises(VolumeError, match="different pixel spacing"):
        load_volume(a + d)


def test_unreadable_inputs_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VolumeError, match="not a DICOM file"):
        load_volume([text])
    with pytest.raises(VolumeError, match="no image files"):
        load_volume([])
    with pytest.raises(VolumeError, match="cannot be read"):
        load_volume([tmp_path / "absent.dcm"])
    no_pixels = make_dataset()
    del no_pixels.PixelData
    with pytest.raises(VolumeError, match="has no pixel data"):
        load_volume([write(no_pixels, tmp_path / "nopix")])
    broken = make_dataset()
    broken.file_meta.TransferSyntaxUID = JPEG2000Lossless
    item = b"\xfe\xff\x00\xe0"
    broken.PixelData = item + bytes(4) + item + b"\x04\x00\x00\x00junk" + b"\xfe\xff\xdd\xe0" + bytes(4)
    broken["PixelData"].VR = "OB"
    with pytest.raises(VolumeError, match="cannot decode the pixel data"):
        load_volume([write(broken, tmp_path / "broken")])


def test_enhanced_without_groups_refused(tmp_path: Path) -> None:
    ds = make_dataset()
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    with pytest.raises(VolumeError, match="without per-frame functional groups"):
        load_volume([write(ds, tmp_path / "mf")])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([Dataset(), Dataset(), Dataset()])
    with pytest.raises(VolumeError, match="2 frames of pixels but 3 frame descriptions"):
        load_volume([write(ds, tmp_path / "mf2")])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([Dataset(), Dataset()])
    with pytest.raises(VolumeError, match="lacks plane position"):
        load_volume([write(ds, tmp_path / "mf3")])


# ----------------------------------------------------------------------------- dynamics


def _dynamic_files(tmp_path: Path, n_phases: int = 3, **per_phase: object) -> list[Path]:
    paths: list[Path] = []
    for t in range(n_phases):
        fields = {k: (v(t) if callable(v) else v) for k, v in per_phase.items()}
        paths += write_series(tmp_path / f"p{t}", 4, spacing=3.0, series_uid="1.2.3.77", **fields)
    random.Random(1).shuffle(paths)
    return paths


def test_dynamic_split_by_temporal_position(tmp_path: Path) -> None:
    paths = _dynamic_files(
        tmp_path,
        3,
        TemporalPositionIdentifier=lambda t: t + 1,
        NumberOfTemporalPositions=3,
        AcquisitionTime=lambda t: f"1200{10 * t + 5:02d}",
        TriggerTime=lambda t: 10000.0 * t,
    )
    dynamic = load_dynamic(paths)
    assert len(dynamic.phases) == 3
    np.testing.assert_allclose(dynamic.times_s, [0.0, 10.0, 20.0])
    assert dynamic.phases[2].GetSize() == (5, 6, 4)
    np.testing.assert_allclose(dynamic.phases[1].GetSpacing()[2], 3.0)


def test_dynamic_split_by_acquisition_time_only(tmp_path: Path) -> None:
    paths = _dynamic_files(tmp_path, 4, AcquisitionTime=lambda t: f"2359{50 + 3 * t:02d}")
    dynamic = load_dynamic(paths)
    np.testing.assert_allclose(dynamic.times_s, [0.0, 3.0, 6.0, 9.0])


def test_dynamic_split_series_in_given_order(tmp_path: Path) -> None:
    paths: list[Path] = []
    for t in range(3):
        paths += write_series(tmp_path / f"s{t}", 4, spacing=3.0, AcquisitionTime=f"1000{20 * t:02d}")
    dynamic = load_dynamic(paths)
    np.testing.assert_allclose(dynamic.times_s, [0.0, 20.0, 40.0])
    reversed_order = paths[8:] + paths[4:8] + paths[:4]
    with pytest.raises(VolumeError, match="not increasing"):
        load_dynamic(reversed_order)


def test_dynamic_refusals(tmp_path: Path) -> None:
    no_times = _dynamic_files(tmp_path / "a", 2, TemporalPositionIdentifier=lambda t: t + 1)
    with pytest.raises(VolumeError, match="phase times are unknown"):
        load_dynamic(no_times)
    mixed = _dynamic_files(tmp_path / "b", 3, TemporalPositionIdentifier=lambda t: t + 1 if t else None)
    with pytest.raises(VolumeError, match="some images have a temporal position"):
        load_dynamic(mixed)
    uneven = _dynamic_files(tmp_path / "c", 2, AcquisitionTime=lambda t: f"10000{t}")
    with pytest.raises(VolumeError, match="different numbers of phases"):
        load_dynamic(uneven[:-1])
    shifted = write_series(tmp_path / "d0", 4, spacing=3.0, AcquisitionTime="100000")
    shifted += write_series(tmp_path / "d1", 4, spacing=3.0, AcquisitionTime="100010", origin=(0.0, 0.0, 0.0))
    with pytest.raises(VolumeError, match="not on the grid of phase 1"):
        load_dynamic(shifted)
