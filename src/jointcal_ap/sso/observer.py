"""Where the observer and the Sun are: time scales, the JPL DE421 ephemeris, observatory sites.

Time scales
-----------
Inputs are MJD in **TAI** (Rubin's ``midpointMjdTai``). :func:`tai_to_tdb` converts them
to TDB, the argument of the planetary ephemeris and of the orbit propagation:
TT = TAI + 32.184 s exactly, and TDB − TT from ERFA's ``dtdb`` (the geocentric series of
Fairhead & Bretagnon; the topocentric terms, < 2 µs, are left out).

The ephemeris
-------------
:class:`PlanetaryEphemeris` reads JPL's DE421 (Folkner et al. 2008) from the file shipped
in the PyPI package ``skyfield-data`` with ``jplephem``: barycentric positions and
velocities of the Sun, the Earth (Earth–Moon barycentre + Earth) and the planetary
system barycentres, in the ICRF, converted to au and au/day. DE421 covers 1899-07-29 to
2053-10-09; other times raise :class:`EphemerisError`.

Sites
-----
:func:`parse_site` accepts ``rubin`` (the Simonyi Survey Telescope on Cerro Pachón,
MPC code X05: longitude −70.749417°, latitude −30.244639°, 2662.75 m above the WGS84
ellipsoid, as in astropy's site registry), ``geocenter`` (the Earth's centre, MPC code
500), or ``LON,LAT,HEIGHT`` (east longitude and geodetic latitude in degrees, height in
metres, WGS84). The site's geocentric position and velocity in the GCRS come from ERFA:
``pvtob`` (the site in the CIRS for the Earth rotation angle of UT1, with polar motion)
rotated by the inverse of the IAU 2006/2000A celestial-to-intermediate matrix
(``c2i06a``). UT1 − UTC and the pole coordinates come from the IERS Bulletin A file
bundled with astropy (``astropy-iers-data``), read explicitly (no download); beyond its
range the nearest tabulated values are used (UT1 − UTC then drifts by up to ~1 s a year:
≲ 0.5 km of site position, i.e. < 1 mas for objects beyond 0.1 au).

>>> import numpy as np
>>> from jointcal_ap.sso.observer import observer_states, parse_site
>>> obs = observer_states(parse_site("rubin"), np.array([60300.0]))
>>> au_from_earth = np.linalg.norm(obs.position - obs.earth_position, axis=1) * 1.495978707e8
>>> bool(6370 < au_from_earth[0] < 6380)     # km: the site is on the Earth's surface
True
"""

from __future__ import annotations

import functools
import math
import os
import warnings
import weakref
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.sso.constants import AU_KM, DAY_S, TT_MINUS_TAI_S
from jointcal_ap.sso.errors import EphemerisError, SiteError

__all__ = [
    "SITES",
    "ObserverStates",
    "PlanetaryEphemeris",
    "Site",
    "default_ephemeris",
    "observer_states",
    "parse_site",
    "tai_to_tdb",
]

_MJD0 = 2400000.5


@dataclass(frozen=True)
class Site:
    """An observatory on the Earth (or the geocentre).

    Attributes
    ----------
    name : str
    lon_deg, lat_deg : float
        East longitude and geodetic latitude (WGS84), degrees.
    height_m : float
        Height above the WGS84 ellipsoid, metres.
    geocentric : bool
        The Earth's centre (the other fields are ignored).
    """

    name: str
    lon_deg: float = 0.0
    lat_deg: float = 0.0
    height_m: float = 0.0
    geocentric: bool = False

    def __post_init__(self) -> None:
        values = (self.lon_deg, self.lat_deg, self.height_m)
        if not all(math.isfinite(v) for v in values) or not -90.0 <= self.lat_deg <= 90.0 \
                or not -12_000.0 <= self.height_m <= 100_000.0:
            raise SiteError(f"site {self.name!r}: longitude {self.lon_deg}, latitude "
                            f"{self.lat_deg}, height {self.height_m} m; expected finite "
                            f"degrees with -90 <= latitude <= 90 and a height in metres "
                            f"between -12000 and 100000")


#: Named sites accepted by :func:`parse_site`.
SITES: dict[str, Site] = {
    "rubin": Site("rubin", -70.749417, -30.244639, 2662.75),
    "x05": Site("rubin", -70.749417, -30.244639, 2662.75),
    "geocenter": Site("geocenter", geocentric=True),
    "500": Site("geocenter", geocentric=True),
}


