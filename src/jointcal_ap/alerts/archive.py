"""The alert database: every alert in an Avro Object Container File, plus an index.

Layout under the archive's root::

    alerts/visit=<visit>/<visit>_<detector>.avro   one file per (visit, detector)
    index.sqlite3                                  diaSourceId → file, offset; by object, time

Each file is a standard Avro Object Container File (any Avro reader opens it; the writer
schema is in its header) written atomically (temporary name, then rename). Each alert is
its own block (deflate-compressed), so the index can point at the block's byte offset and
one alert is read with one seek. The index (SQLite) holds, per alert: ``diaSourceId``,
``diaObjectId``, ``ssObjectId``, ``midpointMjdTai``, visit, detector, the file and offset, and
the delivery state (``unsent``, ``sent``, ``failed`` with the reason), so alerts that a broker
never acknowledged are found again (``jointcal-ap alerts send --resend-unsent``).

Scaling (this is a proof of concept, like Rubin's alert database prototype): files are
partitioned by visit; at survey scale, partition by night (``night=YYYYMMDD/``), put the
files in object storage (S3/GCS: they are immutable, written once) and the index in
PostgreSQL (or Parquet per night, sorted by ``diaSourceId``), keyed the same way.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.alerts.packets import AlertBatch
from jointcal_ap.alerts.serialize import AlertSerializer, decode_long, encode_long
from jointcal_ap.atomic import atomic_path
from jointcal_ap.schemas import AlertSchema, alert_schema

#: zlib level of the alert blocks (archive and ``AlertPacket`` files). On the latency
#: benchmark's alerts (139 kB each, mostly the cutouts' FITS headers and padding): level 1,
#: 0.64 ms per alert and 5.05× smaller; level 6 (zlib's default), 0.94 ms and 5.67×.
DEFLATE_LEVEL = 1

__all__ = [
    "AlertArchive",
    "ArchiveError",
    "ArchivedAlert",
    "ArchivedAlerts",
    "read_alert_file",
    "write_alert_file",
]

_MAGIC = b"Obj\x01"
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS alerts (
    diaSourceId INTEGER PRIMARY KEY,
    diaObjectId INTEGER,
    ssObjectId INTEGER,
    midpointMjdTai REAL NOT NULL,
    visit INTEGER NOT NULL,
    detector INTEGER NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'unsent',
    error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS alerts_object ON alerts (diaObjectId);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (midpointMjdTai);
CREATE INDEX IF NOT EXISTS alerts_unit ON alerts (visit, detector);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, diaSourceId);
CREATE TABLE IF NOT EXISTS deliveries (
    unit TEXT PRIMARY KEY,
    input_identity TEXT NOT NULL
);
"""


class ArchiveError(ValueError):
    """A problem with the alert archive; the message names the file or id."""


@dataclass(frozen=True)
class ArchivedAlert:
    """One row of the archive's index.

    Attributes
    ----------
    dia_source_id, dia_object_id, ss_object_id : int (object ids may be None)
    midpoint_mjd_tai : float
    visit, detector : int
    path : str
        The container file, relative to the archive root.
    offset, length : int
        The alert's block in that file.
    status : str
        ``unsent``, ``sent`` or ``failed``.
    error : str or None
        Why the last send failed.
    """

    dia_source_id: int
    dia_object_id: int | None
    ss_object_id: int | None
    midpoint_mjd_tai: float
    visit: int
    detector: int
    path: str
    offset: int
    length: int
    status: str
    error: str | None


def _ocf_header(schema: AlertSchema, codec: str, sync: bytes) -> bytes:
    meta = {"avro.schema": schema.json.encode(), "avro.codec": codec.encode()}
    parts = [_MAGIC, encode_long(len(meta))]
    for key, value in meta.items():
        parts += [encode_long(len(key)), key.encode(), encode_long(len(value)), value]
    parts += [b"\x00", sync]
    return b"".join(parts)


