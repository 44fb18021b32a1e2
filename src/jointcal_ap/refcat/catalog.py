"""Load the stars of a sky region from a refcat, at any epoch.

>>> from astropy.time import Time
>>> from jointcal_ap.refcat import open_refcat
>>> cat = open_refcat("refcat/hip2")                                # doctest: +SKIP
>>> stars = cat.cone(56.75, 24.12, 1.5, epoch=Time("2024-01-01"))   # the Pleiades, today  # doctest: +SKIP

Every query reads only the partitions that can hold the region's stars *after*
they have moved: the region is padded by max|μ|·|Δt| (and the largest parallax
when an observer is given), the candidates are propagated
(:func:`jointcal_ap.refcat.epoch.propagate`), and the exact region test is made
on the propagated positions. Nothing is modified in place.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jointcal_ap.refcat._arrow import from_numpy, to_numpy
from jointcal_ap.refcat.healpix import query_disc
from jointcal_ap.refcat.layout import (
    Partition,
    catalog_root,
    partition_path,
    read_partition_info,
    read_properties,
)
from jointcal_ap.refcat.schema import CORRELATION_NAMES, HEALPIX_COLUMN, HEALPIX_ORDER

if TYPE_CHECKING:  # astropy is imported only when a caller passes or asks for its types
    from astropy.table import Table
    from astropy.time import Time

__all__ = ["Refcat", "RefcatError", "open_refcat"]

_ASTROMETRY = ("ra", "dec", "parallax", "pmra", "pmdec", "radial_velocity", "epoch")
_ERRORS = ("ra_error", "dec_error", "parallax_error", "pmra_error", "pmdec_error")
_MAS_TO_DEG = 1.0 / 3.6e6
_QUERY_ORDER_CAP = 8
#: Partitions with more rows than this are cut to a cone's HEALPix ranges before anything else.
_RANGE_SEARCH_MIN_ROWS = 20_000


def _pixel_ranges(center: np.ndarray, radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) ranges of ``_healpix_29`` covering a cone: the NESTED pixels (at an order where a
    pixel is ~1/8 of the radius) that touch it, each pixel's range at order 29."""
    k = int(np.clip(math.ceil(math.log2(8 * 58.6 / max(radius_deg, 1e-6))), 0, 16))
    pix = query_disc(k, center, math.radians(radius_deg))
    shift = 2 * (HEALPIX_ORDER - k)
    return pix << shift, (pix + 1) << shift


