"""Reading plain FITS images for differencing (HOTPANTS-style inputs).

:func:`read_planes` reads the **first image HDU** of a file (image and header, with the
primary header's cards merged in when the image is an extension), and:

- the variance: a ``VARIANCE`` extension, else the ``variance`` argument (an array or a FITS
  file), else :func:`estimate_variance`;
- the mask: a ``MASK`` extension (LSST bits), else the ``mask`` argument, else none; pixels at
  or above a ``SATURATE`` card get the ``SAT`` bit;
- the PSF: ``PSF`` extensions (:func:`jointcal_ap.psf.psf_from_hdus`), if any.

:func:`estimate_variance` is "GAIN with a robust sky noise": ``σ_sky² + max(I − sky, 0)/GAIN``
where the sky and its noise σ_sky come from sigma-clipped mesh medians and MADs of the
pixels away from the ≥ 5σ peaks (so the sky term includes read noise) and ``GAIN`` (e⁻ per image unit) is the header card; without a
``GAIN`` card the source term is left out (calibrated images in nJy carry none).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.image import MASK_BITS, ImagePlanes
from jointcal_ap.directio import open_hdulist
from jointcal_ap.exposure.fits_io import truncation_warnings
from jointcal_ap.psf import PsfError, psf_from_hdus

__all__ = ["estimate_variance", "open_first_image", "planes_from_hdulist", "read_planes"]


def estimate_variance(image: np.ndarray, header: fits.Header | None = None, mask: np.ndarray | None = None
                      ) -> tuple[np.ndarray, str]:
    """The variance of an image from its sky noise and, when the header has one, its GAIN.

    Returns the variance (float32) and a one-line description of how it was made.
    """
    from jointcal_ap.diffim.qa import source_free
    from jointcal_ap.diffim.stars import find_stars, mesh_background

    img = np.asarray(image, np.float32)
    usable = np.isfinite(img)
    if mask is not None:
        usable &= (np.asarray(mask) & (MASK_BITS["BAD"] | MASK_BITS["NO_DATA"])) == 0
    bkg, rms = mesh_background(img, usable)
    # again without the pixels near sources (≥ 5σ peaks), whose wings inflate the MAD
    stars = find_stars(img, rms.image() ** 2, None if mask is None else np.asarray(mask), threshold=5.0,
                       background=bkg)
    fwhm = float(np.nanmedian(stars.fwhm[stars.isolated])) if stars.isolated.any() else 3.0
    radius = max(4.0, 2.0 * (fwhm if np.isfinite(fwhm) else 3.0))
    free = usable & source_free(np.zeros(img.shape, np.int32), [stars], radius)
    if free.mean() > 0.2:       # larger meshes, denser sampling: the noise estimate itself
        bkg, rms = mesh_background(img, free, mesh_px=256, step=2)
    var = rms.image() ** 2
    gain = None if header is None else header.get("GAIN")
    if isinstance(gain, int | float) and not isinstance(gain, bool) and gain > 0:
        src = np.where(usable, np.maximum(img - bkg.image(), 0.0), 0.0)
        return (var + src / np.float32(gain)).astype(np.float32), f"sky MAD^2 + source/GAIN (GAIN={gain:g})"
    return var.astype(np.float32), "sky MAD^2 (no GAIN card: no source term)"


def _first_image(hdul: fits.HDUList, where: str):
    for h in hdul:
        if isinstance(h, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and h.data is not None \
                and h.data.ndim == 2 and h.name not in ("VARIANCE", "MASK"):
            return h
    raise DiffimError(f"{where}: no 2-D image HDU")


def open_first_image(path: Path):
    """(HDUList, first image HDU, its data as float32). Not FITS, or cut short anywhere (in a
    later MASK or VARIANCE extension too: every HDU is read), is a DiffimError naming the file
    (astropy only warns about a short file, then numpy fails to reshape its data block); the
    file is closed then."""
    where = str(path)
    hdul = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = open_hdulist(path)
            hdul.readall()
            h = _first_image(hdul, where)
            image = np.asarray(h.data, np.float32)
            error = None
        except DiffimError:
            if hdul is not None:
                hdul.close()
            raise
        except (ValueError, TypeError, OSError) as exc:
            error = exc
    truncated = truncation_warnings(caught)
    if error is not None or truncated:
        if hdul is not None:
            hdul.close()
        if hdul is None:
            raise DiffimError(f"{where}: not a readable FITS file ({error})") from None
        raise DiffimError(f"{where}: the image data cannot be read: the file is truncated or "
                          f"damaged ({'; '.join(truncated) or error})") from None
    for w in caught:  # anything else astropy said, as it said it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return hdul, h, image


def _plane(value: Any, shape: tuple[int, int], what: str, where: str) -> np.ndarray:
    if isinstance(value, str | os.PathLike):
        vpath = str(value)
        try:
            with fits.open(vpath, memmap=False) as h:
                arr = np.asarray(_first_image(h, vpath).data)
        except OSError as exc:
            raise DiffimError(f"{vpath}: not a readable FITS file ({exc})") from None
        where = vpath
    else:
        arr = np.asarray(value)
    if arr.shape != shape:
        raise DiffimError(f"{where}: {what} has shape {arr.shape[::-1]} (NAXIS1 × NAXIS2), the image "
                          f"{shape[::-1]}")
    return arr


def read_planes(path: str | os.PathLike, *, variance: Any = None, mask: Any = None,
                role: str = "image") -> ImagePlanes:
    """Read one input of a differencing pair (module notes); ``source`` is the path.

    Raises
    ------
    FileNotFoundError
        No such file.
    DiffimError
        Not FITS, no 2-D image, or a variance/mask of another shape (names the file).
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such file")
    hdul, h, image = open_first_image(path)
    with hdul:
        return planes_from_hdulist(hdul, h, image, where, variance=variance, mask=mask, role=role)


