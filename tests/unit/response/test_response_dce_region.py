"""Per-region Tofts (pipeline.response.dce_region), validated on the phantom's own DCE signal model.

The phantom (pipeline/phantom/acquire.py, render.py, signal_models.py) renders its DCE series as
SPGR signal (TR 5 ms, flip 12 deg, r1 4.5 /mM/s) of an extended-Tofts tissue curve driven by the
Parker AIF (haematocrit 0.42) starting at ``injection = (n_pre - 0.5) dt +- 2 s``, x 10000 x a
smooth bias field, Rician noise sigma 8, stored as 12-bit integers. Tumour / residual tissue:
M0 1.0, T10 1200 ms, Ktrans U(0.15, 0.35) /min, ve U(0.3, 0.4), vp U(0.03, 0.06); the benign
rim: M0 0.9, T10 1000 ms, Ktrans 0.12 /min, ve 0.25, vp 0. The tests below render small regions
with that very code (``render.dce_curves``) and check the recovered Ktrans within OSIPI's
tolerance (0.005 /min + 10 %).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.phantom import anatomy as an
from pipeline.phantom import render as rd
from pipeline.response.dce import concentration_to_signal, parker_aif, tofts
from pipeline.response.dce_region import RegionTofts, bolus_delays_min, region_tofts

TR_S, FLIP_DEG = 0.005, 12.0  # the phantom's DCE acquisition (acquire.py: RepetitionTime 5 ms, FlipAngle 12)
# (M0, T10 ms, Ktrans /min, ve, vp) of the phantom's tumour (1.0, 1200, 0.25, 0.35, 0.05) and rim (0.9, 1000, 0.12,
# 0.25, 0) in render.DCE_PARAMS
TUMOUR = tuple(float(v) for v in rd.DCE_PARAMS[an.TUMOUR])
RIM = tuple(float(v) for v in rd.DCE_PARAMS[an.RIM])


def _osipi_ok(ktrans: float, ref: float) -> bool:
    return abs(ktrans - ref) <= 0.005 + 0.1 * ref


def _phantom_region(tissue: tuple[float, ...], *, n_phases: int = 25, dt_s: float = 12.0, seed: int = 0,
                    shape: tuple[int, int, int] = (4, 6, 6), noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(T, z, y, x) signal of one tissue rendered like acquire.py does it, and the phase times (s)."""
    rng = np.random.default_rng(seed)
    n_pre = int(rng.integers(3, 6)) if n_phases >= 20 else 3
    times = np.arange(n_phases, dtype=np.float64) * dt_s
    injection = (n_pre - 0.5) * dt_s + float(rng.uniform(-2.0, 2.0))
    curve = rd.dce_curves(np.array([tissue], dtype=np.float64), times, injection, TR_S * 1000.0, FLIP_DEG)[0]
    bias = rng.uniform(0.9, 1.1, shape)  # smooth field sampled on a small region: a per-voxel gain
    dyn = curve[:, None, None, None] * 10000.0 * bias[None]
    if noise:
        dyn = np.clip(np.rint(rd.rician(dyn, 8.0, rng)), 0, 4095)
    return dyn, times


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_tumour_extended_tofts_with_t10_map_within_osipi_tolerance(seed: int) -> None:
    dyn, times = _phantom_region(TUMOUR, seed=seed)
    res = region_tofts(dyn, times, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=TUMOUR[1],
                       extended=True)
    assert res.ok and res.model == "extended_tofts" and res.method == "median_curve"
    assert _osipi_ok(res.ktrans_per_min, TUMOUR[2]), res
    assert abs(res.ve - TUMOUR[3]) <= 0.05 and abs(res.vp - TUMOUR[4]) <= 0.025
    assert res.n_voxels == res.n_valid == dyn[0].size and res.r_squared > 0.99


def test_phantom_tumour_voxelwise_median_within_osipi_tolerance() -> None:
    dyn, times = _phantom_region(TUMOUR, seed=3)
    res = region_tofts(dyn, times, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=TUMOUR[1],
                       extended=True, voxelwise=True)
    assert res.method == "voxelwise_median"
    assert _osipi_ok(res.ktrans_per_min, TUMOUR[2]), res
    assert abs(res.ve - TUMOUR[3]) <= 0.05


@pytest.mark.parametrize(("n_phases", "dt_s"), [(25, 12.0), (8, 20.0)])  # the full and sample profiles
def test_phantom_rim_standard_tofts_with_assumed_t10(n_phases: int, dt_s: float) -> None:
    dyn, times = _phantom_region(RIM, n_phases=n_phases, dt_s=dt_s, seed=4)
    res = region_tofts(dyn, times, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG)  # T10 1000 ms
    assert res.ok and res.vp == 0.0
    assert _osipi_ok(res.ktrans_per_min, RIM[2]), res
    assert abs(res.ve - RIM[3]) <= 0.05


