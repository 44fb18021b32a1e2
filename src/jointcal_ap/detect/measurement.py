"""Detection and measurement of one image: :func:`detect_sources`.

Footprints of the matched-filtered image and their peaks, the FWHM estimated from bright
isolated stars (adaptive second moments), windowed (Gaussian-weighted, iterative) centroids
with their covariance propagated from the variance plane, aperture fluxes with the
background's own error, the image's aperture correction, and the flags
(:data:`~jointcal_ap.detect.FLAG_BITS`). See ``docs/detect.md`` for the algorithm.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.special import ndtr

from jointcal_ap.detect.background import estimate_background
from jointcal_ap.detect.detections import Detections
from jointcal_ap.detect.options import (
    _UNUSABLE,
    FLAG_BITS,
    MASK_BITS,
    DetectionError,
    DetectOptions,
)

__all__ = ["detect_sources"]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_STAMP_ELEMENTS = 2_000_000
_MAX_SHIFT_PX = 1.5


# --------------------------------------------------------------------------- internals


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _significance(sub: np.ndarray, var: np.ndarray, usable: np.ndarray, sigma: float):
    """Matched-filter image and its significance (filtered value / filtered noise σ)."""
    k = _gauss_kernel(sigma)
    data = np.where(usable, sub, 0.0).astype(np.float32)
    vdata = np.where(usable, var, 0.0).astype(np.float32)
    filt = ndimage.correlate1d(ndimage.correlate1d(data, k, axis=0, mode="constant"), k, axis=1,
                               mode="constant")
    fvar = ndimage.correlate1d(ndimage.correlate1d(vdata, k * k, axis=0, mode="constant"), k * k, axis=1,
                               mode="constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        signif = np.where(fvar > 0, filt / np.sqrt(fvar), 0.0)
    return filt, signif


def _footprints(filt, signif, usable, sub, opts: DetectOptions, fwhm: float):
    """Label the detected pixels and find the sources: the peaks of the filtered image in each footprint.

    Returns, per source: peak pixel (0-based column, row), npix of its footprint,
    peak value, number of peaks in its footprint, filtered value at the peak; and the
    label image.
    """
    detected = (signif > opts.threshold_sigma) & usable
    labels, n_lab = ndimage.label(detected, structure=np.ones((3, 3), dtype=bool))
    _ny, nx = filt.shape
    idx = np.flatnonzero(labels)
    lab = labels.ravel()[idx]
    npix_all = np.bincount(lab, minlength=n_lab + 1)
    keep_lab = npix_all >= opts.min_pixels
    sel = keep_lab[lab]
    idx, lab = idx[sel], lab[sel]
    if idx.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0), empty, np.zeros(0), labels
    fval = filt.ravel()[idx]
    order = np.lexsort((-fval, lab))
    lab_sorted = lab[order]
    first = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1]])
    ulab = lab_sorted[first]
    peak_filt = fval[order][first]
    # local maxima of the filtered image within the footprints (window of ±r pixels); each one
    # above blend_contrast × the footprint's main peak is a source (no deblending of the light)
    r = max(1, round(0.5 * fwhm))
    is_max = fval >= ndimage.maximum_filter(filt, size=2 * r + 1, mode="nearest").ravel()[idx]
    lab_pos = np.searchsorted(ulab, lab)
    strong = is_max & (fval >= opts.blend_contrast * peak_filt[lab_pos])
    strong[order[first]] = True  # the main peak always
    n_peaks = np.bincount(lab_pos[strong], minlength=ulab.size)
    src = np.flatnonzero(strong)
    py, px = np.divmod(idx[src], nx)
    # FLUX_MAX: the highest background-subtracted pixel next to the peak
    sub_max = ndimage.maximum_filter(sub, size=3, mode="nearest")
    src_lab = lab_pos[src]
    return (px, py, npix_all[ulab][src_lab], sub_max[py, px].astype(np.float64), n_peaks[src_lab],
            fval[src].astype(np.float64), labels)


def _pad(arr: np.ndarray, pad: int, value) -> np.ndarray:
    return np.pad(arr, pad, mode="constant", constant_values=value)


def _gather(padded: np.ndarray, pad: int, ix0, iy0, radius: int) -> np.ndarray:
    """Stamps (n, 2r+1, 2r+1) of a padded image, centred on 0-based pixels (ix0, iy0)."""
    off = np.arange(-radius, radius + 1)
    rows = (iy0 + pad)[:, None] + off[None, :]
    cols = (ix0 + pad)[:, None] + off[None, :]
    return padded[rows[:, :, None], cols[:, None, :]]


def _window_1d(grid: np.ndarray, centre: np.ndarray, sigma_w: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D Gaussian window (truncated at 4σ) and offsets of pixel centres ``grid`` (m, S) from ``centre`` (m,)."""
    d = grid - centre[:, None]
    return np.where(np.abs(d) <= 4.0 * sigma_w, np.exp(-0.5 * (d / sigma_w) ** 2), 0.0), d


