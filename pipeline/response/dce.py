"""DCE-MRI quantities: Parker AIF, (extended) Tofts model, signal to concentration, curve shape.

The vectorised Tofts fit is in :mod:`pipeline.response.dce_fit`, the per-region Ktrans from DCE
signal phases in :mod:`pipeline.response.dce_region`.

Units: time in minutes for the pharmacokinetic model (``t_min``), seconds for curve descriptors
(``t_s``); concentrations in mM; ``Ktrans`` and ``kep`` in 1/min; ``ve`` and ``vp`` are volume
fractions.

Example
-------
>>> import numpy as np
>>> t = np.linspace(0.0, 6.0, 181)
>>> cp = parker_aif(t)
>>> ct = tofts(t, cp, 0.25, 0.4, 0.05)
>>> from pipeline.response.dce_fit import fit_tofts
>>> fit = fit_tofts(t, ct, cp, extended=True)
>>> round(float(fit.ktrans_per_min), 3), round(float(fit.ve), 3), round(float(fit.vp), 3)
(0.25, 0.4, 0.05)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: Parker et al., MRM 2006 (doi:10.1002/mrm.21066), Table 1: whole-blood population AIF.
PARKER = {"A1": 0.809, "A2": 0.330, "T1": 0.17046, "T2": 0.365, "sigma1": 0.0563,
          "sigma2": 0.132, "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483}


def parker_blood(t_min: ArrayLike, *, delay_min: float = 0.0) -> FloatArray:
    """Parker population AIF in whole blood, ``Cb(t)`` in mM (SPEC section 4).

    Parameters
    ----------
    t_min : array_like
        Time in minutes; ``t = delay_min`` is bolus arrival.
    delay_min : float
        Bolus arrival time in minutes; ``Cb = 0`` before it.

    Returns
    -------
    ndarray
        Blood concentration in mM, same shape as ``t_min``.
    """
    t = np.asarray(t_min, dtype=np.float64) - delay_min
    tc = np.maximum(t, 0.0)
    p = PARKER
    cb = np.zeros_like(tc)
    for a, mu, sd in ((p["A1"], p["T1"], p["sigma1"]), (p["A2"], p["T2"], p["sigma2"])):
        cb += a / (sd * np.sqrt(2.0 * np.pi)) * np.exp(-((tc - mu) ** 2) / (2.0 * sd**2))
    cb += p["alpha"] * np.exp(-p["beta"] * tc) / (1.0 + np.exp(-p["s"] * (tc - p["tau"])))
    return np.where(t < 0.0, 0.0, cb)


def parker_aif(t_min: ArrayLike, hct: float = 0.42, *, delay_min: float = 0.0) -> FloatArray:
    """Parker population AIF in plasma, ``Cp = Cb / (1 - Hct)`` in mM.

    Parameters
    ----------
    t_min : array_like
        Time in minutes after bolus arrival (plus ``delay_min``).
    hct : float
        Haematocrit, in [0, 1) (setting ``hematocrit``, 0.42). ``hct=0`` returns whole blood.
    delay_min : float
        Bolus arrival time in minutes.

    Returns
    -------
    ndarray
        Plasma concentration in mM.

    Raises
    ------
    ValueError
        If ``hct`` is outside [0, 1).
    """
    if not 0.0 <= hct < 1.0:
        raise ValueError(f"hct (haematocrit) must be in [0, 1), got {hct}")
    return parker_blood(t_min, delay_min=delay_min) / (1.0 - hct)


def _phi1(x: FloatArray) -> FloatArray:
    """(1 - exp(-x)) / x, exact near 0."""
    small = x < 1e-6
    xs = np.where(small, 1.0, x)
    return np.where(small, 1.0 - x / 2.0 + x * x / 6.0, -np.expm1(-xs) / xs)


def _phi2(x: FloatArray) -> FloatArray:
    """(1 - exp(-x) (1 + x)) / x**2, exact near 0."""
    small = x < 1e-3
    xs = np.where(small, 1.0, x)
    series = 0.5 - x / 3.0 + x * x / 8.0 - x**3 / 30.0
    return np.where(small, series, (-np.expm1(-xs) - xs * np.exp(-xs)) / (xs * xs))


def exp_convolution(t_min: FloatArray, cp: FloatArray, kep: FloatArray) -> FloatArray:
    """``integral_0^t cp(u) exp(-kep (t - u)) du`` for every ``kep``, cp piecewise linear.

    Exact for a piecewise-linear ``cp`` on any (non-uniform) sampling: the integral over each
    interval is computed in closed form and carried forward recursively (no resampling).

    Parameters
    ----------
    t_min : ndarray, shape (T,)
        Sample times in minutes, increasing.
    cp : ndarray, shape (T,)
        Input function in mM at ``t_min``.
    kep : ndarray, shape (K,)
        Rate constants in 1/min (>= 0).

    Returns
    -------
    ndarray, shape (K, T)
        In mM.min.
    """
    k = np.asarray(kep, dtype=np.float64).reshape(-1)
    out = np.zeros((t_min.size, k.size))
    dts = np.round(np.diff(t_min), 12)  # 1e-12 min: merges float jitter of uniform grids
    uniq, which = np.unique(dts, return_inverse=True)
    cached = uniq.size <= 64  # (near-)uniform sampling: decay factors computed once per step size
    if cached:
        x_u = k[None, :] * uniq[:, None]
        decay_u, p1_u, p2_u = np.exp(-x_u), uniq[:, None] * _phi1(x_u), uniq[:, None] * _phi2(x_u)
    for i in range(1, t_min.size):
        if cached:
            j = which[i - 1]
            decay, p1, p2 = decay_u[j], p1_u[j], p2_u[j]
        else:
            dt = dts[i - 1]
            x = k * dt
            decay, p1, p2 = np.exp(-x), dt * _phi1(x), dt * _phi2(x)
        out[i] = decay * out[i - 1] + cp[i] * p1 - (cp[i] - cp[i - 1]) * p2
    return out.T


def _interp_index(t_target: FloatArray, t_source: FloatArray) -> tuple[NDArray[np.intp], FloatArray]:
    """Left neighbour index ``j`` and weight ``frac`` of ``t_source[j + 1]`` for linear interpolation.

    Raises
    ------
    ValueError
        If ``t_source`` does not cover ``t_target``.
    """
    if t_target[0] < t_source[0] - 1e-9 or t_target[-1] > t_source[-1] + 1e-9:
        raise ValueError("cp_t_min must cover t_min: the AIF grid "
                         f"[{t_source[0]}, {t_source[-1]}] min does not span [{t_target[0]}, {t_target[-1]}]")
    j = np.clip(np.searchsorted(t_source, t_target, side="right") - 1, 0, t_source.size - 2)
    frac = np.clip((t_target - t_source[j]) / (t_source[j + 1] - t_source[j]), 0.0, 1.0)
    return j, frac


def _interp_matrix(t_target: FloatArray, t_source: FloatArray) -> FloatArray:
    """Dense (T_target, T_source) linear-interpolation matrix."""
    j, frac = _interp_index(t_target, t_source)
    w = np.zeros((t_target.size, t_source.size))
    rows = np.arange(t_target.size)
    w[rows, j] = 1.0 - frac
    w[rows, j + 1] += frac
    return w


def _grids(t_min: ArrayLike, cp: ArrayLike,
           cp_t_min: ArrayLike | None) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """(AIF grid, AIF, interpolation matrix to ``t_min`` or None when the grids coincide)."""
    t = np.asarray(t_min, dtype=np.float64).reshape(-1)
    c = np.asarray(cp, dtype=np.float64).reshape(-1)
    ta = t if cp_t_min is None else np.asarray(cp_t_min, dtype=np.float64).reshape(-1)
    if c.shape != ta.shape:
        raise ValueError(f"cp has {c.size} samples but its time grid has {ta.size}")
    if ta.size < 2 or np.any(np.diff(ta) <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError("time grids must be strictly increasing with at least two samples")
    if ta.shape == t.shape and np.allclose(ta, t, rtol=0.0, atol=1e-9):
        return ta, c, None
    return ta, c, _interp_matrix(t, ta)


def _to_t(x: FloatArray, w: FloatArray | None) -> FloatArray:
    """Curves (..., T_aif) on the AIF grid -> (..., T) at the sample times."""
    return x if w is None else np.asarray(x @ w.T)


def tofts(t_min: ArrayLike, cp: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike, vp: ArrayLike = 0.0,
          *, cp_t_min: ArrayLike | None = None) -> FloatArray:
    """Standard (``vp = 0``) or extended Tofts tissue concentration.

    ``Ct(t) = vp Cp(t) + Ktrans integral_0^t Cp(u) exp(-kep (t - u)) du``, ``kep = Ktrans / ve``.

    Parameters
    ----------
    t_min : array_like, shape (T,)
        Output times in minutes.
    cp : array_like
        Plasma input function in mM, sampled at ``t_min`` or at ``cp_t_min``.
    ktrans_per_min, ve, vp : float or array_like, shape (N,)
        Parameters (1/min, fraction, fraction); arrays give N curves.
    cp_t_min : array_like, optional
        Finer AIF grid in minutes; the model is integrated on it and interpolated to ``t_min``
        (use it for coarse DCE sampling of a sharp AIF).

    Returns
    -------
    ndarray, shape (T,) or (N, T)
        Tissue concentration in mM.

    Raises
    ------
    ValueError
        If ``ve <= 0`` or the grids are inconsistent.
    """
    ta, c, w = _grids(t_min, cp, cp_t_min)
    kt, v_e, v_p = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (ktrans_per_min, ve, vp)))
    scalar = kt.ndim == 0
    kt, v_e, v_p = (a.reshape(-1) for a in (kt, v_e, v_p))
    if np.any(v_e <= 0):
        raise ValueError("ve must be > 0 (kep = Ktrans / ve)")
    fine = kt[:, None] * exp_convolution(ta, c, kt / v_e) + v_p[:, None] * c[None, :]
    out = _to_t(fine, w)
    return out[0] if scalar else out


def signal_to_concentration(s: ArrayLike, s0_pre: ArrayLike, *, tr_s: float, flip_deg: float,
                            t10_s: ArrayLike, r1_per_mM_s: float = 4.5) -> FloatArray:
    """Concentration from spoiled gradient-echo signal (SPGR steady state).

    ``S = M0 sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR R1)``,
    ``R1 = R10 + r1 C``. ``M0`` is solved from the pre-contrast signal ``s0_pre`` at
    ``R10 = 1 / t10_s``; then ``E1 = (M0 sin a - S) / (M0 sin a - S cos a)``.

    Parameters
    ----------
    s : array_like
        Signal (any shape; broadcast against ``s0_pre`` and ``t10_s``).
    s0_pre : array_like
        Mean pre-contrast signal, same units as ``s``.
    tr_s : float
        Repetition time in seconds.
    flip_deg : float
        Flip angle in degrees.
    t10_s : array_like
        Pre-contrast T1 in seconds (T1 map or assumed, setting ``assumed_t10_ms`` / 1000).
    r1_per_mM_s : float
        Longitudinal relaxivity in 1/(mM s) (setting ``relaxivity_per_mm_s``).

    Returns
    -------
    ndarray
        Concentration in mM; NaN where the signal is outside the model's range (``S`` at or
        above the ``TR R1 -> inf`` limit, or ``s0_pre <= 0``).

    Raises
    ------
    ValueError
        If TR, T10 or r1 is not positive or the flip angle is not in (0, 180) degrees.
    """
    t10 = np.asarray(t10_s, dtype=np.float64)
    if tr_s <= 0 or np.any(t10 <= 0) or r1_per_mM_s <= 0 or not 0 < flip_deg < 180:
        raise ValueError(f"need tr_s > 0, t10_s > 0, r1_per_mM_s > 0 and 0 < flip_deg < 180; got "
                         f"tr_s={tr_s}, flip_deg={flip_deg}, r1_per_mM_s={r1_per_mM_s}")
    a = np.deg2rad(flip_deg)
    sig = np.asarray(s, dtype=np.float64)
    s0 = np.asarray(s0_pre, dtype=np.float64)
    e10 = np.exp(-tr_s / t10)
    with np.errstate(divide="ignore", invalid="ignore"):
        m0_sin = s0 * (1.0 - np.cos(a) * e10) / (1.0 - e10)
        e1 = (m0_sin - sig) / (m0_sin - sig * np.cos(a))
        r1 = -np.log(e1) / tr_s
        conc = (r1 - 1.0 / t10) / r1_per_mM_s
    valid = (s0 > 0) & (e1 > 0) & (e1 < 1) & np.isfinite(conc)
    return np.asarray(np.where(valid, conc, np.nan))


def concentration_to_signal(conc: ArrayLike, m0: ArrayLike, *, tr_s: float, flip_deg: float,
                            t10_s: ArrayLike, r1_per_mM_s: float = 4.5) -> FloatArray:
    """SPGR signal for a concentration (inverse of :func:`signal_to_concentration`), same units."""
    a = np.deg2rad(flip_deg)
    r1 = 1.0 / np.asarray(t10_s, dtype=np.float64) + r1_per_mM_s * np.asarray(conc, dtype=np.float64)
    e1 = np.exp(-tr_s * r1)
    return np.asarray(np.asarray(m0, dtype=np.float64) * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1))


class CurveDescriptors(NamedTuple):
    """Semi-quantitative shape of one enhancement curve.

    Attributes
    ----------
    max_re : float
        Maximum relative enhancement ``(S - S_pre) / S_pre`` (dimensionless).
    time_to_peak_s : float
        Peak time minus bolus-arrival time, in s (NaN without arrival).
    wash_in_pct_per_s : float
        Steepest RE rise between consecutive phases from the phase before arrival up to the
        peak, in % per s (NaN without arrival).
    iauc60 : float
        Area under the RE curve over the 60 s after arrival (trapezoids on the linearly
        interpolated curve), in RE x s; shorter when the series ends earlier.
    """

    max_re: float
    time_to_peak_s: float
    wash_in_pct_per_s: float
    iauc60: float


def curve_descriptors(curve: ArrayLike, t_s: ArrayLike, s_pre: float, *, noise_sigma: float = 0.0,
                      arrival_s: float | None = None) -> CurveDescriptors:
    """Maximum RE, time to peak, wash-in slope and iAUC60 of a signal curve.

    Parameters
    ----------
    curve : array_like, shape (T,)
        Signal per phase (voxel or region mean).
    t_s : array_like, shape (T,)
        Phase times in seconds, increasing.
    s_pre : float
        Pre-contrast signal (> 0).
    noise_sigma : float
        Noise sigma of ``curve`` (signal units); arrival is the first phase with
        ``S > s_pre + 3 noise_sigma`` (SPEC) unless ``arrival_s`` is given.
    arrival_s : float, optional
        Bolus arrival in seconds (e.g. from :func:`enhancement.relative_enhancement`); the
        first phase at or after it is used.

    Returns
    -------
    CurveDescriptors

    Raises
    ------
    ValueError
        If ``s_pre <= 0`` or the arrays do not match.
    """
    s = np.asarray(curve, dtype=np.float64).reshape(-1)
    t = np.asarray(t_s, dtype=np.float64).reshape(-1)
    if s.shape != t.shape or s.size < 2:
        raise ValueError(f"curve and t_s must have the same length >= 2, got {s.size} and {t.size}")
    if not s_pre > 0:
        raise ValueError(f"s_pre must be > 0, got {s_pre}")
    re = (s - s_pre) / s_pre
    max_re = float(re.max())
    if arrival_s is not None:
        after = np.nonzero(t >= arrival_s - 1e-9)[0]
    else:
        after = np.nonzero(s > s_pre + 3.0 * noise_sigma)[0]
    if after.size == 0:
        return CurveDescriptors(max_re, float("nan"), float("nan"), 0.0)
    a = int(after[0])
    peak = a + int(np.argmax(re[a:]))
    ttp = float(t[peak] - t[a])
    first = max(a, 1)
    if peak >= first:
        slopes = np.diff(re[first - 1:peak + 1]) / np.diff(t[first - 1:peak + 1])
        wash_in = float(100.0 * slopes.max())
    else:
        wash_in = float("nan")
    t_end = min(t[a] + 60.0, t[-1])
    grid = np.concatenate([t[(t >= t[a]) & (t < t_end)], [t_end]])
    vals = np.interp(grid, t, re)
    iauc = float(np.sum(np.diff(grid) * (vals[1:] + vals[:-1]) / 2.0)) if grid.size > 1 else 0.0
    return CurveDescriptors(max_re, ttp, wash_in, iauc)
