"""Lightcurve features per DiaObject and band, vectorised over objects.

Computed from the DiaSources' difference-image ``psfFlux`` (nJy) and ``psfFluxErr`` in each
band, over the object's whole stored history; the APDB recomputes them in the transaction
that gives an object a new source and keeps them in the ``DiaObjectFeatures`` table (one row
per object and band). With ``n`` finite fluxes ``f_i`` with errors ``σ_i`` at times ``t_i``
(sorted), weights ``w_i = 1/σ_i²`` and weighted mean ``μ``:

=========================  ==================================================================
``nData``                  ``n``
``weightedMean(Err)``      ``μ = Σ w f / Σ w`` and ``1/sqrt(Σ w)`` (nJy)
``chi2``                   reduced χ² about ``μ``: ``Σ w (f-μ)² / (n-1)`` (n ≥ 2)
``skew``                   sample skewness of ``f``, bias-corrected (``scipy.stats.skew(bias=
                           False)``; n ≥ 3)
``stetsonJ``               Stetson (1996) J for single observations:
                           ``δ_i = sqrt(n/(n-1)) (f_i-μ)/σ_i``, ``P_i = δ_i² - 1``,
                           ``J = Σ sgn(P_i) sqrt|P_i| / n`` (n ≥ 2)
``linearSlope(Err)``       weighted least-squares slope of ``f`` against ``t`` (nJy/d)
``percentileRange_A_B``    ``P_B - P_A`` of ``f`` (linear interpolation, as NumPy's default)
                           for (5, 95), (10, 90), (25, 75)
``vonNeumannRatio``        ``Σ (f_{i+1}-f_i)² / (n-1)`` over the variance of ``f`` (n ≥ 3)
``lombScarglePeriod``      period (d) of the highest peak of the generalised Lomb–Scargle
``lombScarglePower``       periodogram (floating mean, ``standard`` normalisation), and that
                           power, for series of at least ``min_points_periodogram`` points
``firstMjdTai/lastMjdTai`` first and last time
=========================  ==================================================================

The periodogram is evaluated on one grid for all the series of a call — uniform in frequency
from ``1/baseline`` (of the longest series) to ``1/min_period_days``, ``samples_per_peak``
points per peak width, at most ``max_frequencies`` — and its highest peak is refined on a finer local grid one step either side (a peak
narrower than the coarse step can still be missed: the feature is a screening value, not a
period search). On any grid the power equals ``astropy.timeseries.LombScargle(t, f, σ).power(freq)``
(``fit_mean=True``, ``center_data=True``, ``normalization="standard"``) to rounding, which the
tests check.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> t = np.sort(rng.uniform(0, 60, 40))
>>> f = 1000 + 200 * np.sin(2 * np.pi * t / 3.7) + rng.normal(0, 20, 40)
>>> table = lightcurve_features({"diaObjectId": np.full(40, 5), "band": np.full(40, "r", object),
...                              "midpointMjdTai": t, "psfFlux": f, "psfFluxErr": np.full(40, 20.0)})
>>> round(float(table["lombScarglePeriod"][0]), 1), int(table["nData"][0])
(3.7, 40)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from jointcal_ap.apdb._grouping import BANDS, band_index, gsum, sorted_runs

#: Points of the local grid that refines the highest coarse peak.
_REFINE = 33

__all__ = ["FEATURE_COLUMNS", "FeatureOptions", "lightcurve_features", "lomb_scargle_power"]

#: (name, kind, unit, description) of each feature column (after ``diaObjectId``, ``band``).
FEATURE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("nData", "int", "", "Number of finite psfFlux values."),
    ("weightedMean", "double", "nJy", "Inverse-variance weighted mean psfFlux."),
    ("weightedMeanErr", "double", "nJy", "Standard error of weightedMean."),
    ("chi2", "double", "", "Reduced chi-square of psfFlux about weightedMean."),
    ("skew", "double", "", "Bias-corrected sample skewness of psfFlux."),
    ("stetsonJ", "double", "", "Stetson J variability index (single observations)."),
    ("linearSlope", "double", "nJy/d", "Weighted least-squares slope of psfFlux in time."),
    ("linearSlopeErr", "double", "nJy/d", "Standard error of linearSlope."),
    ("percentileRange_5_95", "double", "nJy", "95th minus 5th percentile of psfFlux."),
    ("percentileRange_10_90", "double", "nJy", "90th minus 10th percentile of psfFlux."),
    ("percentileRange_25_75", "double", "nJy", "75th minus 25th percentile of psfFlux."),
    ("vonNeumannRatio", "double", "", "Mean square successive difference over the variance."),
    ("lombScarglePeriod", "double", "d", "Period of the highest Lomb-Scargle peak."),
    ("lombScarglePower", "double", "", "Lomb-Scargle power (standard normalisation) there."),
    ("firstMjdTai", "double", "d", "Time of the first source in the band (MJD TAI)."),
    ("lastMjdTai", "double", "d", "Time of the last source in the band (MJD TAI)."),
)


@dataclass(frozen=True)
class FeatureOptions:
    """Options of :func:`lightcurve_features`.

    Attributes
    ----------
    min_points_periodogram : int
        Series with fewer finite points get NULL period and power.
    samples_per_peak : float
        Frequency grid step: ``1 / (samples_per_peak × baseline)``, with the baseline of the
        longest series in the call (a peak is ``~1/baseline`` wide).
    max_frequencies : int
        Cap on the grid size (longer baselines get a coarser grid; the highest peak is
        refined locally either way).
    min_period_days : float
        Shortest period searched (the grid's highest frequency is its inverse).
    max_elements : int
        Bound on the temporary (series × frequencies × points) arrays; larger batches are
        processed in chunks.
    """

    min_points_periodogram: int = 10
    samples_per_peak: float = 5.0
    max_frequencies: int = 5000
    min_period_days: float = 0.1
    max_elements: int = 8_000_000

    def __post_init__(self) -> None:
        if self.min_points_periodogram < 3 or self.max_frequencies < 2 \
                or self.samples_per_peak <= 0 or self.min_period_days <= 0:
            raise ValueError(f"FeatureOptions: need min_points_periodogram >= 3, "
                             f"max_frequencies >= 2 and positive samples_per_peak and "
                             f"min_period_days; got {self}")

    def grid(self, baseline: float) -> np.ndarray:
        """The coarse frequency grid (cycles/day) for series spanning ``baseline`` days."""
        f_lo, f_hi = 1.0 / baseline, 1.0 / self.min_period_days
        n = int(np.clip(np.ceil(self.samples_per_peak * baseline * (f_hi - f_lo)), 16,
                        self.max_frequencies))
        return np.linspace(f_lo, max(f_hi, 2 * f_lo), n)


def lomb_scargle_power(t: np.ndarray, y: np.ndarray, dy: np.ndarray, frequency: np.ndarray
                       ) -> np.ndarray:
    """Generalised Lomb–Scargle power of many series on one frequency grid.

    Parameters
    ----------
    t, y, dy : (n_series, n_points) arrays
        Times, values and errors; padding points carry ``dy = inf`` (zero weight).
    frequency : (n_freq,) or (n_series, n_freq) array
        Cycles per unit of ``t``: one grid for all series, or one per series.

    Returns
    -------
    (n_series, n_freq) array
        Power in ``standard`` normalisation with a floating mean (Zechmeister & Kürster
        2009), as astropy's ``LombScargle``.
    """
    w = 1.0 / dy ** 2
    w = w / w.sum(axis=1, keepdims=True)
    y = y - (w * y).sum(axis=1, keepdims=True)
    t = t - (w * t).sum(axis=1, keepdims=True)
    yy = (w * y * y).sum(axis=1)[:, None]
    frequency = np.asarray(frequency, float)
    grid = frequency[None, :, None] if frequency.ndim == 1 else frequency[:, :, None]
    phase = 2.0 * np.pi * grid * t[:, None, :]
    cos, sin = np.cos(phase), np.sin(phase)
    wb = w[:, None, :]
    c, s = (wb * cos).sum(-1), (wb * sin).sum(-1)
    yc = (wb * y[:, None, :] * cos).sum(-1)
    ys = (wb * y[:, None, :] * sin).sum(-1)
    cc = (wb * cos * cos).sum(-1) - c * c
    ss = (wb * sin * sin).sum(-1) - s * s
    cs = (wb * cos * sin).sum(-1) - c * s
    d = cc * ss - cs * cs
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ss * yc * yc + cc * ys * ys - 2.0 * cs * yc * ys) / (yy * d)


def _percentile(sorted_values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float
                ) -> np.ndarray:
    pos = q / 100.0 * (counts - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts - 1)
    frac = pos - lo
    a, b = sorted_values[starts + lo], sorted_values[starts + hi]
    return a + frac * (b - a)


def _periodogram(groups: np.ndarray, t: np.ndarray, f: np.ndarray, err: np.ndarray,
                 counts: np.ndarray, starts: np.ndarray, options: FeatureOptions
                 ) -> tuple[np.ndarray, np.ndarray]:
    n_groups = len(counts)
    period, power = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    chosen = np.nonzero(counts >= options.min_points_periodogram)[0]
    if len(chosen) == 0:
        return period, power
    baseline = float((t[starts[chosen] + counts[chosen] - 1] - t[starts[chosen]]).max())
    if baseline <= 0:
        return period, power
    freq = options.grid(baseline)
    step = freq[1] - freq[0]
    # Series of similar length share a padded block; blocks are cut to bound memory.
    chosen = chosen[np.argsort(counts[chosen], kind="stable")]
    budget = max(1, options.max_elements // len(freq))
    i = 0
    while i < len(chosen):
        # Counts grow along ``chosen``: extend the block while rows × widest row fits.
        j = i + 1
        while j < len(chosen) and (j - i + 1) * int(counts[chosen[j]]) <= budget:
            j += 1
        block = chosen[i:j]
        width = int(counts[block].max())
        idx = starts[block][:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < counts[block][:, None]
        idx = np.where(valid, idx, starts[block][:, None])
        tt, ff = t[idx], f[idx]
        ee = np.where(valid, err[idx], np.inf)
        p = lomb_scargle_power(tt, ff, ee, freq)
        p = np.where(np.isfinite(p), p, -np.inf)
        best = freq[np.argmax(p, axis=1)]
        # Refine the highest peak on a local grid one coarse step either side.
        local = best[:, None] + step * np.linspace(-1.0, 1.0, _REFINE)[None, :]
        local = np.clip(local, freq[0], freq[-1])
        p = lomb_scargle_power(tt, ff, ee, local)
        p = np.where(np.isfinite(p), p, -np.inf)
        k = np.argmax(p, axis=1)
        period[block] = 1.0 / local[np.arange(len(block)), k]
        power[block] = p[np.arange(len(block)), k]
        i += len(block)
    power[~np.isfinite(power)] = np.nan
    period[np.isnan(power)] = np.nan
    return period, power


def lightcurve_features(sources: Mapping[str, np.ndarray], options: FeatureOptions | None = None
                        ) -> dict[str, np.ndarray]:
    """Features of every (object, band) series in ``sources``.

    Parameters
    ----------
    sources : mapping of column → array
        DiaSources: ``diaObjectId``, ``band``, ``midpointMjdTai``, ``psfFlux``,
        ``psfFluxErr`` (NULL as NaN / None). Rows without a finite flux and a finite
        positive error, or in a band outside ``ugrizy``, are left out.
    options : FeatureOptions, optional

    Returns
    -------
    dict of column → array
        ``diaObjectId``, ``band`` and the :data:`FEATURE_COLUMNS`, one row per series,
        sorted by object then band (NaN where a feature is undefined).
    """
    options = options or FeatureOptions()
    ids = np.asarray(sources["diaObjectId"], np.int64)
    bidx = band_index(sources["band"])
    t = np.asarray(sources["midpointMjdTai"], float)
    f = np.asarray(sources["psfFlux"], float)
    err = np.asarray(sources["psfFluxErr"], float)
    keep = (bidx >= 0) & np.isfinite(f) & np.isfinite(err) & (err > 0) & np.isfinite(t)
    ids, bidx, t, f, err = ids[keep], bidx[keep], t[keep], f[keep], err[keep]
    nb = len(BANDS)
    series_key, groups = np.unique(ids * nb + bidx, return_inverse=True)
    n = len(series_key)
    out: dict[str, np.ndarray] = {"diaObjectId": series_key // nb,
                                  "band": np.array([BANDS[k] for k in series_key % nb], object)}
    if n == 0:
        for name, kind, _u, _d in FEATURE_COLUMNS:
            out[name] = np.zeros(0, np.int64 if kind == "int" else float)
        return out
    order, g, same_next = sorted_runs(groups, t)
    t, f, err = t[order], f[order], err[order]
    counts = np.bincount(g, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    w = 1.0 / err ** 2
    wsum = gsum(g, w, n)
    mu = gsum(g, w * f, n) / wsum
    resid = f - mu[g]
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = gsum(g, w * resid ** 2, n) / (counts - 1)
        mean = gsum(g, f, n) / counts
        dev = f - mean[g]
        m2 = gsum(g, dev ** 2, n) / counts
        m3 = gsum(g, dev ** 3, n) / counts
        skew = m3 / m2 ** 1.5 * np.sqrt(counts * (counts - 1.0)) / (counts - 2.0)
        delta = np.sqrt(counts[g] / (counts[g] - 1.0)) * resid / err
        p = delta ** 2 - 1.0
        stetson = gsum(g, np.sign(p) * np.sqrt(np.abs(p)), n) / counts
        t_mean = gsum(g, w * t, n) / wsum
        dt = t - t_mean[g]
        stt = gsum(g, w * dt ** 2, n)
        slope = gsum(g, w * dt * resid, n) / stt
        slope_err = 1.0 / np.sqrt(stt)
        var = gsum(g, dev ** 2, n) / (counts - 1.0)
        pair = same_next[:-1]
        msd = gsum(g[:-1][pair], np.diff(f)[pair] ** 2, n) / (counts - 1.0)
        von_neumann = msd / var
    chi2[counts < 2] = np.nan
    skew[(counts < 3) | (m2 <= 0)] = np.nan
    stetson[counts < 2] = np.nan
    bad_slope = (counts < 2) | ~(stt > 0)
    slope[bad_slope] = np.nan
    slope_err[bad_slope] = np.nan
    von_neumann[(counts < 3) | ~(var > 0)] = np.nan
    by_flux = np.lexsort((f, g))
    fs = f[by_flux]
    out.update({
        "nData": counts.astype(np.int64), "weightedMean": mu, "weightedMeanErr": 1 / np.sqrt(wsum),
        "chi2": chi2, "skew": skew, "stetsonJ": stetson, "linearSlope": slope,
        "linearSlopeErr": slope_err,
    })
    for lo, hi in ((5, 95), (10, 90), (25, 75)):
        out[f"percentileRange_{lo}_{hi}"] = (_percentile(fs, starts, counts, hi)
                                             - _percentile(fs, starts, counts, lo))
    out["vonNeumannRatio"] = von_neumann
    out["lombScarglePeriod"], out["lombScarglePower"] = _periodogram(g, t, f, err, counts, starts,
                                                                     options)
    out["firstMjdTai"] = t[starts]
    out["lastMjdTai"] = t[starts + counts - 1]
    return out
