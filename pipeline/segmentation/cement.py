"""Cement (PMMA) segmentation on MRI (signal void) and CT (dense, new since the pre-procedure CT).

SPEC section 3: on MRI, cement is a signal void on every sequence (below 0.3 x the
paraspinal-muscle signal on T1 and on STIR); on CT it is >= 1600 HU and absent on the
pre-procedure CT. Masses are returned sorted cranio-caudally (highest physical z first) so the
caller can map them, in order, onto the patient's registered levels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from pipeline.segmentation import common as cm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CementMass:
    """One connected cement mass.

    Attributes
    ----------
    label : int
        1-based rank in cranio-caudal order (1 = most cranial).
    centroid_mm : tuple of float
        Physical centroid (LPS, mm).
    volume_ml : float
        Volume in mL.
    mask : SimpleITK.Image
        uint8 0/1 mask of this mass on the input grid.
    """

    label: int
    centroid_mm: tuple[float, float, float]
    volume_ml: float
    mask: sitk.Image


@dataclass(frozen=True)
class CementResult:
    """All cement found in one study.

    Attributes
    ----------
    mask : SimpleITK.Image
        uint8 0/1 union of the masses, on the T1 (MRI) or post-procedure CT grid.
    masses : list of CementMass
        Sorted cranio-caudally (highest physical z first); empty when none was found.
    muscle_signal : float
        T1 paraspinal-muscle reference signal (image units); NaN for CT.
    reason : str
        What was found and the thresholds used, or why nothing was found.
    muscle_stir : float
        STIR signal of the same muscle (image units); NaN without STIR and for CT.
    """

    mask: sitk.Image
    masses: list[CementMass] = field(default_factory=list)
    muscle_signal: float = math.nan
    reason: str = ""
    muscle_stir: float = math.nan

    @property
    def volume_ml(self) -> float:
        """Total cement volume (mL)."""
        return float(sum(m.volume_ml for m in self.masses))


def masses_from_candidate(
    candidate: cm.BoolArray, reference: sitk.Image, min_volume_ml: float
) -> tuple[list[CementMass], cm.BoolArray, float]:
    """Components >= ``min_volume_ml`` sorted cranio-caudally; also the largest rejected volume."""
    labels, n = cm.label(candidate)
    vox_ml = cm.voxel_volume_ml(reference)
    kept: list[tuple[float, cm.BoolArray, tuple[float, float, float], float]] = []
    largest_rejected = 0.0
    if n:
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        for lab in range(1, n + 1):
            volume = float(counts[lab]) * vox_ml
            if volume < min_volume_ml:
                largest_rejected = max(largest_rejected, volume)
                continue
            comp = labels == lab
            centroid = cm.centroid_mm(comp, reference)
            kept.append((centroid[2], comp, centroid, volume))
    kept.sort(key=lambda item: -item[0])
    union = np.zeros(candidate.shape, dtype=bool)
    masses: list[CementMass] = []
    for rank, (_, comp, centroid, volume) in enumerate(kept, start=1):
        union |= comp
        masses.append(
            CementMass(
                label=rank, centroid_mm=centroid, volume_ml=volume, mask=cm.mask_image(comp, reference)
            )
        )
    return masses, union, largest_rejected


def _partial_volume_edge(
    core: cm.BoolArray, images: list[cm.FloatArray], spacing: tuple[float, float, float]
) -> tuple[cm.BoolArray, int]:
    """Add the one-voxel layer around ``core`` that is darker than half-way to the surroundings.

    For each image the void level is the median inside ``core`` and the surrounding level the
    median of the ring between one and two voxels (largest spacing) outside it; a layer voxel
    is added when it is below the mid-point on every image.
    """
    step = max(spacing)
    layer = cm.dilate_mm(core, spacing, step) & ~core
    ring = cm.dilate_mm(core, spacing, 2.0 * step) & ~core & ~layer
    if not layer.any() or not ring.any():
        return core, 0
    ok = layer.copy()
    for values in images:
        mid = 0.5 * (float(np.median(values[core])) + float(np.median(values[ring])))
        ok &= values < mid
    return core | ok, int(np.count_nonzero(ok))


def describe_masses(masses: list[CementMass]) -> str:
    vols = ", ".join(f"{m.volume_ml:.2f} mL at z={m.centroid_mm[2]:.1f} mm" for m in masses)
    return f"{len(masses)} cement mass(es) cranio-caudally: {vols}"


def find_cement_mr(
    t1: sitk.Image,
    stir: sitk.Image | None,
    *,
    muscle_ratio: float = 0.3,
    min_volume_ml: float = 0.5,
    opening_mm: float = 1.5,
    partial_volume_edge: bool = True,
) -> CementResult:
    """Cement as the signal void on T1 and STIR.

    Method
    ------
    1. Body: T1 above 0.1 x its 99th percentile, 3D holes filled (air around the patient,
       connected to the image border, stays outside; enclosed voids are inside).
    2. Paraspinal-muscle reference (:func:`common.estimate_muscle_t1`): fat is the brightest
       tissue on T1; muscle is the mode of the body's T1 histogram between 0.25 and 0.6 x the
       fat level, refined as the median of the voxels within +-15 % of that mode. On STIR the
       reference is the mode of the STIR signal over those same muscle-like voxels (STIR
       resampled onto the T1 grid in physical space), which needs no assumption about how the
       scanner scales STIR.
    3. Void = T1 < ``muscle_ratio`` x muscle_T1 and (when STIR is given) STIR <
       ``muscle_ratio`` x muscle_STIR. Requiring both removes CSF (dark T1, bright STIR) and
       fat (dark STIR, bright T1); cortex is dark on both and is removed by step 4.
    4. Opening by a ball of ``opening_mm`` (at least the smallest voxel spacing; removes
       cortex and other thin voids), face-connected components, dropping those touching the
       image border or lying mostly outside the body (air) and those below ``min_volume_ml``.
    5. Partial-volume edge (``partial_volume_edge``): the voxel layer just outside each mass
       is added where it is darker than half-way between the void and the surrounding tissue
       (on T1, and on STIR when given), i.e. where it is at least half cement. On coarse
       sagittal grids (3-5 mm slices) the strict threshold alone loses a large share of the
       volume to the boundary voxels.

    Parameters
    ----------
    t1 : SimpleITK.Image
        3D T1 spin-echo image (no fat saturation); the result is on its grid.
    stir : SimpleITK.Image or None
        STIR of the same frame of reference (any grid); resampled onto the T1 grid (linear).
    muscle_ratio : float
        Void threshold as a fraction of the muscle signal (SPEC default 0.3).
    min_volume_ml : float
        Smallest cement mass kept (mL).
    opening_mm : float
        Radius (mm) of the opening that removes thin voids such as cortex.
    partial_volume_edge : bool
        Add the half-cement boundary voxels (step 5).

    Returns
    -------
    CementResult
        Masses sorted cranio-caudally; empty with a reason when there is no cement.

    Raises
    ------
    ValueError
        If an image is not 3D, ``muscle_ratio`` is not in (0, 1), or the T1 has no body.
    """
    cm.check_3d(t1, "t1")
    if stir is not None:
        cm.check_3d(stir, "stir")
    if not 0.0 < muscle_ratio < 1.0:
        raise ValueError(f"muscle_ratio must be in (0, 1), got {muscle_ratio}")
    t1_arr = cm.to_array(t1)
    spacing = cm.spacing_zyx(t1)
    body = cm.body_mask(t1_arr)
    muscle_t1, muscle_like = cm.estimate_muscle_t1(t1_arr, body)
    void = t1_arr < muscle_ratio * muscle_t1
    stir_arr: cm.FloatArray | None = None
    muscle_stir = math.nan
    notes = [f"T1 void < {muscle_ratio * muscle_t1:.0f} ({muscle_ratio} x muscle {muscle_t1:.0f})"]
    if stir is not None:
        stir_on_t1 = stir if cm.same_grid(stir, t1) else cm.resample_like(t1, stir)
        stir_arr = cm.to_array(stir_on_t1)
        sample = stir_arr[muscle_like & (stir_arr > 0)]
        muscle_stir = cm.histogram_mode(sample) if sample.size >= 50 else float(np.median(stir_arr[body]))
        void &= stir_arr < muscle_ratio * muscle_stir
        notes.append(
            f"STIR void < {muscle_ratio * muscle_stir:.0f} ({muscle_ratio} x muscle {muscle_stir:.0f})"
        )
    else:
        notes.append("no STIR: T1 void only (CSF-like dark T1 not excluded)")
    radius = max(opening_mm, min(spacing))  # a sub-voxel opening would be a no-op
    candidate = cm.open_mm(void, spacing, radius)
    labels, n = cm.label(candidate)
    drop = cm.border_labels(labels)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * cm.voxel_volume_ml(t1)
    small = 0.0
    for lab in range(1, n + 1):
        if lab in drop:
            continue
        if body[labels == lab].mean() < 0.5:
            drop.add(lab)
        elif sizes[lab] < min_volume_ml:
            drop.add(lab)
            small = max(small, float(sizes[lab]))
    if drop:
        candidate &= ~np.isin(labels, sorted(drop))
    if partial_volume_edge and candidate.any():
        images = [t1_arr] if stir_arr is None else [t1_arr, stir_arr]
        candidate, added = _partial_volume_edge(candidate, images, spacing)
        notes.append(f"partial-volume edge: {added} voxel(s) darker than half-way to the surroundings")
    masses, union, rejected = masses_from_candidate(candidate, t1, min_volume_ml)
    rejected = max(rejected, small)
    if masses:
        reason = f"{describe_masses(masses)}; " + "; ".join(notes)
    elif rejected > 0:
        reason = (
            f"no cement: largest signal void inside the body is {rejected:.2f} mL "
            f"(< {min_volume_ml} mL); " + "; ".join(notes)
        )
    else:
        reason = "no cement: no signal void inside the body after removing air and thin structures; " + (
            "; ".join(notes)
        )
    logger.info("MR cement: %s", reason)
    return CementResult(mask=cm.mask_image(union, t1), masses=masses, muscle_signal=muscle_t1, reason=reason,
                        muscle_stir=muscle_stir)
