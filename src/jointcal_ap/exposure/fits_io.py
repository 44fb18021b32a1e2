"""Exposures in FITS: the encoding that ``write`` uses and the decoding that ``read`` uses.

File layouts (:func:`read_exposure_parts` tells them apart; :func:`exposure_hdus` and
:func:`image_hdus` write them):

- **LSST-style multi-extension** (the default): an empty primary HDU holding the metadata
  cards, then ``IMAGE`` (float32), ``MASK`` (int32; one ``MP_<PLANE> = bit`` card per mask
  plane, ``HIERARCH`` for names longer than 5 characters) and ``VARIANCE`` (float32)
  extensions, each with ``EXTTYPE`` = its name, ``INHERIT = T`` and the WCS cards; then the
  PSF's HDUs (``PSF``/``PSF_*``).
- **A single image HDU** (e.g. straight from a camera): the variance is the ``variance=``
  argument, or is estimated from the ``GAIN`` card (e⁻/ADU; with ``RDNOISE`` in e⁻ if
  present) as ``max(image, 0)/GAIN + (RDNOISE/GAIN)²``.

A calibrated exposure adds a one-row ``CALIB`` table (:func:`calib_table`,
:func:`read_calib_table`) holding its calibration exactly (the WCS header as 80-character
cards, the photometry as JSON).

This module deals only in FITS, arrays, headers and plain values (:class:`ExposureParts`);
:mod:`jointcal_ap.exposure.model` builds and validates the objects. Files are written
atomically (:func:`write_fits`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits

from jointcal_ap.atomic import atomic_path
from jointcal_ap.calibration import header_from_text, header_to_text
from jointcal_ap.directio import open_hdulist, write_hdulist
from jointcal_ap.exposure.metadata import (
    _METADATA_KEYS,
    _STRUCTURAL,
    DEFAULT_MASK_PLANES,
    ExposureError,
    ExposureMetadata,
    _strip,
    _wcs_cards,
)
from jointcal_ap.psf import PsfError, PsfModel, psf_from_hdus

__all__ = [
    "CalibRow",
    "ExposureParts",
    "calib_table",
    "exposure_hdus",
    "image_hdus",
    "read_calib_table",
    "read_exposure_parts",
    "split_fits_selector",
    "write_fits",
]


class ExposureParts(NamedTuple):
    """An exposure's planes, header (structural and metadata cards removed), metadata, mask
    planes and PSF, as decoded from its file (not yet validated)."""

    image: np.ndarray
    mask: np.ndarray | None
    variance: np.ndarray
    header: fits.Header
    metadata: ExposureMetadata
    mask_planes: dict[str, int]
    psf: PsfModel | None


class CalibRow(NamedTuple):
    """The ``CALIB`` table's row: a detector calibration as plain values (the photometry in
    its ``PhotometricCalibration.to_dict`` form)."""

    visit: int
    detector: int
    naxis1: int
    naxis2: int
    wcs_header: fits.Header
    photometry: dict[str, Any]


# --------------------------------------------------------------------------- encoding


def _mask_key(name: str) -> str:
    key = f"MP_{name}"
    return key if len(key) <= 8 else f"HIERARCH {key}"


def exposure_hdus(image: np.ndarray, mask: np.ndarray, variance: np.ndarray, header: fits.Header,
                  metadata: ExposureMetadata, mask_planes: Mapping[str, int],
                  psf: PsfModel | None = None) -> fits.HDUList:
    """LSST's layout: a primary HDU with the metadata cards, then IMAGE, MASK, VARIANCE (each
    with the WCS cards) and the PSF's ``PSF``/``PSF_*`` HDUs."""
    primary = fits.PrimaryHDU()
    for key, value, comment in metadata.cards():
        primary.header[key] = (value, comment)
    image_header = _strip(header, _STRUCTURAL, _METADATA_KEYS)
    wcs = _wcs_cards(image_header)

    def ext(data: np.ndarray, name: str, header: fits.Header) -> fits.ImageHDU:
        hdu = fits.ImageHDU(data, header, name=name)
        hdu.header["EXTTYPE"] = (name, "LSST extension type")
        hdu.header["INHERIT"] = (True, "inherit the primary header")
        return hdu

    mask_header = fits.Header(wcs)
    for name, bit in sorted(mask_planes.items(), key=lambda item: item[1]):
        mask_header[_mask_key(name)] = (bit, "mask plane bit")
    variance_header = fits.Header(wcs)
    # astropy's CCDData.read(path, hdu_uncertainty="VARIANCE") reads this as a
    # VarianceUncertainty (without UTYPE it would take the variance for a standard deviation)
    variance_header["UTYPE"] = ("VarianceUncertainty", "astropy.nddata uncertainty class")
    hdul = fits.HDUList([primary, ext(image, "IMAGE", image_header),
                         ext(mask, "MASK", mask_header),
                         ext(variance, "VARIANCE", variance_header)])
    if psf is not None:
        for hdu in psf.to_hdus():
            if not (hdu.name == "PSF" or hdu.name.startswith("PSF_")):
                raise ExposureError(f"{type(psf).__name__}.to_hdus() gave an HDU named "
                                    f"{hdu.name!r}; PSF HDUs must be named PSF or PSF_*")
            hdul.append(hdu)
    return hdul