def parse_site(text: str | Site) -> Site:
    """A :class:`Site` from ``rubin``, ``geocenter`` (or the MPC codes ``X05``, ``500``), or
    ``LON,LAT,HEIGHT`` (degrees, degrees, metres; WGS84).

    >>> parse_site("rubin").lat_deg, parse_site("-70.7,-30.2,2650").height_m
    (-30.244639, 2650.0)
    >>> parse_site("mauna kea")
    Traceback (most recent call last):
    ...
    jointcal_ap.sso.errors.SiteError: unknown site 'mauna kea'; expected one of ['500', 'geocenter', 'rubin', 'x05'] or LON,LAT,HEIGHT (degrees, degrees, metres)
    """
    if isinstance(text, Site):
        return text
    key = str(text).strip().lower()
    if key in SITES:
        return SITES[key]
    parts = key.split(",")
    if len(parts) == 3:
        try:
            lon, lat, height = (float(p) for p in parts)
        except ValueError:
            pass
        else:
            return Site(f"{lon},{lat},{height}", lon, lat, height)
    raise SiteError(f"unknown site {text!r}; expected one of {sorted(SITES)} or LON,LAT,HEIGHT "
                    f"(degrees, degrees, metres)")


def tai_to_tdb(mjd_tai: Any) -> np.ndarray:
    """MJD (TAI) → MJD (TDB): TT = TAI + 32.184 s, TDB − TT from ``erfa.dtdb`` (geocentric).

    >>> round((float(tai_to_tdb(60000.0)) - 60000.0) * 86400.0, 4)   # seconds
    32.1853
    """
    import erfa

    tai = np.asarray(mjd_tai, dtype=float)
    tt = tai + TT_MINUS_TAI_S / DAY_S
    dtdb = erfa.dtdb(_MJD0, tt, 0.0, 0.0, 0.0, 0.0)
    return tt + dtdb / DAY_S


def _default_de421() -> Path:
    return Path(str(resources.files("skyfield_data").joinpath("data", "de421.bsp")))


class PlanetaryEphemeris:
    """Barycentric positions of the Sun, the Earth and the planets from a JPL SPK file.

    Parameters
    ----------
    path : path, optional
        A binary SPK (``.bsp``) file with the DE4xx planetary segments; default: DE421
        from ``skyfield-data``.

    Pickles by path (the file is re-opened), so it can travel to Dask workers.
    """

    #: NAIF ids of the bodies :meth:`barycentric` knows (planets: system barycentres).
    BODIES: ClassVar[dict[str, int]] = {"sun": 10, "mercury": 1, "venus": 2, "earth": 399, "moon": 301, "emb": 3,
              "mars": 4, "jupiter": 5, "saturn": 6, "uranus": 7, "neptune": 8, "pluto": 9}

    def __init__(self, path: str | os.PathLike[str] | None = None):
        from jplephem.spk import SPK

        self.path = Path(path) if path is not None else _default_de421()
        try:
            self._spk = SPK.open(str(self.path))
        except (OSError, ValueError) as exc:
            raise EphemerisError(f"{self.path}: cannot read the planetary ephemeris: {exc}") from None
        # close the file when this object goes (or at exit), without a ResourceWarning
        self._finalizer = weakref.finalize(self, self._spk.close)
        self._segments = {(s.center, s.target): s for s in self._spk.segments}
        for pair in ((0, 10), (0, 3), (3, 399)):
            if pair not in self._segments:
                raise EphemerisError(f"{self.path}: no segment {pair[0]} -> {pair[1]}; expected "
                                     f"a JPL DE planetary ephemeris (e.g. de421.bsp)")
        first = self._segments[(0, 10)]
        self.start_mjd = float(first.start_jd - _MJD0)
        self.end_mjd = float(first.end_jd - _MJD0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlanetaryEphemeris, (str(self.path),))

    def close(self) -> None:
        """Close the file (also done when the object is garbage-collected)."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"PlanetaryEphemeris({str(self.path)!r})"

    def _segment(self, center: int, target: int, mjd_tdb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg = self._segments[(center, target)]
        pos, vel = seg.compute_and_differentiate(_MJD0, mjd_tdb)
        return np.asarray(pos, float).T / AU_KM, np.asarray(vel, float).T / AU_KM

    def barycentric(self, body: str, mjd_tdb: Any) -> tuple[np.ndarray, np.ndarray]:
        """Position (au) and velocity (au/day) of ``body`` relative to the Solar System
        barycentre, ICRF, at ``mjd_tdb`` (array of shape (n,) → arrays of shape (n, 3)).

        Raises
        ------
        EphemerisError
            For an unknown body or a time outside the ephemeris.
        """
        t = np.atleast_1d(np.asarray(mjd_tdb, dtype=float))
        if body not in self.BODIES:
            raise EphemerisError(f"unknown body {body!r}; expected one of {sorted(self.BODIES)}")
        outside = ~((t >= self.start_mjd) & (t <= self.end_mjd))
        if outside.any():
            raise EphemerisError(f"MJD {t[outside][0]:.5f} (TDB) is outside the planetary "
                                 f"ephemeris {self.path.name} ({self.start_mjd:.1f} to "
                                 f"{self.end_mjd:.1f})")
        naif = self.BODIES[body]
        if naif in (399, 301):
            p_emb, v_emb = self._segment(0, 3, t)
            p, v = self._segment(3, naif, t)
            return p_emb + p, v_emb + v
        if (0, naif) not in self._segments:
            raise EphemerisError(f"{self.path}: no segment for {body!r}")
        return self._segment(0, naif, t)


@functools.lru_cache(maxsize=4)
def default_ephemeris(path: str | None = None) -> PlanetaryEphemeris:
    """The shared :class:`PlanetaryEphemeris` (DE421 by default), opened once per process."""
    return PlanetaryEphemeris(path)


@functools.lru_cache(maxsize=1)
def _iers_table() -> Any:
    from astropy.utils import iers

    return iers.IERS_A.open(iers.IERS_A_FILE)


def earth_orientation(mjd_tai: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UT1 (MJD) and the pole coordinates xp, yp (radians) at TAI times, from the IERS
    Bulletin A bundled with astropy (nearest tabulated values outside its range)."""
    import erfa

    tai = np.atleast_1d(np.asarray(mjd_tai, dtype=float))
    with warnings.catch_warnings():
        # ERFA warns ("dubious year") for dates past its leap-second table's validity;
        # future leap seconds are unknowable, and the table's last value is used.
        warnings.simplefilter("ignore", erfa.ErfaWarning)
        u1, u2 = erfa.taiutc(_MJD0, tai)
    utc_mjd = (u1 - _MJD0) + u2
    table = _iers_table()
    dut1 = np.asarray(table.ut1_utc(_MJD0, utc_mjd).to_value("s"), float)
    xp, yp = table.pm_xy(_MJD0, utc_mjd)
    ut1 = utc_mjd + dut1 / DAY_S
    return ut1, np.asarray(xp.to_value("rad"), float), np.asarray(yp.to_value("rad"), float)


