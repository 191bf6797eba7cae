"""Issue 7's outputs (overlays, timeline, DICOM SEG / SR, report.html, provenance.json): what they cost.

Usage:
    python benchmarks/bench_outputs.py --repeats 5 --breakdown-repeats 3 --out /tmp/bench_outputs/results.json

1. End to end: ``crav run --input sample_dicom --output <fresh folder> --quiet-period 0`` with the
   code before issue 7 (``--before-commit``, default ``6d6ad9c``, checked out with ``git worktree
   add`` into ``--before-tree`` when that folder does not exist, removed again at the end) and with
   the code now: ``--now-commit`` (default ``HEAD``) checked out the same way into ``--now-tree``,
   because other sessions may edit this checkout while the benchmark runs (``--now-commit
   working-tree``: this checkout as it is). Both use this virtual environment; each child gets
   ``PYTHONPATH=<its tree>`` (checked first: ``import pipeline, flows`` in each environment must
   resolve to that tree). Both trees are byte-compiled first. ``--repeats`` pairs, the order
   alternating (before, now / now, before), each run in a fresh process with a fresh
   ``PREFECT_HOME`` and a fresh output folder; medians of the wall and CPU time, the ratio
   now / before, and the size of the output folder (total, and each file kind issue 7 added).
2. Import cost: in ``--breakdown-repeats`` fresh processes (``now`` code), the time to import
   the output modules issue 7 added (``overlay_png``, ``dicom_seg``, ``dicom_sr``, ``report``,
   ``provenance``: highdicom, matplotlib and jinja2 come with them) after the libraries the
   code already used before (numpy, scipy, SimpleITK, pydicom, Prefect).
3. Breakdown, in ONE process with the ``now`` code, on one patient (``--patient``, default
   CRAV-20211002: 2 lesions x 6 visits): the catalog of a ``now`` run of step 1 (or of one
   ``crav run`` made for it) gives the ``PatientIndex``; ``flows.patient.process_patient`` then
   runs ``--warmup`` untimed times and ``--breakdown-repeats`` timed times, each into a fresh
   output folder, with the writers as imported into ``flows.patient_outputs`` replaced by timing
   wrappers: ``write_visit_overlay``, ``write_timeline``, ``write_seg``, ``write_sr``,
   ``write_report``, ``write_provenance`` (what was asked), plus, for context, the glue around
   them (``_write_overlay``, ``_write_dicom`` = masks resampled onto the T1 + SEG + SR, or
   ``_write_seg`` = masks resampled + SEG in code that has it instead, ``build_provenance``,
   the report's matplotlib plot), the writers that existed before (NIfTI masks, transforms) and
   the two callers (``write_lesion``, ``write_patient_documents``); a name the code lacks is left
   out. Each writer's total per patient and its share of the patient's wall time (medians).

Every measurement records the load average and the CPU other processes used meanwhile (cores),
as ``bench_flows.py`` does (its helpers are reused). Prints markdown tables; ``--out`` writes every
raw number as JSON; ``--report FILE`` prints the tables of such a file again.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_flows import _json_line, _machine_busy_s, _median, _mem_total_gib, run_sampled

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
MB = 1024 * 1024

#: file kinds issue 7 added (file name -> what it is)
NEW_KINDS: dict[str, str] = {
    "overlay.png": "overlay PNG (lesion x visit)",
    "overlay.json": "overlay geometry sidecar",
    "timeline.png": "timeline montage (lesion)",
    "timeline.json": "timeline geometry sidecar",
    "seg.dcm": "DICOM SEG (lesion x visit)",
    "sr.dcm": "DICOM SR TID 1500 (lesion x visit)",
    "report.html": "report.html (patient)",
    "provenance.json": "provenance.json (patient)",
}

#: (key, module, attribute, label, requested): the functions timed in the breakdown
WRAPPED: list[tuple[str, str, str, str, bool]] = [
    ("write_visit_overlay", "flows.patient_outputs", "write_visit_overlay", "overlay PNG + sidecar, per visit", True),
    ("write_timeline", "flows.patient_outputs", "write_timeline", "timeline montage, per lesion", True),
    ("write_seg", "flows.patient_outputs", "write_seg", "DICOM SEG, per visit", True),
    ("write_sr", "flows.patient_outputs", "write_sr", "DICOM SR, per visit", True),
    ("write_report", "flows.patient_outputs", "write_report", "report.html, per patient", True),
    ("write_provenance", "flows.patient_outputs", "write_provenance", "provenance.json, per patient", True),
    ("_write_overlay", "flows.patient_outputs", "_write_overlay", "overlay incl. body centroid", False),
    ("_write_timeline", "flows.patient_outputs", "_write_timeline", "timeline incl. J0 centroid", False),
    ("_write_dicom", "flows.patient_outputs", "_write_dicom", "SEG + SR incl. masks resampled onto T1", False),
    ("_write_seg", "flows.patient_outputs", "_write_seg", "SEG incl. masks resampled onto T1", False),
    ("build_provenance", "flows.patient_outputs", "build_provenance", "provenance record built", False),
    ("timeline_plot_png", "pipeline.outputs.report", "timeline_plot_png", "report's matplotlib plot (in report)",
     False),
    ("write_mask_nifti", "flows.patient_outputs", "write_mask_nifti", "NIfTI masks (existed before)", False),
    ("write_transform", "flows.patient_outputs", "write_transform", "transforms (existed before)", False),
    ("write_lesion", "flows.patient", "write_lesion", "write_lesion (all of a lesion's files + verdict)", False),
    ("write_patient_documents", "flows.patient", "write_patient_documents",
     "write_patient_documents (provenance + report)", False),
]
REQUESTED = [k for k, *_rest, req in WRAPPED if req]


# --------------------------------------------------------------------------- environment of the children


def tree_env(tree: Path, home: Path) -> dict[str, str]:
    """The caller's environment without PREFECT_*, with its own PREFECT_HOME and the code of ``tree`` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    env["PYTHONPATH"] = str(tree)
    return env


