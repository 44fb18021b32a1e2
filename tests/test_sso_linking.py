"""HelioLinC-style linking on a small simulated survey, the KD-tree DBSCAN, batched orbit fits,
and the ``jointcal-ap sso`` commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jointcal_ap.cli import main
from jointcal_ap.sso.constants import ECLIPTIC_TO_ICRS
from jointcal_ap.sso.kepler import perihelion_state, propagate
from jointcal_ap.sso.linking import LinkingOptions, dbscan, evaluate_linkages, link, night_of
from jointcal_ap.sso.observer import observer_states
from jointcal_ap.sso.orbit_fit import fit_orbits
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.sso.simulate import orbits_in_field, simulate_detections, survey_visits

FIELD = (100.0, 23.0)  # near opposition in early January
START = 60313.15


@pytest.fixture(scope="module")
def survey():
    table = orbits_in_field(60, ra=FIELD[0], dec=FIELD[1], radius_deg=1.0, mjd_tai=START + 5,
                            seed=5)
    visits = survey_visits([FIELD], start_mjd_tai=START, n_nights=10, per_night=2,
                           radius_deg=1.8, m5=24.5, seed=1, skip_fraction=0.2)
    det = simulate_detections(table, visits, seed=2, noise_per_deg2=20.0)
    return table, det


def test_linking_finds_the_objects(survey):
    table, det = survey
    result = link(det, LinkingOptions(r_grid=tuple(np.round(np.arange(1.8, 3.61, 0.1), 2))))
    night = night_of(det.column("midpointMjdTai").to_numpy(), -70.749417)
    score = evaluate_linkages(result, det.column("truth_ssObjectId").to_numpy(), night)
    assert score["findable"] >= 40
    assert score["completeness"] >= 0.9, score
    assert score["purity"] >= 0.95, score
    # each linkage's orbit reproduces its detections, and its elements are the truth's
    assert np.all(result.stats["rmsArcsec"] <= 0.5) and np.all(result.stats["nNights"] >= 3)
    truth = det.column("truth_ssObjectId").to_numpy()
    q_true = dict(zip(table.column("ssObjectId").to_pylist(), table.column("q").to_pylist(),
                      strict=True))
    a_true = {k: q / (1 - e) for k, q, e in zip(table.column("ssObjectId").to_pylist(),
                                                 table.column("q").to_pylist(),
                                                 table.column("e").to_pylist(), strict=True)}
    helio = np.stack([result.orbits[f"helio_{c}"] for c in "xyz"], 1)
    a_fit = 1 / (2 / np.linalg.norm(helio, axis=1) - np.sum(np.stack(
        [result.orbits[f"helio_v{c}"] for c in "xyz"], 1) ** 2, axis=1) / 0.01720209895**2)
    close = [abs(a_fit[k] - a_true[truth[m[0]]]) / a_true[truth[m[0]]] < 0.2
             for k, m in enumerate(result.members)]
    assert np.mean(close) > 0.8  # two-week arcs constrain a only loosely
    assert all(truth[m[0]] in q_true for m in result.members)
    out = result.to_table()
    assert out.num_rows == len(result) and out.column("diaSourceIds").type == pa.list_(pa.int64())


def test_dbscan_matches_scikit_learn():
    from sklearn.cluster import DBSCAN

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 1, (3000, 6)), rng.normal(4, 0.2, (200, 6))])
    ours = dbscan(points, 0.9, 3)
    theirs = DBSCAN(eps=0.9, min_samples=3).fit(points).labels_
    assert np.array_equal(ours >= 0, theirs >= 0)
    # the same partition of the core points (labels may be numbered differently)
    pairs = {(a, b) for a, b in zip(ours, theirs, strict=True) if a >= 0}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_batched_orbit_fits_recover_perturbed_states(survey):
    table, det = survey
    orbits = Orbits.from_table(table)
    truth = det.column("truth_ssObjectId").to_numpy()
    keep = truth > 0
    ids = orbits.ss_object_id
    order = np.argsort(ids)
    group = order[np.searchsorted(ids[order], truth[keep])]
    epoch = START + 5 + 32.184 / 86400
    r0, v0 = perihelion_state(orbits.q, orbits.e, *np.radians([orbits.inc, orbits.node,
                                                               orbits.argperi]),
                              frame=ECLIPTIC_TO_ICRS)
    r, v = propagate(r0, v0, epoch - orbits.tp, alpha=orbits.alpha)
    rng = np.random.default_rng(1)
    sub = det.filter(pa.array(keep))
    obs = observer_states("rubin", sub.column("midpointMjdTai").to_numpy())
    fit = fit_orbits(group, sub.column("ra").to_numpy(), sub.column("dec").to_numpy(),
                     sub.column("raErr").to_numpy() * 3600, obs, r + rng.normal(0, 0.005, r.shape),
                     v + rng.normal(0, 5e-5, v.shape), epoch)
    has = fit.n_used >= 6
    assert has.sum() > 40 and fit.converged[has].all()
    dof = 2 * fit.n_used[has] - 6
    assert np.median(fit.chi2[has] / dof) == pytest.approx(1.0, abs=0.25)
    assert np.median(fit.rms_arcsec[has]) < 0.1


def test_cli_mock_predict_associate_link(tmp_path, survey, capsys):
    table, det = survey
    orbits_path = tmp_path / "orbits.parquet"
    assert main(["sso", "mock", "--n", "500", "--seed", "4", "--out", str(orbits_path)]) == 0
    mock = pq.read_table(orbits_path)
    assert mock.num_rows == 500 and b"jointcal_ap" in mock.schema.metadata
    assert json.loads(mock.schema.metadata[b"jointcal_ap"])["seed"] == 4
    pred_path = tmp_path / "pred.parquet"
    assert main(["sso", "predict", str(orbits_path), "--mjd", "60600.2",
                 "--site=-70.7,-30.2,2650", "--out", str(pred_path)]) == 0
    pred = pq.read_table(pred_path)
    assert pred.num_rows == 500 and "ephRateRa" in pred.column_names
    assert main(["sso", "predict", str(orbits_path), "--mjd", "60600.2", "--cone", "10,0,30",
                 "--out", str(tmp_path / "cone.parquet")]) == 0
    assert 0 < pq.read_table(tmp_path / "cone.parquet").num_rows < 500
    # bad input: an unknown site is a usage error, a bad orbit a data error naming the object
    assert main(["sso", "predict", str(orbits_path), "--mjd", "1", "--site", "atlantis",
                 "--out", str(tmp_path / "x.parquet")]) == 2
    bad = mock.set_column(mock.column_names.index("e"), "e",
                          pa.array([np.nan] + [0.1] * 499, pa.float64()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    capsys.readouterr()
    assert main(["sso", "predict", str(tmp_path / "bad.parquet"), "--mjd", "60600",
                 "--out", str(tmp_path / "x.parquet")]) == 1
    assert "object 'M4-0000000' (row 0): element e is NaN" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
    # associate one visit of the survey with the field's predictions; link the rest
    pq.write_table(pa.Table.from_pandas(table.to_pandas()), tmp_path / "field.parquet")
    t = det.column("midpointMjdTai").to_numpy()
    first = det.filter(pa.array(t == t.min()))
    pq.write_table(first, tmp_path / "visit.parquet")
    assert main(["sso", "predict", str(tmp_path / "field.parquet"), "--mjd", str(t.min()),
                 "--out", str(tmp_path / "fpred.parquet")]) == 0
    assert main(["sso", "associate", str(tmp_path / "visit.parquet"),
                 str(tmp_path / "fpred.parquet"), "--out-ssource", str(tmp_path / "ss.parquet"),
                 "--out-unassociated", str(tmp_path / "left.parquet")]) == 0
    ss = pq.read_table(tmp_path / "ss.parquet")
    left = pq.read_table(tmp_path / "left.parquet")
    assert ss.num_rows == int((first.column("truth_ssObjectId").to_numpy() > 0).sum())
    assert ss.num_rows + left.num_rows == first.num_rows
    pq.write_table(det, tmp_path / "sources.parquet")
    assert main(["sso", "link", str(tmp_path / "sources.parquet"), "--r-range", "1.8,3.6,0.1",
                 "--no-progress", "--out", str(tmp_path / "links.parquet")]) == 0
    links = pq.read_table(tmp_path / "links.parquet")
    assert links.num_rows >= 40 and {"q", "e", "peri_time", "rmsArcsec"} <= set(links.column_names)
    assert main(["sso", "link", str(tmp_path / "sources.parquet"), "--r-range", "3,1,0.1",
                 "--out", str(tmp_path / "l2.parquet")]) == 2
    assert main(["sso", "mock", "--n", "5", "--seed", "1", "--mix", "asteroids=1",
                 "--out", str(tmp_path / "m.parquet")]) == 2
