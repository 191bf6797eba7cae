"""Crash safety of ``crav run``, end to end, each run a real process.

* A run killed with SIGKILL (during the scan, midway through a patient's masks, between two cohort
  tables) leaves partial outputs; the next run finishes and its outputs are those of a clean run,
  with no temporary or orphaned file.
* A second run on an output folder being written is refused at once (exit 2, the holder named) and
  touches nothing; the first one finishes with the clean run's outputs.
* A file still being copied into the export (modified within the quiet period) is not read; the
  next run, once it has settled, reads it and recomputes its patient.

The runs go through the ``crav`` console script in Prefect's ephemeral mode (own ``PREFECT_HOME``,
no ``PREFECT_API_URL``), on an export reduced to one patient. A killed run is
``python -c _SCRIPT``: the script wraps one production function so that the process kills
itself at the chosen moment, then calls ``pipeline.cli.main`` (no hook in the production code).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from output_compare import assert_same_results

P1 = "CRAV-20211001"  # the phantom patient with one lesion
TEMP_MARK = ".crav-tmp-"
CRAV = Path(sys.executable).with_name("crav")
# every input file is dated well in the past, so that only the file a test touches is "arriving"
SETTLED_NS = 1_700_000_000 * 10**9
RUN_TIMEOUT_S = 300.0

_SCRIPT = textwrap.dedent('''
    """Run `crav` with one production function wrapped: at the chosen moment the process kills itself
    (or, for "pause", waits until the file MARKER.release exists). argv: POINT ARG MARKER CRAV-ARGS..."""
    import contextlib, os, signal, sys, time
    from pathlib import Path

    point, arg, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    calls = 0


    def reached(note):
        marker.write_text(note, encoding="utf-8")
        if point != "pause":
            os.kill(os.getpid(), signal.SIGKILL)
        release = marker.with_name(marker.name + ".release")
        while not release.exists():
            time.sleep(0.05)


    def count():
        global calls
        calls += 1
        return calls


    def wrap_atomic_path(module, hit):
        """atomic_path that stops once the temporary file is written, before its rename."""
        original = module.atomic_path

        @contextlib.contextmanager
        def atomic_path(path, suffix=".tmp"):
            with original(path, suffix=suffix) as tmp:
                yield tmp
                if hit(Path(path)):
                    reached(f"{tmp} written, not renamed to {path}")

        module.atomic_path = atomic_path


    if point == "ingest":  # the k-th header read
        import pipeline.ingest.scan as scan

        read_header = scan.read_header

        def counting_read_header(path):
            if count() == int(arg):
                reached(f"{calls - 1} headers read")
            return read_header(path)

        scan.read_header = counting_read_header
    elif point in ("mask", "pause"):  # the k-th NIfTI mask
        import pipeline.outputs.nifti as nifti

        wrap_atomic_path(nifti, lambda path: count() == int(arg))
    elif point == "table":  # the file named ARG (cohort tables: atomic_open -> atomic.atomic_path)
        import pipeline.outputs.atomic as atomic

        wrap_atomic_path(atomic, lambda path: path.name == arg)
    else:
        raise SystemExit(f"unknown point {point}")

    from pipeline import cli

    sys.exit(cli.main(sys.argv[4:]))
''')


@dataclass(frozen=True)
class Sample:
    export: Path  # one patient's files, copied from sample_dicom/export
    registry: Path  # that patient's rows of treatments.csv
    prefect_home: Path
    logs: Path


@dataclass(frozen=True)
class Finished:
    returncode: int
    stderr: str


class Proc:
    """A process in its own session, its output in files: the ephemeral Prefect server a killed
    run leaves behind holds no pipe open, and is ended with the run's process group."""

    def __init__(self, cmd: list[str], env: dict[str, str], logs: Path, name: str) -> None:
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          start_new_session=True)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> Finished:
        try:
            code = self.popen.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # what the run started and left running
            self.popen.wait()
        return Finished(code, self.err.read_text(errors="replace"))


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE")}
    env["PREFECT_HOME"] = str(prefect_home)
    # Prefect gives its ephemeral server 20 s to start (create its database...): too short on a busy machine
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return env


