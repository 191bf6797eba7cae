"""Visit windows (pipeline.ingest.visits)."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.domain import Visit
from pipeline.ingest.visits import assign_visits

PROCEDURE = dt.date(2021, 6, 15)


def _on(days: int) -> dt.date:
    return PROCEDURE + dt.timedelta(days=days)


@pytest.mark.parametrize(
    ("days", "visit"),
    [
        (-30, Visit.PRE),
        (-1, Visit.PRE),
        (0, Visit.J0),
        (2, Visit.J0),
        (3, Visit.UNSCHEDULED),
        (21, Visit.M1),
        (45, Visit.M1),
        (46, Visit.UNSCHEDULED),
        (76, Visit.M3),
        (120, Visit.M3),
        (150, Visit.M6),
        (225, Visit.M6),
        (320, Visit.M12),
        (425, Visit.M12),
        (426, Visit.UNSCHEDULED),
        (-31, Visit.UNSCHEDULED),
    ],
)
def test_windows(days: int, visit: Visit) -> None:
    result = assign_visits({"s": _on(days)}, PROCEDURE)["s"]
    assert result.visit is visit
    assert result.days_from_procedure == days
    assert f"day {days:+d}" in result.reason


def test_two_studies_in_one_window_nearest_nominal_wins() -> None:
    result = assign_visits({"a": _on(24), "b": _on(33), "c": _on(1)}, PROCEDURE)
    assert result["b"].visit is Visit.M1
    assert "nearest the nominal day among 2 studies" in result["b"].reason
    assert result["a"].visit is Visit.UNSCHEDULED
    assert result["a"].days_from_procedure == 24
    assert "M1 window +21..+45" in result["a"].reason
    assert "study of 2021-07-18 (day +33) is nearer the nominal day" in result["a"].reason
    assert result["c"].visit is Visit.J0


def test_tie_goes_to_earlier_study() -> None:
    result = assign_visits({"late": _on(35), "early": _on(25)}, PROCEDURE)
    assert result["early"].visit is Visit.M1
    assert result["late"].visit is Visit.UNSCHEDULED


def test_outside_every_window_reason() -> None:
    result = assign_visits({"x": _on(60)}, PROCEDURE)["x"]
    assert result.reason == "day +60 is outside every visit window -> UNSCHEDULED"


def test_empty() -> None:
    assert assign_visits({}, PROCEDURE) == {}


def test_groups_compete_separately() -> None:
    dates = {"ct": _on(-10), "mr": _on(-7), "mr2": _on(-20)}
    plain = assign_visits(dates, PROCEDURE)
    assert [plain[u].visit for u in ("ct", "mr", "mr2")] == [Visit.UNSCHEDULED, Visit.PRE, Visit.UNSCHEDULED]
    by_modality = assign_visits(dates, PROCEDURE, groups={"ct": "CT", "mr": "MR", "mr2": "MR"})
    assert [by_modality[u].visit for u in ("ct", "mr", "mr2")] == [Visit.PRE, Visit.PRE, Visit.UNSCHEDULED]
