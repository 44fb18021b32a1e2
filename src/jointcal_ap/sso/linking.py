"""HelioLinC-style linking of unassociated detections into new orbits.

The idea (Holman et al. 2018, AJ 156, 135; the 6-D "heliolinc3D" form of Eggl et al.
2020 and Heinze et al. 2022): two detections of one night fix a position and a velocity
on the sky, but not the distance. Assume the object's heliocentric distance r and its rate
ṙ (a *hypothesis*); then each tracklet becomes a full heliocentric state. Propagate all
states to one reference time: under the right hypothesis, the tracklets of one object on
different nights land on the same state, and a clustering finds them. So:

1. :func:`make_tracklets`: pairs of detections of one night, from different visits
   ``min_dt``–``max_dt`` apart, moving at ``min_rate``–``max_rate`` (deg/day).
2. For each hypothesis (r, ṙ) on a grid, and each tracklet: the distances ρᵢ along its two
   lines of sight with |O(tᵢ) + ρᵢ ûᵢ − S| = r + ṙ (tᵢ − t_ref) (O the observer, S the Sun;
   emission times tᵢ − ρᵢ/c); the velocity from the two positions; the state at the
   tracklet's mean time, propagated (two-body, :mod:`.kepler`) to t_ref.
3. Clustering of the states at t_ref, per hypothesis, with DBSCAN (:func:`dbscan`, on a
   KD-tree) on (x, y, z, τ·vx, τ·vy, τ·vz) (au): radius ``cluster_radius_au`` × the median distance
   from the observer at t_ref (errors grow with distance), τ = ``velocity_scale_days``.
   A cluster needs ``min_tracklets`` tracklets on ``min_nights`` distinct nights.
4. Candidate linkages (deduplicated over hypotheses) get a least-squares two-body orbit
   (:func:`~.orbit_fit.fit_orbits`, started from the cluster's mean state) with 5σ
   clipping; those with an RMS above ``max_rms_arcsec`` or fewer than ``min_nights``
   nights left are dropped, and detections are given to the best linkages first (most
   detections, then lowest χ²), so that each detection belongs to at most one linkage.

Nights are local nights at the site: ``floor(mjd + longitude/360° − 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jointcal_ap.progress import progress as progress_bar
from jointcal_ap.simulate._geometry import unit_vector
from jointcal_ap.sso._tables import as_table, float_column, require_columns
from jointcal_ap.sso.constants import C_AU_PER_DAY, DAY_S, ICRS_TO_ECLIPTIC, TT_MINUS_TAI_S
from jointcal_ap.sso.errors import SsoError
from jointcal_ap.sso.kepler import propagate, state_to_cometary
from jointcal_ap.sso.observer import PlanetaryEphemeris, observer_states, parse_site
from jointcal_ap.sso.orbit_fit import fit_orbits

__all__ = [
    "LINK_COLUMNS",
    "Linkages",
    "LinkingOptions",
    "Tracklets",
    "dbscan",
    "evaluate_linkages",
    "link",
    "make_tracklets",
    "night_of",
]

_FIT_BATCH = 2000

#: The columns of :meth:`Linkages.to_table`.
LINK_COLUMNS = ("linkageId", "designation", "diaSourceIds", "nObs", "nTracklets", "nNights",
                "arc", "rmsArcsec", "chi2", "q", "e", "i", "node", "argperi", "peri_time",
                "epoch_mjd", "helio_x", "helio_y", "helio_z", "helio_vx", "helio_vy",
                "helio_vz", "hypothesisR", "hypothesisRdot")


def _default_r() -> tuple[float, ...]:
    # the main belt by 0.1 au, and the Kuiper belt by 5 au (TNOs barely move in two weeks:
    # a coarse grid suffices there)
    return (*np.round(np.arange(1.6, 4.01, 0.1), 3).tolist(), 30.0, 35.0, 40.0, 45.0, 50.0)


def _default_rdot() -> tuple[float, ...]:
    return (-0.003, -0.0015, 0.0, 0.0015, 0.003)


@dataclass(frozen=True)
class LinkingOptions:
    """Options of :func:`link`.

    Attributes
    ----------
    site : str
        The observatory (see :func:`~.observer.parse_site`).
    min_dt_min, max_dt_h : float
        Time between a tracklet's detections: at least minutes, at most hours.
    min_rate, max_rate : float
        Apparent rate of a tracklet, deg/day (default 0.005–2.0: from TNOs to slow NEOs).
    r_grid : tuple of float
        Heliocentric distances of the hypotheses, au (default 1.6–4.0 by 0.1, and 30–50
        by 5).
    rdot_grid : tuple of float
        Heliocentric radial rates of the hypotheses, au/day (default ±0.003, ±0.0015, 0).
    reference_mjd : float or None
        t_ref (MJD TAI); default the middle of the detections' time span.
    cluster_radius_au : float
        DBSCAN radius per au of distance from the observer (default 0.0005).
    velocity_scale_days : float
        τ weighting velocities against positions in the clustering (default 5 days).
    min_tracklets, min_nights : int
        A linkage needs this many tracklets on this many distinct nights (default 3, 3).
    max_rms_arcsec : float
        Largest RMS of an accepted orbit fit (default 0.5″).
    default_sigma_arcsec : float
        Positional error for detections without ``raErr``/``decErr`` (default 0.1″).
    """

    site: str = "rubin"
    min_dt_min: float = 5.0
    max_dt_h: float = 2.0
    min_rate: float = 0.005
    max_rate: float = 2.0
    r_grid: tuple[float, ...] = field(default_factory=_default_r)
    rdot_grid: tuple[float, ...] = field(default_factory=_default_rdot)
    reference_mjd: float | None = None
    cluster_radius_au: float = 0.0005
    velocity_scale_days: float = 5.0
    min_tracklets: int = 3
    min_nights: int = 3
    max_rms_arcsec: float = 0.5
    default_sigma_arcsec: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.min_dt_min < self.max_dt_h * 60.0:
            raise ValueError(f"LinkingOptions: need 0 < min_dt_min ({self.min_dt_min}) < "
                             f"max_dt_h·60 ({self.max_dt_h * 60.0})")
        if not 0 <= self.min_rate < self.max_rate:
            raise ValueError(f"LinkingOptions: need 0 <= min_rate < max_rate; got "
                             f"{self.min_rate}, {self.max_rate}")
        if not self.r_grid or min(self.r_grid) <= 0:
            raise ValueError(f"LinkingOptions.r_grid = {self.r_grid}; expected positive au")
        if not self.rdot_grid:
            raise ValueError("LinkingOptions.rdot_grid is empty")
        for name in ("cluster_radius_au", "velocity_scale_days", "max_rms_arcsec",
                     "default_sigma_arcsec"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LinkingOptions.{name} must be positive")
        if self.min_tracklets < 2 or self.min_nights < 1:
            raise ValueError("LinkingOptions: min_tracklets >= 2 and min_nights >= 1")


def night_of(mjd: Any, lon_deg: float) -> np.ndarray:
    """The local night number at longitude ``lon_deg``: ``floor(mjd + lon/360 − 0.5)`` (the
    local date at the previous local noon)."""
    return np.floor(np.asarray(mjd, float) + lon_deg / 360.0 - 0.5).astype(np.int64)


@dataclass(frozen=True)
class Tracklets:
    """Pairs of detections of one night.

    Attributes
    ----------
    first, second : ndarray of int
        Row indices (into the sources) of the earlier and the later detection.
    night : ndarray of int
    """

    first: np.ndarray
    second: np.ndarray
    night: np.ndarray

    def __len__(self) -> int:
        return int(self.first.shape[0])


def make_tracklets(ra: np.ndarray, dec: np.ndarray, mjd_tai: np.ndarray, night: np.ndarray,
                   options: LinkingOptions) -> Tracklets:
    """All pairs of detections of one night that could be one moving object (see the
    module docstring)."""
    from scipy.spatial import cKDTree

    vec = unit_vector(ra, dec)
    firsts, seconds = [], []
    max_dt = options.max_dt_h / 24.0
    min_dt = options.min_dt_min / 1440.0
    for n in np.unique(night):
        rows = np.flatnonzero(night == n)
        if rows.size < 2:
            continue
        tree = cKDTree(vec[rows])
        reach = math.radians(options.max_rate * max_dt)
        pairs = tree.query_pairs(2.0 * math.sin(reach / 2.0), output_type="ndarray")
        if pairs.size == 0:
            continue
        i, j = rows[pairs[:, 0]], rows[pairs[:, 1]]
        swap = mjd_tai[j] < mjd_tai[i]
        i, j = np.where(swap, j, i), np.where(swap, i, j)
        dt = mjd_tai[j] - mjd_tai[i]
        sep = np.degrees(2.0 * np.arcsin(np.clip(np.linalg.norm(vec[i] - vec[j], axis=1) / 2.0,
                                                 0.0, 1.0)))
        ok = (dt >= min_dt) & (dt <= max_dt)
        rate = sep / np.where(dt > 0, dt, 1.0)
        ok &= (rate >= options.min_rate) & (rate <= options.max_rate)
        firsts.append(i[ok])
        seconds.append(j[ok])
    if not firsts:
        empty = np.empty(0, np.int64)
        return Tracklets(empty, empty, empty)
    first = np.concatenate(firsts)
    second = np.concatenate(seconds)
    return Tracklets(first, second, night[first])


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN (Ester et al. 1996) with a KD-tree: cluster labels (−1: noise).

    Core points have at least ``min_samples`` points (themselves included) within ``eps``;
    clusters are the connected core points plus the border points within ``eps`` of a
    core point (given to the cluster of one such core point). The same clustering as
    scikit-learn's ``DBSCAN(eps, min_samples=min_samples)`` up to the choice of cluster for
    border points shared by two clusters, and several times faster here because the
    neighbour pairs come from one ``cKDTree.query_pairs`` call on the first three
    coordinates (a superset), filtered with the full distance.

    >>> pts = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5, 5], [5.1, 5], [9, 9]])
    >>> dbscan(pts, 0.15, 2).tolist()
    [0, 0, 0, 1, 1, -1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = points.shape[0]
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    # pairs within eps in the first 3 coordinates (a fast 3-D tree), then in all of them
    pairs = cKDTree(points[:, :3]).query_pairs(eps, output_type="ndarray")
    if points.shape[1] > 3 and pairs.size:
        d = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
        pairs = pairs[d <= eps]
    counts = np.bincount(pairs.ravel(), minlength=n) + 1
    core = counts >= min_samples
    if not core.any():
        return labels
    cc = pairs[core[pairs[:, 0]] & core[pairs[:, 1]]]
    graph = coo_matrix((np.ones(len(cc)), (cc[:, 0], cc[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    core_idx = np.flatnonzero(core)
    _, labels_core = np.unique(comp[core_idx], return_inverse=True)
    labels[core_idx] = labels_core
    # border points: attach to the cluster of a core neighbour
    for a, b in ((0, 1), (1, 0)):
        border = ~core[pairs[:, a]] & core[pairs[:, b]]
        labels[pairs[border, a]] = labels[pairs[border, b]]
    return labels


def _positions_at_distance(obs_helio: np.ndarray, u: np.ndarray, r: np.ndarray) -> np.ndarray:
    """ρ ≥ 0 with |O + ρ û| = r (the far root; NaN where the line of sight misses r)."""
    b = np.einsum("ij,ij->i", obs_helio, u)
    c = np.einsum("ij,ij->i", obs_helio, obs_helio) - r * r
    disc = b * b - c
    with np.errstate(invalid="ignore"):
        rho = -b + np.sqrt(disc)
    return np.where((disc >= 0) & (rho > 0), rho, np.nan)


@dataclass(frozen=True)
class Linkages:
    """Candidate linkages with fitted orbits.

    Attributes
    ----------
    members : list of ndarray of int
        Per linkage, the row indices of its detections in the input.
    source_ids : list of ndarray of int64
        Per linkage, the ``diaSourceId`` values.
    orbits : dict of str → ndarray
        Fitted elements per linkage (``q``, ``e``, ``i``, ``node``, ``argperi`` in
        degrees, ``peri_time``, ``epoch_mjd`` MJD TT) and the state (``helio_*``, ICRS au,
        au/day).
    stats : dict of str → ndarray
        ``nObs``, ``nTracklets``, ``nNights``, ``arc``, ``rmsArcsec``, ``chi2``,
        ``hypothesisR``, ``hypothesisRdot``.
    n_tracklets_total : int
        Tracklets made.
    n_candidates : int
        Clusters found before the orbit fits and de-duplication.
    """

    members: list[np.ndarray]
    source_ids: list[np.ndarray]
    orbits: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    n_tracklets_total: int = 0
    n_candidates: int = 0

    def __len__(self) -> int:
        return len(self.members)

    def to_table(self) -> Any:
        """One row per linkage (:data:`LINK_COLUMNS`); ``diaSourceIds`` is a list column."""
        import pyarrow as pa

        n = len(self)
        data: dict[str, Any] = {
            "linkageId": np.arange(n, dtype=np.int64),
            "designation": pa.array([f"L{k:06d}" for k in range(n)], pa.string()),
            "diaSourceIds": pa.array([ids.tolist() for ids in self.source_ids],
                                     pa.list_(pa.int64())),
        }
        for name in ("nObs", "nTracklets", "nNights"):
            data[name] = np.asarray(self.stats[name], np.int64)
        for name in ("arc", "rmsArcsec", "chi2"):
            data[name] = np.asarray(self.stats[name], float)
        for name in ("q", "e", "i", "node", "argperi", "peri_time", "epoch_mjd", "helio_x",
                     "helio_y", "helio_z", "helio_vx", "helio_vy", "helio_vz"):
            data[name] = np.asarray(self.orbits[name], float)
        data["hypothesisR"] = np.asarray(self.stats["hypothesisR"], float)
        data["hypothesisRdot"] = np.asarray(self.stats["hypothesisRdot"], float)
        return pa.table(data)


def _states_at_reference(r_hyp: float, rdot_hyp: float, t: np.ndarray, u: np.ndarray,
                         obs_helio: np.ndarray, i1: np.ndarray, i2: np.ndarray,
                         t_ref: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The heliocentric states at t_ref of the tracklets (i1, i2) under one hypothesis.

    Returns the indices of the tracklets that have a state (their lines of sight reach the
    hypothesised distance) and the states' positions and velocities (au, au/day), or None.
    """
    r1 = r_hyp + rdot_hyp * (t[i1] - t_ref)
    r2 = r_hyp + rdot_hyp * (t[i2] - t_ref)
    rho1 = _positions_at_distance(obs_helio[i1], u[i1], r1)
    rho2 = _positions_at_distance(obs_helio[i2], u[i2], r2)
    k = np.flatnonzero(np.isfinite(rho1) & np.isfinite(rho2))
    if k.size == 0:
        return None
    p1 = obs_helio[i1[k]] + rho1[k, None] * u[i1[k]]
    p2 = obs_helio[i2[k]] + rho2[k, None] * u[i2[k]]
    # emission times (light time), then the state at the tracklet's mean time
    te1 = t[i1[k]] - rho1[k] / C_AU_PER_DAY
    te2 = t[i2[k]] - rho2[k] / C_AU_PER_DAY
    vel = (p2 - p1) / (te2 - te1)[:, None]
    t_mid = 0.5 * (te1 + te2)
    try:
        pos_ref, vel_ref = propagate(0.5 * (p1 + p2), vel, t_ref - t_mid)
    except ArithmeticError:
        return None
    good = np.all(np.isfinite(pos_ref), axis=1) & np.all(np.isfinite(vel_ref), axis=1)
    return k[good], pos_ref[good], vel_ref[good]


