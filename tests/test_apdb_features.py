"""DiaObject summaries and lightcurve features, vectorised over objects, against direct
per-object computations with NumPy, SciPy and astropy."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.timeseries import LombScargle
from scipy import stats

from jointcal_ap.apdb.features import FeatureOptions, lightcurve_features, lomb_scargle_power
from jointcal_ap.apdb.summaries import dia_object_summaries


def _lightcurves(seed=4, n_obj=40):
    rng = np.random.default_rng(seed)
    rows = []
    for oid in range(1, n_obj + 1):
        for band in "gr":
            n = int(rng.integers(1, 30))
            t = np.sort(rng.uniform(60000, 60200, n))
            period = rng.uniform(0.5, 20)
            err = rng.uniform(10, 40, n)
            flux = 1000 + 300 * np.sin(2 * np.pi * t / period) + rng.normal(0, 1, n) * err
            rows += [(oid, band, ti, fi, ei) for ti, fi, ei in zip(t, flux, err, strict=True)]
    order = rng.permutation(len(rows))
    oid, band, t, f, e = (np.array([rows[i][k] for i in order]) for k in range(5))
    return {"diaObjectId": oid.astype(np.int64), "band": band.astype(object),
            "midpointMjdTai": t.astype(float), "psfFlux": f.astype(float),
            "psfFluxErr": e.astype(float)}


def test_features_match_per_series_computations():
    data = _lightcurves()
    opts = FeatureOptions(min_points_periodogram=8, max_frequencies=300)
    out = lightcurve_features(data, opts)
    for k, (oid, band) in enumerate(zip(out["diaObjectId"], out["band"], strict=True)):
        sel = (data["diaObjectId"] == oid) & (data["band"] == band)
        order = np.argsort(data["midpointMjdTai"][sel])
        t, f, e = (data[c][sel][order] for c in ("midpointMjdTai", "psfFlux", "psfFluxErr"))
        n = len(t)
        w = 1 / e ** 2
        mu = np.sum(w * f) / np.sum(w)
        assert out["nData"][k] == n
        assert out["weightedMean"][k] == pytest.approx(mu, rel=1e-12)
        for lo, hi in ((5, 95), (10, 90), (25, 75)):
            want = np.percentile(f, hi) - np.percentile(f, lo)
            assert out[f"percentileRange_{lo}_{hi}"][k] == pytest.approx(want, rel=1e-10, abs=1e-9)
        if n >= 2:
            assert out["chi2"][k] == pytest.approx(np.sum(w * (f - mu) ** 2) / (n - 1), rel=1e-10)
            slope = np.polyfit(t - t.mean(), f, 1, w=1 / e)[0]
            assert out["linearSlope"][k] == pytest.approx(slope, rel=1e-8, abs=1e-10)
            delta = np.sqrt(n / (n - 1)) * (f - mu) / e
            p = delta ** 2 - 1
            assert out["stetsonJ"][k] == pytest.approx(np.mean(np.sign(p) * np.sqrt(np.abs(p))),
                                                       rel=1e-10, abs=1e-12)
        else:
            assert np.isnan(out["chi2"][k]) and np.isnan(out["linearSlope"][k])
        if n >= 3:
            assert out["skew"][k] == pytest.approx(stats.skew(f, bias=False), rel=1e-8)
            eta = np.sum(np.diff(f) ** 2) / (n - 1) / np.var(f, ddof=1)
            assert out["vonNeumannRatio"][k] == pytest.approx(eta, rel=1e-10)
        if n >= opts.min_points_periodogram:
            assert np.isfinite(out["lombScarglePeriod"][k])
            # The peak we report is astropy's power at that frequency.
            freq = 1 / out["lombScarglePeriod"][k]
            power = LombScargle(t, f, e).power(np.array([freq]))[0]
            assert out["lombScarglePower"][k] == pytest.approx(power, rel=1e-9)
        else:
            assert np.isnan(out["lombScarglePeriod"][k])


def test_lomb_scargle_equals_astropy_and_finds_the_period():
    rng = np.random.default_rng(9)
    t = np.sort(rng.uniform(0, 90, 60))
    err = rng.uniform(5, 15, 60)
    f = 500 + 120 * np.sin(2 * np.pi * t / 2.37) + rng.normal(0, 1, 60) * err
    grid = np.linspace(0.02, 5, 800)
    ours = lomb_scargle_power(t[None], f[None], err[None], grid)[0]
    np.testing.assert_allclose(ours, LombScargle(t, f, err).power(grid), rtol=1e-9, atol=1e-12)
    table = lightcurve_features({"diaObjectId": np.full(60, 3), "band": np.full(60, "i", object),
                                 "midpointMjdTai": t, "psfFlux": f, "psfFluxErr": err})
    assert table["lombScarglePeriod"][0] == pytest.approx(2.37, rel=0.005)


def test_summaries_match_direct_computation():
    data = _lightcurves(seed=7, n_obj=25)
    n = len(data["psfFlux"])
    rng = np.random.default_rng(1)
    data["ra"] = 30 + data["diaObjectId"] * 0.01 + rng.normal(0, 1e-5, n)
    data["dec"] = -10 + rng.normal(0, 1e-5, n)
    data["raErr"] = rng.uniform(1e-5, 3e-5, n)
    data["decErr"] = rng.uniform(1e-5, 3e-5, n)
    data["scienceFlux"] = data["psfFlux"] + 5000
    data["scienceFluxErr"] = data["psfFluxErr"]
    data["psfFlux"][::17] = np.nan                       # missing measurements
    forced = {"diaObjectId": data["diaObjectId"], "band": data["band"],
              "psfFlux": data["psfFlux"] * 0.9, "psfFluxErr": data["psfFluxErr"]}
    ids = np.unique(data["diaObjectId"])
    out = dia_object_summaries(ids, data, forced)
    for k, oid in enumerate(ids):
        sel = data["diaObjectId"] == oid
        assert out["nDiaSources"][k] == sel.sum()
        assert out["firstDiaSourceMjdTai"][k] == data["midpointMjdTai"][sel].min()
        w = 2 / (data["raErr"][sel] ** 2 + data["decErr"][sel] ** 2)
        assert out["dec"][k] == pytest.approx(np.sum(w * data["dec"][sel]) / w.sum(), abs=1e-9)
        assert out["raErr"][k] == pytest.approx(1 / np.sqrt(np.sum(1 / data["raErr"][sel] ** 2)))
        for band in "gr":
            b = sel & (data["band"] == band)
            good = b & np.isfinite(data["psfFlux"])
            f, e, t = data["psfFlux"][good], data["psfFluxErr"][good], data["midpointMjdTai"][good]
            assert out[f"{band}_psfFluxNdata"][k] == len(f)
            if len(f) == 0:
                assert np.isnan(out[f"{band}_psfFluxMean"][k])
                continue
            assert out[f"{band}_psfFluxMean"][k] == pytest.approx(np.sum(f / e**2) / np.sum(e**-2))
            assert out[f"{band}_psfFluxMeanErr"][k] == pytest.approx(1 / np.sqrt(np.sum(e**-2)))
            assert out[f"{band}_psfFluxMin"][k] == f.min()
            assert out[f"{band}_psfFluxMax"][k] == f.max()
            assert out[f"{band}_psfFluxErrMean"][k] == pytest.approx(
                data["psfFluxErr"][b].mean())
            if len(f) >= 2:
                assert out[f"{band}_psfFluxSigma"][k] == pytest.approx(np.std(f, ddof=1))
                order = np.argsort(t)
                slope = np.max(np.diff(f[order]) / np.diff(t[order]))
                assert out[f"{band}_psfFluxMaxSlope"][k] == pytest.approx(slope)
            fp = b & np.isfinite(forced["psfFlux"])
            fw = forced["psfFluxErr"][fp] ** -2
            assert out[f"{band}_fpFluxMean"][k] == pytest.approx(
                np.sum(forced["psfFlux"][fp] * fw) / fw.sum())
            s = b
            sw = data["scienceFluxErr"][s] ** -2
            assert out[f"{band}_scienceFluxMean"][k] == pytest.approx(
                np.sum(data["scienceFlux"][s] * sw) / sw.sum())
        for band in "uizy":
            assert out[f"{band}_psfFluxNdata"][k] == 0
    with pytest.raises(ValueError, match="diaObjectId 999 has no DiaSource"):
        dia_object_summaries(np.append(ids, 999), data)


def test_features_are_vectorised_and_bounded_in_memory():
    data = _lightcurves(seed=2, n_obj=200)
    small = lightcurve_features(data, FeatureOptions(max_elements=20_000, max_frequencies=200))
    large = lightcurve_features(data, FeatureOptions(max_elements=50_000_000, max_frequencies=200))
    for name in small:
        if name == "band":
            assert (small[name] == large[name]).all()
        else:
            np.testing.assert_allclose(small[name], large[name], rtol=1e-12, equal_nan=True)
