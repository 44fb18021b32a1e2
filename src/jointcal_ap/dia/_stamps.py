"""Square cutouts about many pixels at once, and the footprints of sources in them.

All positions here are 0-based array positions: ``image[iy, ix]``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["Cutouts", "footprints", "smoothed_significance"]


class Cutouts:
    """The geometry of ``n`` square ``size × size`` cutouts centred on pixels (ix, iy).

    Cutout pixel ``[k, j, i]`` is image pixel ``[iy[k] - size//2 + j, ix[k] - size//2 + i]``;
    :attr:`inside` says which of them lie on the image.
    """

    def __init__(self, ix: np.ndarray, iy: np.ndarray, size: int, shape: tuple[int, int]):
        self.ix = np.asarray(ix, np.int64)
        self.iy = np.asarray(iy, np.int64)
        self.size = int(size)
        self.half = self.size // 2
        ny, nx = shape
        offsets = np.arange(self.size) - self.half
        rows = self.iy[:, None] + offsets[None, :]
        cols = self.ix[:, None] + offsets[None, :]
        row_in = (rows >= 0) & (rows < ny)
        col_in = (cols >= 0) & (cols < nx)
        self.inside = row_in[:, :, None] & col_in[:, None, :]
        self._flat = (np.clip(rows, 0, ny - 1)[:, :, None] * nx
                      + np.clip(cols, 0, nx - 1)[:, None, :])
        self.shape = (int(ny), int(nx))

    def __len__(self) -> int:
        return len(self.ix)

    def take(self, array: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """The cutouts of ``array`` (n, size, size); ``fill`` off the image."""
        out = np.ravel(array)[self._flat]
        out[~self.inside] = fill
        return out

    def origin(self) -> tuple[np.ndarray, np.ndarray]:
        """0-based (x, y) of each cutout's pixel ``[0, 0]``."""
        return self.ix - self.half, self.iy - self.half


def smoothed_significance(data: np.ndarray, variance: np.ndarray, usable: np.ndarray,
                          sigma: float) -> np.ndarray:
    """Significance of each pixel after smoothing by a Gaussian of ``sigma`` pixels.

    ``(G ⊗ D) / sqrt(G² ⊗ V)`` per cutout (axis 0 is not smoothed), with unusable pixels
    left out; the Gaussian stands in for the PSF (a matched filter for footprints).
    """
    d = np.where(usable, data, 0.0)
    v = np.where(usable, variance, 0.0)
    num = ndimage.gaussian_filter(d, (0, sigma, sigma), mode="constant", truncate=3.0)
    # G_σ² = G_{σ/√2} / (4πσ²): the variance of the smoothed noise.
    den = ndimage.gaussian_filter(v, (0, sigma / math.sqrt(2), sigma / math.sqrt(2)),
                                  mode="constant", truncate=3.0) / (4 * math.pi * sigma * sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = num / np.sqrt(den)
    return np.where(den > 0, sig, 0.0)


_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True  # 8-connected within a cutout, never across cutouts


def footprints(significance: np.ndarray, usable: np.ndarray, threshold: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The footprint of the source at the centre of each cutout.

    The footprint is the 8-connected set of usable pixels with ``|significance| ≥
    threshold`` that holds the most significant pixel of the central 3 × 3; when none of
    those reaches the threshold, it is the central 3 × 3 itself.

    Returns
    -------
    footprint : bool ndarray (n, size, size)
    bbox : int ndarray (n, 4)
        ``row_min, row_max, col_min, col_max`` (inclusive) in cutout pixels.
    touches_edge : bool ndarray (n,)
        The footprint reaches the cutout's border (the cutout may be too small).
    """
    n, size, _ = significance.shape
    h = size // 2
    above = (np.abs(significance) >= threshold) & usable
    labels, _ = ndimage.label(above, structure=_STRUCTURE)
    core = np.abs(significance[:, h - 1:h + 2, h - 1:h + 2]).reshape(n, 9)
    best = np.argmax(np.where(above[:, h - 1:h + 2, h - 1:h + 2].reshape(n, 9), core, -1.0), axis=1)
    seed = labels[np.arange(n), h - 1 + best // 3, h - 1 + best % 3]
    fp = (labels == seed[:, None, None]) & (seed > 0)[:, None, None]
    empty = seed == 0
    if np.any(empty):
        fp[empty, h - 1:h + 2, h - 1:h + 2] = True
    rows = np.any(fp, axis=2)
    cols = np.any(fp, axis=1)
    bbox = np.stack([np.argmax(rows, axis=1), size - 1 - np.argmax(rows[:, ::-1], axis=1),
                     np.argmax(cols, axis=1), size - 1 - np.argmax(cols[:, ::-1], axis=1)], axis=1)
    touches = (bbox[:, 0] == 0) | (bbox[:, 1] == size - 1) | (bbox[:, 2] == 0) | (bbox[:, 3] == size - 1)
    return fp, bbox, touches
