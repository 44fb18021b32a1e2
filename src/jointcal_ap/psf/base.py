"""The PSF model contract, an analytic Gaussian PSF, and PSF FITS I/O.

Every PSF model (fitted from stars, analytic, or a coadd's) is a :class:`PsfModel`. Pixel
coordinates are **1-based FITS pixels**, as for :class:`~jointcal_ap.exposure.Exposure`: the
centre of ``image[0, 0]`` is (x, y) = (1, 1).

Two ways to get an image of the PSF at (x, y):

- :meth:`PsfModel.kernel_image`: a normalised (sum 1) odd-sized image centred on its middle
  pixel, for convolution (the PSF *shape* at that place);
- :meth:`PsfModel.stamps`: the PSF *realised* at sub-pixel positions, vectorised over many
  positions, each on the pixel grid of the image (for PSF photometry, injection, fitting).

FITS: :meth:`PsfModel.to_hdus` gives HDUs whose first header carries ``PSFTYPE`` (the
model's :attr:`PsfModel.kind`); :func:`psf_from_hdus` reads them back through a registry of
kinds (:func:`register_psf_kind`), so a plugin can add its own models.

>>> from jointcal_ap.psf import GaussianPsf
>>> psf = GaussianPsf.from_fwhm(3.0)
>>> k = psf.kernel_image(100.0, 100.0)
>>> k.shape, round(float(k.sum()), 6), round(psf.fwhm(100.0, 100.0), 3)
((15, 15), 1.0, 3.0)
>>> stamps, x0, y0 = psf.stamps([10.3], [20.7], size=15)
>>> stamps.shape, int(x0[0]), int(y0[0])           # stamp pixel [0, 0] is (x0, y0)
((1, 15, 15), 3, 14)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "FWHM_PER_SIGMA",
    "GaussianPsf",
    "PsfError",
    "PsfModel",
    "psf_from_hdus",
    "register_psf_kind",
]

#: FWHM / σ of a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_KINDS: dict[str, Callable[[Sequence[Any]], PsfModel]] = {}


class PsfError(ValueError):
    """A PSF model cannot be built, evaluated or read; the message says which and why."""


def register_psf_kind(kind: str, reader: Callable[[Sequence[Any]], PsfModel]) -> None:
    """Make :func:`psf_from_hdus` read HDUs whose ``PSFTYPE`` is ``kind`` with ``reader``."""
    if not kind or not isinstance(kind, str):
        raise ValueError(f"PSF kind must be a non-empty string, got {kind!r}")
    _KINDS[kind] = reader


def psf_from_hdus(hdus: Sequence[Any], where: str = "") -> PsfModel:
    """Read a PSF model from the HDUs :meth:`PsfModel.to_hdus` wrote (first: ``PSFTYPE``)."""
    prefix = f"{where}: " if where else ""
    if not hdus:
        raise PsfError(f"{prefix}no PSF HDU")
    kind = hdus[0].header.get("PSFTYPE")
    if kind not in _KINDS:
        raise PsfError(f"{prefix}unknown PSFTYPE {kind!r}; known: {sorted(_KINDS)}")
    try:
        return _KINDS[kind](hdus)
    except PsfError as exc:
        raise PsfError(f"{prefix}{exc}") from None
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise PsfError(f"{prefix}PSF HDU of kind {kind!r} is malformed: {exc}") from None


def _odd(size: int) -> int:
    size = int(size)
    return size if size % 2 else size + 1


class PsfModel(ABC):
    """A PSF that may vary over the detector (1-based pixel coordinates).

    Subclasses implement :meth:`kernel_image`, :meth:`moments` and :meth:`to_hdus`, and
    usually a faster :meth:`stamps` than the default (which shifts kernel images).
    """

    #: Written as ``PSFTYPE`` by :meth:`to_hdus`; the key of :func:`register_psf_kind`.
    kind: ClassVar[str] = ""

    @abstractmethod
    def kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """The PSF at (x, y) as a normalised (sum 1), odd-sized image centred on its middle
        pixel; ``size`` (odd; rounded up) defaults to :meth:`default_size`."""

    @abstractmethod
    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        """Second moments ``(ixx, iyy, ixy)`` of the PSF at (x, y), pixels²."""

    @abstractmethod
    def to_hdus(self) -> list[Any]:
        """FITS HDUs (the first is an ``ImageHDU`` or ``BinTableHDU`` whose header has
        ``PSFTYPE = kind``) from which :func:`psf_from_hdus` rebuilds an equal model."""

    # ------------------------------------------------------------------ derived
    def sigma(self, x: float, y: float) -> float:
        """The Gaussian-equivalent σ at (x, y), pixels: √((ixx + iyy)/2)."""
        ixx, iyy, _ = self.moments(x, y)
        return math.sqrt(0.5 * (ixx + iyy))

    def fwhm(self, x: float, y: float) -> float:
        """The Gaussian-equivalent FWHM at (x, y), pixels."""
        return FWHM_PER_SIGMA * self.sigma(x, y)

    def default_size(self, x: float | None = None, y: float | None = None) -> int:
        """An odd stamp size holding the PSF out to ≈ 5.3σ (min 11, max 75 pixels)."""
        sigma = self.sigma(1.0 if x is None else x, 1.0 if y is None else y)
        return _odd(min(max(2 * math.ceil(5.3 * sigma) + 1, 11), 75))

    def effective_area(self, x: float, y: float) -> float:
        """1 / Σ PSF²  (pixels): the noise-equivalent area for PSF photometry."""
        k = self.kernel_image(x, y)
        return float(1.0 / np.sum(k * k))

    def stamps(self, x: Any, y: Any, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The PSF realised at each (x, y) on the image's pixel grid.

        Parameters
        ----------
        x, y : array-like, shape (n,)
            1-based pixel positions (sub-pixel).
        size : int, optional
            Odd stamp size (default :meth:`default_size` at the first position).

        Returns
        -------
        stamps : ndarray (n, size, size)
            ``stamps[k, j, i]`` is the PSF centred at (x[k], y[k]) integrated over pixel
            (x0[k] + i, y0[k] + j); each sums to ≈ 1 (less what falls outside).
        x0, y0 : ndarray of int64 (n,)
            1-based pixel of each stamp's ``[0, 0]``: ``round(x) - size // 2``.

        The default shifts :meth:`kernel_image` by the sub-pixel offset with a
        band-limited (Fourier) shift; analytic models override it.
        """
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        size = _odd(size or self.default_size(float(x[0]) if len(x) else None,
                                              float(y[0]) if len(y) else None))
        half = size // 2
        xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        out = np.empty((len(x), size, size))
        freq = np.fft.fftfreq(size)
        for k in range(len(x)):
            kern = self.kernel_image(float(x[k]), float(y[k]), size)
            dx, dy = x[k] - xc[k], y[k] - yc[k]
            phase = np.exp(-2j * np.pi * (freq[None, :] * dx + freq[:, None] * dy))
            shifted = np.fft.ifft2(np.fft.fft2(np.fft.ifftshift(kern)) * phase).real
            out[k] = np.fft.fftshift(shifted)
        return out, xc - half, yc - half


