"""AP-mode association of one (visit, detector): the thin driver a stage adapts.

:func:`associate_unit` does, for one unit, what Rubin's ``DiaPipelineTask`` does around the
APDB:

1. reads the DiaObjects in the detector's region plus a margin (the association radius);
2. associates the unit's DiaSources with them one-to-one
   (:func:`jointcal_ap.apdb.association.associate`);
3. gives each unmatched source a new DiaObject whose id is the source's ``diaSourceId``
   (Rubin's convention); sources carrying an ``ssObjectId`` (associated with a known Solar
   System object upstream) get no DiaObject — their SSSource rows travel in the same write;
4. runs forced photometry — a callable you pass (``positions → fluxes``) — on every
   DiaObject in the detector, known or new, giving DiaForcedSource rows;
5. stores everything in one transaction (:meth:`SqlApdb.store`), which recomputes the
   summaries and lightcurve features of every object that got a new source.

Running a unit again with the same :class:`~jointcal_ap.stages.interfaces.IdempotencyKey`
does nothing (the stored rows are returned); with another ``input_identity`` it associates
against the database as it was before the unit — every object's version valid just before
the unit's visit time, without the objects the unit or later units created
(``exclude_unit``) — and replaces the unit (:meth:`SqlApdb.store`: the versions from the
unit's time on are rebuilt from the stored history).

The forced-photometry callable receives a ``pyarrow.Table`` with ``diaObjectId``, ``ra`` and
``dec`` (degrees) and returns, row for row, ``psfFlux`` and ``psfFluxErr`` (nJy, on the
difference image) and optionally ``scienceFlux`` and ``scienceFluxErr`` (on the calibrated
exposure), as a mapping of arrays or a table; NaN for a position it cannot measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jointcal_ap.apdb.association import AssociationOptions, associate
from jointcal_ap.apdb.errors import ApdbInputError
from jointcal_ap.apdb.pixels import in_region, unit_vectors
from jointcal_ap.apdb.validate import (
    check_coordinates,
    check_unique,
    conform,
    float_column,
    int_column,
)

__all__ = ["ForcedPhotometry", "UnitOptions", "UnitResult", "associate_unit", "detector_polygon",
           "expand_region"]

#: ``positions (diaObjectId, ra, dec) → psfFlux, psfFluxErr[, scienceFlux, scienceFluxErr]``.
ForcedPhotometry = Callable[[Any], Any]


@dataclass(frozen=True)
class UnitOptions:
    """Options of :func:`associate_unit`.

    Attributes
    ----------
    association : AssociationOptions
        Radius, χ² gate and error floors of the matching.
    margin_arcsec : float or None
        Margin added to the detector region when reading DiaObjects (default: the
        association radius plus 1 arcsec).
    """

    association: AssociationOptions = field(default_factory=AssociationOptions)
    margin_arcsec: float | None = None

    @property
    def margin_deg(self) -> float:
        margin = self.association.max_radius_arcsec + 1.0 if self.margin_arcsec is None \
            else self.margin_arcsec
        return margin / 3600.0


@dataclass(frozen=True)
class UnitResult:
    """What :func:`associate_unit` did.

    Attributes
    ----------
    stored : bool
        False if exactly this unit (same key) was already stored: nothing was done.
    dia_sources : pyarrow.Table
        The unit's DiaSources with ``diaObjectId`` filled.
    dia_objects : pyarrow.Table
        The current version of every DiaObject the unit's sources belong to.
    dia_forced_sources : pyarrow.Table or None
        The forced photometry rows (None if no callable was given, or skipped).
    n_matched, n_new, n_ss : int
        Sources matched to known objects, new objects created, sources left to Solar
        System objects.
    """

    stored: bool
    dia_sources: Any
    dia_objects: Any
    dia_forced_sources: Any = None
    n_matched: int = 0
    n_new: int = 0
    n_ss: int = 0


def expand_region(region: Any, margin_deg: float) -> Any:
    """A circle holding ``region`` grown by ``margin_deg`` (circles grow their radius;
    polygons are replaced by their bounding circle about the vertices' mean)."""
    from jointcal_ap.stages.interfaces import SkyCircle

    if isinstance(region, SkyCircle):
        return SkyCircle(region.ra, region.dec, min(region.radius + margin_deg, 180.0))
    ra, dec = np.asarray(region.vertices, float).T
    vec = unit_vectors(ra, dec)
    centre = vec.mean(axis=0)
    centre /= np.linalg.norm(centre)
    radius = float(np.degrees(np.arccos(np.clip(vec @ centre, -1.0, 1.0))).max())
    c_ra = math.degrees(math.atan2(centre[1], centre[0])) % 360.0
    c_dec = math.degrees(math.asin(float(np.clip(centre[2], -1.0, 1.0))))
    return SkyCircle(c_ra, c_dec, min(radius + margin_deg, 180.0))


def detector_polygon(pixel_to_sky: Callable[[Any, Any], tuple[Any, Any]], shape: tuple[int, int]
                     ) -> Any:
    """The sky polygon of a detector: its four outer pixel corners through ``pixel_to_sky``
    (1-based FITS pixels, e.g. ``CalibratedExposure.pixel_to_sky``); ``shape`` is (ny, nx)."""
    from jointcal_ap.stages.interfaces import SkyPolygon

    ny, nx = shape
    x = np.array([0.5, nx + 0.5, nx + 0.5, 0.5])
    y = np.array([0.5, 0.5, ny + 0.5, ny + 0.5])
    ra, dec = pixel_to_sky(x, y)
    return SkyPolygon(tuple((float(a) % 360.0, float(d)) for a, d in zip(ra, dec, strict=True)))


def _single(table: Any, name: str, where: str) -> Any:
    values = [v for v in set(table.column(name).to_pylist()) if v is not None]
    if len(values) > 1:
        raise ApdbInputError(f"{where}: DiaSource.{name} takes several values {sorted(values)}; "
                             "one unit is one visit and detector in one band")
    return values[0] if values else None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _forced_rows(forced_photometry: ForcedPhotometry, positions: Any, where: str) -> dict:
    import pyarrow as pa

    measured = forced_photometry(positions)
    if isinstance(measured, pa.Table):
        measured = {name: measured.column(name) for name in measured.column_names}
    if not isinstance(measured, Mapping):
        raise ApdbInputError(f"{where}: forced photometry returned {type(measured).__name__}; "
                             "expected a mapping of columns or a table")
    out = {}
    for name in ("psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr"):
        if name not in measured:
            if name.startswith("psf"):
                raise ApdbInputError(f"{where}: forced photometry returned no {name!r} column")
            continue
        values = np.asarray(measured[name], float)
        if values.shape != (positions.num_rows,):
            raise ApdbInputError(f"{where}: forced photometry returned {values.shape[0]} "
                                 f"{name} values for {positions.num_rows} positions")
        out[name] = values
    return out


def associate_unit(apdb: Any, dia_sources: Any, *, key: Any, region: Any,
                   visit_time_mjd_tai: float | None = None,
                   forced_photometry: ForcedPhotometry | None = None,
                   ss_sources: Any = None, visit: int | None = None, detector: int | None = None,
                   band: str | None = None, time_processed_mjd_tai: float | None = None,
                   options: UnitOptions | None = None) -> UnitResult:
    """Associate one unit's DiaSources into the APDB and store it (see the module docstring).

    Parameters
    ----------
    apdb : SqlApdb
        The database: any :class:`~jointcal_ap.stages.interfaces.Apdb` whose
        ``get_dia_objects`` takes ``columns``, ``object_ids`` and ``exclude_unit``; with
        :meth:`SqlApdb.unit_token` a re-run with the same key skips the association.
    dia_sources : pyarrow.Table or mapping of columns
        The unit's DiaSources, Rubin's columns (``diaObjectId`` is filled here).
    key : IdempotencyKey
        The unit's key.
    region : SkyCircle or SkyPolygon
        The detector's footprint (:func:`detector_polygon`).
    visit_time_mjd_tai : float, optional
        Mid-exposure time (MJD TAI); default: the sources' ``midpointMjdTai``.
    forced_photometry : callable, optional
        ``positions → fluxes`` (module docstring); None skips forced photometry.
    ss_sources : pyarrow.Table, optional
        SSSource rows of the sources associated with Solar System objects.
    visit, detector, band : optional
        For the forced rows; default: the DiaSources' values (or ``key``'s data ID).
    time_processed_mjd_tai : float, optional
        ``timeProcessedMjdTai`` of the forced rows (default: the DiaSources' latest, else
        now).
    options : UnitOptions, optional

    Returns
    -------
    UnitResult

    Raises
    ------
    ApdbInputError
        NaN coordinates or duplicate ``diaSourceId`` (named), several visits/detectors/
        bands in one unit, or bad forced photometry output.
    """
    import pyarrow as pa

    options = options or UnitOptions()
    where = f"unit {key.unit}"
    src = conform("DiaSource", dia_sources, where)
    check_coordinates(src, "diaSourceId", where, "DiaSource")
    check_unique(src, ("diaSourceId",), where, "DiaSource")
    # SqlApdb tells whether the unit is stored, so that a re-run skips the association;
    # any other Apdb is left to make store() idempotent by itself.
    token = apdb.unit_token(key.unit) if hasattr(apdb, "unit_token") else None
    if token == key.token:
        stored = apdb.get_unit_dia_sources(key.unit)
        ids = np.unique(int_column(stored, "diaObjectId"))
        objects = apdb.get_dia_objects(None, object_ids=ids[ids >= 0])
        return UnitResult(False, stored, objects)
    replacing = token is not None
    data_id = dict(key.data_id)
    visit, detector, band = (
        given if given is not None else _first(_single(src, name, where), data_id.get(name))
        for given, name in ((visit, "visit"), (detector, "detector"), (band, "band")))
    if visit_time_mjd_tai is None:
        if src.num_rows == 0:
            raise ApdbInputError(f"{where}: no DiaSources, so give visit_time_mjd_tai")
        visit_time_mjd_tai = float(np.max(float_column(src, "midpointMjdTai")))
    objects = apdb.get_dia_objects(expand_region(region, options.margin_deg),
                                   columns=["diaObjectId", "ra", "dec", "raErr", "decErr"],
                                   exclude_unit=key.unit if replacing else None)
    obj_ids = int_column(objects, "diaObjectId")
    ss_mask = int_column(src, "ssObjectId") >= 0
    todo = np.flatnonzero(~ss_mask)
    result = associate(float_column(src, "ra")[todo], float_column(src, "dec")[todo],
                       float_column(src, "raErr")[todo], float_column(src, "decErr")[todo],
                       float_column(objects, "ra"), float_column(objects, "dec"),
                       float_column(objects, "raErr"), float_column(objects, "decErr"),
                       options.association)
    source_ids = int_column(src, "diaSourceId")
    assigned = np.full(src.num_rows, -1, np.int64)
    matched = result.match >= 0
    assigned[todo[matched]] = obj_ids[result.match[matched]]
    assigned[todo[~matched]] = source_ids[todo[~matched]]
    column = pa.array(np.where(assigned >= 0, assigned, 0), mask=assigned < 0, type=pa.int64())
    src = src.set_column(src.column_names.index("diaObjectId"), "diaObjectId", column)
    forced = None
    if forced_photometry is not None:
        inside = in_region(region, float_column(objects, "ra"), float_column(objects, "dec"))
        new = todo[~matched]
        # One forced row per object: a new object whose id (its source's) is already a
        # known object's joins it (possible only after units were stored out of order).
        new = new[~np.isin(source_ids[new], obj_ids[inside])]
        pos_ids = np.concatenate([obj_ids[inside], source_ids[new]])
        pos_ra = np.concatenate([float_column(objects, "ra")[inside], float_column(src, "ra")[new]])
        pos_dec = np.concatenate([float_column(objects, "dec")[inside],
                                  float_column(src, "dec")[new]])
        order = np.argsort(pos_ids, kind="stable")
        positions = pa.table({"diaObjectId": pos_ids[order], "ra": pos_ra[order],
                              "dec": pos_dec[order]})
        if positions.num_rows:
            if visit is None or detector is None or band is None:
                raise ApdbInputError(f"{where}: forced photometry needs the visit, detector and "
                                     "band (no DiaSource carries them; pass them)")
            fluxes = _forced_rows(forced_photometry, positions, where)
            n = positions.num_rows
            if time_processed_mjd_tai is None:
                processed = float_column(src, "timeProcessedMjdTai")
                time_processed_mjd_tai = float(np.max(processed)) if src.num_rows else \
                    _now_mjd_tai()
            forced = conform("DiaForcedSource", {
                "diaForcedSourceId": apdb.allocate_ids("DiaForcedSource", n, unit=key.unit),
                "diaObjectId": positions.column("diaObjectId"),
                "ra": positions.column("ra"), "dec": positions.column("dec"),
                "visit": np.full(n, int(visit), np.int64),
                "detector": np.full(n, int(detector), np.int16),
                "midpointMjdTai": np.full(n, float(visit_time_mjd_tai)),
                "band": np.full(n, str(band), object),
                "timeProcessedMjdTai": np.full(n, float(time_processed_mjd_tai)),
                **fluxes}, where)
    from jointcal_ap.stages.interfaces import ApdbWrite

    write = ApdbWrite(key, float(visit_time_mjd_tai), dia_sources=src,
                      dia_forced_sources=forced, ss_sources=ss_sources)
    touched = np.unique(assigned[assigned >= 0])
    if hasattr(apdb, "store_unit"):
        outcome = apdb.store_unit(write)
        stored, objects = outcome.stored, outcome.dia_objects
        if objects is not None:
            import pyarrow.compute as pc

            objects = objects.filter(pc.is_in(objects.column("diaObjectId"),
                                              pa.array(touched, pa.int64())))
    else:
        stored, objects = apdb.store(write), None
    if objects is None:
        objects = apdb.get_dia_objects(None, object_ids=touched)
    return UnitResult(stored, src, objects, forced, n_matched=int(matched.sum()),
                      n_new=int((~matched).sum()), n_ss=int(ss_mask.sum()))


def _now_mjd_tai() -> float:
    from astropy.time import Time

    return float(Time.now().tai.mjd)
