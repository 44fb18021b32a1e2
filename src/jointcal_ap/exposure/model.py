"""The exposure model: :class:`Exposure`, :class:`CalibratedExposure`, their validation, and
:func:`read_exposure` / :func:`read_calibrated_exposure`.

An :class:`Exposure` is one visit × detector as the camera delivered it: an image in ADU, a
bit mask with named planes, a variance plane (ADU²), its FITS header (including the initial
WCS), :class:`~jointcal_ap.exposure.ExposureMetadata` and an optional PSF. A
:class:`CalibratedExposure` is one in nJy with its fitted WCS and the
:class:`~jointcal_ap.calibration.DetectorCalibration` applied.

The FITS encoding and decoding are :mod:`jointcal_ap.exposure.fits_io`'s: ``write`` and the
readers hand it plain values and build the objects here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.calibration import (
    CalibrationError,
    DetectorCalibration,
    PhotometricCalibration,
    header_from_text,
    header_to_text,
    make_wcs,
)
from jointcal_ap.exposure.fits_io import (
    calib_table,
    exposure_hdus,
    image_hdus,
    read_calib_table,
    read_exposure_parts,
    write_fits,
)
from jointcal_ap.exposure.metadata import DEFAULT_MASK_PLANES, ExposureError, ExposureMetadata
from jointcal_ap.psf import PsfModel

__all__ = [
    "CalibratedExposure",
    "Exposure",
    "read_calibrated_exposure",
    "read_exposure",
]


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
        header = _normalised(self.header, where)
        for axis, size in (("NAXIS1", image.shape[1]), ("NAXIS2", image.shape[0])):
            if axis in header and header[axis] != size:
                raise ExposureError(f"{where}: the header says {axis} = {header[axis]!r} but the "
                                    f"image is {image.shape[1]} x {image.shape[0]} (NAXIS1 x "
                                    f"NAXIS2); the header does not describe this image")
        object.__setattr__(self, "header", header)
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
            hdul = image_hdus(self.image, self.header, self.metadata)
        else:
            raise ValueError(f"layout must be 'mef' or 'image', got {layout!r}")
        return write_fits(path, hdul)

    def _mef_hdus(self) -> fits.HDUList:
        return exposure_hdus(self.image, self.mask, self.variance, self.header, self.metadata,
                             self.mask_planes, self.psf)

    @classmethod
    def read(cls, path: str | os.PathLike, **kwargs: Any) -> Exposure:
        """Same as :func:`read_exposure`."""
        return read_exposure(path, **kwargs)


def read_exposure(path: str | os.PathLike, *, variance: np.ndarray | float | None = None,
                  mask: np.ndarray | None = None,
                  metadata: ExposureMetadata | None = None) -> Exposure:
    """Read an exposure from FITS: LSST's multi-extension layout or a single image HDU
    (:mod:`jointcal_ap.exposure.fits_io` describes both).

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
    parts = read_exposure_parts(path, variance=variance, mask=mask, metadata=metadata)
    try:
        return Exposure(parts.image, parts.mask, parts.variance, parts.header, parts.metadata,
                        parts.mask_planes, psf=parts.psf)
    except ExposureError as exc:
        raise ExposureError(f"{path}: {exc}") from None


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
        cal = self.calibration
        hdul.append(calib_table(cal.visit, cal.detector, cal.naxis1, cal.naxis2,
                                cal.wcs_header, cal.photometry.to_dict()))  # type: ignore[arg-type, union-attr]
        return write_fits(path, hdul)

    @classmethod
    def read(cls, path: str | os.PathLike, **kwargs: Any) -> CalibratedExposure:
        """Same as :func:`read_calibrated_exposure`."""
        return read_calibrated_exposure(path, **kwargs)


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
    row = read_calib_table(path)
    try:
        photometry = PhotometricCalibration.from_dict(row.photometry, f"{where}: CALIB.PHOTOMETRY")
        cal = DetectorCalibration(row.visit, row.detector, row.naxis1, row.naxis2, row.wcs_header,
                                  photometry)
    except (CalibrationError, KeyError) as exc:
        raise ExposureError(f"{where}: CALIB table: {exc}") from None
    try:
        return CalibratedExposure(plain.image, plain.mask, plain.variance, plain.header, plain.metadata,
                                  plain.mask_planes, calibration=cal, psf=plain.psf)
    except ExposureError as exc:
        raise ExposureError(f"{where}: {exc}") from None
