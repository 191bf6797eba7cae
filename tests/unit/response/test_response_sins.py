"""Partial SINS: location table, CT lesion quality rule, collapse from heights, missing components."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.response.sins import (
    COMPONENT_MAX,
    BoneQuality,
    SinsComponent,
    body_involvement_pct,
    bone_lesion_quality,
    collapse_component,
    location_component,
    partial_sins,
)

# ---------------------------------------------------------------- location (Fisher et al. 2010)

EXPECTED_LOCATION = {
    **dict.fromkeys(["C1", "C2", "C7", "T1", "T2", "T11", "T12", "L1", "L5", "S1"], 3),
    **dict.fromkeys(["C3", "C4", "C5", "C6", "L2", "L3", "L4"], 2),
    **dict.fromkeys([f"T{i}" for i in range(3, 11)], 1),
    **dict.fromkeys(["S2", "S3", "S4", "S5"], 0),
}


@pytest.mark.parametrize(("level", "score"), sorted(EXPECTED_LOCATION.items()))
def test_location_every_level(level: str, score: int) -> None:
    c = location_component(level)
    assert (c.name, c.score, c.min_score, c.max_score) == ("location", score, score, score)


def test_location_synonyms_sacrum_and_non_spinal() -> None:
    assert location_component(" d12 ").score == 3 and location_component("D5").score == 1
    sacrum = location_component("SACRUM")
    assert sacrum.score is None and (sacrum.min_score, sacrum.max_score) == (0, 3)
    with pytest.raises(ValueError, match="spinal lesions only"):
        location_component("ILIAC_L")
    with pytest.raises(ValueError, match="not a vertebral level"):
        location_component("T13")


# ---------------------------------------------------------------- bone lesion quality

def _body(shape: tuple[int, int, int] = (24, 24, 24)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[2:-2, 2:-2, 2:-2] = True
    return m


def _ct(body: np.ndarray, inside: float, cortex: float = 1200.0) -> np.ndarray:
    """Interior at ``inside`` HU with a 1-voxel cortical shell at ``cortex`` HU."""
    ct = np.full(body.shape, -50.0)
    ct[body] = cortex
    ct[3:-3, 3:-3, 3:-3] = inside
    return ct


SPACING = (1.0, 1.0, 1.0)


def test_quality_lytic_blastic_mixed() -> None:
    body = _body()
    lytic = bone_lesion_quality(_ct(body, 40.0), body, SPACING, normal_marrow_hu=200.0)
    assert lytic.category == "lytic" and lytic.score == 2 and lytic.lytic_fraction == 1.0
    assert lytic.blastic_fraction == 0.0  # the 1200 HU cortex is in the removed shell
    blastic = bone_lesion_quality(_ct(body, 800.0), body, SPACING, normal_marrow_hu=200.0)
    assert blastic.category == "blastic" and blastic.score == 0
    ct = _ct(body, 40.0)
    ct[12:, :, :] = np.where(body[12:], 800.0, ct[12:])  # caudal half blastic
    mixed = bone_lesion_quality(ct, body, SPACING, normal_marrow_hu=200.0)
    assert mixed.category == "mixed" and mixed.score == 1
    assert 0.3 < mixed.lytic_fraction < 0.7 and 0.3 < mixed.blastic_fraction < 0.7
    assert "mixed:" in mixed.reason and "lytic < 100 HU" in mixed.reason


def test_quality_normal_bone_is_undecided_not_guessed() -> None:
    body = _body()
    q = bone_lesion_quality(_ct(body, 220.0), body, SPACING, normal_marrow_hu=220.0)
    assert q.category is None and q.score is None and "neither component" in q.reason
    assert q.median_hu == pytest.approx(220.0)


def test_quality_relative_to_patient_marrow() -> None:
    """Osteoporotic marrow at 60 HU is not lytic: a voxel must also be 50 HU below the patient's marrow."""
    body = _body()
    ct = _ct(body, 60.0)
    assert bone_lesion_quality(ct, body, SPACING).category == "lytic"  # absolute rule alone
    q = bone_lesion_quality(ct, body, SPACING, normal_marrow_hu=60.0)
    assert q.category is None and q.lytic_below_hu == pytest.approx(10.0)
    dense = bone_lesion_quality(_ct(body, 450.0), body, SPACING, normal_marrow_hu=350.0)
    assert dense.category is None and dense.blastic_above_hu == pytest.approx(550.0)


