"""Edits of an export folder that the integration tests make, as a PACS would."""

from __future__ import annotations

from pathlib import Path


def touch_header(path: Path) -> None:
    """Change one harmless header value of a DICOM file (its bytes change, its image does not)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.InstitutionName = "CRAV test site (edited)"
    ds.save_as(path, enforce_file_format=True)
