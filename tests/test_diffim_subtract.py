"""Subtraction end to end on simulated pairs: residual noise, decorrelation, flux pulls,
ZOGY's S_corr, auto mode, masks and saturated stars."""

from itertools import pairwise

import numpy as np
import pytest

from jointcal_ap.diffim import DifferenceImage, SubtractOptions, psf_photometry, subtract
from jointcal_ap.diffim.image import MASK_BITS
from jointcal_ap.diffim.sim import simulate_pair

SHAPE = (768, 768)


@pytest.fixture(scope="module")
def pair():
    """Template 3.1 px, 4× deeper; science 4.7 px with ~200 isolated injected sources."""
    return simulate_pair(SHAPE, n_stars=350, n_sources=200, isolate=22.0, edge=40, snr_range=(10.0, 40.0),
                         star_flux_slope=0.75, star_flux_range=(300.0, 3e5), seed=3)


@pytest.fixture(scope="module")
def reversed_pair():
    """Science sharper (3.1 px) than the deeper template (4.7 px): convolve-science's case."""
    return simulate_pair(SHAPE, n_stars=350, n_sources=200, isolate=22.0, edge=40, snr_range=(10.0, 40.0),
                         science_fwhm=3.1, template_fwhm=4.7, star_flux_slope=0.75,
                         star_flux_range=(300.0, 3e5), seed=4)


@pytest.fixture(scope="module")
def results(pair, reversed_pair):
    out = {}
    for mode in ("convolve-template", "preconvolve"):
        out[mode] = subtract(pair.science, pair.template, SubtractOptions(mode=mode))
    out["zogy"] = subtract(pair.science, pair.template, SubtractOptions(method="zogy"))
    out["convolve-science"] = subtract(reversed_pair.science, reversed_pair.template,
                                       SubtractOptions(mode="convolve-science"))
    return out


def _truth(name, pair, reversed_pair):
    return (reversed_pair if name == "convolve-science" else pair).truth


@pytest.mark.parametrize("name", ["convolve-template", "convolve-science", "preconvolve", "zogy"])
def test_residual_noise_matches_the_variance_plane(results, name):
    qa = results[name].qa
    assert qa["residual_npix"] > 100_000
    assert qa["residual_std"] == pytest.approx(1.0, abs=0.03)
    assert abs(qa["residual_mean"]) < 0.05


@pytest.mark.parametrize("name", ["convolve-template", "convolve-science", "preconvolve", "zogy"])
def test_flux_pulls_are_unbiased_and_unit_width(results, pair, reversed_pair, name):
    """~200 injected point sources: PSF fluxes at the true positions, pull = (F - F_true)/σ_F."""
    truth = _truth(name, pair, reversed_pair)
    phot = psf_photometry(results[name], truth["x"], truth["y"])
    ok = np.isfinite(phot["flux"]) & ~phot["edge"]
    assert ok.sum() >= 180
    pull = (phot["flux"][ok] - truth["flux"][ok]) / phot["flux_err"][ok]
    assert abs(pull.mean()) < 0.15
    assert pull.std() == pytest.approx(1.0, abs=0.1)


def _radial_power(img: np.ndarray, nbins: int = 8) -> np.ndarray:
    spec = np.abs(np.fft.fft2(img - img.mean())) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(img.shape[0]), np.fft.fftfreq(img.shape[1]), indexing="ij")
    k = np.hypot(fx, fy)
    edges = np.linspace(0.02, 0.5, nbins + 1)
    return np.array([spec[(k >= a) & (k < b)].mean() for a, b in pairwise(edges)])


@pytest.fixture(scope="module")
def quiet_pair():
    """No injected sources: the difference is noise (and the stars' residual noise)."""
    return simulate_pair((640, 640), n_stars=250, n_sources=0, science_fwhm=3.1, template_fwhm=4.7,
                         depth=1.0, star_flux_slope=0.75, star_flux_range=(300.0, 2e5), seed=8)


