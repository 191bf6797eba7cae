"""A read-only catalog (the review page's): reads what a run wrote, writes nothing, is not blocked by a writer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog, SeriesRecord


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
