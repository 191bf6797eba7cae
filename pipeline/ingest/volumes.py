"""Turn the files of a series into SimpleITK images with correct geometry (SPEC section 2).

Slices are sorted by their position along the slice normal (never by InstanceNumber);
spacing comes from the position differences (never SliceThickness); duplicate instances are
dropped; missing slices, uneven spacing, gantry tilt and several different images at one
position (a dynamic, several echoes, magnitude and phase) are refused with a reason a
radiologist can read. Enhanced multi-frame files are read from their per-frame functional
groups; Siemens MOSAIC images are unpacked into their slices. Pixel values are float32 with
RescaleSlope / RescaleIntercept applied. Only :class:`VolumeError` is raised for bad input.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.ingest.headers import dicom_time_s, header_floats, header_number, header_text, header_values

log = logging.getLogger(__name__)

#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01
#: Largest decoded pixel data (bytes) one file may claim; larger claims are refused undecoded.
MAX_FILE_PIXEL_BYTES = 2**30
#: Values of ``component=`` (DICOM ComplexImageComponent).
COMPONENTS = ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY")
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# ImageType value 3+ tokens naming the complex component (Siemens M/P/R/I, Philips M/P/R/I, spelled out)
_TYPE_COMPONENT = {"M": "MAGNITUDE", "P": "PHASE", "R": "REAL", "I": "IMAGINARY"} | {c: c for c in COMPONENTS}


class VolumeError(ValueError):
    """A series cannot be made into a volume (the message says why, for a radiologist)."""


@dataclass(frozen=True)
class DynamicSeries:
    """Phases of a dynamic acquisition, on one grid, with their times (s) after the first."""

    phases: list[sitk.Image]
    times_s: np.ndarray


@dataclass
class _Frame:
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_gap: float | None  # SpacingBetweenSlices, else SliceThickness: only for a one-slice volume
    pixels: np.ndarray
    sop_uid: str
    instance: int
    series_uid: str
    temporal: float | None
    time_s: float | None
    trigger_ms: float | None
    echo_ms: float | None = None
    component: str = ""
    source: str = ""  # file name (and frame / tile) for messages


# --------------------------------------------------------------------------- reading


def _datetime_s(value: Any) -> float | None:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``) to seconds since 0001-01-01."""
    text = str(value or "").strip().split("+")[0].split("-")[0]
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal()
    except ValueError:
        return None
    tod = dicom_time_s(text[8:]) if len(text) > 8 else 0.0
    return day * 86400.0 + (tod or 0.0)


