"""Outputs of the joint fit: TAN-SIP/TPV headers, SCAMP .head files, the saved model, report, plots."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from jointcal_ap.fit import FitOptions, JointFit
from jointcal_ap.fit.data import Visit
from jointcal_ap.fit.models import ConstrainedModel
from jointcal_ap.fit.output import (
    head_name,
    head_names,
    load_model,
    read_scamp_head,
    save_model,
    tan_sip_header,
    tpv_header,
    tpv_index,
    write_fit_outputs,
    write_scamp_heads,
)
from jointcal_ap.fit.plots import write_plots
from jointcal_ap.fit.report import fit_report, residual_stats, write_report
from jointcal_ap.refcat import open_refcat
from jointcal_ap.simulate import SurveyConfig, simulate_survey

MAS_PER_DEG = 3.6e6


def separation_mas(ra1, dec1, ra2, dec2):
    def vec(ra, dec):
        ra, dec = np.radians(ra), np.radians(dec)
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)

    chord = np.linalg.norm(vec(ra1, dec1) - vec(ra2, dec2), axis=-1)
    return np.degrees(2 * np.arcsin(chord / 2)) * MAS_PER_DEG


def wcs_of(header):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def random_pixels(ccd, n=500, seed=7):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, ccd.naxis1 + 0.5, n), rng.uniform(0.5, ccd.naxis2 + 0.5, n)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A real fit: 3 visits × 4 CCDs (2×2, cubic radial distortion) from the simulator, via FITS-LDAC."""
    root = tmp_path_factory.mktemp("fitout") / "sim"
    survey = simulate_survey(SurveyConfig(n_visits=3, n_stars=1500, epochs=(2015.0, 2017.0), seed=3), root,
                             formats=("ldac",))
    return JointFit(survey.read("ldac"), open_refcat(survey.refcat_dir), FitOptions(degree=3, model="simple")).run()


@pytest.fixture(scope="module")
def constrained_like(result):
    """The same data with a ConstrainedModel (degree 3 ∘ degree 2 = a degree-6 mapping), not fitted."""
    data = result.data
    visit_of = data.visit_index_of_ccd()
    det_of = np.searchsorted(data.detectors(), [c.detector for c in data.ccds])
    model = ConstrainedModel(3, 2, len(data.detectors()), len(data.visits), 1.0e6)
    params, _ = model.initial(result.association.per_ccd_poly, visit_of, det_of, 0)
    rng = np.random.default_rng(2)
    # small second-order terms in every visit map (the visit blocks follow the detector blocks)
    start = model.n_detectors * 2 * model.kd
    quad = [k for k in range(model.kv) if k >= 3]
    for v in range(model.n_visits):
        for axis in range(2):
            params[start + v * 2 * model.kv + axis * model.kv + np.array(quad)] += rng.normal(0, 300.0, len(quad))
    return dataclasses.replace(result, model=model, params=params)


# --------------------------------------------------------------------------- WCS headers


@pytest.mark.parametrize("which", ["simple", "constrained"])
def test_tan_sip_header_reproduces_model(result, constrained_like, which):
    res = result if which == "simple" else constrained_like
    for ccd in (0, 5):
        header, err = tan_sip_header(res, ccd)
        assert err < 0.1
        c, visit = res.data.ccds[ccd], next(v for v in res.data.visits if v.visit == res.data.ccds[ccd].visit)
        assert header["CTYPE1"] == "RA---TAN-SIP" and header["CTYPE2"] == "DEC--TAN-SIP"
        assert (header["CRVAL1"], header["CRVAL2"]) == (visit.ra, visit.dec)
        # CRPIX is the pixel at the tangent point (as SCAMP writes it): no constant SIP terms
        assert "A_0_0" not in header and "B_0_0" not in header
        ra0, dec0 = res.pixel_to_sky(ccd, np.array([header["CRPIX1"]]), np.array([header["CRPIX2"]]))
        assert separation_mas(ra0, dec0, np.array([visit.ra]), np.array([visit.dec])).max() < 1e-6
        assert header["A_ORDER"] == (3 if which == "simple" else 6)
        # independently: astropy on the text form, at random pixels
        wcs = wcs_of(fits.Header.fromstring(header.tostring()))
        x, y = random_pixels(c)
        ra, dec = wcs.all_pix2world(x, y, 1)
        assert separation_mas(ra, dec, *res.pixel_to_sky(ccd, x, y)).max() < 0.1
        # the fitted inverse is close, and all_world2pix (which iterates from it) is exact
        xb, yb = wcs.all_world2pix(ra, dec, 1, tolerance=1e-10)
        assert np.max(np.hypot(xb - x, yb - y)) < 1e-6
    # a degree too low for the model: the measured error says so
    _, err2 = tan_sip_header(result, 0, sip_degree=2)
    assert err2 > 1.0


