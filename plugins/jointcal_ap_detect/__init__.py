"""Built-in stage plugin ``detect``: single-frame detection and measurement.

Registered through the ``jointcal_ap.plugins`` entry point (``detect =
"jointcal_ap_detect"`` in the project's ``pyproject.toml``), exactly as a third-party plugin.
The work is :func:`jointcal_ap.detect.detect_sources`; this module only adapts it to the
stage contract.
"""

from __future__ import annotations

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_register_stages"]

__version__ = "1.0.0"


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    """Register the ``detect`` stage and its dataset types (imports the stage lazily, so that
    loading the plugin for the command line stays cheap)."""
    from jointcal_ap_detect.stage import register

    register(registry)
