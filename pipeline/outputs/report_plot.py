"""The timeline plot of one lesion in ``report.html``: residual volume and vertebral heights over time.

Two panels sharing the x axis (days from procedure): on top the residual enhancing volume (mL),
below the anterior, middle and posterior heights of the treated body (mm). Each visit is a faint
vertical line labelled on top (PRE, J0, M1...); the failure timepoint, when there is one, is a
dashed line. Drawn with matplotlib's object-oriented API (``Figure`` + ``FigureCanvasAgg``, never
pyplot: patients are processed in threads), then stored as a 64-colour palette PNG (a quarter of
the size of the RGBA one; Pillow comes with matplotlib) without metadata, so that the same rows
give the same bytes.

Example
-------
>>> import datetime as dt
>>> from pipeline.domain import Visit, VisitMeasurement
>>> rows = [VisitMeasurement("P", "P-L1", Visit.J0, dt.date(2021, 1, 1), 0, residual_enhancing_volume_ml=1.0)]
>>> timeline_plot_png(rows, title="P-L1 (L1)")[:8]
b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.domain import Visit, VisitMeasurement, visit_label
from pipeline.outputs.palette import structure

__all__ = ["PLOT_DPI", "PLOT_HEIGHT_PX", "PLOT_WIDTH_PX", "timeline_plot_png", "timepoint_label"]

PLOT_WIDTH_PX = 900
PLOT_HEIGHT_PX = 520
PLOT_DPI = 100

#: Heights: (attribute, legend label, colour, marker, line style). Okabe-Ito colours not used by the masks.
_HEIGHTS: tuple[tuple[str, str, str, str, str], ...] = (
    ("height_anterior_mm", "anterior", "#56B4E9", "o", "-"),
    ("height_middle_mm", "middle", "#009E73", "s", "--"),
    ("height_posterior_mm", "posterior", "#CC79A7", "^", "-."),
)
_PNG_COLOURS = 64
_VISIT_LINE = "#BBBBBB"
_FAILURE_LINE = "#000000"
#: Two visit labels closer than this fraction of the x range are staggered on two lines.
_LABEL_MIN_GAP = 0.05


def timepoint_label(row: VisitMeasurement) -> str:
    """The visit's name as in the output folders: ``PRE``, ``J0``, ``M1``... or ``UNSCHEDULED_+45d``.

    Example
    -------
    >>> import datetime as dt
    >>> timepoint_label(VisitMeasurement("P", "P-L1", Visit.UNSCHEDULED, dt.date(2021, 2, 15), 45))
    'UNSCHEDULED_+45d'
    """
    return visit_label(row.timepoint, row.days_from_procedure)


def _short_label(row: VisitMeasurement) -> str:
    if row.timepoint == Visit.UNSCHEDULED and row.days_from_procedure is not None:
        return f"U{row.days_from_procedure:+d}d"
    return str(row.timepoint.value)


def _value(v: float | None) -> float:
    return float(v) if v is not None and math.isfinite(v) else math.nan


def _staggered(days: Sequence[int], labels: Sequence[str]) -> list[str]:
    """Labels with a blank second line raised (top axis) when too close to the previous one."""
    span = max(max(days) - min(days), 1)
    out: list[str] = []
    raised = False
    for i, (day, label) in enumerate(zip(days, labels, strict=True)):
        raised = (not raised) if i > 0 and (day - days[i - 1]) / span < _LABEL_MIN_GAP else False
        out.append(f"{label}\n" if raised else label)
    return out


def _draw_visits(axes: Sequence[Axes], days: Sequence[int], labels: Sequence[str]) -> None:
    for ax in axes:
        for day in days:
            ax.axvline(day, color=_VISIT_LINE, linewidth=0.8, zorder=0)
    top = axes[0].secondary_xaxis("top")
    top.set_xticks(list(days), labels=_staggered(days, labels))
    top.tick_params(axis="x", length=0, labelsize=9)


def _draw_failure(axes: Sequence[Axes], day: int, label: str) -> None:
    for ax in axes:
        ax.axvline(day, color=_FAILURE_LINE, linewidth=1.2, linestyle=(0, (5, 3)), zorder=1)
    axes[0].text(day, 0.97, f" local failure ({label})", transform=axes[0].get_xaxis_transform(),
                 ha="left", va="top", fontsize=9, parse_math=False)


def timeline_plot_png(rows: Sequence[VisitMeasurement], *, title: str,
                      failure_timepoint: Visit | None = None,
                      width_px: int = PLOT_WIDTH_PX, height_px: int = PLOT_HEIGHT_PX) -> bytes:
    """Plot residual volume (mL) and the three heights (mm) against days from procedure.

    Parameters
    ----------
    rows
        The lesion's visits (any order; sorted by day here). Visits without a day cannot be placed
        and are left out; a missing value is a gap in its line.
    title
        Shown as is above the plot (never interpreted as mathtext: ``$`` is a dollar sign).
    failure_timepoint
        The verdict's failure visit, marked with a dashed line (the first row of that visit).
    width_px, height_px
        Size of the PNG in pixels (at 100 dpi).

    Returns
    -------
    bytes
        A palette PNG without metadata: the same rows give the same bytes.

    Raises
    ------
    ValueError
        If the size is not positive.
    """
    if width_px <= 0 or height_px <= 0:
        raise ValueError(f"the plot size must be positive, got {width_px} x {height_px} px")
    placed = sorted((r for r in rows if r.days_from_procedure is not None),
                    key=lambda r: (r.days_from_procedure, list(Visit).index(r.timepoint)))
    fig = Figure(figsize=(width_px / PLOT_DPI, height_px / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax_vol, ax_h = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title, fontsize=11, parse_math=False)
    ax_vol.set_ylabel("residual enhancing\nvolume (mL)")
    ax_h.set_ylabel("height (mm)")
    ax_h.set_xlabel("days from procedure")
    if not placed:
        for ax in (ax_vol, ax_h):
            ax.text(0.5, 0.5, "no visit with a study date to plot", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="#555555")
            ax.set_yticks([])
        ax_h.set_xticks([])
    else:
        days = [int(r.days_from_procedure) for r in placed if r.days_from_procedure is not None]
        _draw_visits((ax_vol, ax_h), days, [_short_label(r) for r in placed])
        residual = [_value(r.residual_enhancing_volume_ml) for r in placed]
        ax_vol.plot(days, residual, color=structure("residual").colour_hex, marker="o", linewidth=1.8,
                    label="residual enhancing volume")
        ax_vol.set_ylim(bottom=0.0, top=max([1.0, *(1.15 * v for v in residual if not math.isnan(v))]))
        any_height = False
        for attr, label, colour, marker, style in _HEIGHTS:
            values = [_value(getattr(r, attr)) for r in placed]
            any_height = any_height or any(not math.isnan(v) for v in values)
            ax_h.plot(days, values, color=colour, marker=marker, linestyle=style, linewidth=1.5, label=label)
        if any_height:
            ax_h.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
                        title="height", title_fontsize=8)
        else:
            ax_h.text(0.5, 0.5, "heights not measured", transform=ax_h.transAxes, ha="center", va="center",
                      fontsize=10, color="#555555")
        if failure_timepoint is not None:
            hit = next((r for r in placed if r.timepoint == failure_timepoint), None)
            if hit is not None and hit.days_from_procedure is not None:
                _draw_failure((ax_vol, ax_h), hit.days_from_procedure, _short_label(hit))
        lo, hi = min(days), max(days)
        pad = max((hi - lo) * 0.04, 3.0)
        ax_h.set_xlim(lo - pad, hi + pad)
    for ax in (ax_vol, ax_h):
        ax.grid(axis="y", color="#E5E5E5", linewidth=0.6)
        ax.set_axisbelow(True)
    rgba, size = canvas.print_to_buffer()
    # A plot has few colours: a 64-colour palette PNG is a quarter of the RGBA one, without visible change.
    image = Image.frombuffer("RGBA", size, rgba, "raw", "RGBA", 0, 1).convert("RGB")
    paletted = image.quantize(_PNG_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    paletted.save(buf, format="PNG", optimize=True)  # no text chunks: no software name, no time
    return buf.getvalue()
