"""Ephemerides of Solar System objects for an observer: positions, rates, geometry, magnitudes.

:func:`predict` takes an orbit catalog (:class:`~.orbits.Orbits`), a time (MJD TAI) and a
site, and gives for every object the columns of Rubin's SSSource table that come from the
orbit:

=====================================  =========  ================================================
column                                 unit       meaning
=====================================  =========  ================================================
``ephRa``, ``ephDec``                  deg        astrometric ICRS position (light-time corrected)
``ephRate``                            deg/d      total on-sky rate
``ephRateRa``, ``ephRateDec``          deg/d      rate in RA (× cos Dec) and in Dec
``topoRange``, ``topoRangeRate``       au, km/s   distance from the observer (Δ) and its rate
``helioRange``, ``helioRangeRate``     au, km/s   distance from the Sun (r) and its rate
``phaseAngle``                         deg        Sun–object–observer angle
``elongation``                         deg        Sun–observer–object angle
``ephVmag``                            mag        V from the catalog's H, G (H–G system)
``helio_x`` … ``helio_vz``, ``_vtot``  au, km/s   heliocentric ICRS state of the object
``topo_x`` … ``topo_vz``, ``topo_vtot``  au, km/s   object − observer (ICRS)
=====================================  =========  ================================================

All "at light-emission time": the object's state is taken at t − τ, with τ the light
time, and the observer's at the observation time t, both relative to the Solar System
barycentre (``topo = X(t − τ) − O(t)``, ``|topo| = c τ``). The positions are
**astrometric**: directly comparable with positions measured against a star catalog in
the ICRS (Gaia), so no stellar aberration is applied (it affects stars and the object
alike) and the gravitational deflection of light by the Sun (≲ 4 mas at 90° elongation,
less for objects inside 1 au) is neglected. Rates are those an observer sees:
d(direction)/dt with dt of the observer, including the light-time factor dτ/dt.

How
---
1. Cometary elements (q, e, i, Ω, ω, tp) → the state at pericentre in the ICRS
   (ecliptic J2000 rotated by ε₀ = 84381.448″, see :mod:`.constants`).
2. Two-body propagation to the observation time t (TT) in universal variables
   (:mod:`.kepler`; every conic type, near-parabolic ones included).
3. Light time: τ from |X(t − τ) − O(t)| = c τ, iterated three times, with the object's
   state at t − τ from a second-order Taylor expansion of the two-body motion about t (the
   neglected third-order term is < 1e-12 au for τ < 1 d and r > 0.05 au) and the Sun's
   barycentric position at t − τ to first order.
4. The observer O(t): the Earth from DE421 plus the site's GCRS position
   (:mod:`.observer`); times: TAI → TT (propagation) and TDB (planetary ephemeris).

Planetary perturbations are ignored: a catalog orbit is an osculating two-body orbit at
its epoch, so predictions degrade with |t − epoch| (see ``docs/sso.md`` for measured
drifts against an N-body integration with DE421 planets). Catalogs with recent epochs
(the MPC's are refreshed every few months) keep main-belt predictions within arcseconds.

The computation is one fused JAX kernel over objects (float64); inputs are padded to a
power-of-two length so that few array sizes are ever compiled.

>>> import numpy as np
>>> from jointcal_ap.sso.orbits import Orbits
>>> from jointcal_ap.sso.ephemeris import predict
>>> orbits = Orbits.from_table({"designation": ["A"], "q": [2.0], "e": [0.1], "i": [5.0],
...     "node": [80.0], "argperi": [30.0], "peri_time": [60200.0], "h": [15.0], "g": [0.15]})
>>> eph = predict(orbits, 60300.0, "rubin")
>>> sorted(eph.columns)[:4], round(float(eph["helioRange"][0]), 4)
(['elongation', 'ephDec', 'ephRa', 'ephRate'], 2.0356)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap._jax import jax, jnp
from jointcal_ap.sso.constants import (
    AU_PER_DAY_TO_KM_PER_S,
    C_AU_PER_DAY,
    DAY_S,
    GM_SUN,
    TT_MINUS_TAI_S,
)
from jointcal_ap.sso.errors import OrbitError
from jointcal_ap.sso.kepler import (
    bucket_size,
    lagrange_coefficients,
    pad_rows,
)
from jointcal_ap.sso.observer import ObserverStates, PlanetaryEphemeris, Site, observer_states
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.sso.photometry import hg_magnitude

__all__ = [
    "EPHEMERIS_COLUMNS",
    "Ephemerides",
    "observe_states",
    "predict",
    "predict_at",
]

#: The output columns of :func:`predict` (Rubin's SSSource names and units).
EPHEMERIS_COLUMNS = (
    "ephRa", "ephDec", "ephRate", "ephRateRa", "ephRateDec", "topoRange", "topoRangeRate",
    "helioRange", "helioRangeRate", "phaseAngle", "elongation", "ephVmag",
    "helio_x", "helio_y", "helio_z", "helio_vx", "helio_vy", "helio_vz", "helio_vtot",
    "topo_x", "topo_y", "topo_z", "topo_vx", "topo_vy", "topo_vz", "topo_vtot",
)

_DEG = 180.0 / math.pi
_LIGHT_TIME_ITERATIONS = 3


# Vectors inside the kernels are (x, y, z) tuples of arrays: XLA fuses component-wise
# arithmetic over objects far better than reductions along a short last axis.

def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a):
    return jnp.sqrt(_dot(a, a))


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _comb(*pairs):
    """Σ coefficient·vector over (coefficient, vector) pairs."""
    return tuple(sum(c * v[k] for c, v in pairs) for k in range(3))


def _angle(a, b):
    """Angle between vectors, radians, accurate at all angles."""
    return jnp.arctan2(_norm(_cross(a, b)), _dot(a, b))


def _cols(a):
    return (a[:, 0], a[:, 1], a[:, 2])


def _observe(r, v, h, g, obs_p, obs_v, sun_p, sun_v):
    """Light-time-corrected observables of heliocentric states (r, v) at observation time t.

    All vectors are (x, y, z) tuples; ``obs_*`` and ``sun_*`` are barycentric at t.
    """
    rr = _norm(r)
    k_acc = -GM_SUN / (rr * rr * rr)  # acceleration = k_acc · r
    tau = _norm(_comb((1.0, sun_p), (1.0, r), (-1.0, obs_p))) / C_AU_PER_DAY

    def emitted(tau):
        # r(t − τ) ≈ r − v τ + a τ²/2; the Sun at t − τ to first order
        r_e = _comb((1.0 + 0.5 * k_acc * tau * tau, r), (-tau, v))
        rho = _comb((1.0, sun_p), (-tau, sun_v), (1.0, r_e), (-1.0, obs_p))
        return r_e, rho

    for _ in range(_LIGHT_TIME_ITERATIONS):
        _, rho = emitted(tau)
        tau = _norm(rho) / C_AU_PER_DAY
    r_e, rho = emitted(tau)
    v_e = _comb((1.0, v), (-k_acc * tau, r))
    dist = _norm(rho)
    u = tuple(c / dist for c in rho)
    vel_bary = _comb((1.0, v_e), (1.0, sun_v))
    rel_v = _comb((1.0, vel_bary), (-1.0, obs_v))
    # dt_emit/dt_obs = (1 + u·V_O/c)/(1 + u·V/c); d(rho)/dt_obs = V dte/dt − V_O
    factor = (1.0 + _dot(u, obs_v) / C_AU_PER_DAY) / (1.0 + _dot(u, vel_bary) / C_AU_PER_DAY)
    rho_dot = _comb((factor, vel_bary), (-1.0, obs_v))
    range_rate = _dot(rho_dot, u)
    u_dot = tuple((rho_dot[k] - range_rate * u[k]) / dist for k in range(3))
    ra = jnp.arctan2(u[1], u[0])
    dec = jnp.arctan2(u[2], jnp.sqrt(u[0] * u[0] + u[1] * u[1]))
    sra, cra, sdec, cdec = jnp.sin(ra), jnp.cos(ra), jnp.sin(dec), jnp.cos(dec)
    rate_ra = -u_dot[0] * sra + u_dot[1] * cra
    rate_dec = -u_dot[0] * sdec * cra - u_dot[1] * sdec * sra + u_dot[2] * cdec
    helio_range = _norm(r_e)
    phase = _angle(r_e, rho)
    elong = _angle(_comb((1.0, sun_p), (-1.0, obs_p)), rho)
    vmag = hg_magnitude(h, g, helio_range, dist, phase, xp=jnp)
    kms = AU_PER_DAY_TO_KM_PER_S
    out = {
        "ephRa": jnp.mod(ra * _DEG, 360.0), "ephDec": dec * _DEG,
        "ephRate": jnp.sqrt(rate_ra * rate_ra + rate_dec * rate_dec) * _DEG,
        "ephRateRa": rate_ra * _DEG, "ephRateDec": rate_dec * _DEG,
        "topoRange": dist, "topoRangeRate": range_rate * kms,
        "helioRange": helio_range,
        "helioRangeRate": _dot(r_e, v_e) / helio_range * kms,
        "phaseAngle": phase * _DEG, "elongation": elong * _DEG, "ephVmag": vmag,
        "helio_vtot": _norm(v_e) * kms, "topo_vtot": _norm(rel_v) * kms,
    }
    for k, axis in enumerate("xyz"):
        out[f"helio_{axis}"] = r_e[k]
        out[f"helio_v{axis}"] = v_e[k] * kms
        out[f"topo_{axis}"] = rho[k]
        out[f"topo_v{axis}"] = rel_v[k] * kms
    return out


@functools.partial(jax.jit, static_argnames=("conic",))
def _elements_kernel(q, e, p_hat, q_hat, tp, h, g, t_tt, obs_p, obs_v, sun_p, sun_v, conic="any"):
    # at pericentre: r0 = q P̂, v0 = sqrt(μ(1+e)/q) Q̂, r0·v0 = 0, α = (1 − e)/q exactly
    f, gg, fdot, gdot, ok = lagrange_coefficients(q, jnp.zeros_like(q), (1.0 - e) / q, t_tt - tp,
                                                  conic=conic)
    vp = jnp.sqrt(GM_SUN * (1.0 + e) / q)
    p_vec, q_vec = _cols(p_hat), _cols(q_hat)
    r = _comb((f * q, p_vec), (gg * vp, q_vec))
    v = _comb((fdot * q, p_vec), (gdot * vp, q_vec))
    out = _observe(r, v, h, g, _cols(obs_p), _cols(obs_v), _cols(sun_p), _cols(sun_v))
    return out, ok


@functools.partial(jax.jit, static_argnames=("reduce_periods", "columns"))
def _states_kernel(r0, v0, dt, h, g, obs_p, obs_v, sun_p, sun_v, reduce_periods=True,
                   columns=EPHEMERIS_COLUMNS):
    r0, v0 = _cols(r0), _cols(v0)
    rmag = _norm(r0)
    alpha = 2.0 / rmag - _dot(v0, v0) / GM_SUN
    f, gg, fdot, gdot, ok = lagrange_coefficients(rmag, _dot(r0, v0) / math.sqrt(GM_SUN), alpha,
                                                  dt, reduce_periods=reduce_periods)
    r = _comb((f, r0), (gg, v0))
    v = _comb((fdot, r0), (gdot, v0))
    out = _observe(r, v, h, g, _cols(obs_p), _cols(obs_v), _cols(sun_p), _cols(sun_v))
    return {k: out[k] for k in columns}, ok  # XLA drops what is not returned


@dataclass(frozen=True)
class Ephemerides:
    """Predicted ephemerides of objects (one row per object, or per object and time).

    Attributes
    ----------
    designation : ndarray of str
    ss_object_id : ndarray of int64
    mjd_tai : ndarray
        Observation times (MJD TAI).
    columns : dict of str → ndarray
        :data:`EPHEMERIS_COLUMNS` (Rubin's names and units).
    """

    designation: np.ndarray
    ss_object_id: np.ndarray
    mjd_tai: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.mjd_tai.shape[0])

    @classmethod
    def empty(cls) -> Ephemerides:
        """No objects."""
        return cls(np.empty(0, object), np.empty(0, np.int64), np.empty(0),
                   {name: np.empty(0) for name in EPHEMERIS_COLUMNS})

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, index: Any) -> Ephemerides:
        """The rows at the given indices or mask."""
        return Ephemerides(self.designation[index], self.ss_object_id[index], self.mjd_tai[index],
                           {k: v[index] for k, v in self.columns.items()})

    def to_table(self) -> Any:
        """A ``pyarrow.Table``: ``designation``, ``ssObjectId``, ``mjdTai`` and the columns."""
        import pyarrow as pa

        data = {"designation": pa.array(self.designation.astype(str), pa.string()),
                "ssObjectId": pa.array(self.ss_object_id, pa.int64()),
                "mjdTai": self.mjd_tai}
        data.update({k: self.columns[k] for k in EPHEMERIS_COLUMNS})
        return pa.table(data)


def _check_converged(ok: np.ndarray, orbits: Orbits) -> None:
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise OrbitError(f"{orbits.source}: object {orbits.designation[bad]!r}: the two-body "
                         f"propagation did not converge (q = {orbits.q[bad]}, e = {orbits.e[bad]}, "
                         f"tp = {orbits.tp[bad]}); expected finite elements")


def predict_at(orbits: Orbits, observer: ObserverStates) -> Ephemerides:
    """Ephemerides of ``orbits`` for observer states: either one state for all objects, or
    one per object (``len(observer) == len(orbits)``, e.g. each at its own time).

    Raises
    ------
    OrbitError
        If ``observer`` has another length, or an orbit cannot be propagated.
    """
    n = len(orbits)
    m = len(observer)
    if m not in (1, n):
        raise OrbitError(f"{orbits.source}: {n} orbits but {m} observer states; expected one "
                         f"state or one per orbit")
    t_tt = np.broadcast_to(observer.mjd_tai + TT_MINUS_TAI_S / DAY_S, (n,))
    per_object = m == n and n != 1
    p_hat, q_hat = orbits.frame_vectors
    elements = [np.asarray(a, dtype=float) for a in
                (orbits.q, orbits.e, p_hat, q_hat, orbits.tp, orbits.h, orbits.g)]
    observer_rows = (observer.position, observer.velocity, observer.sun_position,
                     observer.sun_velocity)
    columns = {name: np.empty(n) for name in EPHEMERIS_COLUMNS}
    ok = np.ones(n, bool)
    # ellipses get the faster kernel without the hyperbolic branch of the Stumpff functions
    elliptic = orbits.e < 1.0
    for conic, index in (("elliptic", np.flatnonzero(elliptic)), ("any", np.flatnonzero(~elliptic))):
        if index.size == 0:
            continue
        whole = index.size == n
        size = bucket_size(index.size)

        def part(a: np.ndarray, size: int = size, index: np.ndarray = index,
                 whole: bool = whole) -> Any:
            return jnp.asarray(pad_rows(a if whole else a[index], size))

        args = [part(a) for a in elements] + [part(t_tt)]
        args += [part(a) if per_object else jnp.asarray(a) for a in observer_rows]
        out, good = _elements_kernel(*args, conic=conic)
        k = index.size
        for name in EPHEMERIS_COLUMNS:
            if whole:
                columns[name] = np.asarray(out[name])[:k]
            else:
                columns[name][index] = np.asarray(out[name])[:k]
        ok[index] = np.asarray(good)[:k]
    _check_converged(ok, orbits)
    return Ephemerides(orbits.designation, orbits.ss_object_id,
                       np.broadcast_to(observer.mjd_tai, (n,)).copy(), columns)


def predict(orbits: Orbits, mjd_tai: float, site: Site | str = "rubin", *,
            ephemeris: PlanetaryEphemeris | None = None) -> Ephemerides:
    """Ephemerides of every object of ``orbits`` at one time, seen from ``site``.

    Parameters
    ----------
    orbits : Orbits
        The catalog (:func:`~.orbits.read_orbits`, :meth:`~.orbits.Orbits.from_table`).
    mjd_tai : float
        Observation time, MJD (TAI).
    site : Site or str
        ``"rubin"``, ``"geocenter"``, ``"LON,LAT,HEIGHT"`` (see :func:`~.observer.parse_site`).
    ephemeris : PlanetaryEphemeris, optional
        Default DE421.

    Returns
    -------
    Ephemerides
        One row per object, in catalog order.
    """
    return predict_at(orbits, observer_states(site, np.array([float(mjd_tai)]), ephemeris))


def observe_states(r0: Any, v0: Any, epoch_tt: float, observer: ObserverStates, *,
                   h: float = np.nan, g: float = 0.15) -> dict[str, np.ndarray]:
    """Ephemerides of *one* heliocentric ICRS state (au, au/day, at ``epoch_tt``, MJD TT)
    at each of the observer's times (e.g. to fit an orbit to its detections).

    Returns the :data:`EPHEMERIS_COLUMNS` as arrays of length ``len(observer)``.
    """
    m = len(observer)
    size = bucket_size(m)
    r0 = np.broadcast_to(np.asarray(r0, float).reshape(1, 3), (size, 3))
    v0 = np.broadcast_to(np.asarray(v0, float).reshape(1, 3), (size, 3))
    dt = pad_rows(observer.mjd_tai + TT_MINUS_TAI_S / DAY_S - float(epoch_tt), size)
    hh = np.full(size, h)
    gg = np.full(size, g)
    out, ok = _states_kernel(*(jnp.asarray(a) for a in (r0, v0, dt, hh, gg)),
                             *(jnp.asarray(pad_rows(a, size)) for a in (
                                 observer.position, observer.velocity, observer.sun_position,
                                 observer.sun_velocity)), reduce_periods=False)
    if not np.asarray(ok)[:m].all():
        raise OrbitError(f"the orbit state r = {np.asarray(r0[0]).tolist()} au, v = "
                         f"{np.asarray(v0[0]).tolist()} au/d cannot be propagated")
    return {k: np.asarray(v)[:m] for k, v in out.items()}
