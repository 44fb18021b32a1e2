"""Built-in stage plugin ``diffim``: templates, image differencing with DIA source measurement,
and synthetic source injection.

Registered through the ``jointcal_ap.plugins`` entry point (``diffim =
"jointcal_ap_diffim"``), exactly as a third-party plugin. The work is
:mod:`jointcal_ap.diffim` (templates, subtraction, first-pass detection) and
:mod:`jointcal_ap.dia` (measurement, injection); this plugin only adapts them.
"""

from __future__ import annotations

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_register_stages"]

__version__ = "1.0.0"


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    """Register ``template``, ``difference`` and ``inject`` (imported lazily)."""
    from jointcal_ap_diffim.stage import register

    register(registry)
