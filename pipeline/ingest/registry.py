"""Read the treatment registry ``treatments.csv`` (SPEC section 1).

A bad row is reported with its line number and reason; the other rows are still returned.

Example
-------
>>> import pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "treatments.csv"
>>> _ = p.write_text("patient_id,lesion_id,level,procedure_date\\nP1,P1-L4,l4,2021-06-15\\n")
>>> read_registry(p).lesions[0].level
'L4'
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.domain import Lesion, normalise_level

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "lesion_id", "level", "procedure_date")
DATE_COLUMNS: tuple[str, ...] = ("ebrt_date",)
VAS_COLUMNS: tuple[str, ...] = ("vas_before", "vas_m1")


@dataclass(frozen=True)
class RegistryProblem:
    """A problem found on one line of the registry (line 1 is the header)."""

    line: int
    reason: str


@dataclass(frozen=True)
class RegistryResult:
    """Lesions read from the registry, and the problems found on the way."""

    lesions: list[Lesion] = field(default_factory=list)
    problems: list[RegistryProblem] = field(default_factory=list)


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _parse_date(text: str) -> dt.date:
    """``YYYY-MM-DD`` only (``fromisoformat`` alone also takes ``20210615`` and ``2021-W24-2``)."""
    if not _ISO_DATE.match(text):
        raise ValueError(text)
    return dt.date.fromisoformat(text)


def _decode(data: bytes) -> tuple[str, RegistryProblem | None]:
    """The registry's text: UTF-8 (optional BOM), else Windows-1252 with a problem naming the line."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    problem = RegistryProblem(
        line, "the registry is not UTF-8 (first bad byte on this line): read as Windows-1252, check accents"
    )
    return text.removeprefix("\ufeff"), problem


def _check_optional(column: str, value: str) -> str | None:
    """Reason why an optional column's value is unusable, or None."""
    if not value:
        return None
    if column in DATE_COLUMNS:
        try:
            _parse_date(value)
        except ValueError:
            return f"{column} {value!r} is not an ISO date (YYYY-MM-DD); row kept, value ignored"
    if column in VAS_COLUMNS:
        try:
            score = float(value)
        except ValueError:
            score = -1.0
        if not 0.0 <= score <= 10.0:
            return f"{column} {value!r} is not a pain score 0-10; row kept, value ignored"
    return None


def _lesion(
    row: list[str], columns: list[str], line: int, seen: dict[str, tuple[str, int]], problems: list[RegistryProblem]
) -> Lesion | None:
    """The lesion of one CSV row, or None with the reason appended to ``problems``."""
    if not any(cell.strip() for cell in row):
        return None
    if len(row) > len(columns):
        problems.append(RegistryProblem(line, f"{len(row)} fields but the header has {len(columns)} columns"))
        return None
    values = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
    empty = [c for c in REQUIRED_COLUMNS if not values[c]]
    if empty:
        problems.append(RegistryProblem(line, f"missing {', '.join(empty)}"))
        return None
    try:
        level = normalise_level(values["level"])
    except ValueError as exc:
        problems.append(RegistryProblem(line, str(exc)))
        return None
    try:
        procedure_date = _parse_date(values["procedure_date"])
    except ValueError:
        problems.append(
            RegistryProblem(line, f"procedure_date {values['procedure_date']!r} is not an ISO date (YYYY-MM-DD)")
        )
        return None
    lesion_id = values["lesion_id"]
    key = lesion_id.casefold()  # output folders must not collide on case-insensitive file systems
    if key in seen:
        first, first_line = seen[key]
        same = "" if first == lesion_id else f" (same as {first!r} when case is ignored)"
        problems.append(
            RegistryProblem(line, f"duplicate lesion_id {lesion_id!r}{same} (first on line {first_line})")
        )
        return None
    seen[key] = (lesion_id, line)
    extra = {c: values[c] for c in columns if c not in REQUIRED_COLUMNS and c}
    for column, value in extra.items():
        problem = _check_optional(column, value)
        if problem is not None:
            problems.append(RegistryProblem(line, problem))
    return Lesion(values["patient_id"], lesion_id, level, procedure_date, extra)


def read_registry(path: Path) -> RegistryResult:
    """Read ``treatments.csv``.

    Parameters
    ----------
    path
        The CSV file (UTF-8, optional BOM; comma- or semicolon-separated). A file that is not
        UTF-8 is read as Windows-1252 (a spreadsheet's export) and the first bad line reported.

    Returns
    -------
    RegistryResult
        Valid lesions in file order; problems sorted by line number. A row with a missing
        required field, a bad date (only ``YYYY-MM-DD``), an unknown level, a duplicate
        ``lesion_id`` (case ignored: output folders must not collide) or broken CSV quoting
        is not returned. Optional and unknown columns are kept, in file order, in
        ``Lesion.extra``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"treatment registry not found: {path} (expected treatments.csv at the export folder's "
            "root, or give its location with --registry)"
        )
    result = RegistryResult()
    text, encoding_problem = _decode(path.read_bytes())
    if encoding_problem is not None:
        result.problems.append(encoding_problem)
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        result.problems.append(RegistryProblem(1, f"unreadable header line ({exc}); no row can be read"))
        return result
    if header is None:
        result.problems.append(RegistryProblem(1, "the registry is empty (no header line)"))
        return result
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        result.problems.append(
            RegistryProblem(1, f"missing required column(s) {', '.join(missing)}; no row can be read")
        )
        return result
    for column in sorted({c for c in columns if c and columns.count(c) > 1}):
        result.problems.append(RegistryProblem(1, f"column {column!r} appears more than once: the last one is used"))
    seen: dict[str, tuple[str, int]] = {}
    line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # unterminated quote, oversized field, text after a closing quote
            if "end of data" in str(exc):
                unread = reader.line_num - line - 1
                why = f"a quote opened on this line is never closed: this line and the {unread} after it are unread"
            else:
                why = f"unreadable CSV row ({exc}); row skipped"
            result.problems.append(RegistryProblem(line + 1, why))
            line = reader.line_num
            continue
        line_start, line = line + 1, reader.line_num
        lesion = _lesion(row, columns, line_start, seen, result.problems)
        if lesion is not None:
            result.lesions.append(lesion)
    result.problems.sort(key=lambda p: p.line)
    if result.problems:
        log.warning("registry %s: %d problem(s)", path.name, len(result.problems))
    return result
