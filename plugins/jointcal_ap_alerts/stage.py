"""The ``export_alerts`` stage: one Rubin alert per DiaSource, archived and sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages import Stage, option
from jointcal_ap_alerts import __version__

__all__ = ["ExportAlertsOptions", "ExportAlertsStage", "register"]


@dataclass(frozen=True)
class ExportAlertsOptions:
    """Options of the ``export_alerts`` stage (see docs/alerts.md)."""

    apdb_url: str = option("", doc="the APDB the histories are read from (12 months of "
                                   "prvDiaSources and prvDiaForcedSources)")
    sink: str = option("", doc="where alerts go: kafka://HOST:PORT/TOPIC?registry=URL&archive="
                               "DIR or file:///DIR (the alert archive); empty: only the "
                               "AlertPacket dataset")
    cutout_size: int = option(30, doc="cutout side, pixels")
    history_days: float = option(365.0, doc="history window, days")

    def __post_init__(self) -> None:
        if not self.apdb_url:
            raise ValueError("apdb_url is required (the histories come from the APDB)")
        if self.cutout_size < 5:
            raise ValueError(f"cutout_size must be >= 5 pixels, got {self.cutout_size}")


class ExportAlertsStage(Stage):
    """Build, archive and send one Rubin alert per DiaSource of the unit.

    Each alert (Rubin's latest alert schema) holds the DiaSource, its DiaObject, 12 months of history from the APDB, its SSSource when it is a Solar
    System object, and difference/science/template cutouts; archive and send them through
    the sink (idempotent by the unit's key), and keep them as the unit's AlertPacket."""

    name = "export_alerts"
    version = __version__
    implements = "export_alerts"
    inputs: ClassVar[dict[str, str]] = {"dia_sources": "DiaSourceCatalog",
                                        "dia_objects": "DiaObjectCatalog",
                                        "ss_sources": "SSSourceCatalog",
                                        "difference": "DifferenceImage",
                                        "calexp": "CalibratedExposure",
                                        "template": "Template"}
    outputs: ClassVar[dict[str, str]] = {"alerts": "AlertPacket"}
    Options = ExportAlertsOptions

    def run(self, unit: Any, dia_sources: Any, dia_objects: Any, ss_sources: Any,
            difference: Any, calexp: Any, template: Any) -> dict[str, Any]:
        from jointcal_ap.alerts.cutouts import make_cutouts
        from jointcal_ap.alerts.packets import alerts_for_unit

        opts = self.options
        if dia_sources.num_rows == 0:
            return {"alerts": []}
        ids = dia_sources.column("diaSourceId").to_numpy()
        ra = np.asarray(dia_sources.column("ra").to_numpy(zero_copy_only=False), float)
        dec = np.asarray(dia_sources.column("dec").to_numpy(zero_copy_only=False), float)
        cutouts = make_cutouts(ids, ra, dec, difference=difference, science=calexp,
                               template=template, size=opts.cutout_size)
        apdb = self.context.apdb(opts.apdb_url)
        batch = alerts_for_unit(apdb, dia_sources, dia_objects=dia_objects,
                                ss_sources=ss_sources if ss_sources.num_rows else None,
                                cutouts=cutouts, history_days=opts.history_days,
                                as_batch=True)
        container = None
        if opts.sink:
            report = self.context.alert_sink(opts.sink).send(batch, self.context.key)
            if report.failed:
                raise RuntimeError(f"{len(report.failed)} alert(s) not delivered, e.g. "
                                   f"{report.failed[0]}; they stay in the archive for "
                                   f"'jointcal-ap alerts send --resend-unsent'")
            # the archive's file of this very batch (not of an earlier delivery it skipped)
            container = None if report.skipped else getattr(report, "container", None)
        if container is not None:
            from jointcal_ap.alerts.archive import ArchivedAlerts

            return {"alerts": ArchivedAlerts(batch.records(), container)}
        return {"alerts": batch.records()}

    def warm_up(self) -> None:
        """Import the packet and cutout code, and open the APDB and the alert sink (its
        producer's connection and the schema's registration) once per worker."""
        import healpy  # noqa: F401  (the APDB's region queries)

        from jointcal_ap.alerts.cutouts import make_cutouts  # noqa: F401
        from jointcal_ap.alerts.packets import alerts_for_unit  # noqa: F401
        from jointcal_ap.stages import open_resource

        open_resource("apdb", self.options.apdb_url)
        if self.options.sink:
            open_resource("alert_sink", self.options.sink)


def register(registry) -> None:
    """Add the stage (its dataset types are the core's)."""
    registry.add_stage(ExportAlertsStage)
