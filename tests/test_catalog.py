import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time
from matplotlib.path import Path as MplPath

from jointcal_ap.refcat import RefcatError, convert, load_config, open_refcat
from jointcal_ap.refcat.epoch import propagate


def everything(cat) -> pa.Table:
    return pq.read_table(cat.path / "dataset", partitioning=None)


@pytest.fixture(scope="module")
def hip_all(hip_refcat):
    return everything(hip_refcat)


def test_cone_matches_brute_force_at_catalog_epoch(hip_refcat, hip_all):
    got = hip_refcat.cone(56.75, 24.12, 5.0)
    sep = SkyCoord(hip_all.column("ra").to_numpy() * u.deg, hip_all.column("dec").to_numpy() * u.deg
                   ).separation(SkyCoord(56.75 * u.deg, 24.12 * u.deg))
    expected = set(hip_all.column("id").to_numpy()[sep.deg <= 5.0])
    assert set(got["id"]) == expected and len(expected) > 100
    assert got["ra"].unit == u.deg and got["ra_error"].unit == u.mas


def test_cone_accepts_skycoord_and_quantities(hip_refcat):
    a = hip_refcat.cone(SkyCoord(56.75 * u.deg, 24.12 * u.deg), 2 * u.deg)
    b = hip_refcat.cone(56.75 * u.deg, 24.12 * u.deg, 7200 * u.arcsec)
    assert set(a["id"]) == set(b["id"]) and len(a) > 10


def test_cone_at_epoch_matches_brute_force_propagation(hip_refcat, hip_all):
    epoch = Time("2030-01-01T00:00:00", scale="tt")
    got = hip_refcat.cone(266.4, -28.9, 3.0, epoch=epoch)
    t = hip_all
    col = lambda name: t.column(name).to_numpy()  # noqa: E731
    moved = propagate(col("ra"), col("dec"), col("parallax"), col("pmra"), col("pmdec"), 0.0,
                      col("epoch"), got["epoch"][0])
    sep = SkyCoord(moved.ra * u.deg, moved.dec * u.deg).separation(SkyCoord(266.4 * u.deg, -28.9 * u.deg))
    expected = set(col("id")[sep.deg <= 3.0])
    assert set(got["id"]) == expected
    assert np.allclose(got["epoch"], 2030.0, atol=1e-3)
    assert got["propagated"].all()


def test_whole_sky_and_magnitude_cut_and_columns(hip_refcat):
    allsky = hip_refcat.cone(0, 0, 180, columns=["hp_mag"], mag_limits={"hp_mag": (None, 6.0)})
    assert set(allsky.colnames) == {"id", "ra", "dec", "hp_mag", "epoch"}
    assert 4000 < len(allsky) < 6000
    assert allsky["hp_mag"].max() <= 6.0
    with pytest.raises(RefcatError, match="no column"):
        hip_refcat.cone(0, 0, 1, columns=["g_mag"])


def test_box_including_ra_wrap(hip_refcat, hip_all):
    got = hip_refcat.box(350, 10, -5, 5)
    ra, dec = hip_all.column("ra").to_numpy(), hip_all.column("dec").to_numpy()
    inside = ((ra >= 350) | (ra <= 10)) & (dec >= -5) & (dec <= 5)
    assert set(got["id"]) == set(hip_all.column("id").to_numpy()[inside])
    assert len(got) > 200


def test_polygon_against_gnomonic_projection(hip_refcat, hip_all):
    ra_v = np.array([80.0, 95.0, 97.0, 78.0])
    dec_v = np.array([-10.0, -12.0, 5.0, 3.0])
    got = hip_refcat.polygon(ra_v, dec_v)
    # Great circles are straight lines in the gnomonic projection: an independent inside test.
    centre = SkyCoord(87.5 * u.deg, -3.5 * u.deg)
    frame = centre.skyoffset_frame()

    def project(ra, dec):
        off = SkyCoord(ra * u.deg, dec * u.deg).transform_to(frame)
        lon, lat = off.lon.rad, off.lat.rad
        return np.column_stack([np.tan(lon), np.tan(lat) / np.cos(lon)])

    poly = MplPath(project(ra_v, dec_v))
    ra, dec = hip_all.column("ra").to_numpy(), hip_all.column("dec").to_numpy()
    near = SkyCoord(ra * u.deg, dec * u.deg).separation(centre).deg < 40
    inside = np.zeros(len(ra), bool)
    inside[near] = poly.contains_points(project(ra[near], dec[near]))
    assert set(got["id"]) == set(hip_all.column("id").to_numpy()[inside])
    assert len(got) > 100
    with pytest.raises(RefcatError, match="convex"):
        hip_refcat.polygon([0, 10, 5, 10, 0], [0, 0, 5, 10, 10])


