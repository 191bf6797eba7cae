"""Frames -> one 3D SimpleITK image: choosing the frames, sorting, checking and stacking them.

Slices are sorted by their position along the slice normal (never by InstanceNumber);
spacing comes from the position differences (never SliceThickness); duplicate instances are
dropped; missing slices, uneven spacing, gantry tilt and several different images at one
position are refused with a reason a radiologist can read. The frames of a dynamic are
split into phases here too. Used by :mod:`pipeline.ingest.volumes`.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import SimpleITK as sitk

from pipeline.ingest.frames import COMPONENTS, VolumeError, _Frame

log = logging.getLogger(__name__)

#: Slices closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01


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