def _clusters_on_enough_nights(labels: np.ndarray, night: np.ndarray, min_nights: int
                               ) -> list[np.ndarray]:
    """The clusters of ``labels`` (indices into it) whose members span ≥ ``min_nights``."""
    clustered = np.flatnonzero(labels >= 0)
    if clustered.size == 0:
        return []
    lab = labels[clustered]
    pairs = np.unique(np.stack([lab, night[clustered]], axis=1), axis=0)
    n_nights = np.bincount(pairs[:, 0], minlength=lab.max() + 1)
    keep = np.isin(lab, np.flatnonzero(n_nights >= min_nights))
    clustered, lab = clustered[keep], lab[keep]
    order = np.argsort(lab, kind="stable")
    clustered, lab = clustered[order], lab[order]
    return np.split(clustered, np.flatnonzero(np.diff(lab)) + 1) if clustered.size else []


def link(sources: Any, options: LinkingOptions | None = None, *,
         ephemeris: PlanetaryEphemeris | None = None, progress: bool = False) -> Linkages:
    """Link detections (unassociated DiaSources) into candidate objects with orbits.

    Parameters
    ----------
    sources : pyarrow.Table
        Rubin DiaSource columns: ``diaSourceId``, ``ra``, ``dec``, ``midpointMjdTai``
        (``raErr``, ``decErr`` in degrees used when present).
    options : LinkingOptions
    ephemeris : PlanetaryEphemeris, optional
    progress : bool
        Show progress over the hypotheses (a tqdm bar on a terminal, plain lines
        otherwise).

    Returns
    -------
    Linkages
    """
    opts = options or LinkingOptions()
    sources = as_table(sources, "sources")
    require_columns(sources, "sources", ("diaSourceId", "ra", "dec", "midpointMjdTai"),
                    "Rubin's DiaSource columns")
    ids = np.asarray(sources.column("diaSourceId").to_numpy(zero_copy_only=False), np.int64)
    ra, dec = float_column(sources, "ra"), float_column(sources, "dec")
    t = float_column(sources, "midpointMjdTai")
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & np.isfinite(t))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise SsoError(f"sources: diaSourceId {ids[k]} (row {k}): ra, dec, midpointMjdTai = "
                       f"({ra[k]}, {dec[k]}, {t[k]}); expected finite values")
    sigma = np.hypot(float_column(sources, "raErr", np.nan), float_column(sources, "decErr", np.nan)) \
        / math.sqrt(2.0) * 3600.0
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, opts.default_sigma_arcsec)
    site = parse_site(opts.site)
    night = night_of(t, 0.0 if site.geocentric else site.lon_deg)
    tracklets = make_tracklets(ra, dec, t, night, opts)
    empty = Linkages([], [], {k: np.empty(0) for k in LINK_COLUMNS[9:21]},
                     {k: np.empty(0) for k in ("nObs", "nTracklets", "nNights", "arc",
                                                "rmsArcsec", "chi2", "hypothesisR",
                                                "hypothesisRdot")}, len(tracklets), 0)
    if len(tracklets) < opts.min_tracklets:
        return empty
    t_ref = float(opts.reference_mjd if opts.reference_mjd is not None
                  else 0.5 * (t.min() + t.max()))
    t_ref_tt = t_ref + TT_MINUS_TAI_S / DAY_S
    # observer and Sun at every detection time (one call for the unique times)
    times, inverse = np.unique(t, return_inverse=True)
    obs_all = observer_states(site, times, ephemeris)
    obs_helio = (obs_all.position - obs_all.sun_position)[inverse]
    u = unit_vector(ra, dec)
    ref_obs = observer_states(site, np.array([t_ref]), ephemeris)
    ref_obs_helio = (ref_obs.position - ref_obs.sun_position)[0]
    i1, i2 = tracklets.first, tracklets.second
    candidates: dict[frozenset[int], tuple[float, float, np.ndarray]] = {}
    hypotheses = [(r, rd) for r in opts.r_grid for rd in opts.rdot_grid]
    with progress_bar(total=len(hypotheses), desc="link: hypotheses", unit="hypotheses",
                      enabled=progress) as bar:
        for r_hyp, rdot_hyp in hypotheses:
            bar.update(1)
            states = _states_at_reference(r_hyp, rdot_hyp, t, u, obs_helio, i1, i2, t_ref)
            if states is None or states[0].size < opts.min_tracklets:
                continue
            k, pos_ref, vel_ref = states
            scale = float(np.median(np.linalg.norm(pos_ref - ref_obs_helio, axis=1)))
            feats = np.concatenate([pos_ref, vel_ref * opts.velocity_scale_days], axis=1)
            labels = dbscan(feats, opts.cluster_radius_au * max(scale, 0.1), opts.min_tracklets)
            for sel in _clusters_on_enough_nights(labels, tracklets.night[k], opts.min_nights):
                key = frozenset(np.concatenate([i1[k[sel]], i2[k[sel]]]).tolist())
                if key not in candidates:
                    state = np.concatenate([pos_ref[sel].mean(axis=0), vel_ref[sel].mean(axis=0)])
                    candidates[key] = (r_hyp, rdot_hyp, state)
    n_candidates = len(candidates)
    if not candidates:
        return Linkages(empty.members, empty.source_ids, empty.orbits, empty.stats,
                        len(tracklets), 0)
    # unique detection sets, largest first; a subset of a larger one adds nothing
    kept: list[frozenset[int]] = []
    holders: dict[int, list[int]] = {}
    for key in sorted(candidates, key=len, reverse=True):
        if any(key <= kept[j] for j in holders.get(min(key), ())):
            continue
        for row in key:
            holders.setdefault(row, []).append(len(kept))
        kept.append(key)
    # fit in batches, largest candidates first; accepted linkages claim their detections,
    # later candidates lose the claimed ones (and are dropped if too little is left)
    taken = np.zeros(len(ids), bool)
    members: list[np.ndarray] = []
    accepted: list[tuple[np.ndarray, np.ndarray, float, float, float, float]] = []
    for start in range(0, len(kept), _FIT_BATCH):
        batch = []
        for key in kept[start:start + _FIT_BATCH]:
            rows = np.sort(np.fromiter(key, np.int64))
            rows = rows[~taken[rows]]
            if np.unique(night[rows]).size >= opts.min_nights \
                    and _count_tracklets(rows, night) >= opts.min_tracklets:
                batch.append((rows, candidates[key]))
        if not batch:
            continue
        group = np.concatenate([np.full(rows.size, g) for g, (rows, _) in enumerate(batch)])
        rows_all = np.concatenate([rows for rows, _ in batch])
        r0 = np.array([hyp[2][:3] for _, hyp in batch])
        v0 = np.array([hyp[2][3:] for _, hyp in batch])
        fits = fit_orbits(group, ra[rows_all], dec[rows_all], sigma[rows_all],
                          obs_all.take(inverse[rows_all]), r0, v0, t_ref_tt)
        order = np.lexsort((fits.chi2, -fits.n_used))
        for g in order:
            mine = rows_all[(group == g) & fits.used]
            if not (fits.rms_arcsec[g] <= opts.max_rms_arcsec and np.isfinite(fits.chi2[g])):
                continue
            if taken[mine].any() or np.unique(night[mine]).size < opts.min_nights \
                    or _count_tracklets(mine, night) < opts.min_tracklets:
                continue
            taken[mine] = True
            members.append(mine)
            accepted.append((fits.r[g], fits.v[g], float(fits.rms_arcsec[g]),
                             float(fits.chi2[g]), batch[g][1][0], batch[g][1][1]))
    if not members:
        return Linkages(empty.members, empty.source_ids, empty.orbits, empty.stats,
                        len(tracklets), n_candidates)
    r_fit = np.array([a[0] for a in accepted])
    v_fit = np.array([a[1] for a in accepted])
    el = state_to_cometary(r_fit, v_fit, t_ref_tt, frame=ICRS_TO_ECLIPTIC)
    orbits = {"q": el["q"], "e": el["e"], "i": np.degrees(el["inc"]),
              "node": np.degrees(el["node"]), "argperi": np.degrees(el["argperi"]),
              "peri_time": el["tp"], "epoch_mjd": np.full(len(members), t_ref_tt)}
    for c, axis in enumerate("xyz"):
        orbits[f"helio_{axis}"] = r_fit[:, c]
        orbits[f"helio_v{axis}"] = v_fit[:, c]
    stats = {
        "nObs": np.array([m.size for m in members], np.int64),
        "nTracklets": np.array([_count_tracklets(m, night) for m in members], np.int64),
        "nNights": np.array([np.unique(night[m]).size for m in members], np.int64),
        "arc": np.array([t[m].max() - t[m].min() for m in members]),
        "rmsArcsec": np.array([a[2] for a in accepted]),
        "chi2": np.array([a[3] for a in accepted]),
        "hypothesisR": np.array([a[4] for a in accepted]),
        "hypothesisRdot": np.array([a[5] for a in accepted]),
    }
    return Linkages(members, [ids[m] for m in members], orbits, stats, len(tracklets),
                    n_candidates)


