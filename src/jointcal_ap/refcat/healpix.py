"""NESTED HEALPix in NumPy: the pixel of a sky position (bit for bit as healpy), and the
pixels a disc touches. Importing healpy imports matplotlib (about half a second per process),
so the refcat converter and every refcat query use these instead.

**The pixel of a position.** :func:`lonlat_to_nest` gives the NESTED pixel of (ra, dec) at
an order (the converter's ``_healpix_29`` spatial index is order 29). It is the same computation as the
``loc2pix`` of the HEALPix C++ library (Górski et al. 2005, ApJ 622, 759) that healpy
calls, written with NumPy on whole arrays:

- the position is turned into z = cos θ and the longitude in quarter turns, as healpy
  does for ``ang2pix(..., lonlat=True)`` (θ = π/2 − radians(dec), φ = radians(ra) taken
  into [0, 2π); sin θ is used near the poles);
- the equatorial zone (|z| ≤ 2/3) and the polar caps give the base pixel and the
  (x, y) position inside it, along the two families of edge lines;
- the NESTED index interleaves the bits of x (even bits) and y (odd bits) after the base pixel.

``tests/test_refcat_healpix.py`` checks it against healpy on millions of random positions
and on pixel boundaries, the poles and ra = 0/360.

>>> int(lonlat_to_nest(np.array([45.0]), np.array([30.0]), 29)[0])
61549194907396778

**The pixels of a disc.** :func:`query_disc` returns every NESTED pixel of an order that may touch a disc: a
superset of ``healpy.query_disc(..., inclusive=True, nest=True)`` (the tests check it), found
by refining from order 0 and keeping the pixels whose centre is within the radius plus a
bound on the pixel's size (a fit makes one query per exposure).

>>> import numpy as np
>>> pix = query_disc(3, np.array([1.0, 0.0, 0.0]), np.radians(1.0))
>>> bool(np.all(np.diff(pix) > 0)), len(pix) <= 4
(True, True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["lonlat_to_nest", "max_pixel_radius", "pixel_centres", "query_disc"]

_INV_HALFPI = 0.6366197723675813430755350534900574
_TWOTHIRD = 2.0 / 3.0


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Move bit k of each value (< 2**32) to bit 2k."""
    v = v.astype(np.uint64)
    v = (v | (v << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v | (v << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    v = (v | (v << np.uint64(2))) & np.uint64(0x3333333333333333)
    v = (v | (v << np.uint64(1))) & np.uint64(0x5555555555555555)
    return v.astype(np.int64)


def _fmodulo(v: np.ndarray, m: float) -> np.ndarray:
    """``v`` taken into [0, m), exactly as the C++ library's ``fmodulo``."""
    out = np.where(v < m, v, np.fmod(v, m))
    negative = v < 0
    if negative.any():
        wrapped = np.fmod(v[negative], m) + m
        out[negative] = np.where(wrapped == m, 0.0, wrapped)
    return out


def _quarter_turns(phi: np.ndarray) -> np.ndarray:
    """The longitude in quarter turns, in [0, 4): healpy first normalises phi into
    [0, 2π) (``pointing::normalize``), then the library takes phi / (π/2) modulo 4."""
    return _fmodulo(_fmodulo(phi, 2.0 * np.pi) * _INV_HALFPI, 4.0)


def lonlat_to_nest(ra_deg: np.ndarray, dec_deg: np.ndarray, order: int) -> np.ndarray:
    """NESTED HEALPix index at ``order`` of each (ra, dec) in degrees, as
    ``healpy.ang2pix(2**order, ra, dec, nest=True, lonlat=True)``.

    Parameters
    ----------
    ra_deg, dec_deg : ndarray
        Degrees; ``dec`` in [-90, 90] (finite), ``ra`` any finite value.
    order : int
        0 to 29.

    Returns
    -------
    ndarray of int64
    """
    if not 0 <= order <= 29:
        raise ValueError(f"order must be in 0..29, got {order}")
    nside = 1 << order
    theta = np.pi / 2.0 - np.radians(np.asarray(dec_deg, dtype=np.float64))
    phi = np.radians(np.asarray(ra_deg, dtype=np.float64))
    z = np.cos(theta)
    za = np.abs(z)
    tt = _quarter_turns(phi)
    pix = np.empty(z.shape, dtype=np.int64)

    equator = za <= _TWOTHIRD
    if equator.any():
        ze, te = z[equator], tt[equator]
        temp1 = nside * (0.5 + te)
        temp2 = nside * (ze * 0.75)
        jp = (temp1 - temp2).astype(np.int64)  # index of the ascending edge line
        jm = (temp1 + temp2).astype(np.int64)  # index of the descending edge line
        ifp, ifm = jp >> order, jm >> order
        face = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
        ix = jm & (nside - 1)
        iy = nside - (jp & (nside - 1)) - 1
        pix[equator] = (face << (2 * order)) + _spread_bits(ix) + (_spread_bits(iy) << 1)

    polar = ~equator
    if polar.any():
        zp, zap, tp_all, thp = z[polar], za[polar], tt[polar], theta[polar]
        ntt = np.minimum(3, tp_all.astype(np.int64))
        tp = tp_all - ntt
        # Within 0.01 rad of a pole healpy passes sin(theta) and uses it where |z| >= 0.99.
        near_pole = (thp < 0.01) | (thp > 3.14159 - 0.01)
        with np.errstate(invalid="ignore"):
            tmp = np.where(near_pole & (zap >= 0.99), nside * np.sin(thp) / np.sqrt((1.0 + zap) / 3.0),
                           nside * np.sqrt(3 * (1 - zap)))
        jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)  # increasing edge line index
        jm = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nside - 1)  # decreasing edge line index
        north = zp >= 0
        face = np.where(north, ntt, ntt + 8)
        ix = np.where(north, nside - jm - 1, jp)
        iy = np.where(north, nside - jp - 1, jm)
        pix[polar] = (face << (2 * order)) + _spread_bits(ix) + (_spread_bits(iy) << 1)
    return pix

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
