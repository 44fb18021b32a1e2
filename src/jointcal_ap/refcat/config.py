"""Conversion configs: how the columns of an external catalog become a refcat.

A config is a TOML file (see ``refcats/*.toml`` and docs/refcat.md for the
reference). It is parsed once into frozen dataclasses, and every problem is
reported with the file and the key that caused it, before any data is read.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u

from jointcal_ap.refcat.schema import CORE_COLUMNS, CORRELATION_NAMES

__all__ = [
    "ColumnSpec",
    "ConfigError",
    "ConversionConfig",
    "EpochSpec",
    "FilterSpec",
    "MagnitudeSpec",
    "PartitionSpec",
    "WeightMatrixSpec",
    "load_config",
]

EPOCH_FORMATS = ("jyear", "decimalyear", "mjd", "jd")
TIME_SCALES = ("tai", "tt", "tcb", "tcg", "tdb", "ut1", "utc")
FILTER_OPS = ("<", "<=", ">", ">=", "==", "!=", "isnull", "notnull")


class ConfigError(ValueError):
    """A conversion config is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ColumnSpec:
    """One output column taken from one input column.

    Attributes
    ----------
    column : str
        Name of the column in the input file.
    unit : str or None
        Unit of the input values (astropy syntax); they are converted to the
        refcat's unit for that column. None means "already in the refcat unit".
    """

    column: str
    unit: str | None = None


@dataclass(frozen=True)
class EpochSpec:
    """The epoch of the input positions: a constant or a column, with its format and time scale."""

    value: float | None = None
    column: str | None = None
    format: str = "jyear"
    scale: str = "tdb"


@dataclass(frozen=True)
class MagnitudeSpec:
    """A magnitude column kept in its native photometric system."""

    name: str
    column: str
    error: str | None = None
    system: str = ""
    band: str = ""


@dataclass(frozen=True)
class WeightMatrixSpec:
    """Correlations derived from an upper-triangular weight matrix U (C ∝ (UᵀU)⁻¹).

    Attributes
    ----------
    columns : tuple of str
        The 15 input columns U1..U15.
    parameters : tuple of str
        The parameter order of the matrix (a permutation of ra, dec, parallax, pmra, pmdec).
    layout : str
        ``"upper_column_major"`` (U11, U12, U22, U13, U23, U33, ..., as in Hipparcos I/311)
        or ``"upper_row_major"`` (U11, U12, ..., U15, U22, ...).
    """

    columns: tuple[str, ...]
    parameters: tuple[str, ...] = ("ra", "dec", "parallax", "pmra", "pmdec")
    layout: str = "upper_column_major"


@dataclass(frozen=True)
class FilterSpec:
    """A row filter: rows for which ``column op value`` is False are dropped, counted under ``reason``."""

    column: str
    op: str
    value: float | str | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        return self.reason or f"{self.column} {self.op} {'' if self.value is None else self.value}".strip()


@dataclass(frozen=True)
class PartitionSpec:
    """HEALPix partitioning: a fixed order, or adaptive with a row threshold as in HATS."""

    mode: str = "adaptive"
    order: int = 3
    max_rows: int = 1_000_000
    lowest_order: int = 0
    highest_order: int = 10


