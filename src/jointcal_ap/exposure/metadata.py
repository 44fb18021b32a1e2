"""What identifies an exposure (:class:`ExposureMetadata`) and the rules for its header cards.

:class:`ExposureMetadata` is written as, and read from, the ``VISIT`` … ``MJD-AVG`` cards.
The card rules say which keywords describe the HDU rather than the exposure
(``_STRUCTURAL``), which are the metadata (``_METADATA_KEYS``), the primary WCS
(``_WCS_KEY``), the calibration summary (``_CALIB_KEY``) and ADU-only cards (``_ADU_KEY``);
:func:`_strip` drops them from a header. :class:`ExposureError` is the package's exception.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits

__all__ = [
    "DEFAULT_MASK_PLANES",
    "ExposureError",
    "ExposureMetadata",
]

#: LSST's standard mask planes and their bits.
DEFAULT_MASK_PLANES: Mapping[str, int] = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5,
    "DETECTED_NEGATIVE": 6, "SUSPECT": 7, "NO_DATA": 8,
}

_SECONDS_PER_DAY = 86400.0
_TIME_SCALES = ("utc", "tai", "tt", "tdb", "tcg", "tcb", "ut1")
#: Cards that describe the HDU rather than the exposure: dropped from ``header`` on read.
_STRUCTURAL = re.compile(r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|EXTNAME|EXTVER|"
                         r"EXTTYPE|INHERIT|BZERO|BSCALE|BLANK|CHECKSUM|DATASUM|MP_.+)$")
#: The metadata cards: written from :class:`ExposureMetadata`, so kept out of ``header``.
_METADATA_KEYS = ("VISIT", "DETECTOR", "FILTER", "EXPTIME", "TIMESYS", "MJD-OBS", "MJD-AVG")
#: The primary WCS's cards (no alternate-WCS letter): replaced by the fitted WCS.
_WCS_KEY = re.compile(r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|"
                      r"PC\d_\d|PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|"
                      r"(A|B|AP|BP)_ORDER|(A|B)_DMAX|(A|B|AP|BP)_\d+_\d+|CRDER\d|CSYER\d)$")
#: Calibration summary cards calibrate_exposure puts in the image header.
_CALIB_KEY = re.compile(r"^(PHOTZP|PHOTZPE|PHOTCAL|PHCORD1|PHCORD2|PHC_\d_\d|ADUZP|ADUZPE|FLXSCALE|MAGZEROP)$")
#: Cards that describe ADU pixels and are wrong once the pixels are in nJy (removed by calibration).
_ADU_KEY = re.compile(r"^(GAIN|SATURATE|RDNOISE|READNOIS|EGAIN)$")


class ExposureError(ValueError):
    """An exposure's planes or file are malformed (shape, dtype, missing plane, bad card)."""