def test_healpix_pixel_query(hip_refcat, hip_all):
    import healpy as hp

    got = hip_refcat.healpix(3, 100)
    pix = hp.ang2pix(8, hip_all.column("ra").to_numpy(), hip_all.column("dec").to_numpy(),
                     nest=True, lonlat=True)
    assert set(got["id"]) == set(hip_all.column("id").to_numpy()[pix == 100])


def test_fast_star_moving_into_region_is_found(tmp_path):
    # Star 1 sits 0.1 deg outside a 0.05 deg cone at J2000 and moves 10"/yr towards it.
    path = tmp_path / "fast.csv"
    path.write_text("id,ra,dec,pmra,pmdec,plx\n1,10.0,0.15,0,-10000,100\n2,10.0,0.0,0,0,1\n3,50.0,50.0,,,\n")
    cfg = load_config({
        "catalog": {"name": "fast", "format": "csv"},
        "columns": {"id": "id", "ra": "ra", "dec": "dec", "pmra": "pmra", "pmdec": "pmdec",
                    "parallax": "plx"},
        "epoch": {"value": 2000.0, "scale": "tdb"},
        "partitioning": {"mode": "fixed", "order": 8},
    })
    convert(cfg, [path], tmp_path / "cat")
    cat = open_refcat(tmp_path / "cat")
    assert set(cat.cone(10.0, 0.0, 0.05)["id"]) == {2}
    assert set(cat.cone(10.0, 0.0, 0.05, epoch=2050.0)["id"]) == {1, 2}
    # a star without proper motion keeps its position and is flagged
    still = cat.cone(50.0, 50.0, 0.01, epoch=2050.0)
    assert list(still["id"]) == [3] and not still["propagated"][0]
    assert still["epoch"][0] == pytest.approx(2000.0)
    assert still["ra"][0] == pytest.approx(50.0)


def test_loader_never_modifies_data_and_returns_arrow(hip_refcat):
    before = hip_refcat.cone(100, 20, 3, format="arrow")
    hip_refcat.cone(100, 20, 3, epoch=2040.0, observer="earth", format="arrow")
    after = hip_refcat.cone(100, 20, 3, format="arrow")
    assert isinstance(before, pa.Table) and before.equals(after)
    assert isinstance(hip_refcat.cone(100, 20, 1), Table)


def test_errors_grow_with_time_and_correlations_stay_valid(hip_refcat):
    t0 = hip_refcat.cone(30, 40, 4)
    t1 = hip_refcat.cone(30, 40, 4, epoch=2016.0)
    assert list(t0["id"]) == list(t1["id"]) or set(t0["id"]) >= set(t1["id"]) - set(t0["id"])
    common = np.intersect1d(t0["id"], t1["id"])
    e0 = {i: e for i, e in zip(t0["id"], t0["ra_error"], strict=True)}
    e1 = {i: e for i, e in zip(t1["id"], t1["ra_error"], strict=True)}
    grew = np.array([e1[i] > e0[i] for i in common])
    assert grew.mean() > 0.95
    assert np.nanmax(np.abs(np.asarray(t1["ra_pmra_corr"]))) <= 1 + 1e-6


def test_gaia_bright_rows_are_flagged_unpropagated(gaia_refcat):
    got = gaia_refcat.cone(83.8, -5.4, 1.0, epoch=2030.0)
    assert len(got) > 0 and not got["propagated"].any()
    assert np.allclose(got["epoch"], gaia_refcat.epoch_range[0])


@pytest.mark.parametrize(("args", "match"), [
    ((0, 95, 1), "dec"), ((0, 0, -1), "radius"), (("a", 0, 1), "degrees")])
