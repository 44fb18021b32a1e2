"""Issue 11's fit findings, each reproduced small: the default fit on coarse-pixel catalogs
with initial WCS errors of 8–20" and 1', errors that name the exposure and the real cause,
every CCD photometrically calibrated (or warned about), LDAC identities from the headers,
EXPTIME/FILTER, and read_head."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits

from jointcal_ap.fit import FitError, FitOptions, HeadFileError, JointFit, read_head
from jointcal_ap.fit.crossmatch import CcdMatch, default_radii, initial_pixel_scale_arcsec
from jointcal_ap.fit.diagnostics import association_failure
from jointcal_ap.fit.io import FitInputError, MissingFilterWarning, read_ldac
from jointcal_ap.refcat import open_refcat
from jointcal_ap.simulate import Camera, SurveyConfig, simulate_survey, write_ldac


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """A demo-like survey: 6"/pixel, a cubic distortion of ~1 pixel, the initial WCS off by
    ~15" per axis (σ) and 0.02°; bright stars, a third of them in the reference catalog."""
    camera = Camera.grid(2, 2, naxis1=512, naxis2=512, gap_px=30.0, pixel_scale_arcsec=6.0, k1=1.6e-9, seed=3)
    config = SurveyConfig(n_visits=3, n_stars=900, ra=305.0, dec=40.0, camera=camera, dither_arcmin=10.0,
                          rotation_deg=1.0, epochs=(2016.0, 2020.0), mag_range=(14.0, 19.0), ref_mag_limit=17.5,
                          wcs_offset_arcsec=15.0, wcs_rotation_deg=0.02, centroid_floor_px=0.01, seed=5)
    return simulate_survey(config, tmp_path_factory.mktemp("coarse") / "sim", formats=("parquet", "ldac"))


def test_default_radii_follow_the_pixel_scale(coarse):
    data = coarse.read("parquet")
    assert initial_pixel_scale_arcsec(data) == pytest.approx(6.0, rel=0.01)
    assert default_radii(6.0) == (90.0, 6.0, 6.0) and default_radii(0.26) == (90.0, 1.0, 1.0)


@pytest.mark.parametrize("form", ["parquet", "ldac"])
def test_default_fit_works_on_coarse_pixels_with_wcs_errors(coarse, form, caplog):
    data = coarse.read(form)
    with caplog.at_level(logging.INFO, logger="jointcal_ap.fit.jointfit"):
        result = JointFit(data, open_refcat(coarse.refcat_dir)).run()
    offsets = np.array([s.offset_arcsec for s in result.association.ccd_stats])
    assert np.abs(offsets).max() > 8.0  # the initial WCS was that far off
    assert all(s.n_matched >= 10 for s in result.association.ccd_stats)
    assert result.options.model == "constrained"  # auto: every visit has the same detectors
    assert 0.5 < result.chi2_per_dof < 2.0
    assert all(p is not None for p in result.ccd_photometry())
    # association statistics per exposure and CCD in the log (what -v shows)
    text = caplog.text
    assert "search 90\", match 6\", link 6\"" in text
    for c in data.ccds:
        assert f"visit {c.visit}, detector {c.detector}: " in text


def _shift(data, visit_index: int, arcsec: float):
    """The same input with one visit's initial WCS off by ``arcsec`` more in declination."""
    meas = data.measurements
    visit_of_meas = data.visit_index_of_ccd()[meas.ccd_index]
    dec = np.where(visit_of_meas == visit_index, meas.dec_init + arcsec / 3600.0, meas.dec_init)
    return replace(data, measurements=replace(meas, dec_init=dec))


def test_an_initial_wcs_off_by_one_arcminute_is_found(coarse):
    data = _shift(coarse.read("parquet"), 1, 60.0)
    result = JointFit(data, open_refcat(coarse.refcat_dir)).run()
    visit = data.visits[1].visit
    offsets = [s.offset_arcsec[1] for s in result.association.ccd_stats if s.visit == visit]
    assert np.all(np.abs(np.array(offsets) + 60.0) < 30.0)
    assert 0.5 < result.chi2_per_dof < 2.0


def test_an_initial_wcs_off_beyond_the_search_names_the_cause(coarse):
    data = _shift(coarse.read("parquet"), 1, 400.0)
    with pytest.raises(FitError) as info:
        JointFit(data, open_refcat(coarse.refcat_dir), FitOptions(model="simple")).run()
    text = str(info.value)
    assert f"visit {data.visits[1].visit} (" in text and "detector" in text
    assert "off by more than the search covers" in text and "lower --degree" not in text


