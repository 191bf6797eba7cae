"""Each rule of SPEC section 5, with the numbers the reason must carry."""

from __future__ import annotations

import pytest

from pipeline.domain import Outcome, Visit
from pipeline.response.classify import VisitSummary, classify_lesion
from pipeline.settings import Settings

S = Settings()
DAYS = {Visit.PRE: -5, Visit.J0: 1, Visit.M1: 30, Visit.M3: 92, Visit.M6: 181, Visit.M12: 370}


def _v(visit: Visit, residual: float | None, *, days: int | None = None, new_nodule_ml: float = 0.0,
       height_loss_pct: float | None = None, height_loss_mm: float | None = None,
       genant_grade: int | None = None, usable: bool = True) -> VisitSummary:
    return VisitSummary(visit, DAYS.get(visit, 60) if days is None else days, residual, new_nodule_ml,
                        height_loss_pct, height_loss_mm, genant_grade, usable)


def _series(*pairs: tuple[Visit, float | None]) -> list[VisitSummary]:
    return [_v(v, r) for v, r in pairs]


def test_control_without_j0_residual() -> None:
    out = classify_lesion(_series((Visit.J0, 0.05), (Visit.M1, 0.1), (Visit.M3, 0.0), (Visit.M6, 0.2)),
                          settings=S)
    assert out.outcome is Outcome.LOCAL_CONTROL and out.failure_timepoint is None
    assert out.j0_residual is False and out.j0_residual_volume_ml == pytest.approx(0.05)
    assert "J0 residual 0.05 mL < 0.2 mL" in out.reason
    assert "M6 0.20 mL < nadir 0.00 + max(0.5, 0.73 x 0.00) = 0.50 mL" in out.reason


def test_control_with_stable_residual() -> None:
    out = classify_lesion(_series((Visit.J0, 1.5), (Visit.M1, 1.8), (Visit.M3, 1.4), (Visit.M6, 2.3)),
                          settings=S)
    # M6: 2.30 < 1.40 + max(0.5, 1.022) = 2.42
    assert out.outcome is Outcome.LOCAL_CONTROL and out.j0_residual is True
    assert "nadir 1.40 + max(0.5, 0.73 x 1.40) = 2.42 mL" in out.reason


def test_failure_at_m3() -> None:
    visits = _series((Visit.J0, 0.62), (Visit.M1, 0.70), (Visit.M3, 2.41), (Visit.M6, 3.0))
    out = classify_lesion(visits[::-1], settings=S)  # any input order
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.M3
    assert "M3 residual 2.41 mL >= nadir 0.62 + max(0.5, 0.73 x 0.62) = 1.12 mL" in out.reason


def test_nadir_is_the_smallest_volume_so_far() -> None:
    out = classify_lesion(_series((Visit.J0, 2.0), (Visit.M1, 1.0), (Visit.M3, 0.3), (Visit.M6, 0.85)),
                          settings=S)
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.M6
    assert "nadir 0.30 + max(0.5, 0.73 x 0.30) = 0.80 mL" in out.reason


def test_failure_by_new_nodule() -> None:
    visits = [_v(Visit.J0, 0.0), _v(Visit.M1, 0.0), _v(Visit.M3, 0.1), _v(Visit.M6, 0.4, new_nodule_ml=0.6)]
    out = classify_lesion(visits, settings=S)
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.M6
    assert "new enhancing nodule 0.60 mL >= 0.5 mL" in out.reason


def test_m1_pseudo_progression_not_confirmed_is_control() -> None:
    out = classify_lesion(_series((Visit.J0, 0.3), (Visit.M1, 1.5), (Visit.M3, 0.4), (Visit.M6, 0.3)),
                          settings=S)
    assert out.outcome is Outcome.LOCAL_CONTROL
    assert "not confirmed at M3" in out.reason and "pseudo-progression" in out.reason


