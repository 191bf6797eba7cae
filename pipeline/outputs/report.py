"""``patients/<patient>/report.html``: one self-contained page per patient (SPEC section 6).

Per lesion the verdict and its reason, a timeline plot of residual volume and heights, the
measurements table and the overlays; then the patient's series with their role reasons, the
warnings and the provenance. Self-contained: CSS inline, images as ``data:`` URIs, no script and
no link outside the page, so it opens from a PACS workstation's file system or an e-mail
attachment. The patient's name is never shown (``patient_id`` only).

Every string from a DICOM header or the registry is HTML-escaped by Jinja2's autoescape; the
template never marks data ``|safe``. The page is deterministic: the same inputs give the same
bytes (no generation time; PNG plots without metadata).

Example
-------
>>> import datetime as dt
>>> from pipeline.domain import Lesion, LesionResult, Outcome
>>> les = Lesion("SION-007", "SION-007-L1", "L1", dt.date(2021, 6, 15))
>>> res = LesionResult(les, None, None, Outcome.INDETERMINATE, None, None, None, None, "no J0 <DCE>")
>>> page = render_report(PatientReport("SION-007", [ReportLesion(res, [], None, [])], [], [], {}))
>>> "no J0 &lt;DCE&gt;" in page and "<DCE>" not in page
True
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pipeline import __version__
from pipeline.domain import LesionResult, Visit, VisitMeasurement
from pipeline.outputs.atomic import atomic_write_text
from pipeline.outputs.palette import STRUCTURES
from pipeline.outputs.report_plot import timeline_plot_png, timepoint_label
from pipeline.outputs.tables import format_cell, jsonable

__all__ = ["TABLE_COLUMNS", "PatientReport", "ReportLesion", "ReportSeries", "render_report", "write_report"]

log = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Columns of the measurements table: (``measurements.csv`` column, header with its unit).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("study_date", "Study date"),
    ("days_from_procedure", "Day"),
    ("cement_volume_ml", "Cement (mL)"),
    ("residual_enhancing_volume_ml", "Residual enh. (mL)"),
    ("ablation_zone_volume_ml", "Ablation zone (mL)"),
    ("max_relative_enhancement", "Max rel. enh. (ratio)"),
    ("time_to_peak_s", "Time to peak (s)"),
    ("ktrans_per_min", "Ktrans (/min)"),
    ("height_anterior_mm", "Height ant. (mm)"),
    ("height_middle_mm", "Height mid. (mm)"),
    ("height_posterior_mm", "Height post. (mm)"),
    ("height_loss_pct", "Height loss (%)"),
    ("genant_grade", "Genant grade"),
    ("registration_error_mm", "Reg. error (mm)"),
    ("qa_status", "QA at analysis"),  # a later review verdict is in measurements.csv and crav qa
)
#: Provenance keys with a dedicated layout; any other key is shown generically.
_PROVENANCE_KNOWN = ("generated_by", "software", "settings", "series")
_SERIES_FIELDS = ("series_uid", "study_date", "series_number", "modality", "description", "role", "role_reason",
                  "used", "used_as")


@dataclass(frozen=True)
class ReportSeries:
    """One row of the report's series table (from the catalog)."""

    series_uid: str
    study_date: dt.date | None
    series_number: int | None
    modality: str
    description: str
    role: str
    role_reason: str
    used: bool


@dataclass(frozen=True)
class ReportLesion:
    """One lesion's section: its verdict, its visits, and the overlay PNGs to embed.

    ``timeline_png`` and the paths of ``visit_pngs`` may be None or missing: the page then says
    "overlay not available" instead.
    """

    result: LesionResult
    rows: Sequence[VisitMeasurement]
    timeline_png: Path | None
    visit_pngs: Sequence[tuple[str, Path | None]]  # (timepoint label, PNG path)


@dataclass(frozen=True)
class PatientReport:
    """Everything shown in one patient's ``report.html``.

    ``provenance`` is the mapping written to ``provenance.json`` (keys ``software``,
    ``settings``, ``series``, ``generated_by``... any JSON-able content is shown).
    """

    patient_id: str
    lesions: Sequence[ReportLesion]
    series: Sequence[ReportSeries]
    warnings: Sequence[str]
    provenance: Mapping[str, Any]
    software_version: str = field(default=__version__)


# --- values for a reader ------------------------------------------------------------------------


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _with_unit(value: float | None, unit: str) -> str:
    text = format_cell(value)
    return f"{text} {unit}" if text else "unknown"


def _plain(value: Any) -> Any:
    """A JSON-able copy of ``value`` (dates ISO, enums by value, sets sorted, unknown types as text)."""
    return jsonable(value, str)


