"""Cross-matching for the joint fit: measurements → initial per-CCD mappings → stars ↔ reference stars.

:func:`match_references` is a pure function of arrays: the caller loads each visit's
reference stars (at that visit's epoch, as seen from the Earth; see
:func:`jointcal_ap.fit.references.visit_references`) and passes them in.

1. Per CCD, a robust offset search (the peak of the 2-D histogram of all measurement −
   reference differences within ``search_radius``) absorbs an initial WCS that is several
   arcseconds off; matches within a shrinking radius then fit a per-CCD polynomial
   (pixel → tangent plane), which also absorbs a small rotation and the optical distortion
   the initial header lacks.
2. Measurements matched to the same reference star join one fitted star; the rest are
   grouped by friends-of-friends on their corrected positions.

(Not to be confused with the association of difference-image sources into DiaObjects.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from jointcal_ap.errors import AssociationError
from jointcal_ap.fit.data import FitInput
from jointcal_ap.fit.models import CcdGeometry, fit_poly, poly_eval
from jointcal_ap.fit.projection import gnomonic, inverse_gnomonic, unit_vectors

__all__ = [
    "Association",
    "AssociationError",
    "CcdMatch",
    "VisitMatch",
    "VisitReferences",
    "default_radii",
    "group_rows",
    "initial_pixel_scale_arcsec",
    "match_references",
]


@dataclass
class VisitMatch:
    """Per-visit matching statistics."""

    visit: int
    n_measurements: int
    n_refstars_loaded: int
    n_matched: int
    offset_arcsec: tuple[float, float]
    initial_rms_mas: float


@dataclass
class CcdMatch:
    """Per-CCD matching statistics (what ``jointcal-ap fit -v`` logs, and what a failure names).

    Attributes
    ----------
    ccd, visit, detector : int
        Index into ``data.ccds``, and the CCD's visit and detector ids.
    n_measurements : int
    n_references : int
        Reference stars within the CCD's footprint through the initial WCS (the footprint
        widened by the search radius).
    offset_arcsec : (float, float)
        Offset applied to the initial WCS (ξ, η).
    offset_support : int
        Measurement–reference pairs supporting the CCD's own offset peak (when below
        ``MIN_OFFSET_SUPPORT``, the visit's offset was used instead).
    n_matched : int
        Measurements matched to a reference star within the match radius.
    rms_mas : float
        RMS of those matches after the per-CCD polynomial (NaN when none).
    """

    ccd: int
    visit: int
    detector: int
    n_measurements: int
    n_references: int
    offset_arcsec: tuple[float, float]
    offset_support: int
    n_matched: int
    rms_mas: float


@dataclass
class Association:
    """The result of association (see module docstring)."""

    meas_star: np.ndarray  # (n,) fitted-star index per measurement, -1 when unassociated
    n_stars: int
    star_ref: np.ndarray  # (N,) reference id (refcat "id") or -1
    star_ra: np.ndarray  # (N,) first-guess position, degrees
    star_dec: np.ndarray
    meas_ref_tp: np.ndarray  # (n, 2) reference position at the visit epoch (tangent plane, mas), NaN if none
    per_ccd_poly: np.ndarray  # (n_ccds, 2, K) initial pixel → tangent-plane polynomials (mas)
    degree: int
    geometry: list[CcdGeometry]
    visit_stats: list[VisitMatch] = field(default_factory=list)
    ccd_stats: list[CcdMatch] = field(default_factory=list)
    #: the radii used (arcsec): search, match, link
    radii_arcsec: tuple[float, float, float] = (float("nan"), float("nan"), float("nan"))


@dataclass(frozen=True)
class VisitReferences:
    """The reference stars of one visit, at that visit's epoch (as seen from the Earth).

    Attributes
    ----------
    ids : ndarray of int64
        Reference identifiers as integer codes ≥ 0 (-1 means "no reference" in the fit).
    ra, dec : ndarray
        Positions, degrees.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.ra) == len(self.dec)):
            raise ValueError(f"VisitReferences: {len(self.ids)} ids, {len(self.ra)} ra, {len(self.dec)} dec")


