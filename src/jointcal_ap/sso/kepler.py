"""Two-body (Keplerian) motion about the Sun in universal variables, vectorised over objects.

One formulation serves every conic: elliptic, parabolic and hyperbolic orbits, and the
near-parabolic ones in between, where classical anomalies lose precision. Given a state
``(r0, v0)`` and a time step ``dt``, the universal anomaly χ solves the universal Kepler
equation (Battin 1999 §4.5; Danby 1988 §6.9) ::

    √μ·dt = σ₀ χ² C(z) + (1 − α r₀) χ³ S(z) + r₀ χ,     z = α χ²,

with α = 1/a = 2/r₀ − v₀²/μ, σ₀ = r₀·v₀/√μ and the Stumpff functions C and S. Laguerre's
method (Conway 1986) solves it: it converges from crude starting values for all conic types,
here typically in 3–4 iterations. The state at ``t0 + dt`` follows from the Lagrange f and g
functions, written without cancellation (``√μ·g = σ₀χ²C + r₀χ(1 − zS)``).

For catalog orbits the natural starting state is the pericentre, where σ₀ = 0, r₀ = q and
1 − α r₀ = e: :func:`perihelion_state` gives it from ``(q, e, i, Ω, ω)``; α = (1 − e)/q is
then exact, even for e → 1. Elliptic orbits are first reduced to within half a period of
the pericentre, so that χ stays small whatever the span.

:func:`state_to_cometary` inverts the process (a state → q, e, i, Ω, ω, time of
pericentre), e.g. for orbits fitted by the linker.

The kernels are JAX functions (float64, fused by ``jax.jit``; see :mod:`jointcal_ap._jax`);
the public calls take and return NumPy arrays and pad their inputs to a few fixed sizes,
so that a new array length rarely costs a compilation.

Units: au, days (TDB), radians; ``mu`` in au³/day² (default :data:`~.constants.GM_SUN`).

>>> import numpy as np
>>> from jointcal_ap.sso.kepler import perihelion_state, propagate
>>> r0, v0 = perihelion_state(q=1.0, e=0.0, inc=0.0, node=0.0, argperi=0.0)
>>> r, v = propagate(r0, v0, dt=365.2568983 / 4)  # a quarter of a Gaussian year
>>> np.round(r, 9) + 0.0
array([[0., 1., 0.]])
"""

from __future__ import annotations

import functools
import math

import numpy as np

from jointcal_ap._jax import jax, jnp
from jointcal_ap.sso.constants import GM_SUN

__all__ = [
    "KeplerError",
    "bucket_size",
    "lagrange_coefficients",
    "pad_rows",
    "perihelion_state",
    "propagate",
    "state_to_cometary",
    "stumpff",
]

_LAGUERRE_N = 5.0
_MAX_ITER = 50
_TOL = 1e-13
# C and S by their series for |z| below this, closed forms above (both exact to ~1e-15)
_SERIES_Z = 0.1
_INV_FACT = [1.0 / math.factorial(k) for k in range(18)]


class KeplerError(ArithmeticError):
    """The universal Kepler equation did not converge (the message says for how many)."""


