"""Rendered exposures of a simulated survey agree with its catalogs and truth."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from jointcal_ap.detect import detect_sources
from jointcal_ap.simulate import Camera, SurveyConfig, simulate
from jointcal_ap.simulate.exposures import exposure_plans, render_exposure
from jointcal_ap.simulate.truth import true_calibration_mag, true_flat_mag


def test_rendered_exposure_matches_the_truth():
    config = SurveyConfig.photometric(n_visits=2, n_stars=1500, seed=5, camera=Camera.grid(
        2, 1, naxis1=512, naxis2=512, pixel_scale_arcsec=1.0, k1=1e-9), flat_gradient_mag=0.05, fwhm_arcsec=3.0)
    sim = simulate(config)
    plans = exposure_plans(sim, seed=3)
    assert len(plans) == 4 and len({p.fwhm_px for p in plans}) == 2  # seeing varies per visit only
    plan = plans[1]
    exposure = render_exposure(sim, plan)
    assert exposure.image.shape == (512, 512) and exposure.metadata.visit == plan.visit
    tm = sim.truth.measurements
    rows = np.flatnonzero((tm.visit == plan.visit) & (tm.detector == plan.detector))
    # the sky carries the flat-field response, like the stars
    response = 10 ** (-0.4 * true_flat_mag(sim.truth, plan.detector, np.array([1.0, 512.0]), np.array([1.0, 512.0])))
    det = detect_sources(exposure.image, exposure.variance, exposure.mask, fwhm_px=plan.fwhm_px)
    dist, i = cKDTree(np.c_[tm.x[rows], tm.y[rows]]).query(np.c_[det.x, det.y])
    ok = (dist < 0.5) & (det.flags == 0)
    # every star well above the noise is found (faint ones fall below the 5σ threshold)
    found = np.zeros(len(rows), bool)
    found[i[dist < 0.5]] = True
    star_mag = sim.truth.stars.mag[np.searchsorted(sim.truth.stars.id, tm.star_id[rows])]
    assert found[star_mag < 20].mean() > 0.97
    r = rows[i[ok]]
    # positions and fluxes (zero point and flat included): the truth within the stated errors.
    # Robust statistics: an undetected faint neighbour can pull a star (no deblending), so
    # allow a few such outliers (one in ~110 here: 39σ in x), but no more than 3 %.
    def robust(p):
        return np.median(p), 1.4826 * np.median(np.abs(p - np.median(p))), np.mean(np.abs(p) > 5)

    for pulls in ((det.x[ok] - tm.x[r]) / np.sqrt(det.cov_xx[ok]), (det.y[ok] - tm.y[r]) / np.sqrt(det.cov_yy[ok]),
                  (det.flux[ok] - tm.flux_adu[r]) / det.flux_err[ok]):
        centre, sigma, outliers = robust(pulls)
        # the median of ~110 unit pulls scatters by ~0.12: 0.4 is a 3σ bound
        assert abs(centre) < 0.4 and 0.8 < sigma < 1.25 and outliers < 0.03
    # and through the true calibration, the true magnitudes
    mag = -2.5 * np.log10(det.flux[ok]) + true_calibration_mag(sim.truth, plan.visit, plan.detector, det.x[ok], det.y[ok])
    bright = det.flux[ok] / det.flux_err[ok] > 200
    star_index = np.searchsorted(sim.truth.stars.id, tm.star_id[r])
    assert np.median(np.abs(mag[bright] - sim.truth.stars.mag[star_index][bright])) < 0.002
    assert response[0] != response[1]  # the test's flat has a real gradient


def test_camera_layout_is_one_file_per_visit_with_a_ccd_per_extension(tmp_path):
    from astropy.io import fits

    from jointcal_ap.exposure import read_exposure
    from jointcal_ap.simulate import Camera, SurveyConfig, simulate_survey
    from jointcal_ap.simulate.exposures import VISIT_CARDS, render_survey
    from jointcal_ap.store.repository import Repository, ingest_exposures

    camera = Camera.grid(2, 1, naxis1=128, naxis2=96, gap_px=20.0, pixel_scale_arcsec=4.0, seed=1)
    sim = simulate_survey(SurveyConfig.photometric(n_visits=2, camera=camera, n_stars=150, seed=4),
                          tmp_path / "sim", formats=(), overwrite=True)
    paths = render_survey(sim.data, tmp_path / "raw", layout="camera")
    assert [p.name for p in paths] == ["visit0.fits", "visit0.weight.fits", "visit1.fits",
                                       "visit1.weight.fits"]
    with fits.open(paths[0]) as hdul, fits.open(paths[1]) as weights:
        assert [h.name for h in hdul] == ["PRIMARY", "CCD00", "CCD01"]
        for hdu in hdul[1:]:  # what SExtractor copies into LDAC_IMHEAD
            assert all(key in hdu.header for key in VISIT_CARDS)
            assert hdu.header["TIMESYS"] == "TAI" and "CTYPE1" in hdu.header
        ccd = read_exposure(f"{paths[0]}[CCD01]")
        # the weight map holds the background noise only (SExtractor adds the stars' photon
        # noise itself): 1 / the sky + read-noise variance everywhere, stars' pixels included
        weight, variance = weights["CCD01"].data, np.asarray(ccd.variance)
        np.testing.assert_allclose(weight, 1.0 / np.median(variance), rtol=0.1)
        peak = np.unravel_index(np.argmax(ccd.image), variance.shape)
        assert variance[peak] > 2 * np.median(variance)  # a star there ...
        assert weight[peak] == pytest.approx(1.0 / np.median(variance), rel=0.1)  # ... not in the weight
    assert (ccd.metadata.visit, ccd.metadata.detector) == (0, 1)
    truth = sim.truth.visit(0)
    assert ccd.metadata.mjd_tai == pytest.approx(truth.mjd_tai, abs=1e-8)
    with Repository(tmp_path / "repo") as repo:
        refs = ingest_exposures(repo, [paths[0], paths[2]])
        assert [r.path.rsplit("/", 1)[1] for r in refs] == [
            "visit0.fits[CCD00]", "visit0.fits[CCD01]", "visit1.fits[CCD00]", "visit1.fits[CCD01]"]
        assert [v.visit for v in repo.registry.visits()] == [0, 1]
