"""Pipeline accuracy against a phantom's truth: generate (if needed), run, evaluate.

Usage:
    python benchmarks/bench_accuracy.py --cohort sample_dicom --out /tmp/acc-sample
    python benchmarks/bench_accuracy.py --cohort /tmp/cohort1 --patients 25 --seed 1 --out /tmp/acc-25

The cohort folder is generated with `crav phantom` when it holds no truth.json. The run uses
`--force` (nothing reused from an earlier run) and `--quiet-period 0` (the export is complete).
Prints the evaluation table and its wall time and peak memory; writes OUT/evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from proctree import tree_rss_bytes


def _run(cmd: list[str]) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak summed resident memory of a command's process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.2)
    return proc.returncode, time.perf_counter() - t0, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="phantom folder (export + truth.json)")
    ap.add_argument("--out", type=Path, required=True, help="results folder of the run")
    ap.add_argument("--patients", type=int, help="patients, when the cohort must be generated")
    ap.add_argument("--seed", type=int, help="seed, when the cohort must be generated")
    a = ap.parse_args()
    crav = str(Path(sys.executable).with_name("crav"))
    if not (a.cohort / "truth.json").is_file():
        if a.patients is None or a.seed is None:
            ap.error(f"{a.cohort} holds no truth.json: give --patients and --seed to generate it")
        code, wall_s, _ = _run([crav, "phantom", "--patients", str(a.patients), "--seed", str(a.seed),
                                "--out", str(a.cohort)])
        if code:
            return code
        print(f"generated {a.cohort} in {wall_s:.1f} s")
    code, wall_s, peak = _run([crav, "run", "--input", str(a.cohort), "--output", str(a.out), "--force",
                               "--quiet-period", "0"])
    if code not in (0, 1):  # 1: finished, something needs a look (the phantom holds broken files on purpose)
        return code
    print(f"crav run: {wall_s:.1f} s wall, {peak / 1e6:.0f} MB peak resident memory (process tree)")
    report = a.out / "evaluation.json"
    evaluated = subprocess.run([crav, "evaluate", "--truth", str(a.cohort / "truth.json"), "--results",
                                str(a.out), "--json", str(report)], check=False)
    if evaluated.returncode:
        return evaluated.returncode
    summary = json.loads(report.read_text(encoding="utf-8"))
    print(json.dumps({"run_wall_s": round(wall_s, 1), "run_peak_rss_mb": round(peak / 1e6),
                      "outcome_accuracy": summary["outcome_accuracy"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
