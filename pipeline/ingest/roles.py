"""Series roles decided from header fields, each decision with the reason (SPEC section 2).

Headers are plain mappings keyed by DICOM keyword (what :mod:`pipeline.ingest.headers` stores in
the catalog) or pydicom datasets (``Dataset.get(keyword)`` works the same way). The series
description is a tie-breaker only, used when the deciding fields are absent.

Example
-------
>>> h = {"Modality": "MR", "ImageType": ["ORIGINAL", "PRIMARY"], "ScanningSequence": "SE",
...      "RepetitionTime": 550, "EchoTime": 12}
>>> decide_role([h]).role.value
'T1'
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.domain import SeriesRole
from pipeline.ingest.headers import (
    Header,
    dicom_time_s,
    header_floats,
    header_number,
    header_text,
    header_values,
)

#: ScanOptions / suppression values that mean fat saturation (Siemens, GE, Philips spellings).
FAT_SAT_OPTIONS = frozenset({"FS", "SFS", "FAT_SAT", "FATSAT", "SAT_GEMS", "SPIR", "SPAIR", "CHESS", "WE"})
#: InversionTime range (ms) of a short-tau inversion recovery (STIR) at 1.5 T.
STIR_TI_MS = (90.0, 250.0)
#: Smallest angle (degrees) between two image planes counted as distinct (three such planes in one
#: series make a three-plane scout).
MULTIPLANE_MIN_DEG = 45.0
#: Modalities of objects computed from other images (never an acquisition to measure).
DERIVED_MODALITIES = {
    "SEG": "a segmentation object, not an acquired image",
    "RTDOSE": "a computed radiotherapy dose grid, not an acquired image",
}


@dataclass(frozen=True)
class RoleDecision:
    """A series role and the header fields that decided it."""

    role: SeriesRole
    reason: str


@dataclass(frozen=True)
class SeriesSummary:
    """What the role rules and the dynamic grouping need from the headers of one series."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    image_type: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    repetition_time_ms: float | None
    echo_time_ms: float | None
    inversion_time_ms: float | None
    contrast_agent: str
    n_temporal_positions: int
    temporal_source: str
    max_b_value: float | None
    description: str
    series_number: int | None
    orientation: tuple[float, ...] | None
    positions_key: tuple[float, ...]
    matrix: tuple[int, int] | None
    acquisition_time_s: float | None
    n_images: int
    n_planes: int = 1  # image planes at least MULTIPLANE_MIN_DEG apart

    @property
    def fat_sat_options(self) -> tuple[str, ...]:
        return tuple(o for o in self.scan_options if o in FAT_SAT_OPTIONS)


@dataclass(frozen=True)
class DynamicGroup:
    """Series of one study that are the phases of one split DCE acquisition, in time order."""

    group_id: str
    series_uids: tuple[str, ...]
    reason: str


# --------------------------------------------------------------------------- summary


def _slice_projection(h: Header) -> tuple[tuple[float, ...] | None, float | None]:
    iop = header_floats(h, "ImageOrientationPatient")
    ipp = header_floats(h, "ImagePositionPatient")
    if iop is None or len(iop) != 6 or ipp is None or len(ipp) != 3:
        return None, None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    return tuple(round(v, 3) for v in iop), sum(p * q for p, q in zip(ipp, n, strict=True))


def _distinct_planes(orientations: set[tuple[float, ...]]) -> int:
    """Number of image planes at least ``MULTIPLANE_MIN_DEG`` apart among ImageOrientationPatient values."""
    planes: list[tuple[float, ...]] = []
    for o in sorted(orientations):
        cross = (o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3])
        length = math.sqrt(sum(v * v for v in cross))
        if length < 1e-6:
            continue
        n = tuple(v / length for v in cross)
        cosines = (abs(sum(a * b for a, b in zip(n, m, strict=True))) for m in planes)
        if all(math.degrees(math.acos(min(1.0, c))) >= MULTIPLANE_MIN_DEG for c in cosines):
            planes.append(n)
    return max(len(planes), 1)


