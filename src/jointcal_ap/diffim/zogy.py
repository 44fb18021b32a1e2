"""ZOGY: the proper image difference D, its score S and the corrected score S_corr
(Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27), computed cell by cell.

With N the new (science) image and R the reference (template), both background-subtracted
and in the same flux units (flux zero points F_n = F_r = 1 here), P_n, P_r their PSFs and
σ_n, σ_r their background noise, in Fourier space::

    den  = √(σ_n² |P̂_r|² + σ_r² |P̂_n|²)
    D̂    = (P̂_r N̂ − P̂_n R̂) / den                      white noise of unit variance
    F_D  = 1 / √(σ_n² + σ_r²)
    P̂_D  = P̂_r P̂_n / (F_D · den)                        the PSF of D (sums to 1)
    Ŝ    = F_D · conj(P̂_D) · D̂  = k̂_n N̂ − k̂_r R̂       the score (matched filter of D)
    k̂_n  = conj(P̂_n) |P̂_r|² / den²,   k̂_r = conj(P̂_r) |P̂_n|² / den²
    S_corr = S / √(V_N ⊗ k_n² + V_R ⊗ k_r²)             (astrometric-noise terms omitted)

We store ``D / F_D`` as the :class:`~jointcal_ap.diffim.image.DifferenceImage` image (in the
science's units: a point source of flux f appears as f·P_D) with its propagated variance,
``S`` as ``score`` and ``S_corr`` as ``score_corr`` (N(0, 1) where there is no source).
The kernels are computed per cell (``cell_px``) from the PSFs and the cells' median
variances, then applied across the detector as varying kernels (:mod:`.convolve`); the
variance of S is propagated by a true convolution of the variance planes by k², so that
S_corr stays N(0, 1) on bright-star residuals (source noise), ZOGY's point.
"""

from __future__ import annotations

import numpy as np

from jointcal_ap.diffim.convolve import VaryingKernel, block_spectrum, convolve, fft_workers
from jointcal_ap.diffim.fields import GridField, cell_grid
from jointcal_ap.diffim.image import MASK_BITS, DifferenceImage
from jointcal_ap.diffim.masks import border, grow
from jointcal_ap.psf import GridPsf

__all__ = ["zogy_difference", "zogy_kernels"]


