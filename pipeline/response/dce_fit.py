"""Vectorised standard / extended Tofts fit (no per-voxel Python loop in the hot path).

Example
-------
>>> import numpy as np
>>> from pipeline.response.dce import parker_aif, tofts
>>> t = np.linspace(0.0, 6.0, 181)
>>> cp = parker_aif(t)
>>> fit = fit_tofts(t, tofts(t, cp, 0.25, 0.4), cp)
>>> round(float(fit.ktrans_per_min), 3), round(float(fit.ve), 3)
(0.25, 0.4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.response.dce import FloatArray, _grids, _to_t, exp_convolution


@dataclass(frozen=True)
class FitResult:
    """Tofts fit per voxel (arrays of shape (N,), or 0-d for a single curve).

    Attributes
    ----------
    ktrans_per_min : ndarray
        Transfer constant in 1/min.
    ve : ndarray
        Extravascular extracellular volume fraction.
    vp : ndarray
        Plasma volume fraction (0 for the standard model).
    rmse : ndarray
        Root-mean-square residual in mM.
    kep_per_min : ndarray
        Rate constant ``Ktrans / ve`` in 1/min.
    delay_min : ndarray
        AIF delay retained (minutes), one of ``delays_min``.
    """

    ktrans_per_min: FloatArray
    ve: FloatArray
    vp: FloatArray
    rmse: FloatArray
    kep_per_min: FloatArray
    delay_min: FloatArray


def _solve(gx: FloatArray, gxc: FloatArray, gcc: float, a: FloatArray, e: FloatArray, yy: FloatArray,
           lo: FloatArray, hi: FloatArray, vp_max: float,
           extended: bool) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Box-constrained least squares of ``y ~ K x + v cp`` (exact for the convex 2-D quadratic).

    ``gx = <x,x>``, ``gxc = <x,cp>``, ``gcc = <cp,cp>``, ``a = <x,y>``, ``e = <cp,y>``,
    ``yy = <y,y>``; K in [lo, hi], v in [0, vp_max]. Returns (K, v, rss), broadcast shapes.
    """
    def rss(k: FloatArray, v: FloatArray) -> FloatArray:
        return np.asarray(yy - 2 * (k * a + v * e) + k * k * gx + 2 * k * v * gxc + v * v * gcc)

    k0 = np.clip(a / gx, lo, hi)
    v0 = np.zeros_like(k0)
    best_k, best_v, best_r = k0, v0, rss(k0, v0)
    if not extended:
        return best_k, best_v, best_r
    det = gx * gcc - gxc**2
    with np.errstate(divide="ignore", invalid="ignore"):
        ku = (a * gcc - gxc * e) / det
        vu = (gx * e - gxc * a) / det
    ok = (det > 0) & (ku >= lo) & (ku <= hi) & (vu >= 0) & (vu <= vp_max)
    candidates = [
        (np.where(ok, ku, k0), np.where(ok, vu, v0)),
        (lo, np.clip((e - gxc * lo) / gcc, 0.0, vp_max)),
        (hi, np.clip((e - gxc * hi) / gcc, 0.0, vp_max)),
        (np.clip((a - gxc * vp_max) / gx, lo, hi), np.full_like(k0, vp_max)),
    ]
    for k, v in candidates:
        k, v = np.broadcast_arrays(k, v)
        r = rss(k, v)
        better = r < best_r
        best_k, best_v, best_r = (np.where(better, k, best_k), np.where(better, v, best_v),
                                  np.where(better, r, best_r))
    return best_k, best_v, best_r


