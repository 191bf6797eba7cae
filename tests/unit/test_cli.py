"""crav: help for each command, usage errors exit 2, expected errors are one clean line."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli

COMMANDS = ["phantom", "scan", "run", "status", "evaluate", "qa"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0
    assert f"usage: crav {command}" in out and len(out.splitlines()) > 4


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["run"],
        ["run", "--input", "x"],
        ["phantom", "--out", "x"],  # neither --sample nor --patients
        ["phantom", "--patients", "3", "--out", "x"],  # --seed missing
        ["phantom", "--patients", "0", "--seed", "1", "--out", "x"],
        ["phantom", "--patients", "many", "--seed", "1", "--out", "x"],
        ["phantom", "--sample", "--seed", "1", "--out", "x"],
        ["evaluate", "--truth", "t.json"],
        ["evaluate", "out"],  # neither --truth nor --reads
        ["evaluate", "--truth", "t.json", "--reads", "r.csv", "out"],  # both
        ["scan"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert "error" in err and "Traceback" not in err


def test_missing_input_folder_is_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"crav run: error: input folder {tmp_path / 'nope'} does not exist"]


def test_input_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    code, _, err = _run(["scan", "--input", str(f)], capsys)
    assert code == 2 and "is not a folder" in err


def test_run_without_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["run", "--input", str(tmp_path), "--output", str(tmp_path.parent / "o")], capsys)
    assert code == 2 and "no treatments.csv" in err and "--registry" in err


def test_run_refuses_output_inside_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "treatments.csv").write_text("patient_id,lesion_id,level,procedure_date\n")
    code, _, err = _run(["run", "--input", str(tmp_path), "--output", str(tmp_path / "out")], capsys)
    assert code == 2 and "must not be inside the input folder" in err


def test_run_bad_settings_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "treatments.csv").write_text("patient_id,lesion_id,level,procedure_date\n")
    toml = tmp_path / "s.toml"
    toml.write_text("cement_ct_hu_typo = 1700\n")
    code, _, err = _run(["run", "--input", str(export), "--output", str(tmp_path / "o"),
                         "--settings", str(toml)], capsys)
    assert code == 2 and "unknown setting(s) cement_ct_hu_typo" in err


def test_run_calls_flow_with_typed_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    export.mkdir()
    registry = tmp_path / "reg.csv"
    registry.write_text("patient_id,lesion_id,level,procedure_date\n")
    seen: dict[str, Any] = {}

    def run_export(**kwargs: Any) -> int:
        seen.update(kwargs)
        return 1

    fake = types.ModuleType("flows.crav_flow")
    fake.run_export = run_export  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.crav_flow", fake)
    code, _, _ = _run(["run", "--input", str(export), "--output", str(tmp_path / "o"), "--registry",
                       str(registry), "--patient", "A", "B", "--patient", "C", "--force"], capsys)
    assert code == 1  # the flow's "finished with problems" is passed through
    assert seen == {"input_dir": export, "output_dir": tmp_path / "o", "registry": registry,
                    "patients": ["A", "B", "C"], "force": True, "settings_path": None, "overrides": None,
                    "reads": None, "dask_address": None}
    _run(["run", "--input", str(export), "--output", str(tmp_path / "o"), "--registry", str(registry),
          "--quiet-period", "0", "--dask-address", "tcp://10.0.0.5:8786"], capsys)
    assert seen["overrides"] == {"quiet_period_s": 0.0} and seen["dask_address"] == "tcp://10.0.0.5:8786"


def test_serve_passes_its_schedule_and_refuses_a_bad_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "treatments.csv").write_text("patient_id,lesion_id,level,procedure_date\n")
    seen: dict[str, Any] = {}

    class ServeError(Exception):
        pass

    def serve_export(**kwargs: Any) -> None:
        seen.update(kwargs)
        if kwargs["name"] == "down":
            raise ServeError("no Prefect server configured: PREFECT_API_URL is not set")

    fake = types.ModuleType("flows.serve")
    fake.serve_export = serve_export  # type: ignore[attr-defined]
    fake.ServeError = ServeError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.serve", fake)
    base = ["serve", "--input", str(export), "--output", str(tmp_path / "o")]
    assert _run([*base, "--cron", "0 2 * * *"], capsys)[0] == 0
    assert seen["cron"] == "0 2 * * *" and seen["interval_s"] is None and seen["name"] == "crav-export"
    assert seen["input_dir"] == export.resolve() and seen["registry"] is None  # the flow takes treatments.csv
    assert _run([*base, "--interval", "3600", "--name", "nightly"], capsys)[0] == 0
    assert seen["interval_s"] == 3600.0 and seen["cron"] is None and seen["name"] == "nightly"
    code, _, err = _run(base, capsys)  # a schedule is required
    assert code == 2 and "--interval" in err
    code, _, err = _run([*base, "--interval", "60", "--cron", "* * * * *"], capsys)
    assert code == 2 and "not allowed with" in err
    code, _, err = _run([*base, "--interval", "0"], capsys)
    assert code == 2 and "must be more than 0" in err
    code, _, err = _run([*base, "--interval", "60", "--name", "down"], capsys)
    assert code == 2 and "PREFECT_API_URL" in err


def test_phantom_calls_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []
    fake = types.ModuleType("pipeline.phantom.generate")
    fake.generate_cohort = lambda out, n, seed, resolution: calls.append(  # type: ignore[attr-defined]
        ("cohort", out, n, seed, resolution))
    fake.generate_sample = lambda out: calls.append(("sample", out))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipeline.phantom.generate", fake)
    assert cli.main(["phantom", "--patients", "3", "--seed", "42", "--out", str(tmp_path)]) == 0
    assert cli.main(["phantom", "--sample", "--out", str(tmp_path)]) == 0
    assert cli.main(["phantom", "--patients", "8", "--seed", "21", "--resolution", "sample", "--out",
                     str(tmp_path)]) == 0
    assert calls == [("cohort", tmp_path, 3, 42, "full"), ("sample", tmp_path), ("cohort", tmp_path, 8, 21, "sample")]


def test_unavailable_module_is_clean_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pipeline.phantom.generate", None)  # import raises ModuleNotFoundError
    code, _, err = _run(["phantom", "--sample", "--out", str(tmp_path)], capsys)
    assert code == 2 and "not available" in err and "Traceback" not in err


def test_evaluate_missing_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["evaluate", "--truth", str(tmp_path / "t.json"), "--results", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip() == f"crav evaluate: error: truth file {tmp_path / 't.json'} does not exist"


def test_evaluate_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"lesions": [], "studies": []}))
    out = tmp_path / "report" / "eval.json"
    code, text, _ = _run(["evaluate", "--truth", str(truth), "--results", str(tmp_path), "--json", str(out)],
                         capsys)
    assert code == 0 and "outcome accuracy" in text and "n/a (0 pairs)" in text
    assert json.loads(out.read_text())["outcome_accuracy"]["total"] == 0


def test_evaluate_truth_with_positional_results_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"lesions": [], "studies": []}))
    code, text, _ = _run(["evaluate", "--truth", str(truth), str(tmp_path)], capsys)
    assert code == 0 and "outcome accuracy" in text
    code, _, err = _run(["evaluate", "--truth", str(truth), "--results", str(tmp_path / "a"), str(tmp_path)], capsys)
    assert code == 2 and "two results folders" in err


def _reads_setup(tmp_path: Path, reads_text: str) -> tuple[Path, Path]:
    results = tmp_path / "out"
    results.mkdir()
    (results / "lesions.csv").write_text("patient_id,lesion_id,j0_residual,outcome\nP1,A,false,local_control\n"
                                         "P1,B,true,local_failure\nP2,C,true,local_control\n", encoding="utf-8")
    reads = tmp_path / "reads.csv"
    reads.write_text(reads_text, encoding="utf-8")
    return reads, results


def test_evaluate_reads_clean_exit_0_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reads, results = _reads_setup(tmp_path, "Lesion_ID,Outcome,J0_Residual\nA,Local Control,false\n"
                                            "B,local_failure,true\nC,local_failure,true\n")
    out = tmp_path / "agreement.json"
    code, text, err = _run(["evaluate", "--reads", str(reads), str(results), "--json", str(out)], capsys)
    assert code == 0, err
    assert "observed agreement  66.7% (2/3)" in text and "Cohen's kappa" in text
    assert "only in the reference read (0): none" in text and f"JSON report written to {out}" in text
    data = json.loads(out.read_text())
    assert data["outcome_agreement"]["matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert data["j0_residual_agreement"]["kappa"] == 1.0 and data["needs_a_look"] is False


def test_evaluate_reads_unmatched_lesion_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reads, results = _reads_setup(tmp_path, "lesion_id,outcome\nA,local_control\nB,local_failure\nZ,local_control\n")
    code, text, err = _run(["evaluate", "--reads", str(reads), "--results", str(results)], capsys)
    assert code == 1
    assert "only in the reference read (1): Z" in text and "only in the results (1): C" in text
    assert "see the lists above" in err


def test_evaluate_reads_bad_row_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reads, results = _reads_setup(tmp_path, "lesion_id,outcome\nA,local_control\nB,progression\n")
    code, out, err = _run(["evaluate", "--reads", str(reads), str(results)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == ("crav evaluate: error: reads.csv: 1 bad row(s): line 3: outcome 'progression' is not "
                           "one of local_control, local_failure, indeterminate")
    code, _, err = _run(["evaluate", "--reads", str(tmp_path / "none.csv"), str(results)], capsys)
    assert code == 2 and "reads file" in err and "does not exist" in err
    code, _, err = _run(["evaluate", "--reads", str(reads), str(tmp_path / "nope")], capsys)
    assert code == 2 and "results folder" in err
    (results / "lesions.csv").unlink()
    reads.write_text("lesion_id,outcome\nA,local_control\n", encoding="utf-8")
    code, _, err = _run(["evaluate", "--reads", str(reads), str(results)], capsys)
    assert code == 2 and "has no lesions.csv" in err


def test_run_reads_checked_before_running_and_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "treatments.csv").write_text("patient_id,lesion_id,level,procedure_date\n")
    seen: dict[str, Any] = {}
    fake = types.ModuleType("flows.crav_flow")
    fake.run_export = lambda **kw: seen.update(kw) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flows.crav_flow", fake)
    reads = tmp_path / "reads.csv"
    reads.write_text("lesion_id,outcome\nA,maybe\n", encoding="utf-8")
    argv = ["run", "--input", str(export), "--output", str(tmp_path / "o"), "--reads", str(reads)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "line 2: outcome 'maybe'" in err and not seen
    reads.write_text("lesion_id,outcome\nA,local_control\n", encoding="utf-8")
    code, _, _ = _run(argv, capsys)
    assert code == 0 and seen["reads"] == reads


def test_console_script_entry_point(tmp_path: Path) -> None:
    """`python -m pipeline.cli` behaves like `crav`: clean one-line error, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "scan", "--input", str(tmp_path / "none")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"crav scan: error: input folder {tmp_path / 'none'} does not exist"


