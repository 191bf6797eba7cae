"""Prefect flows (issue 6): Prefect's own cost on one patient, scaling with the cohort, incremental re-runs.

Usage:
    python benchmarks/bench_flows.py --cohort /tmp/bench_flows/cohort40 --sizes 5 10 20 40 --repeats 5 \
        --out /tmp/bench_flows/results.json

``--cohort DIR`` is a phantom cohort (``export/``, ``treatments.csv``, ``truth.json``); when DIR
has no ``truth.json`` it is generated first with ``crav phantom --patients 40 --seed 11 --out DIR``
(about 8 s a patient on 2 cores). Smaller exports are made from it under ``--work`` (default
``/tmp/bench_flows/work``): the first N patients (sorted PatientID) get a real folder tree with one
symbolic link per file of their studies (the scanner follows file links, not folder links), plus
the export's non-patient files, and a ``treatments.csv`` with only their rows.

Every Prefect process gets a fresh ``PREFECT_HOME`` (a temporary folder) and no ``PREFECT_*``
variable of the caller (so no ``PREFECT_API_URL``: Prefect's local ephemeral server);
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` is raised to ``--server-timeout`` (Prefect's
default is 20 s, which a loaded 2-core machine can exceed).

1. Ephemeral server start, ``--repeats`` fresh processes each, interleaved: ``python -c pass``;
   a process that imports ``flows.crav_flow`` (Prefect included) and runs a trivial empty
   ``@flow`` twice, timed inside (import, first call, second call) and outside (total, exit).
   The first call starts the local server (subprocess: uvicorn + SQLite), the second runs the
   same flow against the running server: server start ~ first call - second call. Done with a
   new ``PREFECT_HOME`` (database created and migrated) and with the one of the previous
   process (database already there).
2. One patient (``--patient``, default: the first with 6 MR studies and 1 lesion), in ONE
   process, after an untimed scan of its 1-patient export and one untimed warm-up of each
   variant; ``--repeats`` repetitions, order rotating, of:
   ``plain`` = ``flows.patient.process_patient`` + ``prune_patient_folder`` + ``save_patient_state``
   (what the flow also does, as plain calls); ``flow_w2`` = ``patient_flow`` as ``crav_run``
   calls it (a ``process-patient`` task submitted from a parent flow on a 2-wide
   ThreadPoolTaskRunner, the patient flow with its own 2-wide runner); ``flow_w1`` = the same
   with ``patient_flow.with_options(task_runner=thread_runner(1))``. Prefect share =
   (flow_w1 - plain) / flow_w1 (medians); "inner" is the patient flow call timed inside the task.
   Then ``crav run`` of the 1-patient export in fresh subprocesses (``--run-repeats``).
3. ``crav run --quiet-period 0`` of each ``--sizes`` export from a fresh output folder (fresh
   subprocess), wall time and peak memory: sum of VmRSS over the process tree (crav, its scan
   workers, the Prefect server subprocess) sampled every 0.2 s, and the largest single process
   (``ru_maxrss`` from ``wait4``).
4. The same ``crav run`` again into the output folder of the largest size <= 20 of step 3
   (same ``PREFECT_HOME``), ``--rerun-repeats`` times; then once with a new ``PREFECT_HOME``.

Each measurement records the load average and the CPU other processes used meanwhile
(/proc/stat busy time minus this benchmark's), in cores. Prints markdown tables; ``--out`` writes
every raw number as JSON; ``--report FILE...`` prints the tables of such files again (merged).
``--env KEY=VALUE`` adds to the environment of the ``crav run`` children (e.g. glibc's
``MALLOC_MMAP_THRESHOLD_``, to study the peak memory).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proctree import tree_pids, tree_rss_bytes

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
TARGET_PREFECT_SHARE = 0.15
TARGET_RERUN_SPEEDUP = 20.0
MB = 1024 * 1024


# --------------------------------------------------------------------------- machine and process helpers


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def _child_env(home: Path, timeout_s: int) -> dict[str, str]:
    """The caller's environment without any PREFECT_* variable, with its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(timeout_s)
    env["PYTHONPATH"] = str(SCRIPT.parent)
    return env


