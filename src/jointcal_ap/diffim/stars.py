"""Fast background and bright-star finding for PSF fitting and kernel stamps (NumPy only).

These are deliberately simple and fast (a 4096² image in a fraction of a second): a
mesh-median background, a 3 × 3 box-filtered S/N image, local maxima above a threshold,
windowed first and second moments, isolation from every other peak above a lower
threshold, and saturation / bad-pixel flags from the mask and an optional level. Full
single-frame measurement is :func:`jointcal_ap.detect.detect_sources`.

Pixel coordinates are 1-based.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from jointcal_ap.diffim.fields import GridField

__all__ = ["StarSearch", "Stars", "find_stars", "mesh_background", "robust_sigma", "search_stars"]

#: Mask planes (LSST bits) that make a pixel unusable for stamps.
UNUSABLE_BITS = (1 << 0) | (1 << 8)            # BAD, NO_DATA
SATURATED_BITS = 1 << 1                         # SAT
EDGE_BITS = 1 << 4                              # EDGE


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 × the median absolute deviation of the finite values (NaN if none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _row_median(data: np.ndarray) -> np.ndarray:
    """Median of each row's finite values (NaN for a row with none), vectorised."""
    finite = np.isfinite(data)
    full = finite.all(axis=1)
    med = np.empty(len(data), data.dtype)
    if full.any():
        med[full] = np.median(data[full], axis=1)
    if not full.all():
        part = data[~full]
        srt = np.sort(part, axis=1)                 # NaN sort last
        cnt = finite[~full].sum(axis=1)
        rows = np.arange(len(part))
        lo = np.clip((cnt - 1) // 2, 0, data.shape[1] - 1)
        hi = np.clip(cnt // 2, 0, data.shape[1] - 1)
        m = 0.5 * (srt[rows, lo] + srt[rows, hi])
        m[cnt == 0] = np.nan
        med[~full] = m
    return med


def mesh_background(image: np.ndarray, usable: np.ndarray | None = None, *, mesh_px: int = 128,
                    step: int = 4) -> tuple[GridField, GridField]:
    """A sigma-clipped mesh median background and its rms, as bilinear :class:`GridField`s.

    Each mesh of ``mesh_px`` pixels (sub-sampled every ``step`` pixels for speed) gives the
    median and 1.4826·MAD of its usable finite pixels after one 3σ clip; meshes with too few
    pixels take the median of the others.
    """
    ny, nx = image.shape
    m = int(max(8, min(mesh_px, ny, nx)))
    cy, cx = max(1, ny // m), max(1, nx // m)
    my, mx = ny // cy, nx // cx
    oy, ox = (ny - cy * my) // 2, (nx - cx * mx) // 2
    block = np.asarray(image[oy:oy + cy * my:step, ox:ox + cx * mx:step], np.float32)
    by, bx = block.shape[0] // cy, block.shape[1] // cx
    block = block[:cy * by, :cx * bx].reshape(cy, by, cx, bx).transpose(0, 2, 1, 3).reshape(cy * cx, by * bx)
    good = np.isfinite(block)
    if usable is not None:
        ub = np.asarray(usable[oy:oy + cy * my:step, ox:ox + cx * mx:step])[:cy * by, :cx * bx]
        good &= ub.reshape(cy, by, cx, bx).transpose(0, 2, 1, 3).reshape(cy * cx, by * bx)
    data = np.where(good, block, np.nan)
    med = _row_median(data)
    sig = 1.4826 * _row_median(np.abs(data - med[:, None]))
    with np.errstate(invalid="ignore"):
        clipped = np.where(np.abs(data - med[:, None]) <= 3.0 * sig[:, None], data, np.nan)
    med = _row_median(clipped)
    # the MAD of a 3σ-clipped normal is 0.9966 of the unclipped one
    sig = 1.4826 / 0.9966 * _row_median(np.abs(clipped - med[:, None]))
    n_good = np.sum(np.isfinite(clipped), axis=1)
    bad = (n_good < 0.1 * data.shape[1]) | ~np.isfinite(med) | ~np.isfinite(sig)
    if np.all(bad):
        med[:] = 0.0
        sig[:] = np.nan
    elif np.any(bad):
        med[bad] = np.median(med[~bad])
        sig[bad] = np.median(sig[~bad])
    xn = ox + (np.arange(cx) + 0.5) * mx + 0.5
    yn = oy + (np.arange(cy) + 0.5) * my + 0.5
    return (GridField((ny, nx), xn, yn, med.reshape(cy, cx)),
            GridField((ny, nx), xn, yn, sig.reshape(cy, cx)))


@dataclass(frozen=True)
class Stars:
    """Peaks found by :func:`find_stars` (1-based pixel positions).

    Attributes
    ----------
    x, y : ndarray
        Windowed centroids.
    ix, iy : ndarray of int
        0-based column and row of the peak pixel.
    snr : ndarray
        S/N of the 3 × 3 box sum at the peak.
    flux : ndarray
        Background-subtracted sum in a box of side ``2·radius + 1``.
    peak : ndarray
        Background-subtracted peak pixel value.
    ixx, iyy, ixy : ndarray
        Windowed second moments (pixels², the window's effect not removed).
    isolated : ndarray of bool
        No other peak above the lower threshold within ``isolation_px``.
    clean : ndarray of bool
        No saturated, bad, no-data or edge pixel (mask or level) in the box of
        ``clean_px`` about the peak, and the box is inside the image.
    """

    x: np.ndarray
    y: np.ndarray
    ix: np.ndarray
    iy: np.ndarray
    snr: np.ndarray
    flux: np.ndarray
    peak: np.ndarray
    ixx: np.ndarray
    iyy: np.ndarray
    ixy: np.ndarray
    isolated: np.ndarray
    clean: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def select(self, keep) -> Stars:
        keep = np.asarray(keep)
        return Stars(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})

    @property
    def fwhm(self) -> np.ndarray:
        """Gaussian-equivalent FWHM from the windowed moments, corrected for the window."""
        m = 0.5 * (self.ixx + self.iyy)
        return np.sqrt(np.where(m > 0, m, np.nan)) * 2.3548200450309493


def _box3(a: np.ndarray) -> np.ndarray:
    """3 × 3 box sum (zero beyond the border), separable."""
    s = a.copy()
    s[1:] += a[:-1]
    s[:-1] += a[1:]
    t = s.copy()
    t[:, 1:] += s[:, :-1]
    t[:, :-1] += s[:, 1:]
    return t


def _gather(arr: np.ndarray, iy: np.ndarray, ix: np.ndarray, r: int, fill=0.0) -> np.ndarray:
    """(n, 2r+1, 2r+1) boxes of ``arr`` about (iy, ix) (0-based), ``fill`` outside."""
    ny, nx = arr.shape
    off = np.arange(-r, r + 1)
    rows = iy[:, None] + off[None, :]
    cols = ix[:, None] + off[None, :]
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    out = arr[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, out, fill)


def find_stars(image: np.ndarray, variance: np.ndarray | None = None, mask: np.ndarray | None = None, *,
               threshold: float = 30.0, low_threshold: float = 5.0, radius: int = 6,
               isolation_px: float = 12.0, clean_px: int = 8, saturation: float | None = None,
               background: GridField | None = None, max_candidates: int = 200_000) -> Stars:
    """Local maxima of the S/N image (3 × 3 boxes of 2 × 2 binned pixels) above ``threshold``.

    Parameters
    ----------
    image, variance, mask : ndarray (ny, nx)
        The variance defaults to the mesh rms²; mask bits are LSST's (BAD, SAT, EDGE, NO_DATA).
    threshold, low_threshold : float
        S/N of the kept peaks, and of the peaks that spoil a neighbour's isolation.
    radius : int
        Half-size of the flux box and of the moment window (σ_w = radius / 2).
    isolation_px, clean_px : see :class:`Stars`.
    saturation : float, optional
        Pixel values at or above it count as saturated.
    background : GridField, optional
        Background to subtract (default :func:`mesh_background`).
    """
    img = np.asarray(image, np.float32)
    ny, nx = img.shape
    m = np.zeros(img.shape, np.int32) if mask is None else np.asarray(mask)
    finite = np.isfinite(img)
    usable = finite & ((m & UNUSABLE_BITS) == 0) if m.any() else finite
    all_usable = bool(usable.all())
    if background is None:
        background, rms = mesh_background(img, usable)
    else:
        rms = None
    if variance is None:
        if rms is None:
            _, rms = mesh_background(img, usable)
        var = rms.image() ** 2
    else:
        var = np.asarray(variance, np.float32)
    if not all_usable:
        img = np.where(usable, img, np.float32(np.nan))
    # 2 × 2 binned pixels (rows first: contiguous), minus the background at their centres;
    # unusable pixels count as 0 signal and infinite variance
    by, bx = ny // 2, nx // 2

    def binned(a: np.ndarray) -> np.ndarray:
        r = a[0:2 * by:2] + a[1:2 * by:2]
        return r[:, 0:2 * bx:2] + r[:, 1:2 * bx:2]

    bkg_b = 4.0 * GridField((by, bx), (np.asarray(background.x_nodes) - 0.5) / 2.0 + 0.5,
                            (np.asarray(background.y_nodes) - 0.5) / 2.0 + 0.5, background.values).image()
    sb = binned(img) - bkg_b
    vb = binned(var)
    bad_b = ~(np.isfinite(sb) & np.isfinite(vb))
    if bad_b.any():
        sb[bad_b] = 0.0
        vb[bad_b] = np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        snr_img = _box3(sb) / np.sqrt(_box3(vb))
    snr_img[~np.isfinite(snr_img)] = 0.0
    ny, nx = snr_img.shape
    cand = np.flatnonzero(snr_img > low_threshold)
    if cand.size > max_candidates:      # keep the strongest (a crowded or very deep image)
        cand = cand[np.argpartition(snr_img.ravel()[cand], -max_candidates)[-max_candidates:]]
    cy, cx = np.divmod(cand, nx)
    inner = (cy > 0) & (cy < ny - 1) & (cx > 0) & (cx < nx - 1)
    cy, cx = cy[inner], cx[inner]
    v = snr_img[cy, cx]
    is_max = np.ones(len(cy), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = snr_img[cy + dy, cx + dx]
                is_max &= (v > nb) | ((v == nb) & ((dy > 0) | ((dy == 0) & (dx > 0))))
    py, px, pv = cy[is_max], cx[is_max], v[is_max]
    # to full-resolution pixels: the brightest of each 2 × 2 block
    quad = np.stack([np.nan_to_num(img[2 * py + dy, 2 * px + dx], nan=-np.inf) for dy in (0, 1)
                     for dx in (0, 1)])
    k = np.argmax(quad, axis=0)
    py, px = 2 * py + k // 2, 2 * px + k % 2
    ny, nx = img.shape
    strong = pv >= threshold
    sy, sx = py[strong], px[strong]
    empty = np.zeros(0)
    if not sy.size:
        return Stars(empty, empty, empty.astype(int), empty.astype(int), empty, empty, empty, empty, empty,
                     empty, empty.astype(bool), empty.astype(bool))
    # isolation against every peak above the lower threshold
    tree = cKDTree(np.column_stack([px, py]))
    counts = np.array([len(c) for c in tree.query_ball_point(np.column_stack([sx, sy]), isolation_px)])
    isolated = counts <= 1
    # windowed moments and box flux
    level = background.at(sx + 1.0, sy + 1.0)
    stamp = np.nan_to_num(_gather(img, sy, sx, radius) - level[:, None, None])
    off = np.arange(-radius, radius + 1, dtype=float)
    sw = radius / 2.0
    mx = np.zeros(len(sy))
    my = np.zeros(len(sy))
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(6):          # windowed centroid: the window follows the estimate
            wx = np.exp(-0.5 * ((off[None, :] - mx[:, None]) / sw) ** 2)
            wy = np.exp(-0.5 * ((off[None, :] - my[:, None]) / sw) ** 2)
            sw_stamp = stamp * wy[:, :, None] * wx[:, None, :]
            tot = sw_stamp.sum(axis=(1, 2))
            nx_ = (sw_stamp * off[None, None, :]).sum(axis=(1, 2)) / tot
            ny_ = (sw_stamp * off[None, :, None]).sum(axis=(1, 2)) / tot
            mx = np.clip(np.nan_to_num(nx_), -1.5, 1.5)
            my = np.clip(np.nan_to_num(ny_), -1.5, 1.5)
        dxg = off[None, None, :] - mx[:, None, None]
        dyg = off[None, :, None] - my[:, None, None]
        mxx = (sw_stamp * dxg ** 2).sum(axis=(1, 2)) / tot
        myy = (sw_stamp * dyg ** 2).sum(axis=(1, 2)) / tot
        mxy = (sw_stamp * dxg * dyg).sum(axis=(1, 2)) / tot
        # undo the Gaussian window for a Gaussian source: 1/σ² = 1/σ_meas² − 1/σ_w²
        ixx = 1.0 / (1.0 / mxx - 1.0 / sw ** 2)
        iyy = 1.0 / (1.0 / myy - 1.0 / sw ** 2)
        ixy = mxy * np.sqrt(np.abs(ixx * iyy / (mxx * myy)))
        mx, my = nx_, ny_
    bad_shift = ~(np.abs(mx) < 1.5) | ~(np.abs(my) < 1.5)
    mx = np.where(bad_shift, 0.0, mx)
    my = np.where(bad_shift, 0.0, my)
    flux = stamp.sum(axis=(1, 2))
    # clean: inside, and no flagged pixel within clean_px
    bad_bits = UNUSABLE_BITS | SATURATED_BITS | EDGE_BITS
    flagged = (m & bad_bits) != 0
    if saturation is not None:
        flagged |= finite & (img >= saturation)
    flagged |= ~finite
    near = _gather(flagged, sy, sx, clean_px, fill=True).any(axis=(1, 2))
    clean = ~near & ~bad_shift & np.isfinite(ixx) & (ixx > 0) & np.isfinite(iyy) & (iyy > 0)
    return Stars(x=sx + 1.0 + mx, y=sy + 1.0 + my, ix=sx.astype(np.int64), iy=sy.astype(np.int64),
                 snr=pv[strong].astype(float), flux=flux,
                 peak=np.nan_to_num(img[sy, sx] - level).astype(float),
                 ixx=ixx, iyy=iyy, ixy=ixy, isolated=isolated, clean=clean)


@dataclass(frozen=True)
class StarSearch:
    """An image's mesh background and its peaks above 5σ, found as
    :func:`jointcal_ap.diffim.subtract` finds them (:func:`search_stars`).

    :func:`~jointcal_ap.diffim.build_template` keeps the coadd's on the
    :class:`~jointcal_ap.diffim.Template` (not written to its file), so that the PSF fit and
    the subtraction search the template once, not twice.
    """

    background: GridField
    stars: Stars


def search_stars(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, bad: np.ndarray, *,
                 saturation: float | None = None) -> StarSearch:
    """The mesh background on the pixels that are not ``bad`` (subtract() passes
    ``diffim.masks.unusable(mask, image, variance, planes=("BAD", "NO_DATA"))``), and
    :func:`find_stars` at 5σ on it.

    The peaks at S/N ≥ t (``stars.select(stars.snr >= t)``) are exactly what
    ``find_stars(threshold=t)`` with that background returns, for any t ≥ 5: every quantity
    is per peak, and the isolation is against every peak above 5σ either way.
    """
    background, _ = mesh_background(image, ~bad)
    return StarSearch(background, find_stars(image, variance, mask, threshold=5.0,
                                             saturation=saturation, background=background))
