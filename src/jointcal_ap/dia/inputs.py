"""The plain containers the DIA calls take: an image with its planes and PSF, the visit, the WCS.

A stage passes whatever it holds; these functions turn it into the containers:

- :func:`as_dia_image`: an :class:`~jointcal_ap.exposure.Exposure`, a
  :class:`~jointcal_ap.exposure.CalibratedExposure`, a difference image (anything with
  ``image``, ``variance``, and optionally ``mask``, ``mask_planes``, ``psf``) or a
  :class:`DiaImage` → :class:`DiaImage`;
- :func:`as_visit_info`: a :class:`VisitInfo`, an
  :class:`~jointcal_ap.exposure.ExposureMetadata` (or anything with its ``visit``,
  ``detector``, ``filter``, ``mjd_tai``, ``exptime``), an exposure (its ``metadata``) or a
  mapping with :class:`VisitInfo`'s field names → :class:`VisitInfo`;
- :func:`as_sky_map`: an ``astropy.wcs.WCS``, a
  :class:`~jointcal_ap.exposure.CalibratedExposure` (its fitted WCS), an exposure (its
  header WCS) or any object with ``pixel_to_sky`` and ``sky_to_pixel`` → a :class:`SkyMap`.

Pixel conventions: these containers hold arrays; ``image[j, i]`` is the pixel whose centre
is Rubin's 0-based (x, y) = (i, j) and the project's 1-based FITS (x, y) = (i + 1, j + 1).
A :class:`SkyMap` and a :class:`~jointcal_ap.psf.PsfModel` take **1-based** pixels (the
project's convention); the DIA tables (DiaSource ``x``, ``y``) are **0-based** (Rubin's).
The DIA calls convert at the boundary.

>>> import numpy as np
>>> from jointcal_ap.psf import GaussianPsf
>>> im = DiaImage(np.zeros((50, 60)), np.ones((50, 60)), psf=GaussianPsf.from_fwhm(3.0))
>>> im.shape, im.bits("BAD", "SAT", "NOT_A_PLANE")
((50, 60), 3)
>>> as_visit_info({"visit": 7, "detector": 3, "band": "r", "midpointMjdTai": 60000.5,
...                "exposureTime": 30.0}).visit
7
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jointcal_ap.dia.errors import DiaError
from jointcal_ap.exposure import DEFAULT_MASK_PLANES
from jointcal_ap.psf import PsfModel

__all__ = [
    "DiaImage",
    "SkyMap",
    "VisitInfo",
    "WcsSkyMap",
    "as_dia_image",
    "as_sky_map",
    "as_visit_info",
    "local_jacobian",
]



@dataclass(frozen=True, eq=False)
class DiaImage:
    """One image on the science pixel grid: pixels, variance, mask and PSF.

    Attributes
    ----------
    image : ndarray (ny, nx)
        Pixel values; nJy per pixel for calibrated and difference images.
    variance : ndarray (ny, nx)
        Per-pixel variance (nJy²). NaN or ≤ 0 only where a bad mask plane is set.
    mask : ndarray of int (ny, nx), or None
        Bit mask (None: all zero).
    mask_planes : mapping str → int
        Plane name → bit number (default LSST's,
        :data:`jointcal_ap.exposure.DEFAULT_MASK_PLANES`).
    psf : PsfModel or None
        The image's PSF model (1-based pixel coordinates).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray | None = None
    mask_planes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))
    psf: PsfModel | None = None

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        variance = np.asarray(self.variance)
        if image.ndim != 2:
            raise DiaError(f"DiaImage: image must be 2-D, got shape {image.shape}")
        if variance.shape != image.shape:
            raise DiaError(f"DiaImage: variance has shape {variance.shape}, the image "
                           f"{image.shape}; they must match")
        mask = np.zeros(image.shape, np.int32) if self.mask is None else np.asarray(self.mask)
        if mask.shape != image.shape or mask.dtype.kind not in "iu":
            raise DiaError(f"DiaImage: mask must be an integer array of the image's shape "
                           f"{image.shape}, got {mask.dtype} {mask.shape}")
        if self.psf is not None and not isinstance(self.psf, PsfModel):
            raise DiaError(f"DiaImage: psf must be a jointcal_ap.psf.PsfModel, got "
                           f"{type(self.psf).__name__}")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "variance", variance)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "mask_planes", dict(self.mask_planes))

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return self.image.shape  # type: ignore[return-value]

    def bits(self, *names: str) -> int:
        """The OR of the bits of the named planes; planes the mask does not have add nothing."""
        value = 0
        for name in names:
            if name in self.mask_planes:
                value |= 1 << int(self.mask_planes[name])
        return value


def as_dia_image(obj: Any, role: str, *, require_psf: bool = True) -> DiaImage:
    """A :class:`DiaImage` from an exposure, a difference image or a DiaImage.

    Parameters
    ----------
    obj : object
        Anything with ``image`` and ``variance`` arrays (and optionally ``mask``,
        ``mask_planes``, ``psf``).
    role : str
        What the image is (``"difference"``, ``"science"``, ``"template"``), for messages.
    require_psf : bool
        Raise :class:`DiaError` when the image has no PSF model.
    """
    if isinstance(obj, DiaImage):
        image = obj
    elif hasattr(obj, "image") and hasattr(obj, "variance"):
        image = DiaImage(obj.image, obj.variance, getattr(obj, "mask", None),
                         getattr(obj, "mask_planes", None) or dict(DEFAULT_MASK_PLANES),
                         getattr(obj, "psf", None))
    else:
        raise DiaError(f"{role} image: expected an exposure or DiaImage (with image and "
                       f"variance arrays), got {type(obj).__name__}")
    if require_psf and image.psf is None:
        raise DiaError(f"{role} image has no PSF model (psf is None); measurement needs "
                       f"one: attach a jointcal_ap.psf.PsfModel to the {role} exposure")
    return image


