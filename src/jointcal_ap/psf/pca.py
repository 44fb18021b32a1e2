"""A PSF fitted from bright isolated stars: a pixelized PCA basis with polynomial coefficients.

:func:`fit_psf` cuts a stamp around each bright, isolated, unsaturated star, shifts it to be
centred on its middle pixel (band-limited Fourier shift), normalises it to unit flux, and
builds a :class:`PcaPsf`:

- the S/N-weighted mean stamp,
- the first ``n_components`` principal components of the stars' deviations from it,
- each component's coefficient as a Legendre polynomial of the position (``degree``),
  fitted by weighted least squares over the stars, with 4σ rejection of outlier stars.

``PcaPsf.kernel_image(x, y)`` is ``mean + Σ c_i(x, y) · component_i``, renormalised to sum 1;
``stamps`` evaluates many positions at once and shifts each to its sub-pixel position.

>>> import numpy as np
>>> from jointcal_ap.simulate.images import render_image
>>> from jointcal_ap.psf import fit_psf
>>> rng = np.random.default_rng(3)
>>> x, y = rng.uniform(20, 380, 120), rng.uniform(20, 380, 120)
>>> im = render_image((400, 400), x, y, np.full(120, 2e5), fwhm_px=3.5, sky_adu=100.0, seed=4)
>>> psf = fit_psf(im.image, im.variance, im.mask)
>>> round(psf.fwhm(200.0, 200.0), 1), psf.n_stars > 50
(3.5, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jointcal_ap.psf._sampling import (
    PixelizedPsf,
    fourier_shift,
    image_moments,
    resize,
    windowed_centroid,
)
from jointcal_ap.psf.base import PsfError, PsfModel, _odd, register_psf_kind

__all__ = ["PcaPsf", "fit_psf"]


def _legendre_terms(u: np.ndarray, v: np.ndarray, degree: int) -> np.ndarray:
    """(n, n_terms): P_i(u)·P_j(v) for i + j ≤ degree (total degree, by n then j)."""
    from numpy.polynomial import legendre

    lu = legendre.legvander(u, degree)
    lv = legendre.legvander(v, degree)
    return np.stack([lu[:, n - j] * lv[:, j] for n in range(degree + 1) for j in range(n + 1)], axis=1)


class PcaPsf(PixelizedPsf, PsfModel):
    """``P(x, y) = mean + Σ_i c_i(x, y) · components[i]`` (renormalised to sum 1).

    Parameters
    ----------
    mean : ndarray (k, k)
        Centred mean PSF image (k odd).
    components : ndarray (C, k, k)
    coefficients : ndarray (C, n_terms)
        Legendre coefficients (total degree ``degree``) of each component's weight in
        u = 2(x - 1)/(nx - 1) - 1, v = 2(y - 1)/(ny - 1) - 1.
    degree : int
    shape : (ny, nx)
        The detector the positions are scaled over.
    n_stars : int
        Stars the model was fitted on (provenance).
    """

    kind = "pca"

    def __init__(self, mean: np.ndarray, components: np.ndarray, coefficients: np.ndarray, degree: int,
                 shape: tuple[int, int], n_stars: int = 0):
        mean = np.asarray(mean, float)
        components = np.asarray(components, float).reshape(-1, *mean.shape)
        k = mean.shape[0]
        nt = (degree + 1) * (degree + 2) // 2
        coefficients = np.asarray(coefficients, float).reshape(len(components), nt) if len(components) \
            else np.zeros((0, nt))
        if mean.ndim != 2 or mean.shape[1] != k or k % 2 == 0:
            raise PsfError(f"PcaPsf: mean must be a square odd-sized image, got {mean.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(components))
                and np.all(np.isfinite(coefficients))) or not mean.sum() > 0:
            raise PsfError("PcaPsf: mean, components and coefficients must be finite, mean sum > 0")
        self.mean, self.components, self.coefficients = mean, components, coefficients
        self.degree = int(degree)
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_stars = int(n_stars)

    def __repr__(self) -> str:
        return (f"PcaPsf({self.mean.shape[0]}×{self.mean.shape[0]} px, {len(self.components)} components, "
                f"degree {self.degree}, {self.n_stars} stars)")

    def _uv(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.shape
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        return 2 * (x - 1) / max(nx - 1, 1) - 1, 2 * (y - 1) / max(ny - 1, 1) - 1

    def _images(self, x, y) -> np.ndarray:
        u, v = self._uv(x, y)
        out = np.broadcast_to(self.mean, (len(u), *self.mean.shape)).copy()
        if len(self.components):
            c = _legendre_terms(u, v, self.degree) @ self.coefficients.T              # (n, C)
            out += np.einsum("nc,cab->nab", c, self.components)
        s = out.sum(axis=(1, 2), keepdims=True)
        return out / np.where(s > 0, s, 1.0)

    def default_size(self, x: float | None = None, y: float | None = None) -> int:
        return int(self.mean.shape[0])

    def to_hdus(self) -> list[Any]:
        from astropy.io import fits

        hdu = fits.ImageHDU(np.concatenate([self.mean[None], self.components]), name="PSF")
        hdu.header["PSFTYPE"] = (self.kind, "jointcal_ap PSF model kind")
        hdu.header["PSFDEG"] = (self.degree, "Legendre degree of the coefficients")
        hdu.header["PSFNX"] = (self.shape[1], "detector NAXIS1 the positions scale over")
        hdu.header["PSFNY"] = (self.shape[0], "detector NAXIS2")
        hdu.header["PSFNSTAR"] = (self.n_stars, "stars fitted")
        hdu.header["COMMENT"] = "plane 0: mean PSF; planes 1..: principal components"
        coef = fits.ImageHDU(self.coefficients if len(self.components) else None, name="PSF_COEF")
        return [hdu, coef]

    @classmethod
    def from_hdus(cls, hdus: Sequence[Any]) -> PcaPsf:
        h = hdus[0].header
        cube = np.asarray(hdus[0].data, float)
        coef = hdus[1].data if len(hdus) > 1 and hdus[1].data is not None else np.zeros((0,))
        return cls(cube[0], cube[1:], np.asarray(coef, float), int(h["PSFDEG"]),
                   (int(h["PSFNY"]), int(h["PSFNX"])), int(h.get("PSFNSTAR", 0)))


register_psf_kind(PcaPsf.kind, PcaPsf.from_hdus)


def fit_psf(image: np.ndarray, variance: np.ndarray | None = None, mask: np.ndarray | None = None, *,
            x=None, y=None, snr=None, size: int | None = None, n_components: int = 3, degree: int = 2,
            min_snr: float = 50.0, max_stars: int = 400, saturation: float | None = None,
            background=None, stars=None, where: str = "") -> PcaPsf:
    """Fit a :class:`PcaPsf` to the bright isolated unsaturated stars of an image.

    Parameters
    ----------
    image, variance, mask : ndarray (ny, nx)
        Any units; the mask uses LSST's bits (BAD, SAT, EDGE, NO_DATA are avoided).
        An :class:`~jointcal_ap.exposure.Exposure` may be passed as ``image``.
    x, y : array-like, optional
        1-based positions of the stars to use; default: found with
        :func:`jointcal_ap.diffim.stars.find_stars` (S/N ≥ ``min_snr``, isolated, clean).
    snr : array-like, optional
        With ``x``, ``y``: the stars' S/N, which weighs their stamps (S/N², capped at 1000²);
        default: measured on the stamps (flux over the noise of the variance plane), or equal
        weights without a variance plane.
    size : int, optional
        Odd stamp size; default ≈ 4.5 FWHM (11 … 51 pixels).
    n_components, degree : int
        Principal components kept (fewer when there are few stars) and the degree of their
        spatial polynomials (lowered when there are few stars).
    min_snr, max_stars, saturation : see above.
    background : GridField, optional
        The image's background (default: :func:`jointcal_ap.diffim.stars.mesh_background`).
    stars : Stars, optional
        Without ``x``: the image's peaks, already found by
        :func:`~jointcal_ap.diffim.stars.find_stars` with this ``background`` and
        ``saturation`` at a threshold of at most ``min_snr`` (for example by
        :func:`~jointcal_ap.diffim.stars.search_stars`); those at S/N ≥ ``min_snr`` are used,
        which are the stars it would find.
    where : str
        Names the image in error messages.

    Raises
    ------
    PsfError
        Fewer than 3 usable stars.
    """
    from jointcal_ap.diffim.stars import find_stars, mesh_background

    prefix = f"{where}: " if where else ""
    if hasattr(image, "image") and hasattr(image, "variance"):
        exp = image
        image, variance, mask = exp.image, exp.variance, exp.mask
    img = np.asarray(image, np.float32)
    ny, nx = img.shape
    msk = np.zeros(img.shape, np.int32) if mask is None else np.asarray(mask)
    usable = np.isfinite(img) & ((msk & ((1 << 0) | (1 << 8))) == 0)
    if not usable.any():
        raise PsfError(f"{prefix}no finite unmasked pixel to fit a PSF on")
    if background is None:
        background, _ = mesh_background(img, usable)
    bkg = background
    if x is not None:
        xs, ys = np.asarray(x, float), np.asarray(y, float)
        measure_snr = snr is None
        snr = np.full(len(xs), min_snr) if snr is None else np.asarray(snr, float)
        fwhm = float("nan")
    else:
        measure_snr = False
        if stars is None:
            stars = find_stars(img, variance, msk, threshold=min_snr, saturation=saturation,
                               background=bkg)
        else:
            stars = stars.select(np.asarray(stars.snr) >= min_snr)
        good = stars.isolated & stars.clean
        order = np.argsort(-stars.snr[good])[:max_stars]
        xs, ys, snr = stars.x[good][order], stars.y[good][order], stars.snr[good][order]
        fwhm = float(np.nanmedian(stars.fwhm[good])) if good.any() else float("nan")
    if len(xs) < 3:
        raise PsfError(f"{prefix}only {len(xs)} bright isolated unsaturated stars (S/N >= {min_snr}); "
                       "at least 3 are needed to fit a PSF")
    if not (math.isfinite(fwhm) and fwhm > 0):
        fwhm = _stamp_fwhm(img, bkg, xs, ys)
    if size is None:
        size = int(np.clip(2 * math.ceil(2.25 * fwhm) + 1, 11, 51))
    size = _odd(size)
    work = size + 8 + (size + 8 + 1) % 2
    half = work // 2
    ix, iy = np.rint(xs - 1).astype(int), np.rint(ys - 1).astype(int)
    inside = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    ix, iy, xs, ys, snr = ix[inside], iy[inside], xs[inside], ys[inside], snr[inside]
    if len(xs) < 3:
        raise PsfError(f"{prefix}only {len(xs)} usable stars away from the image border; at least 3 needed")
    off = np.arange(-half, half + 1)
    rows, cols = (iy[:, None] + off)[:, :, None], (ix[:, None] + off)[:, None, :]
    cut = (img[rows, cols] - bkg.at(xs, ys)[:, None, None]).astype(float)   # smooth: one value per stamp
    cut = np.where(usable[rows, cols], cut, 0.0)
    ok = usable[rows, cols].all(axis=(1, 2))
    cut, xs, ys, snr = cut[ok], xs[ok], ys[ok], snr[ok]
    var_cut = np.asarray(variance)[rows, cols][ok].astype(float) if measure_snr and variance is not None else None
    if len(xs) < 3:
        raise PsfError(f"{prefix}only {len(xs)} stars with unmasked stamps; at least 3 needed")
    # taper the margin (against the periodic shift's ringing), shift to centre, keep the middle
    ramp = np.ones(work)
    m = (work - size) // 2
    ramp[:m] = ramp[-m:][::-1] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    cut = cut * (ramp[:, None] * ramp[None, :])
    centred = resize(fourier_shift(cut, -(xs - 1 - np.rint(xs - 1)), -(ys - 1 - np.rint(ys - 1))), size)
    flux = centred.sum(axis=(1, 2))
    keep = flux > 0
    stamps = centred[keep] / flux[keep, None, None]
    if var_cut is not None:
        # equal weights would let the faintest stamps' noise into the model's wings
        snr = flux / np.sqrt(np.maximum(resize(var_cut, size).sum(axis=(1, 2)), 1e-30))
    xs, ys, w = xs[keep], ys[keep], np.minimum(snr[keep], 1000.0) ** 2
    if len(xs) < 3:
        raise PsfError(f"{prefix}fewer than 3 stars with positive flux; cannot fit a PSF")
    k2 = size * size
    flat = stamps.reshape(len(xs), k2)
    use = np.ones(len(xs), bool)
    for _ in range(3):
        mean = np.average(flat[use], axis=0, weights=w[use])
        resid = flat - mean
        nc = int(min(n_components, max(0, use.sum() // 10)))
        deg = int(degree)
        while deg > 0 and use.sum() < 3 * (deg + 1) * (deg + 2) // 2:
            deg -= 1
        comps = np.zeros((0, k2))
        coef = np.zeros((0, (deg + 1) * (deg + 2) // 2))
        model = np.broadcast_to(mean, flat.shape).copy()
        if nc:
            # principal components from the (stars × stars) Gram matrix: cheaper than an SVD
            a = resid[use] * np.sqrt(w[use])[:, None]
            evals, evecs = np.linalg.eigh(a @ a.T)
            top = np.argsort(evals)[::-1][:nc]
            comps = (evecs[:, top].T @ a) / np.sqrt(np.maximum(evals[top], 1e-300))[:, None]
            comps = _without_shifts(comps, mean.reshape(size, size))
            proj = resid @ comps.T                                        # (n, nc)
            u = 2 * (xs - 1) / max(nx - 1, 1) - 1
            v = 2 * (ys - 1) / max(ny - 1, 1) - 1
            T = _legendre_terms(u, v, deg)
            sw = np.sqrt(w[use])[:, None]
            coef = np.linalg.lstsq(T[use] * sw, proj[use] * sw, rcond=None)[0].T
            model += (T @ coef.T) @ comps
        chi = np.sum((flat - model) ** 2, axis=1) * w
        med = np.median(chi[use])
        mad = 1.4826 * np.median(np.abs(chi[use] - med))
        new = use & (chi <= med + 4 * max(mad, 1e-12 * med))
        if new.sum() < 3 or np.array_equal(new, use):
            break
        use = new
    # the mean's centroid on the middle pixel (star centroids are noisy and may share a bias)
    mean_img = mean.reshape(size, size)
    cx, cy = windowed_centroid(mean_img)
    stack = fourier_shift(np.concatenate([mean_img[None], comps.reshape(-1, size, size)]),
                          np.full(1 + len(comps), -cx), np.full(1 + len(comps), -cy))
    return PcaPsf(stack[0], stack[1:], coef, deg, (ny, nx), n_stars=int(use.sum()))


def _stamp_fwhm(img: np.ndarray, bkg, xs: np.ndarray, ys: np.ndarray) -> float:
    """Median FWHM of the brightest given stars from their adaptive moments."""
    half = 12
    ny, nx = img.shape
    ix, iy = np.rint(xs[:50] - 1).astype(int), np.rint(ys[:50] - 1).astype(int)
    ok = (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)
    if not ok.any():
        return 3.0
    off = np.arange(-half, half + 1)
    rows, cols = (iy[ok][:, None] + off)[:, :, None], (ix[ok][:, None] + off)[:, None, :]
    cut = np.nan_to_num(img[rows, cols] - bkg.at(xs[:50][ok], ys[:50][ok])[:, None, None])
    fw = [2.3548200450309493 * math.sqrt(0.5 * sum(image_moments(c)[:2])) for c in cut]
    return float(np.median(fw))


def _without_shifts(comps: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Components with zero windowed first moments, re-orthonormalised.

    Noisy star centroids leave a "shift" pattern (the PSF's derivative) among the principal
    components; with spatially fitted coefficients it would move the model's core from place
    to place. Adding the right multiple of ∂mean/∂x, ∂mean/∂y (whose windowed first moments
    are −1) to each component zeroes its first moments under the Gaussian window of
    :func:`~jointcal_ap.psf._sampling.windowed_centroid` (the plain moments would let the wings'
    noise move the core); the span stays free of shifts after QR.
    """
    size = mean.shape[0]
    g = np.arange(size) - size // 2
    ixx, iyy, _ = image_moments(mean)
    w = np.exp(-0.5 * (g[:, None] ** 2 + g[None, :] ** 2) / max(0.5 * (ixx + iyy), 0.25))
    wx, wy = w * g[None, :], w * g[:, None]
    one = np.ones(1)
    dx = (fourier_shift(mean[None], -0.5 * one, 0 * one) - fourier_shift(mean[None], 0.5 * one, 0 * one))[0]
    dy = (fourier_shift(mean[None], 0 * one, -0.5 * one) - fourier_shift(mean[None], 0 * one, 0.5 * one))[0]
    dx /= -float((dx * wx).sum())
    dy /= -float((dy * wy).sum())
    c = comps.reshape(-1, size, size)
    mx = (c * wx).sum(axis=(1, 2))
    my = (c * wy).sum(axis=(1, 2))
    c = c + mx[:, None, None] * dx + my[:, None, None] * dy
    q, _ = np.linalg.qr(c.reshape(len(c), -1).T)
    return q.T