def _windowed_centroid(du, gx, gy, x0, y0, sigma_w, max_iter, tol):
    """SExtractor's windowed centroid, vectorised over stamps.

    ``du`` (m, S, S): stamps with unusable pixels zeroed; ``gx``, ``gy`` (m, S): the
    1-based x of the stamp columns and y of its rows. The window is the separable
    Gaussian ``w = wx · wy`` (σ = ``sigma_w``, cut at 4σ along each axis), and the
    iteration is ``x ← x + 2 Σ w I (x_i - x) / Σ w I``. Only the unconverged stamps
    are recomputed. Returns x, y, converged.
    """
    x, y = x0.astype(np.float64).copy(), y0.astype(np.float64).copy()
    converged = np.zeros(x.size, dtype=bool)
    active = np.arange(x.size)
    for _ in range(max_iter):
        wx, dx = _window_1d(gx[active], x[active], sigma_w)
        wy, dy = _window_1d(gy[active], y[active], sigma_w)
        d = du[active]
        a0 = np.matmul(d, wx[:, :, None])[:, :, 0]            # Σ_i I_ji wx_i      (m, S rows)
        ax = np.matmul(d, (wx * dx)[:, :, None])[:, :, 0]
        s0 = (wy * a0).sum(axis=1)
        ok = s0 > 0
        safe = np.where(ok, s0, 1.0)
        stepx = np.clip(2.0 * (wy * ax).sum(axis=1) / safe, -1.0, 1.0)
        stepy = np.clip(2.0 * (wy * dy * a0).sum(axis=1) / safe, -1.0, 1.0)
        stepx[~ok] = 0.0
        stepy[~ok] = 0.0
        x[active] += stepx
        y[active] += stepy
        done = ok & (np.hypot(stepx, stepy) < tol)
        converged[active[done]] = True
        active = active[~done & ok]
        if active.size == 0:
            break
    return x, y, converged


def _covariance_to_ellipse(cxx, cyy, cxy):
    mean = 0.5 * (cxx + cyy)
    radius = np.hypot(0.5 * (cxx - cyy), cxy)
    return (np.sqrt(mean + radius), np.sqrt(np.maximum(mean - radius, 0.0)),
            np.rad2deg(0.5 * np.arctan2(2.0 * cxy, cxx - cyy)))