@dataclass(frozen=True)
class ConversionConfig:
    """Everything the converter needs to know about one input catalog."""

    name: str
    format: str
    columns: Mapping[str, ColumnSpec]
    epoch: EpochSpec
    description: str = ""
    reader: Mapping[str, Any] = field(default_factory=dict)
    magnitudes: tuple[MagnitudeSpec, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)
    correlations: Mapping[str, str] = field(default_factory=dict)
    weight_matrix: WeightMatrixSpec | None = None
    filters: tuple[FilterSpec, ...] = ()
    partitioning: PartitionSpec = field(default_factory=PartitionSpec)
    invalid_positions: str = "error"
    notes: str = ""
    source: str = ""

    def input_columns(self) -> list[str]:
        """Every input column the conversion reads, in a stable order without repeats."""
        names: list[str] = [spec.column for spec in self.columns.values()]
        if self.epoch.column:
            names.append(self.epoch.column)
        for mag in self.magnitudes:
            names.append(mag.column)
            if mag.error:
                names.append(mag.error)
        names.extend(self.extra.values())
        names.extend(self.correlations.values())
        if self.weight_matrix:
            names.extend(self.weight_matrix.columns)
        names.extend(f.column for f in self.filters)
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain data (written beside every output)."""
        data = asdict(self)
        data["columns"] = {k: asdict(v) for k, v in self.columns.items()}
        return data


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: [{key}] {message}")


def _column_spec(source: str, key: str, value: Any) -> ColumnSpec:
    if isinstance(value, str):
        return ColumnSpec(column=value)
    if isinstance(value, Mapping) and "column" in value:
        unknown = set(value) - {"column", "unit"}
        if unknown:
            raise _fail(source, key, f"unknown keys {sorted(unknown)}; expected 'column' and 'unit'")
        unit = value.get("unit")
        if unit is not None:
            try:
                parsed = u.Unit(unit)
            except (ValueError, TypeError) as exc:
                raise _fail(source, key, f"unit {unit!r} does not parse: {exc}") from None
            target = CORE_COLUMNS.get(key.split(".")[-1], (None, "", ""))[1]
            if target:
                try:
                    parsed.to(u.Unit(target))
                except u.UnitConversionError:
                    raise _fail(source, key, f"unit {unit!r} cannot be converted to {target!r}") from None
        return ColumnSpec(column=str(value["column"]), unit=unit)
    raise _fail(source, key, f"expected a column name or {{column=..., unit=...}}, got {value!r}")


def _parse(data: Mapping[str, Any], source: str) -> ConversionConfig:
    known = {"catalog", "reader", "columns", "epoch", "magnitudes", "extra", "correlations",
             "filters", "partitioning"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown sections {sorted(unknown)}; expected some of {sorted(known)}")
    catalog = data.get("catalog", {})
    for key in ("name", "format"):
        if not catalog.get(key):
            raise _fail(source, f"catalog.{key}", "is required")
    invalid = catalog.get("invalid_positions", "error")
    if invalid not in ("error", "drop"):
        raise _fail(source, "catalog.invalid_positions", f"must be 'error' or 'drop', got {invalid!r}")

    raw_columns = data.get("columns", {})
    columns = {name: _column_spec(source, f"columns.{name}", value) for name, value in raw_columns.items()}
    allowed = {"id", *CORE_COLUMNS} - {"epoch", *CORRELATION_NAMES}
    bad = set(columns) - allowed
    if bad:
        raise _fail(source, "columns", f"unknown refcat columns {sorted(bad)}; allowed: {sorted(allowed)}")
    for required in ("id", "ra", "dec"):
        if required not in columns:
            raise _fail(source, f"columns.{required}", "is required")
    for name in ("ra", "dec"):
        if columns[name].unit is None:
            columns[name] = ColumnSpec(columns[name].column, "deg")

    raw_epoch = data.get("epoch")
    if not raw_epoch:
        raise _fail(source, "epoch", "is required: give value= or column=, with format= and scale=")
    if ("value" in raw_epoch) == ("column" in raw_epoch):
        raise _fail(source, "epoch", "give exactly one of value= and column=")
    epoch = EpochSpec(
        value=float(raw_epoch["value"]) if "value" in raw_epoch else None,
        column=raw_epoch.get("column"),
        format=raw_epoch.get("format", "jyear"),
        scale=str(raw_epoch.get("scale", "")).lower(),
    )
    if epoch.format not in EPOCH_FORMATS:
        raise _fail(source, "epoch.format", f"must be one of {EPOCH_FORMATS}, got {epoch.format!r}")
    if epoch.scale not in TIME_SCALES:
        raise _fail(source, "epoch.scale", f"must name a time scale, one of {TIME_SCALES}")
    if epoch.value is not None and not math.isfinite(epoch.value):
        raise _fail(source, "epoch.value", "must be finite")

    magnitudes = []
    for i, mag in enumerate(data.get("magnitudes", [])):
        if "name" not in mag or "column" not in mag:
            raise _fail(source, f"magnitudes[{i}]", "needs name= and column=")
        unknown = set(mag) - {"name", "column", "error", "system", "band"}
        if unknown:
            raise _fail(source, f"magnitudes[{i}]", f"unknown keys {sorted(unknown)}")
        magnitudes.append(MagnitudeSpec(**mag))

    raw_corr = dict(data.get("correlations", {}))
    weight = raw_corr.pop("weight_matrix", None)
    bad = set(raw_corr) - set(CORRELATION_NAMES)
    if bad:
        raise _fail(source, "correlations", f"unknown names {sorted(bad)}; expected Gaia's {CORRELATION_NAMES}")
    weight_matrix = None
    if weight is not None:
        weight_matrix = WeightMatrixSpec(
            columns=tuple(weight.get("columns", ())),
            parameters=tuple(weight.get("parameters", WeightMatrixSpec.parameters)),
            layout=weight.get("layout", "upper_column_major"),
        )
        if len(weight_matrix.columns) != 15:
            raise _fail(source, "correlations.weight_matrix.columns", "needs exactly 15 columns")
        if sorted(weight_matrix.parameters) != sorted(("ra", "dec", "parallax", "pmra", "pmdec")):
            raise _fail(source, "correlations.weight_matrix.parameters",
                        "must be a permutation of ra, dec, parallax, pmra, pmdec")
        if weight_matrix.layout not in ("upper_column_major", "upper_row_major"):
            raise _fail(source, "correlations.weight_matrix.layout",
                        "must be 'upper_column_major' or 'upper_row_major'")

    filters = []
    for i, flt in enumerate(data.get("filters", [])):
        spec = FilterSpec(column=flt.get("column", ""), op=flt.get("op", ""), value=flt.get("value"),
                          reason=flt.get("reason", ""))
        if not spec.column or spec.op not in FILTER_OPS:
            raise _fail(source, f"filters[{i}]", f"needs column= and op= (one of {FILTER_OPS})")
        if spec.op not in ("isnull", "notnull") and spec.value is None:
            raise _fail(source, f"filters[{i}]", f"op {spec.op!r} needs value=")
        filters.append(spec)

    part = data.get("partitioning", {})
    partitioning = PartitionSpec(**{k: part[k] for k in part if k in PartitionSpec.__dataclass_fields__})
    bad = set(part) - set(PartitionSpec.__dataclass_fields__)
    if bad:
        raise _fail(source, "partitioning", f"unknown keys {sorted(bad)}")
    if partitioning.mode not in ("fixed", "adaptive"):
        raise _fail(source, "partitioning.mode", "must be 'fixed' or 'adaptive'")
    if not 0 <= partitioning.order <= 19:
        raise _fail(source, "partitioning.order", "must be in 0..19")
    if not 0 <= partitioning.lowest_order <= partitioning.highest_order <= 19:
        raise _fail(source, "partitioning", "needs 0 <= lowest_order <= highest_order <= 19")
    if partitioning.max_rows < 1:
        raise _fail(source, "partitioning.max_rows", "must be positive")

    extra = {str(k): str(v) for k, v in data.get("extra", {}).items()}
    clash = set(extra) & (set(columns) | {m.name for m in magnitudes} | set(CORE_COLUMNS))
    if clash:
        raise _fail(source, "extra", f"names {sorted(clash)} clash with refcat columns")

    return ConversionConfig(
        name=str(catalog["name"]),
        format=str(catalog["format"]),
        description=str(catalog.get("description", "")),
        notes=str(catalog.get("notes", "")),
        reader=dict(data.get("reader", {})),
        columns=columns,
        epoch=epoch,
        magnitudes=tuple(magnitudes),
        extra=extra,
        correlations=raw_corr,
        weight_matrix=weight_matrix,
        filters=tuple(filters),
        partitioning=partitioning,
        invalid_positions=invalid,
        source=source,
    )


def load_config(path: str | Path | Mapping[str, Any]) -> ConversionConfig:
    """Read and validate a conversion config.

    Parameters
    ----------
    path : path-like or mapping
        A TOML file, or the already-parsed mapping (handy in tests and notebooks).

    Raises
    ------
    ConfigError
        Naming the file and the key, for anything missing, unknown or inconsistent.
    """
    if isinstance(path, Mapping):
        return _parse(path, "<config>")
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _parse(data, str(path))
