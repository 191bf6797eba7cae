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
import traceback
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.domain import Lesion, LesionResult, VisitMeasurement
from pipeline.ingest.catalog import Catalog
from pipeline.ingest.registry import read_registry
from pipeline.ingest.scan import ScanReport, scan_export
from pipeline.outputs.atomic import atomic_write_text
from pipeline.outputs.lock import output_lock
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.patient_state import fingerprint, load_patient_state, save_patient_state
from pipeline.outputs.tables import write_cohort_summary, write_lesions_csv, write_measurements_csv
from pipeline.response.cohort import cohort_markdown, cohort_table
from pipeline.settings import Settings, load_settings

log = logging.getLogger(__name__)


def _hermetic_prefect_env() -> None:
    """Embedded defaults: Prefect's local (ephemeral) mode, no telemetry, nothing on the network."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def scan_step(input_dir: Path, catalog_url: str, settings: Settings) -> ScanReport:
    with Catalog.open(catalog_url) as catalog:
        return scan_export(input_dir, catalog, quiet_period_s=settings.quiet_period_s)


def patient_step(patient_id: str, lesions: list[Lesion], catalog_url: str, output_dir: Path,
                 settings: Settings) -> Any:
    from flows.patient import PatientOutcome, _indeterminate, process_patient

    try:
        with Catalog.open(catalog_url) as catalog:
            return process_patient(patient_id, lesions, catalog, output_dir, settings)
    except Exception as e:  # one patient's failure never stops the batch
        # the type only in the logs (messages can hold paths or header values); the details go to run.json
        log.error("patient processing failed with %s", type(e).__name__)
        detail = "".join(traceback.format_exception(e)).strip()
        reason = f"processing failed ({type(e).__name__}: {e}); details in run.json"
        return PatientOutcome(patient_id, [_indeterminate(les, reason) for les in lesions], [],
                              [f"patient {patient_id}: processing failed:\n{detail}"], {}, [], failed=True)


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
    from flows.patient import _indeterminate

    return _indeterminate(les, "not processed yet: this run was limited with --patient; run without it")


def _patient_files(catalog_url: str) -> dict[str, list[tuple[str, int, int]]]:
    """(path, size, mtime_ns) of every readable file, by PatientID: what a patient's results depend on."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    with Catalog.open(catalog_url) as catalog:
        for rec in catalog.file_accounting():
            if rec.patient_id and rec.status in ("indexed", "ignored"):
                out.setdefault(rec.patient_id, []).append((str(rec.path), rec.size, rec.mtime_ns))
    return out


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


