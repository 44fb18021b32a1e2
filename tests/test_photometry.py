"""The joint photometric fit (jointcal_ap.fit.photometry) and the photometric truth of the simulator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.calibration import (
    NJY_ZERO_POINT,
    Calibration,
    DetectorCalibration,
    PhotometricCalibration,
    pixel_to_chebyshev,
)
from jointcal_ap.errors import FitError
from jointcal_ap.fit.photometry import PhotometryData, PhotometryOptions, fit_photometry
from jointcal_ap.refcat import open_refcat
from jointcal_ap.simulate import (
    Camera,
    SurveyConfig,
    colour_transformation,
    load_truth,
    simulate,
    simulate_survey,
    true_calibration_mag,
    true_flat_mag,
)

COLOUR_TERMS = (0.02, 0.1, 0.0)  # true band = ref_mag + 0.02 + 0.1 colour


def photometry_data(sim, *, focal: bool = False) -> tuple[PhotometryData, np.ndarray]:
    """The fit input from a simulation, stars indexed from the truth (no association needed).

    Returns the data and, per fitted star, its row in ``sim.truth.stars``.
    """
    t, m, s = sim.truth, sim.truth.measurements, sim.sources
    ids, star = np.unique(m.star_id, return_inverse=True)
    k = np.searchsorted(t.stars.id, ids)
    position = {v.visit: i for i, v in enumerate(t.visits)}
    visit = np.array([position[int(v)] for v in m.visit])
    naxis = np.array([[d.naxis1, d.naxis2] for d in t.camera.detectors])
    fx = fy = None
    if focal:
        fx, fy = np.zeros(len(m)), np.zeros(len(m))
        for d in range(len(naxis)):
            rows = m.detector == d
            fx[rows], fy[rows] = t.camera.pixel_to_focal(d, s.x[rows], s.y[rows])
    data = PhotometryData(star=star, visit=visit, detector=m.detector, x=s.x, y=s.y, flux=s.flux,
                          flux_err=s.flux_err, naxis=naxis, ref_mag=t.stars.ref_mag[k],
                          ref_mag_err=t.stars.ref_mag_error[k], colour=t.stars.colour[k], focal_x=fx, focal_y=fy,
                          n_visits=len(t.visits))
    return data, k


def grid_points(sim, n: int = 3, margin: float = 100.0):
    """(visit, detector, x, y) of an n × n grid on every visit × detector."""
    cam = sim.truth.camera
    out = []
    for v in range(len(sim.truth.visits)):
        for d, det in enumerate(cam.detectors):
            gx, gy = np.meshgrid(np.linspace(margin, det.naxis1 - margin, n), np.linspace(margin, det.naxis2 - margin, n))
            out.append((np.full(n * n, v), np.full(n * n, d), gx.ravel(), gy.ravel()))
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def true_p(sim, visit, detector, x, y) -> np.ndarray:
    t = sim.truth
    return np.array([true_calibration_mag(t, t.visits[int(v)].visit, int(d), xx, yy)
                     for v, d, xx, yy in zip(visit, detector, x, y, strict=True)])


def whitened(diff: np.ndarray, cov: np.ndarray, *, remove_mean: bool) -> np.ndarray:
    """diff whitened by cov (after removing its mean, which the covariance then describes too)."""
    if remove_mean:
        j = np.eye(len(diff)) - 1.0 / len(diff)
        diff, cov = j @ diff, j @ cov @ j.T
    val, vec = np.linalg.eigh(cov)
    keep = val > 1e-9 * val.max()
    return (vec[:, keep].T @ diff) / np.sqrt(val[keep])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sim():
    return simulate(SurveyConfig.photometric(n_visits=8, n_stars=3000, seed=11, ref_colour_terms=COLOUR_TERMS))


@pytest.fixture(scope="module")
def data(sim):
    return photometry_data(sim, focal=True)


@pytest.fixture(scope="module")
def simple_fit(data):
    return fit_photometry(data[0], PhotometryOptions(ref_colour_terms=COLOUR_TERMS))


# ----------------------------------------------------------------------------- simulator truth


def test_simulated_fluxes_follow_the_photometric_truth():
    cfg = SurveyConfig.photometric(n_visits=3, n_stars=600, noise=False, seed=4)
    sim = simulate(cfg)
    t, m = sim.truth, sim.truth.measurements
    k = np.searchsorted(t.stars.id, m.star_id)
    position = {v.visit: i for i, v in enumerate(t.visits)}
    zp = t.zero_points[[position[int(v)] for v in m.visit]]
    flat = np.concatenate([true_flat_mag(t, int(d), [x], [y]) for d, x, y in zip(m.detector, m.x, m.y, strict=True)])
    expected = cfg.exptime * 10 ** (-0.4 * (t.stars.mag[k] - zp)) * 10 ** (-0.4 * flat)
    np.testing.assert_allclose(m.flux_adu, expected, rtol=1e-12)
    np.testing.assert_array_equal(sim.sources.flux, m.flux_adu.astype(np.float32).astype(np.float64))
    # the shared convention: m_AB = -2.5 log10(flux_ADU) + P(x, y)
    p = np.concatenate([true_calibration_mag(t, int(v), int(d), [x], [y])
                        for v, d, x, y in zip(m.visit, m.detector, m.x, m.y, strict=True)])
    np.testing.assert_allclose(-2.5 * np.log10(m.flux_adu) + p, t.stars.mag[k], atol=1e-10)
    # seeded, with the configured sizes
    assert np.std(t.zero_points - cfg.zero_point) > 0.005 and np.all(np.abs(t.zero_points - cfg.zero_point) < 0.25)
    radius = cfg.camera.field_radius_px(distorted=False)
    assert np.hypot(*t.flat_gradient) * 2 * radius == pytest.approx(0.01, rel=1e-12)
    assert np.all(t.flat_pattern[:, 0, 0] == 0) and np.any(t.flat_pattern != 0)
    again = simulate(cfg)
    np.testing.assert_array_equal(again.truth.zero_points, t.zero_points)
    # reference band: true = ref + c0 + c1 colour + c2 colour^2, plus the stated noise
    s = t.stars
    ref = s.in_reference
    pull = (s.ref_mag[ref] + colour_transformation(s.colour[ref], cfg.ref_colour_terms) - s.mag[ref]) \
        / s.ref_mag_error[ref]
    assert abs(np.mean(pull)) < 0.1 and abs(np.std(pull) - 1) < 0.1
    assert np.all(np.isnan(s.ref_mag[~ref])) and np.all(np.isfinite(s.colour))


def test_default_survey_has_one_zero_point_and_a_perfect_flat():
    sim = simulate(SurveyConfig(n_visits=2, n_stars=200))
    t = sim.truth
    assert np.all(t.zero_points == 27.0) and np.all(t.detector_qe == 0) and np.all(t.flat_gradient == 0)
    assert np.all(true_flat_mag(t, 1, [1.0, 2048.0], [5.0, 900.0]) == 0)


def test_photometric_truth_round_trips(tmp_path):
    cfg = SurveyConfig.photometric(n_visits=2, n_stars=300, camera=Camera.grid(2, 1))
    survey = simulate_survey(cfg, tmp_path / "sim", formats=("parquet",))
    back = load_truth(survey.root)
    t = survey.truth
    np.testing.assert_array_equal(back.zero_points, t.zero_points)
    np.testing.assert_array_equal(back.flat_pattern, t.flat_pattern)
    np.testing.assert_array_equal(back.detector_qe, t.detector_qe)
    np.testing.assert_array_equal(back.flat_gradient, t.flat_gradient)
    np.testing.assert_array_equal(back.measurements.flux_adu, t.measurements.flux_adu)
    np.testing.assert_array_equal(back.stars.colour, t.stars.colour)
    np.testing.assert_array_equal(back.stars.ref_mag, t.stars.ref_mag)
    x, y = np.array([3.0, 1500.0]), np.array([2000.0, 7.0])
    np.testing.assert_array_equal(true_calibration_mag(back, 1, 1, x, y), true_calibration_mag(t, 1, 1, x, y))
    cat = open_refcat(survey.refcat_dir).cone(cfg.ra, cfg.dec, 5.0, format="arrow")
    ids = cat.column("id").to_numpy()
    k = np.searchsorted(t.stars.id, ids)
    np.testing.assert_array_equal(cat.column("ref_mag").to_numpy(), t.stars.ref_mag[k])
    np.testing.assert_array_equal(cat.column("colour").to_numpy(), t.stars.colour[k])
    np.testing.assert_array_equal(cat.column("mag").to_numpy(), t.stars.mag[k])  # the true band, as before
    assert "zero_point" in pq.read_table(survey.truth_dir / "visits.parquet").column_names


# ----------------------------------------------------------------------------- the solver


def test_reduced_solve_equals_the_dense_joint_least_squares():
    sim = simulate(SurveyConfig.photometric(n_visits=3, n_stars=250, camera=Camera.grid(2, 1), seed=3))
    data, _ = photometry_data(sim)
    options = PhotometryOptions(flat_degree=1, colour_term=True, ref_colour_terms=(0.02,), max_clip_rounds=0)
    result = fit_photometry(data, options)
    # dense: unknowns [theta, star mags]; gauge-invariant results must agree
    p = len(result.theta)
    n, n_star = len(data), data.n_stars
    inst = -2.5 * np.log10(data.flux)
    sigma = 1.0857362047581294 * data.flux_err / data.flux
    design = np.zeros((n, p))
    for v in range(data.n_visits):
        for d in range(data.n_detectors):
            rows = (data.visit == v) & (data.detector == d)
            u, w = pixel_to_chebyshev(data.x[rows], data.y[rows], *data.naxis[d])
            basis = np.polynomial.chebyshev.chebvander2d(u, w, [1, 1])
            design[rows] = basis @ result.coefficient_maps[v, d]
    ref = np.isfinite(data.ref_mag)
    target = data.ref_mag + 0.02
    big = np.zeros((n + ref.sum(), p + n_star))
    rhs = np.zeros(n + ref.sum())
    big[:n, :p] = design / sigma[:, None]
    big[np.arange(n), p + data.star] = -1.0 / sigma
    rhs[:n] = -inst / sigma
    r = np.flatnonzero(ref)
    colour_col = result.parameter_names.index("colour term")
    big[n + np.arange(len(r)), p + r] = 1.0 / data.ref_mag_err[r]
    big[n + np.arange(len(r)), colour_col] = -data.colour[r] / data.ref_mag_err[r]
    rhs[n:] = target[r] / data.ref_mag_err[r]
    solution = np.linalg.lstsq(big, rhs, rcond=None)[0]
    np.testing.assert_allclose(result.calibrated_mag, inst + design @ solution[:p], atol=1e-9)
    np.testing.assert_allclose(result.star_mag, solution[p:], atol=1e-9)
    assert result.colour_term == pytest.approx(solution[colour_col], abs=1e-9)
    assert result.chi2 == pytest.approx(float(np.sum((big @ solution - rhs) ** 2)), rel=1e-9)
    assert result.dof == len(rhs) - np.linalg.matrix_rank(big)


# ----------------------------------------------------------------------------- recovery of the truth


def test_simple_fit_recovers_zero_points_and_flats(sim, simple_fit):
    r = simple_fit
    assert r.clipped_per_round == () and r.n_dropped == 0
    assert r.n_reference_stars > 300 and r.n_measurements == len(sim.sources)
    assert r.chi2_per_dof == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / r.dof))
    # CCD centres: fit - truth, minus their mean (the absolute scale, checked separately)
    visit, detector = np.divmod(np.arange(8 * 4), 4)
    cx = np.full(len(visit), 1024.5)
    diff = r.evaluate(visit, detector, cx, cx) - true_p(sim, visit, detector, cx, cx)
    cov = r.covariance_at(visit, detector, cx, cx)
    # the CCDs share stars, so their errors are correlated: whiten before taking the std
    z = whitened(diff, cov, remove_mean=True)
    assert len(z) == len(diff) - 1 and np.std(z) == pytest.approx(1.0, abs=0.2)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), r.zero_point_err.ravel(), rtol=1e-10)
    scale_err = np.sqrt(cov.sum()) / len(diff)
    assert abs(diff.mean()) < 3 * scale_err and scale_err < 1e-3
    # a 3 x 3 grid on every CCD (correlated within a CCD: whitened)
    g = grid_points(sim)
    diff = r.evaluate(*g) - true_p(sim, *g)
    z = whitened(diff, r.covariance_at(*g), remove_mean=True)
    assert len(z) == 8 * 4 * 6 - 1 and np.std(z) == pytest.approx(1.0, abs=0.2)  # rank: 6 flat terms per CCD
    # visit zero points: the mean over detectors of P at the centres (the gauge of the simple model)
    truth_zp = true_p(sim, visit, detector, cx, cx).reshape(8, 4).mean(axis=1)
    zp_pull = (r.visit_zero_point - truth_zp - diff.mean()) / r.visit_zero_point_err
    assert np.max(np.abs(zp_pull)) < 4
    # repeatability follows the errors in every well-populated bin
    rep = r.repeatability
    full = rep.n_stars >= 100
    assert full.sum() >= 4
    np.testing.assert_allclose(rep.rms_mmag[full], rep.expected_mmag[full], rtol=0.1)


def test_constrained_fit_recovers_a_one_percent_focal_plane_gradient():
    cfg = SurveyConfig(n_visits=8, n_stars=3000, seed=5, zero_point_sigma=0.05, flat_gradient_mag=0.01,
                       qe_sigma_mag=0.02)
    sim = simulate(cfg)
    data, _ = photometry_data(sim, focal=True)
    for options in (PhotometryOptions(model="constrained", flat_degree=1),
                    PhotometryOptions(model="constrained", flat_degree=1, visit_degree=1)):
        r = fit_photometry(data, options)
        assert np.nanmax(r.approximation_error) < 1e-4
        g = grid_points(sim, n=4)
        diff = r.evaluate(*g) - true_p(sim, *g)
        cov = r.covariance_at(*g)
        z = whitened(diff, cov, remove_mean=True)
        assert np.std(z) == pytest.approx(1.0, abs=0.2)
        # the flat's gradient over the focal plane (visit 0): a plane fitted to P
        sel = g[0] == 0
        ux, uy = np.zeros(sel.sum()), np.zeros(sel.sum())
        for d in range(4):
            on = g[1][sel] == d
            ux[on], uy[on] = sim.truth.camera.pixel_to_undistorted(d, g[2][sel][on], g[3][sel][on])
        design = np.column_stack([ux, uy] + [(g[1][sel] == d).astype(float) for d in range(4)])
        h = np.linalg.pinv(design)[:2]
        slope = h @ r.evaluate(*(a[sel] for a in g))
        slope_cov = h @ cov[np.ix_(sel, sel)] @ h.T
        truth_slope = -sim.truth.flat_gradient  # P = ... - flat
        chi2 = (slope - truth_slope) @ np.linalg.solve(slope_cov, slope - truth_slope)
        assert chi2 < 13.8  # 99.9 % for 2 degrees of freedom
        across = np.hypot(*slope) * 2 * cfg.camera.field_radius_px(distorted=False)
        assert across == pytest.approx(0.01, abs=0.001)
        assert np.sqrt(np.trace(slope_cov)) * 2 * cfg.camera.field_radius_px(distorted=False) < 0.002


def test_calibrated_fluxes_match_the_true_nanojansky(sim, data, simple_fit):
    r = simple_fit
    d, k = data
    truth_njy = 10 ** (-0.4 * (sim.truth.stars.mag[k][d.star] - NJY_ZERO_POINT))
    cal = r.calibrated_flux(d.visit, d.detector, d.x, d.y, d.flux)
    p_err = np.array([r.calibration(int(v), int(det)).zero_point_error([x], [y])[0]
                      for v, det, x, y in zip(d.visit[:400], d.detector[:400], d.x[:400], d.y[:400], strict=True)])
    rel_err = np.hypot(d.flux_err[:400] / d.flux[:400], 0.921034 * p_err)
    pull = (cal[:400] / truth_njy[:400] - 1) / rel_err
    assert np.std(pull) == pytest.approx(1.0, abs=0.2)
    # noise-free fluxes calibrate to the truth within the calibration error alone
    noise_free = r.calibrated_flux(d.visit, d.detector, sim.truth.measurements.x, sim.truth.measurements.y,
                                   sim.truth.measurements.flux_adu)
    assert np.max(np.abs(noise_free[:400] / truth_njy[:400] - 1) / (0.921034 * p_err)) < 5

def test_fitted_calibration_is_the_calibration_product(tmp_path, data, simple_fit):
    """One CCD through PhotometricCalibration, written and read back: the shared convention end to end."""
    r = simple_fit
    d, _ = data
    calib = r.calibration(2, 3)
    assert isinstance(calib, PhotometricCalibration)
    assert (calib.naxis1, calib.naxis2) == tuple(d.naxis[3])
    product = Calibration([DetectorCalibration(2, 3, calib.naxis1, calib.naxis2, None, calib)])
    back = Calibration.read(product.write(tmp_path / "cal"))[(2, 3)].photometry
    assert back == calib
    rows = (d.visit == 2) & (d.detector == 3)
    x, y, flux = d.x[rows], d.y[rows], d.flux[rows]
    cal = r.calibrated_flux(d.visit[rows], d.detector[rows], x, y, flux)
    np.testing.assert_allclose(back.flux_to_njy(flux, x, y)[0], cal, rtol=1e-12)
    np.testing.assert_allclose(back.magnitude(flux, x, y)[0], r.calibrated_mag[rows], atol=1e-12)
    # its error at any pixel is the fit's covariance of P there (from θ's covariance, not the coefficients')
    gx, gy = np.meshgrid([0.5, 700.0, calib.naxis1 + 0.5], [0.5, 1300.0, calib.naxis2 + 0.5])
    sigma = np.sqrt(np.diag(r.covariance_at(2, 3, gx.ravel(), gy.ravel())))
    np.testing.assert_allclose(back.zero_point_error(gx.ravel(), gy.ravel()), sigma, rtol=1e-9)
    assert back.zero_point_error(*back.centre) == pytest.approx(r.zero_point_err[2, 3], rel=1e-12)
    # a visit × detector without measurements has no calibration
    with pytest.raises(KeyError, match="no photometric calibration for visit 2, detector 3"):
        dataclasses.replace(r, coefficients=np.full_like(r.coefficients, np.nan)).calibration(2, 3)


def test_gross_outliers_are_clipped(data, simple_fit):
    d, _ = data
    bad = np.random.default_rng(5).uniform(size=len(d)) < 0.05
    dirty = dataclasses.replace(d, flux=np.where(bad, 2.0 * d.flux, d.flux))
    r = fit_photometry(dirty, PhotometryOptions(ref_colour_terms=COLOUR_TERMS))
    assert len(r.clipped_per_round) >= 2 and r.clipped_per_round[0] > 0.5 * bad.sum()
    assert (r.clipped & bad).sum() > 0.85 * bad.sum()
    assert (r.clipped & ~bad).sum() < 0.01 * (~bad).sum()
    assert r.chi2_per_dof < 1.1
    pull = (r.visit_zero_point - simple_fit.visit_zero_point) / simple_fit.visit_zero_point_err
    assert np.max(np.abs(pull)) < 3
    assert np.all(r.used == ~r.clipped)


def test_colour_term_is_recovered(data):
    d, _ = data
    with_term = fit_photometry(d, PhotometryOptions(ref_colour_terms=(0.02,), colour_term=True))
    assert with_term.colour_term == pytest.approx(COLOUR_TERMS[1], abs=3 * with_term.colour_term_err)
    assert with_term.colour_term_err < 0.003
    assert with_term.chi2_per_dof < 1.1
    without = fit_photometry(d, PhotometryOptions(ref_colour_terms=(0.02,), max_clip_rounds=0))
    assert without.chi2_per_dof > 1.3 and np.isnan(without.colour_term)


# ----------------------------------------------------------------------------- degenerate input


def test_no_reference_star_is_an_error_unless_a_zero_point_is_given(data, simple_fit):
    d, _ = data
    none = dataclasses.replace(d, ref_mag=np.full(d.n_stars, np.nan))
    with pytest.raises(FitError, match="no usable reference star"):
        fit_photometry(none)
    # a relative calibration equals the absolute one up to a constant, within its own errors. Those
    # are large for the simple model (a flat per CCD and per visit absorbs a gradient over the sky in
    # the star magnitudes, which only reference stars pin down), small for the constrained one.
    for model, largest_err in (("simple", 0.1), ("constrained", 0.003)):
        absolute = simple_fit if model == "simple" else fit_photometry(
            d, PhotometryOptions(model=model, ref_colour_terms=COLOUR_TERMS))
        relative = fit_photometry(none, PhotometryOptions(model=model, reference_zero_point=30.0, reference_visit=1))
        assert relative.visit_zero_point[1] == pytest.approx(30.0, abs=1e-12)
        assert relative.visit_zero_point_err[1] < 1e-9
        shift = relative.visit_zero_point - absolute.visit_zero_point
        others = np.arange(8) != 1
        assert np.all(np.abs(shift - shift[1])[others] < 4 * relative.visit_zero_point_err[others])
        assert relative.visit_zero_point_err.max() < largest_err
    with pytest.raises(FitError, match="colour"):
        fit_photometry(dataclasses.replace(d, colour=np.full(d.n_stars, np.nan)),
                       PhotometryOptions(colour_term=True))


def test_too_few_measurements_on_a_ccd_is_an_error(data):
    d, _ = data
    on_ccd = np.flatnonzero((d.visit == 3) & (d.detector == 1))
    keep = np.ones(len(d), dtype=bool)
    keep[on_ccd[5:]] = False
    few = PhotometryData(star=d.star[keep], visit=d.visit[keep], detector=d.detector[keep], x=d.x[keep],
                         y=d.y[keep], flux=d.flux[keep], flux_err=d.flux_err[keep], naxis=d.naxis,
                         ref_mag=d.ref_mag, ref_mag_err=d.ref_mag_err, colour=d.colour)
    with pytest.raises(FitError, match="visit 3 detector 1 has 5 usable measurements"):
        fit_photometry(few, PhotometryOptions(flat_degree=2))
    assert fit_photometry(few, PhotometryOptions(flat_degree=1, ref_colour_terms=COLOUR_TERMS)).dof > 0


def test_bad_fluxes_are_dropped_and_counted(data):
    d, _ = data
    flux = d.flux.copy()
    flux[[0, 10, 20]] = [0.0, -5.0, np.nan]
    err = d.flux_err.copy()
    err[30] = 0.0
    r = fit_photometry(dataclasses.replace(d, flux=flux, flux_err=err), PhotometryOptions(ref_colour_terms=COLOUR_TERMS))
    assert r.n_dropped == 4 and r.n_measurements == len(d) - 4
    assert not r.used[[0, 10, 20, 30]].any() and np.isnan(r.calibrated_mag[[0, 10, 20, 30]]).all()
    bad = dataclasses.replace(d, flux=np.zeros(len(d)))
    with pytest.raises(FitError, match="no usable measurement"):
        fit_photometry(bad)


def test_a_visit_sharing_no_star_is_degenerate(data):
    d, _ = data
    # visit 5 sees only stars of its own, none of them in the reference catalog
    star = np.where(d.visit == 5, d.star + d.n_stars, d.star)
    ref = np.concatenate([d.ref_mag, np.full(d.n_stars, np.nan)])
    isolated = dataclasses.replace(d, star=star, ref_mag=ref,
                                   ref_mag_err=np.concatenate([d.ref_mag_err, np.full(d.n_stars, np.nan)]),
                                   colour=np.concatenate([d.colour, np.full(d.n_stars, np.nan)]))
    with pytest.raises(FitError, match="degenerate") as info:
        fit_photometry(isolated, PhotometryOptions(ref_colour_terms=COLOUR_TERMS))
    names = info.value.diagnostics["degenerate"]
    assert names and all("visit 5" in name for name in names) and "visit 5" in str(info.value)


def test_inputs_are_validated(data):
    d, _ = data
    with pytest.raises(ValueError, match="flux has shape"):
        dataclasses.replace(d, flux=d.flux[:-1])
    with pytest.raises(ValueError, match="star has index"):
        dataclasses.replace(d, ref_mag=d.ref_mag[:10], ref_mag_err=d.ref_mag_err[:10], colour=d.colour[:10])
    with pytest.raises(ValueError, match="naxis"):
        dataclasses.replace(d, naxis=d.naxis[:2])
    with pytest.raises(ValueError, match="model must be"):
        PhotometryOptions(model="fancy")
    with pytest.raises(ValueError, match="visit_degree > 0 needs model='constrained'"):
        PhotometryOptions(visit_degree=1)
    with pytest.raises(ValueError, match="focal_x"):
        fit_photometry(dataclasses.replace(d, focal_x=None, focal_y=None),
                       PhotometryOptions(model="constrained", visit_degree=1))

