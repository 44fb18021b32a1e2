"""Outlier rejection for the joint astrometric fit: which measurements to clip, and which to restore.

A least-squares fit contaminated by gross outliers spreads their pull over everything they
share a parameter with: the other measurements of the same star (through its position and
motion) and the measurements of the same CCD (through its polynomial). Clipping every
measurement above a fixed threshold at once then also throws out innocent measurements,
and the solution fitted to what remains is worse than the one the innocents supported
(issue 12: 5 % of detections shifted by 1–5″ cost 256 innocent measurements and tripled the
WCS error on the worst CCD, with χ²/dof still near 1).

The rules here avoid that:

- **a robust scale per CCD** (:func:`ccd_scales`): 1.4826 × the median absolute whitened
  residual of the CCD's kept measurements (both axes), between 1 and :data:`MAX_SCALE`. A
  CCD whose stated errors are somewhat too small is judged on its real scatter, not
  emptied;
- **clipping from the top** (:func:`select_outliers`): a round clips only measurements above
  ``clip_sigma`` × their CCD's scale that are also within ``top_fraction`` of the worst
  normalised residual of their CCD, and only the worst one of each star. The worst outliers
  go first; what they pulled is judged again after the refit;
- **restoring** (:func:`select_restorable`): once nothing more is clipped, measurements
  clipped earlier that the final solution explains (below the threshold) are put back and
  the fit is redone;
- **no unverifiable stars** (:func:`undetermined`): a star that lost measurements and is
  left with too few to check the rest (fewer than two degrees of freedom beyond its own
  parameters: a non-reference star with one measurement for a position, or three for a
  position, proper motion and parallax) absorbs their errors into its parameters: nothing
  can tell whether they are right, and they tell little about the mapping; they are clipped
  with it;
- **a per-CCD report** (:func:`clip_summary`): every CCD that lost more than a set fraction
  of its measurements is named (the fit logs a warning and the fit report lists it).

All functions are pure, vectorised NumPy on per-measurement arrays.

>>> import numpy as np
>>> dist = np.array([0.5, 50.0, 6.0, 1.0, 7.0])
>>> ccd = np.array([0, 0, 0, 1, 1]); star = np.array([0, 0, 1, 2, 3])
>>> active = np.ones(5, bool)
>>> scale = np.ones(2)
>>> select_outliers(dist, ccd, star, active, 5.0, scale).tolist()  # 6σ waits for the 50σ one
[False, True, False, False, True]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClipSummary",
    "ccd_scales",
    "clip_summary",
    "select_outliers",
    "select_restorable",
    "undetermined",
]

#: Gaussian σ per median absolute deviation.
MAD_TO_SIGMA = 1.4826


#: The robust scale never exceeds this: residuals far larger than the stated errors on a whole
#: CCD mean a model that cannot follow the data (clipping then eats the CCD and the fit stops
#: with an error naming it), not errors to be trusted less.
MAX_SCALE = 3.0


def ccd_scales(white: np.ndarray, ccd: np.ndarray, active: np.ndarray, n_ccd: int) -> np.ndarray:
    """Robust scale of the whitened residuals of each CCD, between 1 and :data:`MAX_SCALE`.

    Parameters
    ----------
    white : (n, 2) array
        Whitened residuals (unit variance for a correct error model).
    ccd : (n,) int array
        CCD index of each measurement.
    active : (n,) bool array
        The measurements kept so far (the scale is measured on them only).
    n_ccd : int
        Number of CCDs.

    Returns
    -------
    (n_ccd,) array
        ``1.4826 × median(|white|)`` over both axes of the CCD's kept measurements, clipped
        to [1, :data:`MAX_SCALE`] (1 for a CCD without any).
    """
    scale = np.ones(n_ccd)
    keep = np.flatnonzero(active)
    if not len(keep):
        return scale
    order = keep[np.argsort(ccd[keep], kind="stable")]
    c = ccd[order]
    values = np.abs(np.asarray(white)[order])
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends, strict=True):
        scale[c[s]] = min(MAX_SCALE, max(1.0, MAD_TO_SIGMA * float(np.median(values[s:e]))))
    return scale


def _group_max(values: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, groups, values)
    return out


def select_outliers(dist: np.ndarray, ccd: np.ndarray, star: np.ndarray, active: np.ndarray,
                    clip_sigma: float, scale: np.ndarray, *, top_fraction: float = 0.2) -> np.ndarray:
    """The measurements one clipping round removes (boolean mask).

    A measurement is clipped when it is kept now, its whitened distance ``dist`` exceeds
    ``clip_sigma × scale[ccd]``, its normalised distance ``dist / scale[ccd]`` is at least
    ``top_fraction`` of the largest on its CCD, and it is the worst of its star among those.

    Parameters
    ----------
    dist : (n,) array
        Whitened residual length (√χ² of the measurement).
    ccd, star : (n,) int arrays
        CCD and star index of each measurement.
    active : (n,) bool array
        Kept measurements.
    clip_sigma : float
        The threshold in units of the CCD's robust scale.
    scale : (n_ccd,) array
        :func:`ccd_scales`.
    top_fraction : float
        Only measurements within this fraction of their CCD's worst are clipped this round.
    """
    z = np.asarray(dist, float) / scale[ccd]
    over = np.asarray(active, bool) & (z > clip_sigma)
    if not over.any():
        return over
    idx = np.flatnonzero(over)
    worst_ccd = _group_max(z[idx], ccd[idx], len(scale))
    idx = idx[z[idx] >= top_fraction * worst_ccd[ccd[idx]]]
    # the worst of each star: sort by (star, -z) and keep each star's first
    order = idx[np.lexsort((-z[idx], star[idx]))]
    first = np.r_[True, star[order][1:] != star[order][:-1]]
    out = np.zeros(len(dist), bool)
    out[order[first]] = True
    return out


def select_restorable(dist: np.ndarray, ccd: np.ndarray, active: np.ndarray, clip_sigma: float,
                      scale: np.ndarray) -> np.ndarray:
    """Clipped measurements the current solution explains (``dist ≤ clip_sigma × scale``)."""
    return ~np.asarray(active, bool) & np.isfinite(dist) & (np.asarray(dist, float) <= clip_sigma * scale[ccd])


def undetermined(star: np.ndarray, active: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Kept measurements of stars left with fewer than ``need[star]`` kept measurements.

    ``need`` per star: how many kept measurements it needs for its measurements to be
    checked (the fit uses ``(n_free + 3) // 2`` for a star without a reference prior: two
    degrees of freedom beyond its parameters; 1 for a star with one).

    >>> undetermined(np.array([0, 0, 1, 1, 1]), np.array([True, False, True, True, False]),
    ...              np.array([2, 2])).tolist()
    [True, False, False, False, False]
    """
    active = np.asarray(active, bool)
    count = np.bincount(star[active], minlength=len(need))
    return active & (count[star] < need[star])


