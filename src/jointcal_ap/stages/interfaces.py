"""Contracts for the stages still to come: differencing, association and alert export.

Nothing here is implemented yet. Each :class:`StageInterface` fixes the ports a stage must
declare to fill that role; a stage says ``implements = "difference"`` (for example) and the
registry checks its ports against the interface when it registers. Resources shared by all
units (the APDB, the alert sink) are opened through the ``jointcal_ap_get_apdb`` and
``jointcal_ap_get_alert_sink`` hooks from a URL given in the stage's options.

=================  ==================================================  =====================================
interface          consumes                                            produces
=================  ==================================================  =====================================
``difference``     ``calexp`` (CalibratedExposure),                    ``difference`` (DifferenceImage),
                   ``template`` (Template)                             ``dia_sources`` (DiaSourceCatalog)
``associate``      ``dia_sources`` (DiaSourceCatalog); the APDB        ``dia_objects`` (DiaObjectCatalog)
``export_alerts``  ``dia_sources`` (DiaSourceCatalog),                 ``alerts`` (AlertManifest); alerts go
                   ``dia_objects`` (DiaObjectCatalog)                  to the sink
=================  ==================================================  =====================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["INTERFACES", "AlertSink", "Apdb", "StageInterface", "check_implements"]


@dataclass(frozen=True)
class StageInterface:
    """The ports a stage filling a role must declare (it may declare more inputs).

    Attributes
    ----------
    name : str
        The role, e.g. ``"difference"``.
    inputs, outputs : mapping
        Port name → dataset type name.
    doc : str
        What the role does.
    """

    name: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    doc: str


INTERFACES: dict[str, StageInterface] = {
    iface.name: iface
    for iface in (
        StageInterface(
            "difference",
            inputs={"calexp": "CalibratedExposure", "template": "Template"},
            outputs={"difference": "DifferenceImage", "dia_sources": "DiaSourceCatalog"},
            doc="Subtract a PSF-matched template from a calibrated exposure (image in nJy) and "
                "detect and measure DIA sources on the difference (fluxes in nJy, ra/dec in deg)."),
        StageInterface(
            "associate",
            inputs={"dia_sources": "DiaSourceCatalog"},
            outputs={"dia_objects": "DiaObjectCatalog"},
            doc="Associate DIA sources with the DIA objects of the APDB (opened with the "
                "jointcal_ap_get_apdb hook), creating new objects, and store both."),
        StageInterface(
            "export_alerts",
            inputs={"dia_sources": "DiaSourceCatalog", "dia_objects": "DiaObjectCatalog"},
            outputs={"alerts": "AlertManifest"},
            doc="Build one alert per DIA source and send it to the sink opened with the "
                "jointcal_ap_get_alert_sink hook; the manifest lists what was sent."),
    )
}


def check_implements(stage: Any) -> None:
    """Check a stage class against the interface it claims (``stage.implements``).

    Raises ``ValueError`` naming the interface and the port that differs.
    """
    name = stage.implements
    if name is None:
        return
    if name not in INTERFACES:
        raise ValueError(f"stage {stage.name!r} implements unknown interface {name!r}; "
                         f"known: {sorted(INTERFACES)}")
    iface = INTERFACES[name]
    for kind in ("inputs", "outputs"):
        have, want = getattr(stage, kind), getattr(iface, kind)
        for port, type_name in want.items():
            if have.get(port) != type_name:
                raise ValueError(f"stage {stage.name!r} implements {name!r}, which needs "
                                 f"{kind[:-1]} {port!r} of type {type_name}; it declares "
                                 f"{have.get(port)!r}")
    extra = set(stage.outputs) - set(iface.outputs)
    if extra:
        raise ValueError(f"stage {stage.name!r} implements {name!r} but adds outputs {sorted(extra)}")


@runtime_checkable
class Apdb(Protocol):
    """The Alert Production DataBase, as ``associate`` stages will use it (not implemented yet)."""

    def get_dia_objects(self, ra_deg: float, dec_deg: float, radius_deg: float) -> Any:
        """DIA objects within a cone (degrees), as a table with ``dia_object_id``, ``ra``, ``dec``."""
        ...

    def store(self, visit: int, detector: int, dia_sources: Any, dia_objects: Any) -> None:
        """Store one unit's DIA sources and new or updated DIA objects, atomically."""
        ...


@runtime_checkable
class AlertSink(Protocol):
    """Where ``export_alerts`` stages send alerts (Avro, Confluent wire format; not implemented yet)."""

    def send(self, alerts: Iterable[Mapping[str, Any]]) -> int:
        """Send alerts (one mapping per DIA source, following the alert schema); return how many."""
        ...

    def close(self) -> None:
        """Flush and release the sink."""
        ...
