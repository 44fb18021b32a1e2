"""The Alert Production DataBase (APDB) and association into it.

- :func:`open_apdb` → :class:`SqlApdb`: Rubin's APDB schema on SQLite or PostgreSQL,
  implementing :class:`jointcal_ap.stages.interfaces.Apdb` (:mod:`jointcal_ap.apdb.sql`).
"""

from __future__ import annotations

from jointcal_ap.apdb.errors import ApdbConnectionError, ApdbError, ApdbInputError, ApdbSchemaError
from jointcal_ap.apdb.features import FeatureOptions, lightcurve_features
from jointcal_ap.apdb.sql import SqlApdb, open_apdb
from jointcal_ap.apdb.summaries import dia_object_summaries

__all__ = [
    "ApdbConnectionError",
    "ApdbError",
    "ApdbInputError",
    "ApdbSchemaError",
    "FeatureOptions",
    "SqlApdb",
    "dia_object_summaries",
    "lightcurve_features",
    "open_apdb",
]