def check_tree(tree: Path, scratch: Path) -> dict[str, str]:
    """Where ``pipeline`` and ``flows`` come from in a child with ``tree``'s environment (must be ``tree``)."""
    r = subprocess.run([sys.executable, "-c", "import json, pipeline, flows; print(json.dumps("
                        "{'pipeline': pipeline.__file__, 'flows': flows.__file__}))"],
                       env=tree_env(tree, scratch / "home_check"), cwd=scratch, capture_output=True, text=True,
                       check=True)
    where: dict[str, str] = json.loads(r.stdout)
    for name, path in where.items():
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{name} imports from {path}, not from {tree}")
    return where


def git_rev(tree: Path) -> str:
    r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip()


def git_dirty(tree: Path) -> list[str]:
    r = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True)
    return r.stdout.splitlines()


# --------------------------------------------------------------------------- step 1: end to end


def output_sizes(out: Path) -> dict[str, Any]:
    """Bytes and file counts of an output folder: total, each new kind, the catalog."""
    kinds: dict[str, dict[str, int]] = {k: {"files": 0, "bytes": 0} for k in NEW_KINDS}
    total = n = 0
    catalog = 0
    for path in out.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        size = path.stat().st_size
        total += size
        n += 1
        if path.name in kinds:
            kinds[path.name]["files"] += 1
            kinds[path.name]["bytes"] += size
        elif path.name.startswith("catalog.sqlite"):
            catalog += size
    return {"total_bytes": total, "files": n, "catalog_bytes": catalog, "kinds": kinds}


def crav_run(variant: str, tree: Path, input_dir: Path, out: Path, scratch: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"prefect_home_{variant}_", dir=scratch))
    crav = Path(sys.executable).with_name("crav")
    r = run_sampled([str(crav), "run", "--input", str(input_dir), "--output", str(out), "--quiet-period", "0"],
                    tree_env(tree, home), cwd=scratch)
    r.pop("stdout")
    r["variant"] = variant
    if r["rc"] not in (0, 1):  # 1: finished, something needs a look (the sample's quarantined file)
        raise SystemExit(f"crav run ({variant}) failed, rc {r['rc']}: {r['stderr'][-3000:]}")
    r["sizes"] = output_sizes(out)
    r["lesions_csv"] = (out / "lesions.csv").read_text() if (out / "lesions.csv").is_file() else ""
    shutil.rmtree(home, ignore_errors=True)
    return r


