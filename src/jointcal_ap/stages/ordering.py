"""Time order across overlapping units: which earlier units each unit of an ordered stage waits for.

An ordered stage (association) reads what earlier units wrote for its part of the sky (the
APDB's DiaObjects) and writes back. Two units may therefore run at the same time only if
neither can see the other's part of the sky; a unit must wait for every earlier unit whose
footprint, grown by a margin, touches its own. This is Rubin's rule (visits in order, the
detectors of one visit side by side) expressed as a dependency graph, so that disjoint parts
of the sky and the detectors of one visit still run in parallel, and so that a detector
straddling a sky-tile border sees its neighbours' earlier visits and never their later ones.

Footprints are circles (a detector's centre and the radius holding it), which is
conservative: two units whose circles touch wait for each other even if the detectors
themselves do not quite overlap.

>>> deps = earlier_neighbours([10.0, 10.0, 10.5], [0.0, 0.001, 0.0], [0.01, 0.01, 0.01],
...                           margin_deg=0.001)
>>> deps
[[], [0], []]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["drop_implied", "earlier_neighbours", "needs_redo"]


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def earlier_neighbours(ra: Sequence[float], dec: Sequence[float], radius_deg: Sequence[float],
                       *, margin_deg: float) -> list[list[int]]:
    """For units listed in time order, the earlier units each one must wait for.

    Parameters
    ----------
    ra, dec : sequence of float
        Centres of the units' footprints (degrees), in time order.
    radius_deg : sequence of float
        Radius of a circle holding each footprint (degrees).
    margin_deg : float
        How far beyond its footprint a unit reads (the association's margin).

    Returns
    -------
    list of list of int
        ``deps[i]``: the indices ``j < i`` with separation(i, j) ≤ r_i + r_j + margin.
    """
    from scipy.spatial import cKDTree

    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    radius = np.asarray(radius_deg, float)
    n = len(ra)
    deps: list[list[int]] = [[] for _ in range(n)]
    if n < 2:
        return deps
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)) and np.all(radius >= 0)):
        raise ValueError("every unit needs a finite footprint centre and a radius >= 0")
    vec = _unit_vectors(ra, dec)
    # candidates by chord length for the largest possible reach, then the exact angle per pair
    reach = min(2 * float(radius.max()) + margin_deg, 180.0)
    chord = 2 * np.sin(np.radians(reach) / 2)
    pairs = cKDTree(vec).query_pairs(chord * (1 + 1e-12), output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        sep = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", vec[i], vec[j]), -1.0, 1.0)))
        keep = sep <= radius[i] + radius[j] + margin_deg
        for a, b in zip(i[keep].tolist(), j[keep].tolist(), strict=True):
            early, late = (a, b) if a < b else (b, a)
            deps[late].append(early)
    for d in deps:
        d.sort()
    return deps


def drop_implied(deps: Sequence[Sequence[int]]) -> list[list[int]]:
    """Drop the waits that another wait already implies: if unit i waits for j and j waits
    for k, i need not wait for k itself. (One step of a transitive reduction: a field
    visited n times keeps about one wait per earlier overlapping detector of the last visit,
    not n.)

    >>> drop_implied([[], [0], [0, 1]])
    [[], [0], [1]]
    """
    out = []
    for d in deps:
        implied: set[int] = set()
        for j in d:
            implied.update(deps[j])
        out.append([j for j in d if j not in implied])
    return out


def needs_redo(not_done: Sequence[bool], deps: Sequence[Sequence[int]]) -> list[bool]:
    """Which units to run again: those not done, and every later unit that waits (directly
    or through others) on one of them (a redone unit may change what later ones read)."""
    redo = list(map(bool, not_done))
    for i, d in enumerate(deps):
        if not redo[i] and any(redo[j] for j in d):
            redo[i] = True
    return redo
