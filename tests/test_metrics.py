"""AP metrics: completeness against the predicted detection probability, purity, pulls,
astrometry, trailed completeness, m50, the run directory and ``jointcal-ap metrics``."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.wcs import WCS
from scipy import ndimage
from scipy.special import ndtr

from jointcal_ap.cli import main
from jointcal_ap.dia import (
    DiaImage,
    MeasureOptions,
    VisitInfo,
    inject_sources,
    make_injection_catalog,
    measure_dia_sources,
)
from jointcal_ap.metrics import (
    DIA_SOURCE_NAME,
    TRUTH_NAME,
    add_true_snr,
    ap_metrics,
    compute_run_metrics,
    detection_probability,
    detector_dir,
    detector_inputs,
    fit_m50,
    match_to_truth,
)
from jointcal_ap.psf import GaussianPsf

SIGMA = 10.0
THRESHOLD = 5.0
SHAPE = (1024, 1024)


def wcs_for(shape):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [210.0, -5.0]
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cd = [[-0.2 / 3600, 0.0], [0.0, 0.2 / 3600]]
    return wcs


def detect_peaks(image, variance, psf, threshold):
    """A first-pass detection: local maxima of the PSF-matched filter at ``threshold`` σ."""
    kern = psf.kernel_image(0.0, 0.0)
    row, col = kern.sum(axis=1), kern.sum(axis=0)            # a round Gaussian: separable
    filt = ndimage.correlate1d(ndimage.correlate1d(image, row, axis=0), col, axis=1)
    noise = ndimage.correlate1d(ndimage.correlate1d(variance, row ** 2, axis=0), col ** 2, axis=1)
    sig = filt / np.sqrt(noise)
    peak = (sig == ndimage.maximum_filter(sig, size=3)) & (sig >= threshold)
    y, x = np.nonzero(peak)
    return {"x": x.astype(float), "y": y.astype(float), "snr": sig[y, x]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An injection run of 16 detectors of 1024², detected at 5σ and measured: two with 1,050
    transients each at true SNR 10–30, 13 with 1,050 at SNR 2.5–7.5, and one with static
    sources (subtracted by the template) and trails."""
    root = tmp_path_factory.mktemp("run")
    psf = GaussianPsf.from_fwhm(3.5)
    kern = psf.kernel_image(0.0, 0.0)
    sigma_flux = SIGMA / np.sqrt(np.sum(kern ** 2))           # PSF-flux error on blank sky
    wcs = wcs_for(SHAPE)
    for detector in range(16):
        rng = np.random.default_rng(100 + detector)
        mixed = detector == 15
        catalog = make_injection_catalog(
            SHAPE, 160 if mixed else 1050, seed=200 + detector, wcs=wcs, edge_px=12.0,
            kinds={"static": 1, "trail": 1} if mixed else None,
            min_separation_px=60 if mixed else 24, trail_length_px=(10.0, 40.0))
        kind = np.array(catalog["kind"].to_pylist())
        snr = rng.uniform(10, 30, len(kind)) if detector < 2 else rng.uniform(2.5, 7.5, len(kind))
        flux = np.where(kind == "transient", snr, 40.0) * sigma_flux
        catalog = catalog.set_column(catalog.schema.get_field_index("flux"), "flux", pa.array(flux))
        catalog = catalog.set_column(catalog.schema.get_field_index("template_flux"), "template_flux",
                                     pa.array(np.where(kind == "static", flux, 0.0)))
        base = DiaImage(rng.normal(0.0, SIGMA, SHAPE), np.full(SHAPE, SIGMA ** 2), psf=psf)
        injected = inject_sources(base, catalog, seed=300 + detector, gain=100.0)
        image = np.array(injected.image.image)
        if mixed:      # the static sources were subtracted by the template: the difference has none
            static = injected.truth.filter(pa.array(kind == "static"))
            again = inject_sources(DiaImage(np.zeros(SHAPE), np.full(SHAPE, SIGMA ** 2), psf=psf),
                                   static, seed=1, noise=False)
            image -= again.image.image
        diff = DiaImage(image, injected.image.variance, injected.image.mask,
                        injected.image.mask_planes, psf)
        peaks = detect_peaks(diff.image, diff.variance, psf, THRESHOLD)
        if detector == 2:
            peaks = {k: np.r_[v, [5.0]] for k, v in peaks.items()}     # one spurious detection
            peaks["x"][-1], peaks["y"][-1] = 3.0, 3.0
        dia = measure_dia_sources(peaks, diff, visit=VisitInfo(7, detector, "r", 60000.0, 30.0),
                                  wcs=wcs, processed_mjd_tai=60000.5,
                                  options=MeasureOptions(trail=mixed))
        truth = add_true_snr(injected.truth, diff)
        out = detector_dir(root, 7, detector)
        pq.write_table(truth, out / TRUTH_NAME)
        pq.write_table(dia, out / DIA_SOURCE_NAME)
    detector_dir(root, 8, 0)                                # an empty unit is ignored
    return root


