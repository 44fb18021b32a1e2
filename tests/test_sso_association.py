"""SSO association: simulated detections of moving objects (catalog-level surveys and a
rendered difference image with point sources and trails) → one-to-one matches, SSSource
rows against the truth, nothing left for DiaObject association; footprints."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jointcal_ap.schemas import alert_schema, apdb_schema
from jointcal_ap.sso.associate import AssociationOptions, associate_sso, ecliptic_galactic
from jointcal_ap.sso.ephemeris import predict
from jointcal_ap.sso.errors import SsoError
from jointcal_ap.sso.footprint import SkyIndex, detector_polygon, in_region, objects_in_region
from jointcal_ap.sso.mock import mock_orbits
from jointcal_ap.sso.orbits import Orbits
from jointcal_ap.sso.simulate import SimVisit, orbits_in_field, simulate_detections
from jointcal_ap.stages.interfaces import SkyCircle, SkyPolygon

T_VISIT = 60300.25
FIELD = (95.0, 23.0)


@pytest.fixture(scope="module")
def field_survey():
    """Main-belt objects and NEOs in a 1° cone, one visit, with orbit errors and noise."""
    mba = orbits_in_field(150, ra=FIELD[0], dec=FIELD[1], radius_deg=1.0, mjd_tai=T_VISIT,
                          seed=11, kind="mba")
    neo = orbits_in_field(20, ra=FIELD[0], dec=FIELD[1], radius_deg=1.0, mjd_tai=T_VISIT,
                          seed=12, kind="neo", prefix="N")
    table = pa.concat_tables([mba, neo])
    visit = SimVisit(7, T_VISIT, FIELD[0], FIELD[1], 1.0, band="r", m5=23.0)
    det = simulate_detections(table, [visit], seed=3, orbit_error_arcsec=0.5,
                              noise_per_deg2=300.0)
    return Orbits.from_table(table), det


def test_all_detected_objects_become_sssources(field_survey):
    orbits, det = field_survey
    pred = predict(orbits, T_VISIT, "rubin")
    result = associate_sso(det, pred)
    truth = det.column("truth_ssObjectId").to_numpy()
    got = result.dia_sources.column("ssObjectId").to_numpy(zero_copy_only=False)
    is_object = truth > 0
    snr = det.column("snr").to_numpy()
    assert is_object.sum() > 60 and (~is_object).sum() > 500
    assert np.all(snr[is_object] >= 5.0)
    # every detection of an object (all are above 5σ) is associated, with the right object
    assert result.matched[is_object].all()
    assert np.array_equal(got[is_object], truth[is_object])
    # none of them is left for DiaObject association; the noise is, untouched
    left = result.unassociated.column("diaSourceId").to_numpy()
    assert not np.isin(left, det.column("diaSourceId").to_numpy()[is_object]).any()
    assert result.unassociated.num_rows == (~result.matched).sum()
    assert result.matched[~is_object].sum() <= 2  # chance coincidences within the ellipses
    assert result.dia_sources.column("ssObjectId").null_count == (~result.matched).sum()


def test_sssource_columns_agree_with_the_truth(field_survey):
    orbits, det = field_survey
    pred = predict(orbits, T_VISIT, "rubin")
    result = associate_sso(det, pred)
    ss = result.ss_sources
    assert ss.schema.equals(apdb_schema()["SSSource"].arrow_schema(), check_metadata=False)
    rows = {r["diaSourceId"]: r for r in ss.to_pylist()}
    dia = {r["diaSourceId"]: r for r in det.to_pylist()}
    offsets, pulls = [], []
    for source_id, row in rows.items():
        src = dia[source_id]
        if src["truth_ssObjectId"] == 0:
            continue
        assert row["ssObjectId"] == src["truth_ssObjectId"]
        assert row["designation"] == src["truth_designation"]
        assert row["helioRange"] == pytest.approx(src["truth_helioRange"], rel=1e-6)
        assert row["topoRange"] == pytest.approx(src["truth_topoRange"], rel=1e-6)
        assert row["phaseAngle"] == pytest.approx(src["truth_phaseAngle"], abs=1e-4)
        # observed − predicted = the injected orbit error + the measurement noise
        true_dra = ((src["truth_ra"] - row["ephRa"] + 180) % 360 - 180) \
            * np.cos(np.radians(src["truth_dec"])) * 3600
        true_ddec = (src["truth_dec"] - row["ephDec"]) * 3600
        sigma = src["raErr"] * 3600
        pulls += [(row["ephOffsetRa"] - true_dra) / sigma, (row["ephOffsetDec"] - true_ddec) / sigma]
        offsets.append(row["ephOffset"])
        assert row["ephOffset"] == pytest.approx(np.hypot(row["ephOffsetRa"], row["ephOffsetDec"]),
                                                 rel=1e-5)
        assert np.hypot(row["ephOffsetAlongTrack"], row["ephOffsetCrossTrack"]) == pytest.approx(
            row["ephOffset"], rel=1e-5)
        assert row["diaDistanceRank"] == 1
        ecl = ecliptic_galactic([src["ra"]], [src["dec"]])
        assert row["eclLambda"] == pytest.approx(ecl["eclLambda"][0])
    pulls = np.asarray(pulls)
    # the offsets are measured to the precision of the positions (pull RMS ~ 1)
    assert 0.7 < np.std(pulls) < 1.3 and abs(np.mean(pulls)) < 0.2
    assert 0.2 < np.median(offsets) < 1.5  # the 0.5″ orbit errors


def test_alerts_of_associated_sources_carry_their_sssource(field_survey):
    """SSSource rows go into the alert packets' ``ssSource`` (jointcal_ap.alerts), and the
    packets validate against Rubin's alert schema."""
    import fastavro

    from jointcal_ap.alerts.packets import build_alert_batch
    from jointcal_ap.alerts.simulate import random_record_table

    orbits, det = field_survey
    result = associate_sso(det, predict(orbits, T_VISIT, "rubin"))
    rows = (np.flatnonzero(result.matched)[:15].tolist()
            + np.flatnonzero(~result.matched)[:5].tolist())
    chosen = result.dia_sources.take(pa.array(rows))
    # our columns where we have them, random values for the rest of the diaSource record
    ours = {name: chosen.column(name).combine_chunks()
            for name in ("diaSourceId", "ra", "dec", "midpointMjdTai", "ssObjectId")}
    dia = random_record_table("diaSource", len(rows), np.random.default_rng(1), **ours,
                              diaObjectId=pa.nulls(len(rows), pa.int64()))
    batch = build_alert_batch(dia, ss_sources=result.ss_sources)
    for k, alert in enumerate(batch.records()):
        assert fastavro.validation.validate(alert, alert_schema().parsed, raise_errors=True)
        if k < 15:
            assert alert["ssSource"]["ssObjectId"] == alert["diaSource"]["ssObjectId"]
            assert alert["ssSource"]["diaSourceId"] == alert["diaSourceId"]
        else:
            assert alert["ssSource"] is None and alert["diaSource"]["ssObjectId"] is None