def _text(value: Any) -> str:
    """One value as one line of text: scalars as in the CSV files, anything else as compact JSON."""
    plain = _plain(value)
    if plain is None or isinstance(plain, bool | int | float | str):
        return format_cell(plain)
    return json.dumps(plain, ensure_ascii=False, separators=(", ", ": "))


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _embed_png(path: Path | None) -> tuple[str | None, str]:
    """(data URI, "") for a readable PNG; (None, why not) otherwise."""
    if path is None:
        return None, "overlay not available"
    try:
        data = Path(path).read_bytes()
    except OSError:
        log.warning("an overlay PNG could not be read; the report says it is not available")
        return None, f"overlay not available (no readable file {Path(path).name})"
    if not data.startswith(_PNG_SIGNATURE):
        return None, f"overlay not available ({Path(path).name} is not a PNG image)"
    return _png_data_uri(data), ""


# --- the page's sections ------------------------------------------------------------------------


def _sorted_rows(rows: Sequence[VisitMeasurement]) -> list[VisitMeasurement]:
    order = list(Visit)
    return sorted(rows, key=lambda r: (r.days_from_procedure is None, r.days_from_procedure or 0,
                                       order.index(r.timepoint)))


def _verdict(result: LesionResult) -> list[tuple[str, str]]:
    j0 = _yes_no(result.j0_residual)
    if result.j0_residual_volume_ml is not None:
        j0 += f" ({format_cell(result.j0_residual_volume_ml)} mL)"
    return [
        ("Outcome", result.outcome.value.replace("_", " ")),
        ("Failure timepoint", format_cell(result.failure_timepoint) or "none"),
        ("Residual at J0", j0),
        ("Baseline fracture", _yes_no(result.baseline_fracture)),
        ("Height loss", _yes_no(result.height_loss)),
        ("Max height loss", _with_unit(result.max_height_loss_pct, "%")),
    ]


def _all_missing(timeline_uri: str | None, visit_images: Sequence[Mapping[str, Any]]) -> str:
    """One line instead of one per image when no overlay at all can be shown ("" otherwise)."""
    if timeline_uri is not None or any(img["uri"] for img in visit_images):
        return ""
    names = ", ".join(["timeline", *(str(img["label"]) for img in visit_images)])
    return f"Overlays not available ({names})."


def _lesion_context(item: ReportLesion, index: int) -> dict[str, Any]:
    result = item.result
    rows = _sorted_rows(item.rows)
    plot_uri = None
    if rows:
        title = f"{result.lesion.lesion_id} ({result.lesion.level})"
        plot_uri = _png_data_uri(timeline_plot_png(rows, title=title, failure_timepoint=result.failure_timepoint))
    clauses = [c for c in result.reason.split("; ") if c]
    timeline_uri, timeline_missing = _embed_png(item.timeline_png)
    visit_images = []
    for label, path in item.visit_pngs:
        uri, missing = _embed_png(path)
        visit_images.append({"label": label, "uri": uri, "missing": missing})
    return {
        "anchor": f"lesion-{index}",
        "lesion_id": result.lesion.lesion_id,
        "level": result.lesion.level,
        "procedure_date": format_cell(result.lesion.procedure_date),
        "outcome": result.outcome.value,
        "verdict": _verdict(result),
        "reason": result.reason,
        "reason_head": clauses[0] if clauses else "",
        "reason_rest": clauses[1:],
        "plot_uri": plot_uri,
        "rows": [{
            "timepoint": timepoint_label(r),
            "cells": [format_cell(getattr(r, column)) for column, _ in TABLE_COLUMNS],
            "notes": list(r.notes),
            "rejected": r.qa_status == "rejected",
        } for r in rows],
        "all_missing": _all_missing(timeline_uri, visit_images),
        "timeline_uri": timeline_uri,
        "timeline_missing": timeline_missing,
        "visit_images": visit_images,
    }


