"""segmentation/ stays pure: no DICOM, no Prefect, no ingest/outputs (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline.segmentation

FORBIDDEN = ("pydicom", "prefect", "pipeline.ingest", "pipeline.outputs", "highdicom")


def test_segmentation_imports_are_pure() -> None:
    package = Path(pipeline.segmentation.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert offenders == []
    assert len(list(package.glob("*.py"))) >= 5