def image_hdus(image: np.ndarray, header: fits.Header, metadata: ExposureMetadata) -> fits.HDUList:
    """One image HDU with the header and metadata cards (no mask, variance or PSF)."""
    header = _strip(header, _STRUCTURAL, _METADATA_KEYS)
    for key, value, comment in metadata.cards():
        header[key] = (value, comment)
    return fits.HDUList([fits.PrimaryHDU(image, header)])


def calib_table(visit: int, detector: int, naxis1: int, naxis2: int, wcs_header: fits.Header,
                photometry: Mapping[str, Any]) -> fits.BinTableHDU:
    """The one-row ``CALIB`` table of a calibrated exposure (``photometry``: the dict form)."""
    text = header_to_text(wcs_header)
    phot = json.dumps(dict(photometry), allow_nan=False)
    hdu = fits.BinTableHDU.from_columns([
        fits.Column("VISIT", "K", array=np.array([visit], np.int64)),
        fits.Column("DETECTOR", "K", array=np.array([detector], np.int64)),
        fits.Column("NAXIS1", "K", array=np.array([naxis1], np.int64)),
        fits.Column("NAXIS2", "K", array=np.array([naxis2], np.int64)),
        fits.Column("WCS_HEADER", f"{max(len(text), 1)}A", array=np.array([text])),
        fits.Column("PHOTOMETRY", f"{len(phot)}A", array=np.array([phot])),
    ], name="CALIB")
    hdu.header["COMMENT"] = "jointcal_ap DetectorCalibration applied to this image (exact copy)"
    return hdu


def write_fits(path: str | os.PathLike, hdul: fits.HDUList) -> Path:
    """Verify and write ``hdul`` to ``path`` atomically (temporary name, then renamed; a
    failure leaves ``path`` as it was).

    A large file (16 MiB or more, on a local disk) is serialised in memory, written with
    ``O_DIRECT`` and its bytes kept for the first read (:mod:`jointcal_ap.directio`: on the
    benchmark VM a buffered 192 MB write cost 0.62–0.80 s of system CPU, a direct one
    0.02–0.04 s); a smaller one goes straight to the temporary file, not through a buffer
    grown in memory (which took 0.80 s of CPU against 0.76 s for a 4096² calibrated exposure,
    before ``O_DIRECT``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write_hdulist(hdul, tmp, output_verify="exception")
    return path


# --------------------------------------------------------------------------- decoding


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


_SELECTOR = re.compile(r"^(?P<path>.+)\[(?P<hdu>[^\[\]]+)\]$")


def split_fits_selector(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``"visit3.fits[CCD02]"`` → (``visit3.fits``, ``"CCD02"``); a path that exists as
    written, or has no ``[...]`` suffix, has no selector. The selector is an extension name
    (``EXTNAME``) or an HDU number, as in CFITSIO: ``visit3.fits[2]``."""
    text = os.fspath(path)
    match = _SELECTOR.match(text)
    if match is None or Path(text).exists():
        return Path(text), None
    return Path(match["path"]), match["hdu"]


