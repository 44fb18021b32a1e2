"""jointcal_ap: joint astrometric and photometric calibration of astronomical exposures.

The reference-catalog layer lives in :mod:`jointcal_ap.refcat`::

    >>> from jointcal_ap.refcat import open_refcat   # doctest: +SKIP

Stage plugins mark their hook implementations with :data:`jointcal_ap.hookimpl` (the same
object as :data:`jointcal_ap.stages.hookimpl`); see :mod:`jointcal_ap.stages`.
"""

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str):
    # Lazy, so that `import jointcal_ap` stays cheap for the CLI and worker processes
    # (importlib.metadata alone is tens of milliseconds, paid by every command otherwise).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("jointcal-ap")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
        globals()["__version__"] = value
        return value
    if name == "hookimpl":
        from jointcal_ap.stages.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'jointcal_ap' has no attribute {name!r}")
