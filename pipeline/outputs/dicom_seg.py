"""DICOM SEG of one lesion at one visit: vertebral body, cement, ablation zone, residual (highdicom).

One BINARY Segmentation per lesion and visit, ``<visit folder>/seg.dcm``, on the grid of the
visit's T1 series and referencing its images. Segments follow the palette order
(:data:`pipeline.outputs.palette.STRUCTURES`), numbered 1..n over the masks given:

=========  =================================  ==========================================
mask       SegmentedPropertyCategory          SegmentedPropertyType
=========  =================================  ==========================================
vertebra   SCT 91723000 Anatomical Structure  the vertebra of the level (SCT, CID 7192),
                                              e.g. 66794005 "L1 vertebra"; sacrum, ilium
                                              or acetabulum for the other sites
cement     SCT 105590001 Substance            SCT 261712009 "Acrylic resin" (PMMA)
ablation   SCT 49755003 Morphologically       SCT 6574001 "Necrosis" (CID 7159)
           Abnormal Structure
residual   SCT 49755003 Morphologically       SCT 108369006 "Neoplasm" (CID 7159)
           Abnormal Structure
=========  =================================  ==========================================

DICOM (CID 7151) has no code for the vertebral body itself nor for bone cement: the segment
label says "Vertebral body", the description "bone cement (polymethyl methacrylate)".

Empty masks. A mask that is given but empty (no residual found, say) is still a segment: it
is described and has no frames, as highdicom writes it and its maintainers read the standard
("the algorithm looked and found nothing" differs from "not segmented"), and the SR can
reference it with its 0 mL volume. A mask that is absent (or None) has no segment.

Every segment carries the Tracking UID of its lesion and structure (the same at every visit)
and the palette's colour as RecommendedDisplayCIELabValue. ClinicalTrialTimePointID holds the
visit (``M3``, ``UNSCHEDULED_+45d``). UIDs are content hashes (see
:mod:`pipeline.outputs.dicom_common`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from pipeline.domain import normalise_level
from pipeline.ingest.source_series import read_source_series
from pipeline.outputs.dicom_common import (
    MANUFACTURER,
    content_digest,
    copied_values,
    deterministic_uid,
    save_dataset,
    series_number,
    silence_person_name_warning,
    site_code,
    tracking_uid,
)
from pipeline.outputs.palette import STRUCTURES, Structure, structure

__all__ = ["SEGMENT_TYPES", "segment_codes", "write_seg"]

log = logging.getLogger(__name__)

_ANATOMICAL = Code("91723000", "SCT", "Anatomical Structure")
_SUBSTANCE = Code("105590001", "SCT", "Substance")
_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
_LEFT, _RIGHT = Code("7771000", "SCT", "Left"), Code("24028007", "SCT", "Right")
_ALGORITHM_FAMILY = Code("123104", "DCM", "Morphological Operations")  # CID 7162

#: (category, type) of the structures whose codes do not depend on the level.
SEGMENT_TYPES: dict[str, tuple[Code, Code]] = {
    "cement": (_SUBSTANCE, Code("261712009", "SCT", "Acrylic resin")),
    "ablation": (_ABNORMAL, Code("6574001", "SCT", "Necrosis")),
    "residual": (_ABNORMAL, Code("108369006", "SCT", "Neoplasm")),
}
_DESCRIPTIONS = {
    "vertebra": "vertebral body of the treated level",
    "cement": "bone cement (polymethyl methacrylate) injected at vertebroplasty",
    "ablation": "non-enhancing ablation zone (coagulation necrosis)",
    "residual": "residual enhancing tissue (viable tumour) on DCE",
}
_LO_MAX = 64  # characters of a LO value


def segment_codes(name: str, level: str) -> tuple[Code, Code]:
    """(SegmentedPropertyCategory, SegmentedPropertyType) of a mask name at a level.

    Raises
    ------
    ValueError
        If ``name`` is not a structure of the palette or ``level`` not a known level or site.

    Example
    -------
    >>> [c.meaning for c in segment_codes("vertebra", "L1")]
    ['Anatomical Structure', 'L1 vertebra']
    """
    structure(name)
    if name == "vertebra":
        return _ANATOMICAL, site_code(level)
    return SEGMENT_TYPES[name]


def laterality(level: str) -> Code | None:
    """Left / Right for the paired sites (``ILIAC_L``, ``ACETABULUM_R``...), else None."""
    text = normalise_level(level)
    return _LEFT if text.endswith("_L") else _RIGHT if text.endswith("_R") else None


def _checked_masks(
    masks: Mapping[str, np.ndarray | None], shape: tuple[int, int, int]
) -> list[tuple[Structure, np.ndarray]]:
    """The given masks in palette order, as boolean (z, y, x) arrays; absent / None ones left out."""
    for name in masks:
        structure(name)  # raises on an unknown name
    out = []
    for s in STRUCTURES:
        mask = masks.get(s.name)
        if mask is None:
            continue
        arr = np.asarray(mask)
        if arr.shape != shape:
            raise ValueError(
                f"mask {s.name!r} has shape {arr.shape} but the reference image's array is {shape} (z, y, x): "
                "it was not drawn on this series (resample it onto the reference first)"
            )
        if arr.dtype != bool:
            if not np.isin(arr, (0, 1)).all():
                raise ValueError(f"mask {s.name!r} holds values other than 0 and 1: it is not a binary mask")
            arr = arr.astype(bool)
        out.append((s, arr))
    if not out:
        raise ValueError("no mask was given: a SEG needs at least one segment")
    return out


def _description(
    number: int, s: Structure, level: str, lesion_id: str, patient_id: str, software_version: str
) -> hd.seg.SegmentDescription:
    category, prop_type = segment_codes(s.name, level)
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=s.label,
        segmented_property_category=category,
        segmented_property_type=prop_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=MANUFACTURER, family=_ALGORITHM_FAMILY, version=software_version
        ),
        tracking_uid=tracking_uid(patient_id, lesion_id, s.name),
        tracking_id=f"{lesion_id} {s.label}",
        anatomic_regions=[site_code(level)],
        display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
    )
    desc.SegmentDescription = f"{_DESCRIPTIONS[s.name]} ({normalise_level(level)})"
    side = laterality(level)
    if side is not None:
        modifier = Dataset()
        modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = (
            side.value, side.scheme_designator, side.meaning)
        desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [modifier]
    return desc


def _prepared_header(ds: Dataset) -> Dataset:
    """A copy of a source header as highdicom wants it (the file is never changed).

    The Type 2 patient / study attributes highdicom reads are added empty when absent; in a
    multi-frame header, pixel measures and plane orientation found only per frame (Philips
    writes them so) are copied into the shared functional groups when every frame has the same.
    """
    out = copy.deepcopy(ds)
    per_frame = out.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        if not out.get("SharedFunctionalGroupsSequence"):
            out.SharedFunctionalGroupsSequence = [Dataset()]
        shared = out.SharedFunctionalGroupsSequence[0]
        for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
            items = [item.get(keyword) for item in per_frame]
            if keyword not in shared and items[0] and all(i == items[0] for i in items):
                setattr(shared, keyword, copy.deepcopy(items[0]))
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def write_seg(
    path: str | os.PathLike[str],
    source_files: Sequence[str | os.PathLike[str]],
    reference: sitk.Image,
    masks: Mapping[str, np.ndarray | None],
    *,
    lesion_id: str,
    level: str,
    timepoint: str,
    software_version: str,
) -> Dataset:
    """Write the DICOM SEG of one lesion at one visit, atomically, and return it.

    Parameters
    ----------
    path
        Destination, normally ``<visit folder>/seg.dcm``.
    source_files
        The files of the visit's T1 series (single-frame images in any order, or one
        enhanced multi-frame file); only their headers are read.
    reference
        The image loaded from ``source_files``; masks are on its grid.
    masks
        ``vertebra``, ``cement``, ``ablation``, ``residual`` (any subset) -> boolean (or 0/1)
        arrays shaped like ``sitk.GetArrayFromImage(reference)``, i.e. (z, y, x). An empty
        mask is an empty segment; a None or absent one is no segment.
    lesion_id, level
        The lesion (registry ``lesion_id``) and its level (``L1``, ``D7``, ``SACRUM``...).
    timepoint
        The visit: ``PRE``, ``J0``, ``M1``... or ``UNSCHEDULED_+45d`` (ClinicalTrialTimePointID).
    software_version
        crav-followup's version (SoftwareVersions, algorithm version; part of the UIDs' hash).

    Returns
    -------
    pydicom.Dataset
        The Segmentation written (a :class:`highdicom.seg.Segmentation`).

    Raises
    ------
    ValueError
        If a mask name is unknown, a mask is not binary or not on the reference grid, no mask
        is given, ``timepoint`` / ``lesion_id`` is empty or ``timepoint`` longer than 64
        characters, ``level`` is unknown, or the source files are not the reference's series
        (see :func:`pipeline.ingest.source_series.read_source_series`).
    """
    if not lesion_id.strip():
        raise ValueError("lesion_id is empty")
    if not timepoint.strip() or len(timepoint) > _LO_MAX:
        raise ValueError(f"timepoint {timepoint!r} must be 1 to {_LO_MAX} characters (ClinicalTrialTimePointID)")
    level_name = normalise_level(level)
    shape = tuple(reversed(reference.GetSize()))
    checked = _checked_masks(masks, (int(shape[0]), int(shape[1]), int(shape[2])))
    source = read_source_series(source_files, reference)
    silence_person_name_warning()
    patient_id = str(source.datasets[0].get("PatientID", ""))
    descriptions = [
        _description(i, s, level_name, lesion_id, patient_id, software_version)
        for i, (s, _) in enumerate(checked, start=1)
    ]
    stacked = np.stack([arr for _, arr in checked], axis=-1).astype(np.uint8)
    digest = content_digest(
        "SEG/1", software_version, lesion_id, level_name, timepoint, source.series_uid, *source.sop_uids,
        *copied_values(source.datasets[0]),
        *(part for s, arr in checked for part in (s.name, repr(arr.shape), np.packbits(arr).tobytes())),
    )
    seg = hd.seg.Segmentation(
        source_images=[_prepared_header(ds) for ds in source.datasets],
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=deterministic_uid(digest, "series"),
        series_number=series_number(level_name, "SEG"),
        sop_instance_uid=deterministic_uid(digest, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_version,
        device_serial_number=software_version,
        content_label="CRAV_SEG",
        content_description=f"{lesion_id} {level_name} {timepoint}"[:_LO_MAX],
        plane_positions=[
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, image_position=pos)
            for pos in source.slice_positions
        ],
        omit_empty_frames=True,
        series_description=f"CRAV SEG {level_name} {timepoint}"[:_LO_MAX],
    )
    # highdicom draws a random DimensionOrganizationUID: make it a function of the content too
    dim_uid = deterministic_uid(digest, "dimension-organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dim_uid
    if source.datasets[0].get("BodyPartExamined"):
        seg.BodyPartExamined = source.datasets[0].BodyPartExamined
    seg.ClinicalTrialTimePointID = timepoint
    seg.ClinicalTrialTimePointDescription = (
        f"visit {timepoint} of lesion {lesion_id} ({level_name}), crav-followup follow-up after RFA + vertebroplasty"
    )
    save_dataset(path, seg)
    log.debug("SEG written to %s: %d segment(s), %d frame(s)", Path(path).name, len(descriptions),
              int(seg.NumberOfFrames))
    return seg
