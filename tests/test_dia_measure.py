"""DIA source measurement: PSF flux pulls, trailed and dipole fits, flags, forced fluxes, errors.

The difference images are rendered here: Gaussian noise of a known variance plane plus sources
drawn with a GaussianPsf (by ``inject_sources``, with Poisson noise, or directly).
"""

import pickle

import numpy as np
import pytest
from astropy.wcs import WCS

from jointcal_ap.dia import (
    DiaError,
    DiaImage,
    MeasureOptions,
    VisitInfo,
    inject_sources,
    make_injection_catalog,
    measure_dia_sources,
)
from jointcal_ap.psf import GaussianPsf
from jointcal_ap.schemas import alert_schema, apdb_schema

FWHM = 3.5
SIGMA = 10.0            # nJy per pixel
SCALE = 0.2             # arcsec per pixel
VISIT = VisitInfo(visit=4242, detector=17, band="r", midpointMjdTai=60400.25, exposureTime=30.0)


def make_wcs(shape):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = [[-SCALE / 3600, 0.0], [0.0, SCALE / 3600]]   # east to the left, north up
    return wcs


def noise_image(shape, seed, psf=None, mask=None, planes=None):
    rng = np.random.default_rng(seed)
    kwargs = {} if planes is None else {"mask_planes": planes}
    return DiaImage(rng.normal(0.0, SIGMA, shape), np.full(shape, SIGMA ** 2), mask,
                    psf=psf or GaussianPsf.from_fwhm(FWHM), **kwargs)


def add_psf(image, psf, x, y, flux, size=31):
    """Add point sources at 0-based (x, y) to an array in place."""
    stamps, x0, y0 = psf.stamps(np.asarray(x) + 1.0, np.asarray(y) + 1.0, size=size)
    ny, nx = image.shape
    for k in range(len(stamps)):
        r0, c0 = y0[k] - 1, x0[k] - 1
        rs, cs = slice(max(r0, 0), min(r0 + size, ny)), slice(max(c0, 0), min(c0 + size, nx))
        image[rs, cs] += flux[k] * stamps[k][rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]


def pixel_bearing(angle_rad):
    """Bearing (east of north) of a pixel direction on make_wcs's sky."""
    return np.degrees(np.arctan2(-np.cos(angle_rad), np.sin(angle_rad))) % 360.0


@pytest.fixture(scope="module")
def transients():
    """620 transients at SNR ≈ 20–100 with Poisson noise, measured at their peak pixels."""
    shape = (1000, 1000)
    base = noise_image(shape, seed=11)
    catalog = make_injection_catalog(shape, 620, seed=12, mag_range=(21.8, 23.5),
                                     min_separation_px=30)
    injected = inject_sources(base, catalog, seed=13, gain=1.0)
    truth = injected.truth
    peaks = {"x": np.rint(truth["x"].to_numpy()), "y": np.rint(truth["y"].to_numpy())}
    table = measure_dia_sources(peaks, injected.image, visit=VISIT, wcs=make_wcs(shape),
                                processed_mjd_tai=60400.5)
    return truth, table


def test_psf_flux_pulls_are_unit_normal_over_600_sources(transients):
    truth, table = transients
    flux = table["psfFlux"].to_numpy()
    pull = (flux - truth["diff_flux"].to_numpy()) / table["psfFluxErr"].to_numpy()
    assert len(pull) == 620 and np.all(np.isfinite(pull))
    assert abs(pull.mean()) < 0.1
    assert abs(pull.std() - 1.0) < 0.1
    # Positions are Rubin's 0-based pixels, unbiased, with honest errors.
    for axis in ("x", "y"):
        dpos = (table[axis].to_numpy() - truth[axis].to_numpy()) / table[f"{axis}Err"].to_numpy()
        assert abs(dpos.mean()) < 0.15 and abs(dpos.std() - 1.0) < 0.15
    snr = table["snr"].to_numpy()
    assert 15 < snr.min() and snr.max() < 130
    assert not table["isNegative"].to_numpy().any()