@dataclass(frozen=True)
class ExposureMetadata:
    """What identifies an exposure and when it was taken.

    Attributes
    ----------
    visit, detector : int
    filter : str
        Band name as the camera writes it (``FILTER`` card).
    mjd_tai : float
        Mid-exposure time, MJD in TAI (as :class:`jointcal_ap.fit.data.Visit`).
    exptime : float
        Exposure time in seconds (≥ 0).
    """

    visit: int
    detector: int
    filter: str
    mjd_tai: float
    exptime: float

    def __post_init__(self) -> None:
        for name in ("visit", "detector"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ExposureError(f"ExposureMetadata: {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "filter", str(self.filter))
        mjd, exptime = float(self.mjd_tai), float(self.exptime)
        if not math.isfinite(mjd):
            raise ExposureError(f"ExposureMetadata: mjd_tai must be finite, got {self.mjd_tai!r}")
        if not (math.isfinite(exptime) and exptime >= 0):
            raise ExposureError(f"ExposureMetadata: exptime must be finite and >= 0 s, got {self.exptime!r}")
        object.__setattr__(self, "mjd_tai", mjd)
        object.__setattr__(self, "exptime", exptime)

    @property
    def epoch(self) -> float:
        """Mid-exposure time as a TDB Julian year (the epoch reference stars are moved to)."""
        from astropy.time import Time
        from erfa import ErfaWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ErfaWarning)  # "dubious year" outside the leap-second table
            return float(Time(self.mjd_tai, format="mjd", scale="tai").tdb.jyear)

    def cards(self) -> list[tuple[str, Any, str]]:
        """The FITS cards that hold this metadata (``MJD-OBS`` is the exposure start, TAI)."""
        return [
            ("VISIT", self.visit, "visit id"),
            ("DETECTOR", self.detector, "detector id"),
            ("FILTER", self.filter, "band"),
            ("EXPTIME", self.exptime, "[s] exposure time"),
            ("TIMESYS", "TAI", "time scale of MJD-OBS and MJD-AVG"),
            ("MJD-OBS", self.mjd_tai - 0.5 * self.exptime / _SECONDS_PER_DAY, "[d] exposure start"),
            ("MJD-AVG", self.mjd_tai, "[d] mid-exposure"),
        ]

    @classmethod
    def from_header(cls, header: Mapping[str, Any], where: str) -> ExposureMetadata:
        """From ``VISIT``, ``DETECTOR`` (or ``CCDNUM``), ``FILTER`` (or ``BAND``), ``EXPTIME`` and
        ``MJD-AVG``, or ``MJD-OBS`` / ``DATE-OBS`` (the start) + ``EXPTIME``/2, in ``TIMESYS``
        (default UTC).

        Raises
        ------
        ExposureError
            A card is missing or malformed; ``where`` (the file) is named.
        """
        from astropy.time import Time
        from erfa import ErfaWarning

        def card(*names: str) -> Any:
            for name in names:
                if name in header:
                    return header[name]
            raise ExposureError(f"{where}: no {' or '.join(names)} card in the header (pass "
                                "metadata=ExposureMetadata(...) to read_exposure to give it)")

        def integer(*names: str) -> int:
            value = card(*names)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ExposureError(f"{where}: {names[0]} must be an integer card, got {value!r}")
            return value

        visit, detector = integer("VISIT"), integer("DETECTOR", "CCDNUM")
        band = str(card("FILTER", "BAND")).strip()
        exptime = card("EXPTIME")
        if isinstance(exptime, bool) or not isinstance(exptime, int | float):
            raise ExposureError(f"{where}: EXPTIME must be a number of seconds, got {exptime!r}")
        exptime = float(exptime)
        scale = str(header.get("TIMESYS", "UTC")).strip().lower()
        if scale not in _TIME_SCALES:
            raise ExposureError(f"{where}: TIMESYS {header.get('TIMESYS')!r} is not one of "
                                f"{[s.upper() for s in _TIME_SCALES]}")

        def to_tai(value: float) -> float:
            if scale == "tai":
                return float(value)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ErfaWarning)
                return float(Time(value, format="mjd", scale=scale).tai.mjd)

        half = 0.5 * exptime / _SECONDS_PER_DAY
        if "MJD-AVG" in header:
            mjd = to_tai(float(header["MJD-AVG"]))
        elif "MJD-OBS" in header:
            mjd = to_tai(float(header["MJD-OBS"])) + half
        elif "DATE-OBS" in header:
            try:
                start = Time(str(header["DATE-OBS"]), format="isot", scale=scale)
            except ValueError as exc:
                raise ExposureError(f"{where}: DATE-OBS {header['DATE-OBS']!r} does not parse as "
                                    f"ISO time ({exc})") from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ErfaWarning)
                mjd = float(start.tai.mjd) + half
        else:
            raise ExposureError(f"{where}: no MJD-AVG, MJD-OBS or DATE-OBS card: the exposure "
                                "time is needed (pass metadata= to read_exposure to give it)")
        return cls(visit, detector, band, mjd, exptime)


# --------------------------------------------------------------------------- card rules


def _strip(header: fits.Header, pattern: re.Pattern[str] | None = None,
           keys: tuple[str, ...] = ()) -> fits.Header:
    """A copy without the cards whose keyword matches ``pattern`` or is in ``keys``."""
    out = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in keys or (pattern is not None and pattern.match(key)):
            continue
        out.append(fits.Card.fromstring(card.image), end=True)
    return out


def _wcs_cards(header: fits.Header) -> list[fits.Card]:
    return [card for card in header.cards if _WCS_KEY.match(card.keyword)]

