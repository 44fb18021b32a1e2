"""Turn raw input columns into refcat columns, as a conversion config says.

Pure functions of a batch and a config: renaming, unit conversion, epochs to
TDB Julian years, correlations from a weight matrix, row filters, position
checks and the ``_healpix_29`` index. No file is written here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy.time import Time

from jointcal_ap.refcat.config import ConversionConfig, FilterSpec, WeightMatrixSpec
from jointcal_ap.refcat.healpix import lonlat_to_nest
from jointcal_ap.refcat.readers import Batch, InputError
from jointcal_ap.refcat.schema import (
    ASTROMETRIC_PARAMETERS,
    CORE_COLUMNS,
    CORRELATIONS,
    HEALPIX_COLUMN,
    HEALPIX_ORDER,
)

__all__ = ["BatchResult", "correlations_from_weight_matrix", "epoch_to_tdb_jyear", "output_schema",
           "transform_batch"]

_ORDER = list(CORE_COLUMNS)


@dataclass
class BatchResult:
    """A transformed batch with its bookkeeping."""

    table: pa.Table
    rows_in: int
    dropped: Counter = field(default_factory=Counter)
    ra_wrapped: int = 0


def epoch_to_tdb_jyear(values: np.ndarray | float, fmt: str, scale: str) -> np.ndarray:
    """Convert epochs given as ``fmt`` (jyear, decimalyear, mjd, jd) in ``scale`` to TDB Julian years."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if finite.any():
        time = Time(values[finite], format=fmt, scale=scale)
        out[finite] = time.tdb.jyear
    return out


def correlations_from_weight_matrix(values: np.ndarray, spec: WeightMatrixSpec) -> dict[str, np.ndarray]:
    """Correlation coefficients from the 15 elements of an upper-triangular weight matrix U.

    The covariance is proportional to (UᵀU)⁻¹; only its normalised off-diagonal part is
    returned (Gaia's ten ``*_corr`` names). Rows whose matrix is not invertible get NaN.

    Parameters
    ----------
    values : ndarray, shape (n, 15)
    spec : WeightMatrixSpec
        Element layout and parameter order.
    """
    n = values.shape[0]
    upper = np.zeros((n, 5, 5))
    k = 0
    if spec.layout == "upper_column_major":
        pairs = [(i, j) for j in range(5) for i in range(j + 1)]
    else:
        pairs = [(i, j) for i in range(5) for j in range(i, 5)]
    for i, j in pairs:
        upper[:, i, j] = values[:, k]
        k += 1
    weight = np.einsum("nki,nkj->nij", upper, upper)
    good = np.all(np.isfinite(values), axis=1) & (np.abs(np.linalg.det(weight)) > 0)
    cov = np.full((n, 5, 5), np.nan)
    if good.any():
        cov[good] = np.linalg.inv(weight[good])
    # Reorder from the file's parameter order to Gaia's.
    perm = [spec.parameters.index(p) for p in ASTROMETRIC_PARAMETERS]
    cov = cov[:, perm][:, :, perm]
    diag = np.sqrt(np.einsum("nii->ni", cov))
    return {name: cov[:, i, j] / (diag[:, i] * diag[:, j]) for name, i, j in CORRELATIONS}


