"""Cohort design (rendering only a tiny patient): proportions, visit schedule, determinism, file naming, refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.domain import VISIT_WINDOWS_DAYS, Visit
from pipeline.phantom import design as ds
from pipeline.phantom import generate as gen
from pipeline.phantom.acquire import FileNamer, Profile

COHORT_N, COHORT_SEED = 25, 1


@pytest.fixture(scope="module")
def cohort() -> list[ds.PatientDesign]:
    return ds.design_cohort(COHORT_N, COHORT_SEED)


def _lesions(cohort: list[ds.PatientDesign]) -> list[tuple[ds.PatientDesign, ds.LesionDesign]]:
    return [(p, d) for p in cohort for d in p.lesions]


def _in_window(visit: Visit, day: int) -> bool:
    _, first, last = VISIT_WINDOWS_DAYS[visit]
    return first <= day <= last


def test_cohort_size_and_ids(cohort: list[ds.PatientDesign]) -> None:
    assert len(cohort) == COHORT_N
    assert len({p.patient_id for p in cohort}) == COHORT_N
    lesions = _lesions(cohort)
    assert 30 <= len(lesions) <= 75  # 1-3 lesions per patient
    assert len({d.lesion_id for _, d in lesions}) == len(lesions)
    for p, d in lesions:
        assert d.lesion_id.startswith(p.patient_id) and d.level in p.levels
    assert {p.vendor for p in cohort} == set(ds.VENDORS)
    assert {p.dce_split for p in cohort} == {True, False}


def test_course_proportions_follow_the_study(cohort: list[ds.PatientDesign]) -> None:
    lesions = [d for _, d in _lesions(cohort)]
    n = len(lesions)
    no_residual = sum(d.course in (ds.Course.CONTROL_NO_RESIDUAL, ds.Course.FAILURE_NEW_NODULE) for d in lesions)
    failures = sum(d.course in (ds.Course.FAILURE_RESIDUAL, ds.Course.FAILURE_NEW_NODULE) for d in lesions)
    assert 0.40 <= no_residual / n <= 0.70, f"{no_residual}/{n} lesions without J0 residual"
    assert 0.10 <= failures / n <= 0.30, f"{failures}/{n} failures"
    for d in lesions:
        residual_course = d.course in (ds.Course.CONTROL_RESIDUAL, ds.Course.FAILURE_RESIDUAL)
        assert (d.j0_residual_ml > 0) == residual_course, d.lesion_id
        assert (d.onset is not None) == (d.course in (ds.Course.FAILURE_RESIDUAL, ds.Course.FAILURE_NEW_NODULE))


def test_failure_onsets_are_observable(cohort: list[ds.PatientDesign]) -> None:
    n_failures = 0
    for p, d in _lesions(cohort):
        if d.onset is None:
            continue
        n_failures += 1
        mr_visits = [s.visit for s in sorted(p.studies, key=lambda s: s.day) if s.modality == "MR"]
        assert d.onset in mr_visits, f"{d.lesion_id}: onset {d.onset} has no MR study"
        assert d.onset in (Visit.M1, Visit.M3, Visit.M6)
        if d.onset == Visit.M1:
            later = [v for v in mr_visits[mr_visits.index(Visit.M1) + 1:] if v in ds.FOLLOW_UPS]
            assert later, f"{d.lesion_id}: an M1 rise needs a later scheduled follow-up to confirm it"
    assert n_failures > 0


def test_mr_studies_lie_in_their_visit_windows(cohort: list[ds.PatientDesign]) -> None:
    unscheduled = []
    for p in cohort:
        for s in p.studies:
            if s.visit == Visit.UNSCHEDULED:
                unscheduled.append((p.patient_id, s))
                continue
            assert _in_window(s.visit, s.day), f"{p.patient_id}: {s.modality} {s.visit.value} on day {s.day}"
        mr = [s.visit for s in p.studies if s.modality == "MR" and s.visit != Visit.UNSCHEDULED]
        assert len(mr) == len(set(mr)), f"{p.patient_id}: one MR study per visit"
        assert {Visit.PRE, Visit.J0, Visit.M1} <= set(mr)
        assert any(s.modality == "CT" and s.visit == Visit.PRE and s.day < 0 for s in p.studies)
    assert len(unscheduled) == 1, f"exactly one UNSCHEDULED study expected, got {unscheduled}"
    _, extra = unscheduled[0]
    assert extra.modality == "MR"
    assert not any(_in_window(v, extra.day) for v in VISIT_WINDOWS_DAYS), f"day {extra.day} is inside a window"


def test_some_visits_are_missed(cohort: list[ds.PatientDesign]) -> None:
    late = {Visit.M3, Visit.M6, Visit.M12}
    complete = [p for p in cohort if late <= {s.visit for s in p.studies if s.modality == "MR"}]
    assert 0 < len(complete) < len(cohort), "some, not all, patients have every follow-up"


def test_design_is_deterministic(cohort: list[ds.PatientDesign]) -> None:
    again = ds.design_cohort(COHORT_N, COHORT_SEED)
    assert [dataclasses.asdict(p) for p in again] == [dataclasses.asdict(p) for p in cohort]
    other = ds.design_cohort(COHORT_N, COHORT_SEED + 1)
    assert [dataclasses.asdict(p) for p in other] != [dataclasses.asdict(p) for p in cohort]


def test_designed_failure_residual_grows_past_the_rule(cohort: list[ds.PatientDesign]) -> None:
    """The design's own volumes cross SPEC section 5's rule at onset and never before it."""
    for p, d in _lesions(cohort):
        days = {s.visit: s.day for s in p.studies if s.modality == "MR" and s.visit != Visit.UNSCHEDULED}
        j0_total = sum(ds.residual_ml_at(d, days[Visit.J0], days))
        nadir = j0_total
        for v in [v for v in ds.FOLLOW_UPS if v in days]:
            vol = sum(ds.residual_ml_at(d, days[v], days))
            crosses = vol >= nadir + max(0.5, 0.73 * nadir)
            if d.onset is not None and days[v] >= days[d.onset]:
                assert crosses, f"{d.lesion_id} {v.value}: {vol:.2f} mL does not cross nadir {nadir:.2f}"
            else:
                assert not crosses, f"{d.lesion_id} {v.value}: {vol:.2f} mL crosses before onset"
                nadir = min(nadir, vol)


def test_sample_design_covers_the_documented_courses() -> None:
    patients = gen.sample_design()
    assert len(patients) == 3 and sum(len(p.lesions) for p in patients) == 4
    courses = {d.course for p in patients for d in p.lesions}
    assert courses == {ds.Course.CONTROL_NO_RESIDUAL, ds.Course.CONTROL_RESIDUAL, ds.Course.FAILURE_RESIDUAL}
    assert [p.vendor for p in patients] == list(ds.VENDORS)
    assert [p.dce_split for p in patients] == [False, True, False]
    assert not any(s.visit == Visit.UNSCHEDULED for p in patients for s in p.studies)


# --- the generator's refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -3])
def test_generate_cohort_refuses_no_patients(tmp_path: Path, n: int) -> None:
    with pytest.raises(ValueError, match=rf"n_patients must be >= 1, got {n}"):
        gen.generate_cohort(tmp_path / "cohort", n_patients=n, seed=5)
    assert not (tmp_path / "cohort").exists(), "nothing is written before the arguments are checked"


def test_generate_cohort_refuses_the_sample_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"seed {gen.SAMPLE_SEED} is reserved for the bundled sample"):
        gen.generate_cohort(tmp_path / "cohort", n_patients=2, seed=gen.SAMPLE_SEED)
    assert not (tmp_path / "cohort").exists()


TINY = Profile(
    name="tiny", sag_matrix=16, sag_pixel_mm=8.0, sag_slices=3, sag_spacing_mm=10.0, sag_thickness_mm=8.0,
    dce_matrix=8, dce_pixel_mm=8.0, dce_slices=2, dce_spacing_mm=10.0, dce_phases=3, dce_dt_s=20.0,
    ct_matrix=8, ct_pixel_mm=8.0, ct_slices=2, ct_spacing_mm=10.0, compress_roles=(),
)


def test_generate_patient_refuses_a_design_its_truth_contradicts(tmp_path: Path) -> None:
    """A lesion designed to fail at M1 whose drawn volumes never grow is caught, not written as truth."""
    p = gen.sample_design()[0]
    p.studies = [s for s in p.studies if s.modality == "MR" and s.visit in (Visit.J0, Visit.M1)]
    lesion = p.lesions[0]
    assert lesion.course == ds.Course.CONTROL_NO_RESIDUAL  # no residual blob: nothing can grow
    lesion.onset = Visit.M1
    with pytest.raises(RuntimeError, match=rf"phantom design inconsistent for {lesion.lesion_id}: designed "
                                           r"local_failure .*truth volumes give \('local_control', None\)"):
        gen.generate_patient(p, tmp_path, TINY)


# --- export layout ------------------------------------------------------------------------------------

#: Files per series of a full-profile MR study with split DCE: 3 localizer images (one call each), T1, STIR,
#: 25 DCE phases of 20 slices, T1 FS post.
FULL_SPLIT_STUDY = [1, 1, 1, 15, 15, *([20] * 25), 15]


def test_file_namer_never_reuses_a_path() -> None:
    clashes = {}
    for seed in range(300):
        namer = FileNamer(Path("export"), np.random.default_rng(seed))
        paths = [p for n in FULL_SPLIT_STUDY for p in namer.names(namer.series_dir(), n)]
        if len(set(paths)) != len(paths):
            clashes[seed] = len(paths) - len(set(paths))
    assert not clashes, f"FileNamer seeds whose study reuses file paths (seed: paths written twice): {clashes}"


def test_file_namer_is_deterministic_and_opaque() -> None:
    a, b = (FileNamer(Path("export"), np.random.default_rng(7)) for _ in range(2))
    paths_a = [p for n in (3, 5) for p in a.names(a.series_dir(), n)]
    paths_b = [p for n in (3, 5) for p in b.names(b.series_dir(), n)]
    assert paths_a == paths_b
    assert all(p.parts[0] == "export" and 2 <= len(p.parts) <= 4 for p in paths_a)
