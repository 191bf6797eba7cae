"""Regression floors of issue 4 on a full-resolution phantom patient never used for tuning.

One patient of seed 11 (three treated levels, 1.25 mm pixels and 4.4 mm sagittal slices, five
or more visits, each study repositioned) is generated, run through the Prefect flow and compared
with the generator's own truth. The settings were chosen on the seed-5 development cohort and
reported on seed 1 (benchmarks/RESULTS.md); the floors below sit under those figures with a
margin, so a change that degrades segmentation or registration fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.evaluate import EvaluationReport, evaluate
from pipeline.phantom.generate import generate_cohort


@pytest.fixture(scope="module")
def seed11(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, Path, EvaluationReport]:
    from flows.crav_flow import run_export

    cohort = tmp_path_factory.mktemp("seed11")
    generate_cohort(cohort, 1, 11)
    out = tmp_path_factory.mktemp("seed11-run")
    run_export(cohort, out, overrides={"quiet_period_s": 0.0})
    return cohort, out, evaluate(cohort / "truth.json", out)


def test_outputs_follow_the_contract(seed11: tuple[Path, Path, EvaluationReport],
                                     check_outputs: Callable[..., str]) -> None:
    cohort, out, _ = seed11
    check_outputs(out, registry=cohort / "treatments.csv")
    assert list((out / "patients").rglob("to_j0.tfm")), "no registration transform written"


def test_dice_floors(seed11: tuple[Path, Path, EvaluationReport]) -> None:
    _, _, report = seed11
    body, cement = report.dice["vertebra"], report.dice["cement"]
    assert len(body.values) >= 10 and len(cement.values) >= 8
    assert body.median is not None and body.median >= 0.90, str(body)
    assert cement.median is not None and cement.median >= 0.82, str(cement)
    grid = report.dice_source_grid
    assert grid["vertebra"].median is not None and grid["vertebra"].median >= 0.91, str(grid["vertebra"])
    assert grid["cement"].median is not None and grid["cement"].median >= 0.87, str(grid["cement"])
    ablation = report.dice["ablation"]
    assert ablation.median is not None and ablation.median >= 0.60, str(ablation)


def test_registration_and_cement_volume_floors(seed11: tuple[Path, Path, EvaluationReport]) -> None:
    _, _, report = seed11
    tre = report.errors["registration_tre_mm"]
    assert len(tre.errors) >= 8
    assert tre.median is not None and tre.median <= 1.0, str(tre)
    # Measured 16.5 % on this patient (three adjacent levels, 3.6-7.5 mL, every mass under-counted
    # by its partial-volume boundary on 4.4 mm slices), above the 10 % target: see RESULTS.
    volume = report.errors["cement_volume_pct"]
    assert volume.median is not None and volume.median <= 20.0, str(volume)
