"""What an output folder holds, for ``crav status``: the last run, each patient, what failed and why.

Read-only: it reads ``run.json`` (written at the end of every ``crav run``), each
``patients/<id>/state.json`` (the saved results of a patient and the fingerprint of its inputs)
and probes the output lock (a run in progress). Nothing here touches DICOM or the catalog.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.outputs.lock import OutputLockedError, output_lock
from pipeline.settings import Settings


@dataclass
class PatientStatus:
    """One patient as the last run left it."""

    patient_id: str
    decision: str  # what the last run did with it and why
    computed_at: str | None  # when its saved results were written (UTC), None when none are saved
    fingerprint: str | None  # hash of its input files, registry rows, settings and software version
    outcomes: dict[str, str] = field(default_factory=dict)  # lesion_id -> outcome
    problems: list[str] = field(default_factory=list)


@dataclass
class FolderStatus:
    """The last run into an output folder and the state of its patients."""

    output_dir: Path
    run: dict[str, Any]
    patients: list[PatientStatus]
    running: str | None  # who is writing into the folder now, None when nobody

    @property
    def problems(self) -> list[str]:
        """Every problem the last run recorded (the patients' included)."""
        return [str(p) for p in self.run.get("problems") or []]

    @property
    def quarantined(self) -> int:
        """Input files the last run quarantined (each with its reason in ``files.csv``)."""
        count = (self.run.get("scan") or {}).get("quarantined", 0)
        return count if isinstance(count, int) else 0

    @property
    def needs_a_look(self) -> bool:
        """A problem recorded, a patient with problems, or a quarantined file (``crav run``'s exit 1)."""
        return bool(self.problems or self.quarantined or any(p.problems for p in self.patients))

    def changed_settings(self) -> dict[str, tuple[Any, Any]]:
        """Settings of the last run that differ from the defaults: name -> (default, used)."""
        defaults = Settings().as_dict()
        used = self.run.get("settings") or {}
        return {k: (defaults.get(k), v) for k, v in sorted(used.items()) if defaults.get(k) != v}


def _mtime_utc(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")


def _running(output_dir: Path) -> str | None:
    try:
        with output_lock(output_dir):
            return None
    except OutputLockedError as exc:
        return str(exc)


def read_status(output_dir: Path) -> FolderStatus:
    """Read ``output_dir``'s last run and patients.

    Raises
    ------
    FileNotFoundError
        If the folder holds no ``run.json`` (no ``crav run`` finished there).
    ValueError
        If ``run.json`` is not valid JSON.
    """
    run_json = output_dir / "run.json"
    if not run_json.is_file():
        raise FileNotFoundError(f"{output_dir} holds no run.json: no crav run has finished there")
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{run_json} is not valid JSON: {exc}") from exc
    run.setdefault("finished", _mtime_utc(run_json))  # written before run.json recorded it
    decisions: dict[str, str] = dict(run.get("patients") or {})
    states = {p.parent.name: p for p in sorted((output_dir / "patients").glob("*/state.json"))}
    patients: list[PatientStatus] = []
    for pid in sorted(set(decisions) | set(states)):
        status = PatientStatus(pid, decisions.get(pid, "not in the last run"), None, None)
        state = states.get(pid)
        if state is not None:
            status.computed_at = _mtime_utc(state)
            try:
                saved = json.loads(state.read_text(encoding="utf-8"))
            except ValueError:
                status.problems.append("state.json unreadable: the next run recomputes this patient")
            else:
                status.fingerprint = saved.get("fingerprint")
                status.outcomes = {str((r.get("lesion") or {}).get("lesion_id")): str(r.get("outcome"))
                                   for r in saved.get("results") or []}
                status.problems = [str(p) for p in saved.get("problems") or []]
        patients.append(status)
    return FolderStatus(output_dir, run, patients, _running(output_dir))


def format_status(status: FolderStatus) -> str:
    """The status as text for a person."""
    run = status.run
    software = run.get("software") or {}
    lines = [f"Output folder {status.output_dir}"]
    if status.running:
        lines.append(f"a run is in progress: {status.running}")
    lines += [
        f"last run: started {run.get('started', '?')}, finished {run.get('finished', '?')}, "
        f"crav-followup {software.get('crav-followup', '?')} (Python {software.get('python', '?')})",
        f"  input {run.get('input', '?')}; registry {run.get('registry', '?')}",
    ]
    requested = run.get("requested")
    if requested:
        lines.append(f"  patients requested: {requested.get('patients')}; --force: {requested.get('force')}")
    changed = status.changed_settings()
    lines.append("  settings: " + ("defaults" if not changed else
                                   ", ".join(f"{k} = {v} (default {d})" for k, (d, v) in changed.items())))
    scan = run.get("scan") or {}
    if scan:
        lines.append("  files: " + ", ".join(f"{v} {k}" for k, v in scan.items() if isinstance(v, int)))
    lines += ["", f"{len(status.patients)} patient(s):"]
    for p in status.patients:
        outcomes = ", ".join(f"{lid} {o}" for lid, o in sorted(p.outcomes.items())) or "no saved results"
        when = f"results of {p.computed_at}" if p.computed_at else "no saved results"
        lines.append(f"  {p.patient_id}: {p.decision}; {when}; {outcomes}")
        lines += [f"      - {problem}" for problem in p.problems]
    if status.quarantined:
        lines += ["", f"{status.quarantined} input file(s) quarantined: the reasons are in "
                      f"{status.output_dir / 'files.csv'}"]
    if status.problems:
        lines += ["", f"{len(status.problems)} problem(s) in the last run:", *(f"  - {p}" for p in status.problems)]
    return "\n".join(lines)
