"""QA verdicts, stored durably in the run's catalog, and their ``qa_status`` in ``measurements.csv``.

Two tables beside the pipeline's own (``files``, ``series``) in ``<output>/catalog.sqlite``:

``qa_reviews``
    The append-only history: one row per verdict (``accepted`` / ``rejected``), its comment,
    reviewer, time (UTC), the *result key* of what the reviewer saw and the corrections then in force.
``qa_corrections``
    The corrections in force per lesion (visits to exclude, a moved vertebra seed). A rejection sets
    them (possibly to none); an acceptance leaves them as they are.

A verdict holds for the results the reviewer saw: :func:`lesion_result_key` hashes a lesion's rows
of ``lesions.csv`` and ``measurements.csv`` (``qa_status`` left out), and :func:`apply_reviews` writes
``accepted`` / ``rejected`` into ``qa_status`` only while the results still have that key. Once a
run changes them (new images, corrections applied), the rows show the pipeline's own status again
(``pending`` / ``needs_review``): they need a new review.

Example
-------
>>> import tempfile, pathlib
>>> db = pathlib.Path(tempfile.mkdtemp()) / "catalog.sqlite"
>>> with ReviewStore.open(db) as store:
...     r = store.record("P1", "P1-L1", "rejected", "J0 mask misses the cement", result_key="0" * 64,
...                      corrections=Corrections(exclude_visits=("M3",)))
...     store.corrections()[("P1", "P1-L1")].exclude_visits
('M3',)
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.outputs.atomic import atomic_open
from pipeline.outputs.tables import LESION_COLUMNS
from pipeline.review.corrections import Corrections, visit_label, visit_sort_key

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED",
    "QA_STATUSES",
    "REJECTED",
    "REVIEW_STATUSES",
    "Corrections",
    "Review",
    "ReviewStore",
    "apply_reviews",
    "lesion_result_key",
    "read_csv",
    "visit_label",
    "visit_sort_key",
]

ACCEPTED = "accepted"
REJECTED = "rejected"
#: What a reviewer can decide.
REVIEW_STATUSES: tuple[str, ...] = (ACCEPTED, REJECTED)
#: Every value of ``measurements.csv``'s ``qa_status``.
QA_STATUSES: tuple[str, ...] = ("pending", "needs_review", "excluded", ACCEPTED, REJECTED)
EXCLUDED = "excluded"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS qa_reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    lesion_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
    comment TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    reviewed_at TEXT NOT NULL,
    result_key TEXT NOT NULL,
    corrections_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS qa_reviews_lesion ON qa_reviews (patient_id, lesion_id);
CREATE TABLE IF NOT EXISTS qa_corrections (
    patient_id TEXT NOT NULL,
    lesion_id TEXT NOT NULL,
    corrections_json TEXT NOT NULL,
    review_id INTEGER NOT NULL REFERENCES qa_reviews (id),
    PRIMARY KEY (patient_id, lesion_id)
);
"""
_BUSY_TIMEOUT_S = 15.0  # a run may hold the catalog's write lock while it records a scan
_RESULT_KEY = re.compile(r"^[0-9a-f]{64}$")
MAX_COMMENT_CHARS = 5000
MAX_REVIEWER_CHARS = 200


@dataclass(frozen=True)
class Review:
    """One verdict of the history (a row of ``qa_reviews``)."""

    patient_id: str
    lesion_id: str
    status: str  # "accepted" | "rejected"
    comment: str
    reviewer: str
    reviewed_at: str  # UTC, ISO 8601 to the second
    result_key: str  # lesion_result_key of the results the reviewer saw
    corrections: Corrections  # in force after this verdict
    review_id: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "lesion_id": self.lesion_id, "status": self.status,
                "comment": self.comment, "reviewer": self.reviewer, "reviewed_at": self.reviewed_at,
                "result_key": self.result_key, "corrections": self.corrections.to_json(),
                "review_id": self.review_id}


def _review(row: sqlite3.Row) -> Review:
    return Review(row["patient_id"], row["lesion_id"], row["status"], row["comment"], row["reviewer"],
                  row["reviewed_at"], row["result_key"], Corrections.from_json(row["corrections_json"]),
                  row["id"])


# ---------------------------------------------------------------- the store

