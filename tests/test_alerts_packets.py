"""Alert packets, cutouts, serialization and the archive (no servers)."""

from __future__ import annotations

import io
import pickle

import fastavro
import numpy as np
import pyarrow as pa
import pytest
from astropy.wcs import WCS
from lsst.alert.packet.schema import Schema

from jointcal_ap.alerts.archive import AlertArchive
from jointcal_ap.alerts.cutouts import make_cutout, make_cutouts, read_cutout
from jointcal_ap.alerts.packets import AlertError, alerts_for_unit, build_alert_batch, build_alerts
from jointcal_ap.alerts.serialize import AlertSerializer, SerializationError, frame, unframe
from jointcal_ap.alerts.simulate import simulate_unit
from jointcal_ap.schemas import alert_schema


@pytest.fixture(scope="module")
def unit():
    return simulate_unit(40, n_history=4, n_forced=3, seed=7, null_fraction=0.3)


@pytest.fixture(scope="module")
def lsst_schema():
    """lsst-alert-packet's own Schema object for the same version."""
    return Schema(alert_schema().definition)


def _wcs(nx=80, ny=70):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.1]
    wcs.wcs.crpix = [nx / 2, ny / 2]
    wcs.wcs.cd = [[-5.5e-5, 1.0e-6], [1.2e-6, 5.5e-5]]
    return wcs


def test_every_alert_validates_with_lsst_alert_packet(unit, lsst_schema):
    ids = unit["dia_sources"].column("diaSourceId").to_pylist()
    ss = {"diaSourceId": [ids[0]], "ssObjectId": [99], "eclLambda": [1.0], "eclBeta": [2.0],
          "galLon": [3.0], "galLat": [4.0]}
    cutouts = {ids[1]: {"cutoutDifference": b"SIMPLE", "cutoutScience": None}}
    alerts = build_alerts(**unit, ss_sources=pa.table(ss), cutouts=cutouts,
                          observation_reason="wfd", target_name="field 1")
    assert len(alerts) == 40
    assert all(lsst_schema.validate(a) for a in alerts)
    assert alerts[0]["ssSource"]["ssObjectId"] == 99 and alerts[1]["ssSource"] is None
    assert alerts[1]["cutoutDifference"] == b"SIMPLE" and alerts[1]["cutoutScience"] is None
    # lsst-alert-packet's own serialization round-trips our alerts
    assert lsst_schema.deserialize(lsst_schema.serialize(alerts[0]))["diaSourceId"] == ids[0]


def test_history_window_and_latest_object_version(unit):
    src = unit["dia_sources"]
    t = src.column("midpointMjdTai")[0].as_py()
    obj = src.column("diaObjectId")[0].as_py()
    prv = unit["prv_dia_sources"]
    # an old row of the same object (outside 12 months) and a later one: both excluded
    extra = prv.slice(0, 2).to_pylist()
    extra[0].update(diaSourceId=1, midpointMjdTai=t - 400.0, diaObjectId=obj)
    extra[1].update(diaSourceId=2, midpointMjdTai=t + 1.0, diaObjectId=obj)
    history = pa.concat_tables([prv, pa.Table.from_pylist(extra, schema=prv.schema)])
    objects = unit["dia_objects"]
    newer = objects.slice(0, 1).to_pylist()
    newer[0].update(validityStartMjdTai=t + 0.1, nDiaSources=123456)
    objects = pa.concat_tables([objects, pa.Table.from_pylist(newer, schema=objects.schema)])
    alerts = build_alerts(src, objects, history, None)
    times = [p["midpointMjdTai"] for p in alerts[0]["prvDiaSources"]]
    assert len(times) == 4 and times == sorted(times) and all(t - 365 <= x < t for x in times)
    assert {p["diaObjectId"] for p in alerts[0]["prvDiaSources"]} == {obj}
    assert alerts[0]["diaObject"]["nDiaSources"] == 123456
    assert alerts[0]["prvDiaForcedSources"] is None  # no forced history given


def test_bad_input_names_the_column_and_id(unit):
    src = unit["dia_sources"].drop_columns(["ra"])
    with pytest.raises(AlertError, match="dia_sources: column 'ra' is required"):
        build_alerts(src)
    bad = unit["dia_sources"].to_pylist()
    bad[3]["dec"] = None
    with pytest.raises(AlertError, match=f"'dec'.*diaSourceId={bad[3]['diaSourceId']}"):
        build_alerts(pa.Table.from_pylist(bad))
    dup = pa.concat_tables([unit["dia_sources"].slice(0, 1)] * 2)
    with pytest.raises(AlertError, match="appears more than once"):
        build_alerts(dup)
    err = pickle.loads(pickle.dumps(AlertError("x")))
    assert str(err) == "x"


