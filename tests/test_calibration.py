"""The calibration product: the photometric Chebyshev model, DetectorCalibration, Calibration I/O."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from numpy.polynomial.chebyshev import chebval2d

from jointcal_ap import __version__
from jointcal_ap.calibration import (
    Calibration,
    CalibrationError,
    DetectorCalibration,
    PhotometricCalibration,
    chebyshev_basis,
    header_from_text,
    header_to_text,
    pixel_to_chebyshev,
    zero_point_to_njy_per_adu,
)


def sip_header(naxis1=300, naxis2=200, ra=150.0, dec=2.0):
    """A hand-built TAN-SIP header: 0.2"/pixel, slightly rotated, with 2nd-order distortion."""
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    h["CRPIX1"], h["CRPIX2"] = (naxis1 + 1) / 2, (naxis2 + 1) / 2
    s, t = 0.2 / 3600, math.radians(3.0)
    h["CD1_1"], h["CD1_2"] = -s * math.cos(t), s * math.sin(t)
    h["CD2_1"], h["CD2_2"] = s * math.sin(t), s * math.cos(t)
    h["A_ORDER"] = h["B_ORDER"] = 2
    h["A_2_0"], h["A_1_1"], h["A_0_2"] = 3.1e-6, -1.7e-6, 2.3e-6
    h["B_2_0"], h["B_1_1"], h["B_0_2"] = -1.1e-6, 2.9e-6, 0.7e-6
    h["AP_ORDER"] = h["BP_ORDER"] = 2
    for p, q in ((2, 0), (1, 1), (0, 2)):
        h[f"AP_{p}_{q}"], h[f"BP_{p}_{q}"] = -h[f"A_{p}_{q}"], -h[f"B_{p}_{q}"]
    h.add_history("hand-built for the tests")
    return h


def brute_force_p(coeffs, naxis1, naxis2):
    """P on every pixel, one chebval2d call per pixel (the convention written out)."""
    out = np.empty((naxis2, naxis1))
    for r in range(naxis2):
        for c in range(naxis1):
            x, y = c + 1, r + 1
            out[r, c] = chebval2d((2 * x - (naxis1 + 1)) / naxis1, (2 * y - (naxis2 + 1)) / naxis2, coeffs)
    return out


@pytest.fixture
def gradient():
    rng = np.random.default_rng(4)
    c = rng.normal(0, 0.05, (3, 4))
    c[0, 0] = 28.7
    return PhotometricCalibration(c, 37, 23, 0.012)


