"""Per-lesion verdict from the per-visit measurements (SPEC section 5).

Rules (thresholds from :class:`pipeline.settings.Settings`):

* ``j0_residual``: J0 residual enhancing volume ``>= j0_residual_ml`` (0.2 mL).
* Local failure at the first follow-up whose residual volume is ``>= nadir +
  max(progression_floor_ml, progression_fraction x nadir)`` (nadir = smallest volume from J0
  up to the previous follow-up), or whose new nodule is ``>= new_nodule_ml``.
* A rise first seen at M1 (or at an unscheduled visit within the M1 window, day <= 45) needs
  confirmation by the next usable follow-up against the same nadir: confirmed -> failure at
  M1; not confirmed -> pseudo-progression, carry on; no later visit -> failure flagged
  ``unconfirmed``. The new-nodule rule at M1 is treated the same way (post-ablation reactive
  enhancement can appear outside the J0 residual too).
* Local control otherwise, with at least one usable follow-up; indeterminate when J0 or every
  follow-up is unusable.
* Height loss: any usable visit after J0 with loss ``>= height_loss_pct_threshold`` % or
  ``>= height_loss_mm_threshold`` mm. Baseline fracture: Genant grade >= 1 on PRE, else J0.

Example
-------
>>> from pipeline.domain import Visit
>>> from pipeline.settings import Settings
>>> v = [VisitSummary(Visit.J0, 1, 0.0), VisitSummary(Visit.M3, 92, 0.1)]
>>> classify_lesion(v, settings=Settings()).outcome.value
'local_control'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.domain import VISIT_WINDOWS_DAYS, Outcome, Visit
from pipeline.settings import Settings


@dataclass(frozen=True)
class VisitSummary:
    """What the classifier needs from one visit of one lesion.

    Attributes
    ----------
    visit : Visit
    days_from_procedure : int
        Study date minus procedure date, in days.
    residual_ml : float or None
        Residual enhancing volume in mL (None: not measurable).
    new_nodule_ml : float
        Largest new enhancing component outside the J0 residual, in mL (0 when none).
    height_loss_pct, height_loss_mm : float or None
        Loss relative to J0 (% and mm), None when heights are not measured.
    genant_grade : int or None
    usable : bool
        False when QA rejected the visit (it is then ignored, and said so in the reason).
    """

    visit: Visit
    days_from_procedure: int
    residual_ml: float | None
    new_nodule_ml: float = 0.0
    height_loss_pct: float | None = None
    height_loss_mm: float | None = None
    genant_grade: int | None = None
    usable: bool = True


@dataclass(frozen=True)
class Verdict:
    """Classification of one lesion (the ``lesions.csv`` fields computed here)."""

    outcome: Outcome
    failure_timepoint: Visit | None
    j0_residual: bool | None
    j0_residual_volume_ml: float | None
    baseline_fracture: bool | None
    height_loss: bool | None
    max_height_loss_pct: float | None
    reason: str


def _ml(v: float) -> str:
    return f"{v:.2f}"


def _label(v: VisitSummary) -> str:
    name = v.visit.value
    return f"{name} (day {v.days_from_procedure})" if v.visit is Visit.UNSCHEDULED else name


def _is_m1(v: VisitSummary) -> bool:
    last_m1_day = VISIT_WINDOWS_DAYS[Visit.M1][2]
    return v.visit is Visit.M1 or (v.visit is Visit.UNSCHEDULED and v.days_from_procedure <= last_m1_day)


def _threshold(nadir: float, s: Settings) -> tuple[float, str]:
    thr = nadir + max(s.progression_floor_ml, s.progression_fraction * nadir)
    text = (f"nadir {_ml(nadir)} + max({s.progression_floor_ml:g}, {s.progression_fraction:g} x "
            f"{_ml(nadir)}) = {_ml(thr)} mL")
    return thr, text


def _trigger(v: VisitSummary, nadir: float, s: Settings) -> str | None:
    """Text of the failure rule met by ``v`` against ``nadir``, or None."""
    assert v.residual_ml is not None
    thr, text = _threshold(nadir, s)
    if v.residual_ml >= thr:
        return f"{_label(v)} residual {_ml(v.residual_ml)} mL >= {text}"
    if v.new_nodule_ml >= s.new_nodule_ml:
        return (f"{_label(v)} new enhancing nodule {_ml(v.new_nodule_ml)} mL >= {s.new_nodule_ml:g} mL "
                "outside the J0 residual")
    return None


def _heights(after_j0: list[VisitSummary], ordered: list[VisitSummary],
             s: Settings) -> tuple[bool | None, bool | None, float | None, str]:
    """(baseline_fracture, height_loss, max_height_loss_pct, reason fragment)."""
    baseline = None
    for name in (Visit.PRE, Visit.J0):
        graded = [v for v in ordered if v.visit is name and v.usable and v.genant_grade is not None]
        if graded:
            g = graded[0].genant_grade
            assert g is not None
            baseline = (g >= 1, f"baseline Genant grade {g} on {name.value}")
            break
    measured = [v for v in after_j0
                if v.usable and (v.height_loss_pct is not None or v.height_loss_mm is not None)]
    parts = [baseline[1]] if baseline else []
    loss: bool | None = None
    max_pct: float | None = None
    if measured:
        pcts = [v.height_loss_pct for v in measured if v.height_loss_pct is not None]
        max_pct = max(pcts) if pcts else None
        hits = [v for v in measured
                if (v.height_loss_pct is not None and v.height_loss_pct >= s.height_loss_pct_threshold)
                or (v.height_loss_mm is not None and v.height_loss_mm >= s.height_loss_mm_threshold)]
        loss = bool(hits)
        if hits:
            h = hits[0]
            pct = "?" if h.height_loss_pct is None else f"{h.height_loss_pct:.1f}"
            mm = "?" if h.height_loss_mm is None else f"{h.height_loss_mm:.1f}"
            parts.append(f"height loss at {_label(h)}: {pct} % / {mm} mm (thresholds "
                         f"{s.height_loss_pct_threshold:g} % or {s.height_loss_mm_threshold:g} mm)")
        else:
            parts.append(f"no height loss >= {s.height_loss_pct_threshold:g} % or "
                         f">= {s.height_loss_mm_threshold:g} mm after J0")
    return (baseline[0] if baseline else None), loss, max_pct, "; ".join(parts)


def classify_lesion(visits: list[VisitSummary], *, settings: Settings) -> Verdict:
    """Classify one lesion as local control, local failure or indeterminate.

    Parameters
    ----------
    visits : list of VisitSummary
        Every visit of the lesion, any order; unusable visits are ignored (and named in the
        reason). Unscheduled visits after J0 are follow-ups in time order.
    settings : Settings
        Thresholds (``j0_residual_ml``, ``progression_floor_ml``, ``progression_fraction``,
        ``new_nodule_ml``, ``height_loss_pct_threshold``, ``height_loss_mm_threshold``).

    Returns
    -------
    Verdict
        With a reason that states the rule that fired and its numbers.
    """
    s = settings
    ordered = sorted(visits, key=lambda v: v.days_from_procedure)
    skipped = [v for v in ordered if not v.usable]
    note = f" (ignored unusable: {', '.join(_label(v) for v in skipped)})" if skipped else ""
    j0s = [v for v in ordered if v.visit is Visit.J0 and v.usable and v.residual_ml is not None]
    j0 = j0s[0] if j0s else None
    j0_day = j0.days_from_procedure if j0 else VISIT_WINDOWS_DAYS[Visit.J0][1]
    after_j0 = [v for v in ordered if v.visit.is_follow_up and v.days_from_procedure > j0_day]
    fracture, loss, max_pct, height_text = _heights(after_j0, ordered, s)
    j0_ml = j0.residual_ml if j0 is not None and j0.residual_ml is not None else 0.0
    tail = f"; {height_text}" if height_text else ""

    def verdict(outcome: Outcome, when: Visit | None, reason: str) -> Verdict:
        return Verdict(outcome=outcome, failure_timepoint=when,
                       j0_residual=None if j0 is None else bool(j0_ml >= s.j0_residual_ml),
                       j0_residual_volume_ml=None if j0 is None else j0_ml,
                       baseline_fracture=fracture, height_loss=loss, max_height_loss_pct=max_pct,
                       reason=reason + note + tail)

    if j0 is None:
        return verdict(Outcome.INDETERMINATE, None,
                       "indeterminate: no usable J0 residual measurement (needed as the response baseline)")
    cmp = ">=" if j0_ml >= s.j0_residual_ml else "<"
    j0_text = f"J0 residual {_ml(j0_ml)} mL {cmp} {s.j0_residual_ml:g} mL"
    follow = [v for v in after_j0 if v.usable and v.residual_ml is not None]
    if not follow:
        return verdict(Outcome.INDETERMINATE, None,
                       f"indeterminate: no usable follow-up after J0 ({j0_text})")

    nadir = j0_ml
    log: list[str] = []
    i = 0
    while i < len(follow):
        v = follow[i]
        assert v.residual_ml is not None
        hit = _trigger(v, nadir, s)
        if hit is None:
            log.append(f"{_label(v)} {_ml(v.residual_ml)} mL < {_threshold(nadir, s)[1]}")
            nadir = min(nadir, v.residual_ml)
            i += 1
            continue
        if not _is_m1(v):
            return verdict(Outcome.LOCAL_FAILURE, v.visit, f"local failure: {hit}; {j0_text}")
        if i + 1 >= len(follow):
            return verdict(Outcome.LOCAL_FAILURE, v.visit,
                           f"local failure (unconfirmed: no later follow-up to rule out pseudo-progression): "
                           f"{hit}; {j0_text}")
        nxt = follow[i + 1]
        confirm = _trigger(nxt, nadir, s)
        if confirm is not None:
            return verdict(Outcome.LOCAL_FAILURE, v.visit,
                           f"local failure at {_label(v)} confirmed at {_label(nxt)}: {hit}; {confirm}; "
                           f"{j0_text}")
        assert nxt.residual_ml is not None
        log.append(f"{hit} not confirmed at {_label(nxt)} ({_ml(nxt.residual_ml)} mL < "
                   f"{_ml(_threshold(nadir, s)[0])} mL): pseudo-progression")
        nadir = min(nadir, nxt.residual_ml)
        i += 2
    last = follow[-1]
    return verdict(Outcome.LOCAL_CONTROL, None,
                   f"local control: no follow-up met the failure rule up to {_label(last)} "
                   f"(day {last.days_from_procedure}); {j0_text}; " + "; ".join(log))
