"""The smooth sky background: a mesh of sigma-clipped statistics, median-filtered and splined.

:func:`estimate_background` returns a :class:`Background` (level, rms and the variance of the
level itself, per pixel). :func:`jointcal_ap.detect.detect_sources` calls it twice: once with
SExtractor's mode estimator (robust to the sources) for detection, then with the sources
masked and the clipped mean for measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.stats import norm

from jointcal_ap.detect.options import _UNUSABLE, DetectionError

__all__ = ["Background", "estimate_background"]


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
