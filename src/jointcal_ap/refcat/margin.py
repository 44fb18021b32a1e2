"""HATS margin catalogs: the rows near each partition's border that live in other partitions.

A crossmatch run partition by partition misses the pairs that straddle a border, unless each
partition comes with a *margin*: the rows of the neighbouring partitions within a threshold of
its border. LSDB uses a catalog's margin (declared in the HATS ``collection.properties``)
for exactly that.

The margin is built as hats-import builds one. A *margin order* ``m`` is chosen whose pixels
are at least the threshold wide (estimated, as HATS does, as the mean pixel size / 1.6), and
finer than every partition. A row belongs to the margin of partition ``P`` when its order-``m``
pixel is one of the 8 neighbours of an order-``m`` pixel of ``P``: that includes every row
within the threshold of ``P`` (and some a little farther, up to about one order-``m`` pixel,
which a crossmatch filters by separation anyway). Only the order-``m`` pixels on the edge of
their own partition can have neighbours in another partition; they are found from the bits
of the NESTED index, so the neighbour look-up runs on those few pixels only.

>>> margin_order(10.0, highest_order=3)
13
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jointcal_ap.atomic import atomic_path
from jointcal_ap.refcat.layout import (
    COLLECTION_CATALOG,
    Partition,
    partition_path,
    write_catalog_files,
)
from jointcal_ap.refcat.schema import HEALPIX_COLUMN, HEALPIX_ORDER

__all__ = ["margin_order", "margin_rows", "on_parent_edge", "write_margin"]

#: HATS's estimate of (mean pixel size) / (smallest distance across a pixel).
_MEAN_TO_MIN_WIDTH = 1.6
_ARCSEC_PER_RAD = 180 / math.pi * 3600


def _min_width_arcsec(order: int) -> float:
    mean_rad = math.sqrt(math.pi / 3) / (1 << order)  # sqrt(4π / (12·4^order))
    return mean_rad / _MEAN_TO_MIN_WIDTH * _ARCSEC_PER_RAD


def margin_order(threshold_arcsec: float, highest_order: int) -> int:
    """The finest order whose pixels are at least ``threshold_arcsec`` wide.

    Raises
    ------
    ValueError
        If that order is not finer than ``highest_order`` (the finest partition): the margin
        is then too wide for the partitioning; the message gives the widest possible.
    """
    if not threshold_arcsec > 0:
        raise ValueError(f"the margin must be a positive number of arcseconds, got {threshold_arcsec!r}")
    order = math.floor(math.log2(_min_width_arcsec(0) / threshold_arcsec))
    if order < highest_order + 1:
        widest = _min_width_arcsec(highest_order + 1)
        raise ValueError(f"a margin of {threshold_arcsec:g} arcsec is too wide for partitions of order "
                         f"{highest_order}: at most {widest:.4g} arcsec (or partition coarser)")
    return min(order, HEALPIX_ORDER)


def on_parent_edge(pixels: np.ndarray, parent_order: int, order: int) -> np.ndarray:
    """Whether each NESTED pixel of ``order`` touches the border of its ancestor at ``parent_order``.

    Within the ancestor, a pixel's index interleaves its x (even bits) and y (odd bits)
    positions on a 2^d × 2^d grid (d = order − parent_order); it is on the border when either
    is 0 or 2^d − 1.
    """
    depth = order - parent_order
    pixels = np.asarray(pixels, dtype=np.int64)
    if depth <= 0:
        return np.ones(pixels.shape, dtype=bool)
    sub = pixels & ((1 << (2 * depth)) - 1)
    x = np.zeros_like(sub)
    y = np.zeros_like(sub)
    for bit in range(depth):
        x |= ((sub >> (2 * bit)) & 1) << bit
        y |= ((sub >> (2 * bit + 1)) & 1) << bit
    last = (1 << depth) - 1
    return (x == 0) | (x == last) | (y == 0) | (y == last)


def margin_rows(hp29: np.ndarray, own: Partition, starts29: np.ndarray, stops29: np.ndarray,
                order: int) -> dict[int, np.ndarray]:
    """The rows of partition ``own`` that belong to other partitions' margins.

    Parameters
    ----------
    hp29 : ndarray of int64
        ``_healpix_29`` of the partition's rows, sorted.
    own : Partition
    starts29, stops29 : ndarray of int64
        The ``_healpix_29`` ranges of all partitions of the catalog, sorted by start.
    order : int
        The margin order (:func:`margin_order`).

    Returns
    -------
    dict
        Index (into ``starts29``) of each destination partition → sorted row indices.
    """
    import healpy as hp

    shift = 2 * (HEALPIX_ORDER - order)
    pixel = np.asarray(hp29, dtype=np.int64) >> shift
    if not len(pixel):
        return {}
    first = np.flatnonzero(np.diff(pixel, prepend=-1))  # runs of one order-m pixel (rows sorted)
    last = np.append(first[1:], len(pixel))
    unique = pixel[first]
    edge = on_parent_edge(unique, own.order, order)
    unique, first, last = unique[edge], first[edge], last[edge]
    if not len(unique):
        return {}
    neighbours = np.asarray(hp.get_all_neighbours(1 << order, unique, nest=True), dtype=np.int64)
    start = np.where(neighbours >= 0, neighbours, 0) << shift
    dest = np.searchsorted(starts29, start, side="right") - 1
    own_index = int(np.searchsorted(starts29, own.index_range[0]))
    valid = (neighbours >= 0) & (dest >= 0) & (start < stops29[np.maximum(dest, 0)]) & (dest != own_index)
    column = np.broadcast_to(np.arange(len(unique)), neighbours.shape)
    pairs = np.unique(np.stack([dest[valid], column[valid]]), axis=1)
    out = {}
    for d in np.unique(pairs[0]):
        cols = pairs[1][pairs[0] == d]
        lengths = last[cols] - first[cols]
        offsets = np.repeat(first[cols] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        out[int(d)] = np.arange(int(lengths.sum()), dtype=np.int64) + offsets
    return out


def _margin_task(group: Sequence[Partition], partitions: Sequence[Partition], root: str,
                 order: int) -> list[tuple[Partition, pa.Table]]:
    """The margin rows of the partitions in ``group``, as (destination partition, rows) pieces."""
    starts = np.array([p.index_range[0] for p in partitions], dtype=np.int64)
    stops = np.array([p.index_range[1] for p in partitions], dtype=np.int64)
    pieces = []
    for part in group:
        path = partition_path(root, part)
        hp29 = pq.read_table(path, columns=[HEALPIX_COLUMN]).column(0).to_numpy()
        rows = margin_rows(hp29, part, starts, stops, order)
        if rows:
            table = pq.read_table(path)
            pieces.extend((partitions[d], table.take(pa.array(r))) for d, r in rows.items())
    return pieces


def write_margin(root: str | os.PathLike, margin_root: str | os.PathLike, partitions: Sequence[Partition],
                 threshold_arcsec: float, *, schema: pa.Schema, compression: str = "snappy",
                 run: Callable[[Callable, list[tuple], str], list[Any]] | None = None) -> int:
    """Write the margin catalog of the catalog at ``root`` into ``margin_root``; returns its rows.

    ``run(fn, calls, description)`` runs the per-partition tasks (serially by default; the
    converter passes its process pool).
    """
    root, margin_root = Path(root), Path(margin_root)
    ordered = sorted(partitions, key=lambda p: p.index_range[0])
    order = margin_order(threshold_arcsec, max((p.order for p in ordered), default=0))
    per_task = max(1, len(ordered) // 16)
    calls = [(ordered[i:i + per_task], ordered, str(root), order) for i in range(0, len(ordered), per_task)]
    if run is None:
        results = [_margin_task(*call) for call in calls]
    else:
        results = run(_margin_task, calls, "margin (rows near partition borders)")
    by_dest: dict[Partition, list[pa.Table]] = {}
    for pieces in results:
        for dest, table in pieces:
            by_dest.setdefault(dest, []).append(table)
    written, metadata, total = [], [], 0
    for dest in sorted(by_dest):
        table = pa.concat_tables(by_dest[dest])
        table = table.take(pc.sort_indices(table, [(HEALPIX_COLUMN, "ascending")]))
        path = partition_path(margin_root, dest)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression=compression)
        written.append(dest)
        metadata.append(pq.ParquetFile(path).metadata)
        total += table.num_rows
    write_catalog_files(margin_root, written, metadata, schema, {
        "obs_collection": margin_root.name,
        "dataproduct_type": "margin",
        "hats_primary_table_url": f"../{COLLECTION_CATALOG}",
        "hats_margin_threshold": f"{threshold_arcsec:g}",
        "hats_nrows": total,
        "moc_sky_fraction": f"{sum(4.0 ** -p.order / 12 for p in written):.5f}",
        "jointcal_ap_margin_order": order,
    })
    return total