@dataclass(frozen=True)
class ClipSummary:
    """Per CCD: measurements fitted, clipped, and the CCDs over the warning fraction.

    Attributes
    ----------
    n_measurements, n_clipped : (n_ccd,) int arrays
    scale : (n_ccd,) array
        The final robust scale of each CCD's whitened residuals.
    over : (m,) int array
        Indices of the CCDs that lost more than ``max_fraction`` of their measurements.
    max_fraction : float
    """

    n_measurements: np.ndarray
    n_clipped: np.ndarray
    scale: np.ndarray
    over: np.ndarray
    max_fraction: float

    @property
    def fraction(self) -> np.ndarray:
        """Clipped fraction per CCD (0 for a CCD without measurements)."""
        return self.n_clipped / np.maximum(self.n_measurements, 1)


def clip_summary(ccd: np.ndarray, active: np.ndarray, n_ccd: int, scale: np.ndarray,
                 max_fraction: float) -> ClipSummary:
    """Count each CCD's fitted and clipped measurements and name those over ``max_fraction``."""
    n = np.bincount(ccd, minlength=n_ccd)
    clipped = np.bincount(ccd[~np.asarray(active, bool)], minlength=n_ccd)
    over = np.flatnonzero((n > 0) & (clipped > max_fraction * n))
    return ClipSummary(n, clipped, np.asarray(scale, float), over, float(max_fraction))
