"""Adaptive (elliptical-Gaussian-weighted) second moments of many cutouts at once.

The weight is a Gaussian with the current estimate of the source's moments ``M``. For a
Gaussian source of covariance ``Σ`` the weighted covariance of the pixels is
``Q = (M⁻¹ + Σ⁻¹)⁻¹``; each iteration solves it for ``Σ = (Q⁻¹ - M⁻¹)⁻¹`` (exact in one step
for a Gaussian) and uses it as the next weight, as the SDSS/HSM adaptive moments do. At
convergence ``M`` is the source's adaptive second-moment matrix (pixels²).
"""

from __future__ import annotations

import numpy as np

__all__ = ["adaptive_moments"]


def _invert(ixx: np.ndarray, iyy: np.ndarray, ixy: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    det = ixx * iyy - ixy * ixy
    with np.errstate(invalid="ignore", divide="ignore"):
        return iyy / det, ixx / det, -ixy / det, det


def adaptive_moments(data: np.ndarray, usable: np.ndarray, u0: np.ndarray, v0: np.ndarray,
                     moments0: np.ndarray, *, max_iter: int = 12, tol: float = 1e-5
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive moments of the positive signal in each (n, S, S) cutout.

    Parameters
    ----------
    data : (n, S, S)
        Pixels (flip the sign of negative sources first).
    usable : (n, S, S) bool
    u0, v0 : (n,)
        Starting centre, pixels from the cutout's centre pixel.
    moments0 : (n, 3)
        Starting ``(ixx, iyy, ixy)``, pixels².

    Returns
    -------
    u, v : (n,)
        Weighted centroid.
    moments : (n, 3)
        ``(ixx, iyy, ixy)`` in pixels² (NaN where it failed).
    failed : (n,) bool
        No positive weighted flux, or moments that are not positive definite or ran away.
    """
    n, size, _ = data.shape
    grid = np.arange(size, dtype=float) - size // 2
    d = np.where(usable, data, 0.0)
    u, v = np.array(u0, float), np.array(v0, float)
    ixx, iyy, ixy = (np.array(moments0[:, i], float) for i in range(3))
    failed = np.zeros(n, bool)
    active = np.ones(n, bool)
    limit = (size / 2.0) ** 2
    for _ in range(max_iter):
        a = np.nonzero(active)[0]
        if len(a) == 0:
            break
        wxx, wyy, wxy, _ = _invert(ixx[a], iyy[a], ixy[a])
        dx = grid[None, None, :] - u[a, None, None]
        dy = grid[None, :, None] - v[a, None, None]
        q = wxx[:, None, None] * dx * dx + wyy[:, None, None] * dy * dy \
            + 2 * wxy[:, None, None] * dx * dy
        wd = np.exp(-0.5 * np.minimum(q, 60.0)) * d[a]
        s0 = wd.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = (wd * dx).sum(axis=(1, 2)) / s0
            my = (wd * dy).sum(axis=(1, 2)) / s0
            qxx = (wd * dx * dx).sum(axis=(1, 2)) / s0 - mx * mx
            qyy = (wd * dy * dy).sum(axis=(1, 2)) / s0 - my * my
            qxy = (wd * dx * dy).sum(axis=(1, 2)) / s0 - mx * my
        # Σ = (Q⁻¹ - M⁻¹)⁻¹ where positive definite, else the classic update 2Q.
        pxx, pyy, pxy, qdet = _invert(qxx, qyy, qxy)
        sxx, syy, sxy, sdet = _invert(pxx - wxx, pyy - wyy, pxy - wxy)
        deconv_ok = (qdet > 0) & (sdet > 0) & (sxx > 0) & (syy > 0) & (sxx * syy > sxy * sxy) \
            & (pxx > wxx) & (pyy > wyy)
        nxx = np.where(deconv_ok, sxx, 2 * qxx)
        nyy = np.where(deconv_ok, syy, 2 * qyy)
        nxy = np.where(deconv_ok, sxy, 2 * qxy)
        bad = ~(s0 > 0) | ~(nxx > 0) | ~(nyy > 0) | ~(nxx * nyy > nxy * nxy) \
            | (nxx + nyy > limit) | ~np.isfinite(mx + my)
        change = np.abs(nxx - ixx[a]) + np.abs(nyy - iyy[a]) + np.abs(nxy - ixy[a])
        scale = ixx[a] + iyy[a]
        good = ~bad
        ga = a[good]
        u[ga] += mx[good]
        v[ga] += my[good]
        ixx[ga], iyy[ga], ixy[ga] = nxx[good], nyy[good], nxy[good]
        failed[a[bad]] = True
        active[a[bad]] = False
        done = good & (change < tol * scale) & (np.abs(mx) + np.abs(my) < tol)
        active[a[done]] = False
    moments = np.stack([ixx, iyy, ixy], axis=1)
    moments[failed] = np.nan
    return u, v, moments, failed
