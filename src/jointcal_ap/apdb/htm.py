"""Hierarchical Triangular Mesh (HTM) pixel indices, vectorised over points.

Rubin's SQL APDB (``lsst-dax-apdb``) finds DiaObjects and DiaSources in a region through a
``pixelId`` column holding the HTM index of each row at level 20. We fill that column so
that ``dax_apdb`` can read a database we write; our own region reads use the HEALPix column
(:mod:`jointcal_ap.apdb.pixels`).

The mesh (Kunszt, Szalay & Thakar 2001): eight root triangles, ``S0..S3`` (indices 8-11,
southern hemisphere) and ``N0..N3`` (12-15), each split recursively into four children by
its edge midpoints; an index at level ``L`` is the root index followed by ``L`` base-4 child
digits. Child 0 keeps vertex 0, child 1 vertex 1, child 2 vertex 2, child 3 is the middle
triangle. A point inside the parent is placed by one triple product per corner child, in
that order, as in Rubin's ``lsst.sphgeom``; points within ~1e-16 rad of an edge may fall on
the other side of it than there (``sphgeom`` decides such ties in exact arithmetic), which a
region search through an envelope of touching pixels does not notice.

>>> import numpy as np
>>> int(htm_index(np.array([0.0]), np.array([90.0]), level=0)[0])   # the north pole is in N3
15
>>> htm_index(np.array([10.0, 200.0]), np.array([-30.0, 45.0]), level=3).tolist()
[519, 883]
"""

from __future__ import annotations

import numpy as np

__all__ = ["HTM_MAX_LEVEL", "htm_index"]

#: The deepest level whose index fits in a signed 64-bit integer with room to spare.
HTM_MAX_LEVEL = 24

_X, _Y, _Z = np.eye(3)
#: Root triangles (vertex 0, 1, 2) in index order S0, S1, S2, S3, N0, N1, N2, N3.
_ROOTS = np.array([
    [_X, -_Z, _Y], [_Y, -_Z, -_X], [-_X, -_Z, -_Y], [-_Y, -_Z, _X],
    [_X, _Z, -_Y], [-_Y, _Z, -_X], [-_X, _Z, _Y], [_Y, _Z, _X],
])


def _root(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Root triangle (0-7) of each unit vector, by the signs of its coordinates (points on
    the planes x=0 and y=0 are assigned as in ``lsst.sphgeom``)."""
    south = np.where(y > 0, np.where(x > 0, 0, 1),
                     np.where(y == 0, np.where(x >= 0, 0, 2), np.where(x < 0, 2, 3)))
    north = np.where(y > 0, np.where(x > 0, 7, 6),
                     np.where(y == 0, np.where(x >= 0, 7, 5), np.where(x < 0, 5, 4)))
    return np.where(z < 0, south, north)


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = a + b
    return m / np.sqrt((m * m).sum(axis=0))


def _left_of(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether ``p`` is left of (or on) the great circle from ``a`` to ``b``: p·(a×b) >= 0.

    Vectors are (3, n) arrays. At deep levels a, b and p are nearly parallel and the plain
    triple product loses most of its digits, so it is evaluated as (p−a)·(a×(b−a)), which
    is the same number (a·(a×d) = 0) computed from small, accurately formed differences.
    """
    e, d = p - a, b - a
    return (e[0] * (a[1] * d[2] - a[2] * d[1]) + e[1] * (a[2] * d[0] - a[0] * d[2])
            + e[2] * (a[0] * d[1] - a[1] * d[0])) >= 0


def htm_index(ra_deg: np.ndarray, dec_deg: np.ndarray, level: int = 20) -> np.ndarray:
    """HTM index (int64) at ``level`` of each (ra, dec) in degrees.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        ICRS coordinates in degrees (finite).
    level : int
        Subdivision level, 0-24 (``dax_apdb``'s default is 20).

    Raises
    ------
    ValueError
        A non-finite coordinate (the message gives its position) or a bad level.
    """
    if not 0 <= level <= HTM_MAX_LEVEL:
        raise ValueError(f"HTM level must be in 0..{HTM_MAX_LEVEL}, got {level}")
    ra = np.radians(np.asarray(ra_deg, float).ravel())
    dec = np.radians(np.asarray(dec_deg, float).ravel())
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        raise ValueError(f"htm_index: non-finite coordinate at position {int(np.argmax(bad))}")
    cosd = np.cos(dec)
    p = np.stack([cosd * np.cos(ra), cosd * np.sin(ra), np.sin(dec)])
    root = _root(*p)
    v0, v1, v2 = (_ROOTS[root, k].T.copy() for k in range(3))
    index = root.astype(np.int64) + 8
    for _ in range(level):
        m01, m12, m20 = _midpoint(v0, v1), _midpoint(v1, v2), _midpoint(v2, v0)
        # p is inside the parent, so one edge of the middle triangle decides each corner
        # child; what no corner takes is the middle child (3).
        c0 = _left_of(p, m01, m20)
        c1 = ~c0 & _left_of(p, m12, m01)
        c2 = ~c0 & ~c1 & _left_of(p, m20, m12)
        index = (index << 2) + np.where(c0, 0, np.where(c1, 1, np.where(c2, 2, 3)))
        v0, v1, v2 = (np.where(c0, v0, np.where(c1, v1, np.where(c2, v2, m12))),
                      np.where(c0, m01, np.where(c1, m12, np.where(c2, m20, m20))),
                      np.where(c0, m20, np.where(c1, m01, np.where(c2, m12, m01))))
    return index
