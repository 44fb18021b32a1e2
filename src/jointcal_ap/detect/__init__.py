"""Single-frame detection and measurement of point sources: the fitter's input from an image.

:func:`detect_sources` does what SExtractor does for SCAMP, in numpy and scipy:
a mesh-based sigma-clipped background, a matched-filter detection, windowed
(Gaussian-weighted, iterative) centroids with their covariance from the variance
plane, aperture fluxes, and SExtractor-like flags. :func:`catalog_from_image` turns
an image into the rows of the fitter's ``sources.parquet``
(:mod:`jointcal_ap.fit.io`). See ``docs/detect.md`` for the algorithm.

The package imports only numpy, scipy and pyarrow, so that it stays light (it does
not load the fitter or JAX). Import everything from ``jointcal_ap.detect``; the modules
are one concept each, and each imports only those above it in this list:

- :mod:`~jointcal_ap.detect.options`: :class:`DetectOptions`, the mask bits
  (:data:`MASK_BITS`), source flags (:data:`FLAG_BITS`), the per-source
  :data:`COLUMNS` and :class:`DetectionError`;
- :mod:`~jointcal_ap.detect.background`: :class:`Background` and
  :func:`estimate_background` (mesh statistics, median filter, spline);
- :mod:`~jointcal_ap.detect.detections`: the :class:`Detections` container and its column
  conversions (astropy table, LDAC columns, :func:`sources_columns` for the fitter);
- :mod:`~jointcal_ap.detect.measurement`: :func:`detect_sources` (footprints, FWHM
  estimate, windowed centroids and their covariance, apertures, aperture correction,
  flags);
- :mod:`~jointcal_ap.detect.catalog`: :func:`catalog_from_image`, an image straight to
  its ``sources.parquet`` rows (a pyarrow table).

Mask bits (:data:`MASK_BITS`, LSST mask plane numbers): ``BAD`` = 1, ``SAT`` = 2,
``EDGE`` = 16, ``NO_DATA`` = 256. ``BAD`` and ``NO_DATA`` pixels are ignored;
``SAT`` and ``EDGE`` pixels are used but flag the sources that touch them. The source
flags are listed in :mod:`jointcal_ap.detect.options`.
"""

from __future__ import annotations

from jointcal_ap.detect.background import Background, estimate_background
from jointcal_ap.detect.catalog import catalog_from_image
from jointcal_ap.detect.detections import Detections, sources_columns
from jointcal_ap.detect.measurement import detect_sources
from jointcal_ap.detect.options import (
    COLUMNS,
    FLAG_BITS,
    MASK_BITS,
    DetectionError,
    DetectOptions,
)

__all__ = [
    "COLUMNS",
    "FLAG_BITS",
    "MASK_BITS",
    "Background",
    "DetectOptions",
    "DetectionError",
    "Detections",
    "catalog_from_image",
    "detect_sources",
    "estimate_background",
    "sources_columns",
]
