"""The QA review page in a real headless browser (Debian chromium through playwright), over a real run.

A copy of sample_dicom/ whose J0 T1 series carries ``<script>`` in its SeriesDescription and
PatientName is processed by ``crav run`` (one patient, two lesions, to keep CI time low); ``crav qa``
serves the output folder in a subprocess. A reviewer filters the list, opens a lesion, sees its
montage and overlays, accepts it with the keyboard, moves to the next lesion, rejects it with a
comment, an excluded visit and a seed clicked on the J0 overlay; after a reload both verdicts are
there, in measurements.csv too, and no script from the headers ever ran. The next ``crav run``
re-processes the rejected lesion with those corrections, and keeps the accepted one's verdict.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from processes import stop_group

from pipeline.outputs.paths import safe_path_component
from pipeline.review.store import ReviewStore, visit_label
from tests.conftest import free_port, wait_for_http

pytestmark = pytest.mark.slow

PATIENT = "CRAV-20211002"  # two lesions: L1 accepted, L2 rejected
L1, L2 = f"{PATIENT}-L1", f"{PATIENT}-L2"
XSS = "<script>window.__xss=1</script>"
COMMENT = "M1 is misregistered and the seed sits on the wrong body"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _poison_j0_t1(export: Path) -> int:
    """Put ``<script>`` into SeriesDescription and PatientName of every file of PATIENT's J0 T1 series."""
    procedure = next(r["procedure_date"] for r in _rows(export / "treatments.csv") if r["patient_id"] == PATIENT)
    t1: dict[str, list[Path]] = {}
    dates: dict[str, str] = {}
    for path in sorted(p for p in (export / "export").rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["PatientID", "SeriesInstanceUID", "SeriesDescription", "StudyDate"])
        except Exception:  # the sample holds a truncated file and non-DICOM files on purpose
            continue
        if ds.get("PatientID") == PATIENT and ds.get("SeriesDescription") == "Sag T1 FSE":
            t1.setdefault(ds.SeriesInstanceUID, []).append(path)
            dates[ds.SeriesInstanceUID] = str(ds.StudyDate)
    j0 = min((uid for uid in t1 if dates[uid] >= procedure.replace("-", "")), key=lambda uid: dates[uid])
    for path in t1[j0]:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = XSS
        ds.PatientName = XSS
        ds.save_as(path, enforce_file_format=True)
    return len(t1[j0])


@pytest.fixture(scope="module")
def run_output(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(export folder, output folder) of ``crav run`` on the poisoned copy, one patient."""
    tmp = tmp_path_factory.mktemp("review-browser")
    export = tmp / "input"
    shutil.copytree(repo_root / "sample_dicom", export)
    assert _poison_j0_t1(export) > 0
    out = tmp / "out"
    proc = subprocess.run([_bin("crav"), "run", "--input", str(export), "--output", str(out), "--patient", PATIENT,
                           "--quiet-period", "0"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: the sample's truncated file
    return export, out


@pytest.fixture
def qa_url(run_output: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    """``crav qa`` on the run's output, on a free port of 127.0.0.1."""
    port = free_port()
    log = tmp_path / "qa.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([_bin("crav"), "qa", "--output", str(run_output[1]), "--port", str(port),
                                 "--reviewer", "QA bot"], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/", 30, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_group(proc)
    text = log.read_text(encoding="utf-8")
    assert "crav qa: stopped" in text, text  # SIGTERM: a clean stop
    assert PATIENT not in text.replace(str(run_output[1]), "")  # no patient identifier in its output


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def _statuses(page: Page) -> dict[str, str]:
    return dict(page.eval_on_selector_all(
        "#lesions tbody tr:not([hidden])",
        "rows => rows.map(r => [r.cells[1].textContent.trim(), r.dataset.status])"))


