"""Alerts through the real tansu broker and our registry: round trip, broker restart,
oversized alerts, a broker or registry that is down, the sinks and the CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.wcs import WCS

from jointcal_ap.alerts.archive import AlertArchive
from jointcal_ap.alerts.cutouts import make_cutouts, read_cutout
from jointcal_ap.alerts.kafka import (
    AlertConsumer,
    DeliveryError,
    consume_alerts,
    open_alert_sink,
    send_archive,
)
from jointcal_ap.alerts.packets import build_alert_batch
from jointcal_ap.alerts.simulate import simulate_unit
from jointcal_ap.cli import main
from jointcal_ap.services.kafka import S3Storage, TansuBroker
from jointcal_ap.stages.interfaces import IdempotencyKey


def _batch(n, seed, visit=1000, cutout_bytes=0):
    unit = simulate_unit(n, n_history=3, seed=seed, visit=visit, null_fraction=0.2)
    ids = unit["dia_sources"].column("diaSourceId").to_pylist()
    cutouts = {i: {"cutoutDifference": bytes(cutout_bytes)} for i in ids} if cutout_bytes else None
    return build_alert_batch(**unit, cutouts=cutouts)


def _consume_all(broker, topic, registry, group, expected, timeout=60.0):
    """Every alert on the topic, by diaSourceId (duplicates counted)."""
    got, duplicates = {}, 0
    deadline = time.monotonic() + timeout
    with AlertConsumer(broker.bootstrap, topic, registry.url, group_id=group,
                       idle_timeout=3.0) as consumer:
        for _, alert in consumer:
            if alert["diaSourceId"] in got:
                duplicates += 1
            got[alert["diaSourceId"]] = alert
            if len(got) >= expected or time.monotonic() > deadline:
                break
        consumer.commit()
    return got, duplicates


def test_round_trip_gives_identical_records(tansu_broker, schema_registry, tmp_path):
    tansu_broker.create_topic("roundtrip")
    batch = _batch(30, seed=1, cutout_bytes=2000)
    records = batch.records()
    with AlertArchive(tmp_path / "archive") as archive:
        archive.write_batch(batch)
        report = send_archive(archive, tansu_broker.bootstrap, "roundtrip", schema_registry.url)
        assert (report.sent, report.acknowledged, report.failed) == (30, 30, ())
        assert archive.count("sent") == 30
    got, duplicates = _consume_all(tansu_broker, "roundtrip", schema_registry, "rt", 30)
    assert duplicates == 0
    assert [got[r["diaSourceId"]] for r in records] == records


def test_oversized_alert_is_a_clear_error_and_stays_unsent(tansu_broker, schema_registry,
                                                          tmp_path):
    tansu_broker.create_topic("big")
    small, big = _batch(3, seed=2, visit=1), _batch(1, seed=3, visit=2, cutout_bytes=300_000)
    root = tmp_path / "archive"
    with AlertArchive(root) as archive:
        archive.write_batch(small)
        archive.write_batch(big)
    big_id = int(big.dia_source_ids[0])
    code = main(["alerts", "send", str(root), "--bootstrap", tansu_broker.bootstrap,
                 "--topic", "big", "--registry", schema_registry.url,
                 "--max-message-bytes", "200000"])
    assert code == 1
    with AlertArchive(root) as archive:
        entry = archive.entry(big_id)
        assert entry.status == "failed" and "larger than the broker's message limit" in entry.error
        assert [e.dia_source_id for e in archive.unsent()] == [big_id]
    # a larger limit: --resend-unsent sends exactly what is left
    assert main(["alerts", "send", str(root), "--bootstrap", tansu_broker.bootstrap,
                 "--topic", "big", "--registry", schema_registry.url, "--resend-unsent",
                 "--max-message-bytes", "1000000"]) == 0
    with AlertArchive(root) as archive:
        assert archive.count("sent") == 4
    got, _ = _consume_all(tansu_broker, "big", schema_registry, "big", 4)
    assert big_id in got and len(got[big_id]["cutoutDifference"]) == 300_000


def test_registry_down_and_broker_down_lose_nothing(schema_registry, tmp_path):
    batch = _batch(5, seed=4)
    root = tmp_path / "archive"
    with AlertArchive(root) as archive:
        archive.write_batch(batch)
        with pytest.raises(DeliveryError, match="unreachable"):
            send_archive(archive, "127.0.0.1:1", "t", "http://127.0.0.1:9")
        assert archive.count("unsent") == 5
    with TansuBroker() as broker:
        broker.create_topic("down")
        broker.stop()  # down, and stays down past the delivery timeout
        with AlertArchive(root) as archive:
            report = send_archive(archive, broker.bootstrap, "down", schema_registry.url,
                                  delivery_timeout=2.0)
            assert report.acknowledged == 0 and len(report.failed) == 5
            assert all(e.status == "failed" for e in archive.unsent())
        broker.start()
        broker.create_topic("down")
        assert main(["alerts", "send", str(root), "--bootstrap", broker.bootstrap,
                     "--topic", "down", "--registry", schema_registry.url,
                     "--resend-unsent"]) == 0
        got, _ = _consume_all(broker, "down", schema_registry, "down", 5)
        assert set(got) == set(batch.dia_source_ids.tolist())


def test_broker_killed_mid_stream_every_alert_arrives(schema_registry, tmp_path):
    """Kill -9 the broker while sending and restart it (s3 storage served by rclone). The
    producer retries; tansu 0.6 loses the last records it acknowledged before the crash,
    so `send --verify --resend-unsent` finds them missing and sends them again: every alert
    arrives at least once."""
    batch = _batch(300, seed=5, cutout_bytes=3000)
    ids = set(batch.dia_source_ids.tolist())
    root = tmp_path / "archive"
    with AlertArchive(root) as archive:
        archive.write_batch(batch)
    with S3Storage(tmp_path / "s3") as storage, TansuBroker(storage) as broker:
        broker.create_topic("restart")
        result = {}

        def send():
            try:
                result["report"] = send_archive(root, broker.bootstrap, "restart",
                                                schema_registry.url, delivery_timeout=30.0,
                                                chunk=25)
            except Exception as exc:  # pragma: no cover - reported below
                result["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        with AlertArchive(root) as watch:
            deadline = time.monotonic() + 60
            while watch.count("sent") == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            sent_before_kill = watch.count("sent")
        broker.kill()
        time.sleep(1.0)
        broker.start()
        sender.join(120)
        assert not sender.is_alive() and "error" not in result
        assert 0 < sent_before_kill < 300  # the kill happened mid-stream
        assert main(["alerts", "send", str(root), "--bootstrap", broker.bootstrap,
                     "--topic", "restart", "--registry", schema_registry.url, "--verify",
                     "--resend-unsent"]) == 0
        with AlertArchive(root) as archive:
            assert archive.count("sent") == 300
        got, _ = _consume_all(broker, "restart", schema_registry, "restart", 300)
        assert set(got) == ids  # every alert arrived at least once (deduplicated by id)


def test_alert_packet_dataset_is_the_archive_s_file_of_the_batch(tmp_path):
    """A sink's delivery report names the container file it archived the batch in; the
    AlertPacket dataset of those records is a copy of it, and reads back as the records the
    encoder writes; without the file (or without one named), the records are encoded."""
    from jointcal_ap.alerts.archive import ArchivedAlerts, read_alert_file, write_alert_file

    batch = _batch(12, seed=11, visit=5, cutout_bytes=500)
    records = batch.records()
    sink = open_alert_sink(f"file://{tmp_path / 'archive'}")
    key = IdempotencyKey.make("export_alerts", {"visit": 5, "detector": 1}, "abc")
    try:
        report = sink.send(batch, key)
        again = sink.send(batch, key)
    finally:
        sink.close()
    assert report.container is not None and again.skipped and again.container is None
    copied, encoded = tmp_path / "copied.avro", tmp_path / "encoded.avro"
    write_alert_file(ArchivedAlerts(records, report.container), copied)
    write_alert_file(records, encoded)
    assert copied.read_bytes() == Path(report.container).read_bytes()
    assert copied.read_bytes() != encoded.read_bytes()
    assert read_alert_file(copied) == read_alert_file(encoded) == records
    gone = tmp_path / "gone.avro"
    write_alert_file(ArchivedAlerts(records, tmp_path / "no-such-file.avro"), gone)
    assert read_alert_file(gone) == records


def test_a_truncated_or_foreign_alert_file_is_a_clear_error(tmp_path):
    """An AlertPacket file cut short, or a file that is not Avro, raises ArchiveError naming
    the file (not fastavro's bare EOFError)."""
    from jointcal_ap.alerts.archive import ArchiveError, read_alert_file, write_alert_file

    whole = tmp_path / "alerts.avro"
    write_alert_file(_batch(6, seed=12, visit=5, cutout_bytes=3000).records(), whole)
    data = whole.read_bytes()
    cut, foreign = tmp_path / "cut.avro", tmp_path / "foreign.avro"
    cut.write_bytes(data[: len(data) // 2])
    foreign.write_text("SIMPLE  =                    T\n")
    for path in (cut, foreign):
        with pytest.raises(ArchiveError, match=str(path.name)):
            read_alert_file(path)
    assert len(read_alert_file(whole)) == 6


def test_sinks_through_the_plugin_hook(tansu_broker, schema_registry, tmp_path):
    from jointcal_ap.stages.manager import get_plugin_manager

    tansu_broker.create_topic("sink")
    pm = get_plugin_manager()
    url = (f"kafka://{tansu_broker.bootstrap}/sink?registry={schema_registry.url}"
           f"&archive={tmp_path / 'k'}")
    sink = pm.hook.jointcal_ap_get_alert_sink(url=url)
    key = IdempotencyKey.make("export_alerts", {"visit": 7, "detector": 1}, "abc")
    batch = _batch(4, seed=6, visit=7)
    try:
        assert sink.schema_id is not None
        assert sink.send(batch, key).acknowledged == 4
        assert sink.send(batch, key).skipped  # the same unit and inputs: nothing sent
    finally:
        sink.close()
    # what went out is what the archive holds (the sink sends the bodies it archived)
    got, duplicates = _consume_all(tansu_broker, "sink", schema_registry, "sink", 4)
    assert duplicates == 0 and sorted(got) == sorted(batch.dia_source_ids)
    with AlertArchive(tmp_path / "k") as archive:
        assert archive.count("sent") == 4
        for ident, alert in got.items():
            assert alert == archive.decode(archive.body(archive.entry(ident)))
    file_sink = pm.hook.jointcal_ap_get_alert_sink(url=f"file://{tmp_path / 'f'}")
    try:
        report = file_sink.send(batch.records(), key)
        assert (report.sent, report.acknowledged, file_sink.schema_id) == (4, 4, None)
    finally:
        file_sink.close()
    assert pm.hook.jointcal_ap_get_alert_sink(url="nats://x") is None
    with pytest.raises(ValueError, match="registry=URL"):
        open_alert_sink(f"kafka://{tansu_broker.bootstrap}/sink")


def test_cli_get_and_example_consumer(tansu_broker, schema_registry, tmp_path, capsys):
    tansu_broker.create_topic("cli")
    unit = simulate_unit(20, n_history=2, seed=8, visit=9)
    ids = unit["dia_sources"].column("diaSourceId").to_pylist()
    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval = ["RA---TAN", "DEC--TAN"], [150.1, 2.1]
    wcs.wcs.crpix, wcs.wcs.cdelt = [40, 35], [-5.5e-5, 5.5e-5]

    class Image:
        image = variance = np.ones((70, 80), "f4")
        mask = np.zeros((70, 80), "i4")

    Image.wcs = wcs

    cutouts = make_cutouts(ids[:1], [150.1], [2.1], difference=Image())
    root = tmp_path / "archive"
    with AlertArchive(root) as archive:
        archive.write_batch(build_alert_batch(**unit, cutouts=cutouts))
    assert main(["alerts", "get", str(root), "--id", str(ids[0])]) == 0
    assert json.loads(capsys.readouterr().out)["diaSourceId"] == ids[0]
    obj = unit["dia_sources"].column("diaObjectId")[0].as_py()
    assert main(["alerts", "get", str(root), "--object", str(obj)]) == 0
    assert [a["diaSourceId"] for a in json.loads(capsys.readouterr().out)] == [ids[0]]
    fits_path = tmp_path / "diff.fits"
    assert main(["alerts", "get", str(root), "--id", str(ids[0]), "--cutout", "difference",
                 "--out", str(fits_path)]) == 0
    assert read_cutout(fits_path.read_bytes())["IMAGE"].data.shape == (30, 30)
    assert main(["alerts", "get", str(root), "--id", "1"]) == 1
    assert main(["alerts", "send", str(root), "--bootstrap", tansu_broker.bootstrap,
                 "--topic", "cli", "--registry", schema_registry.url]) == 0
    capsys.readouterr()
    out = tmp_path / "bright.parquet"
    assert main(["alerts", "consume", "--bootstrap", tansu_broker.bootstrap, "--topic", "cli",
                 "--registry", schema_registry.url, "--filter", "snr > 25", "--out", str(out),
                 "--idle-timeout", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    snr = unit["dia_sources"].column("snr").to_pylist()
    assert summary["messages"] == 20 and summary["kept"] == sum(s > 25 for s in snr)
    table = pq.read_table(out)
    assert sorted(table.column("diaSourceId").to_pylist()) == sorted(
        i for i, s in zip(ids, snr, strict=True) if s > 25)
    # offsets were committed: the same group reads nothing new
    again = consume_alerts(tansu_broker.bootstrap, "cli", schema_registry.url, out,
                           filter_expression="snr > 25", idle_timeout=2.0)
    assert again.messages == 0 and again.kept == summary["kept"]
    assert main(["alerts", "consume", "--bootstrap", tansu_broker.bootstrap, "--topic", "cli",
                 "--registry", schema_registry.url, "--filter", "__import__('os')",
                 "--out", str(out)]) == 1