def bench_e2e(before: Path, now: Path, input_dir: Path, repeats: int, scratch: Path,
              keep_for_catalog: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    trees = {"before": before, "now": now}
    for rep in range(repeats):
        order = ("before", "now") if rep % 2 == 0 else ("now", "before")
        for variant in order:
            out = scratch / f"out_{rep}_{variant}"
            r = crav_run(variant, trees[variant], input_dir, out, scratch)
            r["rep"] = rep
            runs.append(r)
            s = r["sizes"]
            print(f"  rep {rep} {variant:6}: {r['wall_s']:6.1f} s wall, {r['cpu_s']:6.1f} s CPU, rc {r['rc']}, "
                  f"{s['total_bytes'] / MB:5.1f} MB in {s['files']} files, load {r['load_before']:.2f}, "
                  f"others {r['others_cores']:.2f} cores", flush=True)
            if variant == "now" and not keep_for_catalog.exists():
                shutil.copytree(out, keep_for_catalog)
            shutil.rmtree(out, ignore_errors=True)
    return {"runs": runs}


# --------------------------------------------------------------------------- step 2: imports (child)


def child_imports() -> None:
    """Import what the code used before issue 7, then the new output modules; print the timings as JSON."""
    t0 = time.perf_counter()
    for name in ("numpy", "scipy.ndimage", "scipy.stats", "SimpleITK", "pydicom", "prefect",
                 "pipeline.ingest.catalog", "pipeline.segmentation.registration", "pipeline.response",
                 "pipeline.outputs.nifti", "pipeline.outputs.tables", "pipeline.outputs.transforms"):
        importlib.import_module(name)
    t1 = time.perf_counter()
    for name in ("pipeline.outputs.overlay_png", "pipeline.outputs.dicom_seg", "pipeline.outputs.dicom_sr",
                 "pipeline.outputs.report", "pipeline.outputs.provenance"):
        importlib.import_module(name)
    t2 = time.perf_counter()
    print(json.dumps({"old_libraries_s": t1 - t0, "new_output_modules_s": t2 - t1}), flush=True)


# --------------------------------------------------------------------------- step 3: breakdown (child)


def child_breakdown(input_dir: Path, catalog: Path, patient: str, work: Path, repeats: int, warmup: int) -> None:
    """Time process_patient and each wrapped writer in this process; print JSON."""
    importlib.import_module("flows.crav_flow")  # first: its hermetic Prefect environment, as crav run
    from flows.patient import process_patient
    from pipeline.ingest.catalog import Catalog
    from pipeline.ingest.registry import read_registry
    from pipeline.settings import load_settings

    settings = load_settings(None, {"quiet_period_s": 0})
    with Catalog.open(f"sqlite:///{catalog.resolve()}", read_only=True) as cat:
        index = cat.patient_index(patient)
    lesions = [les for les in read_registry(input_dir / "treatments.csv").lesions if les.patient_id == patient]
    if not lesions or not index.series:
        raise SystemExit(f"nothing to analyse for {patient}: {len(index.series)} series, {len(lesions)} lesions")

    current: dict[str, list[float]] = {}

    def wrap(key: str, module_name: str, attr: str) -> bool:
        module = importlib.import_module(module_name)
        orig: Callable[..., Any] | None = getattr(module, attr, None)
        if orig is None:
            return False

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                current.setdefault(key, []).append(time.perf_counter() - t)

        setattr(module, attr, timed)
        return True

    missing = [key for key, module_name, attr, _label, _req in WRAPPED if not wrap(key, module_name, attr)]
    if any(req and key in missing for key, *_rest, req in WRAPPED):
        raise SystemExit(f"the code lacks some of the writers asked for: {missing}")

    runs: list[dict[str, Any]] = []
    for i in range(warmup + repeats):
        timed_run = i >= warmup
        out = work / f"out_{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        current.clear()
        busy0, cpu0, load0 = _machine_busy_s(), time.process_time(), os.getloadavg()[0]
        t0 = time.perf_counter()
        outcome = process_patient(index, lesions, out, settings)
        wall = time.perf_counter() - t0
        own = time.process_time() - cpu0
        others = max(_machine_busy_s() - busy0 - own, 0.0) / wall
        writers = {k: {"calls": len(v), "total_s": sum(v)} for k, v in current.items()}
        runs.append({"timed": timed_run, "wall_s": wall, "cpu_s": own, "others_cores": others, "load_before": load0,
                     "load_after": os.getloadavg()[0], "writers": writers,
                     "outcomes": [[r.lesion.lesion_id, r.outcome.value] for r in outcome.results],
                     "problems": list(outcome.problems), "measurements": len(outcome.measurements)})
        new = sum(writers.get(k, {}).get("total_s", 0.0) for k in REQUESTED)
        print(f"  {'' if timed_run else '(warm-up) '}process_patient {wall:6.2f} s, cpu {own:6.1f} s, new writers "
              f"{new:5.2f} s ({new / wall:.1%}), others {others:.2f} cores", file=sys.stderr, flush=True)
        shutil.rmtree(out, ignore_errors=True)
    import pipeline

    print(json.dumps({"patient": patient, "n_lesions": len(lesions), "n_series": len(index.series),
                      "not_in_this_code": missing, "pipeline_file": pipeline.__file__, "runs": runs}), flush=True)


# --------------------------------------------------------------------------- orchestration


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--input", type=Path, default=ROOT / "sample_dicom", help="export folder (default sample_dicom)")
    ap.add_argument("--before-commit", default="6d6ad9c", help="the last commit before issue 7")
    ap.add_argument("--before-tree", type=Path, default=Path("/tmp/wt_before"),
                    help="a checkout of --before-commit; created with git worktree add (and removed) when missing")
    ap.add_argument("--now-commit", default="HEAD",
                    help="the code measured as 'now' (default HEAD); 'working-tree': this checkout as it is")
    ap.add_argument("--now-tree", type=Path, default=Path("/tmp/bench_outputs_wt_now"),
                    help="a checkout of --now-commit; created with git worktree add (and removed) when missing")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_outputs"), help="scratch folder")
    ap.add_argument("--repeats", type=int, default=5, help="end-to-end pairs before/now (default 5)")
    ap.add_argument("--breakdown-repeats", type=int, default=3, help="timed process_patient calls (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed process_patient calls first (default 1)")
    ap.add_argument("--patient", default="CRAV-20211002", help="PatientID of the breakdown")
    ap.add_argument("--skip", nargs="*", default=[], choices=["e2e", "imports", "breakdown"], help="steps left out")
    ap.add_argument("--out", type=Path, help="write the raw numbers here (JSON)")
    ap.add_argument("--report", type=Path, help="only print the tables of this --out file and exit")
    ap.add_argument("--child", choices=["breakdown", "imports"], help=argparse.SUPPRESS)
    ap.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.report:
        report(json.loads(a.report.read_text()))
        return 0
    if a.child == "imports":
        child_imports()
        return 0
    if a.child == "breakdown":
        child_breakdown(a.input.resolve(), a.catalog, a.patient, a.work, a.breakdown_repeats, a.warmup)
        return 0

    from importlib.metadata import version

    input_dir: Path = a.input.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run_", dir=a.work))
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(), "mem_gib": _mem_total_gib(),
        "python": platform.python_version(), "prefect": version("prefect"), "argv": sys.argv,
        "load_start": os.getloadavg(), "input": str(input_dir),
    }
    before: Path = a.before_tree.resolve()
    now: Path = ROOT if a.now_commit == "working-tree" else a.now_tree.resolve()
    made_trees: list[Path] = []
    try:
        for tree, commit, needed in ((before, a.before_commit, "e2e" not in a.skip), (now, a.now_commit, True)):
            if needed and tree != ROOT and not tree.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
                made_trees.append(tree)
        res["now"] = {"tree": str(now), "commit": git_rev(now), "uncommitted": git_dirty(now),
                      "where": check_tree(now, scratch)}
        if "e2e" not in a.skip:
            res["before"] = {"tree": str(before), "commit": git_rev(before), "where": check_tree(before, scratch)}
            print(f"before: {res['before']['commit']} at {before}; now: {res['now']['commit']} at {now} "
                  f"({len(res['now']['uncommitted'])} uncommitted changes)", flush=True)
            for tree in (before, now):  # byte-compiled before timing, so no run pays for it
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "pipeline"), str(tree / "flows")],
                               check=False, capture_output=True)
            print(f"\n## crav run, {a.repeats} pairs before / now, alternating", flush=True)
            res["e2e"] = bench_e2e(before, now, input_dir, a.repeats, scratch, scratch / "catalog_run")

        if "imports" not in a.skip:
            print("\n## import of the new output modules, fresh processes", flush=True)
            rows = []
            for _ in range(a.breakdown_repeats):
                r = run_sampled([sys.executable, str(SCRIPT), "--child", "imports"],
                                tree_env(now, scratch / "home_imports"), cwd=ROOT)
                if r["rc"] != 0:
                    print(r["stderr"][-2000:])
                    return 1
                row = {**_json_line(r["stdout"]), "others_cores": r["others_cores"], "load_before": r["load_before"]}
                rows.append(row)
                print(f"  old libraries {row['old_libraries_s']:.2f} s, new output modules "
                      f"{row['new_output_modules_s']:.2f} s", flush=True)
            res["imports"] = rows

        if "breakdown" not in a.skip:
            catalog_run = scratch / "catalog_run"
            if not (catalog_run / "catalog.sqlite").is_file():
                print("\n## crav run once (now) for the catalog", flush=True)
                crav_run("now", now, input_dir, catalog_run, scratch)
            print(f"\n## breakdown: process_patient({a.patient}), {a.warmup} warm-up + {a.breakdown_repeats} timed",
                  flush=True)
            home = Path(tempfile.mkdtemp(prefix="prefect_home_bd_", dir=scratch))
            r = run_sampled([sys.executable, str(SCRIPT), "--child", "breakdown", "--input", str(input_dir),
                             "--catalog", str(catalog_run / "catalog.sqlite"), "--patient", a.patient,
                             "--work", str(scratch / "breakdown"), "--breakdown-repeats", str(a.breakdown_repeats),
                             "--warmup", str(a.warmup)], tree_env(now, home), cwd=ROOT)
            print(r["stderr"][-3000:], flush=True)
            if r["rc"] != 0:
                print("breakdown failed")
                return 1
            res["breakdown"] = {**_json_line(r["stdout"]), "process_wall_s": r["wall_s"],
                                "process_others_cores": r["others_cores"],
                                "process_peak_tree_rss_mb": r["peak_tree_rss_mb"]}
    finally:
        for tree in made_trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)

    res["load_end"] = os.getloadavg()
    report(res)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(f"\nraw numbers: {a.out}")
    return 0


