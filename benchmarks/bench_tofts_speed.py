"""Wall time and accuracy of the voxel-wise Tofts fit over a 64 x 64 x 20 region, 40 phases (issue 5: < 10 s).

Usage:
    python benchmarks/bench_tofts_speed.py [--runs 3] [--snr 20] [--json OUT] [--fit-impl PATH]

Synthetic DCE region: 20 x 64 x 64 = 81,920 voxels, 40 phases 7.5 s apart (4 pre-contrast
phases), Parker population AIF (haematocrit 0.42) starting at 28.3 s, between phases 3 and 4.
Every voxel has its own known (Ktrans, ve, vp), drawn from one of two distributions:

- ``tumour``: Ktrans log-uniform 0.02-1 /min, ve uniform 0.05-0.6, vp uniform 0-0.1;
- ``bounds``: the SPEC's whole box, Ktrans log-uniform 0.005-5 /min, ve uniform 0.01-1,
  vp uniform 0-1 (many of these curves are flat or vascular: Ktrans is not identifiable there).

Standard-model curves have vp = 0. Concentrations come from :func:`pipeline.response.dce.tofts`
on a 0.25 s AIF grid (the fit integrates on 0.5 s). Noise: none, or Rician noise in the signal
domain (SPGR, TR 5 ms, flip 12 deg, T10 1000 ms, r1 4.5 /mM/s, as the phantom) with a
pre-contrast SNR of ``--snr``, converted back by :func:`signal_to_concentration`.

The AIF start is found as the pipeline finds it (:func:`pipeline.response.dce_region.region_tofts`):
bolus arrival detected on the region's curve, AIF start searched on the region's median curve
(1 s steps over the two phase intervals before arrival, then 0.1 s steps). Then one
:func:`fit_tofts` call fits every voxel (the timed call), in three modes:

- ``fixed``: every voxel uses the region's AIF start (one AIF);
- ``local``: each voxel picks its start within +-2 s of the region's, 0.5 s steps (9 analytic
  AIFs, 2-D ``cp``): what ``region_tofts(voxelwise=True)`` does;
- ``window``: each voxel searches the whole arrival window in 2 s steps (9 AIFs shifted by
  ``fit_tofts`` itself).

``--fit-impl`` times another implementation of ``fit_tofts`` (e.g. a previous version of
``pipeline/response/dce_fit.py``) on the same data; modes it does not support are skipped.

Timing: wall clock of the ``fit_tofts`` call, median of ``--runs`` runs, with the CPU other
processes used meanwhile (from /proc/stat, in cores). Accuracy: median absolute error of Ktrans
and ve against the known values, and the fraction of voxels within OSIPI's tolerances
(|dKtrans| <= 0.005 + 10 %, |dve| <= 0.05).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.response.dce import concentration_to_signal, parker_aif, signal_to_concentration, tofts
from pipeline.response.dce_fit import FitResult, fit_tofts
from pipeline.response.dce_region import bolus_delays_min, region_tofts

F64 = NDArray[np.float64]
SHAPE = (20, 64, 64)
N_PHASES, DT_S, ARRIVAL_S = 40, 7.5, 28.3
TR_S, FLIP_DEG, T10_S, R1, HCT = 0.005, 12.0, 1.0, 4.5, 0.42
DRAWS = {
    "tumour": {"ktrans": (0.02, 1.0), "ve": (0.05, 0.6), "vp": (0.0, 0.1)},
    "bounds": {"ktrans": (0.005, 5.0), "ve": (0.01, 1.0), "vp": (0.0, 1.0)},
}


def draw_parameters(draw: str, n: int, extended: bool, rng: np.random.Generator) -> tuple[F64, F64, F64]:
    """Known (Ktrans /min, ve, vp) of ``n`` voxels (vp = 0 for the standard model)."""
    d = DRAWS[draw]
    lo, hi = d["ktrans"]
    ktrans = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    ve = rng.uniform(*d["ve"], n)
    vp = rng.uniform(*d["vp"], n) if extended else np.zeros(n)
    return ktrans, ve, vp


def concentrations(t_s: F64, ktrans: F64, ve: F64, vp: F64, *, chunk: int = 8192) -> F64:
    """Tissue concentration (N, T) in mM, integrated on a 0.25 s grid of the analytic Parker AIF."""
    fine = np.linspace(0.0, t_s[-1] / 60.0, round(float(t_s[-1]) / 0.25) + 1)
    cp = parker_aif(fine, HCT, delay_min=ARRIVAL_S / 60.0)
    out = np.empty((ktrans.size, t_s.size))
    for s in range(0, ktrans.size, chunk):
        sl = slice(s, s + chunk)
        out[sl] = tofts(t_s / 60.0, cp, ktrans[sl], ve[sl], vp[sl], cp_t_min=fine)
    return out


def signal_phases(conc: F64, snr: float | None, rng: np.random.Generator) -> F64:
    """(T, z, y, x) SPGR signal of the concentrations (pre-contrast signal 1), Rician noise sigma 1/snr."""
    s0 = float(concentration_to_signal(0.0, 1.0, tr_s=TR_S, flip_deg=FLIP_DEG, t10_s=T10_S, r1_per_mM_s=R1))
    sig = concentration_to_signal(conc, 1.0 / s0, tr_s=TR_S, flip_deg=FLIP_DEG, t10_s=T10_S, r1_per_mM_s=R1)
    if snr:
        sigma = 1.0 / snr
        sig = np.hypot(sig + rng.normal(0.0, sigma, sig.shape), rng.normal(0.0, sigma, sig.shape))
    return np.ascontiguousarray(sig.T).reshape(conc.shape[1], *SHAPE)


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat (NaN elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fh.readline().split()[1:8])
    except OSError:
        return float("nan")
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[[], FitResult], runs: int) -> tuple[FitResult, list[float], list[float]]:
    """Result, wall seconds per run and cores used by other processes per run."""
    walls, others = [], []
    result = None
    for _ in range(runs):
        busy0, own0, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        other = (_busy_cpu_s() - busy0 - (_own_cpu_s() - own0)) / wall
        walls.append(wall)
        others.append(max(other, 0.0))
    assert result is not None
    return result, walls, others


def accuracy(fit: FitResult, ktrans: F64, ve: F64) -> dict[str, float]:
    """Median absolute errors and the fraction within OSIPI's tolerances (non-fitted voxels count as failures)."""
    dk = np.abs(fit.ktrans_per_min - ktrans)
    dv = np.abs(fit.ve - ve)
    ok = (dk <= 0.005 + 0.1 * ktrans) & (dv <= 0.05)
    return {"ktrans_mae": float(np.nanmedian(dk)), "ve_mae": float(np.nanmedian(dv)),
            "within_osipi": float(np.mean(ok)), "not_fitted": int(np.sum(~np.isfinite(fit.ktrans_per_min)))}


