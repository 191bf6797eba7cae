"""Overlay PNGs for QA review: one visit (sagittal + axial) and the timeline montage of all visits.

Each PNG comes with a sidecar ``<same stem>.json`` that says where every panel is in the PNG and
where its pixels are in patient space, so the review page can turn a click into a coordinate::

    {"width_px": W, "height_px": H,
     "panels": [{"view": "sagittal" | "axial", "label": "J0" (timeline column) or "",
                 "x0_px": int, "y0_px": int, "width_px": int, "height_px": int,
                 "origin_mm": [x, y, z], "row_step_mm": [3 floats], "col_step_mm": [3 floats]}]}

``x0_px``/``y0_px`` count from the top-left corner of the PNG; pixel (column ``c``, row ``r``) of
a panel is centred at ``origin_mm + r * row_step_mm + c * col_step_mm`` (LPS, mm, in the display
space: J0's when the visit was shown through its transform). Panels are placed with
``Figure.figimage`` at integer offsets, never resampled by matplotlib, so that geometry is exact.

Figures use matplotlib's object-oriented API only (``Figure`` + ``FigureCanvasAgg``: patients are
processed in threads). PNGs are deterministic (no metadata, no timestamp) and written atomically
with their sidecar.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.outputs.atomic import atomic_write_bytes, atomic_write_text
from pipeline.outputs.overlays import (
    PlaneGeometry,
    PlaneOutsideImageError,
    View,
    legend_entries,
    plane_geometry,
    render_view,
)
from pipeline.outputs.palette import Structure

__all__ = ["TimelineVisit", "sidecar_path", "write_timeline", "write_visit_overlay"]

logger = logging.getLogger(__name__)

_DPI = 64  # a power of two: figure sizes in inches are exact, so the PNG is exactly W x H pixels
_PAD = 10  # outer margin (px)
_LET = 14  # margin around each panel, holding the orientation letters (px)
_TITLE_PX = 15  # font sizes (px)
_TEXT_PX = 12
_SMALL_PX = 11
_MIN_FIT_PX = 10  # smallest font a title shrinks to before it is cut
_ROW_PX = 18  # height of a legend line (px)
_SCALE_MM = 10.0
_BACKGROUND = "#000000"
_FOREGROUND = "#f0f0f0"
_MUTED = "#b0b0b0"
_NO_IMAGE_GREY = 48
#: Letters at the (left, right, top, bottom) edges of each view.
_LETTERS = {"sagittal": ("A", "P", "S", "I"), "axial": ("R", "L", "A", "P")}
_VIEW_TITLES = {"sagittal": "Sagittal", "axial": "Axial"}


class TimelineVisit(NamedTuple):
    """One column of the timeline montage."""

    label: str  # timepoint: "J0", "M3", "UNSCHEDULED_+45d"
    image: sitk.Image
    masks: Mapping[str, sitk.Image | None]
    transform: sitk.Transform | None = None  # J0 -> this visit's physical space; None for J0
    days_from_procedure: int | None = None


def sidecar_path(png_path: str | os.PathLike[str]) -> Path:
    """The geometry sidecar of a PNG: ``overlay.png`` -> ``overlay.json``."""
    return Path(png_path).with_suffix(".json")


# ----------------------------------------------------------------------------- drawing plan


@dataclass
class _Text:
    x: float  # px from the left
    y: float  # px from the top
    text: str
    size_px: float
    ha: str = "left"
    va: str = "top"
    colour: str = _FOREGROUND
    bold: bool = False
    rotation: float = 0.0
    fit_px: float | None = None  # shrink (then cut) the text until it is at most this wide (px)


@dataclass
class _Plan:
    width_px: int
    height_px: int
    images: list[tuple[int, int, npt.NDArray[np.uint8]]] = field(default_factory=list)  # (x0, y0 top, rgb)
    texts: list[_Text] = field(default_factory=list)
    panels: list[dict[str, Any]] = field(default_factory=list)


def _pt(size_px: float) -> float:
    return size_px * 72.0 / _DPI


def _fit(artist: Any, renderer: Any, size_px: float, width_px: float) -> None:
    """Shrink a text down to ``_MIN_FIT_PX``, then cut its end (with an ellipsis), until it fits ``width_px``."""
    text = artist.get_text()
    while size_px > _MIN_FIT_PX and artist.get_window_extent(renderer).width > width_px:
        size_px -= 0.5
        artist.set_fontsize(_pt(size_px))
    while len(text) > 1 and artist.get_window_extent(renderer).width > width_px:
        text = text[:-1]
        artist.set_text(text.rstrip() + "\u2026")


def _render_png(plan: _Plan) -> bytes:
    fig = Figure(figsize=(plan.width_px / _DPI, plan.height_px / _DPI), dpi=_DPI, facecolor=_BACKGROUND)
    canvas = FigureCanvasAgg(fig)
    for x0, y0, rgb in plan.images:
        fig.figimage(rgb, xo=x0, yo=plan.height_px - y0 - rgb.shape[0], origin="upper", resize=False)
    renderer = canvas.get_renderer()
    for t in plan.texts:
        artist = fig.text(
            t.x / plan.width_px,
            1.0 - t.y / plan.height_px,
            t.text,
            fontsize=_pt(t.size_px),
            ha=t.ha,
            va=t.va,
            color=t.colour,
            fontweight="bold" if t.bold else "normal",
            rotation=t.rotation,
            family="DejaVu Sans",
        )
        if t.fit_px is not None:
            _fit(artist, renderer, t.size_px, t.fit_px)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (plan.height_px, plan.width_px):  # would shift every panel of the sidecar
        raise RuntimeError(
            f"matplotlib drew {rgba.shape[1]}x{rgba.shape[0]} px, expected {plan.width_px}x{plan.height_px}"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba[:, :, :3])).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _floats(v: Sequence[float]) -> list[float]:
    return [round(float(x), 6) + 0.0 for x in v]


def _add_panel(plan: _Plan, x0: int, y0: int, geometry: PlaneGeometry, rgb: npt.NDArray[np.uint8], label: str) -> None:
    """A panel at (x0, y0) (top-left, px), its orientation letters in the margin around it, its sidecar entry."""
    rows, cols = geometry.shape
    plan.images.append((x0, y0, rgb))
    left, right, top, bottom = _LETTERS[geometry.view]
    mid_x, mid_y, half = x0 + cols / 2, y0 + rows / 2, _LET / 2
    plan.texts += [
        _Text(x0 - half, mid_y, left, _SMALL_PX, "center", "center", _MUTED),
        _Text(x0 + cols + half, mid_y, right, _SMALL_PX, "center", "center", _MUTED),
        _Text(mid_x, y0 - half, top, _SMALL_PX, "center", "center", _MUTED),
        _Text(mid_x, y0 + rows + half, bottom, _SMALL_PX, "center", "center", _MUTED),
    ]
    plan.panels.append(
        {
            "view": geometry.view,
            "label": label,
            "x0_px": int(x0),
            "y0_px": int(y0),
            "width_px": int(cols),
            "height_px": int(rows),
            "origin_mm": _floats(geometry.origin_mm),
            "row_step_mm": _floats(geometry.row_step_mm),
            "col_step_mm": _floats(geometry.col_step_mm),
        }
    )


def _legend_height(n_entries: int) -> int:
    return (n_entries + 1) * _ROW_PX  # one line per structure, one for the scale bar


def _add_legend(plan: _Plan, y0: int, entries: Sequence[tuple[Structure, str]], pixel_mm: float) -> None:
    """Colour swatches with their labels, one per line, then a 10 mm scale bar (at display scale)."""
    x = _PAD + _LET
    swatch = 11
    for i, (s, text) in enumerate(entries):
        y = y0 + i * _ROW_PX
        box = np.zeros((swatch, swatch, 3), np.uint8)
        box[:, :] = s.rgb
        plan.images.append((x, y + (_ROW_PX - swatch) // 2, box))
        colour = _FOREGROUND if text == s.label else _MUTED  # "(not segmented)", "(empty)"...: muted
        plan.texts.append(_Text(x + swatch + 6, y + _ROW_PX / 2, text, _TEXT_PX, "left", "center", colour))
    y = y0 + len(entries) * _ROW_PX
    bar = np.full((3, round(_SCALE_MM / pixel_mm), 3), 240, np.uint8)
    plan.images.append((x, y + (_ROW_PX - 3) // 2, bar))
    plan.texts.append(_Text(x + bar.shape[1] + 6, y + _ROW_PX / 2, f"{_SCALE_MM:g} mm", _TEXT_PX, "left", "center"))


def _write(path: str | os.PathLike[str], plan: _Plan) -> dict[str, Any]:
    dest = Path(path)
    if dest.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {dest.name!r}")
    sidecar = {"width_px": plan.width_px, "height_px": plan.height_px, "panels": plan.panels}
    atomic_write_bytes(dest, _render_png(plan))
    atomic_write_text(sidecar_path(dest), json.dumps(sidecar, indent=2) + "\n")
    return sidecar


# ----------------------------------------------------------------------------- the two figures


def write_visit_overlay(
    path: str | os.PathLike[str],
    image: sitk.Image,
    masks: Mapping[str, sitk.Image | None],
    centre_mm: Sequence[float],
    *,
    title: str,
    transform: sitk.Transform | None = None,
    pixel_mm: float = 0.4,
    half_width_mm: float = 40.0,
    contour_px: int = 1,
) -> dict[str, Any]:
    """Write one visit's overlay: sagittal and axial views side by side, title, legend, 10 mm scale bar.

    Parameters
    ----------
    path
        Destination PNG (``.png``); the sidecar goes to the same stem with ``.json``.
    image, masks, centre_mm, transform, pixel_mm, half_width_mm, contour_px
        As for :func:`pipeline.outputs.overlays.render_view`.
    title
        Text at the top (lesion, level, timepoint, date). Never put the patient's name in it.

    Returns
    -------
    dict
        The sidecar (see the module docstring), as written.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.png``, or the centre is outside the image
        (:class:`~pipeline.outputs.overlays.PlaneOutsideImageError`), or as ``render_view``.
    """
    views = [
        render_view(
            image,
            masks,
            centre_mm,
            v,
            transform=transform,
            pixel_mm=pixel_mm,
            half_width_mm=half_width_mm,
            contour_px=contour_px,
        )
        for v in ("sagittal", "axial")
    ]
    rows, cols = views[0].shape
    cell_w, cell_h = cols + 2 * _LET, rows + 2 * _LET
    entries = legend_entries([masks], views)
    title_h, head_h = 26, _ROW_PX
    top = _PAD + title_h + head_h
    width = 2 * _PAD + 2 * cell_w
    height = top + cell_h + _legend_height(len(entries)) + _PAD
    plan = _Plan(width, height)
    plan.texts.append(_Text(_PAD, _PAD, title, _TITLE_PX, bold=True, fit_px=width - 2 * _PAD))
    for i, view in enumerate(views):
        x0 = _PAD + i * cell_w
        plan.texts.append(_Text(x0 + cell_w / 2, _PAD + title_h, _VIEW_TITLES[view.view], _TEXT_PX, "center"))
        _add_panel(plan, x0 + _LET, top + _LET, view.geometry, view.rgb, "")
    _add_legend(plan, top + cell_h, entries, pixel_mm)
    return _write(path, plan)


def _placeholder(geometry: PlaneGeometry) -> npt.NDArray[np.uint8]:
    return np.full((*geometry.shape, 3), _NO_IMAGE_GREY, np.uint8)


def write_timeline(
    path: str | os.PathLike[str],
    visits: Sequence[TimelineVisit | tuple[Any, ...]],
    centre_mm: Sequence[float],
    *,
    title: str,
    pixel_mm: float = 0.5,
    half_width_mm: float = 40.0,
    contour_px: int = 1,
) -> dict[str, Any]:
    """Write the timeline montage: one column per visit, sagittal on top, axial below, all on the J0 plane.

    Parameters
    ----------
    path
        Destination PNG (``.png``); the sidecar goes to the same stem with ``.json``.
    visits
        In visit order: :class:`TimelineVisit` (or tuples of its fields: label, image, masks,
        transform, days_from_procedure). Each visit is resampled onto the J0 plane through its
        transform (None for J0 itself).
    centre_mm
        Centre of the planes in J0 space (LPS, mm).
    title
        Text at the top (lesion, level). Never put the patient's name in it.
    pixel_mm, half_width_mm, contour_px
        As for :func:`pipeline.outputs.overlays.render_view`.

    Returns
    -------
    dict
        The sidecar, as written; each panel's ``label`` is its visit's label.

    Raises
    ------
    ValueError
        If there is no visit, ``path`` does not end in ``.png``, or the plane is outside the image of
        every visit. A visit whose image the plane misses gets a grey panel marked "outside this
        visit's image" (and a warning in the log); the others are drawn.
    """
    items = [v if isinstance(v, TimelineVisit) else TimelineVisit(*v) for v in visits]
    if not items:
        raise ValueError("no visit to show in the timeline")
    geometries = [
        plane_geometry(centre_mm, v, pixel_mm=pixel_mm, half_width_mm=half_width_mm) for v in ("sagittal", "axial")
    ]
    columns: list[list[View] | None] = []
    for item in items:
        try:
            columns.append(
                [
                    render_view(
                        item.image,
                        item.masks,
                        centre_mm,
                        v,
                        transform=item.transform,
                        pixel_mm=pixel_mm,
                        half_width_mm=half_width_mm,
                        contour_px=contour_px,
                    )
                    for v in ("sagittal", "axial")
                ]
            )
        except PlaneOutsideImageError as exc:
            logger.warning("timeline: visit %s left blank: %s", item.label, exc)
            columns.append(None)
    if all(c is None for c in columns):
        raise PlaneOutsideImageError(
            "the timeline's plane centre is outside the image of every visit: check the vertebra seed"
        )
    rows, cols = geometries[0].shape
    cell_w, cell_h = cols + 2 * _LET, rows + 2 * _LET
    entries = legend_entries([i.masks for i in items], [v for c in columns if c is not None for v in c])
    title_h, head_h, side_w = 26, 2 * _ROW_PX, _ROW_PX
    top = _PAD + title_h + head_h
    width = 2 * _PAD + side_w + len(items) * cell_w
    height = top + 2 * cell_h + _legend_height(len(entries)) + _PAD
    plan = _Plan(width, height)
    plan.texts.append(_Text(_PAD, _PAD, title, _TITLE_PX, bold=True, fit_px=width - 2 * _PAD))
    for j, name in enumerate(("sagittal", "axial")):
        y_mid = top + j * cell_h + cell_h / 2
        plan.texts.append(
            _Text(_PAD + side_w / 2, y_mid, _VIEW_TITLES[name], _TEXT_PX, "center", "center", rotation=90)
        )
    for i, (item, column) in enumerate(zip(items, columns, strict=True)):
        x0 = _PAD + side_w + i * cell_w
        plan.texts.append(
            _Text(x0 + cell_w / 2, _PAD + title_h, item.label, _TEXT_PX, "center", bold=True, fit_px=cell_w)
        )
        if item.days_from_procedure is not None:
            days = f"day {item.days_from_procedure:+d}"
            plan.texts.append(
                _Text(x0 + cell_w / 2, _PAD + title_h + _ROW_PX, days, _SMALL_PX, "center", colour=_MUTED)
            )
        for j, geometry in enumerate(geometries):
            y0 = top + j * cell_h + _LET
            rgb = column[j].rgb if column is not None else _placeholder(geometry)
            _add_panel(plan, x0 + _LET, y0, geometry, rgb, item.label)
            if column is None:
                note = "outside this\nvisit's image"
                plan.texts.append(
                    _Text(x0 + _LET + cols / 2, y0 + rows / 2, note, _SMALL_PX, "center", "center", _MUTED)
                )
    _add_legend(plan, top + 2 * cell_h, entries, pixel_mm)
    return _write(path, plan)
