"""Known-answer tests for pipeline.response.enhancement."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.response.enhancement import (
    ball,
    enhancing_mask,
    estimate_noise_sigma,
    new_nodules,
    relative_enhancement,
    remove_rim,
    residual_volume_ml,
)


def _sphere(shape: tuple[int, int, int], spacing: tuple[float, float, float],
            centre_mm: tuple[float, float, float], r_out: float, r_in: float = -1.0) -> np.ndarray:
    zz, yy, xx = np.indices(shape).astype(float)
    d = np.sqrt(((zz * spacing[0] - centre_mm[0]) ** 2) + ((yy * spacing[1] - centre_mm[1]) ** 2)
                + ((xx * spacing[2] - centre_mm[2]) ** 2))
    return (d <= r_out) & (d > r_in)


def test_relative_enhancement_noise_free_curve() -> None:
    t = np.arange(10) * 6.0
    curve = np.array([200, 200, 200, 200, 300, 420, 400, 380, 360, 340], dtype=float)
    phases = np.broadcast_to(curve[:, None, None, None], (10, 3, 4, 5)).copy()
    maps = relative_enhancement(phases, t)
    assert maps.arrival_index == 4 and maps.n_pre == 4 and maps.arrival_detected
    assert maps.peak_index == 5
    s_post = np.mean(curve[5:])
    assert maps.re[1, 2, 3] == pytest.approx((s_post - 200.0) / 200.0)
    assert maps.delta[0, 0, 0] == pytest.approx(s_post - 200.0)
    assert maps.noise_sigma == 0.0


def test_relative_enhancement_noisy_phantom_recovers_lesion_and_noise() -> None:
    rng = np.random.default_rng(0)
    n_t, shape, sigma = 16, (12, 40, 40), 6.0
    t = np.arange(n_t) * 8.0
    enh = np.clip((t - 30.0) / 20.0, 0.0, 1.0)  # ramps from phase 4 (32 s) to a plateau
    base = np.full(shape, 400.0)
    base[:, :, :5] = 0.0  # air strip
    lesion = np.zeros(shape, bool)
    lesion[4:9, 15:25, 15:25] = True
    signal = np.repeat(base[None], n_t, axis=0)
    signal[:, lesion] *= (1.0 + 0.8 * enh)[:, None]
    noisy = np.abs(signal + rng.normal(0, sigma, signal.shape) + 1j * rng.normal(0, sigma, signal.shape))
    maps = relative_enhancement(noisy, t)
    assert maps.arrival_index == 4
    assert maps.noise_sigma == pytest.approx(sigma, rel=0.1)
    mask = enhancing_mask(maps, re_threshold=0.15, noise_sigmas=3.0)
    tp = np.count_nonzero(mask & lesion)
    assert tp / lesion.sum() > 0.99
    assert np.count_nonzero(mask & ~lesion) < 0.001 * (~lesion).sum()
    assert float(np.median(maps.re[lesion])) == pytest.approx(0.8 * np.mean(enh[np.argmax(enh):]), abs=0.03)


def test_relative_enhancement_without_enhancement_falls_back() -> None:
    rng = np.random.default_rng(1)
    phases = 300.0 + rng.normal(0, 5.0, (8, 4, 10, 10))
    maps = relative_enhancement(phases, np.arange(8.0))
    assert not maps.arrival_detected
    assert not enhancing_mask(maps).any()


def test_roi_and_known_sigma() -> None:
    t = np.arange(6) * 10.0
    phases = np.full((6, 2, 3, 3), 100.0)
    phases[3:, 0] = 150.0  # only slice 0 enhances
    roi = np.zeros((2, 3, 3), bool)
    roi[0] = True
    maps = relative_enhancement(phases, t, roi=roi, noise_sigma=2.0)
    assert maps.arrival_index == 3 and maps.noise_sigma == 2.0
    assert enhancing_mask(maps)[0].all() and not enhancing_mask(maps)[1].any()


@pytest.mark.parametrize(
    ("phases", "times", "roi", "match"),
    [
        (np.zeros((1, 2, 2, 2)), np.zeros(1), None, "T >= 2"),
        (np.zeros((3, 2, 2)), np.arange(3.0), None, "T >= 2"),
        (np.zeros((3, 2, 2, 2)), np.arange(4.0), None, "times_s must have shape"),
        (np.zeros((3, 2, 2, 2)), np.array([0.0, 2.0, 1.0]), None, "strictly increasing"),
        (np.zeros((3, 2, 2, 2)), np.arange(3.0), np.ones((2, 2), bool), "roi shape"),
        (np.zeros((3, 2, 2, 2)), np.arange(3.0), np.zeros((2, 2, 2), bool), "roi is empty"),
    ],
)
def test_relative_enhancement_errors(phases: np.ndarray, times: np.ndarray, roi: np.ndarray | None,
                                     match: str) -> None:
    with pytest.raises(ValueError, match=match):
        relative_enhancement(phases, times, roi=roi)


def test_noise_sigma_needs_two_phases() -> None:
    with pytest.raises(ValueError, match="at least two unenhanced phases"):
        estimate_noise_sigma(np.zeros((3, 2, 2, 2)), (0,))


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (0.8, 0.6, 0.4)])
def test_rim_removal_keeps_nodule_removes_thin_shell(spacing: tuple[float, float, float]) -> None:
    shape = (int(40 / spacing[0]), int(60 / spacing[1]), int(60 / spacing[2]))
    shell = _sphere(shape, spacing, (20.0, 25.0, 30.0), r_out=9.5, r_in=8.0)  # 1.5 mm thick
    nodule = _sphere(shape, spacing, (20.0, 48.0, 30.0), r_out=2.5)  # 5 mm diameter
    slab = np.zeros(shape, bool)  # 6 mm thick plaque: thick enhancement
    slab[:, int(5 / spacing[1]):int(11 / spacing[1]), int(45 / spacing[2]):int(58 / spacing[2])] = True
    slab[:int(8 / spacing[0])] = False
    out = remove_rim(shell | nodule | slab, spacing, rim_mm=2.0)
    assert np.count_nonzero(out & shell) == 0
    assert np.count_nonzero(out & nodule) / nodule.sum() > 0.85
    assert np.count_nonzero(out & slab) / slab.sum() > 0.95
    assert not (out & ~(shell | nodule | slab)).any()


def test_rim_removal_on_thick_slices_is_in_plane_only() -> None:
    element = ball(2.0, (3.0, 0.5, 0.5))
    assert element.shape == (1, 9, 9)
    assert remove_rim(np.ones((3, 4, 4), bool), (3.0, 0.5, 0.5), rim_mm=0.0).all()


def test_remove_rim_errors() -> None:
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        remove_rim(np.zeros((3, 3, 3), bool), (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="rim_mm must be >= 0"):
        remove_rim(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0), rim_mm=-1.0)
    with pytest.raises(ValueError, match="3-D mask"):
        remove_rim(np.zeros((3, 3), bool), (1.0, 1.0, 1.0))


def test_residual_volume_of_sphere_on_uneven_spacing() -> None:
    spacing = (1.2, 0.7, 0.9)
    shape = (int(30 / 1.2), int(30 / 0.7), int(30 / 0.9))
    sphere = _sphere(shape, spacing, (15.0, 15.0, 15.0), r_out=10.0)
    assert residual_volume_ml(sphere, spacing) == pytest.approx(4.0 / 3.0 * np.pi * 1000.0 / 1000.0, rel=0.02)


def test_new_nodules() -> None:
    spacing = (1.0, 1.0, 1.0)
    j0 = np.zeros((30, 30, 30), bool)
    j0[5:10, 5:10, 5:10] = True
    current = np.zeros_like(j0)
    current[4:12, 4:12, 4:12] = True  # grown J0 residual: not new
    current[20:30, 20:30, 20:28] = True  # 0.8 mL new
    current[15:17, 25:30, 0:10] = True  # 0.1 mL new: below 0.5 mL
    assert new_nodules(current, j0, spacing, min_ml=0.5) == [pytest.approx(0.8)]
    assert len(new_nodules(current, j0, spacing, min_ml=0.05)) == 2
    assert new_nodules(np.zeros_like(j0), j0, spacing) == []
    with pytest.raises(ValueError, match="must be on one grid"):
        new_nodules(current, j0[:-1], spacing)
