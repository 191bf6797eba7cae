"""Series loading: ``pipeline.ingest.volumes.load_volume`` against SimpleITK's ImageSeriesReader.

Usage: python benchmarks/bench_volume.py --slices 300 --repeats 5

Writes one axial CT series (``--slices`` single-frame files of 512 x 512, uint16 stored with
RescaleIntercept -1024, 0.7 mm pixels, 1 mm slices; written by the phantom's
``write_series``) into a temporary folder, reads every file once (page cache warm), then times,
interleaved (the order rotates each repeat) in this one process:

- ``load_volume``: ``load_volume(sorted files of the folder)`` (float32, rescale applied);
- ``sitk``: ``ImageSeriesReader.GetGDCMSeriesFileNames(folder)`` + ``SetFileNames`` + ``Execute()``
  with the default output pixel type (what GDCM picks for the rescaled values);
- ``sitk_f32``: the same with ``SetOutputPixelType(sitkFloat32)`` (like for like with load_volume).

Both results are checked against each other (max abs difference of the arrays, size, spacing,
origin, direction) and against the values written. Each timed call also reports the CPU other
processes used meanwhile (from /proc/stat, in cores), since the machines are shared. Then each
reader runs once more in a fresh Python process that reports the growth of its peak resident
memory (VmHWM after the read minus after the imports). A JSON summary (medians, ratios, memory)
is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
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

import numpy as np
import SimpleITK as sitk

from pipeline.ingest import volumes
from pipeline.ingest.volumes import load_volume
from pipeline.phantom.dicom_writer import VENDOR_STYLES, SeriesSpec, StudySpec, uid, write_series
from pipeline.phantom.render import Geometry


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fh.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _volumes_sha() -> str:
    return hashlib.sha256(Path(volumes.__file__).read_bytes()).hexdigest()[:12]


def _ct_volume(n_slices: int, size: int, pixel_mm: float, seed: int) -> np.ndarray:
    """HU values (float32, (slices, rows, cols)): air, an elliptic body with noise, a bony ring."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2) * pixel_mm
    body = (x / 160.0) ** 2 + (y / 120.0) ** 2 <= 1.0
    r = np.hypot(x, y + 40.0)
    cortex, marrow = (r >= 15.0) & (r <= 20.0), r < 15.0
    vol = np.empty((n_slices, size, size), dtype=np.float32)
    for k in range(n_slices):
        sl = np.full((size, size), -1000.0, dtype=np.float32)
        sl[body] = 40.0
        sl[marrow] = 250.0 + 50.0 * np.sin(k / 7.0)
        sl[cortex] = 1200.0
        sl += rng.standard_normal((size, size), dtype=np.float32) * 15.0
        vol[k] = sl
    return vol


