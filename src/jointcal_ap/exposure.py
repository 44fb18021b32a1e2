"""Exposures and calibrated exposures: the data model, FITS I/O, and :func:`calibrate_exposure`.

An :class:`Exposure` is one visit × detector as the camera delivered it: an image in ADU, a
bit mask with named planes, a variance plane (ADU²), its FITS header (including the initial
WCS) and :class:`ExposureMetadata`. :func:`calibrate_exposure` applies the visit × detector's
:class:`~jointcal_ap.calibration.DetectorCalibration` and returns a :class:`CalibratedExposure`:
the image in nJy per pixel, the variance in nJy², the mask carried over and the fitted WCS.

>>> import numpy as np
>>> from astropy.io import fits
>>> from jointcal_ap.calibration import Calibration, DetectorCalibration, PhotometricCalibration
>>> from jointcal_ap.exposure import Exposure, ExposureMetadata, calibrate_exposure
>>> wcs = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
...                    "CRVAL2": 2.0, "CRPIX1": 50.5, "CRPIX2": 40.5,
...                    "CD1_1": -5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})
>>> meta = ExposureMetadata(visit=1, detector=0, filter="r", mjd_tai=60310.2, exptime=30.0)
>>> exposure = Exposure(np.full((80, 100), 10.0, np.float32), None,
...                     np.full((80, 100), 10.0, np.float32), wcs, meta)
>>> phot = PhotometricCalibration.constant(31.4 + 2.5, 100, 80, zero_point_err=0.01)  # 1 ADU = 0.1 nJy
>>> calibration = Calibration([DetectorCalibration(1, 0, 100, 80, wcs, phot)])
>>> calexp = calibrate_exposure(exposure, calibration)
>>> round(float(calexp.image[0, 0]), 6), round(float(calexp.variance[0, 0]), 6)   # nJy, nJy²
(1.0, 0.1)

File layouts (:func:`read_exposure` tells them apart; :meth:`Exposure.write` writes both):

- **LSST-style multi-extension** (the default): an empty primary HDU holding the metadata
  cards, then ``IMAGE`` (float32), ``MASK`` (int32; one ``MP_<PLANE> = bit`` card per mask
  plane, ``HIERARCH`` for names longer than 5 characters) and ``VARIANCE`` (float32)
  extensions, each with ``EXTTYPE`` = its name, ``INHERIT = T`` and the WCS cards.
- **A single image HDU** (e.g. straight from a camera): the variance is the ``variance=``
  argument of :func:`read_exposure`, or is estimated from the ``GAIN`` card (e⁻/ADU; with
  ``RDNOISE`` in e⁻ if present) as ``max(image, 0)/GAIN + (RDNOISE/GAIN)²``. Writing this
  layout keeps only the image and header.

A :class:`CalibratedExposure` is written as the LSST layout with ``BUNIT = 'nJy'``, the fitted
TAN-SIP WCS and the calibration summary cards (``PHOTZP`` = 31.4, ``ADUZP``, ``PHOTZPE``, ``PHC_i_j``) in the
``IMAGE`` header, plus a one-row ``CALIB`` table that holds the
:class:`~jointcal_ap.calibration.DetectorCalibration` exactly.

Pixel coordinates are **1-based** FITS pixels throughout (the centre of the first pixel is
(1, 1)), as SExtractor's ``XWIN_IMAGE`` and the fit; array ``image[r, c]`` is pixel
(x, y) = (c + 1, r + 1). Sky coordinates are ICRS degrees.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.calibration import (
    GRID_CHUNK_ROWS,
    NJY_ZERO_POINT,
    Calibration,
    CalibrationError,
    DetectorCalibration,
    PhotometricCalibration,
    header_from_text,
    header_to_text,
    make_wcs,
)
from jointcal_ap.psf import PsfError, PsfModel, psf_from_hdus

__all__ = [
    "DEFAULT_MASK_PLANES",
    "CalibratedExposure",
    "Exposure",
    "ExposureError",
    "ExposureMetadata",
    "calibrate_exposure",
    "read_calibrated_exposure",
    "read_exposure",
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


# --------------------------------------------------------------------------- metadata


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


# --------------------------------------------------------------------------- validation helpers


def _image_plane(array: Any, name: str, where: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ExposureError(f"{where}: {name} must be a 2-D array (NAXIS2, NAXIS1), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) \
            or np.issubdtype(a.dtype, np.bool_):
        raise ExposureError(f"{where}: {name} must hold real numbers (stored as float32), got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_mask_planes(planes: Mapping[str, int], where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, bit in planes.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ExposureError(f"{where}: mask plane names must be upper-case letters, digits and "
                                f"'_' (as LSST's), got {name!r}")
        if isinstance(bit, bool) or not isinstance(bit, int | np.integer) or not 0 <= int(bit) <= 30:
            raise ExposureError(f"{where}: mask plane {name!r} must have a bit in 0..30, got {bit!r}")
        out[name] = int(bit)
    bits = list(out.values())
    if len(set(bits)) != len(bits):
        raise ExposureError(f"{where}: two mask planes share a bit: {out}")
    return out


def _mask_plane(array: Any, shape: tuple[int, int], planes: Mapping[str, int], where: str) -> np.ndarray:
    if array is None:
        return np.zeros(shape, np.int32)
    a = np.asarray(array)
    if a.ndim != 2:
        raise ExposureError(f"{where}: mask must be a 2-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ExposureError(f"{where}: mask must be an integer bit mask (stored as int32), got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
        raise ExposureError(f"{where}: mask values must be bit sets in 0..2**31-1")
    a = np.ascontiguousarray(a, dtype=np.int32)
    allowed = 0
    for bit in planes.values():
        allowed |= 1 << bit
    stray = int(np.bitwise_or.reduce(a, axis=None)) & ~allowed if a.size else 0
    if stray:
        bits = [b for b in range(31) if stray >> b & 1]
        raise ExposureError(f"{where}: mask uses bit(s) {bits} that no mask plane names "
                            f"(planes: {planes})")
    return a


def _normalised(header: fits.Header | None, where: str) -> fits.Header:
    if header is None:
        return fits.Header()
    if not isinstance(header, fits.Header):
        raise ExposureError(f"{where}: header must be an astropy.io.fits.Header, got {type(header).__name__}")
    return header_from_text(header_to_text(header))


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


def _mask_key(name: str) -> str:
    key = f"MP_{name}"
    return key if len(key) <= 8 else f"HIERARCH {key}"


# --------------------------------------------------------------------------- Exposure


@dataclass(frozen=True, eq=False)
class Exposure:
    """One visit × detector: image, mask, variance, header and metadata.

    Attributes
    ----------
    image : ndarray, float32, shape (NAXIS2, NAXIS1)
        Pixel values in ADU (total over the exposure). Integer or float input is stored as float32.
    mask : ndarray, int32, same shape, or None
        Bit mask; bit ``mask_planes[name]`` set means the pixel is in plane ``name``. None: all zero.
    variance : ndarray, float32, same shape
        Per-pixel variance, ADU² (NaN allowed, e.g. for NO_DATA pixels; negative values not).
    header : astropy.io.fits.Header
        The image header, with the WCS. Held as a FITS reader sees it (through its text form);
        the metadata cards (``VISIT`` … ``MJD-AVG``) are written from ``metadata``.
    metadata : ExposureMetadata
    mask_planes : mapping str → int
        Plane name → bit (0..30); default :data:`DEFAULT_MASK_PLANES` (LSST's).
    psf : PsfModel or None
        The exposure's PSF model (:mod:`jointcal_ap.psf`), 1-based pixel coordinates; written
        as ``PSF``/``PSF_*`` extensions after ``VARIANCE`` and read back by
        :func:`read_exposure`.

    Raises
    ------
    ExposureError
        Wrong dimensions or dtypes, image/mask/variance shapes that differ, negative variance,
        or mask bits no plane names.
    """

    image: np.ndarray
    mask: np.ndarray | None
    variance: np.ndarray
    header: fits.Header
    metadata: ExposureMetadata
    mask_planes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))
    psf: PsfModel | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        where = type(self).__name__
        if not isinstance(self.metadata, ExposureMetadata):
            raise ExposureError(f"{where}: metadata must be an ExposureMetadata, got "
                                f"{type(self.metadata).__name__}")
        where = f"{where}(visit={self.metadata.visit}, detector={self.metadata.detector})"
        image = _image_plane(self.image, "image", where)
        if self.variance is None:
            raise ExposureError(f"{where}: missing variance plane (an Exposure needs one; "
                                "read_exposure can estimate it from a GAIN card)")
        variance = _image_plane(self.variance, "variance", where)
        planes = _check_mask_planes(self.mask_planes, where)
        mask = _mask_plane(self.mask, image.shape, planes, where)
        for name, plane in (("mask", mask), ("variance", variance)):
            if plane.shape != image.shape:
                raise ExposureError(f"{where}: {name} has shape {plane.shape}, but the image has "
                                    f"{image.shape} (NAXIS2, NAXIS1); all planes must match")
        if np.any(variance < 0):
            raise ExposureError(f"{where}: variance has {int(np.sum(variance < 0))} negative "
                                "pixel(s); expected >= 0 (or NaN)")
        for name, value in (("image", image), ("mask", mask), ("variance", variance)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "mask_planes", planes)
        object.__setattr__(self, "header", _normalised(self.header, where))
        if self.psf is not None and not isinstance(self.psf, PsfModel):
            raise ExposureError(f"{where}: psf must be a jointcal_ap.psf.PsfModel, got "
                                f"{type(self.psf).__name__}")

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        """(NAXIS2, NAXIS1)."""
        return self.image.shape

    @property
    def naxis1(self) -> int:
        return int(self.image.shape[1])

    @property
    def naxis2(self) -> int:
        return int(self.image.shape[0])

    @cached_property
    def wcs(self):
        """``astropy.wcs.WCS`` of :attr:`header` (ExposureError if it has no celestial WCS)."""
        try:
            return make_wcs(self.header, f"visit {self.metadata.visit} detector "
                                         f"{self.metadata.detector}: header")
        except CalibrationError as exc:
            raise ExposureError(str(exc)) from None

    def bits(self, *names: str) -> int:
        """The bit mask of the named planes (KeyError names the known planes)."""
        value = 0
        for name in names:
            if name not in self.mask_planes:
                raise KeyError(f"no mask plane {name!r}; planes are {sorted(self.mask_planes)}")
            value |= 1 << self.mask_planes[name]
        return value

    def plane(self, *names: str) -> np.ndarray:
        """Boolean image: pixels in any of the named mask planes."""
        return (self.mask & self.bits(*names)) != 0

    # ------------------------------------------------------------------ I/O
    def write(self, path: str | os.PathLike, *, layout: str = "mef") -> Path:
        """Write a FITS file (to a temporary name, then renamed over ``path``).

        Parameters
        ----------
        layout : "mef" or "image"
            ``"mef"``: the LSST layout (primary + IMAGE, MASK, VARIANCE). ``"image"``: one
            image HDU with header and metadata cards; the mask and variance are not written.
        """
        if layout == "mef":
            hdul = self._mef_hdus()
        elif layout == "image":
            header = _strip(self.header, _STRUCTURAL, _METADATA_KEYS)
            for key, value, comment in self.metadata.cards():
                header[key] = (value, comment)
            hdul = fits.HDUList([fits.PrimaryHDU(self.image, header)])
        else:
            raise ValueError(f"layout must be 'mef' or 'image', got {layout!r}")
        return _atomic_write_fits(Path(path), hdul)

    def _mef_hdus(self) -> fits.HDUList:
        primary = fits.PrimaryHDU()
        for key, value, comment in self.metadata.cards():
            primary.header[key] = (value, comment)
        image_header = _strip(self.header, _STRUCTURAL, _METADATA_KEYS)
        wcs = _wcs_cards(image_header)

        def ext(data: np.ndarray, name: str, header: fits.Header) -> fits.ImageHDU:
            hdu = fits.ImageHDU(data, header, name=name)
            hdu.header["EXTTYPE"] = (name, "LSST extension type")
            hdu.header["INHERIT"] = (True, "inherit the primary header")
            return hdu

        mask_header = fits.Header(wcs)
        for name, bit in sorted(self.mask_planes.items(), key=lambda item: item[1]):
            mask_header[_mask_key(name)] = (bit, "mask plane bit")
        hdul = fits.HDUList([primary, ext(self.image, "IMAGE", image_header),
                             ext(self.mask, "MASK", mask_header),
                             ext(self.variance, "VARIANCE", fits.Header(wcs))])
        if self.psf is not None:
            for hdu in self.psf.to_hdus():
                if not (hdu.name == "PSF" or hdu.name.startswith("PSF_")):
                    raise ExposureError(f"{type(self.psf).__name__}.to_hdus() gave an HDU named "
                                        f"{hdu.name!r}; PSF HDUs must be named PSF or PSF_*")
                hdul.append(hdu)
        return hdul

    @classmethod
    def read(cls, path: str | os.PathLike, **kwargs: Any) -> Exposure:
        """Same as :func:`read_exposure`."""
        return read_exposure(path, **kwargs)


def _atomic_write_fits(path: Path, hdul: fits.HDUList) -> Path:
    buffer = io.BytesIO()
    hdul.writeto(buffer, output_verify="exception")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _merged(primary: fits.Header, ext: fits.Header) -> dict[str, Any]:
    """Card values of ``ext`` over those of ``primary`` (LSST's ``INHERIT``), for looking up."""
    merged: dict[str, Any] = {}
    for header in (primary, ext):
        merged.update((key, value) for key, value in header.items()
                      if key not in ("COMMENT", "HISTORY", ""))
    return merged


def _mask_planes_from(header: fits.Header) -> dict[str, int]:
    planes = {key[3:]: value for key, value in header.items() if key.startswith("MP_")}
    return planes or dict(DEFAULT_MASK_PLANES)


def read_exposure(path: str | os.PathLike, *, variance: np.ndarray | float | None = None,
                  mask: np.ndarray | None = None,
                  metadata: ExposureMetadata | None = None) -> Exposure:
    """Read an exposure from FITS: LSST's multi-extension layout or a single image HDU.

    Parameters
    ----------
    path : path
    variance : array (NAXIS2, NAXIS1) or float, ADU², optional
        The variance when the file has no VARIANCE plane. For a single image HDU without it
        the variance is estimated from ``GAIN`` (e⁻/ADU) and ``RDNOISE`` (e⁻, optional) as
        ``max(image, 0)/GAIN + (RDNOISE/GAIN)²``: right for an image that still holds its sky.
    mask : array (NAXIS2, NAXIS1), optional
        A mask for a single image HDU (default all zero; pixels at or above a ``SATURATE``
        card are flagged SAT).
    metadata : ExposureMetadata, optional
        Instead of the header cards (``VISIT``, ``DETECTOR``, ``FILTER``, ``EXPTIME``, time).

    Raises
    ------
    ExposureError
        No image, a missing variance plane, planes of different shapes, or missing metadata
        cards; the message names the file.
    """
    path = Path(path)
    where = str(path)
    psf = None
    if not path.is_file():
        raise ExposureError(f"{where}: no such file")
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as exc:
        raise ExposureError(f"{where}: not a FITS file ({exc})") from exc
    with hdul:
        primary = hdul[0].header
        if "IMAGE" in hdul:
            image_hdu = hdul["IMAGE"]
            if "VARIANCE" in hdul:
                if variance is not None:
                    raise ExposureError(f"{where}: has a VARIANCE extension; do not also pass variance=")
                var = hdul["VARIANCE"].data
            elif variance is not None:
                var = variance
            else:
                raise ExposureError(f"{where}: missing variance plane: the file has an IMAGE "
                                    "extension but no VARIANCE extension (the LSST layout is IMAGE, "
                                    "MASK, VARIANCE); pass variance= to supply one")
            if "MASK" in hdul:
                if mask is not None:
                    raise ExposureError(f"{where}: has a MASK extension; do not also pass mask=")
                mask_data, planes = hdul["MASK"].data, _mask_planes_from(hdul["MASK"].header)
            else:
                mask_data, planes = mask, dict(DEFAULT_MASK_PLANES)
            image = image_hdu.data
            lookup = _merged(primary, image_hdu.header)
            header = image_hdu.header
            psf_hdus = [h for h in hdul[1:] if h.name == "PSF" or h.name.startswith("PSF_")]
            if psf_hdus:
                try:
                    psf = psf_from_hdus(psf_hdus, f"{where}: PSF extension")
                except PsfError as exc:
                    raise ExposureError(str(exc)) from None
        else:
            image_hdu = next((h for h in hdul if isinstance(h, fits.PrimaryHDU | fits.ImageHDU
                                                            | fits.CompImageHDU)
                              and h.data is not None and h.data.ndim == 2), None)
            if image_hdu is None:
                raise ExposureError(f"{where}: no 2-D image (expected a single image HDU or IMAGE, "
                                    "MASK, VARIANCE extensions)")
            image = image_hdu.data
            header = image_hdu.header
            lookup = header if image_hdu is hdul[0] else _merged(primary, header)
            planes = dict(DEFAULT_MASK_PLANES)
            mask_data = mask
            if variance is not None:
                var = variance
            elif "GAIN" in lookup:
                gain = lookup["GAIN"]
                noise = lookup.get("RDNOISE", 0.0)
                if not isinstance(gain, int | float) or isinstance(gain, bool) or not gain > 0:
                    raise ExposureError(f"{where}: GAIN must be a positive number (e-/ADU), got {gain!r}")
                if not isinstance(noise, int | float) or isinstance(noise, bool) or not noise >= 0:
                    raise ExposureError(f"{where}: RDNOISE must be a number >= 0 (e-), got {noise!r}")
                pixels = np.asarray(image, dtype=np.float64)
                var = (np.maximum(pixels, 0.0) / gain + (noise / gain) ** 2).astype(np.float32)
            else:
                raise ExposureError(f"{where}: missing variance plane: a single image HDU needs "
                                    "variance= or a GAIN card (e-/ADU) to estimate it")
            if mask_data is None and "SATURATE" in lookup:
                saturate = float(lookup["SATURATE"])
                mask_data = np.where(np.asarray(image) >= saturate,
                                     np.int32(1 << planes["SAT"]), np.int32(0))
        meta = metadata if metadata is not None else ExposureMetadata.from_header(lookup, where)
        var_arr = np.asarray(var, dtype=np.float32)
        image_arr = np.asarray(image)
        if var_arr.ndim == 0 and image_arr.ndim == 2:
            var_arr = np.full(image_arr.shape, var_arr, np.float32)
        clean = _strip(header, _STRUCTURAL, _METADATA_KEYS)
        try:
            return Exposure(image_arr, None if mask_data is None else np.asarray(mask_data),
                            var_arr, clean, meta, planes, psf=psf)
        except ExposureError as exc:
            raise ExposureError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- CalibratedExposure


@dataclass(frozen=True, eq=False)
class CalibratedExposure(Exposure):
    """An exposure in nJy with its fitted WCS (from :func:`calibrate_exposure`).

    Attributes
    ----------
    image : ndarray, float32
        nJy per pixel: the exposure's ADU × ``njy_per_adu`` at each pixel centre.
    variance : ndarray, float32
        nJy², the exposure's variance × ``njy_per_adu²``. (The calibration's own error is
        common to all pixels and is not in it; see :meth:`flux_to_njy`.)
    header : astropy.io.fits.Header
        The exposure's header with its WCS replaced by the fitted one, ``BUNIT = 'nJy'`` and
        the calibration summary cards.
    calibration : DetectorCalibration
        The calibration applied (with both its WCS and photometry).
    """

    calibration: DetectorCalibration = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        cal = self.calibration
        where = f"CalibratedExposure(visit={self.metadata.visit}, detector={self.metadata.detector})"
        if not isinstance(cal, DetectorCalibration):
            raise ExposureError(f"{where}: calibration must be a DetectorCalibration")
        if cal.key != (self.metadata.visit, self.metadata.detector) \
                or (cal.naxis1, cal.naxis2) != (self.naxis1, self.naxis2):
            raise ExposureError(f"{where}: calibration is for visit {cal.visit} detector "
                                f"{cal.detector} ({cal.naxis1} × {cal.naxis2}), the image is "
                                f"{self.naxis1} × {self.naxis2}")
        if cal.wcs_header is None or cal.photometry is None:
            raise ExposureError(f"{where}: the calibration needs both a WCS and a photometry")

    @property
    def photometry(self) -> PhotometricCalibration:
        return self.calibration.photometry  # type: ignore[return-value]

    @cached_property
    def wcs(self):
        """The fitted WCS (``astropy.wcs.WCS`` of the calibration's TAN-SIP header)."""
        return self.calibration.wcs

    # ------------------------------------------------------------------ coordinates
    def pixel_to_sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in degrees of **1-based** pixel positions, through the fitted WCS (with SIP)."""
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
        return np.asarray(np.asarray(ra) % 360.0), np.asarray(dec)

    def sky_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """1-based pixel positions of (ra, dec) in degrees (or ``Quantity``); inverts the SIP
        distortion iteratively to 1e-9 pixel."""
        from astropy import units as u

        ra = ra.to_value(u.deg) if isinstance(ra, u.Quantity) else ra
        dec = dec.to_value(u.deg) if isinstance(dec, u.Quantity) else dec
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 1,
                                      tolerance=1e-9, maxiter=50)
        return np.asarray(x), np.asarray(y)

    # ------------------------------------------------------------------ photometry
    def flux_to_njy(self, flux_adu, x, y, flux_err=None, *,
                    include_calibration_error: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Total instrumental fluxes (ADU) of sources at 1-based (x, y) → (nJy, error nJy).

        See :meth:`PhotometricCalibration.flux_to_njy`.
        """
        return self.photometry.flux_to_njy(flux_adu, x, y, flux_err,
                                           include_calibration_error=include_calibration_error)

    def magnitude(self, flux_adu, x, y, flux_err=None, *,
                  include_calibration_error: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """AB magnitudes (and errors) of total instrumental fluxes (ADU) at 1-based (x, y)."""
        return self.photometry.magnitude(flux_adu, x, y, flux_err,
                                         include_calibration_error=include_calibration_error)

    # ------------------------------------------------------------------ I/O
    def write(self, path: str | os.PathLike, *, layout: str = "mef") -> Path:
        """Write the LSST layout plus a ``CALIB`` table (temporary name, then renamed)."""
        if layout != "mef":
            raise ValueError(f"a CalibratedExposure is written as 'mef' only, got layout={layout!r}")
        hdul = self._mef_hdus()
        hdul["VARIANCE"].header["BUNIT"] = ("nJy**2", "variance unit")
        hdul.append(_calib_table(self.calibration))
        return _atomic_write_fits(Path(path), hdul)

    @classmethod
    def read(cls, path: str | os.PathLike, **kwargs: Any) -> CalibratedExposure:
        """Same as :func:`read_calibrated_exposure`."""
        return read_calibrated_exposure(path, **kwargs)


def _calib_table(cal: DetectorCalibration) -> fits.BinTableHDU:
    text = header_to_text(cal.wcs_header)  # type: ignore[arg-type]
    phot = json.dumps(cal.photometry.to_dict(), allow_nan=False)  # type: ignore[union-attr]
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("VISIT", "K", array=np.array([cal.visit], np.int64)),
        fits.Column("DETECTOR", "K", array=np.array([cal.detector], np.int64)),
        fits.Column("NAXIS1", "K", array=np.array([cal.naxis1], np.int64)),
        fits.Column("NAXIS2", "K", array=np.array([cal.naxis2], np.int64)),
        fits.Column("WCS_HEADER", f"{max(len(text), 1)}A", array=np.array([text])),
        fits.Column("PHOTOMETRY", f"{len(phot)}A", array=np.array([phot])),
    ], name="CALIB")
    hdu.header["COMMENT"] = "jointcal_ap DetectorCalibration applied to this image (exact copy)"
    return hdu


def read_calibrated_exposure(path: str | os.PathLike) -> CalibratedExposure:
    """Read what :meth:`CalibratedExposure.write` wrote.

    Raises
    ------
    ExposureError
        Not that layout (no ``CALIB`` table, or a missing plane); the message names the file.
    """
    path = Path(path)
    where = str(path)
    plain = read_exposure(path)
    with fits.open(path, memmap=False) as hdul:
        if "CALIB" not in hdul:
            raise ExposureError(f"{where}: no CALIB table extension: not a calibrated exposure "
                                "(read it with read_exposure)")
        row = hdul["CALIB"].data[0]
        try:
            photometry = PhotometricCalibration.from_dict(json.loads(str(row["PHOTOMETRY"])),
                                                          f"{where}: CALIB.PHOTOMETRY")
            cal = DetectorCalibration(int(row["VISIT"]), int(row["DETECTOR"]), int(row["NAXIS1"]),
                                      int(row["NAXIS2"]), header_from_text(str(row["WCS_HEADER"])),
                                      photometry)
        except (CalibrationError, json.JSONDecodeError, KeyError) as exc:
            raise ExposureError(f"{where}: CALIB table: {exc}") from None
    try:
        return CalibratedExposure(plain.image, plain.mask, plain.variance, plain.header, plain.metadata,
                                  plain.mask_planes, calibration=cal, psf=plain.psf)
    except ExposureError as exc:
        raise ExposureError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- calibrate_exposure


def _calibrated_header(header: fits.Header, cal: DetectorCalibration) -> fits.Header:
    """The exposure's header, its WCS swapped for the fitted one, with the calibration cards."""
    phot = cal.photometry
    out = _strip(header, _WCS_KEY)
    out = _strip(out, _CALIB_KEY, ("BUNIT",))
    for card in cal.wcs_header.cards:  # type: ignore[union-attr]
        if card.keyword not in ("HISTORY", "COMMENT", ""):
            out.append(fits.Card.fromstring(card.image), end=True)
    out = _strip(out, _ADU_KEY)
    out["BUNIT"] = ("nJy", "pixel values: nJy (flux per pixel)")
    cx, cy = phot.centre
    # the pixels are in nJy: their AB zero point is 31.4 (m_AB = -2.5 log10(sum) + PHOTZP),
    # and FLXSCALE/MAGZEROP say the same to SWarp; the raw exposure's (ADU) zero point is ADUZP
    out["PHOTZP"] = (NJY_ZERO_POINT, "[mag] AB zero point of the nJy pixels")
    out["PHOTZPE"] = (phot.zero_point_err, "[mag] 1 sigma calibration error at the centre")
    out["FLXSCALE"] = (1.0, "pixels are already in nJy")
    out["MAGZEROP"] = (NJY_ZERO_POINT, "[mag] AB zero point of FLUX*FLXSCALE (nJy)")
    out["PHOTCAL"] = ("jointcal_ap Chebyshev", "m_AB = -2.5 log10(ADU) + P(x, y)")
    out["ADUZP"] = (float(phot.zero_point(cx, cy)), "[mag] P at the centre: AB mag of 1 raw ADU")
    out["ADUZPE"] = (phot.zero_point_err, "[mag] 1 sigma error of ADUZP")
    nx, ny = phot.degree
    out["PHCORD1"] = (nx, "Chebyshev degree of P in u (x)")
    out["PHCORD2"] = (ny, "Chebyshev degree of P in v (y)")
    if nx <= 9 and ny <= 9:
        for i in range(nx + 1):
            for j in range(ny + 1):
                out[f"PHC_{i}_{j}"] = (float(phot.coefficients[i, j]), "[mag] T_i(u) T_j(v) coeff")
    return out


def calibrate_exposure(exposure: Exposure, calibration: Calibration | DetectorCalibration, *,
                       chunk_rows: int = GRID_CHUNK_ROWS) -> CalibratedExposure:
    """Apply an exposure's calibration: image → nJy per pixel, variance → nJy², fitted WCS.

    The calibration turns instrumental counts into nJy: every pixel (x, y) = (c + 1, r + 1) is
    multiplied by ``njy_per_adu(x, y) = 10^(−0.4·(P(x, y) − 31.4))``, evaluated at the pixel
    centre, and the variance by its square; the mask is carried over. The header's WCS is
    replaced by the calibration's (TAN-SIP).

    Parameters
    ----------
    exposure : Exposure
        In ADU (not a :class:`CalibratedExposure`).
    calibration : Calibration or DetectorCalibration
        A :class:`Calibration` is looked up by the exposure's (visit, detector).
    chunk_rows : int
        Rows evaluated at once (bounds the memory of a large detector).

    Raises
    ------
    CalibrationError
        The calibration does not cover the exposure (another visit × detector, or another
        NAXIS1 × NAXIS2), or lacks its WCS or photometry.
    """
    if isinstance(exposure, CalibratedExposure):
        raise ExposureError(f"visit {exposure.metadata.visit} detector {exposure.metadata.detector}: "
                            "already calibrated (in nJy); calibrate the Exposure in ADU")
    if not isinstance(exposure, Exposure):
        raise TypeError(f"calibrate_exposure takes an Exposure, got {type(exposure).__name__}")
    if isinstance(calibration, Calibration):
        det = calibration.for_exposure(exposure)
    elif isinstance(calibration, DetectorCalibration):
        det = Calibration([calibration]).for_exposure(exposure)
    else:
        raise TypeError(f"calibration must be a Calibration or DetectorCalibration, got "
                        f"{type(calibration).__name__}")
    name = f"visit {det.visit} detector {det.detector}"
    if det.photometry is None:
        raise CalibrationError(f"{name}: the calibration has no photometry (expected a "
                               "PhotometricCalibration)")
    if det.wcs_header is None:
        raise CalibrationError(f"{name}: the calibration has no fitted WCS (expected a TAN-SIP header)")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    image = np.empty(exposure.shape, np.float32)
    variance = np.empty(exposure.shape, np.float32)
    for start in range(0, exposure.naxis2, chunk_rows):
        rows = slice(start, min(start + chunk_rows, exposure.naxis2))
        scale = det.photometry.njy_per_adu_grid(rows)
        image[rows] = exposure.image[rows] * scale
        variance[rows] = exposure.variance[rows] * (scale * scale)
    return CalibratedExposure(image, exposure.mask, variance, _calibrated_header(exposure.header, det),
                              exposure.metadata, exposure.mask_planes, calibration=det,
                              psf=exposure.psf)