def _children_cpu_s() -> float:
    """CPU seconds used so far by the live descendants of this process (the Prefect server subprocess)."""
    total = 0
    me = os.getpid()
    for pid in tree_pids(me):
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(cmd: list[str], env: dict[str, str], interval_s: float = 0.2,
                cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time, exit code, stdout, peak tree RSS (sampled), largest process (ru_maxrss)."""
    busy0, load0 = _machine_busy_s(), os.getloadavg()[0]
    t0 = time.perf_counter()
    start_epoch = time.time()
    with tempfile.TemporaryFile("w+") as out_fh, tempfile.TemporaryFile("w+") as err_fh:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out_fh, stderr=err_fh, text=True)
        peak_tree = peak_main = samples = 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid != 0:
                break
            peak_tree = max(peak_tree, tree_rss_bytes(proc.pid))
            peak_main = max(peak_main, _rss_kb(proc.pid) * 1024)
            samples += 1
            time.sleep(interval_s)
        wall = time.perf_counter() - t0
        end_epoch = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_fh.seek(0)
        err_fh.seek(0)
        stdout, stderr = out_fh.read(), err_fh.read()
    cpu = ru.ru_utime + ru.ru_stime
    busy = _machine_busy_s() - busy0
    return {"cmd": cmd, "wall_s": wall, "rc": proc.returncode, "stdout": stdout, "stderr": stderr[-4000:],
            "start_epoch": start_epoch, "end_epoch": end_epoch,
            "peak_tree_rss_mb": peak_tree / MB, "peak_main_rss_mb": peak_main / MB,
            "max_single_process_rss_mb": ru.ru_maxrss / 1024, "samples": samples, "cpu_s": cpu,
            "others_cores": max(busy - cpu, 0.0) / wall if wall > 0 else 0.0,
            "load_before": load0, "load_after": os.getloadavg()[0]}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------- cohort and subsets


def _patient_of_folder(folder: Path) -> str | None:
    """PatientID of the first DICOM file found under ``folder`` (a study folder of the export)."""
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noise files: JPEG preview, truncated copy
            continue
        pid = str(getattr(ds, "PatientID", "") or "")
        if pid:
            return pid
    return None


def export_layout(export: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Top-level entries of the export by PatientID, and those of no registry patient (README, stranger)."""
    by_patient: dict[str, list[Path]] = {}
    other: list[Path] = []
    for entry in sorted(export.iterdir()):
        pid = _patient_of_folder(entry) if entry.is_dir() else None
        if pid is None or pid.startswith("OTHER-"):
            other.append(entry)
        else:
            by_patient.setdefault(pid, []).append(entry)
    return by_patient, other


def _link_tree(src: Path, dst: Path) -> int:
    """Mirror ``src`` under ``dst``: real folders, one symbolic link per file."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
        return 1
    n = 0
    for folder, _dirs, names in os.walk(src):
        rel = Path(folder).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            (dst / rel / name).symlink_to(Path(folder) / name)
            n += 1
    return n


def make_subset(cohort: Path, layout: dict[str, list[Path]], other: list[Path], patients: list[str],
                dest: Path) -> Path:
    """An export folder of ``patients`` (symbolic links to the cohort's files) with their registry rows."""
    marker = dest / "subset.json"
    wanted = {"cohort": str(cohort), "patients": patients}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    export = dest / "export"
    export.mkdir(parents=True)
    n = 0
    for entry in other + [e for pid in patients for e in layout[pid]]:
        n += _link_tree(entry, export / entry.name)
    with (cohort / "treatments.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index("patient_id")
    with (dest / "treatments.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([rows[0], *(r for r in rows[1:] if r and r[col] in patients)])
    marker.write_text(json.dumps(wanted))
    print(f"  subset {dest.name}: {len(patients)} patients, {n} file links", flush=True)
    return dest


def choose_patient(truth: dict[str, Any]) -> tuple[str, int, int]:
    """The first patient (sorted) with 6 MR studies and 1 lesion (else the most MR studies)."""
    mr: dict[str, int] = {}
    for st in truth["studies"]:
        if st["modality"] == "MR":
            mr[st["patient_id"]] = mr.get(st["patient_id"], 0) + 1
    lesions: dict[str, int] = {}
    for les in truth["lesions"]:
        lesions[les["patient_id"]] = lesions.get(les["patient_id"], 0) + 1
    for pid in sorted(mr):
        if mr[pid] == 6 and lesions.get(pid) == 1:
            return pid, 6, 1
    pid = max(sorted(mr), key=lambda p: mr[p])
    return pid, mr[pid], lesions.get(pid, 0)


# --------------------------------------------------------------------------- child: ephemeral server start


def child_server() -> None:
    """Import the flow module (Prefect), run an empty flow twice; print the timings as JSON."""
    t0 = time.perf_counter()
    importlib.import_module("flows.crav_flow")  # first: its hermetic Prefect environment, as crav run
    from prefect import flow

    t1 = time.perf_counter()

    @flow(name="bench-empty", persist_result=False, validate_parameters=False)
    def empty() -> None:
        return None

    empty()
    t2 = time.perf_counter()
    empty()
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_flow_s": t2 - t1, "second_flow_s": t3 - t2,
                      "end_epoch": time.time()}), flush=True)


# --------------------------------------------------------------------------- child: one patient, in process


def child_inproc(export: Path, patient: str, work: Path, repeats: int, warmup: int) -> None:
    """Time process_patient against patient_flow (widths 2 and 1) in this process; print JSON."""
    importlib.import_module("flows.crav_flow")  # first: its hermetic Prefect environment, as crav run
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.patient import PatientOutcome, plan_patient, process_patient, prune_patient_folder
    from flows.patient_flow import patient_flow, run_patient_flow, thread_runner
    from pipeline.ingest.catalog import Catalog
    from pipeline.ingest.registry import read_registry
    from pipeline.ingest.scan import scan_export
    from pipeline.outputs.paths import safe_path_component
    from pipeline.outputs.patient_state import save_patient_state
    from pipeline.settings import load_settings

    settings = load_settings(None, {"quiet_period_s": 0})
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(work / 'catalog.sqlite').resolve()}"
    t = time.perf_counter()
    with Catalog.open(url) as catalog:
        scan_export(export, catalog, quiet_period_s=0)
    scan_s = time.perf_counter() - t
    with Catalog.open(url) as catalog:
        index = catalog.patient_index(patient)
    lesions = [les for les in read_registry(export.parent / "treatments.csv").lesions if les.patient_id == patient]
    plan = plan_patient(index, lesions)
    if not plan.lesions:
        raise SystemExit(f"nothing to analyse for {patient}: {len(index.series)} series, {len(lesions)} lesions")
    fp = "bench-fingerprint"
    variants: dict[int, Any] = {2: patient_flow, 1: patient_flow.with_options(task_runner=thread_runner(1))}

    def run_variant(width: int, out_dir: Path) -> tuple[PatientOutcome, float]:
        t0 = time.perf_counter()
        outcome = run_patient_flow(index, lesions, out_dir, settings, fp, flow=variants[width])
        return outcome, time.perf_counter() - t0

    process_task = task(name="process-patient", cache_policy=NO_CACHE)(run_variant)

    @flow(name="bench-parent", task_runner=thread_runner(2), log_prints=False, validate_parameters=False,
          persist_result=False)
    def parent(width: int, out_dir: Path) -> tuple[PatientOutcome, float]:
        return process_task.submit(width, out_dir).result()

    @flow(name="bench-empty", persist_result=False, validate_parameters=False)
    def empty() -> None:
        return None

    def plain(out_dir: Path) -> PatientOutcome:
        outcome = process_patient(index, lesions, out_dir, settings)
        folder = out_dir / "patients" / safe_path_component(patient)
        written = {p for p in folder.rglob("*") if p.is_file()}  # what this run wrote (fresh folder)
        prune_patient_folder(folder, written)
        save_patient_state(folder / "state.json", fp, outcome.results, outcome.measurements,
                           outcome.last_follow_up, outcome.problems)
        return outcome

    def signature(o: PatientOutcome) -> list[Any]:
        return [[r.lesion.lesion_id, r.outcome.value, r.j0_residual] for r in o.results] + [len(o.measurements)]

    runs: list[dict[str, Any]] = []
    counter = [0]

    def measure(kind: str, timed: bool) -> None:
        counter[0] += 1
        out_dir = work / f"out_{counter[0]:03d}_{kind}"
        shutil.rmtree(out_dir, ignore_errors=True)
        busy0, cpu0, srv0 = _machine_busy_s(), time.process_time(), _children_cpu_s()
        t0 = time.perf_counter()
        if kind == "plain":
            outcome, inner = plain(out_dir), float("nan")
        else:
            outcome, inner = parent(2 if kind == "flow_w2" else 1, out_dir)
        wall = time.perf_counter() - t0
        own = time.process_time() - cpu0
        server = _children_cpu_s() - srv0
        others = max(_machine_busy_s() - busy0 - own - server, 0.0) / wall
        runs.append({"kind": kind, "timed": timed, "wall_s": wall, "inner_s": inner, "cpu_s": own,
                     "server_cpu_s": server, "others_cores": others, "signature": signature(outcome)})
        print(f"  {kind:8} {'' if timed else '(warm-up) '}{wall:7.2f} s  cpu {own:6.1f} s  server cpu "
              f"{server:5.2f} s  others {others:4.2f} cores", file=sys.stderr, flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)

    t = time.perf_counter()
    empty()
    first_empty = time.perf_counter() - t
    t = time.perf_counter()
    empty()
    second_empty = time.perf_counter() - t
    kinds = ["plain", "flow_w2", "flow_w1"]
    for _ in range(warmup):
        for kind in kinds:
            measure(kind, timed=False)
    for rep in range(repeats):
        for kind in kinds[rep % 3:] + kinds[: rep % 3]:
            measure(kind, timed=True)
    print(json.dumps({"patient": patient, "scan_s": scan_s, "n_studies": len(plan.study_dates),
                      "n_lesions": len(plan.lesions), "n_series": len(index.series),
                      "first_empty_flow_s": first_empty, "second_empty_flow_s": second_empty,
                      "runs": runs}), flush=True)