def test_quality_shell_removed_in_mm_with_anisotropic_spacing() -> None:
    body = _body((12, 24, 24))
    ct = _ct(body, 40.0)
    fine = bone_lesion_quality(ct, body, (3.0, 0.5, 0.5), exclude_shell_mm=2.0, min_volume_ml=0.0)
    # a 2 mm shell: the edge slice of 3 mm (centre 1.5 mm deep) on each side, 4 voxels of 0.5 mm in-plane
    zz = body.any(axis=(1, 2)).sum()
    assert fine.n_voxels == (zz - 2) * (20 - 8) ** 2
    assert fine.category == "lytic"  # the cortical endplates are out
    assert fine.volume_ml == pytest.approx(fine.n_voxels * 3.0 * 0.25 / 1000.0)


def test_quality_too_small_and_cement() -> None:
    body = _body((8, 8, 8))
    small = bone_lesion_quality(_ct(body, 40.0), body, SPACING)
    assert small.category is None and "too small" in small.reason and small.n_voxels == 0
    assert np.isnan(small.median_hu)
    big = _body()
    ct = _ct(big, 40.0)
    ct[8:16, 8:16, 8:16] = 2500.0  # PMMA: a post-procedure CT
    q = bone_lesion_quality(ct, big, SPACING)
    assert q.category is None and "pre-procedure CT" in q.reason


def test_quality_input_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        bone_lesion_quality(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), bool), SPACING)
    with pytest.raises(ValueError, match="positive"):
        bone_lesion_quality(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), (1.0, 0.0, 1.0))


def test_body_involvement() -> None:
    body = np.zeros((4, 4, 4), bool)
    body[:, :2] = True
    lesion = np.zeros_like(body)
    lesion[:, 1:] = True  # half of it outside the body: not counted
    assert body_involvement_pct(lesion, body) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="empty"):
        body_involvement_pct(lesion, np.zeros_like(body))


# ---------------------------------------------------------------- collapse

@pytest.mark.parametrize(
    ("heights", "kwargs", "score", "low", "high"),
    [
        ((10.0, 20.0, 25.0), {}, 3, 3, 3),  # 60 % wedge
        ((20.0, 12.4, 25.0), {}, 3, 3, 3),  # 50.4 % biconcave
        ((12.5, 20.0, 25.0), {}, 2, 2, 2),  # exactly 50 %: not > 50 %
        ((20.0, 20.0, 25.0), {}, 2, 2, 2),  # exactly 20 %: Genant grade 1
        ((24.0, 24.0, 25.0), {}, None, 0, 1),  # no collapse, involvement unknown
        ((24.0, 24.0, 25.0), {"body_involvement_pct": 60.0}, 1, 1, 1),
        ((24.0, 24.0, 25.0), {"body_involvement_pct": 50.0}, 0, 0, 0),
        ((14.0, 14.0, 14.0), {"adjacent_height_mm": 25.0, "body_involvement_pct": 10.0}, 2, 2, 2),  # crush
        ((14.0, 14.0, 14.0), {"body_involvement_pct": 10.0}, 0, 0, 0),  # uniform crush unseen alone
        ((None, 20.0, 25.0), {}, None, 0, 3),
        ((float("nan"), 20.0, 25.0), {}, None, 0, 3),
        ((0.0, 20.0, 25.0), {}, None, 0, 3),
    ],
)
def test_collapse(heights: tuple[float | None, float | None, float | None], kwargs: dict[str, float],
                  score: int | None, low: int, high: int) -> None:
    c = collapse_component(*heights, **kwargs)
    assert (c.name, c.score, c.min_score, c.max_score) == ("collapse", score, low, high)
    assert c.detail