@dataclass(frozen=True)
class VisitInfo:
    """What identifies the visit × detector a DIA table belongs to (Rubin's names).

    Attributes
    ----------
    visit : int
    detector : int
    band : str
    midpointMjdTai : float
        Mid-exposure time, MJD in TAI.
    exposureTime : float
        Seconds.
    """

    visit: int
    detector: int
    band: str
    midpointMjdTai: float
    exposureTime: float

    def __post_init__(self) -> None:
        for name in ("visit", "detector"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise DiaError(f"VisitInfo: {name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("midpointMjdTai", "exposureTime"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise DiaError(f"VisitInfo: {name} must be finite, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "band", str(self.band))


def as_visit_info(obj: Any) -> VisitInfo:
    """A :class:`VisitInfo` from a VisitInfo, an ExposureMetadata, an exposure or a mapping."""
    if isinstance(obj, VisitInfo):
        return obj
    if isinstance(obj, Mapping):
        try:
            return VisitInfo(obj["visit"], obj["detector"], obj["band"], obj["midpointMjdTai"],
                             obj["exposureTime"])
        except KeyError as exc:
            raise DiaError(f"visit info mapping lacks {exc}; it needs visit, detector, band, "
                           f"midpointMjdTai, exposureTime") from None
    meta = getattr(obj, "metadata", obj)
    if all(hasattr(meta, a) for a in ("visit", "detector", "filter", "mjd_tai", "exptime")):
        return VisitInfo(meta.visit, meta.detector, meta.filter, meta.mjd_tai, meta.exptime)
    raise DiaError(f"visit info: expected a VisitInfo, an ExposureMetadata, an exposure or a "
                   f"mapping, got {type(obj).__name__}")


@runtime_checkable
class SkyMap(Protocol):
    """Pixel ↔ sky of one detector, **1-based** pixels and ICRS degrees (as
    :meth:`jointcal_ap.exposure.CalibratedExposure.pixel_to_sky`)."""

    def pixel_to_sky(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]: ...

    def sky_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]: ...


class WcsSkyMap:
    """A :class:`SkyMap` from an ``astropy.wcs.WCS`` (SIP included)."""

    def __init__(self, wcs: Any):
        self.wcs = wcs

    def pixel_to_sky(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 1)
        return np.asarray(ra) % 360.0, np.asarray(dec)

    def sky_to_pixel(self, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 1,
                                      tolerance=1e-9, maxiter=50, quiet=True)
        return np.asarray(x), np.asarray(y)


def as_sky_map(obj: Any, role: str = "wcs") -> SkyMap:
    """A :class:`SkyMap` from a WCS, a calibrated exposure, an exposure or a SkyMap."""
    from astropy.wcs import WCS

    if isinstance(obj, WCS):
        return WcsSkyMap(obj)
    if callable(getattr(obj, "pixel_to_sky", None)) and callable(getattr(obj, "sky_to_pixel", None)):
        return obj
    wcs = getattr(obj, "wcs", None)
    if isinstance(wcs, WCS):
        return WcsSkyMap(wcs)
    raise DiaError(f"{role}: expected an astropy WCS, a calibrated exposure or an object with "
                   f"pixel_to_sky/sky_to_pixel (1-based pixels), got {type(obj).__name__}")


def local_jacobian(sky: SkyMap, x0: np.ndarray, y0: np.ndarray, step: float = 0.5
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sky positions and the local Jacobian of 0-based pixel positions.

    Returns
    -------
    ra, dec : ndarray (n,)
        Degrees.
    jac : ndarray (n, 2, 2)
        ∂(ξ, η)/∂(x, y) in degrees per pixel, where ξ = Δα·cos δ points east and η = Δδ
        north (central differences of ``step`` pixels).
    """
    x0 = np.asarray(x0, float)
    y0 = np.asarray(y0, float)
    n = len(x0)
    xs = np.concatenate([x0, x0 + step, x0 - step, x0, x0]) + 1.0
    ys = np.concatenate([y0, y0, y0, y0 + step, y0 - step]) + 1.0
    ra, dec = (np.asarray(a, float) for a in sky.pixel_to_sky(xs, ys))
    ra = ra.reshape(5, n)
    dec = dec.reshape(5, n)
    cosd = np.cos(np.radians(dec[0]))

    def diff(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        dra = (ra[a] - ra[b] + 180.0) % 360.0 - 180.0
        return dra * cosd / (2 * step), (dec[a] - dec[b]) / (2 * step)

    jac = np.empty((n, 2, 2))
    jac[:, 0, 0], jac[:, 1, 0] = diff(1, 2)
    jac[:, 0, 1], jac[:, 1, 1] = diff(3, 4)
    return ra[0] % 360.0, dec[0], jac
