"""Known-answer tests for pipeline.response.enhancement."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from pipeline.response.enhancement import (
    EnhancementMaps,
    ball,
    enhancing_mask,
    estimate_noise_sigma,
    half_maximum_boundary,
    new_nodules,
    relative_enhancement,
    remove_rim,
    residual_mask,
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


def _partial_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                    inside: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], sub: int = 5) -> np.ndarray:
    """Share of each voxel inside a shape given in mm (sub x sub x sub samples per voxel)."""
    frac = np.zeros(shape)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    zz, yy, xx = np.indices(shape).astype(float)
    for oz in offs:
        for oy in offs:
            for ox in offs:
                frac += inside((zz + oz) * spacing[0], (yy + oy) * spacing[1], (xx + ox) * spacing[2])
    return frac / sub**3


def _ball_at(c: tuple[float, float, float], r: float) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    return lambda z, y, x: (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r**2


def test_half_maximum_boundary_gives_the_volume_of_a_partial_volumed_nodule() -> None:
    # a 1 mL nodule on 1.25 x 1.25 x 3 mm DCE voxels: its enhancement mixes linearly with the
    # unenhanced surroundings; the RE > 0.15 mask swells by about a voxel, the half-maximum edge does not
    sp = (3.0, 1.25, 1.25)
    r = (3 * 1000.0 / (4 * np.pi)) ** (1 / 3)  # 6.2 mm
    frac = _partial_volume((14, 30, 30), sp, _ball_at((21.0, 18.0, 18.0), r))
    s_pre = np.full(frac.shape, 400.0)
    delta = 500.0 * frac
    maps = EnhancementMaps(re=delta / s_pre, delta=delta, noise_sigma=5.0, n_pre=3, arrival_index=3)
    loose = enhancing_mask(maps)
    tight = half_maximum_boundary(loose, maps.delta, sp)
    assert residual_volume_ml(loose, sp) > 1.3  # the SPEC threshold alone: +30 % or more
    assert residual_volume_ml(tight, sp) == pytest.approx(1.0, rel=0.12)
    assert not (tight & ~loose).any()


def test_half_maximum_boundary_judges_each_nodule_against_its_own_peak() -> None:
    sp = (1.0, 1.0, 1.0)
    strong = _sphere((30, 30, 60), sp, (15, 15, 15), 6.0)
    weak = _sphere((30, 30, 60), sp, (15, 15, 45), 6.0)
    delta = np.where(strong, 800.0, 0.0) + np.where(weak, 100.0, 0.0)
    kept = half_maximum_boundary(strong | weak, delta, sp, radius_mm=5.0)
    assert kept[weak].all() and kept[strong].all()  # 30 mm apart: neither is judged by the other
    with pytest.raises(ValueError, match="one shape"):
        half_maximum_boundary(strong, delta[:-1], sp)
    with pytest.raises(ValueError, match="fraction"):
        half_maximum_boundary(strong, delta, sp, fraction=1.5)


def test_remove_rim_removes_a_sheet_parallel_to_thick_slices() -> None:
    # a one-slice sheet on 3 mm slices: 3 mm thick, thinner than the 4 mm ball; on the raw grid
    # the ball would be one slice thick and the sheet would survive
    sp = (3.0, 1.25, 1.25)
    mask = np.zeros((12, 40, 40), bool)
    mask[6, 5:35, 5:35] = True
    assert not remove_rim(mask, sp, rim_mm=2.0).any()
    mask[4:9, 10:20, 10:20] = True  # a 15 x 12.5 x 12.5 mm nodule on the sheet stays
    kept = remove_rim(mask, sp, rim_mm=2.0)
    assert kept[4:9, 10:20, 10:20].all()
    assert kept.sum() < 0.5 * mask.sum()


def test_remove_rim_on_a_coarse_grid() -> None:
    # 2.3 mm pixels and 4.5 mm slices are coarser than the 2 mm ball: the mask is supersampled
    # until the ball is resolved, so a one-pixel tube wall across the slices goes and a 1 mL
    # nodule stays (a shell seen flat in a 4.5 mm slice is a 4.5 mm slab: thicker than the ball)
    sp = (4.5, 2.3, 2.3)
    yy, xx = np.indices((30, 30)) * 2.3
    radius = np.hypot(yy - 34.5, xx - 34.5)
    ring = (radius <= 14.0) & (radius > 11.7)
    shell = np.broadcast_to(ring, (12, 30, 30)).copy()
    shell[0] = shell[-1] = False
    nodule = _sphere((12, 30, 30), sp, (27.0, 34.5, 34.5), 6.5)
    assert not remove_rim(shell, sp, rim_mm=2.0).any()
    assert remove_rim(nodule, sp, rim_mm=2.0).sum() == nodule.sum()


def test_residual_mask_chains_the_steps() -> None:
    sp = (3.0, 1.25, 1.25)
    nodule = _partial_volume((14, 40, 40), sp, _ball_at((21.0, 25.0, 25.0), 6.2))
    shell = _partial_volume((14, 40, 40), sp, lambda z, y, x: np.abs(
        np.sqrt((z - 21.0) ** 2 + (y - 25.0) ** 2 + (x - 25.0) ** 2) - 16.0) <= 0.75)  # 1.5 mm rim
    delta = 500.0 * nodule + 300.0 * shell
    maps = EnhancementMaps(re=delta / 400.0, delta=delta, noise_sigma=5.0, n_pre=3, arrival_index=3)
    roi = np.ones(delta.shape, bool)
    got = residual_mask(maps, roi, sp)
    assert residual_volume_ml(got, sp) == pytest.approx(1.0, rel=0.15)
    assert not got[shell > 0.5].any()
    with pytest.raises(ValueError, match="roi"):
        residual_mask(maps, roi[:-1], sp)