def _spec(img: np.ndarray, n: int) -> np.ndarray:
    k = img.shape[0]
    buf = np.zeros((n, n))
    buf[:k, :k] = img
    return np.fft.fft2(np.roll(buf, (-(k // 2), -(k // 2)), axis=(0, 1)))


def _real(spec: np.ndarray, size: int) -> np.ndarray:
    img = np.fft.fftshift(np.fft.ifft2(spec).real)
    o = img.shape[0] // 2 - size // 2
    return img[o:o + size, o:o + size]


def zogy_kernels(psf_new: np.ndarray, psf_ref: np.ndarray, var_new: float, var_ref: float, *,
                 size: int | None = None) -> dict[str, np.ndarray]:
    """The real-space ZOGY kernels of one cell (module notes), cropped to ``size``.

    Returns ``d_n``, ``d_r`` (D/F_D = d_n ⊗ N − d_r ⊗ R), ``s_n``, ``s_r`` (S = s_n ⊗ N −
    s_r ⊗ R), ``psf_d`` (P_D) and ``f_d`` (F_D, as a 0-d array).
    """
    import scipy.fft as sfft

    size = size or max(psf_new.shape[0], psf_ref.shape[0])
    n = sfft.next_fast_len(4 * max(size, psf_new.shape[0], psf_ref.shape[0]) + 1)
    pn = _spec(psf_new / psf_new.sum(), n)
    pr = _spec(psf_ref / psf_ref.sum(), n)
    sn2, sr2 = float(var_new), float(var_ref)
    den2 = sn2 * np.abs(pr) ** 2 + sr2 * np.abs(pn) ** 2
    den2 = np.maximum(den2, 1e-14 * (sn2 + sr2))
    den = np.sqrt(den2)
    f_d = 1.0 / np.sqrt(sn2 + sr2)
    d_n = _real(pr / den / f_d, size)
    d_r = _real(pn / den / f_d, size)
    psf_d = _real(pr * pn / (f_d * den), size)
    s_n = _real(np.conj(pn) * np.abs(pr) ** 2 / den2, size)
    s_r = _real(np.conj(pr) * np.abs(pn) ** 2 / den2, size)
    # cropping loses a little of each kernel's sum: restore the zero-frequency values
    d_n *= 1.0 / d_n.sum()
    d_r *= 1.0 / d_r.sum()
    psf_d /= psf_d.sum()
    s0 = 1.0 / (sn2 + sr2)
    s_n *= s0 / s_n.sum()
    s_r *= s0 / s_r.sum()
    return {"d_n": d_n, "d_r": d_r, "s_n": s_n, "s_r": s_r, "psf_d": psf_d, "f_d": np.asarray(f_d)}


def zogy_difference(S, T, opts) -> DifferenceImage:
    """ZOGY on two prepared inputs of :func:`jointcal_ap.diffim.subtraction.subtract`."""
    workers = opts.workers or fft_workers()
    ny, nx = S.planes.shape
    shape = (ny, nx)
    xc, yc, xs, ys = cell_grid(shape, opts.cell_px)
    size_n = S.psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1))
    size_r = T.psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1))
    size = max(size_n, size_r) | 1
    half = size // 2
    cells = {k: [] for k in ("d_n", "d_r", "s_n", "s_r", "psf_d")}
    wn, wr, s0 = [], [], []
    for j, sy in enumerate(ys):
        row = {k: [] for k in cells}
        rwn, rwr, rs0 = [], [], []
        for i, sx in enumerate(xs):
            vn = _median(S.planes.variance[sy, sx], S.bad[sy, sx])
            vr = _median(T.planes.variance[sy, sx], T.bad[sy, sx])
            pn = S.psf.kernel_image(float(xc[i]), float(yc[j]), size)
            pr = T.psf.kernel_image(float(xc[i]), float(yc[j]), size)
            k = zogy_kernels(pn, pr, vn, vr, size=size)
            for key in cells:
                row[key].append(k[key])
            rs0.append(float(np.sum(k["s_n"])))
            rwn.append(float(np.sum(k["d_n"] ** 2)))
            rwr.append(float(np.sum(k["d_r"] ** 2)))
        for key in cells:
            cells[key].append(row[key])
        wn.append(rwn)
        wr.append(rwr)
        s0.append(rs0)
    grid = {k: np.asarray(v) for k, v in cells.items()}

    def vk(name: str, square: bool = False) -> VaryingKernel:
        g = grid[name] ** 2 if square else grid[name]
        return VaryingKernel.from_grid(g, xc, yc, shape, rtol=1e-2 if square else 1e-3)

    # only the global sky levels are removed here: a mesh background's noise would be
    # amplified ~√(noise-equivalent area) times in S; the rest of the sky difference is fitted
    # on D below as a smooth polynomial (like Alard–Lupton's differential background)
    new = S.filled - np.float32(np.median(S.background.values))
    ref = T.filled - np.float32(np.median(T.background.values))
    fn = block_spectrum(new, half, workers=workers)
    fr = block_spectrum(ref, half, workers=workers)
    d = convolve(None, vk("d_n"), spectrum=fn, workers=workers) - convolve(None, vk("d_r"), spectrum=fr,
                                                                          workers=workers)
    s = convolve(None, vk("s_n"), spectrum=fn, workers=workers) - convolve(None, vk("s_r"), spectrum=fr,
                                                                          workers=workers)
    del fn, fr
    # the differential background: a smooth field in D/F_D (d_n and d_r sum to 1), a Legendre
    # polynomial fitted robustly on source-free pixels, removed from D and from S (s_n sums
    # to 1/(σ_n² + σ_r²))
    from jointcal_ap.diffim.qa import source_free

    free = source_free(S.planes.mask | T.planes.mask, [S.stars, T.stars], max(6.0, 2.5 * max(S.fwhm, T.fwhm)))
    free &= ~(S.bad | T.bad) & ~border(shape, half)
    b_img = _background_fit(d, free, max(opts.match.background_degree, 0), shape)
    d -= b_img
    s -= b_img * GridField(shape, xc, yc, np.asarray(s0)).image()
    del b_img
    v_s = convolve(S.var_filled, vk("s_n", True), workers=workers) \
        + convolve(T.var_filled, vk("s_r", True), workers=workers)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_corr = s / np.sqrt(v_s)
    var = S.var_filled * GridField(shape, xc, yc, np.asarray(wn)).image() \
        + T.var_filled * GridField(shape, xc, yc, np.asarray(wr)).image()
    no_data = MASK_BITS["NO_DATA"]
    mask = grow(S.planes.mask | np.where(S.bad, np.int32(no_data), np.int32(0)), half) \
        | grow(T.planes.mask | np.where(T.bad, np.int32(no_data), np.int32(0)), half)
    mask |= np.where(border(shape, half), np.int32(no_data | MASK_BITS["EDGE"]), np.int32(0))
    nodata = (mask & no_data) != 0
    nan = np.float32(np.nan)
    psf = GridPsf(grid["psf_d"], xc, yc)
    return DifferenceImage(
        image=np.where(nodata, nan, d).astype(np.float32), variance=np.where(nodata, nan, var).astype(np.float32),
        mask=mask.astype(np.int32), psf=psf, kind="difference", method="zogy", mode="zogy", decorrelated=True,
        kernel={"kernel_type": "zogy", "kernel_size": size, "cell_px": int(opts.cell_px)}, qa={},
        header=S.planes.header.copy(), template_inputs=T.planes.inputs or (T.planes.source,),
        score=np.where(nodata, nan, s).astype(np.float32),
        score_corr=np.where(nodata, nan, s_corr).astype(np.float32), source=S.planes.source)


def _median(v: np.ndarray, bad: np.ndarray) -> float:
    good = v[~bad & np.isfinite(v)]
    if good.size == 0:
        good = v[np.isfinite(v)]
    return float(np.median(good[::max(1, good.size // 20000)])) if good.size else 1.0


def _background_fit(d: np.ndarray, free: np.ndarray, degree: int, shape) -> np.ndarray:
    """A Legendre polynomial of ``degree`` fitted to ``d`` on ``free`` pixels (every 3rd
    pixel, two 3σ clipping passes), as an image."""
    from jointcal_ap.diffim.fields import PolynomialField, design_matrix

    ys, xs = np.nonzero(free[::3, ::3])
    ys, xs = 3 * ys, 3 * xs
    vals = d[ys, xs].astype(float)
    ok = np.isfinite(vals)
    if ok.sum() < 10:
        return np.zeros(shape, np.float32)
    A = design_matrix(shape, degree, xs + 1.0, ys + 1.0)
    coef = np.zeros(A.shape[1])
    for _ in range(3):
        coef = np.linalg.lstsq(A[ok], vals[ok], rcond=None)[0]
        res = vals - A @ coef
        sig = 1.4826 * np.median(np.abs(res[ok]))
        ok = np.isfinite(vals) & (np.abs(res) < 3 * sig)
    return PolynomialField.from_terms(shape, degree, coef).image()
