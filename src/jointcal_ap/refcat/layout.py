"""The HATS on-disk layout: paths, adaptive partitioning and the catalog-level files.

A catalog directory holds::

    properties                      HATS properties (Java-properties syntax)
    partition_info.csv              Norder,Npix of every leaf partition
    dataset/_metadata               Parquet metadata of all leaves (row groups, statistics)
    dataset/_common_metadata        the schema alone
    dataset/Norder=k/Dir=d/Npix=p.parquet   leaf partitions, rows sorted by _healpix_29

plus our own ``conversion_config.json`` and ``conversion_report.json``. A NESTED
HEALPix pixel ``p`` of order ``k`` covers exactly the ``_healpix_29`` range
``[p·4^(29-k), (p+1)·4^(29-k))``, which is what makes streaming partitioning cheap.

A refcat converted with a margin is a HATS *collection*, as hats-import writes one::

    collection.properties           the main catalog and its margin(s)
    catalog/                        the catalog, laid out as above
    margin_<N>arcs/                 the margin catalog (same layout, dataproduct_type=margin)
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jointcal_ap.refcat.schema import HEALPIX_ORDER

__all__ = [
    "COLLECTION_CATALOG",
    "Partition",
    "adaptive_partitions",
    "catalog_root",
    "fixed_partitions",
    "margin_directory_name",
    "partition_path",
    "read_partition_info",
    "read_properties",
    "write_catalog_files",
    "write_collection_properties",
]

#: The main catalog's directory inside a collection.
COLLECTION_CATALOG = "catalog"


@dataclass(frozen=True, order=True)
class Partition:
    """One leaf partition: HEALPix pixel ``pixel`` at order ``order`` (NESTED)."""

    order: int
    pixel: int

    @property
    def index_range(self) -> tuple[int, int]:
        """The half-open ``_healpix_29`` range this partition covers."""
        shift = 2 * (HEALPIX_ORDER - self.order)
        return self.pixel << shift, (self.pixel + 1) << shift

    @property
    def directory(self) -> int:
        return (self.pixel // 10_000) * 10_000


def partition_path(root: str | os.PathLike, part: Partition) -> Path:
    """``root/dataset/Norder=k/Dir=d/Npix=p.parquet``."""
    return (Path(root) / "dataset" / f"Norder={part.order}" / f"Dir={part.directory}"
            / f"Npix={part.pixel}.parquet")


def fixed_partitions(pixels: np.ndarray, order: int) -> list[Partition]:
    """Partitions for every non-empty pixel at a fixed order.

    ``pixels`` are occupied pixels at any order ≥ ``order``... given here at ``order`` itself.
    """
    return [Partition(order, int(p)) for p in np.unique(pixels)]


def adaptive_partitions(pixels: np.ndarray, counts: np.ndarray, histogram_order: int,
                        max_rows: int, lowest_order: int = 0) -> list[Partition]:
    """HATS-style adaptive partitioning from a sparse histogram.

    Each occupied pixel of the histogram is assigned to its ancestor at the lowest
    order (≥ ``lowest_order``) whose total count is ≤ ``max_rows``; where even the
    histogram pixel itself exceeds the threshold it becomes its own partition.

    Parameters
    ----------
    pixels, counts : ndarray
        Occupied pixels at ``histogram_order`` (NESTED) and their row counts.

    The pixels are sorted once; the ancestors at every order are then sorted too (NESTED
    indices keep their order when shifted), so each order's group totals are a run-length
    sum: linear time, no sort per order.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    keep = counts > 0
    pixels, counts = pixels[keep], counts[keep]
    if len(pixels) > 1 and not np.all(np.diff(pixels) > 0):
        pixels, inverse = np.unique(pixels, return_inverse=True)
        counts = np.bincount(inverse, weights=counts).astype(np.int64)
    assigned = np.zeros(pixels.shape, dtype=bool)
    result: list[Partition] = []
    for order in range(lowest_order, histogram_order + 1):
        if assigned.all():
            break
        ancestors = pixels >> (2 * (histogram_order - order))
        starts = np.flatnonzero(np.diff(ancestors, prepend=-1))
        totals = np.add.reduceat(counts, starts) if len(starts) else counts
        group_total = np.repeat(totals, np.diff(np.append(starts, len(ancestors))))
        take = ~assigned & ((group_total <= max_rows) | (order == histogram_order))
        assigned |= take
        chosen = ancestors[take]
        chosen = chosen[np.flatnonzero(np.diff(chosen, prepend=-1))]
        result.extend(Partition(order, int(p)) for p in chosen)
    return sorted(result)


