"""DRP-mode association: all the DiaSources of many visits at once, not in time order.

Where AP mode (:mod:`jointcal_ap.apdb.ap`) grows objects one visit at a time, DRP mode sees
every epoch together:

1. **Clustering** (:func:`cluster_sources`, pure): friends-of-friends links sources closer
   than ``radius_arcsec``; a linked group in which some visit appears more than once holds
   several objects, and is split into that many by alternating one-to-one assignment of each
   visit's sources to the group's centres (:func:`scipy.optimize.linear_sum_assignment`)
   and re-centring, until stable. An object's id is the ``diaSourceId`` of its earliest
   source (as in AP mode, where an object takes the id of the source that created it).
2. **Partitions** (:func:`drp_associate`): sources are split by NESTED HEALPix pixel at
   ``partition_order`` and each partition is clustered in a Dask task (a ``LocalCluster``
   by default, or the scheduler at ``address``).
3. **Borders**: a source is a *border* source when its pixel at the fine order (the finest
   whose pixels are at least four linking radii wide) touches a fine pixel of another
   partition. A partition keeps only the groups with no border source; the others are
   clustered again, all together, in a second pass. Any source within a linking radius of
   a border source lies in the same partition's border band or in the neighbour's, so each
   second-pass group is a whole friends-of-friends group: the result is exactly the
   clustering of all sources at once (the tests check this), whatever the partitioning.
4. **Storing** (:func:`drp_store`): each partition's objects, with their sources, are stored
   as one unit ``drp_associate/healpix{order}={pixel}`` through the same
   :meth:`SqlApdb.store`, in parallel Dask tasks — the same tables, summaries and features
   as AP mode. No forced photometry (that needs the images).

:func:`compare_associations` counts how two associations of the same sources differ (and
how each compares with a truth); ``docs/apdb.md`` discusses AP against DRP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointcal_ap.apdb.pixels import unit_vectors
from jointcal_ap.apdb.validate import (
    check_coordinates,
    check_unique,
    conform,
    float_column,
    int_column,
)

__all__ = ["DrpOptions", "cluster_sources", "compare_associations", "drp_associate", "drp_store"]


@dataclass(frozen=True)
class DrpOptions:
    """Options of DRP-mode association.

    Attributes
    ----------
    radius_arcsec : float
        Linking radius.
    partition_order : int
        HEALPix order of the partitions (order 6: pixels of ~0.9 degree).
    max_iterations : int
        Bound on the split iterations of a group with repeated visits.
    """

    radius_arcsec: float = 1.0
    partition_order: int = 6
    max_iterations: int = 50

    def __post_init__(self) -> None:
        if not (self.radius_arcsec > 0 and 0 <= self.partition_order <= 20
                and self.max_iterations >= 1):
            raise ValueError(f"DrpOptions: bad values {self}")

    @property
    def fine_order(self) -> int:
        """Finest order whose pixels are at least four linking radii wide."""
        width_deg = 4.0 * self.radius_arcsec / 3600.0
        order = math.floor(math.log2(58.6 / width_deg)) - 1
        return max(self.partition_order + 1, min(order, 29))


def _split(vec: np.ndarray, visit: np.ndarray, max_iterations: int) -> np.ndarray:
    """Local object index of each member of a linked group with repeated visits."""
    from scipy.optimize import linear_sum_assignment

    visits, counts = np.unique(visit, return_counts=True)
    k = int(counts.max())
    seed_visit = visits[np.argmax(counts)]
    centres = vec[visit == seed_visit].copy()
    label = np.full(len(vec), -1, np.int64)
    for _ in range(max_iterations):
        new = np.empty(len(vec), np.int64)
        for v in visits:
            rows = np.flatnonzero(visit == v)
            d2 = ((vec[rows, None, :] - centres[None, :, :]) ** 2).sum(-1)
            r, c = linear_sum_assignment(d2)
            new[rows[r]] = c
        if np.array_equal(new, label):
            break
        label = new
        for j in range(k):
            members = vec[label == j]
            if len(members):
                m = members.mean(axis=0)
                centres[j] = m / np.linalg.norm(m)
    return label


def _cluster(ra: np.ndarray, dec: np.ndarray, visit: np.ndarray, source_id: np.ndarray,
             time: np.ndarray, radius_arcsec: float, max_iterations: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(object id, friends-of-friends group) of each source."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(ra)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    source_id = np.asarray(source_id, np.int64)
    vec = unit_vectors(ra, dec)
    chord = 2.0 * math.sin(0.5 * math.radians(radius_arcsec / 3600.0))
    pairs = cKDTree(vec).query_pairs(chord, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    visit = np.asarray(visit, np.int64)
    # Groups in which some visit repeats hold several objects.
    key, count = np.unique(np.column_stack([group, visit]), axis=0, return_counts=True)
    sub = np.zeros(n, np.int64)
    for g in np.unique(key[count > 1, 0]):
        rows = np.flatnonzero(group == g)
        rows = rows[np.argsort(source_id[rows], kind="stable")]
        sub[rows] = _split(vec[rows], visit[rows], max_iterations)
    # Object id: the diaSourceId of the earliest source (ties: the smallest id).
    label = group.astype(np.int64) * (int(sub.max()) + 1) + sub
    order = np.lexsort((source_id, np.asarray(time, float), label))
    first = np.ones(n, bool)
    first[1:] = label[order][1:] != label[order][:-1]
    leaders, leader_ids = label[order][first], source_id[order][first]
    return leader_ids[np.searchsorted(leaders, label)], group.astype(np.int64)


def cluster_sources(ra: np.ndarray, dec: np.ndarray, visit: np.ndarray, source_id: np.ndarray,
                    time: np.ndarray, radius_arcsec: float = 1.0, max_iterations: int = 50
                    ) -> np.ndarray:
    """Cluster sources into objects (see the module docstring); returns each source's
    object id (the ``diaSourceId`` of the object's earliest source).

    Parameters
    ----------
    ra, dec : (n,) float
        Degrees.
    visit, source_id : (n,) int
    time : (n,) float
        ``midpointMjdTai``.
    radius_arcsec : float
        Friends-of-friends linking radius.

    >>> import numpy as np
    >>> ra = np.array([10.0, 10.0, 10.0 + 2 / 3600]); dec = np.zeros(3)
    >>> cluster_sources(ra, dec, np.array([1, 2, 2]), np.array([11, 21, 22]),
    ...                 np.array([1.0, 2.0, 2.0])).tolist()
    [11, 11, 22]
    """
    return _cluster(ra, dec, visit, source_id, time, radius_arcsec, max_iterations)[0]


def _partition_task(ra: np.ndarray, dec: np.ndarray, visit: np.ndarray, source_id: np.ndarray,
                    time: np.ndarray, border: np.ndarray, radius_arcsec: float,
                    max_iterations: int) -> np.ndarray:
    """Cluster one partition: object id per source, -1 where the source's group holds a
    border source (it goes to the second pass)."""
    labels, group = _cluster(ra, dec, visit, source_id, time, radius_arcsec, max_iterations)
    labels[np.isin(group, np.unique(group[border]))] = -1
    return labels


def _border(ra: np.ndarray, dec: np.ndarray, options: DrpOptions) -> tuple[np.ndarray, np.ndarray]:
    """(partition pixel, border flag) of each source."""
    import healpy as hp

    fine_order = options.fine_order
    fine = hp.ang2pix(1 << fine_order, ra, dec, nest=True, lonlat=True).astype(np.int64)
    shift = 2 * (fine_order - options.partition_order)
    part = fine >> shift
    neighbours = hp.get_all_neighbours(1 << fine_order, fine, nest=True).astype(np.int64)
    other = (neighbours >= 0) & ((neighbours >> shift) != part[None, :])
    return part, other.any(axis=0)


def drp_associate(dia_sources: Any, *, options: DrpOptions | None = None, client: Any = None,
                  address: str | None = None, n_workers: int | None = None,
                  progress: bool = False) -> Any:
    """Associate all ``dia_sources`` at once; return them with ``diaObjectId`` filled.

    Parameters
    ----------
    dia_sources : pyarrow.Table or mapping
        DiaSources of many visits (Rubin's columns); sources with an ``ssObjectId`` keep
        ``diaObjectId`` NULL.
    options : DrpOptions, optional
    client : dask.distributed.Client, optional
        Run the partitions on this client.
    address : str, optional
        Otherwise connect to this scheduler (``tcp://host:8786``); otherwise start a
        ``LocalCluster`` with ``n_workers`` processes (default: the CPU count) and stop it
        afterwards.
    progress : bool
        Show a tqdm bar over the partitions.

    Raises
    ------
    ApdbInputError
        NaN coordinates or duplicate ``diaSourceId`` (named).
    """
    import pyarrow as pa

    options = options or DrpOptions()
    where = "DRP association"
    src = conform("DiaSource", dia_sources, where)
    check_coordinates(src, "diaSourceId", where, "DiaSource")
    check_unique(src, ("diaSourceId",), where, "DiaSource")
    ra, dec = float_column(src, "ra"), float_column(src, "dec")
    visit, sid = int_column(src, "visit"), int_column(src, "diaSourceId")
    time = float_column(src, "midpointMjdTai")
    todo = np.flatnonzero(int_column(src, "ssObjectId") < 0)
    part, border = _border(ra[todo], dec[todo], options)
    labels = np.full(len(todo), -1, np.int64)
    order = np.argsort(part, kind="stable")
    cuts = np.flatnonzero(np.diff(part[order])) + 1
    groups = np.split(order, cuts) if len(order) else []
    with _dask_client(client, address, n_workers) as dask:
        futures = [dask.submit(_partition_task, ra[todo][g], dec[todo][g], visit[todo][g],
                               sid[todo][g], time[todo][g], border[g], options.radius_arcsec,
                               options.max_iterations, pure=False) for g in groups]
        results = _gather(dask, futures, progress)
    for g, result in zip(groups, results, strict=True):
        labels[g] = result
    deferred = np.flatnonzero(labels < 0)
    if len(deferred):
        d = todo[deferred]
        labels[deferred] = cluster_sources(ra[d], dec[d], visit[d], sid[d], time[d],
                                           options.radius_arcsec, options.max_iterations)
    assigned = np.full(src.num_rows, -1, np.int64)
    assigned[todo] = labels
    column = pa.array(np.where(assigned >= 0, assigned, 0), mask=assigned < 0, type=pa.int64())
    return src.set_column(src.column_names.index("diaObjectId"), "diaObjectId", column)


class _dask_client:
    """Context manager: the given client, or one to ``address``, or a LocalCluster's."""

    def __init__(self, client: Any, address: str | None, n_workers: int | None):
        self.client, self.address, self.n_workers = client, address, n_workers
        self._owned: list[Any] = []

    def __enter__(self) -> Any:
        if self.client is not None:
            return self.client
        from dask.distributed import Client, LocalCluster

        if self.address is not None:
            client = Client(self.address, timeout=10)
        else:
            import os

            cluster = LocalCluster(n_workers=self.n_workers or os.cpu_count() or 1,
                                   threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0",
                                   host="127.0.0.1")
            self._owned.append(cluster)
            client = Client(cluster)
        self._owned.insert(0, client)
        return client

    def __exit__(self, *exc: object) -> None:
        for thing in self._owned:
            thing.close()


def _gather(client: Any, futures: Sequence[Any], progress: bool) -> list[Any]:
    if progress and futures:
        import sys

        from dask.distributed import as_completed
        from tqdm import tqdm

        bar = tqdm(total=len(futures), desc="partitions", file=sys.stderr,
                   disable=None, ascii=not sys.stderr.isatty())
        for _ in as_completed(futures):
            bar.update()
        bar.close()
    return client.gather(list(futures))


def _store_partition(url: str, key: Any, sources: Any) -> bool:
    from jointcal_ap.apdb.sql import open_apdb
    from jointcal_ap.stages.interfaces import ApdbWrite

    apdb = open_apdb(url)
    try:
        time = float(np.max(float_column(sources, "midpointMjdTai")))
        return apdb.store(ApdbWrite(key, time, dia_sources=sources))
    finally:
        apdb.close()


def drp_store(url: str, assigned: Any, *, input_identity: str,
              options: DrpOptions | None = None, client: Any = None, address: str | None = None,
              n_workers: int | None = None, progress: bool = False) -> dict[str, bool]:
    """Store DRP-associated sources in the APDB at ``url``, one unit per partition, in
    parallel Dask tasks.

    Each object goes to the partition of its id source (its earliest); the unit is
    ``drp_associate/healpix{order}={pixel}`` with ``input_identity``.

    Returns
    -------
    dict
        Unit name → whether it was stored (False: already stored with this identity).
    """
    from jointcal_ap.stages.interfaces import IdempotencyKey

    options = options or DrpOptions()
    src = conform("DiaSource", assigned, "DRP store")
    obj = int_column(src, "diaObjectId")
    sid = int_column(src, "diaSourceId")
    ra, dec = float_column(src, "ra"), float_column(src, "dec")
    import healpy as hp

    pixel = hp.ang2pix(1 << options.partition_order, ra, dec, nest=True, lonlat=True)
    leader_pixel = dict(zip(sid[obj == sid].tolist(), pixel[obj == sid].tolist(), strict=True))
    home = np.array([leader_pixel.get(o, p) for o, p in zip(obj.tolist(), pixel.tolist(),
                                                            strict=True)])
    units = {}
    with _dask_client(client, address, n_workers) as dask:
        futures = []
        for p in np.unique(home):
            key = IdempotencyKey.make("drp_associate",
                                      {f"healpix{options.partition_order}": int(p)},
                                      input_identity)
            rows = np.flatnonzero(home == p)
            units[key.unit] = None
            futures.append(dask.submit(_store_partition, url, key, src.take(rows), pure=False))
        done = _gather(dask, futures, progress)
    return dict(zip(units, done, strict=True))


def compare_associations(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
    """How association ``b`` differs from ``a`` on the same sources (labels per source;
    -1 = no object).

    Returns
    -------
    dict
        ``objects_a``, ``objects_b``; ``identical`` (objects with exactly the same sources
        in both); ``split`` (objects of ``a`` whose sources are spread over several objects
        of ``b``); ``merged`` (objects of ``b`` holding sources of several objects of
        ``a``). With ``a`` the truth, ``split`` counts true objects broken up and ``merged``
        objects that mix true ones.
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = (a >= 0) & (b >= 0)
    pairs = np.unique(np.column_stack([a[keep], b[keep]]), axis=0)
    per_a = np.unique(pairs[:, 0], return_counts=True)
    per_b = np.unique(pairs[:, 1], return_counts=True)
    one_a = set(per_a[0][per_a[1] == 1].tolist())
    one_b = set(per_b[0][per_b[1] == 1].tolist())
    identical = sum(1 for x, y in pairs.tolist() if x in one_a and y in one_b)
    return {"objects_a": len(np.unique(a[a >= 0])), "objects_b": len(np.unique(b[b >= 0])),
            "identical": int(identical), "split": int((per_a[1] > 1).sum()),
            "merged": int((per_b[1] > 1).sum())}
