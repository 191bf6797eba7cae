"""Phantom generation: wall time and peak memory of `crav phantom`, and that every file reads back.

Usage: python benchmarks/bench_phantom.py --patients 25 --seed 1 --out /tmp/cohort1
Peak memory is the largest sum of resident memory over the process tree (parent + workers),
sampled every 0.2 s from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from proctree import tree_rss_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    crav = Path(sys.executable).with_name("crav")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(crav), "phantom", "--patients", str(a.patients), "--seed", str(a.seed),
                             "--out", str(a.out)])
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.2)
    wall_s = time.perf_counter() - t0
    if proc.returncode:
        return proc.returncode
    truth = json.loads((a.out / "truth.json").read_text(encoding="utf-8"))
    noise = {str(a.out / "export" / k) for k in truth["export_noise"]}
    n_ok = n_bad = 0
    unexpected = []
    for path in (a.out / "export").rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
            _ = ds.pixel_array
            n_ok += 1
        except Exception:
            n_bad += 1
            if str(path) not in noise:
                unexpected.append(str(path))
    size_mb = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file()) / 1e6
    print(json.dumps({
        "patients": a.patients, "seed": a.seed, "lesions": len(truth["lesions"]),
        "wall_s": round(wall_s, 1), "peak_rss_mb": round(peak / 1e6), "cpus": os.cpu_count(),
        "files_read_back": n_ok, "files_not_dicom_by_design": n_bad - len(unexpected),
        "unexpected_unreadable": unexpected, "size_mb": round(size_mb),
    }, indent=1))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
