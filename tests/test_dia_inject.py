"""Synthetic source injection and injection catalogs; DIA id packing."""

import numpy as np
import pytest
from astropy.io import fits

from jointcal_ap.dia import (
    DIA_ID_PACKER,
    INJECTED,
    INJECTED_TEMPLATE,
    DiaError,
    DiaImage,
    IdPacker,
    estimate_gain,
    inject_sources,
    make_injection_catalog,
)
from jointcal_ap.exposure import Exposure, ExposureMetadata
from jointcal_ap.psf import GaussianPsf

PSF = GaussianPsf.from_fwhm(3.0)


def blank(shape=(200, 200), variance=1.0, psf=PSF):
    return DiaImage(np.zeros(shape), np.full(shape, variance), psf=psf)


def test_point_sources_and_trails_are_drawn_with_the_psf_and_conserve_flux():
    catalog = {"x": [50.3, 140.0], "y": [60.7, 100.0], "flux": [1000.0, 5000.0],
               "template_flux": [0.0, 0.0], "kind": ["transient", "trail"],
               "trail_length": [0.0, 40.0], "trail_angle": [0.0, 30.0]}
    result = inject_sources(blank(), catalog, seed=1, noise=False)
    image = result.image.image
    assert image.sum() == pytest.approx(6000.0, rel=1e-6)
    yy, xx = np.mgrid[0:200, 0:200]
    star = np.where(xx < 100, image, 0.0)
    assert (star * xx).sum() / star.sum() == pytest.approx(50.3, abs=1e-3)
    assert (star * yy).sum() / star.sum() == pytest.approx(60.7, abs=1e-3)
    trail = np.where(xx >= 100, image, 0.0)
    cx, cy = (trail * xx).sum() / 5000.0, (trail * yy).sum() / 5000.0
    assert (cx, cy) == pytest.approx((140.0, 100.0), abs=1e-3)
    u = np.radians(30.0)
    along = (xx - cx) * np.cos(u) + (yy - cy) * np.sin(u)
    across = -(xx - cx) * np.sin(u) + (yy - cy) * np.cos(u)
    var_psf = PSF.ixx + 1.0 / 12.0                             # pixel-integrated Gaussian
    assert (trail * along ** 2).sum() / 5000.0 == pytest.approx(40.0 ** 2 / 12 + var_psf, rel=1e-3)
    assert (trail * across ** 2).sum() / 5000.0 == pytest.approx(var_psf, rel=1e-2)
    assert np.array_equal(result.image.variance, np.ones((200, 200)))     # no noise, no variance


