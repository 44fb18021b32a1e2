"""Built-in stage plugin ``calibrate``: apply a joint-fit calibration to an exposure.

Registered through the ``jointcal_ap.plugins`` entry point (``calibrate =
"jointcal_ap_calibrate"`` in the project's ``pyproject.toml``), exactly as a third-party
plugin. The work is :func:`jointcal_ap.exposure.calibrate_exposure`.
"""

from __future__ import annotations

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_register_stages"]

__version__ = "1.0.0"


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    """Register the ``calibrate`` stage and its dataset types (imports the stage lazily, so that
    loading the plugin for the command line stays cheap)."""
    from jointcal_ap_calibrate.stage import register

    register(registry)