# --------------------------------------------------------------------------- orchestration


def _json_line(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"no JSON in the child's output: {stdout[-2000:]}")


def bench_server(repeats: int, scratch: Path, timeout_s: int) -> dict[str, Any]:
    py = sys.executable
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        home = Path(tempfile.mkdtemp(prefix="prefect_home_", dir=scratch))
        for kind in ("python", "fresh_home", "reused_home")[rep % 3:] + ("python", "fresh_home", "reused_home")[
                : rep % 3]:
            if kind == "python":
                r = run_sampled([py, "-c", "pass"], _child_env(home, timeout_s))
                rows.append({"kind": kind, "wall_s": r["wall_s"]})
                continue
            if kind == "reused_home" and not (home / "prefect.db").exists():
                # the fresh-home process of this repeat has not run yet: make the database first
                run_sampled([py, str(SCRIPT), "--child", "server"], _child_env(home, timeout_s), cwd=ROOT)
            home_used = Path(tempfile.mkdtemp(prefix="prefect_home_", dir=scratch)) if kind == "fresh_home" else home
            r = run_sampled([py, str(SCRIPT), "--child", "server"], _child_env(home_used, timeout_s), cwd=ROOT)
            if r["rc"] != 0:
                rows.append({"kind": kind, "failed": r["stderr"][-800:], "wall_s": r["wall_s"]})
                print(f"  server {kind}: FAILED after {r['wall_s']:.1f} s", flush=True)
                continue
            inner = _json_line(r["stdout"])
            row = {"kind": kind, "wall_s": r["wall_s"], **inner,
                   "exit_s": r["end_epoch"] - inner["end_epoch"], "peak_tree_rss_mb": r["peak_tree_rss_mb"],
                   "others_cores": r["others_cores"]}
            row["server_start_s"] = row["first_flow_s"] - row["second_flow_s"]
            rows.append(row)
            print(f"  server {kind}: total {r['wall_s']:.2f} s, import {inner['import_s']:.2f}, first flow "
                  f"{inner['first_flow_s']:.2f}, second {inner['second_flow_s']:.2f}, exit {row['exit_s']:.2f}",
                  flush=True)
    return {"rows": rows}


