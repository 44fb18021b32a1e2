"""DiaObject summary columns from the history of each object: pure, vectorised over objects.

The APDB recomputes these inside the transaction that stores a unit, for every object whose
DiaSources changed, from every DiaSource the database holds for it (and its
DiaForcedSources, for ``fpFluxMean``) — so a summary never misses a source that another
writer stored concurrently, and a re-run that replaces a unit's sources leaves summaries that
match the sources.

Definitions (per band ``b`` of ``ugrizy``, over the object's DiaSources in that band; fluxes
in nJy, times MJD TAI):

=========================  ============================================================
``b_psfFluxMean``          inverse-variance weighted mean of ``psfFlux``
``b_psfFluxMeanErr``       its standard error, ``1/sqrt(sum 1/psfFluxErr^2)``
``b_psfFluxSigma``         standard deviation of ``psfFlux`` (``ddof=1``; NULL if n < 2)
``b_psfFluxNdata``         number of finite ``psfFlux`` values (0 if none)
``b_psfFluxMin/Max``       extremes of ``psfFlux``
``b_psfFluxMaxSlope``      largest ``Δflux/Δt`` between time-consecutive sources (nJy/d)
``b_psfFluxErrMean``       mean of ``psfFluxErr``
``b_scienceFluxMean(Err)`` weighted mean of the DiaSources' ``scienceFlux`` and its error
``b_fpFluxMean(Err)``      weighted mean of the DiaForcedSources' ``psfFlux`` and its error
=========================  ============================================================

Position: ``ra``/``dec`` is the mean of the sources' unit vectors weighted by
``2/(raErr² + decErr²)``; ``raErr``/``decErr`` (σ(α cosδ) and σ(δ), degrees) are the standard
errors of the per-axis weighted means and ``ra_dec_Cov`` the matching combination of the
sources' covariances. A source without a usable error counts with
:data:`FALLBACK_SIGMA_DEG`; an object none of whose sources has errors gets NULL errors.
``nDiaSources``, ``firstDiaSourceMjdTai`` and ``lastDiaSourceMjdTai`` count and bound all of
its sources.

>>> import numpy as np
>>> src = {"diaObjectId": np.array([7, 7, 9]), "midpointMjdTai": np.array([1.0, 2.0, 1.0]),
...        "band": np.array(["g", "g", "r"], object), "ra": np.array([10.0, 10.0, 20.0]),
...        "dec": np.array([0.0, 0.0, 5.0]), "psfFlux": np.array([100.0, 300.0, 50.0]),
...        "psfFluxErr": np.array([10.0, 10.0, 5.0])}
>>> out = dia_object_summaries(np.array([7, 9]), src)
>>> out["g_psfFluxMean"].tolist(), out["g_psfFluxMaxSlope"].tolist(), out["nDiaSources"].tolist()
([200.0, nan], [200.0, nan], [2, 1])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jointcal_ap.apdb._grouping import (
    BANDS,
    band_index,
    gmax,
    gmin,
    gsum,
    sorted_runs,
    weighted_mean,
)

__all__ = [
    "FALLBACK_SIGMA_DEG",
    "FORCED_COLUMNS",
    "SOURCE_COLUMNS",
    "SUMMARY_COLUMNS",
    "dia_object_summaries",
]

#: Per-axis position error (degrees, 0.2 arcsec) assumed for a source without one.
FALLBACK_SIGMA_DEG = 0.2 / 3600.0
#: DiaSource columns the summaries read.
SOURCE_COLUMNS = ("diaObjectId", "midpointMjdTai", "band", "ra", "dec", "raErr", "decErr",
                  "ra_dec_Cov", "psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr")
#: DiaForcedSource columns the summaries read.
FORCED_COLUMNS = ("diaObjectId", "band", "psfFlux", "psfFluxErr")
_PER_BAND = ("psfFluxMean", "psfFluxMeanErr", "psfFluxSigma", "psfFluxNdata", "fpFluxMean",
             "fpFluxMeanErr", "scienceFluxMean", "scienceFluxMeanErr", "psfFluxMin",
             "psfFluxMax", "psfFluxMaxSlope", "psfFluxErrMean")
#: Every DiaObject column the summaries fill (all but the id and the validity interval).
SUMMARY_COLUMNS = ("ra", "raErr", "dec", "decErr", "ra_dec_Cov",
                   *(f"{b}_{name}" for b in BANDS for name in _PER_BAND),
                   "firstDiaSourceMjdTai", "lastDiaSourceMjdTai", "nDiaSources")


def _column(data: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name in data and data[name] is not None:
        return np.asarray(data[name], float)
    return np.full(n, np.nan)


def _positions(obj: np.ndarray, data: Mapping[str, np.ndarray], n_obj: int) -> dict[str, np.ndarray]:
    n = len(obj)
    ra, dec = np.radians(_column(data, "ra", n)), np.radians(_column(data, "dec", n))
    ra_err, dec_err = _column(data, "raErr", n), _column(data, "decErr", n)
    cov = _column(data, "ra_dec_Cov", n)
    good_ra = np.isfinite(ra_err) & (ra_err > 0)
    good_dec = np.isfinite(dec_err) & (dec_err > 0)
    s_ra = np.where(good_ra, ra_err, FALLBACK_SIGMA_DEG)
    s_dec = np.where(good_dec, dec_err, FALLBACK_SIGMA_DEG)
    w = 2.0 / (s_ra ** 2 + s_dec ** 2)
    cosd = np.cos(dec)
    vec = np.column_stack([cosd * np.cos(ra), cosd * np.sin(ra), np.sin(dec)])
    mean = np.column_stack([gsum(obj, w * vec[:, k], n_obj) for k in range(3)])
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    w_ra, w_dec = 1.0 / s_ra ** 2, 1.0 / s_dec ** 2
    sw_ra, sw_dec = gsum(obj, w_ra, n_obj), gsum(obj, w_dec, n_obj)
    has_err = gsum(obj, (good_ra & good_dec).astype(float), n_obj) > 0
    has_cov = gsum(obj, np.isfinite(cov).astype(float), n_obj) > 0
    cov_sum = gsum(obj, np.where(np.isfinite(cov), cov, 0.0) * w_ra * w_dec, n_obj)
    out = {
        "ra": np.degrees(np.arctan2(mean[:, 1], mean[:, 0])) % 360.0,
        "dec": np.degrees(np.arcsin(np.clip(mean[:, 2], -1.0, 1.0))),
        "raErr": np.where(has_err, 1.0 / np.sqrt(sw_ra), np.nan),
        "decErr": np.where(has_err, 1.0 / np.sqrt(sw_dec), np.nan),
        "ra_dec_Cov": np.where(has_err & has_cov, cov_sum / (sw_ra * sw_dec), np.nan),
    }
    return out


def _flux_stats(g: np.ndarray, t: np.ndarray, flux: np.ndarray, err: np.ndarray, n_groups: int
                ) -> dict[str, np.ndarray]:
    finite = np.isfinite(flux)
    gf, f = g[finite], flux[finite]
    ndata = gsum(gf, None, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = gsum(gf, f, n_groups) / ndata
        sigma = np.sqrt(gsum(gf, (f - mean[gf]) ** 2, n_groups) / (ndata - 1))
    sigma[ndata < 2] = np.nan
    wmean, wmean_err = weighted_mean(g, flux, err, n_groups)
    err_ok = np.isfinite(err)
    with np.errstate(invalid="ignore", divide="ignore"):
        err_mean = gsum(g[err_ok], err[err_ok], n_groups) / gsum(g[err_ok], None, n_groups)
    order, gs, same_next = sorted_runs(gf, t[finite])
    fs, ts = f[order], t[finite][order]
    pair = same_next[:-1] & (np.diff(ts) > 0) if len(fs) > 1 else np.zeros(0, bool)
    slope = np.full(n_groups, np.nan)
    if pair.any():
        slopes = np.diff(fs)[pair] / np.diff(ts)[pair]
        slope = gmax(gs[:-1][pair], slopes, n_groups)
    return {"psfFluxMean": wmean, "psfFluxMeanErr": wmean_err, "psfFluxSigma": sigma,
            "psfFluxNdata": ndata.astype(np.int64), "psfFluxMin": gmin(gf, f, n_groups),
            "psfFluxMax": gmax(gf, f, n_groups), "psfFluxMaxSlope": slope,
            "psfFluxErrMean": err_mean}


def dia_object_summaries(object_ids: np.ndarray, sources: Mapping[str, np.ndarray],
                         forced: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The DiaObject summary columns (:data:`SUMMARY_COLUMNS`) of each object.

    Parameters
    ----------
    object_ids : (n_obj,) int64, sorted and unique
        The objects to summarise; each must have at least one source.
    sources : mapping of column → array
        Their DiaSources (:data:`SOURCE_COLUMNS`; missing optional columns count as NULL).
        NULL floats are NaN; ``band`` is an object array of letters.
    forced : mapping of column → array, optional
        Their DiaForcedSources (:data:`FORCED_COLUMNS`).

    Returns
    -------
    dict of column → (n_obj,) array
        Floats with NaN for NULL; ``*Ndata`` and ``nDiaSources`` int64.

    Raises
    ------
    ValueError
        A source of an object not in ``object_ids``, or an object without sources (the
        message names the id).
    """
    object_ids = np.asarray(object_ids, np.int64)
    n_obj = len(object_ids)
    src_ids = np.asarray(sources["diaObjectId"], np.int64)
    obj = np.searchsorted(object_ids, src_ids)
    obj = np.clip(obj, 0, max(n_obj - 1, 0))
    if n_obj == 0 or np.any(object_ids[obj] != src_ids):
        bad = src_ids[object_ids[obj] != src_ids] if n_obj else src_ids
        if len(bad):
            raise ValueError(f"DiaSource of diaObjectId {int(bad[0])} is not among the objects "
                             "to summarise")
    count = gsum(obj, None, n_obj)
    if np.any(count == 0):
        raise ValueError(f"diaObjectId {int(object_ids[np.argmax(count == 0)])} has no DiaSource")
    n = len(src_ids)
    t = _column(sources, "midpointMjdTai", n)
    out: dict[str, np.ndarray] = _positions(obj, sources, n_obj)
    nb = len(BANDS)
    bidx = band_index(sources.get("band", np.full(n, None, object)))
    in_band = bidx >= 0
    g = obj[in_band] * nb + bidx[in_band]
    psf = _flux_stats(g, t[in_band], _column(sources, "psfFlux", n)[in_band],
                      _column(sources, "psfFluxErr", n)[in_band], n_obj * nb)
    sci_mean, sci_err = weighted_mean(g, _column(sources, "scienceFlux", n)[in_band],
                                      _column(sources, "scienceFluxErr", n)[in_band], n_obj * nb)
    fp_mean, fp_err = np.full(n_obj * nb, np.nan), np.full(n_obj * nb, np.nan)
    if forced is not None and len(forced["diaObjectId"]):
        f_ids = np.asarray(forced["diaObjectId"], np.int64)
        f_obj = np.searchsorted(object_ids, f_ids).clip(0, n_obj - 1)
        f_b = band_index(forced["band"])
        keep = (object_ids[f_obj] == f_ids) & (f_b >= 0)
        nf = len(f_ids)
        fp_mean, fp_err = weighted_mean(f_obj[keep] * nb + f_b[keep],
                                        _column(forced, "psfFlux", nf)[keep],
                                        _column(forced, "psfFluxErr", nf)[keep], n_obj * nb)
    per_band = dict(psf, scienceFluxMean=sci_mean, scienceFluxMeanErr=sci_err,
                    fpFluxMean=fp_mean, fpFluxMeanErr=fp_err)
    for k, b in enumerate(BANDS):
        for name in _PER_BAND:
            out[f"{b}_{name}"] = per_band[name][k::nb]
    out["firstDiaSourceMjdTai"] = gmin(obj, t, n_obj)
    out["lastDiaSourceMjdTai"] = gmax(obj, t, n_obj)
    out["nDiaSources"] = count.astype(np.int64)
    return {name: out[name] for name in SUMMARY_COLUMNS}
