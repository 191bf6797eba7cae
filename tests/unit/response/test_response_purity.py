"""pipeline.response stays pure: no DICOM, Prefect, image I/O or ingest/outputs imports (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("pydicom", "prefect", "SimpleITK", "nibabel", "highdicom", "pipeline.ingest", "pipeline.outputs")


def test_response_imports_nothing_forbidden() -> None:
    code = (
        "import sys, pipeline.response, pipeline.response.enhancement, pipeline.response.dce, "
        "pipeline.response.height, pipeline.response.classify, pipeline.response.cohort, "
        "pipeline.response.dce_fit, pipeline.response.dce_region, pipeline.response.sins\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pipeline.response imported {out.stdout.strip()}"
