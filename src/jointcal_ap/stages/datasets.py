"""The dataset types every installation knows, registered by the core (not a plugin).

=====================  =======================================  ===========  =================================
name                   Python type                              stored as    notes
=====================  =======================================  ===========  =================================
``Json``               ``dict``                                 ``.json``    small results, manifests
``Array``              ``numpy.ndarray``                        ``.npy``     images, masks
``Table``              ``astropy.table.Table``                  ``.parquet`` catalogs; units kept as metadata
``Exposure``           ``jointcal_ap.exposure.Exposure``        ``.fits``    raw image, mask, variance, WCS
``CalibratedExposure`` ``jointcal_ap.exposure.CalibratedExposure`` ``.fits`` image in nJy, fitted WCS
``Calibration``        ``jointcal_ap.calibration.Calibration``  directory    a joint-fit calibration (input)
=====================  =======================================  ===========  =================================

The exposure types are declared by name only here (``"module:name"``), so nothing heavy is
imported until a pipeline uses them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.stages.contract import DatasetType
from jointcal_ap.stages.hookspecs import hookimpl

__all__ = [
    "ARRAY",
    "CALIBRATED_EXPOSURE",
    "CALIBRATION",
    "CORE_TYPES",
    "EXPOSURE",
    "JSON",
    "TABLE",
    "jointcal_ap_register_stages",
]


def write_json(value: dict[str, Any], path: Path) -> None:
    """Write a dict as indented JSON."""
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object."""
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_array(value: np.ndarray, path: Path) -> None:
    """Write an array as ``.npy`` (no pickled objects)."""
    with open(path, "wb") as fh:
        np.save(fh, value, allow_pickle=False)


def read_array(path: Path) -> np.ndarray:
    """Read a ``.npy`` array."""
    return np.load(path, allow_pickle=False)


def write_table(value: Any, path: Path) -> None:
    """Write an astropy Table as Parquet (column units and table meta kept)."""
    value.write(os.fspath(path), format="parquet", overwrite=True)


def read_table(path: Path) -> Any:
    """Read a Parquet file written by :func:`write_table` as an astropy Table."""
    from astropy.table import Table

    return Table.read(os.fspath(path), format="parquet")


JSON = DatasetType("Json", dict, ".json", write_json, read_json,
                   "a JSON object: small results and manifests")
ARRAY = DatasetType("Array", np.ndarray, ".npy", write_array, read_array,
                    "a NumPy array (.npy), e.g. an image in its native unit")
TABLE = DatasetType("Table", "astropy.table:Table", ".parquet", write_table, read_table,
                    "a catalog (astropy Table) stored as Parquet, units as column metadata")
EXPOSURE = DatasetType("Exposure", "jointcal_ap.exposure:Exposure", ".fits", ".write",
                       "jointcal_ap.exposure:read_exposure",
                       "an exposure of one visit x detector: image (ADU), mask, variance, WCS")
CALIBRATED_EXPOSURE = DatasetType(
    "CalibratedExposure", "jointcal_ap.exposure:CalibratedExposure", ".fits", ".write",
    "jointcal_ap.exposure:read_calibrated_exposure",
    "a calibrated exposure: image and variance in nJy, fitted WCS, mask")
CALIBRATION = DatasetType("Calibration", "jointcal_ap.calibration:Calibration", "", None, ".read",
                          "a joint-fit calibration directory (astrometry + photometry per "
                          "visit x detector)")

CORE_TYPES = (JSON, ARRAY, TABLE)


@hookimpl(tryfirst=True)
def jointcal_ap_register_stages(registry) -> None:
    """Register the core dataset types, first (so that a plugin that conflicts is the one
    named); the exposure types come with the plugins that use them."""
    for dataset_type in CORE_TYPES:
        registry.add_dataset_type(dataset_type)
