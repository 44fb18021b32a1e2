"""AP-mode association and store into the APDB, on SQLite and PostgreSQL, against Rubin's
``lsst-dax-apdb`` storing the same rows.

One command: ``python benchmarks/bench_apdb.py`` (``--quick`` for a small run). For each
backend:

1. **Prefill** an APDB with ``--objects`` DiaObjects (default 1,000,000, about 50,000 per
   square degree over a square field), each with one earlier DiaSource, stored in chunks
   through :meth:`SqlApdb.store`. Their ids follow the sky (HEALPix order), as ids handed
   out per (visit, detector) do. ``dax_apdb``'s own database on the same backend gets the
   same objects and sources by a direct bulk insert (its ``pixelId`` computed as it does;
   its ``store`` would take tens of minutes for the prefill on PostgreSQL).
2. **Process** ``--visits`` visits (default 100) × 4 detectors × 2,000 DiaSources (about 90 %
   re-detections of the objects, the rest spurious), the visits cycling over 25 pointings in
   the field. Each unit is timed end to end through :func:`associate_unit` — region read,
   one-to-one association, forced photometry (precomputed fluxes), and the one-transaction
   store that recomputes the summaries and lightcurve features of every touched object —
   and the store alone is timed inside it.
3. **dax_apdb** then stores exactly the rows we stored for that unit (the new DiaObject
   versions, the DiaSources, the DiaForcedSources; DataFrames built before timing) and reads
   the unit's region (``getDiaObjects``), both timed.

``dax_apdb`` runs in its fastest reasonable configuration for this job, chosen by a pilot
on the same data (``--dax-index``): no replication, the default connection pool, reads of
the five columns association needs (``dia_object_columns``), its supported PostgreSQL driver
(``psycopg2``, its ``postgres`` extra), ``dia_object_index`` =
``baseline`` (one DiaObject table; ``last_object_table`` also rewrites DiaObjectLast on
every store and was slower to store here). Both use the same PostgreSQL server (from
``jointcal_ap.services.postgres``; durable: ``fsync`` on, synchronous commit; a 1 GB buffer
cache and ``max_wal_size`` 4 GB, :data:`PG_SETTINGS`) and SQLite files on the same disk.

Writes the section ``apdb`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine_line, write_section

WORK = Path(__file__).parent / "_work" / "apdb"
DENSITY = 50_000.0            # objects per square degree
SOURCES_PER_DETECTOR = 2000
CHUNK = 100_000
N_POINTINGS = 25
#: The server both APDBs share: PostgreSQL's defaults but for a buffer cache that holds the
#: working set (its default is 128 MB) and checkpoints spaced by WAL volume, as a server for
#: a 1M-object APDB would be set up; fsync and synchronous commit stay on.
PG_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "4GB"}


def field_size(n_objects: int) -> float:
    return float(np.sqrt(n_objects / DENSITY))


def pointings(size: float) -> list[tuple[float, float]]:
    side = int(np.sqrt(N_POINTINGS))
    step = size / side
    offsets = (np.arange(side) - (side - 1) / 2) * step
    return [(150.0 + float(x) / np.cos(np.radians(2.0)), 2.0 + float(y))
            for y in offsets for x in offsets]


def spatial_ids(sky):
    """Number the objects along the sky (HEALPix order), as ids handed out per (visit,
    detector) are: objects near each other have nearby ids."""
    from jointcal_ap.apdb.pixels import healpix29
    from jointcal_ap.apdb.synthetic import SyntheticSky

    order = np.argsort(healpix29(sky.ra, sky.dec), kind="stable")
    return SyntheticSky(sky.id, sky.ra[order], sky.dec[order], sky.flux[order],
                        sky.amplitude[order], sky.period[order])


def prefill_tables(sky, start: int, stop: int):
    """One earlier DiaSource per object (visit 0), as a DiaSource table."""
    from jointcal_ap.schemas import apdb_schema

    n = stop - start
    rng = np.random.default_rng(start)
    sig = 0.05 / 3600
    flux = sky.flux[start:stop]
    cols = {
        "diaSourceId": sky.id[start:stop], "diaObjectId": sky.id[start:stop],
        "visit": np.zeros(n, np.int64), "detector": np.zeros(n, np.int16),
        "midpointMjdTai": np.full(n, 59970.0),
        "ra": sky.ra[start:stop] + rng.normal(0, sig, n), "dec": sky.dec[start:stop]
        + rng.normal(0, sig, n), "raErr": np.full(n, sig, np.float32),
        "decErr": np.full(n, sig, np.float32), "x": np.zeros(n, np.float32),
        "y": np.zeros(n, np.float32), "psfFlux": flux.astype(np.float32),
        "psfFluxErr": (0.02 * flux + 50).astype(np.float32), "psfNdata": np.zeros(n, np.int32),
        "trailNdata": np.zeros(n, np.int32), "dipoleNdata": np.zeros(n, np.int32),
        "band": np.full(n, "r", object), "timeProcessedMjdTai": np.full(n, 59970.5),
        "bboxSize": np.full(n, 15, np.int32)}
    return apdb_schema()["DiaSource"].conform(cols)


def bulk_fill(url: str, name: str, table) -> None:
    """Prefill one of dax_apdb's tables directly (its ``pixelId`` computed as it does): the
    prefill is not what is measured, and dax_apdb's own store takes minutes per 100k rows
    on PostgreSQL."""
    import io

    import pyarrow.csv as pacsv

    from jointcal_ap.apdb.htm import htm_index

    ra, dec = (np.asarray(table.column(c).to_numpy(), float) for c in ("ra", "dec"))
    table = table.append_column("pixelId", pa.array(htm_index(ra, dec)))
    table = table.select([n for n, c in zip(table.column_names, table.columns, strict=True)
                          if c.null_count < table.num_rows])
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.split("///", 1)[1])
        rows = list(zip(*[c.to_pylist() for c in table.columns], strict=True))
        conn.executemany(f'INSERT INTO "{name}" ({cols}) VALUES '
                         f'({", ".join("?" * table.num_columns)})', rows)
        conn.commit()
        conn.close()
        return
    import psycopg

    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    with psycopg.connect(url) as conn, conn.cursor() as cur, \
            cur.copy(f'COPY "{name}" ({cols}) FROM STDIN WITH (FORMAT csv)') as copy:
        copy.write(sink.getvalue())


def dax_frames(objects, sources, forced):
    """pandas DataFrames for dax_apdb (built outside the timed region)."""
    objects = objects.drop_columns([c for c in ("validityStartMjdTai", "validityEndMjdTai")
                                    if c in objects.column_names])
    out = [objects.to_pandas(), sources.to_pandas()]
    out.append(forced.to_pandas() if forced is not None else None)
    return out


def open_dax(url: str, index: str, create: bool):
    from lsst.dax.apdb.sql import ApdbSql, ApdbSqlConfig

    # psycopg2: dax_apdb's own PostgreSQL driver (with psycopg 3 its pandas inserts of an
    # all-NULL validityEnd column fail on a type mismatch).
    dax_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    if create:
        ApdbSql.init_database(dax_url, dia_object_index=index)
    config = ApdbSqlConfig(db_url=dax_url, dia_object_index=index,
                           dia_object_columns=["diaObjectId", "ra", "dec", "raErr", "decErr"])
    return ApdbSql(config)


def run_backend(name: str, our_url: str, dax_url: str, sky, units, args, log) -> dict:
    import astropy.time
    import lsst.sphgeom as sg
    from tqdm import tqdm

    from jointcal_ap.apdb import dia_object_summaries, open_apdb
    from jointcal_ap.apdb.ap import associate_unit, expand_region
    from jointcal_ap.apdb.sql import SqlApdb
    from jointcal_ap.apdb.summaries import SOURCE_COLUMNS
    from jointcal_ap.schemas import apdb_schema
    from jointcal_ap.stages.interfaces import ApdbWrite, IdempotencyKey

    apdb = open_apdb(our_url, create=True)
    dax = open_dax(dax_url, args.dax_index, create=True)
    obj_schema = apdb_schema()["DiaObject"]
    t_pre = {"ours": 0.0, "dax": 0.0}
    n = len(sky.id)
    for start in tqdm(range(0, n, CHUNK), desc=f"{name} prefill", file=sys.stderr,
                      disable=args.no_progress, ascii=True):
        stop = min(n, start + CHUNK)
        table = prefill_tables(sky, start, stop)
        key = IdempotencyKey.make("prefill", {"chunk": start // CHUNK}, "v1")
        t0 = time.perf_counter()
        apdb.store(ApdbWrite(key, 59970.0, dia_sources=table))
        t_pre["ours"] += time.perf_counter() - t0
        cols = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False))
                for c in SOURCE_COLUMNS}
        summary = dia_object_summaries(sky.id[start:stop], cols)
        objects = obj_schema.conform({"diaObjectId": sky.id[start:stop],
                                      "validityStartMjdTai": np.full(stop - start, 59970.0),
                                      **summary})
        t0 = time.perf_counter()
        bulk_fill(dax_url, "DiaObject", objects)
        bulk_fill(dax_url, "DiaSource", table)
        t_pre["dax"] += time.perf_counter() - t0
    log(f"{name}: prefill {n} objects: ours {t_pre['ours']:.1f} s (through store), dax_apdb "
        f"{t_pre['dax']:.1f} s (bulk insert)")

    def photometry(positions):
        """Precomputed fluxes: forced photometry itself is not what is timed here."""
        ids = positions.column("diaObjectId").to_numpy()
        return {"psfFlux": (ids % 1000).astype(float), "psfFluxErr": np.full(len(ids), 50.0)}

    store_times: list[float] = []
    store = SqlApdb.store_unit

    def timed_store(self, write):
        t0 = time.perf_counter()
        try:
            return store(self, write)
        finally:
            store_times.append(time.perf_counter() - t0)

    SqlApdb.store_unit = timed_store
    rows = []
    try:
        for unit in tqdm(units, desc=f"{name} units", file=sys.stderr, disable=args.no_progress,
                         ascii=True):
            key = IdempotencyKey.make("associate", unit.data_id, "v1")
            t0, c0 = time.perf_counter(), time.process_time()
            result = associate_unit(apdb, unit.sources, key=key, region=unit.region,
                                    forced_photometry=photometry)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            frames = dax_frames(result.dia_objects, result.dia_sources, result.dia_forced_sources)
            visit_time = astropy.time.Time(unit.time, format="mjd", scale="tai")
            circle = expand_region(unit.region, 2.0 / 3600)
            region = sg.Circle(sg.UnitVector3d(sg.LonLat.fromDegrees(circle.ra, circle.dec)),
                               sg.Angle.fromDegrees(circle.radius))
            t0 = time.perf_counter()
            dax_objects = dax.getDiaObjects(region)
            t_dax_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            dax.store(visit_time, *frames)
            t_dax_store = time.perf_counter() - t0
            t0 = time.perf_counter()
            ours = apdb.get_dia_objects(circle, columns=["diaObjectId", "ra", "dec", "raErr",
                                                         "decErr"])
            t_our_read = time.perf_counter() - t0
            rows.append({"total": total, "cpu": cpu, "store": store_times[-1], "read": t_our_read,
                         "dax_store": t_dax_store, "dax_read": t_dax_read,
                         "n_src": unit.sources.num_rows, "n_new": result.n_new,
                         "n_forced": result.dia_forced_sources.num_rows,
                         "n_read": ours.num_rows, "dax_n_read": len(dax_objects)})
    finally:
        SqlApdb.store_unit = store
    counts = apdb.counts()
    apdb.close()
    dax._engine.dispose()  # ApdbSql has no close()
    return {"prefill": t_pre, "units": rows, "counts": counts}


def ap_versus_drp(log) -> str:
    """AP and DRP association of the same DiaSources against the truth: a markdown table."""
    from jointcal_ap.apdb import open_apdb
    from jointcal_ap.apdb.ap import associate_unit
    from jointcal_ap.apdb.drp import compare_associations, drp_associate
    from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
    from jointcal_ap.stages.interfaces import IdempotencyKey

    lines = ["| close pairs at | method | objects | truth objects kept whole | split | merged |",
             "|---|---|---|---|---|---|"]
    for sep in (0.3, 0.6, 1.0, 2.0):
        sky = synthetic_sky(2000, centre=(150.0, 2.0), size_deg=0.42, seed=7, n_pairs=400,
                            pair_separation_arcsec=sep, min_separation_arcsec=5)
        units = synthetic_units(sky, [(150.0, 2.0)], n_visits=10, p_detect=0.8,
                                spurious_per_detector=20, seed=8)
        truth = np.concatenate([u.truth for u in units])
        sources = pa.concat_tables([u.sources for u in units])
        path = WORK / f"ap_{sep}.db"
        apdb = open_apdb(f"sqlite:///{path}", create=True, features=False)
        ap = np.concatenate([associate_unit(
            apdb, u.sources, key=IdempotencyKey.make("associate", u.data_id, "v1"),
            region=u.region).dia_sources.column("diaObjectId").to_numpy() for u in units])
        apdb.close()
        drp = drp_associate(sources, n_workers=2).column("diaObjectId").to_numpy()
        real = truth >= 0
        for name, labels in (("AP", ap), ("DRP", drp)):
            stats = compare_associations(truth[real], labels[real])
            lines.append(f"| {sep}\" | {name} | {len(np.unique(labels))} | "
                         f"{stats['identical']} of {stats['objects_a']} | {stats['split']} | "
                         f"{stats['merged']} |")
        log(f"pairs at {sep}\": AP vs DRP {compare_associations(ap, drp)}")
    return "\n".join(lines)


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def p90(rows, key):
    return float(np.percentile([r[key] for r in rows], 90))


def main(argv=None) -> int:
    from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
    from jointcal_ap.services.postgres import postgres_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--visits", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="100k objects, 12 visits")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--dax-index", default="baseline",
                        choices=["baseline", "last_object_table", "pix_id_iov"])
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.objects, args.visits = 100_000, 12
    warnings.filterwarnings("ignore", category=UserWarning)
    load_start = os.getloadavg()
    size = field_size(args.objects)
    sky = spatial_ids(synthetic_sky(args.objects, centre=(150.0, 2.0), size_deg=size, seed=1))
    units = synthetic_units(sky, pointings(size), n_visits=args.visits, detector_size_deg=0.2,
                            sources_per_detector=SOURCES_PER_DETECTOR, p_detect=0.9,
                            first_visit=1, seed=2)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, file=sys.stderr)
        lines.append(text)

    results = {}
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    backends = args.backends.split(",")
    if "sqlite" in backends:
        results["SQLite"] = run_backend("sqlite", f"sqlite:///{WORK}/ours.db",
                                        f"sqlite:///{WORK}/dax.db", sky, units, args, log)
    if "postgresql" in backends:
        with postgres_server(settings=PG_SETTINGS) as server:
            results["PostgreSQL"] = run_backend(
                "postgresql", server.create_database("ours"), server.create_database("dax"),
                sky, units, args, log)
    comparison = ap_versus_drp(log)
    shutil.rmtree(WORK, ignore_errors=True)
    load_end = os.getloadavg()
    table = ["| backend | ours: associate + store per unit (median / p90) | its CPU in this "
             "process | ours: store | ours: region read | dax_apdb: store | dax_apdb: region "
             "read | ours store+read vs dax store+read |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        rows = res["units"]
        ours_sr = median(rows, "store") + median(rows, "read")
        dax_sr = median(rows, "dax_store") + median(rows, "dax_read")
        table.append(
            f"| {name} | {median(rows, 'total'):.3f} s / {p90(rows, 'total'):.3f} s | "
            f"{median(rows, 'cpu'):.3f} s | {median(rows, 'store'):.3f} s | {median(rows, 'read'):.3f} s | "
            f"{median(rows, 'dax_store'):.3f} s | {median(rows, 'dax_read'):.3f} s | "
            f"{dax_sr / ours_sr:.2f}× faster |")
    some = next(iter(results.values()))["units"]
    md = f"""## APDB: AP-mode association and store (`benchmarks/bench_apdb.py`)