def test_one_to_one_and_trails():
    """Two objects near one source: one match; a trailed measurement uses its centroid."""
    orbits = Orbits.from_table(orbits_in_field(2, ra=10.0, dec=-5.0, radius_deg=0.01,
                                               mjd_tai=T_VISIT, seed=4))
    pred = predict(orbits, T_VISIT, "rubin")
    ra, dec = pred["ephRa"], pred["ephDec"]
    sources = pa.table({
        "diaSourceId": [1, 2, 3], "midpointMjdTai": [T_VISIT] * 3,
        "ra": [ra[0] + 0.2 / 3600, ra[1], ra[0] + 3 / 3600],
        "dec": [dec[0], dec[1] + 0.1 / 3600, dec[0]],
        "raErr": [0.05 / 3600] * 3, "decErr": [0.05 / 3600] * 3,
        # source 3 is a trail whose fitted centroid sits on object 0
        "trailRa": [np.nan, np.nan, ra[0] - 0.1 / 3600], "trailDec": [np.nan, np.nan, dec[0]],
        "trailRaErr": [np.nan, np.nan, 0.05 / 3600], "trailDecErr": [np.nan, np.nan, 0.05 / 3600],
        "trail_flag": [None, None, False]})
    result = associate_sso(sources, pred, options=AssociationOptions(ephemeris_sigma_arcsec=0.2))
    idx = result.object_index
    assert idx[1] == 1 and result.matched.sum() == 2
    # sources 1 and 3 both fit object 0; the one-to-one assignment keeps the better one
    assert (idx[0] == 0) != (idx[2] == 0)
    assert idx[2] == 0  # the trail centroid is 0.1″ away, source 1 0.2″
    ranks = dict(zip(result.ss_sources.column("diaSourceId").to_pylist(),
                     result.ss_sources.column("diaDistanceRank").to_pylist(), strict=True))
    assert ranks[3] == 1


