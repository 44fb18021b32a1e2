"""Reading columns of the tables the Solar System calls take (pyarrow, pandas, astropy or
a mapping of columns), with errors that name the table and the column."""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.sso.errors import SsoError

__all__ = ["as_table", "float_column", "require_columns"]


def as_table(data: Any, what: str) -> Any:
    """``data`` as a ``pyarrow.Table``."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "colnames"):  # astropy
        return pa.table({name: np.asarray(data[name]) for name in data.colnames})
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # pandas
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, dict):
        return pa.table(data)
    raise SsoError(f"{what}: expected a table or a mapping of columns, got {type(data).__name__}")


def require_columns(table: Any, what: str, columns: tuple[str, ...], expected: str = "") -> None:
    """Raise :class:`SsoError` naming the missing columns."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SsoError(f"{what}: missing column(s) {missing}" + (f"; expected {expected}"
                                                                  if expected else ""))


def float_column(table: Any, name: str, default: float | None = None) -> np.ndarray:
    """A column as float64 (NULL → NaN; booleans as 0/1); ``default`` fills a missing
    column (None: the column is required)."""
    import pyarrow as pa

    if name not in table.column_names:
        if default is None:
            raise SsoError(f"missing column {name!r}")
        return np.full(table.num_rows, float(default))
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        return np.asarray(col.fill_null(False).to_numpy(zero_copy_only=False), float)
    return np.asarray(col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False),
                      float)