def test_review_in_a_browser(run_output: tuple[Path, Path], qa_url: str, browser: Browser,
                             check_outputs: Callable[..., str]) -> None:
    export, out = run_output
    lesion_rows = {lid: [r for r in _rows(out / "measurements.csv") if r["lesion_id"] == lid] for lid in (L1, L2)}
    assert lesion_rows[L1] and lesion_rows[L2]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []  # script errors and console errors (a CSP violation is one)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

    # the list, filtered on the patient without a reload
    page.goto(qa_url + "/")
    assert page.locator("#lesions tbody tr").count() == len(_rows(out / "lesions.csv"))
    page.fill("#f-q", "20211002")
    assert _statuses(page) == {L1: "pending", L2: "pending"}
    assert "q=20211002" in page.url
    page.press("#f-q", "Escape")  # leave the field: keys are shortcuts again
    page.keyboard.press("j")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith(f"/lesion/{PATIENT}/{L1}")

    # the lesion: montage and one overlay per visit loaded; the header's <script> shown as text
    page.wait_for_load_state("load")
    assert page.evaluate("document.getElementById('timeline').naturalWidth") > 0
    widths = page.eval_on_selector_all(".overlay img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == len(lesion_rows[L1]) and all(w > 0 for w in widths), widths
    description = page.locator("td.description", has_text=XSS)
    assert description.count() == 1 and description.is_visible()
    assert page.evaluate("typeof window.__xss") == "undefined"

    # accept with the keyboard
    with page.expect_navigation():
        page.keyboard.press("a")
    assert page.locator("#status-badge").text_content() == "accepted"
    assert "Accepted" in (page.locator("#flash").text_content() or "")

    # the next lesion of the filtered list; reject it with a comment, M1 excluded, a seed clicked on J0
    with page.expect_navigation():
        page.keyboard.press("j")
    assert page.url.endswith(f"/lesion/{PATIENT}/{L2}")
    page.wait_for_load_state("load")
    page.check('input[name="exclude"][value="M1"]')
    folder = out / "patients" / safe_path_component(PATIENT) / safe_path_component(L2)
    sidecar = json.loads((folder / "J0" / "overlay.json").read_text(encoding="utf-8"))
    sagittal = next(p for p in sidecar["panels"] if p["view"] == "sagittal")
    col, row = 0.5 * sagittal["width_px"], 0.4 * sagittal["height_px"]  # a point of the panel, in PNG pixels
    page.locator("#j0-overlay").scroll_into_view_if_needed()
    box = page.locator("#j0-overlay").bounding_box()  # in the viewport, where the mouse clicks
    assert box is not None
    scale = box["width"] / page.evaluate("document.getElementById('j0-overlay').naturalWidth")
    page.mouse.click(box["x"] + (sagittal["x0_px"] + col) * scale, box["y"] + (sagittal["y0_px"] + row) * scale)
    expected = [o + (row - 0.5) * r + (col - 0.5) * c for o, r, c in
                zip(sagittal["origin_mm"], sagittal["row_step_mm"], sagittal["col_step_mm"], strict=True)]
    seed = [float(page.input_value(f"#seed-{axis}")) for axis in "xyz"]
    step_mm = max(abs(v) for v in sagittal["row_step_mm"] + sagittal["col_step_mm"])
    assert all(abs(s - e) <= step_mm / scale + 0.05 for s, e in zip(seed, expected, strict=True)), (seed, expected)
    assert page.locator("#j0-pick .marker").count() >= 1  # the seed is drawn where it was clicked
    page.keyboard.press("r")  # focuses the comment: a rejection needs one
    assert page.evaluate("document.activeElement.id") == "comment"
    page.keyboard.type(COMMENT)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert page.locator("#status-badge").text_content() == "rejected"
    assert COMMENT in (page.locator("ol.history").text_content() or "")
    in_force = page.locator("#in-force").text_content() or ""
    assert "exclude M1" in in_force and "seed at" in in_force

    # reload: both verdicts persisted, in the catalog and in measurements.csv
    page.goto(qa_url + "/?q=20211002")
    assert _statuses(page) == {L1: "accepted", L2: "rejected"}
    assert page.evaluate("typeof window.__xss") == "undefined"
    qa = {(r["lesion_id"], visit_label(r["timepoint"], r["days_from_procedure"])): r["qa_status"]
          for r in _rows(out / "measurements.csv") if r["lesion_id"] in (L1, L2)}
    assert set(qa.values()) == {"accepted", "rejected"}
    assert {s for (lid, _), s in qa.items() if lid == L1} == {"accepted"}
    assert {s for (lid, _), s in qa.items() if lid == L2} == {"rejected"}
    with ReviewStore.open(out / "catalog.sqlite") as store:
        corrections = store.corrections()[(PATIENT, L2)]
        assert [r.status for r in store.history(PATIENT, L2)] == ["rejected"]
        assert store.history(PATIENT, L2)[0].comment == COMMENT
    assert corrections.exclude_visits == ("M1",)
    assert corrections.seed_mm is not None
    assert all(abs(s - round(v, 1)) < 1e-9 for s, v in zip(corrections.seed_mm, seed, strict=True))
    # n: the next lesion still to review, in the order of the (now unfiltered) list
    page.goto(qa_url + "/")
    first_pending = next(r["lesion_id"] for r in _rows(out / "lesions.csv") if r["lesion_id"] not in (L1, L2))
    with page.expect_navigation():
        page.keyboard.press("n")
    assert page.locator("#lesion-id").text_content() == first_pending
    assert problems == [], problems
    page.close()
    check_outputs(out, registry=export / "treatments.csv")

    # the next run re-processes the rejected lesion with its corrections; the accepted one keeps its verdict
    accepted_before = [r for r in _rows(out / "measurements.csv") if r["lesion_id"] == L1]
    proc = subprocess.run([_bin("crav"), "run", "--input", str(export), "--output", str(out), "--patient", PATIENT,
                           "--quiet-period", "0"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    decision = json.loads((out / "run.json").read_text(encoding="utf-8"))["patients"][PATIENT]
    assert decision == "recomputed: inputs, registry rows, settings or QA corrections changed"
    after = {visit_label(r["timepoint"], r["days_from_procedure"]): r
             for r in _rows(out / "measurements.csv") if r["lesion_id"] == L2}
    assert after["M1"]["qa_status"] == "excluded" and "excluded from the verdict by a QA review" in after["M1"]["notes"]
    assert "vertebral body seeded at the point a QA reviewer placed" in after["J0"]["notes"]
    # new results: the rejection no longer applies, the lesion waits for a new review
    assert {r["qa_status"] for label, r in after.items() if label != "M1"} <= {"pending", "needs_review"}
    assert [r for r in _rows(out / "measurements.csv") if r["lesion_id"] == L1] == accepted_before  # still accepted
    provenance = json.loads((folder.parent / "provenance.json").read_text(encoding="utf-8"))
    fixes = {les["lesion_id"]: les["qa_corrections"] for les in provenance["lesions"]}
    assert fixes[L1] is None and fixes[L2]["exclude_visits"] == ["M1"] and len(fixes[L2]["seed_mm"]) == 3
    page = browser.new_page()
    page.goto(qa_url + "/?q=20211002")
    assert _statuses(page) == {L1: "accepted", L2: "needs_review"}
    page.close()
    check_outputs(out, registry=export / "treatments.csv")
