"""The exact weighted linear least-squares solve of the photometric fit, star magnitudes eliminated.

The problem, in magnitudes, is linear. For measurement ``i`` of star ``s`` (instrumental
magnitude ``m_i``, weight ``w_i = 1/σ_i²``) and a reference constraint on star ``s``
(target ``t_s``, weight ``ω_s``)::

    Q(θ, m) = Σ_i w_i (m_i + a_i·θ − m_s)² + Σ_s ω_s (m_s − b_s·θ − t_s)²

where ``a_i`` (row ``i`` of the sparse design ``A``) evaluates the calibration of the
measurement's CCD and ``b_s`` holds the colour-term column. Setting ∂Q/∂m_s = 0 gives
``m_s = (U_s·θ + q_s)/D_s`` with ``D_s = Σ_i w_i + ω_s``, ``U_s = Σ_i w_i a_i + ω_s b_s``
and ``q_s = Σ_i w_i m_i + ω_s t_s``; substituting leaves the small dense reduced system
(the Schur complement)::

    N θ = −g,   N = AᵀWA + BᵀΩB − Uᵀ D⁻¹ U,   g = AᵀW m + BᵀΩ t − Uᵀ D⁻¹ q

Gauge freedoms are removed by linear constraints ``C θ = d``: θ = θ₀ + T φ with T a
basis of the null space of C, so the solved system is ``TᵀNT φ = −Tᵀ(g + N θ₀)`` and
``Cov(θ) = T (TᵀNT)⁻¹ Tᵀ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp

from jointcal_ap.errors import FitError

__all__ = ["LinearSolution", "ReducedSystem", "solve_reduced"]

#: Smallest eigenvalue, relative to the largest, of the Jacobi-scaled reduced system.
_RCOND = 1e-11


@dataclass(frozen=True)
class LinearSolution:
    """The solution of one weighted linear least-squares solve.

    Attributes
    ----------
    theta : ndarray, shape (P,)
        Calibration parameters.
    covariance : ndarray, shape (P, P)
        Their covariance (mag²), zero along the constrained directions.
    star_mag : ndarray, shape (n_stars,)
        Fitted star magnitudes; NaN for stars with no weight.
    star_var_stat : ndarray, shape (n_stars,)
        ``1/D_s``: the variance of a star's magnitude for a known calibration.
    star_design : scipy.sparse matrix, shape (n_stars, P)
        ``E = D⁻¹ U``: ``m_s = E_s·θ + f_s``, so ``Var(m_s) = 1/D_s + E_s Cov(θ) E_sᵀ``.
    n_free : int
        Number of free parameters (P minus the number of independent constraints).
    """

    theta: np.ndarray
    covariance: np.ndarray
    star_mag: np.ndarray
    star_var_stat: np.ndarray
    star_design: sp.csr_matrix
    n_free: int

    def star_variance(self, chunk: int = 20000) -> np.ndarray:
        """Full variance of every fitted star magnitude (mag²), calibration error included."""
        n = self.star_design.shape[0]
        out = np.empty(n)
        for start in range(0, n, chunk):
            e = self.star_design[start:start + chunk]
            out[start:start + chunk] = np.asarray((e @ self.covariance) * e.toarray()).sum(axis=1)
        return out + self.star_var_stat


@dataclass(frozen=True)
class ReducedSystem:
    """The normal equations with the star magnitudes eliminated (see the module docstring).

    ``normal`` (P, P) and ``gradient`` (P,) are sums of one term per star, so a change to a few
    stars' measurements is an update of those terms (:meth:`updated`), not a new sum over
    every measurement. ``d``, ``q`` (n_stars,) and ``e`` = D⁻¹U (n_stars × P) give the stars'
    magnitudes for a calibration.
    """

    normal: np.ndarray
    gradient: np.ndarray
    d: np.ndarray
    q: np.ndarray
    e: sp.csr_matrix

    @classmethod
    def build(cls, design, weight, mag, star, n_stars, ref_weight, ref_target, ref_design, *,
              normal: bool = True) -> ReducedSystem:
        """The system of these measurements and reference constraints (``normal=False``: only
        ``d``, ``q`` and ``e``; ``normal`` and ``gradient`` are then zero)."""
        n, p = design.shape
        incidence = sp.csr_matrix((np.ones(n), (np.arange(n), star)), shape=(n, n_stars))
        weighted = sp.csr_matrix(design.multiply(weight[:, None]))
        weighted_ref = sp.csr_matrix(ref_design.multiply(ref_weight[:, None]))
        d = np.asarray(incidence.T @ weight).ravel() + ref_weight
        u = sp.csr_matrix(incidence.T @ weighted + weighted_ref)
        q = np.asarray(incidence.T @ (weight * mag)).ravel() + ref_weight * ref_target
        d_inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
        e = sp.csr_matrix(sp.diags(d_inv) @ u)
        if not normal:
            return cls(np.zeros((p, p)), np.zeros(p), d, q, e)
        gram = (design.T @ weighted).toarray() + (ref_design.T @ weighted_ref).toarray() - (u.T @ e).toarray()
        gradient = (np.asarray(design.T @ (weight * mag)).ravel()
                    + np.asarray(ref_design.T @ (ref_weight * ref_target)).ravel()
                    - np.asarray(u.T @ (d_inv * q)).ravel())
        return cls(gram, gradient, d, q, e)

    def updated(self, old: ReducedSystem, new: ReducedSystem, stars: ReducedSystem) -> ReducedSystem:
        """This system with some stars' terms replaced: ``old``/``new`` are those stars' systems
        before and after the change (built from their rows alone), ``stars`` the ``d``/``q``/``e``
        of every star after it."""
        return ReducedSystem(self.normal - old.normal + new.normal, self.gradient - old.gradient + new.gradient,
                             stars.d, stars.q, stars.e)


def solve_reduced(design: sp.csr_matrix, weight: np.ndarray, mag: np.ndarray, star: np.ndarray, n_stars: int,
                  ref_weight: np.ndarray, ref_target: np.ndarray, ref_design: sp.csr_matrix,
                  constraints: np.ndarray, constraint_values: np.ndarray,
                  parameter_names: Sequence[str], *, system: ReducedSystem | None = None) -> LinearSolution:
    """Solve the photometric least squares with the star magnitudes eliminated.

    Parameters
    ----------
    design : sparse, shape (n, P)
        ``a_i``: the calibration (mag) of measurement i is ``a_i·θ``.
    weight, mag : ndarray, shape (n,)
        ``1/σ_i²`` (mag⁻²) and the instrumental magnitudes ``−2.5 log10(flux)``.
    star : int ndarray, shape (n,)
        Star index of each measurement, in ``[0, n_stars)``.
    ref_weight, ref_target : ndarray, shape (n_stars,)
        Reference constraint ``m_s = t_s + b_s·θ`` with weight ``ω_s`` (0: none).
    ref_design : sparse, shape (n_stars, P)
        ``b_s``.
    constraints, constraint_values : ndarray, shapes (r, P) and (r,)
        ``C θ = d``.
    parameter_names : sequence of str
        For the message of a degenerate system.
    system : ReducedSystem, optional
        The reduced system of exactly these inputs, if already at hand (e.g. updated from
        the previous clipping round); otherwise it is built.

    Raises
    ------
    FitError
        The reduced system is singular: the data do not constrain some combination
        of parameters (named in the message and in ``diagnostics["degenerate"]``).
    """
    if system is None:
        system = ReducedSystem.build(design, weight, mag, star, n_stars, ref_weight, ref_target, ref_design)
    p = design.shape[1]
    normal = 0.5 * (system.normal + system.normal.T)
    gradient, d, q, e = system.gradient, system.d, system.q, system.e
    d_inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)

    basis, theta0 = _constrained_basis(constraints, constraint_values, p)
    m = basis.T @ normal @ basis
    h = -basis.T @ (gradient + normal @ theta0)
    diag = np.diag(m).copy()
    if np.any(diag <= 0):
        bad = np.argmax(np.abs(basis[:, int(np.argmin(diag))]))
        raise FitError(f"the photometric fit is degenerate: no measurement constrains {parameter_names[bad]}",
                       {"degenerate": [parameter_names[bad]]})
    scale = 1.0 / np.sqrt(diag)
    scaled = m * scale[:, None] * scale[None, :]
    inv = _cholesky_inverse(scaled)
    if inv is not None:  # well conditioned: no eigendecomposition needed
        inv = inv * scale[:, None] * scale[None, :]
    else:
        inv = _eigen_inverse(scaled, basis, scale, parameter_names) * scale[:, None] * scale[None, :]
    phi = inv @ h
    theta = theta0 + basis @ phi
    covariance = basis @ inv @ basis.T
    star_mag = np.where(d > 0, np.asarray(e @ theta).ravel() + d_inv * q, np.nan)
    return LinearSolution(theta=theta, covariance=0.5 * (covariance + covariance.T), star_mag=star_mag,
                          star_var_stat=np.where(d > 0, d_inv, np.nan), star_design=e, n_free=basis.shape[1])


_BASIS_CACHE: dict = {}


def _constrained_basis(constraints: np.ndarray, values: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """θ = θ₀ + T φ: a basis T of the null space of C and a particular solution θ₀ of C θ = d.

    The last one is kept: the clipping rounds of a fit solve with the same constraints, and the
    SVD behind the null space is the costliest dense step of a round.
    """
    if not len(constraints):
        return np.eye(p), np.zeros(p)
    key = (constraints.shape, constraints.tobytes(), np.asarray(values).tobytes())
    hit = _BASIS_CACHE.get("last")
    if hit is None or hit[0] != key:
        basis = scipy.linalg.null_space(constraints)
        theta0 = np.linalg.lstsq(constraints, values, rcond=None)[0]
        _BASIS_CACHE["last"] = hit = (key, basis, theta0)
    return hit[1], hit[2]


#: Reciprocal condition number (LAPACK's 1-norm estimate) below which the Cholesky path hands
#: over to the eigendecomposition, which decides about degeneracy exactly (cond₂ ≤ cond₁).
_CHOLESKY_RCOND = 1e-9


def _cholesky_inverse(matrix: np.ndarray) -> np.ndarray | None:
    """The inverse of a symmetric positive definite matrix through its Cholesky factor, or None
    when it is not positive definite or not clearly better conditioned than ``_RCOND``."""
    try:
        factor, lower = scipy.linalg.cho_factor(matrix, lower=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return None
    anorm = float(np.max(np.sum(np.abs(matrix), axis=0)))
    rcond, info = scipy.linalg.lapack.dpocon(factor, anorm, uplo="L")
    if info != 0 or not rcond >= _CHOLESKY_RCOND:
        return None
    return scipy.linalg.cho_solve((factor, lower), np.eye(len(matrix)), check_finite=False)


def _eigen_inverse(scaled: np.ndarray, basis: np.ndarray, scale: np.ndarray, parameter_names) -> np.ndarray:
    """The inverse through the eigendecomposition; raises :class:`FitError` naming the
    parameters of an unconstrained combination (eigenvalue ratio ≤ ``_RCOND``)."""
    eigval, eigvec = np.linalg.eigh(scaled)
    if eigval[0] <= _RCOND * eigval[-1]:
        direction = basis @ (scale * eigvec[:, 0])
        top = np.argsort(-np.abs(direction))[:4]
        names = [parameter_names[k] for k in top if abs(direction[k]) > 0.1 * np.abs(direction).max()]
        raise FitError("the photometric fit is degenerate (a combination of parameters is unconstrained: "
                       f"{', '.join(names)}); check that every visit shares stars with the others or with "
                       "the reference catalog", {"degenerate": names, "eigenvalue_ratio": float(eigval[0] / eigval[-1])})
    return (eigvec / eigval) @ eigvec.T