def test_column_wise_encoding_is_byte_identical_to_fastavro(unit, lsst_schema):
    ids = unit["dia_sources"].column("diaSourceId").to_pylist()
    rng = np.random.default_rng(3)
    cutouts = {i: {"cutoutDifference": rng.bytes(500), "cutoutTemplate": rng.bytes(300)}
               for i in ids[::3]}
    batch = build_alert_batch(**unit, cutouts=cutouts, target_name=["t"] * 39 + [None])
    serializer = AlertSerializer(schema_id=42)
    fast = serializer.encode_batch(batch)
    records = batch.records()
    assert fast == [serializer.encode(r) for r in records]
    assert unframe(fast[5])[0] == 42
    assert serializer.decode(fast[5]) == records[5]
    # Rubin's own deserializer reads our bodies
    assert lsst_schema.deserialize(unframe(fast[7])[1]) == records[7]


def test_framing_errors():
    with pytest.raises(SerializationError, match="magic byte 0"):
        unframe(b"\x01\x00\x00\x00\x01abc")
    with pytest.raises(SerializationError, match="schema id 3"):
        AlertSerializer(4).decode(frame(3, b""))
    with pytest.raises(SerializationError, match="diaSourceId=5"):
        AlertSerializer(1).encode({"diaSourceId": 5})


def _star(shape, x0, y0, sigma=1.6, flux=5000.0):
    """A Gaussian star at 1-based FITS (x0, y0)."""
    y, x = np.mgrid[1:shape[0] + 1, 1:shape[1] + 1].astype(float)
    return flux / (2 * np.pi * sigma**2) * np.exp(-((x - x0)**2 + (y - y0)**2) / (2 * sigma**2))


@pytest.mark.parametrize(("x0", "y0"), [(33.27, 41.81), (40.5, 30.5), (3.2, 66.9)])
def test_cutouts_are_centred_on_the_source(x0, y0):
    shape = (70, 80)
    wcs = _wcs(shape[1], shape[0])
    image = _star(shape, x0, y0).astype(np.float32)
    ra, dec = (float(v) for v in wcs.all_pix2world(x0, y0, 1))
    data = make_cutout(image, np.full(shape, 4.0), np.zeros(shape, np.int32), wcs, ra, dec)
    hdul = read_cutout(data)
    assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
    img = hdul["IMAGE"].data
    assert img.shape == (30, 30)
    cut_wcs = WCS(hdul["IMAGE"].header)
    cx, cy = (float(v) for v in cut_wcs.all_world2pix(ra, dec, 1))
    # the cutout's WCS puts the source where its pixels are, within 0.1 px
    assert abs(cx - hdul[0].header["SRC_X"]) < 0.1 and abs(cy - hdul[0].header["SRC_Y"]) < 0.1
    # ... in the central pixel (FITS 16, 16)
    assert abs(cx - 16) <= 0.5 and abs(cy - 16) <= 0.5
    good = np.isfinite(img)
    if good.all():  # the star's light centroid is at the WCS position within 0.1 px
        y, x = np.mgrid[1:31, 1:31]
        assert abs((img * x).sum() / img.sum() - cx) < 0.1
        assert abs((img * y).sum() / img.sum() - cy) < 0.1
    else:  # at the edge: missing pixels are NaN and flagged NO_DATA
        assert (hdul["MASK"].data[~good] & (1 << hdul["MASK"].header["MP_NO_DATA"])).all()
    assert np.all(hdul["VARIANCE"].data[good] == 4.0)


def test_make_cutouts_from_exposures_and_alerts_carry_them(unit):
    class Image:
        def __init__(self, value):
            self.image = np.full((70, 80), value, np.float32)
            self.variance = np.ones((70, 80), np.float32)
            self.mask = np.zeros((70, 80), np.int32)
            self.wcs = _wcs()

    src = unit["dia_sources"].slice(0, 2)
    ids = src.column("diaSourceId").to_pylist()
    cutouts = make_cutouts(ids, [150.1, 150.1005], [2.1, 2.1002], difference=Image(1.0),
                           science=Image(2.0), template=Image(3.0))
    alert = build_alerts(src, cutouts=cutouts)[1]
    for name, value in (("cutoutDifference", 1.0), ("cutoutScience", 2.0),
                        ("cutoutTemplate", 3.0)):
        hdul = read_cutout(alert[name])
        assert hdul[0].header["DIASRCID"] == ids[1]
        assert np.all(hdul["IMAGE"].data == value)


