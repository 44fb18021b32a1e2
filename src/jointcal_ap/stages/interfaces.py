"""Contracts for the alert-production stages: differencing, association and alert export,
and the protocols of their side effects (the APDB and alert sinks).

Each :class:`StageInterface` fixes the ports a stage must declare to fill that role; a stage says ``implements = "difference"`` (for example) and the
registry checks its ports against the interface when it registers. Resources shared by all
units (the APDB, the alert sink) are opened through the ``jointcal_ap_get_apdb`` and
``jointcal_ap_get_alert_sink`` hooks from a URL given in the stage's options.

=================  ==================================================  =====================================
interface          consumes                                            produces
=================  ==================================================  =====================================
``difference``     ``calexp`` (CalibratedExposure),                    ``difference`` (DifferenceImage),
                   ``template`` (Template)                             ``dia_sources`` (DiaSourceCatalog)
``associate``      ``dia_sources`` (DiaSourceCatalog); the APDB        ``dia_objects`` (DiaObjectCatalog)
``export_alerts``  ``dia_sources`` (DiaSourceCatalog),                 ``alerts`` (AlertPacket); alerts go
                   ``dia_objects`` (DiaObjectCatalog)                  to the sink
=================  ==================================================  =====================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "INTERFACES",
    "AlertSink",
    "Apdb",
    "ApdbWrite",
    "DeliveryReport",
    "IdempotencyKey",
    "SkyCircle",
    "SkyPolygon",
    "SkyRegion",
    "StageInterface",
    "check_implements",
]


@dataclass(frozen=True)
class StageInterface:
    """The ports a stage filling a role must declare (it may declare more inputs and more
    outputs, e.g. a difference stage's kernel or QA table).

    Attributes
    ----------
    name : str
        The role, e.g. ``"difference"``.
    inputs, outputs : mapping
        Port name → dataset type name.
    doc : str
        What the role does.
    kind : str or None
        The stage kind the role needs (``"ordered"`` for association), or None for any.
    """

    name: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    doc: str
    kind: str | None = None


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
            doc="Associate DIA sources with the DIA objects of the APDB (opened with "
                "context.apdb(url)), creating new objects, and store the unit in one "
                "idempotent transaction (context.key); overlapping units run in time order.",
            kind="ordered"),
        StageInterface(
            "export_alerts",
            inputs={"dia_sources": "DiaSourceCatalog", "dia_objects": "DiaObjectCatalog"},
            outputs={"alerts": "AlertPacket"},
            doc="Build one alert per DIA source, archive them and send them to the sink opened "
                "with context.alert_sink(url), keyed by context.key."),
    )
}


def check_implements(stage: Any) -> None:
    """Check a stage class against the interface it claims (``stage.implements``).

    Raises ``ValueError`` naming the interface and the port that differs.
    """
    from jointcal_ap.stages.contract import input_ports, output_ports

    name = stage.implements
    if name is None:
        return
    if name not in INTERFACES:
        raise ValueError(f"stage {stage.name!r} implements unknown interface {name!r}; "
                         f"known: {sorted(INTERFACES)}")
    iface = INTERFACES[name]
    for kind, have in (("inputs", input_ports(stage)), ("outputs", output_ports(stage))):
        for port, type_name in getattr(iface, kind).items():
            declared = have.get(port)
            if declared is None or declared.type != type_name:
                raise ValueError(f"stage {stage.name!r} implements {name!r}, which needs "
                                 f"{kind[:-1]} {port!r} of type {type_name}; it declares "
                                 f"{declared.type if declared else None!r}")
    if iface.kind is not None and stage.kind != iface.kind:
        raise ValueError(f"stage {stage.name!r} implements {name!r}, which must be a "
                         f"{iface.kind!r} stage; it is {stage.kind!r}")


# --------------------------------------------------------------------------- side effects


@dataclass(frozen=True)
class IdempotencyKey:
    """Identifies one unit's side effect (an APDB store, an alert send) so that repeating
    it is safe.

    Attributes
    ----------
    stage : str
        The stage (its pipeline label) that makes the side effect.
    data_id : tuple of (str, value)
        The unit's data ID, sorted by dimension name, e.g.
        ``(("detector", 3), ("instrument", "sim"), ("visit", 12))``.
    input_identity : str
        A hash of what the unit read (file identities, options); the same unit re-run on
        changed inputs has another identity and *replaces* the earlier effect.

    A sink that sees a key whose ``unit`` (stage + data ID) it already holds with the same
    ``input_identity`` does nothing; with another identity it replaces that unit's earlier
    effect in one transaction (the APDB), or sends again (Kafka is at least once; consumers
    deduplicate by ``diaSourceId``).
    """

    stage: str
    data_id: tuple[tuple[str, Any], ...]
    input_identity: str

    @classmethod
    def make(cls, stage: str, data_id: Mapping[str, Any], input_identity: str) -> IdempotencyKey:
        """Build a key from a data-ID mapping (its items are sorted)."""
        return cls(stage, tuple(sorted((str(k), v) for k, v in data_id.items())),
                   str(input_identity))

    @property
    def unit(self) -> str:
        """``"stage/dim=value/..."``: the unit whose effect this is, whatever its inputs."""
        return "/".join([self.stage, *(f"{k}={v}" for k, v in self.data_id)])

    @property
    def token(self) -> str:
        """A stable hex digest of the whole key (unit and input identity)."""
        import hashlib

        return hashlib.sha256(f"{self.unit}#{self.input_identity}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SkyCircle:
    """A cone on the sky: centre (ICRS degrees) and radius (degrees)."""

    ra: float
    dec: float
    radius: float

    def __post_init__(self) -> None:
        import math

        if not all(math.isfinite(v) for v in (self.ra, self.dec, self.radius)) \
                or not -90 <= self.dec <= 90 or not 0 < self.radius <= 180:
            raise ValueError(f"SkyCircle needs finite ra, -90 <= dec <= 90 and 0 < radius <= "
                             f"180 degrees; got ({self.ra}, {self.dec}, {self.radius})")

    def healpix_pixels(self, order: int) -> Any:
        """NESTED HEALPix pixels at ``order`` that touch the cone (inclusive)."""
        import healpy as hp
        import numpy as np

        nside = 1 << order
        theta, phi = np.radians(90.0 - self.dec), np.radians(self.ra)
        return np.sort(hp.query_disc(nside, hp.ang2vec(theta, phi), np.radians(self.radius),
                                     inclusive=True, nest=True))


@dataclass(frozen=True)
class SkyPolygon:
    """A convex polygon on the sky: vertices (ra, dec) in ICRS degrees, in order."""

    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.vertices) < 3:
            raise ValueError(f"SkyPolygon needs at least 3 vertices, got {len(self.vertices)}")

    def healpix_pixels(self, order: int) -> Any:
        """NESTED HEALPix pixels at ``order`` that touch the polygon (inclusive)."""
        import healpy as hp
        import numpy as np

        ra, dec = np.radians(np.asarray(self.vertices, float)).T
        vec = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
        return np.sort(hp.query_polygon(1 << order, vec, inclusive=True, nest=True))


#: A region of the sky for APDB reads.
SkyRegion = SkyCircle | SkyPolygon


@dataclass(frozen=True)
class ApdbWrite:
    """Everything one unit (visit × detector) stores in the APDB, in one transaction.

    Tables are ``pyarrow.Table`` with Rubin's columns (:mod:`jointcal_ap.schemas`); any may
    be ``None`` (nothing of that kind).

    Attributes
    ----------
    key : IdempotencyKey
        Makes the store repeatable (see :class:`IdempotencyKey`).
    visit_time_mjd_tai : float
        The visit's mid-exposure time (MJD, TAI): the new DiaObject versions' validity start.
    dia_objects : pyarrow.Table or None
        Optional, and only checked: every id must belong to a DiaSource of the write. The
        store creates the objects its DiaSources refer to and recomputes every summary column
        from the stored history inside the transaction (a value computed before it could
        miss a concurrent writer's source).
    dia_sources : pyarrow.Table or None
        The unit's DiaSources.
    dia_forced_sources : pyarrow.Table or None
        Forced photometry on known DiaObjects.
    ss_sources : pyarrow.Table or None
        Sources associated with Solar System objects.
    """

    key: IdempotencyKey
    visit_time_mjd_tai: float
    dia_objects: Any = None
    dia_sources: Any = None
    dia_forced_sources: Any = None
    ss_sources: Any = None


@runtime_checkable
class Apdb(Protocol):
    """The Alert Production DataBase, as ``associate`` stages use it.

    Opened through the ``jointcal_ap_get_apdb(url)`` hook. Every read takes an explicit
    region and, for histories, an explicit time window (MJD TAI, ``start <= t < end``);
    tables come back as ``pyarrow.Table`` with Rubin's columns.
    """

    #: The APDB schema version (``apdb.yaml``'s) the database was created with.
    schema_version: str

    def get_dia_objects(self, region: SkyRegion | None, *, columns: Any = None,
                        object_ids: Any = None, exclude_unit: str | None = None) -> Any:
        """The current version of every DiaObject in ``region`` (or with ``object_ids``);
        ``columns`` limits the columns; ``exclude_unit`` (an ``IdempotencyKey.unit``)
        reads the APDB as it was before that unit's visit time, for a re-run with new
        inputs (docs/apdb.md, "Re-runs, crashes and parallel writers")."""
        ...

    def get_dia_sources(self, region: SkyRegion | None, object_ids: Any, start_mjd_tai: float,
                        end_mjd_tai: float) -> Any:
        """DiaSources of the given objects (or of the region, if ``object_ids`` is None)
        with ``start <= midpointMjdTai < end``."""
        ...

    def get_dia_forced_sources(self, region: SkyRegion | None, object_ids: Any,
                               start_mjd_tai: float, end_mjd_tai: float) -> Any:
        """DiaForcedSources of the given objects (or of the region) in the time window."""
        ...

    def allocate_ids(self, table: str, count: int, *, unit: str | None = None) -> Any:
        """``count`` new unique int64 ids for ``table`` (``"DiaObject"``, ``"DiaSource"``,
        ``"DiaForcedSource"``), never handed out before, also across processes; with
        ``unit``, a re-run of that unit gets the same block again."""
        ...

    def store(self, write: ApdbWrite) -> bool:
        """Store one unit in one transaction; idempotent by ``write.key``.

        Returns False if exactly this write (same key and input identity) was already
        stored (nothing is done), True otherwise. An earlier write of the same unit with
        another input identity is replaced. A failure leaves the database as it was.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True)
class DeliveryReport:
    """What an alert sink did with a batch.

    Attributes
    ----------
    sent : int
        Alerts handed to the transport.
    acknowledged : int
        Alerts the transport confirmed (Kafka: delivery report without error).
    failed : tuple of (int, str)
        ``(diaSourceId, reason)`` of alerts not delivered.
    skipped : bool
        True if the batch's key had already been delivered (nothing sent).
    container : str or None
        The Avro object container file the sink archived this batch's alerts in, if it
        keeps one (then it holds exactly these alerts; a caller may copy it rather than
        encode them again).
    """

    sent: int
    acknowledged: int
    failed: tuple[tuple[int, str], ...] = ()
    skipped: bool = False
    container: str | None = None


@runtime_checkable
class AlertSink(Protocol):
    """Where ``export_alerts`` stages send alerts (Avro, Confluent wire format).

    Opened through the ``jointcal_ap_get_alert_sink(url)`` hook.
    """

    #: The schema-registry id of the alert schema the sink writes (None: no registry).
    schema_id: int | None

    def send(self, alerts: Iterable[Mapping[str, Any]], key: IdempotencyKey) -> DeliveryReport:
        """Send alerts (one record per DiaSource, following the alert schema) for one unit,
        waiting for their acknowledgement."""
        ...

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for outstanding deliveries; return how many are
        still undelivered."""
        ...

    def close(self) -> None:
        """Flush and release the sink."""
        ...