def test_table_is_rubins_dia_source(transients):
    truth, table = transients
    schema = apdb_schema()["DiaSource"]
    assert table.schema.equals(schema.arrow_schema())
    alert_names = {f["name"] for f in alert_schema().record_fields("diaSource")}
    assert alert_names <= set(table.column_names)
    ids = table["diaSourceId"].to_numpy()
    assert len(np.unique(ids)) == len(ids) and ids.min() > 0
    assert set(table["visit"].to_numpy()) == {4242} and set(table["band"].to_pylist()) == {"r"}
    assert set(table["midpointMjdTai"].to_numpy()) == {60400.25}
    # Every field the measurement fills is filled for every source.
    for name in ("ra", "dec", "raErr", "decErr", "ra_dec_Cov", "psfChi2", "psfLnL", "apFlux",
                 "trailFlux", "trailLength", "ixx", "iyy", "ixy", "ixxPSF", "extendedness",
                 "bboxSize"):
        assert table[name].null_count == 0, name
    # PSF χ² per pixel ≈ 1; sky positions follow the WCS: 0.2″ pixels → errors in degrees.
    assert np.median(table["psfChi2"].to_numpy() / table["psfNdata"].to_numpy()) == pytest.approx(1.0, abs=0.1)
    x_err_deg = table["xErr"].to_numpy() * SCALE / 3600
    assert np.allclose(table["raErr"].to_numpy(), x_err_deg, rtol=1e-3)
    assert np.all(table["pixelFlags_injected"].to_numpy())
    # Point sources: moments equal the PSF's, extendedness low, no dipole attempted.
    ratio = table["ixx"].to_numpy() / table["ixxPSF"].to_numpy()
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    assert np.median(table["extendedness"].to_numpy()) < 0.1
    assert not table["dipoleFitAttempted"].to_numpy().any()
    # The aperture flux (12 px) of an isolated point source is its flux, within its error.
    ap_pull = (table["apFlux"].to_numpy() - truth["diff_flux"].to_numpy()) / table["apFluxErr"].to_numpy()
    assert abs(np.median(ap_pull)) < 0.2


def test_point_sources_fit_a_trail_length_consistent_with_zero(transients):
    _, table = transients
    length = table["trailLength"].to_numpy()
    err = table["trailLengthErr"].to_numpy()
    # The model depends on L²: its significance is L² / σ(L²), σ(L²) = (L + σ_L)² − L².
    z = length ** 2 / ((length + err) ** 2 - length ** 2)
    assert np.all(z < 4.5)
    assert np.median(z) < 1.0


def test_trailed_fit_recovers_length_and_angle_within_3_sigma():
    shape = (700, 1400)
    widths = np.array([2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20], float)
    n = len(widths)
    rng = np.random.default_rng(21)
    catalog = {"x": np.tile([230.0, 690.0, 1150.0], 4)[:n] + rng.uniform(-3, 3, n),
               "y": np.repeat([110.0, 270.0, 430.0, 590.0], 3)[:n] + rng.uniform(-3, 3, n),
               "flux": np.full(n, 3.0e4), "template_flux": np.zeros(n),
               "kind": ["trail"] * n, "trail_length": widths * FWHM,
               "trail_angle": rng.uniform(0, 180, n)}
    injected = inject_sources(noise_image(shape, seed=22), catalog, seed=23, gain=2.0)
    # The detection peak is somewhere along the trail, not at its centre.
    t = rng.uniform(-0.4, 0.4, n) * catalog["trail_length"]
    angle = np.radians(catalog["trail_angle"])
    peaks = {"x": np.rint(catalog["x"] + t * np.cos(angle)),
             "y": np.rint(catalog["y"] + t * np.sin(angle))}
    table = measure_dia_sources(peaks, injected.image, visit=VISIT, wcs=make_wcs(shape))
    assert not table["trail_flag"].to_numpy().any()
    length_px = table["trailLength"].to_numpy() / SCALE
    length_err = table["trailLengthErr"].to_numpy() / SCALE
    length_pull = (length_px - catalog["trail_length"]) / length_err
    dangle = (table["trailAngle"].to_numpy() - pixel_bearing(angle) % 180.0 + 90.0) % 180.0 - 90.0
    angle_pull = dangle / table["trailAngleErr"].to_numpy()
    assert np.all(np.abs(length_pull) < 3.0), length_pull
    assert np.all(np.abs(angle_pull) < 3.0), angle_pull
    assert np.sqrt(np.mean(length_pull ** 2)) < 1.6 and np.sqrt(np.mean(angle_pull ** 2)) < 1.6
    flux_pull = (table["trailFlux"].to_numpy() - 3.0e4) / table["trailFluxErr"].to_numpy()
    assert np.all(np.abs(flux_pull) < 4.0)
    # The trail's centre, on the sky, is the injected centre.
    ra, dec = make_wcs(shape).all_pix2world(catalog["x"], catalog["y"], 0)
    dra = (table["trailRa"].to_numpy() - ra) * np.cos(np.radians(dec)) / table["trailRaErr"].to_numpy()
    ddec = (table["trailDec"].to_numpy() - dec) / table["trailDecErr"].to_numpy()
    assert np.all(np.abs(dra) < 4.0) and np.all(np.abs(ddec) < 4.0)
    assert np.all(table["extendedness"].to_numpy() > 0.99)


