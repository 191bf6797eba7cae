"""SQLite catalog of the export folder: every file with its status, and the series index.

Only header fields needed downstream are stored (never PatientName or PatientBirthDate);
all SQL is parameterised. A file name that is not valid UTF-8 (a Linux path holding arbitrary
bytes) is stored as a BLOB of its raw bytes and comes back as the same ``str`` (``os.fsdecode``).
The schema, the records and the conversions of values live in
:mod:`pipeline.ingest.catalog_schema`; its public names are importable from here.

Example
-------
>>> cat = Catalog.open("sqlite:///:memory:")
>>> cat.patients()
[]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog_schema import (
    _SCHEMA,
    FILE_STATUSES,
    IDENTITY_CONFLICT,
    SCHEMA_VERSION,
    FileRecord,
    SeriesRecord,
    StudyRecord,
    _db_path,
    _db_text,
    _loose_id,
    _path_from_url,
    _py_path,
    _series_record,
    parse_da,
)

__all__ = [
    "FILE_STATUSES",
    "IDENTITY_CONFLICT",
    "SCHEMA_VERSION",
    "Catalog",
    "FileRecord",
    "PatientIndex",
    "SeriesRecord",
    "StudyRecord",
    "parse_da",
]


@dataclass(frozen=True)
class PatientIndex:
    """What one patient's analysis needs from the catalog, as plain picklable values.

    The analysis of a patient reads DICOM files by path and never the catalog itself: a task
    can then run in another process or on another host that sees the export folder (a Dask
    worker), while the catalog stays with the process that scanned the export.
    """

    patient_id: str
    series: tuple[SeriesRecord, ...]
    studies: tuple[StudyRecord, ...]
    series_files: dict[str, tuple[Path, ...]]  # series_uid -> readable files, one per SOPInstanceUID
    missing_reason: str | None = None  # why the patient has no usable series (None when it has some)
    file_sha256: dict[Path, str] = field(default_factory=dict)  # content digests known to the catalog (provenance)
    root: Path | None = None  # the export folder the paths lie in (provenance records paths relative to it)

    def files(self, series_uid: str) -> list[Path]:
        return list(self.series_files.get(series_uid, ()))

    def dynamic_files(self, group_id: str) -> list[Path]:
        """Files of every phase of a split dynamic, phase after phase (for ``load_dynamic``)."""
        members = sorted((s for s in self.series if s.dynamic_group == group_id),
                         key=lambda s: (s.dynamic_index if s.dynamic_index is not None else -1))
        return [p for s in members for p in self.files(s.series_uid)]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (paths as text, undecodable bytes as surrogates); :meth:`from_json` reverses it."""
        return {
            "patient_id": self.patient_id,
            "series": [{**asdict(s), "study_date": s.study_date.isoformat() if s.study_date else None,
                        "role": s.role.value} for s in self.series],
            "studies": [{**asdict(s), "study_date": s.study_date.isoformat() if s.study_date else None,
                         "modalities": list(s.modalities)} for s in self.studies],
            "series_files": {uid: [os.fspath(p) for p in paths] for uid, paths in self.series_files.items()},
            "missing_reason": self.missing_reason,
            "file_sha256": {os.fspath(p): d for p, d in self.file_sha256.items()},
            "root": os.fspath(self.root) if self.root is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatientIndex:
        """The index :meth:`to_json` wrote.

        Raises
        ------
        KeyError, ValueError, TypeError
            If ``data`` is not such an index.
        """
        def day(text: str | None) -> dt.date | None:
            return dt.date.fromisoformat(text) if text else None

        return cls(
            str(data["patient_id"]),
            tuple(SeriesRecord(**{**s, "study_date": day(s["study_date"]), "role": SeriesRole(s["role"])})
                  for s in data["series"]),
            tuple(StudyRecord(**{**s, "study_date": day(s["study_date"]), "modalities": tuple(s["modalities"])})
                  for s in data["studies"]),
            {uid: tuple(Path(p) for p in paths) for uid, paths in data["series_files"].items()},
            data["missing_reason"],
            {Path(p): str(d) for p, d in data["file_sha256"].items()},
            Path(data["root"]) if data["root"] is not None else None,
        )


_BUSY_TIMEOUT_S = 30.0  # how long a connection waits for another one's write to end


class Catalog:
    """The export folder's catalog in one SQLite database.

    Use :meth:`open`; :mod:`pipeline.ingest.scan` fills it.
    """

    def __init__(self, connection: sqlite3.Connection, location: str) -> None:
        self._db = connection
        self.location = location

    @classmethod
    def open(cls, url: str | Path, *, read_only: bool = False) -> Catalog:
        """Open (creating if needed) the catalog at ``sqlite:///path`` or a plain path.

        ``read_only``: open an existing catalog for reading only (the review page): nothing is
        written, and with the WAL journal a run writing at the same time does not block it.

        Raises
        ------
        ValueError
            If the URL is not a SQLite URL.
        FileNotFoundError
            With ``read_only``, when there is no catalog there.
        """
        location = _path_from_url(url)
        if read_only:
            if not Path(location).is_file():
                raise FileNotFoundError(f"no catalog at {location}: run `crav run` on this output folder first")
            ro = sqlite3.connect(f"{Path(location).resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
            ro.row_factory = sqlite3.Row
            return cls(ro, location)
        if location != ":memory:":
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(location, timeout=_BUSY_TIMEOUT_S)
        db.row_factory = sqlite3.Row
        if location != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        if "sha256" not in {row[1] for row in db.execute("PRAGMA table_info(files)")}:  # a version-1 catalog
            db.execute("ALTER TABLE files ADD COLUMN sha256 TEXT")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return cls(db, location)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Commit everything done inside, or nothing if an exception escapes."""
        with self._db:
            yield self._db

    # ------------------------------------------------------------------ queries

    def patients(self) -> list[str]:
        """PatientIDs with at least one series."""
        rows = self._db.execute("SELECT DISTINCT patient_id FROM series ORDER BY patient_id")
        return [r[0] for r in rows]

    def series(self, patient_id: str | None = None) -> list[SeriesRecord]:
        """Series of one patient (or all), ordered by study date, study, time, number."""
        sql = "SELECT * FROM series"
        params: tuple[Any, ...] = ()
        if patient_id is not None:
            sql += " WHERE patient_id = ?"
            params = (patient_id,)
        sql += " ORDER BY patient_id, study_date, study_uid, acquisition_time_s, series_number, series_uid"
        return [_series_record(r) for r in self._db.execute(sql, params)]

    def series_record(self, series_uid: str) -> SeriesRecord | None:
        row = self._db.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return _series_record(row) if row is not None else None

    def dynamic_group(self, group_id: str) -> list[SeriesRecord]:
        """Member series of a split dynamic, in phase order."""
        rows = self._db.execute(
            "SELECT * FROM series WHERE dynamic_group = ? ORDER BY dynamic_index", (group_id,)
        )
        return [_series_record(r) for r in rows]

    def files(self, series_uid: str) -> list[Path]:
        """Readable files of a series, one per SOPInstanceUID, sorted by path."""
        rows = self._db.execute(
            "SELECT path, sop_uid FROM files WHERE series_uid = ? AND status IN ('indexed', 'ignored') "
            "AND header IS NOT NULL ORDER BY path",
            (series_uid,),
        )
        seen: set[str] = set()
        out: list[Path] = []
        for path, sop in rows:
            if sop in seen:
                continue
            seen.add(sop)
            out.append(Path(_py_path(path)))
        return out

    def dynamic_files(self, group_id: str) -> list[Path]:
        """Files of every phase of a split dynamic, phase after phase (for ``load_dynamic``)."""
        return [p for s in self.dynamic_group(group_id) for p in self.files(s.series_uid)]

    def patient_index(self, patient_id: str) -> PatientIndex:
        """The series, studies and file paths of one patient (see :class:`PatientIndex`)."""
        series = tuple(self.series(patient_id))
        if not series:
            why = self.unknown_patients([patient_id]).get(patient_id, "no usable DICOM series")
            return PatientIndex(patient_id, (), (), {}, why)
        digests = {Path(_py_path(path)): digest for path, digest in self._db.execute(
            "SELECT path, sha256 FROM files WHERE patient_id = ? AND status IN ('indexed', 'ignored') "
            "AND sha256 IS NOT NULL", (patient_id,))}
        return PatientIndex(patient_id, series, tuple(self.studies(patient_id)),
                            {s.series_uid: tuple(self.files(s.series_uid)) for s in series},
                            file_sha256=digests)

    def headers(self, series_uid: str) -> list[dict[str, Any]]:
        """Stored header fields of the files of a series (one per SOPInstanceUID)."""
        rows = self._db.execute(
            "SELECT sop_uid, header FROM files WHERE series_uid = ? AND header IS NOT NULL "
            "AND status IN ('indexed', 'ignored') ORDER BY path",
            (series_uid,),
        )
        seen: set[str] = set()
        out = []
        for sop, header in rows:
            if sop not in seen:
                seen.add(sop)
                out.append(json.loads(header))
        return out

    def file_accounting(self) -> list[FileRecord]:
        """Every file seen in the export folder, with its status and reason."""
        rows = self._db.execute(
            "SELECT path, size, mtime_ns, status, reason, patient_id, study_uid, series_uid, sop_uid "
            "FROM files ORDER BY path"
        )
        return [FileRecord(Path(_py_path(r[0])), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def studies(self, patient_id: str) -> list[StudyRecord]:
        """Studies of one patient, by date."""
        rows = self._db.execute(
            "SELECT study_uid, MIN(study_date), GROUP_CONCAT(DISTINCT modality), COUNT(*) FROM series "
            "WHERE patient_id = ? GROUP BY study_uid ORDER BY MIN(study_date), study_uid",
            (patient_id,),
        )
        return [
            StudyRecord(r[0], patient_id, parse_da(r[1]), tuple(sorted(set((r[2] or "").split(",")))), r[3])
            for r in rows
        ]

    def status_counts(self) -> dict[str, int]:
        """Number of files per status."""
        counts = dict.fromkeys(FILE_STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM files GROUP BY status"):
            counts[status] = n
        return counts

    def unknown_patients(self, patient_ids: Iterable[str]) -> dict[str, str]:
        """Registry patients with no usable DICOM series, each with a reason a radiologist can read.

        Parameters
        ----------
        patient_ids
            PatientIDs of the treatment registry (duplicates allowed).

        Returns
        -------
        dict
            ``{patient_id: reason}`` in first-seen order, only for the patients without any
            series in the catalog: either no file carries that PatientID (with a hint when a
            PatientID differing only in case, spaces or punctuation exists), or every such file
            was quarantined / ignored (with the most common reason). Empty when all are present.

        Example
        -------
        >>> Catalog.open(":memory:").unknown_patients(["SION-007"])
        {'SION-007': 'no DICOM image with this PatientID in the export folder'}
        """
        known = set(self.patients())
        out: dict[str, str] = {}
        others: dict[str, list[str]] | None = None
        for patient_id in dict.fromkeys(patient_ids):
            if patient_id in known:
                continue
            rows = self._db.execute(
                "SELECT status, reason, COUNT(*) AS n FROM files WHERE patient_id = ? "
                "GROUP BY status, reason ORDER BY n DESC, status, reason",
                (_db_text(patient_id),),
            ).fetchall()
            if rows:
                total = sum(r[2] for r in rows)
                status, reason, n = rows[0]
                out[patient_id] = (
                    f"{total} file(s) with this PatientID but no usable series: {n} {status}"
                    + (f" ({reason})" if reason else "")
                    + (f" and {total - n} other(s)" if total > n else "")
                )
                continue
            if others is None:
                others = {}
                for (other,) in self._db.execute("SELECT DISTINCT patient_id FROM files WHERE patient_id IS NOT NULL"):
                    others.setdefault(_loose_id(other), []).append(other)
            similar = others.get(_loose_id(patient_id), []) if _loose_id(patient_id) else []
            reason = "no DICOM image with this PatientID in the export folder"
            if similar:
                reason += f" (similar PatientID {similar[0]!r} found: check the registry spelling)"
            unread = self._db.execute(
                "SELECT COUNT(*) FROM files WHERE patient_id IS NULL AND status = 'quarantined'"
            ).fetchone()[0]
            if unread:
                reason += f"; {unread} unreadable file(s) in the export could belong to anyone"
            out[patient_id] = reason
        return out

    def input_files(self, patient_ids: Iterable[str]) -> dict[str, list[tuple[Path, int, int, str | None]]]:
        """PatientID -> (path, size, mtime_ns, sha256 or None) of its readable files (indexed or ignored)."""
        wanted = sorted(set(patient_ids))
        out: dict[str, list[tuple[Path, int, int, str | None]]] = {pid: [] for pid in wanted}
        for i in range(0, len(wanted), 500):  # SQLite limits the number of parameters
            chunk = wanted[i:i + 500]
            rows = self._db.execute(
                f"SELECT patient_id, path, size, mtime_ns, sha256 FROM files WHERE status IN ('indexed', 'ignored') "
                f"AND patient_id IN ({','.join('?' * len(chunk))}) ORDER BY path", chunk)
            for pid, path, size, mtime_ns, digest in rows:
                out[pid].append((Path(_py_path(path)), size, mtime_ns, digest))
        return out

    def set_digests(self, digests: Iterable[tuple[Path, int, int, str]]) -> None:
        """Record (path, size, mtime_ns, sha256); a row the scan has rewritten since (other size or time) is left."""
        with self.transaction():
            self._db.executemany(
                "UPDATE files SET sha256 = ? WHERE path = ? AND size = ? AND mtime_ns = ?",
                [(d, _db_path(str(p)), size, mtime) for p, size, mtime, d in digests])

    # ------------------------------------------------------------------ writing (used by scan)

    def file_states(self) -> dict[str, tuple[int, int, str, str | None]]:
        """path -> (size, mtime_ns, status, patient_id) for every known file."""
        rows = self._db.execute("SELECT path, size, mtime_ns, status, patient_id FROM files")
        return {_py_path(r[0]): (r[1], r[2], r[3], r[4]) for r in rows}

    def upsert_files(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert or replace rows (path, size, mtime_ns, status, reason, patient_id, study_uid,
        series_uid, sop_uid, header-dict-or-None)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO files (path, size, mtime_ns, status, reason, patient_id, study_uid, "
            "series_uid, sop_uid, header) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    _db_path(r[0]),
                    *r[1:3],
                    *(_db_text(v) for v in r[3:9]),
                    json.dumps(r[9], separators=(",", ":")) if r[9] is not None else None,
                )
                for r in rows
            ],
        )

    def delete_files(self, paths: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM files WHERE path = ?", [(_db_path(p),) for p in paths])

    def patient_file_headers(self, patient_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(path, series_uid, sop_uid, header) of the readable DICOM files of a patient."""
        rows = self._db.execute(
            "SELECT path, series_uid, sop_uid, header FROM files WHERE patient_id = ? "
            "AND header IS NOT NULL AND status IN ('indexed', 'ignored') ORDER BY path",
            (_db_text(patient_id),),
        )
        return [(_py_path(r[0]), r[1], r[2], json.loads(r[3])) for r in rows]

    def identity_conflict_files(self) -> dict[str, tuple[str | None, str]]:
        """path -> (PatientID, reason) of the files quarantined for an identity conflict."""
        rows = self._db.execute(
            "SELECT path, patient_id, reason FROM files WHERE status = 'quarantined' AND reason LIKE ?",
            (IDENTITY_CONFLICT + "%",),
        )
        return {_py_path(r[0]): (r[1], r[2]) for r in rows}

    def release_identity_conflicts(self) -> None:
        """Put the files quarantined for an identity conflict back to 'indexed' (the scan then looks
        for conflicts again, :meth:`series_patient_conflicts`, and recomputes what changed)."""
        self._db.execute(
            "UPDATE files SET status = 'indexed', reason = '' WHERE status = 'quarantined' AND reason LIKE ?",
            (IDENTITY_CONFLICT + "%",),
        )

    def series_patient_conflicts(self) -> dict[str, dict[str, int]]:
        """SeriesInstanceUIDs whose readable files carry several PatientIDs -> {PatientID: file count}."""
        rows = self._db.execute(
            "SELECT series_uid, patient_id, COUNT(*) FROM files WHERE status IN ('indexed', 'ignored') "
            "AND header IS NOT NULL AND series_uid IN (SELECT series_uid FROM files "
            "WHERE status IN ('indexed', 'ignored') AND header IS NOT NULL AND series_uid IS NOT NULL "
            "GROUP BY series_uid HAVING COUNT(DISTINCT patient_id) > 1) "
            "GROUP BY series_uid, patient_id ORDER BY series_uid, patient_id"
        )
        out: dict[str, dict[str, int]] = {}
        for series_uid, patient_id, count in rows:
            out.setdefault(series_uid, {})[patient_id] = count
        return out

    def quarantine_series(self, series_uid: str, reason: str, patient_ids: Iterable[str] | None = None) -> None:
        """Quarantine the readable files of a series (only those of ``patient_ids`` when given)."""
        sql = (
            "UPDATE files SET status = 'quarantined', reason = ? WHERE series_uid = ? "
            "AND status IN ('indexed', 'ignored') AND header IS NOT NULL"
        )
        if patient_ids is None:
            self._db.execute(sql, (_db_text(reason), series_uid))
            return
        self._db.executemany(
            sql + " AND patient_id = ?", [(_db_text(reason), series_uid, _db_text(p)) for p in patient_ids]
        )

    def set_file_status(self, updates: Iterable[tuple[str, str, str]]) -> None:
        """Apply (status, reason, path) updates."""
        self._db.executemany(
            "UPDATE files SET status = ?, reason = ? WHERE path = ?",
            [(status, _db_text(reason), _db_path(path)) for status, reason, path in updates],
        )

    def replace_patient_series(self, patient_id: str, records: Iterable[SeriesRecord]) -> None:
        """Replace every series row of one patient."""
        self._db.execute("DELETE FROM series WHERE patient_id = ?", (_db_text(patient_id),))
        self._db.executemany(
            "INSERT OR REPLACE INTO series (series_uid, study_uid, patient_id, study_date, modality, role, "
            "role_reason, description, frame_of_reference_uid, n_files, dynamic_group, dynamic_index, "
            "series_number, acquisition_time_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    _db_text(s.series_uid),
                    _db_text(s.study_uid),
                    _db_text(s.patient_id),
                    s.study_date.isoformat() if s.study_date else None,
                    _db_text(s.modality),
                    s.role.value,
                    _db_text(s.role_reason),
                    _db_text(s.description),
                    _db_text(s.frame_of_reference_uid),
                    s.n_files,
                    s.dynamic_group,
                    s.dynamic_index,
                    s.series_number,
                    s.acquisition_time_s,
                )
                for s in records
            ],
        )
