"""Cohort table counts, Markdown rendering and agreement (Cohen's kappa by hand)."""

from __future__ import annotations

import datetime as dt

import pytest
from scipy import stats

from pipeline.domain import Lesion, LesionResult, Outcome
from pipeline.response.cohort import (
    BOOLEAN_LABELS,
    agreement,
    agreement_markdown,
    agreement_summary,
    cohens_kappa,
    cohort_markdown,
    cohort_table,
)

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
    assert "paired Wilcoxon p" in md and "observed agreement 1.000 (1/1)" in md


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
    assert a["per_class"]["local_control"] == {"reference": 7, "pipeline": 7, "agree": 6}
    assert a["per_class"]["indeterminate"] == {"reference": 0, "pipeline": 0, "agree": 0}
    assert a["disagreements"] == [{"lesion_id": "L0", "reference": "local_control", "pipeline": "local_failure"},
                                  {"lesion_id": "L7", "reference": "local_failure", "pipeline": "local_control"}]


def test_agreement_degenerate_and_errors() -> None:
    same = agreement({"A": C, "B": C}, {"A": C, "B": C})
    assert same["accuracy"] == 1.0 and same["kappa"] is None  # chance agreement 1: undefined
    assert agreement({}, {})["kappa"] is None
    with pytest.raises(ValueError, match="lesion 'A'"):
        agreement({"A": "cured"}, {"A": C})


# ---------------------------------------------------------------- Cohen's kappa and its standard error

def test_kappa_cohen_1960_table_1() -> None:
    """Cohen (1960), Educ. Psychol. Meas. 20:37-46, Table 1: 200 items, 3 categories, kappa .492.

    Proportions [[.44, .07, .09], [.05, .20, .05], [.01, .03, .06]] (the same table is the example
    of R psych::cohen.kappa, "cohen reports .492"): p_o = .70, p_e = .60 x .50 + .30 x .30 + .10 x .20
    = .41, kappa = .29 / .59.
    """
    k = cohens_kappa([[88, 14, 18], [10, 40, 10], [2, 6, 12]])
    assert k["n"] == 200
    assert k["observed_agreement"] == pytest.approx(0.70)
    assert k["chance_agreement"] == pytest.approx(0.41)
    assert k["kappa"] == pytest.approx(0.29 / 0.59)
    assert round(k["kappa"], 3) == 0.492


