"""Reference catalogs: convert external star catalogs to HATS-layout Parquet, load regions at any epoch.

Public surface::

    convert(config, inputs, out, ...)    # external catalog(s) -> refcat directory
    load_config(path)                    # a TOML conversion config
    open_refcat(path)                    # -> Refcat with .cone/.box/.polygon/.healpix(..., epoch=...)
    register_reader(cls)                 # add a reader for a new input format
"""

from jointcal_ap.refcat.catalog import Refcat, RefcatError, open_refcat
from jointcal_ap.refcat.config import ConfigError, ConversionConfig, load_config
from jointcal_ap.refcat.convert import ConversionError, ConversionReport, convert
from jointcal_ap.refcat.readers import InputError, Reader, available_readers, register_reader

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
