"""QA verdict storage (pipeline.review.store): corrections, history, result keys, qa_status in measurements.csv."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pipeline.ingest.catalog import Catalog
from pipeline.review.store import (
    Corrections,
    ReviewStore,
    apply_reviews,
    lesion_result_key,
    read_csv,
    visit_label,
    visit_sort_key,
)

KEY_A = "a" * 64
KEY_B = "b" * 64

LESIONS_CSV = """\
patient_id,lesion_id,level,procedure_date,j0_residual,j0_residual_volume_ml,outcome,failure_timepoint,\
baseline_fracture,height_loss,max_height_loss_pct,reason,vas_before
P1,P1-L1,L1,2021-04-29,true,1.19,local_failure,M3,false,true,24.7,"local failure: M3 residual 2.83 mL, grown",7
P2,P2-L1,T12,2021-07-02,false,0,local_control,,false,false,3.1,local control: no follow-up met the failure rule,8
"""
MEASUREMENTS_HEADER = (
    "patient_id,lesion_id,timepoint,study_date,days_from_procedure,cement_volume_ml,residual_enhancing_volume_ml,"
    "ablation_zone_volume_ml,max_relative_enhancement,time_to_peak_s,ktrans_per_min,height_anterior_mm,"
    "height_middle_mm,height_posterior_mm,height_loss_pct,genant_grade,registration_error_mm,qa_status,notes")
MEASUREMENT_ROWS = [
    "P1,P1-L1,PRE,2021-04-18,-11,,,,,,,18.8,24.9,11.3,,0,,pending,",
    "P1,P1-L1,J0,2021-04-29,0,3.92,1.19,3.666,1.541,80,0.22,22,22.99,24.9,0,0,,pending,",
    "P1,P1-L1,M1,2021-05-30,31,4.038,1.285,4.928,1.549,0,0.132,16.6,22.8,22.6,24.7,2,0.4,excluded,visit excluded",
    'P1,P1-L1,M3,2021-07-28,90,4.312,2.833,2.976,1.632,0,0.192,23.7,22.3,25.3,3.2,0,0.5,needs_review,"flag a, flag b"',
    "P2,P2-L1,J0,2021-07-02,0,4.1,0,5.2,0.5,80,0.04,22.4,22.4,24.6,0,0,,pending,",
    "P2,P2-L1,M1,2021-08-01,30,4.1,0,7.9,0.1,0,0,20,22.1,26.4,10.9,1,0.37,pending,",
]


def _output(tmp_path: Path, rows: list[str] = MEASUREMENT_ROWS) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesions.csv").write_text(LESIONS_CSV, encoding="utf-8")
    (out / "measurements.csv").write_text("\n".join([MEASUREMENTS_HEADER, *rows]) + "\n", encoding="utf-8")
    return out


def _statuses(out: Path) -> dict[tuple[str, str], str]:
    return {(r["lesion_id"], r["timepoint"]): r["qa_status"] for r in read_csv(out / "measurements.csv")[1]}


def _key(out: Path, lesion_id: str) -> str:
    lesion = next(r for r in read_csv(out / "lesions.csv")[1] if r["lesion_id"] == lesion_id)
    rows = [r for r in read_csv(out / "measurements.csv")[1] if r["lesion_id"] == lesion_id]
    return lesion_result_key(lesion, rows)


# ---------------------------------------------------------------- corrections

def test_corrections_round_trip_sorted_and_unique() -> None:
    c = Corrections(exclude_visits=("UNSCHEDULED_+45d", "M3", "PRE", "M3", "UNSCHEDULED_-3d"), seed_mm=(1, -2.5, 3))
    assert c.exclude_visits == ("PRE", "M3", "UNSCHEDULED_-3d", "UNSCHEDULED_+45d")
    assert c.seed_mm == (1.0, -2.5, 3.0)
    assert c.to_json() == {"exclude_visits": ["PRE", "M3", "UNSCHEDULED_-3d", "UNSCHEDULED_+45d"],
                           "seed_mm": [1.0, -2.5, 3.0]}
    assert Corrections.from_json(c.to_json()) == c
    assert Corrections.from_json(c.dumps()) == c
    assert Corrections.from_json(None) == Corrections() == Corrections.from_json({})


def test_corrections_truth_value() -> None:
    assert not Corrections()
    assert Corrections(exclude_visits=("M1",))
    assert Corrections(seed_mm=(0.0, 0.0, 0.0))  # the origin is a seed too


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"exclude_visits": ("M2",)}, "'M2' is not a visit label"),
    ({"exclude_visits": ("UNSCHEDULED",)}, "'UNSCHEDULED' is not a visit label"),
    ({"exclude_visits": ("UNSCHEDULED_45",)}, "not a visit label"),
    ({"exclude_visits": ("J0",)}, "J0 cannot be excluded"),
    ({"exclude_visits": "M3"}, "must be a list of visit labels"),
    ({"exclude_visits": (3,)}, "a visit label is text"),
    ({"seed_mm": (1.0, 2.0)}, "three coordinates"),
    ({"seed_mm": "1,2,3"}, "three coordinates"),
    ({"seed_mm": (1.0, float("nan"), 3.0)}, "the y coordinate must be a finite number"),
    ({"seed_mm": (1.0, 2.0, float("inf"))}, "the z coordinate must be a finite number"),
    ({"seed_mm": (True, 2.0, 3.0)}, "the x coordinate must be a finite number"),
])
def test_corrections_refuse_invalid_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Corrections(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("data", "match"), [
    ("{not json", "not valid JSON"),
    ([1, 2], "must be an object with exclude_visits and seed_mm"),
    ({"exclude": ["M3"]}, "unknown field.*'exclude'"),
    ({"exclude_visits": "M3"}, "exclude_visits must be a list"),
    ({"seed_mm": "1 2 3"}, "seed_mm must be three coordinates"),
    ({"seed_mm": [1, 2, None]}, "the z coordinate must be a finite number"),
])
def test_corrections_from_json_refuses(data: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Corrections.from_json(data)  # type: ignore[arg-type]


def test_visit_labels_and_order() -> None:
    assert visit_label("M3", "92") == "M3"
    assert visit_label("UNSCHEDULED", "45") == "UNSCHEDULED_+45d"
    assert visit_label("UNSCHEDULED", "-3") == "UNSCHEDULED_-3d"
    assert visit_label("UNSCHEDULED", "") == "UNSCHEDULED"
    labels = ["M12", "UNSCHEDULED_+400d", "J0", "UNSCHEDULED_+45d", "PRE", "M1"]
    assert sorted(labels, key=visit_sort_key) == ["PRE", "J0", "M1", "M12", "UNSCHEDULED_+45d", "UNSCHEDULED_+400d"]


# ---------------------------------------------------------------- the store

def test_record_latest_history_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    when = dt.datetime(2024, 5, 6, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with ReviewStore.open(db) as store:
        first = store.record("P1", "P1-L1", "accepted", result_key=KEY_A, reviewer="Dr A", reviewed_at=when)
        second = store.record("P1", "P1-L1", "rejected", "  cement mask leaks  ", result_key=KEY_A,
                              corrections=Corrections(("M3",), (1.0, 2.0, 3.0)))
        store.record("P2", "P2-L1", "accepted", result_key=KEY_B)
    assert first.reviewed_at == "2024-05-06T07:30:00+00:00"  # stored in UTC
    assert second.comment == "cement mask leaks" and second.review_id > first.review_id
    with ReviewStore.open(db) as store:  # a new connection: committed, durable
        latest = store.latest()
        history = store.history("P1", "P1-L1")
        assert store.history("P9", "nope") == []
    assert set(latest) == {("P1", "P1-L1"), ("P2", "P2-L1")}
    assert latest[("P1", "P1-L1")] == second
    assert [r.status for r in history] == ["accepted", "rejected"]
    assert history[0].reviewer == "Dr A" and history[0].corrections == Corrections()
    assert history[1].corrections == Corrections(("M3",), (1.0, 2.0, 3.0))


def test_corrections_in_force(tmp_path: Path) -> None:
    with ReviewStore.open(tmp_path / "catalog.sqlite") as store:
        assert store.corrections() == {}
        store.record("P1", "L1", "rejected", "M3 is another patient's study", result_key=KEY_A,
                     corrections=Corrections(("M3",)))
        # an acceptance leaves them as they are (and may restate them, as the pre-filled form does)
        kept = store.record("P1", "L1", "accepted", result_key=KEY_B)
        store.record("P1", "L1", "accepted", result_key=KEY_B, corrections=Corrections(("M3",)))
        assert kept.corrections == Corrections(("M3",))
        assert store.corrections() == {("P1", "L1"): Corrections(("M3",))}
        # a rejection replaces them; an empty one clears them
        store.record("P1", "L1", "rejected", "seed on the wrong vertebra", result_key=KEY_B,
                     corrections=Corrections(seed_mm=(10.0, 20.0, 30.0)))
        assert store.corrections_for("P1", "L1") == Corrections(seed_mm=(10.0, 20.0, 30.0))
        store.record("P1", "L1", "rejected", "the automatic seed was right after all", result_key=KEY_B)
        assert store.corrections() == {}
        assert store.corrections_for("P1", "L1") == Corrections()


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (("P1", "L1", "rejected", "   "), {}, "a rejection needs a comment"),
    (("P1", "L1", "maybe"), {}, "status must be 'accepted' or 'rejected'"),
    (("", "L1", "accepted"), {}, "patient_id and lesion_id are required"),
    (("P1", "L1", "accepted"), {"result_key": "abc"}, "result_key must be 64 lower-case hex digits"),
    (("P1", "L1", "accepted", "x" * 5001), {}, "comment is 5001 characters long"),
    (("P1", "L1", "accepted"), {"reviewer": "r" * 201}, "reviewer is 201 characters long"),
    (("P1", "L1", "accepted"), {"corrections": Corrections(("M6",))}, "an acceptance keeps the corrections"),
])
def test_record_refuses(tmp_path: Path, args: tuple[str, ...], kwargs: dict[str, object], match: str) -> None:
    with ReviewStore.open(tmp_path / "catalog.sqlite") as store:
        with pytest.raises(ValueError, match=match):
            store.record(*args, **{"result_key": KEY_A, **kwargs})  # type: ignore[arg-type]
        assert store.latest() == {}  # nothing half-stored
        assert store.corrections() == {}


def test_lives_beside_the_pipeline_tables(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    with Catalog.open(db) as catalog:
        assert catalog.patients() == []
    with ReviewStore.open(db) as store:
        store.record("P1", "L1", "accepted", result_key=KEY_A)
    with Catalog.open(db) as catalog:  # the catalog still opens, its tables untouched
        assert catalog.patients() == []
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"files", "series", "qa_reviews", "qa_corrections"} <= tables


def test_waits_for_another_writer_then_commits(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    ReviewStore.open(db).close()
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # a run holding the write lock
    other.execute("CREATE TABLE scratch (x INTEGER)")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.4)
        other.execute("COMMIT")
        released.set()

    with ReviewStore.open(db) as store:
        assert store.latest() == {}  # reading is not blocked by the writer (WAL)
        thread = threading.Thread(target=release)
        thread.start()
        review = store.record("P1", "L1", "accepted", result_key=KEY_A)
        thread.join()
        assert released.is_set()  # it waited for the other writer rather than failing
    seen = other.execute("SELECT status, result_key FROM qa_reviews WHERE id = ?", (review.review_id,)).fetchone()
    assert seen == ("accepted", KEY_A)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()


# ---------------------------------------------------------------- result keys

def test_result_key_ignores_qa_status_order_and_registry_columns(tmp_path: Path) -> None:
    out = _output(tmp_path)
    lesion = read_csv(out / "lesions.csv")[1][0]
    rows = [r for r in read_csv(out / "measurements.csv")[1] if r["lesion_id"] == "P1-L1"]
    key = lesion_result_key(lesion, rows)
    assert len(key) == 64
    relabelled = [dict(r, qa_status="accepted") for r in rows]
    assert lesion_result_key(lesion, list(reversed(relabelled))) == key
    assert lesion_result_key(dict(lesion, vas_before="2"), rows) == key  # a registry column is not a result
    assert lesion_result_key(dict(lesion, reason="local failure: other"), rows) != key
    assert lesion_result_key(lesion, [dict(rows[0], cement_volume_ml="3.93"), *rows[1:]]) != key
    assert lesion_result_key(lesion, [dict(rows[0], notes="moved"), *rows[1:]]) != key
    assert lesion_result_key(lesion, rows[1:]) != key  # a visit less


# ---------------------------------------------------------------- qa_status in measurements.csv

def test_apply_reviews_marks_reviewed_rows_and_keeps_excluded(tmp_path: Path) -> None:
    out = _output(tmp_path)
    before = (out / "measurements.csv").read_bytes()
    with ReviewStore.open(out / "catalog.sqlite") as store:
        store.record("P1", "P1-L1", "accepted", result_key=_key(out, "P1-L1"))
        store.record("P2", "P2-L1", "rejected", "wrong level", result_key="0" * 64)  # other results than these
    assert apply_reviews(out) == 3  # PRE, J0, M3 of P1-L1; M1 stays excluded
    assert _statuses(out) == {
        ("P1-L1", "PRE"): "accepted", ("P1-L1", "J0"): "accepted", ("P1-L1", "M1"): "excluded",
        ("P1-L1", "M3"): "accepted", ("P2-L1", "J0"): "pending", ("P2-L1", "M1"): "pending"}
    lines_before, lines_after = before.decode().splitlines(), (out / "measurements.csv").read_text().splitlines()
    assert lines_after[0] == lines_before[0]  # the header, notes column included
    assert lines_after[4] == lines_before[4].replace("needs_review", "accepted")  # quoting kept: "flag a, flag b"
    assert lines_after[5:] == lines_before[5:]  # the other lesion's rows byte for byte
    after = (out / "measurements.csv").read_bytes()
    assert apply_reviews(out) == 0  # idempotent: nothing rewritten
    assert (out / "measurements.csv").read_bytes() == after
    assert not [p for p in out.iterdir() if ".crav-tmp-" in p.name]


def test_apply_reviews_follows_the_latest_verdict(tmp_path: Path) -> None:
    out = _output(tmp_path)
    with ReviewStore.open(out / "catalog.sqlite") as store:
        store.record("P2", "P2-L1", "accepted", result_key=_key(out, "P2-L1"))
        assert apply_reviews(out) == 2
        store.record("P2", "P2-L1", "rejected", "the M1 height is off", result_key=_key(out, "P2-L1"))
    assert apply_reviews(out) == 2
    assert _statuses(out)[("P2-L1", "J0")] == _statuses(out)[("P2-L1", "M1")] == "rejected"


def test_changed_results_keep_what_the_run_wrote(tmp_path: Path) -> None:
    out = _output(tmp_path)
    with ReviewStore.open(out / "catalog.sqlite") as store:
        store.record("P2", "P2-L1", "accepted", result_key=_key(out, "P2-L1"))
    # a new run changed the M1 residual of P2-L1: the verdict was given on other results
    rows = [r.replace("0.37,pending", "0.38,pending") for r in MEASUREMENT_ROWS]
    (out / "measurements.csv").write_text("\n".join([MEASUREMENTS_HEADER, *rows]) + "\n", encoding="utf-8")
    before = (out / "measurements.csv").read_bytes()
    assert apply_reviews(out) == 0
    assert (out / "measurements.csv").read_bytes() == before


def test_apply_reviews_without_tables_or_reviews(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert apply_reviews(out) == 0  # no measurements.csv, no catalog
    assert not (out / "catalog.sqlite").exists()  # nothing created
    out = _output(tmp_path)
    assert apply_reviews(out) == 0  # no catalog yet
    ReviewStore.open(out / "catalog.sqlite").close()
    before = (out / "measurements.csv").read_bytes()
    assert apply_reviews(out) == 0  # no review yet
    assert (out / "measurements.csv").read_bytes() == before
    (out / "lesions.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"lesions\.csv is missing"):
        apply_reviews(out)
