"""Patient processing without images: every registry lesion still gets a verdict with a reason."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

import flows.patient_flow
from flows.crav_flow import patient_step  # imports Prefect, which sets up logging: before caplog's handler
from flows.patient import process_patient
from pipeline.domain import Lesion, Outcome
from pipeline.ingest.catalog import Catalog
from pipeline.settings import Settings


def test_registry_patient_without_dicom_is_indeterminate_with_reason(tmp_path: Path) -> None:
    lesions = [Lesion("GHOST-1", "GHOST-1-L2", "L2", dt.date(2021, 3, 1)),
               Lesion("GHOST-1", "GHOST-1-ILIAC", "ILIAC_L", dt.date(2021, 3, 1))]
    out = process_patient(Catalog.open(":memory:").patient_index("GHOST-1"), lesions, tmp_path, Settings())
    assert [r.lesion.lesion_id for r in out.results] == ["GHOST-1-L2", "GHOST-1-ILIAC"]
    assert all(r.outcome == Outcome.INDETERMINATE for r in out.results)
    assert all("no DICOM image with this PatientID" in r.reason for r in out.results)
    assert out.measurements == [] and out.problems


def test_unexpected_error_is_contained_and_kept_out_of_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot read /export/DOE^JOHN/IM0001")

    monkeypatch.setattr(flows.patient_flow, "patient_flow", boom)
    lesion = Lesion("P-9", "P-9-L1", "L1", dt.date(2021, 3, 1))
    with caplog.at_level(logging.DEBUG):
        out = patient_step(Catalog.open(":memory:").patient_index("P-9"), [lesion], tmp_path, Settings(), None)
    assert out.failed and out.results[0].outcome == Outcome.INDETERMINATE
    assert "RuntimeError" in out.results[0].reason and "DOE^JOHN" in out.problems[0]  # details kept in run.json
    assert "RuntimeError" in caplog.text
    assert "DOE^JOHN" not in caplog.text and "P-9" not in caplog.text


def test_series_of_a_visit_are_checked_against_the_t1_geometry() -> None:
    """Another frame of reference is flagged for review; a series off the T1's field of view is dropped."""
    import SimpleITK as sitk

    from flows.patient import _same_space
    from pipeline.domain import SeriesRole
    from pipeline.ingest.catalog_schema import SeriesRecord

    def rec(role: SeriesRole, frame: str) -> SeriesRecord:
        return SeriesRecord("1.2.3." + role.value, "1.2", "P", None, "MR", role, "test", "", frame, 10,
                            series_number=7)

    t1 = sitk.Image(40, 40, 10, sitk.sitkFloat32)
    stir = sitk.Image(t1)
    notes: list[str] = []
    assert _same_space(rec(SeriesRole.T1, "1.9.1"), t1, rec(SeriesRole.STIR, "1.9.1"), stir, "STIR", notes)
    assert notes == []
    assert _same_space(rec(SeriesRole.T1, "1.9.1"), t1, rec(SeriesRole.STIR, "1.9.2"), stir, "STIR", notes)
    assert len(notes) == 1 and "frame of reference" in notes[0]
    far = sitk.Image(t1)
    far.SetOrigin((500.0, 0.0, 0.0))
    assert not _same_space(rec(SeriesRole.T1, "1.9.1"), t1, rec(SeriesRole.DCE, "1.9.1"), far, "DCE", notes)
    assert "outside the T1's field of view" in notes[-1] and "series 7" in notes[-1]


def test_follow_up_cement_is_matched_by_level_order_not_by_nearest() -> None:
    """Two cemented levels 28 mm apart, the patient 15 mm lower in the scanner than at J0: the
    lower level's J0 position is now nearer the upper mass (13 mm) than its own (15 mm); the
    cranio-caudal order still maps each mass to its level."""
    import SimpleITK as sitk

    from flows.patient import _same_level_mass
    from pipeline.segmentation.cement import CementMass

    empty = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    upper = CementMass(1, (0.0, 0.0, 43.0), 5.0, empty)
    lower = CementMass(2, (0.0, 0.0, 15.0), 4.0, empty)
    lower_at_j0 = (0.0, 0.0, 30.0)  # the lower mass sat here at J0
    assert _same_level_mass([upper, lower], 2, 1, lower_at_j0) is lower
    assert _same_level_mass([upper, lower], 2, 0, (0.0, 0.0, 58.0)) is upper
    # one mass only (the other not found): the nearest, if close enough; else none
    assert _same_level_mass([lower], 2, 1, lower_at_j0) is lower
    assert _same_level_mass([upper], 2, 1, (0.0, 0.0, 0.0)) is None


def test_a_reviewers_seed_picks_the_nearest_mass_within_reach() -> None:
    """The mass a QA reviewer's seed designates, and at later visits the one nearest to it, whatever the ranks."""
    import SimpleITK as sitk

    from flows.patient import _nearest_mass
    from pipeline.segmentation.cement import CementMass

    empty = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    upper = CementMass(1, (0.0, 0.0, 43.0), 5.0, empty)
    lower = CementMass(2, (0.0, 0.0, 15.0), 4.0, empty)
    assert _nearest_mass([upper, lower], (3.0, -4.0, 20.0), 25.0) is lower  # 7.1 mm away, the upper 23.5
    assert _nearest_mass([upper, lower], (0.0, 0.0, 40.0), 25.0) is upper
    assert _nearest_mass([upper, lower], (0.0, 0.0, -12.0), 25.0) is None  # 27 mm from the nearest: out of reach
    assert _nearest_mass([], (0.0, 0.0, 0.0), 25.0) is None


def test_tissue_enhancing_since_j0_is_not_a_new_nodule() -> None:
    """A structure that enhanced at J0 outside the residual (outside the body's margin) is not new later."""
    import numpy as np
    import SimpleITK as sitk

    from flows.patient import StudyImages, _enhancing_at_j0
    from pipeline.response.enhancement import new_nodules
    from pipeline.segmentation.common import mask_image

    grid = sitk.Image(20, 20, 10, sitk.sitkFloat32)
    grid.SetSpacing((1.25, 1.25, 3.0))
    residual_arr = np.zeros((10, 20, 20), bool)
    residual_arr[4:7, 4:9, 4:9] = True
    enhancing = residual_arr.copy()
    enhancing[3:8, 12:18, 12:18] = True  # e.g. a vessel or another level's tumour, present at J0
    residual = mask_image(residual_arr, grid)
    study = StudyImages("1.2.3", None, grid, None, [grid], np.arange(1.0), {}, enhancing=enhancing)
    known = sitk.GetArrayFromImage(_enhancing_at_j0(residual, study)).astype(bool)
    later = np.zeros_like(residual_arr)
    later[3:8, 12:18, 12:18] = True  # the same structure, now inside the margin of the body
    later[4:7, 14:19, 1:6] = True  # and a nodule that did not enhance at J0
    spacing = (3.0, 1.25, 1.25)
    assert new_nodules(later, residual_arr, spacing, min_ml=0.1) == pytest.approx([0.84375, 0.3515625])
    assert new_nodules(later, known, spacing, min_ml=0.1) == pytest.approx([0.3515625])
    # without the J0 enhancement map (no DCE at J0) the residual alone is what was known
    bare = StudyImages("1.2.3", None, grid, None, None, None, {})
    assert sitk.GetArrayFromImage(_enhancing_at_j0(residual, bare)).astype(bool).sum() == residual_arr.sum()
