"""The little NESTED HEALPix geometry a refcat query needs, in NumPy (no healpy import).

:func:`query_disc` returns every NESTED pixel of an order that may touch a disc: a
superset of ``healpy.query_disc(..., inclusive=True, nest=True)`` (the tests check it), found
by refining from order 0 and keeping the pixels whose centre is within the radius plus a
bound on the pixel's size. Importing healpy costs most of a second (it imports matplotlib);
a fit makes one query per exposure.

>>> import numpy as np
>>> pix = query_disc(3, np.array([1.0, 0.0, 0.0]), np.radians(1.0))
>>> bool(np.all(np.diff(pix) > 0)), len(pix) <= 4
(True, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["max_pixel_radius", "pixel_centres", "query_disc"]

# Base pixels: the ring of each face's southernmost corner and its longitude index.
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)


def _compact_bits(v: np.ndarray) -> np.ndarray:
    """The even bits of v, packed together (inverse of interleaving with zeros)."""
    v = v & 0x5555555555555555
    v = (v | (v >> 1)) & 0x3333333333333333
    v = (v | (v >> 2)) & 0x0F0F0F0F0F0F0F0F
    v = (v | (v >> 4)) & 0x00FF00FF00FF00FF
    v = (v | (v >> 8)) & 0x0000FFFF0000FFFF
    return (v | (v >> 16)) & 0x00000000FFFFFFFF


def pixel_centres(order: int, pixels: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) of the centres of NESTED pixels of ``order``."""
    pix = np.asarray(pixels, dtype=np.int64)
    nside = 1 << order
    face = pix >> (2 * order)
    within = pix & (nside * nside - 1)
    ix, iy = _compact_bits(within), _compact_bits(within >> 1)
    jr = _JRLL[face] * nside - ix - iy - 1  # ring number, 1 … 4·nside − 1
    north, south = jr < nside, jr > 3 * nside
    nr = np.where(north, jr, np.where(south, 4 * nside - jr, nside))
    z = np.where(north, 1.0 - nr * nr / (3.0 * nside * nside),
                 np.where(south, -1.0 + nr * nr / (3.0 * nside * nside), (2 * nside - jr) * 2.0 / (3.0 * nside)))
    kshift = np.where(north | south, 0, (jr - nside) & 1)
    jp = (_JPLL[face] * nr + ix - iy + 1 + kshift) // 2
    jp = np.where(jp > 4 * nr, jp - 4 * nr, np.where(jp < 1, jp + 4 * nr, jp))
    phi = (jp - (kshift + 1) * 0.5) * (0.5 * np.pi / nr)
    s = np.sqrt(np.maximum(0.0, (1.0 - z) * (1.0 + z)))
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=-1)


def max_pixel_radius(order: int) -> float:
    """An upper bound (radians) on the angle between a pixel's centre and any of its points.

    1.05 × the square root of the pixel area (healpy's exact ``max_pixrad`` is at most 1.0446×
    that, for every order).
    """
    return 1.05 * np.sqrt(4.0 * np.pi / (12.0 * 4.0**order))


def query_disc(order: int, centre: np.ndarray, radius_rad: float) -> np.ndarray:
    """Sorted NESTED pixels of ``order`` that may overlap the disc (``centre``: unit vector)."""
    centre = np.asarray(centre, dtype=np.float64)
    centre = centre / np.linalg.norm(centre)
    pixels = np.arange(12, dtype=np.int64)
    for level in range(order + 1):
        if level:
            pixels = (pixels[:, None] * 4 + np.arange(4)[None, :]).ravel()
        limit = radius_rad + max_pixel_radius(level)
        if limit >= np.pi:
            continue
        cos_sep = pixel_centres(level, pixels) @ centre
        pixels = pixels[cos_sep >= np.cos(limit)]
    return pixels
