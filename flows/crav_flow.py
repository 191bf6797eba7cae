"""Prefect flow of the main job: scan the export, process each patient, write the cohort tables.

Prefect only strings the steps together: each task calls one plain function. Patients run in
parallel on a ThreadPoolTaskRunner (width: ``Settings.max_workers``); NumPy and SimpleITK release
the GIL.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import platform
import sqlite3
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flows.patient import PatientOutcome, _indeterminate
from pipeline import __version__
from pipeline.domain import Lesion, LesionResult, VisitMeasurement
from pipeline.ingest.catalog import Catalog, PatientIndex
from pipeline.ingest.digests import input_digests
from pipeline.ingest.registry import read_registry
from pipeline.ingest.scan import ScanReport, scan_export
from pipeline.outputs.atomic import atomic_write_text, sweep_orphans
from pipeline.outputs.lock import output_lock
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.patient_state import fingerprint, load_patient_state
from pipeline.outputs.tables import write_cohort_summary, write_lesions_csv, write_measurements_csv
from pipeline.progress import ProgressBar
from pipeline.response.cohort import cohort_markdown, cohort_table
from pipeline.review.store import Corrections, ReviewStore, apply_reviews
from pipeline.settings import Settings, load_settings

log = logging.getLogger(__name__)


def _hermetic_prefect_env() -> None:
    """Embedded defaults: Prefect's local (ephemeral) mode, no telemetry, nothing on the network."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # the local server starts in the run's process: on a busy machine it can take more than Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


_hermetic_prefect_env()  # before Prefect reads its settings at import

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402

from flows.patient_flow import io_task, thread_runner  # noqa: E402


def scan_step(input_dir: Path, catalog_url: str, settings: Settings) -> ScanReport:
    with Catalog.open(catalog_url) as catalog:
        return scan_export(input_dir, catalog, quiet_period_s=settings.quiet_period_s,
                           progress=ProgressBar("reading headers"))


def patient_step(index: PatientIndex, lesions: list[Lesion], output_dir: Path, settings: Settings,
                 fingerprint: str | None, corrections: dict[str, Corrections] | None = None) -> PatientOutcome:
    """One patient's flow; an unexpected error becomes indeterminate results with the reason (the batch goes on)."""
    from flows.patient_flow import run_patient_flow

    try:
        return run_patient_flow(index, lesions, output_dir, settings, fingerprint, corrections)
    except Exception as e:  # one patient's failure never stops the batch
        # the type only in the logs (messages can hold paths or header values); the details go to run.json
        log.error("patient processing failed with %s", type(e).__name__)
        detail = "".join(traceback.format_exception(e)).strip()
        reason = f"processing failed ({type(e).__name__}: {e}); details in run.json"
        return PatientOutcome(index.patient_id, [_indeterminate(les, reason) for les in lesions], [],
                              [f"patient {index.patient_id}: processing failed:\n{detail}"], {}, [], failed=True)


def _file_accounting_csv(catalog_url: str) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["path", "status", "reason", "series_uid"])
    with Catalog.open(catalog_url) as catalog:
        for rec in catalog.file_accounting():
            # a file name need not be valid UTF-8: keep its undecodable bytes visible, never crash
            path = os.fsencode(rec.path).decode("utf-8", "backslashreplace")
            wr.writerow([path, rec.status, rec.reason, rec.series_uid or ""])
    return buf.getvalue()


def _not_run(les: Lesion) -> LesionResult:
    return _indeterminate(les, "not processed yet: this run was limited with --patient; run without it")


def cohort_summary_table(results: list[LesionResult], last_follow_up: dict[str, dt.date], reads: Path | None,
                         problems: list[str]) -> dict[str, Any]:
    """The cohort table, with the agreement with a reference read when ``reads`` is given (SPEC section 6).

    A read that cannot be used (unreadable, malformed) never stops the run: the summary is
    written without the agreement and the reason is appended to ``problems``.
    """
    reference_outcome = reference_j0 = None
    if reads is not None:
        from pipeline.evaluate import read_reference_reads

        try:
            reference = read_reference_reads(reads)
        except (OSError, ValueError) as e:
            problems.append(f"reference read {reads.name} not used in cohort_summary: {e}")
        else:
            reference_outcome, reference_j0 = reference.outcomes(), reference.j0_residuals()
    return cohort_table(results, last_follow_up_date=last_follow_up, reference_outcome=reference_outcome,
                        reference_j0_residual=reference_j0)


