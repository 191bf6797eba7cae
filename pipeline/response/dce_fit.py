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
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.response.dce import FloatArray, _grids, _interp_index, _phi1, _phi2, _to_t

IntArray = NDArray[np.intp]
F32 = NDArray[np.float32]

#: Fine log-kep table points per step of the nominal ``n_kep`` grid.
_TABLE_PER_STEP = 4
#: Coarse search stride in table points (the coarse grid has a step of 4 nominal steps).
_COARSE_STRIDE = 16
#: Second level: offsets around the coarse minimum, stride 4 table points.
_LEVEL2 = np.arange(-12, 13, 4)
#: Third level: every table point around the second-level minimum.
_LEVEL3 = np.arange(-4, 5)
#: Delays per curve taken to level 3 and the parabolic vertex (the best after level 2).
_FINAL_DELAYS = 2
#: Elements per (delay x kep x voxel) block of the coarse search (memory and cache bound).
_BLOCK_ELEMENTS = 1 << 19
#: Elements of the recursion's store per group of AIFs (32 MB).
_TABLE_GROUP_ELEMENTS = 1 << 22
#: Elements of the basis table (delays x kep table x samples) per group of delays (128 MB).
_TABLE_ELEMENTS = 1 << 24
#: Basis samples gathered per block by the refinement levels (32 MB).
_GATHER_ELEMENTS = 1 << 22


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


def _solve_candidates(gx: FloatArray, gxc: FloatArray, gcc: FloatArray | float, a: FloatArray, e: FloatArray,
                      lo: FloatArray, hi: FloatArray, vp_max: float,
                      extended: bool) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Box-constrained least squares of ``y ~ K x + v cp`` by enumerating the active sets.

    Exact for the convex 2-D quadratic whatever the sign of ``gxc``: the unconstrained optimum
    when feasible, else the best of the four edge optima. Returns (K, v, rss - <y,y>).
    """
    def rss(k: FloatArray, v: FloatArray) -> FloatArray:
        return np.asarray(-2 * (k * a + v * e) + k * k * gx + 2 * k * v * gxc + v * v * gcc)

    with np.errstate(divide="ignore", invalid="ignore"):
        k0 = np.clip(np.where(gx > 0, a / np.where(gx > 0, gx, 1.0), 0.0), lo, hi)
    v0 = np.zeros_like(k0)
    best_k, best_v, best_r = np.broadcast_arrays(k0, v0, rss(k0, v0))
    if not extended:
        return best_k, best_v, best_r
    det = gx * gcc - gxc**2
    g = np.where(np.asarray(gcc) > 0, gcc, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ku = (a * gcc - gxc * e) / det
        vu = (gx * e - gxc * a) / det
        km = np.where(gx > 0, (a - gxc * vp_max) / np.where(gx > 0, gx, 1.0), 0.0)
    ok = (det > 0) & (ku >= lo) & (ku <= hi) & (vu >= 0) & (vu <= vp_max)
    candidates = [
        (np.where(ok, ku, k0), np.where(ok, vu, v0)),
        (lo, np.clip((e - gxc * lo) / g, 0.0, vp_max)),
        (hi, np.clip((e - gxc * hi) / g, 0.0, vp_max)),
        (np.clip(km, lo, hi), np.full_like(k0, vp_max)),
    ]
    for k, v in candidates:
        k, v = np.broadcast_arrays(k, v)
        r = rss(k, v)
        better = r < best_r
        best_k, best_v, best_r = (np.where(better, k, best_k), np.where(better, v, best_v),
                                  np.where(better, r, best_r))
    return best_k, best_v, best_r


def _solve(gx: FloatArray, gxc: FloatArray, gcc: FloatArray | float, a: FloatArray, e: FloatArray,
           lo: FloatArray, hi: FloatArray, vp_max: float,
           extended: bool) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Box-constrained least squares of ``y ~ K x + v cp``, ``K`` in ``[lo, hi]``, ``v`` in ``[0, vp_max]``.

    ``gx = <x,x>``, ``gxc = <x,cp>``, ``gcc = <cp,cp>``, ``a = <x,y>``, ``e = <cp,y>`` (any
    broadcastable shapes). Returns ``(K, v, rss - <y,y>)``: the constant ``<y,y>`` is left out.

    Standard model: ``K = clip(a / gx, lo, hi)``. Extended model with ``gxc >= 0`` (a
    non-negative AIF and basis): ``g(K) = min_v rss(K, v)`` is convex and its derivative
    ``2 (K gx - a + gxc v*(K))``, ``v*(K) = clip((e - gxc K) / gcc, 0, vp_max)``, is the
    maximum of the ``v = 0`` line and the minimum of the ``v = vp_max`` and free-``v`` lines;
    its root is therefore ``min(K_0, max(K_m, K_free))`` and the box optimum is that root
    clipped to ``[lo, hi]`` (exact, ~3x fewer operations than enumerating the active sets).
    Any ``gxc < 0`` falls back to :func:`_solve_candidates`.
    """
    if not extended:
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.clip(np.where(gx > 0, a / np.where(gx > 0, gx, 1.0), 0.0), lo, hi)
        k = np.asarray(k)
        return k, np.zeros_like(k), np.asarray(k * (k * gx - 2.0 * a))
    if np.any(np.asarray(gxc) < 0) or np.any(np.asarray(gcc) <= 0):
        return _solve_candidates(gx, gxc, gcc, a, e, lo, hi, vp_max, extended)
    gx_s = np.where(gx > 0, gx, np.finfo(np.float64).tiny)
    det = gx * gcc - gxc**2
    num = a * gcc - gxc * e
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k_free = np.where(det > 0, num / np.where(det > 0, det, 1.0), np.where(num > 0, np.inf, -np.inf))
        k_zero = a / gx_s
        k_max = (a - gxc * vp_max) / gx_s
    k = np.clip(np.minimum(k_zero, np.maximum(k_max, k_free)), lo, hi)
    v = np.clip((e - gxc * k) / gcc, 0.0, vp_max)
    r = k * (k * gx + 2.0 * (v * gxc - a)) + v * (v * gcc - 2.0 * e)
    return np.asarray(k), np.asarray(v), np.asarray(r)


