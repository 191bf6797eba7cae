"""Forward signal models used to render the phantom (an independent implementation of SPEC section 4).

The response package fits these models; the phantom only evaluates them forward, on a fine time grid,
so that a bug in the fitting code cannot hide behind the same bug here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Parker et al. 2006 population AIF, SPEC section 4 (t in minutes after bolus arrival).
_A = (0.809, 0.330)  # mM.min
_T = (0.17046, 0.365)  # min
_SIGMA = (0.0563, 0.132)  # min
_ALPHA, _BETA, _S, _TAU = 1.050, 0.1685, 38.078, 0.483


def parker_blood_millimolar(t_min: FloatArray) -> FloatArray:
    """Whole-blood gadolinium concentration (mM) of the Parker AIF; zero before arrival (t < 0)."""
    t = np.asarray(t_min, dtype=float)
    cb = np.zeros_like(t)
    for a, tn, sg in zip(_A, _T, _SIGMA, strict=True):
        cb += a / (sg * np.sqrt(2 * np.pi)) * np.exp(-((t - tn) ** 2) / (2 * sg**2))
    cb += _ALPHA * np.exp(-_BETA * t) / (1 + np.exp(-_S * (t - _TAU)))
    return np.where(t >= 0, cb, 0.0)


def tissue_concentration_millimolar(
    t_min: FloatArray, ktrans_per_min: float, ve: float, vp: float, hematocrit: float
) -> FloatArray:
    """Extended Tofts tissue concentration (mM): trapezoidal convolution on a fine grid (0.5 s steps)."""
    t = np.asarray(t_min, dtype=float)
    if ktrans_per_min <= 0:
        return vp * parker_blood_millimolar(t) / (1 - hematocrit)
    dt = 0.5 / 60.0
    fine = np.arange(min(0.0, t.min()), t.max() + dt, dt)
    cp = parker_blood_millimolar(fine) / (1 - hematocrit)
    kep = ktrans_per_min / ve
    kernel = np.exp(-kep * (fine - fine[0]))
    # trapezoidal rule: the full sum counts both end points of each integral once too often by half
    conv = (np.convolve(cp, kernel)[: fine.size] - 0.5 * (cp[0] * kernel + cp * kernel[0])) * dt
    ct = ktrans_per_min * conv + vp * cp
    return np.interp(t, fine, ct)


def spgr_signal(m0: float, t10_ms: float, conc_mM: FloatArray, tr_ms: float, flip_deg: float,
                r1_per_mM_s: float = 4.5) -> FloatArray:
    """Spoiled gradient-echo steady-state signal for a concentration curve."""
    r1 = 1000.0 / t10_ms + r1_per_mM_s * np.asarray(conc_mM, dtype=float)
    e1 = np.exp(-tr_ms / 1000.0 * r1)
    a = np.deg2rad(flip_deg)
    return m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