def group_rows(keys: np.ndarray, n_groups: int):
    """Yield ``(key, rows)`` for every key in ``0 … n_groups-1`` that occurs: one stable sort
    and slices, O(n log n) (a mask per group would be O(n × groups): hours at 10⁷ × 10⁴)."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n_groups + 1))
    for k in range(n_groups):
        if bounds[k + 1] > bounds[k]:
            yield k, order[bounds[k]:bounds[k + 1]]


#: The offset search uses at most this many measurements (the brightest) per CCD, and
#: ``MAX_OFFSET_VISIT`` per visit: the reference stars are the bright ones, and the number of
#: chance pairs grows with every faint source added.
MAX_OFFSET_CCD = 500
MAX_OFFSET_VISIT = 2000


def _brightest(flux: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest fluxes (all when there are fewer), in index order."""
    if len(flux) <= n:
        return np.arange(len(flux))
    return np.sort(np.argpartition(-np.nan_to_num(flux, nan=-np.inf), n - 1)[:n])


def initial_pixel_scale_arcsec(data: FitInput) -> float:
    """The median pixel scale (arcsec per pixel) of the CCDs' initial WCS, from a linear fit of
    each CCD's measurements (initial sky positions on the visit tangent plane against pixels)."""
    visit_of_ccd = data.visit_index_of_ccd()
    meas = data.measurements
    scales = []
    for c, rows in group_rows(meas.ccd_index, len(data.ccds)):
        if len(rows) < 3:
            continue
        visit = data.visits[visit_of_ccd[c]]
        tp = gnomonic(meas.ra_init[rows], meas.dec_init[rows], visit.ra, visit.dec)
        design = np.column_stack([np.ones(len(rows)), meas.x[rows], meas.y[rows]])
        coeffs, *_ = np.linalg.lstsq(design, tp, rcond=None)
        scales.append(np.sqrt(abs(np.linalg.det(coeffs[1:3]))) / 1000.0)
    return float(np.median(scales)) if scales else 1.0


#: Default radii in pixels of the initial WCS (each at least its value in arcsec below).
SEARCH_RADIUS_PX, MATCH_RADIUS_PX, LINK_RADIUS_PX = 15.0, 1.0, 1.0
SEARCH_RADIUS_MIN_ARCSEC, MATCH_RADIUS_MIN_ARCSEC, LINK_RADIUS_MIN_ARCSEC = 90.0, 1.0, 1.0


def default_radii(pixel_scale_arcsec: float) -> tuple[float, float, float]:
    """Default (search, match, link) radii in arcsec for a pixel scale.

    * search: ``max(90", 15 px)``: initial WCS errors of up to ~1' (per axis) are found;
    * match and link: ``max(1", 1 px)``: a centroid is good to a fraction of a pixel, and
      what is left of the optical distortion after the per-CCD polynomial is below a pixel.

    >>> default_radii(0.2)
    (90.0, 1.0, 1.0)
    >>> default_radii(6.0)
    (90.0, 6.0, 6.0)
    """
    px = float(pixel_scale_arcsec)
    return (max(SEARCH_RADIUS_MIN_ARCSEC, SEARCH_RADIUS_PX * px), max(MATCH_RADIUS_MIN_ARCSEC, MATCH_RADIUS_PX * px),
            max(LINK_RADIUS_MIN_ARCSEC, LINK_RADIUS_PX * px))


def _n_brightest(n_refs: int, cap: int) -> int:
    """How many of the brightest measurements the offset search uses: three per reference
    star in the footprint (the reference stars are the bright ones, and every fainter source
    only adds chance pairs), at least 50, at most ``cap``."""
    return int(min(cap, max(50, 3 * n_refs)))