# --------------------------------------------------------------------------- report


def _span(xs: list[float], fmt: str = "{:.1f}") -> str:
    return f"[{fmt.format(min(xs))}, {fmt.format(max(xs))}]" if xs else ""


def report(res: dict[str, Any]) -> None:
    print(f"\n# Results ({res['date']}; {res['nproc']} cores, {res['mem_gib']:.1f} GiB, Python {res['python']}, "
          f"Prefect {res['prefect']}; load average at start {res['load_start'][0]:.2f}, at end "
          f"{res.get('load_end', [float('nan')])[0]:.2f})\n")
    if "e2e" in res:
        runs = res["e2e"]["runs"]
        by = {v: [r for r in runs if r["variant"] == v] for v in ("before", "now")}
        med = {v: _median([r["wall_s"] for r in rs]) for v, rs in by.items()}
        cpu = {v: _median([r["cpu_s"] for r in rs]) for v, rs in by.items()}
        pair_ratios = []
        for rep in sorted({r["rep"] for r in runs}):
            w = {r["variant"]: r["wall_s"] for r in runs if r["rep"] == rep}
            if {"before", "now"} <= set(w):
                pair_ratios.append(w["now"] / w["before"])
        print(f"### `crav run --input {Path(res['input']).name} --quiet-period 0`, fresh output, "
              f"{len(by['now'])} pairs alternating (before = {res['before']['commit']}, now = "
              f"{res['now']['commit']}{' + uncommitted changes' if res['now'].get('uncommitted') else ''})\n")
        print("| code | wall, median | [min, max] | CPU (process tree), median | peak RSS, tree | output size | files "
              "| load avg (1 min) at start | others (cores) | exit codes |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for v, rs in by.items():
            sizes = [r["sizes"]["total_bytes"] / MB for r in rs]
            print(f"| {v} | {med[v]:.1f} s | {_span([r['wall_s'] for r in rs])} | {cpu[v]:.1f} s | "
                  f"{_median([r['peak_tree_rss_mb'] for r in rs]):.0f} MB | {_median(sizes):.1f} MB | "
                  f"{rs[-1]['sizes']['files']} | {_median([r['load_before'] for r in rs]):.2f} "
                  f"{_span([r['load_before'] for r in rs], '{:.2f}')} | "
                  f"{_median([r['others_cores'] for r in rs]):.2f} {_span([r['others_cores'] for r in rs], '{:.2f}')}"
                  f" | {sorted({r['rc'] for r in rs})} |")
        same = len({r["lesions_csv"] for r in runs}) == 1
        print(f"\nnow / before: wall **{med['now'] / med['before']:.2f}** (+{med['now'] - med['before']:.1f} s; "
              f"median of the per-pair ratios {_median(pair_ratios):.2f} {_span(pair_ratios, '{:.2f}')}), CPU "
              f"{cpu['now'] / cpu['before']:.2f} (+{cpu['now'] - cpu['before']:.1f} s). lesions.csv identical in "
              f"every run: {'yes' if same else 'NO'}.\n")
        last = by["now"][-1]["sizes"]
        before_total = by["before"][-1]["sizes"]["total_bytes"]
        new_total = sum(k["bytes"] for k in last["kinds"].values())
        print("| file kind (new in issue 7) | files | size | per file | share of the output |")
        print("|---|---|---|---|---|")
        for name, label in NEW_KINDS.items():
            k = last["kinds"][name]
            per = k["bytes"] / k["files"] / 1024 if k["files"] else float("nan")
            print(f"| `{name}`: {label} | {k['files']} | {k['bytes'] / MB:.2f} MB | {per:.0f} KiB | "
                  f"{k['bytes'] / last['total_bytes']:.1%} |")
        print(f"| **all new kinds** | {sum(k['files'] for k in last['kinds'].values())} | **{new_total / MB:.2f} MB** "
              f"| | {new_total / last['total_bytes']:.1%} |")
        print(f"| whole output folder, now (catalog.sqlite {last['catalog_bytes'] / MB:.2f} MB of it) | "
              f"{last['files']} | {last['total_bytes'] / MB:.2f} MB | | |")
        print(f"| whole output folder, before | {by['before'][-1]['sizes']['files']} | {before_total / MB:.2f} MB "
              f"| | |")
        print()
    if "imports" in res:
        rows = res["imports"]
        print(f"Import of the new output modules (highdicom, matplotlib, jinja2 with them) after the libraries used "
              f"before, fresh process, median of {len(rows)}: "
              f"{_median([r['new_output_modules_s'] for r in rows]):.2f} s "
              f"{_span([r['new_output_modules_s'] for r in rows], '{:.2f}')} (the libraries used before: "
              f"{_median([r['old_libraries_s'] for r in rows]):.2f} s); others "
              f"{_median([r['others_cores'] for r in rows]):.2f} cores.\n")
    if "breakdown" in res:
        bd = res["breakdown"]
        timed = [r for r in bd["runs"] if r["timed"]]
        warm = [r for r in bd["runs"] if not r["timed"]]
        wall = _median([r["wall_s"] for r in timed])

        def tot(r: dict[str, Any], key: str) -> float:
            return float(r["writers"].get(key, {}).get("total_s", 0.0))

        print(f"### Breakdown: `process_patient` of {bd['patient']} ({bd['n_lesions']} lesions, "
              f"{timed[0]['measurements'] if timed else '?'} lesion-visits), one process, code "
              f"{res['now']['commit']}; "
              f"medians of {len(timed)} after {len(warm)} warm-up\n")
        print(f"Patient wall {wall:.2f} s {_span([r['wall_s'] for r in timed], '{:.2f}')}, CPU "
              f"{_median([r['cpu_s'] for r in timed]):.1f} s, load average at start "
              f"{_median([r['load_before'] for r in timed]):.2f}, others "
              f"{_median([r['others_cores'] for r in timed]):.2f} cores "
              f"{_span([r['others_cores'] for r in timed], '{:.2f}')}; warm-up (first call in the process) "
              f"{_median([r['wall_s'] for r in warm]):.2f} s.\n")
        print("| function (as called from flows.patient_outputs) | calls | total, median | [min, max] | per call "
              "| share of patient wall | first call in the process (warm-up total) |")
        print("|---|---|---|---|---|---|---|")
        absent = set(bd.get("not_in_this_code", []))
        for key, _mod, _attr, label, req in WRAPPED:
            if key in absent:
                continue
            ts = [tot(r, key) for r in timed]
            calls = timed[0]["writers"].get(key, {}).get("calls", 0) if timed else 0
            med_t = _median(ts)
            per = med_t / calls if calls else float("nan")
            wu = _median([tot(r, key) for r in warm]) if warm else float("nan")
            name = f"`{key}`: {label}"
            if req:
                name = f"**{name}**"
            print(f"| {name} | {calls} | {med_t:.2f} s | {_span(ts, '{:.2f}')} | {per * 1000:.0f} ms | "
                  f"{med_t / wall:.1%} | {wu:.2f} s |")
            if key == "write_provenance":
                shares = [sum(tot(r, k) for k in REQUESTED) for r in timed]
                print(f"| **the six writers asked for, together** | | **{_median(shares):.2f} s** | "
                      f"{_span(shares, '{:.2f}')} | | **{_median(shares) / wall:.1%}** | "
                      f"{_median([sum(tot(r, k) for k in REQUESTED) for r in warm]) if warm else float('nan'):.2f} s"
                      f" |")
        dicom = ("_write_dicom",) if "_write_dicom" not in absent else ("_write_seg", "write_sr")
        glue = [tot(r, "_write_overlay") + tot(r, "_write_timeline") + sum(tot(r, k) for k in dicom)
                + tot(r, "write_patient_documents") for r in timed]
        rest = [r["wall_s"] - tot(r, "write_lesion") - tot(r, "write_patient_documents") for r in timed]
        print(f"| all new outputs incl. glue (`_write_overlay` + `_write_timeline` + "
              f"{' + '.join(f'`{k}`' for k in dicom)} + `write_patient_documents`) | | "
              f"{_median(glue):.2f} s | {_span(glue, '{:.2f}')} | | "
              f"{_median(glue) / wall:.1%} | |")
        print(f"| the rest: reading, analysis, classification (wall - write_lesion - write_patient_documents) | | "
              f"{_median(rest):.2f} s | {_span(rest, '{:.2f}')} | | {_median(rest) / wall:.1%} | |")
        sig = {json.dumps(r["outcomes"]) for r in bd["runs"]}
        probs = {p for r in bd["runs"] for p in r["problems"]}
        verdicts = timed[0]["outcomes"] if timed else ""
        print(f"\nSame verdicts in every call: {'yes' if len(sig) == 1 else 'NO'} ({verdicts})"
              f"; problems: {sorted(probs) if probs else 'none'}. Child process peak tree RSS "
              f"{bd['process_peak_tree_rss_mb']:.0f} MB.\n")


if __name__ == "__main__":
    raise SystemExit(main())
