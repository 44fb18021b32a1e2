"""Ephemerides of Solar System objects: agreement with an independent two-body calculation
(numerical integration + astropy frames) across orbit types, catalogs and their errors."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jointcal_ap.schemas import alert_schema, apdb_schema
from jointcal_ap.sso.constants import ECLIPTIC_TO_ICRS, GM_SUN, ICRS_TO_ECLIPTIC
from jointcal_ap.sso.ephemeris import EPHEMERIS_COLUMNS, predict, predict_at
from jointcal_ap.sso.errors import EphemerisError, OrbitError, SiteError
from jointcal_ap.sso.kepler import perihelion_state, propagate, state_to_cometary
from jointcal_ap.sso.mock import mock_orbits, parse_mix
from jointcal_ap.sso.observer import observer_states, parse_site
from jointcal_ap.sso.orbits import ORBIT_COLUMNS, Orbits, read_orbits, write_orbits
from jointcal_ap.sso.reference import reference_radec

T_OBS = 60300.3  # MJD TAI, 2023 Dec 21

# designation, q, e, i, node, argperi, peri_time: every conic and geometry we care about
CASES = [
    ("main-belt", 2.3, 0.12, 8.0, 120.0, 45.0, 60150.0),
    ("jupiter-trojan-like", 4.9, 0.08, 20.0, 300.0, 10.0, 59000.0),
    ("aten NEO", 0.7, 0.3, 15.0, 200.0, 300.0, 60280.0),
    ("close NEO", 0.98, 0.02, 1.0, 88.0, 2.0, 60300.0),
    ("TNO", 38.0, 0.1, 12.0, 30.0, 80.0, 55000.0),
    ("near-parabolic e<1", 1.2, 0.9999, 40.0, 10.0, 120.0, 60320.0),
    ("parabolic", 1.2, 1.0, 40.0, 10.0, 120.0, 60320.0),
    ("near-parabolic e>1", 1.2, 1.0001, 40.0, 10.0, 120.0, 60320.0),
    ("hyperbolic", 2.0, 2.5, 100.0, 200.0, 10.0, 60250.0),
    ("sungrazer", 0.01, 0.9999, 144.0, 0.0, 80.0, 60290.0),
    ("retrograde", 3.0, 0.2, 160.0, 50.0, 250.0, 60100.0),
    ("circular", 2.5, 0.0, 0.0, 0.0, 0.0, 60000.0),
]


def _orbits(cases=CASES) -> Orbits:
    return Orbits.from_table({
        "designation": [c[0] for c in cases], "q": [c[1] for c in cases],
        "e": [c[2] for c in cases], "i": [c[3] for c in cases], "node": [c[4] for c in cases],
        "argperi": [c[5] for c in cases], "peri_time": [c[6] for c in cases],
        "h": np.full(len(cases), 15.0), "g": np.full(len(cases), 0.15)})


def _sep_mas(ra1, dec1, ra2, dec2):
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    c = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(ra1 - ra2)
    cross = np.hypot(np.cos(dec2) * np.sin(ra1 - ra2),
                     np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(ra1 - ra2))
    return np.degrees(np.arctan2(cross, c)) * 3.6e6


@pytest.mark.parametrize("site", ["rubin", "geocenter"])
def test_positions_agree_with_independent_two_body_calculation(site):
    orbits = _orbits()
    eph = predict(orbits, T_OBS, site)
    lon = None if site == "geocenter" else -70.749417
    for k, case in enumerate(CASES):
        ref = reference_radec(*case[1:], T_OBS, lon_deg=lon)
        sep = _sep_mas(eph["ephRa"][k], eph["ephDec"][k], ref["ra"], ref["dec"])
        assert sep < 10.0, f"{case[0]}: {sep:.3f} mas from the reference"
        assert abs(eph["topoRange"][k] - ref["topo_range"]) < 1e-9 * max(1.0, ref["topo_range"])
        assert abs(eph["helioRange"][k] - ref["helio_range"]) < 1e-9 * max(1.0, ref["helio_range"])


def test_ra_wrap_and_per_object_times():
    """Objects placed just either side of RA 0/360 (and one observed at its own time)."""
    obs = observer_states("rubin", np.array([T_OBS]))
    sun_to_obs = obs.position[0] - obs.sun_position[0]
    # heliocentric states 2 au from the observer on either side of RA 0, Dec 0.5°
    cases = []
    for ra in (359.995, 0.01, 0.02):  # light time moves them by about -0.004°
        d = np.radians([ra, 0.5])
        u = np.array([np.cos(d[1]) * np.cos(d[0]), np.cos(d[1]) * np.sin(d[0]), np.sin(d[1])])
        r = sun_to_obs + 2.0 * u
        v = np.cross([0, 0, 1.0], r)
        v *= np.sqrt(GM_SUN / np.linalg.norm(r)) / np.linalg.norm(v)
        el = state_to_cometary(r[None], v[None], T_OBS + 32.184 / 86400.0, frame=ICRS_TO_ECLIPTIC)
        cases.append((f"wrap {ra}", el["q"][0], el["e"][0], *np.degrees(
            [el["inc"][0], el["node"][0], el["argperi"][0]]), el["tp"][0]))
    orbits = _orbits(cases)
    eph = predict(orbits, T_OBS, "rubin")
    assert eph["ephRa"].min() >= 0.0 and eph["ephRa"].max() < 360.0
    assert (eph["ephRa"] > 359.9).sum() == 1 and (eph["ephRa"] < 0.1).sum() == 2
    for k, case in enumerate(cases):
        ref = reference_radec(*case[1:], T_OBS)
        assert _sep_mas(eph["ephRa"][k], eph["ephDec"][k], ref["ra"], ref["dec"]) < 10.0, case[0]
    # one time per object gives the same as one call per time
    times = np.array([T_OBS, T_OBS + 0.3, T_OBS - 5.0])
    per_object = predict_at(orbits, observer_states("rubin", times))
    for k, t in enumerate(times):
        single = predict(orbits.take([k]), t, "rubin")
        assert _sep_mas(per_object["ephRa"][k], per_object["ephDec"][k],
                        single["ephRa"][0], single["ephDec"][0]) < 1e-3


def test_rates_and_geometry_are_consistent():
    orbits = _orbits(CASES[:5])
    dt = 1.0 / 1440.0
    a, b = predict(orbits, T_OBS - dt, "rubin"), predict(orbits, T_OBS + dt, "rubin")
    mid = predict(orbits, T_OBS, "rubin")
    cos_dec = np.cos(np.radians(mid["ephDec"]))
    dra = ((b["ephRa"] - a["ephRa"] + 180.0) % 360.0 - 180.0) * cos_dec / (2 * dt)
    ddec = (b["ephDec"] - a["ephDec"]) / (2 * dt)
    np.testing.assert_allclose(mid["ephRateRa"], dra, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mid["ephRateDec"], ddec, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mid["ephRate"], np.hypot(dra, ddec), rtol=1e-4, atol=1e-6)
    range_rate = (b["topoRange"] - a["topoRange"]) / (2 * dt) * 149597870.7 / 86400.0
    np.testing.assert_allclose(mid["topoRangeRate"], range_rate, rtol=1e-3, atol=1e-3)
    # |topo| = topoRange, |helio| = helioRange; vtot are the norms
    topo = np.stack([mid[f"topo_{c}"] for c in "xyz"], 1)
    helio = np.stack([mid[f"helio_{c}"] for c in "xyz"], 1)
    np.testing.assert_allclose(np.linalg.norm(topo, axis=1), mid["topoRange"], rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(helio, axis=1), mid["helioRange"], rtol=1e-12)
    hv = np.stack([mid[f"helio_v{c}"] for c in "xyz"], 1)
    np.testing.assert_allclose(np.linalg.norm(hv, axis=1), mid["helio_vtot"], rtol=1e-12)
    # the phase angle is the angle at the object between the Sun and the observer
    cosang = np.einsum("ij,ij->i", helio, topo) / (mid["helioRange"] * mid["topoRange"])
    np.testing.assert_allclose(mid["phaseAngle"], np.degrees(np.arccos(cosang)), atol=1e-6)
    assert np.all((mid["elongation"] >= 0) & (mid["elongation"] <= 180))
    # V from H, G: H + 5 log10(rΔ) at zero phase, fainter with phase
    assert np.all(mid["ephVmag"] > 15.0 + 5 * np.log10(mid["helioRange"] * mid["topoRange"]))


def test_kepler_round_trip_and_integration():
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(7)
    n = 40
    q = rng.uniform(0.1, 40.0, n)
    e = np.concatenate([rng.uniform(0, 0.95, n - 10), [0.999999, 1.0, 1.000001, 1.5, 3.0,
                                                      0.99, 1.01, 0.0, 0.5, 2.0]])
    inc, node, w = rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 2 * np.pi, n)
    r0, v0 = perihelion_state(q, e, inc, node, w)
    dt = rng.uniform(-2000, 2000, n)
    r, v = propagate(r0, v0, dt, alpha=(1 - e) / q)
    for k in range(0, n, 7):
        sol = solve_ivp(lambda _t, y: np.r_[y[3:], -GM_SUN * y[:3] / np.linalg.norm(y[:3]) ** 3],
                        (0, dt[k]), np.r_[r0[k], v0[k]], method="DOP853", rtol=1e-13, atol=1e-18)
        assert np.linalg.norm(sol.y[:3, -1] - r[k]) < 1e-9 * np.linalg.norm(r[k])
    el = state_to_cometary(r, v, 60000.0 + dt)
    np.testing.assert_allclose(el["q"], q, rtol=1e-9)
    np.testing.assert_allclose(el["e"], e, atol=1e-9)
    np.testing.assert_allclose(el["inc"], inc, atol=1e-9)
    bound = (e < 1) & (e > 0)  # circular orbits have no pericentre (ω = 0 by convention)
    period = 2 * np.pi / np.sqrt(GM_SUN * ((1 - e[bound]) / q[bound]) ** 3)
    tp = el["tp"][bound] - 60000.0
    # the nearest pericentre, whole periods apart from 0
    assert np.all(np.abs((tp / period) - np.round(tp / period)) < 1e-6)
    np.testing.assert_allclose(el["tp"][e >= 1] - 60000.0, 0.0, atol=1e-6)


def test_mock_catalog_shape_and_reproducibility(tmp_path):
    a = mock_orbits(3000, seed=5, mix=parse_mix("mba=0.8,neo=0.1,tno=0.05,comet=0.05"))
    b = mock_orbits(3000, seed=5, mix=parse_mix("mba=0.8,neo=0.1,tno=0.05,comet=0.05"))
    assert a.equals(b)
    assert not a.equals(mock_orbits(3000, seed=6))
    names = set(apdb_schema()["mpc_orbits"].names)
    alert_names = {f["name"] for f in alert_schema().record_fields("mpc_orbits")}
    for column in ORBIT_COLUMNS:
        assert column in names and column in alert_names, column
    kinds = np.asarray(a.column("kind").to_pylist())
    e = a.column("e").to_numpy()
    q = a.column("q").to_numpy()
    assert (kinds == "comet").sum() == 150 and np.all(np.abs(e[kinds == "comet"] - 1) <= 0.005)
    assert np.all(q[kinds == "neo"] < 1.3)
    a_mba = q[kinds == "mba"] / (1 - e[kinds == "mba"])
    assert 2.1 <= a_mba.min() and a_mba.max() <= 3.3
    # Parquet and CSV round trips give the same orbits; mean anomaly and peri_time agree
    path = tmp_path / "orbits.parquet"
    write_orbits(a, path)
    orbits = read_orbits(path)
    csv = tmp_path / "orbits.csv"
    frame = a.to_pandas()
    frame.loc[frame["e"] < 1, "peri_time"] = np.nan  # ellipses from their mean anomaly
    frame.to_csv(csv, index=False)
    from_csv = read_orbits(csv)
    bound = orbits.e < 0.99
    np.testing.assert_allclose(from_csv.tp[bound], orbits.tp[bound], atol=1e-6)
    assert np.array_equal(from_csv.ss_object_id, orbits.ss_object_id)
    back = Orbits.from_table(orbits.to_table())
    np.testing.assert_allclose(back.tp, orbits.tp)


def _row(**changes):
    row = {"designation": ["2024 AB"], "q": [2.0], "e": [0.1], "i": [5.0], "node": [1.0],
           "argperi": [2.0], "peri_time": [60000.0]}
    row.update({k: [v] for k, v in changes.items()})
    return row


@pytest.mark.parametrize(("changes", "message"), [
    ({"e": np.nan}, "object '2024 AB' (row 0): element e is NaN"),
    ({"node": np.nan}, "object '2024 AB' (row 0): element node is NaN"),
    ({"q": np.nan}, "object '2024 AB' (row 0): element q is NaN"),
    ({"e": -0.2}, "e = -0.2; expected e >= 0"),
    ({"q": 0.0}, "q = 0 au; expected q > 0"),
    ({"i": 190.0}, "i = 190 deg"),
    ({"peri_time": np.nan, "e": 1.0, "mean_anomaly": 3.0, "epoch_mjd": 60000.0},
     "object '2024 AB' (row 0): e = 1 with only a mean anomaly; expected e < 1"),
    ({"peri_time": np.nan, "e": 1.3, "mean_anomaly": 3.0, "epoch_mjd": 60000.0},
     "e = 1.3 with only a mean anomaly"),
    ({"peri_time": np.nan}, "neither peri_time nor mean_anomaly"),
    ({"peri_time": np.nan, "mean_anomaly": 3.0}, "mean_anomaly without epoch_mjd"),
])
def test_bad_orbits_name_the_object(changes, message):
    with pytest.raises(OrbitError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        Orbits.from_table(_row(**changes), where="cat.parquet")
    assert "cat.parquet" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is OrbitError and again.args == info.value.args


def test_bad_catalogs(tmp_path):
    with pytest.raises(OrbitError, match="no 'e' column"):
        Orbits.from_table({"designation": ["a"], "q": [1.0]})
    with pytest.raises(OrbitError, match="designation 'a' appears in rows"):
        Orbits.from_table({"designation": ["a", "a"], "q": [1.0, 2], "e": [0, 0], "i": [0, 0],
                           "node": [0, 0], "argperi": [0, 0], "peri_time": [0, 0]})
    bad = tmp_path / "orbits.txt"
    bad.write_text("x")
    with pytest.raises(OrbitError, match="unknown orbit catalog format"):
        read_orbits(bad)
    with pytest.raises(FileNotFoundError):
        read_orbits(tmp_path / "missing.parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(OrbitError, match="cannot read the orbit catalog"):
        read_orbits(broken)
    pq.write_table(pa.table({"designation": ["x"], "q": ["a"], "e": [0.1], "i": [1.0],
                             "node": [1.0], "argperi": [1.0], "peri_time": [1.0]}),
                   tmp_path / "text.parquet")
    with pytest.raises(OrbitError, match="column 'q' is not numeric"):
        read_orbits(tmp_path / "text.parquet")


def test_bad_sites_and_times():
    with pytest.raises(SiteError, match="unknown site 'lasilla'"):
        parse_site("lasilla")
    with pytest.raises(SiteError, match=r"latitude 95\.0"):
        parse_site("10,95,0")
    assert pickle.loads(pickle.dumps(SiteError("x"))).args == ("x",)
    with pytest.raises(SiteError):
        predict(_orbits(CASES[:1]), T_OBS, "nowhere")
    with pytest.raises(EphemerisError, match=r"MJD 3.*outside the planetary ephemeris"):
        predict(_orbits(CASES[:1]), 3000.0, "rubin")


def test_frames_and_kernel_sizes():
    # the ecliptic of the elements is the ICRS turned about x by 84381.448″
    assert np.isclose(np.degrees(np.arctan2(ECLIPTIC_TO_ICRS[2, 1], ECLIPTIC_TO_ICRS[1, 1])) * 3600,
                      84381.448)
    # many objects: padded kernels give the same answer as one object
    cat = Orbits.from_table(mock_orbits(1500, seed=2, mix=parse_mix("mba=1,neo=1,tno=1,comet=1")))
    many = predict(cat, T_OBS)
    assert set(EPHEMERIS_COLUMNS) <= set(many.columns)
    assert np.isfinite(np.stack([many[c] for c in EPHEMERIS_COLUMNS])).all()
    for k in (0, 777, 1499):
        one = predict(cat.take([k]), T_OBS)
        assert _sep_mas(one["ephRa"][0], one["ephDec"][0], many["ephRa"][k], many["ephDec"][k]) < 1e-6