def _run_args(sample: Sample, out: Path, quiet_period_s: float = 0) -> list[str]:
    return ["run", "--input", str(sample.export), "--output", str(out), "--registry", str(sample.registry),
            "--quiet-period", f"{quiet_period_s:g}"]


def _crav(sample: Sample, out: Path, name: str, quiet_period_s: float = 0) -> Finished:
    return Proc([str(CRAV), *_run_args(sample, out, quiet_period_s)], _env(sample.prefect_home), sample.logs,
                name).wait()


def _scripted(sample: Sample, out: Path, point: str, arg: str, name: str) -> tuple[Proc, Path]:
    marker = sample.logs / f"{name}.point"
    cmd = [sys.executable, "-c", _SCRIPT, point, arg, str(marker), *_run_args(sample, out)]
    return Proc(cmd, _env(sample.prefect_home), sample.logs, name), marker


def _killed(sample: Sample, out: Path, point: str, arg: str, name: str) -> str:
    """Run until the process kills itself at ``point``; what it was doing then."""
    proc, marker = _scripted(sample, out, point, arg, name)
    done = proc.wait()
    assert done.returncode == -signal.SIGKILL, f"exit {done.returncode}, not SIGKILL:\n{done.stderr[-3000:]}"
    assert marker.is_file(), "the process died without reaching the crash point"
    return marker.read_text(encoding="utf-8")


def _temp_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if TEMP_MARK in p.name)