class _Tables(NamedTuple):
    """Model basis on a fine log-kep table, per candidate delay."""

    u: FloatArray  # (M,) log kep (kep in 1/min)
    basis: FloatArray  # (D, M, T) integral of cp(u) exp(-kep (t - u)) at the sample times, mM.min
    gx: FloatArray  # (D, M) <x, x>
    gxc: FloatArray  # (D, M) <x, cp>
    cp_t: FloatArray  # (D, T) plasma AIF at the sample times
    gcc: FloatArray  # (D,) <cp, cp>


def _sampled_basis(ta: FloatArray, aifs: FloatArray, kep: FloatArray, t: FloatArray) -> FloatArray:
    """``integral_0^t cp_d(u) exp(-kep (t - u)) du`` at the sample times ``t`` for every AIF row and kep.

    The recursion of :func:`pipeline.response.dce.exp_convolution` (exact for a piecewise-linear
    AIF), run once over the AIF grid for all AIFs and keps together (one Python step per AIF
    sample, not per AIF), keeping only the grid points that the linear interpolation to ``t``
    needs. Memory is ``D x K x 2T``, not ``D x K x T_aif``.

    Parameters
    ----------
    ta : ndarray, shape (T_aif,)
        AIF grid in minutes.
    aifs : ndarray, shape (D, T_aif)
        AIFs in mM.
    kep : ndarray, shape (K,)
        Rate constants in 1/min.
    t : ndarray, shape (T,)
        Sample times in minutes, within the AIF grid.

    Returns
    -------
    ndarray, shape (D, K, T)
        In mM.min.
    """
    same = ta.shape == t.shape and np.allclose(ta, t, rtol=0.0, atol=1e-9)
    n_d = aifs.shape[0]
    if same:
        need = np.ones(ta.size, dtype=bool)
    else:
        j, frac = _interp_index(t, ta)
        need = np.zeros(ta.size, dtype=bool)
        need[j] = need[j + 1] = True
    slot = np.cumsum(need) - 1
    store = np.zeros((int(need.sum()), n_d, kep.size))
    dts = np.round(np.diff(ta), 12)  # 1e-12 min: merges float jitter of uniform grids
    uniq, which = np.unique(dts, return_inverse=True)
    cached = uniq.size <= 64
    if cached:
        x_u = kep[None, :] * uniq[:, None]
        decay_u, p1_u, p2_u = np.exp(-x_u), uniq[:, None] * _phi1(x_u), uniq[:, None] * _phi2(x_u)
        q_u = p1_u - p2_u
    cols = np.ascontiguousarray(aifs.T)[:, :, None]  # (T_aif, D, 1)
    prev = np.zeros((n_d, kep.size))
    cur = np.empty_like(prev)
    tmp = np.empty_like(prev)
    for i in range(1, ta.size):
        if cached:
            u = which[i - 1]
            decay, q, p2 = decay_u[u], q_u[u], p2_u[u]
        else:
            x = kep * dts[i - 1]
            decay, p2 = np.exp(-x), dts[i - 1] * _phi2(x)
            q = dts[i - 1] * _phi1(x) - p2
        # out_i = decay out_{i-1} + cp_i p1 - (cp_i - cp_{i-1}) p2 = decay out_{i-1} + cp_i (p1 - p2) + cp_{i-1} p2
        np.multiply(decay, prev, out=cur)
        np.multiply(cols[i], q, out=tmp)
        cur += tmp
        np.multiply(cols[i - 1], p2, out=tmp)
        cur += tmp
        if need[i]:
            store[slot[i]] = cur
        prev, cur = cur, prev
    if not same:
        store = store[slot[j]] * (1.0 - frac)[:, None, None] + store[slot[j + 1]] * frac[:, None, None]
    return np.ascontiguousarray(store.transpose(1, 2, 0))  # (T, D, K) -> (D, K, T)


