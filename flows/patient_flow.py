"""Prefect flow of one patient: read and prepare each visit, analyse and write each lesion, save the state.

Tasks are coarse (a visit, a lesion), so that Prefect's own cost per task stays small against
the work (see benchmarks/RESULTS.md). Each task calls one plain function of
:mod:`flows.patient`. The patient enters as paths (a :class:`PatientIndex` of DICOM files), so
the flow runs wherever those paths can be read; inside it the volumes stay in the memory of
the one process that runs the flow, and are released when it returns. Only the I/O tasks
retry, and only on ``OSError`` (a file server that hiccups): an analysis that fails would fail
again.

No task caches its result (``NO_CACHE``): the pipeline's own fingerprints decide what is
recomputed (``state.json``), and hashing volumes to build cache keys would cost more than it saves.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.patient import (
    LesionAnalysis,
    PatientOutcome,
    analyse_lesion,
    assemble_outcome,
    excluded_visits,
    is_post_treatment,
    plan_patient,
    prepare_study,
    prune_patient_folder,
    read_study,
)
from flows.patient_outputs import LesionWritten, write_lesion, write_patient_documents
from pipeline.domain import Lesion, LesionResult
from pipeline.ingest.catalog import PatientIndex
from pipeline.outputs.paths import safe_path_component
from pipeline.outputs.patient_state import save_patient_state
from pipeline.review.store import Corrections
from pipeline.settings import Settings

log = logging.getLogger(__name__)

IO_RETRIES = 2
IO_RETRY_DELAY_S = 2.0


def _retry_on_os_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an I/O task only when it failed on an ``OSError`` (a transient storage error)."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


def io_task(name: str) -> Any:
    """Task decorator for I/O steps: retried on ``OSError`` only, never cached."""
    return task(name=name, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
                retry_condition_fn=_retry_on_os_error, cache_policy=NO_CACHE)


def thread_runner(max_workers: int) -> Any:
    """A ThreadPoolTaskRunner (typed loosely: Prefect's generic parameter does not survive mypy)."""
    return ThreadPoolTaskRunner(max_workers=max_workers)


read_visit = io_task("read-visit")(read_study)
prepare_visit = task(name="prepare-visit", cache_policy=NO_CACHE)(prepare_study)
analyse_lesion_task = task(name="analyse-lesion", cache_policy=NO_CACHE)(analyse_lesion)
write_lesion_task = io_task("write-lesion")(write_lesion)
save_state_task = io_task("save-patient-state")(save_patient_state)
prune_task = io_task("prune-patient-folder")(prune_patient_folder)
write_documents_task = io_task("write-report")(write_patient_documents)

# visits of one patient read and prepared two at a time: the machine's patients already share its cores
_VISITS_IN_PARALLEL = 2


@flow(name="crav-patient", task_runner=thread_runner(_VISITS_IN_PARALLEL), log_prints=False,
      validate_parameters=False, persist_result=False)
def patient_flow(index_file: Path, lesions: list[Lesion], output_dir: Path, settings: Settings,
                 fingerprint: str | None = None, corrections: dict[str, Corrections] | None = None) -> PatientOutcome:
    """One patient end to end, into ``output_dir/patients/<patient>/``.

    ``index_file``: the patient's :class:`PatientIndex` as JSON (see :func:`run_patient_flow`).
    Files an earlier analysis left there and this one did not write are deleted; with a
    ``fingerprint``, ``state.json`` is saved last (the incremental runs reuse it), so a patient
    killed midway has no state and is analysed again by the next run.
    """
    index = read_index_task(index_file)
    plan = plan_patient(index, lesions, corrections)
    prepared = {uid: prepare_visit.submit(read_visit.submit(index, uid, date), settings,
                                          is_post_treatment(plan, uid))
                for uid, date in plan.study_dates.items()}
    images = {uid: fut.result() for uid, fut in prepared.items()}
    analysed: list[LesionResult | LesionWritten] = []
    problems: list[str] = []
    for les in plan.lesions:  # one after the other: the lesions of a patient share its visits' images
        a = analyse_lesion_task(les, plan, images, settings)
        if isinstance(a, LesionAnalysis):
            problems.extend(a.problems)
            analysed.append(write_lesion_task(a, output_dir, settings, excluded_visits(plan, les)))
        else:
            analysed.append(a)
    outcome = assemble_outcome(plan, images, analysed, problems)
    documents = write_documents_task(index, plan, images, analysed, outcome, output_dir, settings)
    images.clear()  # the volumes go with this flow: nothing of them outlives the patient
    folder = output_dir / "patients" / safe_path_component(index.patient_id)
    written = {f for item in analysed if isinstance(item, LesionWritten) for f in item.files} | set(documents)
    prune_task(folder, written)
    if fingerprint is not None:
        save_state_task(folder / "state.json", fingerprint, outcome.results, outcome.measurements,
                        outcome.last_follow_up, outcome.problems)
    return outcome


def _read_index(path: Path) -> PatientIndex:
    return PatientIndex.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


read_index_task = io_task("read-patient-index")(_read_index)


def run_patient_flow(index: PatientIndex, lesions: list[Lesion], output_dir: Path, settings: Settings,
                     fingerprint: str | None = None, corrections: dict[str, Corrections] | None = None,
                     flow: Any = None) -> PatientOutcome:
    """Run :func:`patient_flow` (or ``flow``, one of its variants) on ``index``, handed over in a temporary file.

    A flow's parameters are recorded by the Prefect server, which refuses more than 512 KB of
    them: the index of a patient (its series and the path and digest of each of its files, a few
    hundred bytes per file) exceeds that from a few thousand files, so the flow receives the
    path of a JSON file instead. The file lies in this process's temporary folder, since the
    flow runs in the process that calls it, and goes with it.
    """
    with tempfile.TemporaryDirectory(prefix="crav-patient-") as tmp:
        path = Path(tmp) / "index.json"
        path.write_text(json.dumps(index.to_json()), encoding="utf-8")
        return (flow or patient_flow)(path, lesions, output_dir, settings, fingerprint, corrections)