def test_scan_of_a_folder_without_dicom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.txt").write_text("not DICOM")
    toml = tmp_path.parent / f"{tmp_path.name}-settings.toml"
    toml.write_text("quiet_period_s = 0\n")
    code, out, err = _run(["scan", "--input", str(tmp_path), "--settings", str(toml)], capsys)
    assert code == 0, err
    assert out.startswith(f"scanned {tmp_path}: 1 new") and "1 file(s): 1 ignored" in out and "README.txt" in out


def test_scan_with_unsupported_catalog_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["scan", "--input", str(tmp_path), "--catalog", "postgres://db/crav"], capsys)
    assert code == 2 and err.startswith("crav scan: error: --catalog postgres://db/crav")


def test_run_summary_counts_outcomes_files_and_problems(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lesions.csv").write_text("lesion_id,outcome\nA,local_control\nB,local_failure\nC,local_control\n")
    (tmp_path / "files.csv").write_text("path,status,reason,series_uid\na,indexed,,1\nb,quarantined,truncated,\n")
    (tmp_path / "run.json").write_text('{"problems": ["treatments.csv line 3: bad date"]}')
    cli._print_run_summary(tmp_path)
    out = capsys.readouterr().out
    assert "3 lesion(s): 2 local_control, 1 local_failure" in out
    assert "2 input file(s): 1 indexed, 1 quarantined" in out
    assert "problem: treatments.csv line 3: bad date" in out


def test_run_into_a_folder_another_run_writes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A second crav run on the same output folder stops at once, names the holder, exits 2."""
    import os

    from pipeline.outputs.lock import output_lock

    export = tmp_path / "export"
    export.mkdir()
    (export / "treatments.csv").write_text("patient_id,lesion_id,level,procedure_date\n", encoding="utf-8")
    out = tmp_path / "out"
    with output_lock(out):
        code, _, err = _run(["run", "--input", str(export), "--output", str(out), "--quiet-period", "0"], capsys)
    assert code == 2
    assert f"is being written by process {os.getpid()}" in err and "another --output" in err
    assert not (out / "lesions.csv").exists()