def _first_failing_cast(values: pa.Array, target: pa.DataType) -> int:
    """Index of the first value of ``values`` that does not cast to ``target`` (bisection:
    O(log n) casts; only called once a cast has failed)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(values.slice(lo, mid - lo), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
        else:
            lo = mid
    return lo


def _numeric_array(batch: Batch, column: str, path: str) -> pa.Array:
    """The input column as a float64 Arrow array, refusing non-numeric types (bool, timestamps,
    binary, ...) and text that does not parse as a number, naming the file, row and column."""
    arr = batch.table.column(column)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = arr.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(arr, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            i = _first_failing_cast(arr, pa.float64())
            raise InputError(path, f"{arr[i].as_py()!r} is not a number", row=batch.locate(i),
                             column=column) from None
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_null(kind)):
        raise InputError(path, f"has type {kind}, expected a numeric column (integer or float)",
                         column=column)
    return pc.cast(arr, pa.float64())


def _numeric(batch: Batch, column: str, path: str) -> np.ndarray:
    """The input column as float64 NumPy values (null → NaN); see :func:`_numeric_array`."""
    return _numeric_array(batch, column, path).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


#: Largest integer a float64 holds exactly: a float id beyond it may already be rounded.
_EXACT_FLOAT_INT = 2**53


def _ids(batch: Batch, column: str, kind: str | None, path: str, keep: np.ndarray) -> pa.Array:
    """The id column as int64 or string (see :class:`~jointcal_ap.refcat.config.ColumnSpec`);
    only the rows in ``keep`` (those that survive the filters) are checked."""
    arr = batch.table.column(column)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        missing = keep & arr.is_null().to_numpy(zero_copy_only=False)
        if missing.any():
            raise InputError(path, "missing id (every star needs one)",
                             row=batch.locate(int(np.flatnonzero(missing)[0])), column=column)
    t = arr.type
    is_text = pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "string" or (kind is None and is_text):
        if not (is_text or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            raise InputError(path, f"has type {t}; ids must be integers or strings", column=column)
        return pc.cast(arr, pa.string())
    if pa.types.is_integer(t) or is_text:
        try:
            return pc.cast(arr, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            i = _first_failing_cast(arr, pa.int64())
            raise InputError(path, f"id {arr[i].as_py()!r} is not a 64-bit integer",
                             row=batch.locate(i), column=column) from None
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = keep & ~(np.isfinite(values) & (values == np.round(values))
                           & (np.abs(values) <= _EXACT_FLOAT_INT))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(path, f"id {float(values[i])!r} is stored as a float and is not a whole number "
                                   f"≤ 2**53 (an id a float cannot hold exactly); store ids as integers, "
                                   f"or set id = {{ column = {column!r}, type = \"string\" }} in "
                                   f"[columns] to keep them as text", row=batch.locate(i), column=column)
        return pa.array(np.where(keep, values, 0).astype(np.int64))
    raise InputError(path, f"has type {t}; ids must be integers or strings", column=column)


def _factor(unit: str | None, target: str) -> float:
    if unit is None or not target:
        return 1.0
    return float(u.Unit(unit).to(u.Unit(target)))


def _filter_mask(table: pa.Table, flt: FilterSpec) -> np.ndarray:
    col = table.column(flt.column)
    if flt.op == "isnull":
        keep = pc.is_null(col, nan_is_null=True)
    elif flt.op == "notnull":
        keep = pc.invert(pc.is_null(col, nan_is_null=True))
    else:
        fn = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
              "==": pc.equal, "!=": pc.not_equal}[flt.op]
        keep = fn(col, pa.scalar(flt.value))
    return np.asarray(pc.fill_null(keep, False).to_numpy(zero_copy_only=False), dtype=bool)


def output_schema(config: ConversionConfig, id_type: pa.DataType, extra_types: dict[str, pa.DataType]
                  ) -> pa.Schema:
    """The refcat schema for a config, with units, descriptions and photometric systems as metadata."""
    present = set(config.columns) | {"epoch"}
    if config.correlations or config.weight_matrix:
        present |= {name for name, _, _ in CORRELATIONS
                    if config.weight_matrix or name in config.correlations}
    fields = [pa.field(HEALPIX_COLUMN, pa.int64(), metadata={"description": "NESTED HEALPix index at order 29"}),
              pa.field("id", id_type, metadata={"description": "source identifier"})]
    for name in _ORDER:
        if name in present:
            kind, unit, desc = CORE_COLUMNS[name]
            fields.append(pa.field(name, kind, metadata={"unit": unit, "description": desc}))
    for mag in config.magnitudes:
        meta = {"unit": "mag", "system": mag.system, "band": mag.band,
                "description": f"{mag.band or mag.name} magnitude ({mag.system})"}
        fields.append(pa.field(mag.name, pa.float64(), metadata=meta))
        if mag.error:
            fields.append(pa.field(f"{mag.name}_error", pa.float64(),
                                   metadata={"unit": "mag", "description": f"sigma({mag.name})"}))
    for name in config.extra:
        fields.append(pa.field(name, extra_types.get(name, pa.float64())))
    meta = {"jointcal_ap": json.dumps({"catalog": config.name, "epoch_scale": "tdb"})}
    return pa.schema(fields, metadata=meta)


def transform_batch(batch: Batch, config: ConversionConfig, path: str) -> BatchResult:
    """Apply a config to one batch of raw columns.

    Returns the refcat rows that survive the filters, sorted by ``_healpix_29``, and the
    number of rows dropped per reason. Raises :class:`InputError` naming the file, row
    and column for a NaN or out-of-range position (unless the config drops them), and
    for non-numeric values in numeric columns.
    """
    table = batch.table
    n = table.num_rows
    keep = np.ones(n, dtype=bool)
    dropped: Counter = Counter()
    for flt in config.filters:
        mask = _filter_mask(table, flt)
        newly = keep & ~mask
        dropped[f"filter: {flt.label}"] += int(newly.sum())
        keep &= mask

    out: dict[str, np.ndarray | pa.Array] = {}
    for name, spec in config.columns.items():
        if name == "id":
            continue
        out[name] = _numeric(batch, spec.column, path) * _factor(spec.unit, CORE_COLUMNS[name][1])

    ra, dec = out["ra"], out["dec"]
    bad = keep & ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if bad.any():
        if config.invalid_positions == "drop":
            dropped["invalid position (NaN or |dec| > 90)"] += int(bad.sum())
            keep &= ~bad
        else:
            i = int(np.flatnonzero(bad)[0])
            column = config.columns["ra"].column if not np.isfinite(ra[i]) else config.columns["dec"].column
            value = float(ra[i] if column == config.columns["ra"].column else dec[i])
            raise InputError(path, f"invalid position {value!r} (NaN, missing or |dec| > 90); set "
                                   f"invalid_positions = 'drop' in [catalog] to drop such rows",
                             row=batch.locate(i), column=column)
    outside = keep & ((ra < 0.0) | (ra > 360.0))  # NaN rows are not kept by now
    wrapped = int(outside.sum())
    if wrapped and config.ra_out_of_range != "wrap":
        i = int(np.flatnonzero(outside)[0])
        raise InputError(path, f"ra {float(ra[i])!r} deg is outside [0, 360]; set ra_out_of_range = "
                               f"'wrap' in [catalog] to take such values modulo 360",
                         row=batch.locate(i), column=config.columns["ra"].column)
    out["ra"] = np.mod(ra, 360.0)  # also stores ra = 360 as 0

    if config.epoch.column:
        raw_epoch = _numeric(batch, config.epoch.column, path)
        out["epoch"] = epoch_to_tdb_jyear(raw_epoch, config.epoch.format, config.epoch.scale)
    else:
        value = epoch_to_tdb_jyear(config.epoch.value, config.epoch.format, config.epoch.scale)
        out["epoch"] = np.full(n, float(value))

    for name, source in config.correlations.items():
        out[name] = _numeric(batch, source, path).astype(np.float32)
    if config.weight_matrix is not None:
        values = np.column_stack([_numeric(batch, c, path) for c in config.weight_matrix.columns])
        for name, corr in correlations_from_weight_matrix(values, config.weight_matrix).items():
            out[name] = corr.astype(np.float32)

    for mag in config.magnitudes:
        out[mag.name] = _numeric(batch, mag.column, path)
        if mag.error:
            out[f"{mag.name}_error"] = _numeric(batch, mag.error, path)
    for name, source in config.extra.items():
        out[name] = table.column(source)

    out["id"] = _ids(batch, config.columns["id"].column, config.columns["id"].type, path, keep)

    out[HEALPIX_COLUMN] = np.zeros(n, dtype=np.int64)
    if keep.any():  # healpy's index, computed without importing healpy (and matplotlib)
        out[HEALPIX_COLUMN][keep] = lonlat_to_nest(out["ra"][keep], dec[keep], HEALPIX_ORDER)
    extra_types = {name: table.column(src).type for name, src in config.extra.items()}
    schema = output_schema(config, out["id"].type, extra_types)
    arrays = [out[f.name].cast(f.type) if isinstance(out[f.name], (pa.Array, pa.ChunkedArray))
              else pa.array(out[f.name], type=f.type) for f in schema]
    result = pa.Table.from_arrays(arrays, schema=schema)
    index = np.flatnonzero(keep)
    index = index[np.argsort(out[HEALPIX_COLUMN][index], kind="stable")]
    return BatchResult(result.take(index), rows_in=n, dropped=dropped, ra_wrapped=wrapped)
