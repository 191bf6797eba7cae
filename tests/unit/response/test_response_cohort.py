"""Cohort table counts, Markdown rendering and agreement (Cohen's kappa by hand)."""

from __future__ import annotations

import datetime as dt

import pytest
from scipy import stats

from pipeline.domain import Lesion, LesionResult, Outcome
from pipeline.response.cohort import agreement, cohort_markdown, cohort_table

C, F, IND = Outcome.LOCAL_CONTROL, Outcome.LOCAL_FAILURE, Outcome.INDETERMINATE


def _r(lid: str, outcome: Outcome, j0_residual: bool | None, *, fracture: bool | None = None,
       loss: bool | None = None, patient: str | None = None, **extra: str) -> LesionResult:
    lesion = Lesion(patient or f"P-{lid}", lid, "L2", dt.date(2021, 1, 1), extra=dict(extra))
    return LesionResult(lesion, j0_residual, 0.0 if j0_residual is None else float(j0_residual), outcome,
                        None, fracture, loss, None, "test")


def _cohort() -> list[LesionResult]:
    return [
        # day 0 without residual: 3 control, 1 failure, 1 indeterminate
        _r("L1", C, False, fracture=True, loss=True, ebrt_date="", patient="P1", vas_before="8", vas_m1="2"),
        _r("L2", C, False, fracture=True, loss=False, ebrt_date="2021-03-01", patient="P1",
           vas_before="8", vas_m1="2"),
        _r("L3", C, False, fracture=False, ebrt_date="2022-01-01", patient="P3", vas_before="7", vas_m1="3"),
        _r("L4", F, False, fracture=False, patient="P4", vas_before="9", vas_m1="1"),
        _r("L10", IND, False),
        # day 0 with residual: 2 control, 2 failure
        _r("L5", C, True, fracture=True, loss=True, ebrt_date="2021-02-01", patient="P5",
           vas_before="6", vas_m1="2"),
        _r("L6", C, True, ebrt_date="bad date"),
        _r("L7", F, True, fracture=False, vas_before="5", vas_m1="not a number"),
        _r("L8", F, True, fracture=False, patient="P8", vas_before="8", vas_m1="3"),
        # no usable J0
        _r("L9", IND, None),
    ]


def test_cohort_counts_with_denominators() -> None:
    last = {"L1": dt.date(2021, 6, 1), "L2": dt.date(2021, 6, 1), "L3": dt.date(2021, 6, 1)}
    t = cohort_table(_cohort(), last_follow_up_date=last)
    assert t["n_lesions"] == 10 and t["n_determinate"] == 8
    assert t["local_control"] == {"n": 5, "N": 8, "pct": 62.5}
    assert t["local_failure"] == {"n": 3, "N": 8, "pct": 37.5}
    assert t["indeterminate"] == {"n": 2, "N": 10, "pct": 20.0}
    assert (t["j0_no_residual"]["n"], t["j0_no_residual"]["N"]) == (5, 9)
    assert t["j0_no_residual"]["controlled"] == {"n": 3, "N": 4, "pct": 75.0}
    assert (t["j0_residual"]["n"], t["j0_residual"]["N"]) == (4, 9)
    assert t["j0_residual"]["controlled"] == {"n": 2, "N": 4, "pct": 50.0}
    assert (t["baseline_fracture"]["n"], t["baseline_fracture"]["N"]) == (3, 7)
    assert t["baseline_fracture"]["height_loss"] == {"n": 2, "N": 3, "pct": 66.7}
    # CRAV alone: L1 (no EBRT), L3 (EBRT after the last follow-up); L2 EBRT before; L5 / L6 unknown
    assert t["crav_alone_control"] == {"n": 2, "N": 8, "pct": 25.0, "unknown": 2}


def test_pain_is_paired_per_patient() -> None:
    pain = cohort_table(_cohort())["pain"]
    before, after = [8, 7, 9, 6, 8], [2, 3, 1, 2, 3]  # P1 counted once; L7 unparseable
    assert pain["n_patients"] == 5
    assert pain["vas_before_mean"] == pytest.approx(7.6) and pain["vas_m1_mean"] == pytest.approx(2.2)
    assert pain["wilcoxon_p"] == pytest.approx(float(stats.wilcoxon(before, after).pvalue))


def test_optional_sections_absent_without_registry_columns() -> None:
    t = cohort_table([_r("A", C, False), _r("B", F, True)])
    assert t["crav_alone_control"] is None and t["pain"] is None
    md = cohort_markdown(t)
    assert "no ebrt_date column" in md and "no vas_before" in md
    assert "| local control | 50.0 % (1/2) |" in md


def test_markdown_shows_numerators() -> None:
    t = cohort_table(_cohort(), last_follow_up_date={})
    t["agreement"] = agreement({"L1": C}, {"L1": C})
    md = cohort_markdown(t)
    assert md.startswith("# Cohort summary (10 lesions, 8 with a determinate outcome)")
    assert "| day-0 MRI without residual tumour | 55.6 % (5/9) |" in md
    assert "paired Wilcoxon p" in md and "accuracy 1.000" in md


def test_empty_cohort() -> None:
    t = cohort_table([])
    assert t["local_control"] == {"n": 0, "N": 0, "pct": None}
    assert "n/a (0/0)" in cohort_markdown(t)


def test_agreement_kappa_by_hand() -> None:
    # reference rows x pipeline columns (control, failure): [[6, 1], [1, 2]]
    reference = {f"L{i}": C for i in range(7)} | {f"L{i}": F for i in range(7, 10)}
    pipeline = dict(reference) | {"L0": F, "L7": C}
    pipeline["EXTRA"] = IND
    a = agreement(pipeline, reference | {"MISSING": "local_control"})
    assert a["matrix"] == [[6, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert a["n"] == 10 and a["accuracy"] == pytest.approx(0.8)
    # p_o = 0.8, p_e = (7*7 + 3*3) / 100 = 0.58, kappa = 0.22 / 0.42
    assert a["kappa"] == pytest.approx(0.22 / 0.42)
    assert a["only_in_pipeline"] == ["EXTRA"] and a["only_in_reference"] == ["MISSING"]


def test_agreement_degenerate_and_errors() -> None:
    same = agreement({"A": C, "B": C}, {"A": C, "B": C})
    assert same["accuracy"] == 1.0 and same["kappa"] is None  # chance agreement 1: undefined
    assert agreement({}, {})["kappa"] is None
    with pytest.raises(ValueError, match="lesion 'A'"):
        agreement({"A": "cured"}, {"A": C})
