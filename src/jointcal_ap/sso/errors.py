"""Exceptions of the Solar System package.

Each takes a single message argument, so that it survives a pickle round trip (Dask sends
exceptions between processes). The message names the file, the row or the object
(``designation``) and what was expected.

>>> import pickle
>>> err = OrbitError("orbits.parquet: object '2024 AB' (row 3): e = -0.1; expected e >= 0")
>>> pickle.loads(pickle.dumps(err)).args == err.args
True
"""

from __future__ import annotations

__all__ = ["EphemerisError", "OrbitError", "SiteError", "SsoError"]


class SsoError(ValueError):
    """Bad input to the Solar System code (the base of the others)."""


class OrbitError(SsoError):
    """An orbit catalog or an orbit that cannot be used (NaN elements, e < 0, an orbit type
    the model does not support ...); the message names the object."""


class SiteError(SsoError):
    """An observatory site that is unknown or malformed."""


class EphemerisError(SsoError):
    """A time outside the planetary ephemeris, or an ephemeris file that cannot be read."""