def test_bad_queries(hip_refcat, args, match):
    with pytest.raises(RefcatError, match=match):
        hip_refcat.cone(*args)
    with pytest.raises(RefcatError, match="observer needs an epoch"):
        hip_refcat.cone(0, 0, 1, observer="earth")


@pytest.mark.parametrize("ra, dec, radius, epoch", [(56.75, 24.12, 5.0, None), (266.4, -28.9, 0.7, 2030.0),
                                                    (10.0, 89.5, 2.0, 2030.0), (359.9, 0.1, 1.0, None)])
def test_healpix_range_search_returns_the_same_stars(monkeypatch, tmp_path, hip2_path, ra, dec, radius, epoch):
    """Big partitions are cut to a cone's HEALPix ranges by binary search on ``_healpix_29``: the
    same stars as reading them whole (Hipparcos in one partition, the search forced on)."""
    import dataclasses
    from pathlib import Path

    from jointcal_ap.refcat import catalog as catalog_module
    from jointcal_ap.refcat import convert, load_config
    from jointcal_ap.refcat.config import PartitionSpec

    config = load_config(Path(__file__).resolve().parents[1] / "refcats" / "hipparcos2.toml")
    config = dataclasses.replace(config, partitioning=PartitionSpec(mode="fixed", order=0))
    convert(config, [hip2_path], tmp_path / "one", overwrite=True)
    whole = open_refcat(tmp_path / "one")
    expected = set(whole.cone(ra, dec, radius, epoch=epoch, format="arrow").column("id").to_numpy())
    monkeypatch.setattr(catalog_module, "_RANGE_SEARCH_MIN_ROWS", 0)
    cut = open_refcat(tmp_path / "one")
    got = cut.cone(ra, dec, radius, epoch=epoch, format="arrow")
    assert set(got.column("id").to_numpy()) == expected and len(expected) > 5
    # and the cut really happened: far fewer rows than the partitions hold
    ranges = catalog_module._pixel_ranges(catalog_module._unit_vector(np.array(ra), np.array(dec)), radius)
    kept = sum(len(catalog_module._rows_in_ranges(cut._read_partition(p, ["id", "ra", "dec"])[2], *ranges))
               for p in cut.partitions)
    assert len(expected) <= kept < 0.05 * int(cut.properties["hats_nrows"])


def test_nested_query_disc_covers_healpy_inclusive():
    """Our NumPy query_disc (no healpy import in a fit) returns a superset of healpy's inclusive
    disc, with few extra pixels, and the right pixel centres."""
    import healpy as hp

    from jointcal_ap.refcat.healpix import max_pixel_radius, pixel_centres, query_disc

    rng = np.random.default_rng(3)
    for order in (0, 2, 6, 10, 16):
        pix = rng.integers(0, 12 * 4**order, 500)
        np.testing.assert_allclose(pixel_centres(order, pix), np.array(hp.pix2vec(1 << order, pix, nest=True)).T,
                                   atol=1e-14)
        assert max_pixel_radius(order) >= hp.max_pixrad(1 << order)
    for order in (3, 6, 8):
        for _ in range(20):
            centre = rng.normal(size=3)
            centre /= np.linalg.norm(centre)
            radius = rng.uniform(1e-4, 0.3)
            ours = query_disc(order, centre, radius)
            theirs = hp.query_disc(1 << order, centre, radius, inclusive=True, nest=True)
            assert set(theirs.tolist()) <= set(ours.tolist())
            assert len(ours) <= 2 * len(theirs) + 16


def test_arrow_numpy_without_pandas():
    from jointcal_ap.refcat._arrow import from_numpy, to_numpy

    for values in (np.arange(7, dtype=np.int64), np.linspace(0, 1, 5), np.arange(4, dtype=np.int16),
                   np.array([True, False, True, True])):
        arrow = from_numpy(values)
        assert arrow.to_pylist() == values.tolist()
        np.testing.assert_array_equal(to_numpy(arrow.slice(1)), values[1:])
    chunked = pa.chunked_array([pa.array([1.5, None]), pa.array([2.5])])
    np.testing.assert_array_equal(to_numpy(chunked), [1.5, np.nan, 2.5])
    assert to_numpy(pa.array(["a", "b"])).tolist() == ["a", "b"]  # strings: pyarrow's own path
    assert from_numpy(np.arange(3, dtype=np.int32), pa.int64()).type == pa.int64()
