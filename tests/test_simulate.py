"""The survey simulator: camera geometry, truth consistency, noise model, and both output formats."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from jointcal_ap.fit.io import read_ldac, read_parquet_survey
from jointcal_ap.refcat import open_refcat
from jointcal_ap.refcat.epoch import propagate
from jointcal_ap.simulate import (
    Camera,
    Stars,
    SurveyConfig,
    load_truth,
    make_visits,
    simulate,
    simulate_survey,
    stars_from_refcat,
    synthetic_stars,
    true_pixel_to_sky,
    true_sky_to_pixel,
    true_star_positions,
)

ARCSEC_PER_DEG = 3600.0


def sky_offsets_arcsec(ra1, dec1, ra2, dec2):
    """(Δα·cosδ, Δδ) in arcsec, small angles."""
    dra = (np.asarray(ra1) - np.asarray(ra2) + 180.0) % 360.0 - 180.0
    return dra * np.cos(np.deg2rad(dec2)) * ARCSEC_PER_DEG, (np.asarray(dec1) - np.asarray(dec2)) * ARCSEC_PER_DEG


@pytest.fixture(scope="module")
def noise_free():
    return simulate(SurveyConfig(noise=False, n_stars=2000, n_visits=4))


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "survey"
    return simulate_survey(SurveyConfig(outlier_fraction=0.02), out)


# ----------------------------------------------------------------------------- camera


@pytest.mark.parametrize("camera", [Camera(), Camera.single(), Camera.grid(3, 2, k1=-8e-10, seed=5)])
def test_camera_inverse_round_trip(camera):
    rng = np.random.default_rng(0)
    for k, det in enumerate(camera.detectors):
        x = np.concatenate([rng.uniform(0.5, det.naxis1 + 0.5, 2000), det.corners()[:, 0]])
        y = np.concatenate([rng.uniform(0.5, det.naxis2 + 0.5, 2000), det.corners()[:, 1]])
        fx, fy = camera.pixel_to_focal(k, x, y)
        x2, y2 = camera.focal_to_pixel(k, fx, fy)
        assert np.max(np.abs(x2 - x)) < 1e-9 and np.max(np.abs(y2 - y)) < 1e-9
        found, xl, yl = camera.locate(fx[:-4], fy[:-4])  # (the corners sit exactly on the edges)
        assert np.all(found == k)
        np.testing.assert_allclose(xl, x[:-4], atol=1e-9)
        np.testing.assert_allclose(yl, y[:-4], atol=1e-9)


def test_default_camera_is_realistic():
    cam = Camera()
    assert len(cam) == 4 and all((d.naxis1, d.naxis2) == (2048, 2048) for d in cam.detectors)
    # ~50 px gaps, ~1e-3 rad rotations
    x0 = sorted(d.x0 for d in cam.detectors)
    assert 2048 + 40 < x0[2] - x0[1] < 2048 + 60
    assert all(0 < abs(d.rotation_rad) < 5e-3 for d in cam.detectors)
    # 5-10 arcsec of distortion at the field corner
    distortion_arcsec = (cam.field_radius_px() - cam.field_radius_px(distorted=False)) * cam.pixel_scale_arcsec
    assert 5.0 < distortion_arcsec < 10.0
    assert Camera.from_dict(json.loads(json.dumps(cam.to_dict()))) == cam


def test_true_distortion_is_a_cubic_polynomial_of_pixels():
    cam = Camera()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(1, 2048, 400), rng.uniform(1, 2048, 400)
    fx, fy = cam.pixel_to_focal(2, x, y)
    terms = np.stack([x**i * y**j for i in range(4) for j in range(4 - i)], axis=1)
    for target in (fx, fy):
        coef, *_ = np.linalg.lstsq(terms / np.abs(terms).max(axis=0), target, rcond=None)
        resid = terms / np.abs(terms).max(axis=0) @ coef - target
        assert np.max(np.abs(resid)) < 1e-7  # pixels


# ----------------------------------------------------------------------------- plan, stars


def test_visit_plan_and_stars_are_seeded_and_realistic():
    a = make_visits(8, ra=150.0, dec=2.0, seed=3, dither_arcmin=5.0, rotation_deg=10.0)
    b = make_visits(8, ra=150.0, dec=2.0, seed=3, dither_arcmin=5.0, rotation_deg=10.0)
    assert a == b
    assert a != make_visits(8, ra=150.0, dec=2.0, seed=4, dither_arcmin=5.0, rotation_deg=10.0)
    epochs = [v.epoch for v in a]
    assert epochs == sorted(epochs) and 2000 <= epochs[0] and epochs[-1] <= 2020
    assert all(abs(v.rotation_deg) <= 10 and abs(v.scale - 1) < 1e-3 for v in a)
    assert all(np.hypot((v.ra - 150.0) * np.cos(np.deg2rad(2.0)), v.dec - 2.0) * 60 <= 5.01 for v in a)

    stars = synthetic_stars(20000, ra=150.0, dec=2.0, radius_deg=0.5, seed=2)
    pm = np.hypot(stars.pmra, stars.pmdec)
    assert 3 < np.median(pm) < 20 and 200 < pm.max() <= 600 * (1 + 1e-12)
    assert 0 < stars.parallax.min() and stars.parallax.max() <= 20
    ref = stars.in_reference
    assert np.array_equal(ref, stars.mag <= 19.0)
    assert np.all(np.isnan(stars.ref_ra[~ref])) and np.all(np.isfinite(stars.ref_ra[ref]))
    # catalog = truth + N(0, σ): normalised differences are standard normal
    ddec = (stars.ref_dec[ref] - stars.dec[ref]) * 3.6e6 / stars.dec_error[ref]
    dpm = (stars.ref_pmra[ref] - stars.pmra[ref]) / stars.pmra_error[ref]
    for pull in (ddec, dpm):
        assert abs(np.mean(pull)) < 0.05 and abs(np.std(pull) - 1) < 0.05
    assert 0.1 <= np.nanmin(stars.ra_error) and np.nanmax(stars.ra_error) <= 1.0
    assert 0.05 <= np.nanmin(stars.pmra_error) and np.nanmax(stars.pmra_error) <= 0.5


# ----------------------------------------------------------------------------- truth


def test_noise_free_measurements_land_where_the_truth_says(noise_free):
    truth, src = noise_free.truth, noise_free.sources
    m = truth.measurements
    assert len(src) > 1000 and np.array_equal(src.x, m.x) and np.array_equal(src.y, m.y)
    stars_by_id = {int(i): k for k, i in enumerate(truth.stars.id)}
    for v in truth.visits:
        # Independent propagation of every star to this visit (annual parallax included).
        ra_all, dec_all = true_star_positions(truth, v.visit)
        for d in range(len(truth.camera)):
            rows = src.rows(v.visit, d)
            ra, dec = true_pixel_to_sky(truth, v.visit, d, src.x[rows], src.y[rows])
            k = np.array([stars_by_id[int(i)] for i in m.star_id[rows]])
            dx, dy = sky_offsets_arcsec(ra, dec, ra_all[k], dec_all[k])
            assert np.max(np.hypot(dx, dy)) < 1e-6
            dx, dy = sky_offsets_arcsec(ra, dec, m.ra[rows], m.dec[rows])
            assert np.max(np.hypot(dx, dy)) < 1e-6
            x, y = true_sky_to_pixel(truth, v.visit, d, ra, dec)
            assert np.max(np.abs(x - src.x[rows])) < 1e-7 and np.max(np.abs(y - src.y[rows])) < 1e-7


def test_true_mapping_agrees_with_wcslib_tan(noise_free):
    """Our gnomonic projection and linear per-visit transform, checked against astropy/wcslib."""
    truth = noise_free.truth
    v = truth.visits[1]
    m_deg = np.rad2deg(v.tangent_matrix(truth.camera))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [v.ra, v.dec]
    w.wcs.crpix = [1.0, 1.0]  # so that origin-0 pixel p has intermediate coordinates CD·p
    w.wcs.cd = m_deg
    x, y = np.linspace(1, 2048, 50), np.linspace(2048, 1, 50)
    fx, fy = truth.camera.pixel_to_focal(3, x, y)
    ra_ref, dec_ref = w.all_pix2world(fx, fy, 0)
    ra, dec = true_pixel_to_sky(truth, v.visit, 3, x, y)
    dx, dy = sky_offsets_arcsec(ra, dec, ra_ref, dec_ref)
    assert np.max(np.hypot(dx, dy)) < 1e-6


def test_annual_parallax_is_in_the_measurements(noise_free):
    truth = noise_free.truth
    m = truth.measurements
    s = truth.stars
    k = np.searchsorted(s.id, m.star_id)
    epochs = np.array([truth.visit(int(vv)).epoch for vv in m.visit])
    bary = propagate(s.ra[k], s.dec[k], s.parallax[k], s.pmra[k], s.pmdec[k], 0.0, s.epoch, epochs)
    dx, dy = sky_offsets_arcsec(m.ra, m.dec, bary.ra, bary.dec)
    shift_mas = np.hypot(dx, dy) * 1e3
    assert np.all(shift_mas <= 1.02 * s.parallax[k] + 1e-6)
    assert np.median(shift_mas / s.parallax[k]) > 0.3


def test_initial_wcs_is_deliberately_imperfect(noise_free):
    truth = noise_free.truth
    cfg = noise_free.config
    offsets = []
    for v in truth.visits:
        for d in range(len(truth.camera)):
            h = noise_free.header(v.visit, d)
            assert h["CTYPE1"] == "RA---TAN" and not any(k.startswith(("PV", "A_", "B_")) for k in h)
            assert np.linalg.det([[h["CD1_1"], h["CD1_2"]], [h["CD2_1"], h["CD2_2"]]]) < 0  # east left
            rows = noise_free.sources.rows(v.visit, d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                ra, dec = WCS(h).all_pix2world(noise_free.sources.x[rows], noise_free.sources.y[rows], 1)
            dx, dy = sky_offsets_arcsec(ra, dec, truth.measurements.ra[rows], truth.measurements.dec[rows])
            offsets.append(np.hypot(dx, dy))
    offsets = np.concatenate(offsets)
    assert 0.5 < np.median(offsets) < 30.0  # arcsec: pointing, rotation, distortion and scale errors
    assert truth.header_errors.shape == (cfg.n_visits, 3)


# ----------------------------------------------------------------------------- noise


def test_noise_has_the_stated_sigma():
    sim = simulate(SurveyConfig(n_stars=8000, n_visits=4, seed=7))
    s, m = sim.sources, sim.truth.measurements
    dx, dy = s.x - m.x, s.y - m.y
    det = s.cov_xx * s.cov_yy - s.cov_xy**2
    chi2 = (s.cov_yy * dx * dx - 2 * s.cov_xy * dx * dy + s.cov_xx * dy * dy) / det
    n = len(s)
    assert n > 5000
    assert abs(chi2.mean() - 2.0) < 5 * 2.0 / np.sqrt(n)
    for pull in (dx / np.sqrt(s.cov_xx), dy / np.sqrt(s.cov_yy)):
        assert abs(pull.mean()) < 5 / np.sqrt(n) and abs(pull.std() - 1.0) < 0.03
    # σ ≈ FWHM / (2.355 S/N) with a floor
    fwhm_px = sim.config.fwhm_arcsec / sim.config.camera.pixel_scale_arcsec
    snr = s.flux / s.flux_err
    sigma = np.sqrt(s.err_a * s.err_b)
    assert np.all(sigma >= sim.config.centroid_floor_px * np.sqrt(1 - sim.config.max_ellipticity) * 0.999)
    faint = snr < 50
    expected = np.hypot(fwhm_px / (2.3548 * snr[faint]), sim.config.centroid_floor_px)
    assert np.median(sigma[faint] / expected) == pytest.approx(1.0, abs=0.1)
    # flux pulls
    k = np.searchsorted(sim.truth.stars.id, m.star_id)
    flux_true = sim.config.exptime * 10 ** (-0.4 * (sim.truth.stars.mag[k] - sim.config.zero_point))
    pull = (s.flux - flux_true) / s.flux_err
    assert abs(pull.mean()) < 0.05 and abs(pull.std() - 1.0) < 0.05
    # float32, as SExtractor stores them
    for a in (s.err_a, s.err_b, s.err_theta_deg, s.flux, s.flux_err):
        assert np.array_equal(a, a.astype(np.float32).astype(np.float64))


def test_outliers_are_displaced_by_1_to_10_arcsec():
    sim = simulate(SurveyConfig(n_stars=1500, n_visits=3, outlier_fraction=0.1, noise=False))
    m, s = sim.truth.measurements, sim.sources
    frac = m.is_outlier.mean()
    assert 0.07 < frac < 0.13
    shift_arcsec = np.hypot(s.x - m.x, s.y - m.y) * sim.config.camera.pixel_scale_arcsec
    assert np.all(shift_arcsec[~m.is_outlier] == 0)
    clipped = (s.x <= 0.5) | (s.y <= 0.5) | (s.x >= 2048.5) | (s.y >= 2048.5)
    ok = m.is_outlier & ~clipped
    assert np.all((shift_arcsec[ok] > 1 - 1e-9) & (shift_arcsec[ok] < 10 + 1e-9))


def test_simulation_is_deterministic():
    a = simulate(SurveyConfig(n_stars=300, n_visits=2))
    b = simulate(SurveyConfig(n_stars=300, n_visits=2))
    c = simulate(SurveyConfig(n_stars=300, n_visits=2, seed=2))
    assert np.array_equal(a.sources.x, b.sources.x) and np.array_equal(a.sources.flux, b.sources.flux)
    assert len(a.sources) != len(c.sources) or not np.array_equal(a.sources.x, c.sources.x)


def test_presets():
    small = SurveyConfig.small()
    assert small.n_visits == 4 and len(small.camera) == 1
    large = SurveyConfig.preset("large")
    assert large.n_visits == 24 and len(large.camera) == 4
    n = len(simulate(large).sources)
    assert 150_000 <= n <= 230_000
    with pytest.raises(ValueError, match="unknown preset"):
        SurveyConfig.preset("huge")


# ----------------------------------------------------------------------------- written files


def test_both_formats_give_identical_measurements(survey):
    a = read_parquet_survey(survey.survey_dir)
    b = read_ldac(survey.ldac_paths)
    ma, mb = a.measurements, b.measurements
    assert len(ma) == len(survey.truth.measurements) > 3000
    for name in ("ccd_index", "x", "y", "cov_xy", "flux", "flux_err", "flags", "ra_init", "dec_init"):
        assert np.array_equal(getattr(ma, name), getattr(mb, name)), name
    for name in ("cov_xx", "cov_yy"):  # Parquet holds σ, LDAC the ellipse: equal to rounding
        np.testing.assert_allclose(getattr(ma, name), getattr(mb, name), rtol=1e-14, atol=0)
    assert [(c.visit, c.detector, c.naxis1, c.naxis2) for c in a.ccds] == \
           [(c.visit, c.detector, c.naxis1, c.naxis2) for c in b.ccds]
    for va, vb, vt in zip(a.visits, b.visits, survey.truth.visits, strict=True):
        assert va.visit == vb.visit == vt.visit
        assert abs(va.mjd_tai - vt.mjd_tai) < 1e-9 and abs(vb.mjd_tai - vt.mjd_tai) < 1e-9  # days
        assert va.epoch == vt.epoch
        assert abs(vb.epoch - vt.epoch) * 3.15576e7 < 1e-3  # seconds
        assert (va.filter, va.exptime) == (vb.filter, vb.exptime) == ("r", 30.0)
        assert va.ra == pytest.approx(vb.ra, abs=1e-12) and va.dec == pytest.approx(vb.dec, abs=1e-12)
    # the truth is row-aligned with the sources
    truth = load_truth(survey.root)
    ccd = [(c.visit, c.detector) for c in a.ccds]
    assert [ccd[i] for i in ma.ccd_index] == list(zip(truth.measurements.visit, truth.measurements.detector,
                                                      strict=True))
    assert np.array_equal(truth.measurements.x, survey.truth.measurements.x)
    assert truth.camera == survey.truth.camera and truth.visits == survey.truth.visits
    assert np.array_equal(truth.stars.pmra, survey.truth.stars.pmra)
    assert 0 < truth.measurements.is_outlier.sum() < 0.05 * len(ma)


def test_ldac_files_are_laid_out_as_sextractor_writes_them(survey):
    path = survey.ldac_paths[0]
    assert path.name == "visit_0000.cat"
    with fits.open(path) as hdul:
        assert hdul[0].header["NAXIS"] == 0
        names = [h.name for h in hdul[1:]]
        assert names == ["LDAC_IMHEAD", "LDAC_OBJECTS"] * 4
        imhead = hdul[1]
        ncards = len(imhead.data.view(np.ndarray).tobytes()) // 80
        assert imhead.columns[0].name == "Field Header Card"
        assert imhead.columns[0].format == f"{80 * ncards}A"
        assert imhead.header["TDIM1"] == f"(80, {ncards})"
        raw = imhead.data.view(np.ndarray).tobytes()
        assert b"\0" not in raw and raw[-80:].rstrip() == b"END"
        header = fits.Header.fromstring(raw.decode())
        for key in ("NAXIS1", "NAXIS2", "CRVAL1", "CRPIX1", "CD1_1", "MJD-OBS", "EXPTIME", "FILTER"):
            assert key in header
        objects = hdul[2]
        formats = {c.name: c.format for c in objects.columns}
        assert formats["XWIN_IMAGE"] == "D" and formats["ERRAWIN_IMAGE"] == "E"
        assert formats["ERRTHETAWIN_IMAGE"] == "E" and formats["FLAGS"] == "I"
        for name in ("X_WORLD", "Y_WORLD", "MAG_AUTO", "MAGERR_AUTO", "FLUX_AUTO", "FLUXERR_AUTO"):
            assert name in formats
        mag = objects.data["MAG_AUTO"]
        np.testing.assert_allclose(mag, -2.5 * np.log10(objects.data["FLUX_AUTO"]), atol=1e-5)


def test_parquet_layout_columns(survey):
    root = survey.survey_dir
    assert pq.read_schema(root / "visits.parquet").names == ["visit", "mjd_tai", "filter", "exptime", "ra", "dec"]
    assert pq.read_schema(root / "sources.parquet").names == [
        "visit", "detector", "x", "y", "x_err", "y_err", "xy_cov", "flux", "flux_err", "flags"]
    assert pq.read_schema(root / "wcs.parquet").names == ["visit", "detector", "naxis1", "naxis2", "header"]
    for name in ("measurements", "stars", "visits"):
        assert (survey.truth_dir / f"{name}.parquet").exists()
    assert not list(survey.root.parent.glob(".*partial"))


def test_reference_catalog_is_converted(survey):
    cat = open_refcat(survey.refcat_dir)
    stars = survey.truth.stars
    n_ref = int(stars.in_reference.sum())
    assert len(cat) == n_ref
    table = cat.cone(survey.config.ra, survey.config.dec, 5.0, format="arrow")
    assert table.num_rows == n_ref
    ids = table.column("id").to_numpy()
    k = np.searchsorted(stars.id, ids)
    np.testing.assert_array_equal(table.column("ra").to_numpy(), stars.ref_ra[k])
    np.testing.assert_array_equal(table.column("pmdec").to_numpy(), stars.ref_pmdec[k])
    assert np.all(table.column("epoch").to_numpy() == 2016.0)
    assert {"ra_error", "parallax", "parallax_error", "pmra_error", "mag"} <= set(cat.columns)


def test_stars_from_refcat(survey):
    stars = stars_from_refcat(survey.refcat_dir, survey.config.ra, survey.config.dec, 0.2, seed=3)
    assert isinstance(stars, Stars) and len(stars) > 100 and stars.in_reference.all()
    truth = survey.truth.stars
    k = np.searchsorted(truth.id, stars.id)
    # the refcat's values (truth + noise) become the new truth
    np.testing.assert_allclose(stars.pmra, truth.ref_pmra[k], rtol=1e-12)
    assert np.all(stars.ref_ra != stars.ra)
    sim = simulate(SurveyConfig(n_visits=2), stars=stars)
    assert len(sim.sources) > 50
    assert set(np.unique(sim.truth.measurements.star_id)) <= set(stars.id.tolist())


def test_existing_output_is_not_overwritten(survey):
    with pytest.raises(FileExistsError, match="already exists"):
        simulate_survey(SurveyConfig(n_stars=10, n_visits=1), survey.root)


def test_stars_from_the_real_hipparcos_refcat(hip_refcat):
    stars = stars_from_refcat(hip_refcat, 56.75, 24.12, 2.0, seed=1)  # the Pleiades
    assert len(stars) > 50 and stars.epoch == 2016.0
    cat = hip_refcat.cone(56.75, 24.12, 2.0, epoch=2016.0, format="arrow")
    row = {int(i): r for r, i in enumerate(cat.column("id").to_numpy())}
    k = np.array([row[int(i)] for i in stars.id])
    np.testing.assert_array_equal(stars.mag, cat.column("hp_mag").to_numpy()[k])
    np.testing.assert_array_equal(stars.ra, cat.column("ra").to_numpy()[k])
    # the Pleiades move together at ~(20, -45) mas/yr
    assert np.median(stars.pmra) == pytest.approx(20, abs=5) and np.median(stars.pmdec) == pytest.approx(-45, abs=5)
    sim = simulate(SurveyConfig(ra=56.75, dec=24.12, n_visits=2), stars=stars)
    assert set(sim.truth.measurements.star_id.tolist()) <= set(stars.id.tolist())