def test_m1_rise_confirmed_is_failure_at_m1() -> None:
    out = classify_lesion(_series((Visit.J0, 0.3), (Visit.M1, 1.5), (Visit.M3, 1.6)), settings=S)
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.M1
    assert "confirmed at M3" in out.reason and "unconfirmed" not in out.reason
    assert "M3 residual 1.60 mL >= nadir 0.30 + max(0.5, 0.73 x 0.30) = 0.80 mL" in out.reason


def test_m1_rise_without_later_visit_is_unconfirmed_failure() -> None:
    out = classify_lesion(_series((Visit.J0, 0.3), (Visit.M1, 1.5), (Visit.M3, None)), settings=S)
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.M1
    assert "unconfirmed" in out.reason


def test_unscheduled_visit_is_a_follow_up_in_time_order() -> None:
    visits = [_v(Visit.J0, 0.2), _v(Visit.UNSCHEDULED, 1.3, days=60), _v(Visit.M3, 1.4)]
    out = classify_lesion(visits, settings=S)
    assert out.outcome is Outcome.LOCAL_FAILURE and out.failure_timepoint is Visit.UNSCHEDULED
    assert "UNSCHEDULED (day 60) residual 1.30 mL" in out.reason


@pytest.mark.parametrize(
    ("visits", "text"),
    [
        ([_v(Visit.PRE, None), _v(Visit.M1, 0.1), _v(Visit.M3, 0.1)], "no usable J0"),
        ([_v(Visit.J0, 0.5, usable=False), _v(Visit.M3, 0.1)], "no usable J0"),
        ([_v(Visit.J0, 0.5), _v(Visit.M1, None)], "no usable follow-up"),
        ([_v(Visit.J0, 0.5), _v(Visit.M3, 9.0, usable=False)], "no usable follow-up"),
    ],
)
def test_indeterminate(visits: list[VisitSummary], text: str) -> None:
    out = classify_lesion(visits, settings=S)
    assert out.outcome is Outcome.INDETERMINATE and out.failure_timepoint is None
    assert text in out.reason


def test_unusable_visits_are_named_and_ignored() -> None:
    visits = [_v(Visit.J0, 0.1), _v(Visit.M1, 5.0, usable=False), _v(Visit.M3, 0.1)]
    out = classify_lesion(visits, settings=S)
    assert out.outcome is Outcome.LOCAL_CONTROL and "ignored unusable: M1" in out.reason


def test_height_loss_and_baseline_fracture() -> None:
    visits = [_v(Visit.PRE, None, genant_grade=1), _v(Visit.J0, 0.0, genant_grade=0),
              _v(Visit.M1, 0.0, height_loss_pct=5.0, height_loss_mm=1.0),
              _v(Visit.M3, 0.0, height_loss_pct=12.0, height_loss_mm=3.1)]
    out = classify_lesion(visits, settings=S)
    assert out.baseline_fracture is True  # PRE wins over J0
    assert out.height_loss is True and out.max_height_loss_pct == pytest.approx(12.0)
    assert "height loss at M3: 12.0 % / 3.1 mm" in out.reason
    none = classify_lesion([_v(Visit.J0, 0.0, genant_grade=0), _v(Visit.M3, 0.0, height_loss_pct=14.9,
                                                                   height_loss_mm=2.9)], settings=S)
    assert none.baseline_fracture is False and none.height_loss is False
    unknown = classify_lesion(_series((Visit.J0, 0.0), (Visit.M3, 0.0)), settings=S)
    assert unknown.baseline_fracture is None and unknown.height_loss is None
    assert unknown.max_height_loss_pct is None


def test_settings_change_the_thresholds() -> None:
    strict = Settings(j0_residual_ml=0.05, progression_floor_ml=0.1)
    out = classify_lesion(_series((Visit.J0, 0.1), (Visit.M3, 0.25)), settings=strict)
    assert out.j0_residual is True and out.outcome is Outcome.LOCAL_FAILURE
    assert "nadir 0.10 + max(0.1, 0.73 x 0.10) = 0.20 mL" in out.reason
