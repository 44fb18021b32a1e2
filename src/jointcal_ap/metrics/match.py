"""Matching DiaSources back to the injected truth of one visit × detector.

Both tables carry Rubin's 0-based pixel positions ``x``, ``y`` on the same detector. Each
injected source is matched to at most one DiaSource and each DiaSource to at most one
injected source, nearest pairs first, within ``radius_px`` (for a trail: plus half its
length, since a detection's centroid may lie anywhere along it). Sources not injected (off
the image) are never matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["MATCH_COLUMNS", "Matches", "match_to_truth"]

#: DiaSource columns copied onto each matched truth row (prefixed ``dia_``).
MATCH_COLUMNS = ("diaSourceId", "x", "y", "ra", "dec", "raErr", "decErr", "psfFlux",
                 "psfFluxErr", "snr", "trailFlux", "trailLength", "trailLengthErr",
                 "isDipole", "pixelFlags_injected")


@dataclass(frozen=True)
class Matches:
    """The result of :func:`match_to_truth`.

    Attributes
    ----------
    truth : pyarrow.Table
        The truth rows with ``matched`` (bool), ``match_distance_px`` and the matched
        DiaSource's :data:`MATCH_COLUMNS` as ``dia_<name>`` (NULL when unmatched).
    n_dia_sources : int
        DiaSources on the image (rows not flagged ``pixelFlags_offimage``).
    dia_matched : ndarray of bool
        Per DiaSource row: matched to an injected source.
    """

    truth: Any
    n_dia_sources: int
    dia_matched: np.ndarray


def match_to_truth(truth: Any, dia_sources: Any, *, radius_px: float = 2.0) -> Matches:
    """Match one detector's DiaSources to its injected truth, one to one.

    Parameters
    ----------
    truth : pyarrow.Table
        ``x``, ``y`` (0-based), ``injected``; optional ``trail_length`` (pixels).
    dia_sources : pyarrow.Table or None
        Rubin's DiaSource columns (at least ``x``, ``y``); None: nothing was detected.
    radius_px : float
        Match radius in pixels.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from jointcal_ap.dia._tables import read_column
    from jointcal_ap.schemas import apdb_schema

    tx = read_column(truth, "x", "injection truth")
    ty = read_column(truth, "y", "injection truth")
    injected = read_column(truth, "injected", "injection truth", dtype=bool)
    length = read_column(truth, "trail_length", "injection truth", required=False)
    length = np.zeros(len(tx)) if length is None else np.nan_to_num(length)
    n_truth = len(tx)
    if dia_sources is None or dia_sources.num_rows == 0:
        dx = dy = np.zeros(0)
        on_image = np.zeros(0, bool)
    else:
        dx = read_column(dia_sources, "x", "DiaSource")
        dy = read_column(dia_sources, "y", "DiaSource")
        off = read_column(dia_sources, "pixelFlags_offimage", "DiaSource", dtype=float,
                          required=False)
        on_image = np.ones(len(dx), bool) if off is None else ~(np.nan_to_num(off) > 0)
    truth_of = np.full(len(dx), -1, np.int64)
    dia_of = np.full(n_truth, -1, np.int64)
    distance = np.full(n_truth, np.nan)
    cand_t = np.nonzero(injected)[0]
    cand_d = np.nonzero(on_image)[0]
    if len(cand_t) and len(cand_d):
        tree = cKDTree(np.stack([dx[cand_d], dy[cand_d]], axis=1))
        reach = radius_px + 0.5 * length[cand_t]
        hits = tree.query_ball_point(np.stack([tx[cand_t], ty[cand_t]], axis=1), reach)
        pairs = [(i, cand_d[j]) for i, js in zip(cand_t, hits, strict=True) for j in js]
        if pairs:
            pt, pd = (np.array(a, np.int64) for a in zip(*pairs, strict=True))
            dist = np.hypot(tx[pt] - dx[pd], ty[pt] - dy[pd])
            for k in np.argsort(dist, kind="stable"):
                if dia_of[pt[k]] < 0 and truth_of[pd[k]] < 0:
                    dia_of[pt[k]] = pd[k]
                    truth_of[pd[k]] = pt[k]
                    distance[pt[k]] = dist[k]
    matched = dia_of >= 0
    table = truth
    for name in ("matched", "match_distance_px", *(f"dia_{c}" for c in MATCH_COLUMNS)):
        if name in table.column_names:
            table = table.drop_columns([name])
    table = table.append_column("matched", pa.array(matched))
    table = table.append_column("match_distance_px", pa.array(distance))
    schema = apdb_schema()["DiaSource"]
    take = pa.array(np.where(matched, dia_of, 0))
    unmatched = pa.array(~matched)
    for name in MATCH_COLUMNS:
        kind = schema.column(name).arrow_type
        if dia_sources is None or dia_sources.num_rows == 0 or name not in dia_sources.column_names:
            col = pa.nulls(n_truth, kind)
        else:
            col = dia_sources[name].take(take)
            col = pc.if_else(unmatched, pa.scalar(None, col.type), col)
        table = table.append_column(f"dia_{name}", col)
    return Matches(table, int(on_image.sum()), truth_of >= 0)
