"""Alert cutouts: small FITS images around a source, with WCS, variance and mask.

Each cutout is a FITS file in memory (the bytes of ``cutoutDifference``, ``cutoutScience``
or ``cutoutTemplate``) in the LSST layout: an empty primary HDU (with the source's id and
position) and ``IMAGE``, ``MASK`` and ``VARIANCE`` extensions, each carrying the WCS of the
cutout. The cutout is an integer-pixel window of the parent image (no resampling, as Rubin's
``Exposure.getCutout``): its central pixel holds the source, so the source lies within half a
pixel of the centre, and ``SRC_X``/``SRC_Y`` in the primary header give its exact position in
the cutout's 1-based FITS pixels. Pixels beyond the parent image are NaN in the image and
variance and carry the ``NO_DATA`` mask plane.

>>> import numpy as np
>>> from astropy.wcs import WCS
>>> from jointcal_ap.alerts.cutouts import make_cutout, read_cutout
>>> wcs = WCS(naxis=2)
>>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
>>> wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = [10.0, 20.0], [50.0, 50.0], [-5e-5, 5e-5]
>>> image = np.zeros((100, 100), np.float32)
>>> data = make_cutout(image, image + 1.0, np.zeros(image.shape, np.int32), wcs, 10.0, 20.0)
>>> hdul = read_cutout(data)
>>> hdul["IMAGE"].data.shape, round(hdul[0].header["SRC_X"], 3), round(hdul[0].header["SRC_Y"], 3)
((30, 30), 16.0, 16.0)
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from jointcal_ap.exposure import DEFAULT_MASK_PLANES

__all__ = [
    "CUTOUT_SIZE",
    "cutout_window",
    "make_cutout",
    "make_cutouts",
    "read_cutout",
]

#: Default cutout side in pixels.
CUTOUT_SIZE = 30


def cutout_window(x: float, y: float, size: int) -> tuple[int, int]:
    """The 0-based array index ``(col0, row0)`` of the first pixel of a ``size`` × ``size``
    window whose central pixel holds the 1-based FITS position ``(x, y)``.

    The central pixel is the one at array index ``size // 2`` (FITS pixel ``size // 2 + 1``;
    for an even size, just above and right of the geometric centre), so the source lies
    within half a pixel of FITS position ``size // 2 + 1`` on each axis.
    """
    col = int(np.floor(x - 0.5))  # 0-based index of the pixel containing x (FITS)
    row = int(np.floor(y - 0.5))
    return col - size // 2, row - size // 2


def _slice(array: np.ndarray, col0: int, row0: int, size: int, fill: Any) -> np.ndarray:
    out = np.full((size, size), fill, dtype=array.dtype)
    ny, nx = array.shape
    r0, r1 = max(row0, 0), min(row0 + size, ny)
    c0, c1 = max(col0, 0), min(col0 + size, nx)
    if r0 < r1 and c0 < c1:
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = array[r0:r1, c0:c1]
    return out


def make_cutout(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, wcs: WCS,
                ra: float, dec: float, *, size: int = CUTOUT_SIZE,
                mask_planes: Mapping[str, int] | None = None,
                header: Mapping[str, Any] | None = None) -> bytes:
    """A FITS cutout (bytes) of ``size`` × ``size`` pixels centred on ``(ra, dec)``.

    Parameters
    ----------
    image, variance : ndarray, shape (NAXIS2, NAXIS1)
        The parent image and its variance (e.g. nJy and nJy²).
    mask : ndarray of int
        The parent's bit mask.
    wcs : astropy.wcs.WCS
        The parent's celestial WCS (1-based FITS pixels, as everywhere in the project).
    ra, dec : float
        The source position, ICRS degrees.
    size : int
        The cutout side in pixels (default 30).
    mask_planes : mapping, optional
        Plane name → bit, written as ``MP_*`` cards (default: the project's planes).
    header : mapping, optional
        Extra cards for the primary header (e.g. ``{"DIASRCID": 123}``).
    """
    if size < 1:
        raise ValueError(f"cutout size must be >= 1, got {size}")
    image, variance, mask = np.asarray(image), np.asarray(variance), np.asarray(mask)
    if not (image.shape == variance.shape == mask.shape) or image.ndim != 2:
        raise ValueError(f"image, variance and mask must be 2-D of one shape; got "
                         f"{image.shape}, {variance.shape}, {mask.shape}")
    planes = dict(DEFAULT_MASK_PLANES if mask_planes is None else mask_planes)
    x, y = (float(v) for v in wcs.all_world2pix(ra, dec, 1))
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"(ra, dec) = ({ra}, {dec}) has no pixel position in this WCS")
    col0, row0 = cutout_window(x, y, size)
    no_data = 1 << planes["NO_DATA"] if "NO_DATA" in planes else 0
    cut_mask = _slice(mask.astype(np.int32, copy=False), col0, row0, size, no_data)
    cut_image = _slice(image.astype(np.float32, copy=False), col0, row0, size, np.nan)
    cut_var = _slice(variance.astype(np.float32, copy=False), col0, row0, size, np.nan)

    sub = wcs.celestial.deepcopy()
    sub.wcs.crpix = sub.wcs.crpix - np.array([col0, row0], float)
    if sub.sip is not None:
        sub.sip = type(sub.sip)(sub.sip.a, sub.sip.b, sub.sip.ap, sub.sip.bp,
                                sub.sip.crpix - np.array([col0, row0], float))
    wcs_header = sub.to_header(relax=True)

    primary = fits.PrimaryHDU()
    primary.header["SRC_RA"] = (float(ra), "source right ascension (deg, ICRS)")
    primary.header["SRC_DEC"] = (float(dec), "source declination (deg, ICRS)")
    primary.header["SRC_X"] = (x - col0, "source x in this cutout (1-based FITS pixel)")
    primary.header["SRC_Y"] = (y - row0, "source y in this cutout (1-based FITS pixel)")
    primary.header["LTV1"] = (-col0, "cutout x = parent x + LTV1")
    primary.header["LTV2"] = (-row0, "cutout y = parent y + LTV2")
    for key, value in (header or {}).items():
        primary.header[key] = value

    def ext(data: np.ndarray, name: str) -> fits.ImageHDU:
        hdu = fits.ImageHDU(data, wcs_header.copy(), name=name)
        hdu.header["EXTTYPE"] = (name, "LSST extension type")
        return hdu

    mask_hdu = ext(cut_mask, "MASK")
    for name, bit in sorted(planes.items(), key=lambda item: item[1]):
        key = f"MP_{name}"
        mask_hdu.header[key if len(key) <= 8 else f"HIERARCH {key}"] = (bit, "mask plane bit")
    hdul = fits.HDUList([primary, ext(cut_image, "IMAGE"), mask_hdu, ext(cut_var, "VARIANCE")])
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


def make_cutouts(dia_source_ids: Sequence[int], ra: Sequence[float], dec: Sequence[float], *,
                 difference: Any = None, science: Any = None, template: Any = None,
                 size: int = CUTOUT_SIZE) -> dict[int, dict[str, bytes]]:
    """The three cutouts of each DiaSource, for :func:`~jointcal_ap.alerts.packets.build_alerts`.

    Parameters
    ----------
    dia_source_ids, ra, dec : sequences
        The sources (ra/dec in degrees).
    difference, science, template : exposure-like, optional
        Objects with ``image``, ``variance``, ``mask`` and ``wcs`` (and optionally
        ``mask_planes``), e.g. :class:`~jointcal_ap.exposure.CalibratedExposure` or a
        difference image; a missing one gives no cutout of that kind.
    size : int
        The cutout side in pixels.

    Returns
    -------
    dict
        ``diaSourceId`` → ``{"cutoutDifference": bytes, ...}``.
    """
    kinds = {"cutoutDifference": difference, "cutoutScience": science,
             "cutoutTemplate": template}
    out: dict[int, dict[str, bytes]] = {}
    for ident, r, d in zip(dia_source_ids, ra, dec, strict=True):
        cut = {}
        for name, exposure in kinds.items():
            if exposure is None:
                continue
            cut[name] = make_cutout(exposure.image, exposure.variance, exposure.mask,
                                    exposure.wcs, float(r), float(d), size=size,
                                    mask_planes=getattr(exposure, "mask_planes", None),
                                    header={"DIASRCID": int(ident)})
        out[int(ident)] = cut
    return out


def read_cutout(data: bytes) -> fits.HDUList:
    """Open a cutout's bytes as an ``astropy.io.fits.HDUList`` (in memory)."""
    return fits.HDUList.fromstring(data)
