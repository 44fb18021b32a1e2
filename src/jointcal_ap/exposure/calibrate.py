"""Applying a calibration: :func:`calibrate_exposure` and the calibrated header.

The calibration turns an :class:`~jointcal_ap.exposure.Exposure` in ADU into a
:class:`~jointcal_ap.exposure.CalibratedExposure` in nJy per pixel (variance in nJy²), with
the fitted TAN-SIP WCS in its header and the calibration summary cards (``PHOTZP`` = 31.4,
``ADUZP``, ``PHOTZPE``, ``PHC_i_j``, …).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from jointcal_ap.calibration import (
    GRID_CHUNK_ROWS,
    NJY_ZERO_POINT,
    Calibration,
    CalibrationError,
    DetectorCalibration,
)
from jointcal_ap.exposure.metadata import _ADU_KEY, _CALIB_KEY, _WCS_KEY, ExposureError, _strip
from jointcal_ap.exposure.model import CalibratedExposure, Exposure

__all__ = ["calibrate_exposure"]


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
