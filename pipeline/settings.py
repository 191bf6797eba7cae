"""One typed settings object holding every threshold of SPEC.md, overridable from TOML.

Example
-------
>>> s = Settings()
>>> s.enhancement_re_threshold
0.15
>>> s = load_settings(None, overrides={"j0_residual_ml": 0.3})
>>> s.j0_residual_ml
0.3

A TOML file holds the same names at top level (or under ``[crav]``)::

    cement_ct_hu = 1700
    quiet_period_s = 30
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Every named threshold of SPEC.md, with the spec's defaults."""

    # ingest
    quiet_period_s: float = 60.0
    # segmentation (SPEC section 3)
    cement_ct_hu: float = 1600.0
    ct_clip_hu: float = 3071.0
    cement_mr_muscle_ratio: float = 0.3
    residual_margin_mm: float = 10.0
    # enhancement (SPEC section 4)
    enhancement_re_threshold: float = 0.15
    enhancement_noise_sigmas: float = 3.0
    rim_max_thickness_mm: float = 2.0
    # partial-volume edge of residual tissue: a voxel counts when its enhancement reaches this share
    # of the local peak within the radius (not in SPEC; 0 turns it off and keeps the SPEC mask as is)
    residual_peak_fraction: float = 0.5
    residual_peak_radius_mm: float = 5.0
    # DCE (SPEC section 4)
    hematocrit: float = 0.42
    assumed_t10_ms: float = 1000.0
    relaxivity_per_mm_s: float = 4.5
    ktrans_max_per_min: float = 5.0
    ve_min: float = 0.001
    ve_max: float = 1.0
    vp_max: float = 1.0
    # height (SPEC section 4)
    height_loss_pct_threshold: float = 15.0
    height_loss_mm_threshold: float = 3.0
    # classification (SPEC section 5)
    j0_residual_ml: float = 0.2
    progression_floor_ml: float = 0.5
    progression_fraction: float = 0.73
    new_nodule_ml: float = 0.5
    # orchestration
    max_workers: int = 2

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of every setting (written into provenance)."""
        return dataclasses.asdict(self)

    def analysis_dict(self) -> dict[str, Any]:
        """The settings results depend on: all but how the work is scheduled (what incremental runs compare)."""
        return {k: v for k, v in self.as_dict().items() if k not in ORCHESTRATION_SETTINGS}


ORCHESTRATION_SETTINGS = frozenset({"quiet_period_s", "max_workers"})


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"setting {name!r} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"setting {name!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"setting {name!r} must be a number, got {value!r}")
        return float(value)
    return value


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from the defaults, a TOML file, then explicit overrides.

    Raises
    ------
    FileNotFoundError
        If ``path`` is given and does not exist.
    ValueError
        If a key is not a known setting (a typo must not silently keep a default).
    TypeError
        If a value has the wrong type.
    """
    values: dict[str, Any] = {}
    if path is not None:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
        values.update(data.get("crav", data))
    values.update(overrides or {})
    defaults = Settings()
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}")
    coerced = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    return dataclasses.replace(defaults, **coerced)