def test_grid_matches_per_pixel_chebval2d(gradient):
    expected = brute_force_p(gradient.coefficients, 37, 23)
    np.testing.assert_allclose(gradient.zero_point_grid(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gradient.zero_point_grid(slice(5, 9)), expected[5:9], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gradient.njy_per_adu_grid(), 10 ** (-0.4 * (expected - 31.4)), rtol=1e-12)
    # the point evaluation agrees too, and the grid edges map to u, v = ±1
    np.testing.assert_allclose(gradient.zero_point(12.0, 7.0), expected[6, 11], atol=1e-12)
    c = gradient.coefficients
    assert gradient.zero_point(0.5, 0.5) == pytest.approx(chebval2d(-1.0, -1.0, c), abs=1e-12)
    assert gradient.zero_point(37.5, 23.5) == pytest.approx(chebval2d(1.0, 1.0, c), abs=1e-12)


def test_shared_calibration_convention():
    """The convention with hand-computed numbers: u, v edges, the AB zero point of 1 nJy, m_AB."""
    c = np.zeros((2, 2))
    c[0, 0], c[1, 0], c[0, 1] = 25.0, 0.1, -0.2
    cal = PhotometricCalibration(c, naxis1=2000, naxis2=1000, zero_point_err=0.01)
    # the pixel grid's edges 0.5 and NAXIS + 0.5 map to -1 and +1
    u, v = pixel_to_chebyshev([0.5, 2000.5, 1000.5], [500.5, 500.5, 0.5], 2000, 1000)
    np.testing.assert_allclose(u, [-1.0, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(v, [0.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(cal.zero_point([0.5, 2000.5, 1000.5], [500.5, 500.5, 0.5]), [24.9, 25.1, 25.2])
    flux, _ = cal.flux_to_njy([100.0], [1000.5], [500.5])
    np.testing.assert_allclose(flux, 100.0 * 10 ** (-0.4 * (25.0 - 31.4)))
    assert cal.magnitude([100.0], [1000.5], [500.5])[0][0] == pytest.approx(-5.0 + 25.0)
    np.testing.assert_array_equal(cal.zero_point_error([1.0, 5.0], [1.0, 5.0]), [0.01, 0.01])
    assert zero_point_to_njy_per_adu(31.4) == 1.0
    np.testing.assert_allclose(zero_point_to_njy_per_adu([31.4 - 2.5, 31.4 + 5.0]), [10.0, 0.01], rtol=1e-14)


def test_chebyshev_basis_is_in_ravel_order(gradient):
    """B @ c.ravel() is chebval2d for rectangular c, and B @ cov @ B.T is the error of P."""
    rng = np.random.default_rng(2)
    u, v = rng.uniform(-1, 1, 15), rng.uniform(-1, 1, 15)
    c = gradient.coefficients  # 3 x 4: a wrong order or transposition cannot pass
    basis = chebyshev_basis(u, v, gradient.degree)
    assert basis.shape == (15, 12)
    np.testing.assert_allclose(basis @ c.ravel(), chebval2d(u, v, c), rtol=0, atol=1e-12)
    for i in range(3):
        for j in range(4):
            one = np.zeros((3, 4))
            one[i, j] = 1.0
            np.testing.assert_allclose(basis[:, i * 4 + j], chebval2d(u, v, one), rtol=0, atol=1e-15)
    assert chebyshev_basis(0.0, 0.0, (1, 1)).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_constant_scale_and_ab_definition():
    phot = PhotometricCalibration.constant(31.4 - 2.5 * math.log10(4.0), 100, 50, zero_point_err=0.0)
    np.testing.assert_allclose(phot.njy_per_adu([1, 50, 100], [1, 25, 50]), 4.0, rtol=1e-14)
    flux, err = phot.flux_to_njy([10.0, 20.0], 3.0, 4.0, flux_err=[1.0, 2.0])
    np.testing.assert_allclose(flux, [40.0, 80.0], rtol=1e-14)
    np.testing.assert_allclose(err, [4.0, 8.0], rtol=1e-14)


def test_flux_and_magnitude_errors(gradient):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0.5, 37.5, 20), rng.uniform(0.5, 23.5, 20)
    f, ferr = rng.uniform(100, 1e4, 20), rng.uniform(1, 50, 20)
    flux, err = gradient.flux_to_njy(f, x, y, flux_err=ferr)
    # AB: m = -2.5 log10(flux_nJy) + 31.4 must equal -2.5 log10(flux_ADU) + P
    mag, mag_err = gradient.magnitude(f, x, y, flux_err=ferr)
    np.testing.assert_allclose(mag, -2.5 * np.log10(flux) + 31.4, rtol=0, atol=1e-12)
    # the calibration term, by a numerical derivative of flux_nJy in P
    p, h = gradient.zero_point(x, y), 1e-6
    dflux_dp = f * (10 ** (-0.4 * (p + h - 31.4)) - 10 ** (-0.4 * (p - h - 31.4))) / (2 * h)
    expected = np.hypot(ferr * 10 ** (-0.4 * (p - 31.4)), dflux_dp * 0.012)
    np.testing.assert_allclose(err, expected, rtol=1e-7)
    # magnitude error: numerical derivative in flux, ⊕ zero_point_err
    dm_df = (-2.5 * np.log10(f + 1e-3) + 2.5 * np.log10(f - 1e-3)) / 2e-3
    np.testing.assert_allclose(mag_err, np.hypot(dm_df * ferr, 0.012), rtol=1e-6)
    # without the calibration error only the flux error remains
    _, err_only = gradient.flux_to_njy(f, x, y, flux_err=ferr, include_calibration_error=False)
    np.testing.assert_allclose(err_only, ferr * 10 ** (-0.4 * (p - 31.4)), rtol=1e-12)


def test_non_positive_flux_gives_nan_magnitude(gradient):
    mag, err = gradient.magnitude([-5.0, 0.0, 5.0], 3.0, 3.0, flux_err=1.0)  # no warning (errors are on)
    assert np.isnan(mag[:2]).all() and np.isnan(err[:2]).all() and np.isfinite(mag[2])


def test_covariance_gives_position_dependent_error():
    c = np.zeros((2, 2))
    c[0, 0] = 27.0
    cov = np.zeros((4, 4))
    cov[0, 0] = 0.01 ** 2  # c[0, 0]: constant term
    cov[2, 2] = 0.03 ** 2  # c[1, 0]: T_1(u) = u
    phot = PhotometricCalibration(c, 100, 80, 0.01, cov)
    x = np.array([0.5, 25.0, 50.5, 100.5])
    u = (2 * x - 101) / 100
    np.testing.assert_allclose(phot.zero_point_error(x, 40.5), np.hypot(0.01, 0.03 * u), rtol=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"coefficients": np.zeros(3)}, "2-D array"),
    ({"coefficients": np.array([[np.nan]])}, "finite"),
    ({"naxis1": 0}, "naxis1 must be a positive integer"),
    ({"zero_point_err": -0.1}, "zero_point_err"),
    ({"covariance": np.eye(3)}, r"shape \(4, 4\)"),
])
def test_photometry_validation(kwargs, match):
    args = {"coefficients": np.ones((2, 2)), "naxis1": 10, "naxis2": 10, "zero_point_err": 0.1} | kwargs
    with pytest.raises(CalibrationError, match=match):
        PhotometricCalibration(**args)


def test_detector_calibration_validation():
    phot = PhotometricCalibration.constant(30.0, 300, 200)
    with pytest.raises(CalibrationError, match="photometry is for a 300 × 200 detector, expected 301 × 200"):
        DetectorCalibration(1, 2, 301, 200, None, phot)
    bad = fits.Header({"CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CRPIX1": 1.0})
    with pytest.raises(CalibrationError, match="no celestial WCS"):
        DetectorCalibration(1, 2, 300, 200, bad, phot)
    with pytest.raises(CalibrationError, match="appears twice"):
        Calibration([DetectorCalibration(1, 2, 300, 200), DetectorCalibration(1, 2, 300, 200)])


def test_header_text_is_idempotent():
    h = sip_header()
    h["A_2_0"] = -1.2345678901234567e-15  # more digits than a FITS card holds
    once = header_from_text(header_to_text(h))
    assert header_to_text(header_from_text(header_to_text(once))) == header_to_text(once)
    det = DetectorCalibration(1, 2, 300, 200, h, None)
    assert header_to_text(det.wcs_header) == header_to_text(once)


def make_calibration():
    rng = np.random.default_rng(11)
    c = rng.normal(0, 0.02, (3, 3))
    c[0, 0] = 28.123456789012345
    a = rng.normal(0, 1e-3, (9, 9))
    cov = a @ a.T
    dets = [
        DetectorCalibration(7, 0, 300, 200, sip_header(), PhotometricCalibration(c, 300, 200, 0.0123, cov)),
        DetectorCalibration(7, 1, 300, 200, sip_header(ra=150.1), PhotometricCalibration.constant(
            27.5, 300, 200, 0.02)),
        DetectorCalibration(8, 0, 300, 200, None, PhotometricCalibration.constant(27.6, 300, 200)),
        DetectorCalibration(8, 1, 300, 200, sip_header(dec=2.1), None),
    ]
    return Calibration(dets, provenance={"fit": {"degree": 3, "clip_sigma": 5.0}})


def test_calibration_round_trip(tmp_path):
    cal = make_calibration()
    out = cal.write(tmp_path / "cal")
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "provenance.json", "wcs.fits"]
    back = Calibration.read(out)
    assert sorted(back) == sorted(cal)
    for key in cal:
        assert back[key] == cal[key]
        if cal[key].wcs_header is not None:
            assert header_to_text(back[key].wcs_header) == header_to_text(cal[key].wcs_header)
    cov = cal[(7, 0)].photometry.covariance
    assert np.array_equal(back[(7, 0)].photometry.covariance, cov)
    assert back[(8, 0)].wcs_header is None and back[(8, 1)].photometry is None
    # the effective provenance: ours plus version and creation time
    assert back.provenance["fit"] == {"degree": 3, "clip_sigma": 5.0}
    assert back.provenance["jointcal_ap_version"] == __version__
    assert "T" in back.provenance["created_utc"]
    # re-written, it reads back identical (provenance included: the creation time is kept)
    again = Calibration.read(back.write(tmp_path / "cal2"))
    assert again == back
    # the fitted WCS evaluates the same after the trip
    x, y = np.array([1.0, 150.0, 300.0]), np.array([1.0, 77.0, 200.0])
    np.testing.assert_array_equal(back[(7, 0)].wcs.all_pix2world(x, y, 1),
                                  cal[(7, 0)].wcs.all_pix2world(x, y, 1))


