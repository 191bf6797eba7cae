"""What the review pages show, read from an output folder of ``crav run``: plain dicts for the templates.

Nothing here knows HTTP. Identifiers from the tables are looked up, never turned into paths: the
folders of a lesion are named with :func:`pipeline.outputs.paths.safe_path_component`, as the
pipeline names them.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.tables import LESION_COLUMNS
from pipeline.review.store import (
    Review,
    ReviewStore,
    lesion_result_key,
    read_csv,
    visit_label,
    visit_sort_key,
)

log = logging.getLogger(__name__)

#: Lesion statuses on the page, in the order of the counts.
PAGE_STATUSES: tuple[str, ...] = ("pending", "needs_review", "accepted", "rejected")
_REASON_CHARS = 110
#: (column of measurements.csv, heading on the page)
MEASUREMENT_HEADINGS: tuple[tuple[str, str], ...] = (
    ("study_date", "Date"), ("days_from_procedure", "Day"), ("cement_volume_ml", "Cement (mL)"),
    ("residual_enhancing_volume_ml", "Residual (mL)"), ("ablation_zone_volume_ml", "Ablation (mL)"),
    ("max_relative_enhancement", "Max rel. enh."), ("time_to_peak_s", "TTP (s)"), ("ktrans_per_min", "Ktrans (/min)"),
    ("height_anterior_mm", "H ant (mm)"), ("height_middle_mm", "H mid (mm)"), ("height_posterior_mm", "H post (mm)"),
    ("height_loss_pct", "Height loss (%)"), ("genant_grade", "Genant"),
    ("registration_error_mm", "Reg. error (mm)"), ("qa_status", "qa_status"), ("notes", "Notes"),
)
_GEOMETRY_KEYS = ("x0_px", "y0_px", "width_px", "height_px")


@dataclass(frozen=True)
class OutputTables:
    """``lesions.csv`` and ``measurements.csv`` of an output folder."""

    lesions: list[dict[str, str]]  # file order
    visits: dict[tuple[str, str], list[dict[str, str]]]  # (patient_id, lesion_id) -> rows in visit order

    def lesion(self, patient_id: str, lesion_id: str) -> dict[str, str] | None:
        for row in self.lesions:
            if row.get("patient_id") == patient_id and row.get("lesion_id") == lesion_id:
                return row
        return None

    def rows(self, patient_id: str, lesion_id: str) -> list[dict[str, str]]:
        return self.visits.get((patient_id, lesion_id), [])


def read_tables(output_dir: Path) -> OutputTables:
    """Read the two tables (a missing ``measurements.csv`` reads as no visit rows).

    Raises
    ------
    FileNotFoundError
        If ``lesions.csv`` is missing.
    """
    lesions_csv = output_dir / "lesions.csv"
    if not lesions_csv.is_file():
        raise FileNotFoundError(f"{lesions_csv} is missing: run crav run into {output_dir} first")
    _, lesions = read_csv(lesions_csv)
    visits: dict[tuple[str, str], list[dict[str, str]]] = {}
    measurements = output_dir / "measurements.csv"
    if measurements.is_file():
        for row in read_csv(measurements)[1]:
            visits.setdefault((row.get("patient_id", ""), row.get("lesion_id", "")), []).append(row)
    for rows in visits.values():
        rows.sort(key=lambda r: visit_sort_key(visit_label(r.get("timepoint", ""), r.get("days_from_procedure"))))
    return OutputTables(lesions, visits)


@dataclass(frozen=True)
class LesionState:
    """Where a lesion stands: its status on the page, the verdict behind it, the key of its results."""

    status: str  # one of PAGE_STATUSES
    review: Review | None  # latest verdict, current or not
    stale: bool  # a verdict exists but was given on other results (a run changed them since)
    result_key: str


def lesion_state(lesion_row: Mapping[str, str], rows: Sequence[Mapping[str, str]], review: Review | None
                 ) -> LesionState:
    """The status of a lesion: its latest verdict while the results are those reviewed, else the pipeline's."""
    key = lesion_result_key(lesion_row, rows)
    if review is not None and review.result_key == key:
        return LesionState(review.status, review, False, key)
    status = "needs_review" if any(r.get("qa_status") == "needs_review" for r in rows) else "pending"
    return LesionState(status, review, review is not None, key)


