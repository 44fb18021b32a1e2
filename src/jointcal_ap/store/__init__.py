"""The dataset store: dimensions and data IDs, the visit registry, and the repository.

See :mod:`jointcal_ap.store.dimensions` for data IDs, :mod:`jointcal_ap.store.registry` for
the SQLite registry (visits, detector regions, datasets, completed tasks) and
:mod:`jointcal_ap.store.repository` for reading and writing datasets by (name, data ID).
"""

from jointcal_ap.store.dimensions import (
    DIMENSION_ORDER,
    DIMENSIONS,
    TILE_ORDER,
    DataId,
    Dimension,
    DimensionError,
    DimensionTypeError,
    format_path,
    template_dimensions,
    tile_of,
)

__all__ = [
    "DIMENSIONS",
    "DIMENSION_ORDER",
    "TILE_ORDER",
    "DataId",
    "Dimension",
    "DimensionError",
    "DimensionTypeError",
    "format_path",
    "template_dimensions",
    "tile_of",
]
