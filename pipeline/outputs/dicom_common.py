"""What the DICOM SEG and SR writers share: deterministic UIDs, codes, series numbers.

Determinism. Every UID the writers make is derived from a content digest with
:func:`pydicom.uid.generate_uid` (``entropy_srcs``): the same content gives the same UIDs (a
PACS recognises a re-sent object as a duplicate), any change of content gives new ones. The
only attributes that depend on the clock are listed in :data:`TIME_ATTRIBUTES`;
:func:`time_masked_bytes` blanks them, so two writes of the same content compare equal.

The source series' headers are read by :mod:`pipeline.ingest.source_series` (ingest is the only
part that reads the input DICOM).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from pipeline.domain import NON_VERTEBRAL_SITES, VERTEBRAL_LEVELS, normalise_level
from pipeline.ingest.headers import quiet_pydicom
from pipeline.outputs.atomic import atomic_path

__all__ = [
    "COPIED_FROM_SOURCE",
    "MANUFACTURER",
    "PRIVATE_SCHEME",
    "TIME_ATTRIBUTES",
    "content_digest",
    "copied_values",
    "deterministic_uid",
    "private_code",
    "save_dataset",
    "series_number",
    "silence_person_name_warning",
    "site_code",
    "time_masked_bytes",
    "tracking_uid",
]

#: Manufacturer, model name and algorithm name written in every object.
MANUFACTURER = "crav-followup"

#: Every attribute whose value depends on the clock at writing time (at any depth of the dataset):
#: the only attributes allowed to differ between two writes of the same content.
TIME_ATTRIBUTES: tuple[str, ...] = (
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContributionDateTime",  # highdicom's own item of the ContributingEquipmentSequence
)

#: Coding scheme of the concepts DICOM has no code for; declared in CodingSchemeIdentificationSequence.
PRIVATE_SCHEME = "99CRAV"


_LEVEL_CODES: dict[str, Code] = {
    "C1": Code("14806007", "SCT", "C1 vertebra"), "C2": Code("39976000", "SCT", "C2 vertebra"),
    "C3": Code("113205007", "SCT", "C3 vertebra"), "C4": Code("5329002", "SCT", "C4 vertebra"),
    "C5": Code("36978003", "SCT", "C5 vertebra"), "C6": Code("36054005", "SCT", "C6 vertebra"),
    "C7": Code("87391001", "SCT", "C7 vertebra"), "T1": Code("64864005", "SCT", "T1 vertebra"),
    "T2": Code("53733008", "SCT", "T2 vertebra"), "T3": Code("1626008", "SCT", "T3 vertebra"),
    "T4": Code("73071006", "SCT", "T4 vertebra"), "T5": Code("56401006", "SCT", "T5 vertebra"),
    "T6": Code("45296009", "SCT", "T6 vertebra"), "T7": Code("62487009", "SCT", "T7 vertebra"),
    "T8": Code("11068009", "SCT", "T8 vertebra"), "T9": Code("82687006", "SCT", "T9 vertebra"),
    "T10": Code("7610001", "SCT", "T10 vertebra"), "T11": Code("12989004", "SCT", "T11 vertebra"),
    "T12": Code("23215003", "SCT", "T12 vertebra"), "L1": Code("66794005", "SCT", "L1 vertebra"),
    "L2": Code("14293000", "SCT", "L2 vertebra"), "L3": Code("36470004", "SCT", "L3 vertebra"),
    "L4": Code("11994002", "SCT", "L4 vertebra"), "L5": Code("49668003", "SCT", "L5 vertebra"),
    "S1": Code("54735007", "SCT", "Sacrum"), "SACRUM": Code("54735007", "SCT", "Sacrum"),
    "ILIAC_L": Code("22356005", "SCT", "Ilium"), "ILIAC_R": Code("22356005", "SCT", "Ilium"),
    "ACETABULUM_L": Code("37783008", "SCT", "Acetabulum"), "ACETABULUM_R": Code("37783008", "SCT", "Acetabulum"),
}


_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def silence_person_name_warning() -> None:
    """Keep highdicom's warning about a one-component PatientName, which quotes the name, out of the logs.

    The name is the source's, copied as it is; a patient name must never reach a log (warnings
    may be routed to logging). A process-wide filter, added once (``warnings.catch_warnings``
    is not thread-safe), and again if something reset the filters.
    """
    if not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == _PERSON_NAME_WARNING
               for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)


def site_code(level: str) -> Code:
    """SNOMED CT code of the treated bone: the vertebra of ``level`` (CID 7151/7192), else the site.

    Raises
    ------
    ValueError
        If ``level`` is neither a vertebral level nor a known site.

    Example
    -------
    >>> site_code("d12").meaning
    'T12 vertebra'
    """
    return _LEVEL_CODES[normalise_level(level)]


def private_code(value: str, meaning: str) -> Code:
    """A concept of the ``99CRAV`` scheme (one DICOM does not define)."""
    return Code(value, PRIVATE_SCHEME, meaning)


def series_number(level: str, kind: Literal["SEG", "SR"]) -> int:
    """SeriesNumber of a lesion's SEG or SR: ``9000 + 10 * site rank + (1 SEG | 2 SR)``.

    The rank runs C1 = 0 ... S1 = 23, then the non-vertebral sites (24+), so an L1 lesion's
    SEG is series 9191 and its SR 9192: after the acquired series, the two side by side,
    one pair per treated level of a study.

    Example
    -------
    >>> series_number("L1", "SEG"), series_number("L1", "SR")
    (9191, 9192)
    """
    sites = VERTEBRAL_LEVELS + NON_VERTEBRAL_SITES
    return 9000 + 10 * sites.index(normalise_level(level)) + (1 if kind == "SEG" else 2)


def content_digest(*parts: str | bytes) -> str:
    """SHA-256 (hex) of ``parts``, each length-prefixed so that no two lists of parts collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


