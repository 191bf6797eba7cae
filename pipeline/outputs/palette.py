"""The structures drawn and encoded in every output, in one fixed, colour-blind-safe palette.

Okabe & Ito's palette (2008), which stays distinguishable with the common colour-vision
deficiencies: the overlays, the report's legend, the review page and the DICOM SEG's
recommended display colours all take their colours from here, so a structure looks the same
wherever a reader meets it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STRUCTURES", "Structure", "hex_to_rgb", "structure"]


@dataclass(frozen=True)
class Structure:
    """One segmented structure: its mask file stem, the label a reader sees, and its colour."""

    name: str  # the NIfTI stem: ``<name>.nii.gz``
    label: str
    colour_hex: str  # "#RRGGBB"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return hex_to_rgb(self.colour_hex)


#: In drawing order: later structures are drawn over earlier ones.
STRUCTURES: tuple[Structure, ...] = (
    Structure("vertebra", "Vertebral body", "#0072B2"),  # blue
    Structure("cement", "Cement", "#F0E442"),  # yellow
    Structure("ablation", "Ablation zone", "#E69F00"),  # orange
    Structure("residual", "Residual enhancing tissue", "#CC79A7"),  # reddish purple: apart from the orange
)


def hex_to_rgb(colour_hex: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` to an (R, G, B) tuple of 0-255 integers.

    Example
    -------
    >>> hex_to_rgb("#D55E00")
    (213, 94, 0)
    """
    text = colour_hex.lstrip("#")
    if len(text) != 6:
        raise ValueError(f"colour {colour_hex!r} is not of the form #RRGGBB")
    return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))


def structure(name: str) -> Structure:
    """The structure of a mask name (``vertebra``, ``cement``, ``ablation``, ``residual``).

    Raises
    ------
    ValueError
        If ``name`` is not one of them.
    """
    for s in STRUCTURES:
        if s.name == name:
            return s
    raise ValueError(f"unknown structure {name!r}: expected one of {', '.join(s.name for s in STRUCTURES)}")
