"""Daily Solar System products: SSObject rows from the SSSources of each object.

:func:`daily_products` takes *every* SSSource of the objects to update (their whole LSST
history, not just the last night) and the matching DiaSources (for times, bands and
fluxes), and returns one SSObject row per object with Rubin's columns
(``apdb_schema()["SSObject"]``):

- ``nObs``, ``arc`` (last − first ``midpointMjdTai``, days), ``firstObservationMjdTai``;
- ``extendednessMin``/``Median``/``Max`` from the DiaSources' ``extendedness``;
- per band b in ugrizy: ``b_nObs``, ``b_H``, ``b_HErr``, ``b_G12``, ``b_G12Err``,
  ``b_H_b_G12_Cov``, ``b_nObsUsed``, ``b_Chi2``, ``b_phaseAngleMin``, ``b_phaseAngleMax``,
  ``b_slope_fit_failed`` from an H–G12 fit (:func:`~.photometry.fit_hg12`) to the reduced
  magnitudes m − 5 log10(r Δ), with m = 31.4 − 2.5 log10(psfFlux/nJy) (AB) and r, Δ,
  α from the SSSource (``helioRange``, ``topoRange``, ``phaseAngle``);
- ``tisserand_J`` when the orbits are given: T_J = a_J/a + 2 cos i √((a/a_J)(1 − e²)), with
  a_J = 5.2026 au and i to the ecliptic (the usual approximation of Jupiter's plane).

Points with a non-positive flux or a missing error count in ``b_nObs`` but not in
``b_nObsUsed``. The MOID columns are left NULL.

On an APDB, ``jointcal-ap sso daily APDB_URL --since MJD --until MJD`` is the thin adapter:
it reads the SSSources (and DiaSources) of the objects seen in that range with all their
history, calls this, and replaces their SSObject rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.sso._tables import as_table, float_column, require_columns
from jointcal_ap.sso.errors import SsoError
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.sso.photometry import fit_hg12

__all__ = ["BANDS", "daily_products", "reduced_magnitudes", "tisserand_jupiter"]

#: The bands of Rubin's SSObject table.
BANDS = ("u", "g", "r", "i", "z", "y")
_A_JUPITER = 5.2026
_AB_ZERO_NJY = 31.4


def tisserand_jupiter(q: Any, e: Any, inc_deg: Any) -> np.ndarray:
    """The Tisserand parameter with respect to Jupiter (NaN for e ≥ 1).

    >>> round(float(tisserand_jupiter(2.5, 0.1, 5.0)[0]), 3)
    3.321
    """
    q, e, inc = (np.atleast_1d(np.asarray(x, float)) for x in (q, e, inc_deg))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = q / (1.0 - e)
        t = _A_JUPITER / a + 2.0 * np.cos(np.radians(inc)) * np.sqrt(a / _A_JUPITER * (1.0 - e * e))
    return np.where(e < 1.0, t, np.nan)


def reduced_magnitudes(psf_flux: Any, psf_flux_err: Any, helio_range: Any, topo_range: Any
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Reduced magnitudes m − 5 log10(r Δ) and their errors from fluxes in nJy (NaN where
    the flux is not positive)."""
    flux = np.asarray(psf_flux, float)
    err = np.asarray(psf_flux_err, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = flux > 0
        mag = np.where(good, _AB_ZERO_NJY - 2.5 * np.log10(np.where(good, flux, 1.0)), np.nan)
        mag_err = np.where(good, 2.5 / np.log(10.0) * err / np.where(good, flux, 1.0), np.nan)
        reduced = mag - 5.0 * np.log10(np.asarray(helio_range, float) * np.asarray(topo_range, float))
    return reduced, mag_err


def daily_products(ss_sources: Any, dia_sources: Any, *, orbits: Orbits | None = None,
                   variant: str = "penttila2016", g12_fiducial: float = 0.62,
                   min_points: int = 3, min_phase_span_deg: float = 2.0) -> Any:
    """SSObject rows from SSSources and their DiaSources.

    Parameters
    ----------
    ss_sources : pyarrow.Table
        SSSource rows: ``diaSourceId``, ``ssObjectId``, ``helioRange``, ``topoRange``,
        ``phaseAngle`` (``designation`` used when present).
    dia_sources : pyarrow.Table
        DiaSource rows with at least ``diaSourceId``, ``midpointMjdTai``, ``band``,
        ``psfFlux``, ``psfFluxErr`` (``extendedness`` used when present); extra rows are
        ignored.
    orbits : Orbits, optional
        For ``tisserand_J`` (matched by ``ssObjectId``).
    variant, g12_fiducial, min_points, min_phase_span_deg
        See :func:`~.photometry.fit_hg12`.

    Returns
    -------
    pyarrow.Table
        Rubin's SSObject columns, one row per ``ssObjectId``, sorted by it.

    Raises
    ------
    SsoError
        Missing columns, or an SSSource whose ``diaSourceId`` has no DiaSource (named).

    Examples
    --------
    >>> import numpy as np
    >>> from jointcal_ap.sso.photometry import hg12_magnitude
    >>> alpha = np.linspace(3.0, 20.0, 8)
    >>> mag = hg12_magnitude(15.0, 0.5, 2.0, 1.2, np.radians(alpha))
    >>> ss = {"diaSourceId": np.arange(8), "ssObjectId": np.full(8, 7), "helioRange": np.full(8, 2.0),
    ...       "topoRange": np.full(8, 1.2), "phaseAngle": alpha}
    >>> dia = {"diaSourceId": np.arange(8), "midpointMjdTai": 60000.0 + np.arange(8) * 5.0,
    ...        "band": ["r"] * 8, "psfFlux": 10 ** (-0.4 * (mag - 31.4)), "psfFluxErr": np.full(8, 1.0)}
    >>> row = daily_products(ss, dia).to_pylist()[0]
    >>> row["nObs"], row["arc"], round(row["r_H"], 4), round(row["r_G12"], 4), row["g_nObs"]
    (8, 35.0, 15.0, 0.5, 0)
    """
    import pyarrow as pa

    from jointcal_ap.schemas import apdb_schema

    ss = as_table(ss_sources, "ss_sources")
    dia = as_table(dia_sources, "dia_sources")
    require_columns(ss, "ss_sources", ("diaSourceId", "ssObjectId", "helioRange", "topoRange",
                                "phaseAngle"))
    require_columns(dia, "dia_sources", ("diaSourceId", "midpointMjdTai", "band", "psfFlux",
                                  "psfFluxErr"))
    ss_dia = np.asarray(ss.column("diaSourceId").to_numpy(zero_copy_only=False), np.int64)
    dia_ids = np.asarray(dia.column("diaSourceId").to_numpy(zero_copy_only=False), np.int64)
    order = np.argsort(dia_ids, kind="stable")
    pos = np.searchsorted(dia_ids[order], ss_dia)
    pos = np.minimum(pos, max(dia_ids.size - 1, 0))
    found = dia_ids.size > 0 and np.all(dia_ids[order][pos] == ss_dia) if ss_dia.size else True
    if not found:
        bad = ss_dia[dia_ids[order][pos] != ss_dia] if dia_ids.size else ss_dia
        raise SsoError(f"ss_sources: diaSourceId {int(bad[0])} has no row in dia_sources "
                       f"({bad.size} such); expected the DiaSources of every SSSource")
    row = order[pos]
    obj_ids = np.asarray(ss.column("ssObjectId").to_numpy(zero_copy_only=False), np.int64)
    uniq, obj = np.unique(obj_ids, return_inverse=True)
    n_obj = uniq.size
    t = float_column(dia, "midpointMjdTai", np.nan)[row]
    band = np.asarray(dia.column("band").cast(pa.string()).fill_null("").to_pylist(), dtype=object)[row]
    reduced, mag_err = reduced_magnitudes(float_column(dia, "psfFlux", np.nan)[row],
                                          float_column(dia, "psfFluxErr", np.nan)[row],
                                          float_column(ss, "helioRange", np.nan), float_column(ss, "topoRange", np.nan))
    alpha = float_column(ss, "phaseAngle", np.nan)
    out: dict[str, Any] = {"ssObjectId": uniq}
    n_obs = np.bincount(obj, minlength=n_obj)
    first = np.full(n_obj, np.inf)
    last = np.full(n_obj, -np.inf)
    np.minimum.at(first, obj, t)
    np.maximum.at(last, obj, t)
    out["nObs"] = n_obs
    out["arc"] = last - first
    out["firstObservationMjdTai"] = first
    if "designation" in ss.column_names:
        names = np.asarray(ss.column("designation").cast(pa.string()).to_pylist(), dtype=object)
        designation = np.empty(n_obj, dtype=object)
        designation[obj] = names
        out["designation"] = pa.array(list(designation), pa.string())
    if "extendedness" in dia.column_names:
        ext = float_column(dia, "extendedness", np.nan)[row]
        out.update(_group_stats(obj, ext, n_obj))
    for b in BANDS:
        sel = band == b
        fit = fit_hg12(obj[sel], alpha[sel], reduced[sel], mag_err[sel], n_groups=n_obj,
                       variant=variant, g12_fiducial=g12_fiducial, min_points=min_points,
                       min_phase_span_deg=min_phase_span_deg)
        has = fit.n_obs > 0
        out[f"{b}_nObs"] = fit.n_obs
        out[f"{b}_nObsUsed"] = fit.n_used
        for col, values in ((f"{b}_H", fit.h), (f"{b}_HErr", fit.h_err), (f"{b}_G12", fit.g12),
                            (f"{b}_G12Err", fit.g12_err), (f"{b}_H_{b}_G12_Cov", fit.cov),
                            (f"{b}_Chi2", fit.chi2), (f"{b}_phaseAngleMin", fit.phase_min_deg),
                            (f"{b}_phaseAngleMax", fit.phase_max_deg)):
            out[col] = pa.array(values, pa.float64(), from_pandas=True)
        out[f"{b}_slope_fit_failed"] = pa.array(fit.slope_fit_failed, pa.bool_(), mask=~has)
    if orbits is not None:
        lookup = {int(i): k for k, i in enumerate(orbits.ss_object_id)}
        k = np.array([lookup.get(int(i), -1) for i in uniq])
        tj = np.full(n_obj, np.nan)
        known = k >= 0
        tj[known] = tisserand_jupiter(orbits.q[k[known]], orbits.e[k[known]], orbits.inc[k[known]])
        out["tisserand_J"] = pa.array(tj, pa.float64(), from_pandas=True)
    return apdb_schema()["SSObject"].conform(out, where="daily_products")


def _group_stats(group: np.ndarray, values: np.ndarray, n: int) -> dict[str, Any]:
    import pyarrow as pa

    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    med = np.full(n, np.nan)
    good = np.isfinite(values)
    if good.any():
        g, v = group[good], values[good]
        np.fmin.at(lo, g, v)
        np.fmax.at(hi, g, v)
        order = np.lexsort((v, g))
        g, v = g[order], v[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], g.size]
        med[g[starts]] = [float(np.median(v[s:e])) for s, e in zip(starts, ends, strict=True)]
    return {name: pa.array(arr, pa.float64(), from_pandas=True)
            for name, arr in (("extendednessMin", lo), ("extendednessMax", hi),
                              ("extendednessMedian", med))}
