"""An independent, slow two-body ephemeris for validating :func:`~.ephemeris.predict`.

It shares no code with the fast path: the orbit is integrated numerically instead of being
solved in universal variables, and every frame and time conversion is astropy's:

1. the pericentre state from the elements by explicit rotations (R₃(−Ω) R₁(−i) R₃(−ω),
   astropy's ``rotation_matrix``), with the vis-viva speed;
2. the two-body equation of motion r̈ = −μ r/|r|³ integrated with SciPy's DOP853
   (relative tolerance 1e-13) from the pericentre time to the observation time, with
   dense output;
3. heliocentric ecliptic → barycentric ICRS with astropy's ``HeliocentricEclipticIAU76``
   frame (the ecliptic of the MPC/JPL elements; astropy adds the Sun's barycentric
   position from the ephemeris set below);
4. the observer with ``EarthLocation.get_gcrs_posvel`` plus the Earth's barycentric
   position from ``get_body_barycentric_posvel``, both with the DE421 file of
   ``skyfield-data`` (``solar_system_ephemeris.set(path)``) and astropy's own IERS table
   (downloads switched off);
5. times with ``astropy.time.Time`` (TAI → TT, TDB);
6. the light-time equation iterated to 1e-12 d, re-evaluating the integrated orbit at
   each emission time (no Taylor expansion).

Use it on a handful of objects (each takes ~50 ms).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from jointcal_ap.sso.constants import C_AU_PER_DAY, GM_SUN

__all__ = ["reference_radec"]


def _rotations(inc_deg: float, node_deg: float, argperi_deg: float) -> np.ndarray:
    import astropy.units as u
    from astropy.coordinates.matrix_utilities import rotation_matrix

    # astropy's rotation_matrix(angle, axis) rotates the *frame*: R(θ) v gives v's components
    # in axes turned by θ, so orbit-plane → ecliptic is R₃(−Ω) R₁(−i) R₃(−ω).
    return (rotation_matrix(-node_deg * u.deg, "z") @ rotation_matrix(-inc_deg * u.deg, "x")
            @ rotation_matrix(-argperi_deg * u.deg, "z"))


def reference_radec(q: float, e: float, inc_deg: float, node_deg: float, argperi_deg: float,
                    tp_mjd_tt: float, mjd_tai: float, *, lon_deg: float | None = -70.749417,
                    lat_deg: float = -30.244639, height_m: float = 2662.75,
                    mu: float = GM_SUN) -> dict[str, Any]:
    """The astrometric ICRS position of one object, computed independently.

    Parameters
    ----------
    q, e, inc_deg, node_deg, argperi_deg, tp_mjd_tt : float
        Cometary elements (au, degrees, MJD TT), heliocentric ecliptic J2000.
    mjd_tai : float
        Observation time, MJD TAI.
    lon_deg, lat_deg, height_m : float
        Observer (WGS84); ``lon_deg=None`` for the geocentre.

    Returns
    -------
    dict
        ``ra``, ``dec`` (degrees), ``topo_range``, ``helio_range`` (au), ``light_time`` (d).
    """
    import astropy.units as u
    from astropy.coordinates import (
        CartesianRepresentation,
        EarthLocation,
        HeliocentricEclipticIAU76,
        SkyCoord,
        UnitSphericalRepresentation,
        get_body_barycentric_posvel,
        solar_system_ephemeris,
    )
    from astropy.time import Time
    from astropy.utils import iers
    from scipy.integrate import solve_ivp

    de421 = str(resources.files("skyfield_data").joinpath("data", "de421.bsp"))
    t_obs = Time(mjd_tai, format="mjd", scale="tai")
    t_obs_tt = t_obs.tt.mjd
    # pericentre state in the orbit plane, then in the ecliptic
    rot = _rotations(inc_deg, node_deg, argperi_deg)
    r_peri = rot @ np.array([q, 0.0, 0.0])
    v_peri = rot @ np.array([0.0, np.sqrt(mu * (1.0 + e) / q), 0.0])

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        r = y[:3]
        return np.concatenate([y[3:], -mu * r / np.dot(r, r) ** 1.5])

    span = t_obs_tt - tp_mjd_tt
    end = span + np.sign(span or 1.0) * 2.0  # room for the light time either way
    sol = solve_ivp(rhs, (0.0, end), np.concatenate([r_peri, v_peri]), method="DOP853",
                    rtol=1e-13, atol=1e-18, dense_output=True)

    with iers.conf.set_temp("auto_download", False), solar_system_ephemeris.set(de421):
        loc = None if lon_deg is None else EarthLocation.from_geodetic(
            lon_deg * u.deg, lat_deg * u.deg, height_m * u.m)
        earth_p, _ = get_body_barycentric_posvel("earth", t_obs)
        obs = earth_p.xyz.to_value(u.au)
        if loc is not None:
            gp, _ = loc.get_gcrs_posvel(t_obs)
            obs = obs + gp.xyz.to_value(u.au)
        tau = 0.0
        for _ in range(20):
            t_emit = Time(t_obs.tt.jd1, t_obs.tt.jd2 - tau, format="jd", scale="tt")
            helio = sol.sol(span - tau)[:3]
            coord = SkyCoord(CartesianRepresentation(*(helio * u.au)),
                             frame=HeliocentricEclipticIAU76(obstime=t_emit))
            bary = coord.icrs.cartesian.xyz.to_value(u.au)
            new_tau = np.linalg.norm(bary - obs) / C_AU_PER_DAY
            if abs(new_tau - tau) < 1e-12:
                tau = new_tau
                break
            tau = new_tau
        topo = bary - obs
        sph = CartesianRepresentation(*(topo * u.au)).represent_as(UnitSphericalRepresentation)
    return {"ra": float(sph.lon.to_value(u.deg)) % 360.0, "dec": float(sph.lat.to_value(u.deg)),
            "topo_range": float(np.linalg.norm(topo)), "helio_range": float(np.linalg.norm(helio)),
            "light_time": float(tau)}
