"""Built-in plugin ``apdb``: opens the Alert Production DataBase for stages, and the
``associate`` stage (Solar System, then DiaObject association into the APDB).

Registered through the ``jointcal_ap.plugins`` entry point (``apdb = "jointcal_ap_apdb"`` in
the project's ``pyproject.toml``), exactly as a third-party plugin. It answers the
``jointcal_ap_get_apdb`` hook for ``sqlite:///...`` and ``postgresql://...`` URLs with
:func:`jointcal_ap.apdb.open_apdb` (imported lazily, so loading the plugin for the command
line stays cheap). The database must exist: create it with ``jointcal-ap apdb create URL``.
"""

from __future__ import annotations

from typing import Any

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_get_apdb", "jointcal_ap_register_stages"]

__version__ = "1.0.0"

#: URL schemes this plugin opens.
SCHEMES = ("sqlite:", "postgresql:", "postgres:", "postgresql+psycopg:")


@hookimpl
def jointcal_ap_get_apdb(url: str) -> Any:
    """Open the APDB at ``url`` if it is SQLite or PostgreSQL, else None (not ours)."""
    if not url.startswith(SCHEMES):
        return None
    from jointcal_ap.apdb import open_apdb

    return open_apdb(url)


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    """Register the ``associate`` stage (imported lazily)."""
    from jointcal_ap_apdb.stage import register

    register(registry)
