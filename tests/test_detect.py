"""Detection and measurement on rendered images: honest errors, completeness, background, flags."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from jointcal_ap.detect import (
    FLAG_BITS,
    MASK_BITS,
    DetectionError,
    catalog_from_image,
    detect_sources,
    estimate_background,
)
from jointcal_ap.simulate.images import render_image

SKY = 800.0
FWHM = 3.0
SHAPE = (1024, 1024)


def _grid_stars(seed, spacing=40.0, log_flux=(2.8, 5.3)):
    """Isolated stars: a jittered grid, fluxes log-uniform."""
    rng = np.random.default_rng(seed)
    g = np.arange(spacing / 2, SHAPE[0], spacing)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    x = x + rng.uniform(-0.5, 0.5, x.size)
    y = y + rng.uniform(-0.5, 0.5, x.size)
    return x, y, 10 ** rng.uniform(*log_flux, x.size)


def _match(det, x, y, radius=1.0):
    """For each detection, the index of the true star within ``radius`` px, or -1."""
    d, j = cKDTree(np.column_stack([x, y])).query(np.column_stack([det.x, det.y]))
    return np.where(d < radius, j, -1)


@pytest.fixture(scope="module")
def isolated():
    x, y, flux = _grid_stars(11)
    im = render_image(SHAPE, x, y, flux, fwhm_px=FWHM, sky_adu=SKY, gain=1.5, read_noise_e=5.0, seed=3)
    return x, y, flux, im, detect_sources(im.image, im.variance, im.mask)


def test_fwhm_is_estimated(isolated):
    *_, det = isolated
    assert det.fwhm_estimated
    assert det.fwhm_px == pytest.approx(FWHM, rel=0.02)
    assert det.aperture_radius_px == pytest.approx(2.0 * det.fwhm_px)


def test_centroid_errors_are_honest(isolated):
    x, y, _, _, det = isolated
    j = _match(det, x, y)
    ok = (j >= 0) & (det.flags == 0)
    assert ok.sum() > 400
    dx, dy = det.x[ok] - x[j[ok]], det.y[ok] - y[j[ok]]
    for pull in (dx / np.sqrt(det.cov_xx[ok]), dy / np.sqrt(det.cov_yy[ok])):
        assert abs(pull.mean()) < 0.15
        assert 0.85 < pull.std() < 1.15
    # the full 2-D chi² of the covariance: mean 2
    det_c = det.cov_xx[ok] * det.cov_yy[ok] - det.cov_xy[ok] ** 2
    chi2 = (det.cov_yy[ok] * dx**2 - 2 * det.cov_xy[ok] * dx * dy + det.cov_xx[ok] * dy**2) / det_c
    assert chi2.mean() == pytest.approx(2.0, rel=0.15)


def test_flux_errors_are_honest_and_unbiased(isolated):
    x, y, flux, _, det = isolated
    j = _match(det, x, y)
    ok = (j >= 0) & (det.flags == 0)
    pull = (det.flux[ok] - flux[j[ok]]) / det.flux_err[ok]
    assert abs(pull.mean()) < 0.15
    assert 0.85 < pull.std() < 1.15
    # bright stars: the 2-FWHM aperture needs no correction (Gaussian: 1.5e-5 missing)
    bright = ok & (det.flux / det.flux_err > 100)
    assert bright.sum() > 100
    bias_mmag = -2.5e3 * np.log10(np.median(det.flux[bright] / flux[j[bright]]))
    noise_mmag = 1.0857e3 * np.median(det.flux_err[bright] / det.flux[bright]) / np.sqrt(bright.sum())
    assert abs(bias_mmag) < max(1.0, 4.0 * noise_mmag)


def test_completeness_above_snr_20(isolated):
    x, y, flux, im, det = isolated
    r_ap = 2.0 * FWHM
    noise = np.sqrt(flux / im.gain + np.pi * r_ap**2 * (SKY / im.gain + (im.read_noise_e / im.gain) ** 2))
    bright = flux / noise > 20
    assert bright.sum() > 200
    found = np.zeros(x.size, dtype=bool)
    j = _match(det, x, y)
    found[j[j >= 0]] = True
    assert found[bright].mean() >= 0.99
    # and nothing spurious: every detection is a star
    assert np.all(j >= 0)


def test_background_is_unbiased(isolated):
    *_, im, det = isolated
    bkg = det.background
    assert abs(float(bkg.level.mean(dtype=np.float64)) - SKY) < 0.15
    sky_rms = np.sqrt(SKY / im.gain + (im.read_noise_e / im.gain) ** 2)
    assert float(np.median(bkg.rms)) == pytest.approx(sky_rms, rel=0.02)


def test_sloped_background_is_followed():
    yy, xx = np.indices((512, 512))
    sky = 500.0 + 0.2 * xx + 0.1 * yy
    im = render_image((512, 512), [], [], [], fwhm_px=FWHM, sky_adu=sky, seed=4)
    bkg = estimate_background(im.image, im.mask, mesh_px=64)
    inner = (slice(32, -32), slice(32, -32))  # the spline is flat beyond the outer mesh centres
    assert np.abs(bkg.level[inner] - sky[inner]).max() < 1.5
    assert abs(float((bkg.level[inner] - sky[inner]).mean())) < 0.2


def test_few_false_positives_on_blank_noise():
    im = render_image((1024, 1024), [], [], [], fwhm_px=FWHM, sky_adu=SKY, seed=9)
    det = detect_sources(im.image, im.variance, im.mask, fwhm_px=FWHM, threshold_sigma=5.0)
    assert len(det) <= 3
    assert abs(float(det.background.level.mean(dtype=np.float64)) - SKY) < 0.15
    with pytest.raises(DetectionError, match="pass fwhm_px"):
        detect_sources(im.image, im.variance, im.mask)


def test_flags_saturated_edge_masked_and_blends():
    x = np.array([100.0, 3.0, 200.0, 300.0, 302.5, 400.0, 412.0, 100.0, 108.0])
    y = np.array([100.0, 150.0, 200.0, 300.0, 300.8, 400.0, 400.0, 400.0, 400.0])
    flux = np.array([3e6, 5e4, 5e4, 5e4, 3e4, 5e4, 2e5, 2e4, 4e5])
    response = np.ones((512, 512))
    response[195:205, 201] = 0.0  # a dead column piece through star 2's aperture
    im = render_image((512, 512), x, y, flux, fwhm_px=FWHM, sky_adu=SKY, saturation_adu=6e4,
                      response=response, seed=5)
    det = detect_sources(im.image, im.variance, im.mask, fwhm_px=FWHM)
    j = _match(det, x, y, radius=2.0)

    def flags_of(k):
        hits = np.flatnonzero(j == k)
        assert hits.size == 1, f"star {k} matched {hits.size} detections"
        return int(det.flags[hits[0]])

    assert flags_of(0) & FLAG_BITS["SATURATED"]
    assert flags_of(1) & FLAG_BITS["EDGE"]
    assert flags_of(2) & FLAG_BITS["MASKED"]
    # an unresolved pair 2.6 px apart: one detection, flagged
    pair = np.flatnonzero(np.hypot(det.x - 301, det.y - 300.4) < 3)
    assert pair.size == 1 and det.flags[pair[0]] & FLAG_BITS["BLENDED"]
    # two peaks of one footprint, 12 px apart: both measured, both flagged BLENDED; the
    # fainter one's 6 px aperture gets < 1e-5 of the other's light: no NEIGHBOUR
    assert flags_of(5) == FLAG_BITS["BLENDED"] and flags_of(6) == FLAG_BITS["BLENDED"]
    # 8 px from a 20x brighter star: the aperture is contaminated
    assert flags_of(7) & FLAG_BITS["NEIGHBOUR"]
    assert not flags_of(8) & FLAG_BITS["NEIGHBOUR"]
    assert (im.mask & MASK_BITS["SAT"]).any()


def test_response_pattern_shows_in_the_fluxes():
    x, y, flux = _grid_stars(12, log_flux=(4.5, 5.3))
    response = np.ones(SHAPE)
    response[:, SHAPE[1] // 2:] = 1.05
    im = render_image(SHAPE, x, y, flux, fwhm_px=FWHM, sky_adu=SKY, response=response, seed=6)
    det = detect_sources(im.image, im.variance, im.mask, fwhm_px=FWHM)
    j = _match(det, x, y)
    ok = (j >= 0) & (det.flags == 0)
    ratio = det.flux[ok] / flux[j[ok]]
    right = det.x[ok] > SHAPE[1] / 2 + 0.5
    measured = np.mean(ratio[right]) / np.mean(ratio[~right])
    err = np.hypot(ratio[right].std() / np.sqrt(right.sum()), ratio[~right].std() / np.sqrt((~right).sum()))
    assert measured == pytest.approx(1.05, abs=max(4 * err, 1e-3))


def test_catalog_for_the_fitter(tmp_path, isolated):
    import pyarrow as pa
    from astropy.wcs import WCS

    from jointcal_ap.fit.io import SURVEY_COLUMNS, ellipse_to_covariance, read_parquet_survey

    *_, im, det = isolated
    table = catalog_from_image(im.image, im.variance, im.mask, visit=7, detector=2)
    assert set(SURVEY_COLUMNS["sources.parquet"]) <= set(table.column_names)
    np.testing.assert_allclose(table["x"].to_numpy(), det.x)
    np.testing.assert_allclose(table["xy_cov"].to_numpy(), det.cov_xy)
    # the SExtractor error ellipse gives the covariance back
    cxx, cyy, cxy = ellipse_to_covariance(det.err_a, det.err_b, det.err_theta_deg)
    np.testing.assert_allclose(cxx, det.cov_xx, rtol=1e-9)
    np.testing.assert_allclose(cyy, det.cov_yy, rtol=1e-9)
    np.testing.assert_allclose(cxy, det.cov_xy, rtol=1e-6, atol=1e-15)
    ldac = det.ldac_columns()
    np.testing.assert_array_equal(ldac["XWIN_IMAGE"], det.x)

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [512.5, 512.5]
    wcs.wcs.cd = np.array([[-0.26, 0.0], [0.0, 0.26]]) / 3600.0
    pq.write_table(pa.table({"visit": [7], "mjd_tai": [60000.0], "filter": ["r"], "exptime": [30.0],
                             "ra": [150.0], "dec": [2.0]}), tmp_path / "visits.parquet")
    pq.write_table(table, tmp_path / "sources.parquet")
    pq.write_table(pa.table({"visit": [7], "detector": [2], "naxis1": [1024], "naxis2": [1024],
                             "header": [wcs.to_header().tostring()]}), tmp_path / "wcs.parquet")
    fit_input = read_parquet_survey(tmp_path)
    m = fit_input.measurements
    assert len(m.x) == len(det)
    np.testing.assert_allclose(m.cov_xx, det.cov_xx)
    np.testing.assert_array_equal(m.flags, det.flags)


def test_bad_input_is_rejected():
    img = np.zeros((32, 32), dtype=np.float32)
    with pytest.raises(DetectionError, match="variance has shape"):
        detect_sources(img, np.ones((16, 16)), fwhm_px=3.0)
    with pytest.raises(DetectionError, match="integer bit mask"):
        detect_sources(img, np.ones((32, 32)), np.zeros((32, 32)), fwhm_px=3.0)
    with pytest.raises(DetectionError, match="no usable pixel"):
        detect_sources(img, np.zeros((32, 32)), fwhm_px=3.0)
    with pytest.raises(ValueError, match="threshold_sigma"):
        detect_sources(img, np.ones((32, 32)), threshold_sigma=-1.0)


def test_aperture_correction_recovers_the_flux_a_moffat_psf_puts_outside_the_aperture():
    x, y, flux = _grid_stars(11, spacing=60.0, log_flux=(4.0, 5.3))
    im = render_image(SHAPE, x, y, flux, fwhm_px=FWHM, sky_adu=SKY, gain=1.5, read_noise_e=5.0, seed=4,
                      psf="moffat", moffat_beta=3.0)
    raw = detect_sources(im.image, im.variance, im.mask, fwhm_px=FWHM, aperture_correction=False)
    det = detect_sources(im.image, im.variance, im.mask, fwhm_px=FWHM)
    assert raw.aperture_correction == 1.0 and det.aperture_correction_stars >= 20
    # the aperture of 2 FWHM misses 3.8 % of a Moffat beta = 3; the correction to 5 FWHM leaves 0.14 %
    lost = 1 - im.psf.encircled_energy(2 * FWHM)
    assert 0.035 < lost < 0.041
    def offset_mag(d):  # median (measured − true) magnitude of the clean matched stars
        j = _match(d, x, y)
        clean = (j >= 0) & (d.flags == 0)
        return float(np.median(-2.5 * np.log10(d.flux[clean] / flux[j[clean]])))

    assert abs(offset_mag(raw) - (-2.5 * np.log10(1 - lost))) < 0.002  # the 0.041 mag the aperture misses
    assert abs(offset_mag(det)) < 0.003  # corrected (the 0.14 % beyond 5 FWHM is 1.5 mmag)
    # a Gaussian PSF needs (almost) none
    gauss = detect_sources(*(lambda r: (r.image, r.variance, r.mask))(render_image(
        SHAPE, x, y, flux, fwhm_px=FWHM, sky_adu=SKY, gain=1.5, read_noise_e=5.0, seed=4)), fwhm_px=FWHM)
    assert gauss.aperture_correction == 1.0 and gauss.aperture_correction_stars >= 20  # measured, not significant
