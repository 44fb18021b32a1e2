"""A repository of datasets: files named by (dataset name, data ID), with a registry.

A repository is a directory::

    REPO/registry.sqlite3                   visits, detector regions, datasets, tasks
    REPO/units/<data-id key>/<name><suffix>  a dataset with a data ID, e.g.
                                             units/visit12_det3/calexp.fits,
                                             units/tile16788/dia_objects.parquet
    REPO/<name><suffix>                      a dataset with the empty data ID (a whole-run
                                             product, e.g. the joint-fit calibration)
    REPO/.../<name>.provenance.json          ... beside each: which stage and inputs made it

Every file is written atomically (:mod:`jointcal_ap.atomic`): a dataset is either complete
or absent. Datasets ingested *by reference* (raw exposures) keep their own absolute path.

>>> import tempfile
>>> from jointcal_ap.store import DataId
>>> from jointcal_ap.store.repository import Repository
>>> from jointcal_ap.stages.datasets import JSON
>>> repo = Repository(tempfile.mkdtemp())
>>> ref = repo.put({"n": 3}, "stats", JSON, DataId(visit=1, detector=2))
>>> ref.path, repo.get("stats", DataId(visit=1, detector=2), JSON)
('units/visit1_det2/stats.json', {'n': 3})
>>> [r.data_id for r in repo.query("stats", visit=1)]
[DataId(visit=1, detector=2)]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jointcal_ap.atomic import atomic_directory, atomic_path, write_json
from jointcal_ap.store.dimensions import DataId
from jointcal_ap.store.registry import DatasetRef, DetectorRecord, Registry, VisitRecord

__all__ = [
    "Repository",
    "dataset_relpath",
    "file_identity",
    "ingest_exposures",
    "provenance_path",
]

REGISTRY_FILE = "registry.sqlite3"


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What tells whether a file changed: its size and modification time (ns).

    For a directory, those of the newest file inside it (recursively), with the number of
    files. ``None`` if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists() and path.name.endswith("]") and "[" in path.name:
        path = path.with_name(path.name[:path.name.rindex("[")])  # file.fits[CCD02]: the file
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_dir():
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    newest: tuple[int, str, int] = (stat.st_mtime_ns, "", 0)
    count = 0
    for item in sorted(path.rglob("*")):
        try:
            if not item.is_file():
                continue
            item_stat = item.stat()
        except OSError:
            continue
        count += 1
        if item_stat.st_mtime_ns >= newest[0]:
            newest = (item_stat.st_mtime_ns, str(item.relative_to(path)), item_stat.st_size)
    return {"newest": newest[1], "size": newest[2], "mtime_ns": newest[0], "files": count}


def provenance_path(path: Path, name: str) -> Path:
    """The provenance file beside a dataset's file: ``<name>.provenance.json``."""
    return path.with_name(f"{name}.provenance.json")


def dataset_relpath(name: str, data_id: DataId, suffix: str) -> str:
    """Where a dataset lives inside a repository (see the module docstring)."""
    key = DataId(data_id).key
    return f"units/{key}/{name}{suffix}" if key else f"{name}{suffix}"