@pytest.mark.parametrize("which", ["simple", "constrained"])
def test_tpv_header_reproduces_model(result, constrained_like, which):
    res = result if which == "simple" else constrained_like
    ccd = 7
    header, err = tpv_header(res, ccd)
    assert err < 0.1
    assert header["CTYPE1"] == "RA---TPV" and header["CTYPE2"] == "DEC--TPV"
    last = 10 if which == "simple" else 30
    assert f"PV1_{last}" in header and f"PV1_{last + 1}" not in header
    assert header["PV1_1"] == 1.0 and header["PV1_2"] == 0.0 and header["PV2_1"] == 1.0
    assert header["PV1_3"] == 0.0 and header["PV2_3"] == 0.0  # radial terms
    if which == "constrained":
        assert header["PV1_11"] == 0.0 and header["PV1_23"] == 0.0
    c = res.data.ccds[ccd]
    x, y = random_pixels(c)
    ra, dec = wcs_of(fits.Header.fromstring(header.tostring())).all_pix2world(x, y, 1)
    assert separation_mas(ra, dec, *res.pixel_to_sky(ccd, x, y)).max() < 0.1


def test_tpv_numbering():
    assert [tpv_index(0, 0), tpv_index(1, 0), tpv_index(0, 1), tpv_index(2, 0), tpv_index(0, 2)] == [0, 1, 2, 4, 6]
    assert [tpv_index(3, 0), tpv_index(0, 3), tpv_index(4, 0), tpv_index(5, 0), tpv_index(0, 7)] == [7, 10, 12, 17, 38]


# --------------------------------------------------------------------------- SCAMP .head


def test_scamp_heads(result, tmp_path):
    data = result.data
    v0 = data.visits[0]
    first = next(c for c in data.ccds if c.visit == v0.visit)
    extra = {(first.visit, first.detector): {"FLXSCALE": (1.25, "flux scale"), "MAGZEROP": 30.0}}
    paths = write_scamp_heads(result, tmp_path / "heads", extra_cards=extra)
    assert [p.name for p in paths] == [f"visit_{i:04d}.head" for i in range(3)]  # from visit_000i.cat
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [p.name for p in paths]  # no temp files
    for path, visit in zip(paths, data.visits, strict=True):
        text = path.read_text()
        lines = text.split("\n")
        assert lines[-1] == "" and all(len(line) == 80 for line in lines[:-1])
        ccds = [i for i, c in enumerate(data.ccds) if c.visit == visit.visit]
        assert sum(line.rstrip() == "END" for line in lines) == len(ccds)
        blocks = read_scamp_head(path)
        assert len(blocks) == len(ccds)
        for ccd, block in zip(ccds, blocks, strict=True):
            for key in ("EQUINOX", "RADESYS", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2",
                        "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PV1_0", "PV1_10", "PV2_0",
                        "PV2_10"):
                assert key in block, key
            assert any("max error" in str(v) for v in block["COMMENT"])
            x, y = random_pixels(data.ccds[ccd], 200)
            ra, dec = wcs_of(block).all_pix2world(x, y, 1)
            assert separation_mas(ra, dec, *result.pixel_to_sky(ccd, x, y)).max() < 0.1
    block0 = read_scamp_head(paths[0])[0]
    assert block0["FLXSCALE"] == 1.25 and block0["MAGZEROP"] == 30.0  # extra cards win
    # the photometric fit's cards elsewhere: FLUX * FLXSCALE in nJy, MAGZEROP the AB zero point of nJy
    block1 = read_scamp_head(paths[0])[1]
    assert block1["MAGZEROP"] == 31.4
    assert block1["FLXSCALE"] == pytest.approx(10 ** (-0.4 * (block1["PHOTZP"] - 31.4)), rel=1e-12)
    c1 = data.ccds[[i for i, c in enumerate(data.ccds) if c.visit == v0.visit][1]]
    cal = result.photometry.calibration(0, list(data.detectors()).index(c1.detector))
    assert block1["PHOTZP"] == pytest.approx(float(cal.zero_point((c1.naxis1 + 1) / 2, (c1.naxis2 + 1) / 2)), abs=1e-9)
    astrometry_only = write_scamp_heads(replace(result, photometry=None), tmp_path / "astrometry_only")
    assert "FLXSCALE" not in read_scamp_head(astrometry_only[0])[1]
    # astropy's own text reader takes the first block
    assert fits.Header.fromtextfile(paths[0])["CTYPE1"] == "RA---TPV"
    # explicit names, and collisions refused
    named = write_scamp_heads(result, tmp_path / "named", names={v0.visit: "first"})
    assert named[0].name == "first.head"
    with pytest.raises(ValueError, match=r"same \.head"):
        write_scamp_heads(result, tmp_path / "dup", names=["a", "a", "b"])


