"""The one exception of image differencing."""

from __future__ import annotations

__all__ = ["DiffimError"]


class DiffimError(ValueError):
    """Differencing cannot proceed on these inputs; the message names the file (or the
    input's ``source``) and what was expected.

    Its ``__init__`` takes the message only, so it survives a pickle round trip (Dask sends
    exceptions between processes).
    """
