"""Imaging components of the Spinal Instability Neoplastic Score (SINS), as a partial score.

SINS (Fisher et al., Spine 2010;35:E1221-9) adds six components, total 0-18 (0-6 stable,
7-12 indeterminate / possibly impending instability, 13-18 unstable):

=================================  ===========================================================  =====
component                          values                                                       max
=================================  ===========================================================  =====
location                           junctional (occiput-C2, C7-T2, T11-L1, L5-S1) 3; mobile        3
                                   (C3-C6, L2-L4) 2; semi-rigid (T3-T10) 1; rigid (S2-S5) 0
pain                               mechanical 3; occasional non-mechanical 1; pain-free 0          3
bone lesion quality                lytic 2; mixed 1; blastic 0                                     2
radiographic alignment             subluxation / translation 4; de novo deformity 2; normal 0      4
vertebral body collapse            > 50 % 3; < 50 % 2; no collapse with > 50 % of the body         3
                                   involved 1; none of the above 0
posterolateral involvement         bilateral 3; unilateral 1; none 0                               3
=================================  ===========================================================  =====

This module computes what the images give: **location** from the registry level, **bone
lesion quality** from CT Hounsfield units (:func:`bone_lesion_quality`), **collapse** from the
vertebral heights (:func:`collapse_component`). Pain needs the clinic, alignment and
posterolateral involvement a reading this pipeline does not do: they are taken when given
(e.g. from the registry) and otherwise marked missing. :func:`partial_sins` returns the sum of
the known components, the largest total the missing ones still allow, and the list of the
missing ones. SINS describes the lesion **before treatment**: use the pre-procedure CT and the
PRE (or, failing it, J0) heights.

No I/O here: arrays, spacing and numbers in, frozen dataclasses out.

How the flow would call it (per vertebral lesion; not wired in yet)::

    from pipeline.response.sins import bone_lesion_quality, collapse_component, partial_sins

    quality = bone_lesion_quality(ct_pre_hu, body_or_lesion_mask, spacing_mm_zyx,
                                  normal_marrow_hu=median_hu_of_an_adjacent_normal_body)
    collapse = collapse_component(h.anterior_mm, h.middle_mm, h.posterior_mm,   # PRE heights
                                  adjacent_height_mm=None, body_involvement_pct=None)
    sins = partial_sins(lesion.level, lesion_quality=quality, collapse=collapse,
                        pain=None, alignment=None, posterolateral=None)
    sins.partial_score, sins.max_possible_score, sins.missing, sins.as_dict()

Example
-------
>>> s = partial_sins("T12", lesion_quality="lytic", collapse=collapse_component(15.0, 20.0, 25.0))
>>> s.partial_score, s.max_possible_score, s.missing
(7, 17, ('pain', 'alignment', 'posterolateral'))
>>> s.category is None  # 7 to 17: stable, indeterminate or unstable depending on the missing ones
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from pipeline.domain import normalise_level

__all__ = [
    "COMPONENT_MAX",
    "BoneQuality",
    "PartialSins",
    "SinsComponent",
    "body_involvement_pct",
    "bone_lesion_quality",
    "collapse_component",
    "location_component",
    "partial_sins",
]

#: Largest value of each SINS component, in the order of Fisher et al. 2010.
COMPONENT_MAX: dict[str, int] = {"location": 3, "pain": 3, "lesion_quality": 2, "alignment": 4, "collapse": 3,
                                 "posterolateral": 3}
#: Allowed values of the components that come from outside the images.
_CLINICAL_VALUES: dict[str, tuple[int, ...]] = {"pain": (0, 1, 3), "alignment": (0, 2, 4),
                                                "posterolateral": (0, 1, 3)}
_QUALITY_SCORE: dict[str, int] = {"lytic": 2, "mixed": 1, "blastic": 0}


@dataclass(frozen=True)
class SinsComponent:
    """One SINS component.

    Attributes
    ----------
    name : str
        A key of :data:`COMPONENT_MAX`.
    score : int or None
        The value, None when not computable / not given (missing).
    min_score, max_score : int
        The range still possible: equal to ``score`` when known; when missing, what the images
        allow (e.g. a sacral lesion of unknown segment: 0 to 3; no collapse but body involvement
        unknown: 0 to 1).
    detail : str
        Why: the rule that fired and its numbers, or why it is missing.
    """

    name: str
    score: int | None
    min_score: int
    max_score: int
    detail: str

    @classmethod
    def known(cls, name: str, score: int, detail: str) -> SinsComponent:
        return cls(name, score, score, score, detail)

    @classmethod
    def missing(cls, name: str, detail: str, low: int = 0, high: int | None = None) -> SinsComponent:
        return cls(name, None, low, COMPONENT_MAX[name] if high is None else high, detail)


@dataclass(frozen=True)
class BoneQuality:
    """Bone lesion quality from CT HU (:func:`bone_lesion_quality`).

    Attributes
    ----------
    category : {"lytic", "mixed", "blastic"} or None
        None when not decided (too few voxels, cement in the mask, neither component).
    lytic_fraction, blastic_fraction : float
        Share of the analysed voxels below the lytic / above the blastic threshold (NaN when
        no voxel was analysed).
    n_voxels : int
        Voxels analysed (the mask minus its outer shell).
    volume_ml : float
        Their volume (mL).
    median_hu : float
        Their median HU (NaN when none).
    lytic_below_hu, blastic_above_hu : float
        The thresholds used.
    reason : str
        The rule that decided, with its numbers.
    """

    category: str | None
    lytic_fraction: float
    blastic_fraction: float
    n_voxels: int
    volume_ml: float
    median_hu: float
    lytic_below_hu: float
    blastic_above_hu: float
    reason: str

    @property
    def score(self) -> int | None:
        """SINS points: lytic 2, mixed 1, blastic 0; None when undecided."""
        return None if self.category is None else _QUALITY_SCORE[self.category]


@dataclass(frozen=True)
class PartialSins:
    """SINS with the components the data allow.

    Attributes
    ----------
    components : tuple of SinsComponent
        The six components, in the order of :data:`COMPONENT_MAX`.
    partial_score : int
        Sum of the known components (missing ones counted at their minimum, 0).
    max_possible_score : int
        Largest total still possible: ``partial_score`` plus each missing component's maximum.
    missing : tuple of str
        Names of the components not known.
    """

    components: tuple[SinsComponent, ...]
    partial_score: int = field(init=False)
    max_possible_score: int = field(init=False)
    missing: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "partial_score", sum(c.min_score for c in self.components))
        object.__setattr__(self, "max_possible_score", sum(c.max_score for c in self.components))
        object.__setattr__(self, "missing", tuple(c.name for c in self.components if c.score is None))

    @property
    def values(self) -> dict[str, int | None]:
        """Component name -> value (None when missing)."""
        return {c.name: c.score for c in self.components}

    @property
    def category(self) -> str | None:
        """``stable`` (0-6), ``indeterminate`` (7-12) or ``unstable`` (13-18) when the range decides it."""
        low, high = self.partial_score, self.max_possible_score
        for name, lo, hi in (("stable", 0, 6), ("indeterminate", 7, 12), ("unstable", 13, 18)):
            if lo <= low and high <= hi:
                return name
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"partial_score": self.partial_score, "max_possible_score": self.max_possible_score,
                "category": self.category, "missing": list(self.missing),
                "components": {c.name: {"score": c.score, "min": c.min_score, "max": c.max_score,
                                        "detail": c.detail} for c in self.components}}


# ---------------------------------------------------------------- location

_JUNCTIONAL = {"C1", "C2", "C7", "T1", "T2", "T11", "T12", "L1", "L5", "S1"}
_MOBILE = {"C3", "C4", "C5", "C6", "L2", "L3", "L4"}
_SEMI_RIGID = {f"T{i}" for i in range(3, 11)}
_RIGID = {f"S{i}" for i in range(2, 6)}


def location_component(level: str) -> SinsComponent:
    """SINS location from the vertebral level.

    Junctional (occiput-C2, C7-T2, T11-L1, L5-S1) 3; mobile (C3-C6, L2-L4) 2; semi-rigid
    (T3-T10) 1; rigid (S2-S5) 0. ``D1``-``D12`` are read as ``T1``-``T12``; ``S2``-``S5`` are
    accepted here. ``SACRUM`` (segment not given) is missing with range 0-3 (S1 would be 3,
    S2-S5 0).

    Raises
    ------
    ValueError
        If ``level`` is not a spinal level: SINS does not apply to iliac or acetabular lesions.

    Examples
    --------
    >>> [location_component(x).score for x in ("C2", "C4", "D7", "T11", "L3", "L5", "S3")]
    [3, 2, 1, 3, 2, 3, 0]
    """
    text = level.strip().upper()
    name = text if text in _RIGID else normalise_level(text)
    if name in _JUNCTIONAL:
        return SinsComponent.known("location", 3, f"{name}: junctional (occiput-C2, C7-T2, T11-L1, L5-S1)")
    if name in _MOBILE:
        return SinsComponent.known("location", 2, f"{name}: mobile spine (C3-C6, L2-L4)")
    if name in _SEMI_RIGID:
        return SinsComponent.known("location", 1, f"{name}: semi-rigid (T3-T10)")
    if name in _RIGID:
        return SinsComponent.known("location", 0, f"{name}: rigid (S2-S5)")
    if name == "SACRUM":
        return SinsComponent.missing("location", "SACRUM: segment not given (S1 junctional 3, S2-S5 rigid 0)")
    raise ValueError(f"SINS applies to spinal lesions only, not to {name}")


# ---------------------------------------------------------------- bone lesion quality

def bone_lesion_quality(ct_hu: NDArray[Any], mask: NDArray[np.bool_], spacing_mm: tuple[float, float, float], *,
                        normal_marrow_hu: float | None = None, exclude_shell_mm: float = 2.0,
                        lytic_max_hu: float = 100.0, lytic_margin_hu: float = 50.0,
                        blastic_min_hu: float = 400.0, blastic_margin_hu: float = 200.0,
                        min_component_fraction: float = 0.15, min_volume_ml: float = 0.5,
                        cement_hu: float = 1600.0, max_cement_fraction: float = 0.05) -> BoneQuality:
    """Lytic / mixed / blastic from the CT HU inside a lesion (or treated-body) mask.

    A documented, deliberately conservative heuristic (not a validated classifier; SINS grades
    this visually):

    1. The voxels whose centre lies within ``exclude_shell_mm`` of the mask's surface
       (in mm, anisotropic spacing honoured) are left out, so the cortical shell (> 1000 HU)
       and partial volume with discs and soft tissue do not count. Fewer than ``min_volume_ml`` left: undecided.
    2. More than ``max_cement_fraction`` of the voxels at or above ``cement_hu`` (the cement
       setting, 1600 HU): undecided, the CT is post-procedure; use the pre-procedure CT.
    3. A voxel is **lytic** when its HU is below ``lytic_max_hu`` (100 HU: under normal adult
       trabecular bone; Pickhardt et al., Ann Intern Med 2013;158:588-95 found L1 trabecular
       attenuation <= 110 HU 90 % specific for osteoporosis, i.e. normal marrow lies above)
       **and**, when ``normal_marrow_hu`` is given, more than ``lytic_margin_hu`` below this
       patient's own normal marrow (so osteoporotic or fatty marrow is not called lytic). A
       voxel is **blastic** when its HU is above ``blastic_min_hu`` (400 HU, above trabecular
       bone) **and**, when ``normal_marrow_hu`` is given, more than ``blastic_margin_hu`` above
       it.
    4. A component is present when its fraction is at least ``min_component_fraction`` (15 %):
       both -> ``mixed`` (1 point); lytic only -> ``lytic`` (2); blastic only -> ``blastic``
       (0); neither -> undecided (the bone looks normal: check the mask). Undecided means the
       component is reported missing, never guessed.

    Parameters
    ----------
    ct_hu : ndarray, (z, y, x)
        CT in Hounsfield units (rescale slope / intercept applied).
    mask : ndarray of bool, same shape
        The lesion, or the treated vertebral body when the lesion is not outlined.
    spacing_mm : (float, float, float)
        Voxel spacing in the array's (z, y, x) order, mm.
    normal_marrow_hu : float, optional
        Median HU of normal trabecular bone of this patient (e.g. an adjacent uninvolved
        vertebral body, shell excluded likewise).
    exclude_shell_mm, lytic_max_hu, lytic_margin_hu, blastic_min_hu, blastic_margin_hu,
    min_component_fraction, min_volume_ml, cement_hu, max_cement_fraction
        The rule's parameters, above.

    Returns
    -------
    BoneQuality

    Raises
    ------
    ValueError
        If shapes differ or a spacing is not positive.

    Examples
    --------
    >>> ct = np.full((20, 20, 20), 30.0)                    # soft-tissue density throughout
    >>> m = np.zeros(ct.shape, bool); m[2:18, 2:18, 2:18] = True
    >>> q = bone_lesion_quality(ct, m, (1.0, 1.0, 1.0), normal_marrow_hu=200.0)
    >>> q.category, q.score, round(q.lytic_fraction, 2)
    ('lytic', 2, 1.0)
    """
    ct = np.asarray(ct_hu, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if ct.shape != mask.shape:
        raise ValueError(f"ct_hu {ct.shape} and mask {mask.shape} differ in shape")
    if len(spacing_mm) != ct.ndim or any(not s > 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must hold {ct.ndim} positive values, got {spacing_mm}")
    lytic_below = lytic_max_hu if normal_marrow_hu is None else min(lytic_max_hu, normal_marrow_hu - lytic_margin_hu)
    blastic_above = (blastic_min_hu if normal_marrow_hu is None
                     else max(blastic_min_hu, normal_marrow_hu + blastic_margin_hu))
    core = mask
    if exclude_shell_mm > 0 and mask.any():
        core = mask & (_surface_depth_mm(mask, spacing_mm) > exclude_shell_mm)
    values = ct[core]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    n = int(values.size)
    volume_ml = n * voxel_ml
    nan = float("nan")

    def result(category: str | None, lytic: float, blastic: float, reason: str) -> BoneQuality:
        return BoneQuality(category, lytic, blastic, n, volume_ml, float(np.median(values)) if n else nan,
                           lytic_below, blastic_above, reason)

    thresholds = f"lytic < {lytic_below:.0f} HU, blastic > {blastic_above:.0f} HU"
    if volume_ml < min_volume_ml:
        return result(None, nan, nan, f"{volume_ml:.2f} mL inside the mask once its {exclude_shell_mm:g} mm "
                                      f"shell is removed (< {min_volume_ml:g} mL): too small to grade")
    cement = float(np.mean(values >= cement_hu))
    if cement > max_cement_fraction:
        return result(None, nan, nan, f"{cement:.0%} of the voxels >= {cement_hu:.0f} HU: cement, a "
                                      "post-procedure CT; grade on the pre-procedure CT")
    lytic, blastic = float(np.mean(values < lytic_below)), float(np.mean(values > blastic_above))
    has_lytic, has_blastic = lytic >= min_component_fraction, blastic >= min_component_fraction
    category = ("mixed" if has_lytic and has_blastic else "lytic" if has_lytic
                else "blastic" if has_blastic else None)
    numbers = (f"{lytic:.0%} lytic, {blastic:.0%} blastic voxels ({thresholds}; a component counts from "
               f"{min_component_fraction:.0%}) over {volume_ml:.1f} mL")
    if category is None:
        return result(None, lytic, blastic, f"neither component: {numbers}; bone looks normal, check the mask")
    return result(category, lytic, blastic, f"{category}: {numbers}")


def _surface_depth_mm(mask: NDArray[np.bool_], spacing_mm: tuple[float, ...]) -> NDArray[np.float64]:
    """Approximate depth of each voxel centre below the mask's surface, mm (meaningful inside the mask).

    The surface runs half a voxel beyond the outermost centres. Depth = the smaller of (a) along
    each axis, the distance to the first outside centre minus half a voxel on that axis (exact
    for flat faces: the edge voxels of 3 mm slices are 1.5 mm deep) and (b) the Euclidean
    distance to the nearest outside centre minus half the finest spacing (oblique and curved
    faces).
    """
    padded = np.pad(mask, 1)  # the array edge counts as outside
    inner = (slice(1, -1),) * mask.ndim
    depth = ndimage.distance_transform_edt(padded, sampling=spacing_mm)[inner] - 0.5 * min(spacing_mm)
    far = 1e3 * (max(padded.shape) + 1) * max(spacing_mm)  # no path along another axis can be this short
    for axis, step in enumerate(spacing_mm):
        sampling = [far] * mask.ndim
        sampling[axis] = step
        along = ndimage.distance_transform_edt(padded, sampling=sampling)[inner] - 0.5 * step
        depth = np.minimum(depth, along)
    return np.where(mask, depth, 0.0)


def body_involvement_pct(lesion_mask: NDArray[np.bool_], body_mask: NDArray[np.bool_]) -> float:
    """Share of the vertebral body occupied by the lesion, % (``|lesion & body| / |body| x 100``).

    Raises
    ------
    ValueError
        If the shapes differ or the body mask is empty.

    >>> b = np.ones((4, 4, 4), bool); les = np.zeros_like(b); les[:3] = True
    >>> body_involvement_pct(les, b)
    75.0
    """
    lesion_mask, body_mask = np.asarray(lesion_mask, bool), np.asarray(body_mask, bool)
    if lesion_mask.shape != body_mask.shape:
        raise ValueError(f"lesion {lesion_mask.shape} and body {body_mask.shape} masks differ in shape")
    total = int(body_mask.sum())
    if total == 0:
        raise ValueError("empty vertebral body mask")
    return 100.0 * int(np.logical_and(lesion_mask, body_mask).sum()) / total


# ---------------------------------------------------------------- collapse

def collapse_component(anterior_mm: float | None, middle_mm: float | None, posterior_mm: float | None, *,
                       adjacent_height_mm: float | None = None, body_involvement_pct: float | None = None,
                       min_collapse_pct: float = 20.0) -> SinsComponent:
    """SINS vertebral body collapse from the body heights (PRE, or J0, visit).

    ``collapse_pct = 100 x (1 - min(Ha, Hm, Hp) / H_ref)`` with ``H_ref`` the largest of the
    three heights and, when given, ``adjacent_height_mm`` (height of an adjacent normal
    vertebral body, which reveals a uniform crush). With Hp the largest this is the Genant
    wedge / biconcavity reduction of :mod:`pipeline.response.height`. The body counts as
    collapsed from ``min_collapse_pct`` (20 %: Genant grade >= 1, the project's baseline
    fracture); SINS gives no threshold of its own.

    Scores: collapse > 50 % 3; collapse <= 50 % 2; no collapse with > 50 % of the body
    involved 1; none of the above 0. When there is no collapse and ``body_involvement_pct`` is
    unknown, the component is missing with range 0-1; with a height unknown (None, NaN or not
    positive), missing with range 0-3.

    Parameters
    ----------
    anterior_mm, middle_mm, posterior_mm : float or None
        Heights (mm), e.g. ``Heights.anterior_mm``...
    adjacent_height_mm : float, optional
        Height of an adjacent normal vertebral body (mm).
    body_involvement_pct : float, optional
        Share of the body occupied by tumour, % (:func:`body_involvement_pct`).
    min_collapse_pct : float
        Collapse below this is "no collapse", %.

    Examples
    --------
    >>> collapse_component(10.0, 20.0, 25.0).score            # 60 % wedge
    3
    >>> collapse_component(24.0, 24.0, 25.0).score is None    # no collapse, involvement unknown
    True
    >>> collapse_component(24.0, 24.0, 25.0, body_involvement_pct=70.0).score
    1
    """
    heights = [anterior_mm, middle_mm, posterior_mm]
    if any(h is None or not math.isfinite(h) or h <= 0 for h in heights):
        return SinsComponent.missing("collapse", f"heights not all measured ({heights} mm)")
    known = [float(h) for h in heights if h is not None]
    ref = max(known)
    ref_text = "the largest of the body's heights"
    if adjacent_height_mm is not None and math.isfinite(adjacent_height_mm) and adjacent_height_mm > ref:
        ref, ref_text = float(adjacent_height_mm), "the adjacent normal body's height"
    pct = round(100.0 * (1.0 - min(known) / ref), 9)  # exact ratios (20/25) fall on their boundary
    shape = f"heights {known[0]:.1f} / {known[1]:.1f} / {known[2]:.1f} mm, collapse {pct:.0f} % of {ref_text}"
    if pct > 50.0:
        return SinsComponent.known("collapse", 3, f"> 50 % collapse: {shape}")
    if pct >= min_collapse_pct:
        return SinsComponent.known("collapse", 2, f"< 50 % collapse: {shape}")
    if body_involvement_pct is None or not math.isfinite(body_involvement_pct):
        return SinsComponent.missing("collapse", f"no collapse ({shape}); body involvement unknown: 1 if > 50 %, "
                                                 "else 0", high=1)
    if body_involvement_pct > 50.0:
        return SinsComponent.known("collapse", 1, f"no collapse ({shape}), {body_involvement_pct:.0f} % of the "
                                                  "body involved (> 50 %)")
    return SinsComponent.known("collapse", 0, f"no collapse ({shape}), {body_involvement_pct:.0f} % of the body "
                                              "involved (<= 50 %)")


# ---------------------------------------------------------------- total

def _clinical(name: str, value: int | None, source: str) -> SinsComponent:
    if value is None:
        return SinsComponent.missing(name, f"not given: needs {source}")
    if isinstance(value, bool) or value not in _CLINICAL_VALUES[name]:
        raise ValueError(f"SINS {name} must be one of {_CLINICAL_VALUES[name]}, got {value!r}")
    return SinsComponent.known(name, int(value), "given")


def partial_sins(level: str, *, lesion_quality: BoneQuality | str | None = None,
                 collapse: SinsComponent | None = None, pain: int | None = None, alignment: int | None = None,
                 posterolateral: int | None = None) -> PartialSins:
    """Partial SINS: the components the data give, the others marked missing.

    Parameters
    ----------
    level : str
        Registry level (``C1``-``S1``, ``D`` synonyms, ``S2``-``S5``, ``SACRUM``).
    lesion_quality : BoneQuality or {"lytic", "mixed", "blastic"}, optional
        From :func:`bone_lesion_quality`, or a reader's grade. Missing when None or undecided.
    collapse : SinsComponent, optional
        From :func:`collapse_component`. Missing when None.
    pain : {0, 1, 3}, optional
        Mechanical pain 3, occasional non-mechanical 1, pain-free 0 (clinical).
    alignment : {0, 2, 4}, optional
        Subluxation / translation 4, de novo deformity 2, normal 0.
    posterolateral : {0, 1, 3}, optional
        Bilateral 3, unilateral 1, none 0.

    Returns
    -------
    PartialSins

    Raises
    ------
    ValueError
        If ``level`` is not spinal, or a given value is not allowed for its component.
    """
    if isinstance(lesion_quality, BoneQuality):
        quality = (SinsComponent.missing("lesion_quality", f"not decided from CT: {lesion_quality.reason}")
                   if lesion_quality.score is None
                   else SinsComponent.known("lesion_quality", lesion_quality.score, lesion_quality.reason))
    elif lesion_quality is None:
        quality = SinsComponent.missing("lesion_quality", "not given: needs a CT")
    else:
        grade = lesion_quality.strip().lower()
        if grade not in _QUALITY_SCORE:
            raise ValueError(f"lesion quality must be one of {list(_QUALITY_SCORE)}, got {lesion_quality!r}")
        quality = SinsComponent.known("lesion_quality", _QUALITY_SCORE[grade], f"{grade} (given)")
    if collapse is None:
        collapse = SinsComponent.missing("collapse", "not given: needs the vertebral heights")
    elif collapse.name != "collapse":
        raise ValueError(f"collapse must be the collapse component, got {collapse.name!r}")
    return PartialSins((
        location_component(level),
        _clinical("pain", pain, "the clinical pain history"),
        quality,
        _clinical("alignment", alignment, "a reading of the spinal alignment"),
        collapse,
        _clinical("posterolateral", posterolateral, "a reading of the facets, pedicles and costovertebral joints"),
    ))