class GaussianPsf(PsfModel):
    """A Gaussian PSF, the same everywhere, integrated over pixels.

    Parameters
    ----------
    ixx, iyy : float
        Second moments in x and y, pixels² (σx², σy²).
    ixy : float
        Cross moment, pixels² (|ixy| < √(ixx·iyy)).
    """

    kind = "gaussian"

    def __init__(self, ixx: float, iyy: float | None = None, ixy: float = 0.0):
        iyy = ixx if iyy is None else iyy
        values = [float(v) for v in (ixx, iyy, ixy)]
        if not all(math.isfinite(v) for v in values) or values[0] <= 0 or values[1] <= 0 \
                or values[2] ** 2 >= values[0] * values[1]:
            raise PsfError(f"Gaussian PSF moments must be finite with ixx, iyy > 0 and "
                           f"ixy² < ixx·iyy; got ixx={ixx}, iyy={iyy}, ixy={ixy}")
        self.ixx, self.iyy, self.ixy = values

    @classmethod
    def from_fwhm(cls, fwhm: float) -> GaussianPsf:
        """A round Gaussian of this FWHM (pixels)."""
        if not (math.isfinite(fwhm) and fwhm > 0):
            raise PsfError(f"FWHM must be a positive number of pixels, got {fwhm!r}")
        sigma = fwhm / FWHM_PER_SIGMA
        return cls(sigma * sigma)

    def __repr__(self) -> str:
        return f"GaussianPsf(ixx={self.ixx:.4g}, iyy={self.iyy:.4g}, ixy={self.ixy:.4g})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GaussianPsf) and (self.ixx, self.iyy, self.ixy) == (
            other.ixx, other.iyy, other.ixy)

    def __hash__(self) -> int:
        return hash((self.ixx, self.iyy, self.ixy))

    @property
    def is_round(self) -> bool:
        return self.ixx == self.iyy and self.ixy == 0.0

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        return self.ixx, self.iyy, self.ixy

    def kernel_image(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        size = _odd(size or self.default_size())
        stamp = self._pixelated(np.zeros(1), np.zeros(1), size)[0]
        return stamp / stamp.sum()

    def stamps(self, x: Any, y: Any, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        size = _odd(size or self.default_size())
        xc, yc = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        return self._pixelated(x - xc, y - yc, size), xc - size // 2, yc - size // 2

    def _pixelated(self, dx: np.ndarray, dy: np.ndarray, size: int) -> np.ndarray:
        """(n, size, size): the PSF centred at (dx, dy) from the middle pixel's centre,
        integrated over pixels (exact for a round PSF; 5×5 sub-sampling otherwise)."""
        from scipy.special import erf

        half = size // 2
        grid = np.arange(-half, half + 1, dtype=float)
        if self.ixy == 0.0:
            def axis(d: np.ndarray, var: float) -> np.ndarray:
                s = math.sqrt(2.0 * var)
                lo = (grid[None, :] - 0.5 - d[:, None]) / s
                return 0.5 * (erf(lo + 1.0 / s) - erf(lo))
            return axis(dy, self.iyy)[:, :, None] * axis(dx, self.ixx)[:, None, :]
        sub = (np.arange(5) - 2) / 5.0
        gx = (grid[:, None] + sub[None, :]).ravel()
        det = self.ixx * self.iyy - self.ixy ** 2
        ax, ay, axy = self.iyy / det, self.ixx / det, -self.ixy / det
        u = gx[None, None, :] - dx[:, None, None]
        v = gx[None, :, None] - dy[:, None, None]
        val = np.exp(-0.5 * (ax * u * u + ay * v * v + 2 * axy * u * v))
        val /= 2 * math.pi * math.sqrt(det) * 25.0
        return val.reshape(len(dx), size, 5, size, 5).sum(axis=(2, 4))

    def to_hdus(self) -> list[Any]:
        from astropy.io import fits

        hdu = fits.ImageHDU(name="PSF")
        hdu.header["PSFTYPE"] = (self.kind, "jointcal_ap PSF model kind")
        hdu.header["PSF_IXX"] = (self.ixx, "[pix2] second moment in x")
        hdu.header["PSF_IYY"] = (self.iyy, "[pix2] second moment in y")
        hdu.header["PSF_IXY"] = (self.ixy, "[pix2] cross moment")
        return [hdu]

    @classmethod
    def from_hdus(cls, hdus: Sequence[Any]) -> GaussianPsf:
        header = hdus[0].header
        return cls(float(header["PSF_IXX"]), float(header["PSF_IYY"]), float(header["PSF_IXY"]))


register_psf_kind(GaussianPsf.kind, GaussianPsf.from_hdus)