def planes_from_hdulist(hdul: fits.HDUList, h: Any, image: np.ndarray, where: str, *,
                        variance: Any = None, mask: Any = None, role: str = "image") -> ImagePlanes:
    """:func:`read_planes` on a file already open (``h``: its first image HDU, ``image``: its
    data as float32, as :func:`open_first_image` returns them), for a reader that needs
    more of the file (a template's inputs)."""
    header = h.header.copy()
    if h is not hdul[0]:
        for card in hdul[0].header.cards:
            if card.keyword not in header and card.keyword not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND"):
                header.append(card, end=True)
    shape = image.shape
    names = [x.name for x in hdul]
    m = None
    if "MASK" in names:
        m = _plane(hdul["MASK"].data, shape, "the MASK extension", where)
    elif mask is not None:
        m = _plane(mask, shape, "the mask", where)
    m = np.zeros(shape, np.int32) if m is None else np.asarray(m).astype(np.int32)
    if "VARIANCE" in names:
        var = _plane(hdul["VARIANCE"].data, shape, "the VARIANCE extension", where).astype(np.float32)
    elif variance is not None:
        var = _plane(variance, shape, "the variance", where).astype(np.float32)
    else:
        if not np.isfinite(image).any():
            raise DiffimError(f"{where}: the {role} image has no finite pixel (all NaN or infinite)")
        var, how = estimate_variance(image, header, m)
        header["HISTORY"] = f"jointcal_ap: variance estimated: {how}"
    sat = header.get("SATURATE")
    if isinstance(sat, int | float) and not isinstance(sat, bool):
        m = m | np.where(np.isfinite(image) & (image >= sat), np.int32(MASK_BITS["SAT"]), np.int32(0))
    psf = None
    psf_hdus = [x for x in hdul if x.name == "PSF" or x.name.startswith("PSF_")]
    if psf_hdus:
        try:
            psf = psf_from_hdus(psf_hdus, f"{where}: PSF extension")
        except PsfError as exc:
            raise DiffimError(str(exc)) from None
    return ImagePlanes(image, var, m, psf, header, where)