#: Source attributes a SEG copies (Patient, General Study, Clinical Trial modules): part of its content digest,
#: so that a re-export correcting one of them (a misspelt name) gives a new object, not a clash of UIDs.
COPIED_FROM_SOURCE: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "OtherPatientIDs", "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "ClinicalTrialSponsorName", "ClinicalTrialProtocolID",
    "ClinicalTrialSiteID", "ClinicalTrialSubjectID",
)


def copied_values(ds: Dataset) -> list[str]:
    """``keyword=value`` of each :data:`COPIED_FROM_SOURCE` attribute of ``ds`` (empty when absent)."""
    return [f"{kw}={ds.get(kw, '')}" for kw in COPIED_FROM_SOURCE]


def deterministic_uid(*parts: str) -> str:
    """A UID that depends on ``parts`` only (pydicom's root, SHA-512 of the parts).

    Example
    -------
    >>> deterministic_uid("a", "b") == deterministic_uid("a", "b") != deterministic_uid("a", "c")
    True
    """
    return str(generate_uid(entropy_srcs=["crav-followup", *parts]))


def tracking_uid(patient_id: str, lesion_id: str, structure: str) -> str:
    """Tracking Unique Identifier of one structure of one lesion: the same at every visit."""
    return deterministic_uid("tracking", patient_id, lesion_id, structure)


def save_dataset(path: str | os.PathLike[str], ds: Dataset) -> Path:
    """Write ``ds`` as a DICOM file (with its File Meta Information) atomically; return ``path``."""
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _blank_times(items: Iterable[Dataset]) -> None:
    for ds in items:
        for elem in ds:
            if elem.VR == "SQ":
                _blank_times(elem.value)
            elif elem.keyword in TIME_ATTRIBUTES:
                elem.value = ""


def time_masked_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's dataset re-encoded with every :data:`TIME_ATTRIBUTES` value emptied, at any depth.

    Two writes of the same content give equal bytes here (and differ only there).
    """
    with quiet_pydicom():
        ds = pydicom.dcmread(path)
    _blank_times([ds])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
