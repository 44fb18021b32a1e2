"""Built-in plugin ``alerts``: the alert sinks of ``export_alerts`` stages.

Registered through the ``jointcal_ap.plugins`` entry point (``alerts = "jointcal_ap_alerts"``
in the project's ``pyproject.toml``), exactly as a third-party plugin. It answers
``jointcal_ap_get_alert_sink`` for ``kafka://`` and ``file://`` URLs with
:func:`jointcal_ap.alerts.kafka.open_alert_sink` (imported lazily, so that loading the plugin
stays cheap).
"""

from __future__ import annotations

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_get_alert_sink"]

__version__ = "1.0.0"

_SCHEMES = ("kafka://", "file://")


@hookimpl
def jointcal_ap_get_alert_sink(url: str):
    """An :class:`~jointcal_ap.stages.interfaces.AlertSink` for ``kafka://host:port/topic?
    registry=URL&archive=DIR`` or ``file:///archive/dir``; None for other schemes."""
    if not url.startswith(_SCHEMES):
        return None
    from jointcal_ap.alerts.kafka import open_alert_sink

    return open_alert_sink(url)
