"""Faults and concurrency on SQLite and PostgreSQL: a process SIGKILLed in the middle of a
store leaves the database as it was; parallel writers on a Dask LocalCluster lose nothing
and duplicate nothing; ids allocated in parallel never collide."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import cloudpickle
import numpy as np
import pyarrow.parquet as pq
import pytest

from jointcal_ap.apdb import open_apdb
from jointcal_ap.apdb.ap import associate_unit
from jointcal_ap.apdb.summaries import SUMMARY_COLUMNS
from jointcal_ap.apdb.synthetic import synthetic_sky, synthetic_units
from jointcal_ap.stages.interfaces import ApdbWrite, IdempotencyKey, SkyCircle

# The Dask workers receive this module's functions by value (tests/ is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CENTRE = (150.0, 2.0)


@pytest.fixture(scope="module")
def units():
    sky = synthetic_sky(300, centre=CENTRE, size_deg=0.42, seed=21, min_separation_arcsec=6)
    return synthetic_units(sky, [CENTRE], n_visits=2, seed=22, spurious_per_detector=5)


def _key(unit, identity="v1"):
    return IdempotencyKey.make("associate", unit.data_id, identity)


KILLER = textwrap.dedent("""\
    import sys, time
    import pyarrow.parquet as pq
    from jointcal_ap.apdb import open_apdb
    from jointcal_ap.apdb.ap import associate_unit
    from jointcal_ap.apdb.sql import SqlApdb
    from jointcal_ap.stages.interfaces import IdempotencyKey, SkyPolygon

    url, path, vertices = sys.argv[1], sys.argv[2], eval(sys.argv[3])
    insert = SqlApdb._insert_rows

    def insert_then_hang(self, conn, table, data):
        insert(self, conn, table, data)
        if table == "DiaSource":
            print("INSERTED", flush=True)   # the rows are in, the transaction is open
            time.sleep(120)

    SqlApdb._insert_rows = insert_then_hang
    apdb = open_apdb(url)
    key = IdempotencyKey.make("associate", {"instrument": "synthetic", "visit": 2,
                                            "detector": 3}, "v1")
    associate_unit(apdb, pq.read_table(path), key=key, region=SkyPolygon(vertices))
    print("COMMITTED", flush=True)
    """)


def test_a_process_killed_mid_store_leaves_nothing(apdb_url, units, tmp_path):
    apdb = open_apdb(apdb_url, create=True)
    for unit in units[:-1]:
        associate_unit(apdb, unit.sources, key=_key(unit), region=unit.region)
    before = apdb.checksums()
    counts = apdb.counts()
    last = units[-1]
    pq.write_table(last.sources, tmp_path / "unit.parquet")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.Popen([sys.executable, str(script), apdb_url, str(tmp_path / "unit.parquet"),
                             repr(last.region.vertices)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "INSERTED", line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # Reopen (a fresh process's view): exactly as before the unit, and writable again.
    apdb.close()
    apdb = open_apdb(apdb_url)
    assert apdb.checksums() == before
    assert apdb.counts() == counts
    assert apdb.unit_token(_key(last).unit) is None
    result = associate_unit(apdb, last.sources, key=_key(last), region=last.region)
    assert result.stored
    assert apdb.counts()["DiaSource"] == counts["DiaSource"] + last.sources.num_rows
    apdb.close()


def _store(url, key, time, sources, forced):
    apdb = open_apdb(url)
    try:
        return apdb.store(ApdbWrite(key, time, dia_sources=sources, dia_forced_sources=forced))
    finally:
        apdb.close()


def _allocate(url, count):
    apdb = open_apdb(url)
    try:
        return apdb.allocate_ids("DiaSource", count)
    finally:
        apdb.close()


def _current(apdb):
    table = apdb.get_dia_objects(SkyCircle(*CENTRE, 1.0))
    keep = ["diaObjectId", "validityStartMjdTai",
            *[c for c in SUMMARY_COLUMNS if "_fpFlux" not in c]]
    return table.select(keep).to_pylist()


def test_parallel_writers_lose_nothing(apdb_url, units, tmp_path, local_dask_client):
    """The same writes stored sequentially and by two processes at once, in shuffled order,
    with every unit submitted twice: same sources, same current objects, no duplicates."""

    def photometry(positions):
        ids = positions.column("diaObjectId").to_numpy()
        return {"psfFlux": (ids % 89).astype(float), "psfFluxErr": np.full(len(ids), 3.0)}

    reference = open_apdb(f"sqlite:///{tmp_path}/reference.db", create=True)
    writes = []
    for unit in units:
        result = associate_unit(reference, unit.sources, key=_key(unit), region=unit.region,
                                forced_photometry=photometry)
        writes.append((_key(unit), unit.time, result.dia_sources, result.dia_forced_sources))
    apdb = open_apdb(apdb_url, create=True)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(writes) * 2) % len(writes)
    futures = [local_dask_client.submit(_store, apdb_url, *writes[i], pure=False) for i in order]
    futures += [local_dask_client.submit(_allocate, apdb_url, 500, pure=False) for _ in range(6)]
    results = local_dask_client.gather(futures)
    stored = np.array(results[:len(order)])
    # Each unit was stored exactly once; its twin saw it done.
    assert sorted(np.asarray(order)[stored].tolist()) == list(range(len(writes)))
    tables = ("DiaSource", "DiaForcedSource", "DiaObjectFeatures", "apdb_unit")
    assert apdb.checksums(tables) == reference.checksums(tables)
    assert _current(apdb) == _current(reference)
    counts = apdb.counts()
    assert counts["DiaSource"] == sum(w[2].num_rows for w in writes)
    blocks = np.concatenate(results[len(order):])
    assert len(np.unique(blocks)) == len(blocks) == 3000
    assert not np.isin(blocks, np.concatenate([w[2].column("diaSourceId").to_numpy()
                                               for w in writes])).any()
    apdb.close()
    reference.close()