def _estimate_fwhm(sub_p, use_p, pad, px, py, guess, n_iter=6):
    """Gaussian-equivalent FWHM from adaptive second moments of the given (bright) stars."""
    sigma_w = guess / _FWHM_PER_SIGMA
    radius = min(pad, math.ceil(5.0 * sigma_w) + 2)
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    use = _gather(use_p, pad, px, py, radius)
    data = np.where(use, _gather(sub_p, pad, px, py, radius), 0.0)
    gx = (px + 1.0)[:, None] + off[None, :]
    gy = (py + 1.0)[:, None] + off[None, :]
    x, y = px + 1.0, py + 1.0
    for _ in range(n_iter):
        x, y, conv = _windowed_centroid(data, gx, gy, x, y, sigma_w, 30, 1e-4)
        dx, dy = gx[:, None, :] - x[:, None, None], gy[:, :, None] - y[:, None, None]
        r2 = dx * dx + dy * dy
        wi = np.where(use, np.exp(-0.5 * r2 / sigma_w**2), 0.0) * data
        s0 = wi.sum(axis=(1, 2))
        m = 0.5 * (wi * r2).sum(axis=(1, 2)) / np.where(s0 > 0, s0, 1.0)
        good = conv & (s0 > 0) & (m > 0) & (m < 0.9 * sigma_w**2)
        if good.sum() < 3:
            raise DetectionError(f"cannot estimate the FWHM: fewer than 3 of {px.size} bright stars give "
                                 f"usable moments; pass fwhm_px")
        s2 = m[good] * sigma_w**2 / (sigma_w**2 - m[good])
        new = math.sqrt(float(np.median(s2)))
        new = min(max(new, 0.4 * sigma_w), 2.5 * sigma_w)
        radius_needed = math.ceil(5.0 * new) + 2
        if abs(new / sigma_w - 1.0) < 1e-3 and radius_needed <= radius:
            sigma_w = new
            break
        sigma_w = new
        if radius_needed > radius and radius < pad:
            return _estimate_fwhm(sub_p, use_p, pad, px, py, sigma_w * _FWHM_PER_SIGMA, n_iter)
    return _FWHM_PER_SIGMA * math.sqrt(max(sigma_w**2 - 1.0 / 12.0, 1e-4))


def _shape_outliers(moments, snr, flags, n_sigma: float, sigma_w: float) -> np.ndarray:
    """Sources whose windowed second moments differ from the stars' by > n_sigma (unresolved blends).

    The reference is the median moment of the unflagged sources with S/N > 20 (the
    PSF, whatever its profile), or with fewer than 5 of those, the moments of a
    Gaussian PSF of the FWHM (window σ = ``sigma_w``); the noise of each moment comes from the variance
    plane, with a 1 % floor for the PSF's variation across the image.
    """
    n = len(snr)
    ref_sel = (flags == 0) & (snr > 20) & np.isfinite(moments["mxx"])
    if ref_sel.sum() >= 5:
        ref = {k: float(np.median(moments[k][ref_sel])) for k in ("mxx", "myy", "mxy")}
    else:  # too few stars: a Gaussian PSF of the FWHM, integrated over the pixels
        s2, w2 = sigma_w**2 + 1.0 / 12.0, sigma_w**2
        ref = {"mxx": s2 * w2 / (s2 + w2), "myy": s2 * w2 / (s2 + w2), "mxy": 0.0}
    floor = 0.01 * 0.5 * (ref["mxx"] + ref["myy"])
    chi2 = np.zeros(n)
    for k in ("mxx", "myy", "mxy"):
        chi2 = np.maximum(chi2, (moments[k] - ref[k]) ** 2 / (moments["s" + k] ** 2 + floor**2))
    return np.isfinite(chi2) & (chi2 > n_sigma**2)


def _check_inputs(image, variance, mask):
    img = np.asarray(image)
    if img.ndim != 2:
        raise DetectionError(f"detect_sources: image must be a 2-D array, got shape {img.shape}")
    var = np.asarray(variance)
    if var.shape != img.shape:
        raise DetectionError(f"detect_sources: variance has shape {var.shape}, expected the image's {img.shape}")
    if mask is None:
        msk = np.zeros(img.shape, dtype=np.int32)
    else:
        msk = np.asarray(mask)
        if msk.shape != img.shape:
            raise DetectionError(f"detect_sources: mask has shape {msk.shape}, expected the image's {img.shape}")
        if msk.dtype.kind not in "iu":
            raise DetectionError(f"detect_sources: mask must be an integer bit mask, got dtype {msk.dtype}")
    usable = np.isfinite(img) & np.isfinite(var) & (var > 0) & ((msk & _UNUSABLE) == 0)
    if not usable.any():
        raise DetectionError("detect_sources: no usable pixel (all masked BAD/NO_DATA, or non-finite, "
                             "or with variance <= 0)")
    return img, var, msk.astype(np.int64), usable


# --------------------------------------------------------------------------- public


