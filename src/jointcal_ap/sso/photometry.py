"""Asteroid phase functions (H–G and H–G12) and vectorised H, G12 fits.

Magnitudes of a Solar System object at heliocentric distance r, observer distance Δ (au)
and phase angle α follow ::

    m = H + 5 log10(r Δ) − 2.5 log10 Φ(α)

- **H–G** (Bowell et al. 1989, the IAU system of 1985; the MPC's ``h``, ``g``):
  Φ = (1 − G) Φ₁ + G Φ₂ with Φᵢ = W Φᵢˢ + (1 − W) Φᵢᴸ, W = exp(−90.56 tan²(α/2)),
  Φᵢˢ = 1 − Cᵢ sin α / (0.119 + 1.341 sin α − 0.754 sin² α), Φᵢᴸ = exp(−Aᵢ tan(α/2)^Bᵢ),
  A = (3.332, 1.862), B = (0.631, 1.218), C = (0.986, 0.238). Used for ``ephVmag``.
- **H–G12** (Muinonen et al. 2010, Icarus 209, 542): Φ = G₁Φ₁ + G₂Φ₂ + (1 − G₁ − G₂)Φ₃
  with the basis functions of that paper (cubic splines through its tabulated nodes with
  its end derivatives; Φ₁, Φ₂ linear below 7.5°, Φ₃ zero beyond 30°) and G₁, G₂ linear in
  G12. Two parametrisations:

  * ``"penttila2016"`` (default; Penttilä et al. 2016, P&SS 123, 117, the "H, G12*"
    system): G₁ = 0.84293649 G12, G₂ = 0.53513350 (1 − G12), 0 ≤ G12 ≤ 1 — smooth in G12,
    recommended for sparse survey photometry;
  * ``"muinonen2010"``: the piecewise-linear map of the original paper (break at
    G12 = 0.2), −0.0818919 ≤ G12 ≤ 0.909714.

:func:`fit_hg12` fits H and G12 to many objects' reduced magnitudes at once (vectorised
Gauss–Newton with per-group 2×2 normal equations), returning errors and the H–G12
covariance; where the slope cannot be fitted it fixes G12 to a fiducial value and fits H
alone, flagging ``slope_fit_failed`` (as Rubin's SSObject columns do).

>>> import numpy as np
>>> round(float(hg_magnitude(15.0, 0.15, 2.0, 1.0, np.radians(20.0))), 3)
17.505
>>> round(float(hg12_magnitude(15.0, 0.5, 2.0, 1.0, np.radians(20.0))), 3)
17.493
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "G12_BOUNDS",
    "HG12Fit",
    "fit_hg12",
    "hg12_basis",
    "hg12_magnitude",
    "hg12_phase_function",
    "hg_magnitude",
    "hg_phase_function",
]

#: The valid G12 ranges of the two parametrisations (G₁, G₂ ≥ 0 and G₁ + G₂ ≤ 1).
G12_BOUNDS = {"penttila2016": (0.0, 1.0), "muinonen2010": (-0.0818919, 0.909714)}

_A = (3.332, 1.862)
_B = (0.631, 1.218)
_C = (0.986, 0.238)


def hg_phase_function(alpha_rad: Any, g: Any, xp: Any = np) -> Any:
    """The H–G phase function Φ(α) (flux ratio to opposition) of Bowell et al. (1989).

    ``xp`` is the array namespace (``numpy`` or ``jax.numpy``).
    """
    alpha = xp.abs(alpha_rad)
    sa = xp.sin(alpha)
    tan_half = xp.tan(0.5 * alpha)
    w = xp.exp(-90.56 * tan_half * tan_half)
    denom = 0.119 + 1.341 * sa - 0.754 * sa * sa
    phis = []
    for i in range(2):
        small = 1.0 - _C[i] * sa / denom
        large = xp.exp(-_A[i] * tan_half ** _B[i])
        phis.append(w * small + (1.0 - w) * large)
    return (1.0 - g) * phis[0] + g * phis[1]


def hg_magnitude(h: Any, g: Any, r_au: Any, delta_au: Any, alpha_rad: Any, xp: Any = np) -> Any:
    """Apparent magnitude from H, G at distances r, Δ (au) and phase angle α (radians)."""
    return h + 5.0 * xp.log10(r_au * delta_au) - 2.5 * xp.log10(hg_phase_function(alpha_rad, g, xp))


# Muinonen et al. (2010), Table of basis-function nodes: (α nodes in degrees, values, first
# derivatives per radian at the first and last node).
_PHI1 = ((7.5, 30.0, 60.0, 90.0, 120.0, 150.0),
         (7.5e-1, 3.3486016e-1, 1.3410560e-1, 5.1104756e-2, 2.1465687e-2, 3.6396989e-3),
         (-1.9098593, -9.1328612e-2))
_PHI2 = ((7.5, 30.0, 60.0, 90.0, 120.0, 150.0),
         (9.25e-1, 6.2884169e-1, 3.1755495e-1, 1.2716367e-1, 2.2373903e-2, 1.6505689e-4),
         (-5.7295780e-1, -8.6573138e-8))
_PHI3 = ((0.0, 0.3, 1.0, 2.0, 4.0, 8.0, 12.0, 20.0, 30.0),
         (1.0, 8.3381185e-1, 5.7735424e-1, 4.2144772e-1, 2.3174230e-1, 1.0348178e-1,
          6.1733473e-2, 1.6107006e-2, 0.0),
         (-1.0630097, 0.0))


@functools.lru_cache(maxsize=1)
def _splines() -> tuple[Any, Any, Any]:
    from scipy.interpolate import CubicSpline

    out = []
    for nodes, values, (d0, d1) in (_PHI1, _PHI2, _PHI3):
        out.append((CubicSpline(np.radians(nodes), values, bc_type=((1, d0), (1, d1))),
                    np.radians(nodes[0]), np.radians(nodes[-1]), values[0], values[-1], d0, d1))
    return tuple(out)


def hg12_basis(alpha_rad: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The basis functions Φ₁, Φ₂, Φ₃ of Muinonen et al. (2010) at phase angles (radians).

    Φ₁ and Φ₂ are linear below 7.5° (slopes −6/π and −9/(5π), both 1 at α = 0) and
    continue linearly beyond 150°; Φ₃ is zero beyond 30°. Negative values are clipped to 0.

    >>> [round(float(p), 6) for p in hg12_basis(0.0)]
    [1.0, 1.0, 1.0]
    """
    shape = np.shape(alpha_rad)
    alpha = np.abs(np.atleast_1d(np.asarray(alpha_rad, dtype=float))).ravel()
    result = []
    for k, (spline, lo, hi, v0, v1, d0, d1) in enumerate(_splines()):
        inner = spline(np.clip(alpha, lo, hi))
        below = v0 + d0 * (alpha - lo)
        above = np.zeros_like(alpha) if k == 2 else v1 + d1 * (alpha - hi)
        phi = np.where(alpha < lo, below, np.where(alpha > hi, above, inner))
        result.append(np.maximum(phi, 0.0).reshape(shape))
    return result[0], result[1], result[2]


