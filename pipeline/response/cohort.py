"""Cohort summary table (SPEC top table and section 6) and agreement with a reference read.

Every rate is a ``{"n", "N", "pct"}`` dict: numerator, denominator and percentage (None when
the denominator is 0). Outcome rates use the lesions with a determinate outcome (control or
failure) as denominator; indeterminate lesions are counted apart.

Example
-------
>>> from pipeline.domain import Outcome
>>> a = agreement({"L1": Outcome.LOCAL_CONTROL, "L2": Outcome.LOCAL_FAILURE},
...               {"L1": Outcome.LOCAL_CONTROL, "L2": Outcome.LOCAL_CONTROL})
>>> a["accuracy"], a["kappa"]
(0.5, 0.0)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

from scipy import stats

from pipeline.domain import LesionResult, Outcome

logger = logging.getLogger(__name__)

OUTCOMES: tuple[Outcome, ...] = (Outcome.LOCAL_CONTROL, Outcome.LOCAL_FAILURE, Outcome.INDETERMINATE)


def rate(n: int, N: int) -> dict[str, Any]:
    """``{"n": n, "N": N, "pct": 100 n / N}`` (pct None when N is 0), pct rounded to 0.1."""
    return {"n": n, "N": N, "pct": round(100.0 * n / N, 1) if N else None}


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text.strip()) if text and text.strip() else None
    except ValueError:
        return None


def _crav_alone(results: list[LesionResult], determinate: list[LesionResult],
                last_follow_up_date: Mapping[str, dt.date]) -> dict[str, Any] | None:
    if not any("ebrt_date" in r.lesion.extra for r in results):
        return None
    n = unknown = 0
    for r in determinate:
        if r.outcome is not Outcome.LOCAL_CONTROL:
            continue
        raw = r.lesion.extra.get("ebrt_date", "").strip()
        if not raw:
            n += 1
            continue
        ebrt, last = _date(raw), last_follow_up_date.get(r.lesion.lesion_id)
        if ebrt is None or last is None:
            unknown += 1
        elif ebrt > last:
            n += 1
    out = rate(n, len(determinate))
    out["unknown"] = unknown
    return out


def _pain(results: list[LesionResult]) -> dict[str, Any] | None:
    per_patient: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        before, after = _float(r.lesion.extra.get("vas_before")), _float(r.lesion.extra.get("vas_m1"))
        if before is not None and after is not None:
            per_patient.setdefault(r.lesion.patient_id, []).append((before, after))
    if not per_patient:
        return None
    pairs = [(sum(b for b, _ in v) / len(v), sum(a for _, a in v) / len(v)) for v in per_patient.values()]
    before_vals, after_vals = [b for b, _ in pairs], [a for _, a in pairs]
    p: float | None
    try:
        p = float(stats.wilcoxon(before_vals, after_vals).pvalue)
    except ValueError as exc:  # fewer than 1 non-zero difference
        logger.info("Wilcoxon test not computable: %s", exc)
        p = None
    if p is not None and math.isnan(p):
        p = None
    return {"n_patients": len(pairs), "vas_before_mean": round(sum(before_vals) / len(pairs), 2),
            "vas_m1_mean": round(sum(after_vals) / len(pairs), 2), "wilcoxon_p": p,
            "unit": "patient (mean of the patient's lesion rows)"}


def cohort_table(results: list[LesionResult], *,
                 last_follow_up_date: Mapping[str, dt.date] | None = None) -> dict[str, Any]:
    """The study table computed from per-lesion results.

    Parameters
    ----------
    results : list of LesionResult
        One per registry lesion.
    last_follow_up_date : mapping lesion_id -> date, optional
        Date of each lesion's last follow-up, to decide whether an ``ebrt_date`` (registry
        extra column) came before it (CRAV-alone control).

    Returns
    -------
    dict
        ``n_lesions``, ``n_determinate``, ``local_control``, ``local_failure``,
        ``indeterminate`` (rates), ``j0_no_residual`` / ``j0_residual`` (rate over lesions with a
        J0 measurement, each with ``controlled``: rate over its determinate lesions),
        ``baseline_fracture`` (rate over lesions with a Genant grade, with ``height_loss``: rate
        over fractured lesions with a height follow-up), ``crav_alone_control`` (None without an
        ``ebrt_date`` column; ``unknown`` counts controlled lesions whose EBRT timing cannot be
        decided, not counted as CRAV-alone) and ``pain`` (None without ``vas_before`` /
        ``vas_m1``; one pair per patient, paired Wilcoxon p-value).
    """
    determinate = [r for r in results if r.outcome is not Outcome.INDETERMINATE]
    n_det = len(determinate)

    def controlled(group: list[LesionResult]) -> dict[str, Any]:
        det = [r for r in group if r.outcome is not Outcome.INDETERMINATE]
        return rate(sum(r.outcome is Outcome.LOCAL_CONTROL for r in det), len(det))

    with_j0 = [r for r in results if r.j0_residual is not None]
    no_res = [r for r in with_j0 if r.j0_residual is False]
    res = [r for r in with_j0 if r.j0_residual is True]
    graded = [r for r in results if r.baseline_fracture is not None]
    fractured = [r for r in graded if r.baseline_fracture]
    fractured_followed = [r for r in fractured if r.height_loss is not None]
    return {
        "n_lesions": len(results),
        "n_determinate": n_det,
        "local_control": rate(sum(r.outcome is Outcome.LOCAL_CONTROL for r in results), n_det),
        "local_failure": rate(sum(r.outcome is Outcome.LOCAL_FAILURE for r in results), n_det),
        "indeterminate": rate(len(results) - n_det, len(results)),
        "j0_no_residual": {**rate(len(no_res), len(with_j0)), "controlled": controlled(no_res)},
        "j0_residual": {**rate(len(res), len(with_j0)), "controlled": controlled(res)},
        "baseline_fracture": {**rate(len(fractured), len(graded)),
                              "height_loss": rate(sum(bool(r.height_loss) for r in fractured_followed),
                                                  len(fractured_followed))},
        "crav_alone_control": _crav_alone(results, determinate, last_follow_up_date or {}),
        "pain": _pain(results),
    }


def _fmt(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return "n/a"
    pct = "n/a" if r["pct"] is None else f"{r['pct']:.1f} %"
    return f"{pct} ({r['n']}/{r['N']})"


def cohort_markdown(table: Mapping[str, Any]) -> str:
    """Markdown rendering of :func:`cohort_table` (one row per result, numerators shown)."""
    rows = [
        ("local control", _fmt(table["local_control"])),
        ("local failure", _fmt(table["local_failure"])),
        ("indeterminate (excluded from the rates above)", _fmt(table["indeterminate"])),
        ("day-0 MRI without residual tumour", _fmt(table["j0_no_residual"])),
        ("... of which controlled", _fmt(table["j0_no_residual"]["controlled"])),
        ("day-0 MRI with residual tumour", _fmt(table["j0_residual"])),
        ("... of which controlled", _fmt(table["j0_residual"]["controlled"])),
        ("pathological fracture at baseline", _fmt(table["baseline_fracture"])),
        ("... of which lost height", _fmt(table["baseline_fracture"]["height_loss"])),
    ]
    crav = table.get("crav_alone_control")
    rows.append(("control attributable to CRAV alone",
                 "n/a (no ebrt_date column)" if crav is None
                 else f"{_fmt(crav)}, EBRT timing unknown for {crav['unknown']}"))
    pain = table.get("pain")
    if pain is None:
        rows.append(("pain (VAS) before -> M1", "n/a (no vas_before / vas_m1)"))
    else:
        p = "n/a" if pain["wilcoxon_p"] is None else f"{pain['wilcoxon_p']:.4g}"
        rows.append(("pain (VAS) before -> M1",
                     f"{pain['vas_before_mean']:.2f} -> {pain['vas_m1_mean']:.2f} "
                     f"({pain['n_patients']} patients, paired Wilcoxon p = {p})"))
    agree = table.get("agreement")
    if agree:
        kappa = "n/a" if agree["kappa"] is None else f"{agree['kappa']:.3f}"
        rows.append(("agreement with reference read",
                     f"accuracy {agree['accuracy']:.3f}, Cohen's kappa {kappa} ({agree['n']} lesions)"))
    lines = [f"# Cohort summary ({table['n_lesions']} lesions, {table['n_determinate']} with a determinate "
             "outcome)", "", "| result | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def agreement(pipeline: Mapping[str, Outcome | str],
              reference: Mapping[str, Outcome | str]) -> dict[str, Any]:
    """Confusion matrix, accuracy and Cohen's kappa between the pipeline and a reference read.

    Parameters
    ----------
    pipeline, reference : mapping lesion_id -> Outcome (or its string value)

    Returns
    -------
    dict
        ``labels`` (outcome values), ``matrix`` (rows = reference, columns = pipeline, in
        ``labels`` order), ``n`` (lesions in both), ``accuracy``, ``kappa`` (None when
        undefined: no lesion, or chance agreement 1), ``only_in_pipeline``, ``only_in_reference``.

    Raises
    ------
    ValueError
        If a value is not an outcome.
    """
    common = sorted(set(pipeline) & set(reference))
    index = {o: i for i, o in enumerate(OUTCOMES)}
    matrix = [[0] * len(OUTCOMES) for _ in OUTCOMES]
    for key in common:
        try:
            ref, got = Outcome(reference[key]), Outcome(pipeline[key])
        except ValueError as exc:
            raise ValueError(f"lesion {key!r}: {exc}; outcomes are {[o.value for o in OUTCOMES]}") from exc
        matrix[index[ref]][index[got]] += 1
    n = len(common)
    p_o = sum(matrix[i][i] for i in range(len(OUTCOMES))) / n if n else None
    kappa: float | None = None
    if n and p_o is not None:
        rows = [sum(row) for row in matrix]
        cols = [sum(matrix[i][j] for i in range(len(OUTCOMES))) for j in range(len(OUTCOMES))]
        p_e = sum(r * c for r, c in zip(rows, cols, strict=True)) / n**2
        kappa = None if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)
    return {"labels": [o.value for o in OUTCOMES], "matrix": matrix, "n": n, "accuracy": p_o,
            "kappa": kappa, "only_in_pipeline": sorted(set(pipeline) - set(reference)),
            "only_in_reference": sorted(set(reference) - set(pipeline))}
