"""The image renderer: flux conservation, pixel convention, PSFs, noise, response, mask bits."""

from __future__ import annotations

import numpy as np
import pytest

from jointcal_ap.detect import MASK_BITS
from jointcal_ap.simulate.images import Psf, render_image


def _stars(n, shape, rng, margin):
    ny, nx = shape
    x = rng.uniform(margin, nx + 1 - margin, n)
    y = rng.uniform(margin, ny + 1 - margin, n)
    flux = 10 ** rng.uniform(2, 5, n)
    return x, y, flux


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_flux_is_conserved(psf):
    rng = np.random.default_rng(1)
    shape = (200, 300)
    x, y, flux = _stars(50, shape, rng, margin=40)
    im = render_image(shape, x, y, flux, fwhm_px=3.0, sky_adu=0.0, psf=psf, noise=False)
    assert im.image.dtype == np.float32 and im.variance.dtype == np.float32 and im.mask.dtype == np.int32
    assert im.image.sum(dtype=np.float64) == pytest.approx(flux.sum(), rel=1e-6)
    # with a sky: image - sky sums to the fluxes
    im2 = render_image(shape, x, y, flux, fwhm_px=3.0, sky_adu=250.0, psf=psf, noise=False)
    assert (im2.image.astype(np.float64) - 250.0).sum() == pytest.approx(flux.sum(), rel=1e-5)


def test_stars_cut_by_the_edge_lose_their_outside_flux():
    # a star centred on the left border (x = 0.5) keeps half its flux; one far off keeps none
    im = render_image((64, 64), [0.5, -100.0], [32.0, 32.0], [1e4, 1e4], fwhm_px=3.0, noise=False)
    assert im.image.sum(dtype=np.float64) == pytest.approx(5e3, rel=1e-6)


def test_pixel_convention_is_fits_one_based():
    # the first moment of a noise-free Gaussian star is its position (pixel [j, i] at x = i+1)
    x0, y0 = 20.3, 17.8
    im = render_image((40, 40), [x0], [y0], [1e5], fwhm_px=2.5, noise=False)
    jj, ii = np.indices(im.shape)
    total = im.image.sum(dtype=np.float64)
    assert (im.image * (ii + 1)).sum() / total == pytest.approx(x0, abs=1e-4)
    assert (im.image * (jj + 1)).sum() / total == pytest.approx(y0, abs=1e-4)
    # the second moment is σ² + 1/12 (the Gaussian integrated over square pixels)
    var_x = (im.image * (ii + 1 - x0) ** 2).sum() / total
    assert var_x == pytest.approx((2.5 / 2.3548200450309493) ** 2 + 1 / 12, rel=1e-3)


@pytest.mark.parametrize("kind", ["gaussian", "moffat"])
def test_encircled_energy_matches_the_rendered_profile(kind):
    psf = Psf(kind=kind, fwhm_px=4.0, moffat_beta=3.0, radius_px=60)
    im = render_image((151, 151), [76.0], [76.0], [1.0], psf=psf, noise=False)
    jj, ii = np.indices(im.shape)
    r = np.hypot(ii + 1 - 76.0, jj + 1 - 76.0)
    for radius in (4.0, 8.0, 16.0):
        # pixels whose centre is inside r: approximates the circle to ~ the pixel scale
        measured = im.image[r <= radius].sum(dtype=np.float64)
        assert measured == pytest.approx(float(psf.encircled_energy(radius)), abs=0.02)
    # the FWHM is what it says: half the peak at r = FWHM / 2 (continuous profile)
    assert float(psf.profile(2.0)) == pytest.approx(0.5 * float(psf.profile(0.0)), rel=1e-9)


def test_noise_matches_the_variance_plane_and_is_deterministic():
    rng = np.random.default_rng(2)
    shape = (256, 256)
    x, y, flux = _stars(40, shape, rng, margin=10)
    kw = dict(fwhm_px=3.0, sky_adu=400.0, gain=2.0, read_noise_e=6.0)
    a = render_image(shape, x, y, flux, seed=5, **kw)
    b = render_image(shape, x, y, flux, seed=5, **kw)
    c = render_image(shape, x, y, flux, seed=6, **kw)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    expected = a.model / 2.0 + (6.0 / 2.0) ** 2
    np.testing.assert_allclose(a.variance, expected, rtol=1e-6)
    pull = (a.image.astype(np.float64) - a.model) / np.sqrt(a.variance)
    assert abs(pull.mean()) < 0.01
    assert pull.std() == pytest.approx(1.0, abs=0.01)


def test_response_multiplies_sky_and_stars():
    shape = (64, 128)
    response = np.ones(shape)
    response[:, 64:] = 1.1
    x, y, flux = [32.0, 96.0], [32.0, 32.0], [1e4, 1e4]
    flat = render_image(shape, x, y, flux, fwhm_px=3.0, sky_adu=100.0, noise=False)
    resp = render_image(shape, x, y, flux, fwhm_px=3.0, sky_adu=100.0, response=response, noise=False)
    np.testing.assert_allclose(resp.image, flat.image * response, rtol=1e-6)
    assert resp.image[:, 64:].sum(dtype=np.float64) - 1.1 * 100 * 64 * 64 == pytest.approx(1.1e4, rel=1e-5)


def test_mask_bits_saturation_edge_and_dead_pixels():
    shape = (64, 64)
    response = np.ones(shape)
    response[10, 5] = 0.0
    response[11, 5] = np.nan
    im = render_image(shape, [32.0], [32.0], [1e6], fwhm_px=3.0, sky_adu=100.0, saturation_adu=5e4,
                      edge_px=2, response=response, noise=False)
    sat = (im.mask & MASK_BITS["SAT"]) != 0
    assert sat[31, 31] and sat.sum() >= 4
    assert im.image.max() == pytest.approx(5e4)
    np.testing.assert_array_equal(sat, im.model >= 5e4)
    edge = (im.mask & MASK_BITS["EDGE"]) != 0
    assert edge[0, 30] and edge[1, 30] and edge[30, 63] and not edge[2, 30]
    assert edge.sum() == 64 * 64 - 60 * 60
    bad = (im.mask & MASK_BITS["BAD"]) != 0
    assert bad[10, 5] and bad[11, 5] and bad.sum() == 2
    assert im.image[10, 5] == 0.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="y has 1 values, expected 2"):
        render_image((8, 8), [1.0, 2.0], [1.0], [1.0, 1.0], fwhm_px=2.0)
    with pytest.raises(ValueError, match="response has shape"):
        render_image((8, 8), [1.0], [1.0], [1.0], fwhm_px=2.0, response=np.ones((4, 4)))
    with pytest.raises(ValueError, match="flux_adu must be >= 0"):
        render_image((8, 8), [1.0], [1.0], [-1.0], fwhm_px=2.0)
    with pytest.raises(ValueError, match=r"Psf\.kind"):
        render_image((8, 8), [1.0], [1.0], [1.0], fwhm_px=2.0, psf="airy")
    with pytest.raises(ValueError, match="fwhm_px is required"):
        render_image((8, 8), [1.0], [1.0], [1.0])
