"""Exceptions shared across the package, importable without loading JAX (the CLI catches them)."""

from __future__ import annotations

from typing import Any

__all__ = ["AssociationError", "FitError", "PicklableError"]


class PicklableError:
    """Mixin for exceptions whose ``__init__`` takes more than the message: they pickle by
    state, so an error raised in a Dask worker or a process pool reaches the caller whole
    (with its file, row and column) instead of as ``TypeError`` from the unpickler.

    Put it first among the bases: ``class InputError(PicklableError, ValueError)``.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
                   ) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class FitError(PicklableError, RuntimeError):
    """The fit failed (diverged, singular, or degenerate input); ``diagnostics`` says where."""

    def __init__(self, message: str, diagnostics: dict[str, Any] | None = None):
        super().__init__(message)
        self.diagnostics = diagnostics or {}


class AssociationError(ValueError):
    """The input cannot be associated (no reference stars, too few stars on a CCD, ...)."""