def summarise_series(headers: Sequence[Header]) -> SeriesSummary:
    """Collapse the headers of one series into a :class:`SeriesSummary`.

    Raises
    ------
    ValueError
        If ``headers`` is empty.
    """
    if not headers:
        raise ValueError("headers is empty: a series needs at least one image header")
    first = headers[0]
    numbers = [header_number(h, "NumberOfTemporalPositions") for h in headers]
    counts: dict[str, int] = {
        "NumberOfTemporalPositions": int(max((n for n in numbers if n is not None), default=0)),
        "TemporalPositionIdentifier": len(
            {v for h in headers if (v := header_number(h, "TemporalPositionIdentifier")) is not None}
        ),
        "TemporalPositionIndex": max(
            len({v for h in headers if (v := header_number(h, "TemporalPositionIndex")) is not None}),
            int(max((header_number(h, "TemporalPositionIndexCount") or 0 for h in headers), default=0)),
        ),
    }
    per_position: dict[float, set[tuple[str, str]]] = defaultdict(set)
    orientation: tuple[float, ...] | None = None
    orientations: set[tuple[float, ...]] = set()
    for h in headers:
        iop, proj = _slice_projection(h)
        if iop is not None and proj is not None:
            orientation = orientation or iop
            orientations.add(iop)
            per_position[round(proj, 1)].add(
                (header_text(h, "AcquisitionTime"), header_text(h, "TriggerTime"))
            )
    counts["AcquisitionTime/TriggerTime at one position"] = max(
        (len(v) for v in per_position.values()), default=0
    )
    source, n_tp = max(counts.items(), key=lambda kv: kv[1])
    b_values = [b for h in headers if (b := header_number(h, "DiffusionBValue")) is not None]
    times = [t for h in headers if (t := dicom_time_s(h.get("AcquisitionTime"))) is not None]
    rows, cols = header_number(first, "Rows"), header_number(first, "Columns")
    series_number = header_number(first, "SeriesNumber")
    return SeriesSummary(
        series_uid=header_text(first, "SeriesInstanceUID"),
        study_uid=header_text(first, "StudyInstanceUID"),
        frame_of_reference_uid=header_text(first, "FrameOfReferenceUID"),
        modality=header_text(first, "Modality").upper(),
        image_type=header_values(first, "ImageType"),
        scanning_sequence=header_values(first, "ScanningSequence"),
        sequence_variant=header_values(first, "SequenceVariant"),
        scan_options=header_values(first, "ScanOptions"),
        repetition_time_ms=header_number(first, "RepetitionTime"),
        echo_time_ms=header_number(first, "EchoTime"),
        inversion_time_ms=header_number(first, "InversionTime"),
        contrast_agent=header_text(first, "ContrastBolusAgent"),
        n_temporal_positions=max(n_tp, 1),
        temporal_source=source if n_tp > 1 else "",
        max_b_value=max(b_values) if b_values else None,
        description=header_text(first, "SeriesDescription"),
        series_number=int(series_number) if series_number is not None else None,
        orientation=orientation,
        positions_key=tuple(sorted(per_position)),
        matrix=(int(rows), int(cols)) if rows is not None and cols is not None else None,
        acquisition_time_s=min(times) if times else None,
        n_images=len(headers),
        n_planes=_distinct_planes(orientations),
    )


# --------------------------------------------------------------------------- rules


def _description_hint(description: str) -> SeriesRole | None:
    """Role suggested by a series description (tie-breaker only)."""
    d = description.lower()
    tokens = set(re.split(r"[^a-z0-9+]+", d))
    if tokens & {"loc", "localizer", "localiser", "scout", "survey", "3pl"}:
        return SeriesRole.LOCALIZER
    if tokens & {"stir", "tirm"}:
        return SeriesRole.STIR
    if tokens & {"dce", "dyn", "dynamic", "perf", "twist", "tricks"}:
        return SeriesRole.DCE
    if tokens & {"adc"}:
        return SeriesRole.ADC
    if tokens & {"dwi", "diff", "diffusion", "ep2d"}:
        return SeriesRole.DWI
    is_t1 = bool(tokens & {"t1", "t1w"}) or re.search(r"t1(?![0-9])", d) is not None
    if is_t1:
        fat_sat = bool(tokens & {"fs", "fatsat", "spir", "spair", "dixon"})
        post = bool(tokens & {"post", "gd", "gado", "+c", "c+"}) or "+gd" in d
        if fat_sat and post:
            return SeriesRole.T1_FS_POST
        return SeriesRole.T1
    if tokens & {"t2", "t2w"} or re.search(r"t2(?![0-9*])", d):
        return SeriesRole.T2
    return None


