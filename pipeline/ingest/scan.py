"""Scan a PACS export folder into the catalog: header-only reads, incremental, every file accounted.

Each file ends up ``indexed``, ``ignored`` (not DICOM, no image, duplicate, localizer,
derived), ``quarantined`` (unreadable or truncated) or ``arriving`` (modified within the
quiet period: not used yet), with a reason. Only new or changed files (path, size,
mtime_ns) are read again; after indexing, the series rows and roles of the affected patients
are recomputed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import IDENTITY_CONFLICT, Catalog, SeriesRecord, parse_da
from pipeline.ingest.headers import HeaderRead, error_text, header_text, read_header
from pipeline.ingest.roles import (
    RoleDecision,
    SeriesSummary,
    decide_role_from_summary,
    group_dynamic_series,
    summarise_series,
)

log = logging.getLogger(__name__)

#: Fewest headers to read before forking worker processes pays off.
PARALLEL_MIN_FILES = 2000
#: Rows written to SQLite at a time while headers are read (bounds the scan's memory).
UPSERT_BATCH = 2000


@dataclass
class ScanReport:
    """What a scan did.

    ``new``/``changed``/``unchanged``/``deleted`` count files this scan read for the first
    time / read again / skipped / dropped; ``arriving``, ``quarantined`` and ``ignored`` are
    the numbers of files in that state after the scan. ``unlisted_folders`` are folders that
    could not be listed (permissions): their files are unknown, not silently dropped.
    """

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    arriving: int = 0
    quarantined: int = 0
    ignored: int = 0
    indexed: int = 0
    changed_patients: list[str] = field(default_factory=list)
    unlisted_folders: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- scan


def _file_row(path: str, size: int, mtime_ns: int, result: HeaderRead) -> tuple[Any, ...]:
    h = result.header or {}
    ids = (header_text(h, k) or None for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    return (path, size, mtime_ns, result.status, result.reason, *ids, result.header)


def _read_headers(paths: list[Path], workers: int | None) -> Iterator[HeaderRead]:
    """Read headers in order, in forked worker processes when there are many (parsing is CPU-bound).

    Forking is only done from a single-threaded process (it is unsafe under a threaded task
    runner); otherwise, or if a worker dies, headers are read in-process.
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(paths) >= PARALLEL_MIN_FILES else 1
    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if workers <= 1 or not can_fork:
        yield from map(read_header, paths)
        return
    done = 0
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for result in pool.map(read_header, paths, chunksize=256):
                done += 1
                yield result
    except BrokenProcessPool:
        log.warning("header-reading worker processes failed; reading the remaining files in-process")
        yield from map(read_header, paths[done:])


