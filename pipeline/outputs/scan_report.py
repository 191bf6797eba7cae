"""What a scan found, written for a person: patients, visits, series with role and reason, files set aside.

Example
-------
>>> from pipeline.ingest.catalog import Catalog
>>> print(format_scan_report(Catalog.open(":memory:"), lesions=[]).splitlines()[0])
0 file(s): nothing found
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from pipeline.domain import Lesion
from pipeline.ingest.catalog import Catalog, FileRecord, SeriesRecord
from pipeline.ingest.visits import VisitAssignment, assign_visits

#: How many files of one reason are listed by name before the rest are only counted.
EXAMPLES_PER_REASON = 3


def _text(path: Path) -> str:
    """A path as text even when its name is not valid UTF-8 (undecodable bytes shown escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        for base in (root, root.resolve()):
            try:
                return _text(path.relative_to(base))
            except ValueError:
                continue
    return _text(path)


def _reason_kind(reason: str) -> str:
    """Group reasons that differ only by the file they name ("duplicate of <path>")."""
    return reason.split(" of ", 1)[0] if reason.startswith("duplicate") else reason


def _series_lines(series: list[SeriesRecord]) -> list[str]:
    lines = []
    groups: dict[str, list[SeriesRecord]] = defaultdict(list)
    for s in series:
        if s.dynamic_group:
            groups[s.dynamic_group].append(s)
    shown: set[str] = set()
    for s in sorted(series, key=lambda r: (r.series_number if r.series_number is not None else 10**6, r.series_uid)):
        if s.dynamic_group:
            if s.dynamic_group in shown:
                continue
            shown.add(s.dynamic_group)
            members = groups[s.dynamic_group]
            n = sum(m.n_files for m in members)
            lines.append(f"      series {s.series_number or '?':>4}  {s.role.value:<10} {s.description[:28]:<28} "
                         f"{n:>5} files  dynamic of {len(members)} one-phase series: {s.role_reason}")
            continue
        lines.append(f"      series {s.series_number or '?':>4}  {s.role.value:<10} {s.description[:28]:<28} "
                     f"{s.n_files:>5} files  {s.role_reason}")
    return lines


def _visit_text(study_uid: str, assignments: dict[str, VisitAssignment]) -> str:
    a = assignments.get(study_uid)
    if a is None:
        return "no registry procedure date: visit not assigned"
    return f"{a.visit.value} (day {a.days_from_procedure:+d})"


def format_scan_report(catalog: Catalog, lesions: Sequence[Lesion], root: Path | None = None) -> str:
    """The scan's content as text: every patient, study, series and set-aside file with its reason."""
    files = catalog.file_accounting()
    status = Counter(f.status for f in files)
    if not files:
        return "0 file(s): nothing found"
    out = [f"{len(files)} file(s): " + ", ".join(f"{n} {s}" for s, n in sorted(status.items()))]
    by_patient: dict[str, list[Lesion]] = defaultdict(list)
    for les in lesions:
        by_patient[les.patient_id].append(les)
    patients = catalog.patients()
    for pid in patients:
        regs = by_patient.get(pid, [])
        series = catalog.series(pid)
        studies = catalog.studies(pid)
        if regs:
            dates = sorted({les.procedure_date for les in regs})
            out.append(f"\npatient {pid}: {len(regs)} registry lesion(s) "
                       f"({', '.join(les.level for les in regs)}), procedure {dates[0].isoformat()}")
            known = {st.study_uid: st.study_date for st in studies if st.study_date is not None}
            groups = {st.study_uid: "CT" if "CT" in st.modalities else "MR" for st in studies}
            assignments = assign_visits(known, dates[0], groups=groups)
        else:
            out.append(f"\npatient {pid}: not in the registry (its series are indexed, no lesion is analysed)")
            assignments = {}
        for st in studies:
            date = st.study_date.isoformat() if isinstance(st.study_date, dt.date) else "no StudyDate"
            out.append(f"  study {date} {'/'.join(st.modalities)}: {_visit_text(st.study_uid, assignments)}")
            out.extend(_series_lines([s for s in series if s.study_uid == st.study_uid]))
    for pid, reason in catalog.unknown_patients(by_patient).items():
        out.append(f"\npatient {pid}: in the registry ({len(by_patient[pid])} lesion(s)) but {reason}")
    out.extend(_set_aside(files, root))
    return "\n".join(out)


def _set_aside(files: list[FileRecord], root: Path | None) -> list[str]:
    lines: list[str] = []
    for status in ("quarantined", "ignored", "arriving"):
        chosen = [f for f in files if f.status == status]
        if not chosen:
            continue
        lines.append(f"\n{status} files ({len(chosen)}):")
        by_reason: dict[str, list[FileRecord]] = defaultdict(list)
        for f in chosen:
            by_reason[_reason_kind(f.reason or "no reason recorded")].append(f)
        for reason, group in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(group)} x {reason}")
            for f in group[:EXAMPLES_PER_REASON]:
                detail = f" ({f.reason})" if f.reason and f.reason != reason else ""
                lines.append(f"      {_relative(f.path, root)}{detail}")
            if len(group) > EXAMPLES_PER_REASON:
                lines.append(f"      ... and {len(group) - EXAMPLES_PER_REASON} more")
    return lines
