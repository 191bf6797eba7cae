"""Cement on CT: >= 1600 HU on the post-procedure CT, minus what was already that dense before.

SPEC section 3. Masses are returned sorted cranio-caudally (highest physical z first), like
:func:`pipeline.segmentation.cement.find_cement_mr`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.segmentation import cement as ce
from pipeline.segmentation import common as cm
from pipeline.segmentation.registration import register_rigid, resample_to

logger = logging.getLogger(__name__)


def _partial_volume_edge(
    candidate: cm.BoolArray,
    post: cm.FloatArray,
    spacing: tuple[float, float, float],
    pre_on_post: cm.FloatArray | None,
    pre_margin_mm: float,
) -> tuple[cm.BoolArray, int]:
    """Add, per component, the one-voxel layer at least half-way from its surroundings to its level.

    The component's level is its median HU, the surroundings' the median of the ring between one
    and two voxels (largest spacing) outside it; layer voxels that were that dense on the
    pre-procedure CT (dilated by ``pre_margin_mm``) are not added.
    """
    step = float(max(spacing))
    labels, _ = cm.label(candidate)
    grown = candidate.copy()
    pad = [int(np.ceil(2.0 * step / s)) + 1 for s in spacing]
    for lab, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        win = tuple(
            slice(max(0, b.start - p), min(size, b.stop + p))
            for b, p, size in zip(box, pad, candidate.shape, strict=True)
        )
        comp = labels[win] == lab
        others = candidate[win]
        values = post[win]
        layer = cm.dilate_mm(comp, spacing, step) & ~others
        ring = cm.dilate_mm(comp, spacing, 2.0 * step) & ~cm.dilate_mm(comp, spacing, step) & ~others
        if not layer.any() or not ring.any():
            continue
        level = 0.5 * (float(np.median(values[comp])) + float(np.median(values[ring])))
        add = layer & (values >= level)
        if pre_on_post is not None:
            add &= ~cm.dilate_mm(pre_on_post[win] >= level, spacing, pre_margin_mm)
        grown[win] |= add
    return grown, int(np.count_nonzero(grown & ~candidate))


def find_cement_ct(
    ct_post: sitk.Image,
    ct_pre: sitk.Image | None,
    *,
    threshold_hu: float = 1600.0,
    clip_hu: float = 3071.0,
    min_volume_ml: float = 0.5,
    pre_margin_mm: float = 1.5,
    opening_mm: float = 1.0,
    partial_volume_edge: bool = True,
) -> ce.CementResult:
    """Cement on the post-procedure CT: dense now, not dense before.

    Method: voxels >= ``threshold_hu`` (voxels at the clipping value ``clip_hu`` are saturated
    cement and are kept; their count is reported). When ``ct_pre`` is given it is registered
    rigidly onto the post CT (:func:`registration.register_rigid`, crop centred on the dense
    region, geometric-centre initialisation: the frames of reference may differ), resampled
    onto the post grid, and its dense voxels (>= ``threshold_hu``, dilated by ``pre_margin_mm``
    to absorb registration error) are removed: this removes dense cortex and blastic bone.
    Then an opening of ``opening_mm`` and components >= ``min_volume_ml``.

    Partial-volume edge (``partial_volume_edge``): a voxel at the cement's surface holding a
    fraction f of cement reads ``f x cement + (1 - f) x surroundings``; the threshold keeps only
    the voxels with f above ~0.6 (1600 HU between marrow ~100 HU and cement ~2500 HU), so a
    mass is under-segmented by part of its boundary layer (about 10 % of a 3-8 mL mass on a
    1 mm grid, more on coarse grids). The voxel layer just outside each mass is therefore added
    where it is at least half-way between the mass's median HU and the median HU of the ring
    one to two voxels further out, i.e. where it is at least half cement (minus the voxels
    that were already that dense on the pre-procedure CT, when given).

    Parameters
    ----------
    ct_post : SimpleITK.Image
        Post-procedure CT in HU; the result is on its grid.
    ct_pre : SimpleITK.Image or None
        Pre-procedure CT in HU (any frame of reference), or ``None``.
    threshold_hu : float
        Cement threshold (HU), SPEC default 1600.
    clip_hu : float
        Largest representable value (HU) of the export (3071 for 12-bit CT).
    min_volume_ml : float
        Smallest mass kept (mL).
    pre_margin_mm : float
        Dilation (mm) of the pre-procedure dense bone before subtraction.
    opening_mm : float
        Radius (mm) of the opening removing thin dense structures (streaks, cortex).
    partial_volume_edge : bool
        Add the half-cement boundary voxels (see above).

    Returns
    -------
    CementResult
        ``muscle_signal`` is NaN for CT.

    Raises
    ------
    ValueError
        If an image is not 3D or ``threshold_hu`` >= ``clip_hu``.
    """
    cm.check_3d(ct_post, "ct_post")
    if ct_pre is not None:
        cm.check_3d(ct_pre, "ct_pre")
    if threshold_hu >= clip_hu:
        raise ValueError(f"threshold_hu ({threshold_hu}) must be below clip_hu ({clip_hu})")
    post = cm.to_array(ct_post)
    spacing = cm.spacing_zyx(ct_post)
    dense = post >= threshold_hu
    clipped = int(np.count_nonzero(post >= clip_hu - 0.5))
    notes = [f">= {threshold_hu:.0f} HU"]
    if clipped:
        notes.append(f"{clipped} voxel(s) saturated at {clip_hu:.0f} HU kept as cement")
    pre_on_post: cm.FloatArray | None = None
    if ct_pre is not None and dense.any():
        labels, n = cm.label(cm.open_mm(dense, spacing, opening_mm))
        if n:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            center = cm.centroid_mm(labels == int(np.argmax(sizes)), ct_post)
        else:
            center = cm.centroid_mm(dense, ct_post)
        reg = register_rigid(ct_post, ct_pre, crop_center_mm=center)
        pre_on_post = cm.to_array(resample_to(ct_post, ct_pre, reg.transform, nearest=False, default=-1024.0))
        pre_dense = cm.dilate_mm(pre_on_post >= threshold_hu, spacing, pre_margin_mm)
        removed = int(np.count_nonzero(dense & pre_dense))
        dense &= ~pre_dense
        notes.append(
            f"minus pre-procedure dense bone ({removed} voxel(s); registration metric {reg.metric:.3f}: "
            f"{reg.reason})"
        )
    elif ct_pre is None:
        notes.append("no pre-procedure CT: dense cortex / blastic bone >= threshold may be included")
    candidate = cm.open_mm(dense, spacing, opening_mm)
    if partial_volume_edge and candidate.any():
        candidate, added = _partial_volume_edge(candidate, post, spacing, pre_on_post, pre_margin_mm)
        notes.append(f"partial-volume edge: {added} voxel(s) at least half cement")
    masses, union, rejected = ce.masses_from_candidate(candidate, ct_post, min_volume_ml)
    if masses:
        reason = f"{ce.describe_masses(masses)}; " + "; ".join(notes)
    elif rejected > 0:
        reason = f"no cement: largest dense new component is {rejected:.2f} mL (< {min_volume_ml} mL); " + (
            "; ".join(notes)
        )
    else:
        reason = "no cement: no new dense component; " + "; ".join(notes)
    logger.info("CT cement: %s", reason)
    return ce.CementResult(
        mask=cm.mask_image(union, ct_post), masses=masses, muscle_signal=math.nan, reason=reason
    )
