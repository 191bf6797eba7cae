"""Phantom anatomy: a thoraco-lumbar column rasterised into a label map on a fine grid (patient frame, mm).

The patient frame is DICOM LPS (+x left, +y posterior, +z superior). Each vertebral body is a
super-ellipse cylinder in its own frame (u lateral, v antero-posterior with v < 0 anterior, w along the
body's superior-inferior axis) whose height varies along v through three heights given at 10 %, 50 %
and 90 % of the antero-posterior depth, so the heights SPEC section 4 asks for are exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from pipeline.domain import VERTEBRAL_LEVELS

Bool3 = NDArray[np.bool_]

AIR, FAT, MUSCLE, DISC, CORTEX, MARROW, POSTERIOR, CSF, CORD = range(9)
TUMOUR, CEMENT, ABLATION, RESIDUAL, RIM = range(9, 14)
N_LABELS = 14
LABEL_NAMES = (
    "air", "fat", "muscle", "disc", "cortex", "marrow", "posterior_elements", "csf", "cord",
    "tumour", "cement", "ablation", "residual", "rim",
)

FINE_SPACING_MM = 0.8
#: Largest share of the free room of a treated body (marrow + front of the canal) a residual fills.
MAX_FILL = 0.9
CORTEX_MM = 1.2
SKIN_Y_MM = 78.0


@dataclass(frozen=True)
class Vertebra:
    """One vertebra of the column (patient frame)."""

    level: str
    center_mm: tuple[float, float, float]
    tilt_rad: float  # rotation about +x: the body's own SI axis leans in the sagittal plane
    width_mm: float
    depth_mm: float
    heights_mm: tuple[float, float, float]  # anterior, middle, posterior

    def rotation(self) -> NDArray[np.float64]:
        """Columns are the body's (u, v, w) axes expressed in the patient frame."""
        c, s = np.cos(self.tilt_rad), np.sin(self.tilt_rad)
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def level_dimensions_mm(level: str) -> tuple[float, float, float, float]:
    """Typical (width, depth, height, disc) of a level's body, growing cranio-caudally (T1 .. L5)."""
    i = VERTEBRAL_LEVELS.index(level) - VERTEBRAL_LEVELS.index("T1")
    return 28.0 + 1.5 * i, 20.0 + 0.9 * i, 18.0 + 0.6 * i, 4.5 + 0.35 * i


def height_profile_mm(v: NDArray[np.float64], depth_mm: float, heights: tuple[float, float, float]
                      ) -> NDArray[np.float64]:
    """Body height at AP position ``v`` (quadratic through the heights at 10, 50, 90 % of the depth)."""
    xs = np.array([-0.4, 0.0, 0.4]) * depth_mm
    coef = np.polyfit(xs, np.asarray(heights, dtype=float), 2)
    return np.asarray(np.polyval(coef, v), dtype=np.float64)


