"""The result tables of SPEC section 6: ``lesions.csv``, ``measurements.csv``, cohort summary.

Cells follow one convention everywhere: booleans ``true``/``false``, unknown (``None``,
NaN, infinity) an empty cell, floats rounded to 3 decimals without trailing zeros, dates
``YYYY-MM-DD``, enums by value. Every file is UTF-8 and written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline import domain
from pipeline.outputs.atomic import atomic_open, atomic_write_text

__all__ = [
    "LESION_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "format_cell",
    "jsonable",
    "write_cohort_summary",
    "write_json",
    "write_lesions_csv",
    "write_measurements_csv",
]

#: Columns of ``lesions.csv`` in order (SPEC section 6); optional registry columns follow.
LESION_COLUMNS: tuple[str, ...] = (
    "patient_id", "lesion_id", "level", "procedure_date", "j0_residual", "j0_residual_volume_ml",
    "outcome", "failure_timepoint", "baseline_fracture", "height_loss", "max_height_loss_pct", "reason",
)
#: Columns of ``measurements.csv`` in order (SPEC section 6); ``notes`` follows.
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "patient_id", "lesion_id", "timepoint", "study_date", "days_from_procedure", "cement_volume_ml",
    "residual_enhancing_volume_ml", "ablation_zone_volume_ml", "max_relative_enhancement", "time_to_peak_s",
    "ktrans_per_min", "height_anterior_mm", "height_middle_mm", "height_posterior_mm", "height_loss_pct",
    "genant_grade", "registration_error_mm", "qa_status",
)
_NOTES_COLUMN = "notes"
_DECIMALS = 3


def format_cell(value: Any) -> str:
    """Render one value as a CSV cell.

    Example
    -------
    >>> [format_cell(v) for v in (None, True, 1.23456, 2.0, -0.0001, float("nan"), 7)]
    ['', 'true', '1.235', '2', '0', '', '7']
    >>> format_cell(domain.Visit.M3), format_cell(dt.date(2021, 6, 15))
    ('M3', '2021-06-15')
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        text = f"{round(value, _DECIMALS):.{_DECIMALS}f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(value, str):
        return value
    # numpy scalars and the like
    if hasattr(value, "item"):
        return format_cell(value.item())
    return str(value)


def _write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([format_cell(v) for v in row])


def _registry_columns(results: Sequence[domain.LesionResult]) -> list[tuple[str, str]]:
    """(key in Lesion.extra, column name) in first-seen order; names never shadow a spec column."""
    seen: dict[str, str] = {}
    for result in results:
        for key in result.lesion.extra:
            if key not in seen:
                seen[key] = f"registry_{key}" if key in LESION_COLUMNS else key
    return list(seen.items())


def write_lesions_csv(path: str | os.PathLike[str], results: Sequence[domain.LesionResult]) -> None:
    """Write ``lesions.csv``: one row per lesion, SPEC columns then optional registry columns.

    Parameters
    ----------
    path
        Destination (normally ``<output>/lesions.csv``).
    results
        One :class:`~pipeline.domain.LesionResult` per registry lesion, in the order wanted.
        Optional registry columns come from ``Lesion.extra`` in first-seen order; a lesion
        without a column gets an empty cell. An extra column named like a SPEC column is
        written as ``registry_<name>``.
    """
    extra_cols = _registry_columns(results)
    header = [*LESION_COLUMNS, *(name for _, name in extra_cols)]

    def row(r: domain.LesionResult) -> list[Any]:
        les = r.lesion
        return [
            les.patient_id, les.lesion_id, les.level, les.procedure_date,
            r.j0_residual, r.j0_residual_volume_ml, r.outcome, r.failure_timepoint,
            r.baseline_fracture, r.height_loss, r.max_height_loss_pct, r.reason,
            *(les.extra.get(key) for key, _ in extra_cols),
        ]

    _write_csv(path, header, (row(r) for r in results))


def write_measurements_csv(path: str | os.PathLike[str], rows: Sequence[domain.VisitMeasurement]) -> None:
    """Write ``measurements.csv``: one row per lesion and visit (SPEC section 6).

    The SPEC columns come first, in order; a last ``notes`` column joins each row's notes
    with ``"; "`` (flags a reader should see, e.g. why a visit is UNSCHEDULED).
    """
    header = [*MEASUREMENT_COLUMNS, _NOTES_COLUMN]

    def row(m: domain.VisitMeasurement) -> list[Any]:
        return [*(getattr(m, c) for c in MEASUREMENT_COLUMNS), "; ".join(m.notes)]

    _write_csv(path, header, (row(m) for m in rows))


def jsonable(value: Any, unknown: Callable[[Any], Any] | None = None) -> Any:
    """Plain JSON values: NaN/inf -> null, enums by value, dates ISO, numpy scalars unwrapped.

    ``unknown``: what a value of any other type becomes (e.g. ``str``); by default a ``TypeError``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return jsonable(value.value, unknown)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(jsonable(k, unknown)): jsonable(v, unknown) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), unknown)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [jsonable(v, unknown) for v in items]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist(), unknown)
    if unknown is not None:
        return unknown(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically (NaN written as ``null``).

    Raises
    ------
    TypeError
        If ``data`` holds a value with no JSON form.
    """
    text = json.dumps(jsonable(data), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def write_cohort_summary(out_dir: str | os.PathLike[str], table: Mapping[str, Any], markdown: str) -> None:
    """Write ``cohort_summary.json`` and ``cohort_summary.md`` into ``out_dir``, atomically.

    Parameters
    ----------
    out_dir
        Output folder (created when missing).
    table
        The cohort table (counts, percentages with their denominators...); JSON-able.
    markdown
        The same table for a person.

    Raises
    ------
    TypeError
        If ``table`` holds a value with no JSON form (checked before anything is written).
    """
    out = Path(out_dir)
    text = json.dumps(jsonable(table), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(out / "cohort_summary.json", text + "\n")
    atomic_write_text(out / "cohort_summary.md", markdown if markdown.endswith("\n") else markdown + "\n")