def test_bad_association_input():
    pred = predict(Orbits.from_table(mock_orbits(3, seed=1)), T_VISIT)
    with pytest.raises(SsoError, match=r"missing column\(s\) \['midpointMjdTai'\]"):
        associate_sso({"diaSourceId": [1], "ra": [1.0], "dec": [2.0]}, pred)
    with pytest.raises(SsoError, match="diaSourceId 5 \\(row 0\\): ra/dec"):
        associate_sso({"diaSourceId": [5], "ra": [np.nan], "dec": [2.0],
                       "midpointMjdTai": [T_VISIT]}, pred)
    with pytest.raises(ValueError, match="max_chi2"):
        AssociationOptions(max_chi2=-1.0)
    empty = associate_sso({"diaSourceId": np.array([], np.int64), "ra": np.array([]),
                           "dec": np.array([]), "midpointMjdTai": np.array([])}, pred)
    assert empty.ss_sources.num_rows == 0 and empty.unassociated.num_rows == 0
    # no object predicted on the detector: every source goes on to DiaObject association
    nothing = associate_sso({"diaSourceId": [1, 2], "ra": [1.0, 2.0], "dec": [0.0, 0.0],
                             "midpointMjdTai": [T_VISIT] * 2}, pred.take(np.array([], int)))
    assert nothing.unassociated.num_rows == 2 and nothing.ss_sources.num_rows == 0


def test_footprint_index_finds_every_object_in_a_detector():
    cat = Orbits.from_table(mock_orbits(20000, seed=8))
    index = SkyIndex.build(cat, T_VISIT - 0.2)
    full = predict(cat, T_VISIT, "rubin")
    rng = np.random.default_rng(2)
    for ra0, dec0 in [(0.05, 0.5), (359.95, -1.0)] + [tuple(x) for x in rng.uniform([0, -20], [360, 20], (4, 2))]:
        # a 0.3° detector, axis-aligned, at a random place (two across RA 0/360)
        h = 0.15
        c = 1 / np.cos(np.radians(dec0))
        region = SkyPolygon(((ra0 - h * c, dec0 - h), (ra0 + h * c, dec0 - h),
                             (ra0 + h * c, dec0 + h), (ra0 - h * c, dec0 + h)))
        rows, eph = objects_in_region(cat, region, T_VISIT, "rubin", margin_deg=0.01, index=index)
        truth = np.flatnonzero(in_region(full["ephRa"], full["ephDec"], region, margin_deg=0.01))
        assert np.array_equal(rows, truth)
        np.testing.assert_allclose(eph["ephDec"], full["ephDec"][rows], atol=1e-9)
    # a wide cone around the ecliptic holds objects, and the candidates are a superset
    cone = SkyCircle(full["ephRa"][0], full["ephDec"][0], 2.0)
    cand = index.candidates(cone, T_VISIT)
    inside = np.flatnonzero(in_region(full["ephRa"], full["ephDec"], cone))
    assert inside.size > 0 and np.isin(inside, cand).all() and cand.size < len(cat) / 10


