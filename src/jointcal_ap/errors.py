"""Exceptions shared across the package, importable without loading JAX (the CLI catches them)."""

from __future__ import annotations

from typing import Any

__all__ = ["AssociationError", "FitError"]


class FitError(RuntimeError):
    """The fit failed (diverged, singular, or degenerate input); ``diagnostics`` says where."""

    def __init__(self, message: str, diagnostics: dict[str, Any] | None = None):
        super().__init__(message)
        self.diagnostics = diagnostics or {}


class AssociationError(ValueError):
    """The input cannot be associated (no reference stars, too few stars on a CCD, ...)."""
