"""Which Solar System objects can be on a detector: a coarse sky index, then exact tests.

Predicting a million orbits for each of a visit's ~200 detectors would be wasteful; the
objects move slowly compared with a night. So:

1. :class:`SkyIndex` predicts the whole catalog once, at a reference time of the night,
   *from the geocentre*, and keeps each object's position, apparent rate and maximum
   topocentric parallax (asin(R⊕/Δ)) in KD-trees of unit vectors, one per band of rates.
2. :meth:`SkyIndex.candidates` finds, for a region at another time, the objects whose
   reference position is within ``radius + margin + slack`` of the region's centre, with
   ``slack = 1.5·rate·|Δt| + parallax + 0.05°``: a bound on how far each can have moved
   (the factor 1.5 and 0.05° absorb the change of rate over |Δt| ≲ 1 day).
3. :func:`objects_in_region` predicts those candidates exactly (topocentric, at the
   region's time) and keeps the ones inside the region, grown by ``margin``
   (:func:`in_region`).

Regions are :class:`~jointcal_ap.stages.interfaces.SkyCircle` and
:class:`~jointcal_ap.stages.interfaces.SkyPolygon` (convex, vertices in either order).
:func:`detector_polygon` makes the polygon of a detector from its pixel → sky mapping.

>>> from jointcal_ap.stages.interfaces import SkyCircle, SkyPolygon
>>> import numpy as np
>>> square = SkyPolygon(((359.5, -0.5), (0.5, -0.5), (0.5, 0.5), (359.5, 0.5)))
>>> in_region(np.array([0.0, 359.6, 1.0]), np.array([0.0, 0.4, 0.0]), square).tolist()
[True, True, False]
>>> in_region(np.array([0.55]), np.array([0.0]), square, margin_deg=0.1).tolist()
[True]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.simulate._geometry import unit_vector
from jointcal_ap.sso.ephemeris import Ephemerides, predict, predict_at
from jointcal_ap.sso.observer import PlanetaryEphemeris, Site, observer_states, parse_site
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.stages.interfaces import SkyCircle, SkyPolygon, SkyRegion

__all__ = [
    "SkyIndex",
    "detector_polygon",
    "in_region",
    "objects_in_region",
    "region_cone",
]

_EARTH_RADIUS_AU = 6378.137 / 149_597_870.700
_RATE_BANDS = (0.0, 0.5, 2.0, 10.0, math.inf)  # deg/day
_RATE_SAFETY = 1.5
_SLACK_DEG = 0.05


def region_cone(region: SkyRegion) -> tuple[float, float, float]:
    """A cone (ra, dec, radius in degrees) that contains the region."""
    if isinstance(region, SkyCircle):
        return region.ra, region.dec, region.radius
    if isinstance(region, SkyPolygon):
        verts = unit_vector(*np.asarray(region.vertices, float).T)
        centre = verts.sum(axis=0)
        centre /= np.linalg.norm(centre)
        radius = np.degrees(np.arccos(np.clip(verts @ centre, -1.0, 1.0)).max())
        ra = math.degrees(math.atan2(centre[1], centre[0])) % 360.0
        dec = math.degrees(math.asin(np.clip(centre[2], -1.0, 1.0)))
        return ra, dec, float(radius)
    raise TypeError(f"expected a SkyCircle or SkyPolygon, got {type(region).__name__}")


def in_region(ra_deg: Any, dec_deg: Any, region: SkyRegion, *, margin_deg: float = 0.0) -> np.ndarray:
    """Whether points (degrees) lie in ``region`` grown by ``margin_deg``.

    For polygons a point is kept when it is on the inner side of every edge's great
    circle, or less than ``margin_deg`` outside it (near corners this grows the polygon
    slightly more than a true buffer: a conservative superset).
    """
    p = unit_vector(np.asarray(ra_deg, float), np.asarray(dec_deg, float))
    if isinstance(region, SkyCircle):
        c = unit_vector(region.ra, region.dec)
        return p @ c >= math.cos(math.radians(min(region.radius + margin_deg, 180.0)))
    if not isinstance(region, SkyPolygon):
        raise TypeError(f"expected a SkyCircle or SkyPolygon, got {type(region).__name__}")
    verts = unit_vector(*np.asarray(region.vertices, float).T)
    centre = verts.sum(axis=0)
    normals = np.cross(verts, np.roll(verts, -1, axis=0))
    normals /= np.linalg.norm(normals, axis=1)[:, None]
    normals *= np.sign(normals @ centre)[:, None]  # inner side positive, whatever the order
    return np.all(p @ normals.T >= -math.sin(math.radians(margin_deg)), axis=-1)


def detector_polygon(pixel_to_sky: Callable[[Any, Any], tuple[Any, Any]], width: int,
                     height: int) -> SkyPolygon:
    """The sky polygon of a ``width`` × ``height`` detector from its pixel → sky mapping.

    ``pixel_to_sky(x, y)`` takes the project's **1-based** pixel coordinates (the centre of
    ``image[0, 0]`` is (1, 1), as :meth:`CalibratedExposure.pixel_to_sky`) and returns
    (ra, dec) in degrees; the polygon runs through the outer pixel edges.
    """
    x = np.array([0.5, width + 0.5, width + 0.5, 0.5])
    y = np.array([0.5, 0.5, height + 0.5, height + 0.5])
    ra, dec = pixel_to_sky(x, y)
    return SkyPolygon(tuple((float(r), float(d)) for r, d in zip(np.ravel(ra), np.ravel(dec),
                                                                  strict=True)))


@dataclass(frozen=True)
class SkyIndex:
    """Geocentric positions of a whole catalog at a reference time, for fast region queries.

    Build with :meth:`build`; query with :meth:`candidates`. Meant for times within about a
    day of the reference (build one per night).

    Attributes
    ----------
    mjd_tai : float
        The reference time.
    ra, dec, rate, parallax : ndarray
        Degrees, degrees, deg/day, degrees (per object).
    bands : tuple of (indices, tree, max_rate, max_parallax)
        One KD-tree of unit vectors per band of rates.
    """

    mjd_tai: float
    ra: np.ndarray
    dec: np.ndarray
    rate: np.ndarray
    parallax: np.ndarray
    bands: tuple[tuple[np.ndarray, Any, float, float], ...]

    @classmethod
    def build(cls, orbits: Orbits, mjd_tai: float, *,
              ephemeris: PlanetaryEphemeris | None = None) -> SkyIndex:
        """Predict ``orbits`` from the geocentre at ``mjd_tai`` and index the positions."""
        from scipy.spatial import cKDTree

        eph = predict(orbits, mjd_tai, "geocenter", ephemeris=ephemeris)
        ra, dec, rate = eph["ephRa"], eph["ephDec"], eph["ephRate"]
        parallax = np.degrees(np.arcsin(np.clip(_EARTH_RADIUS_AU / eph["topoRange"], 0.0, 1.0)))
        vec = unit_vector(ra, dec)
        bands = []
        for lo, hi in itertools.pairwise(_RATE_BANDS):
            idx = np.flatnonzero((rate >= lo) & (rate < hi))
            if idx.size:
                bands.append((idx, cKDTree(vec[idx]), float(rate[idx].max()),
                              float(parallax[idx].max())))
        return cls(float(mjd_tai), ra, dec, rate, parallax, tuple(bands))

    def __len__(self) -> int:
        return int(self.ra.shape[0])

    def candidates(self, region: SkyRegion, mjd_tai: float, *, margin_deg: float = 0.0) -> np.ndarray:
        """Indices (sorted) of the objects that can be inside ``region`` (grown by
        ``margin_deg``) at ``mjd_tai``; a superset, to be predicted exactly."""
        ra0, dec0, radius = region_cone(region)
        centre = unit_vector(ra0, dec0)
        dt = abs(float(mjd_tai) - self.mjd_tai)
        found = []
        for idx, tree, max_rate, max_parallax in self.bands:
            reach = radius + margin_deg + _RATE_SAFETY * max_rate * dt + max_parallax + _SLACK_DEG
            if reach >= 180.0:
                hits = np.arange(idx.size)
            else:
                chord = 2.0 * math.sin(math.radians(reach) / 2.0)
                hits = np.asarray(tree.query_ball_point(centre, chord), dtype=np.int64)
            if hits.size == 0:
                continue
            obj = idx[hits]
            # each object's own bound
            own = radius + margin_deg + _RATE_SAFETY * self.rate[obj] * dt + self.parallax[obj] \
                + _SLACK_DEG
            cosd = unit_vector(self.ra[obj], self.dec[obj]) @ centre
            found.append(obj[cosd >= np.cos(np.radians(np.minimum(own, 180.0)))])
        return np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)


def objects_in_region(orbits: Orbits, region: SkyRegion, mjd_tai: float,
                      site: Site | str = "rubin", *, margin_deg: float = 0.01,
                      index: SkyIndex | None = None,
                      ephemeris: PlanetaryEphemeris | None = None) -> tuple[np.ndarray, Ephemerides]:
    """The objects inside ``region`` (grown by ``margin_deg``) at ``mjd_tai``, predicted
    exactly from ``site``.

    Parameters
    ----------
    orbits : Orbits
    region : SkyCircle or SkyPolygon
        E.g. a detector's footprint (:func:`detector_polygon`).
    mjd_tai : float
        The visit's mid-exposure time (MJD TAI).
    site : Site or str
    margin_deg : float
        Grows the region (objects just off the edge whose detections straddle it; also
        covers the motion between the prediction time and each source's time).
    index : SkyIndex, optional
        A coarse index of the whole catalog for the night; without it every object is
        predicted (fine for small catalogs).
    ephemeris : PlanetaryEphemeris, optional

    Returns
    -------
    indices : ndarray of int
        Rows of ``orbits`` inside the region.
    ephemerides : Ephemerides
        Their predictions (same order).
    """
    site = parse_site(site)
    rows = np.arange(len(orbits)) if index is None else index.candidates(
        region, mjd_tai, margin_deg=margin_deg)
    if rows.size == 0:
        return rows, Ephemerides.empty()
    subset = orbits if rows.size == len(orbits) else orbits.take(rows)
    eph = predict_at(subset, observer_states(site, np.array([float(mjd_tai)]), ephemeris))
    keep = in_region(eph["ephRa"], eph["ephDec"], region, margin_deg=margin_deg)
    return rows[keep], eph.take(keep)