def write_ct_series(folder: Path, n_slices: int, size: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Write the series into ``folder``; return the files and the HU values they hold."""
    pixel_mm, spacing_mm = 0.7, 1.0
    geom = Geometry(origin_mm=(-(size - 1) * pixel_mm / 2, -(size - 1) * pixel_mm / 2 - 40.0, -150.0),
                    row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 1.0, 0.0), pixel_spacing_mm=(pixel_mm, pixel_mm),
                    slice_spacing_mm=spacing_mm, slice_thickness_mm=spacing_mm, rows=size, cols=size,
                    n_slices=n_slices)
    study = StudySpec(patient_id="BENCH-VOL", patient_name="BENCH^VOLUME", birth_date="19600101", sex="F",
                      study_uid=uid("bench", seed, "study"), study_date=dt.date(2026, 1, 5),
                      study_time=dt.time(9, 30), accession=f"B{seed:09d}",
                      frame_of_reference_uid=uid("bench", seed, "for"), description="CT RACHIS",
                      vendor=VENDOR_STYLES["SIEMENS"])
    series = SeriesSpec("CT", uid("bench", seed, "series"), 2, "Spine 1.0 Br64", "CT",
                        dt.datetime(2026, 1, 5, 9, 41, 7),
                        tags={"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": 120,
                              "ConvolutionKernel": "Br64", "XRayTubeCurrent": 180, "Exposure": 95})
    hu = _ct_volume(n_slices, size, pixel_mm, seed)
    # file names that do not sort like the slices (PACS exports use UIDs or counters)
    paths = [folder / f"IM{uid('bench', seed, 'file', k)[-12:]}" for k in range(n_slices)]
    write_series(paths, study, series, geom, hu)
    written = np.clip(np.rint(hu + 1024.0), 0, 4095) - 1024.0  # what the files hold (12-bit stored)
    return sorted(paths), written.astype(np.float32)


def _sitk_read(folder: Path, float32: bool) -> sitk.Image:
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    if float32:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def _readers(folder: Path) -> dict[str, Any]:
    return {
        "load_volume": lambda: load_volume(sorted(folder.iterdir())),
        "sitk": lambda: _sitk_read(folder, float32=False),
        "sitk_f32": lambda: _sitk_read(folder, float32=True),
    }


def _maxrss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def _child(name: str, folder: Path) -> None:
    before = _maxrss_mb()
    image = _readers(folder)[name]()
    print(json.dumps({"peak_growth_mb": _maxrss_mb() - before, "image_mb": image.GetNumberOfPixels()
                      * image.GetSizeOfPixelComponent() / 1e6}))


def _compare(a: sitk.Image, b: sitk.Image) -> dict[str, Any]:
    arr_a, arr_b = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    same_size = a.GetSize() == b.GetSize()
    return {
        "same_size": same_size,
        "max_abs_pixel_diff": float(np.max(np.abs(arr_a - arr_b.astype(np.float32)))) if same_size else None,
        "max_abs_spacing_diff_mm": float(np.max(np.abs(np.subtract(a.GetSpacing(), b.GetSpacing())))),
        "max_abs_origin_diff_mm": float(np.max(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin())))),
        "max_abs_direction_diff": float(np.max(np.abs(np.subtract(a.GetDirection(), b.GetDirection())))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300, help="number of single-frame files (300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns of each slice (512)")
    ap.add_argument("--repeats", type=int, default=5, metavar="N", help="repeats of each reader (5)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the temporary series folder is written (removed afterwards)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    ap.add_argument("--child", choices=("load_volume", "sitk", "sitk_f32"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child, a.folder)
        return 0

    sha_at_import = _volumes_sha()  # others edit the tree: say which volumes.py was measured
    work = Path(tempfile.mkdtemp(prefix="bench_volume_", dir=a.workdir))
    try:
        t0 = time.perf_counter()
        files, written = write_ct_series(work, a.slices, a.size)
        write_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        for p in files:  # warm the page cache: every reader sees the same cached files
            p.read_bytes()
        print(f"{len(files)} files ({size_mb:.0f} MB) written in {write_s:.1f} s under {work}", file=sys.stderr)

        readers = _readers(work)
        names = list(readers)
        times: dict[str, list[float]] = {k: [] for k in names}
        others: dict[str, list[float]] = {k: [] for k in names}  # cores used by other processes meanwhile
        results: dict[str, sitk.Image] = {}
        load_before = os.getloadavg()
        for rep in range(a.repeats):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                gc.collect()
                busy0, own0, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
                image = readers[name]()
                times[name].append(time.perf_counter() - t0)
                others[name].append(max(_busy_cpu_s() - busy0 - (time.process_time() - own0), 0.0) / times[name][-1])
                results[name] = image
                print(f"repeat {rep + 1} {name:12s} {times[name][-1]:.3f} s (others used {others[name][-1]:.2f} cores)",
                      file=sys.stderr)
                del image
        load_after = os.getloadavg()
        memory = {}
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--folder", str(work)],
                                 capture_output=True, text=True, check=True).stdout
            memory[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours, theirs = results["load_volume"], results["sitk"]
    median = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "slices": a.slices,
        "matrix": [a.size, a.size],
        "size_mb": round(size_mb),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "simpleitk": sitk.Version_VersionString(),
        "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        "volumes_py_sha256": sha_at_import,
        "volumes_py_changed_during_run": _volumes_sha() != sha_at_import,
        "repeats": a.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "other_processes_cpu_cores_per_run": {k: [round(x, 2) for x in v] for k, v in others.items()},
        "ratio_load_volume_vs_sitk": round(median["load_volume"] / median["sitk"], 2),
        "ratio_load_volume_vs_sitk_f32": round(median["load_volume"] / median["sitk_f32"], 2),
        "pixel_type": {k: v.GetPixelIDTypeAsString() for k, v in results.items()},
        "size": list(ours.GetSize()),
        "spacing_mm": [round(v, 4) for v in ours.GetSpacing()],
        "load_volume_vs_sitk": _compare(ours, theirs),
        "load_volume_vs_sitk_f32": _compare(ours, results["sitk_f32"]),
        "load_volume_vs_written_max_abs": float(np.max(np.abs(sitk.GetArrayViewFromImage(ours) - written))),
        "peak_memory_growth_mb": {k: round(v["peak_growth_mb"]) for k, v in memory.items()},
        "output_image_mb": {k: round(v["image_mb"]) for k, v in memory.items()},
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json_out is not None:
        a.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