def test_fit_outputs_appear_whole_or_not_at_all(result, tmp_path, monkeypatch):
    """A fit killed while writing leaves nothing that looks complete; an existing directory
    is refused, or with overwrite replaced whole (no file of the older run stays)."""
    import jointcal_ap.fit.report as report

    out = tmp_path / "fit"
    written = write_fit_outputs(result, out)
    assert written.heads[0].parent == out / "heads" and written.heads[0].exists()
    first = (out / "model.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_fit_outputs(result, out)
    (out / "stale.txt").write_text("from an older run")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_fit_outputs(result, out, overwrite=True)
    assert (out / "stale.txt").exists() and (out / "model.json").read_text() == first
    with pytest.raises(KeyboardInterrupt):
        write_fit_outputs(result, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]  # no partial directory
    monkeypatch.undo()
    write_fit_outputs(result, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "fit_report.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_fit_outputs(result, empty)  # an empty directory is taken over
    assert (empty / "model.json").exists()


def test_head_names_refuse_clashes_and_name_visits_apart():
    def visit(name, ident):
        return Visit(ident, 57000.0, 2015.0, "r", 30.0, 10.0, 20.0, name)

    clash = [visit("/d/n1/v0.cat", 0), visit("/d/n2/v0.cat", 1), visit("/d/n2/v1.cat", 2)]
    with pytest.raises(ValueError, match=r"v0\.head from /d/n1/v0\.cat and /d/n2/v0\.cat"):
        head_names(clash)
    assert head_names(clash, "path") == ["n1_v0.head", "n2_v0.head", "n2_v1.head"]
    assert head_names(clash, "visit") == ["visit_0.head", "visit_1.head", "visit_2.head"]
    with pytest.raises(ValueError, match="rule"):
        head_names(clash, "nope")


def test_head_name_rules():
    def visit(name, ident=7):
        return Visit(ident, 57000.0, 2015.0, "r", 30.0, 10.0, 20.0, name)

    assert head_name(visit("/data/run/visit_0001.cat")) == "visit_0001.head"
    assert head_name(visit("exp42.ldac")) == "exp42.head"
    assert head_name(visit("visits.parquet row 3", 1234)) == "visit_1234.head"
    assert head_name(visit("")) == "visit_7.head"


# --------------------------------------------------------------------------- model save/load


@pytest.mark.parametrize("which", ["simple", "constrained"])
def test_model_round_trip(result, constrained_like, which, tmp_path):
    res = result if which == "simple" else constrained_like
    path = save_model(res, tmp_path / "model.json")
    doc = json.loads(path.read_text())
    assert doc["model"]["type"] == which and doc["fit_epoch"] == res.fit_epoch
    assert path.with_suffix(".npz").exists()
    loaded = load_model(path)
    for ccd, c in enumerate(res.data.ccds):
        x, y = random_pixels(c, 100, seed=ccd)
        assert np.abs(loaded.tangent_plane(c.visit, c.detector, x, y) - res.tangent_plane(ccd, x, y)).max() < 1e-9
        ra1, dec1 = loaded.pixel_to_sky(c.visit, c.detector, x, y)
        ra2, dec2 = res.pixel_to_sky(ccd, x, y)
        assert separation_mas(ra1, dec1, ra2, dec2).max() < 1e-6
    for epoch in (None, 2020.0):
        assert separation_mas(*loaded.star_positions(epoch), *res.star_positions(epoch)).max() < 1e-6
    assert loaded.options == json.loads(json.dumps(dataclasses.asdict(res.options)))  # JSON: tuples -> lists
    with pytest.raises(KeyError, match="no CCD"):
        loaded.pixel_to_sky(999, 0, [1.0], [1.0])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format"):
        load_model(bad)


# --------------------------------------------------------------------------- report


def test_report_numbers(result, tmp_path):
    rep = fit_report(result)
    json.dumps(rep, allow_nan=False)  # strictly JSON
    c = rep["counts"]
    assert c["n_used"] + c["n_clipped"] == c["n_associated"]
    assert c["n_associated"] + c["n_unassociated"] == c["n_input_measurements"] == len(result.data.measurements)
    assert sum(c["clipped_per_round"]) == c["n_clipped"]
    assert c["n_reference_stars"] + c["n_stars_without_reference"] == c["n_stars"]
    assert sum(v["n_measurements"] for v in rep["per_visit"]) == c["n_associated"]
    assert sum(d["n_measurements"] for d in rep["per_detector"]) == c["n_associated"]
    assert sum(v["n_clipped"] for v in rep["per_ccd"]) == c["n_clipped"]
    assert rep["chi2"]["dof"] == result.dof

    act = result.active
    res = result.residual_mas
    direct = np.sqrt(np.mean(np.sum(res[act] ** 2, axis=1) / 2))
    assert rep["rms"]["internal"]["rms"] == pytest.approx(direct, rel=1e-12)
    assert rep["rms"]["internal"]["rms"] == pytest.approx(result.summary()["internal_rms_mas"], rel=1e-12)
    assert rep["rms"]["reference"]["rms"] == pytest.approx(result.summary()["reference_rms_mas"], rel=1e-12)
    # one visit's reference RMS, computed here
    v = result.data.visits[1].visit
    visit_of_meas = np.array([cc.visit for cc in result.data.ccds])[
        result.data.measurements.ccd_index[result.measurement_rows]]
    sel = act & (visit_of_meas == v) & np.isfinite(result.ref_residual_mas[:, 0])
    entry = next(e for e in rep["per_visit"] if e["visit"] == v)
    assert entry["reference"]["n"] == sel.sum()
    assert entry["reference"]["rms_xi"] == pytest.approx(np.sqrt(np.mean(result.ref_residual_mas[sel, 0] ** 2)))
    assert entry["match"]["n_matched"] == result.association.visit_stats[1].n_matched
    # repeatability: the median over stars of the per-star RMS
    star = result.association.meas_star[result.measurement_rows]
    per_star = [np.sqrt(np.mean(np.sum(res[act & (star == s)] ** 2, axis=1) / 2))
                for s in np.unique(star[act]) if np.sum(act & (star == s)) >= 2]
    assert rep["repeatability"]["median_rms_mas"] == pytest.approx(np.median(per_star), rel=1e-10)
    assert rep["repeatability"]["n_stars"] == len(per_star)
    bins = rep["repeatability"]["by_magnitude"]
    assert bins and sum(b["n_stars"] for b in bins) == len(per_star)
    assert residual_stats(np.zeros((0, 2)))["n"] == 0

    paths = write_report(result, tmp_path / "rep")
    assert [p.name for p in paths] == ["fit_report.json", "fit_report.txt"]
    assert json.loads(paths[0].read_text())["counts"] == c
    text = paths[1].read_text()
    assert "Per visit" in text and "Repeatability" in text and f"{c['n_used']}" in text


# --------------------------------------------------------------------------- plots


def test_plots_written(result, tmp_path):
    paths = write_plots(result, tmp_path / "plots")
    assert {p.name for p in paths} == {"residual_quiver.png", "residuals_vs_magnitude.png", "distortion_map.png",
                                       "photometry_residuals.png", "flat_field.png"}
    for p in paths:
        blob = p.read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 20_000
    assert sorted(x.name for x in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)


# --------------------------------------------------------------------------- our header evaluation


@pytest.mark.parametrize("which", ["simple", "constrained"])
def test_own_sip_and_tpv_evaluation_agrees_with_astropy(result, constrained_like, which):
    """The errors the headers report are measured with our TAN-SIP/TPV equations: they must be
    astropy's (wcslib's), to a µas, on the headers as written."""
    from jointcal_ap.fit.wcs_headers import (
        header_pixel_to_sky,
        sip_approximation,
        tpv_approximation,
    )

    res = result if which == "simple" else constrained_like
    for ccd in (0, len(res.data.ccds) - 1):
        x, y = random_pixels(res.data.ccds[ccd], seed=ccd)
        for approx in (sip_approximation(res, ccd), tpv_approximation(res, ccd)):
            ours = header_pixel_to_sky(approx.values(), x, y)
            theirs = wcs_of(fits.Header.fromstring(approx.text())).all_pix2world(x, y, 1)
            assert separation_mas(*ours, *theirs).max() < 1e-3
            assert approx.to_header()["CTYPE1"] in ("RA---TAN-SIP", "RA---TPV")


def test_initial_headers_are_evaluated_like_astropy():
    """TAN with CD, TAN with CDELT/PC and TAN-SIP as SExtractor copies them; others go to astropy."""
    from jointcal_ap.fit.cards import parse_values
    from jointcal_ap.fit.wcs_headers import UnsupportedWcs, header_pixel_to_sky

    base = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 359.9, "CRVAL2": -33.2,
            "CRPIX1": 1000.5, "CRPIX2": -20.0}
    headers = [
        {**base, "CD1_1": -7.2e-5, "CD1_2": 1.1e-7, "CD2_1": -2e-7, "CD2_2": 7.21e-5},
        {**base, "CDELT1": -7.2e-5, "CDELT2": 7.2e-5, "PC1_1": 0.999, "PC1_2": 0.04, "PC2_1": -0.04, "PC2_2": 0.999},
        {**base, "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CD1_1": -7.2e-5, "CD1_2": 0.0,
         "CD2_1": 0.0, "CD2_2": 7.2e-5, "A_ORDER": 2, "B_ORDER": 2, "A_2_0": 3e-6, "A_1_1": -1e-6,
         "B_0_2": 2e-6, "B_1_1": 5e-7},
    ]
    x, y = np.array([1.0, 2048.0, 500.5, 4000.0]), np.array([1.0, 4096.0, 3000.0, -50.0])
    for values in headers:
        header = fits.Header()
        for key, value in values.items():
            header[key] = value
        theirs = wcs_of(header).all_pix2world(x, y, 1)
        ours = header_pixel_to_sky(parse_values(header.tostring()), x, y)
        assert separation_mas(*ours, *theirs).max() < 1e-3
    for other in ({**headers[0], "CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN"}, {**headers[0], "PV1_1": 1.0},
                  {**headers[0], "LONPOLE": 170.0}):
        with pytest.raises(UnsupportedWcs):
            header_pixel_to_sky(other, x, y)


def test_cards_are_fits_cards():
    from jointcal_ap.fit.cards import card, parse_values

    values = {"CRVAL1": 150.12345678901235, "A_2_0": -1.234567890123456e-07, "TINY": 5e-324, "BIG": 1e300,
              "NEG": -0.00012345678901234567, "ORDER": 3, "FLAG": True, "NAME": "it's RA---TPV"}
    text = "".join(card(k, v, "a comment") for k, v in values.items())
    assert len(text) == 80 * len(values)
    header = fits.Header.fromstring(text)
    for key, value in values.items():
        assert header[key] == (pytest.approx(value, rel=1e-15) if isinstance(value, float) else value)
    parsed = parse_values(text)
    assert parsed == dict(header) and parsed["CRVAL1"] == values["CRVAL1"]  # shortest repr: exact
    assert parse_values(card("HISTORY", "x = 1") + "END".ljust(80) + card("LATE", 1)) == {}
    with pytest.raises(ValueError, match="longer than 8"):
        card("TOOLONGKEY", 1)
    with pytest.raises(ValueError):
        card("NAN", float("nan"))


def test_calibration_written_directly_is_the_product(result, tmp_path):
    """write_fit_outputs writes the calibration directory from the TAN-SIP cards' text, without
    astropy: the same bytes as calibration_product(...).write."""
    from jointcal_ap.fit.output import calibration_product, write_calibration_product
    from jointcal_ap.fit.wcs_headers import sip_approximation

    sip = [sip_approximation(result, i) for i in range(len(result.data.ccds))]
    provenance = {"created_utc": "2026-01-01T00:00:00+00:00", "options": {"degree": 3}}
    calibration_product(result, provenance=provenance, sip_headers=sip).write(tmp_path / "a")
    write_calibration_product(result, tmp_path / "b", provenance=provenance, sip_headers=sip)
    for name in ("wcs.fits", "calibration.json", "provenance.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    write_calibration_product(result, tmp_path / "c", provenance=provenance)  # fitting its own headers
    assert (tmp_path / "a" / "wcs.fits").read_bytes() == (tmp_path / "c" / "wcs.fits").read_bytes()


def test_wcs_grid_memo_follows_the_parameters(result):
    """The model samples shared by the TAN-SIP and TPV approximations are taken again when the
    result's parameters are replaced."""
    import copy

    from jointcal_ap.fit.wcs_headers import sip_approximation, tpv_approximation

    res = copy.copy(result)
    before = tpv_approximation(res, 0).cards
    assert tpv_approximation(res, 0).cards == before and sip_approximation(res, 0).max_error_mas < 1e-3
    res.params = np.array(res.params, dtype=float)
    res.params[: len(res.params) // 2] *= 1.0 + 1e-6
    assert tpv_approximation(res, 0).cards != before
    fresh = copy.copy(res)
    fresh.__dict__.pop("_wcs_grid_memo", None)
    assert tpv_approximation(res, 0).cards == tpv_approximation(fresh, 0).cards

