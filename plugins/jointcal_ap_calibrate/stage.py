"""The ``calibrate`` stage class (imported only when stages are registered)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages import Stage, Unit, option
from jointcal_ap_calibrate import __version__

__all__ = ["CalibrateOptions", "CalibrateStage", "register"]


@dataclass(frozen=True)
class CalibrateOptions:
    """Options of the ``calibrate`` stage."""

    chunk_rows: int = option(512, doc="image rows evaluated at once (bounds the memory of a "
                                      "large detector; the result does not depend on it)")
    fit_psf: bool = option(True, doc="fit a spatially varying PSF model (PCA of bright isolated "
                                     "stars, jointcal_ap.psf.fit_psf) and store it with the "
                                     "calibrated exposure, unless the exposure has one")
    psf_min_snr: float = option(50.0, doc="PSF stars: minimum S/N")

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")


class CalibrateStage(Stage):
    """Apply the joint-fit calibration: image and variance to nJy, fitted TAN-SIP WCS, PSF model.

    ``calibration`` is the directory written by ``Calibration.write`` (one per run, shared by
    all units); the exposure's (visit, detector) picks its entry.
    """

    name = "calibrate"
    version = __version__
    inputs: ClassVar[dict[str, str]] = {"exposure": "Exposure", "calibration": "Calibration"}
    outputs: ClassVar[dict[str, str]] = {"calexp": "CalibratedExposure"}
    Options = CalibrateOptions

    def run(self, unit: Unit, exposure: Any, calibration: Any) -> dict[str, Any]:
        from jointcal_ap.exposure import calibrate_exposure

        meta = exposure.metadata
        if (meta.visit, meta.detector) != (unit.visit, unit.detector):
            raise ValueError(f"{unit.key}: the exposure is visit {meta.visit} detector "
                             f"{meta.detector}")
        calexp = calibrate_exposure(exposure, calibration, chunk_rows=self.options.chunk_rows)
        if self.options.fit_psf and calexp.psf is None:
            import dataclasses

            from jointcal_ap.psf import fit_psf

            psf = fit_psf(np.asarray(calexp.image), np.asarray(calexp.variance),
                          np.asarray(calexp.mask), min_snr=self.options.psf_min_snr,
                          where=f"{unit.key} calexp")
            calexp = dataclasses.replace(calexp, psf=psf)
        return {"calexp": calexp}


def register(registry) -> None:
    """Add the stage (its dataset types are the core's)."""
    registry.add_stage(CalibrateStage)
