"""AP-mode association into the APDB on SQLite and PostgreSQL: truth recovery, idempotent
re-runs, replacement, summaries that match the stored history, the Solar System seam, forced
photometry on a rendered image, history reads and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jointcal_ap.apdb import ApdbInputError, dia_object_summaries, open_apdb
from jointcal_ap.apdb.ap import associate_unit, detector_polygon
from jointcal_ap.apdb.association import AssociationOptions, associate
from jointcal_ap.apdb.drp import compare_associations
from jointcal_ap.apdb.features import FEATURE_COLUMNS, lightcurve_features
from jointcal_ap.apdb.history import alert_history
from jointcal_ap.apdb.summaries import SOURCE_COLUMNS, SUMMARY_COLUMNS
from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
from jointcal_ap.schemas import apdb_schema
from jointcal_ap.stages.interfaces import ApdbWrite, IdempotencyKey, SkyCircle

CENTRE = (150.0, 2.0)
#: Rubin tables plus our features and units (id-allocation bookkeeping is not content).
CONTENT = ("DiaObject", "DiaSource", "DiaForcedSource", "SSSource", "DiaObjectFeatures",
           "apdb_unit")


def _key(unit, identity="v1"):
    return IdempotencyKey.make("associate", unit.data_id, identity)


def _flat_photometry(positions):
    n = positions.num_rows
    ids = positions.column("diaObjectId").to_numpy()
    return {"psfFlux": (ids % 97).astype(float), "psfFluxErr": np.full(n, 5.0)}


def _run(apdb, units, identity="v1", photometry=_flat_photometry):
    return [associate_unit(apdb, u.sources, key=_key(u, identity), region=u.region,
                           forced_photometry=photometry) for u in units]


@pytest.fixture(scope="module")
def survey():
    """Well-separated objects observed by 4 visits of 4 detectors (spurious sources too)."""
    sky = synthetic_sky(400, centre=CENTRE, size_deg=0.42, seed=11, min_separation_arcsec=6)
    return sky, synthetic_units(sky, [CENTRE], n_visits=4, detector_size_deg=0.2, seed=12,
                                spurious_per_detector=5)


def test_objects_are_recovered_without_merges_or_splits(apdb_url, survey):
    _sky, units = survey
    apdb = open_apdb(apdb_url, create=True)
    results = _run(apdb, units)
    assigned = np.concatenate([r.dia_sources.column("diaObjectId").to_numpy() for r in results])
    truth = np.concatenate([u.truth for u in units])
    real = truth >= 0
    stats = compare_associations(truth[real], assigned[real])
    assert stats["split"] == 0 and stats["merged"] == 0
    assert stats["identical"] == stats["objects_a"] == len(np.unique(truth[real]))
    # Spurious sources never join a real object (they are far from everything).
    assert not np.isin(assigned[~real], assigned[real]).any()
    counts = apdb.counts()
    assert counts["DiaObject(current)"] == len(np.unique(assigned))
    assert counts["DiaSource"] == len(assigned)
    # An object's id is the id of the source that created it: its first source.
    first = {}
    for sid, oid in zip(np.concatenate([u.sources.column("diaSourceId").to_numpy()
                                        for u in units]), assigned, strict=True):
        first.setdefault(int(oid), int(sid))
    assert all(k == v for k, v in first.items())
    apdb.close()


def test_summaries_and_features_match_the_stored_history(apdb_url, survey):
    _sky, units = survey
    apdb = open_apdb(apdb_url, create=True)
    _run(apdb, units)
    objects = apdb.get_dia_objects(SkyCircle(*CENTRE, 1.0))
    ids = objects.column("diaObjectId").to_numpy()
    history = apdb.get_dia_sources(None, ids, 0, 1e6)
    forced = apdb.get_dia_forced_sources(None, ids, 0, 1e6)

    def columns(table, names):
        out = {}
        for name in names:
            col = table.column(name)
            out[name] = (np.array(col.to_pylist(), object) if name == "band"
                         else np.asarray(pc.fill_null(col.cast(pa.float64()), np.nan)
                                         .to_numpy(), float))
        out["diaObjectId"] = table.column("diaObjectId").to_numpy()
        return out

    # Forced photometry refreshes fpFluxMean with the object's next DiaSource (as in Rubin's
    # pipelines): the current version holds the forced sources up to its start.
    start = dict(zip(ids.tolist(), objects.column("validityStartMjdTai").to_pylist(), strict=True))
    upto = [t <= start[o] for o, t in zip(forced.column("diaObjectId").to_pylist(),
                                         forced.column("midpointMjdTai").to_pylist(), strict=True)]
    assert not all(upto)   # some forced rows came after the last DiaSource of their object
    want = dia_object_summaries(ids, columns(history, SOURCE_COLUMNS),
                                columns(forced.filter(pa.array(upto)),
                                        ("diaObjectId", "band", "psfFlux", "psfFluxErr")))
    schema = apdb_schema()["DiaObject"]
    for name in SUMMARY_COLUMNS:
        have = np.asarray(pc.fill_null(objects.column(name).cast(pa.float64()), np.nan)
                          .to_numpy(), float)
        expect = want[name].astype(float)
        if schema.column(name).datatype == "float":
            expect = expect.astype(np.float32).astype(float)
        np.testing.assert_array_equal(have, expect, err_msg=name)
    assert (objects.column("nDiaSources").to_numpy() >= 1).all()
    # Lightcurve features were recomputed with every new source: they are those of the
    # whole stored history, for every object and band.
    feats = apdb.get_features(ids)
    want = lightcurve_features(columns(history, ("band", "midpointMjdTai", "psfFlux",
                                                 "psfFluxErr")), apdb.feature_options)
    assert feats.column("diaObjectId").to_pylist() == want["diaObjectId"].tolist()
    assert feats.column("band").to_pylist() == want["band"].tolist()
    for name, *_ in FEATURE_COLUMNS:
        np.testing.assert_array_equal(
            np.asarray(pc.fill_null(feats.column(name).cast(pa.float64()), np.nan)),
            want[name].astype(float), err_msg=name)
    assert (feats.column("nData").to_numpy() >= 1).all()
    apdb.close()


def test_rerun_with_the_same_key_changes_nothing(apdb_url, survey):
    _sky, units = survey
    apdb = open_apdb(apdb_url, create=True)
    _run(apdb, units[:8])
    before = apdb.checksums()
    again = _run(apdb, units[:8])
    assert not any(r.stored for r in again)
    assert apdb.checksums() == before
    # The skipped result still hands back the unit's sources and objects.
    assert again[0].dia_sources.num_rows == units[0].sources.num_rows
    assert again[0].dia_objects.num_rows > 0
    apdb.close()


def test_replacing_a_unit_equals_running_its_new_inputs_alone(apdb_url, survey, tmp_path):
    """Re-running a (visit, detector) with other inputs replaces its rows: the database
    ends up identical, table for table, to one where only the new inputs were stored."""
    _sky, units = survey
    last = units[12]
    changed = last.sources.slice(0, last.sources.num_rows - 15)
    changed = changed.set_column(changed.column_names.index("psfFlux"), "psfFlux",
                                 pc.multiply(changed.column("psfFlux"), pa.scalar(1.1, pa.float32())))
    modified = type(last)(last.visit, last.detector, last.band, last.time, last.region, changed,
                          last.truth[:-15], last.data_id)
    first = open_apdb(apdb_url, create=True)
    _run(first, units[:13])
    result = _run(first, [modified], identity="v2")[0]
    assert result.stored
    other_url = (f"sqlite:///{tmp_path}/other.db" if apdb_url.startswith("sqlite")
                 else apdb_url + "_b")
    if other_url.startswith("postgresql"):
        import psycopg

        _base, name = apdb_url.rsplit("/", 1)
        with psycopg.connect(apdb_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}_b"')
    second = open_apdb(other_url, create=True)
    _run(second, units[:12])
    _run(second, [modified], identity="v2")
    assert first.checksums(CONTENT) == second.checksums(CONTENT)
    assert first.counts()["DiaSource"] == second.counts()["DiaSource"]
    first.close()
    second.close()


def test_solar_system_sources_make_no_dia_objects(apdb_url, survey):
    _sky, units = survey
    unit = units[0]
    src = unit.sources
    n = src.num_rows
    ss_object = np.where(np.arange(n) < 5, 900 + np.arange(n), -1)
    src = src.set_column(src.column_names.index("ssObjectId"), "ssObjectId",
                         pa.array(np.where(ss_object >= 0, ss_object, 0), mask=ss_object < 0,
                                  type=pa.int64()))
    ids = src.column("diaSourceId").to_numpy()[:5]
    ss = apdb_schema()["SSSource"].conform({
        "diaSourceId": ids, "ssObjectId": ss_object[:5], "eclLambda": np.ones(5),
        "eclBeta": np.ones(5), "galLon": np.ones(5), "galLat": np.ones(5)})
    apdb = open_apdb(apdb_url, create=True)
    result = associate_unit(apdb, src, key=_key(unit), region=unit.region, ss_sources=ss)
    assert result.n_ss == 5 and result.n_new == n - 5
    stored = apdb.get_unit_dia_sources(_key(unit).unit)
    assert stored.column("diaObjectId").null_count == 5
    assert apdb.counts()["DiaObject(current)"] == n - 5
    assert apdb.get_ss_sources(ids).column("ssObjectId").to_pylist() == ss_object[:5].tolist()
    # Replacing the unit replaces its SSSources too (no duplicates, no leftovers).
    associate_unit(apdb, src, key=_key(unit, "v2"), region=unit.region, ss_sources=ss.slice(0, 3))
    assert apdb.counts()["SSSource"] == 3
    bad = ss.set_column(1, "ssObjectId", pa.array(np.full(5, 1), pa.int64()))
    with pytest.raises(ApdbInputError, match=f"SSSource {ids[0]}"):
        associate_unit(apdb, src, key=_key(unit, "v3"), region=unit.region, ss_sources=bad)
    apdb.close()


def _gaussian_photometry(image, variance, psf, sky_to_pixel):
    """A real forced PSF fit: the linear amplitude of the PSF at each position."""

    def measure(positions):
        x, y = sky_to_pixel(positions.column("ra").to_numpy(), positions.column("dec").to_numpy())
        stamps, ix0, iy0 = psf.stamps(x, y)
        r = psf.radius_px
        flux, err = np.full(len(x), np.nan), np.full(len(x), np.nan)
        for k in range(len(x)):
            rows = slice(iy0[k] - r, iy0[k] + r + 1)
            cols = slice(ix0[k] - r, ix0[k] + r + 1)
            if rows.start < 0 or cols.start < 0 or rows.stop > image.shape[0] \
                    or cols.stop > image.shape[1]:
                continue
            p, d, v = stamps[k], image[rows, cols], variance[rows, cols]
            norm = (p * p / v).sum()
            flux[k], err[k] = (p * d / v).sum() / norm, 1 / np.sqrt(norm)
        return {"psfFlux": flux, "psfFluxErr": err, "scienceFlux": flux, "scienceFluxErr": err}

    return measure


def test_forced_photometry_on_a_rendered_image(apdb_url):
    from astropy.wcs import WCS

    from jointcal_ap.simulate.images import render_image

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = CENTRE
    wcs.wcs.crpix = [100.5, 100.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    rng = np.random.default_rng(3)
    n = 12
    x, y = rng.uniform(20, 180, n), rng.uniform(20, 180, n)
    ra, dec = wcs.all_pix2world(x, y, 1)
    flux = rng.uniform(2000, 20000, n)

    def sky_to_pixel(a, d):
        return wcs.all_world2pix(a, d, 1)

    def pixel_to_sky(px, py):
        return wcs.all_pix2world(px, py, 1)

    region = detector_polygon(pixel_to_sky, (200, 200))
    apdb = open_apdb(apdb_url, create=True)
    for visit in (1, 2):
        rendered = render_image((200, 200), x, y, flux, fwhm_px=3.0, sky_adu=100.0,
                                seed=visit)
        image = rendered.image - 100.0
        detected = np.arange(n) < (6 if visit == 1 else n)  # half of them are new at visit 2
        k = int(detected.sum())
        src = apdb_schema()["DiaSource"].conform({
            "diaSourceId": visit * 1000 + np.arange(k), "visit": np.full(k, visit),
            "detector": np.full(k, 0, np.int16), "midpointMjdTai": np.full(k, 60000.0 + visit),
            "ra": ra[detected], "dec": dec[detected], "x": (x[detected] - 1).astype(np.float32),
            "y": (y[detected] - 1).astype(np.float32), "psfNdata": np.zeros(k, np.int32),
            "trailNdata": np.zeros(k, np.int32), "dipoleNdata": np.zeros(k, np.int32),
            "timeProcessedMjdTai": np.full(k, 60000.5 + visit), "bboxSize": np.full(k, 9, np.int32),
            "band": np.full(k, "r", object), "psfFlux": flux[detected].astype(np.float32),
            "psfFluxErr": np.full(k, 50.0, np.float32)})
        key = IdempotencyKey.make("associate", {"visit": visit, "detector": 0}, "v1")
        result = associate_unit(apdb, src, key=key, region=region, forced_photometry=
                                _gaussian_photometry(image, rendered.variance, rendered.psf,
                                                     sky_to_pixel))
        forced = result.dia_forced_sources
        assert forced.num_rows == k  # every object in the detector, old and new
        order = np.argsort(forced.column("diaObjectId").to_numpy())
        got = forced.column("psfFlux").to_numpy()[order]
        err = forced.column("psfFluxErr").to_numpy()[order]
        truth = flux[detected][np.argsort(src.column("diaSourceId").to_numpy())] \
            if visit == 1 else flux
        pull = (got - truth) / err
        assert np.all(np.abs(pull) < 5), pull
    stored = apdb.get_dia_forced_sources(None, np.arange(0, 10_000), 0, 1e6)
    assert stored.num_rows == 6 + n
    obj = apdb.get_dia_objects(None, object_ids=[1000]).to_pylist()[0]
    assert obj["r_fpFluxMean"] == pytest.approx(flux[0], rel=0.05)
    apdb.close()


def test_history_for_alerts_reads_12_months(apdb_url):
    apdb = open_apdb(apdb_url, create=True)
    times = 60000.0 + np.array([0.0, 200.0, 355.0, 370.0, 400.0])
    for visit, t in enumerate(times, start=1):
        src = apdb_schema()["DiaSource"].conform({
            "diaSourceId": [visit], "visit": [visit], "detector": np.array([1], np.int16),
            "midpointMjdTai": [t], "ra": [10.0], "dec": [20.0], "x": np.zeros(1, np.float32),
            "y": np.zeros(1, np.float32), "psfNdata": np.zeros(1, np.int32),
            "trailNdata": np.zeros(1, np.int32), "dipoleNdata": np.zeros(1, np.int32),
            "timeProcessedMjdTai": [t], "bboxSize": np.ones(1, np.int32), "band": ["g"],
            "psfFlux": np.ones(1, np.float32), "psfFluxErr": np.ones(1, np.float32)})
        key = IdempotencyKey.make("associate", {"visit": visit, "detector": 1}, "v1")
        associate_unit(apdb, src, key=key, region=SkyCircle(10.0, 20.0, 0.01),
                       forced_photometry=_flat_photometry)
    hist = alert_history(apdb, [1], times[-1])
    # [t - 360 d, t): the sources at +200, +355 and +370 days; not the current one.
    assert hist.prv_dia_sources.column("diaSourceId").to_pylist() == [2, 3, 4]
    assert hist.prv_dia_forced_sources.column("midpointMjdTai").to_pylist() == \
        times[1:4].tolist()
    assert hist.dia_objects.column("nDiaSources").to_pylist() == [5]
    one = hist.for_object(1)
    assert one.prv_dia_sources.num_rows == 3
    apdb.close()


def _bad_unit(survey):
    _sky, units = survey
    return units[0]


def test_bad_input_names_the_id(apdb_url, survey):
    unit = _bad_unit(survey)
    apdb = open_apdb(apdb_url, create=True)
    src = unit.sources
    sid = src.column("diaSourceId").to_numpy()
    ra = src.column("ra").to_numpy().copy()
    ra[3] = np.nan
    with pytest.raises(ApdbInputError, match=rf"DiaSource\.ra is nan for diaSourceId {sid[3]}"):
        associate_unit(apdb, src.set_column(src.column_names.index("ra"), "ra", pa.array(ra)),
                       key=_key(unit), region=unit.region)
    dup = pa.concat_tables([src, src.slice(7, 1)])
    with pytest.raises(ApdbInputError, match=rf"duplicate DiaSource\.diaSourceId {sid[7]}"):
        associate_unit(apdb, dup, key=_key(unit), region=unit.region)
    # Stored by another unit: the store refuses and names the id; nothing is left behind.
    associate_unit(apdb, src, key=_key(unit), region=unit.region)
    before = apdb.checksums()
    other = IdempotencyKey.make("associate", {"visit": 99, "detector": 0}, "v1")
    with pytest.raises(ApdbInputError, match=rf"DiaSource\.diaSourceId {sid[0]} is already stored"):
        associate_unit(apdb, src, key=other, region=unit.region)
    assert apdb.checksums() == before
    # A source the association did not place.
    orphan = src.set_column(src.column_names.index("diaObjectId"), "diaObjectId",
                            pa.nulls(src.num_rows, pa.int64()))
    with pytest.raises(ApdbInputError, match=f"DiaSource {sid[0]} has neither"):
        apdb.store(ApdbWrite(other, 60000.0, dia_sources=orphan))
    with pytest.raises(ApdbInputError, match="allocate_ids: unknown table"):
        apdb.allocate_ids("Nope", 3)
    with pytest.raises(ApdbInputError, match="no DiaSources, so give visit_time"):
        associate_unit(apdb, src.slice(0, 0), key=other, region=unit.region)
    apdb.close()


def test_close_pairs_documented_behaviour():
    """Pairs wider than the χ² gate (5σ of the combined position error) are resolved;
    pairs within it are ambiguous and the cheaper (likelier) assignment wins, one-to-one."""
    rng = np.random.default_rng(8)
    sigma = 0.05 / 3600
    n = 300
    obj_ra = rng.uniform(10, 10.3, n)
    obj_dec = rng.uniform(0, 0.3, n)
    for sep_arcsec, expect_exact in ((1.5, True), (0.6, True), (0.15, False)):
        angle = rng.uniform(0, 2 * np.pi, n)
        ra2 = obj_ra + sep_arcsec / 3600 * np.cos(angle)
        dec2 = obj_dec + sep_arcsec / 3600 * np.sin(angle)
        all_ra, all_dec = np.concatenate([obj_ra, ra2]), np.concatenate([obj_dec, dec2])
        src_ra = all_ra + rng.normal(0, sigma, 2 * n)
        src_dec = all_dec + rng.normal(0, sigma, 2 * n)
        err = np.full(2 * n, sigma)
        res = associate(src_ra, src_dec, err, err, all_ra, all_dec, err, err,
                        AssociationOptions())
        assert (res.match >= 0).all()                     # nobody is left out ...
        assert len(np.unique(res.match)) == 2 * n         # ... and never two to one object
        correct = np.mean(res.match == np.arange(2 * n))
        assert (correct == 1.0) if expect_exact else (0.5 < correct < 1.0)


def _other_database(apdb_url, tmp_path, suffix):
    """A second fresh database on the same backend as ``apdb_url``."""
    if apdb_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/{suffix}.db"
    import psycopg

    with psycopg.connect(apdb_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{apdb_url.rsplit("/", 1)[1]}_{suffix}"')
    return f"{apdb_url}_{suffix}"


def _contents(apdb):
    """Every content table's checksum; DiaForcedSource without its ids (a unit re-run with
    more forced rows than its first run's id block gets a new block)."""
    sums = apdb.checksums([t for t in CONTENT if t != "DiaForcedSource"])
    names = [n for n in apdb_schema()["DiaForcedSource"].names if n != "diaForcedSourceId"]
    forced = apdb.get_dia_forced_sources(SkyCircle(*CENTRE, 1.0), None, 0, 1e6, columns=names)
    rows = [tuple("nan" if v != v else v for v in row.values()) for row in forced.to_pylist()]
    return sums, sorted(rows, key=lambda r: (r[names.index("diaObjectId")],
                                             r[names.index("visit")]))


