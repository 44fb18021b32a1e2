"""Rubin's table and alert schemas, loaded from Rubin's own packages (never a hand copy).

Alert-production tables speak Rubin: DiaSource, DiaObject, DiaForcedSource, SSObject and
SSSource use the names, types and units of the APDB schema published in
``lsst-sdm-schemas`` (``apdb.yaml``), and alert packets follow the Avro schema of
``lsst-alert-packet``. This module reads both once and hands out:

- :func:`apdb_schema` → an :class:`ApdbSchema`: the version and a :class:`TableSchema` per
  table (columns with datatype, nullability, unit, description; primary key; indexes);
- :meth:`TableSchema.arrow_schema`, :meth:`TableSchema.empty`, :meth:`TableSchema.conform`:
  the table as Arrow, for Parquet catalogs, and a checked conversion of a producer's columns;
- :func:`alert_schema` → an :class:`AlertSchema`: the parsed Avro schema of the latest (or a
  given) alert-packet version, its name (``lsst.v11_1.alert``) and its records' fields.

>>> from jointcal_ap.schemas import apdb_schema
>>> dia_source = apdb_schema()["DiaSource"]
>>> dia_source.column("psfFlux").unit, dia_source.column("diaSourceId").arrow_type
('nJy', DataType(int64))
>>> required = [c.name for c in dia_source if not c.nullable]
>>> required[:6]
['diaSourceId', 'visit', 'detector', 'midpointMjdTai', 'ra', 'dec']
>>> table = dia_source.conform({name: [1] for name in required})
>>> table.num_rows, table.schema.field("psfFlux").type, table["psfFlux"].null_count
(1, DataType(float), 1)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = [
    "SOURCE_CATALOG",
    "AlertSchema",
    "ApdbSchema",
    "ColumnSchema",
    "SchemaError",
    "TableSchema",
    "alert_schema",
    "apdb_schema",
]

#: Felis datatype → Arrow type name (pyarrow constructor).
_ARROW_TYPES = {
    "boolean": "bool_", "byte": "int8", "short": "int16", "int": "int32", "long": "int64",
    "float": "float32", "double": "float64", "char": "string", "string": "string",
    "text": "string", "unicode": "string", "binary": "binary", "timestamp": "timestamp_ms",
}


class SchemaError(ValueError):
    """A table does not follow its Rubin schema; the message names the column."""


@dataclass(frozen=True)
class ColumnSchema:
    """One column of a Rubin table.

    Attributes
    ----------
    name : str
        Its name (camelCase, as in ``apdb.yaml``).
    datatype : str
        The Felis datatype (``long``, ``double``, ``float``, ``boolean``, ``char`` ...).
    nullable : bool
        Whether NULL is allowed (Felis' default is True).
    unit : str
        ``fits:tunit`` or ``ivoa:unit`` (``""`` if dimensionless or not given).
    description : str
        Rubin's description.
    length : int or None
        For ``char``/``string``: the declared length.
    """

    name: str
    datatype: str
    nullable: bool
    unit: str
    description: str
    length: int | None = None

    @property
    def arrow_type(self) -> Any:
        """The pyarrow type of the column."""
        import pyarrow as pa

        name = _ARROW_TYPES[self.datatype]
        return pa.timestamp("ms") if name == "timestamp_ms" else getattr(pa, name)()

    @property
    def numpy_dtype(self) -> Any:
        """The NumPy dtype (``object`` for strings and binary)."""
        import numpy as np

        if self.datatype in ("char", "string", "text", "unicode", "binary"):
            return np.dtype(object)
        if self.datatype == "timestamp":
            return np.dtype("datetime64[ms]")
        return np.dtype(self.arrow_type.to_pandas_dtype())


@dataclass(frozen=True)
class TableSchema:
    """One table of the APDB schema.

    Attributes
    ----------
    name : str
        ``DiaSource``, ``DiaObject`` ...
    description : str
        Rubin's description.
    columns : tuple of ColumnSchema
        In Rubin's order.
    primary_key : tuple of str
        Column names.
    indexes : tuple of (str, tuple of str)
        Index name and its column names.
    origin : str
        Where the definition comes from (``"apdb.yaml 10.0.0"``, ``"jointcal_ap 1"``), written
        into the Arrow schema's metadata.
    """

    name: str
    description: str
    columns: tuple[ColumnSchema, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...]], ...]
    origin: str = ""

    @functools.cached_property
    def _by_name(self) -> dict[str, ColumnSchema]:
        return {c.name: c for c in self.columns}

    @property
    def names(self) -> list[str]:
        """Column names in order."""
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSchema:
        """The column called ``name`` (SchemaError naming the table if there is none)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise SchemaError(f"{self.name} has no column {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ColumnSchema]:
        return iter(self.columns)

    def arrow_schema(self, columns: Sequence[str] | None = None) -> Any:
        """The table as a ``pyarrow.Schema``; each field carries ``unit`` and ``description``
        metadata, and the schema carries the table name and the APDB schema version."""
        import pyarrow as pa

        fields = []
        for col in (self.columns if columns is None else [self.column(c) for c in columns]):
            meta = {"description": col.description}
            if col.unit:
                meta["unit"] = col.unit
            fields.append(pa.field(col.name, col.arrow_type, nullable=col.nullable, metadata=meta))
        return pa.schema(fields, metadata={"table": self.name, "schema": self.origin})

    def empty(self) -> Any:
        """An empty ``pyarrow.Table`` with every column."""
        return self.arrow_schema().empty_table()

    def conform(self, data: Any, *, where: str = "", strict: bool = True) -> Any:
        """A ``pyarrow.Table`` with exactly this table's columns, in order, from ``data``.

        Parameters
        ----------
        data : mapping of column → array-like, or a pyarrow / astropy table
            The producer's columns. Columns of the schema that are missing become NULL
            where the schema allows it.
        where : str
            Names the producer in error messages (e.g. a file or stage).
        strict : bool
            Reject columns the schema does not have (default); else drop them.

        Raises
        ------
        SchemaError
            An unknown column (strict), a missing non-nullable column, NULLs in a
            non-nullable column, or values that do not convert to the column's type; the
            message names the table and the column.
        """
        import numpy as np
        import pyarrow as pa

        prefix = f"{where}: " if where else ""
        if isinstance(data, pa.Table):
            source = {name: data.column(name) for name in data.column_names}
        elif hasattr(data, "colnames"):  # astropy Table
            source = {name: np.asarray(data[name]) for name in data.colnames}
        elif isinstance(data, Mapping):
            source = dict(data)
        else:
            raise SchemaError(f"{prefix}{self.name}: expected a mapping of columns or a table, "
                              f"got {type(data).__name__}")
        unknown = sorted(set(source) - set(self._by_name))
        if unknown and strict:
            raise SchemaError(f"{prefix}{self.name} has no column(s) {unknown}")
        lengths = {len(v) for v in source.values()}
        if len(lengths) > 1:
            raise SchemaError(f"{prefix}{self.name}: columns have different lengths "
                              f"{sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        arrays = []
        for col in self.columns:
            if col.name not in source:
                if not col.nullable:
                    raise SchemaError(f"{prefix}{self.name}.{col.name} is required (not "
                                      f"nullable) but missing")
                arrays.append(pa.nulls(n, col.arrow_type))
                continue
            value = source[col.name]
            try:
                if isinstance(value, pa.ChunkedArray | pa.Array):
                    arr = value.cast(col.arrow_type, safe=True)
                else:
                    arr = pa.array(_numpy_or_list(value), type=col.arrow_type,
                                   from_pandas=True, safe=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                    TypeError, ValueError) as exc:
                raise SchemaError(f"{prefix}{self.name}.{col.name}: cannot store as "
                                  f"{col.datatype} ({col.arrow_type}): {exc}") from None
            if _is_bad_kind(value, col):
                raise SchemaError(f"{prefix}{self.name}.{col.name}: expected {col.datatype} "
                                  f"values, got {_kind(value)}")
            if not col.nullable and arr.null_count:
                raise SchemaError(f"{prefix}{self.name}.{col.name}: {arr.null_count} NULL/NaN "
                                  f"value(s) in a non-nullable column")
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema())


def _numpy_or_list(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        return list(value)


def _kind(value: Any) -> str:
    import numpy as np

    dtype = getattr(value, "dtype", None)
    if dtype is None:
        dtype = np.asarray(value).dtype
    return str(dtype)


def _is_bad_kind(value: Any, col: ColumnSchema) -> bool:
    """Numbers where the schema wants numbers: booleans are not floats and floats are not ids."""
    import numpy as np

    dtype = getattr(value, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError):
            return False
    if not isinstance(dtype, np.dtype):  # pyarrow types: cast(safe=True) already checked
        return False
    if col.datatype in ("float", "double"):
        return dtype.kind not in "fiu"
    if col.datatype in ("byte", "short", "int", "long"):
        return dtype.kind not in "iu" and not (dtype.kind == "O")
    if col.datatype == "boolean":
        return dtype.kind not in "b"
    return False


@dataclass(frozen=True)
class ApdbSchema(Mapping[str, TableSchema]):
    """The APDB schema of ``lsst-sdm-schemas``: table name → :class:`TableSchema`.

    Attributes
    ----------
    version : str
        The schema version declared in ``apdb.yaml`` (e.g. ``"10.0.0"``).
    tables : mapping
        Table name → TableSchema.
    source : str
        Where it was read from (``lsst-sdm-schemas X.Y:apdb.yaml``).
    """

    version: str
    tables: Mapping[str, TableSchema]
    source: str

    def __getitem__(self, name: str) -> TableSchema:
        try:
            return self.tables[name]
        except KeyError:
            raise SchemaError(f"the APDB schema ({self.source}) has no table {name!r}; "
                              f"it has {sorted(self.tables)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)


def _strip_ref(ref: str) -> str:
    """``'#DiaSource.visit'`` → ``'visit'``."""
    return ref.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=1)
def apdb_schema() -> ApdbSchema:
    """Rubin's APDB schema, read from ``lsst-sdm-schemas``' ``apdb.yaml`` (cached)."""
    from importlib.metadata import version

    import yaml

    text = resources.files("lsst.sdm.schemas").joinpath("apdb.yaml").read_text()
    raw = yaml.safe_load(text)
    tables = {}
    for table in raw["tables"]:
        columns = tuple(
            ColumnSchema(name=c["name"], datatype=c["datatype"],
                         nullable=bool(c.get("nullable", True)),
                         unit=str(c.get("fits:tunit") or c.get("ivoa:unit") or ""),
                         description=" ".join(str(c.get("description", "")).split()),
                         length=c.get("length"))
            for c in table["columns"])
        pk = table.get("primaryKey") or ()
        pk = (pk,) if isinstance(pk, str) else tuple(pk)
        indexes = tuple((ix["name"], tuple(_strip_ref(r) for r in ix.get("columns", ())))
                        for ix in table.get("indexes", ()) or ())
        tables[table["name"]] = TableSchema(
            table["name"], " ".join(str(table.get("description", "")).split()), columns,
            tuple(_strip_ref(r) for r in pk), indexes,
            f"lsst-sdm-schemas apdb.yaml {raw.get('version', '')}")
    source = f"lsst-sdm-schemas {version('lsst-sdm-schemas')}:apdb.yaml"
    return ApdbSchema(str(raw.get("version", "")), tables, source)


@dataclass(frozen=True)
class AlertSchema:
    """One version of Rubin's alert-packet Avro schema, from ``lsst-alert-packet``.

    Attributes
    ----------
    version : str
        ``"11.1"`` etc.
    name : str
        The full Avro name of the alert record (``"lsst.v11_1.alert"``).
    definition : dict
        The resolved schema (every named type inlined), as JSON-able data.
    """

    version: str
    name: str
    definition: Mapping[str, Any]

    @functools.cached_property
    def parsed(self) -> Any:
        """The schema parsed by ``fastavro.parse_schema`` (for fast serialization)."""
        import fastavro

        return fastavro.parse_schema(json.loads(json.dumps(self.definition)))

    @property
    def json(self) -> str:
        """The schema as canonical-ish JSON text (what a schema registry stores)."""
        return json.dumps(self.definition, separators=(",", ":"))

    def record_fields(self, record: str) -> list[dict[str, Any]]:
        """The fields of a named record inside the alert (``"diaSource"``, ``"diaObject"``,
        ``"diaForcedSource"``, ``"ssSource"``, ``"mpc_orbits"`` ...), by short name."""
        found = _find_record(self.definition, record)
        if found is None:
            raise SchemaError(f"alert schema {self.name} has no record {record!r}")
        return list(found["fields"])


def _find_record(node: Any, short: str) -> Mapping[str, Any] | None:
    if isinstance(node, Mapping):
        if node.get("type") == "record" and str(node.get("name", "")).split(".")[-1] == short:
            return node
        for value in node.values():
            hit = _find_record(value, short)
            if hit is not None:
                return hit
    elif isinstance(node, list):
        for value in node:
            hit = _find_record(value, short)
            if hit is not None:
                return hit
    return None


@functools.lru_cache(maxsize=8)
def alert_schema(version: str | None = None) -> AlertSchema:
    """Rubin's alert schema (default: the latest that ``lsst-alert-packet`` ships).

    Parameters
    ----------
    version : str, optional
        ``"MAJOR.MINOR"``, e.g. ``"11.1"``.
    """
    from lsst.alert.packet.schema import Schema, get_latest_schema_version

    if version is None:
        major, minor = get_latest_schema_version()
    else:
        try:
            major, minor = (int(p) for p in version.split("."))
        except ValueError:
            raise SchemaError(f"alert schema version {version!r}: expected 'MAJOR.MINOR'") from None
    root = resources.files("lsst.alert.packet").joinpath("schema", str(major), str(minor))
    avsc = f"lsst.v{major}_{minor}.alert.avsc"
    if not root.joinpath(avsc).is_file():
        raise SchemaError(f"lsst-alert-packet has no alert schema {major}.{minor}")
    with resources.as_file(root.joinpath(avsc)) as path:
        schema = Schema.from_file(str(path))
    definition = schema.definition
    return AlertSchema(f"{major}.{minor}", str(definition["name"]) if "." in str(
        definition["name"]) else f"{definition.get('namespace', '')}.{definition['name']}",
        definition)


#: Single-frame sources of one visit × detector, as the ``detect`` stage writes them and the
#: joint fit reads them (the ``sources.parquet`` of the fitter's Parquet survey layout, and
#: what SExtractor's ``XWIN_IMAGE``... columns become). Ours, not Rubin's: pixels are 1-based.
SOURCE_CATALOG = TableSchema(
    "SourceCatalog",
    "Single-frame sources of one exposure (visit x detector): windowed centroids with their "
    "covariance and instrumental fluxes.",
    (
        ColumnSchema("visit", "long", False, "", "Visit id."),
        ColumnSchema("detector", "long", False, "", "Detector id."),
        ColumnSchema("x", "double", False, "pixel", "Centroid x, 1-based FITS pixels."),
        ColumnSchema("y", "double", False, "pixel", "Centroid y, 1-based FITS pixels."),
        ColumnSchema("x_err", "double", False, "pixel", "sqrt of the x variance."),
        ColumnSchema("y_err", "double", False, "pixel", "sqrt of the y variance."),
        ColumnSchema("xy_cov", "double", False, "pixel2", "x-y covariance."),
        ColumnSchema("flux", "double", False, "adu", "Instrumental flux (aperture, corrected)."),
        ColumnSchema("flux_err", "double", False, "adu", "Its 1-sigma error."),
        ColumnSchema("flags", "long", True, "", "SExtractor-style flags (0: clean)."),
        ColumnSchema("ra", "double", True, "deg", "Through the exposure's initial WCS."),
        ColumnSchema("dec", "double", True, "deg", "Through the exposure's initial WCS."),
        ColumnSchema("peak", "double", True, "adu", "Peak pixel above the background."),
        ColumnSchema("npix", "long", True, "pixel", "Pixels in the detection footprint."),
    ),
    (), (), "jointcal_ap SourceCatalog 1")
