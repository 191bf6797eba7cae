"""What the catalog stores: the SQL schema, the records read back, and values to and from SQLite.

The tables ``files`` (every file of the export folder, its status and stored header) and
``series`` (the series index with roles); the frozen records :class:`FileRecord`,
:class:`SeriesRecord` and :class:`StudyRecord`; DICOM dates (:func:`parse_da`), catalog
URLs, and file names or text that are not valid UTF-8 as SQLite holds them. Used by
:class:`pipeline.ingest.catalog.Catalog`, which re-exports the public names.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.domain import SeriesRole

FILE_STATUSES = ("indexed", "ignored", "quarantined", "arriving")
#: Reason prefix of files quarantined because their series is claimed by several PatientIDs
#: (recomputed on every scan: the conflict goes away when its cause does).
IDENTITY_CONFLICT = "identity conflict: "
SCHEMA_VERSION = 2  # 2: files.sha256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'ignored', 'quarantined', 'arriving')),
    reason TEXT NOT NULL DEFAULT '',
    patient_id TEXT,
    study_uid TEXT,
    series_uid TEXT,
    sop_uid TEXT,
    header TEXT,
    sha256 TEXT  -- of the whole file; NULL until computed, reset whenever the scan rewrites the row
);
CREATE INDEX IF NOT EXISTS files_patient ON files (patient_id);
CREATE INDEX IF NOT EXISTS files_series ON files (series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    study_date TEXT,
    modality TEXT NOT NULL,
    role TEXT NOT NULL,
    role_reason TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    frame_of_reference_uid TEXT NOT NULL DEFAULT '',
    n_files INTEGER NOT NULL,
    dynamic_group TEXT,
    dynamic_index INTEGER,
    series_number INTEGER,
    acquisition_time_s REAL
);
CREATE INDEX IF NOT EXISTS series_patient ON series (patient_id);
"""


@dataclass(frozen=True)
class FileRecord:
    """One file of the export folder and what became of it."""

    path: Path
    size: int
    mtime_ns: int
    status: str
    reason: str
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None


@dataclass(frozen=True)
class SeriesRecord:
    """One series, its role and the reason for it."""

    series_uid: str
    study_uid: str
    patient_id: str
    study_date: dt.date | None
    modality: str
    role: SeriesRole
    role_reason: str
    description: str
    frame_of_reference_uid: str
    n_files: int
    dynamic_group: str | None = None
    dynamic_index: int | None = None
    series_number: int | None = None
    acquisition_time_s: float | None = None


@dataclass(frozen=True)
class StudyRecord:
    """One study of a patient."""

    study_uid: str
    patient_id: str
    study_date: dt.date | None
    modalities: tuple[str, ...]
    n_series: int


def parse_da(value: str | None) -> dt.date | None:
    """DICOM DA (``YYYYMMDD``) or ISO date text to a date, None when absent or malformed."""
    if not value:
        return None
    text = value.strip().replace("-", "").replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _db_path(path: str) -> str | bytes:
    """A path as stored: text, or its raw bytes when it is not valid UTF-8 (undecodable file names)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _py_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _db_text(value: Any) -> Any:
    """Text that SQLite accepts: lone surrogates (from undecodable bytes) are escaped."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _loose_id(patient_id: str) -> str:
    """A PatientID compared loosely: case, spaces and punctuation ignored (``sion 007`` ~ ``SION-007``)."""
    return "".join(ch for ch in patient_id.casefold() if ch.isalnum())


def _path_from_url(url: str | Path) -> str:
    if isinstance(url, Path):
        return str(url)
    if "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite":
        raise ValueError(f"catalog URL {url!r}: only sqlite:///path (or a plain file path) is supported")
    # sqlite:///relative/or/:memory:  and  sqlite:////absolute
    if not rest.startswith("/"):
        raise ValueError(f"catalog URL {url!r} must look like sqlite:///path/catalog.sqlite")
    return rest[1:] or ":memory:"


def _series_record(r: sqlite3.Row) -> SeriesRecord:
    return SeriesRecord(
        series_uid=r["series_uid"],
        study_uid=r["study_uid"],
        patient_id=r["patient_id"],
        study_date=parse_da(r["study_date"]),
        modality=r["modality"],
        role=SeriesRole(r["role"]),
        role_reason=r["role_reason"],
        description=r["description"],
        frame_of_reference_uid=r["frame_of_reference_uid"],
        n_files=r["n_files"],
        dynamic_group=r["dynamic_group"],
        dynamic_index=r["dynamic_index"],
        series_number=r["series_number"],
        acquisition_time_s=r["acquisition_time_s"],
    )