def _g1g2(g12: Any, variant: str) -> tuple[Any, Any, Any, Any]:
    """G₁, G₂ and their derivatives with respect to G12."""
    g12 = np.asarray(g12, dtype=float)
    if variant == "penttila2016":
        return (0.84293649 * g12, 0.53513350 * (1.0 - g12), np.full_like(g12, 0.84293649),
                np.full_like(g12, -0.53513350))
    if variant == "muinonen2010":
        low = g12 < 0.2
        return (np.where(low, 0.7527 * g12 + 0.06164, 0.9529 * g12 + 0.02162),
                np.where(low, -0.9612 * g12 + 0.6270, -0.6125 * g12 + 0.5572),
                np.where(low, 0.7527, 0.9529), np.where(low, -0.9612, -0.6125))
    raise ValueError(f"unknown H-G12 variant {variant!r}; expected one of {sorted(G12_BOUNDS)}")


def hg12_phase_function(alpha_rad: Any, g12: Any, variant: str = "penttila2016") -> np.ndarray:
    """The H–G12 phase function Φ(α) (flux ratio to opposition)."""
    p1, p2, p3 = hg12_basis(alpha_rad)
    g1, g2, _, _ = _g1g2(g12, variant)
    return g1 * p1 + g2 * p2 + (1.0 - g1 - g2) * p3


def hg12_magnitude(h: Any, g12: Any, r_au: Any, delta_au: Any, alpha_rad: Any,
                   variant: str = "penttila2016") -> np.ndarray:
    """Apparent magnitude from H, G12 at distances r, Δ (au) and phase angle α (radians)."""
    phi = hg12_phase_function(alpha_rad, g12, variant)
    return np.asarray(h) + 5.0 * np.log10(np.asarray(r_au) * np.asarray(delta_au)) \
        - 2.5 * np.log10(phi)


