"""Re-running is incremental: an unchanged patient is reused, a changed or forced one recomputed."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from export_edits import touch_header

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog

P1 = "CRAV-20211001"


def _decisions(out: Path) -> dict[str, str]:
    return json.loads((out / "run.json").read_text(encoding="utf-8"))["patients"]


def _lesion_rows(out: Path) -> list[dict[str, str]]:
    with (out / "lesions.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.usefixtures("prefect_harness")
def test_unchanged_patients_are_reused_and_changed_ones_recomputed(repo_root: Path, tmp_path: Path) -> None:
    from flows.crav_flow import run_export

    export = tmp_path / "export"
    shutil.copytree(repo_root / "sample_dicom", export)
    out = tmp_path / "out"
    quiet = {"quiet_period_s": 0.0}

    run_export(export, out, patients=[P1], overrides=quiet)
    first = _decisions(out)
    assert first[P1] == "recomputed: no previous results"
    # the other registry patients keep a row, marked as not processed (nothing silently missing)
    others = [r for r in _lesion_rows(out) if r["patient_id"] != P1]
    assert others and all(r["outcome"] == "indeterminate" and "--patient" in r["reason"] for r in others)
    table = (out / "lesions.csv").read_bytes()

    run_export(export, out, patients=[P1], overrides=quiet)
    assert _decisions(out)[P1].startswith("unchanged")
    assert (out / "lesions.csv").read_bytes() == table

    with Catalog.open(out / "catalog.sqlite") as catalog:
        t1 = next(s for s in catalog.series(P1) if s.role == SeriesRole.T1)
        p1_file = catalog.files(t1.series_uid)[0]
    # the export written anew, same bytes (new modification time): nothing to recompute
    st = p1_file.stat()
    os.utime(p1_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    run_export(export, out, patients=[P1], overrides=quiet)
    assert _decisions(out)[P1].startswith("unchanged")
    # a file of this patient changes (a header value re-sent by the PACS): the patient is recomputed
    touch_header(p1_file)
    run_export(export, out, patients=[P1], overrides=quiet)
    assert _decisions(out)[P1] == "recomputed: inputs, registry rows, settings or QA corrections changed"

    run_export(export, out, patients=[P1], force=True, overrides=quiet)
    assert _decisions(out)[P1] == "recomputed: --force"
    assert (out / "lesions.csv").read_bytes() == table  # same inputs, same verdicts
