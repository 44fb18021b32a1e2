"""Alerts over Kafka: the producer, the alert sinks, sending an archive, the example consumer.

The producer is ``confluent-kafka`` with ``enable.idempotence=true`` and ``acks=all``; every
message's delivery report is collected, and an alert counts as delivered only when the broker
acknowledged it. Messages are keyed by ``diaSourceId`` and framed in the Confluent wire
format with the id our schema registry gave the alert schema (subject ``<topic>-value``).

Nothing acknowledged is lost from the archive's point of view: the archive records each
alert's state (``unsent`` → ``sent`` on acknowledgement, ``failed`` with the reason), so an
alert larger than the broker's message limit, or a broker that stays down past the delivery
timeout, is a clear :class:`DeliveryError` and stays in the archive for
``jointcal-ap alerts send ARCHIVE --resend-unsent``.

The example consumer (:func:`consume_alerts`, ``jointcal-ap alerts consume``) is written as a
community broker would write it: an unchanged ``confluent_kafka.Consumer``, values decoded by
``AvroDeserializer`` through the schema registry, a filter, Parquet output, offsets committed
only after the output is written, duplicates dropped by ``diaSourceId``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jointcal_ap.stages.interfaces import DeliveryReport, IdempotencyKey

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AlertConsumer",
    "AlertProducer",
    "ConsumeSummary",
    "DeliveryError",
    "FileAlertSink",
    "KafkaAlertSink",
    "consume_alerts",
    "open_alert_sink",
    "register_alert_schema",
    "send_archive",
    "topic_keys",
    "verify_archive",
]

log = logging.getLogger(__name__)

#: The broker's message limit assumed when none is given (Kafka's default
#: ``message.max.bytes``, 1 MiB + record overhead); alerts above it are refused before sending.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


class DeliveryError(RuntimeError):
    """Alerts that were not delivered; the message names how many, which, and why."""


def register_alert_schema(registry_url: str, subject: str, schema: Any = None) -> int:
    """Register the alert schema under ``subject`` (idempotent) and return its id, with
    ``confluent_kafka``'s own ``SchemaRegistryClient``.

    Raises DeliveryError if the registry cannot be reached or refuses the schema.
    """
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from jointcal_ap.schemas import alert_schema

    schema = schema or alert_schema()
    try:
        with SchemaRegistryClient({"url": registry_url, "timeout": 10}) as client:
            return int(client.register_schema(subject, Schema(schema.json, "AVRO")))
    except SchemaRegistryError as exc:
        raise DeliveryError(f"schema registry {registry_url} refused {schema.name} under "
                            f"subject {subject!r}: {exc}") from None
    except Exception as exc:  # connection errors of the HTTP client
        raise DeliveryError(f"schema registry {registry_url} is unreachable: "
                            f"{type(exc).__name__}: {exc}") from None


class AlertProducer:
    """An idempotent ``confluent_kafka.Producer`` (``acks=all``) that reports every delivery.

    Parameters
    ----------
    bootstrap : str
        ``host:port`` of the broker.
    topic : str
        The alert topic.
    delivery_timeout : float
        Seconds a message may wait for its acknowledgement (``message.timeout.ms``); past it,
        it is reported failed (e.g. the broker stayed down).
    max_message_bytes : int
        The broker's message limit; a larger alert is refused (and reported failed).
    config : mapping, optional
        More ``librdkafka`` settings.
    """

    def __init__(self, bootstrap: str, topic: str, *, delivery_timeout: float = 30.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 config: Mapping[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.delivery_timeout = float(delivery_timeout)
        self.max_message_bytes = int(max_message_bytes)
        settings = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.delivery_timeout * 1000),
            "log_level": 3,
        }
        settings.update(config or {})
        self._producer = Producer(settings)

    def send(self, messages: Iterable[tuple[int, bytes]]) -> tuple[list[int], list[tuple[int, str]]]:
        """Produce ``(diaSourceId, framed value)`` pairs and wait for every report.

        Returns the acknowledged ids and the failed ``(id, reason)`` pairs.
        """
        from confluent_kafka import KafkaException

        acked: list[int] = []
        failed: list[tuple[int, str]] = []

        def report(ident: int) -> Callable[[Any, Any], None]:
            def on_delivery(err: Any, msg: Any) -> None:
                if err is None:
                    acked.append(ident)
                else:
                    failed.append((ident, f"not acknowledged: {err.str()}"))
            return on_delivery

        produced: list[int] = []
        for ident, value in messages:
            if len(value) > self.max_message_bytes:
                failed.append((ident, f"alert is {len(value)} bytes, larger than the broker's "
                                      f"message limit of {self.max_message_bytes} bytes"))
                continue
            while True:
                try:
                    self._producer.produce(self.topic, value=value, key=str(ident).encode(),
                                           on_delivery=report(ident))
                    produced.append(ident)
                    break
                except BufferError:
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    failed.append((ident, f"refused by the producer: {exc.args[0].str()}"))
                    break
            self._producer.poll(0)
        # Every message ends with a report: acknowledged, or failed after message.timeout.ms.
        left = self._producer.flush(self.delivery_timeout + 10.0)
        if left:
            reported = set(acked) | {i for i, _ in failed}
            failed += [(i, "no delivery report (broker down?)") for i in produced
                       if i not in reported]
        return acked, failed

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        self._producer.flush(self.delivery_timeout)


def _chunks(entries: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(entries), size):
        yield entries[start:start + size]


def send_archive(archive: Any, bootstrap: str, topic: str, registry_url: str, *,
                 resend_unsent: bool = False, verify: bool = False,
                 subject: str | None = None,
                 delivery_timeout: float = 30.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 chunk: int = 2000, progress: bool = False) -> DeliveryReport:
    """Send archived alerts to Kafka and record their delivery in the archive.

    Parameters
    ----------
    archive : AlertArchive or path
    resend_unsent : bool
        Send only the alerts not acknowledged yet (``unsent`` or ``failed``); default: all.
    verify : bool
        First check that the broker still holds every alert recorded as sent
        (:func:`verify_archive`); those it lost are sent again with ``resend_unsent``.
    subject : str, optional
        The registry subject (default ``<topic>-value``).

    Returns
    -------
    DeliveryReport
        ``failed`` lists ``(diaSourceId, reason)``; those alerts are marked ``failed``.
    """
    from jointcal_ap.alerts.archive import AlertArchive
    from jointcal_ap.alerts.serialize import frame

    own = not isinstance(archive, AlertArchive)
    archive = AlertArchive(archive) if own else archive
    try:
        schema_id = register_alert_schema(registry_url, subject or f"{topic}-value",
                                          archive.schema)
        if verify:
            lost = verify_archive(archive, bootstrap, topic)
            if lost:
                log.warning("%d acknowledged alert(s) are no longer on %s/%s: sending them again",
                            lost, bootstrap, topic)
        entries = archive.unsent() if resend_unsent else archive.between(float("-inf"),
                                                                         float("inf"))
        producer = AlertProducer(bootstrap, topic, delivery_timeout=delivery_timeout,
                                 max_message_bytes=max_message_bytes)
        sent = acknowledged = 0
        failures: list[tuple[int, str]] = []
        bar = _progress(len(entries), progress)
        for part in _chunks(entries, chunk):
            acked, failed = producer.send(
                (e.dia_source_id, frame(schema_id, archive.body(e))) for e in part)
            archive.mark_sent(acked)
            archive.mark_failed(failed)
            sent += len(part)
            acknowledged += len(acked)
            failures += failed
            bar.update(len(part))
        bar.close()
        producer.close()
        return DeliveryReport(sent, acknowledged, tuple(failures))
    finally:
        if own:
            archive.close()


def topic_keys(bootstrap: str, topic: str, *, timeout: float = 30.0) -> set[int]:
    """The ``diaSourceId`` keys of every record the broker holds on ``topic`` (read from the
    low to the high watermark of each partition, without a consumer group)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "jointcal-ap-verify",
                         "enable.auto.commit": False, "log_level": 3})
    keys: set[int] = set()
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return keys
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout)
            if high > low:
                ends[partition] = (low, high)
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        deadline = time.monotonic() + timeout
        done: set[int] = set()
        while len(done) < len(ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if msg.key() is not None:
                keys.add(int(msg.key()))
            if msg.offset() >= ends[msg.partition()][1] - 1:
                done.add(msg.partition())
    finally:
        consumer.close()
    return keys


def verify_archive(archive: Any, bootstrap: str, topic: str) -> int:
    """Mark ``unsent`` every archived alert recorded as ``sent`` whose record the broker no
    longer holds (a broker restart on memory storage loses every record; tansu 0.6's s3
    storage can lose the last acknowledged ones on a crash); returns how many.

    Run it after a broker restart, then send with ``resend_unsent``: from the archive's
    point of view nothing acknowledged is lost (``alerts send --verify``).
    """
    held = topic_keys(bootstrap, topic)
    sent = archive.entries_with_status("sent")
    lost = [e.dia_source_id for e in sent if e.dia_source_id not in held]
    archive.mark_failed([(i, f"acknowledged, but no longer held by the broker on {topic!r}")
                         for i in lost])
    return len(lost)


def _progress(total: int, enabled: bool) -> Any:
    from jointcal_ap.progress import progress

    return progress(total=total, desc="send alerts", unit="alert", enabled=enabled)


# --------------------------------------------------------------------------- sinks

@dataclass
class FileAlertSink:
    """``file:///DIR``: alerts go to the archive at DIR only (no transport).

    Implements :class:`~jointcal_ap.stages.interfaces.AlertSink`; ``schema_id`` is None.
    """

    root: Path
    schema_id: int | None = None
    archive: Any = field(init=False)

    def __post_init__(self) -> None:
        from jointcal_ap.alerts.archive import AlertArchive

        self.archive = AlertArchive(self.root)

    def _archive(self, alerts: Any) -> tuple[list[int], list[bytes], str | None]:
        """Archive one unit's alerts (as ``unsent``); their ids and bodies, as archived, and
        the container file they are in (None: no alert)."""
        from jointcal_ap.alerts.packets import AlertBatch

        if not isinstance(alerts, AlertBatch):
            alerts = list(alerts)
        if not len(alerts):
            return [], [], None
        bodies, columns = self.archive.encode(alerts)
        path = self.archive.write_bodies(bodies, *columns)
        return [int(i) for i in columns[0]], bodies, str(path)

    def send(self, alerts: Iterable[Mapping[str, Any]], key: IdempotencyKey) -> DeliveryReport:
        """Archive one unit's alerts (an iterable of dicts, or an AlertBatch)."""
        if self.archive.delivered(key.unit, key.input_identity):
            return DeliveryReport(0, 0, skipped=True)
        ids, _, path = self._archive(alerts)
        self.archive.mark_sent(ids)
        self.archive.record_delivery(key.unit, key.input_identity)
        return DeliveryReport(len(ids), len(ids), container=path)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        self.archive.close()


@dataclass
class KafkaAlertSink(FileAlertSink):
    """``kafka://HOST:PORT/TOPIC?registry=URL&archive=DIR``: archive, then send to Kafka.

    Each unit's alerts are archived first (as ``unsent``), then produced and marked ``sent``
    as the broker acknowledges them. A unit whose key was already delivered in full is
    skipped; one with failures raises :class:`DeliveryError` (its alerts stay ``failed`` in
    the archive for ``alerts send --resend-unsent``).
    """

    bootstrap: str = ""
    topic: str = ""
    registry_url: str = ""
    delivery_timeout: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    producer: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schema_id = register_alert_schema(self.registry_url, f"{self.topic}-value",
                                               self.archive.schema)
        self.producer = AlertProducer(self.bootstrap, self.topic,
                                      delivery_timeout=self.delivery_timeout,
                                      max_message_bytes=self.max_message_bytes)

    def send(self, alerts: Iterable[Mapping[str, Any]], key: IdempotencyKey) -> DeliveryReport:
        from jointcal_ap.alerts.serialize import frame

        if self.archive.delivered(key.unit, key.input_identity):
            return DeliveryReport(0, 0, skipped=True)
        ids, bodies, path = self._archive(alerts)
        # the bodies just archived, not read back from the archive (the same bytes)
        acked, failed = self.producer.send(
            (i, frame(self.schema_id, body)) for i, body in zip(ids, bodies, strict=True))
        self.archive.mark_sent(acked)
        self.archive.mark_failed(failed)
        if failed:
            shown = "; ".join(f"{i}: {r}" for i, r in failed[:3])
            raise DeliveryError(f"{key.unit}: {len(failed)} of {len(ids)} alert(s) not delivered "
                                f"to {self.bootstrap}/{self.topic} ({shown}); they are kept in "
                                f"the archive {self.root} for `jointcal-ap alerts send "
                                f"{self.root} --resend-unsent`")
        self.archive.record_delivery(key.unit, key.input_identity)
        return DeliveryReport(len(ids), len(acked), container=path)

    def flush(self, timeout: float) -> int:
        return self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.close()
        super().close()


def open_alert_sink(url: str) -> FileAlertSink:
    """An alert sink for ``kafka://host:port/topic?registry=URL&archive=DIR[&timeout=S]
    [&max_message_bytes=N]`` or ``file:///archive/dir``.

    Raises ValueError naming what is missing from the URL.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "file":
        if not parts.path:
            raise ValueError(f"alert sink {url!r}: file:// needs a directory path")
        return FileAlertSink(Path(parts.path))
    if parts.scheme == "kafka":
        topic = parts.path.strip("/")
        missing = [n for n, v in (("host:port", parts.netloc), ("/topic", topic),
                                  ("registry=URL", query.get("registry")),
                                  ("archive=DIR", query.get("archive"))) if not v]
        if missing:
            raise ValueError(f"alert sink {url!r} lacks {', '.join(missing)} (expected "
                             f"kafka://host:port/topic?registry=URL&archive=DIR)")
        return KafkaAlertSink(Path(query["archive"]), bootstrap=parts.netloc, topic=topic,
                              registry_url=query["registry"],
                              delivery_timeout=float(query.get("timeout", 30.0)),
                              max_message_bytes=int(query.get("max_message_bytes",
                                                              DEFAULT_MAX_MESSAGE_BYTES)))
    raise ValueError(f"alert sink {url!r}: unknown scheme {parts.scheme!r} (kafka:// or file://)")


# --------------------------------------------------------------------------- the consumer

class AlertConsumer:
    """Consume alerts as a broker does (a context manager; iterate for ``(message, alert)``).

    An unchanged ``confluent_kafka.Consumer`` (no auto-commit, ``auto.offset.reset=earliest``)
    and ``AvroDeserializer`` reading the writer schema from the registry by the id in each
    message. Iteration stops after ``idle_timeout`` seconds without a message, or after
    ``max_messages``; call :meth:`commit` after processing what was yielded. Tansu completes
    a consumer-group join after half the session timeout, hence the short default
    ``session_timeout_ms``.
    """

    def __init__(self, bootstrap: str, topic: str, registry_url: str, *, group_id: str,
                 idle_timeout: float = 10.0, max_messages: int | None = None,
                 session_timeout_ms: int = 6000, config: Mapping[str, Any] | None = None
                 ) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        settings = {"bootstrap.servers": bootstrap, "group.id": group_id,
                    "auto.offset.reset": "earliest", "enable.auto.commit": False,
                    "session.timeout.ms": session_timeout_ms, "log_level": 3}
        settings.update(config or {})
        self.topic, self.idle_timeout, self.max_messages = topic, idle_timeout, max_messages
        self._client = SchemaRegistryClient({"url": registry_url})
        self._deserialize = AvroDeserializer(self._client)
        self._context = SerializationContext(topic, MessageField.VALUE)
        self._consumer = Consumer(settings)
        self._assigned = False
        self.join_timeout = 30.0 + session_timeout_ms / 1000.0
        self._consumer.subscribe([topic], on_assign=self._on_assign)

    def _on_assign(self, consumer: Any, partitions: Any) -> None:
        self._assigned = True

    def __iter__(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        count, last, started = 0, time.monotonic(), time.monotonic()
        while self.max_messages is None or count < self.max_messages:
            msg = self._consumer.poll(0.5)
            if msg is None:
                if not self._assigned:  # the idle clock starts once partitions are assigned
                    last = time.monotonic()
                    if last - started > self.join_timeout:
                        raise DeliveryError(f"consumer: no partition of {self.topic!r} "
                                            f"assigned within {self.join_timeout:.0f} s")
                elif time.monotonic() - last > self.idle_timeout:
                    return
                continue
            if msg.error():
                log.warning("consumer: %s", msg.error())
                continue
            last = time.monotonic()
            count += 1
            yield msg, self._deserialize(msg.value(), self._context)

    def commit(self) -> None:
        """Commit the offsets of everything consumed so far (synchronously)."""
        from confluent_kafka import KafkaException

        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if "No offset stored" not in str(exc):
                raise

    def close(self) -> None:
        self._consumer.close()
        self._client.__exit__()

    def __enter__(self) -> AlertConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ConsumeSummary:
    """What :func:`consume_alerts` did: messages read, duplicates dropped, alerts kept."""

    messages: int
    duplicates: int
    kept: int
    out: Path


def _row(alert: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(alert["diaSource"])
    obj = alert.get("diaObject") or {}
    row["diaObject_nDiaSources"] = obj.get("nDiaSources")
    row["n_prvDiaSources"] = len(alert.get("prvDiaSources") or [])
    row["n_prvDiaForcedSources"] = len(alert.get("prvDiaForcedSources") or [])
    return row


def consume_alerts(bootstrap: str, topic: str, registry_url: str, out: str | Path, *,
                   group_id: str = "jointcal-ap-example", filter_expression: str | None = None,
                   idle_timeout: float = 10.0, max_messages: int | None = None,
                   commit_every: int = 1000, session_timeout_ms: int = 6000) -> ConsumeSummary:
    """The example consumer: read, deduplicate by ``diaSourceId``, filter, write Parquet,
    then commit.

    The Parquet file (one row per kept alert: the ``diaSource`` fields, the object's
    ``nDiaSources`` and the history lengths) is rewritten atomically every ``commit_every``
    messages and at the end, and only then are the offsets committed, so a crash never
    commits an alert that is not in the file. An existing file is read first and extended
    (its ``diaSourceId`` count as seen).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jointcal_ap.alerts.filters import compile_filter
    from jointcal_ap.atomic import atomic_path

    keep = compile_filter(filter_expression) if filter_expression else (lambda alert: True)
    out = Path(out)
    rows: list[dict[str, Any]] = pq.read_table(out).to_pylist() if out.exists() else []
    seen = {r["diaSourceId"] for r in rows}
    messages = duplicates = 0
    written = len(rows)

    def write() -> None:
        table = pa.Table.from_pylist(rows) if rows else pa.table({"diaSourceId": pa.array([], pa.int64())})
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)

    with AlertConsumer(bootstrap, topic, registry_url, group_id=group_id,
                       idle_timeout=idle_timeout, max_messages=max_messages,
                       session_timeout_ms=session_timeout_ms) as consumer:
        for _, alert in consumer:
            messages += 1
            ident = alert["diaSourceId"]
            if ident in seen:
                duplicates += 1
            else:
                seen.add(ident)
                if keep(alert):
                    rows.append(_row(alert))
            if messages % commit_every == 0:
                write()
                written = len(rows)
                consumer.commit()
        if len(rows) != written or not out.exists():
            write()
        consumer.commit()
    return ConsumeSummary(messages, duplicates, len(rows), out)
