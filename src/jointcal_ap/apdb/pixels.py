"""The APDB's region index: a NESTED HEALPix pixel at order 29 on every positioned row.

``DiaObject``, ``DiaSource`` and ``DiaForcedSource`` carry ``_healpix_29`` (int64), the
NESTED HEALPix index at order 29 (pixels of about 0.4 milliarcsecond) of the row's
``ra``/``dec`` — the column HATS and LSDB sort by, so a region read is a handful of index
range scans: a region is covered by pixels at a coarser order (:data:`QUERY_ORDER`, or
finer for small regions), and each coarse pixel ``p`` at order ``k`` is the range
``[p << 2(29-k), (p+1) << 2(29-k))`` at order 29. The covering is inclusive, so rows near
the edge are read and then cut exactly by distance (circles) or by the polygon's edges.

>>> import numpy as np
>>> from jointcal_ap.stages.interfaces import SkyCircle
>>> import healpy as hp
>>> pix = int(healpix29(np.array([10.0]), np.array([-30.0]))[0])
>>> pix >> 2 * (29 - 6) == int(hp.ang2pix(1 << 6, 10.0, -30.0, nest=True, lonlat=True))  # parent
True
>>> ranges = region_ranges(SkyCircle(10.0, -30.0, 0.1))
>>> bool(np.all(ranges[:, 0] < ranges[:, 1]))
True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HEALPIX_ORDER", "QUERY_ORDER", "healpix29", "in_region", "region_ranges", "unit_vectors"]

#: Order of the ``_healpix_29`` column.
HEALPIX_ORDER = 29
#: Coarsest order used to cover a region (pixels of ~0.1 degree); small regions use a finer
#: one so that the covering stays tight.
QUERY_ORDER = 9


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors of (ra, dec) in degrees."""
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    cosd = np.cos(dec)
    return np.column_stack([cosd * np.cos(ra), cosd * np.sin(ra), np.sin(dec)])


def healpix29(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """NESTED HEALPix index at order 29 (int64) of each (ra, dec) in degrees (healpy's
    ``ang2pix``, bit for bit, without importing healpy: :mod:`jointcal_ap.refcat.healpix`)."""
    from jointcal_ap.refcat.healpix import lonlat_to_nest

    ra, dec = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    if ra.size == 0:
        return np.zeros(0, np.int64)
    return lonlat_to_nest(ra, dec, HEALPIX_ORDER)


def _region_order(region) -> int:
    """A covering order for ``region``: about ten pixels across its radius, at most 16,
    at least :data:`QUERY_ORDER` coarser."""
    from jointcal_ap.stages.interfaces import SkyCircle

    if isinstance(region, SkyCircle):
        radius = region.radius
    else:
        ra, dec = np.asarray(region.vertices, float).T
        centre = unit_vectors(ra, dec).mean(axis=0)
        centre /= np.linalg.norm(centre)
        radius = float(np.degrees(np.arccos(np.clip(unit_vectors(ra, dec) @ centre, -1, 1))).max())
    # HEALPix pixel size at order k is about 58.6 / 2**k degrees.
    order = math.floor(math.log2(58.6 / max(radius / 3.0, 1e-9)))
    return int(min(max(order, 3), 16)) if radius > 0 else 16


def region_ranges(region, order: int | None = None) -> np.ndarray:
    """Half-open ``_healpix_29`` ranges ``[lo, hi)`` (int64, shape (n, 2), merged and sorted)
    covering ``region`` (a :class:`~jointcal_ap.stages.interfaces.SkyCircle` or
    :class:`~jointcal_ap.stages.interfaces.SkyPolygon`)."""
    order = _region_order(region) if order is None else order
    pixels = np.asarray(region.healpix_pixels(order), np.int64)
    if pixels.size == 0:
        return np.zeros((0, 2), np.int64)
    shift = 2 * (HEALPIX_ORDER - order)
    pixels = np.unique(pixels)
    breaks = np.nonzero(np.diff(pixels) != 1)[0]
    starts = np.concatenate([[pixels[0]], pixels[breaks + 1]])
    ends = np.concatenate([pixels[breaks], [pixels[-1]]]) + 1
    return np.column_stack([starts << shift, ends << shift]).astype(np.int64)


def in_region(region, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Boolean mask: which (ra, dec) lie inside ``region`` (closed; a polygon is convex
    with its vertices in either orientation)."""
    from jointcal_ap.stages.interfaces import SkyCircle

    vec = unit_vectors(ra_deg, dec_deg)
    if vec.shape[0] == 0:
        return np.zeros(0, bool)
    if isinstance(region, SkyCircle):
        centre = unit_vectors(np.array([region.ra]), np.array([region.dec]))[0]
        return vec @ centre >= math.cos(math.radians(region.radius)) - 1e-15
    ra, dec = np.asarray(region.vertices, float).T
    verts = unit_vectors(ra, dec)
    normals = np.cross(verts, np.roll(verts, -1, axis=0))
    if np.dot(normals[0], verts.mean(axis=0)) < 0:  # clockwise: flip every edge
        normals = -normals
    return np.all(vec @ normals.T >= -1e-15, axis=1)
