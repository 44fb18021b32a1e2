"""Warping (Lanczos-3, flux-conserving) and template coadds."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from jointcal_ap.diffim import (
    DiffimError,
    ImagePlanes,
    Template,
    build_template,
    read_template,
    warp_to,
)
from jointcal_ap.diffim.image import MASK_BITS
from jointcal_ap.diffim.stars import find_stars
from jointcal_ap.diffim.warp import warm_up_warp
from jointcal_ap.simulate.images import render_image

SHAPE = (300, 320)


def _header(crval1=150.0, crval2=2.0, rot_deg=0.0, scale=5.5e-5, crpix=(160.5, 150.5)):
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": crval1, "CRVAL2": crval2,
                        "CRPIX1": crpix[0], "CRPIX2": crpix[1], "CD1_1": -scale * c, "CD1_2": scale * s,
                        "CD2_1": scale * s, "CD2_2": scale * c})


@pytest.fixture(scope="module")
def sky():
    rng = np.random.default_rng(4)
    n = 120
    return rng.uniform(150.0 - 0.007, 150.0 + 0.007, n), rng.uniform(2.0 - 0.007, 2.0 + 0.007, n), \
        10 ** rng.uniform(3.5, 4.5, n)


def _exposure(sky, header, seed, noise=True, sky_level=100.0):
    ra, dec, flux = sky
    x, y = WCS(header).all_world2pix(ra, dec, 1)
    on = (x > 0.5) & (x < SHAPE[1] + 0.5) & (y > 0.5) & (y < SHAPE[0] + 0.5)   # render_image wants these
    x, y, flux = x[on], y[on], flux[on]
    im = render_image(SHAPE, x, y, flux, fwhm_px=3.0, sky_adu=sky_level, gain=1.0, read_noise_e=0.0,
                      noise=noise, seed=seed)
    return ImagePlanes(im.image - np.float32(sky_level), im.variance, im.mask, None, header, f"exp{seed}")


def test_warp_conserves_flux_and_positions(sky):
    target = _header()
    src = _exposure(sky, _header(crval1=150.001, rot_deg=20.0, scale=5.0e-5, crpix=(150.0, 160.0)), 1,
                    noise=False)
    warped = warp_to(src, target, SHAPE)
    truth = _exposure(sky, target, 2, noise=False)
    # bright stars well inside both grids: same positions (< 0.02 px) and fluxes (< 0.5 %)
    ws = find_stars(np.nan_to_num(warped.image), truth.variance, threshold=50)
    ts = find_stars(truth.image, truth.variance, threshold=50)
    from scipy.spatial import cKDTree

    d, k = cKDTree(np.column_stack([ts.x, ts.y])).query(np.column_stack([ws.x, ws.y]))
    ok = (d < 1.0) & ws.clean & ws.isolated
    assert ok.sum() > 20
    assert np.median(d[ok]) < 0.05
    ratio = ws.flux[ok] / ts.flux[k[ok]]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.005)   # flux kept though the pixel scale differs
    # outside the input's footprint: NO_DATA and NaN
    assert np.isnan(warped.image).any() and (warped.mask[np.isnan(warped.image)] & MASK_BITS["NO_DATA"]).all()


def test_warp_propagates_variance_and_same_grid_is_a_copy(sky):
    target = _header()
    rng = np.random.default_rng(0)
    noise = ImagePlanes(rng.normal(0, 1, SHAPE).astype(np.float32), np.ones(SHAPE, np.float32),
                        np.zeros(SHAPE, np.int32), None, _header(crval1=150.0000137, crval2=2.0000091), "noise")
    w = warp_to(noise, target, SHAPE)
    inner = (slice(10, -10), slice(10, -10))
    v = w.variance[inner]
    assert np.all(v > 0.3) and np.all(v <= 1.0 + 1e-6)                # Σ w² ≤ 1 for a sub-pixel shift
    assert np.var(w.image[inner]) == pytest.approx(np.mean(v), rel=0.05)    # per-pixel variance right
    same = warp_to(_exposure(sky, target, 3), target, SHAPE)
    assert same.psf is None and np.array_equal(same.image, _exposure(sky, target, 3).image)


def test_warp_errors_name_the_input(sky):
    far = ImagePlanes(np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.int32), None,
                      _header(crval1=160.0), "far.fits")
    with pytest.raises(DiffimError, match=r"far\.fits: does not overlap"):
        warp_to(far, _header(), SHAPE)
    nowcs = ImagePlanes(np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.int32))
    with pytest.raises(DiffimError, match="no celestial WCS"):
        warp_to(nowcs, _header(), SHAPE)


def test_build_template_coadds_with_inverse_variance_weights(sky, tmp_path):
    target = _header()
    inputs = [_exposure(sky, _header(crval1=150.0 + 0.0003 * k, crval2=2.0 - 0.0002 * k, rot_deg=5 * k), 10 + k)
              for k in range(3)]
    t = build_template(inputs, target, shape=SHAPE)
    assert t.inputs == ("exp10", "exp11", "exp12") and t.psf is not None
    assert t.psf.fwhm(160, 150) == pytest.approx(3.0, abs=0.3)
    inner = (slice(20, -20), slice(20, -20))
    assert (t.n_inputs[inner] == 3).mean() > 0.9
    # sky-dominated pixels: about a third of one exposure's variance (interpolation lowers it)
    ratio = np.median(t.variance[inner]) / np.median(inputs[0].variance[inner])
    assert 0.2 < ratio < 0.34
    path = t.write(tmp_path / "t.fits")
    back = read_template(path)
    assert isinstance(back, Template) and back.inputs == t.inputs
    assert np.array_equal(back.image, t.image, equal_nan=True) and back.psf is not None
    with pytest.raises(DiffimError, match="no input"):
        build_template([], target, shape=SHAPE)


def test_external_template_fits(tmp_path):
    img = np.ones((50, 60), np.float32)
    fits.HDUList([fits.PrimaryHDU(img, header=_header()), fits.ImageHDU(img * 2, name="VARIANCE")]).writeto(
        tmp_path / "ext.fits")
    t = read_template(tmp_path / "ext.fits")
    assert t.inputs == (str(tmp_path / "ext.fits"),) and t.wcs is not None and float(t.variance[0, 0]) == 2.0
    fits.HDUList([fits.PrimaryHDU(img), fits.ImageHDU(np.ones((5, 5), np.float32), name="VARIANCE")]).writeto(
        tmp_path / "bad.fits")
    with pytest.raises(DiffimError, match=r"bad.fits: the VARIANCE extension has shape \(5, 5\)"):
        read_template(tmp_path / "bad.fits")


def test_exposures_in_and_a_difference_out(sky):
    """The stage path: Exposures (with their WCS) → template on the science grid → difference."""
    from jointcal_ap.diffim import SubtractOptions, subtract
    from jointcal_ap.exposure import Exposure, ExposureMetadata

    def exposure(visit, header, seed):
        p = _exposure(sky, header, seed)
        return Exposure(p.image, p.mask, p.variance, header, ExposureMetadata(visit, 1, "r", 60300.0 + visit, 30.0))

    science = exposure(1, _header(), 41)
    others = [exposure(2 + k, _header(crval1=150.0 + 0.0002 * k, rot_deg=3 * k), 42 + k) for k in range(2)]
    template = build_template(others, science)
    assert template.inputs == ("template input visit 2 detector 1", "template input visit 3 detector 1")
    diff = subtract(science, template, SubtractOptions())
    assert diff.source == "science visit 1 detector 1" and diff.template_inputs == template.inputs
    assert diff.wcs is not None and diff.qa["residual_std"] == pytest.approx(1.0, abs=0.1)


def test_one_input_template_is_the_coadd_of_one(sky):
    """A template from one exposure skips the coadd's arithmetic: the same planes as the general
    coadd of that one input, fallback (SAT) and uncovered (NO_DATA) pixels included."""
    from dataclasses import replace

    from jointcal_ap.diffim.template import _coadd, _one_input

    src = _exposure(sky, _header(crval1=150.0004, rot_deg=7.0), 5)
    mask = src.mask.copy()
    mask[100:110, 50:60] |= MASK_BITS["SAT"]                     # usable only as a fallback
    image = src.image.copy()
    image[200:205, 200:230] = np.nan                              # a hole: NO_DATA in the template
    src = replace(src, image=image, mask=mask)
    item = ("exp5", warp_to(src, _header(), SHAPE))
    one = _one_input(iter([item]), SHAPE)
    general = _coadd(iter([item]), SHAPE)
    for a, b in zip(one[:4], general[:4], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    assert one[4] == general[4] and one[5] == general[5] == ["exp5"]
    assert (one[2] & MASK_BITS["SAT"]).any() and (one[2] & MASK_BITS["NO_DATA"]).any()
    assert np.isnan(one[0]).any() and (one[3] == 0).any() and (one[3] == 1).any()
    t = build_template([src], _header(), shape=SHAPE)
    assert np.array_equal(t.image, one[0], equal_nan=True) and t.inputs == ("exp5",)
    with pytest.raises(DiffimError, match="none of the inputs overlaps"):
        build_template([replace(src, header=_header(crval1=160.0))], _header(), shape=SHAPE)


def test_warp_kernel_matches_exact_lanczos_to_float32_rounding():
    """The jitted kernel's three-sine weights give the planes of sinc(t)·sinc(t/3) (NumPy,
    summed tap by tap as the kernel does) to float32 rounding; masks and gaps exactly."""
    from jointcal_ap.diffim._warp_kernel import PAD, A, padded_planes, resample
    from jointcal_ap.diffim.warp import _lanczos_exact

    rng = np.random.default_rng(4)
    ny, nx = 60, 70
    image = rng.normal(100.0, 30.0, (ny, nx)).astype(np.float32)
    variance = rng.uniform(50.0, 150.0, (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.int32)
    mask[10, 20:30] = 1 << 3
    bad = np.zeros((ny, nx), bool)
    bad[40:42, 5:9] = True
    planes = padded_planes(image, variance, mask, bad)
    xs = rng.uniform(-3.0, nx + 4.0, (64, 256))
    ys = rng.uniform(-3.0, ny + 4.0, (64, 256))
    xs[0, :50] = np.round(xs[0, :50])                      # on pixel centres: one tap
    acc, vacc, macc, missing = resample(xs, ys, planes)

    img, var, msk, flag = (np.asarray(p) for p in planes[:4])
    ny_p, nx_p = planes[4]
    fx, fy = np.floor(xs - 1.0), np.floor(ys - 1.0)
    wx, wy = _lanczos_exact(xs - 1.0 - fx), _lanczos_exact(ys - 1.0 - fy)
    # first tap in the padded planes; beyond the kernel's reach of the input: far
    lo, hi_x, hi_y = PAD - A, nx_p - PAD - A, ny_p - PAD - A
    ix0 = fx.astype(np.int64) - (A - 1) + PAD
    iy0 = fy.astype(np.int64) - (A - 1) + PAD
    far = (ix0 < lo) | (ix0 > hi_x) | (iy0 < lo) | (iy0 > hi_y)
    base = np.clip(iy0, lo, hi_y) * nx_p + np.clip(ix0, lo, hi_x)
    wmax = wx.max(axis=-1) * wy.max(axis=-1)
    ref = np.zeros(xs.shape)
    vref = np.zeros(xs.shape)
    mref = np.zeros(xs.shape, np.int32)
    gap = far.copy()
    for j in range(2 * A):
        for i in range(2 * A):
            flat = base + (j * nx_p + i)
            w = wy[..., j] * wx[..., i]
            ref = ref + w * img[flat]
            vref = vref + w * w * var[flat]
            gap |= flag[flat] & (np.abs(w) > 1e-12)
            mref |= np.where(np.abs(w) >= 0.05 * wmax, msk[flat], 0)
    np.testing.assert_array_equal(missing, gap)
    np.testing.assert_array_equal(macc, mref)
    used = ~missing                                  # warp_to writes NaN elsewhere
    for got, want in ((acc[used], ref[used]), (vacc[used], vref[used])):
        np.testing.assert_array_max_ulp(got.astype(np.float32), want.astype(np.float32), maxulp=1)
        assert np.mean(got.astype(np.float32) == want.astype(np.float32)) > 0.999
    assert missing.any() and (~missing).any() and (macc != 0).any()


def _kernel_inputs(seed=7, shape=(300, 420), sparse=False):
    """Padded planes of noise; flags on 1 % (mask) and 0.2 % (bad) of the pixels, or with
    ``sparse`` on a grid of isolated pixels, so that some tiles' windows hold no flag."""
    from jointcal_ap.diffim._warp_kernel import padded_planes

    rng = np.random.default_rng(seed)
    ny, nx = shape
    image = rng.normal(100.0, 30.0, (ny, nx)).astype(np.float32)
    variance = rng.uniform(50.0, 150.0, (ny, nx)).astype(np.float32)
    if sparse:
        mask = np.zeros((ny, nx), np.int32)
        mask[20::60, 15::70] = 1 << 3
        bad = np.zeros((ny, nx), bool)
        bad[50::90, 45::110] = True
    else:
        mask = np.where(rng.uniform(size=(ny, nx)) < 0.01, 1 << 3, 0).astype(np.int32)
        bad = rng.uniform(size=(ny, nx)) < 0.002
    return padded_planes(image, variance, mask, bad)


