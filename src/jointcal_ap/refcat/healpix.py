"""NESTED HEALPix indices of sky positions, in NumPy, bit for bit as healpy computes them.

The converter needs one HEALPix function, the NESTED pixel of (ra, dec) at order 29 (the
``_healpix_29`` spatial index). healpy has it, but importing healpy imports matplotlib
(about half a second in every process that converts); this is the same computation, the
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
"""

from __future__ import annotations

import numpy as np

__all__ = ["lonlat_to_nest"]

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
