"""Alerts as Avro in the Confluent wire format: magic byte 0, the 4-byte big-endian schema id
of the schema registry, then the schemaless Avro body.

Two encoders give byte-identical output (the tests check it):

- :meth:`AlertSerializer.encode`: one alert dict, through ``fastavro.schemaless_writer`` with
  the parsed schema (the reference path; also used for single alerts);
- :meth:`AlertSerializer.encode_batch`: a whole :class:`~jointcal_ap.alerts.packets.AlertBatch`
  column-wise. Avro's binary encoding is compositional (a record is its fields one after the
  other, an array a count then its items, a union a branch index then the value), so every
  flat record (``diaSource``, ``diaObject``, ``diaForcedSource``, ``ssSource``) is encoded
  for all rows at once with NumPy, each into a fixed-width slot matrix whose used bytes are
  then compacted in row order, and each alert is assembled by joining byte slices.
  That is what makes it fast: the per-field work runs once per column, not once per value.

>>> from jointcal_ap.alerts.serialize import frame, unframe
>>> data = frame(7, b"body")
>>> data[:5], unframe(data)
(b'\\x00\\x00\\x00\\x00\\x07', (7, b'body'))
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from jointcal_ap.alerts.packets import CUTOUT_FIELDS, AlertBatch, _branch
from jointcal_ap.schemas import AlertSchema, alert_schema

__all__ = [
    "MAGIC",
    "AlertSerializer",
    "SerializationError",
    "decode_long",
    "encode_long",
    "encode_records",
    "frame",
    "unframe",
]

#: The first byte of a Confluent-framed message.
MAGIC = 0
_HEADER = struct.Struct(">bI")


class SerializationError(ValueError):
    """A message that is not a Confluent-framed alert, or an alert that does not encode."""


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header (magic byte, schema id)."""
    return _HEADER.pack(MAGIC, schema_id) + body


def unframe(data: bytes) -> tuple[int, bytes]:
    """Split a Confluent-framed message into (schema id, Avro body)."""
    if len(data) < 5 or data[0] != MAGIC:
        raise SerializationError(f"not a Confluent-framed Avro message (first byte "
                                 f"{data[:1]!r}, {len(data)} bytes; expected magic byte 0 "
                                 f"and a 4-byte schema id)")
    return _HEADER.unpack_from(data)[1], bytes(data[5:])