def _fit_one_aif(t: FloatArray, y_all: FloatArray, ta: FloatArray, c: FloatArray, w: FloatArray | None,
                 extended: bool, bounds: tuple[float, float, float, float], u_grid: FloatArray,
                 chunk: int) -> dict[str, FloatArray]:
    """Grid search + parabolic refinement of log kep for one AIF; arrays k, v, r (rss), u (log kep)."""
    ktrans_max, ve_min, ve_max, vp_max = bounds
    cp_t = _to_t(c, w)
    basis = _to_t(exp_convolution(ta, c, np.exp(u_grid)), w)  # (K, T)
    gx_grid, gxc_grid, gcc = (basis * basis).sum(1), basis @ cp_t, float(cp_t @ cp_t)

    def solve_at(u: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        kep = np.exp(u)
        x = _to_t(exp_convolution(ta, c, kep), w)  # (n, T)
        lo, hi = ve_min * kep, np.minimum(ktrans_max, ve_max * kep)
        return _solve((x * x).sum(1), x @ cp_t, gcc, (x * y).sum(1), y @ cp_t, (y * y).sum(1),
                      lo, hi, vp_max, extended)

    n = y_all.shape[0]
    res = {k: np.full(n, np.nan) for k in ("k", "v", "r", "u")}
    h0 = u_grid[1] - u_grid[0]
    kep_g = np.exp(u_grid)[:, None]
    for start in range(0, n, chunk):
        y = y_all[start:start + chunk]
        k, v, r = _solve(gx_grid[:, None], gxc_grid[:, None], gcc, basis @ y.T, (y @ cp_t)[None, :],
                         (y * y).sum(1)[None, :], ve_min * kep_g, np.minimum(ktrans_max, ve_max * kep_g),
                         vp_max, extended)
        i = np.argmin(r, axis=0)
        cols = np.arange(y.shape[0])
        bu, bk, bv, br = u_grid[i], k[i, cols], v[i, cols], r[i, cols]
        h = h0
        for _ in range(3):
            lo_u, hi_u = np.maximum(bu - h, u_grid[0]), np.minimum(bu + h, u_grid[-1])
            tries = [(lo_u, *solve_at(lo_u, y)), (hi_u, *solve_at(hi_u, y))]
            r_lo, r_hi = tries[0][3], tries[1][3]
            denom = r_lo - 2 * br + r_hi
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.where(denom > 0, 0.5 * h * (r_lo - r_hi) / denom, 0.0)
            vert = np.clip(bu + np.clip(step, -h, h), u_grid[0], u_grid[-1])
            tries.append((vert, *solve_at(vert, y)))
            for uu, kk, vv, rr in tries:
                better = rr < br
                bu, bk, bv, br = (np.where(better, uu, bu), np.where(better, kk, bk),
                                  np.where(better, vv, bv), np.where(better, rr, br))
            h /= 4.0
        sl = slice(start, start + y.shape[0])
        res["u"][sl], res["k"][sl], res["v"][sl], res["r"][sl] = bu, bk, bv, br
    return res


def fit_tofts(t_min: ArrayLike, ct: ArrayLike, cp: ArrayLike, *, extended: bool = False,
              cp_t_min: ArrayLike | None = None, ktrans_max: float = 5.0, ve_min: float = 0.001,
              ve_max: float = 1.0, vp_max: float = 1.0, kep_range: tuple[float, float] = (1e-3, 1e3),
              n_kep: int = 401, delays_min: ArrayLike = (0.0,), chunk: int = 2048) -> FitResult:
    """Least-squares fit of the standard or extended Tofts model, vectorised over voxels.

    Variable projection: for a fixed ``kep`` the model is linear in ``(Ktrans, vp)``, so the
    box-constrained linear solution (``Ktrans`` in ``[ve_min kep, min(ktrans_max, ve_max kep)]``,
    ``vp`` in ``[0, vp_max]``) is exact and shared basis functions serve every voxel. ``kep``
    is found by a log-spaced grid search over ``kep_range`` (all voxels at once, one matrix
    product per chunk) followed by three rounds of voxel-wise parabolic refinement in
    ``log kep`` (step / 4 each round). No per-voxel Python loop. With several
    ``delays_min``, the AIF is shifted by each (zero before the shift) and every voxel keeps
    the delay of smallest residual.

    Parameters
    ----------
    t_min : array_like, shape (T,)
        Sample times in minutes (bolus arrival of ``cp`` at its own t = 0).
    ct : array_like, shape (T,) or (N, T)
        Tissue concentration in mM; rows with a non-finite value give NaN parameters.
    cp : array_like
        Plasma AIF in mM at ``t_min`` or at ``cp_t_min``.
    extended : bool
        Fit ``vp`` (extended Tofts) when True, else ``vp = 0``.
    cp_t_min : array_like, optional
        Finer AIF time grid in minutes (see :func:`tofts`).
    ktrans_max, ve_min, ve_max, vp_max : float
        Bounds (SPEC: Ktrans 0-5 /min, ve 0.001-1, vp 0-1).
    kep_range : (float, float)
        Searched kep interval in 1/min.
    n_kep : int
        Grid size.
    delays_min : array_like
        Candidate AIF delays in minutes (e.g. the interval between the last pre-contrast
        phase and the detected arrival phase, in 1-2 s steps); cost grows linearly.
    chunk : int
        Voxels per block (memory: about ``n_kep * chunk * 80`` bytes).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        If ``ct`` does not have T samples per row or a bound is inconsistent.
    """
    if not (0 < ve_min <= ve_max and ktrans_max > 0 and vp_max >= 0 and 0 < kep_range[0] < kep_range[1]):
        raise ValueError("bounds must satisfy 0 < ve_min <= ve_max, ktrans_max > 0, vp_max >= 0, "
                         f"0 < kep_min < kep_max; got ve [{ve_min}, {ve_max}], ktrans_max {ktrans_max}, "
                         f"vp_max {vp_max}, kep_range {kep_range}")
    t = np.asarray(t_min, dtype=np.float64).reshape(-1)
    y_all = np.asarray(ct, dtype=np.float64)
    single = y_all.ndim == 1
    y_all = np.atleast_2d(y_all)
    if y_all.shape[1] != t.size:
        raise ValueError(f"ct has {y_all.shape[1]} samples per curve but t_min has {t.size}")
    delays = np.asarray(delays_min, dtype=np.float64).reshape(-1)
    if delays.size == 0:
        raise ValueError("delays_min must hold at least one delay (0.0 for none)")
    ta, c, w = _grids(t, cp, cp_t_min)
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(y_all).all(axis=1))
    y_all = np.where(finite[:, None], y_all, 0.0)
    u_grid = np.linspace(np.log(kep_range[0]), np.log(kep_range[1]), n_kep)
    bounds = (ktrans_max, ve_min, ve_max, vp_max)
    best: dict[str, FloatArray] = {}
    for d in delays:
        c_d = c if d == 0 else np.interp(ta - d, ta, c, left=0.0)
        res = _fit_one_aif(t, y_all, ta, c_d, w, extended, bounds, u_grid, chunk)
        res["d"] = np.full(y_all.shape[0], d)
        if not best:
            best = res
            continue
        better = res["r"] < best["r"]
        best = {key: np.where(better, res[key], best[key]) for key in best}
    kep_out = np.exp(best["u"])
    out = {
        "ktrans_per_min": best["k"],
        "ve": np.clip(best["k"] / kep_out, ve_min, ve_max),
        "vp": best["v"],
        "rmse": np.sqrt(np.maximum(best["r"], 0.0) / t.size),
        "kep_per_min": kep_out,
        "delay_min": best["d"],
    }
    for arr in out.values():
        arr[~finite] = np.nan
    if single:
        out = {name: np.asarray(arr[0]) for name, arr in out.items()}
    return FitResult(**out)