class ReviewStore:
    """The QA tables of a catalog database; safe to share between threads (one lock).

    Use :meth:`open` (or ``with ReviewStore.open(path) as store``).
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.unreadable: list[str] = []  # why some lesion's corrections were ignored by :meth:`corrections`

    @classmethod
    def open(cls, db_path: str | Path) -> ReviewStore:
        """Open the catalog database at ``db_path`` (created if missing) and create the QA tables if missing.

        The connection waits up to 15 s for a run that holds the write lock; every verdict is
        committed with ``PRAGMA synchronous=FULL`` (on disk when :meth:`record` returns).
        """
        db = sqlite3.connect(str(db_path), timeout=_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            if str(db_path) != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, patient_id: str, lesion_id: str, status: str, comment: str = "", *, result_key: str,
               reviewer: str = "", corrections: Corrections | None = None,
               reviewed_at: dt.datetime | None = None) -> Review:
        """Store one verdict (and, for a rejection, the corrections in force) in one durable commit.

        Parameters
        ----------
        patient_id, lesion_id
            The lesion, as in ``lesions.csv``.
        status
            ``"accepted"`` or ``"rejected"``.
        comment
            Why; required for a rejection (at most 5000 characters).
        result_key
            :func:`lesion_result_key` of the results the reviewer saw.
        reviewer
            Free text (at most 200 characters).
        corrections
            For a rejection: the corrections in force from now on (None or empty clears them). For an
            acceptance: None, or the corrections already in force (an acceptance cannot change them).
        reviewed_at
            When (default now); stored in UTC.

        Raises
        ------
        ValueError
            If a value is missing or invalid; the message says which and what to do.
        """
        if not patient_id or not lesion_id:
            raise ValueError("patient_id and lesion_id are required")
        if status not in REVIEW_STATUSES:
            raise ValueError(f"status must be 'accepted' or 'rejected', got {status!r}")
        comment, reviewer = (comment or "").strip(), (reviewer or "").strip()
        if status == REJECTED and not comment:
            raise ValueError("a rejection needs a comment: say what is wrong, for whoever re-processes the lesion")
        if len(comment) > MAX_COMMENT_CHARS:
            raise ValueError(f"comment is {len(comment)} characters long; at most {MAX_COMMENT_CHARS}")
        if len(reviewer) > MAX_REVIEWER_CHARS:
            raise ValueError(f"reviewer is {len(reviewer)} characters long; at most {MAX_REVIEWER_CHARS}")
        if not isinstance(result_key, str) or not _RESULT_KEY.match(result_key):
            raise ValueError(f"result_key must be 64 lower-case hex digits (lesion_result_key), got {result_key!r}")
        when = (reviewed_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                in_force = self._corrections_for(patient_id, lesion_id)
                if status == ACCEPTED:
                    if corrections is not None and corrections != in_force:
                        raise ValueError(
                            "an acceptance keeps the corrections in force "
                            f"({_describe(in_force)}); to change them to {_describe(corrections)}, reject the "
                            "lesion with a comment: it is then re-processed with the new corrections")
                    after = in_force
                else:
                    after = corrections or Corrections()
                cur = self._db.execute(
                    "INSERT INTO qa_reviews (patient_id, lesion_id, status, comment, reviewer, reviewed_at, "
                    "result_key, corrections_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (patient_id, lesion_id, status, comment, reviewer, when, result_key, after.dumps()))
                review_id = int(cur.lastrowid or 0)
                if status == REJECTED:
                    self._db.execute(
                        "INSERT INTO qa_corrections (patient_id, lesion_id, corrections_json, review_id) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (patient_id, lesion_id) DO UPDATE SET "
                        "corrections_json = excluded.corrections_json, review_id = excluded.review_id",
                        (patient_id, lesion_id, after.dumps(), review_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Review(patient_id, lesion_id, status, comment, reviewer, when, result_key, after, review_id)

    def latest(self) -> dict[tuple[str, str], Review]:
        """The latest verdict of every reviewed lesion: ``(patient_id, lesion_id) -> Review``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM qa_reviews WHERE id IN "
                "(SELECT MAX(id) FROM qa_reviews GROUP BY patient_id, lesion_id) ORDER BY id").fetchall()
        return {(r["patient_id"], r["lesion_id"]): _review(r) for r in rows}

    def history(self, patient_id: str, lesion_id: str) -> list[Review]:
        """Every verdict of one lesion, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM qa_reviews WHERE patient_id = ? AND lesion_id = ? ORDER BY id",
                                    (patient_id, lesion_id)).fetchall()
        return [_review(r) for r in rows]

    def corrections(self) -> dict[tuple[str, str], Corrections]:
        """The corrections in force: ``(patient_id, lesion_id) -> Corrections``, lesions without any left out."""
        with self._lock:
            rows = self._db.execute("SELECT patient_id, lesion_id, corrections_json FROM qa_corrections").fetchall()
        found: dict[tuple[str, str], Corrections] = {}
        for r in rows:
            try:
                found[(r["patient_id"], r["lesion_id"])] = Corrections.from_json(r["corrections_json"])
            except ValueError as exc:  # a row edited by hand: the other lesions' corrections still apply
                log.error("QA corrections of one lesion not readable, ignored: %s", exc)
                self.unreadable.append(f"{r['lesion_id']}: QA corrections not readable, ignored ({exc})")
        return {k: c for k, c in sorted(found.items()) if c}

    def corrections_for(self, patient_id: str, lesion_id: str) -> Corrections:
        """The corrections in force for one lesion (empty when none)."""
        with self._lock:
            return self._corrections_for(patient_id, lesion_id)

    def _corrections_for(self, patient_id: str, lesion_id: str) -> Corrections:
        row = self._db.execute("SELECT corrections_json FROM qa_corrections WHERE patient_id = ? AND lesion_id = ?",
                               (patient_id, lesion_id)).fetchone()
        return Corrections.from_json(row[0]) if row is not None else Corrections()


def _describe(c: Corrections) -> str:
    if not c:
        return "none"
    parts = []
    if c.exclude_visits:
        parts.append("exclude " + ", ".join(c.exclude_visits))
    if c.seed_mm is not None:
        parts.append("seed at ({:.1f}, {:.1f}, {:.1f}) mm".format(*c.seed_mm))
    return "; ".join(parts)


# ---------------------------------------------------------------- result keys and qa_status

def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a UTF-8 CSV file (as the pipeline writes them).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [{k: (v if v is not None else "") for k, v in r.items() if k is not None} for r in reader]
        return list(reader.fieldnames or []), rows


def lesion_result_key(lesion_row: Mapping[str, str], visit_rows: Sequence[Mapping[str, str]]) -> str:
    """SHA-256 (hex) of a lesion's results: its ``lesions.csv`` row and its ``measurements.csv`` rows.

    The lesion row contributes its result columns (SPEC section 6: ``patient_id`` ... ``reason``;
    optional registry columns such as pain scores are not results); each visit row contributes every
    cell but ``qa_status``, rows taken in visit order. Identical results give identical keys, whatever
    their ``qa_status`` and the order of the rows in the file.
    """
    lesion = [[c, str(lesion_row.get(c, ""))] for c in LESION_COLUMNS]
    visits = sorted(([[c, str(v)] for c, v in row.items() if c != "qa_status"] for row in visit_rows),
                    key=lambda cells: (visit_sort_key(visit_label(dict(cells).get("timepoint", ""),
                                                                  dict(cells).get("days_from_procedure"))),
                                       json.dumps(cells)))
    text = json.dumps({"lesion": lesion, "visits": visits}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _write_rows(path: Path, header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:  # the format of pipeline.outputs.tables
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(c, "") for c in header])


def apply_reviews(output_dir: Path) -> int:
    """Write the latest verdicts into ``measurements.csv``'s ``qa_status``; return the number of rows changed.

    A lesion whose latest verdict was given on its current results (same :func:`lesion_result_key`)
    gets ``accepted`` / ``rejected`` on every row but those ``excluded``; the rows of other lesions keep
    what the run wrote. The file is rewritten atomically, and only when a cell changes. The caller
    holds the output lock (:func:`pipeline.outputs.lock.output_lock`).

    Raises
    ------
    FileNotFoundError
        If ``measurements.csv`` exists but ``lesions.csv`` does not.
    """
    measurements, lesions_csv, db = (output_dir / n for n in ("measurements.csv", "lesions.csv", "catalog.sqlite"))
    if not measurements.is_file() or not db.is_file():
        return 0
    if not lesions_csv.is_file():
        raise FileNotFoundError(f"{lesions_csv} is missing: cannot tell which verdicts still hold")
    with ReviewStore.open(db) as store:
        latest = store.latest()
    if not latest:
        return 0
    header, rows = read_csv(measurements)
    if "qa_status" not in header:
        return 0
    by_lesion: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        by_lesion.setdefault((row.get("patient_id", ""), row.get("lesion_id", "")), []).append(row)
    lesion_rows = {(r.get("patient_id", ""), r.get("lesion_id", "")): r for r in read_csv(lesions_csv)[1]}
    changed = 0
    for key, review in latest.items():
        visit_rows, lesion_row = by_lesion.get(key, []), lesion_rows.get(key)
        if lesion_row is None or lesion_result_key(lesion_row, visit_rows) != review.result_key:
            continue
        for row in visit_rows:
            if row.get("qa_status") != EXCLUDED and row.get("qa_status") != review.status:
                row["qa_status"] = review.status
                changed += 1
    if changed:
        _write_rows(measurements, header, rows)
    return changed