def _count_tracklets(rows: np.ndarray, night: np.ndarray) -> int:
    """Nights with at least two detections (a tracklet's worth) among ``rows``."""
    _, counts = np.unique(night[rows], return_counts=True)
    return int(np.count_nonzero(counts >= 2))


def evaluate_linkages(linkages: Linkages, truth_object: np.ndarray, night: np.ndarray, *,
                      min_tracklets: int = 3) -> dict[str, Any]:
    """Completeness and purity of linkages against the truth.

    Parameters
    ----------
    linkages : Linkages
    truth_object : ndarray of int64
        Per input detection, the true object id (0 for noise).
    night : ndarray of int
        Per input detection, its night.
    min_tracklets : int
        An object is *findable* with detections on at least this many nights with ≥ 2
        detections each (≥ 3 tracklets).

    Returns
    -------
    dict
        ``findable`` (objects), ``found`` (findable objects with a pure linkage of ≥
        ``min_tracklets`` tracklets), ``completeness`` (found / findable), ``linkages``,
        ``pure`` (linkages whose detections all come from one object), ``purity``
        (pure / linkages).
    """
    truth_object = np.asarray(truth_object, np.int64)
    objects = np.unique(truth_object[truth_object > 0])
    findable = set()
    for obj in objects:
        rows = np.flatnonzero(truth_object == obj)
        if _count_tracklets(rows, night) >= min_tracklets:
            findable.add(int(obj))
    found = set()
    pure = 0
    for m in linkages.members:
        owners = np.unique(truth_object[m])
        if owners.size == 1 and owners[0] > 0:
            pure += 1
            if _count_tracklets(m, night) >= min_tracklets:
                found.add(int(owners[0]))
    n_link = len(linkages)
    found_findable = found & findable
    return {"findable": len(findable), "found": len(found_findable),
            "completeness": len(found_findable) / len(findable) if findable else float("nan"),
            "linkages": n_link, "pure": pure,
            "purity": pure / n_link if n_link else float("nan")}

