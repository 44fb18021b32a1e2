"""The fitted PCA PSF and the grid PSF: accuracy, spatial variation, stamps, FITS round trip."""

from itertools import pairwise

import numpy as np
import pytest
from astropy.io import fits

from jointcal_ap.psf import GaussianPsf, GridPsf, PcaPsf, PsfError, fit_psf, psf_from_hdus
from jointcal_ap.psf._sampling import windowed_centroid
from jointcal_ap.simulate.images import render_image

SHAPE = (600, 600)


def _fwhm_at(x, y):
    """The simulated seeing: 3.0 px at the left edge to 3.6 px at the right."""
    return 3.0 + 0.6 * (x - 1) / (SHAPE[1] - 1)


@pytest.fixture(scope="module")
def varying():
    """Stars whose FWHM varies across the detector (rendered in bands of constant FWHM)."""
    rng = np.random.default_rng(7)
    n = 700
    x, y = rng.uniform(15, SHAPE[1] - 15, n), rng.uniform(15, SHAPE[0] - 15, n)
    flux = 10 ** rng.uniform(4.0, 5.3, n)
    edges = np.linspace(1, SHAPE[1] + 1, 13)
    image = np.zeros(SHAPE)
    for a, b in pairwise(edges):
        sel = (x >= a) & (x < b)
        image += render_image(SHAPE, x[sel], y[sel], flux[sel], fwhm_px=_fwhm_at(0.5 * (a + b), 0.0),
                              psf="moffat", noise=False, read_noise_e=0.0).image
    var = image + 100.0
    noisy = image + np.random.default_rng(8).normal(0, np.sqrt(var))
    return noisy.astype(np.float32), var.astype(np.float32)


def test_pca_psf_follows_the_spatial_variation(varying):
    image, var = varying
    psf = fit_psf(image, var, None, n_components=3, degree=2)
    assert isinstance(psf, PcaPsf) and psf.n_stars > 100
    for x in (50.0, 300.0, 550.0):
        # a Moffat β=3's Gaussian-equivalent FWHM (from its second moments) is ≈ 1.17 × its FWHM
        assert psf.fwhm(x, 300.0) / _fwhm_at(x, 0) == pytest.approx(psf.fwhm(300.0, 300.0) / _fwhm_at(300.0, 0),
                                                                     rel=0.03)
    assert psf.fwhm(550.0, 300.0) > psf.fwhm(50.0, 300.0) * 1.12


def test_pca_psf_stamps_centroid_and_round_trip(varying):
    image, var = varying
    psf = fit_psf(image, var, None)
    x, y = np.array([100.3, 400.8]), np.array([250.6, 77.1])
    stamps, x0, y0 = psf.stamps(x, y, 31)
    for k in range(2):
        s = stamps[k]
        assert s.sum() == pytest.approx(1.0, abs=2e-3)
        # the model's convention: its core (windowed centroid) is at the position asked for
        cx, cy = windowed_centroid(s)
        assert x0[k] + 15 + cx == pytest.approx(x[k], abs=0.005)
        assert y0[k] + 15 + cy == pytest.approx(y[k], abs=0.005)
    hdus = psf.to_hdus()
    back = psf_from_hdus(fits.HDUList([fits.PrimaryHDU(), *hdus])[1:])
    assert isinstance(back, PcaPsf)
    assert np.allclose(back.kernel_image(123.0, 456.0), psf.kernel_image(123.0, 456.0), atol=1e-12)


def test_fit_psf_on_gaussian_stars_and_errors():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(20, 280, 80), rng.uniform(20, 280, 80)
    im = render_image((300, 300), x, y, np.full(80, 1e5), fwhm_px=2.8, sky_adu=50.0, seed=5)
    psf = fit_psf(im.image, im.variance, im.mask)
    assert psf.fwhm(150, 150) == pytest.approx(2.8, rel=0.02)
    truth = GaussianPsf.from_fwhm(2.8).kernel_image(0, 0, psf.default_size())
    assert np.max(np.abs(psf.kernel_image(150, 150) - truth)) < 0.01 * truth.max()
    with pytest.raises(PsfError, match=r"sky\.fits: only 0 bright isolated"):
        fit_psf(np.random.default_rng(0).normal(size=(100, 100)), None, None, where="sky.fits")


