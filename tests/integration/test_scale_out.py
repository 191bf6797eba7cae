"""Scale-out: a Prefect server and a two-worker Dask cluster, started with their own CLIs as on separate hosts.

An 8-patient phantom cohort is processed twice: by one ``crav run`` process (threads, ephemeral
Prefect, no server) and by ``crav run --dask-address`` against a ``dask scheduler`` and two
``dask worker`` processes that report to a real ``prefect server``. The results must be the same
file for file and byte for byte (``tests/output_compare.py``); the server must hold, for that run,
exactly one completed ``process-patient`` task run and one completed ``crav-patient`` subflow run
per patient, each run once; the scheduler's task stream must show both workers computing patients.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from output_compare import assert_same_results
from processes import stop_group

from tests.conftest import free_port

N_PATIENTS, SEED = 8, 21
RUN_TIMEOUT_S = 900


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-n:] if path.exists() else f"({path} missing)"


@dataclass(frozen=True)
class Cohort:
    export: Path
    registry: Path
    patients: list[str]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """``crav phantom --patients 8 --seed 21 --resolution sample``.

    The designed patients, lesions, courses, visits and export noise, at the resolution of
    ``sample_dicom/`` (2.8 mm pixels, 8 DCE phases, 6,000 files): at full resolution (25,000 files,
    1.1 GB) generating takes about 3.5 min and each run about 7 min on 2 cores; here about 70 s and 90 s.
    """
    root = tmp_path_factory.mktemp("cohort")
    t0 = time.monotonic()
    subprocess.run([_bin("crav"), "phantom", "--patients", str(N_PATIENTS), "--seed", str(SEED), "--resolution",
                    "sample", "--out", str(root)], check=True, capture_output=True, timeout=600)
    print(f"\nphantom: {N_PATIENTS} patients of seed {SEED}, sample resolution, {time.monotonic() - t0:.0f} s")
    registry = root / "treatments.csv"
    with registry.open(newline="", encoding="utf-8") as fh:
        patients = sorted({row["patient_id"] for row in csv.DictReader(fh)})
    assert len(patients) == N_PATIENTS, patients
    return Cohort(root / "export", registry, patients)


@dataclass(frozen=True)
class DaskCluster:
    address: str
    workers: list[str]


@pytest.fixture(scope="module")
def dask_cluster(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """``dask scheduler`` and two ``dask worker`` processes (one process, one thread each) on 127.0.0.1.

    The workers get the Prefect server's environment, as on a worker host: they report their task
    and flow runs to it. Each works in its own scratch folder: ``flows`` and ``pipeline`` come from
    the installed package, not from the current directory.
    """
    from distributed import Client

    home = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(prefect_server)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, cmd: list[str]) -> None:
        (home / name).mkdir()
        logs.append(home / f"{name}.log")
        with logs[-1].open("wb") as fh:
            procs.append(subprocess.Popen(cmd, env=env, cwd=home / name, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start("scheduler", [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        for name in ("worker-1", "worker-2"):
            start(name, [_bin("dask"), "worker", address, "--name", name, "--nworkers", "1", "--nthreads", "1",
                         "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(home / name)])
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        assert len(workers) == 2, workers
        yield DaskCluster(address, workers)
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"{log.name}: exited with {proc.returncode} during the test:\n{_tail(log)}"
    except BaseException:
        for log in logs:
            print(f"--- {log}:\n{_tail(log)}")
        raise
    finally:
        for proc in reversed(procs):
            stop_group(proc)


def _crav_run(cohort: Cohort, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    """``crav run`` with ``--output`` relative to its working directory, as a user types it (the Dask
    workers have other working directories: the flow must hand them absolute paths)."""
    with out.with_name(out.name + ".log").open("wb") as fh:
        return subprocess.Popen([_bin("crav"), "run", "--input", str(cohort.export), "--registry", str(cohort.registry),
                                 "--output", out.name, "--quiet-period", "0", *extra], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=out.parent)


def _finish(proc: subprocess.Popen[bytes], out: Path, t0: float) -> int:
    try:
        code = proc.wait(timeout=max(1.0, RUN_TIMEOUT_S - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        stop_group(proc)
        pytest.fail(f"crav run into {out} did not finish within {RUN_TIMEOUT_S} s:\n"
                    f"{_tail(out.with_name(out.name + '.log'))}")
    print(f"crav run into {out.name}: exit {code}, {time.monotonic() - t0:.0f} s")
    assert code in (0, 1), f"crav run into {out} exited {code}:\n{_tail(out.with_name(out.name + '.log'))}"
    return code


def _run_record(out: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return record


@dataclass(frozen=True)
class ServerRecord:
    """What the Prefect server holds about the ``crav-run`` flow run that wrote one output folder."""

    parent: Any  # the crav-run FlowRun
    patient_tasks: list[Any]  # its process-patient TaskRuns
    subflow_tasks: list[Any]  # its crav-patient TaskRuns (Prefect's record of a subflow call)
    subflows: list[Any]  # the crav-patient FlowRuns


def _server_record(api_url: str, out: Path) -> ServerRecord:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = [fr for fr in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["crav-run"])))
                if fr.parameters.get("output_dir") == str(out)]
        assert len(runs) == 1, f"{len(runs)} crav-run flow run(s) on the server wrote {out}"
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[runs[0].id])), limit=200)
        patient_tasks = [tr for tr in task_runs if tr.name.startswith("process-patient-")]
        subflow_tasks = [tr for tr in task_runs if tr.name.startswith("crav-patient-")]
        subflows = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["crav-patient"])),
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(
                any_=[tr.id for tr in subflow_tasks]))) if subflow_tasks else []
    return ServerRecord(runs[0], patient_tasks, subflow_tasks, subflows)


def test_two_dask_workers_compute_each_patient_once_with_the_results_of_one_process(
        cohort: Cohort, dask_cluster: DaskCluster, prefect_server: dict[str, str], tmp_path: Path,
        check_outputs: Callable[..., str]) -> None:
    from distributed import Client, get_task_stream

    out_ref, out_dask = tmp_path / "out-ref", tmp_path / "out-dask"
    # the single-process reference: threads in one process, ephemeral Prefect, its own Prefect home
    ref_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    ref_env["PREFECT_HOME"] = str(tmp_path / "prefect-home-ref")
    # both runs at once (the machine's cores are shared; the results do not depend on it); the
    # scheduler's task stream records which worker computed what during the distributed one
    t0 = time.monotonic()
    with Client(dask_cluster.address, timeout="60s") as client, get_task_stream(client=client) as stream:
        ref = _crav_run(cohort, out_ref, ref_env)
        dask = _crav_run(cohort, out_dask, prefect_server, "--dask-address", dask_cluster.address)
        try:
            code_dask, code_ref = _finish(dask, out_dask, t0), _finish(ref, out_ref, t0)
        finally:
            for proc in (ref, dask):  # the one still running when the other failed; what either left behind
                stop_group(proc)
    records: list[dict[str, Any]] = stream.data  # collected when the block ends

    # the same results, exit code and problems; every patient computed
    assert code_dask == code_ref
    assert_same_results(out_ref, out_dask)
    check_outputs(out_dask, registry=cohort.registry)
    rec_ref, rec_dask = _run_record(out_ref), _run_record(out_dask)
    assert rec_dask["problems"] == rec_ref["problems"]
    assert sorted(rec_dask["patients"]) == cohort.patients
    assert all(d.startswith("recomputed: ") for d in rec_dask["patients"].values()), rec_dask["patients"]

    # both workers computed patients: the scheduler saw one task per patient, on both workers
    per_worker = Counter(r["worker"] for r in records)
    print(f"patient tasks per Dask worker: {dict(per_worker)}")
    assert sum(per_worker.values()) == N_PATIENTS, [(r["key"], r["worker"]) for r in records]
    assert sorted(per_worker) == dask_cluster.workers, per_worker
    assert len({r["key"] for r in records}) == N_PATIENTS

    # each patient computed exactly once, as the Prefect server recorded it
    server = _server_record(prefect_server["PREFECT_API_URL"], out_dask)
    assert server.parent.state is not None and server.parent.state.is_completed(), server.parent.state
    for runs in (server.patient_tasks, server.subflow_tasks, server.subflows):
        assert len(runs) == N_PATIENTS, [r.name for r in runs]
        assert all(r.state is not None and r.state.is_completed() and r.run_count == 1 for r in runs), [
            (r.name, r.state_type, r.run_count) for r in runs]
    # a subflow per patient, each called from its own process-patient task run
    assert sorted(fr.parameters["lesions"][0]["patient_id"] for fr in server.subflows) == cohort.patients
    # the patient's file index reached each subflow as the path of a JSON file, not as a parameter
    assert all(isinstance(fr.parameters["index_file"], str) for fr in server.subflows)
    called_from = {tr.id: [p.id for p in tr.task_inputs.get("__parents__", [])] for tr in server.subflow_tasks}
    assert sorted(p for parents in called_from.values() for p in parents) == sorted(
        tr.id for tr in server.patient_tasks), called_from
    assert {fr.parent_task_run_id for fr in server.subflows} == set(called_from)
