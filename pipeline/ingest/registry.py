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
import logging
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


def _parse_date(text: str) -> dt.date:
    if len(text) != 10:
        raise ValueError(text)
    return dt.date.fromisoformat(text)


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


def read_registry(path: Path) -> RegistryResult:
    """Read ``treatments.csv``.

    Parameters
    ----------
    path
        The CSV file (UTF-8, optional BOM; comma- or semicolon-separated).

    Returns
    -------
    RegistryResult
        Valid lesions in file order; problems with line numbers. A row with a missing
        required field, a bad date, an unknown level or a duplicate ``lesion_id`` is not
        returned. Optional and unknown columns are kept, in file order, in ``Lesion.extra``.

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
    with path.open(newline="", encoding="utf-8-sig") as fh:
        first_line = fh.readline()
        fh.seek(0)
        delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
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
        seen: dict[str, int] = {}
        line = reader.line_num
        for row in reader:
            line_start, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(columns):
                result.problems.append(
                    RegistryProblem(
                        line_start, f"{len(row)} fields but the header has {len(columns)} columns"
                    )
                )
                continue
            values = {c: (row[i].strip() if i < len(row) else "") for i, c in enumerate(columns)}
            empty = [c for c in REQUIRED_COLUMNS if not values[c]]
            if empty:
                result.problems.append(RegistryProblem(line_start, f"missing {', '.join(empty)}"))
                continue
            try:
                level = normalise_level(values["level"])
            except ValueError as exc:
                result.problems.append(RegistryProblem(line_start, str(exc)))
                continue
            try:
                procedure_date = _parse_date(values["procedure_date"])
            except ValueError:
                result.problems.append(
                    RegistryProblem(
                        line_start,
                        f"procedure_date {values['procedure_date']!r} is not an ISO date (YYYY-MM-DD)",
                    )
                )
                continue
            lesion_id = values["lesion_id"]
            if lesion_id in seen:
                result.problems.append(
                    RegistryProblem(
                        line_start, f"duplicate lesion_id {lesion_id!r} (first on line {seen[lesion_id]})"
                    )
                )
                continue
            seen[lesion_id] = line_start
            extra = {c: values[c] for c in columns if c not in REQUIRED_COLUMNS and c}
            for column, value in extra.items():
                problem = _check_optional(column, value)
                if problem is not None:
                    result.problems.append(RegistryProblem(line_start, problem))
            result.lesions.append(Lesion(values["patient_id"], lesion_id, level, procedure_date, extra))
    if result.problems:
        log.warning("registry %s: %d problem(s)", path.name, len(result.problems))
    return result
