"""Reading the fitter's inputs: FITS-LDAC and the Parquet survey layout."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from jointcal_ap.fit.data import FitInput
from jointcal_ap.fit.io import (
    FitInputError,
    covariance_to_ellipse,
    ellipse_to_covariance,
    header_from_string,
    read_inputs,
    read_ldac,
    read_parquet_survey,
)
from jointcal_ap.simulate import write_ldac


def image_header(crval=(30.0, -20.0), mjd_obs=58000.0, exptime=60.0, **extra) -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"] = 1000
    h["NAXIS2"] = 800
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = 500.5, 400.5
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -7.2e-5, 1e-7, 1e-7, 7.2e-5
    h["MJD-OBS"] = mjd_obs
    h["EXPTIME"] = exptime
    h["FILTER"] = "i"
    for key, value in extra.items():
        h[key.replace("_", "-")] = value
    return h


def wcs_of(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # datfix: DATE-OBS from MJD-OBS
        return WCS(header)


def objects(n=5, seed=0, a=None, b=None, theta=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "NUMBER": np.arange(1, n + 1, dtype=np.int32),
        "XWIN_IMAGE": rng.uniform(1, 1000, n),
        "YWIN_IMAGE": rng.uniform(1, 800, n),
        "ERRAWIN_IMAGE": np.full(n, 0.05 if a is None else a, dtype=np.float32),
        "ERRBWIN_IMAGE": np.full(n, 0.03 if b is None else b, dtype=np.float32),
        "ERRTHETAWIN_IMAGE": np.full(n, 20.0 if theta is None else theta, dtype=np.float32),
        "FLUX_AUTO": rng.uniform(1e3, 1e5, n).astype(np.float32),
        "FLUXERR_AUTO": np.full(n, 30.0, dtype=np.float32),
        "FLAGS": np.zeros(n, dtype=np.int16),
    }


# ----------------------------------------------------------------------------- ellipses


def test_error_ellipse_to_covariance_for_a_rotated_ellipse():
    # a = 2, b = 1, major axis at 30° from +x towards +y: C = R diag(4, 1) Rᵀ
    cxx, cyy, cxy = ellipse_to_covariance(2.0, 1.0, 30.0)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    r = np.array([[c, -s], [s, c]])
    expected = r @ np.diag([4.0, 1.0]) @ r.T
    np.testing.assert_allclose([cxx, cyy, cxy], [expected[0, 0], expected[1, 1], expected[0, 1]], rtol=1e-14)
    assert (cxx, cyy, cxy) == pytest.approx((3.25, 1.75, 0.75 * np.sqrt(3)), rel=1e-14)
    # the major axis is where the variance is largest
    angles = np.radians(np.linspace(-90, 90, 3601))
    var = cxx * np.cos(angles) ** 2 + 2 * cxy * np.cos(angles) * np.sin(angles) + cyy * np.sin(angles) ** 2
    assert np.degrees(angles[np.argmax(var)]) == pytest.approx(30.0, abs=0.05)
    assert var.max() == pytest.approx(4.0) and var.min() == pytest.approx(1.0)
    # θ and θ ± 180° are the same ellipse; the inverse returns θ in (-90, 90]
    np.testing.assert_allclose(ellipse_to_covariance(2.0, 1.0, -150.0), (cxx, cyy, cxy), atol=1e-14)
    a, b, theta = covariance_to_ellipse(cxx, cyy, cxy)
    assert (a, b, theta) == pytest.approx((2.0, 1.0, 30.0), rel=1e-12)
    rng = np.random.default_rng(0)
    aa, bb = rng.uniform(0.5, 2, 100), rng.uniform(0.1, 0.5, 100)
    tt = rng.uniform(-90, 90, 100)
    np.testing.assert_allclose(covariance_to_ellipse(*ellipse_to_covariance(aa, bb, tt)), (aa, bb, tt), rtol=1e-9)


def test_ldac_ellipse_becomes_the_measurement_covariance(tmp_path):
    path = write_ldac(tmp_path / "e.cat", [(image_header(), objects(3, a=0.2, b=0.1, theta=-60.0))])
    m = read_ldac(path).measurements
    cxx, cyy, cxy = ellipse_to_covariance(np.float32(0.2), np.float32(0.1), -60.0)
    np.testing.assert_allclose(m.cov_xx, cxx, rtol=1e-15)
    np.testing.assert_allclose(m.cov_yy, cyy, rtol=1e-15)
    np.testing.assert_allclose(m.cov_xy, cxy, rtol=1e-15)
    assert np.all(m.cov_xy < 0)  # major axis at -60°: x and y anti-correlated


# ----------------------------------------------------------------------------- LDAC


def write_nul_padded_ldac_without_tdim(path, header, columns):
    """What a naive astropy writer produces: one string, right-stripped, padded with NULs."""
    text = header.tostring(padding=False).rstrip() + "   "
    width = 80 * (len(text) // 80 + 2)
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column(name="Field Header Card", format=f"{width}A", array=np.array([text.encode()]))],
        name="LDAC_IMHEAD")
    objs = fits.BinTableHDU.from_columns(
        [fits.Column(name=k, format={"i": "J", "f": "D"}[np.asarray(v).dtype.kind] if k != "FLAGS" else "I",
                     array=v) for k, v in columns.items()], name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), imhead, objs]).writeto(path)
    return path


@pytest.mark.parametrize("padding", ["blank", "nul-per-card", "nul-at-end"])
def test_ldac_header_padding_blank_or_nul(tmp_path, padding):
    chips = [(image_header(), objects(4, seed=1)), (image_header(crval=(30.0, -20.0)), objects(6, seed=2))]
    if padding == "blank":
        path = write_ldac(tmp_path / "a.cat", chips)
    elif padding == "nul-per-card":
        path = write_ldac(tmp_path / "a.cat", chips, header_padding="\0")
        with fits.open(path) as hdul:
            assert b"\0" in hdul[1].data.view(np.ndarray).tobytes()
    else:
        path = write_nul_padded_ldac_without_tdim(tmp_path / "a.cat", *chips[0])
        chips = chips[:1]
    fit_input = read_ldac(path)
    assert isinstance(fit_input, FitInput)
    assert len(fit_input.ccds) == len(chips)
    header = fit_input.ccds[0].header
    assert header["CTYPE1"] == "RA---TAN" and header["NAXIS1"] == 1000 and header["FILTER"] == "i"
    assert fit_input.ccds[0].naxis2 == 800
    m = fit_input.measurements
    assert len(m) == sum(len(c[1]["XWIN_IMAGE"]) for c in chips)
    np.testing.assert_array_equal(m.x[:4], chips[0][1]["XWIN_IMAGE"])
    ra, dec = wcs_of(image_header()).all_pix2world(m.x[:4], m.y[:4], 1)
    np.testing.assert_allclose(m.ra_init[:4], ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.dec_init[:4], dec, rtol=0, atol=1e-12)


def test_ldac_ids_time_and_tangent_point(tmp_path):
    paths = [write_ldac(tmp_path / f"v{i}.cat", [(image_header(mjd_obs=58000.0 + i), objects(3)),
                                                   (image_header(mjd_obs=58000.0 + i), objects(2))])
             for i in range(3)]
    fit_input = read_ldac(paths)
    assert [v.visit for v in fit_input.visits] == [0, 1, 2]
    assert [(c.visit, c.detector) for c in fit_input.ccds] == [(v, d) for v in range(3) for d in range(2)]
    np.testing.assert_array_equal(fit_input.measurements.ccd_index, np.repeat(np.arange(6), [3, 2] * 3))
    v = fit_input.visits[1]
    # MJD-OBS is the exposure start in UTC: mid-exposure TAI = start + 37 s (TAI-UTC in 2017) + 30 s
    assert v.mjd_tai == pytest.approx(58001.0 + (37.0 + 30.0) / 86400.0, abs=1e-10)
    assert v.epoch == pytest.approx(Time(v.mjd_tai, format="mjd", scale="tai").tdb.jyear, abs=1e-12)
    assert (v.ra, v.dec, v.filter, v.exptime) == (30.0, -20.0, "i", 60.0)
    assert v.name == str(paths[1])
    # TIMESYS names another scale; MJD-AVG is already the mid-time
    p = write_ldac(tmp_path / "tai.cat", [(image_header(TIMESYS="TAI"), objects(1))])
    assert read_ldac(p).visits[0].mjd_tai == pytest.approx(58000.0 + 30.0 / 86400.0, abs=1e-10)
    p = write_ldac(tmp_path / "avg.cat", [(image_header(TIMESYS="TAI", MJD_AVG=58000.5), objects(1))])
    assert read_ldac(p).visits[0].mjd_tai == pytest.approx(58000.5, abs=1e-10)


def test_read_inputs_dispatches_on_directory_or_files(tmp_path):
    path = write_ldac(tmp_path / "a.cat", [(image_header(), objects(2))])
    assert len(read_inputs(path).measurements) == 2
    assert len(read_inputs([path, path]).visits) == 2
    with pytest.raises(FitInputError, match="not a Parquet survey directory"):
        read_inputs(tmp_path)
    with pytest.raises(FitInputError, match="must be the only input"):
        read_inputs([tmp_path, path])
    with pytest.raises(FitInputError, match="no input"):
        read_inputs([])


# ----------------------------------------------------------------------------- LDAC errors


def test_error_non_fits_file(tmp_path):
    bad = tmp_path / "notes.cat"
    bad.write_text("this is not FITS\n" * 50)
    with pytest.raises(FitInputError, match=r"notes\.cat.*not a FITS file"):
        read_ldac(bad)
    with pytest.raises(FitInputError, match=r"missing\.cat.*not found"):
        read_ldac(tmp_path / "missing.cat")


def test_error_no_ldac_objects(tmp_path):
    path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4), dtype=np.float32))]).writeto(path)
    with pytest.raises(FitInputError, match=r"image\.fits.*no LDAC_OBJECTS"):
        read_ldac(path)


def test_error_objects_without_imhead(tmp_path):
    path = tmp_path / "noimhead.cat"
    objs = fits.BinTableHDU.from_columns([fits.Column(name=k, format="D", array=np.asarray(v, float))
                                          for k, v in objects(2).items()], name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), objs]).writeto(path)
    with pytest.raises(FitInputError, match=r"noimhead\.cat: extension 1 \(LDAC_OBJECTS\).*no LDAC_IMHEAD"):
        read_ldac(path)


def test_error_missing_column_names_file_extension_and_column(tmp_path):
    cols = objects(2)
    del cols["ERRTHETAWIN_IMAGE"]
    path = write_ldac(tmp_path / "nocol.cat", [(image_header(), objects(2)), (image_header(), cols)])
    with pytest.raises(FitInputError, match=r"nocol\.cat: extension 4 \(LDAC_OBJECTS\).*ERRTHETAWIN_IMAGE") as info:
        read_ldac(path)
    assert info.value.column == "ERRTHETAWIN_IMAGE"


def test_error_header_without_wcs(tmp_path):
    header = image_header()
    for key in ("CTYPE1", "CTYPE2"):
        del header[key]
    path = write_ldac(tmp_path / "nowcs.cat", [(header, objects(2))])
    with pytest.raises(FitInputError, match=r"nowcs\.cat: extension 1 \(LDAC_IMHEAD\).*no WCS"):
        read_ldac(path)


def test_error_header_without_time_and_bad_values(tmp_path):
    header = image_header()
    del header["MJD-OBS"]
    path = write_ldac(tmp_path / "notime.cat", [(header, objects(1))])
    with pytest.raises(FitInputError, match=r"notime\.cat: extension 1.*MJD-OBS"):
        read_ldac(path)
    cols = objects(3)
    cols["ERRBWIN_IMAGE"][1] = 0.0
    path = write_ldac(tmp_path / "zero.cat", [(image_header(), cols)])
    with pytest.raises(FitInputError, match=r"zero\.cat: extension 2 \(LDAC_OBJECTS\): row 1, column 'ERRBWIN_IMAGE'"):
        read_ldac(path)


# ----------------------------------------------------------------------------- Parquet survey


def write_survey(directory, *, drop=None, header=None):
    directory.mkdir(parents=True, exist_ok=True)
    visits = {"visit": [7], "mjd_tai": [58000.25], "filter": ["g"], "exptime": [30.0], "ra": [30.0],
              "dec": [-20.0]}
    sources = {"visit": [7, 7, 7], "detector": [1, 1, 2], "x": [10.0, 20.0, 30.0], "y": [5.0, 6.0, 7.0],
               "x_err": [0.1, 0.1, 0.2], "y_err": [0.2, 0.1, 0.2], "xy_cov": [0.01, 0.0, -0.02],
               "flux": [1e3, 2e3, 3e3], "flux_err": [10.0, 20.0, 30.0], "flags": [0, 0, 4]}
    text = (header if header is not None else image_header()).tostring(padding=False)
    wcs = {"visit": [7, 7], "detector": [2, 1], "naxis1": [1000, 1000], "naxis2": [800, 800],
           "header": [text, text.replace("CRVAL1  =                 30.0", "CRVAL1  =                 30.1")]}
    for name, data in (("visits", visits), ("sources", sources), ("wcs", wcs)):
        if drop and drop[0] == name:
            data.pop(drop[1])
        pq.write_table(pa.table(data), directory / f"{name}.parquet")
    return directory


def test_parquet_survey_reads(tmp_path):
    root = write_survey(tmp_path / "s")
    fit_input = read_parquet_survey(root)
    assert fit_input.visits[0].visit == 7 and fit_input.visits[0].filter == "g"
    assert fit_input.visits[0].epoch == pytest.approx(Time(58000.25, format="mjd", scale="tai").tdb.jyear, abs=1e-12)
    assert [(c.visit, c.detector) for c in fit_input.ccds] == [(7, 1), (7, 2)]
    m = fit_input.measurements
    np.testing.assert_array_equal(m.ccd_index, [0, 0, 1])
    np.testing.assert_allclose(m.cov_xx, [0.01, 0.01, 0.04])
    np.testing.assert_allclose(m.cov_yy, [0.04, 0.01, 0.04])
    np.testing.assert_array_equal(m.cov_xy, [0.01, 0.0, -0.02])
    np.testing.assert_array_equal(m.flags, [0, 0, 4])
    w1 = wcs_of(fit_input.ccds[0].header)
    ra, dec = w1.all_pix2world([10.0, 20.0], [5.0, 6.0], 1)
    np.testing.assert_allclose(m.ra_init[:2], ra, atol=1e-12)
    np.testing.assert_allclose(m.dec_init[:2], dec, atol=1e-12)
    assert fit_input.ccds[0].header["CRVAL1"] == 30.1
    # a directory holding survey/ works too, and so does read_inputs
    assert len(read_inputs(write_survey(tmp_path / "outer" / "survey").parent).measurements) == 3
    # newline-separated header cards
    text = image_header().tostring(sep="\n", padding=False)
    assert header_from_string(text)["CRPIX2"] == 400.5


def test_parquet_errors_name_file_and_column(tmp_path):
    with pytest.raises(FitInputError, match=r"sources\.parquet.*missing column.*'xy_cov'"):
        read_parquet_survey(write_survey(tmp_path / "a", drop=("sources", "xy_cov")))
    with pytest.raises(FitInputError, match=r"visits\.parquet.*missing column.*'mjd_tai'"):
        read_parquet_survey(write_survey(tmp_path / "b", drop=("visits", "mjd_tai")))
    header = image_header()
    del header["CTYPE1"]
    with pytest.raises(FitInputError, match=r"wcs\.parquet: row \d \(visit 7, detector \d\).*no WCS"):
        read_parquet_survey(write_survey(tmp_path / "c", header=header))
    root = write_survey(tmp_path / "d")
    table = pq.read_table(root / "sources.parquet")
    table = table.set_column(1, "detector", pa.array([1, 1, 3]))
    pq.write_table(table, root / "sources.parquet")
    with pytest.raises(FitInputError, match=r"sources\.parquet: row 2.*\(visit 7, detector 3\) has no CCD"):
        read_parquet_survey(root)
    table = table.set_column(1, "detector", pa.array([1, 1, 2])).set_column(
        6, "xy_cov", pa.array([0.01, 0.5, 0.0]))
    pq.write_table(table, root / "sources.parquet")
    with pytest.raises(FitInputError, match=r"sources\.parquet: row 1.*not positive definite"):
        read_parquet_survey(root)
    (root / "wcs.parquet").unlink()
    with pytest.raises(FitInputError, match=r"wcs\.parquet.*not found"):
        read_parquet_survey(root)


def test_truncated_ldac_is_an_error_naming_the_file(tmp_path):
    """A catalog cut anywhere (inside the data, or exactly on a FITS block boundary) is refused,
    never read as a catalog with fewer CCDs."""
    chips = [(image_header(), objects(400, seed=k)) for k in range(4)]
    whole = write_ldac(tmp_path / "whole.cat", chips).read_bytes()
    assert len(read_ldac(tmp_path / "whole.cat").ccds) == 4
    for cut in (len(whole) // 2 + 7, (len(whole) // 2 // 2880) * 2880, len(whole) - 2880):
        path = tmp_path / f"cut_{cut}.cat"
        path.write_bytes(whole[:cut])
        with pytest.raises(FitInputError, match=rf"cut_{cut}\.cat.*truncated"):
            read_ldac(path)


def test_ldac_date_obs_and_time_scales_agree_with_astropy(tmp_path):
    header = image_header()
    del header["MJD-OBS"]
    header["DATE-OBS"] = "2019-07-04T03:21:09.250"
    p = write_ldac(tmp_path / "date.cat", [(header, objects(1))])
    expected = Time("2019-07-04T03:21:09.250", format="isot", scale="utc").tai.mjd + 30.0 / 86400.0
    assert read_ldac(p).visits[0].mjd_tai == pytest.approx(expected, abs=1e-10)
    for scale in ("TT", "TDB", "UT1"):
        p = write_ldac(tmp_path / f"{scale}.cat", [(image_header(TIMESYS=scale), objects(1))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # UT1 without IERS tables
            expected = Time(58000.0, format="mjd", scale=scale.lower()).tai.mjd + 30.0 / 86400.0
        assert read_ldac(p).visits[0].mjd_tai == pytest.approx(expected, abs=1e-9)
    bad = image_header()
    del bad["MJD-OBS"]
    bad["DATE-OBS"] = "4 July 2019"
    with pytest.raises(FitInputError, match="DATE-OBS"):
        read_ldac(write_ldac(tmp_path / "bad.cat", [(bad, objects(1))]))


def test_ldac_cut_at_an_extension_boundary_is_reported_by_the_fit(tmp_path):
    """A catalog cut exactly after one of its CCDs is a valid FITS file with fewer CCDs: the
    reader cannot refuse it, so the fit names the exposure and the detectors it lacks, in the
    log and in the result's warnings (and so in fit_report.txt)."""
    from jointcal_ap.fit import FitOptions, JointFit
    from jointcal_ap.refcat import open_refcat
    from jointcal_ap.simulate import SurveyConfig, simulate_survey

    sim = simulate_survey(SurveyConfig(n_visits=4, n_stars=1500, seed=3), tmp_path / "sim")
    cats = sorted((tmp_path / "sim" / "ldac").glob("*.cat"))
    whole = cats[0].read_bytes()
    with fits.open(cats[0]) as hdus:
        n_ccds = (len(hdus) - 1) // 2
        last = hdus[-2].fileinfo()["hdrLoc"]  # where the last CCD's LDAC_IMHEAD starts
    assert n_ccds >= 2
    cats[0].write_bytes(whole[:last])
    data = read_inputs([str(p) for p in cats])
    assert sum(c.visit == data.visits[0].visit for c in data.ccds) == n_ccds - 1
    result = JointFit(data, open_refcat(sim.refcat_dir), FitOptions(fit="astrometry")).run()
    lacking = [w for w in result.warnings if "no CCD of detector" in w]
    assert len(lacking) == 1 and cats[0].name in lacking[0]
    complete = JointFit(read_inputs([str(p) for p in cats[1:]]), open_refcat(sim.refcat_dir),
                        FitOptions(fit="astrometry")).run()
    assert not [w for w in complete.warnings if "no CCD of detector" in w]
