"""Alert-production metrics from injected sources matched to DiaSources.

:func:`ap_metrics` takes the matched truth (:func:`~jointcal_ap.metrics.match.match_to_truth`,
one detector or many concatenated) and returns:

- **completeness** of point sources (``variable`` and ``transient``) against the magnitude
  of their difference flux and against their true SNR (with the predicted detection
  probability, :func:`~jointcal_ap.metrics.truth.detection_probability`), and of trails
  against their length;
- the **50 % completeness magnitude** ``m50``: a maximum-likelihood fit of
  ``c(m) = c_max · Φ((m50 - m) / w)`` to the detected/missed point sources;
- **purity**: the fraction of DiaSources matched to an injected source whose flux changed
  (a detection of a ``static`` injected source is a subtraction failure and counts as
  impure, as do detections of nothing injected);
- the **flux bias** ``median((psfFlux - diff_flux) / |diff_flux|)`` and the **pulls**
  ``(psfFlux - diff_flux) / psfFluxErr`` (mean, standard deviation, robust 1.4826·MAD) of
  matched point sources with ``snr_true ≥ pull_min_snr`` (default 10; all of them when the
  truth has no ``snr_true``): near the threshold, detection selects the sources that noise
  brightened, so their pulls are biased up (Eddington bias) whatever the photometry;
- the **astrometric offset** of matched point sources: median distance (pixels, and mas
  when the truth has ``ra``, ``dec``), the mean offsets in α cos δ and δ, and the standard
  deviation of the offsets in units of their stated errors.

>>> import numpy as np
>>> c = completeness_curve("mag", np.array([20.1, 20.2, 21.1, 21.3]),
...                        np.array([True, True, True, False]), np.array([20.0, 21.0, 22.0]))
>>> c.n.tolist(), c.completeness.tolist()
([2, 2], [1.0, 0.5])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import ndtr

from jointcal_ap.metrics.truth import detection_probability

__all__ = ["POINT_KINDS", "ApMetrics", "Curve", "ap_metrics", "completeness_curve",
           "fit_m50", "robust_std"]

#: Injected kinds that are point sources in the difference image.
POINT_KINDS = ("variable", "transient")
_MAS_PER_DEG = 3.6e6


@dataclass(frozen=True)
class Curve:
    """A binned completeness curve.

    Attributes
    ----------
    name : str
        The axis: ``"mag"``, ``"snr"`` or ``"trail_length"`` (pixels).
    lo, hi : ndarray
        Bin edges.
    n, n_detected : ndarray of int
    completeness, error : ndarray
        Fraction detected and its binomial error (NaN for empty bins).
    predicted : ndarray
        Mean predicted detection probability in the bin (NaN when there is none).
    """

    name: str
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    n_detected: np.ndarray
    completeness: np.ndarray
    error: np.ndarray
    predicted: np.ndarray

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """One dict per bin (for tables), with ``extra`` keys first."""
        return [{**extra, "curve": self.name, "lo": float(self.lo[i]), "hi": float(self.hi[i]),
                 "n": int(self.n[i]), "n_detected": int(self.n_detected[i]),
                 "completeness": float(self.completeness[i]), "error": float(self.error[i]),
                 "predicted": float(self.predicted[i])} for i in range(len(self.lo))]


def completeness_curve(name: str, values: np.ndarray, detected: np.ndarray, edges: np.ndarray,
                       predicted: np.ndarray | None = None) -> Curve:
    """Completeness of ``detected`` in bins of ``values`` (edges; NaN values are left out)."""
    values = np.asarray(values, float)
    detected = np.asarray(detected, bool)
    edges = np.asarray(edges, float)
    which = np.searchsorted(edges, values, side="right") - 1
    ok = np.isfinite(values) & (which >= 0) & (which < len(edges) - 1)
    nb = len(edges) - 1
    n = np.bincount(which[ok], minlength=nb)
    n_det = np.bincount(which[ok], weights=detected[ok], minlength=nb).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = np.where(n > 0, n_det / np.maximum(n, 1), np.nan)
        err = np.where(n > 0, np.sqrt(comp * (1 - comp) / np.maximum(n, 1)), np.nan)
        if predicted is None:
            pred = np.full(nb, np.nan)
        else:
            p = np.asarray(predicted, float)
            pred = np.bincount(which[ok], weights=p[ok], minlength=nb) / n
    return Curve(name, edges[:-1], edges[1:], n, n_det, comp, err, pred)


def fit_m50(mag: np.ndarray, detected: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood ``(m50, w, c_max)`` of ``c(m) = c_max Φ((m50 - m)/w)``.

    NaNs when there are fewer than 10 sources or no transition to fit.
    """
    mag = np.asarray(mag, float)
    detected = np.asarray(detected, bool)
    ok = np.isfinite(mag)
    mag, detected = mag[ok], detected[ok]
    if len(mag) < 10 or detected.all() or not detected.any():
        return math.nan, math.nan, math.nan
    order = np.argsort(mag)
    running = np.convolve(detected[order].astype(float), np.ones(9) / 9, mode="same")
    cmax0 = float(np.clip(np.max(running), 0.55, 0.999))
    below = np.nonzero(running < 0.5 * cmax0)[0]
    m0 = float(mag[order][below[0]]) if len(below) else float(np.median(mag))

    def nll(p: np.ndarray) -> float:
        m50, logw, logit = p
        c = ndtr((m50 - mag) / math.exp(logw)) / (1.0 + math.exp(-logit))
        c = np.clip(c, 1e-12, 1 - 1e-12)
        return -float(np.sum(np.where(detected, np.log(c), np.log1p(-c))))

    start = np.array([m0, math.log(0.2), math.log(cmax0 / (1 - cmax0))])
    res = minimize(nll, start, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000})
    m50, logw, logit = res.x
    return float(m50), float(math.exp(logw)), float(1.0 / (1.0 + math.exp(-logit)))


