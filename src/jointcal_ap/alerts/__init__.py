"""Alert distribution: Rubin alert packets, their serialization, the alert archive, our
Confluent-compatible schema registry, and Kafka transport.

One module per concept (imported lazily, so that ``import jointcal_ap.alerts`` and the
command line stay cheap):

- :mod:`~jointcal_ap.alerts.packets`: one alert per DiaSource (:func:`build_alerts`,
  :func:`build_alert_batch`, :func:`alerts_for_unit`), in Rubin's alert schema;
- :mod:`~jointcal_ap.alerts.cutouts`: small FITS cutouts with WCS, variance and mask;
- :mod:`~jointcal_ap.alerts.serialize`: Avro in the Confluent wire format, fast;
- :mod:`~jointcal_ap.alerts.archive`: the alert database (Avro container files + an index);
- :mod:`~jointcal_ap.alerts.registry`: the schema registry service and its client side;
- :mod:`~jointcal_ap.alerts.compat`: Avro schema resolution and compatibility levels;
- :mod:`~jointcal_ap.alerts.kafka`: the producer, the alert sinks, the example consumer;
- :mod:`~jointcal_ap.alerts.filters`: a safe filter language over alert fields.

See ``docs/alerts.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AlertArchive",
    "AlertBatch",
    "AlertSerializer",
    "alerts_for_unit",
    "build_alert_batch",
    "build_alerts",
    "make_cutout",
    "open_alert_sink",
    "read_cutout",
]

_WHERE = {
    "AlertArchive": "archive",
    "AlertBatch": "packets",
    "AlertSerializer": "serialize",
    "alerts_for_unit": "packets",
    "build_alert_batch": "packets",
    "build_alerts": "packets",
    "make_cutout": "cutouts",
    "open_alert_sink": "kafka",
    "read_cutout": "cutouts",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