@pytest.fixture(scope="module")
def metrics(run_dir):
    return compute_run_metrics(run_dir, threshold=THRESHOLD)


def test_completeness_follows_the_predicted_detection_probability(metrics):
    snr = {c.name: c for c in metrics.run.curves}["snr"]
    use = (snr.lo >= 2.5) & (snr.hi <= 7.5)
    assert snr.n[use].min() > 1000                          # 13 detectors × ~1,050 / 10 bins
    deviation = snr.completeness[use] - snr.predicted[use]
    assert np.all(np.abs(deviation) < 0.05), deviation
    # The prediction is the erf of the true SNR and the threshold, with the peak-search terms.
    mid = 0.5 * (snr.lo + snr.hi)[use]
    assert np.all(np.abs(snr.predicted[use] - detection_probability(mid, THRESHOLD, 3.5 / 2.3548))
                  < 0.04)
    assert detection_probability(np.array([5.0]), 5.0)[0] == pytest.approx(0.5)
    # Purity: a point source is rarely detected twice (a second noise peak beside it); a
    # trail often is (peaks along it); the spurious detection on detector 2 counts.
    per = {row["detector"]: row for row in metrics.per_detector}
    assert all(per[d]["purity"] > 0.99 for d in range(0, 15))
    assert per[15]["purity"] < 0.9


def test_pulls_astrometry_and_trailed_completeness_of_the_run(metrics):
    s = metrics.run.summary
    assert s["n_point"] == 15 * 1050 and s["n_trail"] > 60 and s["n_static"] > 60
    assert s["n_static_detected"] == 0 and s["completeness_trail"] > 0.95
    # Pulls of the sources at true SNR >= 10 (detectors 0 and 1): N(0, 1), no flux bias.
    assert 2000 < s["n_pull"] <= 2100 and s["pull_min_snr"] == 10.0
    assert abs(s["pull_mean"]) < 0.1 and abs(s["pull_std"] - 1.0) < 0.1
    assert abs(s["flux_bias"]) < 0.01
    assert s["offset_median_px"] < 0.7 and abs(s["dra_mean_mas"]) < 10 and abs(s["ddec_mean_mas"]) < 10
    assert abs(s["offset_pull_std"] - 1.0) < 0.2
    assert {c.name for c in metrics.run.curves} == {"mag", "snr", "trail_length"}