def crav_run(export: Path, out: Path, home: Path, timeout_s: int, extra_env: dict[str, str]) -> dict[str, Any]:
    crav = Path(sys.executable).with_name("crav")
    r = run_sampled([str(crav), "run", "--input", str(export / "export"), "--registry",
                     str(export / "treatments.csv"), "--output", str(out), "--quiet-period", "0"],
                    {**_child_env(home, timeout_s), **extra_env})
    decisions: dict[str, int] = {}
    try:
        record = json.loads((out / "run.json").read_text())
        for d in record.get("patients", {}).values():
            decisions[d.split(":", 1)[0]] = decisions.get(d.split(":", 1)[0], 0) + 1
    except (OSError, ValueError):
        record = {}
    r["decisions"] = decisions
    r["run_json_started"] = record.get("started")
    r["run_json_finished"] = record.get("finished")
    r.pop("stdout")
    if r["rc"] not in (0, 1):
        print(f"    crav run failed (rc {r['rc']}): {r['stderr'][-1500:]}", flush=True)
    return r


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else float("nan")
    return my - slope * mx, slope


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=Path("/tmp/bench_flows/cohort40"),
                    help="phantom cohort folder; generated (40 patients, seed 11) when it has no truth.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_flows/work"), help="scratch folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40], help="cohort sizes of step 3")
    ap.add_argument("--repeats", type=int, default=5, help="repetitions of steps 1-2 (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-ups of each variant in step 2")
    ap.add_argument("--run-repeats", type=int, default=3, help="crav run of the 1-patient export (default 3)")
    ap.add_argument("--rerun-repeats", type=int, default=3, help="re-runs of the unchanged export (default 3)")
    ap.add_argument("--patient", help="PatientID of step 2 (default: first with 6 MR studies and 1 lesion)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["server", "inproc", "run1", "sizes", "rerun"],
                    help="steps to leave out")
    ap.add_argument("--server-timeout", type=int, default=120,
                    help="PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS for the children (Prefect: 20)")
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment of the crav run children (e.g. glibc MALLOC_* tunables)")
    ap.add_argument("--out", type=Path, help="write the raw numbers here (JSON)")
    ap.add_argument("--report", type=Path, nargs="+",
                    help="only print the tables of these --out files (merged, later ones win) and exit")
    ap.add_argument("--child", choices=["server", "inproc"], help=argparse.SUPPRESS)
    ap.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.report:
        merged: dict[str, Any] = {}
        for path in a.report:
            merged.update(json.loads(path.read_text()))
        report(merged)
        return 0
    if a.child == "server":
        child_server()
        return 0
    if a.child == "inproc":
        child_inproc(a.export, a.patient, a.work, a.repeats, a.warmup)
        return 0

    from importlib.metadata import version  # Prefect itself is imported by the children only

    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(), "mem_gib": _mem_total_gib(),
        "python": platform.python_version(), "prefect": version("prefect"),
        "argv": sys.argv, "load_start": os.getloadavg(),
    }
    extra_env = dict(kv.split("=", 1) for kv in a.env)
    res["extra_env"] = extra_env
    a.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run_", dir=a.work))
    cohort: Path = a.cohort.resolve()  # the links of the subsets point at absolute paths
    if not (cohort / "truth.json").is_file():
        print(f"generating {cohort} (40 patients, seed 11)", flush=True)
        r = run_sampled([str(Path(sys.executable).with_name("crav")), "phantom", "--patients", "40", "--seed", "11",
                         "--out", str(cohort)], dict(os.environ))
        res["generation"] = {k: r[k] for k in ("wall_s", "rc", "peak_tree_rss_mb")}
        if r["rc"] != 0:
            print(r["stderr"])
            return 1
    truth = json.loads((cohort / "truth.json").read_text())
    all_patients = sorted({les["patient_id"] for les in truth["lesions"]})
    print(f"cohort {cohort}: {len(all_patients)} patients, {len(truth['lesions'])} lesions", flush=True)
    layout, other = export_layout(cohort / "export")
    missing = sorted(set(all_patients) - set(layout))
    if missing:
        print(f"no study folder found for {missing}")
        return 1
    if a.patient:
        patient, n_mr, n_les = a.patient, -1, -1
    else:
        patient, n_mr, n_les = choose_patient(truth)
    res["patient"] = {"id": patient, "mr_studies": n_mr, "lesions": n_les}
    print(f"one-patient steps: {patient} ({n_mr} MR studies, {n_les} lesion(s))", flush=True)
    one = make_subset(cohort, layout, other, [patient], a.work / "exports" / "p1")
    size_exports: dict[int, Path] = {}
    for n in a.sizes:
        if n > len(all_patients):
            print(f"size {n} > {len(all_patients)} patients: skipped")
            continue
        size_exports[n] = cohort if n == len(all_patients) else make_subset(
            cohort, layout, other, all_patients[:n], a.work / "exports" / f"p{n}")

    if "server" not in a.skip:
        print("\n## ephemeral server start", flush=True)
        res["server"] = bench_server(a.repeats, scratch, a.server_timeout)

    if "inproc" not in a.skip:
        print("\n## one patient in one process: plain / flow width 2 / flow width 1", flush=True)
        home = Path(tempfile.mkdtemp(prefix="prefect_home_", dir=scratch))
        r = run_sampled([sys.executable, str(SCRIPT), "--child", "inproc", "--export", str(one / "export"),
                         "--patient", patient, "--work", str(scratch / "inproc"), "--repeats", str(a.repeats),
                         "--warmup", str(a.warmup)], _child_env(home, a.server_timeout), cwd=ROOT)
        print(r["stderr"][-3000:], flush=True)
        if r["rc"] != 0:
            print("in-process benchmark failed")
            return 1
        res["inproc"] = {**_json_line(r["stdout"]), "process_peak_tree_rss_mb": r["peak_tree_rss_mb"],
                         "process_wall_s": r["wall_s"], "process_others_cores": r["others_cores"]}

    if "run1" not in a.skip:
        print("\n## crav run, 1-patient export, fresh process, fresh output", flush=True)
        runs = []
        for i in range(a.run_repeats):
            home = Path(tempfile.mkdtemp(prefix="prefect_home_", dir=scratch))
            r = crav_run(one, scratch / f"out_p1_{i}", home, a.server_timeout, extra_env)
            runs.append(r)
            print(f"  run {i}: {r['wall_s']:.2f} s, rc {r['rc']}, peak tree {r['peak_tree_rss_mb']:.0f} MB, "
                  f"largest process {r['max_single_process_rss_mb']:.0f} MB, others {r['others_cores']:.2f} cores",
                  flush=True)
            shutil.rmtree(scratch / f"out_p1_{i}", ignore_errors=True)
        res["run1"] = runs

    size_runs: dict[int, dict[str, Any]] = {}
    if "sizes" not in a.skip:
        print("\n## crav run by cohort size, fresh output", flush=True)
        for n, export in sorted(size_exports.items()):
            home = scratch / f"prefect_home_p{n}"
            home.mkdir()
            out = scratch / f"out_p{n}"
            r = crav_run(export, out, home, a.server_timeout, extra_env)
            r["home"], r["out"] = str(home), str(out)
            chosen = set(all_patients[:n])
            r["lesions"] = sum(1 for les in truth["lesions"] if les["patient_id"] in chosen)
            r["lesion_visits"] = sum(len(les["visits"]) for les in truth["lesions"] if les["patient_id"] in chosen)
            r["mr_studies"] = sum(1 for st in truth["studies"] if st["patient_id"] in chosen and st["modality"] == "MR")
            size_runs[n] = r
            print(f"  {n:3d} patients: {r['wall_s']:8.1f} s ({r['wall_s'] / n:6.2f} s/patient), rc {r['rc']}, "
                  f"peak tree {r['peak_tree_rss_mb']:.0f} MB, largest process {r['max_single_process_rss_mb']:.0f} MB, "
                  f"{r['decisions']}, others {r['others_cores']:.2f} cores", flush=True)
        res["sizes"] = {str(n): r for n, r in size_runs.items()}

    if "rerun" not in a.skip and size_runs:
        small = [n for n in size_runs if n <= 20]
        n = max(small) if small else min(size_runs)
        first = size_runs[n]
        print(f"\n## re-run of the unchanged {n}-patient export into the same output", flush=True)
        reruns = []
        for i in range(a.rerun_repeats):
            r = crav_run(size_exports[n], Path(first["out"]), Path(first["home"]), a.server_timeout, extra_env)
            reruns.append(r)
            print(f"  re-run {i}: {r['wall_s']:.2f} s, rc {r['rc']}, {r['decisions']}", flush=True)
        home = Path(tempfile.mkdtemp(prefix="prefect_home_", dir=scratch))
        fresh = crav_run(size_exports[n], Path(first["out"]), home, a.server_timeout, extra_env)
        print(f"  re-run, new PREFECT_HOME: {fresh['wall_s']:.2f} s, {fresh['decisions']}", flush=True)
        res["rerun"] = {"size": n, "first_s": first["wall_s"], "reruns": reruns, "rerun_fresh_home": fresh}

    res["load_end"] = os.getloadavg()
    report(res)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(f"\nraw numbers: {a.out}")
    return 0


