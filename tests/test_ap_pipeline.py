"""Alert production as pipeline files through `jointcal-ap run`, on a small simulated survey:
detect → joint fit → calibrate (with a PSF model) → inject → template → difference (full DIA
measurement) → associate (APDB) → export_alerts, then the metrics on the repository.

The first pipeline uses an SQLite APDB and the file sink; a second pipeline re-runs
association and alert export from the first one's outputs into a real PostgreSQL APDB and
through our schema registry to the tansu broker, read back by an unchanged consumer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import main

pytestmark = pytest.mark.slow

N_VISITS, N_DETECTORS, N_INJECT = 4, 2, 30


def _simulate(out: Path) -> None:
    from jointcal_ap.simulate import Camera, SurveyConfig, simulate_survey
    from jointcal_ap.simulate.exposures import render_survey

    camera = Camera.grid(N_DETECTORS, 1, naxis1=384, naxis2=384, gap_px=20.0,
                         pixel_scale_arcsec=0.25, seed=2)
    config = SurveyConfig.photometric(n_visits=N_VISITS, n_stars=900, camera=camera,
                                      epochs=(2024.0, 2024.2), dither_arcmin=0.2,
                                      rotation_deg=0.2, fwhm_arcsec=0.9, mag_range=(15.0, 22.0),
                                      ref_mag_limit=20.0, seed=11)
    sim = simulate_survey(config, out / "sim", formats=(), overwrite=True)
    render_survey(sim.data, out / "raw", seed=3, layout="camera")


PIPELINE = """\
[pipeline]
name = "ap"
output = "run"
[inputs]
exposure = "raw/visit{{visit}}.fits[CCD{{detector:02d}}]"
refcat = "sim/refcat"
[units]
query = "raw"
[[stages]]
name = "detect"
[[stages]]
name = "jointfit"
options = {{ degree = 2 }}
[[stages]]
name = "calibrate"
[[stages]]
name = "inject"
options = {{ n_sources = {n_inject}, mag_min = 18.5, mag_max = 22.0 }}
[[stages]]
name = "template"
[[stages]]
name = "difference"
inputs = {{ calexp = "injected" }}
[[stages]]
name = "associate"
inputs = {{ calexp = "injected" }}
options = {{ apdb_url = "{apdb}" }}
[[stages]]
name = "export_alerts"
inputs = {{ dia_sources = "associated", calexp = "injected" }}
options = {{ apdb_url = "{apdb}", sink = "file://{alerts}" }}
"""

#: Association and alert export again, from the first pipeline's outputs.
AGAIN = """\
[pipeline]
name = "ap-postgres-kafka"
output = "run2"
[inputs]
dia_sources = "run/units/visit{{visit}}_det{{detector}}/dia_sources.parquet"
difference = "run/units/visit{{visit}}_det{{detector}}/difference.fits"
injected = "run/units/visit{{visit}}_det{{detector}}/injected.fits"
template = "run/units/visit{{visit}}_det{{detector}}/template.fits"
[units]
discover = "dia_sources"
[[stages]]
name = "associate"
inputs = {{ calexp = "injected" }}
options = {{ apdb_url = "{apdb}" }}
[[stages]]
name = "export_alerts"
inputs = {{ dia_sources = "associated", calexp = "injected" }}
options = {{ apdb_url = "{apdb}", sink = "{sink}" }}
"""


@pytest.fixture(scope="module")
def ap_run(tmp_path_factory):
    from jointcal_ap.store.repository import Repository, ingest_exposures

    root = tmp_path_factory.mktemp("ap")
    _simulate(root)
    with Repository(root / "run") as repo:
        ingest_exposures(repo, sorted((root / "raw").glob("visit?.fits")))
    apdb = f"sqlite:///{root / 'apdb.sqlite3'}"
    assert main(["apdb", "create", apdb]) == 0
    (root / "ap.toml").write_text(PIPELINE.format(n_inject=N_INJECT, apdb=apdb,
                                                  alerts=root / "alerts"))
    code = main(["run", str(root / "ap.toml"), "--no-progress", "--workers", "2"])
    summary = json.loads((root / "run" / "run_summary.json").read_text())
    assert code == 0, summary["failures"]
    return root, apdb, summary


def _alerts(root: Path) -> list[dict]:
    from jointcal_ap.stages.datasets import ALERT_PACKET

    out = []
    for path in sorted((root / "run" / "units").glob("*/alerts.avro")):
        out.extend(ALERT_PACKET.read(path))
    return out


def test_the_ap_pipeline_runs_every_stage_and_skips_the_template_visit(ap_run):
    root, _, summary = ap_run
    assert summary["units"] == N_VISITS * N_DETECTORS and summary["failed"] == 0
    # the first visit has no earlier visit to build its template from: nothing to do there
    assert sorted(r["unit"] for r in summary["no_work"]) == [f"visit0_det{d}"
                                                           for d in range(N_DETECTORS)]
    for name in ("calexp", "injected", "template", "difference", "dia_sources", "associated",
                 "dia_objects", "alerts"):
        found = sorted((root / "run" / "units").glob(f"visit*_det*/{name}.*"))
        expected = N_VISITS * N_DETECTORS if name in ("calexp", "injected") else \
            (N_VISITS - 1) * N_DETECTORS
        assert len([p for p in found if "provenance" not in p.name]) == expected, name


def test_every_alert_validates_and_is_in_the_apdb(ap_run):
    from lsst.alert.packet.schema import Schema

    from jointcal_ap.apdb import open_apdb

    root, apdb_url, _ = ap_run
    alerts = _alerts(root)
    schema = Schema.from_uri()
    for alert in alerts:
        schema.validate(alert)
    apdb = open_apdb(apdb_url)
    try:
        counts = apdb.counts()
    finally:
        apdb.close()
    n_sources = sum(pq.read_metadata(p).num_rows
                    for p in (root / "run" / "units").glob("*/associated.parquet"))
    assert len(alerts) == n_sources == counts["DiaSource"] > 0
    ids = [a["diaSourceId"] for a in alerts]
    assert len(set(ids)) == len(ids)
    # later visits see earlier detections of the same objects in their history
    assert any(a["prvDiaSources"] for a in alerts)
    with_cutouts = [a for a in alerts if a["cutoutDifference"] and a["cutoutScience"]
                    and a["cutoutTemplate"]]
    assert len(with_cutouts) == len(alerts)


def test_injected_sources_are_recovered(ap_run, capsys):
    root, _, _ = ap_run
    assert main(["metrics", str(root / "run"), "--json", "--no-plots"]) == 0
    run = json.loads((root / "run" / "metrics" / "run.json").read_text())["summary"]
    # 18.5-22 mag on a 0.25"/px, 0.9" seeing, 30 s survey: every one is well above 5 sigma;
    # those the difference image has no pixels for (the template does not cover them) are
    # counted apart, not scored
    assert run["n_point"] + run["n_not_on_difference"] == N_INJECT * (N_VISITS - 1) * N_DETECTORS
    assert run["n_not_on_difference"] < run["n_point"] / 2
    assert run["completeness_point"] > 0.9
    matches = pq.read_table(root / "run" / "metrics" / "matches.parquet").to_pandas()
    bright = matches[matches.matched & (matches.snr_true > 20)]
    pull = (bright.dia_psfFlux - bright.diff_flux) / bright.dia_psfFluxErr
    assert abs(float(np.median(pull))) < 0.5


def test_association_and_alerts_on_postgresql_through_kafka(ap_run, postgres_url,
                                                           tansu_broker, schema_registry):
    import psycopg

    from jointcal_ap.alerts.kafka import AlertConsumer
    from jointcal_ap.apdb import open_apdb

    root, _, _ = ap_run
    name = "ap_pipeline_test"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    apdb = postgres_url.rsplit("/", 1)[0] + "/" + name
    assert main(["apdb", "create", apdb]) == 0
    tansu_broker.create_topic("ap-alerts")
    sink = (f"kafka://{tansu_broker.bootstrap}/ap-alerts?registry={schema_registry.url}"
            f"&archive={root / 'alerts2'}")
    (root / "again.toml").write_text(AGAIN.format(apdb=apdb, sink=sink))
    assert main(["run", str(root / "again.toml"), "--no-progress", "--workers", "2"]) == 0
    expected = {a["diaSourceId"] for a in _alerts(root)}
    db = open_apdb(apdb)
    try:
        assert db.counts()["DiaSource"] == len(expected)
    finally:
        db.close()
    got: dict[int, dict] = {}
    deadline = time.monotonic() + 60
    with AlertConsumer(tansu_broker.bootstrap, "ap-alerts", schema_registry.url,
                       group_id="ap-test", idle_timeout=5.0) as consumer:
        for _, alert in consumer:
            got[alert["diaSourceId"]] = alert
            if len(got) >= len(expected) or time.monotonic() > deadline:
                break
        consumer.commit()
    assert set(got) == expected
    # the re-run is idempotent: nothing is stored or sent twice
    assert main(["run", str(root / "again.toml"), "--no-progress"]) == 0
    db = open_apdb(apdb)
    try:
        assert db.counts()["DiaSource"] == len(expected)
    finally:
        db.close()