@dataclass(frozen=True)
class HG12Fit:
    """H, G12 fits of many groups (objects × bands), one entry per group.

    Attributes
    ----------
    h, h_err : ndarray
        Absolute magnitude and its 1σ error (mag).
    g12, g12_err : ndarray
        Slope parameter and its error (NaN where ``slope_fit_failed``).
    cov : ndarray
        H–G12 covariance (mag; NaN where ``slope_fit_failed``).
    chi2 : ndarray
        χ² of the fit.
    n_obs, n_used : ndarray of int
        Points given and points used (finite, positive errors).
    phase_min_deg, phase_max_deg : ndarray
        Range of phase angles used.
    slope_fit_failed : ndarray of bool
        G12 could not be fitted (too few points, too small a phase range, a solution
        outside the valid range, or no convergence): G12 is the fiducial value and only H
        was fitted.
    """

    h: np.ndarray
    h_err: np.ndarray
    g12: np.ndarray
    g12_err: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray
    n_obs: np.ndarray
    n_used: np.ndarray
    phase_min_deg: np.ndarray
    phase_max_deg: np.ndarray
    slope_fit_failed: np.ndarray


def fit_hg12(group: Any, phase_angle_deg: Any, reduced_mag: Any, mag_err: Any, *,
             n_groups: int | None = None, variant: str = "penttila2016",
             g12_fiducial: float = 0.62, min_points: int = 3, min_phase_span_deg: float = 2.0,
             max_iter: int = 30) -> HG12Fit:
    """Fit H and G12 to reduced magnitudes of many groups at once.

    Parameters
    ----------
    group : array_like of int, shape (m,)
        Group index of each point (0 ≤ group < n_groups), e.g. object × band.
    phase_angle_deg : array_like, shape (m,)
        Phase angles, degrees.
    reduced_mag : array_like, shape (m,)
        m − 5 log10(r Δ), mag.
    mag_err : array_like, shape (m,)
        1σ errors, mag (points with non-finite or non-positive errors are not used).
    n_groups : int, optional
        Number of groups (default: max(group) + 1).
    variant : {"penttila2016", "muinonen2010"}
        The G12 parametrisation (see the module docstring).
    g12_fiducial : float
        G12 used where the slope cannot be fitted (a choice; it must lie in the variant's
        valid range).
    min_points : int
        Fewest points for a two-parameter fit (default 3).
    min_phase_span_deg : float
        Smallest range of phase angles for fitting the slope (default 2°).
    max_iter : int
        Gauss–Newton iterations.

    Returns
    -------
    HG12Fit
        Formal errors from the given magnitude errors (not rescaled by χ²/dof).

    Examples
    --------
    >>> alpha = np.linspace(2.0, 25.0, 12)
    >>> true = hg12_magnitude(16.0, 0.4, 1.0, 1.0, np.radians(alpha))
    >>> fit = fit_hg12(np.zeros(12, int), alpha, true, np.full(12, 0.01))
    >>> round(float(fit.h[0]), 6), round(float(fit.g12[0]), 6), bool(fit.slope_fit_failed[0])
    (16.0, 0.4, False)
    """
    group = np.asarray(group, dtype=np.int64)
    alpha_deg = np.asarray(phase_angle_deg, dtype=float)
    mag = np.asarray(reduced_mag, dtype=float)
    err = np.asarray(mag_err, dtype=float)
    if variant not in G12_BOUNDS:
        raise ValueError(f"unknown H-G12 variant {variant!r}; expected one of {sorted(G12_BOUNDS)}")
    lo, hi = G12_BOUNDS[variant]
    if not lo <= g12_fiducial <= hi:
        raise ValueError(f"g12_fiducial = {g12_fiducial} is outside the valid range "
                         f"[{lo}, {hi}] of the {variant} parametrisation")
    ng = int(n_groups if n_groups is not None else (group.max() + 1 if group.size else 0))
    n_obs = np.bincount(group, minlength=ng)[:ng]
    use = np.isfinite(mag) & np.isfinite(err) & (err > 0) & np.isfinite(alpha_deg)
    g, a, y = group[use], np.radians(alpha_deg[use]), mag[use]
    w = 1.0 / err[use] ** 2
    n_used = np.bincount(g, minlength=ng)[:ng]
    amin = np.full(ng, np.nan)
    amax = np.full(ng, np.nan)
    if g.size:
        np.fmin.at(amin, g, alpha_deg[use])
        np.fmax.at(amax, g, alpha_deg[use])
    p1, p2, p3 = hg12_basis(a)

    def model(g12_of_point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g1, g2, dg1, dg2 = _g1g2(g12_of_point, variant)
        phi = g1 * p1 + g2 * p2 + (1.0 - g1 - g2) * p3
        dphi = dg1 * (p1 - p3) + dg2 * (p2 - p3)
        return -2.5 * np.log10(phi), -2.5 / np.log(10.0) * dphi / phi

    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(g, weights=values, minlength=ng)[:ng]

    sw = sums(w)

    def h_given(g12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        term, _ = model(g12[g])
        h = sums(w * (y - term)) / np.where(sw > 0, sw, 1.0)
        chi2 = sums(w * (y - h[g] - term) ** 2)
        return h, chi2

    # start: the best G12 of a coarse grid (profile χ² with H solved linearly)
    grid = np.linspace(lo, hi, 11)
    best = np.full(ng, np.inf)
    g12 = np.full(ng, g12_fiducial)
    for value in grid:
        _, chi2 = h_given(np.full(ng, value))
        better = chi2 < best
        best[better], g12[better] = chi2[better], value
    h, _ = h_given(g12)
    converged = np.zeros(ng, bool)
    h, chi2_now = h_given(g12)
    for _ in range(max_iter):
        # a Gauss-Newton step of (H, G12), then H re-solved exactly for the new G12; steps
        # that raise χ² are halved (the Muinonen map has a kink at G12 = 0.2)
        term, dterm = model(g12[g])
        resid = y - h[g] - term
        a11, a12, a22 = sw, sums(w * dterm), sums(w * dterm * dterm)
        b1, b2 = sums(w * resid), sums(w * resid * dterm)
        det = a11 * a22 - a12 * a12
        ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
        step = np.clip(np.where(ok, (a11 * b2 - a12 * b1) / np.where(ok, det, 1.0), 0.0), -0.3, 0.3)
        trial = np.clip(g12 + step, lo, hi)
        h_t, chi2_t = h_given(trial)
        for _halving in range(8):
            worse = chi2_t > chi2_now * (1.0 + 1e-12)
            if not worse.any():
                break
            trial = np.where(worse, 0.5 * (g12 + trial), trial)
            h_t, chi2_t = h_given(trial)
        better = chi2_t <= chi2_now * (1.0 + 1e-12)
        new_g12 = np.where(better, trial, g12)
        converged = np.abs(new_g12 - g12) < 1e-9
        g12 = new_g12
        h = np.where(better, h_t, h)
        chi2_now = np.where(better, chi2_t, chi2_now)
        if converged.all():
            break
    term, dterm = model(g12[g])
    resid = y - h[g] - term
    chi2 = sums(w * resid * resid)
    a11, a12, a22 = sw, sums(w * dterm), sums(w * dterm * dterm)
    det = a11 * a22 - a12 * a12
    at_bound = (g12 <= lo + 1e-9) | (g12 >= hi - 1e-9)
    span = amax - amin
    failed = ((n_used < min_points) | ~(span >= min_phase_span_deg) | ~(det > 0) | at_bound
              | ~converged)
    # (failed groups may have det ≤ 0 or no points: their values are replaced below)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd_h = np.sqrt(np.where(failed, np.nan, a22 / det))
        sd_g = np.sqrt(np.where(failed, np.nan, a11 / det))
        cov = -a12 / det
        err_fix = 1.0 / np.sqrt(sw)
    # the fallback: G12 fixed, H the weighted mean
    h_fix, chi2_fix = h_given(np.full(ng, g12_fiducial))
    h_out = np.where(failed, h_fix, h)
    h_err = np.where(failed, err_fix, sd_h)
    g12_out = np.where(failed, g12_fiducial, g12)
    nan = np.full(ng, np.nan)
    empty = n_used == 0
    return HG12Fit(
        h=np.where(empty, np.nan, h_out), h_err=np.where(empty, np.nan, h_err),
        g12=np.where(empty, np.nan, g12_out),
        g12_err=np.where(failed, nan, sd_g), cov=np.where(failed, nan, cov),
        chi2=np.where(empty, np.nan, np.where(failed, chi2_fix, chi2)),
        n_obs=n_obs.astype(np.int64), n_used=n_used.astype(np.int64),
        phase_min_deg=amin, phase_max_deg=amax, slope_fit_failed=failed | empty)
