"""A reviewer's corrections of a lesion (visits to leave out, a vertebra seed) and the labels of visits.

The labels are those of the lesion's folders and of the review page: ``PRE``, ``J0``, ``M1``,
``M3``, ``M6``, ``M12``, and ``UNSCHEDULED_+45d`` for an unscheduled visit (its day from the
procedure), as :func:`visit_label` builds them from ``measurements.csv`` cells.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.domain import Visit
from pipeline.domain import visit_label as domain_visit_label

__all__ = ["Corrections", "visit_label", "visit_sort_key"]

_UNSCHEDULED_LABEL = re.compile(r"^UNSCHEDULED_[+-]\d{1,5}d$")
_VISIT_RANK = {v.value: i for i, v in enumerate(Visit)}  # PRE, J0, M1, M3, M6, M12, UNSCHEDULED


def visit_label(timepoint: str, days_from_procedure: str | int | None = None) -> str:
    """The label (and folder name) of a visit: ``M3``, or ``UNSCHEDULED_+45d`` for an unscheduled one.

    Parameters
    ----------
    timepoint
        The ``timepoint`` cell of ``measurements.csv``.
    days_from_procedure
        Its ``days_from_procedure`` cell (days); only used for ``UNSCHEDULED``.

    Example
    -------
    >>> visit_label("M3", "92"), visit_label("UNSCHEDULED", "45"), visit_label("UNSCHEDULED", -3)
    ('M3', 'UNSCHEDULED_+45d', 'UNSCHEDULED_-3d')
    """
    if timepoint != Visit.UNSCHEDULED.value or days_from_procedure in (None, ""):
        return timepoint
    try:
        days = int(float(days_from_procedure))
    except ValueError:
        return timepoint
    return domain_visit_label(Visit.UNSCHEDULED, days)


def visit_sort_key(label: str) -> tuple[int, int, str]:
    """Chronological order of visit labels: PRE, J0, M1... then unscheduled visits by day."""
    if _UNSCHEDULED_LABEL.match(label):
        return (_VISIT_RANK[Visit.UNSCHEDULED.value], int(label[len("UNSCHEDULED_"):-1]), label)
    return (_VISIT_RANK.get(label, len(_VISIT_RANK)), 0, label)


def _check_visit_label(label: object) -> str:
    if not isinstance(label, str):
        raise ValueError(f"exclude_visits: a visit label is text, got {label!r}")
    if label == Visit.J0.value:
        raise ValueError("exclude_visits: J0 cannot be excluded, it is the reference visit (baseline residual, "
                         "registration); reject the lesion with a comment instead")
    if (label in _VISIT_RANK and label != Visit.UNSCHEDULED.value) or _UNSCHEDULED_LABEL.match(label):
        return label
    raise ValueError(f"exclude_visits: {label!r} is not a visit label (PRE, M1, M3, M6, M12 or "
                     "UNSCHEDULED_+<days>d as in the lesion's folders)")


@dataclass(frozen=True)
class Corrections:
    """A reviewer's corrections for one lesion, applied when the lesion is next processed.

    Parameters
    ----------
    exclude_visits
        Visit labels to leave out (``M3``, ``UNSCHEDULED_+45d``); kept sorted and unique.
    seed_mm
        Where the treated vertebral body is, in the J0 T1's patient coordinates (LPS, mm),
        rounded to 0.1 mm; ``None`` to let the pipeline find it.

    Raises
    ------
    ValueError
        If a label is not a visit label (or is J0), or the seed is not three finite numbers.

    ``bool(corrections)`` is False when there is nothing to correct.
    """

    exclude_visits: tuple[str, ...] = ()
    seed_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.exclude_visits, str) or not isinstance(self.exclude_visits, Sequence):
            raise ValueError(f"exclude_visits must be a list of visit labels, got {self.exclude_visits!r}")
        labels = sorted({_check_visit_label(v) for v in self.exclude_visits}, key=visit_sort_key)
        object.__setattr__(self, "exclude_visits", tuple(labels))
        if self.seed_mm is not None:
            seed = self.seed_mm
            if isinstance(seed, str | bytes) or not isinstance(seed, Sequence) or len(seed) != 3:
                raise ValueError(f"seed_mm must be three coordinates x, y, z in mm, got {seed!r}")
            values = []
            for axis, v in zip("xyz", seed, strict=True):
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"seed_mm: the {axis} coordinate must be a finite number of mm, got {v!r}")
                values.append(round(float(v), 1))  # 0.1 mm, as the form shows it: finer than any voxel
            object.__setattr__(self, "seed_mm", (values[0], values[1], values[2]))

    def __bool__(self) -> bool:
        return bool(self.exclude_visits) or self.seed_mm is not None

    def to_json(self) -> dict[str, Any]:
        """``{"exclude_visits": [...], "seed_mm": [x, y, z] or null}``."""
        return {"exclude_visits": list(self.exclude_visits),
                "seed_mm": list(self.seed_mm) if self.seed_mm is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | None) -> Corrections:
        """Corrections from :meth:`to_json`'s form (a mapping, or its JSON text; None -> no corrections).

        Raises
        ------
        ValueError
            If the value is not such a mapping, has an unknown key, or holds an invalid value.
        """
        if data is None:
            return cls()
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ValueError(f"corrections: not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"corrections must be an object with exclude_visits and seed_mm, got {data!r}")
        unknown = sorted(set(data) - {"exclude_visits", "seed_mm"})
        if unknown:
            raise ValueError(f"corrections: unknown field(s) {', '.join(map(repr, unknown))}; "
                             "expected exclude_visits and seed_mm")
        exclude = data.get("exclude_visits") or ()
        if not isinstance(exclude, list | tuple):
            raise ValueError(f"exclude_visits must be a list of visit labels, got {exclude!r}")
        seed = data.get("seed_mm")
        if seed is not None and not isinstance(seed, list | tuple):
            raise ValueError(f"seed_mm must be three coordinates x, y, z in mm, got {seed!r}")
        return cls(tuple(exclude), tuple(seed) if seed is not None else None)

    def dumps(self) -> str:
        """The JSON text stored in the catalog (keys sorted, so equal corrections give equal text)."""
        return json.dumps(self.to_json(), sort_keys=True)