def _offset_search(meas_tp: np.ndarray, ref_tree: cKDTree, radius_mas: float, bin_mas: float
                   ) -> tuple[np.ndarray, int]:
    """Most common (ref − meas) offset among all pairs closer than ``radius_mas``, and how
    many pairs support it (within two bins of the peak)."""
    if len(meas_tp) == 0 or ref_tree.n == 0:
        return np.zeros(2), 0
    pairs = cKDTree(meas_tp).sparse_distance_matrix(ref_tree, radius_mas, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(2), 0
    # per axis and in place: a visit's search has about a million pairs
    ref, i, j = ref_tree.data, pairs["i"], pairs["j"]
    dx, dy = ref[j, 0] - meas_tp[i, 0], ref[j, 1] - meas_tp[i, 1]
    nb = int(np.ceil(2 * radius_mas / bin_mas))
    edge = 2 * radius_mas / nb
    ix = np.clip(((dx + radius_mas) / edge).astype(np.int64), 0, nb - 1)
    ix *= nb
    ix += np.clip(((dy + radius_mas) / edge).astype(np.int64), 0, nb - 1)
    i, j = divmod(int(np.argmax(np.bincount(ix, minlength=nb * nb))), nb)
    peak = np.array([(i + 0.5) * edge - radius_mas, (j + 0.5) * edge - radius_mas])
    near = (dx - peak[0]) ** 2 + (dy - peak[1]) ** 2 < (2 * bin_mas) ** 2
    support = int(near.sum())
    return (np.array([np.median(dx[near]), np.median(dy[near])]) if support >= 3 else peak), support


def default_workers() -> int:
    """Threads for per-exposure work: the cores this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


#: A CCD's own offset search must be supported by this many pairs; otherwise the visit's is used.
MIN_OFFSET_SUPPORT = 5


def _match(meas_tp: np.ndarray, ref_tree: cKDTree, radius_mas: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference within the radius, one-to-one (closest wins); returns (meas idx, ref idx)."""
    if ref_tree.n == 0 or len(meas_tp) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist, idx = ref_tree.query(meas_tp, distance_upper_bound=radius_mas)
    ok = np.isfinite(dist)
    mi, ri, di = np.flatnonzero(ok), idx[ok], dist[ok]
    order = np.argsort(di)
    _, first = np.unique(ri[order], return_index=True)
    keep = order[first]
    return mi[keep], ri[keep]


def match_references(data: FitInput, references: Sequence[VisitReferences], *, degree: int = 3,
                     search_radius_arcsec: float | None = None, match_radius_arcsec: float | None = None,
                     link_radius_arcsec: float | None = None, min_measurements: int = 2,
                     progress=None, workers: int | None = None) -> Association:
    """Associate measurements into stars and match them to the reference stars.

    Parameters
    ----------
    data : FitInput
    references : sequence of VisitReferences
        One per visit (``data.visits`` order): the reference stars at that visit's epoch,
        covering its CCDs widened by twice ``search_radius_arcsec``.
    degree : int
        Degree of the initial per-CCD polynomials.
    search_radius_arcsec : float, optional
        How far off the initial WCS may be (default: :func:`default_radii` of the initial
        WCS's pixel scale).
    match_radius_arcsec, link_radius_arcsec : float, optional
        Final reference match radius, and the friends-of-friends linking length (defaults:
        :func:`default_radii`).
    min_measurements : int
        Stars without a reference match need at least this many measurements.
    progress : callable, optional
        Called with no argument after each visit.
    workers : int, optional
        Threads matching visits (default: one per core). The result does not depend on it.
    """
    if len(references) != len(data.visits):
        raise ValueError(f"{len(references)} reference sets for {len(data.visits)} visits")
    if None in (search_radius_arcsec, match_radius_arcsec, link_radius_arcsec):
        auto = default_radii(initial_pixel_scale_arcsec(data))
        search_radius_arcsec = auto[0] if search_radius_arcsec is None else search_radius_arcsec
        match_radius_arcsec = auto[1] if match_radius_arcsec is None else match_radius_arcsec
        link_radius_arcsec = auto[2] if link_radius_arcsec is None else link_radius_arcsec
    meas = data.measurements
    n = len(meas)
    visit_of_ccd = data.visit_index_of_ccd()
    geometry = [CcdGeometry.from_size(c.naxis1, c.naxis2) for c in data.ccds]
    k = (degree + 1) * (degree + 2) // 2
    per_ccd = np.zeros((len(data.ccds), 2, k))
    meas_tp = np.full((n, 2), np.nan)  # corrected tangent-plane positions
    meas_ref = np.full(n, -1, dtype=np.int64)  # reference code matched at the visit epoch
    meas_ref_tp = np.full((n, 2), np.nan)
    stats: list[VisitMatch] = []
    ccd_stats: list[list[CcdMatch]] = [[] for _ in data.visits]
    by_ccd = np.argsort(meas.ccd_index, kind="stable")
    bounds = np.searchsorted(meas.ccd_index[by_ccd], np.arange(len(data.ccds) + 1))

    def match_visit(vi: int) -> VisitMatch:
        visit, ref = data.visits[vi], references[vi]
        ccds = np.flatnonzero(visit_of_ccd == vi)
        in_visit = np.concatenate([by_ccd[bounds[c]:bounds[c + 1]] for c in ccds])
        if len(in_visit) == 0:
            raise AssociationError(f"visit {visit.visit} ({visit.name}) has no measurements")
        ref_tp = gnomonic(ref.ra, ref.dec, visit.ra, visit.dec)
        ref_ids = np.asarray(ref.ids, dtype=np.int64)
        ref_tree = cKDTree(ref_tp)
        n_matched, offsets, rms = 0, [], []
        # histogram bins: half the match radius (at least 250 mas), so that the spread of the
        # offsets over a CCD (rotation, distortion) stays within a few bins
        bin_mas = max(250.0, 500.0 * match_radius_arcsec)
        search_mas = search_radius_arcsec * 1000
        visit_offset = None

        def offset_of_visit():
            # The pointing error moves the whole mosaic: a CCD with too few reference stars for
            # its own search takes the visit's offset, searched (once) when first needed (the
            # visit's search costs as much as its CCDs' together)
            nonlocal visit_offset
            if visit_offset is None:
                bright = _brightest(meas.flux[in_visit], _n_brightest(len(ref_ids), MAX_OFFSET_VISIT))
                init_tp = gnomonic(meas.ra_init[in_visit[bright]], meas.dec_init[in_visit[bright]], visit.ra, visit.dec)
                visit_offset = _offset_search(init_tp, ref_tree, search_mas, bin_mas)[0]
            return visit_offset

        for c in ccds:
            rows = by_ccd[bounds[c]:bounds[c + 1]]
            if len(rows) == 0:
                raise AssociationError(f"visit {visit.visit}, detector {data.ccds[c].detector}: no measurements")
            u, v = geometry[c].normalise(meas.x[rows], meas.y[rows])
            tp = gnomonic(meas.ra_init[rows], meas.dec_init[rows], visit.ra, visit.dec)
            # reference stars in the footprint (its bounding box widened by the search radius)
            lo, hi = tp.min(0) - search_mas, tp.max(0) + search_mas
            n_refs = int(np.all((ref_tp >= lo) & (ref_tp <= hi), axis=1).sum())
            bright = _brightest(meas.flux[rows], _n_brightest(n_refs, MAX_OFFSET_CCD))
            offset, support = _offset_search(tp[bright], ref_tree, search_mas, bin_mas)
            if support < MIN_OFFSET_SUPPORT:
                offset = offset_of_visit()
            offsets.append(offset)
            tp = tp + offset
            coeffs = fit_poly(u, v, tp, 1)
            for radius, deg in ((3 * match_radius_arcsec, 1), (2 * match_radius_arcsec, degree),
                                (match_radius_arcsec, degree)):
                mi, ri = _match(tp, ref_tree, radius * 1000)
                use_deg = deg if len(mi) >= 3 * ((deg + 1) * (deg + 2) // 2) else 1
                if len(mi) < 3:
                    break
                coeffs = fit_poly(u[mi], v[mi], ref_tp[ri], use_deg)
                tp = poly_eval(coeffs, u, v, use_deg, np)
            if len(mi) < 3:
                # too few reference stars here: keep the initial WCS (plus the offset found)
                coeffs = fit_poly(u, v, gnomonic(meas.ra_init[rows], meas.dec_init[rows], visit.ra,
                                                 visit.dec) + offset, 1)
                use_deg = 1
            full = np.zeros((2, k))
            full[:, : coeffs.shape[1]] = coeffs  # lower degree: our monomial order is by total degree
            per_ccd[c] = full
            meas_tp[rows] = poly_eval(full, u, v, degree, np)
            mi, ri = _match(meas_tp[rows], ref_tree, match_radius_arcsec * 1000)
            meas_ref[rows[mi]] = ref_ids[ri]
            meas_ref_tp[rows[mi]] = ref_tp[ri]
            n_matched += len(mi)
            ccd_rms = float("nan")
            if len(mi):
                ccd_rms = float(np.sqrt(np.mean(np.sum((meas_tp[rows[mi]] - ref_tp[ri]) ** 2, axis=1))))
                rms.append(ccd_rms)
            ccd_stats[vi].append(CcdMatch(int(c), visit.visit, data.ccds[c].detector, len(rows), n_refs,
                                          (float(offset[0]) / 1000, float(offset[1]) / 1000), int(support),
                                          len(mi), ccd_rms))
        off = np.mean(offsets, axis=0) / 1000
        return VisitMatch(visit.visit, len(in_visit), len(ref_ids), n_matched,
                          (float(off[0]), float(off[1])), float(np.mean(rms)) if rms else float("nan"))

    # visits in threads: each writes only its own measurements' rows and CCDs; KD-trees and
    # NumPy release the GIL
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for match in pool.map(match_visit, range(len(data.visits))):
            stats.append(match)
            if progress is not None:
                progress()

    if sum(s.n_matched for s in stats) == 0:
        n_refs = sum(len(r.ids) for r in references)
        raise AssociationError(f"no measurement matched a reference star ({n_refs} reference stars loaded "
                               f"around the {len(data.visits)} exposures): is the refcat covering this field, "
                               f"and the initial WCS within the search radius ({search_radius_arcsec:g} arcsec)?")

    # sky positions of all measurements through the corrected initial mappings
    ra = np.empty(n)
    dec = np.empty(n)
    visit_of_meas = visit_of_ccd[meas.ccd_index]
    for vi, rows in group_rows(visit_of_meas, len(data.visits)):
        visit = data.visits[vi]
        ra[rows], dec[rows] = inverse_gnomonic(meas_tp[rows], visit.ra, visit.dec)

    # 1) by reference id; 2) friends-of-friends for the rest
    star_of = np.full(n, -1, dtype=np.int64)
    has_ref = meas_ref >= 0
    ref_unique, ref_star = np.unique(meas_ref[has_ref], return_inverse=True)
    star_of[has_ref] = ref_star
    n_ref_stars = len(ref_unique)
    rest = np.flatnonzero(~has_ref & (meas.flags == 0))
    xyz = unit_vectors(ra[rest], dec[rest])
    link = 2 * np.sin(np.radians(link_radius_arcsec / 3600) / 2)
    pairs = cKDTree(xyz).query_pairs(link, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(rest), len(rest)))
    n_groups, labels = connected_components(graph, directed=False)
    counts = np.bincount(labels, minlength=n_groups)
    # a group with two measurements of one CCD is a blend or a false link: drop it
    key = labels * (len(data.ccds) + 1) + meas.ccd_index[rest]
    unique_keys, key_counts = np.unique(key, return_counts=True)
    dup = np.zeros(n_groups, bool)
    if np.any(key_counts > 1):
        dup[np.unique(unique_keys[key_counts > 1] // (len(data.ccds) + 1))] = True
    good = (counts >= min_measurements) & ~dup
    remap = np.full(n_groups, -1, dtype=np.int64)
    remap[good] = n_ref_stars + np.arange(good.sum())
    star_of[rest] = remap[labels]
    n_stars = n_ref_stars + int(good.sum())

    star_ref = np.full(n_stars, -1, dtype=np.int64)
    star_ref[:n_ref_stars] = ref_unique
    sel = star_of >= 0
    xyz = unit_vectors(ra[sel], dec[sel])
    vec = np.stack([np.bincount(star_of[sel], weights=xyz[:, i], minlength=n_stars) for i in range(3)], axis=1)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    star_ra = np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360.0
    star_dec = np.degrees(np.arcsin(vec[:, 2]))
    return Association(star_of, n_stars, star_ref, star_ra, star_dec, meas_ref_tp, per_ccd, degree,
                       geometry, stats, [m for per_visit in ccd_stats for m in per_visit],
                       (float(search_radius_arcsec), float(match_radius_arcsec), float(link_radius_arcsec)))

