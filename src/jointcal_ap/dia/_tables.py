"""Reading columns from the tables callers pass (pyarrow, astropy, pandas, mappings)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jointcal_ap.dia.errors import DiaError

__all__ = ["column_names", "read_column"]


def column_names(table: Any) -> list[str]:
    """The column names of a pyarrow/astropy/pandas table or a mapping of columns."""
    if hasattr(table, "column_names"):
        return list(table.column_names)
    if hasattr(table, "colnames"):
        return list(table.colnames)
    if hasattr(table, "columns") and not isinstance(table, Mapping):
        return [str(c) for c in table.columns]
    if isinstance(table, Mapping):
        return list(table)
    raise DiaError(f"expected a table (pyarrow, astropy, pandas) or a mapping of columns, got "
                   f"{type(table).__name__}")


def read_column(table: Any, name: str, where: str, *, dtype: Any = float,
                required: bool = True) -> np.ndarray | None:
    """Column ``name`` as a NumPy array of ``dtype`` (None when absent and not required).

    NULLs become NaN for floats; a NULL in a column of another type is an error naming the
    first bad row.
    """
    if name not in column_names(table):
        if required:
            raise DiaError(f"{where}: missing column {name!r} (columns: {column_names(table)})")
        return None
    col = table[name]
    if hasattr(col, "to_numpy") and hasattr(col, "null_count"):  # pyarrow
        if col.null_count and np.dtype(dtype).kind != "f":
            first = int(np.nonzero(np.asarray(col.is_null()))[0][0])
            raise DiaError(f"{where}: column {name!r} is NULL in row {first}")
        col = col.to_numpy(zero_copy_only=False)
    arr = np.asarray(col)
    if np.ma.isMaskedArray(col):
        arr = np.ma.filled(col.astype(dtype), np.nan if np.dtype(dtype).kind == "f" else 0)
    try:
        return np.asarray(arr, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DiaError(f"{where}: column {name!r} cannot be read as {np.dtype(dtype)}: {exc}") from None