class AlertArchive:
    """The alert database at ``root`` (created if missing).

    >>> import tempfile
    >>> from jointcal_ap.alerts.archive import AlertArchive
    >>> from jointcal_ap.alerts.packets import build_alert_batch
    >>> from jointcal_ap.alerts.simulate import simulate_unit
    >>> batch = build_alert_batch(**simulate_unit(3, n_history=2, seed=1))
    >>> with tempfile.TemporaryDirectory() as tmp, AlertArchive(tmp) as archive:
    ...     path = archive.write_batch(batch)
    ...     first = int(batch.dia_source_ids[0])
    ...     archive.get(first)["diaSourceId"] == first, len(archive.unsent())
    (True, 3)
    """

    def __init__(self, root: str | os.PathLike[str], *, schema: AlertSchema | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.schema = schema or alert_schema()
        self._db = sqlite3.connect(self.root / "index.sqlite3", timeout=30.0)
        self._db.executescript(_SCHEMA_SQL)
        self._serializer = AlertSerializer(0, self.schema)
        self._readers: dict[str, Any] = {}

    # ------------------------------------------------------------------ writing
    def unit_path(self, visit: int, detector: int) -> Path:
        """The container file of a (visit, detector), relative to the root."""
        return Path("alerts") / f"visit={int(visit)}" / f"{int(visit)}_{int(detector)}.avro"

    def encode(self, alerts: AlertBatch | Sequence[Mapping[str, Any]]
               ) -> tuple[list[bytes], tuple[list[Any], ...]]:
        """One unit's alerts (an AlertBatch, column-wise encoding, or alert dicts) as their
        schemaless Avro bodies, and the index columns :meth:`write_bodies` takes after them
        (``diaSourceId``, ``diaObjectId``, ``ssObjectId``, ``midpointMjdTai``, visit,
        detector)."""
        keys = ("diaSourceId", "diaObjectId", "ssObjectId", "midpointMjdTai", "visit", "detector")
        if isinstance(alerts, AlertBatch):
            src = alerts.dia_source
            return (self._serializer.encode_batch(alerts, framed=False),
                    tuple(src.column(k).to_pylist() for k in keys))
        bodies = [self._serializer.encode_body(a) for a in alerts]
        rows = [a["diaSource"] for a in alerts]
        return bodies, tuple([r.get(k) for r in rows] for k in keys)

    def write_batch(self, batch: AlertBatch) -> Path:
        """Archive a batch's alerts (column-wise encoding); see :meth:`write_bodies`."""
        bodies, columns = self.encode(batch)
        return self.write_bodies(bodies, *columns)

    def write_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> Path:
        """Archive alert dicts (all of one visit and detector)."""
        bodies, columns = self.encode(alerts)
        return self.write_bodies(bodies, *columns)

    def write_bodies(self, bodies: Sequence[bytes], dia_source_ids: Sequence[int],
                     dia_object_ids: Sequence[int | None], ss_object_ids: Sequence[int | None],
                     times: Sequence[float], visits: Sequence[int],
                     detectors: Sequence[int]) -> Path:
        """Write the Avro bodies of one unit's alerts as its container file (atomically,
        replacing an earlier one) and index them as ``unsent`` (one transaction).

        Returns the file's path. Raises ArchiveError if the alerts are not all of one
        visit and detector.
        """
        if not bodies:
            raise ArchiveError("no alerts to archive")
        units = set(zip(visits, detectors, strict=True))
        if len(units) != 1:
            raise ArchiveError(f"one container file holds one (visit, detector); got {sorted(units)}")
        (visit, detector), = units
        relative = self.unit_path(visit, detector)
        sync = os.urandom(16)
        header = _ocf_header(self.schema, "deflate", sync)
        rows, offset, chunks = [], len(header), [header]
        for i, body in enumerate(bodies):
            packed = zlib.compress(body, DEFLATE_LEVEL, wbits=-15)
            block = b"".join([encode_long(1), encode_long(len(packed)), packed, sync])
            chunks.append(block)
            rows.append((int(dia_source_ids[i]), dia_object_ids[i], ss_object_ids[i],
                         float(times[i]), int(visit), int(detector), relative.as_posix(), offset,
                         len(block)))
            offset += len(block)
        with atomic_path(self.root / relative) as tmp:
            tmp.write_bytes(b"".join(chunks))
        self._readers.pop(relative.as_posix(), None)
        with self._db:
            self._db.execute("DELETE FROM alerts WHERE visit = ? AND detector = ?",
                             (int(visit), int(detector)))
            self._db.executemany(
                "INSERT OR REPLACE INTO alerts (diaSourceId, diaObjectId, ssObjectId, "
                "midpointMjdTai, visit, detector, path, offset, length) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return self.root / relative

    # ------------------------------------------------------------------ reading
    def _row(self, values: Sequence[Any]) -> ArchivedAlert:
        return ArchivedAlert(*values)

    def _query(self, where: str, params: Sequence[Any], limit: int | None = None
               ) -> list[ArchivedAlert]:
        sql = (f"SELECT diaSourceId, diaObjectId, ssObjectId, midpointMjdTai, visit, detector, "
               f"path, offset, length, status, error FROM alerts WHERE {where} "
               f"ORDER BY midpointMjdTai, diaSourceId")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._row(r) for r in self._db.execute(sql, params)]

    def entry(self, dia_source_id: int) -> ArchivedAlert | None:
        """The index row of one alert (None if not archived)."""
        rows = self._query("diaSourceId = ?", (int(dia_source_id),))
        return rows[0] if rows else None

    def body(self, entry: ArchivedAlert) -> bytes:
        """An alert's schemaless Avro body (one seek and read)."""
        path = self.root / entry.path
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                block = f.read(entry.length)
        except FileNotFoundError:
            raise ArchiveError(f"alert {entry.dia_source_id}: archive file {path} is missing") \
                from None
        count, pos = decode_long(block)
        size, pos = decode_long(block, pos)
        if count != 1 or size != entry.length - 16 - pos:
            raise ArchiveError(f"alert {entry.dia_source_id}: {path} offset {entry.offset} is not "
                               f"an alert block (count {count}, size {size})")
        return zlib.decompress(block[pos:pos + size], wbits=-15)

    def decode(self, body: bytes) -> dict[str, Any]:
        """An archived body as an alert dict."""
        import fastavro

        return fastavro.schemaless_reader(io.BytesIO(body), self.schema.parsed)

    def get(self, dia_source_id: int) -> dict[str, Any] | None:
        """The alert of a DiaSource (None if not archived)."""
        entry = self.entry(dia_source_id)
        return None if entry is None else self.decode(self.body(entry))

    def by_object(self, dia_object_id: int) -> list[dict[str, Any]]:
        """Every archived alert of a DiaObject, in time order."""
        return [self.decode(self.body(e))
                for e in self._query("diaObjectId = ?", (int(dia_object_id),))]

    def between(self, start_mjd_tai: float, end_mjd_tai: float) -> list[ArchivedAlert]:
        """Index rows with ``start <= midpointMjdTai < end``."""
        return self._query("midpointMjdTai >= ? AND midpointMjdTai < ?",
                           (float(start_mjd_tai), float(end_mjd_tai)))

    def entries_with_status(self, status: str) -> list[ArchivedAlert]:
        """Index rows with this delivery status."""
        return self._query("status = ?", (status,))

    def unsent(self, limit: int | None = None) -> list[ArchivedAlert]:
        """Alerts not (yet) acknowledged by a broker: ``unsent`` or ``failed``."""
        return self._query("status != 'sent'", (), limit)

    def count(self, status: str | None = None) -> int:
        """How many alerts are archived (with that status)."""
        if status is None:
            return self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM alerts WHERE status = ?",
                                (status,)).fetchone()[0]

    def iter_unit(self, visit: int, detector: int) -> Iterator[dict[str, Any]]:
        """Read a unit's container file with a standard Avro reader (fastavro)."""
        import fastavro

        with open(self.root / self.unit_path(visit, detector), "rb") as f:
            yield from fastavro.reader(f)

    # ------------------------------------------------------------------ delivery state
    def mark_sent(self, dia_source_ids: Iterable[int]) -> None:
        """Record that the broker acknowledged these alerts."""
        import time

        now = time.time()
        with self._db:
            self._db.executemany("UPDATE alerts SET status = 'sent', error = NULL, sent_at = ? "
                                 "WHERE diaSourceId = ?", [(now, int(i)) for i in dia_source_ids])

    def mark_failed(self, failures: Iterable[tuple[int, str]]) -> None:
        """Record alerts that could not be delivered, with the reason."""
        with self._db:
            self._db.executemany("UPDATE alerts SET status = 'failed', error = ? "
                                 "WHERE diaSourceId = ?", [(str(r), int(i)) for i, r in failures])

    def entries(self, dia_source_ids: Iterable[int]) -> list[ArchivedAlert]:
        """Index rows of the given ids (those archived)."""
        ids = np.unique(np.asarray(list(dia_source_ids), np.int64))
        out: list[ArchivedAlert] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500].tolist()
            out += self._query(f"diaSourceId IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def delivered(self, unit: str, input_identity: str) -> bool:
        """Whether a sink already delivered this unit with these inputs (idempotency)."""
        row = self._db.execute("SELECT input_identity FROM deliveries WHERE unit = ?",
                               (unit,)).fetchone()
        return row is not None and row[0] == input_identity

    def record_delivery(self, unit: str, input_identity: str) -> None:
        """Remember that a unit was delivered in full with these inputs."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO deliveries (unit, input_identity) "
                             "VALUES (?, ?)", (unit, input_identity))

    def close(self) -> None:
        """Close the index."""
        self._db.close()

    def __enter__(self) -> AlertArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """Counts by status, and the schema."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM alerts GROUP BY status"))
        return {"root": str(self.root), "schema": self.schema.name, "alerts": sum(counts.values()),
                "by_status": counts}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    raise TypeError(type(value).__name__)


