"""What an alert carries about its object's past, read from the APDB.

Rubin's alert packet (``lsst-alert-packet``) holds the ``diaObject``, the object's previous
DiaSources (``prvDiaSources``, 12 months) and previous DiaForcedSources
(``prvDiaForcedSources``). :func:`alert_history` reads all three for a batch of objects in
three queries: the window is ``[t - months * 30 d, t)`` on ``midpointMjdTai``, with ``t`` the
visit time (the source being alerted on is not its own history) — ``dax_apdb``'s month of 30
days, so both read the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DAYS_PER_MONTH", "AlertHistory", "alert_history"]

#: Length of a "month" of history, as in ``dax_apdb``.
DAYS_PER_MONTH = 30.0


@dataclass(frozen=True)
class AlertHistory:
    """History of a batch of DiaObjects (``pyarrow.Table``, Rubin's columns).

    Attributes
    ----------
    dia_objects : pyarrow.Table
        The current version of each object.
    prv_dia_sources : pyarrow.Table
        Their DiaSources in the window, sorted by object then time.
    prv_dia_forced_sources : pyarrow.Table
        Their DiaForcedSources in the window, sorted by object then time.
    """

    dia_objects: Any
    prv_dia_sources: Any
    prv_dia_forced_sources: Any

    def for_object(self, dia_object_id: int) -> AlertHistory:
        """The rows of one object."""
        import pyarrow.compute as pc

        def pick(table: Any) -> Any:
            return table.filter(pc.equal(table.column("diaObjectId"), int(dia_object_id)))

        return AlertHistory(pick(self.dia_objects), pick(self.prv_dia_sources),
                            pick(self.prv_dia_forced_sources))


def alert_history(apdb: Any, dia_object_ids: Any, visit_time_mjd_tai: float, *,
                  months: float = 12, forced_months: float = 12) -> AlertHistory:
    """The DiaObjects, ``prvDiaSources`` and ``prvDiaForcedSources`` of ``dia_object_ids``
    for alerts of the visit at ``visit_time_mjd_tai`` (MJD TAI)."""
    ids = np.unique(np.asarray(dia_object_ids, np.int64))
    t = float(visit_time_mjd_tai)
    objects = apdb.get_dia_objects(None, object_ids=ids)
    sources = apdb.get_dia_sources(None, ids, t - months * DAYS_PER_MONTH, t)
    forced = apdb.get_dia_forced_sources(None, ids, t - forced_months * DAYS_PER_MONTH, t)
    return AlertHistory(objects, sources, forced)
