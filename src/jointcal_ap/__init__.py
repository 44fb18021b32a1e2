"""jointcal_ap: joint astrometric and photometric calibration of astronomical exposures.

The reference-catalog layer lives in :mod:`jointcal_ap.refcat`::

    >>> from jointcal_ap.refcat import open_refcat   # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jointcal-ap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