def _tile_kinds(xs, ys, planes, tile):
    """For each tile of a block, as the kernel chooses its path (module notes of
    ``_warp_kernel``): (first-tap offsets one value per axis, a flag in its 7-tap window), or
    None for a tile that takes the gather."""
    from jointcal_ap.diffim._warp_kernel import PAD, A

    msk, bad = (np.asarray(p).reshape(planes[4]) for p in planes[2:4])
    ny_p, nx_p = planes[4]
    kinds = []
    for r in range(0, xs.shape[0], tile):
        for c in range(0, xs.shape[1], tile):
            ix0 = np.floor(xs[r:r + tile, c:c + tile] - 1.0).astype(int) - (A - 1) + PAD
            iy0 = np.floor(ys[r:r + tile, c:c + tile] - 1.0).astype(int) - (A - 1) + PAD
            ox, oy = ix0 - np.arange(tile)[None, :], iy0 - np.arange(tile)[:, None]
            inside = (ix0.min() >= PAD - A and ix0.max() <= nx_p - PAD - A
                      and iy0.min() >= PAD - A and iy0.max() <= ny_p - PAD - A)
            if not inside or np.ptp(ox) > 1 or np.ptp(oy) > 1:
                kinds.append(None)
                continue
            window = (slice(oy.min(), oy.min() + tile + 2 * A),
                      slice(ox.min(), ox.min() + tile + 2 * A))
            kinds.append((np.ptp(ox) == 0 and np.ptp(oy) == 0,
                           bool(msk[window].any() or bad[window].any())))
    return kinds


