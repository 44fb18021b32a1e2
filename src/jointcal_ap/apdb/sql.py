"""The SQL APDB: SQLite (one file, the default) and PostgreSQL (psycopg 3), one class.

:func:`open_apdb` opens (or creates) a database and returns a :class:`SqlApdb`, which
implements :class:`jointcal_ap.stages.interfaces.Apdb`. The layout is
:mod:`jointcal_ap.apdb.layout`: Rubin's tables with a few index and bookkeeping columns.

Guarantees
----------
**One transaction per unit.** :meth:`SqlApdb.store` writes a unit's DiaSources,
DiaForcedSources and SSSources, the new versions of the DiaObjects they touch, their
lightcurve features and the unit's bookkeeping row in one transaction: a failure, or a
process killed mid-store, leaves the database as it was before that unit (SQLite's journal,
PostgreSQL's WAL).

**Idempotent by key.** A unit is identified by ``IdempotencyKey.unit``. Storing exactly the
same key again does nothing and returns False. Storing the unit with another
``input_identity`` *replaces* it, in the same single transaction: the unit's earlier
DiaSources, DiaForcedSources and SSSources are deleted and the new ones inserted; then the
versions, from the unit's visit time on, of every object its old or new DiaSources belong to
(and of every object it measured by forced photometry that has a version from then on) are
rebuilt from the stored history, as storing the units in time order writes them: one
version per visit time at which the object has DiaSources, summarising the DiaSources and
DiaForcedSources up to that time. Earlier versions are kept; an object left without
DiaSources is deleted. What later units stored is kept as written — they associated against
the unit's old rows: re-run them too, in time order, and the database is the one the new
inputs alone give. No row is ever duplicated. A re-run reads the objects as they were before
the unit (:meth:`SqlApdb.get_dia_objects` with ``exclude_unit``).

**Summaries are never stale or lost.** The summary columns of a DiaObject (positions, per-band
flux statistics, counts, first/last times) and its lightcurve features are recomputed inside
the transaction from *all* the DiaSources the database then holds for it
(:mod:`jointcal_ap.apdb.summaries`), after locking the object. Two units that touch the same
object concurrently therefore serialise on it, and the second sees the first's sources.

**Versions.** A store at visit time ``t`` that gives an object new DiaSources closes its
current version at ``t`` and inserts a new one starting at ``t``; if the current version
already starts at ``t`` (another detector of the same visit) or later (a unit stored out of
time order), it is rewritten in place. Forced photometry alone does not create versions
(``fpFluxMean`` is refreshed with the object's next DiaSource), as in Rubin's pipelines.

**Parallel writers.** PostgreSQL: each store runs in READ COMMITTED with a transaction-level
advisory lock on its unit and row locks (``SELECT ... FOR UPDATE``, in id order) on one
never-updated ``apdb_object`` row per object it touches — inserted first if the object is
new, so that two writers creating or updating the same object take turns even before
either has committed; deadlocks and serialisation failures are retried with back-off. SQLite: one writer at a time (``BEGIN IMMEDIATE``, WAL journal so readers do
not block), waiting up to ``busy_timeout`` seconds for the lock and retrying.

**Ids.** :meth:`SqlApdb.allocate_ids` hands out ids from a sequence row updated in its own
transaction, so ids are unique across processes; with ``unit=...`` a re-run of the unit gets
its earlier block again, which keeps a re-run's rows identical. DiaObject and DiaSource ids
share one sequence because a new DiaObject takes the id of the DiaSource that created it (as
Rubin's ``ap_association`` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.apdb import layout
from jointcal_ap.apdb.errors import ApdbConnectionError, ApdbError, ApdbInputError, ApdbSchemaError
from jointcal_ap.apdb.features import FEATURE_COLUMNS, FeatureOptions, lightcurve_features
from jointcal_ap.apdb.htm import htm_index
from jointcal_ap.apdb.pixels import healpix29, in_region, region_ranges
from jointcal_ap.apdb.summaries import (
    FORCED_COLUMNS,
    SOURCE_COLUMNS,
    SUMMARY_COLUMNS,
    dia_object_summaries,
)
from jointcal_ap.apdb.validate import check_coordinates, check_unique, conform, int_column

__all__ = ["SqlApdb", "StoreResult", "open_apdb"]

log = logging.getLogger("jointcal_ap.apdb")

#: Largest IN-list sent in one statement.
_CHUNK = 5000
#: Transient errors retried by store(): PostgreSQL deadlock, serialisation failure, lock
#: timeout; SQLite "database is locked".
_PG_RETRY = {"40P01", "40001", "55P03"}
_ID_SPACES = {"DiaObject": "DiaObject/DiaSource", "DiaSource": "DiaObject/DiaSource",
              "DiaForcedSource": "DiaForcedSource", "SSObject": "SSObject"}


def _mask_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _engine_url(url: str) -> tuple[str, str]:
    """(SQLAlchemy URL, dialect) for an APDB URL; raises ApdbConnectionError on others."""
    if url.startswith("sqlite:"):
        if url in ("sqlite://", "sqlite:///:memory:") or ":memory:" in url:
            raise ApdbConnectionError(f"{url}: an in-memory SQLite database cannot be shared "
                                      "between connections; give a file, sqlite:///path.db")
        return url, "sqlite"
    if url.startswith("postgresql+psycopg://"):
        return url, "postgresql"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1], "postgresql"
    raise ApdbConnectionError(f"{url}: unsupported APDB URL; expected sqlite:///path.db or "
                              "postgresql://user@host:port/dbname")


def _retryable(exc: BaseException) -> bool:
    import sqlalchemy as sa

    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_RETRY:
        return True
    return "database is locked" in str(orig) or "database is busy" in str(orig)


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


@dataclass(frozen=True)
class StoreResult:
    """What :meth:`SqlApdb.store_unit` did.

    Attributes
    ----------
    stored : bool
        False if exactly this write was stored before (nothing done).
    dia_objects : pyarrow.Table or None
        The DiaObject versions written for the unit, Rubin's columns; None when nothing was
        stored. A first store: the new (or, out of time order, rewritten) current version
        of every object the unit gave DiaSources. A replacement: the rebuilt versions
        starting at the unit's visit time (closed if later units' sources followed).
    """

    stored: bool
    dia_objects: Any = None


class SqlApdb:
    """An APDB in SQLite or PostgreSQL. Make one with :func:`open_apdb`.

    Attributes
    ----------
    url : str
        The URL it was opened with (password hidden).
    dialect : str
        ``"sqlite"`` or ``"postgresql"``.
    schema_version : str
        The ``apdb.yaml`` version of the database.
    feature_options : FeatureOptions or None
        Options of the lightcurve features computed on store (None: none computed).
    """

    def __init__(self, engine: Any, url: str, dialect: str, *, busy_timeout: float,
                 feature_options: FeatureOptions | None, max_retries: int = 20):
        import sqlalchemy as sa

        self._engine = engine
        self.url = _mask_url(url)
        self.dialect = dialect
        self.busy_timeout = busy_timeout
        self.feature_options = feature_options
        self.max_retries = max_retries
        self._md = layout.build_metadata()
        self._sa = sa
        self.schema_version = ""

    # ------------------------------------------------------------------ plumbing

    def _connect(self, write: bool) -> Any:
        return self._engine.connect().execution_options(apdb_write=write)

    def _raw(self, conn: Any) -> Any:
        return conn.connection.driver_connection

    def _t(self, name: str) -> Any:
        return self._md.tables[name]

    def _fetch(self, conn: Any, stmt: Any) -> list[tuple]:
        return [tuple(r) for r in conn.execute(stmt).fetchall()]

    def _query(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run ``sql`` (``?`` placeholders) on the driver connection; the rows as tuples.
        The hot paths use this rather than SQLAlchemy's compiled statements: large id
        lists travel as one parameter, and rows are not wrapped (PostgreSQL: binary
        results, so REAL values arrive as the exact float32)."""
        raw = self._raw(conn)
        with self._driver_errors("query"):
            if self.dialect == "sqlite":
                return raw.execute(sql, tuple(params)).fetchall()
            with raw.cursor(binary=True) as cur:
                cur.execute(sql.replace("?", "%s"), tuple(params))
                return cur.fetchall() if cur.description is not None else []

    def _execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement on the driver connection; the number of rows it touched."""
        raw = self._raw(conn)
        with self._driver_errors("statement"):
            if self.dialect == "sqlite":
                return raw.execute(sql, tuple(params)).rowcount
            with raw.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), tuple(params))
                return cur.rowcount

    def _ids_sql(self, column: str) -> str:
        """A condition ``column`` in a list of ids given as one parameter (:meth:`_ids`)."""
        if self.dialect == "sqlite":
            return f'"{column}" IN (SELECT value FROM json_each(?))'
        return f'"{column}" = ANY(CAST(? AS bigint[]))'

    def _ids(self, ids: Iterable[int]) -> str:
        """Ids as one parameter: a JSON array (SQLite) or an array literal (PostgreSQL)."""
        values = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids,
                                      np.int64))
        text = ",".join(map(str, values.tolist()))
        return f"[{text}]" if self.dialect == "sqlite" else f"{{{text}}}"

    def _insert_rows(self, conn: Any, table: str, data: Any) -> None:
        """Bulk insert a ``pyarrow.Table`` (its column names are the table's) through the
        driver: ``executemany`` on SQLite; on PostgreSQL ``COPY ... FROM STDIN`` of CSV that
        Arrow writes (NULL as an empty field, floats in shortest round-trip form)."""
        if data.num_rows == 0:
            return
        import pyarrow.csv as pacsv

        cols = ", ".join(f'"{c}"' for c in data.column_names)
        raw = self._raw(conn)
        with self._driver_errors(table):
            if self.dialect == "sqlite":
                marks = ", ".join("?" * data.num_columns)
                raw.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})',
                                _driver_rows(data))
            else:
                sink = io.BytesIO()
                pacsv.write_csv(data, sink, pacsv.WriteOptions(include_header=False,
                                                               quoting_style="needed"))
                with raw.cursor() as cur, cur.copy(
                        f'COPY "{table}" ({cols}) FROM STDIN WITH (FORMAT csv)') as copy:
                    copy.write(sink.getvalue())

    @contextlib.contextmanager
    def _driver_errors(self, what: str) -> Iterator[None]:
        """Errors of statements run on the driver connection, as SQLAlchemy's exceptions
        (so that conflicts are retried and integrity errors explained like the others)."""
        base = self._engine.dialect.loaded_dbapi.Error
        try:
            yield
        except base as exc:
            raise self._sa.exc.DBAPIError.instance(what, None, exc, base) from exc

    def _lock_unit(self, conn: Any, uid: int) -> None:
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (uid,))

    def _run_write(self, func: Any) -> Any:
        """Run ``func(conn)`` in a write transaction, retrying transient conflicts."""
        delay = 0.05
        for attempt in range(self.max_retries + 1):
            try:
                with self._connect(write=True) as conn, conn.begin():
                    return func(conn)
            except self._sa.exc.DBAPIError as exc:
                if attempt == self.max_retries or not _retryable(exc):
                    raise
                log.info("APDB write conflict (%s); retry %d", exc.orig, attempt + 1)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ schema

    def _create_or_check(self, create: bool) -> None:
        sa = self._sa

        def work(conn: Any) -> None:
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7370015)")
            inspector = sa.inspect(conn)
            tables = set(inspector.get_table_names())
            if "metadata" not in tables:
                if not create:
                    raise ApdbSchemaError(
                        f"{self.url} is not an APDB (it has no 'metadata' table); create one "
                        "with `jointcal-ap apdb create URL` or open_apdb(url, create=True)")
                ours = set(self._md.tables)
                if tables & ours:
                    raise ApdbSchemaError(f"{self.url}: tables {sorted(tables & ours)} exist but "
                                          "the 'metadata' table does not; not an APDB we made")
                self._md.create_all(conn)
                conn.execute(self._t("metadata").insert(),
                             [{"name": k, "value": v}
                              for k, v in layout.expected_metadata_rows().items()])
                return
            self._check(conn, inspector, tables)

        self._run_write(work) if create else self._read(work)
        with self._connect(False) as conn:
            meta = dict(self._fetch(conn, self._sa.select(self._t("metadata").c.name,
                                                          self._t("metadata").c.value)))
        self.schema_version = meta.get("version:schema", "")

    def _read(self, func: Any) -> Any:
        with self._connect(False) as conn, conn.begin():
            return func(conn)

    def _check(self, conn: Any, inspector: Any, tables: set[str]) -> None:
        md = self._t("metadata")
        meta = dict(self._fetch(conn, self._sa.select(md.c.name, md.c.value)))
        for key, want in layout.expected_metadata_rows().items():
            have = meta.get(key)
            if key.startswith("config:"):
                same = have is not None and json.loads(have) == json.loads(want)
            else:
                same = have == want
            if not same:
                raise ApdbSchemaError(f"{self.url}: metadata {key!r} is {have!r}, this code "
                                      f"writes {want!r}; the database was made with another "
                                      "schema or layout")
        columns = self._database_columns(conn)
        for name, table in self._md.tables.items():
            if name not in tables:
                raise ApdbSchemaError(f"{self.url}: table {name!r} is missing")
            have = columns.get(name, {})
            for col in table.columns:
                if col.name not in have:
                    raise ApdbSchemaError(f"{self.url}: column {name}.{col.name} is missing "
                                          "from the database")
                got_type, got_nullable = have[col.name]
                want_type = _type_key(col.type.compile(dialect=conn.dialect))
                if want_type != got_type:
                    raise ApdbSchemaError(f"{self.url}: column {name}.{col.name} is {got_type} "
                                          f"in the database, the schema says {want_type}")
                if got_nullable != bool(col.nullable) and not col.primary_key:
                    raise ApdbSchemaError(
                        f"{self.url}: column {name}.{col.name} is "
                        f"{'NULL' if got_nullable else 'NOT NULL'} in the database, the "
                        f"schema says {'NULL' if col.nullable else 'NOT NULL'}")
            extra = sorted(set(have) - {c.name for c in table.columns})
            if extra:
                raise ApdbSchemaError(f"{self.url}: column {name}.{extra[0]} is in the "
                                      "database but not in the schema")

    def _database_columns(self, conn: Any) -> dict[str, dict[str, tuple[str, bool]]]:
        """table → column → (type as CREATE TABLE spells it, nullable), in one query."""
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        if self.dialect == "sqlite":
            rows = self._query(conn, 'SELECT m.name, p.name, p.type, p."notnull" FROM '
                                     "sqlite_master AS m JOIN pragma_table_info(m.name) AS p "
                                     "WHERE m.type = 'table'")
            for table, column, kind, notnull in rows:
                out.setdefault(table, {})[column] = (_type_key(kind), not notnull)
            return out
        rows = self._query(conn, "SELECT table_name, column_name, data_type, "
                                 "character_maximum_length, is_nullable FROM "
                                 "information_schema.columns WHERE table_schema = "
                                 "current_schema()")
        names = {"character": "CHAR", "character varying": "VARCHAR"}
        for table, column, kind, length, nullable in rows:
            kind = names.get(kind, kind.upper())
            if length is not None:
                kind = f"{kind}({length})"
            out.setdefault(table, {})[column] = (_type_key(kind), nullable == "YES")
        return out

    # ------------------------------------------------------------------ reads

    def _columns(self, table: str, columns: Sequence[str] | None) -> list[str]:
        from jointcal_ap.schemas import apdb_schema

        names = apdb_schema()[table].names
        if columns is None:
            return names
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ApdbInputError(f"{table} has no column(s) {unknown}")
        return list(columns)

    def _arrow(self, table: str, columns: Sequence[str], rows: list[tuple]) -> Any:
        import pyarrow as pa

        from jointcal_ap.schemas import apdb_schema

        schema = apdb_schema()[table].arrow_schema(columns)
        data = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
        arrays = []
        for field, values in zip(schema, data, strict=True):
            if pa.types.is_string(field.type):
                values = [v.rstrip() if isinstance(v, str) else v for v in values]
            elif pa.types.is_boolean(field.type):  # SQLite stores booleans as 0/1
                values = [None if v is None else bool(v) for v in values]
            arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _select_region(self, conn: Any, table: str, columns: Sequence[str], where: str,
                       params: Sequence[Any], region: Any) -> list[tuple]:
        """Rows of ``table`` in the ``_healpix_29`` ranges covering ``region`` (and
        ``where``): one index range scan per range, joined with UNION ALL (an OR of ranges
        makes SQLite scan the whole partial index)."""
        cols = ", ".join(f'"{c}"' for c in columns)
        parts, args = [], []
        for lo, hi in region_ranges(region):
            parts.append(f'SELECT {cols} FROM "{table}" WHERE ({where}) AND '
                         '"_healpix_29" >= ? AND "_healpix_29" < ?')
            args += [*params, int(lo), int(hi)]
        return self._query(conn, " UNION ALL ".join(parts), args) if parts else []

    def _select_rows(self, conn: Any, table: str, columns: Sequence[str], where: str = "",
                     params: Sequence[Any] = (), ids_column: str | None = None,
                     ids: Iterable[int] | None = None, suffix: str = "") -> list[tuple]:
        """``SELECT columns FROM table WHERE where [AND ids_column IN ids] suffix``."""
        clauses, args = ([f"({where})"] if where else []), list(params)
        if ids is not None:
            value = self._ids(ids)
            if len(value) == 2:  # "[]" or "{}": no id
                return []
            clauses.append(self._ids_sql(ids_column or "diaObjectId"))
            args.append(value)
        cols = ", ".join(f'"{c}"' for c in columns)
        sql = f'SELECT {cols} FROM "{table}"'
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return self._query(conn, sql + suffix, args)

    def get_dia_objects(self, region: Any, *, columns: Sequence[str] | None = None,
                        object_ids: Any = None, exclude_unit: str | None = None) -> Any:
        """The current version of every DiaObject in ``region`` (or with the given ids).

        Parameters
        ----------
        region : SkyRegion or None
            Objects whose current position is inside (None: ``object_ids`` must be given).
        columns : sequence of str, optional
            DiaObject columns to return (default: all).
        object_ids : array_like of int, optional
            Only these objects.
        exclude_unit : str, optional
            Read the database as it was before this unit (an ``IdempotencyKey.unit``): each
            object's version valid just before the unit's visit time *t*
            (``validityStartMjdTai < t <= validityEndMjdTai``, or still open); objects with
            no version before *t* — those the unit created and those created after it — are
            left out, whichever unit updated them since. A re-run with new inputs
            associates against this view: what the unit saw when it ran in time order. A
            unit not stored: the current versions. Objects are found by their current
            position (the region should carry a margin).

        Returns
        -------
        pyarrow.Table
            Rubin's DiaObject columns.
        """
        cols = self._columns("DiaObject", columns)
        read = list(dict.fromkeys([*cols, "diaObjectId", "ra", "dec", "validityStartMjdTai"]))
        where = '"validityEndMjdTai" IS NULL'
        if region is None and object_ids is None:
            raise ApdbInputError("get_dia_objects needs a region or object_ids")
        i_start, i_id = read.index("validityStartMjdTai"), read.index("diaObjectId")
        with self._connect(False) as conn, conn.begin():
            if object_ids is None:
                rows = self._select_region(conn, "DiaObject", read, where, (), region)
            else:
                rows = self._select_rows(conn, "DiaObject", read, where, (), "diaObjectId",
                                         np.asarray(object_ids))
            before = self._unit_time(conn, exclude_unit) if exclude_unit is not None else None
            if before is not None:
                # A current version starting before t is the one valid then; for the others,
                # the version that was open at t (if the object existed before t).
                later = [int(r[i_id]) for r in rows if r[i_start] >= before]
                rows = [r for r in rows if r[i_start] < before]
                rows += self._select_rows(
                    conn, "DiaObject", read, '"validityStartMjdTai" < ? AND '
                    '"validityEndMjdTai" >= ?', [before, before], "diaObjectId", later)
        if region is not None and rows:
            ra = np.fromiter((r[read.index("ra")] for r in rows), float, len(rows))
            dec = np.fromiter((r[read.index("dec")] for r in rows), float, len(rows))
            keep = np.flatnonzero(in_region(region, ra, dec))
            rows = [rows[k] for k in keep]
        rows.sort(key=lambda r: r[i_id])
        idx = [read.index(c) for c in cols]
        return self._arrow("DiaObject", cols, [tuple(r[i] for i in idx) for r in rows])

    def _unit_time(self, conn: Any, unit: str) -> float | None:
        """The visit time stored for ``unit``, or None if it is not stored."""
        rows = self._query(conn, 'SELECT "unit", "visit_time_mjd_tai" FROM "apdb_unit" '
                                 'WHERE "unit_id" = ?', [layout.unit_id(unit)])
        return float(rows[0][1]) if rows and rows[0][0] == unit else None

    def _history(self, table_name: str, region: Any, object_ids: Any, start: float, end: float,
                 columns: Sequence[str] | None) -> Any:
        cols = self._columns(table_name, columns)
        read = list(dict.fromkeys([*cols, "ra", "dec", "midpointMjdTai", "diaObjectId"]))
        where = '"midpointMjdTai" >= ? AND "midpointMjdTai" < ?'
        params = [float(start), float(end)]
        if object_ids is None and region is None:
            raise ApdbInputError(f"reading {table_name}: give a region or object_ids")
        with self._connect(False) as conn, conn.begin():
            if object_ids is None:
                rows = self._select_region(conn, table_name, read, where, params, region)
            else:
                rows = self._select_rows(conn, table_name, read, where, params, "diaObjectId",
                                         np.asarray(object_ids))
        if object_ids is None and rows:
            ra = np.array([r[read.index("ra")] for r in rows], float)
            dec = np.array([r[read.index("dec")] for r in rows], float)
            rows = [r for r, k in zip(rows, in_region(region, ra, dec), strict=True) if k]
        i_obj, i_t = read.index("diaObjectId"), read.index("midpointMjdTai")
        rows.sort(key=lambda r: (r[i_obj] if r[i_obj] is not None else -1, r[i_t]))
        idx = [read.index(c) for c in cols]
        return self._arrow(table_name, cols, [tuple(r[i] for i in idx) for r in rows])

    def get_dia_sources(self, region: Any, object_ids: Any, start_mjd_tai: float,
                        end_mjd_tai: float, *, columns: Sequence[str] | None = None) -> Any:
        """DiaSources of ``object_ids`` (or in ``region`` if ``object_ids`` is None) with
        ``start <= midpointMjdTai < end``, sorted by object then time."""
        return self._history("DiaSource", region, object_ids, start_mjd_tai, end_mjd_tai,
                             columns)

    def get_dia_forced_sources(self, region: Any, object_ids: Any, start_mjd_tai: float,
                               end_mjd_tai: float, *, columns: Sequence[str] | None = None) -> Any:
        """DiaForcedSources of ``object_ids`` (or in ``region``) in the time window."""
        return self._history("DiaForcedSource", region, object_ids, start_mjd_tai, end_mjd_tai,
                             columns)

    def get_unit_dia_sources(self, unit: str, *, columns: Sequence[str] | None = None) -> Any:
        """The DiaSources stored by ``unit`` (``IdempotencyKey.unit``), sorted by id."""
        cols = self._columns("DiaSource", columns)
        read = list(dict.fromkeys([*cols, "diaSourceId"]))
        with self._connect(False) as conn, conn.begin():
            rows = self._select_rows(conn, "DiaSource", read, '"apdb_unit" = ?',
                                     [layout.unit_id(unit)])
        i = read.index("diaSourceId")
        rows.sort(key=lambda r: r[i])
        idx = [read.index(c) for c in cols]
        return self._arrow("DiaSource", cols, [tuple(r[k] for k in idx) for r in rows])

    def get_ss_sources(self, dia_source_ids: Any) -> Any:
        """SSSource rows of the given DiaSources."""
        cols = self._columns("SSSource", None)
        with self._connect(False) as conn, conn.begin():
            rows = self._select_rows(conn, "SSSource", cols, ids_column="diaSourceId",
                                     ids=np.asarray(dia_source_ids))
        rows.sort()
        return self._arrow("SSSource", cols, rows)

    def ss_objects_observed(self, start_mjd_tai: float | None = None,
                            end_mjd_tai: float | None = None) -> np.ndarray:
        """Ids of the Solar System objects with an SSSource whose DiaSource was observed in
        ``[start_mjd_tai, end_mjd_tai)`` (either bound may be None), sorted."""
        where, args = [], []
        if start_mjd_tai is not None:
            where.append('d."midpointMjdTai" >= ?')
            args.append(float(start_mjd_tai))
        if end_mjd_tai is not None:
            where.append('d."midpointMjdTai" < ?')
            args.append(float(end_mjd_tai))
        sql = ('SELECT DISTINCT s."ssObjectId" FROM "SSSource" s JOIN "DiaSource" d '
               'ON d."diaSourceId" = s."diaSourceId"')
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect(False) as conn, conn.begin():
            rows = self._query(conn, sql, args)
        return np.sort(np.asarray([r[0] for r in rows], np.int64))

    def get_ss_history(self, ss_object_ids: Any) -> tuple[Any, Any]:
        """Every SSSource of the given objects (their whole history, sorted by
        ``diaSourceId``) and the DiaSources they point to: the inputs of
        :func:`jointcal_ap.sso.daily_products`."""
        ss_cols = self._columns("SSSource", None)
        dia_cols = self._columns("DiaSource", None)
        with self._connect(False) as conn, conn.begin():
            ss_rows = self._select_rows(conn, "SSSource", ss_cols, ids_column="ssObjectId",
                                        ids=np.asarray(ss_object_ids))
            ss_rows.sort()
            dia_ids = [r[ss_cols.index("diaSourceId")] for r in ss_rows]
            dia_rows = self._select_rows(conn, "DiaSource", dia_cols, ids_column="diaSourceId",
                                         ids=np.asarray(dia_ids, np.int64))
        i = dia_cols.index("diaSourceId")
        dia_rows.sort(key=lambda r: r[i])
        return self._arrow("SSSource", ss_cols, ss_rows), self._arrow("DiaSource", dia_cols,
                                                                        dia_rows)

    def get_ss_objects(self, ss_object_ids: Any = None) -> Any:
        """SSObject rows (all of them, or of the given ids), sorted by ``ssObjectId``."""
        cols = self._columns("SSObject", None)
        with self._connect(False) as conn, conn.begin():
            rows = self._select_rows(conn, "SSObject", cols, ids_column="ssObjectId",
                                     ids=None if ss_object_ids is None
                                     else np.asarray(ss_object_ids))
        rows.sort(key=lambda r: r[0])
        return self._arrow("SSObject", cols, rows)

    def store_ss_objects(self, ss_objects: Any) -> int:
        """Insert or replace SSObject rows (Rubin's columns, e.g. from
        :func:`jointcal_ap.sso.daily_products`) in one transaction; returns the row count.
        Running it again with the same rows leaves the table as it was."""
        from jointcal_ap.schemas import apdb_schema

        table = apdb_schema()["SSObject"].conform(ss_objects, where="SSObject rows")
        ids = np.asarray(table.column("ssObjectId").to_numpy(zero_copy_only=False), np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ApdbInputError("SSObject rows: an ssObjectId appears more than once")

        def work(conn: Any) -> int:
            if len(ids):
                self._execute(conn, f'DELETE FROM "SSObject" WHERE {self._ids_sql("ssObjectId")}',
                              [self._ids(ids)])
            self._insert_rows(conn, "SSObject", table)
            return table.num_rows

        return self._run_write(work)

    def get_features(self, object_ids: Any) -> Any:
        """Rows of ``DiaObjectFeatures`` for the given objects (a ``pyarrow.Table``), by object
        and then band in ``ugrizy`` order."""
        import pyarrow as pa

        table = self._t(layout.FEATURES_TABLE)
        names = [c.name for c in table.columns]
        with self._connect(False) as conn, conn.begin():
            rows = self._select_rows(conn, layout.FEATURES_TABLE, names, ids_column="diaObjectId",
                                     ids=np.asarray(object_ids))
        rows.sort(key=lambda r: (r[0], "ugrizy".find(str(r[1]).rstrip()), r[1]))
        data = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
        types = {"diaObjectId": pa.int64(), "band": pa.string()}
        types.update({name: pa.int32() if kind == "int" else pa.float64()
                      for name, kind, _u, _d in FEATURE_COLUMNS})
        return pa.table({n: pa.array([v.rstrip() if isinstance(v, str) else v for v in d],
                                     type=types[n]) for n, d in zip(names, data, strict=True)})

    def unit_token(self, unit: str) -> str | None:
        """The idempotency token stored for ``unit`` (``IdempotencyKey.unit``), or None."""
        table = self._t("apdb_unit")
        with self._connect(False) as conn, conn.begin():
            rows = self._fetch(conn, self._sa.select(table.c.token, table.c.unit).where(
                table.c.unit_id == layout.unit_id(unit)))
        return rows[0][0] if rows and rows[0][1] == unit else None

    def units(self) -> list[dict[str, Any]]:
        """Every stored unit's bookkeeping row."""
        table = self._t("apdb_unit")
        with self._connect(False) as conn, conn.begin():
            result = conn.execute(self._sa.select(table).order_by(table.c.unit))
            return [dict(r._mapping) for r in result]

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (current DiaObjects as ``DiaObject(current)``)."""
        sa = self._sa
        out = {}
        with self._connect(False) as conn, conn.begin():
            for name in ("DiaObject", "DiaSource", "DiaForcedSource", "SSSource", "SSObject",
                         layout.FEATURES_TABLE, "apdb_unit"):
                out[name] = int(conn.execute(sa.select(sa.func.count()).select_from(
                    self._t(name))).scalar_one())
            obj = self._t("DiaObject")
            out["DiaObject(current)"] = int(conn.execute(
                sa.select(sa.func.count()).select_from(obj).where(
                    obj.c.validityEndMjdTai.is_(None))).scalar_one())
        return out

    def checksums(self, tables: Sequence[str] | None = None) -> dict[str, str]:
        """SHA-256 of every row of each table (all columns, rows in primary-key order):
        equal checksums mean equal contents, on either backend (REAL values are hashed as
        float32, CHAR values without padding)."""
        names = tables or ("DiaObject", "DiaSource", "DiaForcedSource", "SSSource",
                           layout.FEATURES_TABLE, "apdb_unit", "apdb_id_reservation")
        out = {}
        with self._connect(False) as conn, conn.begin():
            for name in names:
                table = self._t(name)
                real = [isinstance(c.type, self._sa.REAL) for c in table.columns]
                order = [c for c in table.primary_key.columns] or list(table.columns)
                h = hashlib.sha256()
                for row in conn.execute(self._sa.select(table).order_by(*order)):
                    h.update(repr(tuple(_canonical(v, r) for v, r in zip(row, real,
                                                                          strict=True))).encode())
                out[name] = h.hexdigest()
        return out

    # ------------------------------------------------------------------ ids

    def allocate_ids(self, table: str, count: int, *, unit: str | None = None) -> np.ndarray:
        """``count`` new unique int64 ids for ``table``, never handed out before, also
        across processes.

        Parameters
        ----------
        table : str
            ``"DiaObject"``, ``"DiaSource"`` (one shared id space), ``"DiaForcedSource"`` or
            ``"SSObject"``.
        count : int
        unit : str, optional
            Reserve the block for this unit: a later call for the same unit and table gets
            the same ids again (the first ``count`` of them), if the block is large enough.
        """
        if table not in _ID_SPACES:
            raise ApdbInputError(f"allocate_ids: unknown table {table!r}; expected one of "
                                 f"{sorted(_ID_SPACES)}")
        count = int(count)
        if count < 0:
            raise ApdbInputError(f"allocate_ids: count must be >= 0, got {count}")
        if count == 0:
            return np.zeros(0, np.int64)
        space = _ID_SPACES[table]
        sa = self._sa
        seq, res = self._t("apdb_id_sequence"), self._t("apdb_id_reservation")

        def work(conn: Any) -> int:
            uid = layout.unit_id(unit) if unit is not None else None
            if uid is not None:
                self._lock_unit(conn, uid)
                got = self._fetch(conn, sa.select(res.c.start_id, res.c.count).where(
                    res.c.unit_id == uid, res.c.name == space))
                if got and got[0][1] >= count:
                    return int(got[0][0])
            stmt = sa.select(seq.c.next_id).where(seq.c.name == space)
            if self.dialect == "postgresql":
                conn.execute(sa.text("LOCK TABLE apdb_id_sequence IN SHARE ROW EXCLUSIVE MODE"))
            row = self._fetch(conn, stmt)
            if row:
                start = int(row[0][0])
                conn.execute(seq.update().where(seq.c.name == space).values(
                    next_id=start + count))
            else:
                start = self._first_free_id(conn, space)
                conn.execute(seq.insert().values(name=space, next_id=start + count))
            if uid is not None:
                conn.execute(res.delete().where(res.c.unit_id == uid, res.c.name == space))
                conn.execute(res.insert().values(unit_id=uid, name=space, start_id=start,
                                                 count=count))
            return start

        start = self._run_write(work)
        return np.arange(start, start + count, dtype=np.int64)

    def _first_free_id(self, conn: Any, space: str) -> int:
        sa = self._sa
        columns = {"DiaObject/DiaSource": [("DiaObject", "diaObjectId"),
                                           ("DiaSource", "diaSourceId")],
                   "DiaForcedSource": [("DiaForcedSource", "diaForcedSourceId")],
                   "SSObject": [("SSObject", "ssObjectId")]}[space]
        top = 0
        for table, column in columns:
            value = conn.execute(sa.select(sa.func.max(self._t(table).c[column]))).scalar()
            top = max(top, int(value or 0))
        return top + 1

    # ------------------------------------------------------------------ store

    def store(self, write: Any) -> bool:
        """Store one unit in one transaction; idempotent by ``write.key`` (see the module
        docstring for what is guaranteed).

        Parameters
        ----------
        write : ApdbWrite
            ``dia_sources`` must give every source either a ``diaObjectId`` (an existing
            object, or a new one that the store creates) or an ``ssObjectId``;
            ``dia_objects`` is optional and, if given, only checked (every id it names must
            be referenced by a DiaSource of the write): summaries are always recomputed from
            the stored history.

        Returns
        -------
        bool
            False if exactly this write was stored before (nothing done), True otherwise.

        Raises
        ------
        ApdbInputError
            Invalid rows (names the table, column and id), or DiaSource / DiaForcedSource
            ids already stored by another unit.
        """
        return self.store_unit(write).stored

    def store_unit(self, write: Any) -> StoreResult:
        """:meth:`store`, also returning the DiaObject versions the store wrote (what a
        stage hands on as its ``dia_objects`` output, without reading them back)."""
        prepared = _Prepared(write)
        try:
            stored, rows = self._run_write(lambda conn: self._store(conn, prepared))
        except self._sa.exc.IntegrityError as exc:
            raise self._explain_integrity(prepared, exc) from None
        return StoreResult(stored, rows if stored else None)

    def _explain_integrity(self, prepared: _Prepared, exc: Exception) -> Exception:
        with self._connect(False) as conn, conn.begin():
            for name, column, ids in (
                    ("DiaSource", "diaSourceId", prepared.source_ids),
                    ("DiaForcedSource", "diaForcedSourceId", prepared.forced_ids)):
                hit = self._select_rows(
                    conn, name, [column, "apdb_unit"],
                    '"apdb_unit" IS NULL OR "apdb_unit" <> ?', [prepared.uid], column, ids,
                    suffix=f' ORDER BY "{column}"')
                if hit:
                    return ApdbInputError(
                        f"{prepared.where}: {name}.{column} {hit[0][0]} is already stored "
                        f"by another unit (apdb_unit {hit[0][1]})")
        return ApdbError(f"{prepared.where}: the database refused the rows: {exc.orig}")

    def _lock_objects(self, conn: Any, ids: list[int]) -> None:
        """Make sure each object has its ``apdb_object`` row and, on PostgreSQL, lock those
        rows in id order until the transaction ends. A writer that creates an object another
        writer is creating waits for the other's commit on the primary key, then locks the
        row: no two transactions recompute the same object at once."""
        if not ids:
            return
        ids_param = self._ids(ids)
        if self.dialect == "sqlite":  # one writer at a time: the row is enough
            self._execute(conn, 'INSERT OR IGNORE INTO "apdb_object" ("diaObjectId") '
                                'SELECT value FROM json_each(?)', [ids_param])
            return
        self._execute(conn, 'INSERT INTO "apdb_object" ("diaObjectId") SELECT x FROM '
                            'unnest(CAST(? AS bigint[])) AS x ORDER BY x ON CONFLICT DO NOTHING',
                      [ids_param])
        self._query(conn, f'SELECT "diaObjectId" FROM "apdb_object" WHERE '
                          f'{self._ids_sql("diaObjectId")} ORDER BY "diaObjectId" FOR UPDATE',
                    [ids_param])

    def _current(self, conn: Any, ids: list[int]) -> dict[int, tuple[float, Any]]:
        """Current versions of ``ids``: id → (validityStart, creator unit)."""
        cols = ["diaObjectId", "validityStartMjdTai", "apdb_unit"]
        return {int(oid): (float(start), unit) for oid, start, unit in self._select_rows(
            conn, "DiaObject", cols, '"validityEndMjdTai" IS NULL', (), "diaObjectId", ids)}

    def _store(self, conn: Any, p: _Prepared) -> tuple[bool, Any]:
        sa = self._sa
        units = self._t("apdb_unit")
        self._lock_unit(conn, p.uid)
        row = self._fetch(conn, sa.select(units.c.unit, units.c.token,
                                          units.c.visit_time_mjd_tai).where(
            units.c.unit_id == p.uid))
        if row and row[0][0] != p.key.unit:
            raise ApdbError(f"unit {p.key.unit!r} hashes to the id of stored unit "
                            f"{row[0][0]!r}; rename one of them")
        if row and row[0][1] == p.key.token:
            return False, None
        if row:
            return True, self._replace(conn, p, float(row[0][2]))
        touched = sorted(p.source_objects)
        self._lock_objects(conn, touched)
        current = self._current(conn, touched)
        self._insert_rows(conn, "DiaSource", p.sources)
        self._insert_rows(conn, "DiaForcedSource", p.forced)
        self._insert_rows(conn, "SSSource", p.ss)
        written = self._update_objects(conn, touched, current, p)
        self._write_unit_row(conn, p)
        return True, written

    def _write_unit_row(self, conn: Any, p: _Prepared) -> None:
        units = self._t("apdb_unit")
        conn.execute(units.delete().where(units.c.unit_id == p.uid))
        conn.execute(units.insert().values(
            unit_id=p.uid, unit=p.key.unit, token=p.key.token, stage=p.key.stage,
            data_id=json.dumps([[k, v] for k, v in p.key.data_id], default=str),
            input_identity=p.key.input_identity, visit_time_mjd_tai=p.time,
            n_dia_sources=p.sources.num_rows, n_dia_forced_sources=p.forced.num_rows,
            n_ss_sources=p.ss.num_rows))

    def _replace(self, conn: Any, p: _Prepared, old_time: float) -> Any:
        """Replace the stored unit ``p.uid`` by ``p``'s rows and rebuild, from the unit's
        visit time on (the earlier of its old and new times), the versions of the objects
        its old or new rows touch (:meth:`_rebuild_versions`)."""
        def objects_of(table: str) -> set[int]:
            return {int(r[0]) for r in self._query(
                conn, f'SELECT DISTINCT "diaObjectId" FROM "{table}" WHERE "apdb_unit" = ? '
                'AND "diaObjectId" IS NOT NULL', [p.uid])}

        since = min(old_time, p.time)
        with_sources = objects_of("DiaSource") | p.source_objects
        forced = objects_of("DiaForcedSource") | p.forced_objects
        self._lock_objects(conn, sorted(with_sources | forced))
        # Forced photometry enters fpFluxMean of the versions that start at or after it.
        current = self._current(conn, sorted(forced - with_sources))
        rebuild = with_sources | {o for o, (start, _u) in current.items() if start >= since}
        for table in ("DiaSource", "DiaForcedSource", "SSSource"):
            self._execute(conn, f'DELETE FROM "{table}" WHERE "apdb_unit" = ?', [p.uid])
        self._insert_rows(conn, "DiaSource", p.sources)
        self._insert_rows(conn, "DiaForcedSource", p.forced)
        self._insert_rows(conn, "SSSource", p.ss)
        self._write_unit_row(conn, p)
        return self._rebuild_versions(conn, sorted(rebuild), since, p.time)

    def _rebuild_versions(self, conn: Any, ids: list[int], since: float, at: float) -> Any:
        """Rewrite the versions of ``ids`` that start at or after ``since`` from the stored
        history, as storing the units in time order would have written them: one version
        per visit time (the ``apdb_unit`` row's) at which the object has DiaSources, each
        summarising the DiaSources and DiaForcedSources up to that time, the last one open.
        Earlier versions are kept; the latest of them is closed at the first rebuilt one
        (reopened if there is none). An object without any version before ``since`` is
        rebuilt from its first source; one without sources is deleted. Returns the versions
        starting at ``at`` (``pyarrow.Table``, Rubin's columns)."""
        import pyarrow as pa

        hist, forced = self._read_history(conn, ids, times=True)
        ids_sql = self._ids_sql("diaObjectId")
        kept = dict(self._query(conn, f'SELECT "diaObjectId", MAX("validityStartMjdTai") FROM '
                                      f'"DiaObject" WHERE "validityStartMjdTai" < ? AND {ids_sql} '
                                      'GROUP BY "diaObjectId"', [since, self._ids(ids)]))
        self._execute(conn, f'DELETE FROM "DiaObject" WHERE "validityStartMjdTai" >= ? AND '
                            f'{ids_sql}', [since, self._ids(ids)])
        obj, when = hist["diaObjectId"], hist["_time"]
        vanished = sorted(set(ids) - {int(i) for i in obj})
        if vanished:
            self._execute(conn, f'DELETE FROM "DiaObject" WHERE {ids_sql}', [self._ids(vanished)])
        # Version starts: (object, time) of its sources, from `since` on if it has a
        # version before. Each version's unit is the one that stored its first DiaSource.
        pick = (when >= since) | ~np.isin(obj, np.fromiter(kept, np.int64, len(kept)))
        order = np.flatnonzero(pick)[np.lexsort((hist["diaSourceId"][pick], when[pick],
                                                 obj[pick]))]
        first = order[np.r_[True, (np.diff(obj[order]) != 0) | (np.diff(when[order]) != 0)]
                      [:len(order)]]
        v_obj, v_start, v_unit = obj[first], when[first], hist["_unit"][first]
        same_next = np.r_[v_obj[1:] == v_obj[:-1], False][:len(first)]
        v_end = np.where(same_next, np.r_[v_start[1:], np.nan][:len(first)], np.nan)
        summary = {c: np.full(len(first), np.nan) for c in SUMMARY_COLUMNS}
        for t in np.unique(v_start):
            at_t = np.flatnonzero(v_start == t)
            src = np.isin(obj, v_obj[at_t]) & (when <= t)
            frc = np.isin(forced["diaObjectId"], v_obj[at_t]) & (forced["_time"] <= t)
            values = dia_object_summaries(v_obj[at_t], {k: v[src] for k, v in hist.items()},
                                          {k: v[frc] for k, v in forced.items()})
            for c in SUMMARY_COLUMNS:
                summary[c][at_t] = values[c]
        summary = _rounded(summary)
        rebuilt = set(v_obj.tolist())
        relink = [(float(v_start[v_obj == o][0]) if o in rebuilt else None, int(o), float(s))
                  for o, s in kept.items()]
        if relink:
            mark = "?" if self.dialect == "sqlite" else "%s"
            sql = (f'UPDATE "DiaObject" SET "validityEndMjdTai" = {mark} WHERE '
                   f'"diaObjectId" = {mark} AND "validityStartMjdTai" = {mark}')
            raw = self._raw(conn)
            with self._driver_errors("DiaObject"):
                if self.dialect == "sqlite":
                    raw.executemany(sql, relink)
                else:
                    with raw.cursor() as cur:
                        cur.executemany(sql, relink)
        written = _versions(v_obj, v_start, summary, v_end)
        self._insert_versions(conn, written, v_unit)
        self._write_features(conn, ids, hist)
        return written.filter(pa.array(v_start == at))

    def _insert_versions(self, conn: Any, written: Any, unit: np.ndarray) -> None:
        """Insert DiaObject versions (:func:`_versions`) with their spatial indices and the
        unit that wrote each (-1: none, NULL)."""
        import pyarrow as pa

        ra = written.column("ra").to_numpy(zero_copy_only=False)
        dec = written.column("dec").to_numpy(zero_copy_only=False)
        stored = written.append_column("pixelId", pa.array(htm_index(ra, dec))) \
            .append_column("_healpix_29", pa.array(healpix29(ra, dec))) \
            .append_column("apdb_unit", pa.array(unit, mask=unit < 0, type=pa.int64()))
        self._insert_rows(conn, "DiaObject", _non_null(stored))

    def _write_features(self, conn: Any, ids: list[int], hist: dict) -> None:
        """Replace the lightcurve features of ``ids`` by those of their history ``hist``."""
        import pyarrow as pa

        if not ids:
            return
        self._execute(conn, f'DELETE FROM "{layout.FEATURES_TABLE}" WHERE '
                            f'{self._ids_sql("diaObjectId")}', [self._ids(ids)])
        if self.feature_options is not None and len(hist["diaObjectId"]):
            table = lightcurve_features(hist, self.feature_options)
            self._insert_rows(conn, layout.FEATURES_TABLE, pa.table(
                {name: pa.array(table[name], from_pandas=True) for name in
                 ["diaObjectId", "band", *[c[0] for c in FEATURE_COLUMNS]]}))

    def _read_history(self, conn: Any, ids: list[int], *, times: bool = False
                      ) -> tuple[dict, dict]:
        """The DiaSources (:data:`SOURCE_COLUMNS`, ``diaSourceId``) and DiaForcedSources
        (:data:`FORCED_COLUMNS`) of ``ids`` as arrays, in a fixed order. With ``times``, also
        ``_time`` (the visit time of the unit that stored the row, else its
        ``midpointMjdTai``) for both, and ``_unit`` (its unit, -1 if none) for DiaSources."""
        def rows_of(table: str, names: Sequence[str]) -> list[tuple]:
            cols = ", ".join(f't."{c}"' for c in names)
            if not times:
                return self._select_rows(conn, table, names, ids=ids)
            if not ids:
                return []
            return self._query(conn, f'SELECT {cols}, t."apdb_unit", u."visit_time_mjd_tai" '
                                     f'FROM "{table}" t LEFT JOIN "apdb_unit" u ON '
                                     f'u."unit_id" = t."apdb_unit" WHERE '
                                     f't.{self._ids_sql("diaObjectId")}', [self._ids(ids)])

        def split(rows: list[tuple], n: int, i_mid: int, data: dict) -> dict:
            if times:
                data["_unit"] = np.array([-1 if r[n] is None else r[n] for r in rows], np.int64)
                data["_time"] = np.array([r[i_mid] if r[n + 1] is None else r[n + 1]
                                          for r in rows], float)
            return data

        names = (*SOURCE_COLUMNS, "diaSourceId")
        rows = rows_of("DiaSource", names)
        hist = split(rows, len(names), names.index("midpointMjdTai"),
                     _columns_of("DiaSource", names, [r[:len(names)] for r in rows]))
        # A fixed row order makes the recomputed sums bit-for-bit reproducible.
        order = np.lexsort((hist["diaSourceId"], hist["midpointMjdTai"], hist["diaObjectId"]))
        hist = {k: v[order] for k, v in hist.items()}
        f_names = (*FORCED_COLUMNS, "diaForcedSourceId", "midpointMjdTai")
        rows = sorted(rows_of("DiaForcedSource", f_names),
                      key=lambda r: (r[0], r[len(FORCED_COLUMNS)]))
        forced = split(rows, len(f_names), len(f_names) - 1, _columns_of(
            "DiaForcedSource", FORCED_COLUMNS, [r[:len(FORCED_COLUMNS)] for r in rows]))
        forced.pop("_unit", None)
        return hist, forced

    def _update_objects(self, conn: Any, touched: list[int], current: dict[int, tuple],
                        p: _Prepared) -> Any:
        """Recompute the objects a first store gives DiaSources from their stored history
        and write their versions; return the DiaObject versions written
        (``pyarrow.Table``, Rubin's columns)."""

        if not touched:
            return _versions(np.zeros(0, np.int64), np.zeros(0),
                             {c: np.zeros(0) for c in SUMMARY_COLUMNS})
        hist, forced = self._read_history(conn, touched)
        ids = np.unique(hist["diaObjectId"]).astype(np.int64)
        summary = _rounded(dia_object_summaries(ids, hist, forced))
        has = np.array([int(i) in current for i in ids], bool)
        cur_start = np.array([current[int(i)][0] if h else np.nan for i, h in zip(ids, has,
                                                                                 strict=True)])
        cur_unit = np.array([current[int(i)][1] if h and current[int(i)][1] is not None else -1
                             for i, h in zip(ids, has, strict=True)], np.int64)
        later = has & (cur_start >= p.time)            # same visit, or stored out of order
        to_close = ids[has & ~later]
        in_place = ids[later]
        ids_sql = self._ids_sql("diaObjectId")
        if len(to_close):
            self._execute(conn, f'UPDATE "DiaObject" SET "validityEndMjdTai" = ? WHERE '
                                f'"validityEndMjdTai" IS NULL AND {ids_sql}',
                          [p.time, self._ids(to_close)])
        if len(in_place):
            self._execute(conn, f'DELETE FROM "DiaObject" WHERE "validityEndMjdTai" IS NULL '
                                f'AND {ids_sql}', [self._ids(in_place)])
        written = _versions(ids, np.where(later, cur_start, p.time), summary)
        self._insert_versions(conn, written, np.where(later, cur_unit, p.uid))
        self._write_features(conn, ids.tolist(), hist)
        return written

    def close(self) -> None:
        """Release the connections (the object cannot be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> SqlApdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqlApdb({self.url!r}, schema {self.schema_version})"


def _type_key(text: str) -> str:
    """A column type as one spelling for both backends (``DOUBLE`` = ``DOUBLE PRECISION``,
    ``TIMESTAMP`` = ``TIMESTAMP WITHOUT TIME ZONE`` ...)."""
    key = " ".join(str(text).upper().split())
    return {"DOUBLE": "DOUBLE PRECISION", "FLOAT": "DOUBLE PRECISION", "BOOL": "BOOLEAN",
            "INT": "INTEGER", "TIMESTAMP WITHOUT TIME ZONE": "TIMESTAMP"}.get(key, key)


def _canonical(value: Any, real: bool = False) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(float(np.float32(value))) if real else repr(value)
    if isinstance(value, str):
        return value.rstrip()
    return value


def _columns_of(table: str, names: Sequence[str], rows: list[tuple]) -> dict[str, np.ndarray]:
    """Columns of ``rows`` as arrays: REAL columns rounded to float32 — PostgreSQL sends
    float4 as text that parses to a slightly different double — so that both backends, and
    the tables handed out, give the same numbers."""
    from jointcal_ap.schemas import apdb_schema

    schema = apdb_schema()[table]
    data = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    out = {}
    for name, values in zip(names, data, strict=True):
        if name == "band":
            out[name] = np.array([v.rstrip() if isinstance(v, str) else v for v in values], object)
        elif name in ("diaObjectId", "diaSourceId"):
            out[name] = np.array(values, np.int64)
        elif schema.column(name).datatype == "float":
            out[name] = np.array(values, float).astype(np.float32).astype(float)
        else:
            out[name] = np.array(values, float)
    return out


def _rounded(summary: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Summary columns with the REAL ones rounded to float32 (what the database keeps)."""
    from jointcal_ap.schemas import apdb_schema

    schema = apdb_schema()["DiaObject"]
    return {name: values.astype(np.float32).astype(np.float64)
            if schema.column(name).datatype == "float" else values
            for name, values in summary.items()}


def _versions(ids: np.ndarray, start: np.ndarray, summary: dict[str, np.ndarray],
              end: np.ndarray | None = None) -> Any:
    """DiaObject versions (current, without ``validityEndMjdTai``, unless ``end`` is given:
    NaN for open) as a table with Rubin's types; NaN summaries are NULL."""
    import pyarrow as pa

    from jointcal_ap.schemas import apdb_schema

    schema = apdb_schema()["DiaObject"]
    names = ["diaObjectId", "validityStartMjdTai", "validityEndMjdTai", *SUMMARY_COLUMNS]
    values = {"diaObjectId": ids, "validityStartMjdTai": start,
              "validityEndMjdTai": np.full(len(ids), np.nan) if end is None else end, **summary}
    return pa.Table.from_arrays(
        [pa.array(values[n], type=schema.column(n).arrow_type, from_pandas=True) for n in names],
        schema=schema.arrow_schema(names))


def _non_null(table: Any) -> Any:
    """``table`` without its all-NULL columns (left to default to NULL when inserted)."""
    return table.select([name for name, col in zip(table.column_names, table.columns, strict=True)
                         if col.null_count < table.num_rows or not table.num_rows])


def _driver_rows(table: Any) -> list[tuple]:
    """The rows of a ``pyarrow.Table`` as Python tuples for ``executemany``."""
    import pyarrow as pa

    cols = []
    for col in table.columns:
        if col.null_count == 0 and not pa.types.is_string(col.type):
            cols.append(col.to_numpy().tolist())
        else:
            cols.append(col.to_pylist())
    return list(zip(*cols, strict=True))


class _Prepared:
    """A write checked and turned into driver rows, before any transaction starts."""

    def __init__(self, write: Any):
        import pyarrow as pa

        from jointcal_ap.schemas import apdb_schema

        self.key = write.key
        self.uid = layout.unit_id(write.key.unit)
        self.where = f"unit {write.key.unit}"
        self.time = float(write.visit_time_mjd_tai)
        if not math.isfinite(self.time):
            raise ApdbInputError(f"{self.where}: visit_time_mjd_tai is {self.time!r}")
        schema = apdb_schema()
        sources = conform("DiaSource", write.dia_sources if write.dia_sources is not None
                          else schema["DiaSource"].empty(), self.where)
        check_coordinates(sources, "diaSourceId", self.where, "DiaSource")
        check_unique(sources, ("diaSourceId",), self.where, "DiaSource")
        obj_ids = int_column(sources, "diaObjectId")
        ss_ids = int_column(sources, "ssObjectId")
        orphan = (obj_ids < 0) & (ss_ids < 0)
        if orphan.any():
            bad = int_column(sources, "diaSourceId")[orphan]
            raise ApdbInputError(f"{self.where}: DiaSource {int(bad[0])} has neither a "
                                 "diaObjectId nor an ssObjectId (associate it first)")
        self.source_ids = int_column(sources, "diaSourceId")
        self.source_objects = {int(i) for i in np.unique(obj_ids[obj_ids >= 0])}
        if write.dia_objects is not None:
            given = conform("DiaObject", write.dia_objects, self.where, strict=False)
            extra = sorted({int(i) for i in int_column(given, "diaObjectId")} - self.source_objects)
            if extra:
                raise ApdbInputError(f"{self.where}: DiaObject {extra[0]} is in dia_objects but "
                                     "no DiaSource of the unit refers to it")
        forced = conform("DiaForcedSource", write.dia_forced_sources
                         if write.dia_forced_sources is not None
                         else schema["DiaForcedSource"].empty(), self.where)
        check_coordinates(forced, "diaObjectId", self.where, "DiaForcedSource")
        check_unique(forced, ("diaForcedSourceId",), self.where, "DiaForcedSource")
        check_unique(forced, ("diaObjectId", "visit", "detector"), self.where, "DiaForcedSource")
        self.forced_ids = int_column(forced, "diaForcedSourceId")
        self.forced_objects = {int(i) for i in np.unique(int_column(forced, "diaObjectId"))}
        ss = conform("SSSource", write.ss_sources if write.ss_sources is not None
                     else schema["SSSource"].empty(), self.where)
        check_unique(ss, ("diaSourceId",), self.where, "SSSource")
        if ss.num_rows:
            by_source = dict(zip(self.source_ids.tolist(), ss_ids.tolist(), strict=True))
            for sid, oid in zip(int_column(ss, "diaSourceId").tolist(),
                                int_column(ss, "ssObjectId").tolist(), strict=True):
                if by_source.get(sid, -2) != oid:
                    raise ApdbInputError(
                        f"{self.where}: SSSource {sid} (ssObjectId {oid}) needs a DiaSource "
                        f"{sid} of this unit with that ssObjectId")
        ra, dec = (np.asarray(sources.column(c).to_numpy(), float) for c in ("ra", "dec"))
        sources = sources.append_column("pixelId", pa.array(htm_index(ra, dec)))
        sources = sources.append_column("_healpix_29", pa.array(healpix29(ra, dec)))
        fra, fdec = (np.asarray(forced.column(c).to_numpy(), float) for c in ("ra", "dec"))
        forced = forced.append_column("_healpix_29", pa.array(healpix29(fra, fdec)))
        self.sources = _trim(sources, self.uid)
        self.forced = _trim(forced, self.uid)
        self.ss = _trim(ss, self.uid)


def _trim(table: Any, uid: int) -> Any:
    """The columns holding any value, plus ``apdb_unit``: what is inserted (the others
    default to NULL)."""
    import pyarrow as pa

    n = table.num_rows
    keep = [name for name, col in zip(table.column_names, table.columns, strict=True)
            if not (n and col.null_count == n)]
    return table.select(keep).append_column("apdb_unit", pa.array(np.full(n, uid, np.int64)))


def open_apdb(url: str, *, create: bool = False, busy_timeout: float = 60.0,
              features: FeatureOptions | bool | None = True, connect_timeout: float = 10.0
              ) -> SqlApdb:
    """Open the APDB at ``url`` (creating it if ``create``).

    Parameters
    ----------
    url : str
        ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or
        ``postgresql://user[:password]@host:port/dbname`` (a unix socket directory with
        ``?host=/path``).
    create : bool
        Create the tables (and the SQLite file) if the database has none. An existing APDB
        is opened and checked as usual.
    busy_timeout : float
        Seconds a writer waits for another writer's lock before retrying (SQLite), and the
        statement lock timeout on PostgreSQL.
    features : FeatureOptions, bool or None
        Lightcurve features computed on store: options, True for the defaults, False/None
        for none.
    connect_timeout : float
        Seconds to wait for a PostgreSQL server.

    Raises
    ------
    ApdbConnectionError
        The URL is unsupported, the SQLite file does not exist (without ``create``), or the
        server cannot be reached.
    ApdbSchemaError
        The database is not an APDB of this layout: a missing or different table or column
        (named), or another schema version.
    """
    import sqlalchemy as sa

    engine_url, dialect = _engine_url(url)
    options = FeatureOptions() if features is True else (features or None)
    if dialect == "sqlite":
        db = sa.make_url(engine_url).database or ""
        if not create and not Path(db).exists():
            raise ApdbConnectionError(f"{url}: no such SQLite file {db!r} (create the APDB with "
                                      "`jointcal-ap apdb create URL`)")
        if create:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(engine_url, connect_args={"timeout": busy_timeout})
        _sqlite_events(engine, busy_timeout)
    else:
        engine = sa.create_engine(
            engine_url, pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(connect_timeout)),
                          "options": f"-c lock_timeout={int(busy_timeout * 1000)}"})
    apdb = SqlApdb(engine, url, dialect, busy_timeout=busy_timeout, feature_options=options)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise ApdbConnectionError(f"cannot reach the APDB at {apdb.url}: "
                                  f"{str(exc.orig).strip().splitlines()[0]}") from None
    try:
        apdb._create_or_check(create)
    except BaseException:
        engine.dispose()
        raise
    return apdb


def _sqlite_events(engine: Any, busy_timeout: float) -> None:
    import sqlalchemy as sa

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        # A page cache of 256 MiB: index maintenance on large tables stays in memory.
        cur.execute("PRAGMA cache_size=-262144")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("apdb_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
