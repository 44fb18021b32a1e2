"""The calibration product: per visit × detector, a fitted WCS and a photometric model.

The joint fit writes one :class:`DetectorCalibration` per visit × detector, collected in a
:class:`Calibration` and saved with :meth:`Calibration.write`;
:func:`jointcal_ap.exposure.calibrate_exposure` applies one to an exposure.

Photometry follows the project's convention. For a detector of ``NAXIS1 × NAXIS2`` pixels the
calibration is a 2-D Chebyshev series ``P(x, y)`` in magnitudes with

    m_AB = −2.5·log10(flux_ADU) + P(x, y)
    flux_nJy = flux_ADU · 10^(−0.4·(P(x, y) − 31.4))

where ``x, y`` are 1-based FITS pixel coordinates, ``u = (2x − (NAXIS1 + 1)) / NAXIS1`` and
``v = (2y − (NAXIS2 + 1)) / NAXIS2`` (see :mod:`jointcal_ap.calibration.convention`).

>>> import numpy as np
>>> from jointcal_ap.calibration import PhotometricCalibration
>>> phot = PhotometricCalibration.constant(31.4, naxis1=2048, naxis2=4096, zero_point_err=0.01)
>>> float(phot.njy_per_adu(1024.5, 2048.5))       # P = 31.4: one ADU is one nJy
1.0
>>> flux, err = phot.flux_to_njy(1000.0, 1024.5, 2048.5, flux_err=10.0)
>>> round(float(err), 3)              # 10 nJy ⊕ 1000 nJy × 0.4·ln(10)·0.01 mag
13.595

Import everything from ``jointcal_ap.calibration``; the modules are one concept each, and
each imports only those above it in this list:

- :mod:`~jointcal_ap.calibration.errors`: :class:`CalibrationError`;
- :mod:`~jointcal_ap.calibration.convention`: the Chebyshev convention, the one
  implementation of it (:func:`pixel_to_chebyshev`, :func:`chebyshev_basis`,
  :func:`zero_point_to_njy_per_adu`, :data:`NJY_ZERO_POINT`); the joint photometric fit
  (:mod:`jointcal_ap.fit.photometry`) builds its design from them;
- :mod:`~jointcal_ap.calibration.disk_format`: the calibration directory's files
  (``calibration.json``, ``wcs.fits``, ``provenance.json``: their layout is described
  there), written and read as plain values, and the text form of a FITS header
  (:func:`header_to_text`, :func:`header_from_text`, :func:`make_wcs`);
- :mod:`~jointcal_ap.calibration.model`: :class:`PhotometricCalibration`,
  :class:`DetectorCalibration`, :class:`Calibration` (whose ``write``/``read`` go through
  ``disk_format``).
"""

from __future__ import annotations

from jointcal_ap.calibration.convention import (
    NJY_ZERO_POINT,
    chebyshev_basis,
    pixel_to_chebyshev,
    zero_point_to_njy_per_adu,
)
from jointcal_ap.calibration.disk_format import (
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    INDEX_NAME,
    PHOTOMETRY_FORMAT,
    PROVENANCE_NAME,
    WCS_NAME,
    header_from_text,
    header_to_text,
    make_wcs,
)
from jointcal_ap.calibration.errors import CalibrationError
from jointcal_ap.calibration.model import (
    GRID_CHUNK_ROWS,
    Calibration,
    DetectorCalibration,
    PhotometricCalibration,
)

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "GRID_CHUNK_ROWS",
    "INDEX_NAME",
    "NJY_ZERO_POINT",
    "PHOTOMETRY_FORMAT",
    "PROVENANCE_NAME",
    "WCS_NAME",
    "Calibration",
    "CalibrationError",
    "DetectorCalibration",
    "PhotometricCalibration",
    "chebyshev_basis",
    "header_from_text",
    "header_to_text",
    "make_wcs",
    "pixel_to_chebyshev",
    "zero_point_to_njy_per_adu",
]
