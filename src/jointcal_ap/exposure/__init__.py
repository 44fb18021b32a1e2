"""Exposures and calibrated exposures: the data model, FITS I/O, and :func:`calibrate_exposure`.

An :class:`Exposure` is one visit × detector as the camera delivered it: an image in ADU, a
bit mask with named planes, a variance plane (ADU²), its FITS header (including the initial
WCS) and :class:`ExposureMetadata`. :func:`calibrate_exposure` applies the visit × detector's
:class:`~jointcal_ap.calibration.DetectorCalibration` and returns a :class:`CalibratedExposure`:
the image in nJy per pixel, the variance in nJy², the mask carried over and the fitted WCS.

>>> import numpy as np
>>> from astropy.io import fits
>>> from jointcal_ap.calibration import Calibration, DetectorCalibration, PhotometricCalibration
>>> from jointcal_ap.exposure import Exposure, ExposureMetadata, calibrate_exposure
>>> wcs = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
...                    "CRVAL2": 2.0, "CRPIX1": 50.5, "CRPIX2": 40.5,
...                    "CD1_1": -5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})
>>> meta = ExposureMetadata(visit=1, detector=0, filter="r", mjd_tai=60310.2, exptime=30.0)
>>> exposure = Exposure(np.full((80, 100), 10.0, np.float32), None,
...                     np.full((80, 100), 10.0, np.float32), wcs, meta)
>>> phot = PhotometricCalibration.constant(31.4 + 2.5, 100, 80, zero_point_err=0.01)  # 1 ADU = 0.1 nJy
>>> calibration = Calibration([DetectorCalibration(1, 0, 100, 80, wcs, phot)])
>>> calexp = calibrate_exposure(exposure, calibration)
>>> round(float(calexp.image[0, 0]), 6), round(float(calexp.variance[0, 0]), 6)   # nJy, nJy²
(1.0, 0.1)

File layouts (:func:`read_exposure` tells them apart; :meth:`Exposure.write` writes both):

- **LSST-style multi-extension** (the default): an empty primary HDU holding the metadata
  cards, then ``IMAGE`` (float32), ``MASK`` (int32; one ``MP_<PLANE> = bit`` card per mask
  plane, ``HIERARCH`` for names longer than 5 characters) and ``VARIANCE`` (float32)
  extensions, each with ``EXTTYPE`` = its name, ``INHERIT = T`` and the WCS cards.
- **A single image HDU** (e.g. straight from a camera): the variance is the ``variance=``
  argument of :func:`read_exposure`, or is estimated from the ``GAIN`` card (e⁻/ADU; with
  ``RDNOISE`` in e⁻ if present) as ``max(image, 0)/GAIN + (RDNOISE/GAIN)²``. Writing this
  layout keeps only the image and header.

A :class:`CalibratedExposure` is written as the LSST layout with ``BUNIT = 'nJy'``, the fitted
TAN-SIP WCS and the calibration summary cards (``PHOTZP`` = 31.4, ``ADUZP``, ``PHOTZPE``, ``PHC_i_j``) in the
``IMAGE`` header, plus a one-row ``CALIB`` table that holds the
:class:`~jointcal_ap.calibration.DetectorCalibration` exactly.

Pixel coordinates are **1-based** FITS pixels throughout (the centre of the first pixel is
(1, 1)), as SExtractor's ``XWIN_IMAGE`` and the fit; array ``image[r, c]`` is pixel
(x, y) = (c + 1, r + 1). Sky coordinates are ICRS degrees.

Import everything from ``jointcal_ap.exposure``; the modules are one concept each, and each
imports only those above it in this list:

- :mod:`~jointcal_ap.exposure.metadata`: :class:`ExposureMetadata` (the ``VISIT`` …
  ``MJD-AVG`` cards), :class:`ExposureError`, :data:`DEFAULT_MASK_PLANES` and the header
  card rules (which keywords are structural, metadata, WCS, calibration summary, ADU-only);
- :mod:`~jointcal_ap.exposure.fits_io`: the FITS encoding that ``write`` uses and the
  decoding that the readers use, in plain values (arrays, headers, dicts);
- :mod:`~jointcal_ap.exposure.model`: :class:`Exposure` and :class:`CalibratedExposure`
  with their validation, :func:`read_exposure` and :func:`read_calibrated_exposure`;
- :mod:`~jointcal_ap.exposure.calibrate`: :func:`calibrate_exposure` and the calibrated
  header.
"""

from __future__ import annotations

from jointcal_ap.exposure.calibrate import calibrate_exposure
from jointcal_ap.exposure.fits_io import split_fits_selector
from jointcal_ap.exposure.metadata import DEFAULT_MASK_PLANES, ExposureError, ExposureMetadata
from jointcal_ap.exposure.model import (
    CalibratedExposure,
    Exposure,
    read_calibrated_exposure,
    read_exposure,
)

__all__ = [
    "DEFAULT_MASK_PLANES",
    "CalibratedExposure",
    "Exposure",
    "ExposureError",
    "ExposureMetadata",
    "calibrate_exposure",
    "read_calibrated_exposure",
    "read_exposure",
    "split_fits_selector",
]