def test_rendered_difference_image_point_sources_and_trails():
    """Objects rendered on a difference image (slow ones as PSFs, fast ones as trails),
    detected by :func:`jointcal_ap.detect.detect_sources`, associated from their orbits."""
    from astropy.wcs import WCS

    from jointcal_ap.detect import detect_sources
    from jointcal_ap.simulate.images import render_image

    size, scale, fwhm, exptime = 400, 0.2, 4.0, 30.0
    mba = orbits_in_field(10, ra=FIELD[0], dec=FIELD[1], radius_deg=0.009, mjd_tai=T_VISIT,
                          seed=21, kind="mba")
    neo = orbits_in_field(40, ra=FIELD[0], dec=FIELD[1], radius_deg=0.009, mjd_tai=T_VISIT,
                          seed=22, kind="neo", prefix="N")
    neo_orbits = Orbits.from_table(neo)
    rate = predict(neo_orbits, T_VISIT)["ephRate"]
    fast = np.flatnonzero((rate > 0.5) & (rate < 1.0))[:3]  # trails of 3–6 px
    assert fast.size == 3
    table = pa.concat_tables([mba, neo.take(fast)])
    orbits = Orbits.from_table(table)
    pred = predict(orbits, T_VISIT, "rubin")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = FIELD
    wcs.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    rng = np.random.default_rng(5)
    n = len(orbits)
    # truth = prediction + a 0.3″ orbit error; SNR (optimal, point source) from 3 to 60
    err = rng.normal(0, 0.3, (n, 2)) / 3600
    true_ra = pred["ephRa"] + err[:, 0] / np.cos(np.radians(pred["ephDec"]))
    true_dec = pred["ephDec"] + err[:, 1]
    sky, sigma_psf = 1000.0, fwhm / 2.3548
    snr = np.exp(rng.uniform(np.log(3.0), np.log(60.0), n))
    snr[-3:] = [20.0, 28.0, 40.0]  # the trails: bright enough to be detected spread out
    flux = snr * np.sqrt(sky) * np.sqrt(4 * np.pi) * sigma_psf
    # each object as 15 sub-exposures along its motion (a trail for the fast ones)
    frac = np.linspace(-0.5, 0.5, 15)
    dt = frac * exptime / 86400
    sub_ra = true_ra[:, None] + pred["ephRateRa"][:, None] * dt / np.cos(np.radians(true_dec[:, None]))
    sub_dec = true_dec[:, None] + pred["ephRateDec"][:, None] * dt
    x, y = wcs.all_world2pix(sub_ra.ravel(), sub_dec.ravel(), 1)
    image = render_image((size, size), x, y, np.repeat(flux / 15, 15), fwhm_px=fwhm,
                         sky_adu=sky, gain=1.0, read_noise_e=0.0, seed=9)
    det = detect_sources(image.image, image.variance, image.mask, fwhm_px=fwhm,
                         aperture_correction=False)
    ra, dec = wcs.all_pix2world(det.x, det.y, 1)
    # pixel errors → degrees (the pixel grid is aligned with RA/Dec)
    sources = pa.table({
        "diaSourceId": np.arange(1, det.x.size + 1), "midpointMjdTai": np.full(det.x.size, T_VISIT),
        "ra": ra, "dec": dec, "raErr": np.sqrt(det.cov_xx) * scale / 3600,
        "decErr": np.sqrt(det.cov_yy) * scale / 3600, "exposureTime": np.full(det.x.size, exptime),
        "psfFlux": det.flux, "psfFluxErr": det.flux_err, "snr": det.flux / det.flux_err})
    result = associate_sso(sources, pred, options=AssociationOptions(ephemeris_sigma_arcsec=0.5))
    # the detection of each object: the nearest within 1″ of its true position
    vec = lambda a, d: np.stack([np.cos(np.radians(d)) * np.cos(np.radians(a)),  # noqa: E731
                                 np.cos(np.radians(d)) * np.sin(np.radians(a)),
                                 np.sin(np.radians(d))], -1)
    sep = np.degrees(np.arccos(np.clip(vec(true_ra, true_dec) @ vec(ra, dec).T, -1, 1))) * 3600
    nearest = sep.argmin(axis=1)
    found = sep[np.arange(n), nearest] < 1.0
    measured_snr = (det.flux / det.flux_err)[nearest]
    above = found & (measured_snr >= 5.0)
    assert (snr >= 8).sum() >= 6 and found[snr >= 8].all()  # bright ones are all detected
    assert above[-3:].all()  # the trails among them
    # every object detected above 5σ is SSO-associated, with its own detection
    assert np.array_equal(result.object_index[nearest[above]], np.flatnonzero(above))
    # and none of those detections is left for DiaObject association
    left = set(result.unassociated.column("diaSourceId").to_pylist())
    assert not left & set((nearest[above] + 1).tolist())
    # nothing else on the image was associated (there is nothing else)
    assert result.matched.sum() == np.count_nonzero(result.object_index >= 0)
    assert set(np.flatnonzero(result.matched)) <= set(nearest[found].tolist())


def test_detector_polygon_from_a_wcs():
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [0.0, 10.0]
    wcs.wcs.crpix = [1000.5, 2000.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    poly = detector_polygon(lambda x, y: wcs.all_pix2world(x, y, 1), 2000, 4000)
    # ±1000 px × 0.2″ = ±0.0564° of RA at Dec 10; ±2000 px = ±0.111° of Dec
    ra = np.array([0.0, 359.95, 0.07, 0.0, 0.0])
    dec = np.array([10.0, 10.0, 10.0, 10.1, 10.12])
    assert in_region(ra, dec, poly).tolist() == [True, True, False, True, False]


def test_user_guide_example_runs():
    """The example at the top of docs/sso.md runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "sso.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/sso.md", "exec"), namespace)
    assert namespace["result"].matched.sum() > 20
