"""The built-in catalog readers, as a plugin (entry point ``refcat_readers`` of the
``jointcal_ap.plugins`` group): registered exactly as a third party's reader plugin.

``JOINTCAL_AP_BLOCK_PLUGINS=refcat_readers`` leaves the built-in formats out.
"""

from jointcal_ap.refcat.readers import (
    CsvReader,
    FitsReader,
    FixedWidthReader,
    GaiaBinReader,
    ParquetReader,
    ReaderPlugin,
)

__all__ = ["jointcal_ap_get_reader", "jointcal_ap_reader_formats"]

_BUILTINS = ReaderPlugin(CsvReader, ParquetReader, FitsReader, FixedWidthReader, GaiaBinReader)

#: The hook implementations (bound methods of one ReaderPlugin, marked as hookimpls).
jointcal_ap_get_reader = _BUILTINS.jointcal_ap_get_reader
jointcal_ap_reader_formats = _BUILTINS.jointcal_ap_reader_formats