def robust_std(x: np.ndarray) -> float:
    """1.4826 × the median absolute deviation (NaN for no data)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else math.nan


@dataclass(frozen=True)
class ApMetrics:
    """What :func:`ap_metrics` returns.

    Attributes
    ----------
    summary : dict
        Scalar metrics (see the module's text; keys are documented in ``docs/metrics.md``).
    curves : list of Curve
        ``mag``, ``snr`` (when the truth has ``snr_true``) and ``trail_length`` curves.
    pulls : ndarray
        ``(psfFlux - diff_flux) / psfFluxErr`` of the matched point sources with
        ``snr_true ≥ pull_min_snr``.
    """

    summary: dict[str, Any]
    curves: list[Curve] = field(default_factory=list)
    pulls: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _col(table: Any, name: str, dtype: Any = float) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    col = table[name]
    if np.dtype(dtype).kind == "f":
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)
    return np.asarray(col.fill_null(False if dtype is bool else 0).to_numpy(zero_copy_only=False),
                      dtype=dtype)


def _default_edges(values: np.ndarray, step: float) -> np.ndarray:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return np.array([0.0, step])
    lo, hi = math.floor(v.min() / step) * step, math.ceil(v.max() / step) * step
    return np.arange(lo, hi + step * 1.001, step) if hi > lo else np.array([lo, lo + step])


def ap_metrics(matched: Any, n_dia_sources: int, *, threshold: float = 5.0,
               pull_min_snr: float = 10.0, mag_edges: np.ndarray | None = None,
               snr_edges: np.ndarray | None = None,
               trail_edges: np.ndarray | None = None) -> ApMetrics:
    """Metrics of one detector's (or a whole run's) matched truth.

    Parameters
    ----------
    matched : pyarrow.Table
        Truth rows with the match columns (``matched``, ``dia_psfFlux`` ...).
    n_dia_sources : int
        DiaSources on the image(s), for purity.
    threshold : float
        Detection threshold (σ) for the predicted completeness against SNR.
    pull_min_snr : float
        Flux pulls and bias use matched point sources of at least this true SNR.
    mag_edges, snr_edges, trail_edges : arrays, optional
        Bin edges (defaults: 0.25 mag; SNR 0–10 by 0.5 then 12, 15, 20, 30, 50, 100;
        trail lengths by 10 px).
    """
    kind = np.asarray(matched["kind"].to_pylist(), dtype=object) if "kind" in matched.column_names \
        else np.full(matched.num_rows, "transient", object)
    injected = _col(matched, "injected", bool)
    found = _col(matched, "matched", bool)
    diff_flux = _col(matched, "diff_flux")
    diff_mag = _col(matched, "diff_mag")
    point = injected & np.isin(kind, POINT_KINDS) & (diff_flux != 0)
    trail = injected & (kind == "trail") & (diff_flux != 0)
    static = injected & (kind == "static")
    curves = []
    summary: dict[str, Any] = {
        "n_injected": int(point.sum() + trail.sum()),
        "n_point": int(point.sum()), "n_point_detected": int((point & found).sum()),
        "n_trail": int(trail.sum()), "n_trail_detected": int((trail & found).sum()),
        "n_static": int(static.sum()), "n_static_detected": int((static & found).sum()),
        "n_dia_sources": int(n_dia_sources),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        summary["completeness_point"] = summary["n_point_detected"] / summary["n_point"] \
            if summary["n_point"] else math.nan
        summary["completeness_trail"] = summary["n_trail_detected"] / summary["n_trail"] \
            if summary["n_trail"] else math.nan
    good = int(((point | trail) & found).sum())
    summary["purity"] = good / n_dia_sources if n_dia_sources else math.nan

    mags = diff_mag[point]
    curves.append(completeness_curve("mag", mags, found[point],
                                     mag_edges if mag_edges is not None else _default_edges(mags, 0.25)))
    m50, width, cmax = fit_m50(mags, found[point])
    summary.update({"m50": m50, "m50_width": width, "completeness_max": cmax})
    snr = _col(matched, "snr_true")
    if snr is not None:
        sigma = _col(matched, "psf_sigma_px")
        pred = detection_probability(snr[point], threshold,
                                     None if sigma is None else sigma[point])
        edges = snr_edges if snr_edges is not None else np.r_[np.arange(0.0, 10.01, 0.5),
                                                              12, 15, 20, 30, 50, 100]
        curves.append(completeness_curve("snr", snr[point], found[point], edges, pred))
    length = _col(matched, "trail_length")
    if length is not None and trail.any():
        curves.append(completeness_curve(
            "trail_length", length[trail], found[trail],
            trail_edges if trail_edges is not None else _default_edges(length[trail], 10.0)))

    # Flux: pulls and bias of matched point sources, clear of the threshold's selection.
    use = point & found
    flux_use = use if snr is None else use & (np.nan_to_num(snr) >= pull_min_snr)
    summary["pull_min_snr"] = float(pull_min_snr) if snr is not None else math.nan
    psf_flux = _col(matched, "dia_psfFlux")
    psf_err = _col(matched, "dia_psfFluxErr")
    pulls = np.zeros(0)
    if psf_flux is not None and psf_err is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            pulls = ((psf_flux - diff_flux) / psf_err)[flux_use]
            rel = ((psf_flux - diff_flux) / np.abs(diff_flux))[flux_use]
        pulls = pulls[np.isfinite(pulls)]
        rel = rel[np.isfinite(rel)]
        summary.update({
            "n_pull": len(pulls),
            "pull_mean": float(np.mean(pulls)) if len(pulls) else math.nan,
            "pull_std": float(np.std(pulls)) if len(pulls) > 1 else math.nan,
            "pull_robust_std": robust_std(pulls),
            "flux_bias": float(np.median(rel)) if len(rel) else math.nan,
        })
    summary.update(_astrometry(matched, use))
    return ApMetrics(summary, curves, pulls)


def _astrometry(matched: Any, use: np.ndarray) -> dict[str, float]:
    out = {"offset_median_px": math.nan, "offset_median_mas": math.nan,
           "dra_mean_mas": math.nan, "ddec_mean_mas": math.nan, "offset_pull_std": math.nan}
    dist = _col(matched, "match_distance_px")
    if dist is not None and use.any():
        out["offset_median_px"] = float(np.nanmedian(dist[use]))
    ra, dec = _col(matched, "ra"), _col(matched, "dec")
    dra_, ddec_ = _col(matched, "dia_ra"), _col(matched, "dia_dec")
    if ra is None or dec is None or dra_ is None or ddec_ is None:
        return out
    ok = use & np.isfinite(ra) & np.isfinite(dec) & np.isfinite(dra_) & np.isfinite(ddec_)
    if not ok.any():
        return out
    dra = ((dra_ - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec)) * _MAS_PER_DEG
    ddec = (ddec_ - dec) * _MAS_PER_DEG
    out["offset_median_mas"] = float(np.median(np.hypot(dra, ddec)[ok]))
    out["dra_mean_mas"] = float(np.mean(dra[ok]))
    out["ddec_mean_mas"] = float(np.mean(ddec[ok]))
    ra_err, dec_err = _col(matched, "dia_raErr"), _col(matched, "dia_decErr")
    if ra_err is not None and dec_err is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.r_[dra[ok] / (ra_err[ok] * _MAS_PER_DEG), ddec[ok] / (dec_err[ok] * _MAS_PER_DEG)]
        z = z[np.isfinite(z)]
        out["offset_pull_std"] = float(np.std(z)) if len(z) > 1 else math.nan
    return out