def _tables(ta: FloatArray, aifs: FloatArray, w: FloatArray | None, u: FloatArray, t: FloatArray) -> _Tables:
    """Basis functions of every (delay, kep) pair at the sample times (one recursion for all AIFs)."""
    kep = np.exp(u)
    group = max(1, _TABLE_GROUP_ELEMENTS // (2 * t.size * u.size))  # AIFs per recursion (memory bound)
    b = np.concatenate([_sampled_basis(ta, aifs[g:g + group], kep, t) for g in range(0, aifs.shape[0], group)])
    cp_t = np.stack([_to_t(c_d, w) for c_d in aifs])
    return _Tables(u, b, np.einsum("dmt,dmt->dm", b, b), np.einsum("dmt,dt->dm", b, cp_t), cp_t,
                   np.einsum("dt,dt->d", cp_t, cp_t))


class _Coarse(NamedTuple):
    """Per-(delay, coarse kep) constants of the level-1 closed-form solve, float32, shapes (D, C, 1)."""

    basis2: F32  # (D * C, T) twice the basis: one product gives 2 <x, y>
    gx: F32
    inv_gx: F32
    k_shift: F32  # gxc vp_max / gx: K_zero - K_max
    p: F32  # gcc / det (large where det <= 0)
    q: F32  # gxc / det
    gxc2: F32  # 2 gxc
    gxc_gcc: F32  # gxc / gcc
    gcc: F32  # (D, 1, 1)
    inv_gcc: F32  # (D, 1, 1)
    lo: F32  # (1, C, 1) Ktrans bounds
    hi: F32
    general: bool  # some gxc < 0 or gcc <= 0: enumerate the active sets instead


def _coarse(tab: _Tables, coarse: IntArray, lo_m: FloatArray, hi_m: FloatArray, vp_max: float) -> _Coarse:
    """Constants of the level-1 solve (computed once per fit), in float32.

    Level 1 only ranks kep candidates (levels 2-3 re-solve in float64), so single precision
    is enough there and halves its memory traffic. Constants are clipped to +-1e30 so that
    degenerate grid points (``gx = 0``, ``det = 0``) give huge finite values, never inf or NaN.
    """
    b = tab.basis[:, coarse, :]
    gx, gxc = tab.gx[:, coarse, None], tab.gxc[:, coarse, None]
    gcc = tab.gcc[:, None, None]
    general = bool(np.any(gxc < 0) or np.any(gcc <= 0))
    big = 1e30
    gcc_s = np.where(gcc > 0, gcc, 1.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv_gx = np.where(gx > 0, 1.0 / np.where(gx > 0, gx, 1.0), 0.0)
        det = gx * gcc - gxc**2
        inv_det = np.where(det > 1e-12 * gx * gcc_s, 1.0 / np.where(det > 0, det, 1.0), big)

    def f32(x: FloatArray) -> F32:
        return np.clip(x, -big, big).astype(np.float32)

    return _Coarse(f32(2.0 * b.reshape(-1, b.shape[2])), f32(gx), f32(inv_gx), f32(gxc * vp_max * inv_gx),
                   f32(gcc * inv_det), f32(gxc * inv_det), f32(2.0 * gxc), f32(gxc / gcc_s), f32(gcc), f32(1.0 / gcc_s),
                   f32(lo_m[coarse][None, :, None]), f32(hi_m[coarse][None, :, None]), general)


def _coarse_rss(a2: F32, e: F32, co: _Coarse, vp_max: float, extended: bool) -> F32:
    """``rss - <y,y>`` (float32) of the box-constrained solve at every (delay, coarse kep, curve).

    ``a2 = 2 <x, y>`` (D, C, N), ``e = <cp, y>`` (D, 1, N). Same solution as :func:`_solve`,
    with the per-grid constants precomputed and in-place operations (this is the hot loop).
    """
    if co.general:
        f64 = np.float64
        _, _, r = _solve_candidates(co.gx.astype(f64), co.gxc2.astype(f64) / 2.0, co.gcc.astype(f64),
                                    a2.astype(f64) / 2.0, e.astype(f64), co.lo.astype(f64), co.hi.astype(f64),
                                    vp_max, extended)
        return r.astype(np.float32)
    k = a2 * (0.5 * co.inv_gx)  # K_zero
    if extended:
        kf = a2 * (0.5 * co.p)
        kf -= co.q * e  # K_free
        np.maximum(kf, k - co.k_shift, out=kf)  # max(K_max, K_free)
        np.minimum(k, kf, out=k)
    np.maximum(k, co.lo, out=k)
    np.minimum(k, co.hi, out=k)
    r = k * co.gx
    r -= a2
    r *= k  # K (K gx - 2a)
    if extended:
        v = co.gxc_gcc * k
        np.subtract(e * co.inv_gcc, v, out=v)
        np.clip(v, 0.0, vp_max, out=v)
        t = co.gxc2 * k
        t += v * co.gcc
        t -= 2.0 * e
        t *= v  # v (v gcc - 2e + 2 K gxc)
        r += t
    return np.asarray(r, dtype=np.float32)


def _search_block(y: FloatArray, tab: _Tables, co: _Coarse, coarse: IntArray, lo_m: FloatArray, hi_m: FloatArray,
                  bounds: tuple[float, float, float, float], extended: bool,
                  n_refine: int) -> tuple[FloatArray, ...]:
    """Coarse-to-fine search of (delay, log kep) for a block of curves ``y`` (N, T).

    Level 1: every delay on the coarse kep grid. Level 2 (7 points, stride 4) for the
    ``n_refine`` delays of smallest level-1 residual; level 3 (9 adjacent points) and the
    parabolic vertex for the ``_FINAL_DELAYS`` best of those after level 2. The best fit is
    kept. Returns (K, v, rss, u, delay index) per curve.
    """
    n_d = tab.basis.shape[0]
    n = y.shape[0]
    rows = np.arange(n)
    yy = np.einsum("nt,nt->n", y, y)
    e_all = y @ tab.cp_t.T  # (N, D)
    # level 1: every delay x the coarse kep grid, one matrix product
    a2 = (co.basis2 @ y.T.astype(np.float32)).reshape(n_d, coarse.size, n)
    r = _coarse_rss(a2, e_all.T[:, None, :].astype(np.float32), co, bounds[3], extended)
    j_d = np.argmin(r, axis=1)  # (D, N) best coarse kep per delay
    m = min(n_refine, n_d)
    if m == n_d:
        di = np.repeat(np.arange(n_d), n)  # every delay, delay-major
    else:
        r_d = np.take_along_axis(r, j_d[:, None, :], axis=1)[:, 0, :]
        di = np.argsort(r_d, axis=0)[:m].reshape(-1)  # the m best delays of each curve, rank-major
    cols = np.tile(rows, m)
    e_n = e_all[cols, di]
    # level 2 for every (curve, delay) task, then keep the best _FINAL_DELAYS tasks of each curve
    idx, _, _, rr = _level(y[cols], tab, di, coarse[j_d[di, cols]], _LEVEL2, e_n, lo_m, hi_m, bounds[3], extended)
    i2 = np.argmin(rr, axis=1)
    task = np.arange(cols.size)
    j2, r2 = idx[task, i2], rr[task, i2]
    m3 = min(m, _FINAL_DELAYS)
    if m3 < m:
        keep = (np.argsort(r2.reshape(m, n), axis=0)[:m3] * n + rows).reshape(-1)
        cols, di, j2, e_n = cols[keep], di[keep], j2[keep], e_n[keep]
    k, v, r_best, u, d = _finish(y[cols], tab, di, j2, e_n, lo_m, hi_m, bounds, extended)
    pick = np.argmin(r_best.reshape(m3, n), axis=0) * n + rows
    return k[pick], v[pick], r_best[pick] + yy, u[pick], d[pick]


def _level(y: FloatArray, tab: _Tables, di: IntArray, centre: IntArray, offsets: IntArray, e_n: FloatArray,
           lo_m: FloatArray, hi_m: FloatArray, vp_max: float,
           extended: bool) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """Solve at table points ``centre + offsets`` (clipped) of delay ``di``, per task (row of ``y``).

    Returns (table indices, K, v, rss - <y,y>), each of shape (n_tasks, n_offsets).
    """
    idx = np.clip(centre[:, None] + offsets[None, :], 0, tab.u.size - 1)
    x = tab.basis[di[:, None], idx]  # (n, W, T)
    k, v, rr = _solve(tab.gx[di[:, None], idx], tab.gxc[di[:, None], idx], tab.gcc[di][:, None],
                      np.einsum("nwt,nt->nw", x, y), e_n[:, None], lo_m[idx], hi_m[idx], vp_max, extended)
    return idx, k, v, rr


def _finish(y: FloatArray, tab: _Tables, di: IntArray, j: IntArray, e_n: FloatArray, lo_m: FloatArray,
            hi_m: FloatArray, bounds: tuple[float, float, float, float], extended: bool) -> tuple[FloatArray, ...]:
    """Level 3 and the parabolic vertex around table index ``j`` in delay ``di``, per task (row of ``y``).

    Returns (K, v, rss - <y,y>, u, delay index as float) per task.
    """
    ktrans_max, ve_min, ve_max, vp_max = bounds
    n_m = tab.u.size
    rows = np.arange(y.shape[0])
    idx, k3, v3, r3 = _level(y, tab, di, j, _LEVEL3, e_n, lo_m, hi_m, vp_max, extended)
    i3 = np.argmin(r3, axis=1)
    j = idx[rows, i3]
    bk, bv, br, bu = k3[rows, i3], v3[rows, i3], r3[rows, i3], tab.u[j]
    # parabolic vertex in log kep, basis interpolated linearly between table points
    inner = np.clip(i3, 1, _LEVEL3.size - 2)
    r_lo, r_hi = r3[rows, inner - 1], r3[rows, inner + 1]
    denom = r_lo - 2.0 * br + r_hi
    ok = (i3 == inner) & (j > 0) & (j < n_m - 1) & (denom > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(ok, np.clip(0.5 * (r_lo - r_hi) / np.where(ok, denom, 1.0), -0.5, 0.5), 0.0)
    nb = np.clip(j + np.where(step >= 0, 1, -1), 0, n_m - 1)
    frac = np.abs(step)
    x = (1.0 - frac[:, None]) * tab.basis[di, j] + frac[:, None] * tab.basis[di, nb]  # (n, T)
    u_v = (1.0 - frac) * tab.u[j] + frac * tab.u[nb]
    kep_v = np.exp(u_v)
    k, v, rv = _solve(np.einsum("nt,nt->n", x, x), np.einsum("nt,nt->n", x, tab.cp_t[di]), tab.gcc[di],
                      np.einsum("nt,nt->n", x, y), e_n, ve_min * kep_v, np.minimum(ktrans_max, ve_max * kep_v),
                      vp_max, extended)
    better = ok & (rv < br)
    return (np.where(better, k, bk), np.where(better, v, bv), np.where(better, rv, br), np.where(better, u_v, bu),
            di.astype(np.float64))


def fit_tofts(t_min: ArrayLike, ct: ArrayLike, cp: ArrayLike, *, extended: bool = False,
              cp_t_min: ArrayLike | None = None, ktrans_max: float = 5.0, ve_min: float = 0.001,
              ve_max: float = 1.0, vp_max: float = 1.0, kep_range: tuple[float, float] = (1e-3, 1e3),
              n_kep: int = 401, delays_min: ArrayLike = (0.0,), chunk: int = 2048,
              refine_delays: int | None = None) -> FitResult:
    """Least-squares fit of the standard or extended Tofts model, vectorised over voxels.

    Variable projection: for a fixed ``kep`` the model is linear in ``(Ktrans, vp)``, so the
    box-constrained linear solution (``Ktrans`` in ``[ve_min kep, min(ktrans_max, ve_max kep)]``,
    ``vp`` in ``[0, vp_max]``) is exact (closed form) and shared basis functions serve every
    voxel. The basis is tabulated once, for every delay, at the sample times, on a fine
    log-spaced ``kep`` table (``4 (n_kep - 1) + 1`` points over ``kep_range``; one recursion
    over the AIF grid for all delays and keps). ``log kep`` and the delay are then searched
    coarse to fine for all voxels of a block at once:

    1. every delay x a coarse grid (every 16th table point): one matrix product per block;
    2. for the ``refine_delays`` delays of smallest level-1 residual of each voxel (all by
       default): 7 table points 4 apart around that delay's coarse minimum;
    3. for the 2 best delays after level 2: the 9 adjacent table points around the level-2
       minimum, then the parabolic vertex through the best point and its neighbours (basis
       interpolated linearly between table points, error ~1e-5 relative).

    No per-voxel Python loop. Each voxel costs about ``n_delays * (n_kep / 4 + 7) + 2 * 10``
    closed-form solves (``n_kep = 401``: ~108 for one delay) instead of a full grid search.
    With several ``delays_min``, the AIF is shifted by each (zero before the shift) and every
    voxel keeps the delay of smallest residual.

    Parameters
    ----------
    t_min : array_like, shape (T,)
        Sample times in minutes (bolus arrival of ``cp`` at its own t = 0).
    ct : array_like, shape (T,) or (N, T)
        Tissue concentration in mM; rows with a non-finite value give NaN parameters.
    cp : array_like, shape (T_aif,) or (D, T_aif)
        Plasma AIF in mM at ``t_min`` or at ``cp_t_min``. 1-D: shifted by each of
        ``delays_min`` (linear interpolation on its grid, zero before the shift: exact for
        shifts by whole grid steps). 2-D: one AIF per entry of ``delays_min``, already shifted
        by the caller (e.g. an analytic AIF evaluated at each delay); ``delays_min`` then only
        labels the rows in :attr:`FitResult.delay_min`.
    extended : bool
        Fit ``vp`` (extended Tofts) when True, else ``vp = 0``.
    cp_t_min : array_like, optional
        Finer AIF time grid in minutes (see :func:`tofts`).
    ktrans_max, ve_min, ve_max, vp_max : float
        Bounds (SPEC: Ktrans 0-5 /min, ve 0.001-1, vp 0-1).
    kep_range : (float, float)
        Searched kep interval in 1/min.
    n_kep : int
        Nominal grid size (>= 2): the search resolves ``log kep`` at least as finely as a
        grid of ``n_kep`` points would (table step = grid step / 4).
    delays_min : array_like
        Candidate AIF delays in minutes (e.g. the interval between the last pre-contrast
        phase and the detected arrival phase, in 1-2 s steps); the cost grows linearly with
        their number.
    chunk : int
        Maximum voxels per block (blocks are also capped at 2**19 delay x kep x voxel elements
        and 2**22 gathered basis samples: a few MB to 32 MB per temporary array).
    refine_delays : int, optional
        Delays per voxel taken to level 2 (the best at level 1); all when None. Fewer is
        faster with many delays but can miss the best delay when the coarse kep grid ranks
        neighbouring delays wrongly.

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
    if n_kep < 2 or chunk < 1 or (refine_delays is not None and refine_delays < 1):
        raise ValueError(f"n_kep must be >= 2, chunk >= 1 and refine_delays >= 1; got {n_kep}, {chunk} and "
                         f"{refine_delays}")
    t = np.asarray(t_min, dtype=np.float64).reshape(-1)
    y_all = np.asarray(ct, dtype=np.float64)
    single = y_all.ndim == 1
    y_all = np.atleast_2d(y_all)
    if y_all.shape[1] != t.size:
        raise ValueError(f"ct has {y_all.shape[1]} samples per curve but t_min has {t.size}")
    delays = np.asarray(delays_min, dtype=np.float64).reshape(-1)
    if delays.size == 0:
        raise ValueError("delays_min must hold at least one delay (0.0 for none)")
    c_all = np.asarray(cp, dtype=np.float64)
    if c_all.ndim == 2:
        if c_all.shape[0] != delays.size:
            raise ValueError(f"a 2-D cp needs one AIF per delay: {c_all.shape[0]} rows for {delays.size} delays")
        ta, _, w = _grids(t, c_all[0], cp_t_min)
        aifs = c_all
    else:
        ta, c, w = _grids(t, c_all, cp_t_min)
        aifs = np.stack([c if d == 0 else np.interp(ta - d, ta, c, left=0.0) for d in delays])
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(y_all).all(axis=1))
    y_all = np.where(finite[:, None], y_all, 0.0)
    n_table = _TABLE_PER_STEP * (n_kep - 1) + 1
    u = np.linspace(np.log(kep_range[0]), np.log(kep_range[1]), n_table)
    coarse = np.unique(np.append(np.arange(0, n_table, _COARSE_STRIDE), n_table - 1))
    bounds = (ktrans_max, ve_min, ve_max, vp_max)
    kep = np.exp(u)
    lo_m, hi_m = ve_min * kep, np.minimum(ktrans_max, ve_max * kep)
    n = y_all.shape[0]
    res = {"k": np.full(n, np.nan), "v": np.full(n, np.nan), "r": np.full(n, np.inf), "u": np.full(n, np.nan),
           "d": np.zeros(n)}
    # delays in groups whose basis table (delays x kep table x T) stays under _TABLE_ELEMENTS
    per_group = max(1, _TABLE_ELEMENTS // (n_table * t.size))
    for g0 in range(0, delays.size, per_group):
        group = np.arange(g0, min(g0 + per_group, delays.size))
        tab = _tables(ta, aifs[group], w, u, t)
        co = _coarse(tab, coarse, lo_m, hi_m, vp_max)
        n_refine = group.size if refine_delays is None else min(refine_delays, group.size)
        block = max(1, min(chunk, _BLOCK_ELEMENTS // (group.size * coarse.size),
                           _GATHER_ELEMENTS // (n_refine * _LEVEL3.size * t.size)))
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            k, v, r, uu, d = _search_block(y_all[sl], tab, co, coarse, lo_m, hi_m, bounds, extended, n_refine)
            better = r < res["r"][sl]
            for key, val in zip(("k", "v", "r", "u", "d"), (k, v, r, uu, group[d.astype(np.intp)]), strict=True):
                res[key][sl] = np.where(better, val, res[key][sl])
    kep_out = np.exp(res["u"])
    out = {
        "ktrans_per_min": res["k"],
        "ve": np.clip(res["k"] / kep_out, ve_min, ve_max),
        "vp": res["v"],
        "rmse": np.sqrt(np.maximum(res["r"], 0.0) / t.size),
        "kep_per_min": kep_out,
        "delay_min": delays[res["d"].astype(np.intp)],
    }
    for arr in out.values():
        arr[~finite] = np.nan
    if single:
        out = {name: np.asarray(arr[0]) for name, arr in out.items()}
    return FitResult(**out)
