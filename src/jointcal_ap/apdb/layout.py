"""The physical layout of an APDB: Rubin's tables, our index columns and our bookkeeping.

Every table and column of Rubin's ``apdb.yaml`` (``lsst-sdm-schemas``, read through
:func:`jointcal_ap.schemas.apdb_schema`) is created with SQLAlchemy Core with its name, type,
nullability, primary key and indexes — all of them except ``DiaObjectLast``, which
``dax_apdb`` only uses in its ``last_object_table`` mode. Felis types map as in
``dax_apdb``: ``double`` → DOUBLE PRECISION, ``float`` → REAL, ``long`` → BIGINT, ``int`` →
INTEGER, ``short``/``byte`` → SMALLINT, ``boolean`` → BOOLEAN, ``char(n)`` → CHAR(n),
``string(n)`` → VARCHAR(n), ``text`` → TEXT, ``timestamp`` → TIMESTAMP.

Columns we add (:data:`EXTRA_COLUMNS`; they are not part of the tables we hand out):

``pixelId``
    HTM index at level 20 of ``ra``/``dec`` on DiaObject and DiaSource — what
    ``lsst-dax-apdb``'s SQL backend reads regions through, so that ``dax_apdb`` can read a
    database we write (:mod:`jointcal_ap.apdb.htm`).
``_healpix_29``
    NESTED HEALPix index at order 29 on DiaObject, DiaSource and DiaForcedSource: our own
    region index (:mod:`jointcal_ap.apdb.pixels`). On DiaObject the index is partial
    (``validityEndMjdTai IS NULL``): region reads only touch current versions.
``apdb_unit``
    The unit (see ``apdb_unit`` below) that stored a DiaSource, DiaForcedSource or SSSource
    row, or that created a DiaObject version: what a re-run replaces.

Bookkeeping tables (prefix ``apdb_``):

``apdb_unit``
    One row per stored unit: ``unit_id`` (a 63-bit hash of the unit name), the unit name
    (``stage/dim=value/...``), the idempotency token, the visit time and row counts.
``apdb_object``
    One row per DiaObject id ever stored, never updated: the row a store locks (PostgreSQL
    ``SELECT ... FOR UPDATE``) before it recomputes the object, so that two writers touching
    the same object — even one that neither has committed yet — take turns.
``apdb_id_sequence`` / ``apdb_id_reservation``
    :meth:`SqlApdb.allocate_ids`: the next free id per id space, and the blocks reserved by
    each unit (a re-run gets its block again).
``DiaObjectFeatures``
    Lightcurve features per DiaObject and band (:mod:`jointcal_ap.apdb.features`).

Rubin's ``metadata`` table holds ``version:schema`` (the ``apdb.yaml`` version),
``version:ApdbSql`` and ``config:apdb-sql.json`` (what ``dax_apdb`` checks before reading),
and our ``jointcal_ap:layout`` and ``jointcal_ap:healpix_order``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

__all__ = [
    "DAX_APDB_SQL_VERSION",
    "EXTRA_COLUMNS",
    "FEATURES_TABLE",
    "LAYOUT_VERSION",
    "RUBIN_TABLES",
    "build_metadata",
    "expected_metadata_rows",
    "unit_id",
]

#: Version of this layout (bump when tables or extra columns change).
LAYOUT_VERSION = "1"
#: The ``dax_apdb`` SQL implementation version whose layout we write (its ``ApdbSql`` reads
#: databases of versions 1.x with x <= its own minor).
DAX_APDB_SQL_VERSION = "1.2.0"
#: HTM level of ``pixelId`` (``dax_apdb``'s default).
HTM_LEVEL = 20
#: Rubin tables we create (``DiaObjectLast`` is left out: see the module docstring).
RUBIN_TABLES = (
    "metadata", "DiaObject", "DiaSource", "DiaForcedSource", "DiaObject_To_Object_Match",
    "DetectorVisitProcessingSummary", "SSObject", "SSSource", "mpc_orbits",
    "current_identifications", "numbered_identifications",
)
#: Our columns on Rubin's tables: table → ((name, nullable), ...), all BIGINT.
EXTRA_COLUMNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "DiaObject": (("pixelId", False), ("_healpix_29", False), ("apdb_unit", True)),
    "DiaSource": (("pixelId", False), ("_healpix_29", False), ("apdb_unit", True)),
    "DiaForcedSource": (("_healpix_29", False), ("apdb_unit", True)),
    "SSSource": (("apdb_unit", True),),
}
FEATURES_TABLE = "DiaObjectFeatures"


def unit_id(unit: str) -> int:
    """The 63-bit id of a unit name (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(unit.encode()).digest()[:8], "big") >> 1


