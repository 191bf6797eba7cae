"""Atomic writes: the file appears whole or not at all, the previous version survives a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.outputs.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_and_bytes(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "sub" / "a.txt", "é\nline\r\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == "é\nline\r\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_failure_mid_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "lesions.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_open(target) as fh:
        fh.write("new half-written content")
        fh.flush()
        raise RuntimeError("disk on fire")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_failure_before_first_version_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as fh:
        fh.write("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_suffix_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"old")
    with atomic_path(target, suffix=".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
        assert target.read_bytes() == b"old"  # not replaced before the block ends
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_without_output_raises(tmp_path: Path) -> None:
    target = tmp_path / "y.nii.gz"
    with pytest.raises(FileNotFoundError, match="produced no file"), atomic_path(target) as tmp:
        tmp.unlink()
    assert not target.exists()


def test_permissions_of_existing_file_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "p.txt"
    target.write_text("a")
    os.chmod(target, 0o640)
    atomic_write_text(target, "b")
    assert target.stat().st_mode & 0o777 == 0o640


def test_new_file_is_not_private(tmp_path: Path) -> None:
    """mkstemp creates 0600 files; results must be readable like any file the user writes."""
    target = tmp_path / "q.txt"
    atomic_write_text(target, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_bad_mode_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "z", "a"):
        pass
