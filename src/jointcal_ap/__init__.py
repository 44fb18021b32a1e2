"""jointcal_ap: joint astrometric and photometric calibration of astronomical exposures.

The reference-catalog layer lives in :mod:`jointcal_ap.refcat`::

    >>> from jointcal_ap.refcat import open_refcat   # doctest: +SKIP

Stage plugins mark their hook implementations with :data:`jointcal_ap.hookimpl` (the same
object as :data:`jointcal_ap.stages.hookimpl`); see :mod:`jointcal_ap.stages`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jointcal-ap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str):
    # Lazy, so that `import jointcal_ap` stays cheap for the CLI and worker processes.
    if name == "hookimpl":
        from jointcal_ap.stages.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'jointcal_ap' has no attribute {name!r}")