def _sql_type(datatype: str, length: int | None) -> Any:
    import sqlalchemy as sa

    simple = {
        "double": sa.Double, "float": sa.REAL, "long": sa.BigInteger, "int": sa.Integer,
        "short": sa.SmallInteger, "byte": sa.SmallInteger, "boolean": sa.Boolean,
        "text": sa.Text, "binary": sa.LargeBinary, "timestamp": sa.TIMESTAMP,
    }
    if datatype in simple:
        return simple[datatype]()
    if datatype == "char":
        return sa.CHAR(length)
    if datatype in ("string", "unicode"):
        return sa.VARCHAR(length)
    raise ValueError(f"unknown Felis datatype {datatype!r}")


@functools.lru_cache(maxsize=1)
def build_metadata() -> Any:
    """``sqlalchemy.MetaData`` holding every table of the layout (cached; treat as read-only)."""
    import sqlalchemy as sa

    from jointcal_ap.apdb.features import FEATURE_COLUMNS
    from jointcal_ap.schemas import apdb_schema

    schema = apdb_schema()
    md = sa.MetaData()
    for name in RUBIN_TABLES:
        table_schema = schema[name]
        pk = set(table_schema.primary_key)
        columns = [sa.Column(c.name, _sql_type(c.datatype, c.length), nullable=c.nullable,
                             primary_key=c.name in pk, autoincrement=False,
                             comment=None)
                   for c in table_schema.columns]
        columns += [sa.Column(extra, sa.BigInteger, nullable=nullable)
                    for extra, nullable in EXTRA_COLUMNS.get(name, ())]
        table = sa.Table(name, md, *columns)
        for index_name, index_columns in table_schema.indexes:
            sa.Index(index_name, *[table.c[c] for c in index_columns])
    obj, src, frc, sss = (md.tables[n] for n in ("DiaObject", "DiaSource", "DiaForcedSource",
                                                  "SSSource"))
    current = obj.c.validityEndMjdTai.is_(None)
    sa.Index("IDX_DiaObject_pixelId", obj.c.pixelId)
    sa.Index("IDX_DiaObject_current_healpix29", obj.c._healpix_29,
             sqlite_where=current, postgresql_where=current)
    sa.Index("IDX_DiaSource_pixelId", src.c.pixelId)
    sa.Index("IDX_DiaSource_healpix29", src.c._healpix_29)
    sa.Index("IDX_DiaSource_apdbUnit", src.c.apdb_unit)
    sa.Index("IDX_DiaForcedSource_healpix29", frc.c._healpix_29)
    sa.Index("IDX_DiaForcedSource_apdbUnit", frc.c.apdb_unit)
    sa.Index("IDX_SSSource_apdbUnit", sss.c.apdb_unit)

    sa.Table(
        "apdb_unit", md,
        sa.Column("unit_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("unit", sa.Text, nullable=False, unique=True),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("data_id", sa.Text, nullable=False),
        sa.Column("input_identity", sa.Text, nullable=False),
        sa.Column("visit_time_mjd_tai", sa.Double, nullable=False),
        sa.Column("n_dia_sources", sa.Integer, nullable=False),
        sa.Column("n_dia_forced_sources", sa.Integer, nullable=False),
        sa.Column("n_ss_sources", sa.Integer, nullable=False),
    )
    sa.Table(
        "apdb_object", md,
        sa.Column("diaObjectId", sa.BigInteger, primary_key=True, autoincrement=False),
    )
    sa.Table(
        "apdb_id_sequence", md,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("next_id", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "apdb_id_reservation", md,
        sa.Column("unit_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("start_id", sa.BigInteger, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    feature_columns = [sa.Column("diaObjectId", sa.BigInteger, primary_key=True,
                                 autoincrement=False),
                       sa.Column("band", sa.CHAR(1), primary_key=True)]
    feature_columns += [sa.Column(name, sa.Integer if kind == "int" else sa.Double,
                                  nullable=kind != "int")
                        for name, kind, _unit, _doc in FEATURE_COLUMNS]
    sa.Table(FEATURES_TABLE, md, *feature_columns)
    return md


def expected_metadata_rows() -> dict[str, str]:
    """The rows our ``metadata`` table holds (and checks on open)."""
    from jointcal_ap.apdb.pixels import HEALPIX_ORDER
    from jointcal_ap.schemas import apdb_schema

    frozen = {"enable_replica": False, "dia_object_index": "baseline", "htm_level": HTM_LEVEL,
              "htm_index_column": "pixelId", "ra_dec_columns": ["ra", "dec"]}
    return {
        "version:schema": apdb_schema().version,
        "version:ApdbSql": DAX_APDB_SQL_VERSION,
        "config:apdb-sql.json": json.dumps(frozen),
        "jointcal_ap:layout": LAYOUT_VERSION,
        "jointcal_ap:healpix_order": str(HEALPIX_ORDER),
    }
