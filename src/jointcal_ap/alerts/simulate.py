"""Synthetic alert inputs (DiaSources with histories, DiaObjects, forced photometry) for
tests, benchmarks and examples: every field of Rubin's alert records filled with a value of
its type, seeded.

>>> from jointcal_ap.alerts.simulate import simulate_unit
>>> unit = simulate_unit(3, n_history=2, seed=1)
>>> unit["dia_sources"].num_rows, unit["prv_dia_sources"].num_rows
(3, 6)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from jointcal_ap.alerts.packets import _branch, avro_arrow_type
from jointcal_ap.schemas import AlertSchema, alert_schema

__all__ = ["random_record_table", "simulate_unit"]


def random_record_table(record: str, n: int, rng: np.random.Generator, *,
                        null_fraction: float = 0.0, schema: AlertSchema | None = None,
                        **fixed: Any) -> pa.Table:
    """A table of ``n`` random rows of an alert record (``"diaSource"`` ...); nullable fields
    are null with probability ``null_fraction``; ``fixed`` columns override."""
    schema = schema or alert_schema()
    columns = {}
    for spec in schema.record_fields(record):
        name = spec["name"]
        arrow_type = avro_arrow_type(spec["type"])
        if name in fixed:
            value = fixed[name]
            columns[name] = (value.cast(arrow_type) if isinstance(value, pa.Array)
                             else pa.array(np.asarray(value), arrow_type))
            continue
        if pa.types.is_floating(arrow_type):
            values = rng.normal(0.0, 100.0, n)
        elif pa.types.is_int64(arrow_type):
            values = rng.integers(-(1 << 40), 1 << 40, n)
        elif pa.types.is_integer(arrow_type):
            values = rng.integers(-1000, 1000, n)
        elif pa.types.is_boolean(arrow_type):
            values = rng.random(n) < 0.5
        else:
            values = np.array(["ugrizy"[k] for k in rng.integers(0, 6, n)], object)
        mask = (rng.random(n) < null_fraction) if _branch(spec["type"])[1] else None
        columns[name] = pa.array(values, arrow_type, mask=mask)
    return pa.table(columns)


def simulate_unit(n_alerts: int, *, n_history: int = 10, n_forced: int | None = None,
                  seed: int = 0, null_fraction: float = 0.0, visit: int = 1000,
                  detector: int = 1, t: float = 60500.0) -> dict[str, pa.Table]:
    """The inputs of :func:`~jointcal_ap.alerts.packets.build_alerts` for one unit.

    Each of the ``n_alerts`` DiaSources belongs to its own DiaObject, which has
    ``n_history`` earlier DiaSources and ``n_forced`` (default ``n_history``) forced
    sources spread over the last 300 days.

    Returns
    -------
    dict
        ``dia_sources``, ``dia_objects``, ``prv_dia_sources``, ``prv_dia_forced_sources``
        (pyarrow tables with the alert records' fields).
    """
    rng = np.random.default_rng(seed)
    n_forced = n_history if n_forced is None else n_forced
    object_ids = np.arange(n_alerts, dtype=np.int64) + (visit << 20) + (detector << 12)
    ra = rng.uniform(150.0, 150.2, n_alerts)
    dec = rng.uniform(2.0, 2.2, n_alerts)
    source_ids = (object_ids << 8) + 255
    sources = random_record_table(
        "diaSource", n_alerts, rng, null_fraction=null_fraction, diaSourceId=source_ids,
        diaObjectId=object_ids, visit=np.full(n_alerts, visit), detector=np.full(n_alerts, detector),
        midpointMjdTai=np.full(n_alerts, t), ra=ra, dec=dec, ssObjectId=pa.nulls(n_alerts, pa.int64()),
        snr=rng.uniform(3.0, 50.0, n_alerts))
    objects = random_record_table("diaObject", n_alerts, rng, null_fraction=null_fraction,
                                  diaObjectId=object_ids, ra=ra, dec=dec,
                                  validityStartMjdTai=np.full(n_alerts, t))

    def history(record: str, count: int, id_name: str) -> pa.Table:
        owner = np.repeat(object_ids, count)
        times = t - np.tile(np.linspace(300.0, 3.0, count), n_alerts) if count else np.zeros(0)
        ids = (owner << 8) + np.tile(np.arange(count), n_alerts)
        return random_record_table(record, n_alerts * count, rng, null_fraction=null_fraction,
                                   **{id_name: ids}, diaObjectId=owner, midpointMjdTai=times,
                                   ra=np.repeat(ra, count), dec=np.repeat(dec, count))

    prv = history("diaSource", n_history, "diaSourceId")
    prv = prv.set_column(prv.column_names.index("ssObjectId"), "ssObjectId",
                         pa.nulls(prv.num_rows, pa.int64()))
    forced = history("diaForcedSource", n_forced, "diaForcedSourceId")
    return {"dia_sources": sources, "dia_objects": objects, "prv_dia_sources": prv,
            "prv_dia_forced_sources": forced}
