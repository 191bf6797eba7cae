"""DICOM SR TID 1500 measurement report of one lesion at one visit (highdicom Comprehensive 3D SR).

``<visit folder>/sr.dcm`` holds the values of the visit's ``measurements.csv`` row, each with
a UCUM unit and a code, in one measurement group per structure of the visit's SEG
(:mod:`pipeline.outputs.dicom_seg`):

* a volumetric ROI group (TID 1411) per SEG segment, referencing it (Referenced Segment +
  Source series for segmentation), with the segment's Tracking Identifier and Tracking UID
  (the same for one lesion's structure at every visit: what lets a viewer follow it), Finding
  and Finding category = the segment's property type and category, Finding site = the
  treated vertebra, the Time Point Context (TID 1502: the visit and its type);
* a value whose structure has no segment (its mask was not written) goes into a TID 1501
  group with the same tracking identifiers and no ROI, so that no measured value is lost.

Which value goes where (:data:`SR_MEASUREMENTS`): heights, height loss and Genant grade to the
vertebral body; cement volume and the registration error (a cement surface distance) to the
cement; the ablation zone and residual volumes to theirs; the DCE values (maximum relative
enhancement, time to peak, Ktrans) to the region they were measured in: the residual when
its volume is above 0, else the ablation zone. None / NaN values are not written.

Codes: SCT 118565006 "Volume", DCM 113069 "Time To Peak", DCM 126312 "Ktrans"; DICOM has
none for vertebral heights, height loss, Genant grade, the maximum relative enhancement nor
the registration error: those are ``99CRAV`` codes, declared in
CodingSchemeIdentificationSequence. ClinicalTrialTimePointID holds the visit; the Preliminary
Flag is FINAL for a measurement whose ``qa_status`` is ``accepted``, else PRELIMINARY. The run
writes the SR when it analyses the visit, before any review: its SRs are PRELIMINARY, and a
verdict given later in ``crav qa`` goes to the catalog and ``measurements.csv``, not into an
SR already written. UIDs are content hashes (:mod:`pipeline.outputs.dicom_common`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipeline.domain import Lesion, Visit, VisitMeasurement, normalise_level
from pipeline.ingest.source_series import read_headers
from pipeline.outputs.dicom_common import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    content_digest,
    deterministic_uid,
    private_code,
    save_dataset,
    series_number,
    silence_person_name_warning,
    site_code,
    tracking_uid,
)
from pipeline.outputs.dicom_seg import laterality, segment_codes
from pipeline.outputs.palette import STRUCTURES

__all__ = ["DCE_REGION", "SR_MEASUREMENTS", "SRMeasurement", "write_sr"]

log = logging.getLogger(__name__)

_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_LO_MAX = 64
#: Structure name of the DCE values in :data:`SR_MEASUREMENTS`: the residual, or the ablation zone.
DCE_REGION = "dce_region"

_ML, _MM = Code("ml", "UCUM", "milliliter"), Code("mm", "UCUM", "millimeter")
_PCT, _S = Code("%", "UCUM", "percent"), Code("s", "UCUM", "second")
_PER_MIN, _RATIO = Code("/min", "UCUM", "/min"), Code("{ratio}", "UCUM", "ratio")
_GRADE = Code("{grade}", "UCUM", "grade")
_VOLUME = Code("118565006", "SCT", "Volume")
_MEDIAN = codes.cid7464.Median


@dataclass(frozen=True)
class SRMeasurement:
    """Where and how one :class:`~pipeline.domain.VisitMeasurement` field is written."""

    field: str  # VisitMeasurement attribute
    structure: str  # palette structure name of its group, or DCE_REGION
    concept: Code
    unit: Code
    derivation: Code | None = None


#: Every measured field of a visit, in the order written.
SR_MEASUREMENTS: tuple[SRMeasurement, ...] = (
    SRMeasurement("height_anterior_mm", "vertebra", private_code("VBH-A", "Anterior vertebral body height"), _MM),
    SRMeasurement("height_middle_mm", "vertebra", private_code("VBH-M", "Middle vertebral body height"), _MM),
    SRMeasurement("height_posterior_mm", "vertebra", private_code("VBH-P", "Posterior vertebral body height"), _MM),
    SRMeasurement("height_loss_pct", "vertebra",
                  private_code("VBH-LOSS", "Vertebral body height loss since J0"), _PCT),
    SRMeasurement("genant_grade", "vertebra", private_code("GENANT", "Genant semiquantitative fracture grade"),
                  _GRADE),
    SRMeasurement("cement_volume_ml", "cement", _VOLUME, _ML),
    SRMeasurement("registration_error_mm", "cement",
                  private_code("REG-ERR", "Registration error to J0 (cement surface distance)"), _MM),
    SRMeasurement("ablation_zone_volume_ml", "ablation", _VOLUME, _ML),
    SRMeasurement("residual_enhancing_volume_ml", "residual", _VOLUME, _ML),
    SRMeasurement("max_relative_enhancement", DCE_REGION,
                  private_code("RE-MAX", "Maximum relative enhancement (90th percentile)"), _RATIO),
    SRMeasurement("time_to_peak_s", DCE_REGION, Code("113069", "DCM", "Time To Peak"), _S, _MEDIAN),
    SRMeasurement("ktrans_per_min", DCE_REGION, Code("126312", "DCM", "Ktrans"), _PER_MIN),
)

_TIME_POINT_TYPES: dict[Visit, Code] = {  # CID 6146
    Visit.PRE: Code("C3539075", "UMLS", "Pretreatment"),
    Visit.J0: Code("C1442488", "UMLS", "Baseline"),  # the reference of every later comparison
    Visit.M1: Code("126074", "DCM", "Posttreatment"),
    Visit.M3: Code("126074", "DCM", "Posttreatment"),
    Visit.M6: Code("126074", "DCM", "Posttreatment"),
    Visit.M12: Code("126074", "DCM", "Posttreatment"),
    Visit.UNSCHEDULED: Code("C1699701", "UMLS", "Unscheduled"),
}


def _value(measurement: VisitMeasurement, name: str) -> int | float | None:
    value = getattr(measurement, name)
    if value is None:
        return None
    if name == "genant_grade":
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def _check_inputs(seg: Dataset, measurement: VisitMeasurement, lesion: Lesion, timepoint: str) -> None:
    if str(seg.get("SOPClassUID", "")) != _SEGMENTATION_STORAGE:
        raise ValueError("seg is not a DICOM Segmentation (write it with write_seg first)")
    if (measurement.patient_id, measurement.lesion_id) != (lesion.patient_id, lesion.lesion_id):
        raise ValueError(
            f"the measurement is of lesion {measurement.lesion_id!r} of patient {measurement.patient_id!r}, "
            f"not of lesion {lesion.lesion_id!r} of patient {lesion.patient_id!r}"
        )
    visit = measurement.timepoint
    expected = visit.value if visit != Visit.UNSCHEDULED else "UNSCHEDULED_"
    if not (timepoint == expected or (visit == Visit.UNSCHEDULED and timepoint.startswith(expected))):
        raise ValueError(f"timepoint {timepoint!r} does not name the measurement's visit {visit.value}")
    if str(seg.get("ClinicalTrialTimePointID", "")) != timepoint:
        raise ValueError(
            f"the SEG is of visit {seg.get('ClinicalTrialTimePointID', '')!r}, not of visit {timepoint!r}"
        )


def _tracking(seg: Dataset, lesion: Lesion, name: str, label: str, item: Dataset | None) -> hd.sr.TrackingIdentifier:
    uid = tracking_uid(str(seg.get("PatientID", "")), lesion.lesion_id, name)
    if item is not None and str(item.get("TrackingUID", "")) != uid:
        raise ValueError(
            f"the SEG's {label!r} segment was written for another lesion than {lesion.lesion_id!r} "
            "(its Tracking UID differs)"
        )
    return hd.sr.TrackingIdentifier(uid=uid, identifier=f"{lesion.lesion_id} {label}")


def _groups(
    seg: Dataset, measurement: VisitMeasurement, lesion: Lesion, timepoint: str, software_version: str,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    level = normalise_level(lesion.level)
    segments = {str(item.SegmentLabel): item for item in seg.SegmentSequence}
    dce_group = "residual" if (_value(measurement, "residual_enhancing_volume_ml") or 0.0) > 0.0 else "ablation"
    site = hd.sr.FindingSite(anatomic_location=site_code(level), laterality=laterality(level))
    algorithm = hd.sr.AlgorithmIdentification(name=MANUFACTURER, version=software_version)
    time_point = hd.sr.TimePointContext(time_point=timepoint, time_point_type=_TIME_POINT_TYPES[measurement.timepoint])
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for s in STRUCTURES:
        measured = [
            hd.sr.Measurement(name=spec.concept, value=value, unit=spec.unit, derivation=spec.derivation)
            for spec in SR_MEASUREMENTS
            if (dce_group if spec.structure == DCE_REGION else spec.structure) == s.name
            and (value := _value(measurement, spec.field)) is not None
        ]
        item = segments.get(s.label)
        if item is None and not measured:
            continue
        tracking = _tracking(seg, lesion, s.name, s.label, item)
        if item is None:  # a value without a segment: TID 1501, no ROI
            category, finding = segment_codes(s.name, level)
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, time_point_context=time_point, finding_type=finding,
                finding_category=category, algorithm_id=algorithm, finding_sites=[site], measurements=measured,
            ))
            continue
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=int(item.SegmentNumber),
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        )
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_segment=segment, time_point_context=time_point,
            finding_type=hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0]),
            finding_category=hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyCategoryCodeSequence[0]),
            algorithm_id=algorithm, finding_sites=[site], measurements=measured,
        ))
    return groups


def _procedure(modality: str) -> Code:
    """CID 100 code of the imaging procedure the measurements come from."""
    if modality == "CT":
        return codes.cid100.CTUnspecifiedBodyRegion
    if modality == "MR":
        return codes.cid100.MRIUnspecifiedBodyRegion
    return codes.cid100.ImagingProcedure


def write_sr(
    path: str | os.PathLike[str],
    seg: Dataset,
    source_files: Sequence[str | os.PathLike[str]],
    measurement: VisitMeasurement,
    *,
    lesion: Lesion,
    timepoint: str,
    software_version: str,
) -> Dataset:
    """Write the TID 1500 measurement report of one lesion at one visit, atomically, and return it.

    Parameters
    ----------
    path
        Destination, normally ``<visit folder>/sr.dcm``.
    seg
        The visit's Segmentation, as returned by :func:`pipeline.outputs.dicom_seg.write_seg`
        (or read from ``seg.dcm``): its segments are referenced.
    source_files
        The files of the series ``seg`` was drawn on (headers only are read): the evidence and
        the image library.
    measurement
        The visit's row of ``measurements.csv``.
    lesion
        The lesion measured.
    timepoint
        The visit label written in ``seg`` (``M3``, ``UNSCHEDULED_+45d``...).
    software_version
        crav-followup's version.

    Returns
    -------
    pydicom.Dataset
        The Comprehensive 3D SR written (a :class:`highdicom.sr.Comprehensive3DSR`).

    Raises
    ------
    ValueError
        If ``seg`` is not a Segmentation, is of another visit or lesion, ``measurement`` is of
        another lesion or visit, or ``source_files`` are not the series ``seg`` references.
    """
    _check_inputs(seg, measurement, lesion, timepoint)
    sources = read_headers(source_files)
    silence_person_name_warning()
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    if any(str(ds.get("SeriesInstanceUID", "")) != series_uid for ds in sources):
        raise ValueError("the source files are not (all) the series the SEG references")
    level = normalise_level(lesion.level)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=deterministic_uid("device observer", MANUFACTURER), name=f"{MANUFACTURER} {software_version}",
                    manufacturer_name=MANUFACTURER, model_name=MANUFACTURER, serial_number=software_version,
                ),
            ),
        ),
        procedure_reported=_procedure(str(sources[0].get("Modality", ""))),
        imaging_measurements=_groups(seg, measurement, lesion, timepoint, software_version),
        referenced_images=None if any("PerFrameFunctionalGroupsSequence" in ds for ds in sources) else sources,
    )
    values = [f"{spec.field}={_value(measurement, spec.field)!r}" for spec in SR_MEASUREMENTS]
    final = measurement.qa_status == "accepted"
    digest = content_digest("SR/1", software_version, lesion.patient_id, lesion.lesion_id, level, timepoint,
                            str(seg.SOPInstanceUID), *(str(ds.SOPInstanceUID) for ds in sources), *values,
                            f"final={final}")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources],
        content=report,
        series_instance_uid=deterministic_uid(digest, "series"),
        series_number=series_number(level, "SR"),
        sop_instance_uid=deterministic_uid(digest, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=final,
        series_description=f"CRAV SR {level} {timepoint}"[:_LO_MAX],
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_version,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="crav-followup local concepts", responsible_organization=MANUFACTURER,
        )],
    )
    sr.ClinicalTrialTimePointID = timepoint
    sr.ClinicalTrialTimePointDescription = seg.get("ClinicalTrialTimePointDescription", "")
    save_dataset(path, sr)
    log.debug("SR written to %s", Path(path).name)
    return sr
