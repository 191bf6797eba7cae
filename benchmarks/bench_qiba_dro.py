"""Standard Tofts fit against the QIBA DCE-MRI digital reference object v6 (issue 5 validation).

Usage:
    python benchmarks/bench_qiba_dro.py [--dro ../shared/realdata/dce-qiba] [--json OUT]

The DRO (``tofts_v6.nii.gz``, 50 x 80 pixels x 1321 frames 0.5 s apart, injection at 60 s, no
noise) holds 30 patches of 10 x 10 pixels: Ktrans 0.01 / 0.02 / 0.05 / 0.1 / 0.2 / 0.35 /min
along y (rows 10-69), ve 0.01 / 0.05 / 0.1 / 0.2 / 0.5 along x, and an arterial row (y 70-79,
``tofts_v6-AIF-label.nii.gz``). Its acquisition: SPGR, TR 5 ms, flip 30 deg, T1 tissue 1000 ms,
T1 blood 1440 ms, r1 4.5 /mM/s, haematocrit 0.45. The reference maps ``Ktrans.dcm`` / ``Ve.dcm``
(80 x 50, DICOM rows = y) store ``value = 0.01 x pixel - 0.05`` (RescaleSlope / Intercept).

Method: signal to concentration with :func:`pipeline.response.dce.signal_to_concentration`
(baseline = mean of the frames before 60 s), plasma AIF = the arterial row's blood concentration
/ (1 - 0.45), then :func:`pipeline.response.dce_fit.fit_tofts` (standard Tofts), once on each
patch's mean curve (central 6 x 6 pixels) and once voxel-wise on all 3000 patch pixels.
Tolerances are OSIPI's: |Ktrans error| <= 0.005 + 10 % of the reference, |ve error| <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from scipy import ndimage as ndi

from pipeline.response.dce import signal_to_concentration
from pipeline.response.dce_fit import fit_tofts

TR_S, FLIP_DEG, T1_TISSUE_S, T1_BLOOD_S, HCT, INJECTION_S, FRAME_S = 0.005, 30.0, 1.0, 1.44, 0.45, 60.0, 0.5
DEFAULT_DRO = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "dce-qiba"


@dataclass
class Dro:
    signal: np.ndarray  # (x, y, t)
    t_s: np.ndarray
    patches: np.ndarray  # (x, y) patch number 1-30, 0 outside
    aif: np.ndarray  # (x, y) arterial pixels
    ktrans_ref: np.ndarray  # (x, y) /min
    ve_ref: np.ndarray  # (x, y)


def _reference(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.asarray(values, dtype=np.float64).T  # DICOM (rows = y, cols = x) -> (x, y)


def load_dro(root: Path) -> Dro:
    """Read the DRO files in place; patches are the 10 x 10 blocks of the tissue label."""
    signal = np.asanyarray(nib.load(root / "tofts_v6.nii.gz").dataobj).astype(np.float64)
    tissue = np.asanyarray(nib.load(root / "tofts_v6-label.nii.gz").dataobj)[..., 0] > 0
    aif = np.asanyarray(nib.load(root / "tofts_v6-AIF-label.nii.gz").dataobj)[..., 0] > 0
    xs, ys = np.nonzero(tissue)
    patches = np.zeros(tissue.shape, dtype=np.int32)
    number = 0
    for y0 in range(int(ys.min()), int(ys.max()) + 1, 10):
        for x0 in range(int(xs.min()), int(xs.max()) + 1, 10):
            number += 1
            patches[x0:x0 + 10, y0:y0 + 10] = number
    patches[~tissue] = 0
    t_s = np.arange(signal.shape[2]) * FRAME_S
    return Dro(signal, t_s, patches, aif, _reference(root / "Ktrans.dcm"), _reference(root / "Ve.dcm"))


def plasma_aif(dro: Dro) -> np.ndarray:
    """Plasma concentration (mM) of the arterial row, at every frame."""
    pre = dro.t_s < INJECTION_S
    curve = dro.signal[dro.aif].mean(axis=0)
    blood = signal_to_concentration(curve, curve[pre].mean(), tr_s=TR_S, flip_deg=FLIP_DEG, t10_s=T1_BLOOD_S)
    return np.asarray(blood / (1.0 - HCT))


def tissue_concentration(dro: Dro, signal: np.ndarray) -> np.ndarray:
    """Concentration (mM) of tissue curves ``(N, T)`` (or one curve)."""
    pre = dro.t_s < INJECTION_S
    s0 = signal[..., pre].mean(axis=-1, keepdims=True)
    return np.asarray(signal_to_concentration(signal, s0, tr_s=TR_S, flip_deg=FLIP_DEG, t10_s=T1_TISSUE_S))


def within_tolerance(ktrans: np.ndarray, ve: np.ndarray, ktrans_ref: np.ndarray, ve_ref: np.ndarray) -> np.ndarray:
    """OSIPI tolerances: Ktrans a_tol 0.005 + r_tol 0.1, ve a_tol 0.05."""
    return np.asarray((np.abs(ktrans - ktrans_ref) <= 0.005 + 0.1 * ktrans_ref) & (np.abs(ve - ve_ref) <= 0.05))


def run(root: Path) -> dict[str, object]:
    dro = load_dro(root)
    cp = plasma_aif(dro)
    t_min = dro.t_s / 60.0
    n = int(dro.patches.max())
    cores = [ndi.binary_erosion(dro.patches == i, iterations=2) for i in range(1, n + 1)]
    curves = np.stack([tissue_concentration(dro, dro.signal[core].mean(axis=0)) for core in cores])
    t0 = time.perf_counter()
    fit = fit_tofts(t_min, curves, cp)
    patch_s = time.perf_counter() - t0
    k_ref = np.array([float(np.median(dro.ktrans_ref[c])) for c in cores])
    v_ref = np.array([float(np.median(dro.ve_ref[c])) for c in cores])
    patch_ok = within_tolerance(fit.ktrans_per_min, fit.ve, k_ref, v_ref)
    voxels = dro.patches > 0
    t0 = time.perf_counter()
    vfit = fit_tofts(t_min, tissue_concentration(dro, dro.signal[voxels]), cp)
    voxel_s = time.perf_counter() - t0
    voxel_ok = within_tolerance(vfit.ktrans_per_min, vfit.ve, dro.ktrans_ref[voxels], dro.ve_ref[voxels])
    patches = [{"patch": i + 1, "ktrans_ref": round(float(k_ref[i]), 4), "ve_ref": round(float(v_ref[i]), 4),
                "ktrans_fit": round(float(fit.ktrans_per_min[i]), 5), "ve_fit": round(float(fit.ve[i]), 5),
                "ok": bool(patch_ok[i])} for i in range(n)]
    return {"patches_ok": int(patch_ok.sum()), "patches": n, "patch_fit_s": patch_s,
            "voxels_ok": int(voxel_ok.sum()), "voxels": int(voxels.sum()), "voxel_fit_s": voxel_s,
            "frames": int(dro.signal.shape[2]), "per_patch": patches}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dro", type=Path, default=DEFAULT_DRO, help="the dce-qiba folder")
    ap.add_argument("--json", type=Path, help="write the per-patch figures here")
    a = ap.parse_args()
    res = run(a.dro)
    print(f"patches within OSIPI tolerance: {res['patches_ok']}/{res['patches']} "
          f"(patch-mean fit {float(res['patch_fit_s']):.3f} s)")
    print(f"voxels within OSIPI tolerance: {res['voxels_ok']}/{res['voxels']} "
          f"(voxel-wise fit {float(res['voxel_fit_s']):.2f} s, {res['frames']} frames)")
    print("| patch | Ktrans ref | Ktrans fit | ve ref | ve fit | ok |\n|---|---|---|---|---|---|")
    per_patch = res["per_patch"]
    assert isinstance(per_patch, list)
    for p in per_patch:
        print(f"| {p['patch']} | {p['ktrans_ref']} | {p['ktrans_fit']} | {p['ve_ref']} | {p['ve_fit']} | {p['ok']} |")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
