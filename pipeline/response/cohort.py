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
from collections.abc import Mapping, Sequence
from statistics import NormalDist
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
                 last_follow_up_date: Mapping[str, dt.date] | None = None,
                 reference_outcome: Mapping[str, Outcome | str] | None = None,
                 reference_j0_residual: Mapping[str, bool | None] | None = None) -> dict[str, Any]:
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
        ``vas_m1``; one pair per patient, paired Wilcoxon p-value). With a reference read,
        also ``agreement`` (outcomes, :func:`agreement`) and, when the read gives it,
        ``j0_residual_agreement``; these keys are absent without a reference read.
    reference_outcome : mapping lesion_id -> Outcome (or its value), optional
        A reference read (SPEC section 6: "when a reference read is given").
    reference_j0_residual : mapping lesion_id -> bool or None, optional
        The reference read's day-0 residual (None where the reader left it empty).
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
    table: dict[str, Any] = {
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
    if reference_outcome is not None:
        table["agreement"] = agreement({r.lesion.lesion_id: r.outcome for r in results}, reference_outcome)
    if reference_j0_residual is not None:
        table["j0_residual_agreement"] = agreement(
            {r.lesion.lesion_id: r.j0_residual for r in results}, reference_j0_residual, labels=BOOLEAN_LABELS)
    return table


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
    sections: list[str] = []
    for key, what in (("agreement", "outcome"), ("j0_residual_agreement", "day-0 residual")):
        agree = table.get(key)
        if agree:
            rows.append((f"agreement with the reference read ({what})", agreement_summary(agree)))
            sections += ["", *agreement_markdown(agree, f"{what[0].upper()}{what[1:]}: reference read (rows) "
                                                       "vs pipeline (columns)")]
    lines = [f"# Cohort summary ({table['n_lesions']} lesions, {table['n_determinate']} with a determinate "
             "outcome)", "", "| result | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines + sections) + "\n"


def agreement_summary(agree: Mapping[str, Any]) -> str:
    """One line: observed agreement with its numerator, Cohen's kappa with SE and 95 % CI, unmatched lesions.

    >>> C, F = "local_control", "local_failure"
    >>> a = agreement({"A": C, "B": F, "C": F, "D": C}, {"A": C, "B": F, "C": C, "D": C, "E": F})
    >>> for part in agreement_summary(a).split("; "):
    ...     print(part)
    observed agreement 0.750 (3/4), Cohen's kappa 0.500 (SE 0.375, 95 % CI -0.235 to 1.000)
    1 only in the reference read
    """
    n = agree["n"]
    acc = "n/a" if agree["accuracy"] is None else f"{agree['accuracy']:.3f}"
    correct = sum(agree["matrix"][i][i] for i in range(len(agree["labels"])))
    if agree["kappa"] is None:
        kappa = "n/a (undefined: no lesion, or a single category on both sides)"
    else:
        low, high = agree["kappa_ci95"]
        kappa = f"{agree['kappa']:.3f} (SE {agree['kappa_se']:.3f}, 95 % CI {low:.3f} to {high:.3f})"
    text = f"observed agreement {acc} ({correct}/{n}), Cohen's kappa {kappa}"
    extra = [f"{len(agree[k])} {label}" for k, label in UNMATCHED if agree.get(k)]
    return text + (f"; {', '.join(extra)}" if extra else "")


def agreement_markdown(agree: Mapping[str, Any], title: str) -> list[str]:
    """Markdown lines: the confusion matrix (rows = reference, columns = pipeline) with margins."""
    labels, matrix = agree["labels"], agree["matrix"]
    lines = [f"## {title}", "", "| reference \\ pipeline | " + " | ".join(labels) + " | total |",
             "|---|" + "---|" * (len(labels) + 1)]
    for label, row in zip(labels, matrix, strict=True):
        lines.append(f"| {label} | " + " | ".join(str(c) for c in row) + f" | {sum(row)} |")
    cols = [sum(row[j] for row in matrix) for j in range(len(labels))]
    lines.append("| total | " + " | ".join(str(c) for c in cols) + f" | {sum(cols)} |")
    for key, label in UNMATCHED:
        if agree.get(key):
            lines += ["", f"{label}: " + ", ".join(_md_escape(str(k)) for k in agree[key])]
    return lines


def _md_escape(text: str) -> str:
    """An identifier made inert in Markdown (no table break, no HTML, no emphasis)."""
    for char, repl in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, repl)
    return "".join(f"\\{c}" if c in "|*_`[]\\#" else c for c in text)


Label = str
#: Labels of a yes / no read (``j0_residual``), in matrix order.
BOOLEAN_LABELS: tuple[str, ...] = ("true", "false")
#: Lesions left out of an agreement table, by reason: (key of :func:`agreement`'s result, wording).
UNMATCHED: tuple[tuple[str, str], ...] = (
    ("only_in_reference", "only in the reference read"), ("only_in_pipeline", "only in the results"),
    ("unrated_reference", "unrated by the reference"), ("unrated_pipeline", "unrated by the pipeline"))
#: Two-sided 95 % normal quantile (``statistics.NormalDist().inv_cdf(0.975)``).
Z_95 = NormalDist().inv_cdf(0.975)


def cohens_kappa(matrix: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Cohen's kappa of a square agreement table, with its large-sample standard error and 95 % CI.

    With ``p_ij`` the cell proportions, ``p_i.`` / ``p_.j`` the row / column margins and ``n``
    the number of rated items (Cohen, 1960, Educ. Psychol. Meas. 20:37-46):
    ``p_o = sum_i p_ii``, ``p_e = sum_i p_i. p_.i``, ``kappa = (p_o - p_e) / (1 - p_e)``.

    Standard error: the large-sample formula of Fleiss, Cohen & Everitt (1969, Psychol. Bull.
    72:323-327; Fleiss, Levin & Paik, *Statistical Methods for Rates and Proportions*, 3rd ed.,
    2003, eq. 18.13), the one SAS PROC FREQ (AGREE) reports as ASE::

        var(kappa) = [ sum_i p_ii (1 - (p_i. + p_.i)(1 - kappa))^2
                       + (1 - kappa)^2 sum_{i != j} p_ij (p_.i + p_j.)^2
                       - (kappa - p_e (1 - kappa))^2 ] / (n (1 - p_e)^2)

    and the 95 % CI is ``kappa +/- 1.96 SE``, clipped to [-1, 1]. ``kappa_se_h0`` is the
    standard error under the null hypothesis kappa = 0 (same references, eq. 18.15), for a
    z test: ``[p_e + p_e^2 - sum_i p_i. p_.i (p_i. + p_.i)] / (n (1 - p_e)^2)``. Both are
    asymptotic: with a few tens of lesions read them as indicative.

    Parameters
    ----------
    matrix : square sequence of sequences of non-negative int
        Counts, rows = one rater (here the reference read), columns = the other (the pipeline).

    Returns
    -------
    dict
        ``n``, ``observed_agreement`` (p_o), ``chance_agreement`` (p_e), ``kappa``,
        ``kappa_se``, ``kappa_se_h0``, ``kappa_ci95`` (``[low, high]``). Every value is None
        when undefined: no item (n = 0), or chance agreement 1 (a single category used by
        both raters: kappa is 0/0).

    Raises
    ------
    ValueError
        If the table is not square or holds a negative count.

    Examples
    --------
    Cohen (1960), Table 1: 200 items, proportions [[.44, .07, .09], [.05, .20, .05],
    [.01, .03, .06]]; p_o = .70, p_e = .41, kappa = .492:

    >>> k = cohens_kappa([[88, 14, 18], [10, 40, 10], [2, 6, 12]])
    >>> round(k["observed_agreement"], 2), round(k["chance_agreement"], 2), round(k["kappa"], 3)
    (0.7, 0.41, 0.492)
    """
    size = len(matrix)
    if any(len(row) != size for row in matrix):
        raise ValueError(f"agreement table must be square, got rows of lengths {[len(r) for r in matrix]}")
    if any(c < 0 for row in matrix for c in row):
        raise ValueError("agreement table holds a negative count")
    n = sum(sum(row) for row in matrix)
    out: dict[str, Any] = {"n": n, "observed_agreement": None, "chance_agreement": None, "kappa": None,
                           "kappa_se": None, "kappa_se_h0": None, "kappa_ci95": None}
    if n == 0:
        return out
    p = [[c / n for c in row] for row in matrix]
    rows = [sum(row) for row in p]
    cols = [sum(p[i][j] for i in range(size)) for j in range(size)]
    p_o = sum(p[i][i] for i in range(size))
    p_e = sum(rows[i] * cols[i] for i in range(size))
    out.update(observed_agreement=p_o, chance_agreement=p_e)
    if p_e >= 1.0 - 1e-12:
        return out
    kappa = (p_o - p_e) / (1.0 - p_e)
    a = sum(p[i][i] * (1.0 - (rows[i] + cols[i]) * (1.0 - kappa)) ** 2 for i in range(size))
    b = (1.0 - kappa) ** 2 * sum(p[i][j] * (cols[i] + rows[j]) ** 2
                                 for i in range(size) for j in range(size) if i != j)
    c = (kappa - p_e * (1.0 - kappa)) ** 2
    se = math.sqrt(max(a + b - c, 0.0) / (n * (1.0 - p_e) ** 2))
    var0 = p_e + p_e**2 - sum(rows[i] * cols[i] * (rows[i] + cols[i]) for i in range(size))
    se0 = math.sqrt(max(var0, 0.0) / (n * (1.0 - p_e) ** 2))
    out.update(kappa=kappa, kappa_se=se, kappa_se_h0=se0,
               kappa_ci95=[max(-1.0, kappa - Z_95 * se), min(1.0, kappa + Z_95 * se)])
    return out


def _label(value: Any, labels: Sequence[str] | None) -> str | None:
    """The label of one rating (None = not rated); raises ValueError for a value outside the labels."""
    if value is None:
        return None
    if labels is None:
        return Outcome(value).value
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if text not in labels:
        raise ValueError(f"{value!r} is not one of {list(labels)}")
    return text


def agreement(pipeline: Mapping[str, Any], reference: Mapping[str, Any], *,
              labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Confusion matrix, observed agreement and Cohen's kappa between the pipeline and a reference read.

    Lesions are matched by key (``lesion_id``). Nothing is dropped silently: lesions present on
    one side only, and lesions one side left unrated (value None), are listed by id.

    Parameters
    ----------
    pipeline, reference : mapping lesion_id -> rating
        Outcome (or its string value) by default; with ``labels``, a label among them (a bool
        is read as ``"true"`` / ``"false"``). None = not rated (e.g. ``j0_residual`` unknown).
    labels : sequence of str, optional
        The categories, in matrix order (default: the three outcomes;
        :data:`BOOLEAN_LABELS` for a yes / no read such as ``j0_residual``).

    Returns
    -------
    dict
        ``labels``; ``matrix`` (rows = reference, columns = pipeline, in ``labels`` order);
        ``n`` (lesions rated on both sides); ``accuracy`` (= ``observed_agreement``),
        ``chance_agreement``, ``kappa``, ``kappa_se``, ``kappa_se_h0``, ``kappa_ci95`` (see
        :func:`cohens_kappa`; None when undefined); ``per_class`` (label -> ``reference``,
        ``pipeline`` and ``agree`` counts); ``disagreements`` (``lesion_id``, ``reference``,
        ``pipeline``); ``only_in_pipeline``, ``only_in_reference``; ``unrated_pipeline``,
        ``unrated_reference`` (in both, left unrated by that side).

    Raises
    ------
    ValueError
        If a value is not one of the labels (the message names the lesion).
    """
    names = [o.value for o in OUTCOMES] if labels is None else list(labels)
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    disagreements: list[dict[str, str]] = []
    unrated_pipeline: list[str] = []
    unrated_reference: list[str] = []
    for key in sorted(set(pipeline) & set(reference)):
        try:
            ref, got = _label(reference[key], labels), _label(pipeline[key], labels)
        except ValueError as exc:
            raise ValueError(f"lesion {key!r}: {exc}; expected one of {names}") from exc
        if ref is None or got is None:
            (unrated_reference if ref is None else unrated_pipeline).append(key)
            continue
        matrix[index[ref]][index[got]] += 1
        if ref != got:
            disagreements.append({"lesion_id": key, "reference": ref, "pipeline": got})
    stats_ = cohens_kappa(matrix)
    per_class = {name: {"reference": sum(matrix[i]), "pipeline": sum(row[i] for row in matrix),
                        "agree": matrix[i][i]} for name, i in index.items()}
    return {"labels": names, "rows": "reference", "columns": "pipeline", "matrix": matrix, "n": stats_["n"],
            "accuracy": stats_["observed_agreement"], **stats_, "per_class": per_class,
            "disagreements": disagreements,
            "only_in_pipeline": sorted(set(pipeline) - set(reference)),
            "only_in_reference": sorted(set(reference) - set(pipeline)),
            "unrated_pipeline": unrated_pipeline, "unrated_reference": unrated_reference}
