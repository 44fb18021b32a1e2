"""DECam-like and HSC-like camera presets: their layouts, and a small survey of each through
the AP pipeline (detect → joint fit → calibrate → inject → template → difference with
real/bogus scoring → association into SQLite; the alert export is
covered by tests/test_ap_pipeline.py).

Two neighbouring CCDs of each camera, shrunk 8 × (the layout and pixel scale kept), three
visits: the pipeline runs on each camera's pixel scale, gain and read noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import main
from jointcal_ap.simulate.presets import PRESET_NAMES, camera_preset


def test_decam_layout_matches_the_published_numbers():
    p = camera_preset("decam")
    cam = p.camera
    assert len(cam) == 62 and p.gain == 4.0 and p.read_noise_e == 7.0
    assert {(d.naxis1, d.naxis2) for d in cam.detectors} == {(2048, 4096)}
    assert cam.pixel_scale_arcsec == 0.263
    rows = np.round([d.y0 for d in cam.detectors]).astype(int)
    counts = [int(np.sum(rows == r)) for r in sorted(set(rows))]
    assert counts == [3, 4, 5, 6, 6, 7, 7, 6, 6, 5, 4, 3]
    # S4 and N4 share a long edge across a 201 px gap; N4 and N5 a short edge across 153 px
    det = dict(zip(p.names, cam.detectors, strict=True))
    assert det["N4"].y0 - det["S4"].y0 == pytest.approx(2048 + 201)
    assert abs(det["N5"].x0 - det["N4"].x0) == pytest.approx(4096 + 153)
    # a 2.2 degree field
    assert 2 * cam.field_radius_px() * cam.pixel_scale_arcsec / 3600 == pytest.approx(2.2, abs=0.1)
    # centre/edge pixel scale 0.2637 / 0.2626
    r = cam.field_radius_px(distorted=False)
    assert 1 + 3 * cam.k1 * r * r == pytest.approx(0.2626 / 0.2637, rel=1e-9)


def test_hsc_layout_and_subsets():
    p = camera_preset("hsc")
    cam = p.camera
    assert len(cam) == 104 and p.gain == 3.0 and cam.pixel_scale_arcsec == 0.168
    assert {(d.naxis1, d.naxis2) for d in cam.detectors} == {(2048, 4176)}
    # no two CCDs overlap (the same orientation: compare boxes)
    x0 = np.array([d.x0 for d in cam.detectors])
    y0 = np.array([d.y0 for d in cam.detectors])
    dx = np.abs(x0[:, None] - x0[None]) + np.eye(len(x0)) * 1e9
    dy = np.abs(y0[:, None] - y0[None]) + np.eye(len(x0)) * 1e9
    assert not np.any((dx < 2048) & (dy < 4176))
    # about the published 90' diameter field
    assert 2 * cam.field_radius_px() * 0.168 / 60 == pytest.approx(90, rel=0.3)
    small = camera_preset("hsc", detectors=[50, 51], shrink=8)
    assert small.ccd_ids == (50, 51) and small.names == (p.names[50], p.names[51])
    d = small.camera.detectors[0]
    assert (d.naxis1, d.naxis2) == (256, 522) and d.x0 == pytest.approx(x0[50] / 8)
    # the same distortion fraction at the same (shrunk) place
    assert small.camera.k1 * (1000 / 8) ** 2 == pytest.approx(cam.k1 * 1000 ** 2)
    with pytest.raises(ValueError, match="unknown camera preset"):
        camera_preset("megacam")
    with pytest.raises(ValueError, match="detector indices"):
        camera_preset("decam", detectors=[62])


PIPELINE = """\
[pipeline]
name = "ap-{name}"
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
options = {{ n_sources = 10, mag_min = 18.5, mag_max = 21.0 }}
[[stages]]
name = "template"
[[stages]]
name = "difference"
inputs = {{ calexp = "injected" }}
[[stages]]
name = "associate"
inputs = {{ calexp = "injected" }}
options = {{ apdb_url = "{apdb}" }}
"""

#: Two neighbouring CCDs near the centre of each camera (DECam: S4, S5).
CCDS = {"decam": (27, 28), "hsc": (51, 52)}
N_VISITS = 3


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_small_survey_of_each_preset_runs_through_the_ap_pipeline(name, tmp_path):
    from jointcal_ap.simulate import SurveyConfig, simulate_survey
    from jointcal_ap.simulate.exposures import render_survey
    from jointcal_ap.store.repository import Repository, ingest_exposures

    preset = camera_preset(name, detectors=CCDS[name], shrink=8)
    cam = preset.camera
    area_arcmin2 = sum(d.naxis1 * d.naxis2 for d in cam.detectors) * (cam.pixel_scale_arcsec / 60) ** 2
    # about 100 stars of 15-22 mag per CCD, whatever the camera's pixel scale
    cone = SurveyConfig(camera=cam, dither_arcmin=0.1).star_radius() * 60.0
    n_stars = round(100 * math.pi * cone**2 / (area_arcmin2 / len(cam)))
    config = SurveyConfig.photometric(n_visits=N_VISITS, n_stars=n_stars, camera=cam, gain=preset.gain,
                                      epochs=(2024.0, 2024.2), dither_arcmin=0.1, rotation_deg=0.1,
                                      fwhm_arcsec=0.9, mag_range=(15.0, 22.0), ref_mag_limit=20.0,
                                      seed=5)
    sim = simulate_survey(config, tmp_path / "sim", formats=(), overwrite=True)
    render_survey(sim.data, tmp_path / "raw", seed=3, layout="camera",
                  read_noise_e=preset.read_noise_e)
    with Repository(tmp_path / "run") as repo:
        ingest_exposures(repo, sorted((tmp_path / "raw").glob("visit?.fits")))
    apdb = f"sqlite:///{tmp_path / 'apdb.sqlite3'}"
    assert main(["apdb", "create", apdb]) == 0
    (tmp_path / "ap.toml").write_text(PIPELINE.format(name=name, apdb=apdb))
    code = main(["run", str(tmp_path / "ap.toml"), "--no-progress", "--workers", "1"])
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert code == 0, summary["failures"]
    assert summary["units"] == N_VISITS * len(cam) and summary["failed"] == 0
    units = tmp_path / "run" / "units"
    tables = [pq.read_table(p) for p in sorted(units.glob("*/dia_sources.parquet"))]
    assert len(tables) == (N_VISITS - 1) * len(cam)
    n = sum(t.num_rows for t in tables)
    assert n > 0 and area_arcmin2 > 0
    # every DiaSource is scored by the packaged real/bogus model
    rel = np.concatenate([t.column("reliability").to_numpy(zero_copy_only=False) for t in tables])
    assert np.all((rel >= 0) & (rel <= 1))
    versions = {v for t in tables for v in t.column("reliabilityVersion").to_pylist()}
    assert versions == {"hgb-1"}
    # the injected sources (18.5-21 mag, far above 5 sigma) are found and scored real
    assert main(["metrics", str(tmp_path / "run"), "--json", "--no-plots"]) == 0
    run = json.loads((tmp_path / "run" / "metrics" / "run.json").read_text())["summary"]
    assert run["completeness_point"] > 0.8, run
    matches = pq.read_table(tmp_path / "run" / "metrics" / "matches.parquet").to_pandas()
    assert math.isfinite(run["completeness_point"]) and len(matches)
    # the run's DiaSources as a labelled dataset: the packaged model tells injected from the rest
    assert main(["realbogus", "export", str(tmp_path / "rb.parquet"), "--run",
                 str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["realbogus", "report", str(tmp_path / "rb.parquet"),
                 "--json", str(tmp_path / "rb.json")]) == 0
    report = json.loads((tmp_path / "rb.json").read_text())
    assert report["n"] == n and report["n_real"] >= run["n_point_detected"] > 0
    # (the model never saw these cameras' runs; DECam: AUC 1.0, HSC: 0.976 when written)
    assert report["tpr"] > 0.9 and report["auc"] > 0.95, report

    from jointcal_ap.apdb import open_apdb

    db = open_apdb(apdb)
    try:
        assert db.counts()["DiaSource"] == n
    finally:
        db.close()
