"""Exceptions of the APDB. Each takes one message argument, so it survives the pickle round
trip Dask makes between processes; the message names the URL, table, column or id."""

from __future__ import annotations

__all__ = ["ApdbConnectionError", "ApdbError", "ApdbInputError", "ApdbSchemaError"]


class ApdbError(RuntimeError):
    """The APDB could not do what was asked (the message says why)."""


class ApdbConnectionError(ApdbError):
    """The database URL cannot be reached or opened."""


class ApdbSchemaError(ApdbError):
    """The database's tables differ from the schema this code writes (names the table and
    column), or the database was not created as an APDB."""


class ApdbInputError(ValueError):
    """Rows given to the APDB or to association are invalid: NaN coordinates, duplicate or
    already-stored ids, missing columns. The message names the table, column and id."""