def test_failure_messages_name_the_real_cause():
    from jointcal_ap.fit.crossmatch import Association
    from jointcal_ap.fit.data import Ccd, FitInput, Measurements, Visit

    z = np.zeros(40)
    meas = Measurements(ccd_index=np.zeros(40, np.int64), x=z + 1, y=z + 1, cov_xx=z + 1, cov_yy=z + 1, cov_xy=z,
                        flux=z + 1, flux_err=z + 1, flags=np.zeros(40, np.int64), ra_init=z, dec_init=z)
    data = FitInput((Visit(7, 58000.0, 2017.0, "r", 30.0, 0.0, 0.0, "v7.cat"),), (Ccd(7, 3, 100, 100, ""),), meas)

    def failure(**stats):
        base = dict(ccd=0, visit=7, detector=3, n_measurements=40, n_references=20, offset_arcsec=(0.0, 0.0),
                    offset_support=20, n_matched=20, rms_mas=100.0)
        assoc = Association(np.full(40, -1), 0, np.zeros(0, np.int64), z[:0], z[:0], np.zeros((40, 2)),
                            np.zeros((1, 2, 10)), 3, [], [], [CcdMatch(**{**base, **stats})], (90.0, 6.0, 6.0))
        return association_failure(assoc, data, 0, 4, 12, 3, "simple")

    assert "visit 7 (v7.cat), detector 3" in failure(n_references=0)
    assert "no reference star of the refcat lies in the CCD's footprint" in failure(n_references=0)
    assert "off by more than the search covers" in failure(n_matched=0, offset_support=2)
    assert "lower --degree" in failure(n_matched=8)
    assert "lower --degree" not in failure(n_references=0) + failure(n_matched=0, offset_support=2)


# ----------------------------------------------------------------------------- LDAC headers


def _header(**cards) -> fits.Header:
    h = fits.Header()
    for key, value in (("NAXIS1", 1000), ("NAXIS2", 800), ("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"),
                       ("CRVAL1", 30.0), ("CRVAL2", -20.0), ("CRPIX1", 500.5), ("CRPIX2", 400.5),
                       ("CD1_1", -7.2e-5), ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", 7.2e-5),
                       ("MJD-OBS", 58000.0), ("EXPTIME", 60.0), ("FILTER", "i")):
        h[key] = value
    for key, value in cards.items():
        if value is None:
            del h[key.replace("MJD_OBS", "MJD-OBS")]
        else:
            h[key.replace("MJD_OBS", "MJD-OBS")] = value
    return h


def _objects(n=5):
    rng = np.random.default_rng(0)
    return {"XWIN_IMAGE": rng.uniform(1, 1000, n), "YWIN_IMAGE": rng.uniform(1, 800, n),
            "ERRAWIN_IMAGE": np.full(n, 0.05), "ERRBWIN_IMAGE": np.full(n, 0.03),
            "ERRTHETAWIN_IMAGE": np.full(n, 20.0), "FLUX_AUTO": np.full(n, 1e4), "FLUXERR_AUTO": np.full(n, 30.0),
            "FLAGS": np.zeros(n, np.int16)}


def test_ldac_header_without_cd_matrix_is_named(tmp_path):
    path = tmp_path / "nocd.cat"
    write_ldac(path, [(_header(CD1_1=None, CD1_2=None, CD2_1=None, CD2_2=None), _objects())])
    with pytest.raises(FitInputError, match=r"nocd\.cat: extension 1 \(LDAC_IMHEAD\).*no CD matrix"):
        read_ldac(path)


def test_missing_exptime_is_an_error_and_missing_filter_a_warning(tmp_path):
    path = tmp_path / "noexp.cat"
    write_ldac(path, [(_header(EXPTIME=None), _objects())])
    with pytest.raises(FitInputError, match=r"noexp\.cat: extension 1 .*no EXPTIME"):
        read_ldac(path)
    path = tmp_path / "nofilter.cat"
    write_ldac(path, [(_header(FILTER=None), _objects())])
    with pytest.warns(MissingFilterWarning, match=r"nofilter\.cat: extension 1 .*no FILTER"):
        read_ldac(path)


def test_ldac_identities_come_from_the_headers_not_the_file_order(tmp_path):
    paths = []
    for visit, mjd in ((3, 58003.0), (0, 58000.0)):
        path = tmp_path / f"visit_{visit}.cat"
        write_ldac(path, [(_header(VISIT=visit, MJD_OBS=mjd, EXTNAME=f"CCD{d:02d}"), _objects())
                          for d in (5, 2)])
        paths.append(path)
    data = read_ldac(paths)  # visit 3 first
    assert [v.visit for v in data.visits] == [3, 0]
    assert [(c.visit, c.detector) for c in data.ccds] == [(3, 5), (3, 2), (0, 5), (0, 2)]
    assert data.visits[1].mjd_tai == pytest.approx(58000.0 + 30 / 86400 + 37 / 86400, abs=1e-6)
    dup = tmp_path / "again.cat"
    write_ldac(dup, [(_header(VISIT=3), _objects())])
    with pytest.raises(FitInputError, match=r"again\.cat: visit 3 .* also that of .*visit_3\.cat"):
        read_ldac([paths[0], dup])
    custom = tmp_path / "custom.cat"
    write_ldac(custom, [(_header(FRAMENO=42, CHIP=7), _objects())])
    data = read_ldac(custom, visit_keys=("FRAMENO",), detector_keys=("CHIP",))
    assert (data.ccds[0].visit, data.ccds[0].detector) == (42, 7)


# ----------------------------------------------------------------------------- photometry


