"""The shared per-visit × detector photometric calibration: a 2-D Chebyshev series in magnitudes.

For one CCD of ``naxis1 × naxis2`` pixels the calibration is ``P(x, y)`` (mag) with::

    m_AB     = −2.5 log10(flux_ADU) + P(x, y)
    flux_nJy = flux_ADU · 10^(−0.4 (P(x, y) − 31.4))

``x, y`` are 1-based FITS pixels (SExtractor's ``XWIN_IMAGE``), ``flux_ADU`` the total
instrumental flux of the exposure, and ``P = chebval2d(u, v, c)`` with ``c[i, j]``
multiplying ``T_i(u)·T_j(v)``, ``u = (2x − (naxis1 + 1))/naxis1`` and
``v = (2y − (naxis2 + 1))/naxis2`` (the pixel grid edges 0.5 … naxis + 0.5 map to −1 … 1).
Its 1σ error is ``zero_point_err`` (mag) at the detector centre, optionally with the
full covariance of ``c`` (row-major over ``c.ravel()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev

__all__ = [
    "AB_NJY_ZERO_POINT",
    "PhotoCalibration",
    "adu_to_nanojansky",
    "chebyshev_design",
    "chebyshev_terms",
    "chebyshev_uv",
    "evaluate_calibration",
]

#: AB magnitude of 1 nJy: m_AB = −2.5 log10(f / 1 nJy) + 31.4.
AB_NJY_ZERO_POINT = 31.4


def chebyshev_uv(naxis1: int, naxis2: int, x, y) -> tuple[np.ndarray, np.ndarray]:
    """1-based pixels → Chebyshev coordinates (u, v), −1 … 1 over the pixel grid ``0.5 … naxis + 0.5``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (2.0 * x - (naxis1 + 1)) / naxis1, (2.0 * y - (naxis2 + 1)) / naxis2


def chebyshev_terms(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j) of ``T_i(u)·T_j(v)`` with total degree ``i + j <= degree``, in ``c.ravel()`` order."""
    i, j = np.indices((degree + 1, degree + 1))
    keep = (i + j <= degree).ravel()
    return i.ravel()[keep], j.ravel()[keep]


def chebyshev_design(u, v, degree: int) -> np.ndarray:
    """``T_i(u)·T_j(v)`` for the terms of :func:`chebyshev_terms`: shape (n, n_terms)."""
    full = chebyshev.chebvander2d(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64),
                                  [degree, degree])
    i, j = chebyshev_terms(degree)
    return full[..., i * (degree + 1) + j]


def evaluate_calibration(coefficients, naxis1: int, naxis2: int, x, y) -> np.ndarray:
    """P(x, y) in mag for Chebyshev ``coefficients`` (k × k) of a CCD of ``naxis1 × naxis2`` pixels."""
    u, v = chebyshev_uv(naxis1, naxis2, x, y)
    return chebyshev.chebval2d(u, v, np.asarray(coefficients, dtype=np.float64))


def adu_to_nanojansky(flux_adu, calibration_mag) -> np.ndarray:
    """``flux_ADU · 10^(−0.4 (P − 31.4))``: instrumental flux (ADU) → nJy, given P (mag)."""
    return np.asarray(flux_adu, dtype=np.float64) * 10.0 ** (-0.4 * (np.asarray(calibration_mag) - AB_NJY_ZERO_POINT))


@dataclass(frozen=True)
class PhotoCalibration:
    """The photometric calibration of one visit × detector, in the shared convention.

    Attributes
    ----------
    coefficients : ndarray, shape (k, k)
        Chebyshev coefficients (mag); ``c[i, j]`` multiplies ``T_i(u)·T_j(v)``.
    naxis1, naxis2 : int
        The CCD size in pixels (defines u, v).
    zero_point_err : float
        1σ error of P at the detector centre, mag.
    covariance : ndarray, shape (k², k²), optional
        Covariance of ``coefficients.ravel()`` (mag²).
    """

    coefficients: np.ndarray
    naxis1: int
    naxis2: int
    zero_point_err: float = np.nan
    covariance: np.ndarray | None = None

    def __post_init__(self) -> None:
        c = np.asarray(self.coefficients, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] != c.shape[1]:
            raise ValueError(f"PhotoCalibration.coefficients must be a square matrix, got shape {c.shape}")
        if self.naxis1 < 1 or self.naxis2 < 1:
            raise ValueError(f"PhotoCalibration: CCD size must be positive, got {self.naxis1}×{self.naxis2}")
        object.__setattr__(self, "coefficients", c)
        if self.covariance is not None:
            cov = np.asarray(self.covariance, dtype=np.float64)
            if cov.shape != (c.size, c.size):
                raise ValueError(f"PhotoCalibration.covariance has shape {cov.shape}, expected {(c.size, c.size)}")
            object.__setattr__(self, "covariance", cov)

    def evaluate(self, x, y) -> np.ndarray:
        """P(x, y), mag, at 1-based pixels."""
        return evaluate_calibration(self.coefficients, self.naxis1, self.naxis2, x, y)

    def error(self, x, y) -> np.ndarray:
        """1σ error of P(x, y) from :attr:`covariance` (mag); ``zero_point_err`` everywhere without it."""
        x = np.asarray(x, dtype=np.float64)
        if self.covariance is None:
            return np.full(x.shape, self.zero_point_err)
        k = self.coefficients.shape[0] - 1
        u, v = chebyshev_uv(self.naxis1, self.naxis2, x, y)
        design = chebyshev.chebvander2d(u, v, [k, k])
        return np.sqrt(np.maximum(np.einsum("...a,ab,...b->...", design, self.covariance, design), 0.0))

    def to_nanojansky(self, flux_adu, x, y) -> np.ndarray:
        """Instrumental flux (ADU, total for the exposure) at (x, y) → nJy."""
        return adu_to_nanojansky(flux_adu, self.evaluate(x, y))

    def to_magnitude(self, flux_adu, x, y) -> np.ndarray:
        """Instrumental flux (ADU) at (x, y) → AB magnitude (NaN where the flux is not positive)."""
        flux = np.asarray(flux_adu, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = -2.5 * np.log10(np.where(flux > 0, flux, np.nan))
        return m + self.evaluate(x, y)
