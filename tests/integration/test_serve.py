"""``crav serve`` against a real Prefect server, as the README runs it.

The first scheduled run processes the export, a later one finds nothing new; the one after a file changed
recomputes only that patient; ``prefect deployment run ... --param patient_id=`` re-runs one
patient and keeps the others; the run's summary and lesion table are Prefect artifacts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import stop_group

P1, P2 = "CRAV-20211001", "CRAV-20211002"
DEPLOYMENT = "crav-run/crav-test"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run_record(out: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return record


def _decisions(out: Path) -> dict[str, str]:
    decisions: dict[str, str] = _run_record(out).get("patients", {})
    return decisions


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout_s:.0f} s; crav serve said:\n{log.read_text()[-3000:]}")


def _deployment_run(env: dict[str, str], *params: str) -> subprocess.CompletedProcess[str]:
    cmd = [_bin("prefect"), "deployment", "run", DEPLOYMENT, "--watch", "--watch-interval", "1",
           "--watch-timeout", "300"]
    for p in params:
        cmd += ["--param", p]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=360, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Completed" in proc.stdout, proc.stdout
    return proc


UNCHANGED = "unchanged: inputs, registry rows, settings and software as in the previous run"


@pytest.fixture
def served(prefect_server: dict[str, str], repo_root: Path, tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """``crav serve`` of a copy of the sample export, every 20 s."""
    export = tmp_path / "export"
    shutil.copytree(repo_root / "sample_dicom", export)
    out = tmp_path / "out"
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([_bin("crav"), "serve", "--input", str(export), "--output", str(out),
                                 "--interval", "20", "--quiet-period", "0", "--name", "crav-test"],
                                env=prefect_server, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield export, out, log
        finally:  # Ctrl-C; a flow run in progress may hold it up: then the process group is killed
            stop_group(proc, signal.SIGINT, grace_s=60)


def test_scheduled_runs_process_what_is_new_and_one_patient_reruns(
        served: tuple[Path, Path, Path], prefect_server: dict[str, str], check_outputs: Callable[..., str]) -> None:
    export, out, log = served
    _wait_for(lambda: bool(_decisions(out)), 300, "the first scheduled run", log)
    assert set(_decisions(out).values()) == {"recomputed: no previous results"}
    check_outputs(out, registry=export / "treatments.csv")
    lesions = (out / "lesions.csv").read_bytes()
    # the schedule goes on; nothing new in the export: nothing recomputed
    _wait_for(lambda: set(_decisions(out).values()) == {UNCHANGED}, 120, "a scheduled run with nothing new", log)

    # a file of P1 changes (its bytes): the next scheduled run recomputes P1 only
    from export_edits import touch_header

    from pipeline.domain import SeriesRole
    from pipeline.ingest.catalog import Catalog

    with Catalog.open(out / "catalog.sqlite") as catalog:
        t1 = next(s for s in catalog.series(P1) if s.role == SeriesRole.T1)
        p1_file = catalog.files(t1.series_uid)[0]
    touch_header(p1_file)
    changed = "recomputed: inputs, registry rows, settings or QA corrections changed"
    _wait_for(lambda: _decisions(out).get(P1) == changed, 120, "the scheduled run after a change", log)
    assert {v for k, v in _decisions(out).items() if k != P1} == {UNCHANGED}
    assert (out / "lesions.csv").read_bytes() == lesions

    # a radiologist re-runs one patient through the same deployment
    states = {p: (out / "patients" / p / "state.json").stat().st_mtime_ns for p in _decisions(out)}
    proc = _deployment_run(prefect_server, f"patient_id={P2}", "force=true")
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout)
    assert flow_run_id, proc.stdout
    assert (out / "patients" / P2 / "state.json").stat().st_mtime_ns > states[P2]
    # the scheduled runs in between found nothing new: only P2 was written again
    assert all((out / "patients" / p / "state.json").stat().st_mtime_ns == t for p, t in states.items() if p != P2)
    assert (out / "lesions.csv").read_bytes() == lesions
    check_outputs(out, registry=export / "treatments.csv")

    # that run's summary and lesion table are on the server, as artifacts of its flow run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["crav-run-summary", "crav-lesions"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id.group(1))])))}
    summary = str(artifacts["crav-run-summary"].data)
    assert "| patients processed | 1 |" in summary
    assert "| patients kept from an earlier run (not requested) | 2 |" in summary
    rows = json.loads(str(artifacts["crav-lesions"].data))
    assert sorted(r["lesion_id"] for r in rows) == sorted(
        line.split(",")[1] for line in (export / "treatments.csv").read_text().splitlines()[1:])


def test_serve_without_a_server_says_how_to_start_one(repo_root: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([_bin("crav"), "serve", "--input", str(repo_root / "sample_dicom"), "--output",
                           str(tmp_path / "out"), "--interval", "60"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert "PREFECT_API_URL" in proc.stderr and "prefect server start" in proc.stderr
    assert not (tmp_path / "out").exists()
