"""convert --margin: a HATS collection with a margin catalog, which LSDB uses in crossmatches."""

from __future__ import annotations

import warnings

import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree

from jointcal_ap.cli import main
from jointcal_ap.refcat import ConversionError, convert, load_config, open_refcat
from jointcal_ap.refcat.layout import Partition, read_partition_info
from jointcal_ap.refcat.margin import margin_order, margin_rows, on_parent_edge

MARGIN = 60.0  # arcsec
RADIUS = 30.0  # crossmatch radius, arcsec

pytestmark = [
    # nested-pandas (an lsdb dependency) uses a keyword pandas 3.1 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:The inplace keyword in NestedFrame"),
    # lsdb.from_dataframe sets a pandas option that pandas 3.1 deprecates, when it is imported.
    pytest.mark.filterwarnings("ignore:The 'mode.chained_assignment' option is deprecated"),
]


def _unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """30,000 stars (a third in a clump, so that the adaptive partitions mix orders 1-4),
    converted with a 60 arcsec margin."""
    root = tmp_path_factory.mktemp("margin")
    rng = np.random.default_rng(3)
    n = 30_000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ra[: n // 3], dec[: n // 3] = rng.normal(45, 3, n // 3) % 360, rng.normal(20, 3, n // 3)
    pq.write_table(pa.table({"id": np.arange(n), "ra": ra, "dec": dec}), root / "in.parquet")
    cfg = load_config({"catalog": {"name": "m", "format": "parquet"},
                       "columns": {"id": "id", "ra": "ra", "dec": "dec"},
                       "epoch": {"value": 2016.0, "scale": "tcb"},
                       "partitioning": {"max_rows": 2000, "highest_order": 6}})
    report = convert(cfg, [root / "in.parquet"], root / "cat", margin_arcsec=MARGIN, workers=2,
                     chunk_bytes=200_000)
    return root / "cat", ra, dec, report


def test_collection_layout_is_valid_hats(stars):
    import hats
    from hats.io.validation import is_valid_catalog

    out, ra, _dec, report = stars
    assert report.margin_rows > 0 and report.rows_written == len(ra)
    for path in (out, out / "catalog", out / "margin_60arcs"):
        assert is_valid_catalog(path, strict=True), path
    collection = hats.read_hats(out)
    assert collection.default_margin == "margin_60arcs"
    assert collection.main_catalog.catalog_info.total_rows == len(ra)
    margin = hats.read_hats(out / "margin_60arcs")
    assert margin.catalog_info.margin_threshold == MARGIN
    assert len({p.order for p in read_partition_info(out / "catalog")}) > 2
    # open_refcat opens the collection's catalog: the same stars as the catalog directory
    assert open_refcat(out).path == out / "catalog"
    a = open_refcat(out).cone(45, 20, 2.0, format="arrow").column("id").to_pylist()
    b = open_refcat(out / "catalog").cone(45, 20, 2.0, format="arrow").column("id").to_pylist()
    assert sorted(a) == sorted(b) and len(a) > 100


def test_margin_holds_every_row_within_the_threshold(stars):
    """Brute force: for sample points on each partition's border, every star within the threshold
    that lives in another partition is in this partition's margin."""
    out, ra, dec, _ = stars
    parts = read_partition_info(out / "catalog")
    tree = cKDTree(_unit(ra, dec))
    margin = pq.read_table(out / "margin_60arcs" / "dataset", partitioning=None).to_pandas()
    checked = 0
    for part in parts:
        path = out / "margin_60arcs" / "dataset" / f"Norder={part.order}" / f"Dir={part.directory}" / \
            f"Npix={part.pixel}.parquet"
        in_margin = set(pq.read_table(path).column("id").to_pylist()) if path.exists() else set()
        edge = hp.boundaries(1 << part.order, part.pixel, step=200, nest=True).T
        near = set()
        for hits in tree.query_ball_point(edge, 2 * np.sin(np.radians(MARGIN / 3600) / 2)):
            near.update(hits)
        near = np.array(sorted(near), dtype=int)
        if not len(near):
            continue
        own = hp.ang2pix(1 << part.order, ra[near], dec[near], nest=True, lonlat=True) == part.pixel
        outside = set(near[~own].tolist())
        assert outside <= in_margin, (part, sorted(outside - in_margin)[:5])
        checked += len(outside)
    assert checked > 50
    assert len(margin) < 0.2 * len(ra)  # a margin, not a copy


def test_lsdb_crossmatch_uses_the_margin_and_finds_the_brute_force_pairs(stars):
    import dask
    import lsdb

    out, ra, dec, _ = stars
    # left points: the stars of the margin (near partition borders), each moved by up to
    # ~25 arcsec, many of them across a border
    margin_ids = pq.read_table(out / "margin_60arcs" / "dataset", columns=["id"], partitioning=None)
    ids = np.unique(margin_ids.column("id").to_numpy())
    rng = np.random.default_rng(8)
    step = rng.normal(0, 12 / 3600, (len(ids), 2))
    lra = (ra[ids] + step[:, 0] / np.cos(np.radians(dec[ids]))) % 360
    ldec = np.clip(dec[ids] + step[:, 1], -90, 90)
    with dask.config.set(scheduler="synchronous"):  # Dask's threads only slow these small tasks
        left = lsdb.from_dataframe(pd.DataFrame({"lid": np.arange(len(ids)), "ra": lra, "dec": ldec}),
                                   ra_column="ra", dec_column="dec", margin_threshold=None)
    dist, nearest = cKDTree(_unit(ra, dec)).query(_unit(lra, ldec))
    sep = np.degrees(2 * np.arcsin(dist / 2)) * 3600
    expected = {(int(i), int(j)) for i, (j, s) in enumerate(zip(nearest, sep, strict=True)) if s <= RADIUS}

    def crossmatch(right):
        with dask.config.set(scheduler="synchronous"):
            xm = left.crossmatch(right, radius_arcsec=RADIUS, n_neighbors=1, suffixes=("_l", "_r"),
                                 suffix_method="all_columns").compute()
        return set(zip(xm["lid_l"].astype(int), xm["id_r"].astype(int), strict=True))

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*margin cache.*")
        with_margin = crossmatch(lsdb.open_catalog(out))
    assert with_margin == expected and len(expected) > 100
    # the catalog alone (no margin): LSDB warns, and misses pairs across borders
    with pytest.warns(RuntimeWarning, match="does not have a margin cache"):
        without = crossmatch(lsdb.open_catalog(out / "catalog"))
    assert len(expected - without) > 0
    # cone searches on the collection still agree with ours
    with dask.config.set(scheduler="synchronous"):
        theirs = lsdb.open_catalog(out).cone_search(ra=45, dec=20, radius_arcsec=3600).compute()
    ours = open_refcat(out).cone(45, 20, 1.0, format="arrow")
    assert set(theirs["id"]) == set(ours.column("id").to_pylist())


def test_margin_cli_and_too_wide_margin(tmp_path, stars, capsys):
    out = stars[0]
    assert main(["refcat", "info", str(out)]) == 0
    assert "margin_60arcs (HATS margin catalog" in capsys.readouterr().out
    source = tmp_path / "s.parquet"
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"id": np.arange(500), "ra": rng.uniform(0, 1, 500),
                             "dec": rng.uniform(0, 1, 500)}), source)
    cfg = {"catalog": {"name": "s", "format": "parquet"}, "columns": {"id": "id", "ra": "ra", "dec": "dec"},
           "epoch": {"value": 2016.0, "scale": "tcb"}, "partitioning": {"mode": "fixed", "order": 8}}
    with pytest.raises(ConversionError, match=r"a margin of 600 arcsec is too wide for partitions of order 8"):
        convert(load_config(cfg), [source], tmp_path / "o", margin_arcsec=600)
    assert main(["refcat", "convert", "x.toml", str(source), "--out", str(tmp_path / "o"), "--margin", "-1"]) == 2


