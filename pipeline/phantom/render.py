"""Render the fine label map into acquisition grids: partial-volume fractions, contrasts, bias, noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipeline.phantom import anatomy as an
from pipeline.phantom.signal_models import spgr_signal, tissue_concentration_millimolar

F64 = NDArray[np.float64]

# Tissue signal tables (docs/phantom_contract.md), indexed by label.
T1_LUT = np.array([0, 950, 420, 350, 60, 650, 650, 160, 450, 330, 15, 480, 330, 450], float)
STIR_LUT = np.array([0, 40, 200, 450, 40, 140, 140, 1000, 380, 650, 15, 380, 650, 500], float)
T1FS_POST_LUT = np.array([0, 60, 230, 260, 40, 180, 180, 120, 300, 650, 15, 190, 650, 520], float)
LOCALIZER_LUT = np.array([0, 700, 380, 330, 60, 500, 500, 300, 400, 350, 15, 400, 350, 400], float)
# DCE: (M0, T10 ms, Ktrans /min, ve, vp); tumour rows are replaced per patient.
DCE_PARAMS = np.array([
    [0.0, 1000, 0, 0.1, 0], [0.08, 300, 0, 0.1, 0], [1.0, 1000, 0.005, 0.10, 0], [0.9, 1100, 0.003, 0.2, 0],
    [0.1, 800, 0, 0.1, 0], [0.5, 600, 0.01, 0.05, 0], [0.5, 600, 0.01, 0.05, 0], [1.0, 4000, 0, 0.1, 0],
    [0.9, 900, 0, 0.1, 0], [1.0, 1200, 0.25, 0.35, 0.05], [0.02, 1000, 0, 0.1, 0], [0.8, 900, 0, 0.1, 0],
    [1.0, 1200, 0.25, 0.35, 0.05], [0.9, 1000, 0.12, 0.25, 0],
], float)


def ct_lut(cement_hu: float, marrow_hu: float, cortex_hu: float) -> F64:
    return np.array([-1000, -100, 50, 80, cortex_hu, marrow_hu, marrow_hu, 10, 35, 40, cement_hu,
                     60, 40, 60], float)


@dataclass(frozen=True)
class Geometry:
    """An acquisition grid in the scanner frame (DICOM conventions)."""

    origin_mm: tuple[float, float, float]  # ImagePositionPatient of slice 0
    row_dir: tuple[float, float, float]  # IOP[:3]: direction of increasing column index
    col_dir: tuple[float, float, float]  # IOP[3:]: direction of increasing row index
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)
    slice_spacing_mm: float
    slice_thickness_mm: float
    rows: int
    cols: int
    n_slices: int

    @property
    def normal(self) -> F64:
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    def position(self, k: int) -> F64:
        return np.asarray(self.origin_mm) + k * self.slice_spacing_mm * self.normal

    @classmethod
    def centred(cls, centre_mm: F64, row_dir: F64, col_dir: F64, pixel_mm: float, rows: int, cols: int,
                n_slices: int, slice_spacing_mm: float, thickness_mm: float) -> Geometry:
        r = np.asarray(row_dir, float)
        c = np.asarray(col_dir, float)
        n = np.cross(r, c)
        origin = (np.asarray(centre_mm) - r * pixel_mm * (cols - 1) / 2 - c * pixel_mm * (rows - 1) / 2
                  - n * slice_spacing_mm * (n_slices - 1) / 2)
        return cls(tuple(np.round(origin, 3)), tuple(r), tuple(c), (pixel_mm, pixel_mm),
                   slice_spacing_mm, thickness_mm, rows, cols, n_slices)


def rotation_xyz(angles_deg: F64) -> F64:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx)


def label_fractions(geom: Geometry, labels: NDArray[np.uint8], col: an.Column, rot: F64, trans: F64,
                    sub: tuple[int, int, int] = (2, 2, 3)) -> NDArray[np.float32]:
    """Partial-volume fraction of each label in each voxel: (n_slices, rows, cols, N_LABELS).

    Each voxel is supersampled on ``sub`` points (in-plane x2, x2; through the slice thickness x3);
    scanner points P map to the patient frame by p = R^T (P - t) and take the nearest fine label
    (the fine grid's edges extend outward).
    """
    r = np.asarray(geom.row_dir)
    c = np.asarray(geom.col_dir)
    n = geom.normal
    pr, pc = geom.pixel_spacing_mm
    offs = []
    for a in (np.arange(sub[0]) + 0.5) / sub[0] - 0.5:
        for b in (np.arange(sub[1]) + 0.5) / sub[1] - 0.5:
            for e in (np.arange(sub[2]) + 0.5) / sub[2] - 0.5:
                offs.append(a * pc * r + b * pr * c + e * geom.slice_thickness_mm * n)
    offsets = np.array(offs)  # (S, 3)
    # fine-grid index is affine in the scanner point: idx = (P - t) R / h - origin / h
    a = rot / col.spacing_mm
    b = -(trans @ rot) / col.spacing_mm - col.origin_mm / col.spacing_mm
    jj, ii = np.meshgrid(np.arange(geom.rows), np.arange(geom.cols), indexing="ij")
    inplane = ((ii[..., None] * pc * r + jj[..., None] * pr * c) @ a).astype(np.float32)  # (rows, cols, 3)
    off = (offsets @ a).astype(np.float32)  # (S, 3)
    out = np.empty((geom.n_slices, geom.rows, geom.cols, an.N_LABELS), np.float32)
    nx, ny, nz = col.shape
    flat_labels = labels.ravel()
    npix = geom.rows * geom.cols
    pix_base = np.arange(npix, dtype=np.int64)[:, None] * an.N_LABELS
    for k in range(geom.n_slices):
        origin_idx = (geom.position(k) @ a + b).astype(np.float32)
        idx = np.rint(inplane[:, :, None, :] + (off + origin_idx)[None, None]).astype(np.int32)
        ix = np.clip(idx[..., 0], 0, nx - 1)
        iy = np.clip(idx[..., 1], 0, ny - 1)
        iz = np.clip(idx[..., 2], 0, nz - 1)
        lab = flat_labels[(ix.astype(np.int64) * ny + iy) * nz + iz]  # (rows, cols, S)
        flat = pix_base + lab.reshape(npix, -1)
        counts = np.bincount(flat.ravel(), minlength=npix * an.N_LABELS)
        out[k] = (counts.reshape(geom.rows, geom.cols, an.N_LABELS) / offsets.shape[0]).astype(np.float32)
    return out


def bias_field(geom: Geometry, rng: np.random.Generator, amplitude: float = 0.12) -> F64:
    """Smooth multiplicative field (1 +- amplitude) over the acquisition's physical extent."""
    k = np.arange(geom.n_slices)[:, None, None]
    j = np.arange(geom.rows)[None, :, None]
    i = np.arange(geom.cols)[None, None, :]
    fov = np.array([max(geom.n_slices * geom.slice_spacing_mm, 1.0), geom.rows * geom.pixel_spacing_mm[0],
                    geom.cols * geom.pixel_spacing_mm[1]])
    pos = [k * geom.slice_spacing_mm / fov[0], j * geom.pixel_spacing_mm[0] / fov[1],
           i * geom.pixel_spacing_mm[1] / fov[2]]
    f = np.ones((geom.n_slices, geom.rows, geom.cols))
    for _ in range(2):
        w = rng.normal(0, 1.2, 3)
        f = f + amplitude / 2 * np.sin(2 * np.pi * (w[0] * pos[0] + w[1] * pos[1] + w[2] * pos[2])
                                       + rng.uniform(0, 2 * np.pi))
    return f


def rician(signal: F64, sigma: float, rng: np.random.Generator) -> F64:
    """Magnitude of a complex signal with Gaussian noise of standard deviation ``sigma`` per channel."""
    re = signal.astype(np.float32) + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    im = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float64)


def dce_curves(params: F64, times_s: F64, injection_s: float, tr_ms: float, flip_deg: float,
               hematocrit: float = 0.42) -> F64:
    """Signal curve of every label: (N_LABELS, T) for phases at ``times_s`` with bolus arrival at ``injection_s``."""
    t_min = (np.asarray(times_s) - injection_s) / 60.0
    out = np.empty((params.shape[0], t_min.size))
    for i, (m0, t10, ktrans, ve, vp) in enumerate(params):
        conc = tissue_concentration_millimolar(t_min, ktrans, ve, vp, hematocrit)
        out[i] = spgr_signal(m0, t10, conc, tr_ms, flip_deg)
    return out
