"""Synthetic spine phantoms painted in physical (LPS, mm) space, so any grid can sample them.

Tissue signals follow docs/phantom_contract.md. Geometry: a torso (muscle, a fat ring, air
outside touching the image border), a spinal canal (CSF) behind, vertebral bodies (ellipsoids
with a 1.5 mm cortex, marrow inside) separated by discs, cement spheres with an ablation zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

T1 = {
    "air": 0,
    "fat": 950,
    "muscle": 420,
    "disc": 350,
    "cortex": 60,
    "marrow": 650,
    "csf": 160,
    "cement": 15,
    "ablation": 480,
    "tumour": 330,
}
STIR = {
    "air": 0,
    "fat": 40,
    "muscle": 200,
    "disc": 450,
    "cortex": 40,
    "marrow": 140,
    "csf": 1000,
    "cement": 15,
    "ablation": 380,
    "tumour": 650,
}
CT = {
    "air": -1000,
    "fat": -100,
    "muscle": 50,
    "disc": 80,
    "cortex": 1200,
    "marrow": 200,
    "csf": 10,
    "cement": 2500,
    "ablation": 200,
    "tumour": 40,
}
TISSUES = list(T1)

BODY_SEMI_MM = (21.0, 15.0, 12.0)
CORTEX_MM = 1.5
DISC_HALF_HEIGHT_MM = 4.5


def make_grid(
    spacing: Sequence[float],
    *,
    extent_mm: Sequence[float] = (100.0, 100.0, 100.0),
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    """Empty float32 image whose voxel grid covers ``extent_mm`` (along its own axes) around a centre."""
    size = [round(e / s) for e, s in zip(extent_mm, spacing, strict=True)]
    img = sitk.Image(size, sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in direction])
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    half = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
    img.SetOrigin([float(v) for v in np.asarray(center_mm) - d @ half])
    return img


def coords(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nx, ny, nz = img.GetSize()
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).astype(float) * np.asarray(img.GetSpacing())
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    p = idx @ d.T + np.asarray(img.GetOrigin())
    return p[..., 0], p[..., 1], p[..., 2]


def ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: Sequence[float], semi: Sequence[float]
) -> np.ndarray:
    return ((x - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((z - c[2]) / semi[2]) ** 2 <= 1.0


@dataclass
class Phantom:
    grid: sitk.Image
    labels: np.ndarray  # tissue index per voxel (z, y, x)
    cement: list[np.ndarray] = field(default_factory=list)  # one truth mask per cement sphere
    bodies: list[np.ndarray] = field(default_factory=list)  # truth body masks (cortex included)
    discs: np.ndarray | None = None
    ablation: np.ndarray | None = None  # truth ablation zone (cement excluded)

    def image(
        self,
        table: dict[str, int],
        *,
        noise: float = 8.0,
        bias: float = 0.15,
        seed: int = 0,
        rician: bool = True,
    ) -> sitk.Image:
        lut = np.asarray([table[t] for t in TISSUES], dtype=float)
        values = lut[self.labels]
        x, _, z = coords(self.grid)
        values = values * (1.0 + bias * x / 50.0 + 0.5 * bias * z / 50.0)
        rng = np.random.default_rng(seed)
        if noise > 0:
            if rician:
                values = np.hypot(
                    values + rng.normal(0, noise, values.shape), rng.normal(0, noise, values.shape)
                )
            else:
                values = values + rng.normal(0, noise, values.shape)
        out = sitk.GetImageFromArray(values.astype(np.float32))
        out.CopyInformation(self.grid)
        return out

    def mask(self, arr: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(arr.astype(np.uint8))
        out.CopyInformation(self.grid)
        return out


def build_phantom(
    grid: sitk.Image,
    *,
    body_centers: Sequence[Sequence[float]] = ((0.0, 0.0, 0.0),),
    cements: Sequence[tuple[Sequence[float], float]] = (((3.0, -2.0, 1.0), 7.0),),
    ablation_radius_mm: float | None = None,
    blastic: tuple[Sequence[float], float] | None = None,
) -> Phantom:
    """Paint tissues on ``grid``; later tissues overwrite earlier ones."""
    x, y, z = coords(grid)
    ix = {t: i for i, t in enumerate(TISSUES)}
    lab = np.full(x.shape, ix["muscle"], dtype=np.int16)
    torso = ((x / 46.0) ** 2 + ((y - 4.0) / 44.0) ** 2) <= 1.0
    inner = ((x / 40.0) ** 2 + ((y - 4.0) / 38.0) ** 2) <= 1.0
    lab[~torso] = ix["air"]
    lab[torso & ~inner] = ix["fat"]
    lab[((x / 6.0) ** 2 + ((y - 24.0) / 6.0) ** 2) <= 1.0] = ix["csf"]
    discs = np.zeros(x.shape, dtype=bool)
    for c in body_centers:
        for sign in (-1, 1):
            dc = (c[0], c[1], c[2] + sign * (BODY_SEMI_MM[2] + DISC_HALF_HEIGHT_MM))
            discs |= ellipsoid(x, y, z, dc, (19.0, 14.0, DISC_HALF_HEIGHT_MM + 1.0))
    lab[discs] = ix["disc"]
    bodies = []
    for c in body_centers:
        outer = ellipsoid(x, y, z, c, BODY_SEMI_MM)
        inner_b = ellipsoid(x, y, z, c, [s - CORTEX_MM for s in BODY_SEMI_MM])
        lab[outer] = ix["cortex"]
        lab[inner_b] = ix["marrow"]
        bodies.append(outer)
    discs &= ~np.logical_or.reduce(bodies)
    if blastic is not None:
        lab[ellipsoid(x, y, z, blastic[0], (blastic[1],) * 3)] = ix["cortex"]
    ablation = None
    if ablation_radius_mm is not None:
        ablation = np.zeros(x.shape, dtype=bool)
        for c, _ in cements:
            ablation |= ellipsoid(x, y, z, c, (ablation_radius_mm,) * 3) & (lab == ix["marrow"])
        lab[ablation] = ix["ablation"]
    cement_masks = []
    for c, r in cements:
        m = ellipsoid(x, y, z, c, (r, r, r))
        lab[m] = ix["cement"]
        cement_masks.append(m)
    if ablation is not None:
        ablation &= ~np.logical_or.reduce(cement_masks)
    return Phantom(grid=grid, labels=lab, cement=cement_masks, bodies=bodies, discs=discs, ablation=ablation)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
