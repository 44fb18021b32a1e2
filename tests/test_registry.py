"""Our schema registry, exercised with confluent-kafka's own client, serializer and
deserializer, and its compatibility rules."""

from __future__ import annotations

import json

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from jointcal_ap.alerts.compat import check_compatibility, resolution_errors
from jointcal_ap.alerts.packets import build_alerts
from jointcal_ap.alerts.registry import RegistryServer
from jointcal_ap.alerts.simulate import simulate_unit
from jointcal_ap.schemas import alert_schema


def record(*fields):
    return {"type": "record", "name": "thing", "namespace": "test", "fields": list(fields)}


A = {"name": "a", "type": "long"}
B_DEFAULT = {"name": "b", "type": ["null", "string"], "default": None}
B_REQUIRED = {"name": "b", "type": "string"}


@pytest.fixture()
def client(schema_registry):
    with SchemaRegistryClient({"url": schema_registry.url}) as c:
        yield c


def avro(schema):
    return Schema(json.dumps(schema), "AVRO")


def test_alert_round_trip_through_avro_serializer_and_deserializer(client):
    alerts = build_alerts(**simulate_unit(3, n_history=2, seed=5, null_fraction=0.2))
    serializer = AvroSerializer(client, alert_schema().json)
    deserializer = AvroDeserializer(client)
    ctx = SerializationContext("rt-alerts", MessageField.VALUE)
    for alert in alerts:
        data = serializer(alert, ctx)
        assert data[0] == 0
        assert deserializer(data, ctx) == alert
    assert "rt-alerts-value" in client.get_subjects()
    latest = client.get_latest_version("rt-alerts-value")
    assert latest.version == 1 and json.loads(latest.schema.schema_str)["name"] == "lsst.v11_1.alert"


def test_register_lookup_and_versions(client, schema_registry):
    first = client.register_schema("things", avro(record(A)))
    assert client.register_schema("things", avro(record(A))) == first  # idempotent
    second = client.register_schema("things", avro(record(A, B_DEFAULT)))
    assert second != first and client.get_versions("things") == [1, 2]
    assert client.get_version("things", 1).schema_id == first
    assert client.lookup_schema("things", avro(record(A, B_DEFAULT))).version == 2
    assert json.loads(client.get_schema(second).schema_str)["fields"][1]["name"] == "b"
    # the same schema under another subject keeps its global id
    assert client.register_schema("other-things", avro(record(A))) == first
    raw = httpx.get(f"{schema_registry.url}/schemas/ids/{first}/versions").json()
    assert {"subject": "other-things", "version": 1} in raw


def test_compatibility_rules_backward_and_forward(client):
    client.set_compatibility("compat", "BACKWARD")
    client.register_schema("compat", avro(record(A)))
    # adding a field with a default is allowed under BACKWARD
    assert client.test_compatibility("compat", avro(record(A, B_DEFAULT)))
    # adding one without a default is not (the new reader cannot read old data)
    assert not client.test_compatibility("compat", avro(record(A, B_REQUIRED)))
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("compat", avro(record(A, B_REQUIRED)))
    assert err.value.http_status_code == 409 and err.value.error_code == 409
    assert "missing from the writer schema and has no default" in err.value.error_message

    # removing a field without a default is rejected where old readers must read new data
    client.set_compatibility("compat2", "FORWARD")
    client.register_schema("compat2", avro(record(A, B_REQUIRED)))
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("compat2", avro(record(A)))
    assert err.value.error_code == 409
    client.set_compatibility("compat2", "NONE")
    assert client.register_schema("compat2", avro(record(A)))
    assert client.get_compatibility("compat2") == "NONE"


def test_errors_are_confluents(client, schema_registry):
    url = schema_registry.url
    with pytest.raises(SchemaRegistryError) as err:
        client.get_versions("no-such-subject")
    assert (err.value.http_status_code, err.value.error_code) == (404, 40401)
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("bad", Schema('{"type": "record", "name": "x"}', "AVRO"))
    assert (err.value.http_status_code, err.value.error_code) == (422, 42201)
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema("bad", Schema("{not json", "AVRO"))
    assert err.value.error_code == 42201
    assert "bad" not in client.get_subjects()  # nothing stored
    client.register_schema("errs", avro(record(A)))
    answer = httpx.get(f"{url}/subjects/errs/versions/7")
    assert answer.status_code == 404 and answer.json()["error_code"] == 40402
    answer = httpx.get(f"{url}/subjects/errs/versions/zero")
    assert answer.status_code == 422 and answer.json()["error_code"] == 42202
    answer = httpx.get(f"{url}/schemas/ids/9999")
    assert answer.status_code == 404 and answer.json()["error_code"] == 40403
    answer = httpx.put(f"{url}/config", json={"compatibility": "SIDEWAYS"})
    assert answer.status_code == 422 and answer.json()["error_code"] == 42203
    answer = httpx.get(f"{url}/config/errs")
    assert answer.status_code == 404 and answer.json()["error_code"] == 40408
    assert httpx.get(f"{url}/config").json() == {"compatibilityLevel": "BACKWARD"}
    answer = httpx.post(f"{url}/compatibility/subjects/errs/versions/latest?verbose=true",
                        json={"schema": json.dumps(record(A, B_REQUIRED))})
    assert answer.json()["is_compatible"] is False and answer.json()["messages"]
    assert answer.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")


def test_ids_are_stable_across_restarts(tmp_path):
    db = tmp_path / "registry.db"
    with RegistryServer(db) as server, SchemaRegistryClient({"url": server.url}) as client:
        ids = [client.register_schema(f"s{i}", avro(record(A, {"name": f"f{i}",
                                                                  "type": "int"})))
               for i in range(3)]
        client.set_compatibility("s1", "FULL")
    with RegistryServer(db) as server, SchemaRegistryClient({"url": server.url}) as client:
        assert [client.get_latest_version(f"s{i}").schema_id for i in range(3)] == ids
        assert client.get_compatibility("s1") == "FULL"
        new = client.register_schema("s3", avro(record(B_REQUIRED)))
        assert new not in ids and new > max(ids)


def test_resolution_rules():
    assert not resolution_errors("long", "int")  # promotion
    assert resolution_errors("int", "long")
    assert not resolution_errors("bytes", "string")
    assert not resolution_errors(["null", "double"], "float")  # reader union
    assert resolution_errors("double", ["null", "double"])  # writer null has no match
    enum_old = {"type": "enum", "name": "e", "symbols": ["a", "b"]}
    enum_new = {"type": "enum", "name": "e", "symbols": ["a"]}
    assert resolution_errors(enum_new, enum_old)
    assert not resolution_errors(dict(enum_new, default="a"), enum_old)
    nested_old = record({"name": "xs", "type": {"type": "array", "items": record(A)}})
    nested_new = record({"name": "xs", "type": {"type": "array", "items": record(A, B_DEFAULT)}})
    assert not check_compatibility(nested_new, [nested_old], "FULL")
    assert check_compatibility(record(A, B_REQUIRED), [record(A), record(A, B_DEFAULT)],
                               "BACKWARD_TRANSITIVE")
    # the real alert schema is compatible with itself under FULL_TRANSITIVE
    definition = alert_schema().definition
    assert not check_compatibility(json.loads(json.dumps(definition)), [definition],
                                   "FULL_TRANSITIVE")
