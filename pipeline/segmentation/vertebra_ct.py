"""The vertebral body on CT, grown from a seed point (e.g. the cement centroid or a level seed)."""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

from pipeline.segmentation import common as cm
from pipeline.segmentation import vertebra as vb


def segment_body_ct(
    ct: sitk.Image,
    seed_mm: Sequence[float],
    *,
    bone_hu: float = 100.0,
    opening_mm: float = 2.0,
    closing_mm: float = 2.0,
) -> vb.BodyResult:
    """Segment the vertebral body on CT from a seed point (e.g. the cement centroid).

    Bone = HU >= ``bone_hu`` (marrow 150-250, cortex and cement above; discs ~80 and soft
    tissue stay out), grown from the voxels within 3 mm of ``seed_mm`` inside the same search
    ellipsoid as :func:`segment_body`; leaks are cut by an ``opening_mm`` opening; lytic
    regions enclosed by the cortex are recovered by hole filling. A 3x3x3 median filter is
    applied first (noise).

    Parameters
    ----------
    ct : SimpleITK.Image
        3D CT in HU.
    seed_mm : tuple of float
        A point inside the body (LPS, mm).
    bone_hu : float
        Bone threshold (HU).
    opening_mm, closing_mm : float
        Radii (mm) of the leak-cutting opening and the smoothing closing.

    Returns
    -------
    BodyResult

    Raises
    ------
    ValueError
        If ``ct`` is not 3D or ``seed_mm`` lies outside the image.
    """
    cm.check_3d(ct, "ct")
    if len(seed_mm) != 3:
        raise ValueError(f"seed_mm must be a 3D point (x, y, z) in mm, got {seed_mm!r}")
    seed_pt = (float(seed_mm[0]), float(seed_mm[1]), float(seed_mm[2]))
    cidx = ct.TransformPhysicalPointToContinuousIndex(seed_pt)
    if any(not -0.5 <= c <= s - 0.5 for c, s in zip(cidx, ct.GetSize(), strict=True)):
        raise ValueError(f"seed_mm {seed_pt} lies outside the CT image")
    arr = cm.to_array(sitk.Median(ct, [1, 1, 1]))  # 3x3x3 median: noise out, edges kept
    spacing = cm.spacing_zyx(ct)
    seed = vb.search_region(ct, seed_pt, (3.0, 3.0, 3.0))
    allowed = (arr >= bone_hu) & vb.search_region(ct, seed_pt, vb.SEARCH_SEMI_AXES_MM)
    seed &= allowed
    if not seed.any():
        return vb.BodyResult(
            cm.mask_image(seed, ct), f"no bone >= {bone_hu:.0f} HU within 3 mm of the seed", False
        )
    mask = cm.component_touching(allowed, seed)
    mask = cm.component_touching(cm.open_mm(mask, spacing, opening_mm) | seed, seed)
    mask = cm.fill_holes(cm.close_mm(cm.fill_holes(mask), spacing, closing_mm))
    return vb.check_body(mask, ct, f"CT region growing (>= {bone_hu:.0f} HU)")
