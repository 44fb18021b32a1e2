"""The one exception of :mod:`jointcal_ap.calibration`."""

from __future__ import annotations

__all__ = ["CalibrationError"]


class CalibrationError(ValueError):
    """A calibration is malformed, missing a part, or does not cover the exposure asked for."""
