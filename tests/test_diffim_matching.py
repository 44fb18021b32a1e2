"""Alard–Lupton basis, stamp solution and spatially varying convolution, on arrays."""

import numpy as np
import pytest

from jointcal_ap.diffim import DiffimError, MatchOptions
from jointcal_ap.diffim.basis import alard_lupton_basis, basis_for_widths
from jointcal_ap.diffim.convolve import VaryingKernel, block_spectrum, convolve
from jointcal_ap.diffim.fields import PolynomialField
from jointcal_ap.diffim.matching import STAMP_STATUS, solve_kernel
from jointcal_ap.diffim.stars import find_stars
from jointcal_ap.psf import GaussianPsf
from jointcal_ap.simulate.images import render_image

SHAPE = (640, 640)


def _direct(image, kernel):
    """Brute-force (I ⊗ k) with zeros outside, for checking."""
    h = kernel.shape[0] // 2
    pad = np.pad(image.astype(float), h)
    out = np.zeros(image.shape)
    for dy in range(-h, h + 1):
        for dx in range(-h, h + 1):
            out += kernel[h + dy, h + dx] * pad[h - dy:h - dy + image.shape[0], h - dx:h - dx + image.shape[1]]
    return out


def test_basis_sums_and_orthonormality():
    b = alard_lupton_basis(8, sigmas=(0.8, 1.6, 3.2), degrees=(6, 4, 2))
    assert b.images.shape == (28 + 15 + 6, 17, 17)
    assert b.images[0].sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(b.images[1:].sum(axis=(1, 2))).max() < 1e-12
    g = b.images[1:].reshape(len(b) - 1, -1)
    assert np.allclose(g @ g.T, np.eye(len(b) - 1), atol=1e-8)


def test_block_fft_convolution_matches_brute_force_for_a_varying_kernel():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(150, 170)).astype(np.float32)
    k0 = GaussianPsf.from_fwhm(2.5).kernel_image(0, 0, 9)
    k1 = np.zeros((9, 9))
    k1[4, 5], k1[4, 3] = 0.3, -0.3                                   # a gradient term
    field = PolynomialField.from_terms(img.shape, 1, [0.0, 1.0, 0.0])  # P1(u): -1 … 1 across x
    vk = VaryingKernel(np.stack([k0, k1]), (None, field))
    out = convolve(img, vk, block=64)                                 # several blocks
    expect = _direct(img, k0) + field.image().astype(float) * _direct(img, k1)
    assert np.max(np.abs(out - expect)) < 1e-4
    spec = block_spectrum(img, 4, block=48)
    assert np.max(np.abs(convolve(None, vk, spectrum=spec) - expect)) < 1e-4


def test_block_fft_convolution_with_constant_and_grid_fields_matches_brute_force():
    """Every kind of term at once, on blocks that do not tile the image evenly: no field
    (weight 1), a constant field, and a bilinear grid of values."""
    from jointcal_ap.diffim.fields import GridField

    rng = np.random.default_rng(1)
    img = rng.normal(size=(133, 181)).astype(np.float32)
    k0 = GaussianPsf.from_fwhm(2.0).kernel_image(0, 0, 7)
    k1 = np.zeros((7, 7))
    k1[3, 4], k1[3, 2] = 0.2, -0.2
    k2 = np.zeros((7, 7))
    k2[2, 3], k2[4, 3] = 0.25, 0.25
    constant = PolynomialField.from_terms(img.shape, 1, [0.7, 0.0, 0.0])
    grid = GridField(img.shape, np.array([20.0, 90.0, 170.0]), np.array([10.0, 120.0]),
                     np.array([[1.0, -0.5, 2.0], [0.0, 1.5, -1.0]]))
    vk = VaryingKernel(np.stack([k0, k1, k2]), (None, constant, grid))
    expect = (_direct(img, k0) + 0.7 * _direct(img, k1)
              + grid.image().astype(float) * _direct(img, k2))
    for block in (40, 64, 512):
        out = convolve(img, vk, block=block)
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.max(np.abs(out - expect)) < 1e-4, block


def test_from_grid_reproduces_every_node_kernel():
    xs, ys = np.array([50.0, 150.0, 250.0]), np.array([40.0, 160.0])
    kernels = np.stack([[GaussianPsf(1.0 + 0.002 * x, 1.2 + 0.001 * y).kernel_image(0, 0, 11) for x in xs]
                        for y in ys])
    vk = VaryingKernel.from_grid(kernels, xs, ys, (200, 300), rtol=1e-4)
    assert 1 < vk.n_terms < 6
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            assert np.max(np.abs(vk.image_at(x, y) - kernels[j, i])) <= 1e-4 * kernels.max() * 1.0001


@pytest.fixture(scope="module")
def template():
    rng = np.random.default_rng(11)
    n = 500
    x, y = rng.uniform(1, SHAPE[1], n), rng.uniform(1, SHAPE[0], n)
    flux = 10 ** rng.uniform(3.5, 5.5, n)
    return render_image(SHAPE, x, y, flux, fwhm_px=3.0, sky_adu=0.0, gain=1.0, read_noise_e=3.0, seed=12)


def _stars(img, var):
    s = find_stars(img, var, threshold=50)
    good = s.isolated & s.clean
    order = np.argsort(-s.snr[good])
    return s.x[good][order], s.y[good][order]