def _rescaled(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    out = pixels.astype(np.float32)
    if slope is not None and slope != 1.0:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def _pixels(ds: Dataset, name: str) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{name}: colour images (SamplesPerPixel={ds.SamplesPerPixel}) are not a volume")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise VolumeError(f"{name}: cannot decode the pixel data (transfer syntax {ts}): {exc}") from exc


def _component(explicit: Any, image_type: Sequence[str]) -> str:
    """MAGNITUDE / PHASE / REAL / IMAGINARY from ComplexImageComponent or ImageType (values 3+), else ''."""
    text = str(explicit or "").strip().upper()
    if text in COMPONENTS:
        return text
    return next((_TYPE_COMPONENT[t] for t in image_type[2:] if t in _TYPE_COMPONENT), "")


def _classic_frame(ds: Dataset, name: str) -> _Frame:
    ipp, iop = header_floats(ds, "ImagePositionPatient"), header_floats(ds, "ImageOrientationPatient")
    ps = header_floats(ds, "PixelSpacing")
    if ipp is None or len(ipp) != 3 or iop is None or len(iop) != 6:
        raise VolumeError(
            f"{name}: no ImagePositionPatient / ImageOrientationPatient, the slice cannot be placed"
        )
    if ps is None or len(ps) != 2:
        raise VolumeError(f"{name}: no PixelSpacing, the pixel size is unknown")
    date = header_text(ds, "AcquisitionDate") or header_text(ds, "SeriesDate") or header_text(ds, "StudyDate")
    tod = dicom_time_s(ds.get("AcquisitionTime"))
    day = _datetime_s(date)
    return _Frame(
        position=np.array(ipp),
        orientation=np.array(iop),
        pixel_spacing=(ps[0], ps[1]),
        slice_gap=header_number(ds, "SpacingBetweenSlices") or header_number(ds, "SliceThickness"),
        pixels=_rescaled(
            _pixels(ds, name), header_number(ds, "RescaleSlope"), header_number(ds, "RescaleIntercept")
        ),
        sop_uid=header_text(ds, "SOPInstanceUID"),
        instance=int(header_number(ds, "InstanceNumber") or 0),
        series_uid=header_text(ds, "SeriesInstanceUID"),
        temporal=header_number(ds, "TemporalPositionIdentifier"),
        time_s=None if tod is None else tod + (day or 0.0),
        trigger_ms=header_number(ds, "TriggerTime"),
        echo_ms=header_number(ds, "EchoTime"),
        component=_component(ds.get("ComplexImageComponent"), header_values(ds, "ImageType")),
        source=name,
    )


def _siemens_csa(ds: Dataset) -> dict[str, list[Any]]:
    """Items of the Siemens CSA image header (0029,xx10) by tag name; {} when absent or unreadable."""
    with warnings.catch_warnings():  # nibabel.nicom warns on import that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    try:
        raw = ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value
        tags = csareader.read(raw)["tags"] if isinstance(raw, bytes) else {}
    except Exception:  # absent block, or a corrupt header (nibabel raises CSAError, struct.error ...)
        return {}
    return {name: list(tag["items"]) for name, tag in tags.items()}


def _mosaic_frames(ds: Dataset, name: str) -> list[_Frame]:
    """Unpack a Siemens MOSAIC (one 3D volume tiled in one 2D image) into its slices.

    As nibabel's ``MosaicWrapper`` and dcm2niix: ``NumberOfImagesInMosaic`` tiles on a
    ceil(sqrt(n)) square grid, row by row; ImagePositionPatient is that of the whole mosaic,
    so it is moved to the centre-aligned first tile; tiles follow the CSA SliceNormalVector,
    SpacingBetweenSlices apart.
    """
    csa = _siemens_csa(ds)
    n = (csa.get("NumberOfImagesInMosaic") or [0])[0]
    slice_normal = csa.get("SliceNormalVector") or []
    if not n or len(slice_normal) != 3:
        raise VolumeError(
            f"{name}: Siemens MOSAIC without NumberOfImagesInMosaic / SliceNormalVector in its CSA header: "
            "its slices cannot be unpacked"
        )
    n, rows, cols = int(n), int(ds.Rows), int(ds.Columns)
    grid = math.ceil(math.sqrt(n))
    gap = header_number(ds, "SpacingBetweenSlices")
    if rows % grid or cols % grid:
        raise VolumeError(f"{name}: a MOSAIC of {rows}x{cols} pixels cannot hold {n} equal tiles")
    if gap is None or gap <= 0:
        raise VolumeError(f"{name}: Siemens MOSAIC without SpacingBetweenSlices: the slice positions are unknown")
    whole = _classic_frame(ds, name)
    r, c = rows // grid, cols // grid
    tiles = whole.pixels.reshape(grid, r, grid, c).transpose(0, 2, 1, 3).reshape(grid * grid, r, c)[:n]
    row_cos, col_cos = _unit(whole.orientation[:3]), _unit(whole.orientation[3:])
    normal = np.cross(row_cos, col_cos)
    dot = float(np.dot(np.asarray(slice_normal, dtype=float), normal))
    if abs(abs(dot) - 1.0) > 1e-3:
        raise VolumeError(f"{name}: the CSA SliceNormalVector is not perpendicular to the image plane")
    normal = normal if dot > 0 else -normal
    ps = whole.pixel_spacing
    first = whole.position + col_cos * ps[0] * (rows - r) / 2 + row_cos * ps[1] * (cols - c) / 2
    return [
        dataclasses.replace(
            whole,
            position=first + k * gap * normal,
            pixels=np.ascontiguousarray(tiles[k]),
            sop_uid=f"{whole.sop_uid}#{k + 1}",
            slice_gap=gap,
            source=f"{name} tile {k + 1}",
        )
        for k in range(n)
    ]


def _group_value(frame: Dataset, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    for item in (frame, shared):
        if item is not None and sequence in item and item[sequence].value:
            inner = item[sequence].value[0]
            if keyword in inner:
                return inner[keyword].value
    return None


def _enhanced_frames(ds: Dataset, name: str) -> list[_Frame]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise VolumeError(f"{name}: multi-frame image without per-frame functional groups is not supported")
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    pixels = _pixels(ds, name)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape[0] != len(per_frame):
        raise VolumeError(
            f"{name}: {pixels.shape[0]} frames of pixels but {len(per_frame)} frame descriptions"
        )
    image_type = header_values(ds, "ImageType")
    frames = []
    for i, item in enumerate(per_frame):

        def value(sequence: str, keyword: str, item: Dataset = item) -> Any:
            return _group_value(item, shared, sequence, keyword)

        ipp = value("PlanePositionSequence", "ImagePositionPatient")
        iop = value("PlaneOrientationSequence", "ImageOrientationPatient")
        ps = value("PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise VolumeError(f"{name}: frame {i + 1} lacks plane position, orientation or pixel spacing")
        slope = value("PixelValueTransformationSequence", "RescaleSlope")
        intercept = value("PixelValueTransformationSequence", "RescaleIntercept")
        gap = value("PixelMeasuresSequence", "SpacingBetweenSlices") or value(
            "PixelMeasuresSequence", "SliceThickness"
        )
        temporal = value("FrameContentSequence", "TemporalPositionIndex")
        trigger = value("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")
        echo = value("MREchoSequence", "EffectiveEchoTime")
        frame_type = value("MRImageFrameTypeSequence", "FrameType") or value("CTImageFrameTypeSequence", "FrameType")
        component = value("MRImageFrameTypeSequence", "ComplexImageComponent") or ds.get("ComplexImageComponent")
        frames.append(
            _Frame(
                position=np.array([float(v) for v in ipp]),
                orientation=np.array([float(v) for v in iop]),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slice_gap=float(gap) if gap is not None else None,
                pixels=_rescaled(
                    pixels[i],
                    float(slope) if slope is not None else None,
                    float(intercept) if intercept is not None else None,
                ),
                sop_uid=f"{header_text(ds, 'SOPInstanceUID')}#{i + 1}",
                instance=i + 1,
                series_uid=header_text(ds, "SeriesInstanceUID"),
                temporal=float(temporal) if temporal is not None else None,
                time_s=_datetime_s(value("FrameContentSequence", "FrameAcquisitionDateTime")),
                trigger_ms=float(trigger) if trigger is not None else None,
                echo_ms=float(echo) if echo is not None else None,
                component=_component(
                    component, [str(t).upper() for t in frame_type] if frame_type else image_type
                ),
                source=f"{name} frame {i + 1}",
            )
        )
    return frames


def _claimed_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames * samples * math.ceil(bits / 8)


def _dataset_frames(ds: Dataset, name: str) -> list[_Frame]:
    if str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE:
        raise VolumeError(f"{name}: a DICOM SEG (segmentation object) is not an image series")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise VolumeError(f"{name}: has no pixel data")
    claimed = _claimed_bytes(ds)
    if claimed > MAX_FILE_PIXEL_BYTES:
        raise VolumeError(
            f"{name}: claims {claimed / 2**20:.0f} MiB of pixel data (Rows x Columns x frames), more than "
            f"the {MAX_FILE_PIXEL_BYTES / 2**20:.0f} MiB limit; not decoded"
        )
    if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return _enhanced_frames(ds, name)
    if "MOSAIC" in header_values(ds, "ImageType"):
        return _mosaic_frames(ds, name)
    return [_classic_frame(ds, name)]


def _read_frames(files: Sequence[Path]) -> list[_Frame]:
    if not files:
        raise VolumeError("no image files were given")
    frames: list[_Frame] = []
    for path in files:
        name = Path(path).name
        try:
            ds = pydicom.dcmread(path, force=False)
            frames.extend(_dataset_frames(ds, name))
        except VolumeError:
            raise
        except InvalidDicomError as exc:
            raise VolumeError(f"{name}: not a DICOM file (no DICM preamble)") from exc
        except (OSError, EOFError) as exc:
            raise VolumeError(f"{name}: cannot be read ({exc})") from exc
        except Exception as exc:  # pydicom / numpy raise many types on malformed values
            raise VolumeError(f"{name}: malformed DICOM header ({type(exc).__name__}: {exc})") from exc
    return frames


def _select(frames: list[_Frame], component: str | None, echo_time_ms: float | None, what: str) -> list[_Frame]:
    """Keep the frames of one complex component and one echo (see :func:`load_volume`)."""
    kinds = sorted({f.component or "unlabelled" for f in frames})
    if component is not None:
        wanted = component.strip().upper()
        if wanted not in COMPONENTS:
            raise ValueError(f"component={component!r}: expected one of {', '.join(COMPONENTS)} or None")
        frames = [f for f in frames if f.component == wanted]
        if not frames:
            raise VolumeError(f"{what}: no {wanted} images (the series has {', '.join(kinds)} images)")
    elif len(kinds) > 1 and "MAGNITUDE" in kinds and "unlabelled" not in kinds:
        magnitude = [f for f in frames if f.component == "MAGNITUDE"]
        log.info(
            "%s: magnitude images used; %d %s images left out",
            what,
            len(frames) - len(magnitude),
            "/".join(k for k in kinds if k != "MAGNITUDE"),
        )
        frames = magnitude
    if echo_time_ms is not None:
        echoes = sorted({f.echo_ms for f in frames if f.echo_ms is not None})
        frames = [f for f in frames if f.echo_ms is not None and abs(f.echo_ms - echo_time_ms) <= 0.01]
        if not frames:
            listed = ", ".join(f"{e:g}" for e in echoes) or "none"
            raise VolumeError(f"{what}: no images with echo time {echo_time_ms:g} ms (echo times: {listed} ms)")
    return frames


# --------------------------------------------------------------------------- stacking


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _same_position(f: _Frame, last: _Frame, frames: list[_Frame], what: str) -> None:
    """Accept ``f`` as a duplicate of ``last`` (same position) or raise why they are not one volume."""
    if f.sop_uid and f.sop_uid == last.sop_uid:  # (an anonymiser may have emptied every SOPInstanceUID)
        log.debug("%s: duplicate instance dropped", what)
        return
    if f.temporal != last.temporal or f.time_s != last.time_s:
        raise VolumeError(
            f"{what}: several images at one slice position with different acquisition times "
            "(a dynamic series); load it as a dynamic"
        )
    if f.echo_ms != last.echo_ms:
        echoes = ", ".join(f"{e:g}" for e in sorted({g.echo_ms for g in frames if g.echo_ms is not None}))
        raise VolumeError(
            f"{what}: several images at one slice position with different echo times ({echoes} ms: a "
            "multi-echo series); choose one echo (echo_time_ms=)"
        )
    if f.component != last.component:
        raise VolumeError(
            f"{what}: {last.component or 'unlabelled'} and {f.component or 'unlabelled'} images at one slice "
            "position; choose one (component=)"
        )
    if not np.array_equal(f.pixels, last.pixels):
        raise VolumeError(
            f"{what}: two different images at one slice position with the same acquisition time, echo and "
            f"image type ({last.source} and {f.source}): not one volume"
        )
    log.info("%s: %s repeats %s pixel for pixel; dropped", what, f.source, last.source)


def _stack(
    frames: list[_Frame], *, max_spacing_deviation: float, max_tilt_deg: float, what: str
) -> sitk.Image:
    """Sort, check and stack the frames of one 3D volume."""
    ref = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - ref.orientation)) > 1e-3:
            raise VolumeError(f"{what}: images with different orientations are not one volume")
        if f.pixels.shape != ref.pixels.shape:
            raise VolumeError(f"{what}: images of different sizes ({f.pixels.shape} vs {ref.pixels.shape})")
        if max(abs(a - b) for a, b in zip(f.pixel_spacing, ref.pixel_spacing, strict=True)) > 1e-3:
            raise VolumeError(f"{what}: images with different pixel spacing are not one volume")
    row, col = _unit(ref.orientation[:3]), _unit(ref.orientation[3:])
    normal = np.cross(row, col)
    ordered = sorted(frames, key=lambda f: (float(f.position @ normal), f.instance))
    kept: list[_Frame] = [ordered[0]]
    for f in ordered[1:]:
        if abs(float((f.position - kept[-1].position) @ normal)) >= SAME_POSITION_MM:
            kept.append(f)
        else:
            _same_position(f, kept[-1], frames, what)
    proj = np.array([float(f.position @ normal) for f in kept])
    if len(kept) == 1:
        dz = ref.slice_gap if ref.slice_gap and ref.slice_gap > 0 else 1.0
    else:
        steps = np.diff(proj)
        shifts = np.diff(np.array([f.position for f in kept]), axis=0)
        off_normal = np.linalg.norm(shifts - np.outer(steps, normal), axis=1)
        tilt = float(np.degrees(np.max(np.arctan2(off_normal, steps))))
        if tilt > max_tilt_deg:
            raise VolumeError(
                f"{what}: gantry tilt / sheared stack: successive slices are shifted {tilt:.1f} degrees off "
                "the slice normal; the series must be resampled before it can be measured"
            )
        median = float(np.median(steps))
        bad = np.abs(steps - median) > max_spacing_deviation * median
        if bad.any():
            worst = int(np.argmax(np.abs(steps - median)))
            gap = float(steps[worst])
            n_missing = int(sum(max(round(s / median) - 1, 0) for s in steps[bad]))
            if gap > median and n_missing > 0:
                raise VolumeError(
                    f"{what}: {n_missing} slice(s) missing: a gap of {gap:.1f} mm between slices at "
                    f"{proj[worst]:.1f} and {proj[worst + 1]:.1f} mm where slices are {median:.1f} mm apart"
                )
            raise VolumeError(
                f"{what}: uneven slice spacing: gaps from {steps.min():.2f} to {steps.max():.2f} mm "
                f"differ by more than {max_spacing_deviation:.0%} from the usual {median:.2f} mm"
            )
        dz = float(proj[-1] - proj[0]) / (len(kept) - 1)
    image = sitk.GetImageFromArray(np.stack([f.pixels for f in kept]).astype(np.float32, copy=False))
    image.SetSpacing((ref.pixel_spacing[1], ref.pixel_spacing[0], dz))
    image.SetOrigin(tuple(float(v) for v in kept[0].position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return image


def load_volume(
    files: Sequence[Path],
    *,
    max_spacing_deviation: float = 0.10,
    max_tilt_deg: float = 0.5,
    component: str | None = None,
    echo_time_ms: float | None = None,
) -> sitk.Image:
    """Load one series (classic single-frame files, Siemens mosaics or one enhanced multi-frame file) as 3D.

    Parameters
    ----------
    files
        The files of the series, in any order.
    max_spacing_deviation
        Largest relative deviation of a slice gap from the median gap.
    max_tilt_deg
        Largest angle (degrees) between the slice-to-slice shift and the slice normal.
    component
        Keep only the images of this complex component (``MAGNITUDE``, ``PHASE``, ``REAL``,
        ``IMAGINARY``; from ComplexImageComponent or ImageType). None: the magnitude images
        when the series mixes magnitude with other components (logged), else every image.
    echo_time_ms
        Keep only the images of this echo time (ms, within 0.01 ms): needed for a
        multi-echo series, which is refused otherwise.

    Returns
    -------
    SimpleITK.Image
        3D float32; spacing (mm) from PixelSpacing and the slice positions, origin of the
        first slice along the normal, direction columns = row, column, normal (LPS).

    Raises
    ------
    VolumeError
        On missing slices, uneven spacing, gantry tilt, mixed orientations or sizes,
        several acquisition times, echoes or components at one position, a DICOM SEG, an
        unpackable mosaic, a malformed header, or pixel data that cannot (or, over
        ``MAX_FILE_PIXEL_BYTES``, will not) be decoded.
    ValueError
        If ``component`` is not one of :data:`COMPONENTS`.
    """
    return _stack(
        _select(_read_frames(files), component, echo_time_ms, "series"),
        max_spacing_deviation=max_spacing_deviation,
        max_tilt_deg=max_tilt_deg,
        what="series",
    )


def _split_phases(frames: list[_Frame]) -> list[list[_Frame]]:
    temporal = sorted({f.temporal for f in frames if f.temporal is not None})
    if len(temporal) > 1:
        if any(f.temporal is None for f in frames):
            raise VolumeError("dynamic series: some images have a temporal position, others none")
        return [[f for f in frames if f.temporal == t] for t in temporal]
    series_order = list(dict.fromkeys(f.series_uid for f in frames))
    if len(series_order) > 1:
        return [[f for f in frames if f.series_uid == uid] for uid in series_order]
    by_position: dict[float, list[_Frame]] = defaultdict(list)
    normal = np.cross(_unit(frames[0].orientation[:3]), _unit(frames[0].orientation[3:]))
    for f in frames:
        by_position[round(float(f.position @ normal), 2)].append(f)
    counts = {len(v) for v in by_position.values()}
    if len(counts) != 1:
        raise VolumeError(
            "dynamic series: slice positions have different numbers of phases "
            f"({min(counts)} to {max(counts)})"
        )
    n = counts.pop()
    for stack in by_position.values():
        stack.sort(key=lambda f: (f.time_s if f.time_s is not None else 0.0, f.trigger_ms or 0.0, f.instance))
    return [[stack[k] for stack in by_position.values()] for k in range(n)]


def _phase_times(phases: list[list[_Frame]]) -> np.ndarray:
    for attr, scale in (("time_s", 1.0), ("trigger_ms", 1e-3)):
        values = [[getattr(f, attr) for f in phase] for phase in phases]
        if all(v is not None for phase in values for v in phase):
            t = np.array([min(phase) for phase in values], dtype=float) * scale
            if len(t) == 1 or np.all(np.diff(t) > 0):
                return t - t[0]
    raise VolumeError(
        "dynamic series: the phase times are unknown or not increasing (no usable AcquisitionTime, "
        "FrameAcquisitionDateTime or TriggerTime)"
    )


def load_dynamic(
    files: Sequence[Path],
    *,
    max_spacing_deviation: float = 0.10,
    max_tilt_deg: float = 0.5,
    component: str | None = None,
    echo_time_ms: float | None = None,
) -> DynamicSeries:
    """Load a dynamic (DCE) acquisition as a list of 3D phases and their times.

    Phases are split by TemporalPositionIdentifier / TemporalPositionIndex; when absent,
    by series (a DCE exported one series per phase: the order of first appearance in
    ``files`` is the phase order, e.g. ``Catalog.dynamic_files``); otherwise by the
    distinct acquisition / trigger times at each slice position (Siemens mosaics: one
    mosaic per phase). ``component`` and ``echo_time_ms`` select images as in
    :func:`load_volume`.

    Returns
    -------
    DynamicSeries
        ``phases`` share one grid; ``times_s`` are seconds after the first phase.

    Raises
    ------
    VolumeError
        If a phase fails the :func:`load_volume` checks, phases differ in geometry, or the
        phase times are unknown or not increasing.
    """
    frames = _select(_read_frames(files), component, echo_time_ms, "dynamic series")
    groups = _split_phases(frames)
    phases = [
        _stack(
            g, max_spacing_deviation=max_spacing_deviation, max_tilt_deg=max_tilt_deg, what=f"phase {i + 1}"
        )
        for i, g in enumerate(groups)
    ]
    ref = phases[0]
    for i, image in enumerate(phases[1:], start=2):
        same = (
            image.GetSize() == ref.GetSize()
            and np.allclose(image.GetSpacing(), ref.GetSpacing(), atol=1e-3)
            and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=0.05)
            and np.allclose(image.GetDirection(), ref.GetDirection(), atol=1e-4)
        )
        if not same:
            raise VolumeError(
                f"dynamic series: phase {i} is not on the grid of phase 1 (size, position or spacing)"
            )
    return DynamicSeries(phases=phases, times_s=_phase_times(groups))
