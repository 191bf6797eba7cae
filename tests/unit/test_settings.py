"""Settings: defaults from SPEC, TOML override, typos and wrong types refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings, load_settings


def test_defaults_follow_spec() -> None:
    s = Settings()
    assert (s.cement_ct_hu, s.enhancement_re_threshold, s.j0_residual_ml) == (1600.0, 0.15, 0.2)
    assert (s.height_loss_pct_threshold, s.height_loss_mm_threshold) == (15.0, 3.0)
    assert s.residual_margin_mm == 10.0
    assert load_settings(None) == s


def test_toml_override(tmp_path: Path) -> None:
    f = tmp_path / "crav.toml"
    f.write_text("cement_ct_hu = 1700\nquiet_period_s = 30\nmax_workers = 4\n")
    s = load_settings(f)
    assert s.cement_ct_hu == 1700.0 and isinstance(s.cement_ct_hu, float)
    assert s.quiet_period_s == 30.0 and s.max_workers == 4
    assert s.j0_residual_ml == 0.2  # untouched
    assert s.as_dict()["cement_ct_hu"] == 1700.0


def test_toml_crav_table_and_explicit_overrides_win(tmp_path: Path) -> None:
    f = tmp_path / "crav.toml"
    f.write_text("[crav]\nj0_residual_ml = 0.3\nhematocrit = 0.4\n")
    s = load_settings(f, overrides={"hematocrit": 0.45})
    assert s.j0_residual_ml == 0.3 and s.hematocrit == 0.45


def test_unknown_key_raises(tmp_path: Path) -> None:
    f = tmp_path / "crav.toml"
    f.write_text("cement_hu = 1700\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) cement_hu"):
        load_settings(f)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('cement_ct_hu = "high"', "setting 'cement_ct_hu' must be a number"),
        ("cement_ct_hu = true", "setting 'cement_ct_hu' must be a number"),
        ("max_workers = 2.5", "setting 'max_workers' must be an integer"),
    ],
)
def test_wrong_type_raises(tmp_path: Path, toml: str, message: str) -> None:
    f = tmp_path / "crav.toml"
    f.write_text(toml + "\n")
    with pytest.raises(TypeError, match=message):
        load_settings(f)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().cement_ct_hu = 1.0  # type: ignore[misc]