# ---------------------------------------------------------------- total

def test_partial_sins_imaging_only() -> None:
    body = _body()
    quality = bone_lesion_quality(_ct(body, 40.0), body, SPACING)
    s = partial_sins("L1", lesion_quality=quality, collapse=collapse_component(10.0, 20.0, 25.0))
    assert s.values == {"location": 3, "pain": None, "lesion_quality": 2, "alignment": None, "collapse": 3,
                        "posterolateral": None}
    assert s.partial_score == 8 and s.max_possible_score == 8 + 3 + 4 + 3
    assert s.missing == ("pain", "alignment", "posterolateral")
    assert s.category is None
    d = s.as_dict()
    assert d["partial_score"] == 8 and d["components"]["pain"]["detail"].startswith("not given")
    assert [c.name for c in s.components] == list(COMPONENT_MAX)


def test_partial_sins_complete_and_categories() -> None:
    full = partial_sins("T6", lesion_quality="Blastic", collapse=collapse_component(24.0, 24.0, 25.0,
                                                                                     body_involvement_pct=10.0),
                        pain=1, alignment=0, posterolateral=0)
    assert full.missing == () and full.partial_score == full.max_possible_score == 2 and full.category == "stable"
    unstable = partial_sins("L5", lesion_quality="lytic", collapse=collapse_component(10.0, 20.0, 25.0), pain=3,
                            alignment=2)
    assert unstable.partial_score == 13 and unstable.category == "unstable"  # whatever posterolateral is
    low = partial_sins("T6", lesion_quality="blastic", collapse=collapse_component(24.0, 24.0, 25.0), pain=0,
                       alignment=0)
    # 1 + 0 + 0 + 0 + collapse 0-1 + posterolateral 0-3: at most 5, stable whatever is missing
    assert (low.partial_score, low.max_possible_score, low.category) == (1, 5, "stable")
    assert low.missing == ("collapse", "posterolateral")


def test_partial_sins_missing_and_errors() -> None:
    nothing = partial_sins("SACRUM")
    assert nothing.partial_score == 0 and nothing.max_possible_score == 18
    assert nothing.missing == tuple(COMPONENT_MAX)
    undecided = BoneQuality(None, 0.0, 0.0, 10, 1.0, 200.0, 100.0, 400.0, "neither component")
    s = partial_sins("T6", lesion_quality=undecided)
    assert "lesion_quality" in s.missing and "neither component" in s.components[2].detail
    with pytest.raises(ValueError, match="pain must be one of"):
        partial_sins("T6", pain=2)
    with pytest.raises(ValueError, match="alignment must be one of"):
        partial_sins("T6", alignment=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lesion quality"):
        partial_sins("T6", lesion_quality="sclerotic")
    with pytest.raises(ValueError, match="collapse component"):
        partial_sins("T6", collapse=SinsComponent.known("pain", 3, "x"))
    with pytest.raises(ValueError, match="spinal lesions only"):
        partial_sins("ACETABULUM_R")


def test_quality_shell_on_a_curved_surface() -> None:
    """A ball of radius 8 mm less a 2 mm shell keeps a ball of radius 6 +/- 0.5 mm (voxel-sized surface)."""
    zz, yy, xx = np.indices((21, 21, 21)) - 10
    ball = zz**2 + yy**2 + xx**2 <= 8.0**2
    q = bone_lesion_quality(np.full(ball.shape, 40.0), ball, SPACING, min_volume_ml=0.0)
    assert 4.0 / 3.0 * np.pi * 5.5**3 < q.n_voxels < 4.0 / 3.0 * np.pi * 6.5**3