class Repository:
    """Datasets by (name, data ID) under a root directory, with their :class:`Registry`.

    Parameters
    ----------
    root : path
        The repository directory (created if absent).
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The registry (opened, and the repository created, on first use; workers that only
        :meth:`write` never open it)."""
        if self._registry is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._registry = Registry(self.root / REGISTRY_FILE)
        return self._registry

    def close(self) -> None:
        """Release the registry."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ paths
    def path_for(self, name: str, data_id: Mapping[str, Any], suffix: str) -> Path:
        """The absolute path a dataset is written to."""
        return self.root / dataset_relpath(name, DataId(data_id), suffix)

    def resolve(self, ref: DatasetRef) -> Path:
        """The absolute path of a stored dataset."""
        path = Path(ref.path)
        return path if path.is_absolute() else self.root / path

    def delete_files(self, refs: Iterable[DatasetRef]) -> None:
        """Remove datasets' files (never ingested ones) and their provenance, and the unit
        directories left empty; the registry is the caller's business."""
        import shutil

        parents = set()
        for ref in refs:
            if Path(ref.path).is_absolute():  # ingested by reference: not ours
                continue
            path = self.resolve(ref)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            provenance_path(path, ref.name).unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in parents:
            if parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()

    # ------------------------------------------------------------------ writing
    def write(self, value: Any, name: str, dataset_type: Any, data_id: Mapping[str, Any],
              provenance: Mapping[str, Any] | None = None) -> DatasetRef:
        """Write a dataset's file (atomically) and its provenance, without registering it.

        Workers call this; the process that owns the registry then calls :meth:`register`.
        """
        data_id = DataId(data_id)
        path = self.path_for(name, data_id, dataset_type.suffix)
        if dataset_type.suffix:
            with atomic_path(path) as tmp:
                dataset_type.write(value, tmp)
        else:  # a directory: built under a temporary name, swapped in by rename
            with atomic_directory(path, overwrite=True) as staging:
                dataset_type.write(value, staging)
        prov = dict(provenance or {})
        write_json(provenance_path(path, name),
                   {"dataset": name, "type": dataset_type.name, "unit": dict(data_id),
                    "file": path.name, **prov})
        return DatasetRef(name, dataset_type.name, data_id,
                          str(path.relative_to(self.root)), file_identity(path) or {}, prov)

    def register(self, refs: Iterable[DatasetRef]) -> None:
        """Record written datasets in the registry."""
        self.registry.add_datasets(refs)

    def put(self, value: Any, name: str, dataset_type: Any, data_id: Mapping[str, Any],
            provenance: Mapping[str, Any] | None = None) -> DatasetRef:
        """Write and register a dataset; returns its reference."""
        ref = self.write(value, name, dataset_type, data_id, provenance)
        self.register([ref])
        return ref

    # ------------------------------------------------------------------ reading
    def find(self, name: str, data_id: Mapping[str, Any]) -> DatasetRef | None:
        """The registered dataset, or None."""
        return self.registry.dataset(name, data_id)

    def query(self, name: str | None = None, **where: Any) -> list[DatasetRef]:
        """Registered datasets by name and dimension values (``visit=[1, 2]``, ``detector=0``)."""
        return self.registry.datasets(name, **where)

    def get(self, name: str, data_id: Mapping[str, Any], dataset_type: Any) -> Any:
        """Read a registered dataset with its :class:`~jointcal_ap.stages.DatasetType`
        (LookupError naming it if absent, TypeError if it was stored as another type)."""
        ref = self.find(name, data_id)
        if ref is None:
            raise LookupError(f"{self.root}: no dataset {name!r} with data ID "
                              f"{DataId(data_id).key or '{}'}")
        if ref.type != dataset_type.name:
            raise TypeError(f"{self.root}: dataset {name!r} ({DataId(data_id).key or '{}'}) is "
                            f"a {ref.type}, not a {dataset_type.name}")
        return dataset_type.read(self.resolve(ref))