def encode_long(value: int) -> bytes:
    """Avro's zig-zag varint encoding of a long.

    >>> encode_long(0), encode_long(-1), encode_long(1), encode_long(64)
    (b'\\x00', b'\\x01', b'\\x02', b'\\x80\\x01')
    """
    v = (value << 1) ^ (value >> 63)
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def decode_long(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Read a zig-zag varint at ``data[pos:]``; return (value, position after it).

    >>> decode_long(encode_long(-300))
    (-300, 2)
    """
    shift = result = 0
    while True:
        if pos >= len(data):
            raise SerializationError("truncated Avro long")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


# --------------------------------------------------------------------------- column-wise

def _varint_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zig-zag varints of int64 values: a byte matrix (n, width) and each row's length."""
    x = values.astype(np.int64, copy=False)
    v = ((x << 1) ^ (x >> 63)).view(np.uint64)
    nbytes = np.ones(len(v), np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    width = int(nbytes.max()) if len(v) else 1
    out = np.empty((len(v), width), np.uint8)
    for k in range(width):
        byte = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[:, k] = byte | np.where(k < nbytes - 1, 0x80, 0).astype(np.uint8)
    return out, nbytes


def _string_columns(column: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Length-prefixed strings/bytes from an Arrow column: two slots (length varints, then
    the bytes), each a byte matrix (n, width) and each row's used length."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.large_binary())
    n = len(array)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], np.int64, n + 1, array.offset * 8) if n else \
        np.zeros(1, np.int64)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else \
        np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    prefix, prefix_len = _varint_columns(lengths)
    width = max(int(lengths.max()) if n else 0, 1)
    index = offsets[:-1, None] + np.arange(width)[None, :]
    body = data[np.clip(index, 0, max(len(data) - 1, 0))] if len(data) else \
        np.zeros((n, width), np.uint8)
    return [(prefix, prefix_len), (body, lengths)]


_FIXED = {"double": "<f8", "float": "<f4"}


def encode_records(table: pa.Table, fields: Sequence[Mapping[str, Any]]) -> tuple[bytes, np.ndarray]:
    """Encode every row of a flat record table (primitive and nullable primitive fields).

    Parameters
    ----------
    table : pyarrow.Table
        Columns named and typed as the fields (see
        :func:`jointcal_ap.alerts.packets.record_table`).
    fields : sequence of dict
        The record's Avro fields, in order.

    Returns
    -------
    buffer : bytes
        The rows' Avro encodings one after the other.
    offsets : ndarray of int64, shape (n + 1,)
        Row i is ``buffer[offsets[i]:offsets[i + 1]]``.
    """
    n = table.num_rows
    slots: list[tuple[np.ndarray, np.ndarray | None]] = []  # (bytes (n, w), used (n, w))
    for spec in fields:
        base, nullable = _branch(spec["type"])
        if isinstance(base, Mapping):
            base = base.get("type")
        column = table.column(spec["name"])
        nulls = column.null_count
        valid = ~column.is_null().to_numpy(zero_copy_only=False) if nulls else None
        if nullable:
            slots.append(((np.where(valid, 2, 0).astype(np.uint8) if nulls
                           else np.full(n, 2, np.uint8))[:, None], None))
        elif nulls:
            raise SerializationError(f"field {spec['name']!r} is not nullable but has nulls")
        if base in _FIXED:
            # Nulls become NaN here; their bytes are not used.
            raw = np.ascontiguousarray(column.to_numpy(zero_copy_only=False), _FIXED[base])
            data = raw.view(np.uint8).reshape(n, raw.itemsize)
            slots.append((data, None if valid is None else
                          np.broadcast_to(valid[:, None], data.shape)))
        elif base == "boolean":
            filled = column.fill_null(False) if nulls else column
            data = filled.to_numpy(zero_copy_only=False).astype(np.uint8)[:, None]
            slots.append((data, None if valid is None else valid[:, None]))
        elif base in ("long", "int"):
            filled = column.fill_null(0) if nulls else column
            data, nbytes = _varint_columns(filled.to_numpy())
            used = np.arange(data.shape[1])[None, :] < nbytes[:, None]
            slots.append((data, used if valid is None else used & valid[:, None]))
        elif base in ("string", "bytes"):
            for data, lengths in _string_columns(column):
                used = np.arange(data.shape[1])[None, :] < lengths[:, None]
                slots.append((data, used if valid is None else used & valid[:, None]))
        else:
            raise SerializationError(f"field {spec['name']!r}: type {base!r} is not supported "
                                     f"by the column-wise encoder")
    if n == 0:
        return b"", np.zeros(1, np.int64)
    width = sum(data.shape[1] for data, _ in slots)
    matrix = np.empty((n, width), np.uint8)
    used = np.ones((n, width), bool)
    col = 0
    for data, mask in slots:
        w = data.shape[1]
        matrix[:, col:col + w] = data
        if mask is not None:
            used[:, col:col + w] = mask
        col += w
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(used.sum(axis=1), out=offsets[1:])
    return matrix[used].tobytes(), offsets


class _Rows:
    """Encoded rows of one table: ``rows[i]`` → bytes, ``rows.span(a, b)`` → rows a..b-1."""

    def __init__(self, table: pa.Table | None, fields: Sequence[Mapping[str, Any]]) -> None:
        if table is None:
            self.buffer, self.offsets = b"", np.zeros(1, np.int64)
        else:
            self.buffer, offsets = encode_records(table, fields)
            self.offsets = offsets.tolist()

    def __getitem__(self, i: int) -> bytes:
        return self.buffer[self.offsets[i]:self.offsets[i + 1]]

    def span(self, a: int, b: int) -> bytes:
        return self.buffer[self.offsets[a]:self.offsets[b]]


def _optional_string(value: str | None) -> bytes:
    if value is None:
        return b"\x00"
    data = value.encode()
    return b"\x02" + encode_long(len(data)) + data


class AlertSerializer:
    """Encode and decode alerts in the Confluent wire format.

    Parameters
    ----------
    schema_id : int
        The id the schema registry gave the alert schema (written into every message).
    schema : AlertSchema, optional
        Default: the latest alert schema of ``lsst-alert-packet``.

    >>> from jointcal_ap.alerts.serialize import AlertSerializer
    >>> serializer = AlertSerializer(schema_id=1)
    >>> serializer.schema.name
    'lsst.v11_1.alert'
    """

    def __init__(self, schema_id: int, schema: AlertSchema | None = None) -> None:
        if not 0 <= int(schema_id) < 2**31:
            raise SerializationError(f"schema id must be a non-negative 32-bit int, got "
                                     f"{schema_id}")
        self.schema_id = int(schema_id)
        self.schema = schema or alert_schema()
        self._parsed = self.schema.parsed
        self._header = _HEADER.pack(MAGIC, self.schema_id)

    # ------------------------------------------------------------------ one alert
    def encode_body(self, alert: Mapping[str, Any]) -> bytes:
        """The schemaless Avro body of one alert (fastavro, parsed schema)."""
        import fastavro

        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, self._parsed, alert)
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise SerializationError(f"alert diaSourceId={alert.get('diaSourceId')!r} does not "
                                     f"follow {self.schema.name}: {exc}") from None
        return buffer.getvalue()

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """One alert, framed."""
        return self._header + self.encode_body(alert)

    def decode(self, data: bytes) -> dict[str, Any]:
        """A framed alert back to a dict (the schema id must be this serializer's)."""
        import fastavro

        schema_id, body = unframe(data)
        if schema_id != self.schema_id:
            raise SerializationError(f"message has schema id {schema_id}; this serializer "
                                     f"reads id {self.schema_id} ({self.schema.name})")
        return fastavro.schemaless_reader(io.BytesIO(body), self._parsed)

    # ------------------------------------------------------------------ column-wise
    def encode_batch(self, batch: AlertBatch, *, framed: bool = True) -> list[bytes]:
        """Every alert of a batch, column-wise (byte-identical to :meth:`encode` of
        ``batch.records()``)."""
        schema = batch.schema
        sources = _Rows(batch.dia_source, schema.record_fields("diaSource"))
        objects = _Rows(batch.dia_object, schema.record_fields("diaObject"))
        prv = _Rows(batch.prv_dia_sources, schema.record_fields("diaSource"))
        forced = _Rows(batch.prv_dia_forced_sources, schema.record_fields("diaForcedSource"))
        ss = _Rows(batch.ss_source, schema.record_fields("ssSource"))
        ids = batch.dia_source_ids.tolist()
        object_index, ss_index = batch.object_index.tolist(), batch.ss_index.tolist()
        prv_off = None if batch.prv_source_offsets is None else batch.prv_source_offsets.tolist()
        forced_off = (None if batch.prv_forced_offsets is None
                      else batch.prv_forced_offsets.tolist())
        cutouts = [batch.cutouts.get(name) for name in CUTOUT_FIELDS]
        reasons, targets = batch.observation_reason, batch.target_name
        head = self._header if framed else b""
        out = []
        for i, ident in enumerate(ids):
            parts = [head, encode_long(ident),
                     b"\x00" if reasons is None else _optional_string(reasons[i]),
                     b"\x00" if targets is None else _optional_string(targets[i]),
                     sources[i]]
            for rows, offsets in ((prv, prv_off), (forced, forced_off)):
                if offsets is None:
                    parts.append(b"\x00")
                    continue
                count = offsets[i + 1] - offsets[i]
                if count:
                    parts += [b"\x02", encode_long(count), rows.span(offsets[i], offsets[i + 1]),
                              b"\x00"]
                else:
                    parts.append(b"\x02\x00")
            j = object_index[i]
            parts.append(b"\x00" if j < 0 else b"\x02" + objects[j])
            j = ss_index[i]
            parts.append(b"\x00" if j < 0 else b"\x02" + ss[j])
            parts.append(b"\x00")  # mpc_orbits
            for values in cutouts:
                data = None if values is None else values[i]
                parts.append(b"\x00" if data is None else b"\x02" + encode_long(len(data)) + data)
            out.append(b"".join(parts))
        return out
