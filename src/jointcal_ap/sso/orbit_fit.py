"""Least-squares two-body orbits fitted to astrometry, many orbits at once.

:func:`fit_orbits` refines heliocentric states (position and velocity at an epoch, ICRS)
so that their two-body ephemerides (:func:`~.ephemeris` kernels: light time, topocentric
observer) match observed positions. It is a damped Gauss–Newton (Levenberg–Marquardt)
iteration run on all orbits together: each iteration evaluates the model at the current
states and at forward-difference steps of each of the 6 parameters (1e-6 au, 1e-8 au/day)
in one batched kernel call, accumulates each orbit's 6×6 normal equations with segment sums, and solves them
together. Residuals are tangent-plane offsets (computed − observed, arcsec, RA × cos δ)
divided by the positional errors. After convergence, detections beyond ``clip_sigma``
are dropped and the fit repeated (``n_clip`` times).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointcal_ap._jax import jnp
from jointcal_ap.sso.constants import DAY_S, TT_MINUS_TAI_S
from jointcal_ap.sso.kepler import bucket_size, pad_rows
from jointcal_ap.sso.observer import ObserverStates

__all__ = ["OrbitFits", "fit_orbits", "predict_radec"]

_ARCSEC = 3600.0
# forward-difference steps: position (au), velocity (au/day)
_STEPS = np.array([1e-6, 1e-6, 1e-6, 1e-8, 1e-8, 1e-8])


def predict_radec(r0: np.ndarray, v0: np.ndarray, epoch_tt: float | np.ndarray,
                  observer: ObserverStates) -> tuple[np.ndarray, np.ndarray]:
    """Astrometric RA, Dec (degrees) of heliocentric ICRS states ``(r0, v0)`` given at
    ``epoch_tt`` (MJD TT), one state per observer row (arrays of shape (m, 3))."""
    from jointcal_ap.sso.ephemeris import _states_kernel

    m = len(observer)
    size = bucket_size(m)
    dt = observer.mjd_tai + TT_MINUS_TAI_S / DAY_S - np.broadcast_to(epoch_tt, (m,))
    args = [pad_rows(np.asarray(a, float), size) for a in (r0, v0, dt)]
    nan = np.full(size, np.nan)
    out, _ = _states_kernel(*(jnp.asarray(a) for a in args), jnp.asarray(nan),
                            jnp.asarray(np.full(size, 0.15)),
                            *(jnp.asarray(pad_rows(a, size)) for a in (
                                observer.position, observer.velocity, observer.sun_position,
                                observer.sun_velocity)), reduce_periods=False,
                            columns=("ephRa", "ephDec"))
    return np.asarray(out["ephRa"])[:m], np.asarray(out["ephDec"])[:m]


@dataclass(frozen=True)
class OrbitFits:
    """Fitted orbits (one entry per group).

    Attributes
    ----------
    r, v : ndarray (g, 3)
        Heliocentric ICRS position (au) and velocity (au/day) at ``epoch_tt``.
    epoch_tt : float
    chi2 : ndarray (g,)
        Of the detections used.
    rms_arcsec : ndarray (g,)
        RMS of the residual offsets of the detections used.
    n_used : ndarray (g,)
        Detections kept.
    used : ndarray of bool (m,)
        Per detection.
    residual_arcsec : ndarray (m,)
        |observed − computed| per detection.
    converged : ndarray of bool (g,)
    covariance : ndarray (g, 6, 6)
        Formal covariance of (r, v) from the normal equations.
    """

    r: np.ndarray
    v: np.ndarray
    epoch_tt: float
    chi2: np.ndarray
    rms_arcsec: np.ndarray
    n_used: np.ndarray
    used: np.ndarray
    residual_arcsec: np.ndarray
    converged: np.ndarray
    covariance: np.ndarray


def fit_orbits(group: np.ndarray, ra: np.ndarray, dec: np.ndarray, sigma_arcsec: np.ndarray,
               observer: ObserverStates, r0: np.ndarray, v0: np.ndarray, epoch_tt: float, *,
               max_iter: int = 30, clip_sigma: float = 5.0, n_clip: int = 2) -> OrbitFits:
    """Fit two-body orbits to groups of detections, all groups at once.

    Parameters
    ----------
    group : ndarray of int (m,)
        Orbit index of each detection (0 ≤ group < g).
    ra, dec : ndarray (m,)
        Observed positions, degrees.
    sigma_arcsec : ndarray (m,)
        Positional 1σ per coordinate, arcsec.
    observer : ObserverStates
        One row per detection (its time and site).
    r0, v0 : ndarray (g, 3)
        Starting states at ``epoch_tt`` (heliocentric ICRS, au, au/day).
    epoch_tt : float
        MJD TT of the states.
    max_iter, clip_sigma, n_clip
        Iterations per pass; the outlier threshold (|residual| / σ); clipping passes.

    Returns
    -------
    OrbitFits
    """
    group = np.asarray(group, np.int64)
    ra = np.asarray(ra, float)
    dec = np.asarray(dec, float)
    g = r0.shape[0]
    m = group.size
    x = np.concatenate([np.asarray(r0, float), np.asarray(v0, float)], axis=1)
    weight = 1.0 / np.asarray(sigma_arcsec, float) ** 2
    used = np.ones(m, bool)
    converged = np.zeros(g, bool)
    cos_dec = np.cos(np.radians(dec))

    def model(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (model − observed, arcsec) for a stack of state sets (k, g, 6) → (k, m)."""
        k = states.shape[0]
        rows = states[:, group, :].reshape(k * m, 6)
        obs = observer.take(np.tile(np.arange(m), k))
        pra, pdec = predict_radec(rows[:, :3], rows[:, 3:], epoch_tt, obs)
        rx = ((pra.reshape(k, m) - ra + 180.0) % 360.0 - 180.0) * cos_dec * _ARCSEC
        ry = (pdec.reshape(k, m) - dec) * _ARCSEC
        return rx, ry

    def chi2_of(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=np.where(used, (rx * rx + ry * ry) * weight, 0.0),
                           minlength=g)

    def normal_equations(rx: np.ndarray, ry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # forward differences: the 6 perturbed state sets in one call
        stack = np.repeat(x[None], 6, axis=0)
        for p in range(6):
            stack[p, :, p] += _STEPS[p]
        sx, sy = model(stack)
        jx = np.stack([(sx[p] - rx) / _STEPS[p] for p in range(6)], axis=1)
        jy = np.stack([(sy[p] - ry) / _STEPS[p] for p in range(6)], axis=1)
        w = np.where(used, weight, 0.0)
        jj = w[:, None, None] * (jx[:, :, None] * jx[:, None, :] + jy[:, :, None] * jy[:, None, :])
        jr = w[:, None] * (jx * rx[:, None] + jy * ry[:, None])
        a = np.empty((g, 6, 6))
        for i in range(6):
            for j in range(i, 6):
                a[:, i, j] = a[:, j, i] = np.bincount(group, weights=jj[:, i, j], minlength=g)
        b = np.stack([np.bincount(group, weights=jr[:, i], minlength=g) for i in range(6)], axis=1)
        return a, b

    rx, ry = (r[0] for r in model(x[None]))
    for pass_ in range(n_clip + 1):
        lam = np.full(g, 1e-3)
        active = np.ones(g, bool)
        current = chi2_of(rx, ry)
        for _ in range(max_iter):
            if not active.any():
                break
            a, b = normal_equations(rx, ry)
            diag = np.einsum("gii->gi", a)
            damped = a + (lam[:, None] * np.where(diag > 0, diag, 1.0))[:, :, None] * np.eye(6)
            step = np.zeros((g, 6))
            for k in np.flatnonzero(active):
                try:
                    step[k] = -np.linalg.solve(damped[k], b[k])
                except np.linalg.LinAlgError:
                    active[k] = False
            trial = x + step
            tx, ty = (r[0] for r in model(trial[None]))
            new = chi2_of(tx, ty)
            better = active & (new <= current) & np.isfinite(new)
            x = np.where(better[:, None], trial, x)
            rows_better = better[group]
            rx = np.where(rows_better, tx, rx)
            ry = np.where(rows_better, ty, ry)
            # converged: the step changes χ² by less than 1e-6 (relative), better or not
            small = active & (np.abs(current - new) <= 1e-6 * np.maximum(current, 1.0))
            converged |= small
            active &= ~small
            lam = np.where(better, lam / 10.0, lam * 10.0)
            active &= lam < 1e10
            current = np.where(better, new, current)
        if pass_ == n_clip:
            break
        # clip only the orbits that converged
        keep = (np.sqrt((rx * rx + ry * ry) * weight) <= clip_sigma) | ~converged[group]
        if np.array_equal(keep & used, used):
            break
        used &= keep
        converged[:] = False
    a, _ = normal_equations(rx, ry)
    cov = np.full((g, 6, 6), np.nan)
    for k in range(g):
        try:
            cov[k] = np.linalg.inv(a[k])
        except np.linalg.LinAlgError:
            pass
    res = np.hypot(rx, ry)
    n_used = np.bincount(group, weights=used.astype(float), minlength=g).astype(np.int64)
    chi2 = chi2_of(rx, ry)
    sq = np.bincount(group, weights=np.where(used, res * res, 0.0), minlength=g)
    rms = np.sqrt(sq / np.maximum(n_used, 1))
    return OrbitFits(x[:, :3], x[:, 3:], float(epoch_tt), chi2, rms, n_used, used, res,
                     converged, cov)
