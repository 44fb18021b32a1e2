"""The Alert Production DataBase (APDB) and association into it (``docs/apdb.md``).

- :func:`open_apdb` → :class:`SqlApdb`: Rubin's APDB schema (``apdb.yaml``) on SQLite or
  PostgreSQL, implementing :class:`jointcal_ap.stages.interfaces.Apdb`; readable by Rubin's
  ``lsst-dax-apdb``.
- :func:`associate_unit`: AP-mode association of one (visit, detector) — region read,
  one-to-one matching (:func:`associate`), new DiaObjects, forced photometry through a
  callable, one-transaction store.
- :func:`drp_associate` / :func:`drp_store`: DRP-mode association of many visits at once on
  Dask.
- :func:`dia_object_summaries`, :func:`lightcurve_features`: the DiaObject summary columns
  and lightcurve features (pure, vectorised).
- :func:`alert_history`: ``diaObject``, ``prvDiaSources``, ``prvDiaForcedSources``.

Heavy modules load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AlertHistory",
    "ApdbConnectionError",
    "ApdbError",
    "ApdbInputError",
    "ApdbSchemaError",
    "AssociationOptions",
    "AssociationResult",
    "DrpOptions",
    "FeatureOptions",
    "SqlApdb",
    "StoreResult",
    "UnitOptions",
    "UnitResult",
    "alert_history",
    "associate",
    "associate_unit",
    "cluster_sources",
    "compare_associations",
    "detector_polygon",
    "dia_object_summaries",
    "drp_associate",
    "drp_store",
    "lightcurve_features",
    "open_apdb",
]

_WHERE = {
    "AlertHistory": "history", "alert_history": "history",
    "ApdbConnectionError": "errors", "ApdbError": "errors", "ApdbInputError": "errors",
    "ApdbSchemaError": "errors",
    "AssociationOptions": "association", "AssociationResult": "association",
    "associate": "association",
    "UnitOptions": "ap", "UnitResult": "ap", "associate_unit": "ap",
    "detector_polygon": "ap",
    "DrpOptions": "drp", "cluster_sources": "drp", "compare_associations": "drp",
    "drp_associate": "drp", "drp_store": "drp",
    "FeatureOptions": "features", "lightcurve_features": "features",
    "SqlApdb": "sql", "StoreResult": "sql", "open_apdb": "sql",
    "dia_object_summaries": "summaries",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"jointcal_ap.apdb.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jointcal_ap.apdb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