def _tiled_and_gathered(xs, ys, planes, tile):
    from jointcal_ap.diffim._warp_kernel import resample

    return resample(xs, ys, planes, tile=tile), resample(xs, ys, planes, tile=0)


@pytest.mark.parametrize("sparse", [False, True], ids=["flags_everywhere", "sparse_flags"])
@pytest.mark.parametrize("case", ["shift", "shift_across_integer", "rotation", "edge", "mixed"])
def test_shifted_tiles_give_the_gather_s_bits(case, sparse):
    """The shifted-tile path (7 × 7 slices per tile, 6 × 6 where the first-tap offset is one
    value per axis; the mask sums left out where no flag is in reach) and the gather give the
    same bits for every plane, on tiles that take it (a near-shift, also one whose offset
    crosses an integer inside the tile), on tiles that must fall back (a 3° rotation: offsets
    span > 1 px per tile; the input's edge: pixels beyond its padding), and on a block that has
    both; with flags near every tile, and with isolated ones (then the shifts give tiles of
    all four shifted kinds)."""
    tile = 32
    planes = _kernel_inputs(sparse=sparse)
    yy, xx = np.mgrid[1:65, 1:129].astype(float)
    if case == "shift":
        xs, ys = xx + 30.37 + 2e-3 * yy, yy + 100.71 - 1e-3 * xx
    elif case == "shift_across_integer":                  # floor(x') - x changes inside tiles
        xs, ys = xx + 30.99 + 4e-4 * xx + 3e-4 * yy, yy + 100.995 + 2e-4 * xx
    elif case == "rotation":
        c, s = np.cos(np.radians(3.0)), np.sin(np.radians(3.0))
        xs, ys = c * xx - s * yy + 150.2, s * xx + c * yy + 40.6
    elif case == "edge":                                  # partly beyond the input's left edge
        xs, ys = xx - 60.4, yy + 200.2
    else:                                                 # shifted left half, rotated right half
        c, s = np.cos(np.radians(5.0)), np.sin(np.radians(5.0))
        xs, ys = xx + 12.25, yy + 20.5
        right = xx > 64
        xs[right] = (c * xx - s * yy + 20.0)[right]
        ys[right] = (s * xx + c * yy + 10.0)[right]
    fast, slow = _tiled_and_gathered(xs, ys, planes, tile)
    for got, want in zip(fast, slow, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    _, _, macc, missing = slow
    assert (macc != 0).any() and missing.any() and (~missing).any()
    kinds = _tile_kinds(xs, ys, planes, tile)
    if sparse and case == "shift_across_integer":
        assert {k for k in kinds if k is not None} == {(u, f) for u in (True, False)
                                                       for f in (True, False)}, kinds
    if case == "shift":
        assert all(k is not None and k[0] for k in kinds), kinds
    if case == "edge":
        assert missing[:, :32].all() and missing[:, -32:].mean() < 0.5   # (bad pixels)


def test_shifted_tiles_are_taken_and_would_be_caught():
    """The test above would see a wrong shifted path: on a pure shift every tile takes it (a
    kernel that read one column off gives other values), and the 3° rotation takes the
    gather (a wrong offset test would read the wrong pixels there)."""
    from jointcal_ap.diffim._warp_kernel import PAD, A

    planes = _kernel_inputs()
    img = np.asarray(planes[0]).reshape(planes[4])
    yy, xx = np.mgrid[1:65, 1:129].astype(float)
    fast, _ = _tiled_and_gathered(xx + 30.0, yy + 100.0, planes, 32)
    # integer shift: each output pixel is its input pixel (the other taps weigh exactly 0)
    want = img[PAD + 100:PAD + 164, PAD + 30:PAD + 158]
    used = ~fast[3]
    np.testing.assert_array_equal(fast[0][used], want[used].astype(np.float64))
    assert used.mean() > 0.99 and A == 3


def test_warp_to_fast_path_matches_gather_on_real_wcs(sky):
    """warp_to with the shifted tiles and with the gather only: identical planes for a dithered
    pair, a rotated WCS (0.2° and 2°: some tiles fall back), a distorted (SIP) WCS and a
    partial overlap."""
    import functools

    from astropy.wcs import Sip

    import jointcal_ap.diffim.warp as warp_module

    src = _exposure(sky, _header(crval1=150.0003, crval2=2.0002, rot_deg=0.03), 9)
    distorted = WCS(_header())
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[0, 2], b[1, 1], b[0, 2] = 4e-5, -3e-5, 5e-5, 2e-5
    distorted.sip = Sip(a, b, None, None, distorted.wcs.crpix)
    distorted.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    targets = {"dither": WCS(_header()), "rot02": WCS(_header(rot_deg=0.2)),
               "rot2": WCS(_header(rot_deg=2.0)), "sip": distorted,
               "partial": WCS(_header(crpix=(260.5, 90.5)))}
    original = warp_module.resample
    for name, target in targets.items():
        fast = warp_to(src, target, SHAPE)
        try:
            warp_module.resample = functools.partial(original, tile=0)
            slow = warp_to(src, target, SHAPE)
        finally:
            warp_module.resample = original
        for plane in ("image", "variance", "mask"):
            np.testing.assert_array_equal(getattr(fast, plane), getattr(slow, plane), err_msg=name)
        assert np.isfinite(fast.image).mean() > 0.3, name


def test_template_of_one_overlapping_input_among_several_is_that_input(sky):
    """Inputs that do not overlap the target are skipped; when one is left, the template is
    the one-input template (no float64 coadd), the same planes bit for bit."""
    src = _exposure(sky, _header(crval1=150.0004, rot_deg=7.0), 5)
    far = _exposure(sky, _header(crval1=160.0), 6)
    alone = build_template([src], _header(), shape=SHAPE)
    for inputs in ([src, far], [far, src], [far, src, far]):
        t = build_template(inputs, _header(), shape=SHAPE)
        assert t.inputs == ("exp5",)
        for name in ("image", "variance", "mask"):
            assert np.array_equal(getattr(t, name), getattr(alone, name), equal_nan=True)
    both = build_template([src, far, _exposure(sky, _header(crval1=150.0002), 7)], _header(),
                          shape=SHAPE)
    assert both.inputs == ("exp5", "exp7")
    assert not np.array_equal(both.image, alone.image, equal_nan=True)


def test_block_jacobian_from_the_positions_matches_the_spline_derivatives():
    """The flux-conserving Jacobian from differences of the block's positions, against the
    mapping splines' own derivatives at every pixel: a distorted (SIP) and rotated mapping,
    blocks inside the grid, on its edges, and with padding rows and columns past them."""
    from jointcal_ap.diffim.warp import block_mapping, pixel_mapping

    shape = (700, 900)
    target = WCS(_header(crpix=(450.5, 350.5)))
    source = _header(crval1=150.002, rot_deg=3.0, scale=5.2e-5, crpix=(440.0, 360.0))
    source["CTYPE1"], source["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    source.update({"A_ORDER": 3, "B_ORDER": 3, "A_2_0": 4e-5, "A_0_2": -2e-5, "A_3_0": 3e-8,
                   "B_1_1": 3e-5, "B_0_3": -4e-8, "B_2_1": 2e-8})
    mx, my = pixel_mapping(target, WCS(source), shape)

    def derivatives(r, c):
        return np.abs(mx(r, c, dx=0, dy=1) * my(r, c, dx=1, dy=0)
                      - mx(r, c, dx=1, dy=0) * my(r, c, dx=0, dy=1))

    inside = edges = 0.0
    for first_row, n_rows, n, first_col, n_cols, width in [
            (37, 256, 256, 1, 900, 900),        # the left and right edges
            (1, 256, 256, 101, 512, 512),       # the top edge
            (601, 256, 100, 1, 1024, 900),      # the bottom edge, padding past two edges
            (300, 256, 256, 389, 512, 512),     # inside, and the right edge
            (699, 256, 2, 1, 1024, 900)]:       # two rows left at the bottom
        rows = np.arange(first_row, first_row + n_rows, dtype=float)
        cols = np.arange(first_col, first_col + n_cols, dtype=float)
        xs, ys, jac = block_mapping(mx, my, rows, cols, n, width, shape)
        # the block's positions are the grid evaluation's (BLAS may sum in another order)
        assert np.allclose(xs, mx(rows, cols), rtol=0, atol=1e-9)
        assert np.allclose(ys, my(rows, cols), rtol=0, atol=1e-9)
        exact = derivatives(rows[:n], cols[:width])
        assert jac.shape == exact.shape == (n, width)
        error = np.abs(jac / exact - 1)
        on_edge = np.zeros(error.shape, bool)   # the grid's outermost rows and columns
        on_edge[rows[:n] == 1.0] = on_edge[rows[:n] == shape[0]] = True
        on_edge[:, cols[:width] == 1.0] = on_edge[:, cols[:width] == shape[1]] = True
        edges = max(edges, float(error[on_edge].max(initial=0.0)))
        inside = max(inside, float(error[~on_edge].max(initial=0.0)))
    assert exact.max() / exact.min() - 1 > 0.02                  # the Jacobian does vary
    # central differences: a sixth of the third derivative; one-sided (the edges): a third
    assert inside < 5e-8 and edges < 2e-7