Command: `flock /work/bench.lock python benchmarks/bench_apdb.py{' --quick' if args.quick else ''}`
({machine_line()}; load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end;
the machine was shared).

APDB prefilled with {args.objects:,} DiaObjects (one earlier DiaSource each, {DENSITY:,.0f} per
square degree), then {args.visits} visits × 4 detectors × {SOURCES_PER_DETECTOR:,} DiaSources
({len(units)} units; per unit a median of {median(some, 'n_new'):.0f} new objects,
{median(some, 'n_forced'):.0f} forced measurements, {median(some, 'n_read'):.0f} objects read in
the region with its margin). Wall-clock times per unit (and the CPU time of this process for
the whole unit: on a shared machine the wall clock includes waiting for a core; on
PostgreSQL the server's CPU is not in it); "store" is the one transaction (DiaSources,
DiaForcedSources, new DiaObject versions with summaries and features recomputed from the
stored history). `lsst-dax-apdb` stores exactly the same rows (it computes no summaries) in
its fastest configuration here (`dia_object_index={args.dax_index}`, five columns read,
its `psycopg2` driver). One PostgreSQL server for both (fsync and synchronous commit on,
`shared_buffers` 1 GB, `max_wal_size` 4 GB); SQLite files on the same disk.

{chr(10).join(table)}

Prefill through our store (summaries and features of every object computed):
{'; '.join(f"{k} {v['prefill']['ours']:.0f} s" for k, v in results.items())}. dax_apdb's
database gets the same objects and sources by a direct bulk insert (not timed against us).

Goal: under 0.3 s per unit of 2,000 sources against 1M DiaObjects; faster than dax_apdb on
the same backend.

### AP mode against DRP mode on the same DiaSources

2,000 objects (400 of them the second member of a close pair), 10 visits × 4 detectors,
80 % detection probability, 20 spurious sources per detector, 0.05" position errors; AP mode
unit by unit in time order, DRP mode all at once on a 2-worker LocalCluster. "Kept whole":
true objects whose sources all went to one object holding no other true object's source.

{comparison}
"""
    print(md)
    if not args.no_write:
        write_section("apdb", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
