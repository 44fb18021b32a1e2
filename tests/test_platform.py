"""The platform under alert production: the visit registry and its dimension queries, the
dataset store, gather stages and ordered stages (overlapping units in time order), lookups
across units, and side effects
that can be repeated safely (killed after the effect, re-run: exactly one effect)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from jointcal_ap.stages import (
    GatherStage,
    In,
    OrderedStage,
    Out,
    Pipeline,
    Stage,
    Unit,
    get_plugin_manager,
    hookimpl,
    option,
    run_pipeline,
)
from jointcal_ap.stages.datasets import ARRAY, JSON
from jointcal_ap.stages.interfaces import Apdb, ApdbWrite
from jointcal_ap.stages.runner import prepare_run
from jointcal_ap.store import DataId
from jointcal_ap.store.registry import DetectorRecord, RegistryError, VisitRecord
from jointcal_ap.store.repository import Repository
from test_stages import MakeImage, write_seeds

# ----------------------------------------------------------------------------- test plugins


class LedgerApdb:
    """A tiny APDB on a real SQLite file: one row per unit, idempotent by key; it logs every
    open and close with the process id."""

    schema_version = "ledger-1"

    def __init__(self, path: str):
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("create table if not exists effects (unit text primary key, "
                          "identity text, stores integer)")
        self.conn.execute("create table if not exists life (pid integer, event text)")
        self.conn.execute("insert into life values (?, 'open')", (os.getpid(),))

    def store(self, write: ApdbWrite) -> bool:
        with self.conn:
            row = self.conn.execute("select identity from effects where unit = ?",
                                    (write.key.unit,)).fetchone()
            if row is not None and row[0] == write.key.input_identity:
                return False
            self.conn.execute("insert or replace into effects values (?, ?, "
                              "coalesce((select stores from effects where unit = ?), 0) + 1)",
                              (write.key.unit, write.key.input_identity, write.key.unit))
        return True

    def get_dia_objects(self, region: Any) -> Any:
        return []

    def get_dia_sources(self, region: Any, object_ids: Any, start: float, end: float) -> Any:
        return []

    def get_dia_forced_sources(self, region: Any, object_ids: Any, start: float, end: float
                               ) -> Any:
        return []

    def allocate_ids(self, table: str, count: int) -> Any:
        return np.arange(count)

    def close(self) -> None:
        self.conn.execute("insert into life values (?, 'close')", (os.getpid(),))
        self.conn.close()


class StoreOnce(Stage):
    """Stores one effect for its unit in the ledger, then (first time only) kills its worker."""

    name = "store_once"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"receipt": "Json"}

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        url: str = option("", doc="ledger:// URL")
        die_dir: str = option("", doc="kill the worker after the effect unless a marker is here")

    def run(self, unit: Any, image: np.ndarray) -> dict[str, Any]:
        apdb = self.context.apdb(self.options.url)
        stored = apdb.store(ApdbWrite(self.context.key, 60000.0))
        if self.options.die_dir:
            marker = Path(self.options.die_dir) / unit.key
            if not marker.exists():
                marker.touch()
                os._exit(1)  # killed after the side effect, before the unit completes
        return {"receipt": {"stored": stored, "unit": self.context.key.unit}}


class SumAll(GatherStage):
    """Sums every unit's image; each unit's share of the total."""

    name = "sum_all"
    version = "1"
    inputs: ClassVar[dict[str, Any]] = {"image": In("Array", lookup="all")}
    outputs: ClassVar[dict[str, Any]] = {"total": "Json", "share": Out("Json", per_unit=True)}

    def run(self, units: Any, image: Any) -> dict[str, Any]:
        sums = {u: float(np.abs(image[u].get()).sum()) for u in units}
        total = sum(sums.values())
        return {"total": {"sum": total, "units": [u.key for u in units]},
                "share": {u: {"fraction": s / total} for u, s in sums.items()}}


class UseTotal(Stage):
    """Per unit, after the gather: reads its own share and the whole-run total."""

    name = "use_total"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"share": "Json", "total": "Json"}
    outputs: ClassVar[dict[str, str]] = {"check": "Json"}

    def run(self, unit: Any, share: dict, total: dict) -> dict[str, Any]:
        return {"check": {"unit": unit.key, "part": share["fraction"] * total["sum"]}}


class OrderProbe(OrderedStage):
    """Records where and when each unit ran (start and end), and its visit's time from the
    registry; fails on the visit given by ``fail_visit``."""

    name = "order_probe"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"probe": "Json"}

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        fail_visit: int = option(0, doc="raise on this visit (0: never)")

    def run(self, unit: Any, image: np.ndarray) -> dict[str, Any]:
        start = time.perf_counter_ns()
        if unit.visit == self.options.fail_visit:
            raise RuntimeError(f"order_probe fails on visit {unit.visit}")
        time.sleep(0.2)
        return {"probe": {"pid": os.getpid(), "start": start, "end": time.perf_counter_ns(),
                          "mjd": self.context.visit(unit.visit).mjd_tai}}


class Earlier(Stage):
    """Lists the datasets of earlier overlapping visits it was given."""

    name = "earlier"
    version = "1"
    inputs: ClassVar[dict[str, Any]] = {"image": In("Array", lookup="overlapping", before=True)}
    outputs: ClassVar[dict[str, str]] = {"seen": "Json"}

    def run(self, unit: Any, image: Any) -> dict[str, Any]:
        return {"seen": {"units": sorted(d.key for d in image),
                         "sums": [float(h.get().sum()) for h in image.values()],
                         "mjds": sorted(self.context.visit(d.visit).mjd_tai for d in image)}}


class PlatformPlugin:
    """The test stages and the ledger APDB (rebuilt by import in Dask workers)."""

    @hookimpl
    def jointcal_ap_register_stages(self, registry) -> None:
        for stage in (MakeImage, StoreOnce, SumAll, UseTotal, OrderProbe, Earlier):
            registry.add_stage(stage)

    @hookimpl
    def jointcal_ap_get_apdb(self, url: str) -> Apdb | None:
        return LedgerApdb(url.removeprefix("ledger://")) if url.startswith("ledger://") else None


def manager():
    return get_plugin_manager(plugins=[("platform", PlatformPlugin())])


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster:
        yield cluster.scheduler_address


# ----------------------------------------------------------------------------- registry + store


def _registry_with_two_regions(root: Path) -> Repository:
    """Visits 1-4 (out of time order) in band r, visit 5 in g; detector 0 of every visit
    near (10, 0), detector 1 near (60, 30): two sky tiles."""
    repo = Repository(root)
    mjds = {1: 60003.0, 2: 60001.0, 3: 60004.0, 4: 60002.0, 5: 60000.5}
    for visit, mjd in mjds.items():
        repo.registry.add_visit(VisitRecord(visit, mjd, 10.0, 0.0, "g" if visit == 5 else "r",
                                            30.0))
        repo.registry.add_detectors([DetectorRecord.from_centre(visit, 0, 10.0 + 0.01 * visit,
                                                                0.0, 0.1),
                                     DetectorRecord.from_centre(visit, 1, 60.0, 30.0, 0.1)])
    return repo


def test_registry_answers_dimension_queries(tmp_path):
    with _registry_with_two_regions(tmp_path / "repo") as repo:
        reg = repo.registry
        assert [v.visit for v in reg.visits()] == [5, 2, 4, 1, 3]  # by time
        assert [v.visit for v in reg.visits(band="r", before_mjd=60003.0)] == [2, 4]
        assert reg.visit(3).mjd_tai == 60004.0
        with pytest.raises(RegistryError, match="no visit 9"):
            reg.visit(9)
        # all calexps overlapping this detector before this MJD (in its band)
        before = reg.overlapping(3, 0, before_mjd=60004.0, band="r")
        assert sorted((d.visit, d.detector) for d in before) == [(1, 0), (2, 0), (4, 0)]
        assert sorted((d.visit, d.detector) for d in reg.overlapping(3, 1)) == [
            (1, 1), (2, 1), (4, 1), (5, 1)]
        assert reg.overlapping(2, 0, before_mjd=60001.0, band="r") == []
        far = DetectorRecord.from_centre(6, 0, 10.5, 0.0, 0.1)  # same tile, no overlap
        reg.add_visit(VisitRecord(6, 59000.0, 10.5, 0.0, "r"))
        reg.add_detector(far)
        assert (6, 0) not in {(d.visit, d.detector) for d in reg.overlapping(3, 0)}


def test_store_round_trip_with_provenance(tmp_path):
    with Repository(tmp_path / "repo") as repo:
        image = np.arange(12.0).reshape(3, 4)
        ref = repo.put(image, "image", ARRAY, DataId(visit=3, detector=1),
                       provenance={"stage": {"name": "make"}, "inputs": {"seed": "s.json"}})
        assert ref.path == "units/visit3_det1/image.npy" and ref.identity["size"] > 0
        np.testing.assert_array_equal(repo.get("image", {"visit": 3, "detector": 1}, ARRAY), image)
        prov = json.loads((repo.root / "units/visit3_det1/image.provenance.json").read_text())
        assert prov["stage"] == {"name": "make"} and prov["unit"] == {"visit": 3, "detector": 1}
        assert prov["type"] == "Array" and prov["file"] == "image.npy"
        repo.put({"n": 1}, "summary", JSON, DataId())
        assert (repo.root / "summary.json").exists()
        assert [r.data_id for r in repo.query("image", visit=[2, 3])] == [DataId(visit=3,
                                                                                 detector=1)]
        assert repo.query("image", detector=0) == []
        with pytest.raises(LookupError, match="no dataset 'image' with data ID visit9_det1"):
            repo.get("image", {"visit": 9, "detector": 1}, ARRAY)
        with pytest.raises(TypeError, match="is a Array, not a Json"):
            repo.get("image", {"visit": 3, "detector": 1}, JSON)
    # a second process (here: a second Repository) sees the same registry
    with Repository(tmp_path / "repo") as again:
        assert again.find("summary", {}).type == "Json"


# ----------------------------------------------------------------------------- stage kinds


def _pipeline(template: str, stages: list[dict]) -> Pipeline:
    return Pipeline.from_dict({"pipeline": {"name": "platform"}, "inputs": {"seed": template},
                               "stages": stages}, source="platform.toml")


def test_gather_stage_between_per_unit_stages(tmp_path, dask_address):
    units = [Unit(v, d) for v in (1, 2) for d in (0, 1)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "sum_all"},
                                    {"name": "use_total"}])
    resolved = prepare_run(pipeline, plugin_manager=manager())
    assert [(s.kind, s.label) for s in resolved.segments] == [
        ("unit", "make_image"), ("gather", "sum_all"), ("unit", "use_total")]
    out = tmp_path / "out"
    kwargs = {"output": out, "dask_address": dask_address, "plugin_manager": manager(),
              "progress": False}
    summary = run_pipeline(pipeline, units, **kwargs)
    assert summary.ok and summary.done == 4, summary.format()
    total = json.loads((out / "total.json").read_text())
    assert total["units"] == ["visit1_det0", "visit1_det1", "visit2_det0", "visit2_det1"]
    parts = [json.loads((out / "units" / k / "check.json").read_text())["part"]
             for k in total["units"]]
    assert sum(parts) == pytest.approx(total["sum"], rel=1e-12)
    expected = sum(float(np.abs(np.load(out / "units" / k / "image.npy")).sum())
                   for k in total["units"])
    assert total["sum"] == pytest.approx(expected, rel=1e-12)
    assert run_pipeline(pipeline, units, **kwargs).skipped == 4
    # one changed input: its unit, the gather, and every unit after the gather are redone
    seed = Path(template.format(visit=2, detector=1))
    seed.write_text(json.dumps({"seed": 99}))
    os.utime(seed, ns=(0, seed.stat().st_mtime_ns + 10**9))
    stamp = (out / "units" / "visit1_det0" / "image.npy").stat().st_mtime_ns
    redo = run_pipeline(pipeline, units, **kwargs)
    assert redo.ok and redo.done == 4
    assert (out / "units" / "visit1_det0" / "image.npy").stat().st_mtime_ns == stamp
    assert json.loads((out / "total.json").read_text())["sum"] != total["sum"]


def test_gather_stage_must_read_other_units_through_a_lookup(tmp_path):
    class Wrong(GatherStage):
        name = "wrong_gather"
        version = "1"
        inputs: ClassVar[dict[str, str]] = {"image": "Array"}
        outputs: ClassVar[dict[str, str]] = {"total": "Json"}

        def run(self, units: Any, image: Any) -> dict[str, Any]:
            return {"total": {}}

    class Plugin:
        @hookimpl
        def jointcal_ap_register_stages(self, registry) -> None:
            registry.add_stage(Wrong)

    pm = get_plugin_manager(plugins=[("platform", PlatformPlugin()), ("wrong", Plugin())])
    from jointcal_ap.stages import PipelineError

    with pytest.raises(PipelineError, match=r"gather stage 'wrong_gather' reads 'image' on port "
                                            r"'image' as one value.*lookup=\"all\""):
        prepare_run(_pipeline("s_{visit}_{detector}", [{"name": "make_image"},
                                                       {"name": "wrong_gather"}]),
                    plugin_manager=pm)


def _probes(out: Path, units) -> dict[tuple[int, int], dict]:
    return {(u.visit, u.detector): json.loads((out / "units" / u.key / "probe.json").read_text())
            for u in units if (out / "units" / u.key / "probe.json").exists()}


def _assert_in_time_order(probes: dict, keys) -> None:
    """The units ``keys`` ran one after the other (no two at once), in the order of MJD."""
    ran = sorted((probes[k]["start"], probes[k]["end"], probes[k]["mjd"]) for k in keys)
    assert [m for _, _, m in ran] == sorted(m for _, _, m in ran), ran
    assert all(end <= nxt for (_, end, _), (nxt, _, _) in itertools.pairwise(ran)), ran


def test_ordered_stage_runs_overlapping_units_in_time_order_the_rest_in_parallel(
        tmp_path, dask_address):
    out = tmp_path / "out"
    _registry_with_two_regions(out).close()
    units = [Unit(v, d) for v in (1, 2, 3, 4) for d in (0, 1)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "order_probe"}])
    resolved = prepare_run(pipeline, plugin_manager=manager())
    assert [s.kind for s in resolved.segments] == ["unit", "ordered"]
    summary = run_pipeline(pipeline, units, output=out, dask_address=dask_address,
                           plugin_manager=manager(), progress=False)
    assert summary.ok, summary.format()
    probes = _probes(out, units)
    for detector in (0, 1):  # the two detectors are far apart: two independent chains
        _assert_in_time_order(probes, [(v, detector) for v in (1, 2, 3, 4)])
        assert [v for _, v in sorted((probes[(v, detector)]["start"], v)
                                     for v in (1, 2, 3, 4))] == [2, 4, 1, 3]
    # the chains are not one task each: 8 units of 0.2 s on 2 workers overlap in time
    spans = sorted((p["start"], p["end"]) for p in probes.values())
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_ordered_stage_orders_detectors_across_a_tile_border(tmp_path, dask_address):
    """Detectors dithered across a sky-tile border overlap each other: every unit waits for
    the earlier ones whatever their tile (the defect: each tile ran its own chain)."""
    from jointcal_ap.store.dimensions import tile_of

    out = tmp_path / "out"
    repo = Repository(out)
    # a tile border near (45, 0) at order 6: find it by bisection in RA
    lo, hi = 44.0, 46.0
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tile_of(mid, 0.0) == tile_of(lo, 0.0) else (lo, mid)
    border = 0.5 * (lo + hi)
    # visits alternate sides of the border (dither 10"), detectors 60" across
    mjds = {1: 60001.0, 2: 60002.0, 3: 60003.0, 4: 60004.0, 5: 60005.0, 6: 60006.0}
    for visit, mjd in mjds.items():
        ra = border + (5.0 if visit % 2 else -5.0) / 3600.0
        repo.registry.add_visit(VisitRecord(visit, mjd, ra, 0.0, "r", 30.0))
        repo.registry.add_detectors([DetectorRecord.from_centre(visit, 0, ra, 0.0, 30 / 3600)])
    repo.close()
    assert len({tile_of(border + d / 3600.0, 0.0) for d in (5.0, -5.0)}) == 2
    units = [Unit(v, 0) for v in mjds]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "order_probe"}])
    summary = run_pipeline(pipeline, units, output=out, dask_address=dask_address,
                           plugin_manager=manager(), progress=False)
    assert summary.ok, summary.format()
    _assert_in_time_order(_probes(out, units), [(v, 0) for v in mjds])


def test_a_failed_ordered_unit_stops_only_the_later_units_that_overlap_it(tmp_path):
    out = tmp_path / "out"
    _registry_with_two_regions(out).close()
    units = [Unit(v, d) for v in (1, 2, 3, 4) for d in (0, 1)]
    template = write_seeds(tmp_path / "in", units)
    steps = [{"name": "make_image"}, {"name": "order_probe", "options": {"fail_visit": 4}}]
    # visit 4 is the second in time (2, 4, 1, 3): on detector 0 and detector 1 it fails;
    # visits 1 and 3 after it are not run; visit 2 before it is done
    summary = run_pipeline(_pipeline(template, steps), units, output=out, inline=True,
                           plugin_manager=manager(), progress=False)
    failed = {(f.unit.visit, f.unit.detector): f.error for f in summary.failures}
    assert set(failed) == {(v, d) for v in (4, 1, 3) for d in (0, 1)}
    assert "order_probe fails on visit 4" in failed[(4, 0)]
    assert failed[(1, 0)].startswith("not run: unit visit4_det0")
    assert failed[(3, 1)].startswith("not run: unit visit") and "visit4_det0" not in failed[(3, 1)]
    assert set(_probes(out, units)) == {(2, 0), (2, 1)}
    # a rerun keeps what is done and tries the rest again, in time order
    done_before = _probes(out, units)
    summary = run_pipeline(_pipeline(template, steps), units, output=out, inline=True,
                           plugin_manager=manager(), progress=False)
    assert summary.skipped == 2 and len(summary.failures) == 6
    assert _probes(out, units) == done_before


def test_overlapping_lookup_gives_earlier_visits_of_the_same_sky(tmp_path):
    out = tmp_path / "out"
    _registry_with_two_regions(out).close()
    units = [Unit(v, d) for v in (1, 2, 3, 4) for d in (0, 1)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "earlier"}])
    resolved = prepare_run(pipeline, plugin_manager=manager())
    assert [s.kind for s in resolved.segments] == ["unit", "unit"]  # a barrier between them
    summary = run_pipeline(pipeline, units, output=out, inline=True, plugin_manager=manager(),
                           progress=False)
    assert summary.ok, summary.format()
    seen = json.loads((out / "units" / "visit1_det0" / "seen.json").read_text())
    assert seen["units"] == ["visit2_det0", "visit4_det0"]  # earlier, overlapping, made here
    expected = [float(np.load(out / "units" / k / "image.npy").sum()) for k in seen["units"]]
    assert seen["sums"] == pytest.approx(expected)
    assert json.loads((out / "units" / "visit2_det1" / "seen.json").read_text())["units"] == []


def test_a_lookup_reaches_visits_outside_this_runs_units(tmp_path):
    """Visits 2 and 4 are processed in one run, visit 1 (later in time) in the next: its
    lookup finds their images, and ``context.visit()`` knows their times (it did not)."""
    out = tmp_path / "out"
    _registry_with_two_regions(out).close()
    units = [Unit(v, 0) for v in (1, 2, 4)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "earlier"}])
    kwargs = {"output": out, "inline": True, "plugin_manager": manager(), "progress": False}
    assert run_pipeline(pipeline, [Unit(2, 0), Unit(4, 0)], **kwargs).ok
    summary = run_pipeline(pipeline, [Unit(1, 0)], **kwargs)
    assert summary.ok, summary.format()
    seen = json.loads((out / "units" / "visit1_det0" / "seen.json").read_text())
    assert seen["units"] == ["visit2_det0", "visit4_det0"]
    assert seen["mjds"] == [60001.0, 60002.0]


# ----------------------------------------------------------------------------- side effects


def _effects(ledger: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(ledger) as conn:
        return sorted(conn.execute("select unit, identity, stores from effects"))


def test_a_unit_killed_after_its_side_effect_reruns_without_duplicating(tmp_path, dask_address):
    units = [Unit(1, 0), Unit(2, 0), Unit(3, 0)]
    template = write_seeds(tmp_path / "in", units)
    ledger, die = tmp_path / "ledger.sqlite3", tmp_path / "die"
    die.mkdir()
    (die / "visit1_det0").touch()  # only visits 2 and 3 are killed, once each
    (die / "visit3_det0").touch()
    options = {"url": f"ledger://{ledger}", "die_dir": str(die)}
    pipeline = _pipeline(template, [{"name": "make_image"},
                                    {"name": "store_once", "options": options}])
    kwargs = {"output": tmp_path / "out", "dask_address": dask_address,
              "plugin_manager": manager(), "progress": False}
    summary = run_pipeline(pipeline, units, **kwargs)
    assert summary.ok, summary.format()  # the killed task ran again on a fresh worker
    effects = _effects(ledger)
    assert [(u, n) for u, _, n in effects] == [("store_once/detector=0/visit=1", 1),
                                               ("store_once/detector=0/visit=2", 1),
                                               ("store_once/detector=0/visit=3", 1)]
    receipt = json.loads((tmp_path / "out/units/visit2_det0/receipt.json").read_text())
    assert receipt["stored"] is False  # the retry found its effect already there
    # the ledger was opened once per worker process and closed at the end of the run, except
    # in the one worker that was killed
    with sqlite3.connect(ledger) as conn:
        life = conn.execute("select pid, event from life").fetchall()
    opens = [p for p, e in life if e == "open"]
    closes = [p for p, e in life if e == "close"]
    assert len(opens) == len(set(opens)) and set(closes) <= set(opens)
    assert len(closes) == len(set(closes)) == len(opens) - 1
    # a rerun with the same inputs does nothing; with a changed input it replaces the effect
    assert run_pipeline(pipeline, units, **kwargs).skipped == 3
    assert _effects(ledger) == effects
    seed = Path(template.format(visit=3, detector=0))
    seed.write_text(json.dumps({"seed": 5}))
    os.utime(seed, ns=(0, seed.stat().st_mtime_ns + 10**9))
    assert run_pipeline(pipeline, units, **kwargs).done == 1
    after = _effects(ledger)
    assert len(after) == 3 and after[2][2] == 2 and after[2][1] != effects[2][1]
    assert after[:2] == effects[:2]


def test_resource_errors_name_the_plugin(tmp_path):
    from jointcal_ap.stages import PluginError
    from jointcal_ap.stages.context import close_resources, open_resource, use_plugins

    use_plugins((("platform", "test_platform:PlatformPlugin()"),))
    try:
        apdb = open_resource("apdb", f"ledger://{tmp_path / 'l.sqlite3'}")
        assert apdb is open_resource("apdb", f"ledger://{tmp_path / 'l.sqlite3'}")
        with pytest.raises(PluginError, match=r"plugin 'platform'.*LedgerApdb\.store .*raised "
                                              r"AttributeError"):
            apdb.store(None)
        with pytest.raises(PluginError, match=r"no plugin opens apdb URL 'nope://x'"):
            open_resource("apdb", "nope://x")
    finally:
        assert close_resources() == []
        use_plugins(())


def test_repo_command_ingests_exposures_and_answers_queries(tmp_path, capsys):
    from astropy.io import fits

    from jointcal_ap.cli import main
    from jointcal_ap.exposure import Exposure, ExposureMetadata

    for visit, (mjd, ra, band) in {1: (60010.0, 10.0, "r"), 2: (60005.0, 10.002, "r"),
                                   3: (60020.0, 40.0, "g")}.items():
        for detector in (0, 1):
            header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": ra,
                                  "CRVAL2": 0.0, "CRPIX1": 50.5 - 300 * detector, "CRPIX2": 50.5,
                                  "CD1_1": -1e-4, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 1e-4})
            meta = ExposureMetadata(visit, detector, band, mjd, 30.0)
            Exposure(np.zeros((100, 100), np.float32), None, np.ones((100, 100), np.float32),
                     header, meta).write(tmp_path / f"raw_{visit}_{detector}.fits")
    repo = str(tmp_path / "repo")
    files = sorted(str(p) for p in tmp_path.glob("raw_*.fits"))
    assert main(["repo", "ingest", repo, *files]) == 0
    assert "ingested 6 exposure(s) of 3 visit(s)" in capsys.readouterr().out
    assert main(["repo", "visits", repo, "--band", "r", "--json"]) == 0
    visits = json.loads(capsys.readouterr().out)
    assert [v["visit"] for v in visits] == [2, 1] and visits[0]["exposure_time"] == 30.0
    assert visits[0]["ra"] == pytest.approx(10.002 - 0.015, abs=1e-6)  # between its 2 detectors
    assert main(["repo", "overlapping", repo, "--visit", "1", "--detector", "0", "--before",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"visit": 2, "detector": 0}]
    assert main(["repo", "datasets", repo, "raw", "--visit", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["data_id"] for r in rows] == [{"visit": 3, "detector": 0}, {"visit": 3, "detector": 1}]
    assert rows[0]["path"] == files[4]
    assert main(["repo", "visits", str(tmp_path / "nope")]) == 2
    (tmp_path / "bad.fits").write_bytes(b"not fits")
    assert main(["repo", "ingest", repo, str(tmp_path / "bad.fits")]) == 1
    assert "bad.fits" in capsys.readouterr().err


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(tmp_path):
    import io

    from jointcal_ap.progress import PlainProgress, progress

    log = io.StringIO()
    with progress(total=3, desc="render", unit="exposure", stream=log, interval=0.0) as bar:
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert isinstance(bar, PlainProgress) and "\r" not in log.getvalue()
    assert [line.split(" (")[0] for line in lines] == ["render: 1/3", "render: 2/3", "render: 3/3"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    with progress(total=3, desc="render", stream=term) as bar:
        bar.update(3)
    assert "\r" in term.getvalue()  # tqdm redraws in place
    quiet = io.StringIO()
    with progress(total=3, desc="render", stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


class NothingForOdd(Stage):
    """Finds nothing to do for odd visits."""

    name = "nothing_for_odd"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"half": "Array"}

    def run(self, unit: Any, image: np.ndarray) -> dict[str, Any]:
        from jointcal_ap.stages import NoWorkFound

        if unit.visit % 2:
            raise NoWorkFound(f"visit {unit.visit} is odd")
        return {"half": image / 2}


def test_a_unit_with_nothing_to_do_is_not_a_failure_and_stays_out_downstream(tmp_path):
    class Plugin:
        @hookimpl
        def jointcal_ap_register_stages(self, registry) -> None:
            for stage in (MakeImage, NothingForOdd, UseTotal, SumAll):
                registry.add_stage(stage)

    pm = get_plugin_manager(plugins=[("nothing", Plugin())])
    units = [Unit(v, 0) for v in (1, 2, 3, 4)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = _pipeline(template, [{"name": "make_image"}, {"name": "nothing_for_odd"},
                                    {"name": "sum_all", "inputs": {"image": "half"}}])
    out = tmp_path / "out"
    summary = run_pipeline(pipeline, units, output=out, inline=True, plugin_manager=pm,
                           progress=False)
    assert summary.ok and summary.exit_code == 0
    assert [r.unit for r in summary.no_work] == [Unit(1, 0), Unit(3, 0)]
    assert "nothing_for_odd" in summary.no_work[0].error and "visit 1 is odd" in summary.format()
    assert json.loads((out / "total.json").read_text())["units"] == ["visit2_det0",
                                                                     "visit4_det0"]
    assert not (out / "units" / "visit1_det0" / "half.npy").exists()
    again = run_pipeline(pipeline, units, output=out, inline=True, plugin_manager=pm,
                         progress=False)
    assert (again.done, again.skipped, len(again.no_work)) == (0, 2, 2)
