"""Checks on the rows given to the APDB and to association, with errors that name the id.

Each check takes a ``pyarrow.Table`` with Rubin's column names and a ``where`` string that
names the producer (a unit, a file) in the message; each raises
:class:`~jointcal_ap.apdb.errors.ApdbInputError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.apdb.errors import ApdbInputError

__all__ = ["check_coordinates", "check_unique", "conform", "float_column", "int_column"]


def _ids_text(ids: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def float_column(table: Any, name: str) -> np.ndarray:
    """A column as float64 with NULL → NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name)
    if col.null_count:
        col = pc.fill_null(col.cast(pa.float64()), np.nan)
    return np.asarray(col.to_numpy(), float)


def int_column(table: Any, name: str, null: int = -1) -> np.ndarray:
    """A column as int64 with NULL → ``null``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(name)
    if col.null_count:
        col = pc.fill_null(col.cast(pa.int64()), null)
    return np.asarray(col.to_numpy(), np.int64)


def conform(table_name: str, data: Any, where: str, *, strict: bool = True) -> Any:
    """Rubin's columns of ``table_name`` from ``data``, with the schema's types; a failure
    (an unknown column when ``strict``, a missing required one, a type that does not convert)
    raises :class:`ApdbInputError` naming ``where``, the table and the column."""
    from jointcal_ap.schemas import SchemaError, apdb_schema

    try:
        return apdb_schema()[table_name].conform(data, where=where, strict=strict)
    except SchemaError as exc:
        raise ApdbInputError(str(exc)) from None


def check_coordinates(table: Any, id_column: str, where: str, table_name: str) -> None:
    """``ra``/``dec`` finite, ``dec`` within [-90, 90], ``ra`` within [0, 360]."""
    ra, dec = float_column(table, "ra"), float_column(table, "dec")
    ids = int_column(table, id_column)
    for name, values, lo, hi in (("ra", ra, 0.0, 360.0), ("dec", dec, -90.0, 90.0)):
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            raise ApdbInputError(
                f"{where}: {table_name}.{name} is {float(values[bad][0])!r} for {id_column} "
                f"{_ids_text(ids[bad])}; expected a finite value in [{lo:g}, {hi:g}] degrees")


def check_unique(table: Any, columns: tuple[str, ...], where: str, table_name: str) -> None:
    """No two rows share the values of ``columns`` (the table's key)."""
    if table.num_rows < 2:
        return
    keys = np.column_stack([int_column(table, c) for c in columns])
    uniq, counts = np.unique(keys, axis=0, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        if len(columns) == 1:
            raise ApdbInputError(f"{where}: duplicate {table_name}.{columns[0]} "
                                 f"{_ids_text(dup[:, 0])}")
        shown = ", ".join(str(tuple(int(v) for v in row)) for row in dup[:5])
        raise ApdbInputError(f"{where}: duplicate {table_name} key {columns}: {shown}")
