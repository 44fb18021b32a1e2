"""The ``detect`` stage class (imported only when stages are registered)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jointcal_ap.detect import MASK_BITS, DetectOptions
from jointcal_ap.stages import Stage, Unit
from jointcal_ap_detect import __version__

__all__ = ["DetectStage", "detect_mask", "register"]


def detect_mask(exposure: Any) -> np.ndarray:
    """The exposure's mask translated to :data:`jointcal_ap.detect.MASK_BITS` (by plane name,
    so an exposure with its own plane numbering is read right)."""
    mask = np.zeros(exposure.shape, np.int32)
    for name, value in MASK_BITS.items():
        if name in exposure.mask_planes:
            mask[exposure.plane(name)] |= value
    return mask


class DetectStage(Stage):
    """Detect and measure point sources on an exposure (windowed centroids, aperture fluxes).

    Produces a :data:`~jointcal_ap.schemas.SOURCE_CATALOG` table (a ``SourceCatalog``, which
    any stage reading a ``Table`` accepts): one row per source with ``visit``, ``detector``,
    1-based pixel centroids ``x``/``y`` with ``x_err``/``y_err``/``xy_cov``, ``flux``/
    ``flux_err`` (ADU), ``flags``, ``ra``/``dec`` (degrees, through the exposure's initial
    WCS), ``peak`` and ``npix``. The table ``meta`` holds the FWHM and aperture used.
    """

    name = "detect"
    version = __version__
    inputs: ClassVar[dict[str, str]] = {"exposure": "Exposure"}
    outputs: ClassVar[dict[str, str]] = {"sources": "SourceCatalog"}
    Options = DetectOptions

    def run(self, unit: Unit, exposure: Any) -> dict[str, Any]:
        from astropy.table import Table

        from jointcal_ap.detect import detect_sources

        meta = exposure.metadata
        if (meta.visit, meta.detector) != (unit.visit, unit.detector):
            raise ValueError(f"{unit.key}: the exposure is visit {meta.visit} detector "
                             f"{meta.detector}")
        detections = detect_sources(exposure.image, exposure.variance, detect_mask(exposure),
                                    options=self.options)
        columns = detections.sources_columns(unit.visit, unit.detector)
        ra, dec = exposure.wcs.all_pix2world(columns["x"], columns["y"], 1)
        columns["ra"], columns["dec"] = np.asarray(ra, float), np.asarray(dec, float)
        columns["peak"] = np.asarray(detections.peak, float)
        columns["npix"] = np.asarray(detections.npix, np.int64)
        table = Table(columns, meta={"fwhm_px": detections.fwhm_px,
                                     "aperture_radius_px": detections.aperture_radius_px})
        table["ra"].unit = table["dec"].unit = "deg"
        return {"sources": table}


def register(registry) -> None:
    """Add the stage (its dataset types are the core's)."""
    registry.add_stage(DetectStage)