def test_phantom_tumour_is_biased_by_the_assumed_t10_and_by_standard_tofts() -> None:
    """Characterisation: the phantom's tumour T10 (1200 ms) and vp (0.05) are not the defaults.

    The SPEC's assumed T10 (1000 ms) overestimates the tumour's Ktrans by about half, and the
    standard model (vp = 0) by about a fifth, even with the right T10.
    """
    dyn, times = _phantom_region(TUMOUR, seed=5)
    mask = np.ones(dyn.shape[1:], bool)
    assumed = region_tofts(dyn, times, mask, tr_s=TR_S, flip_deg=FLIP_DEG, extended=True)
    standard = region_tofts(dyn, times, mask, tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=TUMOUR[1])
    assert assumed.ktrans_per_min > 1.3 * TUMOUR[2]
    assert standard.ktrans_per_min > 1.1 * TUMOUR[2]


def _tofts_phases(ktrans: float, ve: float, vp: float, start_s: float, *, n: int = 30, dt_s: float = 8.0,
                  shape: tuple[int, int, int] = (2, 3, 3)) -> tuple[np.ndarray, np.ndarray]:
    t_s = np.arange(n, dtype=np.float64) * dt_s
    fine = np.linspace(0.0, t_s[-1] / 60.0, 4 * n * int(dt_s) + 1)
    ct = tofts(t_s / 60.0, parker_aif(fine, delay_min=start_s / 60.0), ktrans, ve, vp, cp_t_min=fine)
    sig = concentration_to_signal(ct, 1000.0, tr_s=TR_S, flip_deg=FLIP_DEG, t10_s=1.0)
    return np.broadcast_to(sig[:, None, None, None], (n, *shape)).copy(), t_s


def test_noise_free_recovery_arrival_and_pre_contrast_refit() -> None:
    # the AIF starts 2 s before phase 4, which barely enhances: arrival is detected at phase 5,
    # and the fitted AIF start moves phase 4 out of the pre-contrast baseline
    dyn, t_s = _tofts_phases(0.2, 0.3, 0.0, 30.0)
    res = region_tofts(dyn, t_s, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG, noise_sigma=1.0)
    assert (res.arrival_index, res.n_pre, res.arrival_detected) == (5, 4, True)
    assert res.delay_s == pytest.approx(30.0, abs=0.051)
    assert res.ktrans_per_min == pytest.approx(0.2, rel=2e-3) and res.ve == pytest.approx(0.3, rel=2e-3)
    assert res.rmse_mmol_per_l < 1e-3
    given = region_tofts(dyn, t_s, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG, arrival_index=4)
    assert given.arrival_index == 4 and given.ktrans_per_min == pytest.approx(0.2, rel=2e-3)


def test_noise_free_extended_and_mean_statistic() -> None:
    dyn, t_s = _tofts_phases(0.3, 0.4, 0.06, 37.3)
    mask = np.ones(dyn.shape[1:], bool)
    for statistic in ("median", "mean"):
        res = region_tofts(dyn, t_s, mask, tr_s=TR_S, flip_deg=FLIP_DEG, noise_sigma=1.0, extended=True,
                           statistic=statistic)
        assert res.method == f"{statistic}_curve"
        assert res.ktrans_per_min == pytest.approx(0.3, rel=5e-3)
        assert res.vp == pytest.approx(0.06, abs=1e-3)
        assert res.kep_per_min == pytest.approx(res.ktrans_per_min / res.ve, rel=1e-6)


def test_only_the_masked_voxels_count() -> None:
    dyn, t_s = _tofts_phases(0.2, 0.3, 0.0, 30.0, shape=(2, 4, 4))
    dyn[:, :, :, 2:] = 50.0  # flat, unenhanced half outside the mask
    mask = np.zeros(dyn.shape[1:], bool)
    mask[:, :, :2] = True
    res = region_tofts(dyn, t_s, mask, tr_s=TR_S, flip_deg=FLIP_DEG, noise_sigma=1.0)
    assert res.n_voxels == res.n_valid == 16
    assert res.ktrans_per_min == pytest.approx(0.2, rel=2e-3)