def _joined(values: Sequence[str]) -> str:
    return "\\".join(values)


def _fmt(value: float | None) -> str:
    return "absent" if value is None else f"{value:g}"


def decide_role_from_summary(s: SeriesSummary) -> RoleDecision:
    """Apply the role rules to a :class:`SeriesSummary` (see :func:`decide_role`)."""
    if "LOCALIZER" in s.image_type or "SCOUT" in s.image_type:
        return RoleDecision(SeriesRole.LOCALIZER, f"ImageType={_joined(s.image_type)} has LOCALIZER")
    derived = bool(s.image_type) and s.image_type[0] == "DERIVED"
    if s.modality in DERIVED_MODALITIES:
        return RoleDecision(
            SeriesRole.DERIVED, f"Modality={s.modality} ({DERIVED_MODALITIES[s.modality]}) -> DERIVED"
        )
    if s.n_planes >= 3 and not derived:
        return RoleDecision(
            SeriesRole.LOCALIZER,
            f"ImageOrientationPatient: images in {s.n_planes} planes at least {MULTIPLANE_MIN_DEG:g} degrees "
            "apart (a three-plane scout) -> LOCALIZER",
        )
    if s.modality == "CT":
        if derived:
            return RoleDecision(SeriesRole.DERIVED, "Modality=CT, ImageType DERIVED -> DERIVED")
        return RoleDecision(SeriesRole.CT, "Modality=CT, ImageType ORIGINAL -> CT")
    if s.modality != "MR":
        return RoleDecision(SeriesRole.OTHER, f"Modality={s.modality or 'absent'} is neither MR nor CT")
    if "ADC" in s.image_type:
        return RoleDecision(SeriesRole.ADC, f"ImageType={_joined(s.image_type)} has ADC -> ADC")
    if derived:
        return RoleDecision(SeriesRole.DERIVED, f"ImageType={_joined(s.image_type)} is DERIVED")
    if (s.max_b_value or 0) > 0 or "DIFFUSION" in s.image_type:
        return RoleDecision(
            SeriesRole.DWI,
            f"DiffusionBValue up to {_fmt(s.max_b_value)}, ImageType {'/'.join(s.image_type)} -> DWI",
        )

    seq, fs = s.scanning_sequence, s.fat_sat_options
    tr, te, ti = s.repetition_time_ms, s.echo_time_ms, s.inversion_time_ms
    facts = [f"ScanningSequence={_joined(seq) or 'absent'}"]
    if s.sequence_variant:
        facts.append(f"SequenceVariant={_joined(s.sequence_variant)}")
    facts.append(f"ScanOptions has {fs[0]}" if fs else "no fat-sat in ScanOptions")
    if s.contrast_agent:
        facts.append("ContrastBolusAgent set")
    is_ir = "IR" in seq or "IR" in s.scan_options

    if "GR" in seq and fs and s.n_temporal_positions >= 2:
        facts.append(f"{s.n_temporal_positions} temporal positions ({s.temporal_source})")
        return RoleDecision(SeriesRole.DCE, ", ".join(facts) + " -> DCE")
    if is_ir and ti is not None:
        facts.append(f"InversionTime={ti:g} ms")
        if STIR_TI_MS[0] <= ti <= STIR_TI_MS[1]:
            return RoleDecision(SeriesRole.STIR, ", ".join(facts) + " (short tau) -> STIR")
        return RoleDecision(SeriesRole.OTHER, ", ".join(facts) + " (not a short tau: FLAIR / T1 IR) -> OTHER")
    if seq and tr is not None and te is not None:
        facts.append(f"TR={tr:g} ms, TE={te:g} ms")
        t1_weighted = tr < 1000 and te < 30
        if t1_weighted and fs and s.contrast_agent:
            return RoleDecision(SeriesRole.T1_FS_POST, ", ".join(facts) + " -> T1_FS_POST")
        if t1_weighted and not fs and not s.contrast_agent and "SE" in seq:
            return RoleDecision(SeriesRole.T1, ", ".join(facts) + " -> T1")
        if tr >= 1500 and te >= 60:
            return RoleDecision(SeriesRole.T2, ", ".join(facts) + " -> T2")
        return RoleDecision(SeriesRole.OTHER, ", ".join(facts) + " match no protocol role -> OTHER")

    hint = _description_hint(s.description)
    missing = [
        name for name, v in (("ScanningSequence", seq), ("RepetitionTime", tr), ("EchoTime", te)) if not v
    ]
    if hint is not None and hint is not SeriesRole.LOCALIZER:
        return RoleDecision(
            hint,
            f"header fields inconclusive ({', '.join(missing)} absent); "
            f"SeriesDescription {s.description!r} as tie-breaker -> {hint.value}",
        )
    return RoleDecision(
        SeriesRole.OTHER, f"header fields inconclusive ({', '.join(missing)} absent) -> OTHER"
    )