def test_kappa_standard_error_matches_sas_proc_freq() -> None:
    """SAS PROC FREQ / AGREE printout for [[0, 4, 1], [0, 8, 0], [0, 1, 5]] (reproduced in statsmodels'
    test suite, statsmodels/stats/tests/test_inter_rater.py): kappa 0.4842, ASE 0.1380, 95 % CI
    0.2137 to 0.7547, ASE under H0 0.1484. SAS's ASE is the Fleiss-Cohen-Everitt (1969) formula.
    The table has an empty first column, which the formula must survive."""
    k = cohens_kappa([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert k["kappa"] == pytest.approx(0.4842, abs=5e-5)
    assert k["kappa_se"] == pytest.approx(0.1380, abs=5e-5)
    assert k["kappa_ci95"] == pytest.approx([0.2137, 0.7547], abs=5e-5)
    assert k["kappa_se_h0"] == pytest.approx(0.1484, abs=5e-5)


def test_kappa_two_by_two_by_hand() -> None:
    """50 items, [[20, 5], [10, 15]]: p_o = 35/50 = .7, p_e = (25 x 30 + 25 x 20) / 2500 = .5, kappa .4.

    SE by hand (Fleiss, Cohen & Everitt 1969) with p = [[.4, .1], [.2, .3]], rows (.5, .5),
    columns (.6, .4), 1 - kappa = .6:
    A = .4 (1 - 1.1 x .6)^2 + .3 (1 - .9 x .6)^2 = .4 x .1156 + .3 x .2116 = .10972
    B = .36 [.1 (.6 + .5)^2 + .2 (.4 + .5)^2] = .36 (.121 + .162) = .10188
    C = (.4 - .5 x .6)^2 = .01
    var = (A + B - C) / (50 x .25) = .2016 / 12.5
    """
    k = cohens_kappa([[20, 5], [10, 15]])
    assert k["kappa"] == pytest.approx(0.4)
    assert k["kappa_se"] == pytest.approx((0.2016 / 12.5) ** 0.5)
    low, high = k["kappa_ci95"]
    assert low == pytest.approx(0.4 - 1.959964 * k["kappa_se"], abs=1e-6)
    assert high == pytest.approx(0.4 + 1.959964 * k["kappa_se"], abs=1e-6)
    # under H0: [p_e + p_e^2 - sum p_i. p_.i (p_i. + p_.i)] / (n (1 - p_e)^2)
    var0 = (0.5 + 0.25 - (0.5 * 0.6 * 1.1 + 0.5 * 0.4 * 0.9)) / (50 * 0.25)
    assert k["kappa_se_h0"] == pytest.approx(var0**0.5)


def test_kappa_perfect_and_degenerate() -> None:
    perfect = cohens_kappa([[5, 0], [0, 5]])
    assert perfect["kappa"] == 1.0 and perfect["kappa_se"] == 0.0 and perfect["kappa_ci95"] == [1.0, 1.0]
    worst = cohens_kappa([[0, 5], [5, 0]])
    assert worst["kappa"] == -1.0 and worst["kappa_ci95"][0] >= -1.0  # CI clipped to [-1, 1]
    empty = cohens_kappa([[0, 0], [0, 0]])
    assert empty["n"] == 0 and empty["kappa"] is None and empty["observed_agreement"] is None
    one_class = cohens_kappa([[4, 0], [0, 0]])  # p_e = 1: kappa 0/0
    assert one_class["observed_agreement"] == 1.0 and one_class["kappa"] is None
    assert one_class["kappa_se"] is None and one_class["kappa_ci95"] is None
    with pytest.raises(ValueError, match="square"):
        cohens_kappa([[1, 2], [3]])
    with pytest.raises(ValueError, match="negative"):
        cohens_kappa([[1, -2], [3, 4]])


def test_agreement_reports_kappa_ci_and_unrated() -> None:
    pipeline = {"A": True, "B": False, "C": None, "D": True, "E": True}
    reference = {"A": True, "B": False, "C": True, "D": None, "F": False}
    a = agreement(pipeline, reference, labels=BOOLEAN_LABELS)
    assert a["labels"] == ["true", "false"] and a["matrix"] == [[1, 0], [0, 1]]
    assert a["n"] == 2 and a["kappa"] == 1.0 and a["kappa_ci95"] == [1.0, 1.0]
    assert a["unrated_pipeline"] == ["C"] and a["unrated_reference"] == ["D"]
    assert a["only_in_pipeline"] == ["E"] and a["only_in_reference"] == ["F"]
    with pytest.raises(ValueError, match="lesion 'A'"):
        agreement({"A": "maybe"}, {"A": "true"}, labels=BOOLEAN_LABELS)


def test_cohort_table_with_reference_read() -> None:
    results = [_r("A", C, False), _r("B", F, True), _r("C", IND, None), _r("D", C, True)]
    t = cohort_table(results, reference_outcome={"A": C, "B": "local_failure", "C": F, "X|<b>": C},
                     reference_j0_residual={"A": False, "B": True, "C": None, "D": False})
    agree = t["agreement"]
    assert agree["n"] == 3 and agree["only_in_pipeline"] == ["D"] and agree["only_in_reference"] == ["X|<b>"]
    assert agree["matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    j0 = t["j0_residual_agreement"]
    assert j0["matrix"] == [[1, 0], [1, 1]] and j0["unrated_reference"] == ["C"]
    md = cohort_markdown(t)
    assert "| agreement with the reference read (outcome) | observed agreement 0.667 (2/3)" in md
    assert "| agreement with the reference read (day-0 residual) |" in md
    assert "## Outcome: reference read (rows) vs pipeline (columns)" in md
    assert "| local_failure | 0 | 1 | 1 | 2 |" in md and "| total | 1 | 1 | 1 | 3 |" in md
    assert "only in the reference read: X\\|&lt;b&gt;" in md  # ids cannot break the table or inject HTML
    assert "agreement" not in cohort_table(results)  # no reference read: no agreement keys


def test_agreement_text_helpers() -> None:
    a = agreement({"A": C}, {"A": C})
    assert "n/a (undefined" in agreement_summary(a)
    lines = agreement_markdown(a, "t")
    assert lines[0] == "## t" and lines[-1] == "| total | 1 | 0 | 0 | 1 |"