def test_grid_spline_products_match_fitpack_inside_and_clamped_beyond_the_knots():
    """GridSpline's two matrix products give FITPACK's bicubic values on a grid (rows and
    columns past the knots clamped to them, as bispev does), with the column factor reused
    across blocks of rows and recomputed when the columns change."""
    from jointcal_ap.diffim.warp import GridSpline, pixel_mapping

    shape = (700, 900)
    target = WCS(_header(crpix=(450.5, 350.5)))
    source = _header(crval1=150.002, rot_deg=3.0, scale=5.2e-5, crpix=(440.0, 360.0))
    source["CTYPE1"], source["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    source.update({"A_ORDER": 3, "A_2_0": 4e-5, "A_3_0": 3e-8, "B_ORDER": 3, "B_1_1": 3e-5})
    mx, my = pixel_mapping(target, WCS(source), shape)
    assert isinstance(mx, GridSpline)
    worst = 0.0
    for cols in (np.arange(1.0, 1025.0), np.arange(-3.0, 905.0, 7.0)):
        for rows in (np.arange(1.0, 257.0), np.arange(600.0, 856.0), np.array([350.25])):
            for fast in (mx, my):
                reference = fast.spline(np.clip(rows, 1, shape[0]), np.clip(cols, 1, shape[1]))
                got = fast(rows, cols)
                assert got.shape == (len(rows), len(cols))
                worst = max(worst, float(np.abs(got - reference).max()))
    assert worst < 1e-9
    # derivatives and scattered points still come from the spline itself
    r, c = np.array([10.0, 500.0]), np.array([20.0, 800.0])
    assert np.array_equal(mx(r, c, dx=1), mx.spline(r, c, dx=1))
    assert np.array_equal(mx(r, c, grid=False), mx.spline(r, c, grid=False))


def test_template_stage_warm_up_compiles_the_warp_for_the_run_s_detector_shapes(sky):
    """The template stage's warm_up compiles the resampling kernel for each detector shape in
    its context, exactly as warp_to then calls it: the first warp of that shape compiles
    nothing more (a shape no other test uses, so the count starts from its own)."""
    from types import SimpleNamespace

    from jointcal_ap_diffim.stage import TemplateOptions, TemplateStage

    from jointcal_ap.diffim._warp_kernel import _kernel

    gather, tiled = _kernel()
    shape = (256, 384)
    before = tiled._cache_size() + gather._cache_size()
    stage = TemplateStage(TemplateOptions())
    record = SimpleNamespace(naxis1=shape[1], naxis2=shape[0])
    stage.context = SimpleNamespace(detectors={(1, 0): record, (1, 1): record})
    stage.warm_up()
    warmed = tiled._cache_size() + gather._cache_size()
    assert warmed == before + 2        # one detector shape: its whole-width and sliver blocks
    src = ImagePlanes(np.ones(shape, np.float32), np.ones(shape, np.float32),
                      np.zeros(shape, np.int32), None, _header(crpix=(192.5, 128.5)), "src")
    warped = warp_to(src, _header(crval1=150.00001, crpix=(192.5, 128.5)), shape)
    assert np.isfinite(warped.image).mean() > 0.9     # it did resample (not the same-grid copy)
    assert tiled._cache_size() + gather._cache_size() == warmed
    # a side neighbour: 60 of the 384 columns overlap, one sliver block wide
    beside = warp_to(src, _header(crval1=150.0 + 324 * 5.5e-5, crpix=(192.5, 128.5)), shape)
    covered = np.isfinite(beside.image).any(axis=0)
    assert 0 < covered.sum() < 256 and covered[-1] and not covered[0]
    assert tiled._cache_size() + gather._cache_size() == warmed
    # without a context (a stage run by hand), warm_up still imports and compiles nothing
    TemplateStage(TemplateOptions()).warm_up()
    assert tiled._cache_size() + gather._cache_size() == warmed
    with pytest.raises(ValueError, match="positive shape"):
        warm_up_warp((0, 10))


def test_footprint_overlap_agrees_with_what_the_warp_gives(sky):
    """footprint_overlaps is False only where warp_to finds no pixel of the source (so a
    template input it rejects would have been skipped after reading); it is conservative: True
    for a sliver within a few pixels, where the warp gives NO_DATA (taps off the input)."""
    from astropy.wcs import WCS

    from jointcal_ap.diffim.warp import footprint_overlaps

    src = _exposure(sky, _header(), 5)
    target = WCS(_header())
    nx = SHAPE[1]
    for shift, overlaps in ((0.0, True), (nx - 20.0, True), (nx - 2.0, True), (nx + 1.5, True),
                            (nx + 12.0, False), (-nx - 12.0, False)):
        # the target grid moved by `shift` columns along x: the source's last column at
        # nx - shift in target pixels
        moved = WCS(_header(crpix=(160.5 - shift, 150.5)))
        assert footprint_overlaps(WCS(_header()), SHAPE, moved, SHAPE) is overlaps, shift
        if 0.0 <= shift <= nx - 20.0:
            assert np.isfinite(warp_to(src, moved, SHAPE).image).any(), shift
        elif not overlaps:
            with pytest.raises(DiffimError, match="does not overlap"):
                warp_to(src, moved, SHAPE)
    assert footprint_overlaps(WCS(_header()), SHAPE, target, SHAPE)
    # rotated by 90° about a far corner: still told apart
    far = WCS(_header(crpix=(160.5 + 400, 150.5), rot_deg=90.0))
    assert not footprint_overlaps(WCS(_header()), SHAPE, far, SHAPE)


def _reference_coadd(items):
    """The module's coadd formula over the whole grid, input by input in their order (the
    float64 sums the windowed _coadd must reproduce bit for bit)."""
    exclude = sum(MASK_BITS[b] for b in ("NO_DATA", "BAD", "SAT", "CR", "EDGE"))
    nodata = MASK_BITS["NO_DATA"]
    shape = items[0][1].image.shape
    acc = {k: np.zeros(shape) for k in ("num", "vnum", "den", "fnum", "fvnum", "fden")}
    mor, fmask, count = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int16)
    for _, p in items:
        finite = np.isfinite(p.image) & np.isfinite(p.variance)
        good = finite & ((p.mask & exclude) == 0)
        if not good.any():
            continue
        w = 1.0 / float(np.median(p.variance[good]))
        wimg, wvar = p.image.astype(np.float64) * w, p.variance.astype(np.float64) * (w * w)
        fb = finite & ~good & ((p.mask & nodata) == 0)
        for mine, sel in ((("num", "vnum", "den"), good), (("fnum", "fvnum", "fden"), fb)):
            acc[mine[0]][sel] += wimg[sel]
            acc[mine[1]][sel] += wvar[sel]
            acc[mine[2]][sel] += w
        count += good
        mor[good] |= p.mask[good]
        fmask[fb] |= p.mask[fb]
    use_fb = (acc["den"] == 0) & (acc["fden"] > 0)
    den = np.where(use_fb, acc["fden"], acc["den"])
    empty = den == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(empty, np.nan, np.where(use_fb, acc["fnum"], acc["num"]) / den)
        var = np.where(empty, np.nan, np.where(use_fb, acc["fvnum"], acc["vnum"]) / (den * den))
    mask = np.where(use_fb, fmask, mor & ~nodata) | np.where(empty, nodata, 0)
    return image.astype(np.float32), var.astype(np.float32), mask.astype(np.int32), count


