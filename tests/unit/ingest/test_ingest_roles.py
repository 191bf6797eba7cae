"""Series roles from header fields, with reasons (pipeline.ingest.roles)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from ingest_factory import SAGITTAL, make_dataset

from pipeline.domain import SeriesRole
from pipeline.ingest.headers import dicom_time_s
from pipeline.ingest.roles import decide_role, group_dynamic_series, summarise_series

ORIGINAL = ["ORIGINAL", "PRIMARY", "M", "ND"]


def mr(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Modality": "MR",
        "ImageType": ORIGINAL,
        "SeriesInstanceUID": "1.2",
        "StudyInstanceUID": "1",
    }
    base.update(fields)
    return base


T1 = mr(
    ScanningSequence="SE",
    SequenceVariant=["SK", "SP"],
    RepetitionTime=550,
    EchoTime=12,
    SeriesDescription="t2_misleading_name",
)


@pytest.mark.parametrize(
    ("header", "role", "in_reason"),
    [
        (T1, SeriesRole.T1, "ScanningSequence=SE, SequenceVariant=SK\\SP, no fat-sat in ScanOptions"),
        (mr(ScanningSequence="SE", RepetitionTime=4000, EchoTime=95), SeriesRole.T2, "TR=4000 ms, TE=95 ms"),
        (
            mr(ScanningSequence=["SE", "IR"], InversionTime=150, RepetitionTime=3500, EchoTime=40),
            SeriesRole.STIR,
            "InversionTime=150 ms (short tau)",
        ),
        (
            mr(ScanningSequence="IR", InversionTime=2500, RepetitionTime=9000, EchoTime=90),
            SeriesRole.OTHER,
            "FLAIR",
        ),
        (
            mr(
                ScanningSequence="SE",
                ScanOptions="FS",
                ContrastBolusAgent="Gadovist",
                RepetitionTime=600,
                EchoTime=11,
            ),
            SeriesRole.T1_FS_POST,
            "ScanOptions has FS, ContrastBolusAgent set",
        ),
        (
            mr(
                ScanningSequence="SE",
                ScanOptions=["FAST_GEMS", "SAT_GEMS"],
                ContrastBolusAgent="Gd",
                RepetitionTime=600,
                EchoTime=11,
            ),
            SeriesRole.T1_FS_POST,
            "ScanOptions has SAT_GEMS",
        ),
        (
            mr(ScanningSequence="SE", RepetitionTime=600, EchoTime=11, ContrastBolusAgent="Gd"),
            SeriesRole.OTHER,
            "match no protocol role",
        ),
        (
            mr(
                ScanningSequence="GR",
                SequenceVariant="SP",
                ScanOptions="FS",
                ContrastBolusAgent="Gd",
                RepetitionTime=5,
                EchoTime=2,
                NumberOfTemporalPositions=30,
            ),
            SeriesRole.DCE,
            "ScanningSequence=GR, SequenceVariant=SP, ScanOptions has FS, ContrastBolusAgent set, "
            "30 temporal positions (NumberOfTemporalPositions) -> DCE",
        ),
        (mr(ScanningSequence="EP", DiffusionBValue=800), SeriesRole.DWI, "DiffusionBValue up to 800"),
        (mr(ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]), SeriesRole.ADC, "has ADC"),
        (mr(ImageType=["DERIVED", "SECONDARY", "MPR"]), SeriesRole.DERIVED, "is DERIVED"),
        (mr(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), SeriesRole.LOCALIZER, "has LOCALIZER"),
        ({"Modality": "CT", "ImageType": ORIGINAL}, SeriesRole.CT, "Modality=CT"),
        ({"Modality": "CT", "ImageType": ["DERIVED", "SECONDARY"]}, SeriesRole.DERIVED, "ImageType DERIVED"),
        ({"Modality": "PT"}, SeriesRole.OTHER, "Modality=PT is neither MR nor CT"),
        (mr(SeriesDescription="Sag T1 FSE"), SeriesRole.T1, "SeriesDescription 'Sag T1 FSE' as tie-breaker"),
        (mr(SeriesDescription="T1W_TSE_SAG"), SeriesRole.T1, "tie-breaker -> T1"),
        (mr(SeriesDescription="stir_sag"), SeriesRole.STIR, "tie-breaker -> STIR"),
        (mr(SeriesDescription="t1_fs_sag_post_gd"), SeriesRole.T1_FS_POST, "tie-breaker"),
        (mr(SeriesDescription="T2 sag"), SeriesRole.T2, "tie-breaker"),
        (mr(SeriesDescription="vibe_dyn"), SeriesRole.DCE, "tie-breaker"),
        (
            mr(SeriesDescription="whatever"),
            SeriesRole.OTHER,
            "ScanningSequence, RepetitionTime, EchoTime absent",
        ),
    ],
)
def test_role_rules(header: dict[str, Any], role: SeriesRole, in_reason: str) -> None:
    decision = decide_role([header])
    assert decision.role is role
    assert in_reason in decision.reason


def test_description_is_only_a_tie_breaker() -> None:
    assert decide_role([T1]).role is SeriesRole.T1  # described as t2, header says T1


def test_dce_from_temporal_identifiers_and_from_times() -> None:
    base = mr(
        ScanningSequence="GR",
        ScanOptions="FS",
        RepetitionTime=5,
        EchoTime=2,
        ImageOrientationPatient=list(SAGITTAL),
    )
    by_id = [
        dict(base, TemporalPositionIdentifier=t, ImagePositionPatient=[0, 0, z])
        for t in (1, 2, 3)
        for z in (0, 3)
    ]
    assert "3 temporal positions (TemporalPositionIdentifier)" in decide_role(by_id).reason
    by_time = [dict(base, AcquisitionTime=f"10000{t}", ImagePositionPatient=[0, 0, 0]) for t in range(4)]
    decision = decide_role(by_time)
    assert decision.role is SeriesRole.DCE
    assert "4 temporal positions (AcquisitionTime/TriggerTime at one position)" in decision.reason


def test_decide_role_accepts_pydicom_datasets() -> None:
    ds = make_dataset(ScanningSequence=["SE", "IR"], InversionTime=160, RepetitionTime=3000, EchoTime=30)
    assert decide_role([ds]).role is SeriesRole.STIR


def test_empty_series_raises() -> None:
    with pytest.raises(ValueError, match="headers is empty"):
        decide_role([])
    with pytest.raises(ValueError, match="headers is empty"):
        summarise_series([])


def test_dicom_time() -> None:
    assert dicom_time_s("101530.5") == pytest.approx(36930.5)
    assert dicom_time_s("10:15:30") == pytest.approx(36930.0)
    assert dicom_time_s("") is None
    assert dicom_time_s("xx") is None


def _phase(uid: str, time: str, *, study: str = "1", z0: float = 0.0, **extra: Any) -> list[dict[str, Any]]:
    h = mr(
        SeriesInstanceUID=uid,
        StudyInstanceUID=study,
        FrameOfReferenceUID=study + ".9",
        ScanningSequence="GR",
        SequenceVariant="SP",
        ScanOptions="FS",
        RepetitionTime=5,
        EchoTime=2,
        AcquisitionTime=time,
        ImageOrientationPatient=list(SAGITTAL),
        Rows=6,
        Columns=5,
    )
    h.update(extra)
    return [dict(h, ImagePositionPatient=[z0 - 3.0 * k, 0.0, 0.0]) for k in range(4)]


def test_split_dce_regrouped_in_time_order() -> None:
    phases = [_phase(f"1.{i}", f"1000{10 * i:02d}") for i in range(5)]
    other_geometry = _phase("2.0", "100100", z0=50.0)
    other_study = _phase("3.0", "100110", study="2")
    t1 = [dict(T1, SeriesInstanceUID="4.0")]
    summaries = [summarise_series(p) for p in [*phases, other_geometry, other_study, t1]]
    random.Random(0).shuffle(summaries)
    groups = group_dynamic_series(summaries)
    assert len(groups) == 1
    assert groups[0].series_uids == ("1.0", "1.1", "1.2", "1.3", "1.4")
    assert groups[0].group_id.startswith("dyn-")
    assert "5 series with the same geometry (ScanningSequence=GR, SequenceVariant SP, ScanOptions has FS" in (
        groups[0].reason
    )
    assert group_dynamic_series(list(reversed(summaries)))[0].group_id == groups[0].group_id


def test_pre_post_pair_is_not_a_dynamic() -> None:
    pair = [summarise_series(_phase(f"1.{i}", f"1000{10 * i:02d}")) for i in range(2)]
    assert group_dynamic_series(pair) == []
    assert len(group_dynamic_series(pair, min_phases=2)) == 1
