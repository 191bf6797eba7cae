"""Segmentation: cement, treated vertebral body, ablation zone, rigid registration.

Pure functions on SimpleITK images (masks are uint8 0/1 on the input grid, coordinates are
physical LPS millimetres). This package never imports pydicom, prefect, ``pipeline.ingest``
or ``pipeline.outputs``.
"""

from pipeline.segmentation.ablation import residual_roi, segment_ablation_zone
from pipeline.segmentation.cement import CementMass, CementResult, find_cement_mr
from pipeline.segmentation.cement_ct import find_cement_ct
from pipeline.segmentation.registration import (
    RigidResult,
    cement_surface_distance_mm,
    register_rigid,
    resample_to,
)
from pipeline.segmentation.vertebra import BodyResult, segment_body
from pipeline.segmentation.vertebra_ct import segment_body_ct

__all__ = [
    "BodyResult",
    "CementMass",
    "CementResult",
    "RigidResult",
    "cement_surface_distance_mm",
    "find_cement_ct",
    "find_cement_mr",
    "register_rigid",
    "resample_to",
    "residual_roi",
    "segment_ablation_zone",
    "segment_body",
    "segment_body_ct",
]
