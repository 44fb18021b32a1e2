"""The joint fit's reference-catalog queries: each visit's reference stars at its own epoch,
and the reference rows of the matched stars (at the fit epoch, with errors, or magnitudes).

The cross-match (:func:`jointcal_ap.fit.crossmatch.match_references`) is a pure function of
arrays; this module is where the fit reads the refcat.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jointcal_ap.errors import AssociationError
from jointcal_ap.fit.crossmatch import Association, VisitReferences, default_workers
from jointcal_ap.fit.data import FitInput
from jointcal_ap.fit.projection import MAS_PER_DEG, gnomonic, unit_vectors
from jointcal_ap.refcat._arrow import to_numpy

__all__ = ["reference_codes", "reference_rows", "visit_references"]


def reference_codes(table, codes: dict | None) -> tuple[np.ndarray, dict | None]:
    """Integer codes (≥ 0) of a refcat table's ``id`` column.

    Integer ids are their own codes. Other ids (strings, e.g. SCAMP files, whose id is a
    position string) are numbered in order of first appearance through ``codes``, which is
    created on first need and returned, so that the same id gets the same code in every
    visit's table and at the fit epoch.
    """
    ids = to_numpy(table.column("id"))
    if np.issubdtype(ids.dtype, np.integer) and codes is None:
        if len(ids) and ids.min() < 0:
            raise AssociationError(f"reference ids must be ≥ 0 (found {int(ids.min())}); -1 means "
                                   f"'no reference' in the fit")
        return ids.astype(np.int64), None
    codes = {} if codes is None else codes
    return np.fromiter((codes.setdefault(i, len(codes)) for i in ids.tolist()), np.int64, len(ids)), codes


def visit_references(refcat, data: FitInput, *, search_radius_arcsec: float = 20.0,
                     ref_epoch: float | None = None, mag_limits=None, progress=None,
                     workers: int | None = None) -> tuple[list[VisitReferences], dict | None]:
    """Each visit's reference stars: a cone covering its measurements (through the initial WCS)
    widened by twice ``search_radius_arcsec``.

    Parameters
    ----------
    refcat : Refcat
    data : FitInput
    ref_epoch : float, optional
        None (default): stars at each visit's own epoch, seen from the Earth. A Julian year
        (TDB): all at that one epoch, barycentric, as with a catalog pre-moved to the mean
        epoch (SCAMP's way; kept for comparisons).
    progress : callable, optional
        Called with no argument after each visit.
    workers : int, optional
        Threads loading the cones (default: one per core, see :func:`jointcal_ap.fit.crossmatch.default_workers`).

    Returns
    -------
    references : list of VisitReferences
        In ``data.visits`` order.
    codes : dict or None
        The integer codes of non-integer ids (see :func:`reference_codes`).
    """
    meas = data.measurements
    visit_of_meas = data.visit_index_of_ccd()[meas.ccd_index]
    order = np.argsort(visit_of_meas, kind="stable")
    bounds = np.searchsorted(visit_of_meas[order], np.arange(len(data.visits) + 1))

    def load(vi: int):
        visit = data.visits[vi]
        rows = order[bounds[vi]:bounds[vi + 1]]
        if len(rows) == 0:
            raise AssociationError(f"visit {visit.visit} ({visit.name}) has no measurements")
        tp = gnomonic(meas.ra_init[rows], meas.dec_init[rows], visit.ra, visit.dec)
        radius_deg = float(np.max(np.hypot(tp[:, 0], tp[:, 1]))) / MAS_PER_DEG
        radius_deg += search_radius_arcsec / 3600 * 2
        # positions only: the covariance is propagated later, once, for the reference stars
        # that matched
        if ref_epoch is None:
            return refcat.cone(visit.ra, visit.dec, radius_deg, epoch=visit.epoch, observer="earth",
                               mag_limits=mag_limits, columns=[], format="arrow")
        return refcat.cone(visit.ra, visit.dec, radius_deg, epoch=ref_epoch, mag_limits=mag_limits,
                           columns=[], format="arrow")

    out, codes = [], None
    # one thread per core: the cones are independent, and NumPy, Arrow and Parquet release the GIL
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for table in pool.map(load, range(len(data.visits))):
            ids, codes = reference_codes(table, codes)  # in visit order: codes stay deterministic
            out.append(VisitReferences(ids, to_numpy(table.column("ra")), to_numpy(table.column("dec"))))
            if progress is not None:
                progress()
    return out, codes


def reference_rows(refcat, association: Association, codes: dict | None, **query: Any
                   ) -> tuple[Any, np.ndarray, np.ndarray]:
    """The refcat rows of the association's reference stars: one cone around them (``query``
    as :meth:`Refcat.cone`, e.g. ``epoch``, ``columns``), and for each star found, its row.

    Returns ``(table, rows, stars)``: the arrow table, the row of each found star, and the
    indices of those stars (a subset of the reference stars, in index order).
    """
    is_ref = np.flatnonzero(association.star_ref >= 0)
    xyz = unit_vectors(association.star_ra[is_ref], association.star_dec[is_ref])
    centre = xyz.mean(0)
    centre /= np.linalg.norm(centre)
    radius = float(np.degrees(np.arccos(np.clip(xyz @ centre, -1, 1))).max()) + 0.1
    table = refcat.cone(float(np.degrees(np.arctan2(centre[1], centre[0])) % 360),
                        float(np.degrees(np.arcsin(centre[2]))), radius, format="arrow", **query)
    ids, _ = reference_codes(table, None if codes is None else dict(codes))
    if len(ids) == 0:
        return table, np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(ids)
    target = association.star_ref[is_ref]
    pos = np.clip(np.searchsorted(ids[order], target), 0, len(ids) - 1)
    found = ids[order][pos] == target
    return table, order[pos[found]], is_ref[found]
