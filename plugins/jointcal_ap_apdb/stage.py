"""The ``associate`` stage: Solar System association, then DiaObject association into the APDB."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from jointcal_ap.stages import OrderedStage, option
from jointcal_ap_apdb import __version__

__all__ = ["AssociateOptions", "AssociateStage", "register"]


@functools.lru_cache(maxsize=4)
def _orbits(path: str, mtime_ns: int) -> Any:
    """An orbit catalog, read once per worker (and again when the file changes)."""
    from jointcal_ap.sso.orbits import read_orbits

    return read_orbits(path)


@dataclass(frozen=True)
class AssociateOptions:
    """Options of the ``associate`` stage (see docs/apdb.md and docs/sso.md)."""

    apdb_url: str = option("", doc="the APDB (sqlite:///..., postgresql://...), created "
                                   "beforehand with jointcal-ap apdb create")
    orbits: str = option("", doc="Solar System orbit catalog (mpc_orbits columns, Parquet or "
                                 "CSV); empty: no Solar System association")
    site: str = option("rubin", doc="observatory for the ephemerides: rubin, geocenter or "
                                    "LON,LAT,HEIGHT")
    forced_photometry: bool = option(True, doc="forced photometry of every DiaObject on the "
                                               "detector (DiaForcedSource rows)")

    def __post_init__(self) -> None:
        if not self.apdb_url:
            raise ValueError("apdb_url is required (e.g. sqlite:///apdb.db)")


class AssociateStage(OrderedStage):
    """Associate a unit's DiaSources with Solar System objects and the APDB's DiaObjects.

    First to predicted Solar System objects (SSSources, no DiaObject), then one to one to
    the APDB's DiaObjects in the detector's region, creating new ones; forced photometry of
    every DiaObject on the detector; all stored in one idempotent transaction keyed by the
    unit. A unit waits for every earlier unit whose footprint comes within
    ``order_margin_arcsec`` of its own (the detectors of one visit run in parallel).
    """

    name = "associate"
    version = __version__
    implements = "associate"
    inputs: ClassVar[dict[str, str]] = {"dia_sources": "DiaSourceCatalog",
                                        "difference": "DifferenceImage",
                                        "calexp": "CalibratedExposure"}
    outputs: ClassVar[dict[str, str]] = {"dia_objects": "DiaObjectCatalog",
                                         "associated": "DiaSourceCatalog",
                                         "dia_forced_sources": "DiaForcedSourceCatalog",
                                         "ss_sources": "SSSourceCatalog"}
    Options = AssociateOptions

    def run(self, unit: Any, dia_sources: Any, difference: Any, calexp: Any) -> dict[str, Any]:
        from jointcal_ap.apdb.ap import associate_unit, detector_polygon
        from jointcal_ap.schemas import apdb_schema

        opts = self.options
        meta = calexp.metadata
        region = detector_polygon(calexp.pixel_to_sky, calexp.shape)
        ss_sources = None
        sources = dia_sources
        if opts.orbits and dia_sources.num_rows:
            from jointcal_ap.sso.associate import associate_sso
            from jointcal_ap.sso.footprint import objects_in_region

            orbits = _orbits(os.path.abspath(opts.orbits), os.stat(opts.orbits).st_mtime_ns)
            _, predicted = objects_in_region(orbits, region, meta.mjd_tai, opts.site)
            result = associate_sso(dia_sources, predicted)
            sources, ss_sources = result.dia_sources, result.ss_sources

        forced = None
        if opts.forced_photometry:
            from jointcal_ap.dia import forced_photometry

            def forced(positions: Any) -> Any:
                return forced_photometry(positions, difference, calexp, visit=meta, wcs=calexp)

        apdb = self.context.apdb(opts.apdb_url)
        result = associate_unit(apdb, sources, key=self.context.key, region=region,
                                visit_time_mjd_tai=meta.mjd_tai, forced_photometry=forced,
                                ss_sources=ss_sources, visit=unit.visit, detector=unit.detector,
                                band=meta.filter)
        schema = apdb_schema()
        return {
            "dia_objects": result.dia_objects,
            "associated": result.dia_sources,
            "dia_forced_sources": (result.dia_forced_sources
                                   if result.dia_forced_sources is not None
                                   else schema["DiaForcedSource"].empty()),
            "ss_sources": ss_sources if ss_sources is not None else schema["SSSource"].empty(),
        }

    def warm_up(self) -> None:
        """Import association and forced photometry, read the APDB schema and the orbit
        catalog, and open the APDB (once per worker, as ``run`` would)."""
        import healpy  # noqa: F401  (the APDB's region queries)

        from jointcal_ap.apdb.ap import associate_unit  # noqa: F401
        from jointcal_ap.dia import forced_photometry  # noqa: F401
        from jointcal_ap.schemas import apdb_schema
        from jointcal_ap.stages import open_resource

        apdb_schema()
        opts = self.options
        if opts.orbits:
            from jointcal_ap.sso.associate import associate_sso  # noqa: F401

            _orbits(os.path.abspath(opts.orbits), os.stat(opts.orbits).st_mtime_ns)
        open_resource("apdb", opts.apdb_url)


def register(registry) -> None:
    """Add the stage (its dataset types are the core's)."""
    registry.add_stage(AssociateStage)
