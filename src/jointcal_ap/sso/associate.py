"""SSO association: DiaSources of one detector × the Solar System objects predicted on it.

:func:`associate_sso` runs before DiaObject association. It matches each predicted object
to at most one DiaSource, and each source to at most one object, by a one-to-one
assignment (``scipy.optimize.linear_sum_assignment``) that minimises the total χ² of the
offsets, allowing only pairs inside an error ellipse. Matched sources get ``ssObjectId``
and an SSSource row (Rubin's columns); the others are returned for DiaObject association.

The error ellipse
-----------------
For a source at offset d = (Δα cos δ, Δδ) from the object's prediction (tangent plane at
the prediction, arcsec), χ² = dᵀ (C_src + C_eph)⁻¹ d with

- C_src: the source's ``raErr``, ``decErr`` (degrees, Rubin's units; RA error includes
  cos δ) and ``ra_dec_Cov`` (deg²); missing errors default to
  ``AssociationOptions.default_source_sigma_arcsec``;
- C_eph: the ephemeris uncertainty, ``ephemeris_sigma_arcsec`` in every direction (or a
  per-object value, column ``ephUncertainty`` in arcsec if the predictions carry one),
  plus, along the predicted motion, (rate · exposure time)²/12 for sources measured with
  a point-source model: the centroid of a trail is its midpoint, but a PSF fit to a trail
  is less precise than its formal error says. Sources with a successful trailed fit
  (``trailRa``/``trailDec`` finite, ``trail_flag`` false) use the trail centroid and its
  errors instead and get no inflation.

A pair is allowed if χ² ≤ ``max_chi2`` (default 25: 4.6σ for 2 dof) and the separation is
≤ ``max_distance_arcsec``. The prediction is moved to each source's ``midpointMjdTai``
with the predicted rates first (predictions are made once per visit).

SSSource columns
----------------
From the observed position: ``eclLambda``, ``eclBeta`` (J2000 mean ecliptic: the ICRS
rotated by ε₀ = 84381.448″), ``galLon``, ``galLat`` (astropy's Galactic frame). From the
prediction: ``eph*``, ``topoRange(Rate)``, ``helioRange(Rate)``, ``phaseAngle``,
``elongation``, ``helio_*``, ``topo_*`` (see :mod:`.ephemeris`). Offsets observed −
predicted in arcsec: ``ephOffsetRa`` (× cos δ), ``ephOffsetDec``, ``ephOffset``, and
along/across the predicted motion: with û = (u_east, u_north) the unit vector of the
predicted motion, ``ephOffsetAlongTrack`` = d·û (positive ahead of the object) and
``ephOffsetCrossTrack`` = d·(−u_north, u_east) (the motion turned by +90° from east
towards north). ``diaDistanceRank``: 1 if the matched source is the nearest
source to the prediction, 2 if the second nearest, ...
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.simulate._geometry import unit_vector
from jointcal_ap.sso._tables import as_table, float_column, require_columns
from jointcal_ap.sso.constants import ICRS_TO_ECLIPTIC
from jointcal_ap.sso.ephemeris import EPHEMERIS_COLUMNS, Ephemerides
from jointcal_ap.sso.errors import SsoError

__all__ = ["AssociationOptions", "SsoAssociation", "associate_sso", "ecliptic_galactic"]

_ARCSEC = 3600.0
_DIA_REQUIRED = ("diaSourceId", "ra", "dec", "midpointMjdTai")


@dataclass(frozen=True)
class AssociationOptions:
    """Options of :func:`associate_sso`.

    Attributes
    ----------
    ephemeris_sigma_arcsec : float
        1σ uncertainty of a prediction in each direction, arcsec (default 1.0; catalog
        orbits of numbered asteroids do far better, new discoveries far worse).
    default_source_sigma_arcsec : float
        1σ position error for sources without ``raErr``/``decErr`` (default 0.1).
    max_chi2 : float
        Largest χ² of an allowed pair (default 25).
    max_distance_arcsec : float
        Largest separation of an allowed pair (default 10).
    exposure_time_s : float
        Used for the trail inflation when the sources have no ``exposureTime`` (default 30).
    """

    ephemeris_sigma_arcsec: float = 1.0
    default_source_sigma_arcsec: float = 0.1
    max_chi2: float = 25.0
    max_distance_arcsec: float = 10.0
    exposure_time_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("ephemeris_sigma_arcsec", "default_source_sigma_arcsec", "max_chi2",
                     "max_distance_arcsec", "exposure_time_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"AssociationOptions.{name} = {value}; expected a positive number")


@dataclass(frozen=True)
class SsoAssociation:
    """The result of :func:`associate_sso`.

    Attributes
    ----------
    ss_sources : pyarrow.Table
        One SSSource row per matched source (Rubin's SSSource columns, in its order).
    dia_sources : pyarrow.Table
        All input sources, in input order, with ``ssObjectId`` set for matched ones (NULL
        otherwise).
    unassociated : pyarrow.Table
        The input sources that matched no object: what DiaObject association gets.
    matched : ndarray of bool
        Per input source.
    object_index : ndarray of int
        Per input source: the row of the predictions it matched (−1 if none).
    """

    ss_sources: Any
    dia_sources: Any
    unassociated: Any
    matched: np.ndarray
    object_index: np.ndarray


@functools.lru_cache(maxsize=1)
def _icrs_to_galactic() -> np.ndarray:
    """The rotation ICRS → Galactic of astropy (columns: ICRS axes in Galactic)."""
    import astropy.units as u
    from astropy.coordinates import ICRS, CartesianRepresentation, Galactic

    basis = ICRS(CartesianRepresentation(np.eye(3) * u.one), representation_type="cartesian")
    gal = basis.transform_to(Galactic()).cartesian.xyz.value  # shape (3, 3): row k = axis k
    return np.asarray(gal, float).T  # xyz[c, k]: Galactic component c of ICRS axis k


def _lonlat(vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon = np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360.0
    lat = np.degrees(np.arctan2(vec[:, 2], np.hypot(vec[:, 0], vec[:, 1])))
    return lon, lat


def ecliptic_galactic(ra_deg: Any, dec_deg: Any) -> dict[str, np.ndarray]:
    """``eclLambda``, ``eclBeta`` (J2000 mean ecliptic) and ``galLon``, ``galLat`` of ICRS
    positions (degrees).

    >>> out = ecliptic_galactic([266.41683], [-29.00781])   # Sgr A*
    >>> round(float(out["galLon"][0]), 3), round(float(out["galLat"][0]), 3)
    (359.944, -0.046)
    """
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    vec = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)
    ecl_lon, ecl_lat = _lonlat(vec @ ICRS_TO_ECLIPTIC.T)
    gal = _icrs_to_galactic()
    gal_lon, gal_lat = _lonlat(vec @ gal)
    return {"eclLambda": ecl_lon, "eclBeta": ecl_lat, "galLon": gal_lon, "galLat": gal_lat}


def _predictions(pred: Ephemerides | Any) -> Ephemerides:
    if isinstance(pred, Ephemerides):
        return pred
    table = as_table(pred, "predictions")
    require_columns(table, "predictions", ("designation", "ssObjectId", "mjdTai", "ephRa", "ephDec"),
                    "the table of `jointcal-ap sso predict` (Ephemerides.to_table())")
    cols = {name: float_column(table, name, np.nan) for name in EPHEMERIS_COLUMNS}
    if "ephUncertainty" in table.column_names:
        cols["ephUncertainty"] = float_column(table, "ephUncertainty", np.nan)
    return Ephemerides(np.asarray(table.column("designation").to_pylist(), dtype=object),
                       np.asarray(table.column("ssObjectId").to_numpy(), np.int64),
                       float_column(table, "mjdTai", np.nan), cols)


def associate_sso(dia_sources: Any, predictions: Ephemerides | Any, *,
                  options: AssociationOptions | None = None) -> SsoAssociation:
    """Associate one detector's DiaSources with the Solar System objects predicted on it.

    Parameters
    ----------
    dia_sources : pyarrow.Table (or pandas / astropy table, mapping)
        Rubin DiaSource columns: ``diaSourceId``, ``ra``, ``dec`` (deg),
        ``midpointMjdTai``; used when present: ``raErr``, ``decErr`` (deg), ``ra_dec_Cov``
        (deg²), ``exposureTime`` (s), ``trailRa``, ``trailDec``, ``trailRaErr``,
        ``trailDecErr``, ``trail_flag``.
    predictions : Ephemerides or table
        The objects predicted in the detector's footprint at the visit time
        (:func:`~.footprint.objects_in_region`, or the output of ``sso predict``).
    options : AssociationOptions

    Returns
    -------
    SsoAssociation

    Raises
    ------
    SsoError
        If a required column is missing or a position is not finite (naming the source).
    """
    import pyarrow as pa
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from jointcal_ap.schemas import apdb_schema

    opts = options or AssociationOptions()
    table = as_table(dia_sources, "dia_sources")
    require_columns(table, "dia_sources", _DIA_REQUIRED, "Rubin's DiaSource columns")
    pred = _predictions(predictions)
    n_src, n_obj = table.num_rows, len(pred)
    ids = np.asarray(table.column("diaSourceId").to_numpy(zero_copy_only=False), np.int64)
    ra = float_column(table, "ra", np.nan)
    dec = float_column(table, "dec", np.nan)
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise SsoError(f"dia_sources: diaSourceId {ids[k]} (row {k}): ra/dec = "
                       f"({ra[k]}, {dec[k]}); expected finite degrees")
    t_src = float_column(table, "midpointMjdTai", np.nan)
    ra_err = float_column(table, "raErr", np.nan) * _ARCSEC
    dec_err = float_column(table, "decErr", np.nan) * _ARCSEC
    cov_rd = float_column(table, "ra_dec_Cov", 0.0) * _ARCSEC**2
    # a successful trailed fit: its centroid (the trail midpoint) and errors
    trail_ra = float_column(table, "trailRa", np.nan)
    trail_dec = float_column(table, "trailDec", np.nan)
    trail_flag = float_column(table, "trail_flag", 0.0).astype(bool)
    trail_ok = np.isfinite(trail_ra) & np.isfinite(trail_dec) & ~trail_flag
    ra = np.where(trail_ok, trail_ra, ra)
    dec = np.where(trail_ok, trail_dec, dec)
    t_ra_err = float_column(table, "trailRaErr", np.nan) * _ARCSEC
    t_dec_err = float_column(table, "trailDecErr", np.nan) * _ARCSEC
    ra_err = np.where(trail_ok & np.isfinite(t_ra_err), t_ra_err, ra_err)
    dec_err = np.where(trail_ok & np.isfinite(t_dec_err), t_dec_err, dec_err)
    cov_rd = np.where(trail_ok, 0.0, np.where(np.isfinite(cov_rd), cov_rd, 0.0))
    default = opts.default_source_sigma_arcsec
    ra_err = np.where(np.isfinite(ra_err) & (ra_err > 0), ra_err, default)
    dec_err = np.where(np.isfinite(dec_err) & (dec_err > 0), dec_err, default)
    exptime = float_column(table, "exposureTime", opts.exposure_time_s)
    exptime = np.where(np.isfinite(exptime), exptime, opts.exposure_time_s)

    src_obj = np.full(n_src, -1, np.int64)
    rank = np.zeros(n_src, np.int64)
    pairs_src = np.empty(0, np.int64)
    pairs_obj = np.empty(0, np.int64)
    chi2 = np.empty(0)
    if n_src and n_obj:
        eph_ra, eph_dec = pred["ephRa"], pred["ephDec"]
        eph_unc = pred.columns.get("ephUncertainty")
        eph_sigma = np.where(np.isfinite(eph_unc), eph_unc, opts.ephemeris_sigma_arcsec) \
            if eph_unc is not None else np.full(n_obj, opts.ephemeris_sigma_arcsec)
        rate_ra = np.nan_to_num(pred["ephRateRa"])  # deg/day, × cos δ
        rate_dec = np.nan_to_num(pred["ephRateDec"])
        obj_vec = unit_vector(eph_ra, eph_dec)
        src_vec = unit_vector(ra, dec)
        # candidate pairs: separations below the cap plus the motion over the time offsets
        dt_max = np.nanmax(np.abs(t_src[:, None] - pred.mjd_tai[None, :1])) if n_obj else 0.0
        reach_deg = opts.max_distance_arcsec / _ARCSEC + np.nanmax(np.hypot(rate_ra, rate_dec)) \
            * (dt_max if np.isfinite(dt_max) else 0.0)
        tree = cKDTree(obj_vec)
        lists = tree.query_ball_point(src_vec, 2.0 * math.sin(math.radians(reach_deg) / 2.0))
        counts = np.fromiter((len(x) for x in lists), np.int64, n_src)
        cand_src = np.repeat(np.arange(n_src), counts)
        cand_obj = np.fromiter((j for x in lists for j in x), np.int64, int(counts.sum()))
        # predictions moved to each source's time
        dt = t_src[cand_src] - pred.mjd_tai[cand_obj]
        dt = np.where(np.isfinite(dt), dt, 0.0)
        pra, pdec = _offset_position(eph_ra[cand_obj], eph_dec[cand_obj],
                                     rate_ra[cand_obj] * dt, rate_dec[cand_obj] * dt)
        xi, eta = _tangent_offsets(ra[cand_src], dec[cand_src], pra, pdec)  # arcsec
        sep = np.hypot(xi, eta)
        # covariance: source + ephemeris (+ trail smearing along the motion)
        speed = np.hypot(rate_ra[cand_obj], rate_dec[cand_obj])
        ux = np.where(speed > 0, rate_ra[cand_obj] / np.where(speed > 0, speed, 1.0), 1.0)
        uy = np.where(speed > 0, rate_dec[cand_obj] / np.where(speed > 0, speed, 1.0), 0.0)
        smear = np.where(trail_ok[cand_src], 0.0,
                         (speed * _ARCSEC * exptime[cand_src] / 86400.0) ** 2 / 12.0)
        s2 = eph_sigma[cand_obj] ** 2
        cxx = ra_err[cand_src] ** 2 + s2 + smear * ux * ux
        cyy = dec_err[cand_src] ** 2 + s2 + smear * uy * uy
        cxy = cov_rd[cand_src] + smear * ux * uy
        det = cxx * cyy - cxy * cxy
        c2 = (cyy * xi * xi - 2.0 * cxy * xi * eta + cxx * eta * eta) / det
        allowed = (c2 <= opts.max_chi2) & (sep <= opts.max_distance_arcsec)
        pairs_src, pairs_obj, chi2 = cand_src[allowed], cand_obj[allowed], c2[allowed]
        pair_sep = sep[allowed]
        if pairs_src.size:
            # one-to-one assignment in each connected group of sources and objects
            graph = coo_matrix((np.ones(pairs_src.size), (pairs_src, n_src + pairs_obj)),
                               shape=(n_src + n_obj, n_src + n_obj))
            _, label = connected_components(graph, directed=False)
            comp = label[pairs_src]
            order = np.argsort(comp, kind="stable")
            bounds = np.flatnonzero(np.diff(comp[order])) + 1
            for group in np.split(order, bounds):
                s_ids, s_loc = np.unique(pairs_src[group], return_inverse=True)
                o_ids, o_loc = np.unique(pairs_obj[group], return_inverse=True)
                cost = np.full((s_ids.size, o_ids.size), 1e12)
                cost[s_loc, o_loc] = chi2[group]
                rows, cols = linear_sum_assignment(cost)
                good = cost[rows, cols] < 1e12
                src_obj[s_ids[rows[good]]] = o_ids[cols[good]]
            # rank of each match among the sources near its prediction (by separation)
            all_sep = sep
            for k in np.flatnonzero(src_obj >= 0):
                j = src_obj[k]
                near = cand_obj == j
                mine = pair_sep[(pairs_src == k) & (pairs_obj == j)][0]
                rank[k] = 1 + int(np.count_nonzero(all_sep[near] < mine))
    matched = src_obj >= 0
    ss_rows = _ss_source_rows(table, pred, ids, ra, dec, t_src, src_obj, rank, matched)
    ss_schema = apdb_schema()["SSSource"]
    ss_sources = ss_schema.conform(ss_rows, where="associate_sso")
    obj_ids = np.zeros(n_src, np.int64)
    obj_ids[matched] = pred.ss_object_id[src_obj[matched]]
    ss_col = pa.array(obj_ids, pa.int64(), mask=~matched)
    if "ssObjectId" in table.column_names:
        out = table.set_column(table.column_names.index("ssObjectId"), "ssObjectId", ss_col)
    else:
        out = table.append_column("ssObjectId", ss_col)
    return SsoAssociation(ss_sources=ss_sources, dia_sources=out,
                          unassociated=out.filter(pa.array(~matched)), matched=matched,
                          object_index=src_obj)


def _tangent_offsets(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic offsets (arcsec) of (ra, dec) about (ra0, dec0): east (× cos δ), north."""
    ra, dec, ra0, dec0 = (np.radians(np.asarray(a, float)) for a in (ra, dec, ra0, dec0))
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * _ARCSEC, np.degrees(eta) * _ARCSEC


def _offset_position(ra0, dec0, d_east_deg, d_north_deg) -> tuple[np.ndarray, np.ndarray]:
    """The position at tangent-plane offsets (degrees, east × cos δ and north) from (ra0, dec0)."""
    ra0, dec0 = np.radians(ra0), np.radians(dec0)
    xi, eta = np.radians(d_east_deg), np.radians(d_north_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _ss_source_rows(table: Any, pred: Ephemerides, ids: np.ndarray, ra: np.ndarray,
                    dec: np.ndarray, t_src: np.ndarray, src_obj: np.ndarray, rank: np.ndarray,
                    matched: np.ndarray) -> dict[str, Any]:
    k = np.flatnonzero(matched)
    j = src_obj[k]
    rows: dict[str, Any] = {"diaSourceId": ids[k], "ssObjectId": pred.ss_object_id[j],
                            "designation": [str(d) for d in pred.designation[j]]}
    rows.update(ecliptic_galactic(ra[k], dec[k]))
    for name in EPHEMERIS_COLUMNS:
        rows[name] = pred[name][j]
    # the prediction at the source's time, then the offsets observed − predicted
    dt = np.where(np.isfinite(t_src[k]), t_src[k] - pred.mjd_tai[j], 0.0)
    rate_ra, rate_dec = np.nan_to_num(pred["ephRateRa"][j]), np.nan_to_num(pred["ephRateDec"][j])
    pra, pdec = _offset_position(pred["ephRa"][j], pred["ephDec"][j], rate_ra * dt, rate_dec * dt)
    rows["ephRa"], rows["ephDec"] = pra, pdec
    xi, eta = _tangent_offsets(ra[k], dec[k], pra, pdec)
    speed = np.hypot(rate_ra, rate_dec)
    ux = np.where(speed > 0, rate_ra / np.where(speed > 0, speed, 1.0), 1.0)
    uy = np.where(speed > 0, rate_dec / np.where(speed > 0, speed, 1.0), 0.0)
    rows["ephOffsetRa"], rows["ephOffsetDec"] = xi, eta
    rows["ephOffset"] = np.hypot(xi, eta)
    rows["ephOffsetAlongTrack"] = xi * ux + eta * uy
    rows["ephOffsetCrossTrack"] = -xi * uy + eta * ux
    rows["diaDistanceRank"] = rank[k]
    return rows
