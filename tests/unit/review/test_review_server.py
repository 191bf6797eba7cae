"""The review app (pipeline.review.server) through Starlette's TestClient: guards, pages, verdicts, images."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from pipeline import cli
from pipeline.domain import SeriesRole
from pipeline.ingest.catalog import Catalog, SeriesRecord
from pipeline.outputs.lock import output_lock
from pipeline.outputs.paths import safe_path_component
from pipeline.review import pages
from pipeline.review.guard import allowed_hosts, is_loopback, resolve_token
from pipeline.review.server import create_app
from pipeline.review.store import ReviewStore, read_csv

PID = "SION 007/a"  # a space and a slash: URL-encoded, never a path
LID = "L<1>"
OTHER_PID, OTHER_LID = "P2", "P2-L1"
XSS = "<script>window.__xss=1</script>"
TOKEN = "s3cret-token-for-tests"
BASE = "http://127.0.0.1:8765"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00"
       b"\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")
PANEL: dict[str, Any] = {"view": "sagittal", "label": "", "x0_px": 10, "y0_px": 20, "width_px": 160, "height_px": 160,
                         "origin_mm": [1.0, -40.0, 40.0], "row_step_mm": [0.0, 0.0, -0.5],
                         "col_step_mm": [0.0, 0.5, 0.0]}
GEOMETRY: dict[str, Any] = {"width_px": 400, "height_px": 200, "panels": [PANEL]}

HEADER = ("patient_id,lesion_id,timepoint,study_date,days_from_procedure,cement_volume_ml,"
          "residual_enhancing_volume_ml,ablation_zone_volume_ml,max_relative_enhancement,time_to_peak_s,"
          "ktrans_per_min,height_anterior_mm,height_middle_mm,height_posterior_mm,height_loss_pct,genant_grade,"
          "registration_error_mm,qa_status,notes")


def _lesions_csv() -> str:
    head = ("patient_id,lesion_id,level,procedure_date,j0_residual,j0_residual_volume_ml,outcome,failure_timepoint,"
            "baseline_fracture,height_loss,max_height_loss_pct,reason")
    return (f'{head}\n"{PID}",{LID},L1,2021-04-29,true,1.19,local_failure,M3,false,true,24.7,"local failure: '
            f'{XSS}; M3 grew"\n{OTHER_PID},{OTHER_LID},T12,2021-07-02,false,0,local_control,,false,false,3,'
            "local control: nothing grew\n")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder: two lesions, visit rows, a catalog with a hostile series description, PNGs."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesions.csv").write_text(_lesions_csv(), encoding="utf-8")
    rows = [f'"{PID}",{LID},J0,2021-04-29,0,3.9,1.19,3.6,1.5,80,0.2,22,23,24.9,0,0,,pending,',
            f'"{PID}",{LID},M3,2021-07-28,90,4.3,2.83,2.9,1.6,0,0.19,23,22,25,3,0,0.5,needs_review,"{XSS}"',
            f'"{PID}",{LID},UNSCHEDULED,2021-06-13,45,4.3,2,2.9,1.6,0,0.19,23,22,25,3,0,0.5,pending,',
            f"{OTHER_PID},{OTHER_LID},J0,2021-07-02,0,4.1,0,5.2,0.5,80,0.04,22,22,24,0,0,,pending,"]
    (out / "measurements.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    with Catalog.open(out / "catalog.sqlite") as catalog, catalog.transaction():
        catalog.replace_patient_series(PID, [SeriesRecord(
            "1.2.3", "1.2", PID, dt.date(2021, 4, 29), "MR", SeriesRole.T1, "SE, no fat-sat -> T1", XSS, "1.9", 12)])
    folder = out / "patients" / safe_path_component(PID) / safe_path_component(LID)
    (folder / "J0").mkdir(parents=True)
    (folder / "J0" / "overlay.png").write_bytes(PNG)
    (folder / "J0" / "overlay.json").write_text(json.dumps(GEOMETRY), encoding="utf-8")
    (folder / "J0" / "vertebra.nii.gz").write_bytes(b"not an image for the page")
    (folder / "timeline.png").write_bytes(PNG)
    (out / "secret.png").write_bytes(PNG)  # a PNG outside patients/
    (folder / "J0" / "link.png").symlink_to(out / "secret.png")
    return out


@pytest.fixture
def client(out: Path) -> Iterator[TestClient]:
    app = create_app(out, csrf_secret="csrf-for-tests")
    with TestClient(app, base_url=BASE) as c:
        yield c
    app.state.qa.store.close()


def _lesion_path(pid: str = PID, lid: str = LID) -> str:
    return f"/lesion/{quote(pid, safe='')}/{quote(lid, safe='')}"


def _key(out: Path, pid: str = PID, lid: str = LID) -> str:
    tables = pages.read_tables(out)
    row = tables.lesion(pid, lid)
    assert row is not None
    return pages.lesion_state(row, tables.rows(pid, lid), None).result_key


def _post(client: TestClient, body: dict[str, object], csrf: str | None = "csrf-for-tests",
          **headers: str) -> tuple[int, dict[str, object]]:
    sent = dict(headers)
    if csrf is not None:
        sent["X-CRAV-CSRF"] = csrf
    resp = client.post("/api/review", content=json.dumps(body), headers={"Content-Type": "application/json", **sent})
    return resp.status_code, resp.json()


def _verdict(out: Path, status: str, **extra: object) -> dict[str, object]:
    return {"patient_id": PID, "lesion_id": LID, "status": status, "result_key": _key(out), "comment": "",
            "reviewer": "Dr T", "corrections": {"exclude_visits": [], "seed_mm": None}, **extra}


def _qa(out: Path, lesion_id: str = LID) -> set[str]:
    return {r["qa_status"] for r in read_csv(out / "measurements.csv")[1] if r["lesion_id"] == lesion_id}


# ---------------------------------------------------------------- who may talk to the server

def test_loopback_and_tokens() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.10")
    assert resolve_token("127.0.0.1", None, {}) is None
    assert resolve_token("127.0.0.1", TOKEN, {}) == TOKEN  # asked for explicitly: in force
    assert resolve_token("0.0.0.0", None, {"CRAV_QA_TOKEN": TOKEN}) == TOKEN
    generated = resolve_token("192.0.2.10", None, {})
    assert generated is not None and re.fullmatch(r"[A-Za-z0-9_-]{32}", generated)
    assert allowed_hosts("0.0.0.0") is None
    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}


@pytest.mark.parametrize("token", ["short", "has space in it, 123456", "semi;colon-token-123456"])
def test_malformed_token_refused(token: str) -> None:
    with pytest.raises(ValueError, match="the token must be 16 to 200 letters"):
        resolve_token("127.0.0.1", token, {})


def test_host_header_checked(client: TestClient) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    resp = client.get("/", headers={"Host": "rebound.attacker.example:8765"})
    assert resp.status_code == 400 and "host name" in resp.text


def test_token_required_off_loopback(out: Path) -> None:
    app = create_app(out, host="192.0.2.10", port=9000, token=TOKEN)
    with TestClient(app, base_url="http://192.0.2.10:9000", follow_redirects=False) as c:
        assert c.get("/").status_code == 403
        assert c.get(_lesion_path()).status_code == 403
        assert c.get("/?token=wrong-token-123456789").status_code == 403
        resp = c.get(f"/?status=pending&token={TOKEN}")
        assert resp.status_code == 303 and resp.headers["location"] == "/?status=pending"
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"crav_qa_token_9000={TOKEN}")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert c.get("/?status=pending").status_code == 200  # the cookie is enough from now on
        assert c.get(_lesion_path()).status_code == 200
    app.state.qa.store.close()


def test_wildcard_address_accepts_any_host_but_needs_the_token(out: Path) -> None:
    app = create_app(out, host="0.0.0.0", port=9001, token=TOKEN)
    with TestClient(app, base_url="http://workstation.example:9001") as c:
        assert c.get("/").status_code == 403
        c.cookies.set("crav_qa_token_9001", TOKEN)
        assert c.get("/").status_code == 200
    app.state.qa.store.close()


@pytest.mark.parametrize(("csrf", "headers", "code", "match"), [
    (None, {}, 403, "CSRF"),
    ("not-the-secret", {}, 403, "CSRF"),
    ("csrf-for-tests", {"Origin": "http://evil.example"}, 403, "cross-origin"),
])
def test_posts_need_the_csrf_secret_and_same_origin(out: Path, client: TestClient, csrf: str | None,
                                                    headers: dict[str, str], code: int, match: str) -> None:
    status, answer = _post(client, _verdict(out, "accepted"), csrf, **headers)
    assert status == code and match in str(answer["error"])
    assert _qa(out) == {"pending", "needs_review"}  # nothing stored, nothing applied
    with ReviewStore.open(out / "catalog.sqlite") as store:
        assert store.latest() == {}


def test_form_posts_and_gets_are_refused(out: Path, client: TestClient) -> None:
    resp = client.post("/api/review", data={"status": "accepted"}, headers={"X-CRAV-CSRF": "csrf-for-tests"})
    assert resp.status_code == 415
    assert client.get("/api/review").status_code == 405
    assert _post(client, _verdict(out, "accepted"), Origin=BASE)[0] == 200  # same origin: fine


# ---------------------------------------------------------------- pages

def test_list_page(client: TestClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.text
    assert XSS not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html  # the reason, escaped
    assert f'href="{_lesion_path()}"' in html
    assert re.search(r"needs review: <b>1</b>", html) and re.search(r"pending: <b>1</b>", html)
    for header in ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy"):
        assert header in resp.headers
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    filtered = client.get("/?status=needs_review").text  # filters work from the query string too
    assert re.search(r'<tr data-url="/lesion/P2/P2-L1"[^>]* hidden>', filtered)
    assert not re.search(r'<tr data-url="/lesion/SION[^>]* hidden>', filtered)


def test_lesion_page_escapes_and_shows_everything(client: TestClient) -> None:
    resp = client.get(_lesion_path())
    assert resp.status_code == 200
    html = resp.text
    assert "<script>window" not in html  # series description, reason, notes: all escaped
    assert html.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") >= 3
    assert "SE, no fat-sat -&gt; T1" in html  # the role and its reason
    block = re.search(r'<script type="application/json" id="crav-data">(.*?)</script>', html, re.S)
    assert block is not None and "<" not in block[1]  # JSON in a script block: < escaped
    data = json.loads(block[1])
    assert data["patient_id"] == PID and data["lesion_id"] == LID
    assert data["geometry"]["panels"][0]["origin_mm"] == [1.0, -40.0, 40.0]
    assert [o["url"] for o in data["order"]] == [_lesion_path(), "/lesion/P2/P2-L1"]
    folder = f"/img/{safe_path_component(PID)}/{safe_path_component(LID)}"
    assert f'src="{folder}/timeline.png?v=' in html and f'src="{folder}/J0/overlay.png?v=' in html
    assert html.count("overlay not available") == 2  # M3 and UNSCHEDULED_+45d have none
    assert 'value="UNSCHEDULED_+45d"' in html  # one exclude checkbox per visit
    other = client.get("/lesion/P2/P2-L1").text
    assert "Timeline montage not available." in other


def test_unknown_lesions_are_404(client: TestClient) -> None:
    assert client.get("/lesion/P2/nope").status_code == 404
    assert client.get("/lesion/P2").status_code == 404
    assert client.get("/lesion/P2/P2-L1/extra").status_code == 404
    assert client.get(f"/lesion/{quote('SION 007', safe='')}/{quote(LID, safe='')}").status_code == 404


def test_images_only_pngs_under_patients(out: Path, client: TestClient) -> None:
    folder = f"/img/{safe_path_component(PID)}/{safe_path_component(LID)}"
    ok = client.get(f"{folder}/J0/overlay.png")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png" and ok.content == PNG
    for bad in [f"{folder}/J0/vertebra.nii.gz",  # not a PNG
                f"{folder}/J0/link.png",  # a symbolic link out of patients/
                f"{folder}/..%2F..%2F..%2Fsecret.png",  # encoded traversal
                "/img/..%2Fsecret.png", "/img/%2e%2e/secret.png", "/img/%2Fetc%2Fpasswd",
                f"{folder}/%2e%2e/%2e%2e/%2e%2e/catalog.sqlite", f"{folder}/M3/overlay.png",
                "/img/", "/static/../store.py", "/static/secret.png"]:
        assert client.get(bad).status_code == 404, bad
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


# ---------------------------------------------------------------- verdicts

def test_accept_then_reject_with_corrections(out: Path, client: TestClient) -> None:
    status, answer = _post(client, _verdict(out, "accepted"))
    assert status == 200 and answer["status"] == "accepted" and answer["applied"] is True
    assert _qa(out) == {"accepted"} and _qa(out, OTHER_LID) == {"pending"}
    corrections = {"exclude_visits": ["UNSCHEDULED_+45d"], "seed_mm": [1.5, -20.25, 30.0]}
    status, answer = _post(client, _verdict(out, "rejected", comment=f"bad M3 {XSS}", corrections=corrections))
    assert status == 200 and answer["status"] == "rejected"
    assert _qa(out) == {"rejected"}
    with ReviewStore.open(out / "catalog.sqlite") as store:
        history = store.history(PID, LID)
        assert [r.status for r in history] == ["accepted", "rejected"]
        assert store.corrections()[(PID, LID)].to_json() == {**corrections, "seed_mm": [1.5, -20.2, 30.0]}  # 0.1 mm
    # accepting the re-processed lesion keeps its corrections, whatever the request carries along
    status, answer = _post(client, _verdict(out, "accepted", corrections={"exclude_visits": [], "seed_mm": None}))
    assert status == 200 and answer["status"] == "accepted"
    with ReviewStore.open(out / "catalog.sqlite") as store:
        assert store.corrections()[(PID, LID)].to_json() == {**corrections, "seed_mm": [1.5, -20.2, 30.0]}
    status, answer = _post(client, _verdict(out, "rejected", comment=f"bad M3 {XSS}", corrections=corrections))
    assert status == 200 and answer["status"] == "rejected"
    html = client.get(_lesion_path()).text
    assert "bad M3 &lt;script&gt;" in html and "exclude UNSCHEDULED_+45d" in html
    assert 'value="-20.2"' in html or 'value="-20.3"' in html  # the seed pre-filled
    assert re.search(r"rejected: <b>1</b>", client.get("/").text)


REJECT = {"status": "rejected", "comment": "wrong level"}


@pytest.mark.parametrize(("extra", "code", "match"), [
    ({"status": "rejected"}, 400, "a rejection needs a comment"),
    ({"status": "maybe"}, 400, "status must be"),
    ({**REJECT, "corrections": {"exclude_visits": ["J0"]}}, 400, "J0 cannot be excluded"),
    ({**REJECT, "corrections": {"exclude_visits": ["M12"]}}, 400, "M12 is not a visit of this lesion"),
    ({**REJECT, "corrections": {"seed_mm": [1, 2]}}, 400, "three coordinates"),
    ({"comment": 5}, 400, "comment must be text"),
    ({"lesion_id": "nope"}, 404, "not in lesions.csv"),
    ({"result_key": "0" * 64}, 409, "changed since the page was loaded"),
])
def test_invalid_verdicts(out: Path, client: TestClient, extra: dict[str, object], code: int, match: str) -> None:
    status, answer = _post(client, {**_verdict(out, "accepted"), **extra})
    assert status == code and match in str(answer["error"])
    with ReviewStore.open(out / "catalog.sqlite") as store:
        assert store.latest() == {}


def test_invalid_bodies(client: TestClient) -> None:
    for body in (b"{not json", b"[1, 2]"):
        resp = client.post("/api/review", content=body,
                           headers={"Content-Type": "application/json", "X-CRAV-CSRF": "csrf-for-tests"})
        assert resp.status_code == 400 and "JSON" in resp.json()["error"]
    resp = client.post("/api/review", content=b"x" * 70_000,
                       headers={"Content-Type": "application/json", "X-CRAV-CSRF": "csrf-for-tests"})
    assert resp.status_code == 413


def test_verdict_kept_while_a_run_writes(out: Path, client: TestClient) -> None:
    before = (out / "measurements.csv").read_bytes()
    with output_lock(out):  # a run holds the folder
        status, answer = _post(client, _verdict(out, "accepted"))
    assert status == 200 and answer["applied"] is False and "when the run ends" in str(answer["message"])
    assert (out / "measurements.csv").read_bytes() == before
    assert "accepted" in client.get("/").text.split("<tbody>")[1].split("</tr>")[0]  # the page shows it already


def test_logs_name_no_patient(out: Path, client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.review")
    client.get(_lesion_path())
    client.get(f"/img/{safe_path_component(PID)}/{safe_path_component(LID)}/timeline.png")
    _post(client, _verdict(out, "accepted"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /lesion/... 200" in text and "POST /api/review 200" in text
    assert "SION" not in text and "L%3C1" not in text


def test_read_geometry_refuses_malformed(tmp_path: Path) -> None:
    path = tmp_path / "overlay.json"
    assert pages.read_geometry(path) is None  # missing
    for bad in ("{", "[]", '{"width_px": 0, "height_px": 1, "panels": []}',
                json.dumps({**GEOMETRY, "panels": [{**PANEL, "origin_mm": [1, 2]}]}),
                json.dumps({**GEOMETRY, "panels": [{**PANEL, "x0_px": "10"}]})):
        path.write_text(bad, encoding="utf-8")
        assert pages.read_geometry(path) is None, bad
    path.write_text(json.dumps(GEOMETRY), encoding="utf-8")
    assert pages.read_geometry(path) == GEOMETRY


# ---------------------------------------------------------------- crav qa

def test_cli_refuses_folders_without_results(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["qa", "--output", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["qa", "--output", str(tmp_path / "empty")]) == 2
    assert "holds no lesions.csv" in capsys.readouterr().err
    assert cli.main(["qa", "--output", str(out), "--token", "short"]) == 2
    assert "the token must be" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main(["qa", "--output", str(out), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert not os.environ.get("CRAV_QA_TOKEN")  # the tests above did not depend on it
