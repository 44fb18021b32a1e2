"""Daily Solar System products: H and G12 fits recover the truth within their errors;
SSObject rows from SSSources and DiaSources."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jointcal_ap.schemas import apdb_schema
from jointcal_ap.sso.associate import associate_sso
from jointcal_ap.sso.daily import daily_products, reduced_magnitudes, tisserand_jupiter
from jointcal_ap.sso.ephemeris import predict_at
from jointcal_ap.sso.errors import SsoError
from jointcal_ap.sso.observer import observer_states
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.sso.photometry import (
    G12_BOUNDS,
    fit_hg12,
    hg12_basis,
    hg12_magnitude,
    hg12_phase_function,
    hg_phase_function,
)
from jointcal_ap.sso.simulate import SimVisit, orbits_in_field, simulate_detections


def test_phase_functions():
    alpha = np.radians(np.linspace(0.0, 60.0, 61))
    for variant, (lo, hi) in G12_BOUNDS.items():
        for g12 in (lo, 0.3, hi):
            phi = hg12_phase_function(alpha, g12, variant)
            assert phi[0] == pytest.approx(1.0) and np.all(np.diff(phi) < 0), (variant, g12)
    # the basis passes through Muinonen et al.'s nodes, continuous at 7.5° and 30°
    p1, p2, p3 = hg12_basis(np.radians([7.5, 30.0, 150.0, 7.5 - 1e-9, 30.0 + 1e-9]))
    np.testing.assert_allclose(p1[:3], [0.75, 0.33486016, 0.0036396989])
    np.testing.assert_allclose(p2[:3], [0.925, 0.62884169, 0.00016505689])
    assert p1[3] == pytest.approx(0.75) and p3[4] == pytest.approx(0.0, abs=1e-9)
    # H–G: the V magnitude drops by ~1 mag at 20° for G = 0.15 (Bowell et al. 1989)
    assert -2.5 * np.log10(hg_phase_function(np.radians(20.0), 0.15)) == pytest.approx(1.000, abs=0.002)
    # the Penttilä parametrisation is the H, G1, G2 system on a line
    phi = hg12_phase_function(np.radians(12.0), 0.4, "penttila2016")
    b1, b2, b3 = hg12_basis(np.radians(12.0))
    g1, g2 = 0.84293649 * 0.4, 0.53513350 * 0.6
    assert phi == pytest.approx(g1 * b1 + g2 * b2 + (1 - g1 - g2) * b3)


@pytest.mark.parametrize("variant", ["penttila2016", "muinonen2010"])
def test_hg12_fits_recover_the_truth_within_errors(variant):
    rng = np.random.default_rng(42)
    n_obj, n_pts = 300, 25
    h_true = rng.uniform(12.0, 20.0, n_obj)
    lo, hi = G12_BOUNDS[variant]
    g12_true = rng.uniform(lo + 0.15, hi - 0.15, n_obj)
    group = np.repeat(np.arange(n_obj), n_pts)
    alpha = rng.uniform(1.0, 30.0, group.size)
    err = rng.uniform(0.02, 0.1, group.size)
    mag = hg12_magnitude(h_true[group], g12_true[group], 1.0, 1.0, np.radians(alpha), variant)
    mag = mag + rng.normal(0.0, 1.0, group.size) * err
    fit = fit_hg12(group, alpha, mag, err, variant=variant)
    assert not fit.slope_fit_failed.any()
    pull_h = (fit.h - h_true) / fit.h_err
    pull_g = (fit.g12 - g12_true) / fit.g12_err
    # pulls are unit normal: the fits are unbiased and the errors right
    for pull in (pull_h, pull_g):
        assert abs(np.mean(pull)) < 0.2 and 0.85 < np.std(pull) < 1.15
    assert np.mean(np.abs(pull_h) < 3) > 0.98
    corr = fit.cov / (fit.h_err * fit.g12_err)
    assert np.all(np.abs(corr) <= 1) and np.all(np.isfinite(corr))
    dof = n_pts - 2
    assert np.mean(fit.chi2) == pytest.approx(dof, rel=0.1)
    np.testing.assert_array_equal(fit.n_obs, n_pts)


def test_hg12_fallback_when_the_slope_is_unconstrained():
    alpha = np.array([5.0, 5.2, 5.4, 5.6])  # a 0.6° range: no slope
    mag = hg12_magnitude(15.0, 0.5, 1.0, 1.0, np.radians(alpha))
    fit = fit_hg12(np.zeros(4, int), alpha, mag, np.full(4, 0.05), g12_fiducial=0.5)
    assert fit.slope_fit_failed[0] and fit.g12[0] == 0.5
    assert fit.h[0] == pytest.approx(15.0, abs=1e-9) and np.isnan(fit.g12_err[0])
    assert fit.h_err[0] == pytest.approx(0.05 / 2)
    two = fit_hg12(np.zeros(2, int), [3.0, 20.0], [15.0, 16.0], [0.1, 0.1])
    assert two.slope_fit_failed[0] and two.n_used[0] == 2
    with pytest.raises(ValueError, match="g12_fiducial"):
        fit_hg12(np.zeros(2, int), [3.0, 20.0], [15.0, 16.0], [0.1, 0.1], g12_fiducial=2.0)
    with pytest.raises(ValueError, match="unknown H-G12 variant"):
        fit_hg12(np.zeros(2, int), [3.0, 20.0], [15.0, 16.0], [0.1, 0.1], variant="x")


def test_daily_products_from_a_simulated_month():
    """Objects observed on 15 nights in g, r, i: SSObject rows against the truth."""
    t0 = 60290.2
    table = orbits_in_field(25, ra=95.0, dec=23.0, radius_deg=0.5, mjd_tai=t0 + 15, seed=3)
    orbits = Orbits.from_table(table)
    bands = ("g", "r", "i")
    visits = [SimVisit(k, t0 + 2 * k + 0.02 * j, 95.0 - 0.2 * k, 23.0, 3.0, band=bands[k % 3],
                       m5=24.0) for k in range(15) for j in range(2)]
    visits = [SimVisit(v.visit * 2 + j, v.mjd_tai, v.ra, v.dec, v.radius_deg, v.band, v.m5)
              for j, v in enumerate(visits)]
    det = simulate_detections(table, visits, seed=4)
    # association of each visit's sources gives the SSSources
    obs = observer_states("rubin", np.array([v.mjd_tai for v in visits]))
    ss_parts = []
    times = det.column("midpointMjdTai").to_numpy()
    for k, v in enumerate(visits):
        sel = pa.array(times == v.mjd_tai)
        pred = predict_at(orbits, obs.take([k]))
        ss_parts.append(associate_sso(det.filter(sel), pred).ss_sources)
    ss = pa.concat_tables(ss_parts)
    assert ss.num_rows == det.num_rows
    rows = daily_products(ss, det, orbits=orbits)
    assert rows.schema.equals(apdb_schema()["SSObject"].arrow_schema(), check_metadata=False)
    assert rows.num_rows == len(set(det.column("truth_ssObjectId").to_pylist()))
    by_id = {r["ssObjectId"]: r for r in rows.to_pylist()}
    g12_true = dict(zip(table.column("ssObjectId").to_pylist(), table.column("g12").to_pylist(),
                        strict=True))
    h_true = dict(zip(table.column("ssObjectId").to_pylist(), table.column("h").to_pylist(),
                      strict=True))
    colour = {"g": 0.35, "r": -0.2, "i": -0.35}
    pulls = []
    for obj_id, row in by_id.items():
        mine = det.filter(pa.array(det.column("truth_ssObjectId").to_numpy() == obj_id))
        t = mine.column("midpointMjdTai").to_numpy()
        assert row["nObs"] == mine.num_rows
        assert row["arc"] == pytest.approx(t.max() - t.min(), abs=1e-6)
        assert row["firstObservationMjdTai"] == pytest.approx(t.min())
        assert row["designation"] == mine.column("truth_designation")[0].as_py()
        for b in bands:
            assert row[f"{b}_nObs"] == int(np.sum(np.asarray(mine.column("band").to_pylist()) == b))
            if row[f"{b}_nObs"] >= 6 and not row[f"{b}_slope_fit_failed"]:
                pulls.append((row[f"{b}_H"] - h_true[obj_id] - colour[b]) / row[f"{b}_HErr"])
                pulls.append((row[f"{b}_G12"] - g12_true[obj_id]) / row[f"{b}_G12Err"])
                assert row[f"{b}_phaseAngleMin"] < row[f"{b}_phaseAngleMax"]
        assert row["u_nObs"] == 0 and row["u_H"] is None
        assert row["tisserand_J"] == pytest.approx(
            tisserand_jupiter(*(getattr(orbits, a)[orbits.ss_object_id == obj_id]
                                for a in ("q", "e", "inc")))[0])
    pulls = np.asarray(pulls)
    assert pulls.size >= 20
    assert np.mean(np.abs(pulls) < 3) > 0.95 and 0.6 < np.std(pulls) < 1.4


def test_daily_products_bad_input():
    ss = {"diaSourceId": [1, 2], "ssObjectId": [5, 5], "helioRange": [2.0, 2.0],
          "topoRange": [1.0, 1.0], "phaseAngle": [5.0, 6.0]}
    dia = {"diaSourceId": [1], "midpointMjdTai": [60000.0], "band": ["r"], "psfFlux": [1e3],
           "psfFluxErr": [10.0]}
    with pytest.raises(SsoError, match="diaSourceId 2 has no row in dia_sources"):
        daily_products(ss, dia)
    with pytest.raises(SsoError, match=r"missing column\(s\) \['band'\]"):
        daily_products(ss, {k: v for k, v in dia.items() if k != "band"})
    reduced, _ = reduced_magnitudes([-5.0, 3631e9 / 1e9], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    assert np.isnan(reduced[0]) and reduced[1] == pytest.approx(31.4 - 2.5 * np.log10(3631.0))


def test_single_points_and_empty_bands_need_no_fit():
    ss = {"diaSourceId": [1, 2, 3], "ssObjectId": [5, 6, 6], "helioRange": [2.0] * 3,
          "topoRange": [1.0] * 3, "phaseAngle": [5.0, 6.0, 7.0]}
    dia = {"diaSourceId": [1, 2, 3], "midpointMjdTai": [60000.0, 60001.0, 60003.5],
           "band": ["r", "g", "g"], "psfFlux": [1e3, 2e3, -5.0], "psfFluxErr": [10.0] * 3,
           "extendedness": [0.1, 0.2, 0.4]}
    rows = {r["ssObjectId"]: r for r in daily_products(ss, dia).to_pylist()}
    assert rows[5]["r_nObs"] == 1 and rows[5]["r_slope_fit_failed"] is True
    assert rows[5]["r_H"] == pytest.approx(31.4 - 2.5 * np.log10(1e3) - 5 * np.log10(2.0) + 2.5
                                           * np.log10(hg12_phase_function(np.radians(5.0), 0.62)))
    assert rows[6]["g_nObs"] == 2 and rows[6]["g_nObsUsed"] == 1  # a negative flux
    assert rows[6]["arc"] == pytest.approx(2.5) and rows[6]["extendednessMedian"] == pytest.approx(0.3)
    assert rows[6]["r_nObs"] == 0 and rows[6]["r_slope_fit_failed"] is None


def test_daily_products_from_the_apdb(apdb_url, capsys):
    """`jointcal-ap sso daily` reads the SSSources of the objects seen in a time range with
    their whole history, fits H and G12, and upserts SSObject rows (a re-run changes
    nothing)."""
    from jointcal_ap.apdb import open_apdb
    from jointcal_ap.apdb.ap import associate_unit
    from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
    from jointcal_ap.cli import main
    from jointcal_ap.stages.interfaces import IdempotencyKey

    centre = (150.0, 2.0)
    sky = synthetic_sky(60, centre=centre, size_deg=0.42, seed=11, min_separation_arcsec=6)
    units = [u for u in synthetic_units(sky, [centre], n_visits=6, detector_size_deg=0.2,
                                        seed=12) if u.data_id["detector"] == 0]
    h_true, g12_true = {900: 15.0, 901: 16.5}, {900: 0.5, 901: 0.3}
    apdb = open_apdb(apdb_url, create=True)
    for i, unit in enumerate(units):
        src = unit.sources
        ss_object = np.full(src.num_rows, -1)
        ss_object[:2] = [900, 901]
        alpha = 3.0 + 4.0 * i
        mag = np.array([hg12_magnitude(h_true[k], g12_true[k], 2.0, 1.2, np.radians(alpha))
                        for k in (900, 901)])
        flux = src.column("psfFlux").to_numpy().copy()
        flux[:2] = 10 ** (-0.4 * (mag - 31.4))
        err = src.column("psfFluxErr").to_numpy().copy()
        err[:2] = flux[:2] * 1e-3
        src = src.set_column(src.column_names.index("psfFlux"), "psfFlux", pa.array(flux))
        src = src.set_column(src.column_names.index("psfFluxErr"), "psfFluxErr", pa.array(err))
        src = src.set_column(src.column_names.index("ssObjectId"), "ssObjectId",
                             pa.array(np.where(ss_object >= 0, ss_object, 0),
                                      mask=ss_object < 0, type=pa.int64()))
        src = src.set_column(src.column_names.index("band"), "band",
                             pa.array(["r"] * src.num_rows))
        ss = apdb_schema()["SSSource"].conform({
            "diaSourceId": src.column("diaSourceId").to_numpy()[:2], "ssObjectId": [900, 901],
            "eclLambda": np.ones(2), "eclBeta": np.ones(2), "galLon": np.ones(2),
            "galLat": np.ones(2), "phaseAngle": np.full(2, alpha), "helioRange": np.full(2, 2.0),
            "topoRange": np.full(2, 1.2)})
        associate_unit(apdb, src, key=IdempotencyKey.make("associate", unit.data_id, "v1"),
                       region=unit.region, ss_sources=ss)
    apdb.close()
    last = float(units[-1].sources.column("midpointMjdTai")[0].as_py())
    # only the last night: both objects were seen then; their whole history is fitted
    argv = ["sso", "daily", apdb_url, "--since", str(last - 0.5), "--until", str(last + 0.5)]
    assert main(argv) == 0
    assert "2 objects observed, 12 SSSources" in capsys.readouterr().out
    with open_apdb(apdb_url) as db:
        rows = db.get_ss_objects().to_pylist()
    assert [r["ssObjectId"] for r in rows] == [900, 901]
    for r in rows:
        assert r["nObs"] == 6 and r["r_nObs"] == 6 and r["arc"] == pytest.approx(5.0)
        assert r["r_H"] == pytest.approx(h_true[r["ssObjectId"]], abs=5 * r["r_HErr"] + 1e-6)
        assert r["r_G12"] == pytest.approx(g12_true[r["ssObjectId"]],
                                           abs=5 * r["r_G12Err"] + 1e-6)
    # a time range with no observation touches nothing; a re-run replaces the rows
    assert main(["sso", "daily", apdb_url, "--since", "1000", "--until", "1001"]) == 0
    assert "0 objects observed" in capsys.readouterr().out
    assert main(argv) == 0
    with open_apdb(apdb_url) as db:
        assert db.get_ss_objects().to_pylist() == rows
    assert main(["sso", "daily", apdb_url, "--since", "5", "--until", "4"]) == 2
