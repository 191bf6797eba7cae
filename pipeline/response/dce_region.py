"""Per-region Tofts Ktrans from DCE signal phases (SPEC section 4, "DCE parameters").

Pure numpy: the signal phases, their times, a region mask and the acquisition parameters in;
one small frozen :class:`RegionTofts` out. Steps:

1. bolus arrival: given, or the first phase of the region's mean signal curve above
   ``S_pre + 3 sigma`` (sigma of that curve: the voxel noise / sqrt(n));
2. spoiled gradient-echo signal to concentration per voxel (T10 map, or the assumed T10),
   baseline = mean of the phases before arrival;
3. the region's median (or mean) concentration curve, fitted by the standard (default) or
   extended Tofts model with the Parker population AIF. The AIF start is searched in
   ``delay_step_s`` steps over the two phase intervals before the arrival phase
   (:func:`bolus_delays_min`), then in ``delay_refine_s`` steps around the best, the AIF being
   evaluated (not interpolated) at each candidate. Phases acquired after the fitted AIF start
   leave the baseline and the curve is refitted;
4. optionally every voxel is fitted too (AIF start within ``voxel_delay_window_s`` of the
   region's) and the medians of the voxel-wise parameters are reported.

The DICOM header gives the acquisition: RepetitionTime (0018,0080) in ms (``tr_s`` = value /
1000) and FlipAngle (0018,1314) in degrees.

Example
-------
>>> import numpy as np
>>> from pipeline.response.dce import concentration_to_signal, parker_aif, tofts
>>> t_s = np.arange(30) * 8.0
>>> fine = np.arange(0.0, t_s[-1] / 60 + 1e-9, 0.5 / 60)
>>> ct = tofts(t_s / 60, parker_aif(fine, delay_min=30.0 / 60), 0.2, 0.3, cp_t_min=fine)
>>> sig = concentration_to_signal(ct, 1000.0, tr_s=0.005, flip_deg=12.0, t10_s=1.0)
>>> phases = np.broadcast_to(sig[:, None, None, None], (30, 2, 2, 2)).copy()
>>> res = region_tofts(phases, t_s, np.ones((2, 2, 2), bool), tr_s=0.005, flip_deg=12.0, noise_sigma=1.0)
>>> res.reason, res.arrival_index, res.n_pre, round(res.ktrans_per_min, 3), round(res.ve, 3)
('', 5, 4, 0.2, 0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from pipeline.response.dce import FloatArray, parker_aif, signal_to_concentration
from pipeline.response.dce_fit import FitResult, fit_tofts
from pipeline.response.enhancement import detect_arrival, estimate_noise_sigma

#: Least fraction of the region's voxels with a valid concentration curve for a fit.
MIN_VALID_FRACTION = 0.5


@dataclass(frozen=True)
class RegionTofts:
    """Tofts parameters of one region (NaN and a ``reason`` when not computable).

    Attributes
    ----------
    ktrans_per_min : float
        Transfer constant in 1/min.
    ve : float
        Extravascular extracellular volume fraction.
    vp : float
        Plasma volume fraction (0 for the standard model).
    kep_per_min : float
        ``Ktrans / ve`` in 1/min.
    rmse_mmol_per_l : float
        Root-mean-square residual of the region-curve fit in mM (voxel-wise mode: the median
        of the voxel residuals).
    r_squared : float
        ``1 - RSS / TSS`` of the region-curve fit (fit quality; NaN for a flat curve).
    n_voxels : int
        Voxels in the region mask.
    n_valid : int
        Voxels whose concentration curve was valid (used in the fit).
    arrival_index : int
        Bolus-arrival phase (given, or detected on the region's signal curve); -1 if unknown.
    arrival_detected : bool
        True when the arrival was given or detected above ``S_pre + 3 sigma``.
    n_pre : int
        Phases averaged into the pre-contrast signal: those before the arrival phase, less any
        acquired after the start of the fitted AIF (0 when not computed).
    delay_s : float
        Start of the Parker AIF retained by the fit, in seconds after the first phase.
    model : str
        ``"tofts"`` or ``"extended_tofts"``.
    method : str
        ``"median_curve"``, ``"mean_curve"`` or ``"voxelwise_median"``.
    reason : str
        Empty when computed, else why not (empty region, no enhancement, invalid signal to
        concentration conversion ...).
    """

    ktrans_per_min: float
    ve: float
    vp: float
    kep_per_min: float
    rmse_mmol_per_l: float
    r_squared: float
    n_voxels: int
    n_valid: int
    arrival_index: int
    arrival_detected: bool
    n_pre: int
    delay_s: float
    model: str
    method: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the parameters were computed."""
        return not self.reason


def bolus_delays_min(times_s: ArrayLike, arrival_index: int, *, step_s: float = 1.0) -> FloatArray:
    """Candidate starts of the population AIF for a detected arrival phase, in minutes.

    The AIF starts before the first phase that shows enhancement and, unless the arrival was
    detected late, after the phase before the previous one: candidates run from
    ``t[arrival - 2]`` (``t[0]`` at the start of the series) to ``t[arrival]`` in ``step_s``
    steps, both ends included, measured from ``t[0]``.

    Parameters
    ----------
    times_s : array_like, shape (T,)
        Phase times in seconds, increasing.
    arrival_index : int
        Bolus-arrival phase, in ``[0, T)``.
    step_s : float
        Candidate spacing in seconds (> 0).

    Returns
    -------
    ndarray
        Candidate delays in minutes after ``t[0]``, increasing.

    Raises
    ------
    ValueError
        If ``arrival_index`` is outside the series or ``step_s <= 0``.
    """
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    if not 0 <= arrival_index < t.size or step_s <= 0:
        raise ValueError(f"need 0 <= arrival_index < {t.size} and step_s > 0, got {arrival_index} and {step_s}")
    lo, hi = t[max(arrival_index - 2, 0)] - t[0], t[arrival_index] - t[0]
    n = max(1, math.ceil((hi - lo) / step_s - 1e-9))
    return np.asarray(np.linspace(lo, hi, n + 1) / 60.0)


def _concentration(sig: FloatArray, n_pre: int, t10_ms: FloatArray, *, tr_s: float, flip_deg: float,
                   r1_per_mM_s: float) -> FloatArray:
    """Concentration curves (N, T) in mM from signal curves, baseline = mean of phases ``[0, n_pre)``.

    NaN rows where T10 is not a positive number; NaN samples where the SPGR inversion fails.
    """
    good = np.isfinite(t10_ms) & (t10_ms > 0)
    conc = np.full(sig.shape, np.nan)
    if good.any():
        conc[good] = signal_to_concentration(sig[good], sig[good, :n_pre].mean(axis=1, keepdims=True), tr_s=tr_s,
                                             flip_deg=flip_deg, t10_s=t10_ms[good, None] / 1000.0,
                                             r1_per_mM_s=r1_per_mM_s)
    return conc


def _failed(reason: str, n_voxels: int, n_valid: int, arrival: int, detected: bool, model: str,
            method: str) -> RegionTofts:
    nan = float("nan")
    return RegionTofts(nan, nan, nan, nan, nan, nan, n_voxels, n_valid, arrival, detected, 0, nan, model, method,
                       reason)


def region_tofts(
    phases: ArrayLike,
    times_s: ArrayLike,
    mask: ArrayLike,
    *,
    tr_s: float,
    flip_deg: float,
    t10_ms: ArrayLike | None = None,
    assumed_t10_ms: float = 1000.0,
    r1_per_mM_s: float = 4.5,
    hematocrit: float = 0.42,
    arrival_index: int | None = None,
    noise_sigma: float | None = None,
    extended: bool = False,
    statistic: Literal["median", "mean"] = "median",
    voxelwise: bool = False,
    delay_step_s: float = 1.0,
    delay_refine_s: float = 0.1,
    voxel_delay_window_s: float = 2.0,
    voxel_delay_step_s: float = 0.5,
    aif_step_s: float = 0.5,
    ktrans_max_per_min: float = 5.0,
    ve_min: float = 0.001,
    ve_max: float = 1.0,
    vp_max: float = 1.0,
) -> RegionTofts:
    """Tofts Ktrans, ve (and vp) of a region from its DCE signal.

    Parameters
    ----------
    phases : array_like, shape (T, z, y, x)
        Signal of every phase, in acquisition order (any signal units; T >= 3).
    times_s : array_like, shape (T,)
        Phase times in seconds, strictly increasing.
    mask : array_like of bool, shape (z, y, x)
        The region (residual tissue, ablation zone ...).
    tr_s : float
        Repetition time in seconds (DICOM RepetitionTime (0018,0080) is in ms: divide by 1000).
    flip_deg : float
        Flip angle in degrees (DICOM FlipAngle (0018,1314)).
    t10_ms : array_like, optional
        Pre-contrast T1 map in ms, shape (z, y, x) (or a scalar); ``assumed_t10_ms`` when None.
    assumed_t10_ms : float
        T10 used without a map (setting ``assumed_t10_ms``, 1000 ms).
    r1_per_mM_s : float
        Contrast-agent relaxivity in 1/(mM s) (setting ``relaxivity_per_mm_s``, 4.5).
    hematocrit : float
        Haematocrit for the plasma AIF ``Cp = Cb / (1 - Hct)`` (setting, 0.42).
    arrival_index : int, optional
        Bolus-arrival phase (first enhanced phase, >= 1); detected on the region's mean signal
        curve as the first phase above ``S_pre + 3 sigma_curve`` when None.
    noise_sigma : float, optional
        Voxel noise standard deviation in signal units; estimated from the first two phases
        (:func:`pipeline.response.enhancement.estimate_noise_sigma`) when None. The region
        curve's sigma is ``noise_sigma / sqrt(n_voxels)``.
    extended : bool
        Extended Tofts (fits ``vp``) instead of standard Tofts.
    statistic : {"median", "mean"}
        Per-phase statistic of the voxel concentration curves that forms the region curve.
    voxelwise : bool
        Also fit every valid voxel and report the medians of the voxel-wise ``Ktrans``, ``ve``,
        ``vp``, ``kep`` and residual. Each voxel searches its AIF start within
        ``voxel_delay_window_s`` of the region curve's (the median curve of a heterogeneous
        region is not itself a Tofts curve: its AIF start can be off by a second or so).
    delay_step_s : float
        Spacing of the AIF-start candidates over the arrival window (:func:`bolus_delays_min`).
    delay_refine_s : float
        Spacing of the second-stage candidates, within ``delay_step_s`` of the best first-stage
        one. The AIF is evaluated analytically at every candidate (no interpolation): with
        10-20 s phases, Ktrans moves by ~10 % per second of AIF shift when vp > 0.
    voxel_delay_window_s, voxel_delay_step_s : float
        Voxel-wise AIF-start search: region start +- the window, in steps (seconds); a window
        of 0 fixes every voxel to the region's start.
    aif_step_s : float
        Sampling of the AIF on which the model is integrated, in seconds.
    ktrans_max_per_min, ve_min, ve_max, vp_max : float
        Fit bounds (SPEC: Ktrans 0-5 /min, ve 0.001-1, vp 0-1).

    Returns
    -------
    RegionTofts
        NaN parameters and a ``reason`` when the region is empty, shows no enhancement, or
        fewer than half of its voxels give a valid concentration curve (non-positive
        pre-contrast signal or T10, signal beyond the SPGR model's range).

    Raises
    ------
    ValueError
        If the shapes do not match, ``times_s`` is not strictly increasing, ``arrival_index``
        is outside ``[1, T)``, ``statistic`` is unknown or an acquisition parameter is invalid.
    """
    data = np.asarray(phases, dtype=np.float64)
    t_s = np.asarray(times_s, dtype=np.float64).reshape(-1)
    roi = np.asarray(mask, dtype=bool)
    if data.ndim != 4 or data.shape[0] < 3:
        raise ValueError(f"phases must have shape (T, z, y, x) with T >= 3, got {data.shape}")
    if t_s.shape != (data.shape[0],) or np.any(np.diff(t_s) <= 0):
        raise ValueError(f"times_s must be {data.shape[0]} strictly increasing times")
    if roi.shape != data.shape[1:]:
        raise ValueError(f"mask shape {roi.shape} does not match the volume shape {data.shape[1:]}")
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    if arrival_index is not None and not 1 <= arrival_index < data.shape[0]:
        raise ValueError(f"arrival_index must be in [1, {data.shape[0]}), got {arrival_index}")
    if min(delay_step_s, delay_refine_s, aif_step_s, voxel_delay_step_s) <= 0 or voxel_delay_window_s < 0:
        raise ValueError("delay_step_s, delay_refine_s, voxel_delay_step_s and aif_step_s must be > 0 and "
                         f"voxel_delay_window_s >= 0, got {delay_step_s}, {delay_refine_s}, {voxel_delay_step_s}, "
                         f"{aif_step_s} and {voxel_delay_window_s}")
    if tr_s <= 0 or not 0 < flip_deg < 180 or r1_per_mM_s <= 0 or assumed_t10_ms <= 0:
        raise ValueError(f"need tr_s > 0, 0 < flip_deg < 180, r1_per_mM_s > 0 and assumed_t10_ms > 0; got "
                         f"tr_s={tr_s}, flip_deg={flip_deg}, r1_per_mM_s={r1_per_mM_s}, "
                         f"assumed_t10_ms={assumed_t10_ms}")
    model = "extended_tofts" if extended else "tofts"
    method = "voxelwise_median" if voxelwise else f"{statistic}_curve"
    n_vox = int(roi.sum())
    if n_vox == 0:
        given = -1 if arrival_index is None else arrival_index
        return _failed("empty region", 0, 0, given, arrival_index is not None, model, method)

    sig = data[:, roi].T  # (N, T)
    if arrival_index is None:
        sigma = noise_sigma if noise_sigma is not None else estimate_noise_sigma(data)
        arrival, detected = detect_arrival(sig.mean(axis=0), sigma / math.sqrt(n_vox))
        if not detected:
            return _failed("no enhancement: the region curve never exceeds S_pre + 3 sigma", n_vox, 0, -1,
                           False, model, method)
    else:
        arrival, detected = arrival_index, True

    t10 = np.full(n_vox, assumed_t10_ms) if t10_ms is None else np.broadcast_to(
        np.asarray(t10_ms, dtype=np.float64), roi.shape)[roi]
    t_min = (t_s - t_s[0]) / 60.0
    n_aif = max(2, math.ceil(t_min[-1] * 60.0 / aif_step_s - 1e-9) + 1)
    fine = np.linspace(0.0, t_min[-1], n_aif)

    def _fit_delays(curves: FloatArray, delays_min: FloatArray) -> FitResult:
        """Tofts fit with the Parker AIF evaluated (not interpolated) at each candidate start."""
        aifs = np.stack([parker_aif(fine, hematocrit, delay_min=float(d)) for d in delays_min])
        return fit_tofts(t_min, curves, aifs, extended=extended, cp_t_min=fine, ktrans_max=ktrans_max_per_min,
                         ve_min=ve_min, ve_max=ve_max, vp_max=vp_max, delays_min=delays_min)

    def fit_curve(curve: FloatArray) -> FitResult:
        """Two-stage AIF-start search: ``delay_step_s`` over the window, then ``delay_refine_s`` around the best."""
        d0 = float(_fit_delays(curve, bolus_delays_min(t_s, arrival, step_s=delay_step_s)).delay_min)
        n_half = max(1, round(delay_step_s / delay_refine_s))
        near = d0 + np.arange(-n_half, n_half + 1) * delay_refine_s / 60.0
        return _fit_delays(curve, near[(near >= 0.0) & (near <= t_min[-1])])

    n_pre = arrival
    while True:
        conc = _concentration(sig, n_pre, t10, tr_s=tr_s, flip_deg=flip_deg, r1_per_mM_s=r1_per_mM_s)
        valid = np.isfinite(conc).all(axis=1)
        n_valid = int(valid.sum())
        if n_valid < MIN_VALID_FRACTION * n_vox:
            return _failed(f"signal to concentration invalid in {n_vox - n_valid} of {n_vox} voxels "
                           "(non-positive pre-contrast signal or T10, or signal beyond the SPGR range)",
                           n_vox, n_valid, arrival, detected, model, method)
        curves = conc[valid]
        curve = np.median(curves, axis=0) if statistic == "median" else curves.mean(axis=0)
        fit = fit_curve(curve)
        # phases acquired after the fitted AIF start are not pre-contrast: refit without them
        n_before = int(np.sum(t_min <= float(fit.delay_min) + 1e-9))
        if not 1 <= n_before < n_pre:
            break
        n_pre = n_before
    tss = float(np.sum((curve - curve.mean()) ** 2))
    r2 = 1.0 - float(fit.rmse) ** 2 * curve.size / tss if tss > 0 else float("nan")
    delay_min = float(fit.delay_min)
    k, ve, vp, kep, rmse = (float(fit.ktrans_per_min), float(fit.ve), float(fit.vp), float(fit.kep_per_min),
                            float(fit.rmse))
    if voxelwise:
        n_side = math.floor(voxel_delay_window_s / voxel_delay_step_s + 1e-9)
        local = delay_min + np.arange(-n_side, n_side + 1) * voxel_delay_step_s / 60.0
        vfit = _fit_delays(curves, local[(local >= 0.0) & (local <= t_min[-1])])
        k, ve, vp, kep, rmse = (float(np.median(p)) for p in (vfit.ktrans_per_min, vfit.ve, vfit.vp,
                                                               vfit.kep_per_min, vfit.rmse))
    return RegionTofts(k, ve, vp, kep, rmse, r_squared=r2, n_voxels=n_vox, n_valid=n_valid, arrival_index=arrival,
                       arrival_detected=detected, n_pre=n_pre, delay_s=delay_min * 60.0, model=model,
                       method=method)
