"""``crav``: argument parsing and nothing else.

Exit codes: 0 everything went well; 1 the command finished but something needs a look
(a quarantined file, an indeterminate lesion...); 2 usage error (bad option, missing input).
Expected errors print one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Imaging follow-up of spinal tumours treated by radiofrequency ablation and vertebroplasty
(CRAV): reads a PACS export folder, assigns each study to a visit, segments cement, treated
vertebra, ablation zone and residual enhancing tissue, measures them and classifies each
treated lesion (local control / local failure / indeterminate). See README.md.

Exit codes: 0 all went well; 1 finished, but something needs a look (a quarantined file,
an indeterminate lesion); 2 usage error (bad option, missing input)."""


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


# ---------------------------------------------------------------- helpers

def _existing_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{what} {path} is not a folder")
    return path


def _existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    return path


def _import(module: str, command: str) -> ModuleType:
    """Import a pipeline module lazily (keeps ``crav --help`` fast and free of Prefect)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"'crav {command}' is not available: module {module} is not installed") from exc
        raise


def _check_settings(path: Path | None) -> None:
    """Load the settings file now so a typo is a clean usage error, not a failure mid-run."""
    if path is None:
        return
    _existing_file(path, "settings file")
    from pipeline.settings import load_settings

    try:
        load_settings(path)
    except (ValueError, TypeError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise UsageError(f"settings file {path}: {exc}") from exc


def _check_reads(path: Path | None) -> None:
    """Read a reference read now so a bad row is a clean usage error before a long run."""
    if path is None:
        return
    _existing_file(path, "reads file")
    from pipeline.evaluate import read_reference_reads

    try:
        read_reference_reads(path)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _is_within(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


# ---------------------------------------------------------------- commands

def _cmd_phantom(args: argparse.Namespace) -> int:
    if args.sample and (args.patients is not None or args.seed is not None):
        raise UsageError("--sample takes neither --patients nor --seed")
    if not args.sample and (args.patients is None or args.seed is None):
        raise UsageError("give either --sample, or both --patients N and --seed S")
    generate = _import("pipeline.phantom.generate", "phantom")
    out: Path = args.out
    if args.sample:
        generate.generate_sample(out)
    else:
        generate.generate_cohort(out, args.patients, args.seed, resolution=args.resolution)
    print(f"phantom cohort written to {out} (DICOM export, treatments.csv, truth.json, truth/)")
    return EXIT_OK


def _cmd_scan(args: argparse.Namespace) -> int:
    input_dir: Path = _existing_dir(args.input, "input folder")
    _check_settings(args.settings)
    scan = _import("pipeline.ingest.scan", "scan")
    catalog_mod = _import("pipeline.ingest.catalog", "scan")
    from pipeline.ingest.registry import read_registry
    from pipeline.outputs.scan_report import format_scan_report
    from pipeline.progress import ProgressBar
    from pipeline.settings import load_settings

    overrides = {"quiet_period_s": args.quiet_period} if args.quiet_period is not None else None
    settings = load_settings(args.settings, overrides)
    registry: Path | None = args.registry
    if registry is not None:
        _existing_file(registry, "registry")
    elif (input_dir / "treatments.csv").is_file():
        registry = input_dir / "treatments.csv"
    lesions = []
    if registry is not None:
        reg = read_registry(registry)
        lesions = reg.lesions
        for problem in reg.problems:
            print(f"{registry.name} line {problem.line}: {problem.reason}", file=sys.stderr)
    try:
        catalog = catalog_mod.Catalog.open(args.catalog)
    except ValueError as exc:  # not a SQLite URL
        raise UsageError(f"--catalog {args.catalog}: {exc}") from exc
    try:
        report = scan.scan_export(input_dir, catalog, quiet_period_s=settings.quiet_period_s,
                                  progress=ProgressBar("reading headers"), workers=settings.max_workers)
        counts = ("new", "changed", "unchanged", "deleted")
        print(f"scanned {input_dir}: " + ", ".join(f"{getattr(report, k, 0)} {k}" for k in counts))
        for folder in getattr(report, "unlisted_folders", []):
            print(f"folder could not be listed (permissions?), its files were kept as they were: {folder}",
                  file=sys.stderr)
        print(format_scan_report(catalog, lesions, root=input_dir))
    finally:
        catalog.close()
    quarantined = getattr(report, "quarantined", 0)
    if quarantined:
        where = "in the catalog" if args.catalog != ":memory:" else "above"
        print(f"{quarantined} file(s) quarantined; their reasons are {where}", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def _check_run_folders(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """The input, output and registry of ``crav run`` / ``crav serve``, checked before any work starts."""
    input_dir: Path = _existing_dir(args.input, "input folder")
    output_dir: Path = args.output
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output {output_dir} exists and is not a folder")
    if _is_within(output_dir, input_dir):
        raise UsageError(f"output folder {output_dir} must not be inside the input folder {input_dir} "
                         "(its DICOM SEG/SR files would be read back as input)")
    registry: Path | None = args.registry
    if registry is not None:
        _existing_file(registry, "registry")
    elif not (input_dir / "treatments.csv").is_file():
        raise UsageError(f"no treatments.csv at the root of {input_dir}; "
                         "give the registry with --registry FILE")
    _check_settings(args.settings)
    return input_dir, output_dir, registry


def _cmd_run(args: argparse.Namespace) -> int:
    input_dir, output_dir, registry = _check_run_folders(args)
    _check_reads(args.reads)
    crav_flow = _import("flows.crav_flow", "run")
    from pipeline.outputs.lock import OutputLockedError

    try:
        code = crav_flow.run_export(
            input_dir=input_dir,
            output_dir=output_dir,
            registry=registry,
            patients=args.patient or None,
            force=args.force,
            settings_path=args.settings,
            overrides={"quiet_period_s": args.quiet_period} if args.quiet_period is not None else None,
            reads=args.reads,
            dask_address=args.dask_address,
        )
    except OutputLockedError as exc:
        raise UsageError(str(exc)) from exc
    _print_run_summary(output_dir)
    return int(code)


def _cmd_serve(args: argparse.Namespace) -> int:
    input_dir, output_dir, registry = _check_run_folders(args)
    serve_mod = _import("flows.serve", "serve")
    try:
        serve_mod.serve_export(
            input_dir=input_dir.resolve(), output_dir=output_dir.resolve(),
            registry=registry.resolve() if registry else None,
            interval_s=args.interval, cron=args.cron, name=args.name,
            settings_path=args.settings.resolve() if args.settings else None,
            quiet_period_s=args.quiet_period, dask_address=args.dask_address)
    except serve_mod.ServeError as exc:
        raise UsageError(str(exc)) from exc
    return EXIT_OK


def _print_run_summary(output_dir: Path) -> None:
    """A few lines for a person: verdicts, what became of the input files, problems met."""
    import csv
    import json
    from collections import Counter

    lesions_csv, files_csv, run_json = (output_dir / n for n in ("lesions.csv", "files.csv", "run.json"))
    if lesions_csv.is_file():
        with lesions_csv.open(newline="", encoding="utf-8") as fh:
            outcomes = Counter(r["outcome"] for r in csv.DictReader(fh))
        print(f"{sum(outcomes.values())} lesion(s): " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
    if files_csv.is_file():
        with files_csv.open(newline="", encoding="utf-8") as fh:
            status = Counter(r["status"] for r in csv.DictReader(fh))
        print(f"{sum(status.values())} input file(s): " + ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
              + f" (each with its reason in {files_csv})")
    if run_json.is_file():
        problems = json.loads(run_json.read_text(encoding="utf-8")).get("problems", [])
        for line in problems[:10]:
            print(f"problem: {line}")
        if len(problems) > 10:
            print(f"... and {len(problems) - 10} more problem(s) in {run_json}")
    print(f"results in {output_dir}")


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.outputs.status import format_status, read_status

    output_dir: Path = _existing_dir(args.output, "output folder")
    try:
        status = read_status(output_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    print(format_status(status))
    return EXIT_PROBLEMS if status.needs_a_look else EXIT_OK


def _cmd_qa(args: argparse.Namespace) -> int:
    output_dir: Path = _existing_dir(args.output, "output folder")
    for name in ("lesions.csv", "catalog.sqlite"):
        if not (output_dir / name).is_file():
            raise UsageError(f"{output_dir} holds no {name}: give the output folder of a crav run")
    server = _import("pipeline.review.server", "qa")
    try:
        server.serve(output_dir.resolve(), host=args.host, port=args.port, token=args.token,
                     reviewer=args.reviewer or "")
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}): "
                         "give another --port") from exc
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    results: Path | None = args.results
    if args.results_dir is not None:
        if results is not None and results != args.results_dir:
            raise UsageError(f"two results folders given ({results} and {args.results_dir}); give one")
        results = args.results_dir
    if results is None:
        raise UsageError("no results folder: crav evaluate --truth FILE RESULTS_DIR, "
                         "or crav evaluate --reads FILE RESULTS_DIR (or --results DIR)")
    if args.reads is not None:
        return _evaluate_reads(args.reads, results, args.json)
    _existing_file(args.truth, "truth file")
    _existing_dir(results, "results folder")
    from pipeline.evaluate import evaluate, format_report

    try:
        report = evaluate(args.truth, results)
    except ValueError as exc:  # truth.json is not what the generator writes
        raise UsageError(str(exc)) from exc
    print(format_report(report))
    if args.json is not None:
        from pipeline.outputs.tables import write_json

        write_json(args.json, report.as_dict())
        print(f"\nJSON report written to {args.json}")
    return EXIT_OK


def _evaluate_reads(reads: Path, results: Path, json_out: Path | None) -> int:
    """``crav evaluate --reads``: 0 when every lesion is in both files and rated; 1 when one needs a look."""
    _existing_file(reads, "reads file")
    _existing_dir(results, "results folder")
    from pipeline.evaluate import compare_reads, format_reads_report

    try:
        report = compare_reads(reads, results)
    except (FileNotFoundError, ValueError) as exc:  # no lesions.csv, malformed read (the message names the rows)
        raise UsageError(str(exc)) from exc
    print(format_reads_report(report))
    if json_out is not None:
        from pipeline.outputs.tables import write_json

        write_json(json_out, report.as_dict())
        print(f"\nJSON report written to {json_out}")
    if report.needs_a_look:
        print("some lesions are in one file only, unrated or inconsistent: see the lists above", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


# ---------------------------------------------------------------- parser

def _add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``crav run`` and ``crav serve`` share: what to process, where, how."""
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="PACS export folder")
    p.add_argument("--output", type=Path, required=True, metavar="DIR",
                   help="results folder (created when missing; must not be inside the input folder)")
    p.add_argument("--registry", type=Path, metavar="FILE",
                   help="treatments.csv (default: treatments.csv at the root of the input folder)")
    p.add_argument("--settings", type=Path, metavar="TOML",
                   help="TOML file overriding settings (names as in pipeline/settings.py)")
    p.add_argument("--quiet-period", type=float, metavar="S",
                   help="seconds a file must stay unmodified before it is used (setting quiet_period_s, "
                        "default 60): a file still being copied is left for the next run; 0 for a complete "
                        "export such as sample_dicom/")
    p.add_argument("--dask-address", metavar="URL",
                   help="run the patients on this dask.distributed scheduler (tcp://host:8786) instead of "
                        "threads here; its workers must see the input and output folders at the same paths")


