"""``provenance.json``: what one patient's results were computed from, and by what.

For each series of the patient: its UIDs, the role it was given and why, whether the analysis
used it and as what, and the SHA-256 of each of its files (paths relative to the export
folder, so the record neither depends on nor reveals where the export was mounted). Then the
settings the results depend on, the software versions, and the QA corrections applied to each
lesion. The content is deterministic: the same inputs, settings and software give the same file.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.domain import Lesion
from pipeline.ingest.catalog import PatientIndex
from pipeline.outputs.tables import write_json

__all__ = ["PROVENANCE_VERSION", "build_provenance", "software_versions", "write_provenance"]

PROVENANCE_VERSION = 1

#: The libraries whose version can change a result (imaging, maths, DICOM encoding, plots).
_LIBRARIES = ("numpy", "scipy", "SimpleITK", "scikit-image", "nibabel", "pydicom", "highdicom", "pylibjpeg",
              "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "matplotlib", "prefect")


def software_versions() -> dict[str, str]:
    """crav-followup, Python and each library of :data:`_LIBRARIES` with its installed version."""
    out = {"crav-followup": __version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name  # outside the export folder (should not happen): the name only, never the mount point


def build_provenance(index: PatientIndex, lesions: Sequence[Lesion], series_used: Mapping[str, Sequence[str]],
                     settings: Mapping[str, Any], corrections: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """The provenance record of one patient.

    Parameters
    ----------
    index
        The patient's series and files, with the content digests known to the catalog.
    lesions
        The patient's registry lesions.
    series_used
        SeriesInstanceUID -> what the analysis used it as (``T1``, ``STIR``, ``DCE``); series absent
        from it were not used.
    settings
        The settings the results depend on (``Settings.analysis_dict()``).
    corrections
        lesion_id -> the QA corrections applied to it (JSON form), for lesions that have some.
    """
    series = []
    for rec in sorted(index.series, key=lambda s: (s.study_date or dt.date.min, s.series_number or 0, s.series_uid)):
        files = [{"path": _relative(p, index.root), "sha256": index.file_sha256.get(p)}
                 for p in sorted(index.files(rec.series_uid), key=os.fspath)]
        series.append({
            "series_uid": rec.series_uid, "study_uid": rec.study_uid, "study_date": rec.study_date,
            "series_number": rec.series_number, "modality": rec.modality, "description": rec.description,
            "frame_of_reference_uid": rec.frame_of_reference_uid, "role": rec.role.value,
            "role_reason": rec.role_reason, "used": rec.series_uid in series_used,
            "used_as": sorted(series_used.get(rec.series_uid, ())), "files": files,
        })
    corrections = corrections or {}
    return {
        "provenance_version": PROVENANCE_VERSION,
        "generated_by": {"name": "crav-followup", "version": __version__},
        "patient_id": index.patient_id,
        "software": software_versions(),
        "settings": dict(settings),
        "lesions": [{"lesion_id": les.lesion_id, "level": les.level, "procedure_date": les.procedure_date,
                     "qa_corrections": corrections.get(les.lesion_id)} for les in lesions],
        "series": series,
    }


def write_provenance(path: Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``provenance.json`` atomically; returns its path."""
    write_json(path, provenance)
    return path
