"""Closed value sets and plain records shared by every part of the pipeline.

No I/O here. Units are in the field names (``_mm``, ``_ml``, ``_s``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class SeriesRole(StrEnum):
    """Role of a series in the follow-up protocol (SPEC section 2)."""

    CT = "CT"
    T1 = "T1"
    T2 = "T2"
    STIR = "STIR"
    T1_FS_POST = "T1_FS_POST"
    DCE = "DCE"
    DWI = "DWI"
    ADC = "ADC"
    LOCALIZER = "LOCALIZER"
    DERIVED = "DERIVED"
    OTHER = "OTHER"


class Visit(StrEnum):
    """Follow-up visit (SPEC section 2)."""

    PRE = "PRE"
    J0 = "J0"
    M1 = "M1"
    M3 = "M3"
    M6 = "M6"
    M12 = "M12"
    UNSCHEDULED = "UNSCHEDULED"

    @property
    def is_follow_up(self) -> bool:
        """True for visits after J0 (the unscheduled ones included)."""
        return self not in (Visit.PRE, Visit.J0)


#: Scheduled visits in chronological order, with (nominal day, first day, last day).
VISIT_WINDOWS_DAYS: dict[Visit, tuple[int, int, int]] = {
    Visit.PRE: (-7, -30, -1),
    Visit.J0: (0, 0, 2),
    Visit.M1: (30, 21, 45),
    Visit.M3: (90, 76, 120),
    Visit.M6: (180, 150, 225),
    Visit.M12: (365, 320, 425),
}


class Outcome(StrEnum):
    """Per-lesion verdict (SPEC section 5)."""

    LOCAL_CONTROL = "local_control"
    LOCAL_FAILURE = "local_failure"
    INDETERMINATE = "indeterminate"


VERTEBRAL_LEVELS: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + ("S1",)
)
NON_VERTEBRAL_SITES: tuple[str, ...] = (
    "SACRUM", "ILIAC_L", "ILIAC_R", "ACETABULUM_L", "ACETABULUM_R",
)


def normalise_level(level: str) -> str:
    """Return the canonical level name (``D7`` -> ``T7``, ``l4`` -> ``L4``).

    Raises
    ------
    ValueError
        If ``level`` is neither a vertebral level nor a known non-vertebral site.
    """
    text = level.strip().upper()
    if len(text) >= 2 and text[0] == "D" and text[1:].isdigit():
        text = "T" + text[1:]
    if text in VERTEBRAL_LEVELS or text in NON_VERTEBRAL_SITES:
        return text
    raise ValueError(
        f"level {level!r} is not a vertebral level (C1-C7, T1-T12 or D1-D12, L1-L5, S1) "
        f"nor a site among {', '.join(NON_VERTEBRAL_SITES)}"
    )


def visit_label(visit: Visit, days_from_procedure: int | None) -> str:
    """A visit's name in the output folders, the tables and QA corrections: ``J0``, ``M3``, ``UNSCHEDULED_+45d``.

    Example
    -------
    >>> visit_label(Visit.M3, 92), visit_label(Visit.UNSCHEDULED, 45)
    ('M3', 'UNSCHEDULED_+45d')
    """
    if visit == Visit.UNSCHEDULED and days_from_procedure is not None:
        return f"UNSCHEDULED_{days_from_procedure:+d}d"
    return str(visit.value)


def level_index(level: str) -> int:
    """Cranio-caudal rank of a vertebral level (C1 = 0)."""
    return VERTEBRAL_LEVELS.index(normalise_level(level))


@dataclass(frozen=True)
class Lesion:
    """One treated lesion, a row of ``treatments.csv``."""

    patient_id: str
    lesion_id: str
    level: str
    procedure_date: dt.date
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_vertebral(self) -> bool:
        return self.level in VERTEBRAL_LEVELS


@dataclass(frozen=True)
class VisitMeasurement:
    """Everything measured for one lesion at one visit (a row of ``measurements.csv``).

    ``None`` means unknown / not measurable.
    """

    patient_id: str
    lesion_id: str
    timepoint: Visit
    study_date: dt.date | None
    days_from_procedure: int | None
    cement_volume_ml: float | None = None
    residual_enhancing_volume_ml: float | None = None
    ablation_zone_volume_ml: float | None = None
    max_relative_enhancement: float | None = None
    time_to_peak_s: float | None = None
    ktrans_per_min: float | None = None
    height_anterior_mm: float | None = None
    height_middle_mm: float | None = None
    height_posterior_mm: float | None = None
    height_loss_pct: float | None = None
    genant_grade: int | None = None
    registration_error_mm: float | None = None
    qa_status: str = "pending"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LesionResult:
    """The verdict for one lesion (a row of ``lesions.csv``)."""

    lesion: Lesion
    j0_residual: bool | None
    j0_residual_volume_ml: float | None
    outcome: Outcome
    failure_timepoint: Visit | None
    baseline_fracture: bool | None
    height_loss: bool | None
    max_height_loss_pct: float | None
    reason: str
