"""The error of the DIA measurement and injection calls."""

from __future__ import annotations

__all__ = ["DiaError"]


class DiaError(ValueError):
    """Bad input to a DIA call; the message names the source (row, x, y), the position or the
    image, and what was expected. Takes one message argument, so it survives a pickle round
    trip (Dask sends exceptions between processes)."""