@io_task("scan-export")
def scan_export_task(input_dir: Path, catalog_url: str, settings: Settings) -> ScanReport:
    return scan_step(input_dir, catalog_url, settings)


@io_task("hash-inputs")
def hash_inputs(catalog_url: str, patient_ids: list[str]) -> dict[str, list[str]]:
    """The content digests of each patient's files (only new or changed files are read)."""
    with Catalog.open(catalog_url) as catalog:
        return input_digests(catalog, patient_ids)


@io_task("read-review-corrections")
def review_corrections(catalog_url: str) -> tuple[dict[tuple[str, str], Corrections], list[str]]:
    """(patient_id, lesion_id) -> the corrections QA reviewers put in force (``crav qa``; part of the
    fingerprint), and why some could not be read (they are ignored: the other lesions' still apply)."""
    with ReviewStore.open(Path(catalog_url.removeprefix("sqlite:///"))) as store:
        return store.corrections(), store.unreadable


@io_task("index-patients")
def index_patients(catalog_url: str, patient_ids: list[str], input_dir: Path | None = None) -> dict[str, PatientIndex]:
    """Each patient's series and files, read from the catalog once, for tasks that may run elsewhere."""
    with Catalog.open(catalog_url) as catalog:
        return {pid: replace(catalog.patient_index(pid), root=input_dir) for pid in patient_ids}


process_patient_task = task(name="process-patient", cache_policy=NO_CACHE)(patient_step)


@dataclass
class CohortReport:
    """What the cohort report writes: every lesion, every visit row, and the run's record."""

    results: list[LesionResult]
    rows: list[VisitMeasurement]
    last_follow_up: dict[str, dt.date]
    problems: list[str]
    decisions: dict[str, str]
    run_record: dict[str, Any]


