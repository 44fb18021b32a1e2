"""The ``detect`` stage class (imported only when stages are registered)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jointcal_ap.detect import MASK_BITS, DetectOptions
from jointcal_ap.stages import Stage, Unit
from jointcal_ap.stages.datasets import EXPOSURE, TABLE
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

    Produces a table with one row per source: ``visit``, ``detector``, the columns of
    :data:`jointcal_ap.detect.COLUMNS` (1-based pixels, ADU) and ``ra``/``dec`` (degrees,
    from the exposure's initial WCS). The table ``meta`` holds the FWHM and aperture used.
    """

    name = "detect"
    version = __version__
    inputs: ClassVar[dict[str, str]] = {"exposure": "Exposure"}
    outputs: ClassVar[dict[str, str]] = {"sources": "Table"}
    Options = DetectOptions

    def run(self, unit: Unit, exposure: Any) -> dict[str, Any]:
        from jointcal_ap.detect import detect_sources

        meta = exposure.metadata
        if (meta.visit, meta.detector) != (unit.visit, unit.detector):
            raise ValueError(f"{unit.key}: the exposure is visit {meta.visit} detector "
                             f"{meta.detector}")
        detections = detect_sources(exposure.image, exposure.variance, detect_mask(exposure),
                                    options=self.options)
        table = detections.to_table()
        table.add_column(np.full(len(table), unit.visit, np.int64), name="visit", index=0)
        table.add_column(np.full(len(table), unit.detector, np.int64), name="detector", index=1)
        ra, dec = exposure.wcs.all_pix2world(table["x"].value, table["y"].value, 1)
        table["ra"], table["dec"] = np.asarray(ra, float), np.asarray(dec, float)
        table["ra"].unit = table["dec"].unit = "deg"
        return {"sources": table}


def register(registry) -> None:
    """Add the stage and the dataset types it uses."""
    registry.add_dataset_type(EXPOSURE)
    registry.add_dataset_type(TABLE)
    registry.add_stage(DetectStage)