def test_a_ccd_without_photometric_measurements_is_warned_about(coarse, caplog):
    data = coarse.read("parquet")
    meas = data.measurements
    # every source of CCD 0 flagged (as SExtractor's default SATUR_LEVEL flags bright stars):
    # no measurement enters its photometry
    flags = np.where(meas.ccd_index == 0, 4, meas.flags)
    sub = replace(data, measurements=replace(meas, flags=flags))
    with caplog.at_level(logging.WARNING, logger="jointcal_ap.fit.jointfit"):
        result = JointFit(sub, open_refcat(coarse.refcat_dir), FitOptions(model="constrained")).run()
    c = data.ccds[0]
    assert (c.visit, c.detector) in result.photometry_skipped
    assert result.ccd_photometry()[0] is None
    assert "no flux calibration" in caplog.text and f"({c.visit}, {c.detector})" in caplog.text


# ----------------------------------------------------------------------------- .head files


def test_read_head_returns_every_ccd(tmp_path):
    path = tmp_path / "visit_0.head"
    path.write_text("CRVAL1  =                 10.0 / first\nEND\n\nCRVAL1  =                 10.5\n"
                    "FLXSCALE=                  2.0 / nJy per ADU (jointcal_ap) \xb0\nEND\n", encoding="utf-8")
    blocks = read_head(path)
    assert [b["CRVAL1"] for b in blocks] == [10.0, 10.5] and blocks[1]["FLXSCALE"] == 2.0
    ascii_path = tmp_path / "ascii.head"
    ascii_path.write_text("CRVAL1  = 10.0\nEND\nCRVAL1  = 10.5\nEND\n")
    assert len(read_head(ascii_path)) == 2
    assert fits.Header.fromtextfile(ascii_path)["CRVAL1"] == 10.0  # astropy's reader: the first CCD only
    truncated = tmp_path / "cut.head"
    truncated.write_text("CRVAL1  = 10.0\nEND\nCRVAL1  = 10.5\n")
    with pytest.raises(HeadFileError, match=r"cut\.head: line 3: the last header block has no END"):
        read_head(truncated)


def test_a_ccd_without_reference_stars_is_calibrated_through_shared_stars(coarse):
    """As jointcal does: the stars a CCD shares with other exposures carry the scale over."""
    data = coarse.read("parquet")
    full = JointFit(data, open_refcat(coarse.refcat_dir)).run()

    class NoReferenceOnCcd0(JointFit):
        def _reference_photometry(self, association):
            mag, err, colour = super()._reference_photometry(association)
            on_ccd0 = np.unique(association.meas_star[(data.measurements.ccd_index == 0)
                                                      & (association.meas_star >= 0)])
            mag, err = mag.copy(), err.copy()
            mag[on_ccd0] = err[on_ccd0] = np.nan
            return mag, err, colour

    result = NoReferenceOnCcd0(data, open_refcat(coarse.refcat_dir)).run()
    cal, ref = result.ccd_photometry()[0], full.ccd_photometry()[0]
    assert cal is not None and result.photometry_skipped == []
    cx, cy = cal.centre
    diff = float(cal.zero_point(cx, cy)) - float(ref.zero_point(cx, cy))
    assert abs(diff) < 3 * np.hypot(cal.zero_point_err, ref.zero_point_err)


def test_cli_takes_the_identity_keywords(coarse, tmp_path, capsys):
    from jointcal_ap.cli import main

    cats = [str(p) for p in sorted((coarse.root / "ldac").glob("*.cat"))]
    assert main(["fit", *cats, "--refcat", str(coarse.refcat_dir), "--out", str(tmp_path / "bad"),
                 "--visit-keys", "", "--no-progress"]) == 2
    assert main(["fit", *cats, "--refcat", str(coarse.refcat_dir), "--out", str(tmp_path / "out"),
                 "--visit-keys", "NOSUCH", "--detector-keys", "CCDNUM", "--no-progress", "--fit", "astrometry"]) == 0
    calibration = json.loads((tmp_path / "out" / "fit_report.json").read_text())
    # no file has NOSUCH: visits by file order; detectors from CCDNUM (1-based in the simulator)
    assert sorted({c["detector"] for c in calibration["per_ccd"]}) == [1, 2, 3, 4]


def test_the_jointfit_stage_scales_its_radii_like_the_fit_command():
    """The pipeline stage's defaults are the library's (radii scaled to the initial WCS'
    pixel scale), not fixed 1"/20" that fail on coarse pixels; explicit values still win."""
    from jointcal_ap_jointfit.stage import JointFitOptions

    default = JointFitOptions().fit_options()
    library = FitOptions()
    for name in ("match_radius_arcsec", "link_radius_arcsec", "search_radius_arcsec"):
        assert getattr(default, name) is None and getattr(library, name) is None, name
    given = JointFitOptions(match_radius_arcsec=6.0, search_radius_arcsec=60.0,
                            systematic_mas=2.0).fit_options()
    assert (given.match_radius_arcsec, given.search_radius_arcsec, given.link_radius_arcsec,
            given.systematic_mas) == (6.0, 60.0, None, 2.0)