# --------------------------------------------------------------------------- report


def report(res: dict[str, Any]) -> None:
    print(f"\n# Results ({res['date']}; {res['nproc']} cores, {res['mem_gib']:.1f} GiB, Python {res['python']}, "
          f"Prefect {res['prefect']})\n")
    if "server" in res:
        rows = res["server"]["rows"]
        py = _median([r["wall_s"] for r in rows if r["kind"] == "python"])
        print("### Ephemeral server start (fresh processes, medians)\n")
        print("| PREFECT_HOME | n | process total | `python -c pass` | import flows.crav_flow | 1st empty flow | "
              "2nd empty flow | server start (1st - 2nd) | exit | peak tree RSS |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for kind in ("fresh_home", "reused_home"):
            ok = [r for r in rows if r["kind"] == kind and "failed" not in r]
            failed = sum(1 for r in rows if r["kind"] == kind and "failed" in r)
            if not ok:
                print(f"| {kind} | 0 ({failed} failed) | | | | | | | | |")
                continue

            def m(key: str, rs: list[dict[str, Any]] = ok) -> float:
                return _median([float(r[key]) for r in rs])

            print(f"| {kind.replace('_', ' ')} | {len(ok)}{f' ({failed} failed)' if failed else ''} | "
                  f"{m('wall_s'):.2f} s | {py:.2f} s | {m('import_s'):.2f} s | {m('first_flow_s'):.2f} s | "
                  f"{m('second_flow_s'):.3f} s | **{m('server_start_s'):.2f} s** | {m('exit_s'):.2f} s | "
                  f"{m('peak_tree_rss_mb'):.0f} MB |")
        print()
    if "inproc" in res:
        ip = res["inproc"]
        timed = [r for r in ip["runs"] if r["timed"]]
        kinds = ("plain", "flow_w2", "flow_w1")

        def med_of(key: str, kind: str) -> float:
            return _median([float(r.get(key, float("nan"))) for r in timed if r["kind"] == kind])

        med = {k: med_of("wall_s", k) for k in kinds}
        n = len([r for r in timed if r["kind"] == "plain"])
        share = (med["flow_w1"] - med["plain"]) / med["flow_w1"]
        inner_w1 = med_of("inner_s", "flow_w1")
        share_inner = (inner_w1 - med["plain"]) / inner_w1
        cpu_total = {k: _median([r["cpu_s"] + r.get("server_cpu_s", float("nan")) for r in timed if r["kind"] == k])
                     for k in kinds}
        cpu_share = (cpu_total["flow_w1"] - cpu_total["plain"]) / cpu_total["flow_w1"]
        paired: list[float] = []  # the three variants of one repetition ran one after the other
        for i in range(0, len(timed) - 2, 3):
            rep = {r["kind"]: r["wall_s"] for r in timed[i:i + 3]}
            if {"plain", "flow_w1"} <= set(rep):
                paired.append((rep["flow_w1"] - rep["plain"]) / rep["flow_w1"])
        sigs = {json.dumps(r["signature"]) for r in ip["runs"]}
        n_tasks = 2 * ip["n_studies"] + 2 * ip["n_lesions"] + 3
        print(f"### One patient, one process ({ip['patient']}: {ip['n_studies']} MR studies read, "
              f"{ip['n_lesions']} lesion(s); medians of {n}, order rotating)\n")
        print("| variant | wall, median | [min, max] | patient flow alone (timed inside the task) | CPU, this process "
              "| CPU, Prefect server | others (cores) |")
        print("|---|---|---|---|---|---|---|")
        for k in kinds:
            ws = [r["wall_s"] for r in timed if r["kind"] == k]
            inn = f"{med_of('inner_s', k):.2f} s" if k != "plain" else ""
            print(f"| {k} | {med[k]:.2f} s | [{min(ws):.2f}, {max(ws):.2f}] | {inn} | {med_of('cpu_s', k):.1f} s | "
                  f"{med_of('server_cpu_s', k):.2f} s | {med_of('others_cores', k):.2f} |")
        print(f"\nPrefect share of the wall time, (flow_w1 - plain) / flow_w1: **{share:.1%}** (patient flow alone: "
              f"{share_inner:.1%}); target < {TARGET_PREFECT_SHARE:.0%}: "
              f"{'met' if share < TARGET_PREFECT_SHARE else 'MISSED'}. Median of the per-repetition shares: "
              f"{_median(paired):.1%} [{min(paired, default=float('nan')):.1%}, "
              f"{max(paired, default=float('nan')):.1%}]. Of the CPU time (this process + server): "
              f"{cpu_share:.1%}. flow_w2 / plain: {med['flow_w2'] / med['plain']:.2f}. {n_tasks} task runs + 2 flow "
              f"runs per patient: {(med['flow_w1'] - med['plain']) / (n_tasks + 2) * 1000:.0f} ms of wall, "
              f"{(cpu_total['flow_w1'] - cpu_total['plain']) / (n_tasks + 2) * 1000:.0f} ms of CPU each. "
              f"First empty flow in the process {ip['first_empty_flow_s']:.2f} s, second "
              f"{ip['second_empty_flow_s']:.3f} s. Same results in every run: {'yes' if len(sigs) == 1 else 'NO'}.\n")
    if "run1" in res:
        runs = res["run1"]
        print(f"### `crav run`, 1-patient export, fresh process (median of {len(runs)})\n")
        print(f"wall {_median([r['wall_s'] for r in runs]):.2f} s "
              f"[{min(r['wall_s'] for r in runs):.2f}, {max(r['wall_s'] for r in runs):.2f}], "
              f"peak tree RSS {_median([r['peak_tree_rss_mb'] for r in runs]):.0f} MB, largest process "
              f"{_median([r['max_single_process_rss_mb'] for r in runs]):.0f} MB\n")
    if res.get("sizes"):
        sizes = {int(k): v for k, v in res["sizes"].items()}
        env = " ".join(f"{k}={v}" for k, v in res.get("extra_env", {}).items())
        print(f"### `crav run` by cohort size (fresh output, one run each{'; ' + env if env else ''})\n")
        print("| patients | lesions | lesion-visits | wall | s/patient | s/lesion-visit | CPU s/patient (tree) | "
              "peak RSS, process tree | largest process | others (cores) | exit code |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, r in sorted(sizes.items()):
            lv = r.get("lesion_visits", 0)
            print(f"| {n} | {r.get('lesions', '')} | {lv or ''} | {r['wall_s']:.1f} s | {r['wall_s'] / n:.2f} | "
                  f"{r['wall_s'] / lv if lv else float('nan'):.2f} | {r['cpu_s'] / n:.2f} | "
                  f"{r['peak_tree_rss_mb']:.0f} MB | {r['max_single_process_rss_mb']:.0f} MB | "
                  f"{r['others_cores']:.2f} | {r['rc']} |")
        if len(sizes) >= 2:
            a0, b = _fit([float(n) for n in sizes], [r["wall_s"] for r in sizes.values()])
            c0, c1 = _fit([float(n) for n in sizes], [r["cpu_s"] for r in sizes.values()])
            print(f"\nLeast-squares fits: wall = {a0:.1f} s + {b:.2f} s x patients; CPU = {c0:.1f} s + "
                  f"{c1:.2f} s x patients.", end="")
            if all(r.get("lesion_visits") for r in sizes.values()):
                a0, b = _fit([float(r["lesion_visits"]) for r in sizes.values()], [r["wall_s"] for r in sizes.values()])
                print(f" Wall = {a0:.1f} s + {b:.2f} s x lesion-visits.", end="")
            print("\n")
    if "rerun" in res:
        rr = res["rerun"]
        rerun_med = _median([r["wall_s"] for r in rr["reruns"]])
        ratio = rr["first_s"] / rerun_med
        print(f"### Re-run of the unchanged {rr['size']}-patient export\n")
        print("| run | wall | decisions |")
        print("|---|---|---|")
        print(f"| first (fresh output) | {rr['first_s']:.1f} s | |")
        for i, r in enumerate(rr["reruns"]):
            print(f"| re-run {i + 1} | {r['wall_s']:.2f} s | {r['decisions']} |")
        f = rr["rerun_fresh_home"]
        print(f"| re-run, new PREFECT_HOME | {f['wall_s']:.2f} s | {f['decisions']} |")
        print(f"\nfirst / re-run (median {rerun_med:.2f} s): **{ratio:.1f}x**; target >= {TARGET_RERUN_SPEEDUP:.0f}x: "
              f"{'met' if ratio >= TARGET_RERUN_SPEEDUP else 'MISSED'}\n")


if __name__ == "__main__":
    raise SystemExit(main())