def lesion_url(patient_id: str, lesion_id: str) -> str:
    """``/lesion/<patient_id>/<lesion_id>``, each part percent-encoded (``/`` included)."""
    return f"/lesion/{quote(patient_id, safe='')}/{quote(lesion_id, safe='')}"


def shorten(text: str, limit: int = _REASON_CHARS) -> str:
    """The first clause of a reason, at most ``limit`` characters.

    Example
    -------
    >>> shorten("local failure: M3 residual 2.83 mL >= nadir; J0 residual 1.19 mL")
    'local failure: M3 residual 2.83 mL >= nadir'
    """
    first = text.split(";", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def list_page(tables: OutputTables, latest: Mapping[tuple[str, str], Review]) -> dict[str, Any]:
    """The lesion list: one item per row of ``lesions.csv`` and the counts per status."""
    items: list[dict[str, Any]] = []
    for row in tables.lesions:
        pid, lid = row.get("patient_id", ""), row.get("lesion_id", "")
        state = lesion_state(row, tables.rows(pid, lid), latest.get((pid, lid)))
        items.append({
            "patient_id": pid, "lesion_id": lid, "level": row.get("level", ""), "outcome": row.get("outcome", ""),
            "j0_residual": row.get("j0_residual", ""), "j0_residual_volume_ml": row.get("j0_residual_volume_ml", ""),
            "reason": row.get("reason", ""), "reason_short": shorten(row.get("reason", "")),
            "status": state.status, "stale": state.stale, "url": lesion_url(pid, lid),
            "reviewed_at": state.review.reviewed_at if state.review and not state.stale else "",
        })
    counts = {s: sum(1 for i in items if i["status"] == s) for s in PAGE_STATUSES}
    outcomes = sorted({i["outcome"] for i in items if i["outcome"]})
    return {"items": items, "counts": counts, "total": len(items), "outcomes": outcomes, "statuses": PAGE_STATUSES}


def _image(output_dir: Path, parts: Sequence[str]) -> str | None:
    """URL of a PNG under ``patients/`` (with its modification time, so a re-run's image is fetched anew)."""
    path = output_dir.joinpath("patients", *parts)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        return None
    return "/img/" + "/".join(quote(p, safe="") for p in parts) + f"?v={mtime_ns}"


def _vector(value: Any) -> list[float] | None:
    if (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        return [float(v) for v in value]
    return None


def read_geometry(path: Path) -> dict[str, Any] | None:
    """The panels of an overlay's sidecar JSON, checked; None when absent or malformed.

    Keeps ``width_px``, ``height_px`` and per panel ``view``, ``label``, the pixel box and the plane
    (``origin_mm``, ``row_step_mm``, ``col_step_mm``): pixel (col c, row r) of a panel is at
    ``origin_mm + r * row_step_mm + c * col_step_mm`` (LPS, mm).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
        return None
    size = [data.get("width_px"), data.get("height_px")]
    if not all(isinstance(v, int) and v > 0 for v in size):
        return None
    panels = []
    for p in data["panels"]:
        if not isinstance(p, dict):
            return None
        box = [p.get(k) for k in _GEOMETRY_KEYS]
        vectors = [_vector(p.get(k)) for k in ("origin_mm", "row_step_mm", "col_step_mm")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box) or None in vectors:
            return None
        panels.append({"view": str(p.get("view", "")), "label": str(p.get("label", "")),
                       **dict(zip(_GEOMETRY_KEYS, box, strict=True)),
                       "origin_mm": vectors[0], "row_step_mm": vectors[1], "col_step_mm": vectors[2]})
    return {"width_px": size[0], "height_px": size[1], "panels": panels}


def _series(output_dir: Path, patient_id: str) -> tuple[list[dict[str, str]], str]:
    """The patient's series from the catalog, and a message when they cannot be read now."""
    from pipeline.ingest.catalog import Catalog

    try:
        with Catalog.open(output_dir / "catalog.sqlite", read_only=True) as catalog:
            records = catalog.series(patient_id)
    except (sqlite3.Error, FileNotFoundError) as exc:  # no catalog, or a run holding its write lock for long
        log.warning("series list not read from the catalog: %s", type(exc).__name__)
        return [], "The series list cannot be read now (a run is writing the catalog): reload in a moment."
    rows: list[dict[str, str]] = []
    group: str | None = None
    for r in records:
        if r.dynamic_group is not None and r.dynamic_group == group:  # a phase of the split dynamic above
            last = rows[-1]
            last["phases"] = str(int(last["phases"]) + 1)
            last["last_description"] = r.description
            last["n_files"] = str(int(last["n_files"]) + r.n_files)
            continue
        group = r.dynamic_group
        rows.append({"study_date": r.study_date.isoformat() if r.study_date else "", "modality": r.modality,
                     "series_number": "" if r.series_number is None else str(r.series_number),
                     "description": r.description, "last_description": "", "phases": "1",
                     "role": r.role.value, "reason": r.role_reason, "n_files": str(r.n_files)})
    return rows, ""


def lesion_page(output_dir: Path, tables: OutputTables, store: ReviewStore, patient_id: str, lesion_id: str
                ) -> dict[str, Any] | None:
    """Everything the page of one lesion shows; None when the lesion is not in ``lesions.csv``."""
    row = tables.lesion(patient_id, lesion_id)
    if row is None:
        return None
    rows = tables.rows(patient_id, lesion_id)
    history = store.history(patient_id, lesion_id)
    state = lesion_state(row, rows, history[-1] if history else None)
    folder = [safe_path_component(patient_id), safe_path_component(lesion_id)]
    visits = []
    geometry = None
    for r in rows:
        label = visit_label(r.get("timepoint", ""), r.get("days_from_procedure"))
        overlay = _image(output_dir, [*folder, label, "overlay.png"]) if label != "UNSCHEDULED" else None
        if label == "J0" and overlay is not None:
            geometry = read_geometry(output_dir.joinpath("patients", *folder, "J0", "overlay.json"))
        visits.append({"label": label, "cells": [r.get(c, "") for c, _ in MEASUREMENT_HEADINGS],
                       "qa_status": r.get("qa_status", ""), "overlay": overlay})
    series, series_problem = _series(output_dir, patient_id)
    latest = store.latest()
    order = []
    for les in tables.lesions:
        pid, lid = les.get("patient_id", ""), les.get("lesion_id", "")
        other = state if (pid, lid) == (patient_id, lesion_id) else lesion_state(les, tables.rows(pid, lid),
                                                                                latest.get((pid, lid)))
        order.append({"url": lesion_url(pid, lid), "status": other.status})
    corrections = store.corrections_for(patient_id, lesion_id)
    details = [(c, row.get(c, "")) for c in LESION_COLUMNS if c not in ("patient_id", "lesion_id", "reason")]
    details += [(c, v) for c, v in row.items() if c not in LESION_COLUMNS and v]
    return {
        "patient_id": patient_id, "lesion_id": lesion_id, "row": row, "details": details,
        "reason": row.get("reason", ""), "outcome": row.get("outcome", ""), "level": row.get("level", ""),
        "status": state.status, "stale": state.stale, "result_key": state.result_key,
        "review": state.review, "history": list(reversed(history)), "corrections": corrections,
        "headings": [h for _, h in MEASUREMENT_HEADINGS], "visits": visits,
        "timeline": _image(output_dir, [*folder, "timeline.png"]), "geometry": geometry,
        "series": series, "series_problem": series_problem, "url": lesion_url(patient_id, lesion_id),
        "script": {"patient_id": patient_id, "lesion_id": lesion_id, "result_key": state.result_key,
                   "url": lesion_url(patient_id, lesion_id), "order": order, "geometry": geometry,
                   "seed_mm": list(corrections.seed_mm) if corrections.seed_mm else None,
                   "exclude_visits": list(corrections.exclude_visits)},
    }