def alert_json(alert: Mapping[str, Any], *, indent: int | None = 2) -> str:
    """An alert as JSON (cutouts summarised as ``"<N bytes>"``)."""
    return json.dumps(alert, default=_json_default, indent=indent, allow_nan=True)


class ArchivedAlerts(list):
    """Alert records (a ``list``, the ``AlertPacket`` dataset's value) that an archive has
    just written, in this order, as the Avro object container file ``container``:
    :func:`write_alert_file` copies that file rather than encode them again."""

    def __init__(self, records: Sequence[Mapping[str, Any]], container: str | os.PathLike) -> None:
        super().__init__(records)
        self.container = Path(container)


def write_alert_file(alerts: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write alert records (``lsst-alert-packet``'s latest schema) as one Avro Object
    Container File: the ``AlertPacket`` dataset type's file form.

    :class:`ArchivedAlerts` whose container file is there are written as a copy of it (the
    same records; 206 alerts of a latency-benchmark unit, 28.6 MB of bodies: 0.002 s
    against 0.23–0.28 s to encode and compress them again, one core)."""
    import shutil

    import fastavro

    container = getattr(alerts, "container", None)
    if container is not None and Path(container).is_file():
        shutil.copyfile(container, path)
        return
    schema = alert_schema()
    with open(path, "wb") as fh:
        fastavro.writer(fh, schema.parsed, list(alerts), codec="deflate",
                        codec_compression_level=DEFLATE_LEVEL)


def read_alert_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read what :func:`write_alert_file` wrote (any Avro container file of alerts).

    Raises
    ------
    ArchiveError
        Not an Avro container file, or a truncated or damaged one; the message names the file.
    """
    import fastavro

    with open(path, "rb") as fh:
        try:
            return list(fastavro.reader(fh))
        except (EOFError, ValueError, TypeError, zlib.error) as exc:
            raise ArchiveError(f"{path}: not a readable Avro container file of alerts "
                               f"(truncated or damaged?): {type(exc).__name__}: {exc}") from None
