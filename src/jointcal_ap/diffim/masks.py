"""Mask helpers: growing bit planes by a kernel footprint, and the unusable-pixel test."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jointcal_ap.diffim.image import MASK_BITS

__all__ = ["GROWN_PLANES", "UNUSABLE_PLANES", "bits", "border", "dilate", "grow", "unusable"]

#: Planes that make a pixel unusable for fitting and statistics.
UNUSABLE_PLANES = ("BAD", "SAT", "NO_DATA", "EDGE", "CR", "SUSPECT")
#: Planes grown by a kernel footprint when their image is convolved.
GROWN_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "SUSPECT", "NO_DATA")


def bits(planes) -> int:
    """The OR of the named planes' bits."""
    out = 0
    for p in planes:
        out |= MASK_BITS[p]
    return out


def unusable(mask: np.ndarray, image: np.ndarray | None = None, variance: np.ndarray | None = None,
             planes=UNUSABLE_PLANES) -> np.ndarray:
    """True where a pixel is masked in ``planes`` or its image/variance is not finite."""
    bad = (mask & bits(planes)) != 0
    if image is not None:
        bad |= ~np.isfinite(image)
    if variance is not None:
        bad |= ~(np.isfinite(variance) & (variance >= 0))
    return bad


def dilate(plane: np.ndarray, half: int) -> np.ndarray:
    """Boolean dilation by a (2·half+1)² square (two 1-D maximum filters along rows, the
    second on the transpose: a filter along axis 0 is several times slower)."""
    size = 2 * int(half) + 1
    u = np.ascontiguousarray(plane, dtype=bool).view(np.uint8)
    a = ndimage.maximum_filter1d(u, size, axis=1)
    a = ndimage.maximum_filter1d(np.ascontiguousarray(a.T), size, axis=1)
    return np.ascontiguousarray(a.T).view(bool)


def grow(mask: np.ndarray, half: int, planes=GROWN_PLANES) -> np.ndarray:
    """A copy of ``mask`` whose ``planes`` are dilated by a (2·half+1)² square."""
    out = np.array(mask, np.int32, copy=True)
    if half <= 0:
        return out
    present = int(np.bitwise_or.reduce(out, axis=None)) if out.size else 0
    for p in planes:
        b = MASK_BITS[p]
        if present & b:
            out[dilate((out & b) != 0, half)] |= np.int32(b)
    return out


def border(shape: tuple[int, int], width: int) -> np.ndarray:
    """True within ``width`` pixels of the image border."""
    b = np.zeros(shape, bool)
    if width > 0:
        w = int(width)
        b[:w] = b[-w:] = True
        b[:, :w] = b[:, -w:] = True
    return b
