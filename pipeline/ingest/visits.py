"""Assign each study to a follow-up visit from its days after the procedure (SPEC section 2).

Example
-------
>>> import datetime as dt
>>> a = assign_visits({"1.2.3": dt.date(2021, 7, 16)}, dt.date(2021, 6, 15))
>>> a["1.2.3"].visit.value, a["1.2.3"].days_from_procedure
('M1', 31)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.domain import VISIT_WINDOWS_DAYS, Visit


@dataclass(frozen=True)
class VisitAssignment:
    """The visit of one study, its day offset, and why."""

    visit: Visit
    days_from_procedure: int
    reason: str


def _window_of(days: int) -> Visit | None:
    for visit, (_nominal, first, last) in VISIT_WINDOWS_DAYS.items():
        if first <= days <= last:
            return visit
    return None


def assign_visits(
    study_dates: Mapping[str, dt.date],
    procedure_date: dt.date,
    *,
    groups: Mapping[str, str] | None = None,
) -> dict[str, VisitAssignment]:
    """Assign studies to visits by their window in ``VISIT_WINDOWS_DAYS``.

    Parameters
    ----------
    study_dates
        Study date per StudyInstanceUID.
    procedure_date
        Date of the CRAV procedure.
    groups
        Optional group per StudyInstanceUID (e.g. the modality): studies compete for a visit
        only within their group, so a pre-procedure CT and a pre-procedure MRI are both PRE.

    Returns
    -------
    dict
        VisitAssignment per StudyInstanceUID. When two studies fall in one window, the one
        nearest the nominal day takes the visit (ties: the earlier study, then the smaller
        UID) and the others are UNSCHEDULED, with that reason.
    """
    candidates: dict[tuple[str, Visit], list[tuple[int, dt.date, str]]] = {}
    result: dict[str, VisitAssignment] = {}
    for uid, date in study_dates.items():
        days = (date - procedure_date).days
        visit = _window_of(days)
        if visit is None:
            result[uid] = VisitAssignment(
                Visit.UNSCHEDULED, days, f"day {days:+d} is outside every visit window -> UNSCHEDULED"
            )
            continue
        group = groups.get(uid, "") if groups is not None else ""
        candidates.setdefault((group, visit), []).append((days, date, uid))
    for (_group, visit), studies in candidates.items():
        nominal, first, last = VISIT_WINDOWS_DAYS[visit]
        studies.sort(key=lambda s: (abs(s[0] - nominal), s[1], s[2]))
        winner_days, winner_date, _winner_uid = studies[0]
        window = f"{visit.value} window {first:+d}..{last:+d} days, nominal day {nominal:+d}"
        for rank, (days, _date, uid) in enumerate(studies):
            if rank == 0:
                reason = f"day {days:+d} in {window}"
                if len(studies) > 1:
                    reason += f"; nearest the nominal day among {len(studies)} studies in the window"
                result[uid] = VisitAssignment(visit, days, reason)
            else:
                result[uid] = VisitAssignment(
                    Visit.UNSCHEDULED,
                    days,
                    f"day {days:+d} in {window}, but the study of {winner_date.isoformat()} "
                    f"(day {winner_days:+d}) is nearer the nominal day -> UNSCHEDULED",
                )
    return result