def decide_role(headers: Sequence[Header]) -> RoleDecision:
    """Decide the role of one series from the headers of its images.

    Parameters
    ----------
    headers
        One mapping (DICOM keyword -> value) or pydicom Dataset per image of the series.

    Returns
    -------
    RoleDecision
        The role and a reason naming the header fields that matched, e.g.
        ``"ScanningSequence=GR, ScanOptions has FS, ContrastBolusAgent set, 30 temporal
        positions (TemporalPositionIdentifier) -> DCE"``.

    Raises
    ------
    ValueError
        If ``headers`` is empty.
    """
    return decide_role_from_summary(summarise_series(headers))


def _is_split_phase_candidate(s: SeriesSummary) -> bool:
    return (
        s.modality == "MR"
        and not (s.image_type and s.image_type[0] == "DERIVED")
        and "GR" in s.scanning_sequence
        and bool(s.fat_sat_options)
        and s.n_temporal_positions == 1
        and s.acquisition_time_s is not None
        and s.orientation is not None
        and bool(s.positions_key)
    )


def group_dynamic_series(summaries: Sequence[SeriesSummary], *, min_phases: int = 3) -> list[DynamicGroup]:
    """Find DCE acquisitions exported one series per phase and reassemble them.

    Series group when they are of one study and frame of reference, have the same
    orientation, slice positions and matrix, are spoiled gradient-echo fat-sat with one
    temporal position each, and have distinct AcquisitionTime; ordered by acquisition time.

    Parameters
    ----------
    summaries
        Series summaries (any patients / studies).
    min_phases
        Fewest series that make a dynamic (a pre/post pair of one sequence is not a DCE).

    Returns
    -------
    list of DynamicGroup
        ``group_id`` is stable (hash of the member series UIDs).
    """
    buckets: dict[tuple[Any, ...], list[SeriesSummary]] = defaultdict(list)
    for s in summaries:
        if _is_split_phase_candidate(s):
            key = (s.study_uid, s.frame_of_reference_uid, s.orientation, s.positions_key, s.matrix)
            buckets[key].append(s)
    groups: list[DynamicGroup] = []
    for members in buckets.values():
        members.sort(key=lambda m: (m.acquisition_time_s, m.series_number or 0, m.series_uid))
        ordered: list[SeriesSummary] = []
        for m in members:  # one series per distinct acquisition time
            if not ordered or m.acquisition_time_s != ordered[-1].acquisition_time_s:
                ordered.append(m)
        if len(ordered) < min_phases:
            continue
        uids = tuple(m.series_uid for m in ordered)
        group_id = "dyn-" + hashlib.sha1("|".join(uids).encode()).hexdigest()[:16]
        spoiled = ", SequenceVariant SP" if "SP" in ordered[0].sequence_variant else ""
        reason = (
            f"{len(uids)} series with the same geometry (ScanningSequence=GR{spoiled}, "
            f"ScanOptions has {ordered[0].fat_sat_options[0]}, 1 temporal position each), "
            "AcquisitionTime increasing -> one DCE, phases in acquisition-time order"
        )
        groups.append(DynamicGroup(group_id, uids, reason))
    return groups