def test_poisson_noise_matches_the_updated_variance_and_is_seeded():
    n = 400
    grid = np.arange(n)
    catalog = {"x": 20.0 + 40.0 * (grid % 20), "y": 20.0 + 40.0 * (grid // 20),
               "flux": np.full(n, 2.0e4), "template_flux": np.zeros(n)}
    target = blank((800, 800), variance=1e-6)
    noisy = inject_sources(target, catalog, seed=5, gain=0.5)
    model = inject_sources(target, catalog, seed=5, noise=False).image.image
    added_var = noisy.image.variance - 1e-6
    assert np.allclose(added_var, model / 0.5, rtol=1e-5, atol=1e-9)
    use = model > 50.0
    chi2 = (noisy.image.image - model)[use] ** 2 / added_var[use]
    assert chi2.mean() == pytest.approx(1.0, abs=0.05)
    again = inject_sources(target, catalog, seed=5, gain=0.5)
    other = inject_sources(target, catalog, seed=6, gain=0.5)
    assert np.array_equal(again.image.image, noisy.image.image)
    assert not np.array_equal(other.image.image, noisy.image.image)


def test_mask_planes_template_injection_and_truth():
    catalog = make_injection_catalog((200, 200), 40, seed=3, mag_range=(22, 24),
                                     kinds={"static": 1, "variable": 1, "transient": 1, "trail": 1},
                                     min_separation_px=15, trail_length_px=(5, 20))
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
                          "CRVAL2": 2.0, "CRPIX1": 100.5, "CRPIX2": 100.5, "CD1_1": -5.5e-5,
                          "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})
    meta = ExposureMetadata(visit=12, detector=3, filter="g", mjd_tai=60100.0, exptime=30.0)
    calexp = Exposure(np.zeros((200, 200), np.float32), None, np.full((200, 200), 25.0, np.float32),
                      header, meta, psf=PSF)
    science = inject_sources(calexp, catalog, seed=4, gain=2.0)
    assert isinstance(science.image, Exposure) and science.image.psf is PSF
    bit = science.image.mask_planes[INJECTED]
    assert bit not in {b for k, b in calexp.mask_planes.items()}
    flagged = (science.image.mask & (1 << bit)) != 0
    assert flagged.any() and not ((science.image.mask & ~(1 << bit)) != 0).any()
    # Unflagged pixels got less than 0.1 σ (σ = 5 nJy) of flux, plus a few electrons of noise.
    assert np.all(science.image.image[~flagged] < 0.5 + 3 / 2.0)
    truth = science.truth
    assert set(truth["visit"].to_pylist()) == {12} and set(truth["detector"].to_pylist()) == {3}
    kind = np.array(truth["kind"].to_pylist())
    diff = truth["diff_flux"].to_numpy()
    flux, tflux = truth["flux"].to_numpy(), truth["template_flux"].to_numpy()
    assert np.all(diff[kind == "static"] == 0.0)
    assert np.allclose(diff[kind == "variable"], flux[kind == "variable"] - tflux[kind == "variable"])
    assert np.all(diff[np.isin(kind, ["transient", "trail"])] > 0)
    assert np.all(truth["injected"].to_numpy())
    template = inject_sources(calexp, catalog, seed=4, gain=2.0, template=True)
    assert INJECTED_TEMPLATE in template.image.mask_planes and INJECTED not in template.image.mask_planes
    drawn = template.truth["drawn_flux"].to_numpy()
    assert np.all(drawn[np.isin(kind, ["transient", "trail"])] == 0.0)
    assert np.allclose(drawn[kind == "static"], flux[kind == "static"])
    # The same sources through their sky positions (the exposure's WCS) land on the same pixels.
    sky = {"ra": catalog["ra"], "dec": catalog["dec"], "flux": catalog["flux"],
           "template_flux": catalog["template_flux"]}
    assert np.isnan(catalog["ra"].to_numpy()).all()       # no WCS given to the catalog
    ra, dec = calexp.wcs.all_pix2world(catalog["x"].to_numpy(), catalog["y"].to_numpy(), 0)
    sky.update(ra=ra, dec=dec)
    by_sky = inject_sources(calexp, sky, seed=4, gain=2.0)
    assert np.allclose(by_sky.truth["x"].to_numpy(), catalog["x"].to_numpy(), atol=1e-6)


def test_injection_catalog_is_seeded_and_keeps_its_promises():
    wcs = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 20.0, "CRVAL2": 10.0,
                       "CRPIX1": 500.0, "CRPIX2": 400.0, "CD1_1": -5.5e-5, "CD1_2": 0.0,
                       "CD2_1": 0.0, "CD2_2": 5.5e-5})
    from astropy.wcs import WCS

    kwargs = dict(seed=9, mag_range=(21.0, 24.0), kinds={"transient": 3, "trail": 1},
                  min_separation_px=25.0, trail_length_px=(10.0, 30.0), wcs=WCS(wcs),
                  first_id=1000)
    a = make_injection_catalog((800, 1000), 300, **kwargs)
    b = make_injection_catalog((800, 1000), 300, **kwargs)
    assert a.equals(b)
    assert a["injection_id"].to_pylist() == list(range(1000, 1300))
    x, y = a["x"].to_numpy(), a["y"].to_numpy()
    edge = 10.0 + 15.0                                   # 10 px + half the longest trail
    assert x.min() > edge - 0.5 and x.max() < 1000 - 0.5 - edge
    assert y.min() > edge - 0.5 and y.max() < 800 - 0.5 - edge
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(300) * 1e9
    assert d.min() >= 25.0
    mag = a["mag"].to_numpy()
    assert mag.min() >= 21.0 and mag.max() <= 24.0
    assert np.allclose(a["flux"].to_numpy(), 10 ** (-0.4 * (mag - 31.4)))
    kind = np.array(a["kind"].to_pylist())
    assert 0.15 < np.mean(kind == "trail") < 0.35
    length = a["trail_length"].to_numpy()
    assert np.all((length[kind == "trail"] >= 10) & (length[kind == "trail"] <= 30))
    assert np.all(length[kind != "trail"] == 0)
    assert np.isfinite(a["ra"].to_numpy()).all() and np.isfinite(a["dec"].to_numpy()).all()
    with pytest.raises(DiaError, match="do not fit"):
        make_injection_catalog((100, 100), 500, seed=1, min_separation_px=20)
    with pytest.raises(DiaError, match="kinds must map"):
        make_injection_catalog((100, 100), 5, seed=1, kinds={"galaxy": 1.0})