@io_task("cohort-report")
def cohort_report(output_dir: Path, report: CohortReport, catalog_url: str, reads: Path | None) -> dict[str, Any]:
    """Write lesions.csv, measurements.csv, cohort_summary, files.csv and run.json (each atomically)."""
    write_lesions_csv(output_dir / "lesions.csv", report.results)
    write_measurements_csv(output_dir / "measurements.csv", report.rows)
    try:
        apply_reviews(output_dir)  # the QA reviewers' verdicts on results that are still the ones they saw
    except (OSError, ValueError, sqlite3.Error) as e:  # the tables stand without them: say so, write the rest
        log.error("QA verdicts not applied to measurements.csv: %s", type(e).__name__)
        report.problems.append(f"QA verdicts not applied to measurements.csv ({type(e).__name__}: {e}); "
                               "they are kept in the catalog: the next run applies them")
    table = cohort_summary_table(report.results, report.last_follow_up, reads, report.problems)
    write_cohort_summary(output_dir, table, cohort_markdown(table))
    atomic_write_text(output_dir / "files.csv", _file_accounting_csv(catalog_url))
    record = dict(report.run_record, problems=report.problems, patients=report.decisions,
                  finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    atomic_write_text(output_dir / "run.json", json.dumps(record, indent=1, default=str) + "\n")
    return table


def _publish_artifacts(report: CohortReport, scan: ScanReport, output_dir: Path) -> None:
    """The run's summary (markdown) and its lesions (table) as Prefect artifacts, for the server's UI."""
    outcomes: dict[str, int] = {}
    for r in report.results:
        outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
    kinds = {"recomputed": 0, "unchanged": 0, "kept": 0, "not processed": 0}
    for decision in report.decisions.values():
        kinds[decision.split(":", 1)[0]] = kinds.get(decision.split(":", 1)[0], 0) + 1
    lines = [
        f"# CRAV run into `{output_dir}`", "",
        "| | |", "|---|---|",
        f"| patients processed | {kinds['recomputed']} |",
        f"| patients skipped as unchanged | {kinds['unchanged']} |",
        f"| patients kept from an earlier run (not requested) | {kinds['kept'] + kinds['not processed']} |",
        f"| input files quarantined | {scan.quarantined} |",
        f"| input files still arriving (next run) | {scan.arriving} |",
        *(f"| lesions {o} | {n} |" for o, n in sorted(outcomes.items())),
        f"| problems | {len(report.problems)} (see run.json) |",
    ]
    create_markdown_artifact(markdown="\n".join(lines), key="crav-run-summary",
                             description="patients processed, skipped, quarantined files, outcomes")
    create_table_artifact(key="crav-lesions", description="one row per lesion (lesions.csv)", table=[
        {"patient_id": r.lesion.patient_id, "lesion_id": r.lesion.lesion_id, "level": r.lesion.level,
         "outcome": r.outcome.value, "failure_timepoint": r.failure_timepoint.value if r.failure_timepoint else "",
         "j0_residual": "" if r.j0_residual is None else str(r.j0_residual).lower(), "reason": r.reason}
        for r in report.results])


@flow(name="crav-run", task_runner=thread_runner(Settings().max_workers), log_prints=False,
      validate_parameters=False, persist_result=False)
def crav_run(input_dir: Path, output_dir: Path, registry: Path | None = None,
             patient_id: list[str] | str | None = None, force: bool = False, settings_file: Path | None = None,
             overrides: dict[str, Any] | None = None, reads: Path | None = None) -> int:
    """Scan the export, analyse each patient whose inputs changed (in parallel), write the cohort tables.

    0 when everything ran clean, 1 when something needs a look. ``patient_id``: one patient or a
    list (the others keep their previous results); ``force``: recompute even what is unchanged.

    Raises :class:`pipeline.outputs.lock.OutputLockedError` when another run writes into ``output_dir``.
    """
    # absolute: the patients' tasks may run in other processes (Dask workers) with another working directory
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    # from a deployment run, ``--param patient_id=12345`` arrives as a JSON number
    patients = [str(p) for p in ([patient_id] if isinstance(patient_id, str | int) else patient_id or [])]
    settings = load_settings(Path(settings_file) if settings_file else None, overrides)
    registry = Path(registry) if registry else input_dir / "treatments.csv"
    with output_lock(output_dir):  # one run per output folder; a second one is refused (OutputLockedError)
        return _run_locked(input_dir, output_dir, registry, patients, force, settings,
                           Path(reads) if reads else None)


def _run_locked(input_dir: Path, output_dir: Path, registry: Path, patients: list[str], force: bool,
                settings: Settings, reads: Path | None) -> int:
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    (output_dir / "patients").mkdir(parents=True, exist_ok=True)
    orphans = sweep_orphans(output_dir)  # temporary files of a run that was killed
    if orphans:
        log.warning("%d temporary file(s) of an interrupted run deleted", len(orphans))
    catalog_url = f"sqlite:///{(output_dir / 'catalog.sqlite').resolve()}"
    reg = read_registry(registry)
    problems = [f"treatments.csv line {p.line}: {p.reason}" for p in reg.problems]
    scan = scan_export_task(input_dir, catalog_url, settings)
    by_patient: dict[str, list[Lesion]] = {}
    for les in reg.lesions:
        by_patient.setdefault(les.patient_id, []).append(les)
    unknown = sorted(set(patients) - set(by_patient))
    if unknown:
        problems.append(f"--patient {', '.join(unknown)}: not in {registry.name}; nothing to do for them")
    digests = hash_inputs(catalog_url, sorted(p for p in by_patient if not patients or p in patients))
    corrections, unreadable = review_corrections(catalog_url)
    problems.extend(unreadable)
    analysis_settings = settings.analysis_dict()
    report = CohortReport([], [], {}, problems, {}, {
        "started": started, "input": str(input_dir.resolve()), "registry": str(registry.resolve()),
        "requested": {"patients": patients or "all", "force": force},
        "software": {"crav-followup": __version__, "python": platform.python_version()},
        "settings": settings.as_dict(), "orphans_removed": len(orphans),
        "scan": {"new": scan.new, "changed": scan.changed, "unchanged": scan.unchanged, "deleted": scan.deleted,
                 "arriving": scan.arriving, "quarantined": scan.quarantined, "ignored": scan.ignored,
                 "unlisted_folders": scan.unlisted_folders},
    })

    def carry(saved: tuple[list[LesionResult], list[VisitMeasurement], dict[str, dt.date], list[str]]) -> None:
        report.results.extend(saved[0])
        report.rows.extend(saved[1])
        report.last_follow_up.update(saved[2])
        report.problems.extend(saved[3])

    todo: dict[str, str] = {}
    todo_fixes: dict[str, dict[str, Corrections]] = {}
    for pid, patient_lesions in sorted(by_patient.items()):
        fixes = {les.lesion_id: corrections[(pid, les.lesion_id)] for les in patient_lesions
                 if corrections.get((pid, les.lesion_id))}
        fp = fingerprint(digests.get(pid, []), patient_lesions, analysis_settings, __version__,
                         {lid: c.to_json() for lid, c in fixes.items()})
        state = output_dir / "patients" / safe_path_component(pid) / "state.json"
        if patients and pid not in patients:  # --patient: the others keep their previous results
            kept = load_patient_state(state, None)
            if kept is None:
                report.decisions[pid] = "not processed: not among --patient and no previous results"
                report.results.extend(_not_run(les) for les in patient_lesions)
            else:
                report.decisions[pid] = "kept: not among --patient, previous results carried over"
                carry(kept)
            continue
        cached = None if force else load_patient_state(state, fp)
        if cached is not None:
            report.decisions[pid] = "unchanged: inputs, registry rows, settings and software as in the previous run"
            carry(cached)
            continue
        report.decisions[pid] = ("recomputed: --force" if force else "recomputed: no previous results"
                                 if not state.exists() else
                                 "recomputed: inputs, registry rows, settings or QA corrections changed")
        todo[pid] = fp
        todo_fixes[pid] = fixes
    log.info("%d patient(s) unchanged and reused, %d to compute", len(by_patient) - len(todo), len(todo))
    indices = index_patients(catalog_url, sorted(todo), input_dir)
    futures: dict[PrefectFuture[PatientOutcome], str] = {
        process_patient_task.submit(indices[pid], by_patient[pid], output_dir, settings, fp, todo_fixes[pid]): pid
        for pid, fp in todo.items()}
    outcomes: dict[str, PatientOutcome] = {}
    progress = ProgressBar("patients", min_total=1)
    progress(0, len(futures))
    for fut in as_completed(list(futures)):
        pid = futures[fut]
        try:
            outcomes[pid] = fut.result()
        except Exception as e:  # the orchestration itself failed for this patient: never stops the batch
            log.error("patient task failed with %s", type(e).__name__)
            outcomes[pid] = PatientOutcome(pid, [_indeterminate(les, f"processing failed: {type(e).__name__}: {e}")
                                                 for les in by_patient[pid]], [],
                                           [f"patient {pid}: processing failed ({type(e).__name__}: {e})"], {}, [],
                                           failed=True)
        progress(len(outcomes), len(futures))
    for pid in sorted(outcomes):  # the same order whatever the order the patients finished in
        out = outcomes[pid]
        carry((out.results, out.measurements, out.last_follow_up, out.problems))
    order = {les.lesion_id: i for i, les in enumerate(reg.lesions)}
    report.results.sort(key=lambda r: order.get(r.lesion.lesion_id, 0))
    cohort_report(output_dir, report, catalog_url, reads)
    _publish_artifacts(report, scan, output_dir)
    return 1 if report.problems or scan.quarantined else 0


def make_task_runner(settings: Settings, dask_address: str | None = None) -> Any:
    """Patients in parallel: threads on this machine (``max_workers`` wide), or an existing Dask cluster."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return thread_runner(settings.max_workers)


def run_export(input_dir: Path, output_dir: Path, registry: Path | None = None, patients: list[str] | None = None,
               force: bool = False, settings_path: Path | None = None,
               overrides: dict[str, Any] | None = None, reads: Path | None = None,
               dask_address: str | None = None) -> int:
    """Entry point of ``crav run``: 0 when everything ran clean, 1 when something needs a look.

    Raises :class:`pipeline.outputs.lock.OutputLockedError` when another run writes into ``output_dir``.

    ``reads``: an optional reference read CSV (``crav evaluate --reads`` format); its agreement
    with the results goes into ``cohort_summary.json`` / ``.md``. ``dask_address``: run the
    patients on that ``dask.distributed`` scheduler (its workers must see the same paths).
    """
    settings = load_settings(settings_path, overrides)
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()  # recorded as the flow run's parameters
    with output_lock(output_dir):  # refused here, before Prefect starts, when another run writes there
        pass  # the flow takes the lock again for the whole run (a deployment's runs take it the same way)
    runner = make_task_runner(settings, dask_address)
    return int(crav_run.with_options(task_runner=runner)(
        input_dir, output_dir, registry, patients or None, force, settings_path, overrides, reads))