def _rows_in_ranges(hp29: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices of the (sorted) ``hp29`` values inside any [lo, hi) range, in order."""
    a, b = np.searchsorted(hp29, lo), np.searchsorted(hp29, hi)
    keep = b > a
    a, b = a[keep], b[keep]
    lengths = b - a
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(a - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + starts


class RefcatError(ValueError):
    """A refcat directory is missing, incomplete, or a query is malformed."""


def _unit_vector(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _degrees(value: Any, name: str) -> float:
    if hasattr(value, "unit") and hasattr(value, "to_value"):  # an astropy Quantity
        from astropy import units as u

        return float(value.to_value(u.deg))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RefcatError(f"{name} must be a number of degrees or an angle Quantity, got {value!r}") from None


def _julian_year(epoch: Time | float | None) -> float | None:
    """A Time (any scale) or a float Julian year (taken as TDB) → TDB Julian year."""
    if epoch is None:
        return None
    if type(epoch).__module__.startswith("astropy.time"):  # an astropy Time
        from erfa import ErfaWarning

        if not epoch.isscalar:
            raise RefcatError("epoch must be a single time")
        # TT→TDB for a future date makes ERFA warn "dubious year" because it looks up
        # UTC for a term of a few µs in TDB−TT; that is irrelevant at our precision.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ErfaWarning, message=".*dubious year.*")
            return float(epoch.tdb.jyear)
    value = float(epoch)
    if not math.isfinite(value):
        raise RefcatError(f"epoch must be finite, got {epoch!r}")
    return value


@dataclass(frozen=True)
class _Region:
    """A sky region: a bounding cone for partition selection plus an exact membership test."""

    center: np.ndarray  # unit vector
    radius_deg: float  # bounding cone radius (≥ 180 means everything)
    kind: str
    params: tuple

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        if self.kind == "cone":
            if self.radius_deg >= 180.0:
                return np.ones(ra_deg.shape, dtype=bool)
            cos_sep = _unit_vector(ra_deg, dec_deg) @ self.center
            return cos_sep >= math.cos(math.radians(self.radius_deg))
        if self.kind == "box":
            ra_min, ra_max, dec_min, dec_max = self.params
            in_dec = (dec_deg >= dec_min) & (dec_deg <= dec_max)
            ra_wrapped = np.mod(ra_deg - ra_min, 360.0)
            width = np.mod(ra_max - ra_min, 360.0) or (360.0 if ra_max != ra_min else 0.0)
            return in_dec & (ra_wrapped <= width)
        if self.kind == "polygon":
            vectors = self.params[0]
            points = _unit_vector(ra_deg, dec_deg)
            inside = np.ones(ra_deg.shape, dtype=bool)
            for a, b in zip(vectors, np.roll(vectors, -1, axis=0), strict=True):
                inside &= points @ np.cross(a, b) >= 0
            return inside
        if self.kind == "healpix":
            import healpy as hp

            order, pixel = self.params
            return hp.ang2pix(1 << order, ra_deg, dec_deg, nest=True, lonlat=True) == pixel
        raise AssertionError(self.kind)


def _bounding_cone(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, float]:
    """A cone containing the given boundary points (and the region they enclose, if small)."""
    vectors = _unit_vector(ra_deg, dec_deg)
    mean = vectors.mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-6:
        return np.array([0.0, 0.0, 1.0]), 180.0
    center = mean / norm
    radius = float(np.degrees(np.arccos(np.clip(vectors @ center, -1, 1))).max())
    return center, (180.0 if radius > 90.0 else radius * 1.0001 + 1e-9)


class Refcat:
    """A HATS-layout reference catalog on disk, queried by sky region and epoch.

    Use :func:`open_refcat` to make one. Attributes: ``path``, ``name``, ``properties``
    (the HATS properties), ``partitions``, ``schema`` (Arrow), ``columns``,
    ``max_abs_pm`` (mas/yr) and ``max_parallax`` (mas), ``epoch_range`` (TDB Julian years).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = catalog_root(path)  # a HATS collection (convert --margin) opens its catalog
        if not (self.path / "properties").exists():
            raise RefcatError(f"{self.path}: not a refcat (no 'properties' file); is the conversion finished?")
        try:
            self.properties = read_properties(self.path)
            self.name = self.properties.get("obs_collection", self.path.name)
            self.partitions: list[Partition] = read_partition_info(self.path)
            self.schema: pa.Schema = pq.read_schema(self.path / "dataset" / "_common_metadata")
            self.max_abs_pm = float(self.properties.get("jointcal_ap_max_abs_pm", 0.0))
            self.max_parallax = float(self.properties.get("jointcal_ap_max_parallax", 0.0))
            lo = self.properties.get("jointcal_ap_epoch_min")
            hi = self.properties.get("jointcal_ap_epoch_max")
            self.epoch_range = (float(lo), float(hi)) if lo and hi else None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise RefcatError(f"{self.path}: a damaged refcat ({type(exc).__name__}: {exc})") from None
        self.columns: list[str] = [n for n in self.schema.names if n != HEALPIX_COLUMN]
        missing = [c for c in ("id", "ra", "dec", "epoch") if c not in self.schema.names]
        if missing:
            raise RefcatError(f"{self.path}: not a refcat: no column(s) {missing} (it has {self.columns})")
        orders = np.array([p.order for p in self.partitions], dtype=np.int64)
        pixels = np.array([p.pixel for p in self.partitions], dtype=np.int64)
        self._orders, self._pixels = orders, pixels
        # Partitions read recently, with the unit vectors of their rows: a fit loads one cone per
        # exposure, and overlapping exposures read the same partitions again and again. The
        # catalog on disk is immutable, so the cache can never be stale.
        self._cache: OrderedDict[tuple, tuple[pa.Table, np.ndarray]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()  # queries may run in threads (one per exposure)

    def __repr__(self) -> str:
        return (f"Refcat({self.name!r}, {self.properties.get('hats_nrows', '?')} rows, "
                f"{len(self.partitions)} partitions, path={str(self.path)!r})")

    def __len__(self) -> int:
        return int(self.properties.get("hats_nrows", 0))

    # ------------------------------------------------------------------ public queries
    def cone(self, ra: Any, dec: Any = None, radius: Any = None, **kwargs: Any) -> Table | pa.Table:
        """Stars within ``radius`` of (``ra``, ``dec``) at the requested epoch.

        ``ra`` may also be a :class:`~astropy.coordinates.SkyCoord`, with ``dec`` omitted.
        Angles are degrees or Quantities; ``radius >= 180`` returns the whole sky.
        See :meth:`query` for the keyword arguments.
        """
        if hasattr(ra, "icrs") and radius is None:
            radius, coord = dec, ra.icrs
            ra, dec = coord.ra, coord.dec
        if dec is None or radius is None:
            raise RefcatError("cone needs ra, dec and radius (or a SkyCoord and a radius)")
        ra_d, dec_d, rad_d = _degrees(ra, "ra"), _degrees(dec, "dec"), _degrees(radius, "radius")
        if not -90 <= dec_d <= 90 or rad_d < 0:
            raise RefcatError(f"cone needs -90 <= dec <= 90 and radius >= 0, got dec={dec_d}, radius={rad_d}")
        center = _unit_vector(np.array(ra_d), np.array(dec_d))
        return self.query(_Region(center, min(rad_d, 180.0), "cone", ()), **kwargs)

    def box(self, ra_min: Any, ra_max: Any, dec_min: Any, dec_max: Any, **kwargs: Any) -> Table | pa.Table:
        """Stars with ``dec_min <= dec <= dec_max`` and ra from ``ra_min`` eastwards to ``ra_max``.

        ``ra_min > ra_max`` wraps through 0 (e.g. 350 → 10 is a 20° wide box).
        """
        r0, r1 = _degrees(ra_min, "ra_min") % 360.0, _degrees(ra_max, "ra_max") % 360.0
        d0, d1 = _degrees(dec_min, "dec_min"), _degrees(dec_max, "dec_max")
        if not -90 <= d0 <= d1 <= 90:
            raise RefcatError(f"box needs -90 <= dec_min <= dec_max <= 90, got {d0}, {d1}")
        width = (r1 - r0) % 360.0 or 360.0
        ras = r0 + np.linspace(0.0, width, 65)
        edge_ra = np.concatenate([ras, ras])
        edge_dec = np.concatenate([np.full(65, d0), np.full(65, d1)])
        mid_ra = np.full(65, r0 + width / 2)
        edge_ra = np.concatenate([edge_ra, mid_ra])
        edge_dec = np.concatenate([edge_dec, np.linspace(d0, d1, 65)])
        center, radius = _bounding_cone(edge_ra, edge_dec)
        if width >= 180.0:
            radius = 180.0
        return self.query(_Region(center, radius, "box", (r0, r1, d0, d1)), **kwargs)

    def polygon(self, ra: Sequence[float], dec: Sequence[float], **kwargs: Any) -> Table | pa.Table:
        """Stars inside a convex spherical polygon given by its vertices (degrees), in either winding."""
        ra_a, dec_a = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
        if ra_a.shape != dec_a.shape or ra_a.size < 3:
            raise RefcatError("polygon needs at least 3 vertices, with as many ra as dec values")
        vectors = _unit_vector(ra_a, dec_a)
        normals = np.cross(vectors, np.roll(vectors, -1, axis=0))
        centroid = vectors.mean(axis=0)
        signs = np.sign(normals @ centroid)
        if np.all(signs < 0):
            vectors = vectors[::-1]
            normals = np.cross(vectors, np.roll(vectors, -1, axis=0))
        # convexity: every vertex on the inner side of every edge
        if np.any((vectors @ normals.T) < -1e-12):
            raise RefcatError("polygon must be convex (split it into convex pieces)")
        t = np.linspace(0, 1, 17)[:, None, None]
        nxt = np.roll(vectors, -1, axis=0)
        pts = (1 - t) * vectors + t * nxt
        pts = pts.reshape(-1, 3)
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        center, radius = _bounding_cone(np.degrees(np.arctan2(pts[:, 1], pts[:, 0])),
                                        np.degrees(np.arcsin(np.clip(pts[:, 2], -1, 1))))
        return self.query(_Region(center, radius, "polygon", (vectors,)), **kwargs)

    def healpix(self, order: int, pixel: int, **kwargs: Any) -> Table | pa.Table:
        """Stars inside NESTED HEALPix pixel ``pixel`` of ``order`` (after propagation)."""
        if not 0 <= order <= 29 or not 0 <= pixel < 12 * 4**order:
            raise RefcatError(f"no HEALPix pixel {pixel} at order {order}")
        import healpy as hp

        nside = 1 << order
        corners = hp.boundaries(nside, pixel, step=4, nest=True).T
        center = np.array(hp.pix2vec(nside, pixel, nest=True))
        radius = float(np.degrees(np.arccos(np.clip(corners @ center, -1, 1))).max()) * 1.0001
        return self.query(_Region(center, radius, "healpix", (order, pixel)), **kwargs)

    # ------------------------------------------------------------------ machinery
    def _padding_deg(self, epoch: float | None, observer: bool) -> float:
        pad_mas = 0.0
        if epoch is not None and self.epoch_range is not None:
            dt = max(abs(epoch - self.epoch_range[0]), abs(epoch - self.epoch_range[1]))
            pad_mas += self.max_abs_pm * dt * 1.01
        if observer:
            pad_mas += self.max_parallax * 1.02
        return pad_mas * _MAS_TO_DEG + 1e-7

    def _candidate_partitions(self, region: _Region, pad_deg: float) -> list[Partition]:
        radius = region.radius_deg + pad_deg
        if radius >= 180.0 or not self.partitions:
            return list(self.partitions)
        k = int(min(self._orders.max(), _QUERY_ORDER_CAP))
        hits = query_disc(k, region.center, math.radians(radius))
        chosen = np.zeros(len(self.partitions), dtype=bool)
        for order in np.unique(self._orders):
            sel = self._orders == order
            if order <= k:
                ancestors = np.unique(hits >> (2 * (k - order)))
                chosen[sel] = np.isin(self._pixels[sel], ancestors)
            else:
                chosen[sel] = np.isin(self._pixels[sel] >> (2 * (order - k)), hits)
        return [p for p, c in zip(self.partitions, chosen, strict=True) if c]

    #: Most bytes of partitions (and their rows' unit vectors) kept in memory between queries.
    cache_bytes: int = 256 * 1024**2

    def _read_partition(self, part: Partition, columns: list[str]) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
        """A partition's rows, their unit vectors and their ``_healpix_29`` (None unless sorted)."""
        key = (part.order, part.pixel, tuple(columns))
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with_hp = HEALPIX_COLUMN in self.schema.names
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import
        # (pandas included) costs a fresh process a third of a second
        with pq.ParquetFile(partition_path(self.path, part)) as pf:
            table = pf.read(columns=[*columns, *([HEALPIX_COLUMN] if with_hp else [])])
        hp29 = None
        if with_hp:
            hp29 = to_numpy(table.column(HEALPIX_COLUMN)).astype(np.int64)
            table = table.drop_columns([HEALPIX_COLUMN])
            if len(hp29) > 1 and np.any(np.diff(hp29) < 0):  # not written by us: no range search
                hp29 = None
        xyz = _unit_vector(to_numpy(table.column("ra")), to_numpy(table.column("dec")))
        value = (table, xyz, hp29)
        size = table.nbytes + xyz.nbytes + (hp29.nbytes if hp29 is not None else 0)
        if size <= self.cache_bytes:
            with self._cache_lock:
                if key not in self._cache:
                    self._cache[key] = value
                    self._cache_bytes += size
                while self._cache_bytes > self.cache_bytes:
                    _, (t, v, h) = self._cache.popitem(last=False)
                    self._cache_bytes -= t.nbytes + v.nbytes + (h.nbytes if h is not None else 0)
        return value

    def _read(self, parts: Sequence[Partition], columns: list[str], region: _Region | None = None,
              pad_deg: float = 0.0) -> tuple[pa.Table, np.ndarray]:
        """The rows of these partitions (``columns``), and their unit vectors (catalog positions).

        With a cone ``region``, large partitions are cut to the rows whose ``_healpix_29`` falls
        in the HEALPix pixels touching the cone (+ ``pad_deg``), by binary search on the sorted
        column: a superset of the cone's rows, found without looking at the others.
        """
        if not parts:
            return self.schema.empty_table().select(columns), np.zeros((0, 3))
        ranges = None
        if region is not None and region.radius_deg + pad_deg < 30.0:
            ranges = _pixel_ranges(region.center, region.radius_deg + pad_deg)
        tables, vectors = [], []
        for part in parts:
            table, xyz, hp29 = self._read_partition(part, columns)
            if ranges is not None and hp29 is not None and len(hp29) > _RANGE_SEARCH_MIN_ROWS:
                rows = _rows_in_ranges(hp29, *ranges)
                table, xyz = table.take(from_numpy(rows)), xyz[rows]
            tables.append(table)
            vectors.append(xyz)
        if len(tables) == 1:
            return tables[0], vectors[0]
        return pa.concat_tables(tables), np.concatenate(vectors)

    def query(self, region: _Region, *, epoch: Time | float | None = None,
              observer: str | np.ndarray | None = None, columns: Sequence[str] | None = None,
              mag_limits: Mapping[str, tuple[float | None, float | None]] | None = None,
              format: str = "astropy") -> Table | pa.Table:
        """Load the stars of ``region``; the shared implementation of every query.

        Parameters
        ----------
        epoch : astropy.time.Time or float, optional
            Move the stars to this epoch (a float is a TDB Julian year). None keeps the
            catalog epoch.
        observer : None, "earth" or array
            None (default): barycentric positions. ``"earth"``: as seen from the geocentre at
            ``epoch`` (annual parallax; no aberration or light deflection). An array: a
            barycentric ICRS position in AU.
        columns : list of str, optional
            Columns to return (default all). ``id``, ``ra``, ``dec`` and ``epoch`` are always included.
            The covariance is propagated only when an error or correlation column is requested.
        mag_limits : mapping, optional
            ``{"phot_g_mean_mag": (None, 12.0)}`` keeps 12th magnitude and brighter; either
            bound may be None. Rows with a null magnitude fail a limit.
        format : "astropy" or "arrow"

        Returns
        -------
        astropy.table.Table (with units) or pyarrow.Table
            With a boolean ``propagated`` column when ``epoch`` is given: False for stars
            without proper motion, which keep their catalog position and epoch.
        """
        if format not in ("astropy", "arrow"):
            raise RefcatError(f"format must be 'astropy' or 'arrow', got {format!r}")
        t_epoch = _julian_year(epoch)
        obs_position = None
        if observer is not None:
            if t_epoch is None:
                raise RefcatError("an observer needs an epoch")
            if isinstance(observer, str):
                if observer != "earth":
                    raise RefcatError(f"observer must be None, 'earth' or a position in AU, got {observer!r}")
                from jointcal_ap.refcat.epoch import earth_barycentric_position

                obs_position = earth_barycentric_position(t_epoch)
            else:
                obs_position = np.asarray(observer, dtype=float)
        wanted = list(self.columns if columns is None else columns)
        unknown = [c for c in wanted if c not in self.columns]
        if unknown:
            raise RefcatError(f"{self.path}: no column(s) {unknown}; it has {self.columns}")
        for name in (mag_limits or {}):
            if name not in self.columns:
                raise RefcatError(f"{self.path}: mag_limits names unknown column {name!r}")
        moving = t_epoch is not None
        needed = set(wanted) | {"id", "ra", "dec", "epoch"} | set(mag_limits or {})
        if moving:
            needed |= {c for c in _ASTROMETRY if c in self.columns}
            # The covariance is propagated only when errors are asked for (it costs ~4x the motion).
            if set(wanted) & {*_ERRORS, *CORRELATION_NAMES}:
                needed |= {c for c in (*_ERRORS, *CORRELATION_NAMES) if c in self.columns}
        read_cols = [c for c in self.schema.names if c in needed]

        pad = self._padding_deg(t_epoch, obs_position is not None)
        table, xyz = self._read(self._candidate_partitions(region, pad), read_cols, region, pad)
        keep = np.ones(table.num_rows, dtype=bool)
        for name, (lo, hi) in (mag_limits or {}).items():
            mag = to_numpy(table.column(name)).astype(float)
            with np.errstate(invalid="ignore"):
                if lo is not None:
                    keep &= mag >= lo
                if hi is not None:
                    keep &= mag <= hi
        # cheap pre-cut on catalog positions, padded for motion
        if region.radius_deg < 180.0 and table.num_rows:
            limit = math.cos(math.radians(min(region.radius_deg + pad, 180.0)))
            keep &= xyz @ region.center >= limit - 1e-12
        if not keep.all():
            table = table.filter(from_numpy(keep))
        if moving:
            table = self._propagate(table, t_epoch, obs_position)
        keep = region.contains(to_numpy(table.column("ra")), to_numpy(table.column("dec")))
        table = table.filter(from_numpy(keep))
        out_cols = list(dict.fromkeys(["id", "ra", "dec", *wanted, "epoch"]))
        if moving:
            out_cols.append("propagated")
        table = table.select(out_cols)
        return table if format == "arrow" else _to_astropy(table)

    def _propagate(self, table: pa.Table, epoch: float, observer: np.ndarray | None) -> pa.Table:
        from jointcal_ap.refcat.epoch import _propagate_with_errors, propagate

        n = table.num_rows

        def col(name: str, default: float = np.nan) -> np.ndarray:
            if name in table.column_names:
                return to_numpy(table.column(name)).astype(np.float64, copy=False)
            return np.full(n, default)

        has_cov = any(c in table.column_names for c in _ERRORS)
        args = (col("ra"), col("dec"), col("parallax"), col("pmra"), col("pmdec"), col("radial_velocity"),
                col("epoch"), epoch)
        errors: dict[str, np.ndarray] = {}
        if has_cov:
            result, errors = _propagate_with_errors(
                *args, errors={c: col(c) for c in _ERRORS},
                correlations={c: col(c, 0.0) for c in CORRELATION_NAMES if c in table.column_names},
                observer=observer)
        else:
            result = propagate(*args, observer=observer)
        moved = np.asarray(result.moved, dtype=bool)
        updates: dict[str, np.ndarray] = {
            "ra": result.ra, "dec": result.dec,
            "epoch": np.where(moved, epoch, col("epoch")),
        }
        for name in ("parallax", "pmra", "pmdec", "radial_velocity"):
            if name in table.column_names:
                updates[name] = getattr(result, name)
        for name, values in errors.items():
            if name in table.column_names:
                updates[name] = values
        for name, values in updates.items():
            index = table.column_names.index(name)
            table = table.set_column(index, table.schema.field(name),
                                     from_numpy(np.asarray(values), table.schema.field(name).type))
        return table.append_column("propagated", from_numpy(moved))


def _to_astropy(table: pa.Table) -> Table:
    from astropy import units as u
    from astropy.table import Table

    out = Table()
    for f in table.schema:
        values = table.column(f.name).to_numpy(zero_copy_only=False)
        unit = (f.metadata or {}).get(b"unit", b"").decode()
        out[f.name] = values * u.Unit(unit) if unit and unit != "yr" else values
        desc = (f.metadata or {}).get(b"description")
        if desc:
            out[f.name].description = desc.decode()
        system = (f.metadata or {}).get(b"system")
        if system:
            out[f.name].meta["system"] = system.decode()
    if "epoch" in out.colnames:
        out["epoch"].description = "epoch of ra/dec, Julian year (TDB)"
    return out


def open_refcat(path: str | os.PathLike) -> Refcat:
    """Open a refcat written by ``jointcal-ap refcat convert`` (or any HATS catalog with our columns).

    Raises
    ------
    RefcatError
        If ``path`` is not a finished refcat.
    """
    return Refcat(path)