def test_margin_rows_and_edge_pixels_against_brute_force():
    for parent, order in [(0, 3), (2, 5)]:
        pixels = np.arange(12 * 4**order)
        neighbours = hp.get_all_neighbours(1 << order, pixels, nest=True)
        brute = np.any((neighbours >= 0) & ((neighbours >> (2 * (order - parent)))
                                            != pixels >> (2 * (order - parent))), axis=0)
        np.testing.assert_array_equal(on_parent_edge(pixels, parent, order), brute)
    assert margin_order(10, 3) == 13 and margin_order(60, 6) == 11
    # the 48 order-1 partitions: the rows of pixel 0 that its neighbours' margins take
    m = 6
    parts = sorted((Partition(1, p) for p in range(48)), key=lambda p: p.index_range[0])
    starts = np.array([p.index_range[0] for p in parts])
    stops = np.array([p.index_range[1] for p in parts])
    hp29 = np.sort(np.arange(0, 4**28, 4**20, dtype=np.int64))  # spread over pixel 0 of order 1
    rows = margin_rows(hp29, Partition(1, 0), starts, stops, m)
    assert rows and 0 not in rows
    pix_m = hp29 >> (2 * (29 - m))
    for dest, index in rows.items():
        assert np.all(on_parent_edge(pix_m[index], 1, m))
        neighbours = hp.get_all_neighbours(1 << m, pix_m[index], nest=True)
        assert np.all(np.any((neighbours >> (2 * (m - 1))) == parts[dest].pixel, axis=0))
