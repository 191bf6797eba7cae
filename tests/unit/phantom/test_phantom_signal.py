"""The phantom's forward DCE model against the pipeline's own implementation and the OSIPI reference.

``pipeline.phantom.signal_models`` renders the phantom's DCE series; ``pipeline.response.dce`` fits them.
The two are written independently so that one cannot hide a bug of the other: here they check each
other on a fine time grid, and the AIF is checked against OSIPI's published Parker reference
(``realdata/osipi-dce/PopulationAIF_DCE/data/ParkerAIF_ref.csv``: ``time`` in minutes, ``Cb`` whole-blood
concentration in mM, ``delay`` in seconds, all rows with delay 0; column meanings from OSIPI's loader
``test/PopulationAIF_DCE/popAIF_data.py``, the folder's README does not describe them).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.phantom import render as rd
from pipeline.phantom import signal_models as sm
from pipeline.response import dce

HCT = 0.42
#: 0.5 s steps over 6 min, and a little before bolus arrival (both models are 0 there).
FINE_T_MIN = np.arange(-60, 6 * 60 * 2 + 1) / 120.0

#: (Ktrans /min, ve, vp) of the enhancing tissues in docs/phantom_contract.md's table.
TISSUES = [
    pytest.param(0.15, 0.30, 0.03, id="tumour-low"),
    pytest.param(0.35, 0.40, 0.06, id="tumour-high"),
    pytest.param(0.12, 0.25, 0.0, id="benign-rim"),
    pytest.param(0.01, 0.05, 0.0, id="marrow"),
    pytest.param(0.005, 0.10, 0.0, id="muscle"),
]


def _reference_tofts(t_min: np.ndarray, ktrans: float, ve: float, vp: float) -> np.ndarray:
    """Brute-force extended Tofts: trapezoid integral of Cp(u) exp(-kep (t-u)) on a 0.01 s grid."""
    out = np.zeros_like(t_min)
    kep = ktrans / ve
    for i, t in enumerate(t_min):
        if t < 0:
            continue
        u = np.linspace(0.0, t, int(np.ceil(t * 6000)) + 2)
        cp = sm.parker_blood_millimolar(u) / (1 - HCT)
        out[i] = ktrans * np.trapezoid(cp * np.exp(-kep * (t - u)), u) + vp * cp[-1]
    return out


def test_parker_aif_agrees_with_response_implementation() -> None:
    phantom = sm.parker_blood_millimolar(FINE_T_MIN)
    np.testing.assert_allclose(phantom, dce.parker_blood(FINE_T_MIN), rtol=0.01, atol=1e-9)
    np.testing.assert_allclose(phantom / (1 - HCT), dce.parker_aif(FINE_T_MIN, HCT), rtol=0.01, atol=1e-9)
    assert np.all(phantom[FINE_T_MIN < 0] == 0.0)
    # the first-pass peak of Parker's AIF: ~6 mM whole blood near T1 = 0.17 min
    peak = FINE_T_MIN[np.argmax(phantom)]
    assert 0.15 <= peak <= 0.19
    assert 5.0 < phantom.max() < 7.0


@pytest.mark.realdata
def test_parker_aif_matches_osipi_reference(realdata: Path) -> None:
    path = realdata / "osipi-dce" / "PopulationAIF_DCE" / "data" / "ParkerAIF_ref.csv"
    assert path.is_file(), f"missing OSIPI reference {path}"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["delay"] for r in rows} == {"0"}, "ParkerAIF_ref.csv is expected to hold undelayed curves only"
    labels = {r["label"] for r in rows}
    assert len(labels) >= 9 and "original_AIF" in labels
    t = np.array([float(r["time"]) for r in rows])
    cb = np.array([float(r["Cb"]) for r in rows])
    assert t.max() > 9.0, "time is in minutes (curves up to 10 min)"
    # OSIPI's tolerance for population AIFs: 1 % relative (plus a tiny absolute floor)
    np.testing.assert_allclose(sm.parker_blood_millimolar(t), cb, rtol=0.01, atol=1e-4)


def test_tissue_concentration_with_zero_ktrans_is_plasma_fraction() -> None:
    got = sm.tissue_concentration_millimolar(FINE_T_MIN, 0.0, 0.1, 0.05, HCT)
    np.testing.assert_allclose(got, 0.05 * dce.parker_aif(FINE_T_MIN, HCT), rtol=1e-12, atol=1e-12)
    assert np.all(sm.tissue_concentration_millimolar(FINE_T_MIN, 0.0, 0.1, 0.0, HCT) == 0.0)


def test_response_tofts_matches_brute_force_reference() -> None:
    """The pipeline's closed-form convolution is accurate: the yardstick for the phantom below."""
    t = np.arange(0, 6 * 60 + 1, 5) / 60.0
    tf = np.arange(0, 6 * 60 * 2 + 1) / 120.0
    ref = _reference_tofts(t, 0.25, 0.35, 0.05)
    got = dce.tofts(t, dce.parker_aif(tf, HCT), 0.25, 0.35, 0.05, cp_t_min=tf)
    assert np.max(np.abs(got - ref)) <= 0.002 * ref.max()