def test_dipole_fit_recovers_separation_and_flux_of_a_shifted_star():
    shape = (400, 400)
    psf = GaussianPsf.from_fwhm(FWHM)
    base = noise_image(shape, seed=31, psf=psf)
    image = np.array(base.image)
    rng = np.random.default_rng(32)
    n = 16
    centre = np.stack(np.meshgrid(np.arange(4) * 90.0 + 60, np.arange(4) * 90.0 + 60), -1).reshape(-1, 2)
    sep = rng.uniform(1.5, 4.0, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    flux = rng.uniform(2e4, 5e4, n)
    shift = 0.5 * sep[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    add_psf(image, psf, *(centre + shift).T, flux)          # the star in the science image
    add_psf(image, psf, *(centre - shift).T, -flux)         # ... and where the template has it
    add_psf(image, psf, [200.0], [200.0], [3.0e4])           # a plain point source
    peaks = {"x": np.rint(np.r_[centre[:, 0] + shift[:, 0], 200.0]),
             "y": np.rint(np.r_[centre[:, 1] + shift[:, 1], 200.0])}
    table = measure_dia_sources(peaks, DiaImage(image, base.variance, psf=psf), visit=VISIT,
                                wcs=make_wcs(shape))
    attempted = table["dipoleFitAttempted"].to_numpy()
    is_dipole = table["isDipole"].to_numpy()
    assert attempted[:n].all() and is_dipole[:n].all()
    assert not attempted[n] and not is_dipole[n]
    length_px = table["dipoleLength"].to_numpy()[:n] / SCALE
    assert np.all(np.abs(length_px / sep - 1.0) < 0.05), length_px / sep
    mean_pull = (table["dipoleMeanFlux"].to_numpy()[:n] - flux) / table["dipoleMeanFluxErr"].to_numpy()[:n]
    diff_pull = table["dipoleFluxDiff"].to_numpy()[:n] / table["dipoleFluxDiffErr"].to_numpy()[:n]
    assert np.all(np.abs(mean_pull) < 3.0) and np.all(np.abs(diff_pull) < 3.0)
    dangle = (table["dipoleAngle"].to_numpy()[:n] - pixel_bearing(angle) + 180.0) % 360.0 - 180.0
    assert np.all(np.abs(dangle) < 3.0)
    chi2 = table["dipoleChi2"].to_numpy()[:n] / table["dipoleNdata"].to_numpy()[:n]
    assert np.all(np.abs(chi2 - 1.0) < 0.2)


def test_science_and_template_forced_fluxes_with_sky():
    shape = (300, 300)
    psf_sci, psf_tmpl = GaussianPsf.from_fwhm(FWHM), GaussianPsf.from_fwhm(4.5)
    x = np.array([60.2, 150.7, 240.4])
    y = np.array([70.6, 150.1, 220.9])
    f_sci = np.array([8.0e3, 2.0e4, 5.0e3])
    f_tmpl = np.array([3.0e3, 1.2e4, 9.0e3])
    rng = np.random.default_rng(41)
    sci = rng.normal(500.0, SIGMA, shape)          # a calibrated exposure keeps its sky
    tmpl = rng.normal(350.0, SIGMA / 2, shape)
    add_psf(sci, psf_sci, x, y, f_sci)
    add_psf(tmpl, psf_tmpl, x, y, f_tmpl)
    diff = noise_image(shape, seed=42, psf=psf_sci)
    diff_img = np.array(diff.image)
    add_psf(diff_img, psf_sci, x, y, f_sci - f_tmpl)
    table = measure_dia_sources(
        {"x": np.rint(x), "y": np.rint(y), "isNegative": np.array([False, False, True])},
        DiaImage(diff_img, diff.variance, psf=psf_sci),
        DiaImage(sci, np.full(shape, SIGMA ** 2), psf=psf_sci),
        DiaImage(tmpl, np.full(shape, (SIGMA / 2) ** 2), psf=psf_tmpl),
        visit=VISIT, wcs=make_wcs(shape))
    sci_pull = (table["scienceFlux"].to_numpy() - f_sci) / table["scienceFluxErr"].to_numpy()
    tmpl_pull = (table["templateFlux"].to_numpy() - f_tmpl) / table["templateFluxErr"].to_numpy()
    assert np.all(np.abs(sci_pull) < 3.0) and np.all(np.abs(tmpl_pull) < 3.0)
    assert table["isNegative"].to_pylist() == [False, False, True]
    assert not table["forced_PsfFlux_flag"].to_numpy().any()
    # Without the background fit the sky biases the forced flux upwards.
    plain = measure_dia_sources(
        {"x": np.rint(x), "y": np.rint(y)}, DiaImage(diff_img, diff.variance, psf=psf_sci),
        DiaImage(sci, np.full(shape, SIGMA ** 2), psf=psf_sci), visit=VISIT,
        wcs=make_wcs(shape), options=MeasureOptions(fit_background=False, trail=False))
    assert np.all(plain["scienceFlux"].to_numpy() - f_sci > 20 * plain["scienceFluxErr"].to_numpy())
    assert plain["templateFlux"].null_count == 3


def test_pixel_flags_come_from_the_mask_planes_and_off_image_peaks_are_flagged():
    shape = (200, 200)
    planes = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "NO_DATA": 8, "INJECTED": 9}
    mask = np.zeros(shape, np.int32)
    mask[:, :4] |= 1 << planes["EDGE"]
    mask[50, 50] |= 1 << planes["CR"]                  # at the centre of source 0
    mask[100, 104] |= 1 << planes["SAT"]               # in the footprint of source 1, not the centre
    mask[150, 150] |= 1 << planes["INTRP"]
    mask[152, 150] |= 1 << planes["NO_DATA"]
    diff = noise_image(shape, seed=51, mask=mask, planes=planes)
    image, variance = np.array(diff.image), np.array(diff.variance)
    image[152, 150] = np.nan                          # masked NO_DATA: left out, not an error
    variance[152, 150] = np.nan
    add_psf(image, diff.psf, [50.0, 100.0, 150.0, 3.0], [50.0, 100.0, 150.0, 120.0], [2e4] * 4)
    sci_mask = np.zeros(shape, np.int32)
    sci_mask[148:153, 148:153] |= 1 << planes["INJECTED"]
    sci = DiaImage(np.zeros(shape), np.ones(shape), sci_mask, planes, diff.psf)
    peaks = {"x": [50.0, 100.0, 150.0, 3.0, -7.0, 250.0], "y": [50.0, 100.0, 150.0, 120.0, 30.0, 9.0]}
    table = measure_dia_sources(peaks, DiaImage(image, variance, mask, planes, diff.psf), sci,
                                visit=VISIT, wcs=make_wcs(shape))
    flags = {name: table[name].to_pylist() for name in table.column_names if name.startswith("pixelFlags")}
    assert flags["pixelFlags_cr"] == [True, False, False, False, False, False]
    assert flags["pixelFlags_crCenter"] == [True, False, False, False, False, False]
    assert flags["pixelFlags_saturated"][:3] == [False, True, False]
    assert flags["pixelFlags_saturatedCenter"][:3] == [False, False, False]
    assert flags["pixelFlags_interpolatedCenter"][:3] == [False, False, True]
    assert flags["pixelFlags_nodata"][:3] == [False, False, True]
    assert flags["pixelFlags_injected"][:3] == [False, False, True]
    assert flags["pixelFlags_injectedCenter"][:3] == [False, False, True]
    assert flags["pixelFlags_edge"] == [False, False, False, True, True, True]
    assert flags["pixelFlags_offimage"] == [False, False, False, False, True, True]
    assert table["psfFlux"].null_count == 2 and table["psfFlux_flag"].to_pylist()[4:] == [True, True]
    assert table["psfFlux_flag_edge"].to_pylist()[:4] == [False, False, False, True]
    assert table["apFlux_flag_apertureTruncated"].to_pylist()[:4] == [False, False, False, True]
    assert table["psfNdata"].to_pylist()[4:] == [0, 0]
    ndata = table["psfNdata"].to_pylist()               # SAT and NO_DATA pixels are left out
    assert ndata[:3] == [ndata[0], ndata[0] - 1, ndata[0] - 1] and ndata[0] == 17 * 17
    bbox = table["bboxSize"].to_numpy()
    assert np.all(bbox[:4] > 5) and np.all(bbox[:4] < 40)
    flux = table["psfFlux"].to_numpy()[:4]
    assert np.all(np.abs(flux[:3] - 2e4) < 4 * table["psfFluxErr"].to_numpy()[:3])


def _two_sources_with_a_nan_by_row_1(shape):
    """A difference image with two sources and an unmasked NaN in the footprint of row 1."""
    diff = noise_image(shape, seed=61)
    image = np.array(diff.image)
    image[62, 41] = np.nan
    add_psf(image, diff.psf, [20.0, 40.0], [20.0, 60.0], [2e4, 2e4])
    return diff, image, {"x": [20.0, 40.0], "y": [20.0, 60.0]}


def test_bad_input_errors_name_the_source():
    shape = (120, 120)
    diff, image, peaks = _two_sources_with_a_nan_by_row_1(shape)
    with pytest.raises(DiaError, match=r"DIA source row 1 at \(x, y\) = \(40\.00, 60\.00\).*NaN") as info:
        measure_dia_sources(peaks, DiaImage(image, diff.variance, psf=diff.psf), visit=VISIT,
                            wcs=make_wcs(shape))
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    with pytest.raises(DiaError, match="difference image has no PSF model"):
        measure_dia_sources(peaks, DiaImage(diff.image, diff.variance), visit=VISIT, wcs=make_wcs(shape))
    with pytest.raises(DiaError, match="science image has no PSF model"):
        measure_dia_sources(peaks, diff, DiaImage(diff.image, diff.variance), visit=VISIT)
    with pytest.raises(DiaError, match="missing column 'y'"):
        measure_dia_sources({"x": [1.0]}, diff, visit=VISIT, wcs=make_wcs(shape))
    with pytest.raises(DiaError, match=r"row 1 has a non-finite position"):
        measure_dia_sources({"x": [1.0, np.nan], "y": [1.0, 2.0]}, diff, visit=VISIT,
                            wcs=make_wcs(shape))
    with pytest.raises(DiaError, match="no WCS"):
        measure_dia_sources(peaks, diff, visit=VISIT)
    with pytest.raises(DiaError, match="detector must be a non-negative integer"):
        VisitInfo(1, -2, "r", 60000.0, 30.0)
    empty = measure_dia_sources({"x": [], "y": []}, diff, visit=VISIT, wcs=make_wcs(shape))
    assert empty.num_rows == 0 and empty.schema.equals(apdb_schema()["DiaSource"].arrow_schema())


def test_batches_bound_memory_and_change_no_value(transients):
    """Measured 64 sources at a time, every column is the same as in one piece (each source is
    measured on its own), and the 4k x 4k case that ran out of memory at 16,887 peaks is
    bounded by one batch's cutouts."""
    shape = (1000, 1000)
    base = noise_image(shape, seed=11)
    catalog = make_injection_catalog(shape, 620, seed=12, mag_range=(21.8, 23.5),
                                     min_separation_px=30)
    injected = inject_sources(base, catalog, seed=13, gain=1.0)
    truth, default = transients
    peaks = {"x": np.rint(truth["x"].to_numpy()), "y": np.rint(truth["y"].to_numpy())}

    def measure(batch_size):
        return measure_dia_sources(peaks, injected.image, visit=VISIT, wcs=make_wcs(shape),
                                   processed_mjd_tai=60400.5,
                                   options=MeasureOptions(batch_size=batch_size))

    whole, batched = measure(10_000), measure(64)
    assert default.equals(whole)
    assert batched.num_rows == whole.num_rows == 620
    for name in whole.column_names:
        a, b = whole[name].to_numpy(zero_copy_only=False), batched[name].to_numpy(zero_copy_only=False)
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert list(a) == list(b), name
    with pytest.raises(DiaError, match="batch_size >= 1"):
        MeasureOptions(batch_size=0)


def test_a_bad_source_in_a_later_batch_is_named_by_its_row_in_the_catalogue():
    shape = (120, 120)
    diff, image, peaks = _two_sources_with_a_nan_by_row_1(shape)
    with pytest.raises(DiaError, match=r"DIA source row 1 at \(x, y\) = \(40\.00, 60\.00\)"):
        measure_dia_sources(peaks, DiaImage(image, diff.variance, psf=diff.psf), visit=VISIT,
                            wcs=make_wcs(shape), options=MeasureOptions(batch_size=1))