def _exposure_headers(path: Path) -> list[tuple[Any, Any, str]]:
    """(merged header for metadata, image header with the WCS, path) of each CCD in a file:
    the LSST layout (one IMAGE: the file's path), or every image HDU of a multi-extension
    camera file (``file.fits[EXTNAME]``, as :func:`jointcal_ap.exposure.read_exposure` reads
    it); a path with a ``[selector]`` names one HDU."""
    from astropy.io import fits

    from jointcal_ap.exposure import ExposureError, split_fits_selector

    real, selector = split_fits_selector(path)
    out = []
    try:
        hdul = fits.open(real, memmap=False)
    except (OSError, ValueError) as exc:
        raise ExposureError(f"{path}: not a readable FITS file ({exc})") from None
    with hdul:
        primary = hdul[0].header
        if selector is not None:
            try:
                images = [hdul[int(selector)] if selector.isdigit() else hdul[selector]]
            except (KeyError, IndexError):
                raise ExposureError(f"{path}: no extension {selector!r}") from None
        elif "IMAGE" in hdul:
            images = [hdul["IMAGE"]]
        else:
            images = [h for h in hdul if isinstance(h, fits.PrimaryHDU | fits.ImageHDU
                                                    | fits.CompImageHDU)
                      and h.header.get("NAXIS", 0) == 2]
        for index, hdu in enumerate(hdul):
            if not any(hdu is image for image in images):
                continue
            merged = fits.Header(primary)
            if hdu is not hdul[0]:
                merged.update(hdu.header)
            if selector is not None or (len(images) == 1 and "IMAGE" in hdul) or hdu is hdul[0]:
                where = str(path)
            else:
                where = f"{real}[{hdu.name if hdu.name and hdu.name != 'PRIMARY' else index}]"
            out.append((merged, hdu.header.copy(), where))
    return out


def ingest_exposures(repo: Repository, paths: Iterable[str | os.PathLike[str]], *,
                     name: str | None = "raw", dataset_type: str = "Exposure",
                     instrument: str = "") -> list[DatasetRef]:
    """Record exposures in a repository by reference: their visits, detector footprints and
    the files themselves as datasets ``name`` (``None``: visits and detectors only).

    Reads headers only: ``VISIT``, ``DETECTOR`` (or ``CCDNUM``), ``FILTER``, ``EXPTIME``,
    the time cards (see :class:`jointcal_ap.exposure.ExposureMetadata`) and the WCS.
    A visit's boresight is the mean direction of its detectors' centres unless the header
    gives ``RA``/``DEC`` in degrees (``BORE-RA``/``BORE-DEC``); its rotation comes from
    ``ROTPA`` (degrees) if present.

    Raises
    ------
    jointcal_ap.exposure.ExposureError
        A header lacks a card; the message names the file and HDU.
    """
    import numpy as np

    from jointcal_ap.exposure import ExposureMetadata

    refs, detectors, visits = [], [], {}
    for raw in paths:
        path = Path(os.path.abspath(raw))
        for merged, header, where in _exposure_headers(path):
            meta = ExposureMetadata.from_header(merged, where)
            record = DetectorRecord.from_wcs(meta.visit, meta.detector, header,
                                             int(header["NAXIS1"]), int(header["NAXIS2"]),
                                             instrument)
            detectors.append(record)
            entry = visits.setdefault(meta.visit, {"meta": meta, "centres": [], "header": merged})
            entry["centres"].append((record.ra, record.dec))
            data_id = DataId(visit=meta.visit, detector=meta.detector,
                             **({"instrument": instrument} if instrument else {}))
            refs.append(DatasetRef(name or "", dataset_type, data_id, where,
                                   file_identity(where) or {}, {"ingested": where}))
    records = []
    for visit, entry in visits.items():
        meta, header = entry["meta"], entry["header"]
        if "BORE-RA" in header and "BORE-DEC" in header:
            ra, dec = float(header["BORE-RA"]), float(header["BORE-DEC"])
        else:
            r, d = np.radians(np.array(entry["centres"])).T
            vec = np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).mean(axis=1)
            ra = float(np.degrees(np.arctan2(vec[1], vec[0])) % 360)
            dec = float(np.degrees(np.arcsin(vec[2] / np.linalg.norm(vec))))
        records.append(VisitRecord(visit, meta.mjd_tai, ra, dec, meta.filter, meta.exptime,
                                   float(header.get("ROTPA", 0.0)), instrument))
    repo.registry.add_visits(records)
    repo.registry.add_detectors(detectors)
    if name is None:
        return []
    repo.register(refs)
    return refs
