"""Built-in stage plugin ``jointfit``: the joint astrometric + photometric fit, as a gather stage.

Registered through the ``jointcal_ap.plugins`` entry point (``jointfit =
"jointcal_ap_jointfit"`` in the project's ``pyproject.toml``), exactly as a third-party
plugin. The work is :class:`jointcal_ap.fit.JointFit`; this module only adapts it.
"""

from __future__ import annotations

from jointcal_ap.stages import hookimpl

__all__ = ["jointcal_ap_register_stages"]

__version__ = "1.0.0"


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    """Register the ``jointfit`` stage and the ``FitOutputs`` dataset type (lazily imported)."""
    from jointcal_ap_jointfit.stage import register

    register(registry)
