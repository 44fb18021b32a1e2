"""One-to-one association of DiaSources with DiaObjects: pure functions on arrays.

Candidates come from a KD-tree on unit vectors (every object within ``max_radius_arcsec``
of a source). A candidate pair is kept if its position χ² — with the per-axis variances of
source and object added, each floored at ``sigma_floor_arcsec`` — is at most
``n_sigma²``: the gate widens with the positional errors, up to the hard radius. Each kept
pair costs the Gaussian negative log-likelihood of its offset,
``0.5 χ² + 0.5 ln(var_α var_δ)`` (as in Rubin's ``ap_association``: the normalisation term
stops a poorly measured object from winning by having a large error). The candidate graph
splits into connected components; each component with more than one source or object is
solved by :func:`scipy.optimize.linear_sum_assignment`, where every source may also take a
"no match" slot priced just above the component's worst pair, so that a real candidate is
always preferred to none but two sources never share an object.

Errors are Rubin's: ``raErr`` is σ(α cosδ) and ``decErr`` is σ(δ), in degrees; a missing or
non-positive error counts as ``fallback_sigma_arcsec``.

>>> import numpy as np
>>> src_ra, src_dec = np.array([10.0, 10.0 + 3 / 3600]), np.array([0.0, 0.0])
>>> obj_ra, obj_dec = np.array([10.0 + 0.1 / 3600, 20.0]), np.array([0.0, 0.0])
>>> result = associate(src_ra, src_dec, None, None, obj_ra, obj_dec, None, None)
>>> result.match.tolist()        # source 0 → object 0; source 1 has no object within 1"
[0, -1]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointcal_ap.apdb.pixels import unit_vectors

__all__ = ["AssociationOptions", "AssociationResult", "associate"]

_ARCSEC = np.pi / 180.0 / 3600.0


@dataclass(frozen=True)
class AssociationOptions:
    """Options of :func:`associate`.

    Attributes
    ----------
    max_radius_arcsec : float
        Hard upper bound on the source-object distance (Rubin's ``maxDistArcSeconds``).
    n_sigma : float
        The χ² gate: a pair whose offset exceeds ``n_sigma`` combined standard deviations
        (χ² with 2 degrees of freedom > ``n_sigma²``) is not a candidate.
    sigma_floor_arcsec : float
        Floor on each combined per-axis standard deviation.
    fallback_sigma_arcsec : float
        Per-axis error assumed for a source or object without one.
    """

    max_radius_arcsec: float = 1.0
    n_sigma: float = 5.0
    sigma_floor_arcsec: float = 0.05
    fallback_sigma_arcsec: float = 0.2

    def __post_init__(self) -> None:
        if not (self.max_radius_arcsec > 0 and self.n_sigma > 0 and self.sigma_floor_arcsec > 0
                and self.fallback_sigma_arcsec > 0):
            raise ValueError(f"AssociationOptions need positive values, got {self}")


@dataclass(frozen=True)
class AssociationResult:
    """What :func:`associate` found.

    Attributes
    ----------
    match : (n_src,) int64
        Index of the object each source is associated with, -1 for none.
    distance_arcsec : (n_src,) float
        Distance to that object (NaN if none).
    cost : (n_src,) float
        Its cost (negative log-likelihood; NaN if none).
    n_candidates : (n_src,) int64
        Objects that passed the gate for each source.
    """

    match: np.ndarray
    distance_arcsec: np.ndarray
    cost: np.ndarray
    n_candidates: np.ndarray


def _variance(err_deg: np.ndarray | None, n: int, fallback_deg: float) -> np.ndarray:
    if err_deg is None:
        return np.full(n, fallback_deg ** 2)
    err = np.asarray(err_deg, float)
    return np.where(np.isfinite(err) & (err > 0), err ** 2, fallback_deg ** 2)


def associate(src_ra: np.ndarray, src_dec: np.ndarray, src_ra_err: np.ndarray | None,
              src_dec_err: np.ndarray | None, obj_ra: np.ndarray, obj_dec: np.ndarray,
              obj_ra_err: np.ndarray | None, obj_dec_err: np.ndarray | None,
              options: AssociationOptions | None = None) -> AssociationResult:
    """Associate sources with objects one-to-one (see the module docstring).

    Parameters
    ----------
    src_ra, src_dec : (n_src,) arrays
        Source positions (degrees, finite).
    src_ra_err, src_dec_err : (n_src,) arrays or None
        σ(α cosδ) and σ(δ) of the sources (degrees).
    obj_ra, obj_dec, obj_ra_err, obj_dec_err : (n_obj,) arrays
        The same for the objects.
    options : AssociationOptions, optional

    Returns
    -------
    AssociationResult
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    options = options or AssociationOptions()
    n_src, n_obj = len(src_ra), len(obj_ra)
    match = np.full(n_src, -1, np.int64)
    dist = np.full(n_src, np.nan)
    cost_out = np.full(n_src, np.nan)
    n_cand = np.zeros(n_src, np.int64)
    if n_src == 0 or n_obj == 0:
        return AssociationResult(match, dist, cost_out, n_cand)
    sv, ov = unit_vectors(src_ra, src_dec), unit_vectors(obj_ra, obj_dec)
    chord = 2.0 * np.sin(0.5 * options.max_radius_arcsec * _ARCSEC)
    pairs = cKDTree(ov).query_ball_point(sv, r=chord)
    counts = np.fromiter((len(p) for p in pairs), np.int64, count=n_src)
    if counts.sum() == 0:
        return AssociationResult(match, dist, cost_out, n_cand)
    si = np.repeat(np.arange(n_src), counts)
    oi = np.fromiter((j for p in pairs for j in p), np.int64, count=int(counts.sum()))
    # Offsets in the tangent plane of each source (α cosδ, δ), in degrees.
    dec_s = np.radians(np.asarray(src_dec, float)[si])
    dra = (np.asarray(obj_ra, float)[oi] - np.asarray(src_ra, float)[si] + 180.0) % 360.0 - 180.0
    dx = dra * np.cos(dec_s)
    dy = np.asarray(obj_dec, float)[oi] - np.asarray(src_dec, float)[si]
    fallback = options.fallback_sigma_arcsec / 3600.0
    floor2 = (options.sigma_floor_arcsec / 3600.0) ** 2
    var_x = np.maximum(_variance(src_ra_err, n_src, fallback)[si]
                       + _variance(obj_ra_err, n_obj, fallback)[oi], floor2)
    var_y = np.maximum(_variance(src_dec_err, n_src, fallback)[si]
                       + _variance(obj_dec_err, n_obj, fallback)[oi], floor2)
    chi2 = dx ** 2 / var_x + dy ** 2 / var_y
    keep = chi2 <= options.n_sigma ** 2
    si, oi, chi2, var_x, var_y = si[keep], oi[keep], chi2[keep], var_x[keep], var_y[keep]
    sep = np.hypot(dx[keep], dy[keep]) * 3600.0
    n_cand = np.bincount(si, minlength=n_src).astype(np.int64)
    if len(si) == 0:
        return AssociationResult(match, dist, cost_out, n_cand)
    cost = 0.5 * chi2 + 0.5 * np.log(var_x * var_y)
    # Components of the bipartite candidate graph (sources 0..n_src-1, objects after).
    graph = coo_matrix((np.ones(len(si)), (si, n_src + oi)), shape=(n_src + n_obj,) * 2)
    _, label = connected_components(graph, directed=False)
    comp = label[si]
    src_deg = np.bincount(si, minlength=n_src)
    obj_deg = np.bincount(oi, minlength=n_obj)
    simple = (src_deg[si] == 1) & (obj_deg[oi] == 1)
    match[si[simple]] = oi[simple]
    dist[si[simple]] = sep[simple]
    cost_out[si[simple]] = cost[simple]
    hard = ~simple
    if not hard.any():
        return AssociationResult(match, dist, cost_out, n_cand)
    order = np.argsort(comp[hard], kind="stable")
    h_si, h_oi, h_cost, h_sep, h_comp = (a[hard][order] for a in (si, oi, cost, sep, comp))
    bounds = np.flatnonzero(np.diff(h_comp)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(h_comp)], strict=True):
        s_u, s_local = np.unique(h_si[lo:hi], return_inverse=True)
        o_u, o_local = np.unique(h_oi[lo:hi], return_inverse=True)
        c = h_cost[lo:hi]
        spread = float(c.max() - c.min())
        unmatched = float(c.max()) + 1.0 + spread
        big = unmatched * 10.0 + 1e6
        matrix = np.full((len(s_u), len(o_u) + len(s_u)), big)
        matrix[s_local, o_local] = c
        matrix[np.arange(len(s_u)), len(o_u) + np.arange(len(s_u))] = unmatched
        rows, cols = linear_sum_assignment(matrix)
        for r, col in zip(rows, cols, strict=True):
            if col < len(o_u):
                k = lo + np.flatnonzero((s_local == r) & (o_local == col))[0]
                match[s_u[r]] = o_u[col]
                dist[s_u[r]] = h_sep[k]
                cost_out[s_u[r]] = h_cost[k]
    return AssociationResult(match, dist, cost_out, n_cand)
