"""A patient's index as JSON (how it reaches the patient flow), and the read-only catalog of the review page."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from pathlib import Path

import pytest

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog, PatientIndex, SeriesRecord, StudyRecord


def test_read_only_reads_while_another_connection_writes_and_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    rec = SeriesRecord("1.2.3.4", "1.2.3", "P-1", None, "MR", SeriesRole.T1, "sagittal T1", "<b>T1</b>", "", 3)
    with Catalog.open(path) as writer:
        with writer.transaction():
            writer.replace_patient_series("P-1", [rec])
        with writer.transaction() as db:  # a run in the middle of a write transaction
            db.execute("UPDATE series SET n_files = 4 WHERE series_uid = '1.2.3.4'")
            with Catalog.open(path, read_only=True) as reader:
                assert [s.n_files for s in reader.series("P-1")] == [3]  # the last committed state, at once
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    reader.set_file_status([("x", "ignored", "y")])
    with Catalog.open(path, read_only=True) as reader:
        assert reader.series("P-1")[0].n_files == 4


def test_read_only_refuses_a_missing_catalog_without_creating_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `crav run` on this output folder first"):
        Catalog.open(tmp_path / "none.sqlite", read_only=True)
    assert not (tmp_path / "none.sqlite").exists()


def test_patient_index_round_trips_through_json_undecodable_names_included(tmp_path: Path) -> None:
    odd = Path(os.fsdecode(b"/export/IM\xff01"))  # a file name that is not valid UTF-8
    t1 = SeriesRecord("1.2.3.4", "1.2.3", "P-1", dt.date(2021, 6, 16), "MR", SeriesRole.DCE, "8 phases", "<b>",
                      "1.2.9", 2, dynamic_group="g1", dynamic_index=0, series_number=7, acquisition_time_s=36000.5)
    index = PatientIndex("P-1", (t1,), (StudyRecord("1.2.3", "P-1", None, ("MR", "CT"), 1),),
                         {"1.2.3.4": (Path("/export/a.dcm"), odd)}, None, {odd: "ab" * 32}, Path("/export"))
    text = json.dumps(index.to_json())  # ASCII JSON: the undecodable byte travels as an escaped surrogate
    back = PatientIndex.from_json(json.loads(text))
    assert back == index
    assert os.fsencode(back.files("1.2.3.4")[1]) == b"/export/IM\xff01"
    empty = PatientIndex("P-2", (), (), {}, "no usable DICOM series")
    assert PatientIndex.from_json(json.loads(json.dumps(empty.to_json()))) == empty
