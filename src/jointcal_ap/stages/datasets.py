"""The dataset types every installation knows, owned and registered by the core.

Plugins use these names; two plugins never need to define them. Tables carry a column schema
(:mod:`jointcal_ap.schemas`): Rubin's from ``lsst-sdm-schemas`` (``apdb.yaml``) for the
alert-production catalogs, ours for single-frame sources. A table written under one of these
types is checked against its schema (every column present with its type; extra columns are
an error) so that a consumer can rely on it.

==========================  ====================================  ===========  ===========================
name                        Python type                           stored as    notes
==========================  ====================================  ===========  ===========================
``Json``                    ``dict``                              ``.json``    small results, manifests
``Array``                   ``numpy.ndarray``                     ``.npy``     images, masks
``Table``                   ``astropy.table.Table``               ``.parquet`` any catalog; units kept
``SourceCatalog``           ``astropy.table.Table`` (a ``Table``)  ``.parquet`` :data:`~jointcal_ap.schemas.SOURCE_CATALOG`
``Exposure``                ``jointcal_ap.exposure.Exposure``     ``.fits``    raw image (ADU), mask, variance, WCS, PSF
``CalibratedExposure``      ``...exposure.CalibratedExposure``    ``.fits``    nJy, fitted WCS, PSF slot
``Calibration``             ``jointcal_ap.calibration.Calibration`` directory  a joint-fit calibration
``Refcat``                  ``jointcal_ap.refcat.Refcat``         directory    a HATS refcat (input only)
``Template``                ``jointcal_ap.diffim.Template``       ``.fits``    a coadded template with PSF
``DifferenceImage``         ``jointcal_ap.diffim.DifferenceImage`` ``.fits``   image, variance, mask, PSF, kernel
``DiaSourceCatalog``        ``pyarrow.Table``                     ``.parquet`` Rubin's DiaSource
``DiaObjectCatalog``        ``pyarrow.Table``                     ``.parquet`` Rubin's DiaObject
``DiaForcedSourceCatalog``  ``pyarrow.Table``                     ``.parquet`` Rubin's DiaForcedSource
``SSSourceCatalog``         ``pyarrow.Table``                     ``.parquet`` Rubin's SSSource
``AlertPacket``             ``list`` of alert records             ``.avro``    Avro OCF, lsst-alert-packet schema
==========================  ====================================  ===========  ===========================

The exposure and alert-production types are declared by name only (``"module:name"``), so
nothing heavy is imported until a pipeline uses them.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.atomic import write_json as _atomic_json
from jointcal_ap.stages.contract import DatasetType
from jointcal_ap.stages.hookspecs import hookimpl

__all__ = [
    "ALERT_PACKET",
    "ARRAY",
    "CALIBRATED_EXPOSURE",
    "CALIBRATION",
    "CORE_TYPES",
    "DIA_FORCED_SOURCE_CATALOG",
    "DIA_OBJECT_CATALOG",
    "DIA_SOURCE_CATALOG",
    "DIFFERENCE_IMAGE",
    "EXPOSURE",
    "JSON",
    "REFCAT",
    "SOURCE_CATALOG",
    "SS_SOURCE_CATALOG",
    "TABLE",
    "TEMPLATE",
    "jointcal_ap_register_stages",
    "read_rubin_table",
    "write_rubin_table",
]


def write_json(value: dict[str, Any], path: Path) -> None:
    """Write a dict as indented JSON."""
    _atomic_json(path, value)


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


def _table_schema(table: str) -> Any:
    from jointcal_ap.schemas import apdb_schema

    return apdb_schema()[table]


def write_rubin_table(table: str, value: Any, path: Path) -> None:
    """Write a ``pyarrow.Table`` as Parquet after checking it against Rubin's schema of
    ``table`` (``"DiaSource"``...): :class:`~jointcal_ap.schemas.SchemaError` names the
    column that does not fit."""
    import pyarrow.parquet as pq

    schema = _table_schema(table)
    conformed = schema.conform(value, where=f"{path.name}")
    meta = dict(value.schema.metadata or {}) if hasattr(value, "schema") else {}
    meta.update(conformed.schema.metadata or {})
    pq.write_table(conformed.replace_schema_metadata(meta), os.fspath(path))


def read_rubin_table(table: str, path: Path) -> Any:
    """Read a Parquet table and check it against the schema of ``table``."""
    import pyarrow.parquet as pq

    value = pq.read_table(os.fspath(path))
    return _table_schema(table).conform(value, where=str(path))


def _rubin(table: str, type_name: str, doc: str) -> DatasetType:
    return DatasetType(type_name, "pyarrow:Table", ".parquet",
                       functools.partial(write_rubin_table, table),
                       functools.partial(read_rubin_table, table), doc)


JSON = DatasetType("Json", dict, ".json", write_json, read_json,
                   "a JSON object: small results and manifests")
ARRAY = DatasetType("Array", np.ndarray, ".npy", write_array, read_array,
                    "a NumPy array (.npy), e.g. an image in its native unit")
TABLE = DatasetType("Table", "astropy.table:Table", ".parquet", write_table, read_table,
                    "a catalog (astropy Table) stored as Parquet, units as column metadata")
def write_source_catalog(value: Any, path: Path) -> None:
    """Write an astropy Table of single-frame sources as Parquet, checked against
    :data:`~jointcal_ap.schemas.SOURCE_CATALOG` (table ``meta`` kept as JSON)."""
    import pyarrow.parquet as pq

    from jointcal_ap.schemas import SOURCE_CATALOG as schema

    table = schema.conform(value, where=path.name, strict=False)
    meta = {k: json.dumps(v, default=str) for k, v in dict(getattr(value, "meta", {})).items()}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **{
        f"meta.{k}".encode(): v.encode() for k, v in meta.items()}}), os.fspath(path))


def read_source_catalog(path: Path) -> Any:
    """Read what :func:`write_source_catalog` wrote, as an astropy Table."""
    import pyarrow.parquet as pq
    from astropy.table import Table

    table = pq.read_table(os.fspath(path))
    out = Table({name: table.column(name).to_numpy(zero_copy_only=False)
                 for name in table.column_names})
    for key, value in (table.schema.metadata or {}).items():
        if key.startswith(b"meta."):
            out.meta[key[5:].decode()] = json.loads(value)
    return out


SOURCE_CATALOG = DatasetType("SourceCatalog", "astropy.table:Table", ".parquet",
                             write_source_catalog, read_source_catalog,
                             "single-frame sources of one exposure: 1-based pixel centroids "
                             "with covariance, instrumental fluxes (ADU), flags "
                             "(jointcal_ap.schemas.SOURCE_CATALOG)", base="Table")
EXPOSURE = DatasetType("Exposure", "jointcal_ap.exposure:Exposure", ".fits", ".write",
                       "jointcal_ap.exposure:read_exposure",
                       "an exposure of one visit x detector: image (ADU), mask, variance, WCS, "
                       "PSF model")
CALIBRATED_EXPOSURE = DatasetType(
    "CalibratedExposure", "jointcal_ap.exposure:CalibratedExposure", ".fits", ".write",
    "jointcal_ap.exposure:read_calibrated_exposure",
    "a calibrated exposure: image and variance in nJy, fitted WCS, mask, PSF model")
CALIBRATION = DatasetType("Calibration", "jointcal_ap.calibration:Calibration", "", ".write",
                          ".read", "a joint-fit calibration directory (astrometry + photometry "
                          "per visit x detector)")
REFCAT = DatasetType("Refcat", "jointcal_ap.refcat.catalog:Refcat", "", None,
                     "jointcal_ap.refcat:open_refcat",
                     "a reference catalog in the HATS layout (jointcal-ap refcat convert)")
TEMPLATE = DatasetType("Template", "jointcal_ap.diffim:Template", ".fits", ".write",
                       "jointcal_ap.diffim:read_template",
                       "a template on a science detector's pixel grid: coadded image (nJy), "
                       "variance, mask, PSF model, the list of inputs")
DIFFERENCE_IMAGE = DatasetType(
    "DifferenceImage", "jointcal_ap.diffim:DifferenceImage", ".fits", ".write",
    "jointcal_ap.diffim:read_difference_image",
    "a difference image: image (nJy), variance, mask, PSF, PSF-matching kernel, template "
    "provenance, QA figures")
DIA_SOURCE_CATALOG = _rubin("DiaSource", "DiaSourceCatalog",
                            "DIA sources of one visit x detector in Rubin's DiaSource columns")
DIA_OBJECT_CATALOG = _rubin("DiaObject", "DiaObjectCatalog",
                            "DIA objects in Rubin's DiaObject columns")
DIA_FORCED_SOURCE_CATALOG = _rubin("DiaForcedSource", "DiaForcedSourceCatalog",
                                   "forced photometry of DIA objects in Rubin's DiaForcedSource "
                                   "columns")
SS_SOURCE_CATALOG = _rubin("SSSource", "SSSourceCatalog",
                           "sources associated with Solar System objects, Rubin's SSSource")
ALERT_PACKET = DatasetType("AlertPacket", list, ".avro",
                           "jointcal_ap.alerts.archive:write_alert_file",
                           "jointcal_ap.alerts.archive:read_alert_file",
                           "alert records (lsst-alert-packet schema) of one visit x detector, "
                           "as an Avro object container file")

#: Every core dataset type, registered by the core before any plugin.
CORE_TYPES = (JSON, ARRAY, TABLE, SOURCE_CATALOG, EXPOSURE, CALIBRATED_EXPOSURE, CALIBRATION,
              REFCAT, TEMPLATE, DIFFERENCE_IMAGE, DIA_SOURCE_CATALOG, DIA_OBJECT_CATALOG,
              DIA_FORCED_SOURCE_CATALOG, SS_SOURCE_CATALOG, ALERT_PACKET)


@hookimpl(tryfirst=True)
def jointcal_ap_register_stages(registry) -> None:
    """Register the core dataset types, first (so that a plugin that conflicts is the one
    named)."""
    for dataset_type in CORE_TYPES:
        registry.add_dataset_type(dataset_type)
