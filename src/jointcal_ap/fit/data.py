"""The fitter's input: exposures (visits), their CCDs, and every measurement, as plain arrays.

Both input formats (our Parquet survey layout and SExtractor FITS-LDAC catalogs, see
:mod:`jointcal_ap.fit.io`) are read into one :class:`FitInput`. Conventions:

- Pixel coordinates are FITS 1-based (as SExtractor's ``XWIN_IMAGE`` and WCS ``CRPIX``).
- Position errors of measurements are a 2×2 pixel covariance (``cov_xx``, ``cov_yy``, ``cov_xy``).
- ``mjd_tai`` is the exposure mid-time; ``epoch`` is the same as a TDB Julian year.
- ``ra_init``/``dec_init`` are the measurements' positions through the *initial* WCS, in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = ["Ccd", "FitInput", "Measurements", "Visit"]


@dataclass(frozen=True)
class Visit:
    """One exposure.

    Attributes
    ----------
    visit : int
        The visit id (unique within the input).
    mjd_tai : float
        Mid-exposure time, MJD in TAI.
    epoch : float
        The same time as a TDB Julian year (the epoch reference stars are moved to).
    filter : str
    exptime : float
        Seconds.
    ra, dec : float
        Boresight (degrees); the tangent point of the visit's projection.
    name : str
        Where it came from (file name for FITS-LDAC input).
    """

    visit: int
    mjd_tai: float
    epoch: float
    filter: str
    exptime: float
    ra: float
    dec: float
    name: str = ""


@dataclass(frozen=True)
class Ccd:
    """One CCD of one visit, with its initial WCS header (TAN, possibly with SIP/TPV).

    ``cards`` is the header as 80-character cards (no ``END``); :attr:`header` parses it
    into an :class:`astropy.io.fits.Header` on first use.
    """

    visit: int
    detector: int
    naxis1: int
    naxis2: int
    cards: str = field(compare=False, repr=False)

    @cached_property
    def header(self):
        """The initial header as an :class:`astropy.io.fits.Header`."""
        from astropy.io import fits

        return fits.Header.fromstring(self.cards)


@dataclass(frozen=True)
class Measurements:
    """All measurements, one row each; ``ccd_index`` points into :attr:`FitInput.ccds`."""

    ccd_index: np.ndarray  # int64 (n,)
    x: np.ndarray  # float64 (n,), 1-based pixels
    y: np.ndarray
    cov_xx: np.ndarray  # pixel²
    cov_yy: np.ndarray
    cov_xy: np.ndarray
    flux: np.ndarray  # instrumental (ADU)
    flux_err: np.ndarray
    flags: np.ndarray  # int64; non-zero SExtractor-style flags
    ra_init: np.ndarray  # degrees, through the initial WCS
    dec_init: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("ccd_index", "y", "cov_xx", "cov_yy", "cov_xy", "flux", "flux_err", "flags",
                     "ra_init", "dec_init"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Measurements.{name} has {len(getattr(self, name))} rows, x has {n}")


@dataclass(frozen=True)
class FitInput:
    """Everything the joint fit reads: visits, CCDs (visit × detector) and measurements."""

    visits: tuple[Visit, ...]
    ccds: tuple[Ccd, ...]
    measurements: Measurements
    source: str = ""

    def visit_index_of_ccd(self) -> np.ndarray:
        """For each CCD, the index of its visit in :attr:`visits`."""
        lookup = {v.visit: i for i, v in enumerate(self.visits)}
        return np.array([lookup[c.visit] for c in self.ccds], dtype=np.int64)

    def detectors(self) -> np.ndarray:
        """The sorted distinct detector ids."""
        return np.unique([c.detector for c in self.ccds])
