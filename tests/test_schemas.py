"""Rubin's schemas come from Rubin's packages, and tables are checked against them."""

from importlib import resources

import numpy as np
import pyarrow as pa
import pytest
import yaml

from jointcal_ap.schemas import SchemaError, alert_schema, apdb_schema


def test_apdb_tables_are_read_from_lsst_sdm_schemas():
    raw = yaml.safe_load(resources.files("lsst.sdm.schemas").joinpath("apdb.yaml").read_text())
    schema = apdb_schema()
    assert schema.version == str(raw["version"])
    for table in raw["tables"]:
        assert schema[table["name"]].names == [c["name"] for c in table["columns"]]
    source = schema["DiaSource"]
    assert source.primary_key == ("diaSourceId",)
    assert source.column("psfFlux").unit == "nJy"
    assert source.column("ra").arrow_type == pa.float64()
    assert source.column("detector").arrow_type == pa.int16()
    assert not source.column("diaSourceId").nullable
    assert ("IDX_DiaSource_visitDetector", ("visit", "detector")) in source.indexes
    with pytest.raises(SchemaError, match="no table 'Nope'"):
        schema["Nope"]


def _required(table):
    return {c.name: np.ones(2, c.numpy_dtype) if c.numpy_dtype.kind != "O" else ["r", "g"]
            for c in table if not c.nullable}


def test_conform_fills_nullable_columns_and_checks_types():
    table = apdb_schema()["DiaForcedSource"]
    data = _required(table)
    data["psfFlux"] = [1.5, np.nan]
    out = table.conform(data)
    assert out.schema.names == table.names
    assert out["psfFlux"].type == pa.float32()
    assert out["band"].null_count == 2
    assert out.schema.field("psfFlux").metadata[b"unit"] == b"nJy"
    with pytest.raises(SchemaError, match=r"DiaForcedSource\.visit is required"):
        table.conform({k: v for k, v in data.items() if k != "visit"})
    with pytest.raises(SchemaError, match=r"has no column\(s\) \['bogus'\]"):
        table.conform({**data, "bogus": [1, 2]})
    with pytest.raises(SchemaError, match=r"DiaForcedSource\.ra: .*NULL"):
        table.conform({**data, "ra": [1.0, np.nan]})
    with pytest.raises(SchemaError, match=r"DiaForcedSource\.psfFlux: expected float"):
        table.conform({**data, "psfFlux": np.array([True, False])})
    with pytest.raises(SchemaError, match=r"diaObjectId"):
        table.conform({**data, "diaObjectId": [1.5, 2.0]})


def test_alert_schema_is_lsst_alert_packets_latest():
    from lsst.alert.packet.schema import Schema, get_latest_schema_version

    major, minor = get_latest_schema_version()
    schema = alert_schema()
    assert schema.version == f"{major}.{minor}"
    assert schema.name == f"lsst.v{major}_{minor}.alert"
    theirs = Schema.from_uri()
    assert theirs.definition == schema.definition
    names = [f["name"] for f in schema.record_fields("diaSource")]
    assert names[:3] == ["diaSourceId", "visit", "detector"]
    assert set(names) <= set(apdb_schema()["DiaSource"].names)
    with pytest.raises(SchemaError, match=r"no alert schema 1\.0"):
        alert_schema("1.0")
