"""Phantom anatomy and truth helpers on small grids: volumes, masks, heights and verdicts by construction."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from pipeline.domain import Visit
from pipeline.phantom import anatomy as an
from pipeline.phantom import design as ds
from pipeline.phantom.generate import _lesion_geometry
from pipeline.phantom.truth import genant_grade, truth_verdict

FINE_ML = an.FINE_SPACING_MM**3 / 1000.0


def _grid(half_mm: float = 16.0, step: float = an.FINE_SPACING_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.arange(-half_mm, half_mm + step / 2, step)
    u, v, w = np.meshgrid(axis, axis, axis, indexing="ij")
    return u, v, w


IRREGULAR = an.Blob((1.0, -0.5, 0.3), (7.0, 5.0, 6.0),
                    ((1.3, -2.0, 0.7, 0.4, 0.12), (-0.8, 1.1, 2.4, 2.0, 0.08), (2.2, 0.3, -1.5, 4.1, 0.1)))


# --- scale_for_volume -----------------------------------------------------------------------------


@pytest.mark.parametrize("target_ml", [0.05, 0.5, 1.0, 2.7])
def test_scale_for_volume_hits_target_within_one_voxel(target_ml: float) -> None:
    u, v, w = _grid()
    allowed = v < 3.0  # a half-space cutting the blob: the volume counts inside ``allowed`` only
    scale = an.scale_for_volume(target_ml, (IRREGULAR,), u, v, w, allowed, FINE_ML)
    got_ml = float((IRREGULAR.inside(u, v, w, scale) & allowed).sum()) * FINE_ML
    assert abs(got_ml - target_ml) <= FINE_ML
    assert scale > 0


def test_scale_for_volume_of_a_union_of_blobs() -> None:
    u, v, w = _grid()
    blobs = (an.Blob((-4.0, 0.0, 0.0), (3.0, 3.0, 3.0)), an.Blob((4.0, 1.0, -1.0), (4.0, 3.0, 2.5)))
    allowed = np.ones(u.shape, dtype=bool)
    scale = an.scale_for_volume(0.6, blobs, u, v, w, allowed, FINE_ML)
    union = blobs[0].inside(u, v, w, scale) | blobs[1].inside(u, v, w, scale)
    assert abs(float(union.sum()) * FINE_ML - 0.6) <= FINE_ML


def test_scale_for_volume_of_nothing_is_zero() -> None:
    u, v, w = _grid(4.0)
    assert an.scale_for_volume(0.0, (IRREGULAR,), u, v, w, np.ones(u.shape, dtype=bool), FINE_ML) == 0.0


def test_scale_for_volume_refuses_a_blob_larger_than_its_region() -> None:
    u, v, w = _grid(4.0)
    allowed = np.ones(u.shape, dtype=bool)
    too_big = allowed.sum() * FINE_ML + 0.1
    with pytest.raises(ValueError, match=r"does not fit in its allowed region"):
        an.scale_for_volume(too_big, (IRREGULAR,), u, v, w, allowed, FINE_ML)


# --- Blob -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("blob", [IRREGULAR, an.Blob((0.0, 0.0, 0.0), (5.0, 4.0, 6.0))], ids=["irregular", "ellipsoid"])
def test_blob_inside_is_monotone_in_scale(blob: an.Blob) -> None:
    u, v, w = _grid()
    scales = [0.0, 0.2, 0.5, 0.8, 1.0, 1.3, 1.7]
    masks = [blob.inside(u, v, w, s) for s in scales]
    for small, large in itertools.pairwise(masks):
        assert not np.any(small & ~large), "a point inside the smaller blob left the larger one"
    counts = [int(m.sum()) for m in masks]
    assert counts == sorted(counts) and counts[-1] > counts[1] > 0


def test_random_blob_is_reproducible_and_irregular() -> None:
    a = an.random_blob(np.random.default_rng(4), (0.0, 0.0, 0.0), (5.0, 5.0, 5.0))
    b = an.random_blob(np.random.default_rng(4), (0.0, 0.0, 0.0), (5.0, 5.0, 5.0))
    assert a == b and len(a.harmonics) == 3
    u, v, w = _grid(8.0)
    sphere = an.Blob((0.0, 0.0, 0.0), (5.0, 5.0, 5.0))
    assert np.any(a.inside(u, v, w) != sphere.inside(u, v, w))


# --- heights by construction ----------------------------------------------------------------------


@pytest.mark.parametrize("heights", [(21.0, 22.5, 24.0), (15.0, 24.0, 24.0), (24.0, 16.0, 24.0)])
def test_height_profile_passes_through_the_three_heights(heights: tuple[float, float, float]) -> None:
    depth = 31.0
    got = an.height_profile_mm(np.array([-0.4, 0.0, 0.4]) * depth, depth, heights)
    np.testing.assert_allclose(got, heights, rtol=0, atol=1e-9)


def test_body_shape_extent_along_w_equals_height_profile() -> None:
    vert = an.Vertebra("L1", (0.0, 0.0, 0.0), 0.0, 40.0, 30.0, (18.0, 21.0, 25.0))
    w = np.arange(-20.0, 20.0 + 1e-9, 0.01)
    for frac, height in zip((-0.4, 0.0, 0.4), vert.heights_mm, strict=True):
        v = np.full_like(w, frac * vert.depth_mm)
        inside = an.body_shape(np.zeros_like(w), v, w, vert, vert.heights_mm)
        extent = w[inside].max() - w[inside].min()
        assert extent == pytest.approx(height, abs=0.02)


# --- draw_treated on a small column ---------------------------------------------------------------


@dataclass
class Treated:
    col: an.Column
    labels: np.ndarray
    design: ds.LesionDesign
    masks: an.TreatedMasks
    residual_ml: float


def _l1_lesion() -> tuple[an.Column, an.Vertebra, ds.LesionDesign, an.LesionGeometry]:
    """A treated L1 with 5 mL of cement and no epidural part, in a T12-L2 column (seed 11)."""
    rng = np.random.default_rng(11)
    col = an.build_column(rng, ["T12", "L1", "L2"])
    vert = next(v for v in col.vertebrae if v.level == "L1")
    design = ds.design_lesion(rng, "TEST-L1", "L1", ds.Course.CONTROL_RESIDUAL,
                              [Visit.PRE, Visit.J0, Visit.M1, Visit.M3])
    design.cement_ml = 5.0
    design.epidural = False
    return col, vert, design, _lesion_geometry(rng, col, vert, design)


@pytest.fixture(scope="module")
def treated() -> Treated:
    col, vert, design, geom = _l1_lesion()
    labels = an.base_labels(col, {"L1"}).copy()
    state = an.LesionVisitState(heights_mm=vert.heights_mm, treated=True, residual_ml=1.0, new_nodule_ml=0.0,
                                rim_mm=1.5)
    return Treated(col, labels, design, an.draw_treated(col, labels, vert, geom, state), 1.0)


def test_draw_treated_cement_volume_matches_design(treated: Treated) -> None:
    cement_ml = float(treated.masks.cement.sum()) * FINE_ML
    assert cement_ml == pytest.approx(treated.design.cement_ml, rel=0.02)
    residual_ml = float(treated.masks.residual.sum()) * FINE_ML
    assert residual_ml == pytest.approx(treated.residual_ml, rel=0.02)
    assert treated.masks.ablation.sum() * FINE_ML > 1.0


def test_draw_treated_masks_are_disjoint_and_inside_the_vertebra(treated: Treated) -> None:
    m = treated.masks
    assert not np.any(m.cement & m.ablation)
    assert not np.any(m.cement & m.residual)
    assert not np.any(m.ablation & m.residual)
    assert np.all(m.vertebra[m.cement]) and np.all(m.vertebra[m.ablation])


def test_draw_treated_labels_agree_with_masks(treated: Treated) -> None:
    sub = treated.labels[treated.masks.box]
    m = treated.masks
    np.testing.assert_array_equal(sub == an.CEMENT, m.cement)
    np.testing.assert_array_equal(sub == an.ABLATION, m.ablation)
    np.testing.assert_array_equal(sub == an.RESIDUAL, m.residual)
    rim = sub == an.RIM
    assert rim.any(), "a 1.5 mm rim was asked for"
    assert not np.any(rim & (m.cement | m.ablation | m.residual))
    assert not np.any(sub == an.TUMOUR), "the whole tumour is treated (ablated or residual)"


def test_collapsed_body_keeps_its_cement_inside_and_a_large_residual_fits() -> None:
    """After a collapse the cement stays within the lower body; a residual designed too large fills the room."""
    col, vert, _, geom = _l1_lesion()
    j0 = an.LesionVisitState(vert.heights_mm, treated=True, residual_ml=1.0, new_nodule_ml=0.0, rim_mm=0.0)
    at_j0 = an.draw_treated(col, an.base_labels(col, {"L1"}).copy(), vert, geom, j0)  # caches the cement
    collapsed = (vert.heights_mm[0] * 0.6, vert.heights_mm[1] * 0.75, vert.heights_mm[2])
    later = an.LesionVisitState(collapsed, treated=True, residual_ml=500.0, new_nodule_ml=0.0, rim_mm=0.0)
    masks = an.draw_treated(col, an.base_labels(col, {"L1"}).copy(), vert, geom, later)
    u, v, w = an._local_coords(col, vert, masks.box)
    body = an.body_shape(u, v, w, vert, collapsed)
    assert masks.cement.any() and np.all(body[masks.cement])  # nothing sticks out of the endplates
    assert masks.cement.sum() < at_j0.cement.sum()
    # 500 mL cannot fit (it used to raise): the residual fills most of the free room instead
    marrow_left = an.body_shape(u, v, w, vert, collapsed, an.CORTEX_MM) & ~masks.cement & ~masks.ablation
    assert 0.5 * marrow_left.sum() < masks.residual.sum() and masks.residual.sum() * FINE_ML < 500.0


def test_draw_treated_before_treatment_has_tumour_and_no_treatment_masks() -> None:
    rng = np.random.default_rng(12)
    col = an.build_column(rng, ["L1", "L2", "L3"])
    vert = next(v for v in col.vertebrae if v.level == "L2")
    design = ds.design_lesion(rng, "TEST-L2", "L2", ds.Course.CONTROL_NO_RESIDUAL, [Visit.PRE, Visit.J0, Visit.M1])
    geom = _lesion_geometry(rng, col, vert, design)
    labels = an.base_labels(col, {"L2"}).copy()
    state = an.LesionVisitState(vert.heights_mm, treated=False, residual_ml=0.0, new_nodule_ml=0.0, rim_mm=0.0)
    masks = an.draw_treated(col, labels, vert, geom, state)
    assert not (masks.cement.any() or masks.ablation.any() or masks.residual.any())
    assert masks.vertebra.any()
    sub = labels[masks.box]
    assert np.any(sub == an.TUMOUR) and not np.any(sub == an.CEMENT)


# --- truth: Genant grade and verdict --------------------------------------------------------------


@pytest.mark.parametrize(("reduction", "grade"), [
    (0.0, 0),
    (0.199, 0),
    (0.20, 1),  # 1 - 16/20 is 0.19999999999999996 in floating point: still a 20 % reduction
    (0.21, 1),
    (0.25, 2),
    (0.40, 2),
    (0.41, 3),
])
def test_genant_grade_boundaries(reduction: float, grade: int) -> None:
    hp = 20.0
    reduced = hp * (1 - reduction)
    assert genant_grade(reduced, hp, hp) == grade, "wedge (anterior)"
    assert genant_grade(hp, reduced, hp) == grade, "biconcave (middle)"


def test_genant_grade_takes_the_worse_of_wedge_and_biconcavity() -> None:
    assert genant_grade(19.0, 11.0, 20.0) == 3
    assert genant_grade(11.0, 19.0, 20.0) == 3
    assert genant_grade(21.0, 21.0, 20.0) == 0  # taller front than back is no reduction


def _rec(*visits: tuple[str, int, float]) -> dict[str, Any]:
    return {"visits": [{"timepoint": tp, "days_from_procedure": day, "residual_enhancing_volume_ml": vol}
                       for tp, day, vol in visits]}


@pytest.mark.parametrize(("rec", "expected"), [
    pytest.param(_rec(("PRE", -7, 0.0), ("J0", 1, 1.0), ("M1", 30, 1.0), ("M3", 90, 0.9), ("M6", 180, 0.8)),
                 ("local_control", None), id="control-stable"),
    pytest.param(_rec(("J0", 0, 1.0), ("M1", 30, 1.1), ("M3", 90, 3.0), ("M6", 180, 4.0)),
                 ("local_failure", "M3"), id="failure-at-M3"),
    pytest.param(_rec(("J0", 0, 1.0), ("M1", 30, 2.5), ("M3", 90, 1.0), ("M6", 180, 1.0)),
                 ("local_control", None), id="M1-rise-not-confirmed"),
    pytest.param(_rec(("J0", 0, 1.0), ("M1", 30, 2.5), ("M3", 90, 3.0)),
                 ("local_failure", "M1"), id="M1-rise-confirmed-keeps-M1"),
    pytest.param(_rec(("J0", 0, 1.0), ("M1", 30, 2.5)),
                 ("local_failure", "M1"), id="M1-rise-without-later-visit"),
    pytest.param(_rec(("J0", 1, 0.0), ("M1", 30, 0.0), ("M3", 90, 0.6)),
                 ("local_failure", "M3"), id="new-nodule-without-J0-residual"),
    pytest.param(_rec(("J0", 0, 2.0), ("M1", 30, 0.5), ("M3", 90, 1.0)),
                 ("local_failure", "M3"), id="rise-from-nadir"),
    pytest.param(_rec(("J0", 0, 2.0), ("M1", 30, 0.5), ("M3", 90, 0.99)),
                 ("local_control", None), id="just-below-nadir-rule"),
])
def test_truth_verdict_on_hand_made_visits(rec: dict[str, Any], expected: tuple[str, str | None]) -> None:
    assert truth_verdict(rec) == expected
