"""Conversion configs: how the columns of an external catalog become a refcat.

A config is a TOML file (see ``refcats/*.toml`` and docs/refcat.md for the
reference). It is parsed once into frozen dataclasses, and every problem is
reported with the file and the key that caused it, before any data is read.
"""

from __future__ import annotations

import math
import os
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
    "find_config",
    "load_config",
    "shipped_configs",
]

EPOCH_FORMATS = ("jyear", "decimalyear", "mjd", "jd")
TIME_SCALES = ("tai", "tt", "tcb", "tcg", "tdb", "ut1", "utc")
FILTER_OPS = ("<", "<=", ">", ">=", "==", "!=", "isnull", "notnull")
ID_TYPES = ("int64", "string")


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
    type : {"int64", "string"} or None
        ``id`` only: the type of the refcat ids. None: integers stay int64, strings stay
        strings, and floats become int64 when every value is a whole number (exactly
        representable, ≤ 2**53), else the conversion fails naming the row; ``"string"`` keeps
        any value as text (e.g. a float position used as an identifier).
    """

    column: str
    unit: str | None = None
    type: str | None = None


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
    """Everything the converter needs to know about one input catalog.

    The choices for questionable rows (all in ``[catalog]``; each is an error by default):

    ``invalid_positions``
        ``"error"`` or ``"drop"`` (counted in the report): a NaN or missing position, |dec| > 90.
    ``duplicate_ids``
        ``"error"`` or ``"warn"`` (kept, and counted in the report and a warning).
    ``ra_out_of_range``
        ``"error"`` or ``"wrap"`` (taken modulo 360, counted in the report and a warning): an
        ``ra`` outside [0, 360] degrees. ``ra = 360`` is always stored as 0.
    """

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
    duplicate_ids: str = "error"
    ra_out_of_range: str = "error"
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(source: str, key: str, value: Any, allowed: set[str] | None = None) -> Mapping[str, Any]:
    """``value`` as a TOML table, refusing anything else and (with ``allowed``) unknown keys."""
    if not isinstance(value, Mapping):
        raise _fail(source, key, f"must be a table, got {value!r}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise _fail(source, key, f"unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    return value


def _get(source: str, section: Mapping[str, Any], prefix: str, key: str, check: Any, expected: str,
         default: Any = None) -> Any:
    """``section[key]`` (or ``default``), refused with ``[prefix.key]`` named unless ``check(value)``."""
    if key not in section:
        return default
    value = section[key]
    if not check(value):
        raise _fail(source, f"{prefix}.{key}", f"must be {expected}, got {value!r}")
    return value


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _one_of(*choices: str) -> Any:
    return lambda value: value in choices


def _column_spec(source: str, key: str, value: Any) -> ColumnSpec:
    if isinstance(value, str):
        if not value:
            raise _fail(source, key, "must name an input column, got ''")
        return ColumnSpec(column=value)
    if isinstance(value, Mapping) and "column" in value:
        is_id = key == "columns.id"
        _table(source, key, value, {"column", "type"} if is_id else {"column", "unit"})
        column = _get(source, value, key, "column", _name, "an input column name")
        if is_id:
            kind = _get(source, value, key, "type", _one_of(*ID_TYPES), f"one of {ID_TYPES}")
            return ColumnSpec(column=column, type=kind)
        unit = _get(source, value, key, "unit", _str, "an astropy unit string")
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
        return ColumnSpec(column=column, unit=unit)
    extra = ", type=..." if key == "columns.id" else ", unit=..."
    raise _fail(source, key, f"expected a column name or {{column=...{extra}}}, got {value!r}")


SECTIONS = ("catalog", "reader", "columns", "epoch", "magnitudes", "extra", "correlations", "filters",
            "partitioning")
CATALOG_KEYS = {"name", "format", "description", "notes", "invalid_positions", "duplicate_ids",
                "ra_out_of_range"}


def _parse(data: Mapping[str, Any], source: str) -> ConversionConfig:
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown sections {sorted(unknown)}; expected some of {sorted(SECTIONS)}")
    catalog = _table(source, "catalog", data.get("catalog", {}), CATALOG_KEYS)
    for key in ("name", "format"):
        if key not in catalog:
            raise _fail(source, f"catalog.{key}", "is required")
    name = _get(source, catalog, "catalog", "name", _name, "a non-empty string")
    fmt = _get(source, catalog, "catalog", "format", _name, "a format name (e.g. 'csv')")
    description = _get(source, catalog, "catalog", "description", _str, "a string", "")
    notes = _get(source, catalog, "catalog", "notes", _str, "a string", "")
    invalid = _get(source, catalog, "catalog", "invalid_positions", _one_of("error", "drop"),
                   "'error' or 'drop'", "error")
    duplicates = _get(source, catalog, "catalog", "duplicate_ids", _one_of("error", "warn"),
                      "'error' or 'warn'", "error")
    ra_range = _get(source, catalog, "catalog", "ra_out_of_range", _one_of("error", "wrap"),
                    "'error' or 'wrap'", "error")
    reader = _table(source, "reader", data.get("reader", {}))

    raw_columns = _table(source, "columns", data.get("columns", {}))
    columns = {key: _column_spec(source, f"columns.{key}", value) for key, value in raw_columns.items()}
    allowed = {"id", *CORE_COLUMNS} - {"epoch", *CORRELATION_NAMES}
    bad = set(columns) - allowed
    if bad:
        raise _fail(source, "columns", f"unknown refcat columns {sorted(bad)}; allowed: {sorted(allowed)}")
    for required in ("id", "ra", "dec"):
        if required not in columns:
            raise _fail(source, f"columns.{required}", "is required")
    for key in ("ra", "dec"):
        if columns[key].unit is None:
            columns[key] = ColumnSpec(columns[key].column, "deg")

    if not data.get("epoch"):
        raise _fail(source, "epoch", "is required: give value= or column=, with format= and scale=")
    raw_epoch = _table(source, "epoch", data["epoch"], {"value", "column", "format", "scale"})
    if ("value" in raw_epoch) == ("column" in raw_epoch):
        raise _fail(source, "epoch", "give exactly one of value= and column=")
    value = _get(source, raw_epoch, "epoch", "value", _is_number, "a number")
    epoch = EpochSpec(
        value=None if value is None else float(value),
        column=_get(source, raw_epoch, "epoch", "column", _name, "an input column name"),
        format=_get(source, raw_epoch, "epoch", "format", _one_of(*EPOCH_FORMATS),
                    f"one of {EPOCH_FORMATS}", "jyear"),
        scale=_get(source, raw_epoch, "epoch", "scale",
                   lambda v: isinstance(v, str) and v.lower() in TIME_SCALES,
                   f"a time scale, one of {TIME_SCALES}", "").lower(),
    )
    if epoch.scale not in TIME_SCALES:
        raise _fail(source, "epoch.scale", f"must name a time scale, one of {TIME_SCALES}")
    if epoch.value is not None and not math.isfinite(epoch.value):
        raise _fail(source, "epoch.value", "must be finite")

    magnitudes = []
    raw_mags = data.get("magnitudes", [])
    if not isinstance(raw_mags, list):
        raise _fail(source, "magnitudes", "must be an array of tables ([[magnitudes]])")
    for i, mag in enumerate(raw_mags):
        key = f"magnitudes[{i}]"
        _table(source, key, mag, {"name", "column", "error", "system", "band"})
        if "name" not in mag or "column" not in mag:
            raise _fail(source, key, "needs name= and column=")
        magnitudes.append(MagnitudeSpec(
            name=_get(source, mag, key, "name", _name, "a non-empty string"),
            column=_get(source, mag, key, "column", _name, "an input column name"),
            error=_get(source, mag, key, "error", _name, "an input column name"),
            system=_get(source, mag, key, "system", _str, "a string", ""),
            band=_get(source, mag, key, "band", _str, "a string", "")))

    raw_corr = dict(_table(source, "correlations", data.get("correlations", {})))
    weight = raw_corr.pop("weight_matrix", None)
    bad = set(raw_corr) - set(CORRELATION_NAMES)
    if bad:
        raise _fail(source, "correlations", f"unknown names {sorted(bad)}; expected Gaia's {CORRELATION_NAMES}")
    for key, value in raw_corr.items():
        if not _name(value):
            raise _fail(source, f"correlations.{key}", f"must name an input column, got {value!r}")
    weight_matrix = None
    if weight is not None:
        key = "correlations.weight_matrix"
        _table(source, key, weight, {"columns", "parameters", "layout"})
        str_list = lambda v: isinstance(v, list) and all(_name(x) for x in v)  # noqa: E731
        weight_matrix = WeightMatrixSpec(
            columns=tuple(_get(source, weight, key, "columns", str_list, "a list of column names", [])),
            parameters=tuple(_get(source, weight, key, "parameters", str_list, "a list of names",
                                  list(WeightMatrixSpec.parameters))),
            layout=_get(source, weight, key, "layout", _str, "a string", "upper_column_major"),
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
    raw_filters = data.get("filters", [])
    if not isinstance(raw_filters, list):
        raise _fail(source, "filters", "must be an array of tables ([[filters]])")
    for i, flt in enumerate(raw_filters):
        key = f"filters[{i}]"
        _table(source, key, flt, {"column", "op", "value", "reason"})
        spec = FilterSpec(column=_get(source, flt, key, "column", _name, "an input column name", ""),
                          op=_get(source, flt, key, "op", _str, "a string", ""),
                          value=_get(source, flt, key, "value", lambda v: _is_number(v) or _str(v),
                                     "a number or a string"),
                          reason=_get(source, flt, key, "reason", _str, "a string", ""))
        if not spec.column or spec.op not in FILTER_OPS:
            raise _fail(source, key, f"needs column= and op= (one of {FILTER_OPS})")
        if spec.op not in ("isnull", "notnull") and spec.value is None:
            raise _fail(source, key, f"op {spec.op!r} needs value=")
        filters.append(spec)

    part = _table(source, "partitioning", data.get("partitioning", {}),
                  set(PartitionSpec.__dataclass_fields__))
    defaults = PartitionSpec()
    partitioning = PartitionSpec(
        mode=_get(source, part, "partitioning", "mode", _one_of("fixed", "adaptive"),
                  "'fixed' or 'adaptive'", defaults.mode),
        **{key: _get(source, part, "partitioning", key, _is_int, "an integer", getattr(defaults, key))
           for key in ("order", "max_rows", "lowest_order", "highest_order")})
    if not 0 <= partitioning.order <= 19:
        raise _fail(source, "partitioning.order", "must be in 0..19")
    if not 0 <= partitioning.lowest_order <= partitioning.highest_order <= 19:
        raise _fail(source, "partitioning", "needs 0 <= lowest_order <= highest_order <= 19")
    if partitioning.max_rows < 1:
        raise _fail(source, "partitioning.max_rows", "must be positive")

    raw_extra = _table(source, "extra", data.get("extra", {}))
    for key, value in raw_extra.items():
        if not _name(value):
            raise _fail(source, f"extra.{key}", f"must name an input column, got {value!r}")
    extra = {str(k): str(v) for k, v in raw_extra.items()}
    clash = set(extra) & (set(columns) | {m.name for m in magnitudes} | set(CORE_COLUMNS))
    if clash:
        raise _fail(source, "extra", f"names {sorted(clash)} clash with refcat columns")

    return ConversionConfig(
        name=name,
        format=fmt,
        description=description,
        notes=notes,
        reader=dict(reader),
        columns=columns,
        epoch=epoch,
        magnitudes=tuple(magnitudes),
        extra=extra,
        correlations=raw_corr,
        weight_matrix=weight_matrix,
        filters=tuple(filters),
        partitioning=partitioning,
        invalid_positions=invalid,
        duplicate_ids=duplicates,
        ra_out_of_range=ra_range,
        source=source,
    )


def _shipped_dirs() -> list[Path]:
    """Where the shipped configs are: inside the installed package (the wheel carries them as
    ``jointcal_ap/refcats``), or at the root of a checkout (an editable install)."""
    from importlib.resources import files

    return [Path(str(files("jointcal_ap") / "refcats")), Path(__file__).resolve().parents[3] / "refcats"]


def shipped_configs() -> dict[str, Path]:
    """The conversion configs shipped with the package, by name (``{"hipparcos2": Path(...)}``).

    >>> "hipparcos2" in shipped_configs()
    True
    """
    found: dict[str, Path] = {}
    for directory in _shipped_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def find_config(name_or_path: str | os.PathLike) -> Path:
    """The config file meant by ``name_or_path``: an existing file, else a shipped config name
    (``"hipparcos2"`` or ``"hipparcos2.toml"``), so that the shipped configs work from any
    directory.

    Raises
    ------
    ConfigError
        Neither a file nor a shipped name; the message lists the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    shipped = shipped_configs()
    if os.sep not in text and "/" not in text and path.suffix in ("", ".toml") and path.stem in shipped:
        return shipped[path.stem]
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    raise ConfigError(f"{path}: config file not found (shipped configs, usable by name from any "
                      f"directory: {', '.join(sorted(shipped)) or 'none'})")


def load_config(path: str | os.PathLike | Mapping[str, Any]) -> ConversionConfig:
    """Read and validate a conversion config.

    Parameters
    ----------
    path : path-like, name or mapping
        A TOML file; the name of a shipped config (``"hipparcos2"``, see
        :func:`shipped_configs`); or the already-parsed mapping (handy in tests and notebooks).

    Raises
    ------
    ConfigError
        Naming the file and the key, for anything missing, unknown, of the wrong type or
        inconsistent.
    """
    if isinstance(path, Mapping):
        return _parse(path, "<config>")
    path = find_config(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _parse(data, str(path))
