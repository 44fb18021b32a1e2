"""Reference catalogs: convert external star catalogs to HATS-layout Parquet, load regions at any epoch.

Public surface::

    convert(config, inputs, out, ...)    # external catalog(s) -> refcat directory
    load_config(path_or_name)            # a TOML conversion config, or a shipped one by name
    shipped_configs()                    # the shipped configs: {"hipparcos2": Path, ...}
    open_refcat(path)                    # -> Refcat with .cone/.box/.polygon/.healpix(..., epoch=...)
    export_scamp_ldac(refcat, path, ...) # a cone at an epoch, as a SCAMP reference catalog
    register_reader(cls)                 # add a reader for a new input format

The names are imported on first use (PEP 562), so that ``jointcal-ap`` can build its parser
(:mod:`jointcal_ap.refcat.cli`) without loading pyarrow and astropy.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = [
    "ConfigError",
    "ConversionConfig",
    "ConversionError",
    "ConversionReport",
    "ExportError",
    "InputError",
    "Reader",
    "Refcat",
    "RefcatError",
    "available_readers",
    "convert",
    "export_scamp_ldac",
    "load_config",
    "open_refcat",
    "register_reader",
    "shipped_configs",
]

#: Public name → the submodule defining it.
_HOME = {
    "Refcat": "catalog", "RefcatError": "catalog", "open_refcat": "catalog",
    "ConfigError": "config", "ConversionConfig": "config", "load_config": "config",
    "shipped_configs": "config",
    "ConversionError": "convert", "ConversionReport": "convert", "convert": "convert",
    "ExportError": "export", "export_scamp_ldac": "export",
    "InputError": "readers", "Reader": "readers", "available_readers": "readers",
    "register_reader": "readers",
}


class _Package(types.ModuleType):
    """This package's module type: public names load on first access, and the function
    ``convert`` keeps its name when the submodule ``convert`` is imported (the import system
    would otherwise bind the package attribute to the submodule)."""

    def __getattr__(self, name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{home}"), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOME and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = _Package
