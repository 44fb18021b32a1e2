"""Single-frame detection and measurement of point sources: the fitter's input from an image.

:func:`detect_sources` does what SExtractor does for SCAMP, in numpy and scipy:
a mesh-based sigma-clipped background, a matched-filter detection, windowed
(Gaussian-weighted, iterative) centroids with their covariance from the variance
plane, aperture fluxes, and SExtractor-like flags. :func:`catalog_from_image` turns
an image into the rows of the fitter's ``sources.parquet``
(:mod:`jointcal_ap.fit.io`). See ``docs/detect.md`` for the algorithm.

This module imports only numpy, scipy and pyarrow, so that it stays light (it does
not load the fitter or JAX).

Mask bits (:data:`MASK_BITS`, LSST mask plane numbers): ``BAD`` = 1, ``SAT`` = 2,
``EDGE`` = 16, ``NO_DATA`` = 256. ``BAD`` and ``NO_DATA`` pixels are ignored;
``SAT`` and ``EDGE`` pixels are used but flag the sources that touch them.

Source flags (:data:`FLAG_BITS`, SExtractor's values where the meaning is shared):

=========  =====  ==============================================================
NEIGHBOUR      1  another source puts > ``neighbour_fraction`` of this one's flux
                  in its aperture (SExtractor 1)
BLENDED        2  the detection footprint holds more than one peak, or the windowed
                  second moments are not the stars' (an unresolved pair; SExtractor 2)
SATURATED      4  a pixel of the window or aperture is saturated (SExtractor 4)
EDGE           8  the window or aperture is truncated by the image border or
                  touches ``EDGE`` pixels (SExtractor 8)
MASKED        16  the window or aperture holds ``BAD``/``NO_DATA`` or unusable
                  pixels (SExtractor 16: aperture data incomplete)
CENTROID      32  the windowed centroid did not converge, or moved more than
                  1.5 px from the peak; the peak position is reported instead
=========  =====  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.special import ndtr
from scipy.stats import norm

__all__ = [
    "COLUMNS",
    "FLAG_BITS",
    "MASK_BITS",
    "Background",
    "DetectOptions",
    "DetectionError",
    "Detections",
    "catalog_from_image",
    "detect_sources",
    "estimate_background",
    "sources_columns",
]

#: Image mask bits (the LSST mask plane numbers).
MASK_BITS: dict[str, int] = {"BAD": 1, "SAT": 2, "EDGE": 16, "NO_DATA": 256}

#: Source flag bits (SExtractor's values where the meaning is shared).
FLAG_BITS: dict[str, int] = {"NEIGHBOUR": 1, "BLENDED": 2, "SATURATED": 4, "EDGE": 8, "MASKED": 16,
                             "CENTROID": 32}

#: The per-source columns of :class:`Detections`, in order.
COLUMNS: tuple[str, ...] = ("x", "y", "err_a", "err_b", "err_theta_deg", "cov_xx", "cov_yy", "cov_xy",
                            "flux", "flux_err", "flags", "peak", "npix")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_UNUSABLE = MASK_BITS["BAD"] | MASK_BITS["NO_DATA"]
_STAMP_ELEMENTS = 2_000_000
_MAX_SHIFT_PX = 1.5


class DetectionError(ValueError):
    """The image cannot be measured (bad input arrays, or no star to estimate the PSF width from)."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DetectOptions:
    """Options of :func:`detect_sources`.

    Attributes
    ----------
    threshold_sigma : float
        Detection threshold: a pixel is detected when the matched-filtered image is
        this many σ of the filtered noise above the background (default 5).
    min_pixels : int
        Minimum number of connected detected pixels (default 5).
    fwhm_px : float or None
        PSF FWHM, pixels: the width of the matched filter and of the centroid
        window. None (default): estimated from the bright isolated stars.
    aperture_fwhm : float
        Aperture radius in units of the FWHM (default 2.0: 99.998 % of a Gaussian).
    aperture_radius_px : float or None
        Aperture radius in pixels; overrides ``aperture_fwhm``.
    aperture_correction : bool
        Scale every flux (and error) by this image's aperture correction (default True):
        the median ratio, over bright isolated unflagged stars, of the flux in a radius of
        ``aperture_correction_fwhm`` × FWHM to the flux in the aperture. The light a fixed
        aperture misses depends on the PSF (1.5e-5 for a Gaussian at 2 FWHM, 3.8 % for a
        Moffat β = 3), and so on the seeing of each exposure: uncorrected, it would end up
        in the exposure's zero point and bias the calibration of its pixels.
    aperture_correction_fwhm : float
        Radius of the "total" flux of the aperture correction, in FWHM (default 5: the
        Moffat β = 3 profile still misses 0.14 % there).
    background_mesh : int
        Background mesh size, pixels (default 64).
    background_clip_sigma : float
        Clipping of the mesh statistics, σ (default 3).
    background_filter : int
        Median filter of the mesh grid, meshes (default 3; 1 = none).
    saturation_adu : float or None
        Pixels at or above it (image value, background included) count as saturated,
        in addition to the ``SAT`` mask bit.
    blend_contrast : float
        A second peak in a footprint flags ``BLENDED`` when its filtered value is at
        least this fraction of the main peak's (default 0.01).
    neighbour_fraction : float
        ``NEIGHBOUR`` is flagged when another source is estimated to put more than
        this fraction of the source's flux into its aperture (default 0.01).
    shape_sigma : float
        ``BLENDED`` is also flagged when a windowed second moment differs from the
        stars' median by more than this many σ (an unresolved pair; default 5).
    max_iterations : int
        Centroid iterations (default 20).
    centroid_tolerance_px : float
        Convergence: the last step is smaller than this (default 1e-4 px).
    """

    threshold_sigma: float = 5.0
    min_pixels: int = 5
    fwhm_px: float | None = None
    aperture_fwhm: float = 2.0
    aperture_radius_px: float | None = None
    aperture_correction: bool = True
    aperture_correction_fwhm: float = 5.0
    background_mesh: int = 64
    background_clip_sigma: float = 3.0
    background_filter: int = 3
    saturation_adu: float | None = None
    blend_contrast: float = 0.01
    neighbour_fraction: float = 0.01
    shape_sigma: float = 5.0
    max_iterations: int = 20
    centroid_tolerance_px: float = 1e-4

    def __post_init__(self) -> None:
        positive = ("threshold_sigma", "aperture_fwhm", "background_clip_sigma", "centroid_tolerance_px",
                    "shape_sigma", "aperture_correction_fwhm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"DetectOptions.{name} must be > 0, got {getattr(self, name)}")
        for name in ("fwhm_px", "aperture_radius_px"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"DetectOptions.{name} must be None or > 0 pixels, got {value}")
        for name, low in (("min_pixels", 1), ("background_mesh", 8), ("background_filter", 1),
                          ("max_iterations", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"DetectOptions.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("blend_contrast", "neighbour_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"DetectOptions.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe), for provenance."""
        return asdict(self)


# --------------------------------------------------------------------------- background


@dataclass(frozen=True)
class Background:
    """A smooth background model.

    Attributes
    ----------
    level : ndarray of float32, shape (ny, nx)
        Background, ADU.
    rms : ndarray of float32, shape (ny, nx)
        rms of the sky pixels about it, ADU (clipping-corrected).
    level_var : ndarray of float32, shape (ny, nx)
        Variance of the estimate of ``level`` itself, ADU² (≈ rms² / pixels per mesh).
    mesh_level, mesh_rms : ndarray, shape (n_mesh_y, n_mesh_x)
        The per-mesh statistics, after the median filter.
    mesh_px : (int, int)
        The mesh size actually used, (rows, columns) of pixels.
    """

    level: np.ndarray
    rms: np.ndarray
    level_var: np.ndarray
    mesh_level: np.ndarray
    mesh_rms: np.ndarray
    mesh_px: tuple[int, int]


def _interp_matrix(n_pix: int, n_mesh: int, block: int) -> np.ndarray:
    """(n_pix, n_mesh) weights of a natural cubic spline through the mesh centres, flat beyond them."""
    if n_mesh == 1:
        return np.ones((n_pix, 1))
    centres = (np.arange(n_mesh) + 0.5) * block - 0.5
    centres[-1] = min(centres[-1], 0.5 * ((n_mesh - 1) * block + n_pix) - 0.5)  # the last mesh may be short
    pix = np.clip(np.arange(n_pix, dtype=np.float64), centres[0], centres[-1])
    return CubicSpline(centres, np.eye(n_mesh), bc_type="natural")(pix)


def _clipped_std_factor(clip: float) -> float:
    """std of a unit normal truncated at ±clip (the clipped rms is divided by it)."""
    return math.sqrt(1.0 - 2.0 * clip * float(norm.pdf(clip)) / (1.0 - 2.0 * float(norm.sf(clip))))


def _clipped_stats(blocks: np.ndarray, clip: float, n_iter: int = 10) -> tuple[np.ndarray, ...]:
    """Per row of ``blocks`` (NaN = missing): clipped median, mean, std (truncation-corrected), count.

    Rows are sorted once; each clipped set is then a contiguous range ``[lo, hi)`` of
    the sorted row, whose sums come from cumulative sums.
    """
    s = np.sort(blocks, axis=1)
    n_rows, width = s.shape
    finite = np.isfinite(s)
    count = finite.sum(axis=1)
    rows = np.arange(n_rows)
    ref = np.where(count > 0, s[rows, np.maximum(count - 1, 0) // 2], 0.0).astype(np.float64)
    diff = s - ref[:, None]
    d = np.where(finite, diff, 0.0).astype(np.float32)  # float32 sums: ~1e-4 ADU on 4096 pixels
    d_cmp = np.where(finite, diff, np.inf)
    c1 = np.concatenate([np.zeros((n_rows, 1), np.float32), np.cumsum(d, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((n_rows, 1), np.float32), np.cumsum(d * d, axis=1)], axis=1)
    factor = _clipped_std_factor(clip)

    def stats(lo, hi):
        n = np.maximum(hi - lo, 1)
        med = 0.5 * (d[rows, np.clip(lo + (n - 1) // 2, 0, width - 1)]
                     + d[rows, np.clip(lo + n // 2, 0, width - 1)])
        mean = (c1[rows, hi].astype(np.float64) - c1[rows, lo]) / n
        std = np.sqrt(np.maximum((c2[rows, hi].astype(np.float64) - c2[rows, lo]) / n - mean**2, 0.0))
        return med, mean, std

    lo, hi = np.zeros(n_rows, dtype=np.int64), count.astype(np.int64)
    first = True
    for _ in range(n_iter):
        med, _, std = stats(lo, hi)
        if not first:  # the first pass is unclipped: its std is not truncated
            std = std / factor
        first = False
        new_lo = np.sum(d_cmp < (med - clip * std)[:, None], axis=1)
        new_hi = np.sum(d_cmp <= (med + clip * std)[:, None], axis=1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, mean, std = stats(lo, hi)
    return med + ref, mean + ref, std / factor, hi - lo


def _median_filter_grid(grid: np.ndarray, size: int) -> np.ndarray:
    """Median filter of the mesh grid, extended by odd reflection (linear extrapolation) at the borders.

    A plain ``nearest`` extension biases the corners of a sloped background by about
    a mesh's worth of slope; extrapolating linearly keeps a plane exactly.
    """
    h = size // 2
    padded = np.pad(grid, h, mode="reflect", reflect_type="odd") if min(grid.shape) > 1 else \
        np.pad(grid, h, mode="edge")
    return ndimage.median_filter(padded, size=size, mode="nearest")[h:h + grid.shape[0], h:h + grid.shape[1]]


def estimate_background(image, mask=None, *, mesh_px: int = 64, clip_sigma: float = 3.0,
                        filter_size: int = 3, exclude=None, estimator: str = "mean") -> Background:
    """Mesh-based sigma-clipped background, interpolated by a bicubic (natural) spline.

    The image is cut into meshes of about ``mesh_px`` × ``mesh_px`` pixels (the
    remainder is shared out so that every mesh is at least that size). In each, the
    usable pixels are sigma-clipped about their median (``clip_sigma``, iterated to
    convergence) and summarised by ``estimator``; the mesh grid is median-filtered
    (``filter_size`` meshes, the grid extended linearly at its borders) and interpolated to every pixel by a natural cubic
    spline through the mesh centres (flat beyond the outermost centres).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        ADU.
    mask : ndarray of int, optional
        Pixels with ``BAD`` or ``NO_DATA`` set are ignored.
    mesh_px, clip_sigma, filter_size
        See above.
    exclude : ndarray of bool, optional
        More pixels to ignore (e.g. the detected sources, dilated).
    estimator : {"mean", "median", "mode"}
        ``mean``: the clipped mean (unbiased when the sources are excluded);
        ``median``: the clipped median; ``mode``: SExtractor's ``2.5 median - 1.5 mean``
        (robust to undetected sources).

    Returns
    -------
    Background
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise DetectionError(f"estimate_background: image must be 2-D, got shape {img.shape}")
    if estimator not in ("mean", "median", "mode"):
        raise ValueError(f"estimator must be 'mean', 'median' or 'mode', got {estimator!r}")
    ny, nx = img.shape
    usable = np.isfinite(img)
    if mask is not None:
        usable &= (np.asarray(mask) & _UNUSABLE) == 0
    if exclude is not None:
        usable &= ~np.asarray(exclude, dtype=bool)
    nmy, nmx = max(1, ny // mesh_px), max(1, nx // mesh_px)
    bh, bw = -(-ny // nmy), -(-nx // nmx)
    padded = np.full((nmy * bh, nmx * bw), np.nan, dtype=np.float32)
    padded[:ny, :nx] = np.where(usable, img, np.nan)
    blocks = padded.reshape(nmy, bh, nmx, bw).transpose(0, 2, 1, 3).reshape(nmy * nmx, bh * bw)
    med, mean, std, n_used = _clipped_stats(blocks, clip_sigma)
    value = {"mean": mean, "median": med, "mode": 2.5 * med - 1.5 * mean}[estimator]
    if estimator == "mode":  # SExtractor: the mode estimate fails in crowded meshes; use the median there
        value = np.where((mean - med) > 0.3 * std, med, value)
    enough = n_used >= max(10, (bh * bw) // 10)
    if not enough.any():
        raise DetectionError("estimate_background: no mesh has enough usable pixels "
                             f"(need >= {max(10, (bh * bw) // 10)} of {bh * bw})")
    value = np.where(enough, value, np.median(value[enough]))
    std = np.where(enough, std, np.median(std[enough]))
    n_used = np.where(enough, n_used, np.median(n_used[enough]))
    grid = value.reshape(nmy, nmx)
    grid_rms = std.reshape(nmy, nmx)
    grid_var = (std**2 / np.maximum(n_used, 1)).reshape(nmy, nmx)
    if filter_size > 1 and (nmy >= filter_size or nmx >= filter_size):
        grid = _median_filter_grid(grid, filter_size)
        grid_rms = _median_filter_grid(grid_rms, filter_size)
    wy = _interp_matrix(ny, nmy, bh)
    wx = _interp_matrix(nx, nmx, bw)
    return Background(
        level=(wy @ grid @ wx.T).astype(np.float32),
        rms=(wy @ grid_rms @ wx.T).astype(np.float32),
        level_var=np.maximum(wy @ grid_var @ wx.T, 0.0).astype(np.float32),
        mesh_level=grid, mesh_rms=grid_rms, mesh_px=(bh, bw))


# --------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class Detections:
    """The sources measured on one image; each column an array of shape (n,).

    Attributes
    ----------
    x, y : float64
        Windowed centroid (SExtractor ``XWIN_IMAGE``/``YWIN_IMAGE``), 1-based pixels.
    err_a, err_b, err_theta_deg : float64
        1σ error ellipse of the centroid (``ERRAWIN``/``ERRBWIN`` pixels,
        ``ERRTHETAWIN`` degrees counter-clockwise from +x, in (-90, 90]).
    cov_xx, cov_yy, cov_xy : float64
        The centroid covariance, pixel².
    flux, flux_err : float64
        Aperture flux (radius ``aperture_radius_px``) and its 1σ error, ADU,
        background subtracted, multiplied by ``aperture_correction``.
    flags : int64
        :data:`FLAG_BITS`.
    peak : float64
        Highest background-subtracted pixel of the footprint, ADU.
    npix : int64
        Pixels in the detection footprint.
    fwhm_px : float
        The FWHM used (given, or estimated: the Gaussian-equivalent FWHM of the
        adaptive second moments of bright stars, pixel response removed).
    fwhm_estimated : bool
    aperture_radius_px : float
    background : Background
    options : DetectOptions
    aperture_correction, aperture_correction_err : float
        The factor applied to the fluxes and its 1σ error; 1 when disabled, when fewer than
        5 stars could measure it, or when it is within 3σ of 1 (then not applied: it would
        add only its noise, and the light of faint neighbours in the big apertures).
    aperture_correction_stars : int
        How many stars measured it.
    """

    x: np.ndarray
    y: np.ndarray
    err_a: np.ndarray
    err_b: np.ndarray
    err_theta_deg: np.ndarray
    cov_xx: np.ndarray
    cov_yy: np.ndarray
    cov_xy: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    flags: np.ndarray
    peak: np.ndarray
    npix: np.ndarray
    fwhm_px: float
    fwhm_estimated: bool
    aperture_radius_px: float
    background: Background
    options: DetectOptions
    aperture_correction: float = 1.0
    aperture_correction_err: float = 0.0
    aperture_correction_stars: int = 0

    def __len__(self) -> int:
        return len(self.x)

    def columns(self) -> dict[str, np.ndarray]:
        """The per-source columns (:data:`COLUMNS`) as a dict of arrays."""
        return {name: getattr(self, name) for name in COLUMNS}

    def to_table(self):
        """An ``astropy.table.Table`` of the columns, with units and the image-level values in ``meta``."""
        from astropy import units as u
        from astropy.table import Table

        units = {"x": u.pix, "y": u.pix, "err_a": u.pix, "err_b": u.pix, "err_theta_deg": u.deg,
                 "cov_xx": u.pix**2, "cov_yy": u.pix**2, "cov_xy": u.pix**2, "flux": u.adu,
                 "flux_err": u.adu, "peak": u.adu}
        table = Table(self.columns())
        for name, unit in units.items():
            table[name].unit = unit
        table.meta.update(fwhm_px=self.fwhm_px, fwhm_estimated=self.fwhm_estimated,
                          aperture_radius_px=self.aperture_radius_px,
                          aperture_correction=self.aperture_correction,
                          aperture_correction_err=self.aperture_correction_err,
                          aperture_correction_stars=self.aperture_correction_stars)
        return table

    def select(self, keep) -> Detections:
        """The detections where ``keep`` (bool array or indices) holds."""
        return replace(self, **{name: getattr(self, name)[keep] for name in COLUMNS})

    def sources_columns(self, visit: int, detector: int) -> dict[str, np.ndarray]:
        """The rows of the fitter's ``sources.parquet`` (:data:`jointcal_ap.fit.io.SURVEY_COLUMNS`).

        ``visit``, ``detector``, ``x``, ``y``, ``x_err`` = sqrt(cov_xx), ``y_err`` =
        sqrt(cov_yy), ``xy_cov``, ``flux``, ``flux_err`` (ADU), ``flags``.
        """
        return sources_columns(self.columns(), visit, detector)

    def ldac_columns(self) -> dict[str, np.ndarray]:
        """SExtractor ``LDAC_OBJECTS`` columns, for :func:`jointcal_ap.simulate.write_ldac`.

        ``FLUX_AUTO``/``FLUXERR_AUTO`` hold the aperture flux (the fitter reads those names).
        """
        positive = self.flux > 0
        safe = np.where(positive, self.flux, 1.0)
        return {
            "NUMBER": np.arange(1, len(self) + 1, dtype=np.int32),
            "XWIN_IMAGE": self.x, "YWIN_IMAGE": self.y,
            "ERRAWIN_IMAGE": self.err_a.astype(np.float32),
            "ERRBWIN_IMAGE": self.err_b.astype(np.float32),
            "ERRTHETAWIN_IMAGE": self.err_theta_deg.astype(np.float32),
            "FLUX_AUTO": self.flux.astype(np.float32),
            "FLUXERR_AUTO": self.flux_err.astype(np.float32),
            "MAG_AUTO": np.where(positive, -2.5 * np.log10(safe), 99.0).astype(np.float32),
            "MAGERR_AUTO": np.where(positive, 2.5 / np.log(10.0) * self.flux_err / safe, 99.0).astype(np.float32),
            "FLUX_MAX": self.peak.astype(np.float32),
            "FWHM_IMAGE": np.full(len(self), self.fwhm_px, dtype=np.float32),
            "FLAGS": self.flags.astype(np.int16),
        }


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


def sources_columns(columns: Mapping[str, Any], visit: int, detector: int) -> dict[str, np.ndarray]:
    """Detection columns (:data:`COLUMNS`, e.g. a table the ``detect`` stage wrote) → the rows of the
    fitter's ``sources.parquet``: ``x_err`` = sqrt(cov_xx), ``y_err`` = sqrt(cov_yy), ``xy_cov``."""
    x = np.asarray(columns["x"], dtype=np.float64)
    n = len(x)
    return {
        "visit": np.full(n, int(visit), dtype=np.int64),
        "detector": np.full(n, int(detector), dtype=np.int64),
        "x": x, "y": np.asarray(columns["y"], dtype=np.float64),
        "x_err": np.sqrt(np.asarray(columns["cov_xx"], dtype=np.float64)),
        "y_err": np.sqrt(np.asarray(columns["cov_yy"], dtype=np.float64)),
        "xy_cov": np.asarray(columns["cov_xy"], dtype=np.float64),
        "flux": np.asarray(columns["flux"], dtype=np.float64),
        "flux_err": np.asarray(columns["flux_err"], dtype=np.float64),
        "flags": np.asarray(columns["flags"]).astype(np.int64),
    }


def catalog_from_image(image, variance, mask=None, *, visit: int, detector: int,
                       options: DetectOptions | None = None, **overrides: Any):
    """Detect and measure one image; return its rows of the fitter's ``sources.parquet``.

    Parameters
    ----------
    image, variance, mask, options, **overrides
        As :func:`detect_sources`.
    visit, detector : int
        The ids the fitter keys the CCD by (they must match ``wcs.parquet``).

    Returns
    -------
    pyarrow.Table
        Columns ``visit``, ``detector``, ``x``, ``y``, ``x_err``, ``y_err``, ``xy_cov``,
        ``flux``, ``flux_err``, ``flags`` (see :func:`jointcal_ap.fit.io.read_parquet_survey`),
        with the FWHM, aperture radius and options in the schema metadata. Concatenate
        the tables of all CCDs (``pyarrow.concat_tables``) and write ``sources.parquet``.
    """
    import json

    import pyarrow as pa

    det = detect_sources(image, variance, mask, options=options, **overrides)
    table = pa.table(det.sources_columns(visit, detector))
    meta = {"fwhm_px": det.fwhm_px, "fwhm_estimated": det.fwhm_estimated,
            "aperture_radius_px": det.aperture_radius_px, "options": det.options.to_dict()}
    return table.replace_schema_metadata({"jointcal_ap.detect": json.dumps(meta)})

