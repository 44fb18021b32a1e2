"""Exposures: the data model, both FITS layouts, calibrate_exposure and CalibratedExposure I/O."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from numpy.polynomial.chebyshev import chebval2d

from jointcal_ap.calibration import (
    Calibration,
    CalibrationError,
    DetectorCalibration,
    PhotometricCalibration,
    header_to_text,
)
from jointcal_ap.exposure import (
    DEFAULT_MASK_PLANES,
    CalibratedExposure,
    Exposure,
    ExposureError,
    ExposureMetadata,
    calibrate_exposure,
    read_calibrated_exposure,
    read_exposure,
)
from test_calibration import brute_force_p, sip_header

NX, NY = 60, 40  # NAXIS1, NAXIS2
META = ExposureMetadata(visit=7, detector=0, filter="r", mjd_tai=60310.123456789, exptime=30.0)


def separation_arcsec(ra1, dec1, ra2, dec2):
    def vec(ra, dec):
        ra, dec = np.radians(ra), np.radians(dec)
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)

    chord = np.linalg.norm(vec(ra1, dec1) - vec(ra2, dec2), axis=-1)
    return np.degrees(2 * np.arcsin(chord / 2)) * 3600


def make_exposure(meta=META, nx=NX, ny=NY, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 30, (ny, nx)).astype(np.float32)
    variance = rng.uniform(900, 1100, (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.int32)
    mask[0, :] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    mask[5, 7] |= (1 << DEFAULT_MASK_PLANES["SAT"]) | (1 << DEFAULT_MASK_PLANES["DETECTED_NEGATIVE"])
    header = fits.Header()
    header["OBJECT"] = ("field 12", "target")
    header["AIRMASS"] = 1.2345678901234567
    initial = sip_header(nx, ny)
    for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        header[key] = initial[key]
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"] += 2 / 3600  # the initial WCS: 2" off the fitted one
    return Exposure(image, mask, variance, header, meta)


def gradient_photometry(nx=NX, ny=NY):
    rng = np.random.default_rng(5)
    c = rng.normal(0, 0.08, (3, 4))
    c[0, 0] = 28.9
    return PhotometricCalibration(c, nx, ny, 0.011)


@pytest.fixture
def exposure():
    return make_exposure()


@pytest.fixture
def calibration():
    return Calibration([DetectorCalibration(7, 0, NX, NY, sip_header(NX, NY), gradient_photometry()),
                        DetectorCalibration(7, 1, NX, NY, sip_header(NX, NY, ra=150.02), None)])


def assert_same_exposure(a, b):
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.variance, b.variance)
    assert header_to_text(a.header) == header_to_text(b.header)
    assert a.metadata == b.metadata
    assert a.mask_planes == b.mask_planes


# --------------------------------------------------------------------------- the data model


def test_planes_are_validated(exposure):
    e = exposure
    with pytest.raises(ExposureError, match=r"mask has shape \(40, 59\), but the image has \(40, 60\)"):
        Exposure(e.image, e.mask[:, :-1], e.variance, e.header, META)
    with pytest.raises(ExposureError, match=r"variance has shape \(39, 60\)"):
        Exposure(e.image, e.mask, e.variance[1:], e.header, META)
    with pytest.raises(ExposureError, match="image must be a 2-D array"):
        Exposure(e.image[None], e.mask, e.variance, e.header, META)
    with pytest.raises(ExposureError, match="image must hold real numbers"):
        Exposure(e.image > 0, e.mask, e.variance, e.header, META)
    with pytest.raises(ExposureError, match="mask must be an integer bit mask"):
        Exposure(e.image, e.mask.astype(float), e.variance, e.header, META)
    with pytest.raises(ExposureError, match="missing variance plane"):
        Exposure(e.image, e.mask, None, e.header, META)
    negative = e.variance.copy()
    negative[3, 3] = -1.0
    with pytest.raises(ExposureError, match="variance has 1 negative pixel"):
        Exposure(e.image, e.mask, negative, e.header, META)
    with pytest.raises(ExposureError, match=r"bit\(s\) \[12\] that no mask plane names"):
        Exposure(e.image, e.mask | (1 << 12), e.variance, e.header, META)
    with pytest.raises(ExposureError, match="share a bit"):
        Exposure(e.image, None, e.variance, e.header, META, {"BAD": 0, "SAT": 0})


def test_planes_and_dtypes(exposure):
    assert exposure.image.dtype == np.float32 and exposure.mask.dtype == np.int32
    assert exposure.plane("SAT").sum() == 1 and exposure.plane("EDGE", "SAT").sum() == NX + 1
    assert exposure.bits("BAD", "SAT") == 0b11
    with pytest.raises(KeyError, match="no mask plane 'COSMIC'"):
        exposure.bits("COSMIC")
    assert not exposure.image.flags.writeable
    # float64 input is stored as float32; a missing mask is all zero
    e = Exposure(np.ones((3, 4)), None, np.ones((3, 4)), None, META)
    assert e.image.dtype == np.float32 and e.mask.dtype == np.int32 and not e.mask.any()


def test_metadata_epoch_and_validation():
    # TDB ≈ TT = TAI + 32.184 s (to 2 ms); J2000.0 = MJD 51544.5
    tt = 60310.123456789 + 32.184 / 86400
    assert META.epoch == pytest.approx(2000.0 + (tt - 51544.5) / 365.25, abs=1e-10)
    with pytest.raises(ExposureError, match="exptime must be finite and >= 0"):
        ExposureMetadata(1, 2, "r", 60000.0, -1.0)
    with pytest.raises(ExposureError, match="visit must be an integer"):
        ExposureMetadata(1.5, 2, "r", 60000.0, 1.0)


# --------------------------------------------------------------------------- FITS layouts


def test_mef_round_trip_lsst_layout(tmp_path, exposure):
    path = exposure.write(tmp_path / "exp.fits")
    assert [p.name for p in tmp_path.iterdir()] == ["exp.fits"]  # no temporary left behind
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert hdul[0].data is None and hdul[0].header["VISIT"] == 7
        assert hdul["MASK"].header["MP_EDGE"] == 4
        assert hdul["MASK"].header["MP_DETECTED_NEGATIVE"] == 6
        assert hdul["MASK"].data.dtype.kind == "i" and hdul["MASK"].data.dtype.itemsize == 4
        assert all(hdul[n].header["EXTTYPE"] == n and hdul[n].header["INHERIT"]
                   for n in ("IMAGE", "MASK", "VARIANCE"))
        assert hdul["VARIANCE"].header["CTYPE1"] == "RA---TAN"
    back = read_exposure(path)
    assert_same_exposure(back, exposure)
    assert Exposure.read(path).metadata == META


def test_single_hdu_layout(tmp_path, exposure):
    path = exposure.write(tmp_path / "raw.fits", layout="image")
    with fits.open(path) as hdul:
        assert len(hdul) == 1 and hdul[0].data.shape == (NY, NX)
    with pytest.raises(ExposureError, match="missing variance plane: a single image HDU needs"):
        read_exposure(path)
    back = read_exposure(path, variance=exposure.variance, mask=exposure.mask)
    assert_same_exposure(back, exposure)
    # variance from GAIN (e-/ADU) and RDNOISE (e-); SATURATE flags SAT
    with fits.open(path) as hdul:
        hdul[0].header["GAIN"] = 2.0
        hdul[0].header["RDNOISE"] = 6.0
        hdul[0].header["SATURATE"] = float(exposure.image.max())
        hdul.writeto(tmp_path / "gain.fits")
    est = read_exposure(tmp_path / "gain.fits")
    np.testing.assert_allclose(est.variance, exposure.image.astype(float) / 2.0 + 9.0, rtol=1e-6)
    assert est.plane("SAT").sum() == 1 and est.plane("SAT")[np.unravel_index(
        np.argmax(exposure.image), exposure.shape)]


def test_mef_without_variance_is_an_error(tmp_path, exposure):
    path = exposure.write(tmp_path / "exp.fits")
    with fits.open(path) as hdul:
        del hdul["VARIANCE"]
        hdul.writeto(tmp_path / "novar.fits")
    with pytest.raises(ExposureError, match=r"novar\.fits: missing variance plane: the file has an IMAGE"):
        read_exposure(tmp_path / "novar.fits")
    assert_same_exposure(read_exposure(tmp_path / "novar.fits", variance=exposure.variance), exposure)


def test_truncated_file_is_named_as_truncated(tmp_path, exposure):
    """A file cut short said "missing variance plane" (its later HDUs were simply absent)."""
    data = exposure.write(tmp_path / "exp.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(ExposureError, match=r"cut\.fits: the file is truncated or damaged"):
        read_exposure(tmp_path / "cut.fits")


def test_metadata_from_camera_cards(tmp_path, exposure):
    """UTC exposure start → mid-exposure TAI (37 s leap offset since 2017); CCDNUM/BAND accepted."""
    hdu = fits.PrimaryHDU(exposure.image)
    hdu.header.update({"CCDNUM": 3, "VISIT": 12, "BAND": "i", "EXPTIME": 60.0,
                       "MJD-OBS": 60310.5, "GAIN": 1.5})
    hdu.writeto(tmp_path / "cam.fits")
    meta = read_exposure(tmp_path / "cam.fits").metadata
    assert (meta.visit, meta.detector, meta.filter, meta.exptime) == (12, 3, "i", 60.0)
    assert meta.mjd_tai == pytest.approx(60310.5 + (37.0 + 30.0) / 86400, abs=1e-9)
    del hdu.header["VISIT"]
    hdu.writeto(tmp_path / "novisit.fits")
    with pytest.raises(ExposureError, match=r"novisit\.fits: no VISIT card"):
        read_exposure(tmp_path / "novisit.fits")
    assert read_exposure(tmp_path / "novisit.fits", metadata=META).metadata == META


# --------------------------------------------------------------------------- calibrate_exposure


def test_constant_calibration_scales_exactly(exposure):
    phot = PhotometricCalibration.constant(31.4 - 2.5 * np.log10(0.25), NX, NY, 0.01)  # 1 ADU = 0.25 nJy
    cal = DetectorCalibration(7, 0, NX, NY, sip_header(NX, NY), phot)
    calexp = calibrate_exposure(exposure, cal)
    np.testing.assert_allclose(calexp.image, exposure.image * 0.25, rtol=1e-6)
    np.testing.assert_allclose(calexp.variance, exposure.variance * 0.0625, rtol=1e-6)
    np.testing.assert_array_equal(calexp.mask, exposure.mask)
    assert calexp.image.dtype == np.float32 and calexp.header["BUNIT"] == "nJy"


def test_gradient_calibration_matches_brute_force(exposure, calibration):
    exposure.header["GAIN"], exposure.header["SATURATE"] = 2.0, 60000.0  # ADU cards
    calexp = calibrate_exposure(exposure, calibration, chunk_rows=7)  # several chunks, one partial
    scale = 10 ** (-0.4 * (brute_force_p(gradient_photometry().coefficients, NX, NY) - 31.4))
    assert scale.max() / scale.min() > 1.3  # a real gradient
    np.testing.assert_allclose(calexp.image, exposure.image * scale, rtol=2e-7)
    np.testing.assert_allclose(calexp.variance, exposure.variance * scale ** 2, rtol=2e-7)
    # a source's flux: pixel sum in nJy equals flux_to_njy of its ADU at a uniform region
    flux, _ = calexp.flux_to_njy(1000.0, 11.0, 8.0)
    assert flux == pytest.approx(1000.0 * scale[7, 10], rel=1e-12)
    mag, _ = calexp.magnitude(1000.0, 11.0, 8.0)
    assert mag == pytest.approx(-2.5 * np.log10(1000.0 * scale[7, 10]) + 31.4, abs=1e-12)
    # the header: fitted WCS in, initial WCS out, calibration cards
    h = calexp.header
    assert h["CTYPE1"] == "RA---TAN-SIP" and h["CRVAL1"] == 150.0 and h["A_2_0"] == 3.1e-6
    assert h["OBJECT"] == "field 12"
    cx, cy = (NX + 1) / 2, (NY + 1) / 2
    c = gradient_photometry().coefficients
    # the nJy pixels' zero point is 31.4; the raw (ADU) zero point at the centre is ADUZP
    assert h["PHOTZP"] == 31.4 and h["MAGZEROP"] == 31.4 and h["FLXSCALE"] == 1.0
    assert h["ADUZP"] == pytest.approx(chebval2d(0.0, 0.0, c), abs=1e-12)
    assert h["PHOTZPE"] == 0.011 and h["PHC_2_3"] == pytest.approx(c[2, 3], rel=1e-13)
    assert calexp.photometry.zero_point(cx, cy) == pytest.approx(h["ADUZP"], abs=1e-12)
    for adu_card in ("GAIN", "SATURATE"):  # describe ADU pixels: gone once they are nJy
        assert adu_card not in h


def test_pixel_sky_round_trip(exposure, calibration):
    calexp = calibrate_exposure(exposure, calibration)
    # 1-based: CRPIX is CRVAL (no A_0_0 here)
    ra, dec = calexp.pixel_to_sky((NX + 1) / 2, (NY + 1) / 2)
    assert (float(ra), float(dec)) == pytest.approx((150.0, 2.0), abs=1e-12)
    x, y = (a.ravel() for a in np.meshgrid(np.linspace(0.5, NX + 0.5, 9), np.linspace(0.5, NY + 0.5, 7)))
    ra, dec = calexp.pixel_to_sky(x, y)
    x2, y2 = calexp.sky_to_pixel(ra, dec)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6
    # the SIP terms matter: a plain TAN of the same header is off by more than the tolerance
    tan = WCS({k: v for k, v in sip_header(NX, NY).items() if k[:2] not in ("A_", "B_", "AP", "BP")}
              | {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})
    ra_tan, dec_tan = tan.all_pix2world(x, y, 1)
    assert np.max(separation_arcsec(ra, dec, ra_tan, dec_tan)) > 1e-4


def test_calibrated_exposure_fits_round_trip(tmp_path, exposure, calibration):
    calexp = calibrate_exposure(exposure, calibration)
    path = calexp.write(tmp_path / "calexp.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "CALIB"]
        image_header = hdul["IMAGE"].header
        assert image_header["BUNIT"] == "nJy" and image_header["CTYPE2"] == "DEC--TAN-SIP"
    back = read_calibrated_exposure(path)
    assert isinstance(back, CalibratedExposure)
    assert_same_exposure(back, calexp)
    assert back.calibration == calexp.calibration
    assert back.calibration.photometry == gradient_photometry()
    x, y = (a.ravel() for a in np.meshgrid(np.linspace(0.5, NX + 0.5, 13), np.linspace(0.5, NY + 0.5, 11)))
    ra, dec = calexp.pixel_to_sky(x, y)
    ra_b, dec_b = back.pixel_to_sky(x, y)
    assert np.max(separation_arcsec(ra, dec, ra_b, dec_b)) < 1e-6
    # any FITS reader sees the fitted WCS in the IMAGE header
    ra_f, dec_f = WCS(image_header).all_pix2world(x, y, 1)
    assert np.max(separation_arcsec(ra, dec, ra_f, dec_f)) < 1e-6
    assert CalibratedExposure.read(path).calibration == calexp.calibration
    with pytest.raises(ExposureError, match="no CALIB table extension"):
        read_calibrated_exposure(exposure.write(tmp_path / "plain.fits"))


def test_no_overlap_and_missing_parts(exposure, calibration):
    other = make_exposure(ExposureMetadata(9, 4, "r", 60000.0, 30.0))
    with pytest.raises(CalibrationError, match=r"\(visit, detector\) = \(9, 4\) is not calibrated; "
                                               r"expected one of \[\(7, 0\), \(7, 1\)\]"):
        calibrate_exposure(other, calibration)
    small = make_exposure(nx=NX - 1)
    with pytest.raises(CalibrationError, match="the exposure is NAXIS1 × NAXIS2 = 59 × 40 pixels, but "
                                               "the calibrated detector is 60 × 40"):
        calibrate_exposure(small, calibration)
    det1 = make_exposure(ExposureMetadata(7, 1, "r", 60000.0, 30.0))
    with pytest.raises(CalibrationError, match="visit 7 detector 1: the calibration has no photometry"):
        calibrate_exposure(det1, calibration)
    no_wcs = DetectorCalibration(7, 0, NX, NY, None, gradient_photometry())
    with pytest.raises(CalibrationError, match="has no fitted WCS"):
        calibrate_exposure(exposure, no_wcs)
    with pytest.raises(ExposureError, match="already calibrated"):
        calibrate_exposure(calibrate_exposure(exposure, calibration), calibration)


# --------------------------------------------------------------------------- with the real fitter's TAN-SIP


@pytest.fixture(scope="module")
def fit_result(tmp_path_factory):
    from jointcal_ap.fit import FitOptions, JointFit
    from jointcal_ap.refcat import open_refcat
    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    root = tmp_path_factory.mktemp("calfit") / "sim"
    survey = simulate_survey(SurveyConfig(n_visits=3, n_stars=1500, epochs=(2015.0, 2017.0), seed=3),
                             root, formats=("ldac",))
    return JointFit(survey.read("ldac"), open_refcat(survey.refcat_dir), FitOptions(degree=3)).run()


def test_tan_sip_from_the_fit(tmp_path, fit_result):
    from jointcal_ap.fit.output import tan_sip_header

    ccd = 1
    c = fit_result.data.ccds[ccd]
    header, _ = tan_sip_header(fit_result, ccd)
    phot = PhotometricCalibration.constant(30.0, c.naxis1, c.naxis2, 0.005)
    cal = Calibration([DetectorCalibration(c.visit, c.detector, c.naxis1, c.naxis2, header, phot)])
    cal = Calibration.read(cal.write(tmp_path / "cal"))
    mjd = next(v.mjd_tai for v in fit_result.data.visits if v.visit == c.visit)
    # another exposure with the same (visit, detector) ids is refused: the fit wrote CALMJD/CALDET
    shape = (c.naxis2, c.naxis1)
    other = Exposure(np.ones(shape, np.float32), None, np.ones(shape, np.float32), fits.Header(),
                     ExposureMetadata(c.visit, c.detector, "r", mjd + 1.0, 30.0))
    with pytest.raises(CalibrationError, match=r"mid-exposure MJD .* not that of the calibrated exposure"):
        calibrate_exposure(other, cal)
    meta = ExposureMetadata(c.visit, c.detector, "r", mjd, 30.0)
    exposure = Exposure(np.ones(shape, np.float32), None, np.ones(shape, np.float32), fits.Header(), meta)
    calexp = calibrate_exposure(exposure, cal)
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.5, c.naxis1 + 0.5, 300), rng.uniform(0.5, c.naxis2 + 0.5, 300)
    ra, dec = calexp.pixel_to_sky(x, y)
    ra_fit, dec_fit = fit_result.pixel_to_sky(ccd, x, y)
    assert np.max(separation_arcsec(ra, dec, ra_fit, dec_fit)) < 1e-5  # 0.01 mas
    x2, y2 = calexp.sky_to_pixel(ra_fit, dec_fit)
    assert np.max(np.hypot(x2 - x, y2 - y)) < 1e-6


def test_psf_model_travels_with_the_exposure(tmp_path):
    from jointcal_ap.psf import GaussianPsf

    wcs = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
                       "CRVAL2": 2.0, "CRPIX1": 50.5, "CRPIX2": 40.5, "CD1_1": -5.5e-5,
                       "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})
    meta = ExposureMetadata(visit=1, detector=0, filter="r", mjd_tai=60310.2, exptime=30.0)
    psf = GaussianPsf(2.0, 3.0, 0.5)
    exp = Exposure(np.ones((80, 100), np.float32), None, np.ones((80, 100), np.float32), wcs,
                   meta, psf=psf)
    back = read_exposure(exp.write(tmp_path / "e.fits"))
    assert back.psf == psf
    with pytest.raises(ExposureError, match=r"psf must be a jointcal_ap\.psf\.PsfModel"):
        Exposure(exp.image, None, exp.variance, wcs, meta, psf="gauss")


def _calexp_for_astropy(tmp_path):
    wcs = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
                       "CRVAL2": 2.0, "CRPIX1": 50.5, "CRPIX2": 40.5, "CD1_1": -5.5e-5,
                       "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})
    meta = ExposureMetadata(visit=1, detector=0, filter="r", mjd_tai=60310.2, exptime=30.0)
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 3.0, (80, 100)).astype(np.float32)
    variance = np.full((80, 100), 9.0, np.float32)
    mask = np.zeros((80, 100), np.int32)
    mask[10, 20] = 1 << DEFAULT_MASK_PLANES["SAT"]
    phot = PhotometricCalibration.constant(31.4 + 2.5, 100, 80, zero_point_err=0.01)
    cal = Calibration([DetectorCalibration(1, 0, 100, 80, wcs, phot)])
    calexp = calibrate_exposure(Exposure(image, mask, variance, wcs, meta), cal)
    return calexp, calexp.write(tmp_path / "calexp.fits")


def test_astropy_ccddata_reads_a_calexp_in_both_forms(tmp_path):
    from astropy.nddata import CCDData, StdDevUncertainty, VarianceUncertainty

    calexp, path = _calexp_for_astropy(tmp_path)
    plain = CCDData.read(path, hdu="IMAGE")  # the image, its unit, WCS and mask
    np.testing.assert_allclose(plain.data, calexp.image)
    assert plain.unit == "nJy" and plain.wcs is not None
    assert plain.mask[10, 20] and plain.mask.sum() == 1
    assert plain.uncertainty is None  # astropy looks for an UNCERT extension by default
    full = CCDData.read(path, hdu="IMAGE", hdu_uncertainty="VARIANCE")
    assert isinstance(full.uncertainty, VarianceUncertainty)
    np.testing.assert_allclose(full.uncertainty.array, calexp.variance)  # not its square root
    np.testing.assert_allclose(full.uncertainty.represent_as(StdDevUncertainty).array,
                               np.sqrt(calexp.variance), rtol=1e-6)


def test_a_header_that_does_not_describe_the_image_is_refused():
    meta = ExposureMetadata(visit=1, detector=0, filter="r", mjd_tai=60310.2, exptime=30.0)
    header = fits.Header({"NAXIS1": 1000, "NAXIS2": 80})
    with pytest.raises(ExposureError, match=r"the header says NAXIS1 = 1000 but the image is "
                                            r"100 x 80"):
        Exposure(np.ones((80, 100), np.float32), None, np.ones((80, 100), np.float32), header,
                 meta)


def test_one_ccd_of_a_camera_file_is_read_with_a_selector(tmp_path):
    meta_cards = {"VISIT": 3, "FILTER": "g", "EXPTIME": 20.0, "TIMESYS": "TAI",
                  "MJD-OBS": 60000.0, "GAIN": 2.0, "RDNOISE": 4.0}
    hdus = [fits.PrimaryHDU(header=fits.Header(meta_cards))]
    for ccd in (0, 1):
        header = fits.Header({**meta_cards, "CCDNUM": ccd, "DETECTOR": ccd})
        hdus.append(fits.ImageHDU(np.full((20, 30), 100.0 + ccd, np.float32), header,
                                  name=f"CCD{ccd:02d}"))
    path = tmp_path / "visit3.fits"
    fits.HDUList(hdus).writeto(path)
    ccd1 = read_exposure(f"{path}[CCD01]")
    assert (ccd1.metadata.visit, ccd1.metadata.detector) == (3, 1)
    assert float(ccd1.image[0, 0]) == 101.0
    # variance from GAIN and RDNOISE: 101/2 + (4/2)^2
    assert float(ccd1.variance[0, 0]) == pytest.approx(101.0 / 2.0 + 4.0)
    assert read_exposure(f"{path}[1]").metadata.detector == 0
    with pytest.raises(ExposureError, match=r"no extension 'CCD07'"):
        read_exposure(f"{path}[CCD07]")