def site_gcrs(site: Site, mjd_tai: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geocentric position (au) and velocity (au/day) of the site in the GCRS, shape (n, 3)."""
    import erfa

    tai = np.atleast_1d(np.asarray(mjd_tai, dtype=float))
    if site.geocentric:
        zeros = np.zeros((tai.size, 3))
        return zeros, zeros.copy()
    tt = tai + TT_MINUS_TAI_S / DAY_S
    ut1, xp, yp = earth_orientation(tai)
    era = erfa.era00(_MJD0, ut1)
    sp = erfa.sp00(_MJD0, tt)
    pv = erfa.pvtob(math.radians(site.lon_deg), math.radians(site.lat_deg), site.height_m,
                    xp, yp, sp, era)
    rc2i = erfa.c2i06a(_MJD0, tt)  # GCRS → CIRS; its transpose takes CIRS → GCRS
    pos = np.einsum("nji,nj->ni", rc2i, pv["p"]) / (AU_KM * 1000.0)
    vel = np.einsum("nji,nj->ni", rc2i, pv["v"]) * DAY_S / (AU_KM * 1000.0)
    return pos, vel


@dataclass(frozen=True)
class ObserverStates:
    """The observer and the Sun at a set of times (barycentric ICRS, au and au/day).

    Attributes
    ----------
    mjd_tai, mjd_tdb : ndarray (n,)
    position, velocity : ndarray (n, 3)
        The observer.
    sun_position, sun_velocity : ndarray (n, 3)
    earth_position, earth_velocity : ndarray (n, 3)
        The Earth's centre.
    site : Site
    """

    mjd_tai: np.ndarray
    mjd_tdb: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    sun_position: np.ndarray
    sun_velocity: np.ndarray
    earth_position: np.ndarray
    earth_velocity: np.ndarray
    site: Site

    def __len__(self) -> int:
        return int(self.mjd_tai.shape[0])

    def take(self, index: Any) -> ObserverStates:
        """The states at the given indices."""
        return ObserverStates(*(getattr(self, f)[index] for f in (
            "mjd_tai", "mjd_tdb", "position", "velocity", "sun_position", "sun_velocity",
            "earth_position", "earth_velocity")), site=self.site)


def observer_states(site: Site | str, mjd_tai: Any,
                    ephemeris: PlanetaryEphemeris | None = None) -> ObserverStates:
    """Barycentric states of the observer at ``site`` and of the Sun at TAI times.

    Parameters
    ----------
    site : Site or str
        See :func:`parse_site`.
    mjd_tai : float or array_like
        Times, MJD (TAI).
    ephemeris : PlanetaryEphemeris, optional
        Default: :func:`default_ephemeris` (DE421).
    """
    site = parse_site(site)
    eph = ephemeris or default_ephemeris()
    tai = np.atleast_1d(np.asarray(mjd_tai, dtype=float))
    if not np.isfinite(tai).all():
        raise EphemerisError(f"observer times must be finite MJD (TAI); got {tai[~np.isfinite(tai)][:3]}")
    tdb = tai_to_tdb(tai)
    sun_p, sun_v = eph.barycentric("sun", tdb)
    earth_p, earth_v = eph.barycentric("earth", tdb)
    dp, dv = site_gcrs(site, tai)
    return ObserverStates(tai, tdb, earth_p + dp, earth_v + dv, sun_p, sun_v, earth_p, earth_v,
                          site)
