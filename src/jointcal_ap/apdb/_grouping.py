"""Grouped reductions on flat arrays (one group per object, or per object and band), used by
the DiaObject summaries and the lightcurve features. Everything is NumPy, no Python loop
over groups."""

from __future__ import annotations

import numpy as np

#: Rubin's bands, in the order of the per-band DiaObject columns.
BANDS = "ugrizy"


def band_index(band: np.ndarray) -> np.ndarray:
    """Index of each band letter in :data:`BANDS` (-1 for anything else, NULL included)."""
    out = np.full(len(band), -1, np.int64)
    values = np.asarray(band, dtype=object)
    for k, letter in enumerate(BANDS):
        out[values == letter] = k
    return out


def gsum(groups: np.ndarray, values: np.ndarray | None, n: int) -> np.ndarray:
    """Sum of ``values`` (or the count, if None) per group ``0..n-1``."""
    return np.bincount(groups, weights=values, minlength=n).astype(float) if len(groups) \
        else np.zeros(n)


def gmin(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, groups, values)
    out[np.isinf(out)] = np.nan
    return out


def gmax(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, groups, values)
    out[np.isinf(out)] = np.nan
    return out


def weighted_mean(groups: np.ndarray, values: np.ndarray, errors: np.ndarray, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted mean and its standard error per group, over rows with a
    finite value and a finite positive error (NaN where a group has none)."""
    ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    g, w = groups[ok], 1.0 / errors[ok] ** 2
    wsum = gsum(g, w, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = gsum(g, w * values[ok], n) / wsum
        err = 1.0 / np.sqrt(wsum)
    mean[wsum == 0] = np.nan
    err[wsum == 0] = np.nan
    return mean, err


def sorted_runs(groups: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order rows by (group, key); return the order, the group of each sorted row and a mask
    of sorted rows whose successor is in the same group (consecutive pairs)."""
    order = np.lexsort((key, groups))
    g = groups[order]
    same_next = np.zeros(len(g), bool)
    if len(g) > 1:
        same_next[:-1] = g[1:] == g[:-1]
    return order, g, same_next
