"""The only code that reads DICOM: scan + header index, catalog, series roles, volumes, visits, registry.

Typical use::

    from pipeline.ingest import Catalog, scan_export, load_volume
    catalog = Catalog.open("sqlite:///work/catalog.sqlite")
    report = scan_export(export_dir, catalog)
    for s in catalog.series(patient_id):
        image = load_volume(catalog.files(s.series_uid))
"""

from pipeline.ingest.catalog import Catalog, FileRecord, SeriesRecord, StudyRecord
from pipeline.ingest.registry import RegistryProblem, RegistryResult, read_registry
from pipeline.ingest.roles import DynamicGroup, RoleDecision, decide_role, group_dynamic_series
from pipeline.ingest.scan import ScanReport, scan_export
from pipeline.ingest.visits import VisitAssignment, assign_visits
from pipeline.ingest.volumes import DynamicSeries, VolumeError, load_dynamic, load_volume

__all__ = [
    "Catalog",
    "DynamicGroup",
    "DynamicSeries",
    "FileRecord",
    "RegistryProblem",
    "RegistryResult",
    "RoleDecision",
    "ScanReport",
    "SeriesRecord",
    "StudyRecord",
    "VisitAssignment",
    "VolumeError",
    "assign_visits",
    "decide_role",
    "group_dynamic_series",
    "load_dynamic",
    "load_volume",
    "read_registry",
    "scan_export",
]
