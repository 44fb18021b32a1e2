"""The ``calibrate`` stage class (imported only when stages are registered)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from jointcal_ap.stages import Stage, Unit, option
from jointcal_ap_calibrate import __version__

__all__ = ["CalibrateOptions", "CalibrateStage", "register"]


@dataclass(frozen=True)
class CalibrateOptions:
    """Options of the ``calibrate`` stage."""

    chunk_rows: int = option(512, doc="image rows evaluated at once (bounds the memory of a "
                                      "large detector; the result does not depend on it)")

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")


class CalibrateStage(Stage):
    """Apply the joint-fit calibration: image and variance to nJy, fitted TAN-SIP WCS.

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
        return {"calexp": calibrate_exposure(exposure, calibration,
                                             chunk_rows=self.options.chunk_rows)}


def register(registry) -> None:
    """Add the stage (its dataset types are the core's)."""
    registry.add_stage(CalibrateStage)