@pytest.mark.parametrize(("ktrans", "ve", "vp"), TISSUES)
def test_phantom_tofts_agrees_with_response_tofts(ktrans: float, ve: float, vp: float) -> None:
    t = FINE_T_MIN[FINE_T_MIN >= 0]
    phantom = sm.tissue_concentration_millimolar(t, ktrans, ve, vp, HCT)
    response = dce.tofts(t, dce.parker_aif(t, HCT), ktrans, ve, vp)
    probe = t[::20]
    ref = _reference_tofts(probe, ktrans, ve, vp)
    err_phantom = np.max(np.abs(phantom[::20] - ref)) / ref.max()
    err_response = np.max(np.abs(response[::20] - ref)) / ref.max()
    assert np.max(np.abs(phantom - response)) <= 0.01 * response.max(), (
        f"phantom and response Tofts differ by {np.max(np.abs(phantom - response)) / response.max():.2%} of "
        f"the peak; against a brute-force integral: phantom {err_phantom:.2%}, response {err_response:.2%}")


def test_spgr_signal_at_zero_concentration_is_steady_state_formula() -> None:
    m0, t10_ms, tr_ms = 1000.0, 1200.0, 5.0
    for flip in (5.0, 12.0, 15.0, 30.0, 90.0):
        e1 = np.exp(-tr_ms / t10_ms)
        a = np.radians(flip)
        textbook = m0 * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
        assert float(sm.spgr_signal(m0, t10_ms, np.zeros(1), tr_ms, flip)[0]) == pytest.approx(textbook, rel=1e-12)
    # at 90 degrees the steady state is the saturation-recovery signal M0 (1 - E1)
    assert float(sm.spgr_signal(m0, t10_ms, np.zeros(1), tr_ms, 90.0)[0]) == pytest.approx(
        m0 * (1 - np.exp(-tr_ms / t10_ms)), rel=1e-12)


def test_spgr_signal_peaks_at_ernst_angle() -> None:
    t10_ms, tr_ms = 1000.0, 5.0
    flips = np.linspace(0.5, 30.0, 2951)
    sig = np.array([float(sm.spgr_signal(1.0, t10_ms, np.zeros(1), tr_ms, f)[0]) for f in flips])
    ernst = np.degrees(np.arccos(np.exp(-tr_ms / t10_ms)))
    assert flips[np.argmax(sig)] == pytest.approx(ernst, abs=0.02)


def test_spgr_signal_agrees_with_response_and_rises_with_gadolinium() -> None:
    conc = np.linspace(0.0, 3.0, 31)
    phantom = sm.spgr_signal(800.0, 1200.0, conc, 5.0, 12.0)
    response = dce.concentration_to_signal(conc, 800.0, tr_s=0.005, flip_deg=12.0, t10_s=1.2)
    np.testing.assert_allclose(phantom, response, rtol=1e-12)
    assert np.all(np.diff(phantom) > 0)
    back = dce.signal_to_concentration(phantom, phantom[0], tr_s=0.005, flip_deg=12.0, t10_s=1.2)
    np.testing.assert_allclose(back, conc, atol=1e-9)


def test_dce_curves_are_flat_before_arrival_and_enhance_only_enhancing_tissue() -> None:
    times = np.arange(8) * 20.0
    injection = 50.0
    curves = rd.dce_curves(rd.DCE_PARAMS, times, injection, 5.0, 12.0)
    assert curves.shape == (rd.DCE_PARAMS.shape[0], times.size)
    pre = times < injection
    for label, (m0, t10, ktrans, _ve, vp) in enumerate(rd.DCE_PARAMS):
        s0 = float(sm.spgr_signal(m0, t10, np.zeros(1), 5.0, 12.0)[0])
        np.testing.assert_allclose(curves[label, pre], s0, rtol=1e-12)
        if ktrans > 0 or vp > 0:
            assert curves[label, ~pre].max() > s0 * 1.001, f"label {label} should enhance"
        else:
            np.testing.assert_allclose(curves[label], s0, rtol=1e-12)
