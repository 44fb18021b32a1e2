"""Mask helpers: growing bit planes by a kernel footprint, and the unusable-pixel test."""

from __future__ import annotations

import numpy as np

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
    """Boolean dilation by a (2·half+1)² square.

    Separable, and along each axis by doubling shifts (a window of 1, 2, 4 … pixels ORed
    with itself shifted): a few whole-array ORs on contiguous slices, much faster than a
    maximum filter along axis 0 or a transpose.
    """
    out = np.array(plane, dtype=bool, copy=True)
    for axis in (0, 1):
        out = _dilate_axis(out, int(half), axis)
    return out


def _dilate_axis(a: np.ndarray, half: int, axis: int) -> np.ndarray:
    """OR over a centred window of 2·half + 1 along ``axis``."""
    if half <= 0:
        return a
    n = a.shape[axis]
    win = 2 * half + 1

    def sl(start, stop):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, stop)
        return tuple(idx)

    # w[i] = OR of a[i : i + width] (width grows by doubling up to win)
    w = a.copy()
    width = 1
    while width * 2 <= win:
        w[sl(0, n - width)] |= w[sl(width, n)]
        width *= 2
    if width < win:                      # top up to exactly win with a shifted copy
        rest = win - width
        w2 = w.copy()
        w2[sl(0, n - rest)] |= w[sl(rest, n)]
        w = w2
    # centre the window: out[i] = OR a[i - half : i + half + 1] = w[i - half]
    out = np.zeros_like(a)
    out[sl(half, n)] = w[sl(0, n - half)]
    # the first `half` outputs see a window truncated at 0: OR of a[0 : i + half + 1]
    head = np.logical_or.accumulate(a[sl(0, min(n, 2 * half + 1))], axis=axis)
    out[sl(0, min(half, n))] = head[sl(half, min(n, 2 * half))] if n > half else head[sl(n - 1, n)]
    return out


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
