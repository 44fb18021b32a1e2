"""The repository's registry: visits, detector regions, datasets and completed tasks, in SQLite.

One SQLite file (``REPO/registry.sqlite3``), written through SQLAlchemy Core by one process
at a time (the pipeline driver, or ingestion); Dask workers never open it. Tables:

==================  ==========================================================================
``visit``           instrument, visit, mid-exposure ``mjd_tai``, boresight ``ra``/``dec``
                    (deg), ``rotation_deg``, ``band``, ``exposure_time`` (s)
``detector_region`` one row per visit × detector: ``naxis1``/``naxis2``, the initial WCS
                    header (text), centre ``ra``/``dec`` and ``radius_deg`` of a circle holding
                    the detector, its four corners (JSON, deg)
``detector_tile``   visit × detector × ``tile``: every sky tile the detector touches (indexed)
``dataset``         name, dataset type, data ID (one column per dimension), path, identity
                    (size, mtime), provenance (JSON)
``task``            a pipeline step done on a data ID: fingerprint, input identity, seconds
==================  ==========================================================================

Queries by dimension, e.g. every detector of an earlier visit that overlaps this one:

>>> import tempfile, pathlib
>>> from jointcal_ap.store.registry import Registry, VisitRecord, DetectorRecord
>>> reg = Registry(pathlib.Path(tempfile.mkdtemp()) / "registry.sqlite3")
>>> for v, mjd in ((1, 60000.1), (2, 60001.1), (3, 60002.1)):
...     reg.add_visit(VisitRecord(visit=v, mjd_tai=mjd, ra=10.0, dec=0.0, band="r",
...                               exposure_time=30.0))
...     reg.add_detector(DetectorRecord.from_centre(v, 0, 10.0 + 0.01 * v, 0.0, 0.1))
>>> [(d.visit, d.detector) for d in reg.overlapping(3, 0, before_mjd=60002.0)]
[(1, 0), (2, 0)]
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.store.dimensions import DIMENSION_ORDER, DataId, tile_of

__all__ = [
    "DatasetRef",
    "DetectorRecord",
    "Registry",
    "RegistryError",
    "VisitRecord",
]

#: Bumped when the registry's tables change; a registry of another version is refused.
REGISTRY_VERSION = "1"


class RegistryError(ValueError):
    """The registry cannot answer (unknown visit, a missing dataset, another version)."""


@dataclass(frozen=True)
class VisitRecord:
    """One visit, as ingestion records it.

    Attributes
    ----------
    visit : int
    mjd_tai : float
        Mid-exposure time, MJD (TAI).
    ra, dec : float
        Boresight, ICRS degrees.
    band : str
        Filter band ("" if unknown).
    exposure_time : float
        Seconds.
    rotation_deg : float
        Rotation of the focal plane on the sky (degrees; 0 if unknown).
    instrument : str
        The camera ("" if not named).
    """

    visit: int
    mjd_tai: float
    ra: float
    dec: float
    band: str = ""
    exposure_time: float = 0.0
    rotation_deg: float = 0.0
    instrument: str = ""

    def __post_init__(self) -> None:
        for name in ("mjd_tai", "ra", "dec", "exposure_time", "rotation_deg"):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.floating | np.integer) \
                    or not math.isfinite(float(value)):
                raise RegistryError(f"visit {self.visit}: {name} must be a finite number, "
                                    f"got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "visit", int(self.visit))


@dataclass(frozen=True)
class DetectorRecord:
    """One detector of one visit: its size, initial WCS and sky footprint.

    Attributes
    ----------
    visit, detector : int
    naxis1, naxis2 : int
        Image size (pixels); 0 if unknown.
    ra, dec : float
        Centre of the footprint (deg).
    radius_deg : float
        Radius of a circle around the centre holding the whole detector.
    corners : tuple of (ra, dec)
        The four corners (deg), in order.
    wcs_header : str
        The initial WCS (a FITS header as text; "" if none).
    instrument : str
    """

    visit: int
    detector: int
    naxis1: int
    naxis2: int
    ra: float
    dec: float
    radius_deg: float
    corners: tuple[tuple[float, float], ...]
    wcs_header: str = field(default="", repr=False)
    instrument: str = ""

    @classmethod
    def from_wcs(cls, visit: int, detector: int, header: Any, naxis1: int, naxis2: int,
                 instrument: str = "") -> DetectorRecord:
        """From a FITS header with a celestial WCS and the image size."""
        from astropy.io import fits
        from astropy.wcs import WCS, FITSFixedWarning

        if not isinstance(header, fits.Header):
            header = fits.Header(header)
        with warnings.catch_warnings():  # 'datfix' notes about MJD-OBS: not ours to report
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, relax=True)
        xs = np.array([0.5, naxis1 + 0.5, naxis1 + 0.5, 0.5, (naxis1 + 1) / 2])
        ys = np.array([0.5, 0.5, naxis2 + 0.5, naxis2 + 0.5, (naxis2 + 1) / 2])
        ra, dec = wcs.all_pix2world(xs, ys, 1)
        corners = tuple((float(r), float(d)) for r, d in zip(ra[:4], dec[:4], strict=True))
        radius = float(np.max(_separation(ra[4], dec[4], ra[:4], dec[:4])))
        text = header.tostring(sep="\n")
        return cls(int(visit), int(detector), int(naxis1), int(naxis2), float(ra[4] % 360),
                   float(dec[4]), radius, corners, text, instrument)

    @classmethod
    def from_centre(cls, visit: int, detector: int, ra: float, dec: float, radius_deg: float,
                    instrument: str = "") -> DetectorRecord:
        """A detector known only by a circle (corners on the circle, for tests and tiles)."""
        angles = np.radians([45.0, 135.0, 225.0, 315.0])
        corners = tuple((float(ra + radius_deg * np.cos(a) / max(np.cos(np.radians(dec)), 1e-6)),
                         float(dec + radius_deg * np.sin(a))) for a in angles)
        return cls(int(visit), int(detector), 0, 0, float(ra), float(dec), float(radius_deg),
                   corners, "", instrument)

    def tiles(self) -> np.ndarray:
        """The sky tiles this detector touches."""
        import healpy as hp

        from jointcal_ap.store.dimensions import TILE_ORDER

        vec = hp.ang2vec(self.ra, self.dec, lonlat=True)
        pixels = hp.query_disc(1 << TILE_ORDER, vec, np.radians(self.radius_deg), inclusive=True,
                               nest=True)
        return np.unique(np.append(pixels, tile_of(self.ra, self.dec))).astype(np.int64)

    @property
    def data_id(self) -> DataId:
        values: dict[str, Any] = {"visit": self.visit, "detector": self.detector}
        if self.instrument:
            values["instrument"] = self.instrument
        return DataId(values)


@dataclass(frozen=True)
class DatasetRef:
    """A stored dataset: what it is, which data ID, where.

    Attributes
    ----------
    name : str
        The dataset's name in the pipeline (``"calexp"``).
    type : str
        Its dataset type (``"CalibratedExposure"``).
    data_id : DataId
    path : str
        Relative to the repository root, or absolute for data ingested by reference.
    identity : mapping
        Size and modification time (ns) of the file (for directories: of the newest file).
    provenance : mapping
        Which stage and inputs made it.
    """

    name: str
    type: str
    data_id: DataId
    path: str
    identity: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)


def _separation(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Great-circle separation in degrees (haversine)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _gnomonic(ra: Any, dec: Any, ra0: float, dec0: float) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    x = np.cos(dec) * np.sin(ra - ra0) / cosc
    y = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.column_stack([x, y])


def _convex_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons (n×2, in order) overlap (separating-axis test)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.column_stack([-edges[:, 1], edges[:, 0]])
        pa, pb = a @ normals.T, b @ normals.T
        if np.any((pa.max(axis=0) < pb.min(axis=0)) | (pb.max(axis=0) < pa.min(axis=0))):
            return False
    return True


class Registry:
    """The SQLite registry of one repository (see the module docstring).

    Parameters
    ----------
    path : path
        The SQLite file (created with its tables if absent).
    """

    def __init__(self, path: str | os.PathLike[str]):
        import sqlalchemy as sa

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(f"sqlite:///{self.path}",
                                        connect_args={"timeout": 60.0})
        md = sa.MetaData()
        dims = [sa.Column(d, sa.Integer if d in ("visit", "detector", "tile") else sa.Text,
                          nullable=True) for d in DIMENSION_ORDER]
        self._meta = sa.Table("registry_meta", md, sa.Column("key", sa.Text, primary_key=True),
                              sa.Column("value", sa.Text, nullable=False))
        self._visit = sa.Table(
            "visit", md,
            sa.Column("instrument", sa.Text, primary_key=True),
            sa.Column("visit", sa.Integer, primary_key=True),
            sa.Column("mjd_tai", sa.Float, nullable=False),
            sa.Column("ra", sa.Float, nullable=False), sa.Column("dec", sa.Float, nullable=False),
            sa.Column("rotation_deg", sa.Float, nullable=False),
            sa.Column("band", sa.Text, nullable=False),
            sa.Column("exposure_time", sa.Float, nullable=False))
        self._detector = sa.Table(
            "detector_region", md,
            sa.Column("instrument", sa.Text, primary_key=True),
            sa.Column("visit", sa.Integer, primary_key=True),
            sa.Column("detector", sa.Integer, primary_key=True),
            sa.Column("naxis1", sa.Integer, nullable=False),
            sa.Column("naxis2", sa.Integer, nullable=False),
            sa.Column("ra", sa.Float, nullable=False), sa.Column("dec", sa.Float, nullable=False),
            sa.Column("radius_deg", sa.Float, nullable=False),
            sa.Column("corners", sa.Text, nullable=False),
            sa.Column("wcs_header", sa.Text, nullable=False))
        self._tile = sa.Table(
            "detector_tile", md,
            sa.Column("instrument", sa.Text, primary_key=True),
            sa.Column("visit", sa.Integer, primary_key=True),
            sa.Column("detector", sa.Integer, primary_key=True),
            sa.Column("tile", sa.Integer, primary_key=True),
            sa.Index("ix_detector_tile_tile", "tile"))
        self._dataset = sa.Table(
            "dataset", md,
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("data_id", sa.Text, primary_key=True),
            sa.Column("type", sa.Text, nullable=False),
            *dims,
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("identity", sa.Text, nullable=False),
            sa.Column("provenance", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sa.Index("ix_dataset_visit_detector", "name", "visit", "detector"))
        self._task = sa.Table(
            "task", md,
            sa.Column("step", sa.Text, primary_key=True),
            sa.Column("data_id", sa.Text, primary_key=True),
            sa.Column("fingerprint", sa.Text, nullable=False),
            sa.Column("identity", sa.Text, nullable=False),
            sa.Column("seconds", sa.Float, nullable=False),
            sa.Column("finished", sa.Float, nullable=False))
        for attempt in range(5):  # two processes creating one registry: the loser retries
            try:
                with self._engine.begin() as conn:
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                    md.create_all(conn)
                    row = conn.execute(sa.select(self._meta.c.value).where(
                        self._meta.c.key == "version")).scalar()
                    if row is None:
                        conn.execute(self._meta.insert().prefix_with("OR IGNORE").values(
                            key="version", value=REGISTRY_VERSION))
                    elif row != REGISTRY_VERSION:
                        raise RegistryError(f"{self.path}: registry version {row}, this "
                                            f"jointcal_ap reads version {REGISTRY_VERSION}")
                break
            except sa.exc.OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        """Release the database."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _upsert(self, conn: Any, table: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        from sqlalchemy.dialects.sqlite import insert

        if not rows:
            return
        stmt = insert(table)
        keys = [c.name for c in table.primary_key.columns]
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys})
        conn.execute(stmt, list(rows))

    # ------------------------------------------------------------------ visits
    def add_visit(self, record: VisitRecord) -> None:
        """Record (or update) a visit."""
        self.add_visits([record])

    def add_visits(self, records: Iterable[VisitRecord]) -> None:
        """Record (or update) visits, in one transaction."""
        rows = [dict(instrument=r.instrument, visit=r.visit, mjd_tai=r.mjd_tai, ra=r.ra,
                     dec=r.dec, rotation_deg=r.rotation_deg, band=r.band,
                     exposure_time=r.exposure_time) for r in records]
        with self._engine.begin() as conn:
            self._upsert(conn, self._visit, rows)

    def visits(self, visits: Iterable[int] | None = None, *, instrument: str = "",
               band: str | None = None, before_mjd: float | None = None,
               after_mjd: float | None = None) -> list[VisitRecord]:
        """Visits, sorted by time; optionally only some, one band, or a time window (TAI)."""
        import sqlalchemy as sa

        t = self._visit
        query = sa.select(t).where(t.c.instrument == instrument).order_by(t.c.mjd_tai, t.c.visit)
        if visits is not None:
            query = query.where(t.c.visit.in_([int(v) for v in visits]))
        if band is not None:
            query = query.where(t.c.band == band)
        if before_mjd is not None:
            query = query.where(t.c.mjd_tai < before_mjd)
        if after_mjd is not None:
            query = query.where(t.c.mjd_tai >= after_mjd)
        with self._engine.connect() as conn:
            return [VisitRecord(**row._mapping) for row in conn.execute(query)]

    def visit(self, visit: int, instrument: str = "") -> VisitRecord:
        """One visit (RegistryError if it was never ingested)."""
        found = self.visits([visit], instrument=instrument)
        if not found:
            raise RegistryError(f"{self.path}: no visit {visit}"
                                + (f" of {instrument}" if instrument else "")
                                + " in the registry (ingest its exposures first)")
        return found[0]

    # ------------------------------------------------------------------ detectors
    def add_detector(self, record: DetectorRecord) -> None:
        """Record (or update) a detector's footprint and the tiles it touches."""
        self.add_detectors([record])

    def add_detectors(self, records: Iterable[DetectorRecord]) -> None:
        """Record detectors' footprints and tiles, in one transaction."""
        import sqlalchemy as sa

        records = list(records)
        rows = [dict(instrument=r.instrument, visit=r.visit, detector=r.detector,
                     naxis1=r.naxis1, naxis2=r.naxis2, ra=r.ra, dec=r.dec,
                     radius_deg=r.radius_deg, corners=json.dumps(r.corners),
                     wcs_header=r.wcs_header) for r in records]
        tiles = [dict(instrument=r.instrument, visit=r.visit, detector=r.detector, tile=int(t))
                 for r in records for t in r.tiles()]
        with self._engine.begin() as conn:
            for r in records:
                conn.execute(sa.delete(self._tile).where(
                    (self._tile.c.instrument == r.instrument) & (self._tile.c.visit == r.visit)
                    & (self._tile.c.detector == r.detector)))
            self._upsert(conn, self._detector, rows)
            if tiles:
                conn.execute(self._tile.insert(), tiles)

    def _detector_rows(self, where: Any) -> list[DetectorRecord]:
        import sqlalchemy as sa

        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(self._detector).where(where).order_by(
                self._detector.c.visit, self._detector.c.detector)).all()
        return [DetectorRecord(r.visit, r.detector, r.naxis1, r.naxis2, r.ra, r.dec, r.radius_deg,
                               tuple(tuple(c) for c in json.loads(r.corners)), r.wcs_header,
                               r.instrument) for r in rows]

    def detector(self, visit: int, detector: int, instrument: str = "") -> DetectorRecord:
        """One detector of one visit (RegistryError if unknown)."""
        t = self._detector
        found = self._detector_rows((t.c.instrument == instrument) & (t.c.visit == int(visit))
                                    & (t.c.detector == int(detector)))
        if not found:
            raise RegistryError(f"{self.path}: no detector {detector} of visit {visit} in the "
                                f"registry (ingest its exposure first)")
        return found[0]

    def detectors(self, visits: Iterable[int] | None = None, instrument: str = ""
                  ) -> list[DetectorRecord]:
        """Detector footprints, of some visits or all."""
        t = self._detector
        where = t.c.instrument == instrument
        if visits is not None:
            where = where & t.c.visit.in_([int(v) for v in visits])
        return self._detector_rows(where)

    def overlapping(self, visit: int, detector: int, *, before_mjd: float | None = None,
                    band: str | None = None, exclude_same_visit: bool = True,
                    instrument: str = "") -> list[DetectorRecord]:
        """Detectors of other visits whose footprint overlaps this one's.

        Candidates come from the shared sky tiles, then the footprints (convex quadrilaterals
        on a tangent plane) are tested exactly. ``before_mjd`` and ``band`` restrict the
        visits (e.g. templates from earlier visits in the same band).
        """
        import sqlalchemy as sa

        target = self.detector(visit, detector, instrument)
        t, v = self._tile, self._visit
        mine = sa.select(t.c.tile).where((t.c.instrument == instrument) & (t.c.visit == visit)
                                         & (t.c.detector == detector))
        query = (sa.select(t.c.visit, t.c.detector).distinct()
                 .join(v, (v.c.instrument == t.c.instrument) & (v.c.visit == t.c.visit))
                 .where((t.c.instrument == instrument) & t.c.tile.in_(mine)))
        if exclude_same_visit:
            query = query.where(t.c.visit != visit)
        if before_mjd is not None:
            query = query.where(v.c.mjd_tai < before_mjd)
        if band is not None:
            query = query.where(v.c.band == band)
        with self._engine.connect() as conn:
            pairs = [(r.visit, r.detector) for r in conn.execute(query)]
        if not pairs:
            return []
        d = self._detector
        rows = self._detector_rows((d.c.instrument == instrument) & sa.tuple_(
            d.c.visit, d.c.detector).in_(pairs))
        mine_poly = _gnomonic(*np.array(target.corners).T, target.ra, target.dec)
        out = []
        for row in rows:
            if _separation(target.ra, target.dec, row.ra, row.dec) > \
                    target.radius_deg + row.radius_deg:
                continue
            other = _gnomonic(*np.array(row.corners).T, target.ra, target.dec)
            if _convex_overlap(mine_poly, other):
                out.append(row)
        return out

    # ------------------------------------------------------------------ datasets
    def add_datasets(self, refs: Iterable[DatasetRef]) -> None:
        """Record (or replace) datasets, in one transaction."""
        now = time.time()
        rows = []
        for ref in refs:
            row = {d: None for d in DIMENSION_ORDER}
            row.update(ref.data_id)
            row.update(name=ref.name, data_id=ref.data_id.key, type=ref.type, path=ref.path,
                       identity=json.dumps(dict(ref.identity), sort_keys=True, default=str),
                       provenance=json.dumps(dict(ref.provenance), sort_keys=True, default=str),
                       created=now)
            rows.append(row)
        with self._engine.begin() as conn:
            self._upsert(conn, self._dataset, rows)

    def remove_datasets(self, keys: Iterable[tuple[str, DataId]]) -> None:
        """Forget datasets (the files are the caller's business)."""
        import sqlalchemy as sa

        t = self._dataset
        with self._engine.begin() as conn:
            for name, data_id in keys:
                conn.execute(sa.delete(t).where((t.c.name == name)
                                                & (t.c.data_id == DataId(data_id).key)))

    def datasets(self, name: str | None = None, **where: Any) -> list[DatasetRef]:
        """Datasets by name and dimension values (``visit=3``, ``visit=[1, 2]``)."""
        import sqlalchemy as sa

        t = self._dataset
        query = sa.select(t).order_by(t.c.name, *[t.c[d] for d in DIMENSION_ORDER])
        if name is not None:
            query = query.where(t.c.name == name)
        for dim, value in where.items():
            if dim not in DIMENSION_ORDER:
                raise RegistryError(f"unknown dimension {dim!r}")
            if isinstance(value, list | tuple | set | np.ndarray):
                query = query.where(t.c[dim].in_(list(value)))
            else:
                query = query.where(t.c[dim] == value)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [DatasetRef(r.name, r.type, DataId({d: r._mapping[d] for d in DIMENSION_ORDER
                                                   if r._mapping[d] is not None}),
                           r.path, json.loads(r.identity), json.loads(r.provenance))
                for r in rows]

    def dataset(self, name: str, data_id: Mapping[str, Any]) -> DatasetRef | None:
        """The dataset ``name`` with exactly this data ID, or None."""
        data_id = DataId(data_id)
        found = [r for r in self.datasets(name, **{k: v for k, v in data_id.items()})
                 if r.data_id == data_id]
        return found[0] if found else None

    # ------------------------------------------------------------------ tasks
    def task(self, step: str, data_id: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(fingerprint, input identity)`` of a completed step on a data ID, or None."""
        import sqlalchemy as sa

        t = self._task
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t.c.fingerprint, t.c.identity).where(
                (t.c.step == step) & (t.c.data_id == DataId(data_id).key))).first()
        return None if row is None else (row.fingerprint, row.identity)

    def tasks(self, step: str) -> dict[str, tuple[str, str]]:
        """Every completed data ID of a step: data-ID key → (fingerprint, identity)."""
        import sqlalchemy as sa

        t = self._task
        with self._engine.connect() as conn:
            return {r.data_id: (r.fingerprint, r.identity) for r in conn.execute(
                sa.select(t.c.data_id, t.c.fingerprint, t.c.identity).where(t.c.step == step))}

    def record_tasks(self, step: str, done: Iterable[tuple[DataId, str, str, float]]) -> None:
        """Record steps done: ``(data_id, fingerprint, identity, seconds)`` each."""
        now = time.time()
        rows = [dict(step=step, data_id=DataId(d).key, fingerprint=f, identity=i, seconds=s,
                     finished=now) for d, f, i, s in done]
        with self._engine.begin() as conn:
            self._upsert(conn, self._task, rows)

    def forget_tasks(self, step: str, data_ids: Iterable[Mapping[str, Any]]) -> None:
        """Mark steps as not done (they will run again)."""
        import sqlalchemy as sa

        t = self._task
        with self._engine.begin() as conn:
            for d in data_ids:
                conn.execute(sa.delete(t).where((t.c.step == step)
                                                & (t.c.data_id == DataId(d).key)))