@dataclass(frozen=True)
class Blob:
    """An irregular blob in a vertebra's local frame: an ellipsoid with a smooth radial perturbation."""

    center_uvw_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    harmonics: tuple[tuple[float, float, float, float, float], ...] = ()  # (fx, fy, fz, phase, amp)

    def ratio(self, u: NDArray[np.float64], v: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
        """Normalised radius over the perturbed boundary: a point is inside the blob scaled by ``s`` iff ratio <= s.

        The boundary perturbation depends on direction only, so scaling the blob scales this ratio.
        """
        du = (u - self.center_uvw_mm[0]) / self.radii_mm[0]
        dv = (v - self.center_uvw_mm[1]) / self.radii_mm[1]
        dw = (w - self.center_uvw_mm[2]) / self.radii_mm[2]
        rho = np.sqrt(du * du + dv * dv + dw * dw)
        bound = np.ones_like(rho)
        if self.harmonics:
            inv = 1.0 / np.maximum(rho, 1e-6)
            for fx, fy, fz, ph, amp in self.harmonics:
                bound += amp * np.cos((fx * du + fy * dv + fz * dw) * inv + ph)
        return np.asarray(rho / np.maximum(bound, 1e-3))

    def inside(self, u: NDArray[np.float64], v: NDArray[np.float64], w: NDArray[np.float64],
               scale: float = 1.0) -> Bool3:
        return np.asarray(self.ratio(u, v, w) <= scale)


def random_blob(rng: np.random.Generator, center: tuple[float, float, float],
                radii: tuple[float, float, float], irregularity: float = 0.12) -> Blob:
    harmonics = tuple(
        (*(rng.normal(0, 2.5, 3)), float(rng.uniform(0, 2 * np.pi)), float(irregularity * rng.uniform(0.4, 1.0)))
        for _ in range(3)
    )
    return Blob(center, radii, tuple(tuple(float(x) for x in h) for h in harmonics))  # type: ignore[misc]


@dataclass
class LesionGeometry:
    """Treatment geometry of one lesion, in its vertebra's local frame (fixed from J0 on)."""

    tumour: Blob
    epidural: Blob | None
    cement_blobs: tuple[Blob, ...]
    cement_scale: float
    ablation_margin_mm: float
    residual: Blob | None
    new_nodule: Blob | None
    covers_tumour: bool  # ablation zone includes the whole tumour (lesions without residual)
    cache: dict[str, Bool3] = field(default_factory=dict, repr=False)  # fixed masks in the local box


@dataclass(frozen=True)
class LesionVisitState:
    """What a treated vertebra looks like at one visit."""

    heights_mm: tuple[float, float, float]
    treated: bool
    residual_ml: float  # designed volume of the residual nodule (0: none)
    new_nodule_ml: float
    rim_mm: float


@dataclass
class Column:
    """The static column of one patient and the fine grid it is rasterised on."""

    vertebrae: list[Vertebra]
    curvature: float
    z_mid_mm: float
    origin_mm: NDArray[np.float64]
    shape: tuple[int, int, int]
    spacing_mm: float = FINE_SPACING_MM
    _base: NDArray[np.uint8] | None = field(default=None, repr=False)

    def axes(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        x, y, z = (self.origin_mm[i] + self.spacing_mm * np.arange(self.shape[i]) for i in range(3))
        return x, y, z

    def centre_y_mm(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(self.curvature * (z - self.z_mid_mm) ** 2 / 1000.0)

    def affine_patient(self) -> NDArray[np.float64]:
        """Voxel index (i, j, k) -> patient LPS mm."""
        a = np.eye(4)
        a[:3, :3] *= self.spacing_mm
        a[:3, 3] = self.origin_mm
        return a


def build_column(rng: np.random.Generator, levels: list[str]) -> Column:
    """Place the vertebrae of ``levels`` (cranial first) along a slightly curved axis."""
    dims = [level_dimensions_mm(lv) for lv in levels]
    z = 0.0
    zs = []
    for i, (_, _, h, disc) in enumerate(dims):
        if i:
            z -= dims[i - 1][2] / 2 + disc + h / 2
        zs.append(z)
    zc = np.array(zs) - np.mean(zs)
    curvature = float(rng.uniform(0.25, 0.5) * rng.choice([-1, 1]))
    vertebrae = []
    for lv, (w, d, h, _), zk in zip(levels, dims, zc, strict=True):
        y = curvature * zk**2 / 1000.0
        slope = 2 * curvature * zk / 1000.0
        scale = rng.uniform(0.95, 1.05)
        hp = h * scale
        heights = (hp * rng.uniform(0.92, 0.99), hp * rng.uniform(0.92, 0.97), hp)
        vertebrae.append(Vertebra(lv, (0.0, float(y), float(zk)), float(np.arctan(slope)),
                                  w * scale, d * scale, heights))
    top = zc[0] + dims[0][2] / 2 + 12
    bottom = zc[-1] - dims[-1][2] / 2 - 12
    origin = np.array([-76.0, -72.0, bottom])
    shape = (int(152 / FINE_SPACING_MM), int((SKIN_Y_MM + 12 + 72) / FINE_SPACING_MM),
             int((top - bottom) / FINE_SPACING_MM))
    return Column(vertebrae, curvature, 0.0, origin, shape)


def _local_coords(col: Column, vert: Vertebra, box: tuple[slice, slice, slice]
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    ax = col.axes()
    x, y, z = np.meshgrid(ax[0][box[0]], ax[1][box[1]], ax[2][box[2]], indexing="ij")
    rot = vert.rotation()
    d = np.stack([x - vert.center_mm[0], y - vert.center_mm[1], z - vert.center_mm[2]])
    u = rot[0, 0] * d[0] + rot[1, 0] * d[1] + rot[2, 0] * d[2]
    v = rot[0, 1] * d[0] + rot[1, 1] * d[1] + rot[2, 1] * d[2]
    w = rot[0, 2] * d[0] + rot[1, 2] * d[1] + rot[2, 2] * d[2]
    return u, v, w


def vertebra_box(col: Column, vert: Vertebra, margin_mm: float = 14.0) -> tuple[slice, slice, slice]:
    """Index box around a vertebra's body, posterior elements and epidural space."""
    c = np.asarray(vert.center_mm)
    half = np.array([vert.width_mm / 2 + margin_mm, vert.depth_mm / 2 + margin_mm,
                     max(vert.heights_mm) / 2 + margin_mm])
    lo = np.floor((c - half - col.origin_mm) / col.spacing_mm).astype(int)
    hi = np.ceil((c + half - col.origin_mm) / col.spacing_mm).astype(int)
    hi[1] = int(np.ceil((c[1] + vert.depth_mm / 2 + 45 - col.origin_mm[1]) / col.spacing_mm))
    lo = np.clip(lo, 0, col.shape)
    hi = np.clip(hi, 0, col.shape)
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def body_shape(u: NDArray[np.float64], v: NDArray[np.float64], w: NDArray[np.float64], vert: Vertebra,
               heights: tuple[float, float, float], shrink_mm: float = 0.0) -> Bool3:
    """Inside test of a vertebral body (super-ellipse cross-section, height profile along v)."""
    a = vert.width_mm / 2 - shrink_mm
    b = vert.depth_mm / 2 - shrink_mm
    cross = np.abs(u / a) ** 2.5 + np.abs(v / b) ** 2.5 <= 1.0
    h = height_profile_mm(v, vert.depth_mm, heights)
    return np.asarray(cross & (np.abs(w) <= h / 2 - shrink_mm))


def _base_labels(col: Column, treated_levels: set[str]) -> NDArray[np.uint8]:
    ax = col.axes()
    x = ax[0][:, None, None]
    y = ax[1][None, :, None]
    z = ax[2][None, None, :]
    yc = col.centre_y_mm(z)
    yp = y - yc
    zk = np.array([vb.center_mm[2] for vb in col.vertebrae])
    order = np.argsort(zk)
    half_w = np.interp(z, zk[order], [col.vertebrae[i].width_mm / 2 for i in order])
    half_d = np.interp(z, zk[order], [col.vertebrae[i].depth_mm / 2 for i in order])
    lab = np.full(col.shape, FAT, dtype=np.uint8)
    lab[np.broadcast_to(yp > SKIN_Y_MM, col.shape)] = AIR
    canal_y = half_d + 9.0
    for sx in (-1.0, 1.0):
        musc = ((x - sx * 27) / 19) ** 2 + ((yp - canal_y - 26) / 21) ** 2 <= 1
        lab[np.broadcast_to(musc, col.shape)] = MUSCLE
        l1 = col.vertebrae[0].center_mm[2]
        for vb in col.vertebrae:
            if vb.level == "T12":
                l1 = vb.center_mm[2]
        psoas_r = np.clip((l1 - z) / 80.0, 0, 1) * 16 + 0.01
        psoas = ((x - sx * (half_w + psoas_r + 2)) / psoas_r) ** 2 + (yp / (psoas_r * 1.1)) ** 2 <= 1
        lab[np.broadcast_to(psoas, col.shape)] = MUSCLE
    disc = (x / (half_w + 0.6)) ** 2 + (yp / (half_d + 0.6)) ** 2 <= 1
    lab[np.broadcast_to(disc, col.shape)] = DISC
    canal = (x / 11.0) ** 2 + ((yp - canal_y) / 8.0) ** 2 <= 1
    lab[np.broadcast_to(canal, col.shape)] = CSF
    conus_z = min(zk) + 0.35 * (max(zk) - min(zk))
    cord = ((x / 5.5) ** 2 + ((yp - canal_y) / 4.0) ** 2 <= 1) & (z > conus_z)
    lab[np.broadcast_to(cord, col.shape)] = CORD
    for vert in col.vertebrae:
        box = vertebra_box(col, vert)
        u, v, w = _local_coords(col, vert, box)
        sub = lab[box]
        cy = vert.depth_mm / 2 + 9.0
        ring = ((u / 17.0) ** 2 + ((v - cy) / 14.0) ** 2 <= 1) & ~((u / 11.0) ** 2 + ((v - cy) / 8.0) ** 2 <= 1)
        arch = ring & (v > vert.depth_mm / 2 - 1) & (np.abs(w + 1.5) <= 0.32 * vert.heights_mm[2])
        slant = np.abs(w + 0.12 * (v - cy)) <= 0.28 * vert.heights_mm[2]
        spinous = (np.abs(u) <= 3.5) & (v > cy + 6) & (v < cy + 36) & slant
        sub[arch | spinous] = POSTERIOR
        if vert.level not in treated_levels:
            body = body_shape(u, v, w, vert, vert.heights_mm)
            inner = body_shape(u, v, w, vert, vert.heights_mm, CORTEX_MM)
            sub[body] = CORTEX
            sub[inner] = MARROW
    return lab


def base_labels(col: Column, treated_levels: set[str]) -> NDArray[np.uint8]:
    """Static labels (cached): everything but the treated bodies, which change between visits."""
    if col._base is None:
        col._base = _base_labels(col, treated_levels)
    return col._base


def _dist_mm(mask: Bool3, spacing_mm: float) -> NDArray[np.float64]:
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return np.asarray(ndimage.distance_transform_edt(~mask)) * spacing_mm


@dataclass
class TreatedMasks:
    """Truth masks of one treated vertebra at one visit, in its local index box of the fine grid."""

    box: tuple[slice, slice, slice]
    vertebra: Bool3
    cement: Bool3
    ablation: Bool3
    residual: Bool3


def draw_treated(col: Column, lab: NDArray[np.uint8], vert: Vertebra, geom: LesionGeometry,
                 state: LesionVisitState) -> TreatedMasks:
    """Draw one treated body into ``lab`` (in place) for one visit and return its truth masks."""
    box = vertebra_box(col, vert)
    u, v, w = _local_coords(col, vert, box)
    sub = lab[box]
    body = body_shape(u, v, w, vert, state.heights_mm)
    inner = body_shape(u, v, w, vert, state.heights_mm, CORTEX_MM)
    sub[body] = CORTEX
    sub[inner] = MARROW
    canal_front = (sub == CSF) & (v < vert.depth_mm / 2 + 9.0)
    empty = np.zeros(body.shape, dtype=bool)
    if not state.treated:
        tumour = geom.tumour.inside(u, v, w) & inner
        sub[tumour] = TUMOUR
        if geom.epidural is not None:
            sub[geom.epidural.inside(u, v, w) & (canal_front | (sub == CORTEX))] = TUMOUR
        return TreatedMasks(box, body, empty, empty.copy(), empty.copy())
    if "cement" not in geom.cache:  # the cement and the ablated region do not move after J0
        cement = np.zeros(body.shape, dtype=bool)
        for blob in geom.cement_blobs:
            cement |= blob.inside(u, v, w, geom.cement_scale)
        cement &= body_shape(u, v, w, vert, vert.heights_mm, CORTEX_MM + 0.5)
        ablated = _dist_mm(cement, col.spacing_mm) <= geom.ablation_margin_mm
        if geom.covers_tumour:
            ablated |= geom.tumour.inside(u, v, w)
        geom.cache["cement"], geom.cache["ablated"] = cement, ablated
    # the cement is drawn once, in the body as treated; a body that later collapses carries it inside
    # its lower endplates (drawn in the J0 body it would stick out of a collapsed one)
    cement = geom.cache["cement"] & body_shape(u, v, w, vert, state.heights_mm, CORTEX_MM + 0.5)
    abl = geom.cache["ablated"] & inner & ~cement
    residual = np.zeros(body.shape, dtype=bool)
    allowed = (inner | canal_front) & ~cement & ~abl
    voxel_ml = col.spacing_mm**3 / 1000.0
    nodules: tuple[tuple[Blob | None, float], ...] = ((geom.residual, state.residual_ml),
                                                     (geom.new_nodule, state.new_nodule_ml))
    for nodule, target in nodules:
        if nodule is not None and target > 0:
            # a growing failure can be designed larger than what is left of a small body: it then
            # fills at most 90 % of the room (the truth is read from the masks, so it stays exact)
            target = min(target, MAX_FILL * float(np.count_nonzero(allowed)) * voxel_ml)
            scale = scale_for_volume(target, (nodule,), u, v, w, allowed, voxel_ml)
            residual |= nodule.inside(u, v, w, scale) & allowed
    sub[abl] = ABLATION
    if state.rim_mm > 0:
        rim = (_dist_mm(abl | cement, col.spacing_mm) <= state.rim_mm) & inner & ~abl & ~cement & ~residual
        sub[rim] = RIM
    sub[residual] = RESIDUAL
    sub[cement] = CEMENT
    return TreatedMasks(box, body | cement, cement, abl, residual)


def scale_for_volume(target_ml: float, blobs: tuple[Blob, ...], u: NDArray[np.float64], v: NDArray[np.float64],
                     w: NDArray[np.float64], allowed: Bool3, voxel_ml: float) -> float:
    """Smallest scale at which the union of ``blobs`` covers ``target_ml`` of the ``allowed`` region.

    Exact on the fine grid: the union's ratio field is sorted once and the target voxel count read off.
    """
    if target_ml <= 0:
        return 0.0
    ratio = np.min([b.ratio(u, v, w) for b in blobs], axis=0)[allowed]
    n = round(target_ml / voxel_ml)
    if n >= ratio.size:
        raise ValueError(f"a blob of {target_ml:.2f} mL does not fit in its allowed region "
                         f"({ratio.size * voxel_ml:.2f} mL)")
    return float(np.partition(ratio, n - 1)[n - 1]) if n > 0 else 0.0


def local_coords(col: Column, vert: Vertebra) -> tuple[tuple[slice, slice, slice], NDArray[np.float64],
                                                     NDArray[np.float64], NDArray[np.float64]]:
    box = vertebra_box(col, vert)
    return (box, *_local_coords(col, vert, box))
