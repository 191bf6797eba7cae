"""Per-patient results kept between runs, so that a patient whose inputs did not change is not recomputed.

The state file ``patients/<patient>/state.json`` holds a fingerprint of everything the results depend
on (the content of the patient's input files, its registry rows, the settings and the software
version) and the results themselves. A run reuses them only when the fingerprint is
identical; any change, or ``--force``, recomputes the patient.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pipeline.domain import Lesion, LesionResult, Outcome, Visit, VisitMeasurement
from pipeline.outputs.atomic import atomic_write_text

STATE_VERSION = 3  # 2: inputs by content digest; 3: overlays, DICOM SEG/SR, report, provenance, QA corrections


def fingerprint(inputs: Iterable[str], lesions: Sequence[Lesion], settings: dict[str, Any],
                software_version: str, corrections: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of everything one patient's results depend on.

    ``inputs`` are the content digests of the patient's files (see
    :func:`pipeline.ingest.digests.input_digests`); neither their order nor the files' names or
    modification times matter. ``corrections``: lesion_id -> the QA corrections in force (JSON
    form); a reviewer's new correction recomputes the patient.
    """
    payload = {
        "state_version": STATE_VERSION,
        "software": software_version,
        "settings": settings,
        "inputs": sorted(inputs),
        "corrections": dict(corrections or {}),  # json.dumps sorts the keys
        "lesions": sorted([les.lesion_id, les.level, les.procedure_date.isoformat(), sorted(les.extra.items())]
                          for les in lesions),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _encode(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Visit | Outcome):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _lesion_result(d: dict[str, Any]) -> LesionResult:
    les = d["lesion"]
    lesion = Lesion(les["patient_id"], les["lesion_id"], les["level"], dt.date.fromisoformat(les["procedure_date"]),
                    dict(les["extra"]))
    ft = d["failure_timepoint"]
    return LesionResult(lesion, d["j0_residual"], d["j0_residual_volume_ml"], Outcome(d["outcome"]),
                        Visit(ft) if ft else None, d["baseline_fracture"], d["height_loss"],
                        d["max_height_loss_pct"], d["reason"])


def _measurement(d: dict[str, Any]) -> VisitMeasurement:
    values = dict(d)
    values["timepoint"] = Visit(values["timepoint"])
    values["study_date"] = dt.date.fromisoformat(values["study_date"]) if values["study_date"] else None
    values["notes"] = tuple(values.get("notes", ()))
    known = {f.name for f in fields(VisitMeasurement)}
    return VisitMeasurement(**{k: v for k, v in values.items() if k in known})


def save_patient_state(path: Path, fp: str, results: Sequence[LesionResult],
                       measurements: Sequence[VisitMeasurement], last_follow_up: dict[str, dt.date],
                       problems: Sequence[str]) -> None:
    """Write the state file atomically."""
    def enc(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: enc(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [enc(v) for v in obj]
        return _encode(obj)

    encoded_results = []
    for r in results:
        d = enc(asdict(r))
        d["lesion"]["extra"] = [[k, v] for k, v in r.lesion.extra.items()]  # keep the registry's column order
        encoded_results.append(d)
    doc = {
        "state_version": STATE_VERSION, "fingerprint": fp,
        "results": encoded_results,
        "measurements": [enc(asdict(m)) for m in measurements],
        "last_follow_up": {k: v.isoformat() for k, v in last_follow_up.items()},
        "problems": list(problems),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def load_patient_state(path: Path, fp: str | None) -> tuple[list[LesionResult], list[VisitMeasurement],
                                                       dict[str, dt.date], list[str]] | None:
    """The saved results when ``path`` holds results for exactly fingerprint ``fp`` (any when None), else None.

    A missing, unreadable or outdated state file is not an error: the patient is recomputed.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("state_version") != STATE_VERSION or (fp is not None and doc.get("fingerprint") != fp):
            return None
        return ([_lesion_result(r) for r in doc["results"]], [_measurement(m) for m in doc["measurements"]],
                {k: dt.date.fromisoformat(v) for k, v in doc["last_follow_up"].items()}, list(doc["problems"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
