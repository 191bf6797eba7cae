"""The lean header walker stores exactly what the pydicom path stores, file by file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

from pipeline.ingest import headers
from pipeline.ingest.fast_header import walk_header


def _files(repo_root: Path, realdata: Path) -> list[Path]:
    files = sorted(p for p in (repo_root / "sample_dicom" / "export").rglob("*") if p.is_file())
    files += [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    for sub in ("vendor-mr", "dicom-objects", "totalseg/example_ct_dicom"):
        files += sorted(p for p in (realdata / sub).rglob("*") if p.is_file())
    return files


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")  # a pydicom test file mislabels its VR
def test_fast_and_pydicom_paths_agree_on_every_file(repo_root: Path, realdata: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    files = _files(repo_root, realdata)
    fast_used = 0
    for path in files:
        head = path.read_bytes()[: headers._HEAD_BYTES]
        if walk_header(head, path.stat().st_size) is not None:
            fast_used += 1
        monkeypatch.setattr(headers, "FAST_PATH", True)
        fast = headers.read_header(path)
        monkeypatch.setattr(headers, "FAST_PATH", False)
        slow = headers.read_header(path)
        assert (fast.status, fast.reason, fast.header) == (slow.status, slow.reason, slow.header), path
    # the walker did the work for the plain files (the phantom's uncompressed series above all)
    assert fast_used > 0.8 * 2000, fast_used


def test_walker_declines_what_it_does_not_handle() -> None:
    assert walk_header(b"", 0) is None
    assert walk_header(b"\x00" * 200, 200) is None  # no DICM preamble
    implicit = get_testdata_files("MR_small_implicit.dcm")[0]
    data = Path(implicit).read_bytes()
    assert walk_header(data[: headers._HEAD_BYTES], len(data)) is None  # implicit VR: pydicom reads it
    explicit = Path(get_testdata_files("CT_small.dcm")[0]).read_bytes()
    cut = explicit[:400]  # the header goes on past the bytes held
    assert walk_header(cut, len(explicit)) is None
