"""Cohort design: who has which lesion, which visits, and how each lesion evolves (the truth's intent).

Proportions mirror the study (SPEC top table): about 55 % of lesions without J0 residual, 96 % of them
controlled; 45 % with residual, 65 % of them controlled; about 40 % baseline fractures, ~83 % of which
keep losing height. Failures grow clearly (>= 2x and >= 1.5 mL) from M1, M3 or M6.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from pipeline.domain import VERTEBRAL_LEVELS, Visit

SCHEDULE_DAYS: dict[Visit, tuple[int, int]] = {  # nominal day, jitter (days) kept inside SPEC windows
    Visit.PRE: (-7, 5),
    Visit.J0: (0, 0),
    Visit.M1: (30, 7),
    Visit.M3: (90, 12),
    Visit.M6: (180, 20),
    Visit.M12: (365, 30),
}
FOLLOW_UPS = (Visit.M1, Visit.M3, Visit.M6, Visit.M12)


class Course(StrEnum):
    """Designed course of a lesion."""

    CONTROL_NO_RESIDUAL = "control_no_residual"
    FAILURE_NEW_NODULE = "failure_new_nodule"
    CONTROL_RESIDUAL = "control_residual"
    FAILURE_RESIDUAL = "failure_residual"


@dataclass
class LesionDesign:
    lesion_id: str
    level: str
    course: Course
    onset: Visit | None  # first visit of growth for failures
    fracture: str | None  # None, "wedge" or "biconcave"
    collapse_from: Visit | None  # first visit with further height loss
    collapse_fraction: float
    fracture_ratio: float  # Ha/Hp (wedge) or Hm/Hp (biconcave) of a baseline fracture
    cement_ml: float
    j0_residual_ml: float
    rim_mm: float
    epidural: bool
    cement_bipedicular: bool
    ebrt_after_days: int | None
    vas_before: int
    vas_m1: int


@dataclass
class StudyDesign:
    visit: Visit  # the visit the study is designed for (UNSCHEDULED for the extra scan)
    day: int
    modality: str  # "MR" or "CT"
    post_procedure: bool = False


@dataclass
class PatientDesign:
    patient_id: str
    index: int
    levels: list[str]  # the whole column, cranial first
    lesions: list[LesionDesign]
    procedure_date: dt.date
    studies: list[StudyDesign]
    vendor: str
    dce_split: bool  # one series per DCE phase (else one series with temporal positions)
    primary_tumor: str
    seed: int
    extra_flags: dict[str, bool] = field(default_factory=dict)


PRIMARIES = ("breast", "lung", "kidney", "myeloma", "prostate", "thyroid", "colon")
VENDORS = ("SIEMENS", "GE", "PHILIPS")


def _course_quota(n: int, rng: np.random.Generator) -> list[Course]:
    n_res = round(0.45 * n)
    n_nores = n - n_res
    n_res_fail = round(0.35 * n_res)
    n_nores_fail = max(1, round(0.04 * n_nores)) if n_nores >= 10 else 0
    courses = ([Course.FAILURE_RESIDUAL] * n_res_fail + [Course.CONTROL_RESIDUAL] * (n_res - n_res_fail)
               + [Course.FAILURE_NEW_NODULE] * n_nores_fail
               + [Course.CONTROL_NO_RESIDUAL] * (n_nores - n_nores_fail))
    rng.shuffle(courses)
    return courses


def _visit_days(rng: np.random.Generator) -> dict[Visit, int]:
    days = {}
    for v, (nominal, jitter) in SCHEDULE_DAYS.items():
        days[v] = nominal + (int(rng.integers(-jitter, jitter + 1)) if jitter else 0)
    days[Visit.J0] = int(rng.integers(0, 2))
    return days


def design_lesion(rng: np.random.Generator, lesion_id: str, level: str, course: Course,
                  present: list[Visit]) -> LesionDesign:
    follow = [v for v in FOLLOW_UPS if v in present]
    onset: Visit | None = None
    if course in (Course.FAILURE_RESIDUAL, Course.FAILURE_NEW_NODULE):
        # onset among M1/M3/M6 with a later visit to confirm an M1 rise
        candidates = [v for v in (Visit.M1, Visit.M3, Visit.M6) if v in follow
                      and (v != Visit.M1 or follow.index(v) < len(follow) - 1)]
        onset = candidates[int(rng.integers(0, len(candidates)))]
    u = rng.uniform()
    fracture = None if u > 0.4 else ("wedge" if rng.uniform() < 0.6 else "biconcave")
    collapses = (rng.uniform() < 0.83) if fracture else (rng.uniform() < 0.08)
    collapse_from = None
    if collapses:
        opts = [v for v in (Visit.M1, Visit.M3, Visit.M6) if v in follow]
        collapse_from = opts[int(rng.integers(0, len(opts)))] if opts else None
    residual = course in (Course.CONTROL_RESIDUAL, Course.FAILURE_RESIDUAL)
    return LesionDesign(
        lesion_id=lesion_id, level=level, course=course, onset=onset, fracture=fracture,
        collapse_from=collapse_from, collapse_fraction=float(rng.uniform(0.22, 0.32)),
        fracture_ratio=float(rng.uniform(0.63, 0.71)),
        cement_ml=float(rng.uniform(3.0, 8.0)),
        j0_residual_ml=float(rng.uniform(0.5, 2.0)) if residual else 0.0,
        rim_mm=float(rng.uniform(1.0, 2.0)) if rng.uniform() < 0.5 else 0.0,
        epidural=bool(rng.uniform() < 0.4),
        cement_bipedicular=bool(rng.uniform() < 0.4),
        ebrt_after_days=int(rng.integers(20, 60)) if rng.uniform() < 0.5 else None,
        vas_before=int(rng.integers(6, 10)), vas_m1=int(rng.integers(0, 5)),
    )


def design_cohort(n_patients: int, seed: int) -> list[PatientDesign]:
    """Design ``n_patients`` patients (1-3 lesions each) reproducibly from ``seed``."""
    rng = np.random.default_rng([seed, 7001])
    n_lesions = [int(rng.choice([1, 1, 1, 2, 2, 3])) for _ in range(n_patients)]
    courses = _course_quota(sum(n_lesions), rng)
    base = dt.date(2021, 1, 4) + dt.timedelta(days=int(rng.integers(0, 365)))
    patients: list[PatientDesign] = []
    unscheduled_for = int(rng.integers(0, n_patients))
    k = 0
    for p in range(n_patients):
        prng = np.random.default_rng([seed, p, 17])
        pid = f"CRAV-{seed:02d}{p + 1:03d}"
        n = n_lesions[p]
        first = int(prng.integers(VERTEBRAL_LEVELS.index("T10"), VERTEBRAL_LEVELS.index("L4") - n + 2))
        treated = list(VERTEBRAL_LEVELS[first:first + n])
        lo = max(VERTEBRAL_LEVELS.index("T6"), first - int(prng.integers(2, 4)))
        lo = min(lo, VERTEBRAL_LEVELS.index("L5") - 6)  # a 7-level column that ends at L5 at the lowest
        levels = list(VERTEBRAL_LEVELS[lo:lo + 7])
        if treated[-1] not in levels:
            levels = list(VERTEBRAL_LEVELS[first + n - 6:first + n + 1])
        days = _visit_days(prng)
        present = list(days)
        if prng.uniform() < 0.35:
            present.remove([Visit.M3, Visit.M6, Visit.M12][int(prng.integers(0, 3))])
        lesions = [design_lesion(prng, f"{pid}-{lv}", lv, courses[k + i], present) for i, lv in enumerate(treated)]
        k += n
        studies = [StudyDesign(v, days[v], "MR") for v in present]
        studies.append(StudyDesign(Visit.PRE, days[Visit.PRE] - int(prng.integers(1, 5)), "CT"))
        if prng.uniform() < 0.5:
            studies.append(StudyDesign(Visit.J0, days[Visit.J0], "CT", post_procedure=True))
        if p == unscheduled_for:
            studies.append(StudyDesign(Visit.UNSCHEDULED, int(prng.integers(55, 68)), "MR"))
        studies.sort(key=lambda s: (s.day, s.modality))
        patients.append(PatientDesign(
            patient_id=pid, index=p, levels=levels, lesions=lesions,
            procedure_date=base + dt.timedelta(days=int(prng.integers(0, 400))),
            studies=studies, vendor=VENDORS[p % 3], dce_split=bool(p % 2),
            primary_tumor=PRIMARIES[int(prng.integers(0, len(PRIMARIES)))], seed=seed,
        ))
    return patients


def residual_ml_at(d: LesionDesign, visit_day: int, days: dict[Visit, int]) -> tuple[float, float]:
    """Designed (residual nodule, new nodule) volumes in mL at a study day (J0 on)."""
    base = d.j0_residual_ml
    if d.onset is None or visit_day < days[d.onset]:
        if d.course == Course.CONTROL_RESIDUAL:
            # stable or slowly regressing: never near the progression rule
            frac = 1.0 - 0.25 * min(max(visit_day, 0) / 365.0, 1.0)
            return base * frac, 0.0
        return base, 0.0
    steps = sum(1 for v, day in days.items() if v in FOLLOW_UPS and days[d.onset] < day <= visit_day)
    if d.course == Course.FAILURE_NEW_NODULE:
        return 0.0, 1.8 * 1.4**steps
    grown = base + max(1.6, 1.3 * base)
    return grown * 1.4**steps, 0.0


def heights_at(pre: tuple[float, float, float], d: LesionDesign, visit_day: int, days: dict[Visit, int]
               ) -> tuple[float, float, float]:
    """Designed anterior / middle / posterior heights (mm) at a study day."""
    ha, hm, hp = pre
    if d.fracture == "wedge":
        ha = hp * d.fracture_ratio
    elif d.fracture == "biconcave":
        hm = hp * d.fracture_ratio
    if d.collapse_from is not None and visit_day >= days[d.collapse_from]:
        f = d.collapse_fraction
        steps = sum(1 for v, day in days.items() if v in FOLLOW_UPS and days[d.collapse_from] < day <= visit_day)
        f = min(f + 0.04 * steps, 0.45)
        if d.fracture == "biconcave":
            hm *= 1 - f
            ha *= 1 - f / 3
        else:
            ha *= 1 - f
            hm *= 1 - f / 2
    return ha, hm, hp
