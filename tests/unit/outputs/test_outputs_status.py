"""crav status reads an output folder: the last run, each patient, a run in progress, bad folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.outputs.lock import output_lock
from pipeline.outputs.status import format_status, read_status


def _folder(tmp_path: Path, problems: list[str], quarantined: int = 0) -> Path:
    out = tmp_path / "out"
    (out / "patients" / "P1").mkdir(parents=True)
    (out / "patients" / "P2").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({
        "started": "2026-01-02T03:04:05+00:00", "finished": "2026-01-02T03:05:00+00:00",
        "input": "/pacs/export", "registry": "/pacs/export/treatments.csv",
        "software": {"crav-followup": "0.1.0", "python": "3.11.7"},
        "settings": {"j0_residual_ml": 0.3, "rim_max_thickness_mm": 2.0}, "problems": problems,
        "patients": {"P1": "unchanged: inputs, registry rows, settings and software as in the previous run",
                     "P3": "not processed: not among --patient and no previous results"},
        "scan": {"new": 0, "unchanged": 10, "quarantined": quarantined}}))
    (out / "patients" / "P1" / "state.json").write_text(json.dumps({
        "fingerprint": "abc", "problems": [],
        "results": [{"lesion": {"lesion_id": "P1-L2"}, "outcome": "local_control"}]}))
    (out / "patients" / "P2" / "state.json").write_text("{not json")
    return out


def test_status_of_a_folder(tmp_path: Path) -> None:
    status = read_status(_folder(tmp_path, []))
    by_id = {p.patient_id: p for p in status.patients}
    assert by_id["P1"].outcomes == {"P1-L2": "local_control"} and by_id["P1"].fingerprint == "abc"
    assert by_id["P2"].decision == "not in the last run" and "unreadable" in by_id["P2"].problems[0]
    assert by_id["P3"].computed_at is None and by_id["P3"].decision.startswith("not processed")
    assert status.changed_settings() == {"j0_residual_ml": (0.2, 0.3)}
    assert status.needs_a_look and status.running is None  # P2's unreadable state
    text = format_status(status)
    assert "j0_residual_ml = 0.3 (default 0.2)" in text and "P1-L2 local_control" in text


def test_status_shows_a_run_in_progress_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _folder(tmp_path, ["patient P9: processing failed"], quarantined=2)
    with output_lock(out):
        status = read_status(out)
    assert status.running is not None and f"process {os.getpid()}" in status.running
    assert status.quarantined == 2 and "2 input file(s) quarantined" in format_status(status)
    assert cli.main(["status", "--output", str(out)]) == 1
    assert "patient P9: processing failed" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["status", "--output", str(empty)]) == 2
    assert "holds no run.json" in capsys.readouterr().err