def _span_kernel(basis, rng, scale):
    return np.tensordot(np.r_[0.0 if scale else 1.0, (scale or 0.02) * rng.normal(size=len(basis) - 1)],
                        basis.images, 1)


def test_known_kernel_is_recovered_to_1e_3(template):
    """An asymmetric kernel in the basis' span, applied to a rendered template, is recovered
    pixel by pixel to 1e-3 of its peak (and its sum to 1e-3)."""
    basis = basis_for_widths(3.0, 4.2)
    truth = _span_kernel(basis, np.random.default_rng(5), 0.0)
    science = convolve(template.image, VaryingKernel.constant(truth)).astype(np.float64)
    x, y = _stars(template.image, template.variance)
    sol = solve_kernel(template.image, science, template.variance, np.ones(SHAPE, np.float32), x, y, basis,
                       options=MatchOptions(spatial_degree=0, background_degree=0))
    fit = sol.kernel.image_at(320, 320)
    assert sol.n_used >= 30
    assert np.max(np.abs(fit - truth)) < 1e-3 * truth.max()
    assert fit.sum() == pytest.approx(truth.sum(), abs=1e-3)


def test_known_spatially_varying_kernel_is_recovered_to_1e_3(template):
    """The same with a kernel varying linearly over the detector (a few % of its peak): the
    data constrain K ⊗ P_template, which is recovered to 1e-3 of its peak at five places
    (pixel-level differences beyond the template's band are unconstrained), and the kernel
    sum to 1e-3."""
    from jointcal_ap.diffim.decorrelation import convolve_small

    basis = basis_for_widths(3.0, 4.2)
    rng = np.random.default_rng(5)
    comps = np.stack([_span_kernel(basis, rng, s) for s in (0.0, 1e-3, 1e-3)])
    fields = (None, PolynomialField.from_terms(SHAPE, 1, [0, 1, 0]), PolynomialField.from_terms(SHAPE, 1, [0, 0, 1]))
    truth = VaryingKernel(comps, fields)
    science = convolve(template.image, truth).astype(np.float64)
    x, y = _stars(template.image, template.variance)
    sol = solve_kernel(template.image, science, template.variance, np.ones(SHAPE, np.float32), x, y, basis,
                       options=MatchOptions(spatial_degree=1, background_degree=0))
    p_t = GaussianPsf.from_fwhm(3.0).kernel_image(0, 0, 31)
    for px, py in [(100, 100), (540, 100), (320, 320), (100, 540), (540, 540)]:
        fit = convolve_small(sol.kernel.image_at(px, py), p_t, 41)
        true = convolve_small(truth.image_at(px, py), p_t, 41)
        assert np.max(np.abs(fit - true)) < 1e-3 * true.max()
        assert sol.kernel.sums_at([px], [py])[0] == pytest.approx(truth.sums_at([px], [py])[0], abs=1e-3)


def test_gaussian_psfs_are_matched_to_1e_3_of_the_peak(template):
    """Realistic case: 3.0 → 4.2 px Gaussian seeing (not a basis function). The kernel's
    unconstrained high frequencies aside, K ⊗ P_template is right to 1e-3 of its peak."""
    ps, pt = GaussianPsf.from_fwhm(4.2), GaussianPsf.from_fwhm(3.0)
    match = np.sqrt(ps.ixx - pt.ixx)
    kern = GaussianPsf(match ** 2).kernel_image(0, 0, 25)
    science = convolve(template.image, VaryingKernel.constant(kern)).astype(np.float64)
    x, y = _stars(template.image, template.variance)
    basis = basis_for_widths(3.0, 4.2)
    sol = solve_kernel(template.image, science, template.variance, np.ones(SHAPE, np.float32), x, y, basis,
                       options=MatchOptions(spatial_degree=0, background_degree=0))
    k = sol.kernel.image_at(320, 320)
    p_t = pt.kernel_image(0, 0, 41)
    from jointcal_ap.diffim.decorrelation import convolve_small

    matched, expected = convolve_small(k, p_t, 41), convolve_small(kern, p_t, 41)
    assert np.max(np.abs(matched - expected)) < 1e-3 * expected.max()


def test_variable_star_stamp_is_rejected(template):
    kern = GaussianPsf(1.5).kernel_image(0, 0, 21)
    science = convolve(template.image, VaryingKernel.constant(kern)).astype(np.float64)
    x, y = _stars(template.image, template.variance)
    bad = 3
    ix, iy = round(x[bad]) - 1, round(y[bad]) - 1
    science[iy - 2:iy + 3, ix - 2:ix + 3] *= 1.5                          # it brightened
    sol = solve_kernel(template.image, science, template.variance, np.ones(SHAPE, np.float32), x, y,
                       basis_for_widths(3.0, 4.2), options=MatchOptions(spatial_degree=0, background_degree=0))
    assert sol.stamp_status[bad] in (STAMP_STATUS["own_fit"], STAMP_STATUS["spatial_fit"])
    assert sol.n_used > 20


def test_no_usable_stamps_is_a_clear_error():
    img = np.random.default_rng(1).normal(size=(200, 200))
    var = np.ones((200, 200))
    with pytest.raises(DiffimError, match=r"sci.fits − tmpl.fits: no usable stamps .* 0 clean isolated"):
        solve_kernel(img, img, var, var, np.array([]), np.array([]), basis_for_widths(3, 4),
                     where="sci.fits − tmpl.fits")