def test_reasons_when_not_computable() -> None:
    dyn, t_s = _tofts_phases(0.2, 0.3, 0.0, 30.0)
    shape = dyn.shape[1:]
    empty = region_tofts(dyn, t_s, np.zeros(shape, bool), tr_s=TR_S, flip_deg=FLIP_DEG)
    assert not empty.ok and empty.reason == "empty region" and empty.n_voxels == 0
    assert np.isnan(empty.ktrans_per_min) and np.isnan(empty.ve)
    rng = np.random.default_rng(0)
    flat = 100.0 + rng.normal(0.0, 1.0, dyn.shape)
    none = region_tofts(flat, t_s, np.ones(shape, bool), tr_s=TR_S, flip_deg=FLIP_DEG, noise_sigma=1.0)
    assert none.reason.startswith("no enhancement") and not none.arrival_detected
    zero = region_tofts(np.zeros_like(dyn), t_s, np.ones(shape, bool), tr_s=TR_S, flip_deg=FLIP_DEG,
                        arrival_index=4)
    assert zero.reason.startswith("signal to concentration invalid in 18 of 18")
    t10 = np.full(shape, 1000.0)
    t10.flat[:10] = np.nan  # no T1 in 10 of 18 voxels
    bad_t10 = region_tofts(dyn, t_s, np.ones(shape, bool), tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=t10,
                           arrival_index=4)
    assert bad_t10.reason.startswith("signal to concentration invalid in 10 of 18") and bad_t10.n_valid == 8
    t10.flat[:10] = 1000.0
    t10.flat[0] = 0.0  # one voxel without T10: left out, the rest fitted
    one_bad = region_tofts(dyn, t_s, np.ones(shape, bool), tr_s=TR_S, flip_deg=FLIP_DEG, t10_ms=t10,
                           arrival_index=4)
    assert one_bad.ok and one_bad.n_valid == 17 and isinstance(one_bad, RegionTofts)


def test_argument_errors() -> None:
    dyn, t_s = _tofts_phases(0.2, 0.3, 0.0, 30.0)
    mask = np.ones(dyn.shape[1:], bool)
    kw = {"tr_s": TR_S, "flip_deg": FLIP_DEG}
    with pytest.raises(ValueError, match=r"shape \(T, z, y, x\)"):
        region_tofts(dyn[:, 0], t_s, mask[0], **kw)
    with pytest.raises(ValueError, match="strictly increasing"):
        region_tofts(dyn, t_s[::-1], mask, **kw)
    with pytest.raises(ValueError, match="mask shape"):
        region_tofts(dyn, t_s, mask[:, :2], **kw)
    with pytest.raises(ValueError, match="statistic"):
        region_tofts(dyn, t_s, mask, statistic="max", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="arrival_index"):
        region_tofts(dyn, t_s, mask, arrival_index=0, **kw)
    with pytest.raises(ValueError, match="tr_s > 0"):
        region_tofts(dyn, t_s, mask, tr_s=0.0, flip_deg=FLIP_DEG)
    with pytest.raises(ValueError, match="voxel_delay_window_s"):
        region_tofts(dyn, t_s, mask, delay_refine_s=0.0, **kw)


def test_bolus_delays_min() -> None:
    t_s = np.arange(10) * 12.0
    d = bolus_delays_min(t_s, 4, step_s=1.0)
    assert d[0] * 60 == pytest.approx(24.0) and d[-1] * 60 == pytest.approx(48.0) and d.size == 25
    np.testing.assert_allclose(np.diff(d) * 60, 1.0)
    d = bolus_delays_min(t_s + 5.0, 1, step_s=5.0)  # at the start of the series: from t[0]
    np.testing.assert_allclose(d * 60, [0.0, 4.0, 8.0, 12.0])  # 12 s in the fewest steps of at most 5 s
    with pytest.raises(ValueError, match="arrival_index"):
        bolus_delays_min(t_s, 10)
    with pytest.raises(ValueError, match="step_s"):
        bolus_delays_min(t_s, 3, step_s=0.0)


def test_dce_region_is_pure() -> None:
    code = ("import sys, pipeline.response.dce_region\n"
            "bad = ('pydicom', 'prefect', 'SimpleITK', 'nibabel', 'highdicom', 'pipeline.ingest', "
            "'pipeline.outputs', 'pipeline.phantom')\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in bad or "
            "any(m.startswith(b) for b in bad))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_phantom_ablation_zone_does_not_enhance() -> None:
    ablation = tuple(float(v) for v in rd.DCE_PARAMS[an.ABLATION])  # Ktrans 0: no uptake
    assert ablation[2] == 0.0
    for seed in range(3):
        dyn, times = _phantom_region(ablation, seed=seed)
        res = region_tofts(dyn, times, np.ones(dyn.shape[1:], bool), tr_s=TR_S, flip_deg=FLIP_DEG, noise_sigma=8.0)
        assert res.reason.startswith("no enhancement") or res.ktrans_per_min < 0.005, res