def _binned_gain(image, variance, mask, bad):
    """estimate_gain as first written (bins by searchsorted, groups by a stable sort): the
    reference its sort-once version must match exactly."""
    d = np.asarray(image, float).ravel()
    v = np.asarray(variance, float).ravel()
    good = np.isfinite(d) & np.isfinite(v) & (v > 0) & ((mask.ravel() & bad) == 0)
    d, v = d[good], v[good]
    edges = np.quantile(d, np.linspace(0.0, 1.0, 41))
    which = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, 39)
    counts = np.bincount(which, minlength=40)
    keep = np.nonzero(counts >= 10)[0]
    groups = np.split(np.argsort(which, kind="stable"), np.cumsum(counts)[:-1])
    xs = np.array([np.median(d[groups[k]]) for k in keep])
    ys = np.array([np.median(v[groups[k]]) for k in keep])
    return float(1.0 / np.polyfit(xs, ys, 1)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gain_is_exactly_the_binned_median_fit(dtype):
    rng = np.random.default_rng(7)
    shape = (240, 260)
    expected = rng.uniform(-50.0, 3000.0, shape)
    variance = (expected.clip(0.0) / 2.5 + 9.0).astype(dtype)
    # rounded values: many ties, also across bin edges; negatives, -0.0, NaN, masked pixels
    image = np.round(expected + rng.normal(0.0, np.sqrt(variance)), -1).astype(dtype)
    image[:3, :5] = -0.0
    image[5, :40] = np.nan
    variance[7, :30] = 0.0
    mask = np.zeros(shape, np.int32)
    mask[20:40, 10:200] = 1 << DiaImage(image, variance).mask_planes["SAT"]
    mask[50:60] = 1 << DiaImage(image, variance).mask_planes["DETECTED"]
    img = DiaImage(image, variance, mask)
    bad = img.bits("BAD", "NO_DATA", "SAT", "EDGE")
    assert estimate_gain(img) == _binned_gain(image, variance, mask, bad)


def test_gain_of_a_large_image_from_a_stride_of_its_pixels():
    """Above max_pixels usable pixels, every k-th is used: exactly the estimate of those
    pixels, and within 1 % of the estimate from all of them and of the true gain."""
    rng = np.random.default_rng(5)
    gain, shape = 2.5, (1100, 1000)
    expected = rng.uniform(-50.0, 3000.0, shape)
    variance = (expected.clip(0.0) / gain + 9.0).astype(np.float32)
    image = (expected + rng.normal(0.0, np.sqrt(variance))).astype(np.float32)
    image[:2, :50] = np.nan                                    # not usable, before the stride
    img = DiaImage(image, variance)
    full = estimate_gain(img, max_pixels=None)
    sampled = estimate_gain(img, max_pixels=200_000)
    usable = np.isfinite(image.ravel())
    stride = -(-int(usable.sum()) // 200_000)
    assert stride == 6
    ones = np.ones((1, usable.sum()), np.float32)
    by_hand = estimate_gain(DiaImage((image.ravel()[usable][::stride] * ones[:, ::stride]),
                                     variance.ravel()[usable][::stride][None, :]),
                            max_pixels=None)
    assert sampled == by_hand and sampled != full
    assert sampled == pytest.approx(full, rel=0.01) and sampled == pytest.approx(gain, rel=0.02)
    assert estimate_gain(img) == estimate_gain(img, max_pixels=1 << 20)    # the default


def test_gain_is_measured_from_the_image_and_bad_input_is_named():
    rng = np.random.default_rng(2)
    gain = 3.0
    expected = 200.0 + 5000.0 * np.exp(-((np.arange(300)[None, :] - 150.0) ** 2) / 2000.0) \
        + np.zeros((300, 1))
    variance = expected / gain + 4.0
    image = expected + rng.normal(0.0, np.sqrt(variance))
    assert estimate_gain(DiaImage(image, variance)) == pytest.approx(gain, rel=0.05)
    with pytest.raises(DiaError, match="no range of values"):
        estimate_gain(DiaImage(np.zeros((50, 50)), np.ones((50, 50))))
    with pytest.raises(DiaError, match="has no PSF model"):
        inject_sources(blank(psf=None), {"x": [5.0], "y": [5.0], "flux": [1.0]}, seed=1)
    with pytest.raises(DiaError, match=r"row 1 has a bad position .* flux -3.0"):
        inject_sources(blank(), {"x": [5.0, 6.0], "y": [5.0, 6.0], "flux": [1.0, -3.0]}, seed=1)
    with pytest.raises(DiaError, match=r"unknown kind\(s\) \['comet'\]"):
        inject_sources(blank(), {"x": [5.0], "y": [5.0], "flux": [1.0], "kind": ["comet"]}, seed=1)


def test_id_packing_round_trips_and_names_values_out_of_range():
    ids = DIA_ID_PACKER.pack(np.array([0, 5, 2**33 - 1]), np.array([0, 1023, 17]),
                             np.array([0, 7, 2**20 - 1]))
    assert ids.dtype == np.int64 and np.all(ids >= 0)
    visit, detector, index = DIA_ID_PACKER.unpack(ids)
    assert visit.tolist() == [0, 5, 2**33 - 1] and detector.tolist() == [0, 1023, 17]
    assert index.tolist() == [0, 7, 2**20 - 1]
    assert len(set(DIA_ID_PACKER.pack(np.arange(50)[:, None], np.arange(3)[None, :], 0).ravel())) == 150
    with pytest.raises(DiaError, match=r"index 1048576 is outside \[0, 2\^20\)"):
        DIA_ID_PACKER.pack(1, 1, 2**20)
    with pytest.raises(DiaError, match="sum to <= 63"):
        IdPacker(40, 20, 10)
