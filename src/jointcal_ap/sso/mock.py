"""A mock Solar System: seeded populations of main-belt, near-Earth, trans-Neptunian objects
and near-parabolic comets, written in the ``mpc_orbits`` shape.

The populations are simple and documented, not a model of the real Solar System; they
exist to exercise the ephemerides, the association and the linker with realistic orbit
types, rates of motion and magnitudes:

=========  ===============================================  ==============  ===========
kind       elements                                         i               H
=========  ===============================================  ==============  ===========
``mba``    a ~ U(2.1, 3.3) au, e ~ Rayleigh(0.09) < 0.35    Rayleigh(7°)    12 – 22
``neo``    q ~ U(0.3, 1.3) au, e ~ U(0.05, 0.7)             Rayleigh(12°)   16 – 25
``tno``    a ~ U(39, 48) au, e ~ U(0, 0.25)                 Rayleigh(8°)    4 – 9
``comet``  q ~ U(0.5, 5) au, e ~ U(0.995, 1.005)            isotropic       8 – 14
=========  ===============================================  ==============  ===========

Inclinations are cut at 35° (mba), 60° (neo), 40° (tno). The node, the argument of
pericentre and the mean anomaly at the epoch are uniform; comets pass pericentre within a
year of the epoch. H follows dN/dH ∝ 10^(0.35 H) between the limits; G ~ N(0.15, 0.05)
clipped to [0, 0.5]. Every row has ``peri_time``; ellipses also have ``mean_anomaly`` at
``epoch_mjd`` (both MJD TT).

>>> from jointcal_ap.sso.mock import mock_orbits
>>> table = mock_orbits(1000, seed=3)
>>> table.num_rows, sorted(set(table.column("kind").to_pylist()))
(1000, ['mba', 'neo', 'tno'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jointcal_ap.sso.constants import GM_SUN
from jointcal_ap.sso.orbits import ss_object_id

__all__ = ["DEFAULT_MIX", "KINDS", "mock_orbits", "parse_mix"]

#: The population kinds.
KINDS = ("mba", "neo", "tno", "comet")
#: The default mixture (fractions of the objects).
DEFAULT_MIX: Mapping[str, float] = {"mba": 0.90, "neo": 0.05, "tno": 0.05, "comet": 0.0}

_H_RANGE = {"mba": (12.0, 22.0), "neo": (16.0, 25.0), "tno": (4.0, 9.0), "comet": (8.0, 14.0)}
_I_SIGMA_MAX = {"mba": (7.0, 35.0), "neo": (12.0, 60.0), "tno": (8.0, 40.0)}


def parse_mix(text: str) -> dict[str, float]:
    """``"mba=0.9,neo=0.05,tno=0.05"`` → fractions (normalised to 1).

    >>> parse_mix("mba=3,neo=1")
    {'mba': 0.75, 'neo': 0.25, 'tno': 0.0, 'comet': 0.0}
    """
    mix = dict.fromkeys(KINDS, 0.0)
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in mix:
            raise ValueError(f"unknown population {name!r} in {text!r}; expected {list(KINDS)}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ValueError(f"population {name!r}: {value!r} is not a number") from None
        if not mix[name] >= 0:
            raise ValueError(f"population {name!r}: fraction {value} must be >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"population mix {text!r} has no positive fraction")
    return {k: v / total for k, v in mix.items()}


def _rayleigh_cut(rng: np.random.Generator, sigma: float, cut: float, n: int) -> np.ndarray:
    out = rng.rayleigh(sigma, n)
    bad = out >= cut
    while bad.any():
        out[bad] = rng.rayleigh(sigma, int(bad.sum()))
        bad = out >= cut
    return out


def _magnitudes(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    k = 0.35 * np.log(10.0)
    u = rng.uniform(0.0, 1.0, n)
    return lo + np.log1p(u * np.expm1(k * (hi - lo))) / k


def _draw(kind: str, rng: np.random.Generator, n: int, epoch: float) -> dict[str, np.ndarray]:
    if kind == "mba":
        a = rng.uniform(2.1, 3.3, n)
        e = _rayleigh_cut(rng, 0.09, 0.35, n)
        q = a * (1.0 - e)
    elif kind == "neo":
        q = rng.uniform(0.3, 1.3, n)
        e = rng.uniform(0.05, 0.7, n)
    elif kind == "tno":
        a = rng.uniform(39.0, 48.0, n)
        e = rng.uniform(0.0, 0.25, n)
        q = a * (1.0 - e)
    else:  # comet
        q = rng.uniform(0.5, 5.0, n)
        e = rng.uniform(0.995, 1.005, n)
    if kind == "comet":
        inc = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    else:
        sigma, cut = _I_SIGMA_MAX[kind]
        inc = _rayleigh_cut(rng, sigma, cut, n)
    node = rng.uniform(0.0, 360.0, n)
    argperi = rng.uniform(0.0, 360.0, n)
    if kind == "comet":
        tp = epoch + rng.uniform(-365.25, 365.25, n)
        # ellipses among the comets get their mean anomaly too (null for e >= 1)
        alpha = (1.0 - e) / q
        ell = alpha > 0
        mean_anomaly = np.full(n, np.nan)
        mean_anomaly[ell] = np.mod(np.degrees(np.sqrt(GM_SUN * alpha[ell] ** 3)
                                              * (epoch - tp[ell])), 360.0)
    else:
        mean_anomaly = rng.uniform(0.0, 360.0, n)
        alpha = (1.0 - e) / q
        m_rad = np.radians(np.where(mean_anomaly > 180.0, mean_anomaly - 360.0, mean_anomaly))
        tp = epoch - m_rad / np.sqrt(GM_SUN * alpha**3)
    h = _magnitudes(rng, *_H_RANGE[kind], n)
    g = np.clip(rng.normal(0.15, 0.05, n), 0.0, 0.5)
    return {"q": q, "e": e, "i": inc, "node": node, "argperi": argperi, "peri_time": tp,
            "mean_anomaly": mean_anomaly, "h": h, "g": g}


def mock_orbits(n: int, *, seed: int, epoch_mjd: float = 60600.0,
                mix: Mapping[str, float] | None = None) -> Any:
    """A mock orbit catalog of ``n`` objects (a ``pyarrow.Table``).

    Parameters
    ----------
    n : int
        Number of objects.
    seed : int
        Seeds every draw (same seed, same catalog).
    epoch_mjd : float
        Epoch of the osculating elements, MJD TT (default 60600, 2024 Oct 17).
    mix : mapping, optional
        Fractions per kind (:data:`DEFAULT_MIX`); counts are rounded, the remainder goes
        to the largest population.

    Returns
    -------
    pyarrow.Table
        The ``mpc_orbits`` columns (``designation``, ``q``, ``e``, ``i``, ``node``,
        ``argperi``, ``peri_time``, ``mean_anomaly``, ``epoch_mjd``, ``h``, ``g``), plus
        ``ssObjectId`` and ``kind``. Designations are ``M<seed>-<index>``.
    """
    import pyarrow as pa

    if n < 0:
        raise ValueError(f"n = {n}: expected a non-negative number of objects")
    fractions = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(fractions) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown population(s) {sorted(unknown)}; expected {list(KINDS)}")
    total = sum(fractions.values())
    counts = {k: round(n * fractions.get(k, 0.0) / total) for k in KINDS}
    largest = max(KINDS, key=lambda k: fractions.get(k, 0.0))
    counts[largest] += n - sum(counts.values())
    rng = np.random.default_rng(seed)
    parts = []
    kinds = []
    for kind in KINDS:
        if counts[kind] > 0:
            parts.append(_draw(kind, np.random.default_rng([seed, KINDS.index(kind)]),
                               counts[kind], epoch_mjd))
            kinds += [kind] * counts[kind]
    columns = {key: np.concatenate([p[key] for p in parts]) if parts else np.empty(0)
               for key in ("q", "e", "i", "node", "argperi", "peri_time", "mean_anomaly", "h", "g")}
    order = rng.permutation(n)
    designation = np.array([f"M{seed}-{k:07d}" for k in range(n)], dtype=object)
    table = {"designation": pa.array(designation, pa.string()),
             "ssObjectId": pa.array(ss_object_id(designation), pa.int64())}
    for key in ("q", "e", "i", "node", "argperi", "peri_time", "mean_anomaly"):
        table[key] = pa.array(columns[key][order], pa.float64(), from_pandas=True)
    table["epoch_mjd"] = np.full(n, float(epoch_mjd))
    table["h"] = columns["h"][order]
    table["g"] = columns["g"][order]
    table["kind"] = pa.array(np.asarray(kinds, dtype=object)[order] if n else [], pa.string())
    return pa.table(table)
