"""Export scan: first scan and rescan of a phantom export against a bare pydicom header loop.

Usage: python benchmarks/bench_scan.py --export /tmp/bench_ingest/p7s3 --repeats 3

``--export DIR`` is a phantom cohort folder (its ``export/`` subfolder is scanned) or an export
folder; when DIR does not exist it is generated first with
``crav phantom --patients 7 --seed 3 --out DIR`` (about 23,000 files, ~80 s on 2 cores).

In one run, interleaved (the order rotates each repeat) and repeated, each measurement in a fresh
Python process (imports not timed):

- ``bare``: ``pydicom.dcmread(path, stop_before_pixels=True, specific_tags=<scanner's tag list>)``
  over every file of the export, in one process (the file list is made before the clock starts);
- ``scan``: the first ``scan_export(root, Catalog.open(<fresh sqlite file>), quiet_period_s=0)``
  with default workers, and ``scan_w1`` the same with ``workers=1`` (like for like with ``bare``);
  both include the folder walk, the SQLite writes and the per-patient recompute;
- ``rescan``: ``scan_export`` again on the unchanged export with the catalog the ``scan`` of the
  same repeat wrote.

Peak memory is sampled every 0.1 s from /proc over the child's process tree (sum of VmRSS, which
counts the pages forked workers share with their parent several times, and sum of Pss, which
does not); the exact peak of the scanning process itself (VmHWM) and ``ru_maxrss`` of its
largest worker (pages shared with the parent included) are reported too. Each run also
reports its own CPU seconds and the CPU other processes used meanwhile (from /proc/stat, in
cores; the machines are shared: a busy neighbour slows the 2-worker scan most). A JSON
summary (medians, ratios, targets) is printed last. The children import a copy of the ``pipeline``
package taken when the run starts (``--live-code`` to import the live one instead), so edits made
in the tree during a run do not mix versions; the JSON names the modules' sha256. ``--profile``
adds one untimed ``workers=1`` first scan under cProfile and prints its top entries.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proctree import tree_pids

TARGET_SCAN_VS_BARE = 0.8
TARGET_FIRST_VS_RESCAN = 20.0
TARGET_PEAK_MB = 500.0
KINDS = ("bare", "scan", "scan_w1")


# --------------------------------------------------------------------------- helpers


def _list_files(root: Path) -> list[str]:
    found = [os.path.join(d, n) for d, _dirs, names in os.walk(root) for n in names]
    found.sort()
    return found


def _proc_kb(path: str, field: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_memory_bytes(root_pid: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) over the process tree rooted at ``root_pid``."""
    rss = pss = 0
    for pid in tree_pids(root_pid):
        rss += _proc_kb(f"/proc/{pid}/status", "VmRSS:") * 1024
        pss += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024
    return rss, pss


def _cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _our_cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _page_cache_fraction(paths: list[str]) -> float | None:
    """Fraction of the files' bytes resident in the page cache (``fincore``), None if unavailable."""
    if shutil.which("fincore") is None:
        return None
    resident = total = 0
    for i in range(0, len(paths), 500):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *paths[i : i + 500]],
            capture_output=True, text=True, check=False,
        ).stdout
        for line in out.splitlines():
            res, size = (int(v) for v in line.split())
            resident, total = resident + min(res, size), total + size  # RES counts whole pages
    return resident / total if total else None


def _package_dir() -> Path:
    spec = importlib.util.find_spec("pipeline")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package `pipeline` not found: run with the project's virtualenv")
    return Path(next(iter(spec.submodule_search_locations)))


def _sources(package: Path) -> dict[str, str]:
    """Short sha256 of the measured modules."""
    return {name: hashlib.sha256((package / "ingest" / name).read_bytes()).hexdigest()[:12]
            for name in ("scan.py", "headers.py", "catalog.py", "roles.py")}


