"""report.html: escaping, self-containment, content, missing overlays, determinism; the timeline plot."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.domain import Lesion, LesionResult, Outcome, Visit, VisitMeasurement
from pipeline.outputs.atomic import TEMP_MARK
from pipeline.outputs.report import PatientReport, ReportLesion, ReportSeries, render_report, write_report
from pipeline.outputs.report_plot import timeline_plot_png

EVIL = '<script>alert(1)</script> "quotes" & co'
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;quotes&#34; &amp; co"
PNG_PREFIX = "data:image/png;base64,"

# --- a small DOM from the stdlib parser -----------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> list[Node]:
        out = [self]
        for c in self.children:
            if isinstance(c, Node):
                out.extend(c.iter())
        return out

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag and (cls is None or cls in n.classes())]

    def find(self, tag: str, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert len(found) == 1, f"expected one <{tag} class={cls}>, found {len(found)}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>: the page is not well nested"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _Builder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def decode_data_uri(uri: str) -> bytes:
    assert uri.startswith(PNG_PREFIX)
    return base64.b64decode(uri[len(PNG_PREFIX):], validate=True)


# --- inputs ---------------------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int] = (10, 120, 200)) -> Path:
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def _row(pid: str, lid: str, visit: Visit, day: int, **values: Any) -> VisitMeasurement:
    return VisitMeasurement(pid, lid, visit, dt.date(2021, 6, 15) + dt.timedelta(days=day), day, **values)


def _failure_lesion(pid: str, lid: str = "P-L1", note: str = "DCE motion corrected") -> ReportLesion:
    les = Lesion(pid, lid, "L1", dt.date(2021, 6, 15))
    result = LesionResult(les, True, 1.19, Outcome.LOCAL_FAILURE, Visit.M3, False, True, 24.698,
                          "local failure: M3 residual 2.83 mL >= nadir 1.19 + max(0.5, 0.73 x 1.19) = 2.06 mL; "
                          "J0 residual 1.19 mL >= 0.2 mL; baseline Genant grade 0 on PRE")
    rows = [
        _row(pid, lid, Visit.PRE, -11, height_anterior_mm=18.816, height_middle_mm=24.973, height_posterior_mm=11.276),
        _row(pid, lid, Visit.J0, 0, cement_volume_ml=3.92, residual_enhancing_volume_ml=1.19,
             height_anterior_mm=21.995, height_middle_mm=22.994, height_posterior_mm=24.916, genant_grade=0),
        _row(pid, lid, Visit.M1, 31, residual_enhancing_volume_ml=1.28456, time_to_peak_s=80.0,
             height_anterior_mm=16.563, height_loss_pct=24.698, registration_error_mm=0.34, notes=(note,)),
        _row(pid, lid, Visit.M3, 90, residual_enhancing_volume_ml=2.83, height_anterior_mm=22.0,
             qa_status="rejected"),
    ]
    return ReportLesion(result, rows, None, [])


def _indeterminate_lesion(pid: str, lid: str = "P-L2") -> ReportLesion:
    les = Lesion(pid, lid, "L2", dt.date(2021, 6, 15))
    result = LesionResult(les, None, None, Outcome.INDETERMINATE, None, None, None, None,
                          "indeterminate: no usable J0 DCE")
    return ReportLesion(result, [], None, [])


def _report(lesions: list[ReportLesion], *, pid: str = "SION-007", **kw: Any) -> PatientReport:
    series = kw.pop("series", [ReportSeries("1.2.3.2", dt.date(2021, 6, 15), 3, "MR", "Sag T1 FSE", "T1",
                                            "ScanningSequence=SE -> T1", True)])
    return PatientReport(pid, lesions, series, kw.pop("warnings", []), kw.pop("provenance", {}), **kw)


# --- escaping -------------------------------------------------------------------------------------


def test_header_and_registry_strings_are_escaped_everywhere(tmp_path: Path) -> None:
    les = Lesion(EVIL, EVIL + "-L1", EVIL, dt.date(2021, 6, 15))
    result = LesionResult(les, False, 0.0, Outcome.LOCAL_CONTROL, None, False, False, 1.0, EVIL + "; second " + EVIL)
    rows = [_row(EVIL, les.lesion_id, Visit.J0, 0, residual_enhancing_volume_ml=0.0, notes=(EVIL,))]
    series = [ReportSeries(EVIL, dt.date(2021, 6, 15), 2, EVIL, EVIL, EVIL, EVIL, False)]
    provenance = {"software": {EVIL: EVIL}, "settings": {"x": EVIL}, "generated_by": EVIL,
                  "series": [{"series_uid": EVIL, "role": EVIL, "role_reason": EVIL,
                              "files": [{"path": EVIL, "sha256": EVIL}]}], EVIL: [EVIL]}
    lesion = ReportLesion(result, rows, tmp_path / "absent.png", [(EVIL, tmp_path / "absent.png")])
    page = render_report(PatientReport(EVIL, [lesion], series, [EVIL], provenance))

    assert "<script" not in page.lower()
    assert '"quotes"' not in page and " & co" not in page
    assert page.count(EVIL_ESCAPED) >= 20
    dom = parse(page)
    assert dom.find("strong", "patient-id").text() == EVIL  # the parser unescapes: the text is shown as is
    assert dom.find("span", "lesion-id").text() == EVIL + "-L1"
    assert dom.find("title").text().endswith(EVIL)
    descriptions = [td.text() for td in dom.find("table", "series").find_all("td", "text")]
    assert descriptions == [EVIL, EVIL]  # description and role reason
    assert [li.text() for li in dom.find("ul", "warnings").find_all("li")] == [EVIL, f"{EVIL}-L1 J0: {EVIL}"]
    reason = dom.find("div", "reason")
    assert reason.find("p").text() == EVIL and reason.find("li").text() == "second " + EVIL
    assert dom.find("tr", "notes").text() == f"J0 notes: {EVIL}"
    assert dom.find_all("script") == []


def test_dollar_signs_in_a_title_are_not_mathtext() -> None:
    png = timeline_plot_png([_row("P", "P-L1", Visit.J0, 0, residual_enhancing_volume_ml=1.0)], title="$x^$ {P}_1")
    assert Image.open(io.BytesIO(png)).size == (900, 520)


# --- self-contained ---------------------------------------------------------------------------------


def test_page_links_only_to_data_uris_and_its_own_anchors(tmp_path: Path) -> None:
    visit_png = _png(tmp_path / "m1.png", (64, 32))
    lesion = _failure_lesion("SION-007")
    lesion = ReportLesion(lesion.result, lesion.rows, _png(tmp_path / "timeline.png", (120, 40)),
                          [("M1", visit_png)])
    page = render_report(_report([lesion, _indeterminate_lesion("SION-007")]))
    dom = parse(page)
    ids = {n.attrs["id"] for n in dom.iter() if "id" in n.attrs}
    link_attrs = ("src", "href", "srcset", "action", "data", "poster", "formaction", "background")
    seen = 0
    for node in dom.iter():
        for name in link_attrs:
            if name in node.attrs:
                seen += 1
                value = node.attrs[name]
                if value.startswith("#"):
                    assert value[1:] in ids, f"anchor {value} has no target"
                else:
                    assert value.startswith(PNG_PREFIX), f"<{node.tag} {name}={value[:40]!r}> leaves the page"
    assert seen >= 5  # 3 images + anchors
    assert not dom.find_all("link") and not dom.find_all("iframe") and not dom.find_all("object")
    assert "url(" not in page and "@import" not in page and "http://" not in page and "https://" not in page


# --- content --------------------------------------------------------------------------------------


def test_lesion_sections_verdict_reason_and_measurements() -> None:
    failure, indeterminate = _failure_lesion("SION-007"), _indeterminate_lesion("SION-007")
    dom = parse(render_report(_report([failure, indeterminate], software_version="9.8.7")))

    assert "2 lesions" in dom.find("p", "meta").text() and "crav-followup 9.8.7" in dom.find("p", "meta").text()
    sections = dom.find_all("section", "lesion")
    assert [s.find("span", "lesion-id").text() for s in sections] == ["P-L1", "P-L2"]
    first = sections[0]
    verdict = {tr.find("th").text(): tr.find("td").text() for tr in first.find("table", "verdict").find_all("tr")}
    assert verdict == {"Outcome": "local failure", "Failure timepoint": "M3", "Residual at J0": "yes (1.19 mL)",
                       "Baseline fracture": "no", "Height loss": "yes", "Max height loss": "24.698 %"}
    reason = first.find("div", "reason")
    clauses = [reason.find("p").text(), *(li.text() for li in reason.find_all("li"))]
    assert "; ".join(clauses) == failure.result.reason

    table = first.find("table", "measurements")
    headers = [th.text() for th in table.find("thead").find_all("th")]
    assert headers[:4] == ["Visit", "Study date", "Day", "Cement (mL)"] and "Residual enh. (mL)" in headers
    visits = table.find_all("tr", "visit")
    assert [tr.find("th").text() for tr in visits] == ["PRE", "J0", "M1", "M3"]
    m1 = dict(zip(headers[1:], (td.text() for td in visits[2].find_all("td")), strict=True))
    assert m1["Study date"] == "2021-07-16" and m1["Day"] == "31"
    assert m1["Residual enh. (mL)"] == "1.285" and m1["Time to peak (s)"] == "80"
    assert m1["Height ant. (mm)"] == "16.563" and m1["Cement (mL)"] == "" and m1["QA at analysis"] == "pending"
    m3 = dict(zip(headers[1:], (td.text() for td in visits[3].find_all("td")), strict=True))
    assert m3["Height ant. (mm)"] == "22" and m3["QA at analysis"] == "rejected" and "rejected" in visits[3].classes()
    assert [tr.text() for tr in table.find_all("tr", "notes")] == ["M1 notes: DCE motion corrected"]
    assert "P-L1 M1: DCE motion corrected" in [li.text() for li in dom.find("ul", "warnings").find_all("li")]


def test_indeterminate_lesion_without_rows_gets_its_section() -> None:
    dom = parse(render_report(_report([_indeterminate_lesion("SION-007")])))
    section = dom.find("section", "lesion")
    assert "indeterminate" in section.find("span", "outcome").text()
    assert section.find("div", "reason").text().strip() == "indeterminate: no usable J0 DCE"
    assert section.find("p", "no-measurements").text().startswith("No measurements")
    assert section.find_all("table", "measurements") == [] and section.find_all("figure") == []
    assert re.search(r"\b1 lesion(?!s)", dom.find("p", "meta").text())


def test_embedded_plot_decodes_to_the_expected_size() -> None:
    dom = parse(render_report(_report([_failure_lesion("SION-007")])))
    png = decode_data_uri(dom.find("figure", "plot").find("img").attrs["src"])
    assert Image.open(io.BytesIO(png)).size == (900, 520)


def test_series_table_sorted_by_date_then_number() -> None:
    series = [
        ReportSeries("u3", dt.date(2021, 7, 1), 2, "MR", "Sag T1", "T1", "SE -> T1", True),
        ReportSeries("u2", dt.date(2021, 6, 1), 10, "MR", "DCE ph1", "DCE", "GR -> DCE", True),
        ReportSeries("u1", dt.date(2021, 6, 1), 1, "MR", "Loc", "LOCALIZER", "LOCALIZER in ImageType", False),
        ReportSeries("u0", None, None, "CT", "", "OTHER", "no date", False),
    ]
    dom = parse(render_report(_report([], series=series)))
    table = dom.find("table", "series")
    rows = [[td.text() for td in tr.find_all("td")] for tb in table.find_all("tbody") for tr in tb.find_all("tr")]
    assert rows == [
        ["", "", "CT", "", "OTHER", "no date", "no"],
        ["2021-06-01", "1", "MR", "Loc", "LOCALIZER", "LOCALIZER in ImageType", "no"],
        ["2021-06-01", "10", "MR", "DCE ph1", "DCE", "GR -> DCE", "yes"],
        ["2021-07-01", "2", "MR", "Sag T1", "T1", "SE -> T1", "yes"],
    ]
    assert len(table.find_all("tbody", "study")) == 3  # one group per study date


# --- overlays -------------------------------------------------------------------------------------


def test_overlays_embedded_and_missing_ones_said(tmp_path: Path) -> None:
    m1 = _png(tmp_path / "m1.png", (64, 32))
    not_png = tmp_path / "m3.png"
    not_png.write_bytes(b"GIF89a not a png")
    base = _failure_lesion("SION-007")
    lesion = ReportLesion(base.result, base.rows, None,
                          [("J0", tmp_path / "gone.png"), ("M1", m1), ("M3", not_png), ("M6", None)])
    section = parse(render_report(_report([lesion]))).find("section", "lesion")
    figures = section.find_all("figure", "visit-overlay")
    assert [f.find("figcaption").text() for f in figures] == ["M1"]
    assert decode_data_uri(figures[0].find("img").attrs["src"]) == m1.read_bytes()
    missing = [p.text() for p in section.find_all("p", "missing")]
    assert missing == ["Timeline: overlay not available",
                       "J0: overlay not available (no readable file gone.png)",
                       "M3: overlay not available (m3.png is not a PNG image)",
                       "M6: overlay not available"]


def test_all_overlays_missing_is_one_line(tmp_path: Path) -> None:
    base = _failure_lesion("SION-007")
    lesion = ReportLesion(base.result, base.rows, tmp_path / "t.png", [("J0", tmp_path / "j0.png"), ("M1", None)])
    section = parse(render_report(_report([lesion]))).find("section", "lesion")
    assert [p.text() for p in section.find_all("p", "missing")] == ["Overlays not available (timeline, J0, M1)."]


def test_timeline_montage_embedded_byte_for_byte(tmp_path: Path) -> None:
    timeline = _png(tmp_path / "timeline.png", (300, 100), (200, 10, 10))
    base = _failure_lesion("SION-007")
    section = parse(render_report(_report([ReportLesion(base.result, base.rows, timeline, [])]))).find(
        "section", "lesion")
    img = section.find("figure", "timeline").find("img")
    assert decode_data_uri(img.attrs["src"]) == timeline.read_bytes()
    assert Image.open(io.BytesIO(decode_data_uri(img.attrs["src"]))).size == (300, 100)


# --- provenance -----------------------------------------------------------------------------------


def test_provenance_software_settings_files_and_other_keys() -> None:
    provenance = {
        "provenance_version": 1,
        "generated_by": {"name": "crav-followup", "version": "0.1.0"},
        "software": {"crav-followup": "0.1.0", "numpy": "2.4.6"},
        "settings": {"j0_residual_ml": 0.2, "progression_fraction": 0.73, "nested": {"a": [1, 2]}},
        "series": [
            {"series_uid": "1.2.3", "role": "T1", "role_reason": "SE -> T1", "used": True,
             "files": [{"path": "P/J0/IM1", "sha256": "ab" * 32}, {"path": "P/J0/IM2", "sha256": None}]},
            {"series_uid": "1.2.4", "role": "DCE", "role_reason": "GR -> DCE", "used": False,
             "files": [{"path": "P/J0/IM3", "sha256": "cd" * 32}]},
        ],
        "lesions": [{"lesion_id": "P-L1", "procedure_date": dt.date(2021, 6, 15), "qa_corrections": None}],
    }
    dom = parse(render_report(_report([], provenance=provenance)))
    prov = next(s for s in dom.find_all("section") if s.attrs.get("id") == "provenance")
    assert "Generated by crav-followup 0.1.0." in prov.text()
    software = {tr.find("th").text(): tr.find("td").text() for tr in prov.find("table", "software").find_all("tr")}
    assert software == {"crav-followup": "0.1.0", "numpy": "2.4.6"}
    settings = {tr.find("th").text(): tr.find("td").text() for tr in prov.find("table", "settings").find_all("tr")}
    assert settings == {"j0_residual_ml": "0.2", "progression_fraction": "0.73", "nested": '{"a": [1, 2]}'}
    details = prov.find("details", "series-files")
    assert details.find("summary").text().startswith("2 series, 3 files")
    files = [[td.text() for td in tr.find_all("td")] for t in details.find_all("table", "files")
             for tr in t.find("tbody").find_all("tr")]
    assert files == [["P/J0/IM1", "ab" * 32], ["P/J0/IM2", "not recorded"], ["P/J0/IM3", "cd" * 32]]
    heads = [p.text() for p in details.find_all("p", "series-head")]
    assert heads[0].startswith("Series 1.2.3: role T1 · role_reason SE -> T1 · used true")
    records = prov.find("table", "records")
    assert [td.text() for td in records.find_all("td")] == ["P-L1", "2021-06-15", ""]
    other = [th.text() for th in prov.find("table", "other").find_all("th") if th.attrs.get("scope") == "row"]
    assert other == ["provenance_version", "lesions"]


@pytest.mark.parametrize("provenance", [
    {},
    {"software": ["numpy 2"], "settings": "defaults", "series": "not a list", "generated_by": None},
    {"series": [{"no_uid": 1, "files": "x"}], "weird": {1, 2}, "when": dt.date(2021, 1, 2), "p": Path("a/b")},
])
def test_provenance_of_unexpected_shape_never_breaks_the_page(provenance: dict[str, Any]) -> None:
    dom = parse(render_report(_report([_indeterminate_lesion("P")], provenance=provenance)))
    prov = next(s for s in dom.find_all("section") if s.attrs.get("id") == "provenance")
    text = prov.text()
    if not provenance:
        assert text.count("Not recorded.") == 3
    if "weird" in provenance:
        assert "[\n  1,\n  2\n]" in text and "2021-01-02" in text and "a/b" in text
    if "settings" in provenance:
        assert '"defaults"' not in text and "defaults" in text and "not a list" in text and "numpy 2" in text


def test_undecodable_file_names_are_shown_escaped(tmp_path: Path) -> None:
    name = os.fsdecode(b"IM\xff01")  # a file name that is not UTF-8, as the catalog gives it
    provenance = {"series": [{"series_uid": "1.2", "files": [{"path": "P/" + name, "sha256": "00" * 32}]}]}
    out = tmp_path / "report.html"
    write_report(out, _report([], provenance=provenance, warnings=[f"unreadable file {name}"]))
    page = out.read_text(encoding="utf-8")
    assert "P/IM\\xff01" in page and "unreadable file IM\\xff01" in page
    odd = render_report(_report([], warnings=["lone \ud800 surrogate"]))
    assert "lone \\ud800 surrogate" in odd


# --- plot -----------------------------------------------------------------------------------------


def test_plot_size_and_no_rows_with_days() -> None:
    rows = _failure_lesion("P").rows
    png = timeline_plot_png(rows, title="P-L1 (L1)", failure_timepoint=Visit.M3, width_px=600, height_px=400)
    image = Image.open(io.BytesIO(png))
    assert image.size == (600, 400) and image.format == "PNG"
    undated = [VisitMeasurement("P", "P-L1", Visit.J0, None, None, residual_enhancing_volume_ml=1.0)]
    assert Image.open(io.BytesIO(timeline_plot_png(undated, title="P-L1"))).size == (900, 520)


def test_plot_marks_the_failure_timepoint() -> None:
    rows = _failure_lesion("P").rows
    with_failure = timeline_plot_png(rows, title="t", failure_timepoint=Visit.M3)
    without = timeline_plot_png(rows, title="t")
    absent = timeline_plot_png(rows, title="t", failure_timepoint=Visit.M12)  # no such row: nothing to mark
    assert with_failure != without and absent == without


def test_plot_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="plot size must be positive"):
        timeline_plot_png([], title="t", width_px=0)


# --- determinism and writing ----------------------------------------------------------------------


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    png = _png(tmp_path / "m1.png", (50, 20))
    base = _failure_lesion("SION-007")
    report = _report([ReportLesion(base.result, base.rows, png, [("M1", png)]), _indeterminate_lesion("SION-007")],
                     warnings=["a warning"], provenance={"software": {"x": "1"}})
    out = tmp_path / "patients" / "SION-007" / "report.html"
    write_report(out, report)
    first = out.read_bytes()
    write_report(out, report)
    assert out.read_bytes() == first == render_report(report).encode("utf-8")
    assert timeline_plot_png(base.rows, title="t") == timeline_plot_png(base.rows, title="t")
    assert not [p for p in out.parent.iterdir() if TEMP_MARK in p.name]