def _select_hdu(hdul: fits.HDUList, selector: str, where: str) -> Any:
    try:
        hdu = hdul[int(selector)] if selector.isdigit() else hdul[selector]
    except (KeyError, IndexError):
        names = [h.name for h in hdul]
        raise ExposureError(f"{where}: no extension {selector!r} (the file has {names})") from None
    if hdu.data is None or hdu.data.ndim != 2:
        raise ExposureError(f"{where}: extension {selector!r} holds no 2-D image")
    return hdu


def truncation_warnings(caught) -> list[str]:
    """The distinct "file may have been truncated" messages among recorded warnings: astropy
    only warns about a FITS file cut short (its later HDUs or data are simply missing)."""
    return list(dict.fromkeys(str(w.message) for w in caught if "truncated" in str(w.message)))


def _check_complete(hdul, where: str) -> None:
    """Raise :class:`ExposureError` (closing ``hdul``) when the file was cut short, where the
    missing HDUs would otherwise read as a "missing variance plane"; astropy's other warnings
    are passed on as it gave them."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul.readall()
            error = None
        except (OSError, ValueError) as exc:
            error = exc
    truncated = truncation_warnings(caught)
    if error is not None or truncated:
        hdul.close()
        raise ExposureError(f"{where}: the file is truncated or damaged "
                            f"({'; '.join(truncated) or error})")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def read_exposure_parts(path: str | os.PathLike, *, variance: np.ndarray | float | None = None,
                        mask: np.ndarray | None = None,
                        metadata: ExposureMetadata | None = None) -> ExposureParts:
    """Decode an exposure's FITS file: LSST's multi-extension layout or a single image HDU.

    The planes come back as read (not yet validated: :class:`~jointcal_ap.exposure.Exposure`
    does that), the header without its structural and metadata cards.

    The parameters are :func:`jointcal_ap.exposure.read_exposure`'s.

    Raises
    ------
    ExposureError
        No image, a missing variance plane, or missing metadata cards; the message names
        the file.
    """
    where = str(path)
    path, selector = split_fits_selector(path)
    psf = None
    if not path.is_file():
        raise ExposureError(f"{where}: no such file")
    try:
        hdul = open_hdulist(path)
    except (OSError, ValueError) as exc:
        raise ExposureError(f"{where}: not a FITS file ({exc})") from exc
    _check_complete(hdul, where)
    with hdul:
        primary = hdul[0].header
        if selector is not None:
            chosen = _select_hdu(hdul, selector, where)
        if selector is None and "IMAGE" in hdul:
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
            image_hdu = chosen if selector is not None else next(
                (h for h in hdul if isinstance(h, fits.PrimaryHDU | fits.ImageHDU
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
        return ExposureParts(image_arr, None if mask_data is None else np.asarray(mask_data),
                             var_arr, clean, meta, planes, psf)


def read_calib_table(path: str | os.PathLike) -> CalibRow:
    """The ``CALIB`` table's row of a calibrated exposure's file.

    Raises
    ------
    ExposureError
        No ``CALIB`` table, or a malformed one; the message names the file.
    """
    where = str(Path(path))
    with fits.open(path, memmap=False) as hdul:
        if "CALIB" not in hdul:
            raise ExposureError(f"{where}: no CALIB table extension: not a calibrated exposure "
                                "(read it with read_exposure)")
        row = hdul["CALIB"].data[0]
        try:
            return CalibRow(int(row["VISIT"]), int(row["DETECTOR"]), int(row["NAXIS1"]),
                            int(row["NAXIS2"]), header_from_text(str(row["WCS_HEADER"])),
                            json.loads(str(row["PHOTOMETRY"])))
        except (json.JSONDecodeError, KeyError) as exc:
            raise ExposureError(f"{where}: CALIB table: {exc}") from None
