"""Alert packets: one alert per DiaSource, in Rubin's alert schema (``lsst-alert-packet``).

An alert holds the triggering ``diaSource``, its ``diaObject``, the object's earlier
DiaSources and forced photometry within a history window (12 months by default) as
``prvDiaSources`` / ``prvDiaForcedSources``, the ``ssSource`` when the source is associated
with a Solar System object, and three FITS cutouts (see :mod:`jointcal_ap.alerts.cutouts`).

Everything is built column-wise into an :class:`AlertBatch` (Arrow tables of the alert
schema's record fields, and per-alert row indices into them). :meth:`AlertBatch.records`
gives the alerts as dicts (what ``fastavro`` and ``lsst-alert-packet`` take), and
:meth:`jointcal_ap.alerts.serialize.AlertSerializer.encode_batch` encodes the batch
directly from its columns, much faster than record by record.

Conventions: fields and units are Rubin's (ra/dec in degrees, fluxes in nJy, times MJD TAI,
DiaSource ``x``/``y`` 0-based pixels). ``prvDiaSources`` holds the object's DiaSources with
``t - history_days <= midpointMjdTai < t`` (strictly earlier than the alert's source,
ascending in time), likewise ``prvDiaForcedSources``; both are ``None`` when no history table
was given, and a (possibly empty) list otherwise. A DiaSource without ``diaObjectId`` (a
Solar System source) has no ``diaObject`` and no history.

>>> import pyarrow as pa
>>> from jointcal_ap.alerts.packets import build_alerts
>>> src = {"diaSourceId": [11], "visit": [1], "detector": [2], "diaObjectId": [5],
...        "midpointMjdTai": [60000.5], "ra": [10.0], "dec": [-5.0], "x": [12.0], "y": [20.0],
...        "psfNdata": [0], "trailNdata": [0], "dipoleNdata": [0],
...        "timeProcessedMjdTai": [60000.6], "bboxSize": [30], "band": ["r"]}
>>> prv = dict(src, diaSourceId=[3, 4], midpointMjdTai=[59000.0, 59990.0], visit=[0, 0],
...            x=[1.0, 2.0], y=[1.0, 2.0], ra=[10.0, 10.0], dec=[-5.0, -5.0],
...            psfNdata=[0, 0], trailNdata=[0, 0], dipoleNdata=[0, 0], detector=[2, 2],
...            diaObjectId=[5, 5], timeProcessedMjdTai=[0.0, 0.0], bboxSize=[30, 30],
...            band=["r", "g"])
>>> [alert] = build_alerts(pa.table(src), prv_dia_sources=pa.table(prv))
>>> alert["diaSourceId"], [p["diaSourceId"] for p in alert["prvDiaSources"]]
(11, [4])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jointcal_ap.schemas import AlertSchema, alert_schema

__all__ = [
    "CUTOUT_FIELDS",
    "HISTORY_DAYS",
    "AlertBatch",
    "AlertError",
    "alerts_for_unit",
    "avro_arrow_type",
    "build_alert_batch",
    "build_alerts",
    "record_table",
]

#: The history window of ``prvDiaSources`` / ``prvDiaForcedSources`` (12 months), in days.
HISTORY_DAYS = 365.0

#: The alert fields holding FITS cutouts.
CUTOUT_FIELDS = ("cutoutDifference", "cutoutScience", "cutoutTemplate")

_PRIMITIVE_ARROW = {
    "long": pa.int64(), "int": pa.int32(), "float": pa.float32(), "double": pa.float64(),
    "boolean": pa.bool_(), "string": pa.string(), "bytes": pa.binary(),
}


class AlertError(ValueError):
    """Input that cannot become an alert; the message names the table, column and id."""


def _branch(avro_type: Any) -> tuple[Any, bool]:
    """The non-null branch of a field type and whether null is allowed."""
    if isinstance(avro_type, list):
        others = [t for t in avro_type if t != "null"]
        if len(others) != 1:
            raise AlertError(f"unsupported union {avro_type} in the alert schema")
        return others[0], "null" in avro_type
    return avro_type, False


def avro_arrow_type(avro_type: Any) -> pa.DataType:
    """The Arrow type holding an Avro field type (primitive, nullable primitive, or a
    ``long`` with a logical type)."""
    base, _ = _branch(avro_type)
    if isinstance(base, Mapping):
        base = base.get("type")
    try:
        return _PRIMITIVE_ARROW[base]
    except (KeyError, TypeError):
        raise AlertError(f"unsupported Avro type {avro_type!r} in a flat record") from None


def _as_table(data: Any, where: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if hasattr(data, "colnames"):  # astropy Table
        return pa.table({name: np.asarray(data[name]) for name in data.colnames})
    if isinstance(data, Mapping):
        try:
            return pa.table({k: (v if isinstance(v, pa.Array | pa.ChunkedArray)
                                 else pa.array(np.asarray(v) if not isinstance(v, list) else v,
                                               from_pandas=True))
                             for k, v in data.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            raise AlertError(f"{where}: cannot read the columns: {exc}") from None
    raise AlertError(f"{where}: expected a pyarrow/astropy table or a mapping of columns, "
                     f"got {type(data).__name__}")


def record_table(data: Any, record: str, *, schema: AlertSchema | None = None,
                 where: str = "") -> pa.Table:
    """``data`` as an Arrow table with exactly the fields of the alert record ``record``
    (``"diaSource"``, ``"diaObject"``, ``"diaForcedSource"``, ``"ssSource"``), in order,
    each cast to its Avro type. Extra columns (e.g. APDB-only ones) are dropped; missing
    nullable fields become null, and NaN in nullable float fields becomes null.

    Raises
    ------
    AlertError
        A missing required field, a null in a required field, or a value that does not
        convert (the message names ``where``, the field and the first bad row's id).
    """
    schema = schema or alert_schema()
    where = where or record
    table = _as_table(data, where)
    n = table.num_rows
    id_column = next((c for c in (f"{record}Id", "diaSourceId", "diaForcedSourceId",
                                  "diaObjectId") if c in table.column_names), None)
    arrays, fields = [], []
    for spec in schema.record_fields(record):
        name, (_, nullable) = spec["name"], _branch(spec["type"])
        arrow_type = avro_arrow_type(spec["type"])
        if name not in table.column_names:
            if not nullable:
                raise AlertError(f"{where}: column {name!r} is required by {schema.name} "
                                 f"({record}) but missing")
            arrays.append(pa.nulls(n, arrow_type))
        else:
            column = table.column(name)
            try:
                column = column.cast(arrow_type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise AlertError(f"{where}: column {name!r} does not convert to "
                                 f"{arrow_type} ({schema.name} {record}): {exc}") from None
            if nullable and pa.types.is_floating(arrow_type):
                column = pc.if_else(pc.is_nan(column), pa.scalar(None, arrow_type), column)
            if not nullable and column.null_count:
                bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                ident = (f"{id_column}={table.column(id_column)[bad].as_py()}"
                         if id_column else f"row {bad}")
                raise AlertError(f"{where}: column {name!r} is required by {schema.name} "
                                 f"({record}) but null at {ident}")
            arrays.append(column.combine_chunks() if isinstance(column, pa.ChunkedArray)
                          else column)
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _rows(table: pa.Table | None) -> list[dict[str, Any]]:
    """Rows as dicts (column-wise ``to_pylist``: much faster than ``Table.to_pylist``)."""
    if table is None:
        return []
    names = table.column_names
    columns = [c.to_pylist() for c in table.columns]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


@dataclass(frozen=True, eq=False)
class AlertBatch:
    """The alerts of one unit, column-wise.

    Attributes
    ----------
    schema : AlertSchema
        The alert schema the tables follow.
    dia_source : pyarrow.Table
        One row per alert (the ``diaSource`` record's fields).
    dia_object : pyarrow.Table or None
        DiaObject rows; ``object_index[i]`` is alert i's row (-1: none).
    object_index : ndarray of int64
    prv_dia_sources, prv_dia_forced_sources : pyarrow.Table or None
        History rows grouped by alert: alert i's are rows ``offsets[i]:offsets[i + 1]``.
        None: no history was given (the alerts' fields are null).
    prv_source_offsets, prv_forced_offsets : ndarray of int64, shape (n + 1,)
    ss_source : pyarrow.Table or None
        SSSource rows; ``ss_index[i]`` is alert i's row (-1: none).
    ss_index : ndarray of int64
    cutouts : mapping
        Cutout field → a sequence of ``bytes`` or None per alert.
    observation_reason, target_name : sequence of str or None, or None
        The scheduler's reason and target per alert (RTN-097), if known.
    """

    schema: AlertSchema
    dia_source: pa.Table
    dia_object: pa.Table | None = None
    object_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prv_dia_sources: pa.Table | None = None
    prv_source_offsets: np.ndarray | None = None
    prv_dia_forced_sources: pa.Table | None = None
    prv_forced_offsets: np.ndarray | None = None
    ss_source: pa.Table | None = None
    ss_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cutouts: Mapping[str, Sequence[bytes | None]] = field(default_factory=dict)
    observation_reason: Sequence[str | None] | None = None
    target_name: Sequence[str | None] | None = None

    def __len__(self) -> int:
        return self.dia_source.num_rows

    @property
    def dia_source_ids(self) -> np.ndarray:
        """The alerts' ``diaSourceId`` (int64)."""
        return self.dia_source.column("diaSourceId").to_numpy()

    def records(self) -> list[dict[str, Any]]:
        """The alerts as dicts following the alert schema (one per DiaSource)."""
        n = len(self)
        sources = _rows(self.dia_source)
        objects = _rows(self.dia_object)
        ss = _rows(self.ss_source)
        prv = _rows(self.prv_dia_sources)
        forced = _rows(self.prv_dia_forced_sources)
        out = []
        for i in range(n):
            src = sources[i]
            alert = {
                "diaSourceId": src["diaSourceId"],
                "observation_reason": (self.observation_reason[i]
                                       if self.observation_reason is not None else None),
                "target_name": self.target_name[i] if self.target_name is not None else None,
                "diaSource": src,
                "prvDiaSources": (prv[self.prv_source_offsets[i]:self.prv_source_offsets[i + 1]]
                                  if self.prv_dia_sources is not None else None),
                "prvDiaForcedSources": (
                    forced[self.prv_forced_offsets[i]:self.prv_forced_offsets[i + 1]]
                    if self.prv_dia_forced_sources is not None else None),
                "diaObject": objects[self.object_index[i]] if self.object_index[i] >= 0 else None,
                "ssSource": ss[self.ss_index[i]] if self.ss_index[i] >= 0 else None,
                "mpc_orbits": None,
            }
            for name in CUTOUT_FIELDS:
                values = self.cutouts.get(name)
                alert[name] = values[i] if values is not None else None
            out.append(alert)
        return out


def _int_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An int64 column as (values with nulls → 0, valid mask)."""
    column = table.column(name)
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    return column.fill_null(0).to_numpy().astype(np.int64, copy=False), valid


def _history(history: pa.Table, object_ids: np.ndarray, has_object: np.ndarray,
             times: np.ndarray, days: float) -> tuple[pa.Table, np.ndarray]:
    """Rows of ``history`` per alert (same object, ``t - days <= t' < t``), grouped by alert,
    ascending in time; and the offsets."""
    hist_obj, hist_valid = _int_column(history, "diaObjectId")
    hist_t = history.column("midpointMjdTai").to_numpy(zero_copy_only=False).astype(float)
    order = np.lexsort((hist_t, hist_obj))
    order = order[hist_valid[order]]
    obj_sorted, t_sorted = hist_obj[order], hist_t[order]
    lo = np.searchsorted(obj_sorted, object_ids, "left")
    hi = np.searchsorted(obj_sorted, object_ids, "right")
    take, counts = [], np.zeros(len(object_ids), np.int64)
    for i in range(len(object_ids)):
        if not has_object[i] or lo[i] == hi[i]:
            continue
        block = t_sorted[lo[i]:hi[i]]
        a = lo[i] + np.searchsorted(block, times[i] - days, "left")
        b = lo[i] + np.searchsorted(block, times[i], "left")
        take.append(order[a:b])
        counts[i] = b - a
    indices = np.concatenate(take) if take else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return history.take(pa.array(indices, pa.int64())), offsets


def _lookup(keys: np.ndarray, valid: np.ndarray, table_keys: np.ndarray) -> np.ndarray:
    """Index of each key in ``table_keys`` (the last occurrence wins), -1 if absent."""
    index = np.full(len(keys), -1, np.int64)
    if len(table_keys) == 0:
        return index
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    pos = np.searchsorted(sorted_keys, keys, "right") - 1
    found = valid & (pos >= 0) & (sorted_keys[np.clip(pos, 0, None)] == keys)
    index[found] = order[pos[found]]
    return index


def build_alert_batch(dia_sources: Any, dia_objects: Any = None, prv_dia_sources: Any = None,
                      prv_dia_forced_sources: Any = None, ss_sources: Any = None,
                      cutouts: Mapping[int, Mapping[str, bytes | None]] | None = None, *,
                      history_days: float = HISTORY_DAYS,
                      observation_reason: str | Sequence[str | None] | None = None,
                      target_name: str | Sequence[str | None] | None = None,
                      schema: AlertSchema | None = None) -> AlertBatch:
    """Build the alerts of a set of DiaSources, column-wise (see :func:`build_alerts`)."""
    schema = schema or alert_schema()
    if not math.isfinite(history_days) or history_days < 0:
        raise AlertError(f"history_days must be a finite number >= 0, got {history_days}")
    src = record_table(dia_sources, "diaSource", schema=schema, where="dia_sources")
    n = src.num_rows
    ids = src.column("diaSourceId").to_numpy()
    if len(np.unique(ids)) != n:
        dup = ids[np.flatnonzero(np.diff(np.sort(ids)) == 0)[0]]
        raise AlertError(f"dia_sources: diaSourceId {int(dup)} appears more than once")
    object_ids, has_object = _int_column(src, "diaObjectId")
    times = src.column("midpointMjdTai").to_numpy().astype(float)

    objects, object_index = None, np.full(n, -1, np.int64)
    if dia_objects is not None:
        objects = record_table(dia_objects, "diaObject", schema=schema, where="dia_objects")
        # The latest version of each object: sort by validity start, the last one wins.
        order = np.argsort(objects.column("validityStartMjdTai").to_numpy(), kind="stable")
        objects = objects.take(pa.array(order, pa.int64()))
        object_index = _lookup(object_ids, has_object,
                               objects.column("diaObjectId").to_numpy())

    prv, prv_offsets = None, None
    if prv_dia_sources is not None:
        prv = record_table(prv_dia_sources, "diaSource", schema=schema, where="prv_dia_sources")
        prv, prv_offsets = _history(prv, object_ids, has_object, times, history_days)
    forced, forced_offsets = None, None
    if prv_dia_forced_sources is not None:
        forced = record_table(prv_dia_forced_sources, "diaForcedSource", schema=schema,
                              where="prv_dia_forced_sources")
        forced, forced_offsets = _history(forced, object_ids, has_object, times, history_days)

    ss, ss_index = None, np.full(n, -1, np.int64)
    if ss_sources is not None:
        ss = record_table(ss_sources, "ssSource", schema=schema, where="ss_sources")
        ss_index = _lookup(ids, np.ones(n, bool), ss.column("diaSourceId").to_numpy())

    columns: dict[str, list[bytes | None]] = {}
    if cutouts:
        unknown = {k for c in cutouts.values() if c for k in c} - set(CUTOUT_FIELDS)
        if unknown:
            raise AlertError(f"cutouts: unknown field(s) {sorted(unknown)}; expected "
                             f"{list(CUTOUT_FIELDS)}")
        for name in CUTOUT_FIELDS:
            values = [(cutouts.get(int(i)) or {}).get(name) for i in ids]
            if any(v is not None for v in values):
                columns[name] = values

    def per_alert(value: Any, name: str) -> Sequence[str | None] | None:
        if value is None or isinstance(value, str):
            return None if value is None else [value] * n
        value = list(value)
        if len(value) != n:
            raise AlertError(f"{name}: {len(value)} values for {n} alerts")
        return value

    return AlertBatch(schema, src, objects, object_index, prv, prv_offsets, forced,
                      forced_offsets, ss, ss_index, columns,
                      per_alert(observation_reason, "observation_reason"),
                      per_alert(target_name, "target_name"))


def build_alerts(dia_sources: Any, dia_objects: Any = None, prv_dia_sources: Any = None,
                 prv_dia_forced_sources: Any = None, ss_sources: Any = None,
                 cutouts: Mapping[int, Mapping[str, bytes | None]] | None = None, *,
                 history_days: float = HISTORY_DAYS,
                 observation_reason: str | Sequence[str | None] | None = None,
                 target_name: str | Sequence[str | None] | None = None,
                 schema: AlertSchema | None = None) -> list[dict[str, Any]]:
    """One alert per DiaSource, as dicts following Rubin's alert schema.

    Pure: tables in, records out. The tables may carry the APDB's columns (extra ones are
    dropped; see :func:`record_table`).

    Parameters
    ----------
    dia_sources : table
        The unit's DiaSources (pyarrow / astropy table or mapping of columns).
    dia_objects : table, optional
        DiaObjects (several versions of one object: the latest ``validityStartMjdTai``
        wins), matched by ``diaObjectId``.
    prv_dia_sources, prv_dia_forced_sources : table, optional
        Candidate history (e.g. everything the APDB returned for the objects); each alert
        gets its object's rows with ``t - history_days <= midpointMjdTai < t``.
    ss_sources : table, optional
        SSSources, matched by ``diaSourceId``.
    cutouts : mapping, optional
        ``diaSourceId`` → ``{"cutoutDifference": bytes, "cutoutScience": ...,
        "cutoutTemplate": ...}`` (see :func:`jointcal_ap.alerts.cutouts.make_cutouts`).
    history_days : float
        The history window (default 365 days).
    observation_reason, target_name : str or sequence, optional
        The scheduler's reason and target (one value, or one per DiaSource).
    schema : AlertSchema, optional
        Default: the latest schema of ``lsst-alert-packet``.

    Raises
    ------
    AlertError
        Bad input; the message names the table, the column and the id.
    """
    return build_alert_batch(dia_sources, dia_objects, prv_dia_sources, prv_dia_forced_sources,
                             ss_sources, cutouts, history_days=history_days,
                             observation_reason=observation_reason, target_name=target_name,
                             schema=schema).records()


def _enclosing_circle(ra: np.ndarray, dec: np.ndarray, margin_deg: float) -> Any:
    from jointcal_ap.stages.interfaces import SkyCircle

    ra_rad, dec_rad = np.radians(ra), np.radians(dec)
    vec = np.column_stack([np.cos(dec_rad) * np.cos(ra_rad), np.cos(dec_rad) * np.sin(ra_rad),
                           np.sin(dec_rad)])
    centre = vec.mean(axis=0)
    centre /= np.linalg.norm(centre)
    radius = float(np.degrees(np.arccos(np.clip(vec @ centre, -1, 1))).max()) + margin_deg
    return SkyCircle(float(np.degrees(np.arctan2(centre[1], centre[0])) % 360.0),
                     float(np.degrees(np.arcsin(centre[2]))), min(radius, 180.0))


def alerts_for_unit(apdb: Any, dia_sources: Any, *, dia_objects: Any = None,
                    ss_sources: Any = None,
                    cutouts: Mapping[int, Mapping[str, bytes | None]] | None = None,
                    history_days: float = HISTORY_DAYS, as_batch: bool = False,
                    **kwargs: Any) -> list[dict[str, Any]] | AlertBatch:
    """The alerts of one unit (visit × detector), with histories read from the APDB.

    A thin adapter for the ``export_alerts`` stage: it reads the objects' DiaSources and
    DiaForcedSources of the last ``history_days`` through the
    :class:`~jointcal_ap.stages.interfaces.Apdb` protocol (and their current DiaObjects if
    ``dia_objects`` is not given), then calls :func:`build_alert_batch`.

    Parameters
    ----------
    apdb : Apdb
        The APDB (``jointcal_ap_get_apdb`` hook).
    dia_sources : table
        The unit's DiaSources, after association (``diaObjectId`` set).
    as_batch : bool
        Return the :class:`AlertBatch` (for :meth:`AlertSerializer.encode_batch`) instead
        of dicts.
    **kwargs
        Passed to :func:`build_alert_batch` (``observation_reason``, ``schema`` ...).
    """
    src = record_table(dia_sources, "diaSource", where="dia_sources")
    object_ids, has_object = _int_column(src, "diaObjectId")
    wanted = np.unique(object_ids[has_object])
    times = src.column("midpointMjdTai").to_numpy().astype(float)
    prv = forced = None
    if len(wanted) and src.num_rows:
        start, end = float(times.min()) - history_days, float(times.max())
        prv = apdb.get_dia_sources(None, wanted, start, end)
        forced = apdb.get_dia_forced_sources(None, wanted, start, end)
        if dia_objects is None:
            region = _enclosing_circle(src.column("ra").to_numpy(), src.column("dec").to_numpy(),
                                       margin_deg=1.0 / 60.0)
            objects = _as_table(apdb.get_dia_objects(region), "apdb.get_dia_objects")
            keep = np.isin(objects.column("diaObjectId").to_numpy(), wanted)
            dia_objects = objects.filter(pa.array(keep))
    batch = build_alert_batch(src, dia_objects, prv, forced, ss_sources, cutouts,
                              history_days=history_days, **kwargs)
    return batch if as_batch else batch.records()
