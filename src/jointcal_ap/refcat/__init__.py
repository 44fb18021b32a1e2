"""Reference catalogs: convert external star catalogs to HATS-layout Parquet, load regions at any epoch.

Public surface::

    convert(config, inputs, out, ...)    # external catalog(s) -> refcat directory
    load_config(path)                    # a TOML conversion config
    open_refcat(path)                    # -> Refcat with .cone/.box/.polygon/.healpix(..., epoch=...)
    register_reader(cls)                 # add a reader for a new input format

The names are loaded on first use (PEP 562): reading a refcat does not import the
conversion machinery (astropy units, Dask), which costs most of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jointcal_ap.refcat.catalog import Refcat, RefcatError, open_refcat
    from jointcal_ap.refcat.config import ConfigError, ConversionConfig, load_config
    from jointcal_ap.refcat.convert import ConversionError, ConversionReport, convert
    from jointcal_ap.refcat.readers import InputError, Reader, available_readers, register_reader

_WHERE = {
    "Refcat": "catalog", "RefcatError": "catalog", "open_refcat": "catalog",
    "ConfigError": "config", "ConversionConfig": "config", "load_config": "config",
    "ConversionError": "convert", "ConversionReport": "convert", "convert": "convert",
    "InputError": "readers", "Reader": "readers", "available_readers": "readers",
    "register_reader": "readers",
}

__all__ = [
    "ConfigError",
    "ConversionConfig",
    "ConversionError",
    "ConversionReport",
    "InputError",
    "Reader",
    "Refcat",
    "RefcatError",
    "available_readers",
    "convert",
    "load_config",
    "open_refcat",
    "register_reader",
]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