def detect_sources(image, variance, mask=None, options: DetectOptions | None = None,
                   **overrides: Any) -> Detections:
    """Detect and measure the point sources of one image.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        ADU, background not subtracted.
    variance : ndarray, shape (ny, nx)
        Variance of ``image``, ADU² (an LSST variance plane; sky + source + read noise).
    mask : ndarray of int, optional
        Bit mask (:data:`MASK_BITS`).
    options : DetectOptions, optional
    **overrides
        Any :class:`DetectOptions` field, e.g. ``threshold_sigma=5.0, fwhm_px=3.0``.

    Returns
    -------
    Detections
        Ordered by decreasing peak significance.

    Raises
    ------
    DetectionError
        Arrays of the wrong shape or kind, no usable pixel, or (``fwhm_px=None``)
        no bright isolated star to estimate the FWHM from.

    Examples
    --------
    >>> from jointcal_ap.simulate.images import render_image      # doctest: +SKIP
    >>> im = render_image((256, 256), [100.0], [120.0], [5e4], fwhm_px=3.0, sky_adu=500.0, seed=2)  # doctest: +SKIP
    >>> det = detect_sources(im.image, im.variance, im.mask, fwhm_px=3.0)  # doctest: +SKIP
    """
    opts = replace(options or DetectOptions(), **overrides) if overrides else (options or DetectOptions())
    img, var, msk, usable = _check_inputs(image, variance, mask)

    # 1. background, robust to the sources (SExtractor's mode), for detection
    bkg1 = estimate_background(img, msk, mesh_px=opts.background_mesh, clip_sigma=opts.background_clip_sigma,
                               filter_size=opts.background_filter, exclude=~usable, estimator="mode")
    sub = np.where(usable, img - bkg1.level, 0.0).astype(np.float32)

    # 2. detection (matched filter), estimating the FWHM first when not given
    fwhm = opts.fwhm_px if opts.fwhm_px is not None else 3.0
    estimated = opts.fwhm_px is None
    rounds = 3 if estimated else 1
    pad = 0
    for k in range(rounds):
        filt, signif = _significance(sub, var, usable, fwhm / _FWHM_PER_SIGMA)
        px, py, npix, peak, n_peaks, peak_filt, labels = _footprints(filt, signif, usable, sub, opts, fwhm)
        if not estimated or k == rounds - 1:
            break
        if px.size == 0:
            raise DetectionError("cannot estimate the FWHM: nothing detected; pass fwhm_px")
        pad = math.ceil(6.0 * fwhm) + 4
        snr = signif[py, px]
        ny, nx = img.shape
        inside = (px >= pad) & (px < nx - pad) & (py >= pad) & (py < ny - pad)
        cand = np.flatnonzero((n_peaks == 1) & inside & (snr > 30))
        if opts.saturation_adu is not None:
            cand = cand[(peak[cand] + bkg1.level[py[cand], px[cand]]) < 0.5 * opts.saturation_adu]
        cand = cand[~np.isin(labels[py[cand], px[cand]], np.unique(labels[(msk & MASK_BITS["SAT"]) != 0]))]
        if cand.size > 3:  # isolated: no other detection within 3 FWHM
            tree = cKDTree(np.column_stack([px, py]))
            counts = np.array([len(c) for c in tree.query_ball_point(np.column_stack([px[cand], py[cand]]),
                                                                     3.0 * fwhm)])
            cand = cand[counts == 1]
        cand = cand[np.argsort(-snr[cand])][:400]
        if cand.size < 3:
            raise DetectionError(f"cannot estimate the FWHM: {cand.size} bright (S/N > 30), isolated, "
                                 f"unsaturated stars; need 3. Pass fwhm_px")
        sub_p = _pad(sub, pad, 0.0)
        use_p = _pad(usable, pad, False)
        new = _estimate_fwhm(sub_p, use_p, pad, px[cand], py[cand], fwhm)
        close = abs(new / fwhm - 1.0) < 0.1  # a matched filter 10 % off loses < 1 % of S/N: keep it
        fwhm = new
        if close:
            break

    # 3. background again, with the sources (dilated by ~1 FWHM) excluded: the clipped mean
    grow = max(1, math.ceil(fwhm))
    footprint = ndimage.maximum_filter(labels > 0, size=2 * grow + 1)
    bkg = estimate_background(img, msk, mesh_px=opts.background_mesh, clip_sigma=opts.background_clip_sigma,
                              filter_size=opts.background_filter, exclude=footprint | ~usable,
                              estimator="mean")
    sub = np.where(usable, img - bkg.level, 0.0)

    sigma_w = fwhm / _FWHM_PER_SIGMA
    r_ap = float(opts.aperture_radius_px) if opts.aperture_radius_px is not None else opts.aperture_fwhm * fwhm
    order = np.argsort(-peak_filt, kind="stable")
    px, py, npix, peak, n_peaks = px[order], py[order], npix[order], peak[order], n_peaks[order]
    n = px.size
    radius = math.ceil(max(4.0 * sigma_w, r_ap + 0.5) + _MAX_SHIFT_PX) + 1
    pad = radius + 1
    sat = (msk & MASK_BITS["SAT"]) != 0
    if opts.saturation_adu is not None:
        sat |= np.isfinite(img) & (img >= opts.saturation_adu)
    edge = (msk & MASK_BITS["EDGE"]) != 0
    sub_p = _pad(sub, pad, 0.0)
    var_p = _pad(np.where(usable, var, 0.0), pad, 0.0)
    use_p = _pad(usable, pad, False)
    on_p = _pad(np.ones(img.shape, dtype=bool), pad, False)
    sat_p = _pad(sat, pad, False)
    edge_p = _pad(edge, pad, True)
    bvar = bkg.level_var

    out = {k: np.zeros(n) for k in ("x", "y", "cov_xx", "cov_yy", "cov_xy", "flux", "flux_err")}
    flags = np.zeros(n, dtype=np.int64)
    moments = {k: np.full(n, np.nan) for k in ("mxx", "myy", "mxy", "smxx", "smyy", "smxy")}
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    chunk = max(1, _STAMP_ELEMENTS // (2 * radius + 1) ** 2)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        cx, cy = px[sl], py[sl]
        use = _gather(use_p, pad, cx, cy, radius)
        data = np.where(use, _gather(sub_p, pad, cx, cy, radius), 0.0)
        gx1 = (cx + 1.0)[:, None] + off[None, :]
        gy1 = (cy + 1.0)[:, None] + off[None, :]
        x0, y0 = cx + 1.0, cy + 1.0
        x, y, conv = _windowed_centroid(data, gx1, gy1, x0, y0, sigma_w, opts.max_iterations,
                                        opts.centroid_tolerance_px)
        bad = ~conv | (np.hypot(x - x0, y - y0) > _MAX_SHIFT_PX)
        x[bad], y[bad] = x0[bad], y0[bad]
        f = np.zeros(x.size, dtype=np.int64)
        f[bad] |= FLAG_BITS["CENTROID"]

        # covariance: linear propagation of the fixed point F(x̂, I) = Σ w I (x - x̂) = 0
        wx, dx = _window_1d(gx1, x, sigma_w)
        wy, dy = _window_1d(gy1, y, sigma_w)
        w = wy[:, :, None] * wx[:, None, :] * use
        dx, dy = dx[:, None, :], dy[:, :, None]
        r2 = dx * dx + dy * dy
        v = _gather(var_p, pad, cx, cy, radius)
        wi = w * data
        s0 = wi.sum(axis=(1, 2))
        jxx = (wi * (dx * dx / sigma_w**2 - 1.0)).sum(axis=(1, 2))
        jyy = (wi * (dy * dy / sigma_w**2 - 1.0)).sum(axis=(1, 2))
        jxy = (wi * dx * dy).sum(axis=(1, 2)) / sigma_w**2
        w2v = w * w * v
        bxx, byy, bxy = (w2v * dx * dx).sum(axis=(1, 2)), (w2v * dy * dy).sum(axis=(1, 2)), \
            (w2v * dx * dy).sum(axis=(1, 2))
        det = jxx * jyy - jxy * jxy
        good_j = (jxx < 0) & (jyy < 0) & (det > 0)
        safe_det = np.where(good_j, det, 1.0)
        # J⁻¹ = [[jyy, -jxy], [-jxy, jxx]] / det ;  C = J⁻¹ B J⁻ᵀ
        ixx, iyy, ixy = jyy / safe_det, jxx / safe_det, -jxy / safe_det
        cxx = ixx * ixx * bxx + 2 * ixx * ixy * bxy + ixy * ixy * byy
        cyy = ixy * ixy * bxx + 2 * ixy * iyy * bxy + iyy * iyy * byy
        cxy = ixx * ixy * bxx + (ixx * iyy + ixy * ixy) * bxy + ixy * iyy * byy
        # fall back on SExtractor's form 4 B / (Σ w I)² where the Jacobian is not usable
        s0_safe = np.where(s0 > 0, s0, np.nan)
        cxx = np.where(good_j, cxx, 4.0 * bxx / s0_safe**2)
        cyy = np.where(good_j, cyy, 4.0 * byy / s0_safe**2)
        cxy = np.where(good_j, cxy, 4.0 * bxy / s0_safe**2)
        unmeasurable = ~(np.isfinite(cxx) & np.isfinite(cyy) & (cxx > 0) & (cyy > 0))
        f[unmeasurable] |= FLAG_BITS["CENTROID"]
        # a source with no usable window: 1 px² (flagged), so that the covariance stays valid
        cxx, cyy, cxy = np.where(unmeasurable, 1.0, cxx), np.where(unmeasurable, 1.0, cyy), \
            np.where(unmeasurable, 0.0, cxy)

        # aperture flux: pixel weight = overlap with the circle, approximated linearly
        frac = np.clip(r_ap + 0.5 - np.sqrt(r2), 0.0, 1.0)
        fu = frac * use
        flux = (fu * data).sum(axis=(1, 2))
        area = fu.sum(axis=(1, 2))
        flux_var = (fu * fu * v).sum(axis=(1, 2)) + area**2 * bvar[cy, cx]

        # windowed second moments and their errors (for the blend test below)
        s0_safe = np.where(s0 > 0, s0, np.nan)
        for name, q in (("mxx", dx * dx), ("myy", dy * dy), ("mxy", dx * dy)):
            m = (wi * q).sum(axis=(1, 2)) / s0_safe
            moments[name][sl] = m
            moments["s" + name][sl] = np.sqrt((w2v * (q - m[:, None, None]) ** 2).sum(axis=(1, 2))) / s0_safe

        region = (frac > 0) | (r2 < (4.0 * sigma_w) ** 2)
        on = _gather(on_p, pad, cx, cy, radius)
        f[np.any(region & _gather(edge_p, pad, cx, cy, radius), axis=(1, 2))] |= FLAG_BITS["EDGE"]
        f[np.any(region & on & ~use, axis=(1, 2))] |= FLAG_BITS["MASKED"]
        f[np.any(region & _gather(sat_p, pad, cx, cy, radius), axis=(1, 2))] |= FLAG_BITS["SATURATED"]

        out["x"][sl], out["y"][sl] = x, y
        out["cov_xx"][sl], out["cov_yy"][sl], out["cov_xy"][sl] = cxx, cyy, cxy
        out["flux"][sl], out["flux_err"][sl] = flux, np.sqrt(flux_var)
        flags[sl] = f

    flags[n_peaks > 1] |= FLAG_BITS["BLENDED"]
    flags[_shape_outliers(moments, out["flux"] / out["flux_err"], flags, opts.shape_sigma,
                            sigma_w)] |= \
        FLAG_BITS["BLENDED"]
    if n > 1:  # neighbours: Gaussian-tail estimate of the light each puts in the other's aperture
        tree = cKDTree(np.column_stack([out["x"], out["y"]]))
        pairs = tree.query_pairs(r_ap + 6.0 * sigma_w, output_type="ndarray")
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            d = np.hypot(out["x"][i] - out["x"][j], out["y"][i] - out["y"][j])
            leak = ndtr(-(d - r_ap) / sigma_w)
            scale = np.maximum(out["flux"], out["flux_err"])
            hit_i = np.maximum(out["flux"][j], 0.0) * leak > opts.neighbour_fraction * scale[i]
            hit_j = np.maximum(out["flux"][i], 0.0) * leak > opts.neighbour_fraction * scale[j]
            flags[i[hit_i]] |= FLAG_BITS["NEIGHBOUR"]
            flags[j[hit_j]] |= FLAG_BITS["NEIGHBOUR"]

    corr, corr_err, n_corr = 1.0, 0.0, 0
    if opts.aperture_correction and n:
        corr, corr_err, n_corr = _aperture_correction(sub, usable, out, flags, r_ap,
                                                      opts.aperture_correction_fwhm * fwhm, sigma_w)
        out["flux"], out["flux_err"] = out["flux"] * corr, out["flux_err"] * corr
    err_a, err_b, theta = _covariance_to_ellipse(out["cov_xx"], out["cov_yy"], out["cov_xy"])
    return Detections(
        x=out["x"], y=out["y"], err_a=err_a, err_b=err_b, err_theta_deg=theta,
        cov_xx=out["cov_xx"], cov_yy=out["cov_yy"], cov_xy=out["cov_xy"],
        flux=out["flux"], flux_err=out["flux_err"], flags=flags,
        peak=peak, npix=npix.astype(np.int64), fwhm_px=float(fwhm), fwhm_estimated=estimated,
        aperture_radius_px=r_ap, background=bkg, options=opts, aperture_correction=corr,
        aperture_correction_err=corr_err, aperture_correction_stars=n_corr)


def _aperture_flux(image: np.ndarray, usable: np.ndarray, x, y, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Flux within radius ``r`` of 1-based (x, y) (pixel weights: linear overlap), and whether
    every pixel of the aperture is usable and on the image."""
    radius = math.ceil(r + 1.0)
    pad = radius + 1
    ix, iy = np.rint(x - 1.0).astype(np.int64), np.rint(y - 1.0).astype(np.int64)
    data = _gather(_pad(image, pad, 0.0), pad, ix, iy, radius)
    use = _gather(_pad(usable, pad, False), pad, ix, iy, radius)
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    dx = (ix + 1.0 - x)[:, None, None] + off[None, None, :]
    dy = (iy + 1.0 - y)[:, None, None] + off[None, :, None]
    frac = np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    return (frac * data).sum(axis=(1, 2)), ~np.any((frac > 0) & ~use, axis=(1, 2))


def _aperture_correction(sub: np.ndarray, usable: np.ndarray, out: dict, flags: np.ndarray, r_ap: float,
                         r_total: float, sigma_w: float, max_stars: int = 300) -> tuple[float, float, int]:
    """Median (big aperture / aperture) flux ratio of bright, isolated, unflagged stars."""
    if r_total <= r_ap:
        return 1.0, 0.0, 0
    snr = out["flux"] / np.where(out["flux_err"] > 0, out["flux_err"], np.inf)
    cand = np.flatnonzero((flags == 0) & (snr > 50) & (out["flux"] > 0))
    if len(cand) >= 2:  # isolated: no other detection within the big aperture (plus the PSF wings)
        tree = cKDTree(np.column_stack([out["x"], out["y"]]))
        dist, _ = tree.query(np.column_stack([out["x"][cand], out["y"][cand]]), k=2)
        cand = cand[dist[:, 1] > r_total + 4.0 * sigma_w]
    cand = cand[np.argsort(-out["flux"][cand])][:max_stars]
    if len(cand) < 5:
        return 1.0, 0.0, 0
    big, ok = _aperture_flux(sub, usable, out["x"][cand], out["y"][cand], r_total)
    ratio = big[ok] / out["flux"][cand][ok]
    ratio = ratio[np.isfinite(ratio)]
    if len(ratio) < 5:
        return 1.0, 0.0, 0
    centre = float(np.median(ratio))
    spread = 1.4826 * float(np.median(np.abs(ratio - centre)))
    error = 1.2533 * spread / math.sqrt(len(ratio))
    if abs(centre - 1.0) <= 3.0 * error:
        # not significant (a Gaussian-like PSF, whose correction is ~1e-5): applying it would
        # only add its noise and the faint neighbours' light in the big apertures
        return 1.0, error, len(ratio)
    return centre, error, len(ratio)