def _select(url, sql):
    """Rows of a query, read beside the APDB (its versions are not part of its API)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def _assert_consistent(url):
    """One open version per object and contiguous validity intervals; every DiaSource's
    object exists; one forced row per (object, visit, detector)."""
    rows = _select(url, 'SELECT "diaObjectId", "validityStartMjdTai", "validityEndMjdTai" '
                        'FROM "DiaObject" ORDER BY 1, 2')
    pairs = _select(url, 'SELECT "diaObjectId", "visit", "detector" FROM "DiaForcedSource"')
    referenced = {r[0] for r in _select(url, 'SELECT DISTINCT "diaObjectId" FROM "DiaSource"')}
    chains = {}
    for oid, start, end in rows:
        chains.setdefault(oid, []).append((start, end))
    for oid, chain in chains.items():
        assert chain[-1][1] is None, oid
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), (oid, chain)
    assert set(chains) == referenced - {None}
    assert len(pairs) == len(set(pairs))


def test_rerun_of_a_unit_whose_objects_later_units_updated(apdb_url, tmp_path):
    """A unit re-run with new inputs after a later unit updated the objects it created
    (the demo's `touch raw/visit1.fits; jointcal-ap run`): no error, no duplicate, and the
    database equals one where the unit's new inputs were stored first; re-running the later
    unit too gives what running both in time order with the new inputs gives."""
    sky = synthetic_sky(120, centre=CENTRE, size_deg=0.12, seed=3, min_separation_arcsec=10)
    units = synthetic_units(sky, [CENTRE], n_visits=2, detector_size_deg=0.06, seed=4,
                            p_detect=1.0)
    one, two = units[0], units[4]              # detector 0 of visits 1 and 2
    assert one.sources.num_rows > 15 and two.sources.num_rows > 15
    src = one.sources.slice(0, one.sources.num_rows - 1)   # one source fewer ...
    moved = src.column("dec").to_numpy().copy()
    moved[:3] += 3.0 / 3600                                # ... three moved 3" away ...
    src = src.set_column(src.column_names.index("dec"), "dec", pa.array(moved))
    src = src.set_column(src.column_names.index("psfFlux"), "psfFlux",  # ... brighter
                         pc.multiply(src.column("psfFlux"), pa.scalar(1.2, pa.float32())))
    changed = type(one)(one.visit, one.detector, one.band, one.time, one.region, src,
                        one.truth[:-1], one.data_id)

    apdb = open_apdb(apdb_url, create=True)
    _run(apdb, [one])
    first_two = _run(apdb, [two])[0]
    assert first_two.n_matched >= 15            # visit 2 updated the objects visit 1 made
    again = _run(apdb, [changed], identity="v2")[0]
    assert again.stored
    assert again.n_new == src.num_rows         # as before visit 1: nothing to match
    _assert_consistent(apdb_url)
    # The store keeps visit 2's rows as they were written: the database is the one where
    # visit 1's new inputs came first and visit 2's write after them.
    ref = open_apdb(_other_database(apdb_url, tmp_path, "a"), create=True)
    _run(ref, [changed], identity="v2")
    ref.store(ApdbWrite(_key(two), two.time, dia_sources=first_two.dia_sources,
                        dia_forced_sources=first_two.dia_forced_sources))
    assert apdb.checksums(CONTENT) == ref.checksums(CONTENT)
    # Re-running visit 2 as well, in time order, gives the new inputs' own database.
    _run(apdb, [two], identity="v2")
    _assert_consistent(apdb_url)
    fresh = open_apdb(_other_database(apdb_url, tmp_path, "b"), create=True)
    _run(fresh, [changed], identity="v2")
    _run(fresh, [two], identity="v2")
    assert _contents(apdb) == _contents(fresh)
    # The three moved sources are objects of their own: visit 2 no longer joins them.
    ids = changed.sources.column("diaSourceId").to_numpy()[:3]
    assert apdb.get_dia_objects(None, object_ids=ids).column("nDiaSources").to_pylist() == \
        [1, 1, 1]
    for db in (apdb, ref, fresh):
        db.close()