def test_decorrelated_noise_power_spectrum_is_flat_within_5_percent(quiet_pair):
    """Convolving the (equally deep) science image correlates the difference's noise; the
    decorrelated difference's power spectrum is flat within 5 % (radial bins out to Nyquist),
    the plain one is not."""
    flat = {}
    for decorrelate in (True, False):
        d = subtract(quiet_pair.science, quiet_pair.template,
                     SubtractOptions(mode="convolve-science", decorrelate=decorrelate))
        z = (d.image / np.sqrt(d.variance))[60:-60, 60:-60]
        assert np.isfinite(z).all()
        p = _radial_power(z)
        flat[decorrelate] = np.max(np.abs(p / p.mean() - 1.0))
    assert flat[True] < 0.05
    assert flat[False] > 0.2


def test_zogy_s_corr_is_standard_normal_on_source_free_pixels(results, pair):
    from jointcal_ap.diffim.qa import source_free
    from jointcal_ap.diffim.stars import Stars

    d = results["zogy"]
    n = len(pair.stars["x"]) + len(pair.truth["x"])
    xs = np.r_[pair.stars["x"], pair.truth["x"]]
    ys = np.r_[pair.stars["y"], pair.truth["y"]]
    ix, iy = np.clip(np.rint(xs - 1), 0, SHAPE[1] - 1).astype(int), np.clip(np.rint(ys - 1), 0, SHAPE[0] - 1).astype(int)
    z = np.zeros(n)
    everything = Stars(xs, ys, ix, iy, z, z, z, z, z, z, z.astype(bool), z.astype(bool))
    free = source_free(d.mask, [everything], 15) & np.isfinite(d.score_corr)
    s = d.score_corr[free]
    assert s.size > 100_000
    assert abs(s.mean()) < 0.05
    assert s.std() == pytest.approx(1.0, abs=0.05)
    assert np.mean(np.abs(s) > 5) < 1e-5                           # Gaussian tails: no false 5σ


def test_auto_mode_convolves_the_sharper_image(pair, reversed_pair):
    a = subtract(pair.science, pair.template, SubtractOptions(mode="auto"))
    b = subtract(reversed_pair.science, reversed_pair.template, SubtractOptions(mode="auto"))
    assert (a.mode, b.mode) == ("convolve-template", "convolve-science")


def test_masked_regions_and_saturated_stars_are_handled(tmp_path):
    p = simulate_pair((512, 512), n_stars=220, n_sources=20, saturation=2e4, star_flux_slope=0.5,
                      star_flux_range=(3e3, 3e6), isolate=15.0, edge=40, seed=9)
    sat = (p.science.mask & MASK_BITS["SAT"]) != 0
    assert sat.sum() > 50                                             # some stars saturate
    sci_mask = p.science.mask.copy()
    sci_mask[:, 200:203] |= MASK_BITS["BAD"]                            # a bad column
    tmp_img = p.template.image.copy()
    tmp_img[300:360, 100:180] = np.nan                                  # a hole in the template
    from dataclasses import replace

    sci = replace(p.science, mask=sci_mask)
    tmp = replace(p.template, image=tmp_img)
    d = subtract(sci, tmp, SubtractOptions())
    assert np.isnan(d.image[330, 140]) and d.mask[330, 140] & MASK_BITS["NO_DATA"]
    assert d.mask[100, 201] & MASK_BITS["BAD"]
    assert (d.mask[sat] & MASK_BITS["SAT"]).all()
    assert d.qa["residual_std"] == pytest.approx(1.0, abs=0.05)
    from jointcal_ap.diffim import detect_dia_sources

    table = detect_dia_sources(d).to_pandas()
    near_sat = table["pixelFlags_saturated"]
    assert (table.loc[near_sat, "artifactClass"].isin(["saturated", "edge"])).all()
    d.write(tmp_path / "d.fits")
    back = DifferenceImage.read(tmp_path / "d.fits")
    assert np.array_equal(back.mask, d.mask)
    assert np.array_equal(np.isnan(back.image), np.isnan(d.image))