def bucket_size(n: int, minimum: int = 64) -> int:
    """The padded length used for ``n`` objects: the next power of two (at least
    ``minimum``), so that jitted kernels compile for few distinct shapes.

    >>> bucket_size(1), bucket_size(1000), bucket_size(1024)
    (64, 1024, 1024)
    """
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` padded along axis 0 to ``size`` rows by repeating its first row (or zeros)."""
    a = np.asarray(a)
    extra = size - a.shape[0]
    if extra <= 0:
        return a
    if a.shape[0] == 0:
        return np.zeros((size, *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([a, np.repeat(a[:1], extra, axis=0)])


def stumpff(z, conic: str = "any"):
    """The Stumpff functions C(z) = (1 − cos √z)/z and S(z) = (√z − sin √z)/√z³.

    Continued analytically to z < 0 (cosh, sinh) and evaluated by their series near 0,
    where the closed forms cancel. A JAX function (traceable; safe to differentiate).
    ``conic="elliptic"`` promises z > −0.1 (true for ellipses, z = αχ² with α > 0) and skips
    the hyperbolic branch, which makes the kernels of elliptic orbits faster.

    >>> c, s = stumpff(jnp.array([0.0, 1e-3, np.pi**2, -4.0]))
    >>> np.round(np.asarray(c), 6), np.round(np.asarray(s), 6)
    (array([0.5     , 0.499958, 0.202642, 0.690549]), array([0.166667, 0.166658, 0.101321, 0.203358]))
    """
    z = jnp.asarray(z, dtype=float)
    small = jnp.abs(z) < _SERIES_Z
    zs = jnp.where(small, z, 0.0)
    # C = Σ (−z)^k/(2k+2)!, S = Σ (−z)^k/(2k+3)!, k = 0..7 (next term < 1e-24 for |z| < 0.1)
    cc = jnp.full_like(z, _INV_FACT[16])
    ss = jnp.full_like(z, _INV_FACT[17])
    for k in range(6, -1, -1):
        cc = _INV_FACT[2 * k + 2] - zs * cc
        ss = _INV_FACT[2 * k + 3] - zs * ss
    zp = jnp.where(z >= _SERIES_Z, z, 1.0)
    sp = jnp.sqrt(zp)
    hp = jnp.sin(0.5 * sp)
    cp = 2.0 * hp * hp / zp
    spp = (sp - jnp.sin(sp)) / (zp * sp)
    if conic == "elliptic":
        return jnp.where(small, cc, cp), jnp.where(small, ss, spp)
    zn = jnp.where(z <= -_SERIES_Z, -z, 1.0)
    sn = jnp.sqrt(zn)
    hn = jnp.sinh(0.5 * sn)
    cn = 2.0 * hn * hn / zn
    snn = (jnp.sinh(sn) - sn) / (zn * sn)
    c = jnp.where(small, cc, jnp.where(z > 0, cp, cn))
    s = jnp.where(small, ss, jnp.where(z > 0, spp, snn))
    return c, s


def perihelion_state_jax(q, e, inc, node, argperi, *, mu: float = GM_SUN, frame=None):
    """:func:`perihelion_state` as a traceable JAX function on arrays of shape (n,),
    returning the vectors as ``(x, y, z)`` tuples of arrays."""
    cw, sw = jnp.cos(argperi), jnp.sin(argperi)
    cn, sn = jnp.cos(node), jnp.sin(node)
    ci, si = jnp.cos(inc), jnp.sin(inc)
    p_hat = (cw * cn - sw * sn * ci, cw * sn + sw * cn * ci, sw * si)
    q_hat = (-sw * cn - cw * sn * ci, -sw * sn + cw * cn * ci, cw * si)
    if frame is not None:
        m = np.asarray(frame, dtype=float)
        p_hat = tuple(sum(m[k, j] * p_hat[j] for j in range(3)) for k in range(3))
        q_hat = tuple(sum(m[k, j] * q_hat[j] for j in range(3)) for k in range(3))
    vp = jnp.sqrt(mu * (1.0 + e) / q)
    return tuple(q * c for c in p_hat), tuple(vp * c for c in q_hat)


def perihelion_state(q, e, inc, node, argperi, *, mu: float = GM_SUN,
                     frame: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity at pericentre from cometary elements (vectorised).

    Parameters
    ----------
    q : array_like
        Pericentre distance, au (> 0).
    e : array_like
        Eccentricity (≥ 0; any conic).
    inc, node, argperi : array_like
        Inclination, longitude of the ascending node, argument of pericentre, **radians**,
        in the reference plane of the elements (the J2000 ecliptic for MPC orbits).
    mu : float
        Gravitational parameter, au³/day².
    frame : (3, 3) array, optional
        Rotation applied to the result, e.g. :data:`~.constants.ECLIPTIC_TO_ICRS` to
        get ICRS vectors from ecliptic elements.

    Returns
    -------
    r0, v0 : ndarray, shape (n, 3)
        au and au/day: ``r0 = q·P̂`` (towards the pericentre), ``v0 = sqrt(μ(1+e)/q)·Q̂``.
    """
    args = [np.atleast_1d(np.asarray(x, dtype=float)) for x in (q, e, inc, node, argperi)]
    r0, v0 = perihelion_state_jax(*map(jnp.asarray, np.broadcast_arrays(*args)), mu=mu,
                                  frame=frame)
    return np.stack([np.asarray(c) for c in r0], axis=-1), np.stack([np.asarray(c) for c in v0], axis=-1)


def _starting_chi(dt, r0, sigma0, alpha, sqrt_mu):
    """Starting values of χ.

    Pericentre starts (σ₀ = 0): the root of the parabolic approximation
    e χ³/6 + q χ = √μ dt (one real root, Cardano). Other starts: √μ dt / r₀. Ellipses are
    limited to half a revolution (|χ| ≤ π/√α), hyperbolas by the logarithmic estimate
    of Vallado (2013, Algorithm 8), whichever is smaller.
    """
    beta = 1.0 - alpha * r0
    target = sqrt_mu * dt
    first = target / r0
    safe_beta = jnp.where(beta > 1e-12, beta, 1.0)
    p = 6.0 * r0 / safe_beta
    qq = 6.0 * target / safe_beta
    w = jnp.sqrt(qq * qq / 4.0 + p**3 / 27.0)
    cubic = jnp.cbrt(qq / 2.0 + w) + jnp.cbrt(qq / 2.0 - w)
    chi = jnp.where((sigma0 == 0.0) & (beta > 1e-12), cubic, first)
    ell = alpha > 0
    lim = jnp.pi / jnp.sqrt(jnp.where(ell, alpha, 1.0))
    chi = jnp.where(ell, jnp.clip(chi, -lim, lim), chi)
    # hyperbolas: χ ≈ sign(dt)·sqrt(−a)·ln(−2μα dt / (r·v + sign(dt)·sqrt(−μa)(1 − r α)))
    hyp = alpha < 0
    a_neg = jnp.where(hyp, -1.0 / jnp.where(hyp, alpha, -1.0), 1.0)
    sgn = jnp.sign(dt)
    den = sigma0 * sqrt_mu + sgn * jnp.sqrt(a_neg) * sqrt_mu * beta
    arg = (-2.0 * sqrt_mu**2 * alpha * dt) / jnp.where(den != 0, den, 1.0)
    good = hyp & (arg > 1.0)
    logv = sgn * jnp.sqrt(a_neg) * jnp.log(jnp.where(good, arg, 2.0))
    chi = jnp.where(good & (jnp.abs(logv) < jnp.abs(chi)), logv, chi)
    return chi


def lagrange_coefficients(rmag, sigma0, alpha, dt, *, mu: float = GM_SUN,
                          reduce_periods: bool = True, conic: str = "any"):
    """The Lagrange coefficients f, g, ḟ, ġ of two-body motion (a traceable JAX function).

    The state after ``dt`` is ``r = f r0 + g v0``, ``v = ḟ r0 + ġ v0``.

    Parameters
    ----------
    rmag : array (n,)
        |r0|, au.
    sigma0 : array (n,)
        r0·v0/√μ.
    alpha : array (n,)
        1/a, au⁻¹ (exact from elements where possible).
    dt : array (n,)
        Days.
    mu : float
        Gravitational parameter (static).
    reduce_periods : bool
        Remove whole revolutions of ellipses from ``dt`` first (exact for two-body motion).
    conic : {"any", "elliptic"}
        "elliptic" when every α > 0 (a faster kernel).

    Returns
    -------
    f, g, fdot, gdot : arrays (n,)
    converged : array (n,) of bool
        False where the Kepler equation did not converge to 1e-13 (non-finite input).
    """
    sqrt_mu = math.sqrt(mu)
    if reduce_periods:
        ell = alpha > 0
        a_ell = jnp.where(ell, alpha, 1.0)
        period = 2.0 * jnp.pi / (sqrt_mu * a_ell * jnp.sqrt(a_ell))
        dt = jnp.where(ell, dt - period * jnp.round(dt / period), dt)
    beta = 1.0 - alpha * rmag
    target = sqrt_mu * dt
    n = _LAGUERRE_N

    def step(chi):
        z = alpha * chi * chi
        c, s = stumpff(z, conic)
        x2 = chi * chi
        f = sigma0 * x2 * c + beta * x2 * chi * s + rmag * chi - target
        fp = sigma0 * chi * (1.0 - z * s) + beta * x2 * c + rmag
        fpp = sigma0 * (1.0 - z * c) + beta * chi * (1.0 - z * s)
        disc = jnp.sqrt(jnp.abs((n - 1.0) ** 2 * fp * fp - n * (n - 1.0) * f * fpp))
        delta = n * f / (fp + jnp.where(fp >= 0, disc, -disc))
        return chi - delta, jnp.abs(delta) <= _TOL * (jnp.abs(chi) + 1e-8)

    def cond(state):
        _, done, it = state
        return (it < _MAX_ITER) & ~jnp.all(done)

    def body(state):
        chi, _, it = state
        chi, done = step(chi)
        return chi, done, it + 1

    chi0 = _starting_chi(dt, rmag, sigma0, alpha, sqrt_mu)
    chi, done, _ = jax.lax.while_loop(cond, body, (chi0, jnp.zeros(chi0.shape, bool), 0))
    z = alpha * chi * chi
    c, s = stumpff(z, conic)
    chi2 = chi * chi
    r = sigma0 * chi * (1.0 - z * s) + beta * chi2 * c + rmag
    f = 1.0 - chi2 * c / rmag
    g = (sigma0 * chi2 * c + rmag * chi * (1.0 - z * s)) / sqrt_mu
    fdot = sqrt_mu * chi * (z * s - 1.0) / (r * rmag)
    gdot = 1.0 - chi2 * c / r
    return f, g, fdot, gdot, done & jnp.isfinite(chi)


def universal_propagate(r0, v0, dt, alpha, *, mu: float = GM_SUN, reduce_periods: bool = True,
                        conic: str = "any"):
    """Propagate states (arrays of shape (n, 3)) by ``dt`` (a traceable JAX function).

    See :func:`lagrange_coefficients` for the arguments. Returns ``r, v, converged``.
    """
    rmag = jnp.sqrt(jnp.sum(r0 * r0, axis=-1))
    sigma0 = jnp.sum(r0 * v0, axis=-1) / math.sqrt(mu)
    f, g, fdot, gdot, ok = lagrange_coefficients(rmag, sigma0, alpha, dt, mu=mu,
                                                 reduce_periods=reduce_periods, conic=conic)
    pos = f[..., None] * r0 + g[..., None] * v0
    vel = fdot[..., None] * r0 + gdot[..., None] * v0
    return pos, vel, ok


@functools.partial(jax.jit, static_argnames=("mu", "reduce_periods"))
def _propagate_jit(r0, v0, dt, alpha, mu, reduce_periods):
    return universal_propagate(r0, v0, dt, alpha, mu=mu, reduce_periods=reduce_periods)


def propagate(r0, v0, dt, *, alpha=None, mu: float = GM_SUN,
              reduce_periods: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Propagate heliocentric states by ``dt`` days on two-body orbits (vectorised).

    Parameters
    ----------
    r0, v0 : array_like, shape (n, 3)
        Positions (au) and velocities (au/day) at the starting time.
    dt : array_like, shape (n,) or scalar
        Time steps, days (any sign, any size).
    alpha : array_like, shape (n,), optional
        1/a = 2/r₀ − v₀²/μ, au⁻¹, if known exactly (e.g. (1 − e)/q from elements: better
        for near-parabolic orbits than recomputing it from the state).
    mu : float
        Gravitational parameter, au³/day².
    reduce_periods : bool
        Remove whole revolutions of elliptic orbits from ``dt`` first (default).

    Returns
    -------
    r, v : ndarray, shape (n, 3)
        The states at ``t0 + dt``.

    Raises
    ------
    KeplerError
        If the Kepler equation does not converge (non-finite input); the message gives the
        index of the first such state.
    """
    r0 = np.atleast_2d(np.asarray(r0, dtype=float))
    v0 = np.atleast_2d(np.asarray(v0, dtype=float))
    n = r0.shape[0]
    dt = np.broadcast_to(np.asarray(dt, dtype=float), (n,))
    if alpha is None:
        alpha = 2.0 / np.linalg.norm(r0, axis=1) - np.einsum("ij,ij->i", v0, v0) / mu
    alpha = np.broadcast_to(np.asarray(alpha, dtype=float), (n,))
    size = bucket_size(n)
    pos, vel, ok = _propagate_jit(*(jnp.asarray(pad_rows(a, size)) for a in (r0, v0, dt, alpha)),
                                  mu=float(mu), reduce_periods=bool(reduce_periods))
    ok = np.asarray(ok)[:n]
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise KeplerError(f"the universal Kepler equation did not converge for {bad.size} "
                          f"state(s); first: index {int(bad[0])} (dt = {dt[bad[0]]!r} d, "
                          f"r0 = {r0[bad[0]].tolist()}, v0 = {v0[bad[0]].tolist()})")
    return np.asarray(pos)[:n], np.asarray(vel)[:n]


def state_to_cometary(r, v, t, *, mu: float = GM_SUN, frame: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
    """Cometary elements of heliocentric states (the inverse of :func:`perihelion_state` +
    :func:`propagate`).

    Parameters
    ----------
    r, v : array_like, shape (n, 3)
        Position (au) and velocity (au/day).
    t : array_like, shape (n,) or scalar
        Time of the states (MJD, TDB).
    mu : float
        Gravitational parameter.
    frame : (3, 3) array, optional
        Rotation applied to the states first (e.g. :data:`~.constants.ICRS_TO_ECLIPTIC` to
        get elements referred to the ecliptic from ICRS states).

    Returns
    -------
    dict
        ``q`` (au), ``e``, ``inc``, ``node``, ``argperi`` (radians, in [0, 2π)), ``tp`` (time
        of pericentre, MJD TDB: the nearest one for ellipses), ``alpha`` (1/a, au⁻¹).
        Circular orbits get ω = 0 and equatorial ones Ω = 0 by convention.

    >>> r0, v0 = perihelion_state(2.0, 0.3, 0.2, 1.0, 2.0)
    >>> r, v = propagate(r0, v0, 100.0)
    >>> el = state_to_cometary(r, v, 60100.0)
    >>> round(float(el["q"][0]), 12), round(float(el["e"][0]), 12), round(float(el["tp"][0]), 9)
    (2.0, 0.3, 60000.0)
    """
    r = np.atleast_2d(np.asarray(r, dtype=float))
    v = np.atleast_2d(np.asarray(v, dtype=float))
    if frame is not None:
        r = r @ np.asarray(frame).T
        v = v @ np.asarray(frame).T
    t = np.broadcast_to(np.asarray(t, dtype=float), (r.shape[0],))
    rmag = np.linalg.norm(r, axis=1)
    h = np.cross(r, v)
    hmag = np.linalg.norm(h, axis=1)
    hhat = h / hmag[:, None]
    evec = np.cross(v, h) / mu - r / rmag[:, None]
    e = np.linalg.norm(evec, axis=1)
    inc = np.arccos(np.clip(hhat[:, 2], -1.0, 1.0))
    nvec = np.stack([-hhat[:, 1], hhat[:, 0], np.zeros_like(hmag)], axis=1)
    nmag = np.linalg.norm(nvec, axis=1)
    equatorial = nmag < 1e-14
    node = np.where(equatorial, 0.0, np.arctan2(nvec[:, 1], nvec[:, 0]))
    nhat = np.where(equatorial[:, None], np.array([1.0, 0.0, 0.0]),
                    nvec / np.where(equatorial, 1.0, nmag)[:, None])
    what = np.cross(hhat, nhat)
    circular = e < 1e-12
    phat = np.where(circular[:, None], nhat, evec / np.where(circular, 1.0, e)[:, None])
    argperi = np.arctan2(np.einsum("ij,ij->i", phat, what), np.einsum("ij,ij->i", phat, nhat))
    q = hmag**2 / (mu * (1.0 + e))
    alpha = 2.0 / rmag - np.einsum("ij,ij->i", v, v) / mu
    qhat = np.cross(hhat, phat)
    nu = np.arctan2(np.einsum("ij,ij->i", r, qhat), np.einsum("ij,ij->i", r, phat))
    tp = t - _time_since_pericentre(q, e, nu, mu)
    two_pi = 2.0 * np.pi
    return {"q": q, "e": e, "inc": inc, "node": np.mod(node, two_pi),
            "argperi": np.mod(argperi, two_pi), "tp": tp, "alpha": alpha}


def _time_since_pericentre(q, e, nu, mu):
    """t − tp for true anomaly ν (|ν| ≤ π for ellipses, inside the asymptotes otherwise).

    The universal anomaly from pericentre is χ = 2·sqrt(q/(1+e))·T(k, tan(ν/2)) with
    k = sqrt(|1−e|/(1+e)) and T = atan(kx)/k (e < 1), atanh(kx)/k (e > 1), x (e = 1): the
    eccentric (hyperbolic) anomaly over √|α|, written so that it stays exact as e → 1.
    """
    x = np.tan(0.5 * nu)
    k = np.sqrt(np.abs(1.0 - e) / (1.0 + e))
    kx = k * x
    u2 = kx * kx
    series = np.abs(kx) < 1e-4
    safe_k = np.where(series, 1.0, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ell = np.arctan(kx) / safe_k
        t_hyp = np.arctanh(np.clip(kx, -1.0, 1.0)) / safe_k
    t = np.where(e < 1.0, np.where(series, x * (1.0 - u2 / 3.0 + u2 * u2 / 5.0), t_ell),
                 np.where(series, x * (1.0 + u2 / 3.0 + u2 * u2 / 5.0), t_hyp))
    chi = 2.0 * np.sqrt(q / (1.0 + e)) * t
    _, s = (np.asarray(a) for a in stumpff(jnp.asarray((1.0 - e) / q * chi * chi)))
    return (e * chi**3 * s + q * chi) / np.sqrt(mu)