def test_grid_psf_interpolates_and_round_trips():
    a, b = GaussianPsf.from_fwhm(3.0).kernel_image(0, 0, 21), GaussianPsf.from_fwhm(4.0).kernel_image(0, 0, 21)
    psf = GridPsf(np.stack([[a, b]]), x_nodes=[100.0, 300.0], y_nodes=[50.0])
    assert psf.fwhm(50.0, 0.0) == pytest.approx(3.0, abs=0.02)        # flat beyond the nodes
    assert psf.fwhm(400.0, 0.0) == pytest.approx(4.0, abs=0.02)
    mid = psf.kernel_image(200.0, 50.0)
    assert np.allclose(mid, 0.5 * (a + b) / (0.5 * (a + b)).sum())
    stamps, x0, _ = psf.stamps([200.25], [50.5], 21)
    xx = np.arange(21)[None, :]
    assert (stamps[0] * (xx + x0[0])).sum() / stamps[0].sum() == pytest.approx(200.25, abs=1e-3)
    back = psf_from_hdus(psf.to_hdus())
    assert np.allclose(back.kernel_image(123.0, 4.0), psf.kernel_image(123.0, 4.0))
    with pytest.raises(PsfError, match="odd"):
        GridPsf(np.zeros((1, 1, 4, 4)), [1.0], [1.0])


def test_pca_psf_core_stays_centred_when_neighbours_sit_on_one_side_of_the_stamps():
    """Neighbours too faint to be detected but inside the stamps, all on the left: their flux
    in the stamps' wings must not move the model's core (it did by ~0.01 px when the mean was
    recentred on its plain first moment; on bright stars that leaves a dipole in ZOGY's S)."""
    rng = np.random.default_rng(11)
    n = 300
    x, y = rng.uniform(30, 770, n), rng.uniform(30, 770, n)
    keep = np.ones(n, bool)
    for i in range(n):                       # isolated from each other (their neighbours aside)
        keep[i] = np.all(np.hypot(x[:i][keep[:i]] - x[i], y[:i][keep[:i]] - y[i]) > 30)
    x, y = x[keep], y[keep]
    flux = np.full(len(x), 2e5)
    nx_, ny_ = x - 7.0, y + rng.uniform(-1, 1, len(x))              # each star's neighbour
    im = render_image((800, 800), np.r_[x, nx_], np.r_[y, ny_], np.r_[flux, 0.0015 * flux], fwhm_px=3.5,
                      sky_adu=100.0, seed=12)
    psf = fit_psf(im.image, im.variance, im.mask, min_snr=50.0)
    assert psf.n_stars > 0.8 * len(x)
    for px, py in ((400.0, 400.0), (60.0, 60.0), (740.0, 740.0)):
        cx, cy = windowed_centroid(psf.kernel_image(px, py, 31))
        assert abs(cx) < 0.005 and abs(cy) < 0.005, (px, py, cx, cy)


def test_fit_psf_weighs_given_positions_by_their_measured_snr():
    """Stars passed by position (as differencing does) are weighted by S/N², measured on their
    stamps: with equal weights the faint stamps' noise filled the model's wings (~1e-2 of the
    peak on a 2048² benchmark pair, which ZOGY turned into rings around bright stars)."""
    rng = np.random.default_rng(21)
    n = 150
    x, y = rng.uniform(30, 770, n), rng.uniform(30, 770, n)
    keep = np.ones(n, bool)
    for i in range(n):
        keep[i] = np.all(np.hypot(x[:i][keep[:i]] - x[i], y[:i][keep[:i]] - y[i]) > 30)
    x, y = x[keep], y[keep]
    flux = 10 ** rng.uniform(3.8, 6.0, len(x))                   # S/N ~50 to ~1000
    im = render_image((800, 800), x, y, flux, fwhm_px=4.0, sky_adu=1000.0, seed=22)
    truth = GaussianPsf.from_fwhm(4.0).kernel_image(0, 0, 21)
    r = np.hypot(*np.mgrid[-10:11, -10:11])

    def wing_error(psf):
        d = (psf.kernel_image(400.0, 400.0, 21) - truth) / truth.max()
        return float(np.sqrt(np.mean(d[r >= 6] ** 2)))

    measured = wing_error(fit_psf(im.image, im.variance, im.mask, x=x + 1e-3, y=y))
    given = wing_error(fit_psf(im.image, im.variance, im.mask, x=x + 1e-3, y=y,
                               snr=flux / np.sqrt(flux + 1000.0 * 50)))
    equal = wing_error(fit_psf(im.image, im.variance, im.mask, x=x + 1e-3, y=y, snr=np.full(len(x), 100.0)))
    assert measured < 0.5 * equal, (measured, equal)
    assert given < 0.5 * equal, (given, equal)
