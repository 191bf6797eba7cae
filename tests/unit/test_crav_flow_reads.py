"""crav run --reads: the cohort summary gains the agreement with the reference read (SPEC section 6)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from flows.crav_flow import cohort_summary_table
from pipeline.domain import Lesion, LesionResult, Outcome
from pipeline.outputs.tables import write_cohort_summary
from pipeline.response.cohort import cohort_markdown


def _r(lid: str, outcome: Outcome, j0: bool | None) -> LesionResult:
    return LesionResult(Lesion("P1", lid, "L2", dt.date(2021, 1, 1)), j0, None, outcome, None, None, None, None, "t")


RESULTS = [_r("A", Outcome.LOCAL_CONTROL, False), _r("B", Outcome.LOCAL_FAILURE, True),
           _r("C", Outcome.INDETERMINATE, None)]


def test_summary_with_reads(tmp_path: Path) -> None:
    reads = tmp_path / "reads.csv"
    reads.write_text("lesion_id;outcome;j0_residual\nA;local_control;false\nB;local_control;true\n", encoding="utf-8")
    problems: list[str] = []
    table = cohort_summary_table(RESULTS, {}, reads, problems)
    assert problems == []
    assert table["agreement"]["matrix"] == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert table["agreement"]["only_in_pipeline"] == ["C"]
    assert table["j0_residual_agreement"]["matrix"] == [[1, 0], [0, 1]]
    write_cohort_summary(tmp_path / "out", table, cohort_markdown(table))  # JSON-able, as the flow writes it
    saved = json.loads((tmp_path / "out" / "cohort_summary.json").read_text(encoding="utf-8"))
    assert saved["agreement"]["kappa"] == 0.0 and saved["agreement"]["n"] == 2
    md = (tmp_path / "out" / "cohort_summary.md").read_text(encoding="utf-8")
    assert "agreement with the reference read (outcome)" in md and "only in the results: C" in md


def test_summary_without_reads_is_unchanged() -> None:
    problems: list[str] = []
    table = cohort_summary_table(RESULTS, {}, None, problems)
    assert "agreement" not in table and "j0_residual_agreement" not in table and problems == []


def test_bad_reads_never_stop_the_run(tmp_path: Path) -> None:
    reads = tmp_path / "reads.csv"
    reads.write_text("lesion_id,outcome\nA,cured\n", encoding="utf-8")
    problems: list[str] = []
    table = cohort_summary_table(RESULTS, {}, reads, problems)
    assert "agreement" not in table and table["n_lesions"] == 3
    assert len(problems) == 1 and "reads.csv not used in cohort_summary" in problems[0] and "line 2" in problems[0]
    problems.clear()
    cohort_summary_table(RESULTS, {}, tmp_path / "gone.csv", problems)
    assert len(problems) == 1 and "gone.csv" in problems[0]