def _series_context(series: Sequence[ReportSeries]) -> list[list[dict[str, str]]]:
    """Series rows grouped by study date (dates in order, series by number within a date)."""
    ordered = sorted(series, key=lambda s: (s.study_date or dt.date.min, s.series_number is None,
                                            s.series_number or 0, s.series_uid))
    groups: list[list[dict[str, str]]] = []
    for s in ordered:
        row = {
            "uid": s.series_uid, "study_date": format_cell(s.study_date), "number": format_cell(s.series_number),
            "modality": s.modality, "description": s.description, "role": s.role, "role_reason": s.role_reason,
            "used": "yes" if s.used else "no",
        }
        if groups and groups[-1][0]["study_date"] == row["study_date"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _warnings(report: PatientReport) -> list[str]:
    out = [str(w) for w in report.warnings]
    for item in report.lesions:
        for r in _sorted_rows(item.rows):
            out.extend(f"{item.result.lesion.lesion_id} {timepoint_label(r)}: {note}" for note in r.notes)
    return out


def _pairs(value: Any) -> list[tuple[str, str]] | None:
    """name = value rows of a mapping; None when ``value`` is not a mapping."""
    if not isinstance(value, Mapping):
        return None
    return [(str(_plain(k)), _text(v)) for k, v in value.items()]


def _provenance_series(value: Any) -> tuple[list[dict[str, Any]], str | None]:
    """(series rows, JSON fallback when ``value`` is not a list of mappings)."""
    if value is None:
        return [], None
    if not isinstance(value, list | tuple) or not all(isinstance(s, Mapping) for s in value):
        return [], json.dumps(_plain(value), ensure_ascii=False, indent=2)
    out = []
    for s in value:
        files = s.get("files") or []
        file_rows = ([(_text(f.get("path")), _text(f.get("sha256")) or "not recorded")
                      for f in files if isinstance(f, Mapping)] if isinstance(files, list | tuple) else [])
        shown = [(k, _text(s[k])) for k in _SERIES_FIELDS if k in s and k != "series_uid"]
        shown += [(str(k), _text(v)) for k, v in s.items() if k not in (*_SERIES_FIELDS, "files")]
        out.append({"uid": _text(s.get("series_uid")), "fields": shown, "files": file_rows})
    return out, None


def _records_table(plain: Any) -> dict[str, list[Any]] | None:
    """A list of flat mappings as a table (columns in first-seen order); None for anything else."""
    if not isinstance(plain, list) or not plain or not all(isinstance(r, dict) for r in plain):
        return None
    if any(isinstance(v, dict | list) for r in plain for v in r.values()):
        return None
    columns = list(dict.fromkeys(k for r in plain for k in r))
    return {"columns": columns, "rows": [[format_cell(r.get(c)) for c in columns] for r in plain]}


def _provenance_context(provenance: Mapping[str, Any]) -> dict[str, Any]:
    series, series_json = _provenance_series(provenance.get("series"))
    other = []
    for key, value in provenance.items():
        if key in _PROVENANCE_KNOWN:
            continue
        plain = _plain(value)
        block = not (plain is None or isinstance(plain, bool | int | float | str))
        other.append({"key": str(key), "block": block, "table": _records_table(plain),
                      "text": json.dumps(plain, ensure_ascii=False, indent=2) if block else format_cell(plain)})
    generated = provenance.get("generated_by")
    generated_text = (" ".join(_text(v) for v in generated.values()) if isinstance(generated, Mapping)
                      else _text(generated))
    software, settings = provenance.get("software"), provenance.get("settings")
    return {
        "generated_by": generated_text,
        "software": _pairs(software),
        "software_json": None if software is None or isinstance(software, Mapping) else _text(software),
        "settings": _pairs(settings),
        "settings_json": None if settings is None or isinstance(settings, Mapping) else _text(settings),
        "series": series,
        "series_json": series_json,
        "n_files": sum(len(s["files"]) for s in series),
        "other": other,
    }


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.outputs", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("j2", "html"), default_for_string=True,
                                            default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report(report: PatientReport) -> str:
    """The HTML page of one patient (a complete, self-contained document).

    Parameters
    ----------
    report
        What to show. Overlay PNGs are read from their paths; a missing or unreadable one is
        replaced by a visible "overlay not available" line.

    Returns
    -------
    str
        The page; the same ``report`` gives the same text. Text that cannot be encoded in UTF-8
        (a file name with undecodable bytes, as ``os.fsdecode`` gives it) is shown with those
        bytes escaped (``\\xff``).
    """
    context = {
        "patient_id": report.patient_id,
        "software_version": report.software_version,
        "lesions": [_lesion_context(item, i) for i, item in enumerate(report.lesions, start=1)],
        "columns": TABLE_COLUMNS,
        "structures": STRUCTURES,
        "series": _series_context(report.series),
        "warnings": _warnings(report),
        "provenance": _provenance_context(report.provenance),
    }
    page = _environment().get_template("report.html.j2").render(context)
    # File names that are not valid UTF-8 reach Python as lone surrogates (os.fsdecode): show their bytes escaped.
    try:
        return page.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return page.encode("utf-8", "backslashreplace").decode("utf-8")


def write_report(path: Path, report: PatientReport) -> None:
    """Render ``report`` and write it to ``path`` (normally ``patients/<patient>/report.html``) atomically.

    The folder is created when missing; a failure leaves any previous page untouched.
    """
    atomic_write_text(path, render_report(report))
