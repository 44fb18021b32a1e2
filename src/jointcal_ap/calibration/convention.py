"""The project's photometric convention: the one implementation of its Chebyshev calibration.

For a detector of ``NAXIS1 × NAXIS2`` pixels the calibration is a 2-D Chebyshev series
``P(x, y)`` in magnitudes with

    m_AB = −2.5·log10(flux_ADU) + P(x, y)
    flux_nJy = flux_ADU · 10^(−0.4·(P(x, y) − 31.4))

where ``x, y`` are 1-based FITS pixel coordinates, ``u = (2x − (NAXIS1 + 1)) / NAXIS1`` and
``v = (2y − (NAXIS2 + 1)) / NAXIS2`` (the pixel grid's outer edges 0.5 … NAXIS + 0.5 map to
−1 … 1), and ``P = chebval2d(u, v, c)`` with ``c[i, j]`` multiplying ``T_i(u)·T_j(v)``.
``flux_ADU`` is the total instrumental flux of the exposure (not per second).

:func:`pixel_to_chebyshev`, :func:`chebyshev_basis` and :func:`zero_point_to_njy_per_adu`
are its building blocks: :class:`~jointcal_ap.calibration.PhotometricCalibration` evaluates
them, and the joint photometric fit (:mod:`jointcal_ap.fit.photometry`) builds its design
from them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import chebyshev

__all__ = [
    "NJY_ZERO_POINT",
    "chebyshev_basis",
    "pixel_to_chebyshev",
    "zero_point_to_njy_per_adu",
]

#: AB magnitude of a flux of 1 nJy: 8.9 + 2.5·9 = 31.4.
NJY_ZERO_POINT = 31.4
_MAG_PER_LN = 2.5 / math.log(10.0)  # 1.0857: σ_m = _MAG_PER_LN · σ_f / f
_LN_PER_MAG = 0.4 * math.log(10.0)  # 0.9210: σ_f / f = _LN_PER_MAG · σ_m


def pixel_to_chebyshev(x, y, naxis1: int, naxis2: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev coordinates of 1-based pixel positions on a ``naxis1 × naxis2`` detector.

    ``u = (2x − (naxis1 + 1)) / naxis1``, ``v = (2y − (naxis2 + 1)) / naxis2``: the pixel
    grid's outer edges 0.5 … naxis + 0.5 map to −1 … 1 and its centre to 0.

    Parameters
    ----------
    x, y : array_like, pixels (1-based, FITS)
    naxis1, naxis2 : int
        Detector size in pixels.

    Returns
    -------
    u, v : ndarray (dimensionless)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return (2.0 * x - (naxis1 + 1)) / naxis1, (2.0 * y - (naxis2 + 1)) / naxis2


def chebyshev_basis(u, v, degree: tuple[int, int]) -> np.ndarray:
    """``T_i(u)·T_j(v)`` for every coefficient ``c[i, j]``, in ``c.ravel()`` (C) order.

    So ``chebyshev_basis(u, v, (nx, ny)) @ c.ravel() == chebval2d(u, v, c)`` for
    coefficients of shape (nx + 1, ny + 1), and a covariance of ``c.ravel()`` propagates as
    ``B @ cov @ B.T``.

    Parameters
    ----------
    u, v : array_like
        Chebyshev coordinates (:func:`pixel_to_chebyshev`), broadcast together.
    degree : (int, int)
        Degrees (in u, in v).

    Returns
    -------
    ndarray, shape ``broadcast(u, v).shape + ((nx + 1)·(ny + 1),)``
    """
    nx, ny = degree
    u, v = np.broadcast_arrays(np.asarray(u, dtype=float), np.asarray(v, dtype=float))
    return chebyshev.chebvander2d(u, v, [nx, ny]).reshape(*u.shape, (nx + 1) * (ny + 1))


def zero_point_to_njy_per_adu(zero_point) -> np.ndarray:
    """nJy per ADU of total flux for a calibration ``P`` (mag): ``10^(−0.4·(P − 31.4))``."""
    return 10.0 ** (-0.4 * (np.asarray(zero_point, dtype=float) - NJY_ZERO_POINT))