def _walk(root: Path, skip: set[str], unlisted: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every non-folder entry under ``root``, as ``os.walk`` lists them.

    ``os.scandir`` directly: entry paths come ready-made and folder types need no extra system
    call, which is most of a rescan's time. Folders behind symbolic links are not entered; a
    folder that cannot be listed goes to ``unlisted``.
    """
    found: list[tuple[str, int, int]] = []
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            unlisted.append(str(exc.filename if exc.filename is not None else folder))
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if entry.is_dir():  # a symbolic link to a folder: listed by os.walk as a folder, not entered
                        continue
                except OSError:
                    pass
                if entry.path in skip:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    try:
                        st = entry.stat(follow_symlinks=False)  # a broken symbolic link: kept, read_header says why
                    except OSError:
                        continue  # vanished between listing and stat
                found.append((entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def scan_export(
    root: Path,
    catalog: Catalog,
    *,
    quiet_period_s: float = 60.0,
    now_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    min_split_dce_phases: int = 3,
    workers: int | None = None,
) -> ScanReport:
    """Index (incrementally) every file under ``root`` into ``catalog``.

    Parameters
    ----------
    root
        The export folder (any nesting, any file names).
    catalog
        Catalog to update.
    quiet_period_s
        Files modified less than this many seconds before ``now_s`` are 'arriving' and not read.
    now_s
        Current time (epoch seconds); ``time.time()`` when None.
    progress
        Called as ``progress(files_read, files_to_read)`` while headers are read.
    min_split_dce_phases
        Fewest one-phase series that are reassembled into a DCE.
    workers
        Processes reading headers; None: one per CPU (at most 4) when at least
        ``PARALLEL_MIN_FILES`` files are to be read, else 1 (in-process).

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"export folder not found: {root}")
    now = time.time() if now_s is None else now_s
    skip: set[str] = set()
    if catalog.location != ":memory:":
        db = str(Path(catalog.location).resolve())
        skip = {db, db + "-wal", db + "-shm", db + "-journal"}
    started = time.perf_counter()
    known = catalog.file_states()
    report = ScanReport()
    found = _walk(root, skip, report.unlisted_folders)
    affected: set[str] = set()
    to_read: list[tuple[str, int, int, bool]] = []
    rows: list[tuple[Any, ...]] = []
    for path, size, mtime_ns in found:
        previous = known.get(path)
        if previous is not None and previous[:2] == (size, mtime_ns) and previous[2] != "arriving":
            report.unchanged += 1
            continue
        if previous is not None and previous[3]:
            affected.add(previous[3])
        age = now - mtime_ns / 1e9
        # A file dated further in the future than the quiet period is a clock problem, not a
        # file being written: it is read (a partial read is redone when its size changes).
        if -quiet_period_s <= age < quiet_period_s:
            reason = (
                f"modified {max(age, 0):.0f} s ago, within the {quiet_period_s:g} s quiet period: "
                "not used until it stops changing"
            )
            rows.append(_file_row(path, size, mtime_ns, HeaderRead("arriving", reason)))
            continue
        to_read.append((path, size, mtime_ns, previous is not None and previous[2] != "arriving"))
    seen = {p for p, _, _ in found}
    unlisted = tuple(folder.rstrip(os.sep) + os.sep for folder in report.unlisted_folders)
    deleted = [p for p in known if p not in seen and not p.startswith(unlisted)]  # unlisted: kept as they were
    for p in deleted:
        if known[p][3]:
            affected.add(str(known[p][3]))
    report.deleted = len(deleted)
    del known, seen, found  # the headers are streamed into SQLite: memory stays flat in the export size
    results = _read_headers([Path(p) for p, _, _, _ in to_read], workers)
    with catalog.transaction():
        catalog.delete_files(deleted)
        for done, ((path, size, mtime_ns, was_known), result) in enumerate(zip(to_read, results, strict=True), 1):
            h = result.header or {}
            rows.append(_file_row(path, size, mtime_ns, result))
            if header_text(h, "PatientID"):
                affected.add(header_text(h, "PatientID"))
            if was_known:
                report.changed += 1
            else:
                report.new += 1
            if len(rows) >= UPSERT_BATCH:
                catalog.upsert_files(rows)
                rows.clear()
            if progress is not None and (done % 200 == 0 or done == len(to_read)):
                progress(done, len(to_read))
        catalog.upsert_files(rows)
        rows.clear()
        if to_read or deleted:  # conflicts can only appear or vanish when files do
            affected |= _identity_conflicts(catalog)
        for patient_id in sorted(affected):
            _recompute_patient(catalog, patient_id, min_split_dce_phases)
    counts = catalog.status_counts()
    report.arriving, report.quarantined = counts["arriving"], counts["quarantined"]
    report.ignored, report.indexed = counts["ignored"], counts["indexed"]
    report.changed_patients = sorted(affected)
    elapsed = time.perf_counter() - started
    log.info(
        "scan: %d files (%d new, %d changed, %d unchanged, %d deleted, %d arriving) in %.1f s; "
        "%d patient(s) recomputed",
        report.new + report.changed + report.unchanged + report.arriving,
        report.new,
        report.changed,
        report.unchanged,
        report.deleted,
        report.arriving,
        elapsed,
        len(affected),
    )
    if report.unlisted_folders:
        log.warning("scan: %d folder(s) could not be listed; their files are not in the catalog",
                    len(report.unlisted_folders))
    return report