def run_export(input_dir: Path, output_dir: Path, registry: Path | None = None, patients: list[str] | None = None,
               force: bool = False, settings_path: Path | None = None,
               overrides: dict[str, Any] | None = None, reads: Path | None = None) -> int:
    """Entry point of ``crav run``: 0 when everything ran clean, 1 when something needs a look.

    Raises :class:`pipeline.outputs.lock.OutputLockedError` when another run writes into ``output_dir``.

    ``reads``: an optional reference read CSV (``crav evaluate --reads`` format); its agreement
    with the results goes into ``cohort_summary.json`` / ``.md``.
    """
    _hermetic_prefect_env()
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    settings = load_settings(settings_path, overrides)
    (output_dir / "patients").mkdir(parents=True, exist_ok=True)
    catalog_url = f"sqlite:///{(output_dir / 'catalog.sqlite').resolve()}"
    registry = registry or input_dir / "treatments.csv"

    scan_task = task(name="scan-export", retries=1)(scan_step)
    patient_task = task(name="process-patient")(patient_step)

    runner: Any = ThreadPoolTaskRunner(max_workers=settings.max_workers)

    @flow(name="crav-run", task_runner=runner, log_prints=False)
    def crav_run() -> int:
        reg = read_registry(registry)
        problems = [f"treatments.csv line {p.line}: {p.reason}" for p in reg.problems]
        report = scan_task(input_dir, catalog_url, settings)
        by_patient: dict[str, list[Lesion]] = {}
        for les in reg.lesions:
            by_patient.setdefault(les.patient_id, []).append(les)
        files = _patient_files(catalog_url)
        decisions: dict[str, str] = {}
        fingerprints: dict[str, str] = {}
        results: list[LesionResult] = []
        rows: list[VisitMeasurement] = []
        last_fu: dict[str, dt.date] = {}
        futures = {}

        def carry(saved: tuple[list[LesionResult], list[VisitMeasurement], dict[str, dt.date], list[str]]) -> None:
            results.extend(saved[0])
            rows.extend(saved[1])
            last_fu.update(saved[2])
            problems.extend(saved[3])

        for pid, patient_lesions in sorted(by_patient.items()):
            fp = fingerprints[pid] = fingerprint(files.get(pid, []), patient_lesions, settings.as_dict(),
                                                 __version__)
            state = output_dir / "patients" / safe_path_component(pid) / "state.json"
            if patients and pid not in patients:  # --patient: the others keep their previous results
                kept = load_patient_state(state, None)
                if kept is None:
                    decisions[pid] = "not processed: not among --patient and no previous results"
                    results.extend(_not_run(les) for les in patient_lesions)
                else:
                    decisions[pid] = "kept: not among --patient, previous results carried over"
                    carry(kept)
                continue
            cached = None if force else load_patient_state(state, fp)
            if cached is not None:
                decisions[pid] = "unchanged: inputs, registry rows, settings and software as in the previous run"
                carry(cached)
                continue
            decisions[pid] = ("recomputed: --force" if force else "recomputed: no previous results"
                              if not state.exists() else "recomputed: inputs, registry rows or settings changed")
            futures[pid] = patient_task.submit(pid, patient_lesions, catalog_url, output_dir, settings)
        log.info("%d patient(s) unchanged and reused, %d recomputed", len(by_patient) - len(futures), len(futures))
        for pid, fut in futures.items():
            try:
                out = fut.result()
            except Exception as e:  # the orchestration itself failed for this patient: never stops the batch
                log.error("patient task failed with %s", type(e).__name__)
                problems.append(f"patient {pid}: processing failed ({type(e).__name__}: {e})")
                from flows.patient import _indeterminate

                results.extend(_indeterminate(les, f"processing failed: {type(e).__name__}: {e}")
                               for les in by_patient[pid])
                continue
            carry((out.results, out.measurements, out.last_follow_up, out.problems))
            if out.failed:
                continue
            save_patient_state(output_dir / "patients" / safe_path_component(pid) / "state.json", fingerprints[pid],
                               out.results, out.measurements, out.last_follow_up, out.problems)
        order = {les.lesion_id: i for i, les in enumerate(reg.lesions)}
        results.sort(key=lambda r: order.get(r.lesion.lesion_id, 0))
        write_lesions_csv(output_dir / "lesions.csv", results)
        write_measurements_csv(output_dir / "measurements.csv", rows)
        table = cohort_summary_table(results, last_fu, reads, problems)
        write_cohort_summary(output_dir, table, cohort_markdown(table))
        atomic_write_text(output_dir / "files.csv", _file_accounting_csv(catalog_url))
        atomic_write_text(output_dir / "run.json", json.dumps({
            "started": started, "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "input": str(input_dir.resolve()), "registry": str(registry.resolve()),
            "requested": {"patients": patients or "all", "force": force},
            "software": {"crav-followup": __version__, "python": platform.python_version()},
            "settings": settings.as_dict(), "problems": problems, "patients": decisions,
            "scan": {"new": report.new, "changed": report.changed, "unchanged": report.unchanged,
                     "deleted": report.deleted, "arriving": report.arriving, "quarantined": report.quarantined,
                     "ignored": report.ignored, "unlisted_folders": report.unlisted_folders},
        }, indent=1, default=str) + "\n")
        return 1 if problems or report.quarantined else 0

    with output_lock(output_dir):  # one run per output folder; a second one is refused (OutputLockedError)
        return int(crav_run())