class _SqliteApdb:
    """A small in-test implementation of the Apdb protocol's reads, over real SQLite."""

    schema_version = "test"

    def __init__(self, tables):
        import sqlite3

        self.db = sqlite3.connect(":memory:")
        self.tables = {}
        for name, table in tables.items():
            cols = table.column_names
            self.db.execute(f"CREATE TABLE {name} ({', '.join(cols)})")
            self.db.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * len(cols))})",
                                [tuple(r.values()) for r in table.to_pylist()])
            self.tables[name] = table.schema

    def _read(self, name, where, params):
        schema = self.tables[name]
        rows = self.db.execute(f"SELECT * FROM {name} WHERE {where}", params).fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema.names]
        return pa.table({f.name: pa.array(list(c)).cast(f.type)  # SQLite booleans are ints
                         for f, c in zip(schema, columns, strict=True)})

    def get_dia_objects(self, region):
        return self._read("DiaObject", "1", ())

    def _history(self, name, object_ids, start, end):
        ids = [int(i) for i in object_ids]
        return self._read(name, f"diaObjectId IN ({','.join('?' * len(ids))}) AND "
                                f"midpointMjdTai >= ? AND midpointMjdTai < ?", (*ids, start, end))

    def get_dia_sources(self, region, object_ids, start, end):
        return self._history("DiaSource", object_ids, start, end)

    def get_dia_forced_sources(self, region, object_ids, start, end):
        return self._history("DiaForcedSource", object_ids, start, end)


def test_alerts_for_unit_reads_history_through_the_apdb_protocol(unit):
    apdb = _SqliteApdb({"DiaObject": unit["dia_objects"], "DiaSource": unit["prv_dia_sources"],
                        "DiaForcedSource": unit["prv_dia_forced_sources"]})
    got = alerts_for_unit(apdb, unit["dia_sources"])
    want = build_alerts(**unit)
    assert got == want


def test_archive_round_trip_and_standard_reader(unit, tmp_path):
    batch = build_alert_batch(**unit)
    records = batch.records()
    with AlertArchive(tmp_path / "archive") as archive:
        path = archive.write_batch(batch)
        assert path.name == "1000_1.avro" and path.parent.name == "visit=1000"
        with open(path, "rb") as f:
            assert list(fastavro.reader(f)) == records
        first = records[0]
        assert archive.get(first["diaSourceId"]) == first
        assert archive.by_object(first["diaSource"]["diaObjectId"]) == [first]
        assert archive.get(12345) is None
        assert archive.count("unsent") == 40
        archive.mark_sent([first["diaSourceId"]])
        archive.mark_failed([(records[1]["diaSourceId"], "too big")])
        assert {e.status for e in archive.unsent()} == {"unsent", "failed"}
        assert len(archive.unsent()) == 39
        # rewriting the unit replaces it (a re-run), never duplicates
        archive.write_alerts(records)
        assert archive.count() == 40
        with open(path, "rb") as f:
            assert next(iter(fastavro.reader(io.BytesIO(f.read())))) == first


def test_alert_packet_dataset_type_round_trips(tmp_path):
    from lsst.alert.packet.schema import Schema

    from jointcal_ap.alerts.packets import build_alerts
    from jointcal_ap.alerts.simulate import simulate_unit
    from jointcal_ap.stages.datasets import ALERT_PACKET

    unit = simulate_unit(5, n_history=2, seed=3)
    alerts = build_alerts(unit["dia_sources"], unit["dia_objects"], unit["prv_dia_sources"],
                          unit["prv_dia_forced_sources"], None, None)
    ALERT_PACKET.write(alerts, tmp_path / "alerts.avro")
    back = ALERT_PACKET.read(tmp_path / "alerts.avro")
    assert [a["diaSourceId"] for a in back] == [a["diaSourceId"] for a in alerts]
    schema = Schema.from_uri()
    for alert in back:
        schema.validate(alert)