def _identity_conflicts(catalog: Catalog) -> set[str]:
    """Quarantine images whose series is claimed by several PatientIDs; the patients to recompute.

    When one PatientID holds more than twice as many of the series' files as all the others
    together (and at least 2), only the others are quarantined: a corrupt header or an image
    filed under the wrong patient. Otherwise (a merged or re-registered patient exported twice)
    no image of the series is used. Conflicts are recomputed from scratch on every scan; only
    the patients whose conflicts changed are returned.
    """
    before = catalog.identity_conflict_files()
    catalog.release_identity_conflicts()
    for series_uid, counts in catalog.series_patient_conflicts().items():
        leader, lead = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        others = sum(counts.values()) - lead
        if lead >= 2 and lead > 2 * others:
            catalog.quarantine_series(
                series_uid,
                f"{IDENTITY_CONFLICT}its PatientID differs from that of the {lead} other image(s) of its series "
                "(corrupt header, or an image filed under the wrong patient)",
                [p for p in counts if p != leader],
            )
            continue
        catalog.quarantine_series(
            series_uid,
            f"{IDENTITY_CONFLICT}the images of this series carry {len(counts)} different PatientIDs "
            "(merged or re-registered patient, or a corrupt header); none is used until it is resolved",
        )
    after = catalog.identity_conflict_files()
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    patients = {e[0] for path in changed for e in (before.get(path), after.get(path)) if e is not None and e[0]}
    involved = {pid for pid, _ in after.values() if pid}
    if involved:
        log.warning("scan: %d patient(s) involved in series identity conflicts", len(involved))
    return patients


def _study_date(header: dict[str, Any]) -> str:
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate"):
        if header.get(key):
            return str(header[key])
    return ""


def _recompute_patient(catalog: Catalog, patient_id: str, min_phases: int) -> None:
    """Deduplicate instances, rebuild series rows, roles and dynamic groups of one patient."""
    primary: dict[str, str] = {}
    updates: list[tuple[str, str, str]] = []
    by_series: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for path, series_uid, sop_uid, header in catalog.patient_file_headers(patient_id):
        if sop_uid in primary:
            updates.append(("ignored", f"duplicate of {primary[sop_uid]}", path))
            continue
        primary[sop_uid] = path
        by_series[series_uid].append((path, header))
    summaries: dict[str, SeriesSummary] = {}
    decisions: dict[str, RoleDecision] = {}
    for uid, items in list(by_series.items()):
        try:  # headers are checked when read, but one odd series must never stop the scan
            summaries[uid] = summarise_series([h for _, h in items])
            decisions[uid] = decide_role_from_summary(summaries[uid])
        except Exception as exc:
            reason = f"the series headers cannot be summarised ({error_text(exc)})"
            updates.extend(("quarantined", reason, path) for path, _ in by_series.pop(uid))
            summaries.pop(uid, None)
    membership: dict[str, tuple[str, int]] = {}
    try:
        groups = group_dynamic_series(list(summaries.values()), min_phases=min_phases)
    except Exception as exc:
        log.warning("scan: split dynamic series not grouped for one patient (%s)", type(exc).__name__)
        groups = []
    for group in groups:
        for position, uid in enumerate(group.series_uids):
            membership[uid] = (group.group_id, position)
            decisions[uid] = RoleDecision(
                SeriesRole.DCE, f"{group.reason} (phase {position + 1} of {len(group.series_uids)})"
            )
    records: list[SeriesRecord] = []
    for uid, items in by_series.items():
        decision, summary = decisions[uid], summaries[uid]
        if decision.role in (SeriesRole.LOCALIZER, SeriesRole.DERIVED):
            reason = f"{decision.role.value.lower()} series: {decision.reason}"
            updates.extend(("ignored", reason, path) for path, _ in items)
        else:
            updates.extend(("indexed", "", path) for path, _ in items)
        group_id: str | None = membership[uid][0] if uid in membership else None
        index: int | None = membership[uid][1] if uid in membership else None
        records.append(
            SeriesRecord(
                series_uid=uid,
                study_uid=summary.study_uid,
                patient_id=patient_id,
                study_date=parse_da(_study_date(items[0][1])),
                modality=summary.modality or "",
                role=decision.role,
                role_reason=decision.reason,
                description=summary.description,
                frame_of_reference_uid=summary.frame_of_reference_uid,
                n_files=len(items),
                dynamic_group=group_id,
                dynamic_index=index,
                series_number=summary.series_number,
                acquisition_time_s=summary.acquisition_time_s,
            )
        )
    catalog.set_file_status(updates)
    catalog.replace_patient_series(patient_id, records)
