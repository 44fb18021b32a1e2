"""The APDB's tables are Rubin's apdb.yaml, on SQLite and on a real PostgreSQL; opening a
database that differs is an error naming the column; Rubin's dax_apdb reads what we write."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from jointcal_ap.apdb import ApdbConnectionError, ApdbSchemaError, open_apdb
from jointcal_ap.apdb.htm import htm_index
from jointcal_ap.apdb.layout import RUBIN_TABLES
from jointcal_ap.apdb.pixels import healpix29, in_region, region_ranges
from jointcal_ap.schemas import apdb_schema
from jointcal_ap.stages.interfaces import SkyCircle, SkyPolygon

_FELIS_SQL = {"double": "DOUBLE", "float": "REAL", "long": "BIGINT", "int": "INTEGER",
              "short": "SMALLINT", "byte": "SMALLINT", "boolean": "BOOLEAN", "char": "CHAR",
              "string": "VARCHAR", "text": "TEXT", "timestamp": "TIMESTAMP"}


def _engine(url):
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def test_tables_follow_apdb_yaml(apdb_url):
    apdb = open_apdb(apdb_url, create=True)
    apdb.close()
    raw = yaml.safe_load(resources.files("lsst.sdm.schemas").joinpath("apdb.yaml").read_text())
    engine = _engine(apdb_url)
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    for table in raw["tables"]:
        name = table["name"]
        if name not in RUBIN_TABLES:
            assert name == "DiaObjectLast"
            continue
        assert name in tables
        have = {c["name"]: c for c in inspector.get_columns(name)}
        for col in table["columns"]:
            got = have[col["name"]]
            assert str(got["type"]).upper().startswith(_FELIS_SQL[col["datatype"]]), (name, col)
            if col.get("length") and col["datatype"] in ("char", "string"):
                assert got["type"].length == col["length"]
            pk = table.get("primaryKey") or []
            pk = [pk] if isinstance(pk, str) else pk
            if f"#{name}.{col['name']}" not in pk:
                assert got["nullable"] == col.get("nullable", True), (name, col["name"])
        pk = table.get("primaryKey") or []
        pk = [pk] if isinstance(pk, str) else pk
        assert inspector.get_pk_constraint(name)["constrained_columns"] == \
            [p.rsplit(".", 1)[-1] for p in pk]
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(name)}
        for ix in table.get("indexes", []) or []:
            assert indexes[ix["name"]] == [c.rsplit(".", 1)[-1] for c in ix["columns"]]
    with engine.connect() as conn:
        meta = dict(conn.execute(sa.text("SELECT name, value FROM metadata")).fetchall())
    assert meta["version:schema"] == str(raw["version"]) == apdb_schema().version
    engine.dispose()


def test_schema_mismatch_names_the_column(apdb_url):
    open_apdb(apdb_url, create=True).close()
    engine = _engine(apdb_url)
    with engine.begin() as conn:
        conn.execute(sa.text('ALTER TABLE "DiaSource" DROP COLUMN "psfFlux"'))
    engine.dispose()
    with pytest.raises(ApdbSchemaError, match=r"DiaSource\.psfFlux is missing"):
        open_apdb(apdb_url)


def test_schema_version_and_foreign_database_are_refused(apdb_url):
    engine = _engine(apdb_url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE "DiaSource" (x INTEGER)'))
    with pytest.raises(ApdbSchemaError, match="not an APDB"):
        open_apdb(apdb_url)
    with pytest.raises(ApdbSchemaError, match=r"\['DiaSource'\] exist"):
        open_apdb(apdb_url, create=True)
    with engine.begin() as conn:
        conn.execute(sa.text('DROP TABLE "DiaSource"'))
    open_apdb(apdb_url, create=True).close()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE metadata SET value = '9.0.0' WHERE name = 'version:schema'"))
    engine.dispose()
    with pytest.raises(ApdbSchemaError, match=r"'version:schema' is '9\.0\.0'"):
        open_apdb(apdb_url)


def test_unreachable_and_unsupported_urls(tmp_path):
    with pytest.raises(ApdbConnectionError, match="no such SQLite file"):
        open_apdb(f"sqlite:///{tmp_path}/missing.db")
    with pytest.raises(ApdbConnectionError, match="cannot reach the APDB at postgresql://"):
        open_apdb("postgresql://nobody@127.0.0.1:1/apdb", connect_timeout=2)
    with pytest.raises(ApdbConnectionError, match="unsupported APDB URL"):
        open_apdb("mysql://host/db")
    with pytest.raises(ApdbConnectionError, match="in-memory"):
        open_apdb("sqlite://")


def test_exceptions_survive_pickling():
    import pickle

    from jointcal_ap.apdb import ApdbError, ApdbInputError

    for exc in (ApdbSchemaError("DiaSource.psfFlux is missing"), ApdbError("x"),
                ApdbInputError("DiaSource 7: NaN ra"), ApdbConnectionError("no server")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)


def test_htm_index_matches_lsst_sphgeom():
    import lsst.sphgeom as sg

    rng = np.random.default_rng(5)
    n = 20000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    ra[:6], dec[:6] = [0, 90, 180, 270, 0, 0], [0, 0, 0, 0, 90, -90]
    for level in (0, 7, 20):
        pix = sg.HtmPixelization(level)
        want = [pix.index(sg.UnitVector3d(sg.LonLat.fromDegrees(a, d))) for a, d in zip(ra, dec, strict=False)]
        assert np.array_equal(htm_index(ra, dec, level), want)
    with pytest.raises(ValueError, match="position 1"):
        htm_index(np.array([1.0, np.nan]), np.array([0.0, 0.0]))


def test_region_covering_holds_every_point_inside():
    rng = np.random.default_rng(2)
    ra, dec = rng.uniform(9, 11, 20000), rng.uniform(-31, -29, 20000)
    pix = healpix29(ra, dec)
    for region in (SkyCircle(10.0, -30.0, 0.3),
                   SkyPolygon(((9.8, -30.2), (10.3, -30.2), (10.3, -29.9), (9.8, -29.9)))):
        inside = in_region(region, ra, dec)
        assert 100 < inside.sum() < 20000
        ranges = region_ranges(region)
        covered = np.zeros(len(pix), bool)
        for lo, hi in ranges:
            covered |= (pix >= lo) & (pix < hi)
        assert covered[inside].all()
        assert covered.sum() < 3 * inside.sum()


def _store_some(apdb, n=30, visit=1, seed=0, offset=0.0):
    from jointcal_ap.apdb.ap import associate_unit
    from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
    from jointcal_ap.stages.interfaces import IdempotencyKey

    sky = synthetic_sky(n, centre=(150.0, 2.0), size_deg=0.3, seed=seed, min_separation_arcsec=5)
    units = synthetic_units(sky, [(150.0, 2.0)], n_visits=3, seed=seed + 1, first_visit=visit)

    def phot(positions):
        return {"psfFlux": np.full(positions.num_rows, 10.0),
                "psfFluxErr": np.full(positions.num_rows, 1.0)}

    for unit in units:
        associate_unit(apdb, unit.sources, key=IdempotencyKey.make("associate", unit.data_id, "v1"),
                       region=unit.region, forced_photometry=phot)
    return units


def test_dax_apdb_reads_what_we_write(apdb_url):
    """Rubin's own client opens our database and finds the same rows through its pixelId
    (HTM) index as we do through ours."""
    import astropy.time
    import lsst.sphgeom as sg
    from lsst.dax.apdb.sql import ApdbSql, ApdbSqlConfig

    apdb = open_apdb(apdb_url, create=True)
    _store_some(apdb, n=60)
    region = SkyCircle(150.0, 2.0, 0.12)
    ours = apdb.get_dia_objects(region)
    ids = ours.column("diaObjectId").to_numpy()
    assert len(ids) > 10
    dax_url = apdb_url.replace("postgresql://", "postgresql+psycopg://", 1)
    dax = ApdbSql(ApdbSqlConfig(db_url=dax_url))
    circle = sg.Circle(sg.UnitVector3d(sg.LonLat.fromDegrees(150.0, 2.0)),
                       sg.Angle.fromDegrees(0.12))
    theirs = dax.getDiaObjects(circle)
    assert set(theirs["diaObjectId"]) >= set(ids.tolist())   # dax returns its HTM envelope
    near = theirs[[in_region(region, np.array([r]), np.array([d]))[0]
                   for r, d in zip(theirs["ra"], theirs["dec"], strict=False)]]
    assert sorted(near["diaObjectId"]) == sorted(ids.tolist())
    mine = ours.to_pandas().set_index("diaObjectId").sort_index()
    dax_rows = near.set_index("diaObjectId").sort_index()
    for col in ("ra", "dec", "nDiaSources", "g_psfFluxMean", "r_psfFluxNdata", "validityStartMjdTai"):
        np.testing.assert_array_equal(dax_rows[col].to_numpy(float), mine[col].to_numpy(float))
    later = astropy.time.Time(60010.0, format="mjd", scale="tai")
    dax_src = dax.getDiaSources(circle, ids.tolist(), later)
    our_src = apdb.get_dia_sources(None, ids, 60010.0 - 360, 60010.0)
    assert sorted(dax_src["diaSourceId"]) == sorted(our_src.column("diaSourceId").to_pylist())
    dax_forced = dax.getDiaForcedSources(circle, ids.tolist(), later)
    our_forced = apdb.get_dia_forced_sources(None, ids, 60010.0 - 360, 60010.0)
    assert len(dax_forced) == our_forced.num_rows > 0
    assert sorted(dax_forced["diaForcedSourceId"]) == \
        sorted(our_forced.column("diaForcedSourceId").to_pylist())
    apdb.close()
    dax._engine.dispose()  # ApdbSql has no close(); its pooled connections must not leak
