"""How much ignoring the planets costs: an N-body integration to measure the two-body error.

Catalog orbits are *osculating* elements: the two-body orbit that matches the object's
position and velocity at the epoch. Away from the epoch, the planets' pull makes the real
motion drift from that conic. :func:`perturbed_propagate` integrates the heliocentric
equation of motion with the direct and indirect attraction of the eight planetary
systems (positions from DE421, :class:`~.observer.PlanetaryEphemeris`) ::

    r̈ = −μ☉ r/|r|³ + Σₚ μₚ [ (rₚ − r)/|rₚ − r|³ − rₚ/|rₚ|³ ]      (rₚ heliocentric)

with SciPy's DOP853 (relative tolerance 1e-12), many objects at once.
:func:`two_body_drift` compares it with the two-body propagation of the same osculating
state and returns the angular separation seen from the geocentre: the error of a
two-body ephemeris as a function of |t − epoch|. ``benchmarks/bench_sso.py`` tabulates
it for main-belt, near-Earth and trans-Neptunian orbits (``docs/sso.md``).

The planetary GMs follow from the IAU 2009 mass ratios M☉/Mₚ (Mercury 6 023 600, Venus
408 523.71, Earth + Moon 328 900.56, Mars system 3 098 703.59, Jupiter 1 047.3486,
Saturn 3 497.898, Uranus 22 902.98, Neptune 19 412.26) and k²: ample for estimating
perturbations. Relativity, the asteroids' own masses and non-gravitational forces are
left out (each is far below the planetary terms over these spans).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.sso.constants import GM_SUN
from jointcal_ap.sso.kepler import propagate
from jointcal_ap.sso.observer import PlanetaryEphemeris, default_ephemeris

__all__ = ["PLANET_GM", "perturbed_propagate", "two_body_drift"]

_MASS_RATIOS = {"mercury": 6_023_600.0, "venus": 408_523.71, "emb": 328_900.56,
                "mars": 3_098_703.59, "jupiter": 1_047.3486, "saturn": 3_497.898,
                "uranus": 22_902.98, "neptune": 19_412.26}
#: GM of the planetary systems, au³/day² (Earth: the Earth–Moon barycentre).
PLANET_GM = {name: GM_SUN / ratio for name, ratio in _MASS_RATIOS.items()}


def perturbed_propagate(r0: np.ndarray, v0: np.ndarray, epoch_tdb: float, times_tdb: Any, *,
                        ephemeris: PlanetaryEphemeris | None = None,
                        planets: tuple[str, ...] = tuple(PLANET_GM), rtol: float = 1e-12
                        ) -> np.ndarray:
    """Heliocentric positions under the Sun and the planets.

    Parameters
    ----------
    r0, v0 : ndarray (n, 3)
        Heliocentric ICRS state at ``epoch_tdb`` (au, au/day).
    epoch_tdb : float
        MJD TDB.
    times_tdb : array_like (k,)
        Output times (MJD TDB), on one side of the epoch or both.
    planets : tuple of str
        Which planetary systems attract (default all eight).
    rtol : float
        DOP853 relative tolerance.

    Returns
    -------
    ndarray (k, n, 3)
        Positions (au).
    """
    from scipy.integrate import solve_ivp

    eph = ephemeris or default_ephemeris()
    r0 = np.atleast_2d(np.asarray(r0, float))
    v0 = np.atleast_2d(np.asarray(v0, float))
    n = r0.shape[0]
    times = np.atleast_1d(np.asarray(times_tdb, float))
    gms = np.array([PLANET_GM[p] for p in planets])
    out = np.empty((times.size, n, 3))

    def planets_at(t: float) -> np.ndarray:
        sun, _ = eph.barycentric("sun", np.array([t]))
        return np.stack([eph.barycentric(p, np.array([t]))[0][0] - sun[0] for p in planets])

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        r = y[: 3 * n].reshape(n, 3)
        v = y[3 * n:]
        acc = -GM_SUN * r / np.linalg.norm(r, axis=1)[:, None] ** 3
        rp = planets_at(t)  # (p, 3)
        d = rp[None, :, :] - r[:, None, :]  # (n, p, 3)
        acc += np.einsum("p,npk->nk", gms, d / np.linalg.norm(d, axis=2)[:, :, None] ** 3)
        acc -= (gms[:, None] * rp / np.linalg.norm(rp, axis=1)[:, None] ** 3).sum(axis=0)
        return np.concatenate([v, acc.ravel()])

    y0 = np.concatenate([r0.ravel(), v0.ravel()])
    out[times == epoch_tdb] = r0
    for sign in (-1.0, 1.0):
        idx = np.flatnonzero(np.sign(times - epoch_tdb) == sign)
        if idx.size == 0:
            continue
        order = idx[np.argsort(np.abs(times[idx] - epoch_tdb))]  # in integration order
        sol = solve_ivp(rhs, (epoch_tdb, times[order[-1]]), y0, method="DOP853", rtol=rtol,
                        atol=1e-14, t_eval=times[order])
        if not sol.success:
            raise ArithmeticError(f"N-body integration failed: {sol.message}")
        out[order] = sol.y[: 3 * n].T.reshape(-1, n, 3)
    return out


def two_body_drift(r0: np.ndarray, v0: np.ndarray, epoch_tdb: float, offsets_days: Any, *,
                   ephemeris: PlanetaryEphemeris | None = None) -> dict[str, np.ndarray]:
    """Geocentric angular error of two-body propagation, against the N-body integration.

    Parameters
    ----------
    r0, v0 : ndarray (n, 3)
        Osculating heliocentric ICRS states at ``epoch_tdb``.
    epoch_tdb : float
    offsets_days : array_like (k,)
        t − epoch values to test.

    Returns
    -------
    dict
        ``offsets`` (k,), ``separation_arcsec`` (k, n): the angle between the geocentric
        directions of the two-body and the perturbed positions; ``distance_km`` (k, n):
        their separation in space.
    """
    eph = ephemeris or default_ephemeris()
    offsets = np.atleast_1d(np.asarray(offsets_days, float))
    times = epoch_tdb + offsets
    nbody = perturbed_propagate(r0, v0, epoch_tdb, times, ephemeris=eph)
    n = r0.shape[0]
    sep = np.empty((offsets.size, n))
    dist = np.empty((offsets.size, n))
    for k, dt in enumerate(offsets):
        kep, _ = propagate(r0, v0, np.full(n, dt))
        sun, _ = eph.barycentric("sun", np.array([times[k]]))
        earth, _ = eph.barycentric("earth", np.array([times[k]]))
        geo = earth[0] - sun[0]
        a = kep - geo
        b = nbody[k] - geo
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        sep[k] = np.degrees(np.arctan2(cross, np.einsum("ij,ij->i", a, b))) * 3600.0
        dist[k] = np.linalg.norm(kep - nbody[k], axis=1) * 149_597_870.7
    return {"offsets": offsets, "separation_arcsec": sep, "distance_km": dist}