def load_fit(path: Path | None) -> Callable[..., FitResult]:
    """``fit_tofts`` of this checkout, or of another implementation file (e.g. a previous version)."""
    if path is None:
        return fit_tofts
    spec = importlib.util.spec_from_file_location("bench_fit_impl", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    fn: Callable[..., FitResult] = module.fit_tofts
    return fn


def run_case(draw: str, extended: bool, snr: float | None, runs: int, fit: Callable[..., FitResult],
             voxel_delay: bool, seed: int = 5) -> list[dict[str, Any]]:
    """Time and score one (parameter draw, model, noise) case; returns its table rows."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(SHAPE))
    t_s = np.arange(N_PHASES, dtype=np.float64) * DT_S
    ktrans, ve, vp = draw_parameters(draw, n, extended, rng)
    phases = signal_phases(concentrations(t_s, ktrans, ve, vp), snr, rng)
    mask = np.ones(SHAPE, dtype=bool)
    t0 = time.perf_counter()
    region = region_tofts(phases, t_s, mask, tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=T10_S * 1000.0,
                          r1_per_mM_s=R1, hematocrit=HCT, extended=extended, noise_sigma=1.0 / snr if snr else 1e-3)
    region_s = time.perf_counter() - t0
    flat = phases.reshape(N_PHASES, -1).T
    conc = signal_to_concentration(flat, flat[:, :region.n_pre].mean(axis=1, keepdims=True), tr_s=TR_S,
                                   flip_deg=FLIP_DEG, t10_s=T10_S, r1_per_mM_s=R1)
    t_min = t_s / 60.0
    fine = np.linspace(0.0, t_min[-1], round(float(t_s[-1]) / 0.5) + 1)
    base = {"draw": draw, "model": "extended" if extended else "standard",
            "noise": f"SNR {snr:g}" if snr else "none", "region_fit_s": region_s,
            "arrival_index": region.arrival_index, "aif_start_s": region.delay_s}
    # (mode, AIF start candidates in minutes, AIFs: 2-D analytic per candidate or 1-D shifted by fit_tofts)
    local: F64 = region.delay_s / 60.0 + np.arange(-4, 5, dtype=np.float64) * 0.5 / 60.0
    cases: list[tuple[str, F64, F64]] = [
        ("fixed: region AIF start", np.array([region.delay_s / 60.0]),
         parker_aif(fine, HCT, delay_min=region.delay_s / 60.0)[None, :]),
        ("local: region start +-2 s, 0.5 s steps (pipeline voxelwise)", local,
         np.stack([parker_aif(fine, HCT, delay_min=float(d)) for d in local])),
    ]
    if voxel_delay:
        cases.append(("window: arrival window, 2 s steps", bolus_delays_min(t_s, region.arrival_index, step_s=2.0),
                      parker_aif(fine, HCT)))
    rows = []
    for mode, delays, aifs in cases:
        if aifs.ndim == 2 and aifs.shape[0] == 1:
            aifs, delays = aifs[0], np.zeros(1)  # one AIF: the 1-D form (any fit_tofts version)
        try:
            res, walls, others = timed(functools.partial(fit, t_min, conc, aifs, cp_t_min=fine, extended=extended,
                                                         delays_min=delays), runs)
        except ValueError as exc:  # e.g. an implementation without 2-D AIFs
            print(f"# {mode}: not run ({exc})")
            continue
        rows.append({**base, "mode": mode, "delays": int(delays.size), "wall_s": walls,
                     "median_s": statistics.median(walls), "other_cores": statistics.median(others),
                     **accuracy(res, ktrans, ve)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (median reported; default 3)")
    ap.add_argument("--snr", type=float, default=20.0, help="pre-contrast SNR of the noisy cases (default 20)")
    ap.add_argument("--draws", nargs="+", default=list(DRAWS), choices=list(DRAWS), help="parameter draws")
    ap.add_argument("--no-window", action="store_true", help="skip the arrival-window per-voxel search rows")
    ap.add_argument("--fit-impl", type=Path, help="time fit_tofts from this file instead (e.g. a previous version)")
    ap.add_argument("--json", type=Path, help="write every row (with each run's wall time) here")
    a = ap.parse_args()
    fit = load_fit(a.fit_impl)
    print(f"# {N_PHASES} phases x {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} = {int(np.prod(SHAPE))} voxels; "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}; "
          f"fit_tofts from {a.fit_impl or 'pipeline.response.dce_fit'}; load {os.getloadavg()[0]:.1f}")
    print("| model | draw | noise | mode | delays | fit_tofts median s (runs) | other cores | "
          "Ktrans median abs err /min | ve median abs err | within OSIPI tol |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    for extended in (False, True):
        for draw in a.draws:
            for snr in (None, a.snr):
                for row in run_case(draw, extended, snr, a.runs, fit, not a.no_window):
                    rows.append(row)
                    runs = ", ".join(f"{w:.2f}" for w in row["wall_s"])
                    print(f"| {row['model']} | {row['draw']} | {row['noise']} | {row['mode']} | {row['delays']} | "
                          f"**{row['median_s']:.2f}** ({runs}) | {row['other_cores']:.1f} | "
                          f"{row['ktrans_mae']:.4f} | {row['ve_mae']:.4f} | {100 * row['within_osipi']:.1f} % |",
                          flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