def test_calibration_read_errors(tmp_path):
    with pytest.raises(CalibrationError, match=r"no calibration\.json"):
        Calibration.read(tmp_path / "nothing")
    out = make_calibration().write(tmp_path / "cal")
    # another write's wcs.fits dropped in: the checksum catches the mixed directory
    other = Calibration([DetectorCalibration(1, 1, 10, 10, sip_header(10, 10))]).write(tmp_path / "other")
    (out / "wcs.fits").write_bytes((other / "wcs.fits").read_bytes())
    with pytest.raises(CalibrationError, match=r"wcs\.fits: its SHA-256 differs"):
        Calibration.read(out)
    index = json.loads((other / "calibration.json").read_text())
    index["version"] = 99
    (other / "calibration.json").write_text(json.dumps(index))
    with pytest.raises(CalibrationError, match="version 99"):
        Calibration.read(other)


def test_provenance_must_be_json(tmp_path):
    with pytest.raises(CalibrationError, match="provenance is not JSON-serialisable"):
        Calibration([], provenance={"bad": object()}).write(tmp_path / "cal")
    assert not list((tmp_path / "cal").glob("*.json"))


def test_wcs_table_bytes_are_those_astropy_writes():
    """``wcs.fits`` is written without astropy's table machinery: the same bytes as
    ``BinTableHDU.from_columns`` + ``writeto``, detectors without a WCS included."""
    import io

    from jointcal_ap.calibration.disk_format import DetectorRecord, _wcs_table_bytes, header_to_text

    header = fits.Header()
    for key, value in (("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", 150.25), ("CRVAL2", -2.5),
                       ("CRPIX1", 1024.5), ("CRPIX2", 2048.5), ("CD1_1", -5.5e-5), ("CD2_2", 5.5e-5)):
        header[key] = value
    records = [DetectorRecord(7, 0, 2048, 4096, header, None), DetectorRecord(7, 1, 2048, 4096, None, None),
               DetectorRecord(8, 12, 1024, 1024, header, None)]
    texts = [header_to_text(r.wcs_header) if r.wcs_header is not None else "" for r in records]
    width = max(len(t) for t in texts)
    table = fits.BinTableHDU.from_columns([
        *(fits.Column(name, "K", array=np.array([getattr(r, name.lower()) for r in records], np.int64))
          for name in ("VISIT", "DETECTOR", "NAXIS1", "NAXIS2")),
        fits.Column("HAS_WCS", "L", array=np.array([r.wcs_header is not None for r in records])),
        fits.Column("WCS_HEADER", f"{width}A", array=np.array(texts, dtype=f"U{width}")),
    ], name="WCS")
    table.header["CALFMT"] = ("jointcal_ap.calibration", "jointcal_ap calibration product")
    table.header["CALVER"] = (1, "format version")
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buffer)
    assert _wcs_table_bytes(records) == buffer.getvalue()