def test_metrics_files_and_command(run_dir, metrics, capsys):
    out = metrics.out_dir
    names = {p.name for p in metrics.files}
    assert {"per_detector.parquet", "per_detector.json", "run.json", "curves.parquet",
            "matches.parquet", "completeness.png", "pulls.png", "trailed_completeness.png"} <= names
    per = pq.read_table(out / "per_detector.parquet")
    assert per.num_rows == 16 and per["visit"].to_pylist() == [7] * 16
    assert per["detector"].to_pylist() == list(range(16))
    run = json.loads((out / "run.json").read_text())
    assert run["summary"]["n_point"] == metrics.run.summary["n_point"]
    curves = pq.read_table(out / "curves.parquet")
    assert set(curves["curve"].to_pylist()) == {"mag", "snr", "trail_length"}
    assert -1 in curves["visit"].to_pylist()
    assert (out / "completeness.png").read_bytes()[:4] == b"\x89PNG"
    assert [(d.visit, d.detector) for d in detector_inputs(run_dir)][:2] == [(7, 0), (7, 1)]

    assert main(["metrics", str(run_dir), "--out", str(run_dir / "m2"), "--no-plots",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "completeness vs true SNR" in text and "per visit × detector" in text
    assert not (run_dir / "m2" / "pulls.png").exists()
    assert main(["metrics", str(run_dir), "--out", str(run_dir / "m3"), "--json", "--no-plots",
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["per_detector"]) == 16
    assert main(["metrics", str(run_dir / "missing"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["metrics", str(run_dir), "--match-radius", "0", "--no-progress"]) == 2


def test_matching_purity_and_pulls_on_known_tables():
    truth = pa.table({
        "injection_id": np.arange(5), "kind": ["transient", "transient", "variable", "static", "trail"],
        "x": [10.0, 50.0, 90.0, 130.0, 170.0], "y": [10.0, 10.0, 10.0, 10.0, 10.0],
        "injected": [True, True, True, True, True], "diff_flux": [100.0, 200.0, -50.0, 0.0, 300.0],
        "diff_mag": [26.4, 25.65, 27.15, np.nan, 25.2], "trail_length": [0, 0, 0, 0, 30.0],
        "ra": np.full(5, np.nan), "dec": np.full(5, np.nan)})
    dia = pa.table({"diaSourceId": np.arange(1, 7, dtype=np.int64),
                    "x": [10.5, 49.0, 300.0, 130.2, 182.0, 11.0], "y": [10.0, 10.0, 10.0, 10.0, 11.0, 10.0],
                    "psfFlux": [110.0, 180.0, 5.0, 20.0, 250.0, 99.0],
                    "psfFluxErr": [10.0, 10.0, 10.0, 10.0, 10.0, 10.0]})
    matches = match_to_truth(truth, dia, radius_px=2.0)
    t = matches.truth
    assert t["matched"].to_pylist() == [True, True, False, True, True]
    assert t["dia_diaSourceId"].to_pylist() == [1, 2, None, 4, 5]     # nearest of 1 and 6 wins
    assert matches.dia_matched.tolist() == [True, True, False, True, True, False]
    result = ap_metrics(t, matches.n_dia_sources)
    s = result.summary
    assert (s["n_point"], s["n_point_detected"], s["n_trail_detected"], s["n_static_detected"]) == (3, 2, 1, 1)
    assert s["purity"] == pytest.approx(3 / 6)                # the static, the spurious two are impure
    assert sorted(result.pulls.tolist()) == pytest.approx([-2.0, 1.0])
    assert s["flux_bias"] == pytest.approx(0.0)               # median of +0.1 and -0.1
    empty = match_to_truth(truth, None)
    assert not any(empty.truth["matched"].to_pylist()) and empty.truth["dia_psfFlux"].null_count == 5


def test_m50_fit_recovers_a_known_completeness_curve():
    rng = np.random.default_rng(5)
    mag = rng.uniform(20.0, 26.0, 6000)
    p = 0.95 * ndtr((24.2 - mag) / 0.3)
    m50, width, cmax = fit_m50(mag, rng.random(6000) < p)
    assert m50 == pytest.approx(24.2, abs=0.03)
    assert width == pytest.approx(0.3, abs=0.03)
    assert cmax == pytest.approx(0.95, abs=0.01)
    assert np.isnan(fit_m50(mag[:5], np.ones(5, bool))[0])