def _export_root(folder: Path, patients: int, seed: int) -> Path:
    if not folder.exists():
        crav = Path(sys.executable).with_name("crav")
        print(f"generating the phantom: crav phantom --patients {patients} --seed {seed} --out {folder}",
              file=sys.stderr)
        t0 = time.perf_counter()
        subprocess.run([str(crav), "phantom", "--patients", str(patients), "--seed", str(seed),
                        "--out", str(folder)], check=True)
        print(f"generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder / "export" if (folder / "export").is_dir() else folder


# --------------------------------------------------------------------------- one measurement (child)


def _child(kind: str, root: Path, catalog_path: Path | None, workers: int | None, profile: Path | None) -> None:
    import pydicom

    import pipeline
    from pipeline.ingest import headers
    from pipeline.ingest.catalog import Catalog
    from pipeline.ingest.scan import scan_export

    result: dict[str, Any] = {"kind": kind, "package": str(Path(pipeline.__file__).resolve().parent)}
    if kind == "bare":
        tags = getattr(headers, "_READ_TAGS", None)  # the exact tag list read_header passes to dcmread
        if tags is None:
            raise SystemExit("pipeline.ingest.headers._READ_TAGS is gone: update the bare loop's tag list")
        result["tags"] = len(tags)
        paths = _list_files(root)
        n_ok = n_failed = 0
        t0 = time.perf_counter()
        for path in paths:
            try:
                pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
                n_ok += 1
            except Exception:  # the export holds a few non-DICOM and truncated files by design
                n_failed += 1
        result.update(elapsed_s=time.perf_counter() - t0, files=len(paths), read=n_ok, failed=n_failed)
    else:
        assert catalog_path is not None
        catalog = Catalog.open(catalog_path)
        profiler = None
        if profile is not None:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        report = scan_export(root, catalog, quiet_period_s=0, workers=workers)
        elapsed = time.perf_counter() - t0
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        catalog.close()
        counts = {k: getattr(report, k) for k in ("new", "changed", "unchanged", "deleted", "arriving",
                                                  "quarantined", "ignored", "indexed")}
        files = report.indexed + report.ignored + report.quarantined + report.arriving
        result.update(elapsed_s=elapsed, files=files, report=counts, patients=len(report.changed_patients))
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so it would report the driver's peak
    result["peak_rss_self_mb"] = _proc_kb("/proc/self/status", "VmHWM:") / 1024
    result["ru_maxrss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


# --------------------------------------------------------------------------- driver


def _measure(script: Path, kind: str, root: Path, catalog: Path | None, workers: int | None,
             code: Path | None, profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(script), "--child", kind, "--export", str(root)]
    if catalog is not None:
        cmd += ["--catalog", str(catalog)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if profile is not None:
        cmd += ["--profile-out", str(profile)]
    env = dict(os.environ)
    if code is not None:  # the snapshot of `pipeline` shadows the installed (live) one
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
    busy0, steal0 = _cpu_seconds()
    ours0, t0 = _our_cpu_seconds(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = _tree_memory_bytes(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.1)
    out, _ = proc.communicate()
    busy1, steal1 = _cpu_seconds()
    wall, ours = time.perf_counter() - t0, _our_cpu_seconds() - ours0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if code is not None and not Path(result["package"]).is_relative_to(code.resolve()):
        raise SystemExit(f"the child imported {result['package']}, not the snapshot under {code}")
    result.update(peak_tree_rss_mb=peak_rss / 1e6, peak_tree_pss_mb=peak_pss / 1e6)
    # CPU used meanwhile by other processes (in cores: 1.0 = one core busy all along), and VM steal
    result["other_cpu_cores"] = max(busy1 - busy0 - ours, 0.0) / wall
    result["steal_cores"] = (steal1 - steal0) / wall
    result["our_cpu_s"] = ours
    result["files_per_s"] = result["files"] / result["elapsed_s"]
    return result


def _print_profile(stats_path: Path, top: int) -> None:
    import pstats

    for key in ("tottime", "cumulative"):
        print(f"\n--- cProfile of a workers=1 first scan, top {top} by {key} ---", file=sys.stderr)
        pstats.Stats(str(stats_path), stream=sys.stderr).sort_stats(key).print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, metavar="DIR",
                    help="phantom cohort folder (generated if absent) or export folder to scan")
    ap.add_argument("--repeats", type=int, default=3, metavar="N", help="repeats of each measurement (3)")
    ap.add_argument("--patients", type=int, default=7, help="patients when generating the phantom (7)")
    ap.add_argument("--seed", type=int, default=3, help="seed when generating the phantom (3)")
    ap.add_argument("--min-files", type=int, default=20000, help="refuse smaller exports (20000)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the catalogs are written (a temporary folder, removed afterwards)")
    ap.add_argument("--no-warm", action="store_true",
                    help="do not read every file once before timing (the page cache is then whatever it is)")
    ap.add_argument("--live-code", action="store_true",
                    help="measure the live `pipeline` package; by default a copy taken at the start is measured, "
                         "so that edits made by others during the run do not mix versions")
    ap.add_argument("--profile", action="store_true",
                    help="also run one untimed workers=1 first scan under cProfile and print its top entries")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON summary here")
    ap.add_argument("--child", choices=("bare", "scan", "rescan"), help=argparse.SUPPRESS)
    ap.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        _child(a.child, a.export, a.catalog, a.workers, a.profile_out)
        return 0

    root = _export_root(a.export.resolve(), a.patients, a.seed)
    paths = _list_files(root)
    if len(paths) < a.min_files:
        raise SystemExit(f"{root} holds {len(paths)} files, fewer than --min-files {a.min_files}: "
                         "generate a bigger phantom (more --patients) into a new folder")
    size_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    cached_before = _page_cache_fraction(paths)
    if not a.no_warm:
        for p in paths:
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass
    cached_after = _page_cache_fraction(paths)
    print(f"{len(paths)} files ({size_mb:.0f} MB) under {root}; in page cache: "
          f"{cached_before} before warm-up, {cached_after} at start", file=sys.stderr)

    script = Path(__file__).resolve()
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in (*KINDS, "rescan")}
    work = Path(tempfile.mkdtemp(prefix="bench_scan_", dir=a.workdir))
    live = _package_dir()
    code: Path | None = None
    if not a.live_code:
        code = work / "code"
        shutil.copytree(live, code / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    sources = _sources(code / "pipeline" if code is not None else live)
    try:
        for rep in range(a.repeats):
            order = KINDS[rep % len(KINDS):] + KINDS[: rep % len(KINDS)]
            for kind in order:
                catalog = work / f"{kind}_{rep}.sqlite" if kind != "bare" else None
                workers = 1 if kind == "scan_w1" else None
                r = _measure(script, "bare" if kind == "bare" else "scan", root, catalog, workers, code)
                runs[kind].append(r)
                print(f"repeat {rep + 1} {kind:8s} {r['elapsed_s']:7.2f} s {r['files_per_s']:7.0f} files/s "
                      f"peak tree RSS {r['peak_tree_rss_mb']:.0f} MB PSS {r['peak_tree_pss_mb']:.0f} MB; "
                      f"CPU {r['our_cpu_s']:.1f} s; others used {r['other_cpu_cores']:.2f} cores, "
                      f"steal {r['steal_cores']:.2f}", file=sys.stderr)
            r = _measure(script, "rescan", root, work / f"scan_{rep}.sqlite", None, code)
            runs["rescan"].append(r)
            print(f"repeat {rep + 1} rescan   {r['elapsed_s']:7.2f} s {r['files_per_s']:7.0f} files/s "
                  f"(unchanged {r['report']['unchanged']})", file=sys.stderr)
        profile_top: str | None = None
        if a.profile:
            stats = work / "scan_w1.prof"
            _measure(script, "scan", root, work / "profiled.sqlite", 1, code, profile=stats)
            _print_profile(stats, 25)
            profile_top = "printed to stderr"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    if code is None and _sources(live) != sources:
        print("WARNING: pipeline/ingest changed while the benchmark ran; the runs measured different code",
              file=sys.stderr)
        sources["changed_during_run"] = "yes"

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    bare_fps = med("bare", "files_per_s")
    scan_s, scan_w1_s, rescan_s = med("scan", "elapsed_s"), med("scan_w1", "elapsed_s"), med("rescan", "elapsed_s")
    peak_rss = max(r["peak_tree_rss_mb"] for r in runs["scan"] + runs["scan_w1"])
    peak_pss = max(r["peak_tree_pss_mb"] for r in runs["scan"] + runs["scan_w1"])
    ratio_default = med("scan", "files_per_s") / bare_fps
    ratio_w1 = med("scan_w1", "files_per_s") / bare_fps
    summary = {
        "export": str(root),
        "files": len(paths),
        "size_mb": round(size_mb),
        "page_cache_fraction_at_start": None if cached_after is None else round(cached_after, 3),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "code": "live package" if code is None else "copy of the package taken at the start",
        "sources_sha256": sources,
        "repeats": a.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "tags_read": runs["bare"][0]["tags"],
        "report_first_scan": runs["scan"][0]["report"],
        "median_s": {k: round(med(k, "elapsed_s"), 3) for k in runs},
        "all_s": {k: [round(r["elapsed_s"], 3) for r in v] for k, v in runs.items()},
        "other_processes_cpu_cores_per_run": {k: [round(r["other_cpu_cores"], 2) for r in v]
                                              for k, v in runs.items()},
        "cpu_s_per_run": {k: [round(r["our_cpu_s"], 1) for r in v] for k, v in runs.items()},
        "median_files_per_s": {k: round(med(k, "files_per_s")) for k in runs},
        "ratio_scan_vs_bare_default_workers": round(ratio_default, 3),
        "ratio_scan_vs_bare_workers1": round(ratio_w1, 3),
        "paired_ratios_scan_vs_bare_per_repeat": {
            k: [round(r["files_per_s"] / b["files_per_s"], 3) for r, b in zip(runs[k], runs["bare"], strict=True)]
            for k in ("scan", "scan_w1")},
        "ratio_first_scan_vs_rescan_default_workers": round(scan_s / rescan_s, 1),
        "ratio_first_scan_vs_rescan_workers1": round(scan_w1_s / rescan_s, 1),
        "peak_tree_rss_mb": {k: round(max(r["peak_tree_rss_mb"] for r in runs[k])) for k in runs},
        "peak_tree_pss_mb": {k: round(max(r["peak_tree_pss_mb"] for r in runs[k])) for k in runs},
        "peak_rss_scanning_process_mb": {k: round(max(r["peak_rss_self_mb"] for r in runs[k])) for k in runs},
        "ru_maxrss_largest_worker_mb": {k: round(max(r["ru_maxrss_children_mb"] for r in runs[k]))
                                        for k in ("scan", "scan_w1")},
        "targets": {
            f"scan_vs_bare>={TARGET_SCAN_VS_BARE}x (workers=1 / default)": [ratio_w1 >= TARGET_SCAN_VS_BARE,
                                                                           ratio_default >= TARGET_SCAN_VS_BARE],
            f"first_scan_vs_rescan>={TARGET_FIRST_VS_RESCAN:g}x (workers=1 / default)": [
                scan_w1_s / rescan_s >= TARGET_FIRST_VS_RESCAN, scan_s / rescan_s >= TARGET_FIRST_VS_RESCAN],
            f"peak_memory<{TARGET_PEAK_MB:g}MB (tree PSS / tree RSS)": [peak_pss < TARGET_PEAK_MB,
                                                                   peak_rss < TARGET_PEAK_MB],
        },
    }
    if profile_top:
        summary["profile"] = profile_top
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json_out is not None:
        a.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