def _properties_text(values: dict[str, object]) -> str:
    lines = []
    for key, value in values.items():
        text = str(value).replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def margin_directory_name(threshold_arcsec: float) -> str:
    """``margin_10arcs``: the margin catalog's directory inside a collection."""
    return f"margin_{threshold_arcsec:g}arcs"


def read_properties(root: str | os.PathLike, name: str = "properties") -> dict[str, str]:
    """Read a HATS ``properties`` file (or ``collection.properties``) into a dict of strings."""
    values: dict[str, str] = {}
    path = Path(root) / name
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().replace("\\n", "\n").replace("\\\\", "\\")
    return values


def read_partition_info(root: str | os.PathLike) -> list[Partition]:
    """The leaf partitions listed in ``partition_info.csv``."""
    lines = (Path(root) / "partition_info.csv").read_text().split()
    return [Partition(int(a), int(b)) for a, b in (ln.split(",") for ln in lines[1:])]


def write_catalog_files(root: str | os.PathLike, partitions: Sequence[Partition],
                        metadata: Iterable[pq.FileMetaData], schema: pa.Schema,
                        properties: dict[str, object]) -> None:
    """Write ``partition_info.csv``, ``dataset/_metadata``, ``_common_metadata`` and ``properties``."""
    root = Path(root)
    ordered = sorted(partitions)
    (root / "partition_info.csv").write_text(
        "Norder,Npix\n" + "".join(f"{p.order},{p.pixel}\n" for p in ordered))
    collected = None
    for part, meta in zip(ordered, metadata, strict=True):
        meta.set_file_path(str(partition_path(".", part).relative_to("dataset")))
        if collected is None:
            collected = meta
        else:
            collected.append_row_groups(meta)
    dataset = root / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    pq.write_metadata(schema, dataset / "_common_metadata")
    if collected is not None:
        collected.write_metadata_file(str(dataset / "_metadata"))
    else:
        pq.write_metadata(schema, dataset / "_metadata")
    now = _dt.datetime.now(_dt.UTC)
    base = {
        "dataproduct_type": "object",
        "hats_col_ra": "ra",
        "hats_col_dec": "dec",
        "hats_col_healpix": "_healpix_29",
        "hats_col_healpix_order": HEALPIX_ORDER,
        "hats_npix_suffix": ".parquet",
        "hats_order": max((p.order for p in ordered), default=0),
        "hats_creation_date": now.strftime("%Y-%m-%dT%H:%M%Z"),
        "hats_release_date": now.strftime("%Y-%m-%d"),
        "hats_version": "v1.0",
    }
    base.update(properties)
    text = "#HATS catalog\n" + _properties_text(base)
    (root / "properties").write_text(text)
    (root / "hats.properties").write_text(text)  # the newer name; hats-import writes both


def write_collection_properties(root: str | os.PathLike, name: str, margin_arcsec: float) -> None:
    """Write ``collection.properties``: the main catalog in ``catalog/`` and its default margin."""
    margin = margin_directory_name(margin_arcsec)
    (Path(root) / "collection.properties").write_text("#HATS collection\n" + _properties_text({
        "obs_collection": name,
        "hats_primary_table_url": COLLECTION_CATALOG,
        "all_margins": margin,
        "default_margin": margin,
    }))


def catalog_root(path: str | os.PathLike) -> Path:
    """The directory of the main catalog: ``path`` itself, or the primary table of the HATS
    collection at ``path`` (``hats_primary_table_url`` of its ``collection.properties``)."""
    path = Path(path)
    if not (path / "properties").exists() and (path / "collection.properties").exists():
        primary = read_properties(path, "collection.properties").get("hats_primary_table_url")
        if primary:
            return path / primary
    return path