def test_coadd_sums_only_where_later_inputs_reach_with_the_same_bits(sky):
    """The coadd keeps the first usable input as it is and sums in float64 only over the box
    the later inputs reach: the same planes, bit for bit, as the formula over the whole grid,
    for a sliver, several partial inputs (one adding a fallback pixel, one with no usable
    pixel), a single input and a second input covering everything."""
    from dataclasses import replace

    from jointcal_ap.diffim.template import _coadd

    full = _exposure(sky, _header(crval1=150.0004, rot_deg=7.0), 5)
    mask = full.mask.copy()
    mask[100:110, 50:60] |= MASK_BITS["SAT"]                   # usable only as a fallback
    image = full.image.copy()
    image[200:205, 200:230] = np.nan                            # a hole
    full = ("full", warp_to(replace(full, image=image, mask=mask), _header(), SHAPE))
    sliver = ("sliver", warp_to(_exposure(sky, _header(crpix=(160.5 + 300, 150.5)), 6), _header(),
                                SHAPE))
    corner = ("corner", warp_to(_exposure(sky, _header(crpix=(160.5 + 200, 150.5 + 180)), 7),
                                _header(), SHAPE))
    sat = _exposure(sky, _header(crpix=(160.5 - 150, 150.5)), 8)
    sat_mask = sat.mask.copy()
    sat_mask[:, :] |= MASK_BITS["SAT"]                          # no usable pixel at all
    saturated = ("saturated", warp_to(replace(sat, mask=sat_mask), _header(), SHAPE))
    everywhere = ("everywhere", warp_to(_exposure(sky, _header(crval1=150.0001), 9), _header(),
                                        SHAPE))
    cases = {"sliver": [full, sliver], "partials": [full, corner, saturated, sliver],
             "single": [full], "saturated first": [saturated, sliver, full],
             "everywhere": [full, everywhere, corner]}
    for name, items in cases.items():
        got = _coadd(iter(items), SHAPE)
        want = _reference_coadd(items)
        for a, b in zip(got[:4], want, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
        assert got[5] == [n for n, _ in items] and got[4] is items[-1][1].header, name
    # the sliver's box is narrow: most of the grid is the first input's own planes
    got = _coadd(iter(cases["sliver"]), SHAPE)
    assert (got[3] == 2).any() and (got[3] == 2).mean() < 0.1
    with pytest.raises(DiffimError, match="none of the inputs overlaps"):
        _coadd(iter([saturated]), SHAPE)


def test_template_carries_its_star_search_and_subtract_gives_the_same_bits_with_it(sky, tmp_path):
    """build_template searches the coadd once (background and peaks above 5σ): its PSF is the
    fit find_stars at 50σ would give, and subtract() run with that search gives the bits it
    gives on the same template read back from its file (which carries none and searches)."""
    from dataclasses import replace

    from jointcal_ap.diffim import SubtractOptions, subtract
    from jointcal_ap.diffim.masks import unusable
    from jointcal_ap.diffim.stars import mesh_background
    from jointcal_ap.psf import fit_psf

    science = _exposure(sky, _header(), 61)
    inputs = [_exposure(sky, _header(crval1=150.0 + 0.0003 * k, rot_deg=4 * k), 62 + k) for k in range(2)]
    t = build_template(inputs, _header(), shape=SHAPE)
    search = t.star_search
    assert search is not None and len(search.stars) > 20
    bad = unusable(t.mask, t.image, t.variance, planes=("BAD", "NO_DATA"))
    bkg, _ = mesh_background(t.image, ~bad)
    fresh = find_stars(t.image, t.variance, t.mask, threshold=5.0, background=bkg)
    for name in ("x", "y", "snr", "flux", "ixx", "isolated", "clean"):
        assert np.array_equal(getattr(search.stars, name), getattr(fresh, name)), name
    # the peaks above 50σ of the 5σ search are exactly find_stars' at 50σ
    at50 = find_stars(t.image, t.variance, t.mask, threshold=50.0, background=bkg)
    assert np.array_equal(search.stars.select(search.stars.snr >= 50).x, at50.x)
    own = fit_psf(t.image, t.variance, t.mask, background=bkg, where="template coadd")
    assert np.array_equal(t.psf.kernel_image(160.0, 150.0), own.kernel_image(160.0, 150.0))
    back = read_template(t.write(tmp_path / "t.fits"))
    assert back.star_search is None
    opts = SubtractOptions(mode="auto")
    with_search = subtract(science, t, opts)
    searched_again = subtract(science, replace(back, psf=t.psf), opts)
    for plane in ("image", "variance", "mask"):
        assert np.array_equal(getattr(with_search, plane), getattr(searched_again, plane),
                              equal_nan=True), plane
    assert with_search.qa == searched_again.qa
    # a saturation level changes what counts as clean: then the carried search is not used
    sat = SubtractOptions(mode="auto", template_saturation=float(np.nanmax(t.image)) * 0.5)
    assert subtract(science, t, sat).qa == subtract(science, replace(back, psf=t.psf), sat).qa
