"""Levenberg–Marquardt over many small independent least-squares problems at once.

Each problem k minimises ``χ²_k(p) = Σ_i w_ki (d_ki - m_k(p)_i)²``. One call of the model
function evaluates the model and its Jacobian for a subset of the problems (those still
iterating), so the cost per iteration is one batched evaluation. The parameter covariance
is the inverse of the Gauss–Newton curvature ``JᵀWJ`` at the solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LmResult", "inverse_curvature", "levenberg_marquardt"]

ModelFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class LmResult:
    """The solution of each problem.

    Attributes
    ----------
    params : (n, k)
    cov : (n, k, k)
        Inverse curvature (NaN where singular).
    curvature : (n, k, k)
        ``JᵀWJ`` at the solution.
    chi2 : (n,)
    ndata : (n,)
        Pixels with weight > 0.
    n_iter : (n,)
    converged : (n,) bool
    """

    params: np.ndarray
    cov: np.ndarray
    curvature: np.ndarray
    chi2: np.ndarray
    ndata: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


def _normal_equations(jac: np.ndarray, weight: np.ndarray, resid: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    jw = np.transpose(jac * weight[:, :, None], (0, 2, 1))
    h = np.matmul(jw, jac).astype(float)
    return h, np.matmul(jw, resid[:, :, None])[:, :, 0].astype(float)


def inverse_curvature(h: np.ndarray) -> np.ndarray:
    """Inverses of (n, k, k) curvature matrices; NaN where singular (condition > 1e12)."""
    out = np.full_like(h, np.nan)
    if len(h) == 0:
        return out
    diag = np.sqrt(np.abs(np.diagonal(h, axis1=1, axis2=2)))
    ok = np.all(diag > 0, axis=1) & np.all(np.isfinite(h), axis=(1, 2))
    if not np.any(ok):
        return out
    # Scale to unit diagonal before inverting: the parameters differ by orders of magnitude.
    d = diag[ok]
    scaled = h[ok] / (d[:, :, None] * d[:, None, :])
    cond = np.linalg.cond(scaled)
    good = np.isfinite(cond) & (cond < 1e12)
    inv = np.full_like(scaled, np.nan)
    if np.any(good):
        inv[good] = np.linalg.inv(scaled[good])
    out[ok] = inv / (d[:, :, None] * d[:, None, :])
    return out


def levenberg_marquardt(model: ModelFn, p0: np.ndarray, data: np.ndarray, weight: np.ndarray, *,
                        max_iter: int = 30, tol: float = 1e-3, max_step: np.ndarray | None = None,
                        normalise: Callable[[np.ndarray], np.ndarray] | None = None
                        ) -> LmResult:
    """Solve every problem by Levenberg–Marquardt.

    Parameters
    ----------
    model : callable
        ``model(params (m, k), idx (m,)) -> (model (m, npix), jacobian (m, npix, k))`` for
        the problems ``idx``.
    p0 : (n, k)
        Starting parameters.
    data, weight : (n, npix)
        Data and inverse variances (0 for pixels left out).
    max_iter : int
        Model evaluations per problem after the first.
    tol : float
        A problem has converged when the next step is predicted to lower χ² by less than
        ``tol``, or a step changed it by less (default 1e-3: a few hundredths of a σ in any
        parameter).
    max_step : (k,), optional
        The largest change of each parameter in one step.
    normalise : callable, optional
        Maps accepted parameters to their canonical form (e.g. wraps angles).
    """
    p = np.array(p0, float)
    n, k = p.shape
    all_idx = np.arange(n)
    m, jac = model(p, all_idx)
    resid = data - m
    chi2 = np.sum(weight * resid * resid, axis=1)
    h, g = _normal_equations(jac, weight, resid)
    lam = np.full(n, 1e-3)
    nu = np.full(n, 10.0)
    n_iter = np.zeros(n, np.int64)
    converged = np.zeros(n, bool)
    active = np.isfinite(chi2)
    eye = np.eye(k)
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if len(idx) == 0:
            break
        ha = h[idx]
        diag = np.diagonal(ha, axis1=1, axis2=2)
        damp = (lam[idx][:, None] * np.where(diag > 0, diag, 1.0))[:, :, None] * eye
        try:
            step = np.linalg.solve(ha + damp, g[idx][:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.einsum("nkl,nl->nk", np.linalg.pinv(ha + damp), g[idx])
        if max_step is not None:
            scale = np.max(np.abs(step) / max_step, axis=1)
            step = step / np.maximum(scale, 1.0)[:, None]
        # The quadratic model's predicted χ² decrease: below tol (with little damping) the
        # problem is solved — in flat or degenerate directions too, where χ² creeps.
        predicted = 2.0 * np.einsum("nk,nk->n", step, g[idx]) \
            - np.einsum("nk,nkl,nl->n", step, ha, step)
        settled = (predicted < tol) & (lam[idx] <= 1e-2)
        if np.any(settled):
            converged[idx[settled]] = True
            active[idx[settled]] = False
            idx, step, predicted = idx[~settled], step[~settled], predicted[~settled]
            if len(idx) == 0:
                break
        trial = p[idx] + step
        if normalise is not None:
            trial = normalise(trial)
        m_t, jac_t = model(trial, idx)
        resid_t = data[idx] - m_t
        chi2_t = np.sum(weight[idx] * resid_t * resid_t, axis=1)
        n_iter[idx] += 1
        gain = chi2[idx] - chi2_t
        better = np.isfinite(chi2_t) & (gain > 0)
        ib = idx[better]
        if len(ib):
            p[ib] = trial[better]
            chi2[ib] = chi2_t[better]
            h[ib], g[ib] = _normal_equations(jac_t[better], weight[ib], resid_t[better])
            # Damping follows how well the quadratic model predicted the gain (Nielsen 1999):
            # an overshooting step (zig-zag in a curved valley) gains less and is damped more.
            rho = gain[better] / np.maximum(predicted[better], 1e-300)
            lam[ib] = np.maximum(lam[ib] * np.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 1e-9)
            nu[ib] = 10.0
        iw = idx[~better]
        lam[iw] *= nu[iw]
        nu[iw] *= 2.0
        # Converged: χ² changes by less than tol (either way: rounding makes a step at the
        # minimum look slightly worse), or no damped step lowers it any more.
        done = (np.isfinite(chi2_t) & (np.abs(gain) < tol)) | (lam[idx] > 1e6)
        converged[idx[done]] = True
        active[idx[done]] = False
    ndata = np.sum(weight > 0, axis=1)
    return LmResult(p, inverse_curvature(h), h, chi2, ndata, n_iter, converged)