def _run_record(out: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return record


def _decision(out: Path) -> str:
    patients = _run_record(out)["patients"]
    assert isinstance(patients, dict)
    return str(patients[P1])


def _files_csv(out: Path) -> dict[str, dict[str, str]]:
    with (out / "files.csv").open(newline="", encoding="utf-8") as fh:
        return {row["path"]: row for row in csv.DictReader(fh)}


def _state(out: Path) -> Path:
    return out / "patients" / P1 / "state.json"


@pytest.fixture(scope="module")
def sample(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """sample_dicom/export reduced to patient P1 (every file the scan attributes to it) and its registry rows."""
    from pipeline.ingest.catalog import Catalog
    from pipeline.ingest.scan import scan_export

    root = tmp_path_factory.mktemp("crash-sample")
    source = (repo_root / "sample_dicom" / "export").resolve()
    export = root / "export"
    with Catalog.open(":memory:") as catalog:
        scan_export(source, catalog, quiet_period_s=0, workers=1)
        files = [rec.path for rec in catalog.file_accounting() if rec.patient_id == P1]
    assert len(files) > 100, files
    for path in files:
        copy = export / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        os.utime(copy, ns=(SETTLED_NS, SETTLED_NS))
    lines = (repo_root / "sample_dicom" / "treatments.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    registry = root / "treatments.csv"
    registry.write_text(lines[0] + "".join(line for line in lines[1:] if line.startswith(f"{P1},")), encoding="utf-8")
    (logs := root / "logs").mkdir()
    (prefect_home := root / "prefect-home").mkdir()
    return Sample(export, registry, prefect_home, logs)


@pytest.fixture(scope="module")
def clean(sample: Sample, tmp_path_factory: pytest.TempPathFactory,
          check_outputs: Callable[..., str]) -> tuple[Path, int]:
    """The reference: one uninterrupted run (its output folder, its exit code)."""
    out = tmp_path_factory.mktemp("crash-clean") / "out"
    done = _crav(sample, out, "clean")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert _decision(out) == "recomputed: no previous results"
    assert not _temp_files(out)
    check_outputs(out, registry=sample.registry)
    return out, done.returncode


def _rerun_gives_the_clean_results(sample: Sample, clean: tuple[Path, int], out: Path, name: str,
                                   check_outputs: Callable[..., str]) -> None:
    done = _crav(sample, out, name)
    assert done.returncode == clean[1], done.stderr[-3000:]
    assert_same_results(clean[0], out)
    check_outputs(out, registry=sample.registry)


# --------------------------------------------------------------------------- SIGKILL


def test_killed_during_the_scan(sample: Sample, clean: tuple[Path, int], tmp_path: Path,
                                check_outputs: Callable[..., str]) -> None:
    out = tmp_path / "out"
    assert _killed(sample, out, "ingest", "200", "kill-ingest") == "199 headers read"
    # killed inside the catalog's transaction: no table, no file accounting, no patient
    assert (out / "catalog.sqlite").is_file()
    assert not [p for p in ("lesions.csv", "files.csv", "run.json") if (out / p).exists()]
    assert not _state(out).exists()

    _rerun_gives_the_clean_results(sample, clean, out, "rerun-ingest", check_outputs)
    assert _run_record(out)["scan"] == _run_record(clean[0])["scan"]  # every file read again
    assert _decision(out) == "recomputed: no previous results"


def test_killed_midway_through_a_patients_masks(sample: Sample, clean: tuple[Path, int], tmp_path: Path,
                                                check_outputs: Callable[..., str]) -> None:
    out = tmp_path / "out"
    where = _killed(sample, out, "mask", "6", "kill-mask")
    assert "written, not renamed to" in where and where.endswith(".nii.gz")
    temps = _temp_files(out)
    assert len(temps) == 1 and temps[0].name.endswith(".nii.gz") and str(temps[0]) in where, temps
    written = [p for p in (out / "patients").rglob("*.nii.gz") if TEMP_MARK not in p.name]
    assert len(written) == 5, written  # the masks before it are there ...
    assert not _state(out).exists()  # ... but the patient is not done
    assert not (out / "lesions.csv").exists()

    _rerun_gives_the_clean_results(sample, clean, out, "rerun-mask", check_outputs)
    assert _run_record(out)["orphans_removed"] == 1
    assert _decision(out) == "recomputed: no previous results"


def test_killed_between_two_cohort_tables(sample: Sample, clean: tuple[Path, int], tmp_path: Path,
                                          check_outputs: Callable[..., str]) -> None:
    out = tmp_path / "out"
    where = _killed(sample, out, "table", "measurements.csv", "kill-table")
    assert where.endswith("not renamed to " + str(out / "measurements.csv"))
    assert (out / "lesions.csv").read_bytes() == (clean[0] / "lesions.csv").read_bytes()
    assert not (out / "measurements.csv").exists()
    assert [p.name.split(TEMP_MARK)[0] for p in _temp_files(out)] == [".measurements.csv"]
    assert _state(out).is_file()  # the patient itself was finished

    _rerun_gives_the_clean_results(sample, clean, out, "rerun-table", check_outputs)
    assert _run_record(out)["orphans_removed"] == 1
    assert _decision(out).startswith("unchanged: ")  # the finished patient is reused, the tables completed


# --------------------------------------------------------------------------- two runs at once


def _snapshot(out: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``out``: (size, mtime_ns, content)."""
    return {p.relative_to(out).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in out.rglob("*") if p.is_file()}


def _wait_for(condition: Callable[[], bool], proc: Proc, what: str, timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.popen.poll() is not None:
            pytest.fail(f"the run exited with {proc.popen.returncode} before {what}:\n"
                        f"{proc.err.read_text(errors='replace')[-3000:]}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s", pytrace=False)
        time.sleep(0.1)


def _lock_is_held(out: Path) -> bool:
    fd = os.open(out / ".crav.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # releases the lock if it was taken
    return False


@contextlib.contextmanager
def _running(proc: Proc) -> Iterator[Proc]:
    """End ``proc`` (and what it started) if the test fails while it runs."""
    try:
        yield proc
    finally:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()


def test_a_second_run_on_the_same_output_is_refused(sample: Sample, clean: tuple[Path, int], tmp_path: Path,
                                                     check_outputs: Callable[..., str]) -> None:
    out = tmp_path / "out"
    first_proc, marker = _scripted(sample, out, "pause", "6", "first")  # holds the lock, paused before a rename
    with _running(first_proc) as first:
        _wait_for(marker.is_file, first, "pause inside the run")
        holder = json.loads((out / ".crav.lock").read_text(encoding="utf-8"))
        assert holder["pid"] == first.popen.pid and _lock_is_held(out)
        in_flight = _temp_files(out)
        assert len(in_flight) == 1, in_flight
        before = _snapshot(out)

        # own Prefect home: two ephemeral Prefect servers must not share one SQLite database (and it shows
        # whether Prefect was started at all)
        (second_home := tmp_path / "prefect-home-second").mkdir()
        second = Proc([str(CRAV), *_run_args(sample, out)], _env(second_home), sample.logs, "second").wait()
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is being written by process {first.popen.pid} on " in second.stderr
        assert "wait for that run to end, or give another --output" in second.stderr
        # an expected error: "one line on stderr, no traceback" (pipeline/cli.py)
        assert "Traceback" not in second.stderr, second.stderr[-3000:]
        assert not any(second_home.iterdir()), "refused only after Prefect had started"  # i.e. not at once
        # the refused run wrote nothing, swept nothing, and the first one still runs
        assert _snapshot(out) == before
        assert first.popen.poll() is None

        marker.with_name(marker.name + ".release").touch()
        done = first.wait()
    assert done.returncode == clean[1], done.stderr[-3000:]
    assert not in_flight[0].exists()
    assert_same_results(clean[0], out)
    check_outputs(out, registry=sample.registry)


# --------------------------------------------------------------------------- files arriving during a scan


def test_a_file_being_copied_is_left_for_the_next_run(sample: Sample, clean: tuple[Path, int], tmp_path: Path,
                                                       check_outputs: Callable[..., str]) -> None:
    from pipeline.domain import SeriesRole
    from pipeline.ingest.catalog import Catalog

    with Catalog.open(clean[0] / "catalog.sqlite") as catalog:
        t1 = next(s for s in catalog.series(P1) if s.role == SeriesRole.T1)
        series = catalog.files(t1.series_uid)
    copying = series[len(series) // 2]  # a slice in the middle of an image series the analysis reads
    content = copying.read_bytes()
    quiet_period_s = 300  # far longer than a run's start-up: the half-copied file stays "arriving"
    out = tmp_path / "out"
    try:
        copying.write_bytes(content[: len(content) // 2])  # half copied, modified now
        first = _crav(sample, out, "arriving", quiet_period_s)
        assert first.returncode in (0, 1), first.stderr[-3000:]
        row = _files_csv(out)[str(copying)]
        assert row["status"] == "arriving" and "quiet period" in row["reason"], row  # not read, so not quarantined
        scan = _run_record(out)["scan"]
        assert isinstance(scan, dict) and scan["arriving"] == 1 and scan["quarantined"] == 0, scan
        assert _decision(out) == "recomputed: no previous results"

        copying.write_bytes(content)  # the copy ends; by the next run the file has settled
        os.utime(copying, ns=(SETTLED_NS, SETTLED_NS))
        second = _crav(sample, out, "arrived", quiet_period_s)
        assert second.returncode == clean[1], second.stderr[-3000:]
        assert _files_csv(out)[str(copying)]["status"] == "indexed"
        scan = _run_record(out)["scan"]
        assert isinstance(scan, dict) and (scan["arriving"], scan["new"], scan["changed"]) == (0, 1, 0), scan
        assert _decision(out) == "recomputed: inputs, registry rows, settings or QA corrections changed"
        assert_same_results(clean[0], out)
        check_outputs(out, registry=sample.registry)
    finally:  # the export is shared by the module's tests
        copying.write_bytes(content)
        os.utime(copying, ns=(SETTLED_NS, SETTLED_NS))