def build_parser() -> argparse.ArgumentParser:
    """The ``crav`` argument parser (one sub-parser per command)."""
    parser = argparse.ArgumentParser(
        prog="crav", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "phantom", help="generate a synthetic cohort with exact truth",
        description="Write a synthetic CRAV cohort: a DICOM export folder, treatments.csv, truth.json "
                    "and truth masks. Either a cohort of N patients from a seed, or the small sample.")
    p.add_argument("--patients", type=_positive_int, metavar="N", help="number of patients to generate")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (same seed, same cohort)")
    p.add_argument("--sample", action="store_true",
                   help="write the small sample cohort shipped as sample_dicom/ (ignores N and S)")
    p.add_argument("--resolution", choices=("full", "sample"), default="full",
                   help="full: clinical matrices (default); sample: the coarse grids of sample_dicom/, about a "
                        "quarter of the files, for quick tests with many patients")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the cohort into")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser(
        "scan", help="index a DICOM export folder into the catalog",
        description="Read the headers of every file under an export folder, record each series, its role "
                    "and the reason, and report ignored and quarantined files. Files modified during the "
                    "quiet period (setting quiet_period_s) are left for the next scan.")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="PACS export folder")
    p.add_argument("--catalog", default=":memory:", metavar="URL",
                   help="catalog location: sqlite:///path/catalog.db or a plain file path "
                        "(default: in memory, nothing kept between scans)")
    p.add_argument("--registry", type=Path, metavar="FILE",
                   help="treatments.csv, to show each study's visit (default: treatments.csv at the root of "
                        "the input folder, when present)")
    p.add_argument("--settings", type=Path, metavar="TOML", help="TOML file overriding settings")
    p.add_argument("--quiet-period", type=float, metavar="S",
                   help="seconds a file must stay unmodified before it is read (setting quiet_period_s)")
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser(
        "run", help="process an export folder and write the results",
        description="Process every registry lesion found in the export folder: visits, segmentation, "
                    "measurements, classification; write lesions.csv, measurements.csv, cohort_summary "
                    "and patients/<id>/ (SPEC.md section 6). A patient whose input files, registry rows and "
                    "settings did not change since the previous run into the same output folder is not "
                    "recomputed. Exit code 1 when the run finished but some file or lesion needs a look.")
    _add_job_arguments(p)
    p.add_argument("--patient", action="extend", nargs="+", metavar="ID",
                   help="process only these PatientIDs (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="recompute every patient, even those whose inputs, registry rows and settings are unchanged")
    p.add_argument("--reads", type=Path, metavar="FILE",
                   help="reference read CSV (as for crav evaluate --reads): adds the agreement with it (confusion "
                        "matrix, Cohen's kappa) to cohort_summary.json / .md")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "serve", help="serve crav run as a scheduled Prefect deployment (needs a Prefect server)",
        description="Register crav run as a Prefect deployment on the Prefect server named by PREFECT_API_URL, "
                    "with a schedule, and run its flow runs here until interrupted (Ctrl-C). Each scheduled "
                    "run processes only what is new or changed in the export. One patient can be re-run "
                    "through the same deployment:\n"
                    "  prefect deployment run 'crav-run/NAME' --param patient_id=ID [--param force=true]\n"
                    "Start the server first (README, 'Scheduled runs'): prefect server start --host 127.0.0.1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_job_arguments(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--interval", type=_positive_float, metavar="S", help="run every S seconds")
    when.add_argument("--cron", metavar="EXPR", help="run on a cron schedule, e.g. '0 2 * * *' (02:00 every day)")
    p.add_argument("--name", default="crav-export", metavar="NAME",
                   help="deployment name (default crav-export: the deployment is crav-run/crav-export)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "status", help="what an output folder holds: the last run, each patient, what failed and why",
        description="Read an output folder of crav run: when the last run started and finished, its input, "
                    "registry, software version and the settings that differ from the defaults, what became "
                    "of the input files, and for each patient what the run did and why (recomputed, "
                    "unchanged, kept), when its results were computed, its verdicts and problems; and whether "
                    "a run is writing into the folder now. Exit code 1 when a problem was recorded or a file "
                    "quarantined, as for crav run.")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="output folder of crav run")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "qa", help="serve the QA review page of an output folder (accept / reject each lesion)",
        description="Serve a local web page to review the results of crav run: every lesion with its status, "
                    "its timeline montage and overlays, measurements and reason; accept or reject it (a "
                    "rejection needs a comment), optionally excluding visits or moving the vertebra seed. "
                    "Verdicts are stored in the catalog and shown in measurements.csv (qa_status); the next "
                    "crav run re-processes a lesion whose corrections changed. Bound to 127.0.0.1 by default; "
                    "bound to another address, the page needs a token (--token, env CRAV_QA_TOKEN, or a "
                    "generated one printed in the URL). Ctrl-C stops it.")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="output folder of crav run")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, metavar="N", help="TCP port (default 8765; 0: any free port)")
    p.add_argument("--token", metavar="TOKEN",
                   help="access token (16+ letters, digits or ._~-); required off 127.0.0.1, where it defaults to "
                        "env CRAV_QA_TOKEN or a generated one")
    p.add_argument("--reviewer", metavar="NAME", help="reviewer name pre-filled in the review form")
    p.set_defaults(func=_cmd_qa)

    p = sub.add_parser(
        "evaluate", help="compare results with a phantom's truth or with a reference read",
        description=(
            "Compare a results folder (RESULTS_DIR, or --results DIR) with either:\n"
            "  --truth: a phantom truth.json (and its truth/ masks): outcome accuracy and confusion matrix,\n"
            "    j0_residual, visit assignment, volume and height errors, Dice per structure, missing rows;\n"
            "  --reads: a reference read by radiologists: outcome confusion matrix (rows = reference,\n"
            "    columns = pipeline), observed agreement, Cohen's kappa with its standard error and 95 % CI,\n"
            "    per-class counts, the disagreeing lesions, the lesions in one file only; the same for\n"
            "    j0_residual when the read has that column.\n\n"
            "reads.csv: one row per lesion; columns lesion_id and outcome (local_control, local_failure,\n"
            "indeterminate), optionally patient_id, j0_residual (true / false, empty = not read) and reader;\n"
            "other columns are ignored. Header names and values are read regardless of case and outer\n"
            "spaces; comma, semicolon or tab separated. A bad row is refused with its line number.\n\n"
            "Exit code with --reads: 0 when every lesion is in both files and rated, 1 when a lesion is in\n"
            "one file only, unrated or its patient_id differs, 2 for a usage error or a malformed read."),
        epilog="examples:\n  crav evaluate --truth /tmp/phantom/truth.json /tmp/phantom-out\n"
               "  crav evaluate --reads reads.csv /data/crav-results --json agreement.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--truth", type=Path, metavar="FILE", help="truth.json written by crav phantom")
    source.add_argument("--reads", type=Path, metavar="FILE",
                        help="reference read CSV (lesion_id, outcome[, patient_id, j0_residual, reader])")
    p.add_argument("results_dir", nargs="?", type=Path, metavar="RESULTS_DIR", help="output folder of crav run")
    p.add_argument("--results", type=Path, metavar="DIR", help="output folder of crav run (same as RESULTS_DIR)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON to OUT")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crav`` console script; returns the exit code."""
    # a crash in native code (decoders, SimpleITK, SQLite) prints the Python stack of every thread on
    # stderr instead of a bare "Segmentation fault" (seen once, on a first demo run, not reproduced)
    if not faulthandler.is_enabled():
        with contextlib.suppress(OSError, ValueError):  # a captured stderr has no file descriptor
            faulthandler.enable()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and argparse usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"crav {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"crav {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
