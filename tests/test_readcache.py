"""The worker's read cache: exact (only values read from the very same file), bounded,
read-only, and used by the runner across a unit's segments."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from jointcal_ap.stages import (
    GatherStage,
    In,
    Pipeline,
    Stage,
    get_plugin_manager,
    hookimpl,
    run_pipeline,
)
from jointcal_ap.stages.datasets import ARRAY, write_array
from jointcal_ap.stages.readcache import (
    ENV,
    MIN_BYTES,
    PINNED,
    ReadCache,
    array_bytes,
    read_cache,
)

BIG = int(np.ceil(np.sqrt(MIN_BYTES / 8))) + 1  # side of a float64 image just above MIN_BYTES


def _write(path: Path, value: float, side: int = BIG) -> Path:
    write_array(np.full((side, side), value), path)
    return path


def test_a_second_read_of_the_same_file_is_the_same_value_made_read_only(tmp_path):
    cache = ReadCache(4 * MIN_BYTES)
    path = _write(tmp_path / "a.npy", 1.0)
    first = cache.read(ARRAY, path)
    assert cache.read(ARRAY, path) is first
    assert (cache.hits, cache.misses) == (1, 1)
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 2.0


def test_a_rewritten_file_is_read_again(tmp_path):
    cache = ReadCache(4 * MIN_BYTES)
    path = _write(tmp_path / "a.npy", 1.0)
    old = cache.read(ARRAY, path)
    os.replace(_write(tmp_path / "b.npy", 2.0), path)       # same size, a new file
    new = cache.read(ARRAY, path)
    assert new is not old and new[0, 0] == 2.0 and old[0, 0] == 1.0
    assert cache.hits == 0


def test_small_values_are_not_kept_and_stay_writeable(tmp_path):
    cache = ReadCache(4 * MIN_BYTES)
    path = _write(tmp_path / "small.npy", 1.0, side=8)
    value = cache.read(ARRAY, path)
    assert value.flags.writeable and cache.read(ARRAY, path) is not value
    assert cache.held == 0 and cache.misses == 2


def test_the_least_recently_used_value_goes_first_and_the_bound_holds(tmp_path):
    one = array_bytes(np.zeros((BIG, BIG)))
    cache = ReadCache(2 * one)
    paths = [_write(tmp_path / f"{i}.npy", float(i)) for i in range(3)]
    a = cache.read(ARRAY, paths[0])
    cache.read(ARRAY, paths[1])
    assert cache.read(ARRAY, paths[0]) is a          # a is now the most recent
    cache.read(ARRAY, paths[2])                      # evicts paths[1], not a
    assert cache.held == 2 * one
    assert cache.read(ARRAY, paths[0]) is a
    misses = cache.misses
    cache.read(ARRAY, paths[1])
    assert cache.misses == misses + 1
    cache.clear()
    assert cache.held == 0 and cache.read(ARRAY, paths[0]) is not a


def test_a_value_read_first_out_goes_before_older_ones(tmp_path):
    """What a stage looks up across units never pushes out a unit's own input."""
    one = array_bytes(np.zeros((BIG, BIG)))
    cache = ReadCache(2 * one)
    own = [_write(tmp_path / f"own{i}.npy", float(i)) for i in range(2)]
    looked_up = [_write(tmp_path / f"other{i}.npy", 9.0 + i) for i in range(2)]
    a, b = (cache.read(ARRAY, p) for p in own)
    for path in looked_up:
        cache.read(ARRAY, path, first_out=True)
        assert cache.held == 2 * one
    assert cache.read(ARRAY, own[0]) is a and cache.read(ARRAY, own[1]) is b
    assert cache.hits == 2
    # once read again, a looked-up value is kept like any other (least recently used out)
    cache = ReadCache(2 * one)
    cache.read(ARRAY, own[0])
    c = cache.read(ARRAY, looked_up[0], first_out=True)    # first out: before own[0]
    assert cache.read(ARRAY, looked_up[0]) is c            # a hit: now the most recent
    cache.read(ARRAY, own[1])                              # so own[0] goes, not c
    assert cache.read(ARRAY, looked_up[0]) is c
    misses = cache.misses
    cache.read(ARRAY, own[0])
    assert cache.misses == misses + 1


def test_whole_run_inputs_are_pinned_whatever_their_size(tmp_path, monkeypatch):
    """A pinned value (a pipeline input with no dimension) is kept however small, outside
    the byte bound, even with the cache off, and through clear(); the PINNED most recent
    ones; its arrays stay writeable; a changed file is read again."""
    monkeypatch.setenv(ENV, "0")
    cache = ReadCache()
    paths = [_write(tmp_path / f"run{i}.npy", float(i), side=4) for i in range(PINNED + 1)]
    first = cache.read(ARRAY, paths[0], pinned=True)
    assert cache.read(ARRAY, paths[0], pinned=True) is first and first.flags.writeable
    cache.clear()
    assert cache.read(ARRAY, paths[0], pinned=True) is first and cache.held == 0
    for path in paths[1:]:                                  # the oldest goes
        cache.read(ARRAY, path, pinned=True)
    assert cache.read(ARRAY, paths[0], pinned=True) is not first
    latest = cache.read(ARRAY, paths[-1], pinned=True)
    os.replace(_write(tmp_path / "new.npy", 9.0, side=4), paths[-1])
    again = cache.read(ARRAY, paths[-1], pinned=True)
    assert again is not latest and again[0, 0] == 9.0


def test_a_directory_is_read_again_when_a_file_inside_changes(tmp_path):
    """The key is the project's file_identity (a directory: its newest file), so a value read
    from a directory is not reused once a file in it is rewritten in place."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Folder:
        name = "Folder"

        @staticmethod
        def read(path):
            return np.load(Path(path) / "data.npy") + 0.0     # a fresh array each read

    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "data.npy", 1.0)
    cache = ReadCache(4 * MIN_BYTES)
    old = cache.read(Folder(), folder)
    assert cache.read(Folder(), folder) is old
    time.sleep(0.01)                                          # a later modification time
    with open(folder / "data.npy", "r+b") as fh:              # in place: the folder's own
        fh.seek(-8, os.SEEK_END)                              # mtime does not change
        fh.write(np.float64(5.0).tobytes())
    new = cache.read(Folder(), folder)
    assert new is not old and new[-1, -1] == 5.0


def test_the_environment_sizes_or_disables_it(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.npy", 1.0)
    monkeypatch.setenv(ENV, "0")
    off = ReadCache()
    assert off.capacity == 0
    assert off.read(ARRAY, path) is not off.read(ARRAY, path)
    monkeypatch.setenv(ENV, "64")
    assert ReadCache().capacity == 64 * 2**20
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(ValueError, match="JOINTCAL_AP_READ_CACHE_MB='lots'"):
        ReadCache()


# ------------------------------------------------------------------ through the runner


class BigImage(Stage):
    """seed (Json) -> a float64 image just over the cache's threshold."""

    name = "big_image"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"seed": "Json"}
    outputs: ClassVar[dict[str, str]] = {"image": "Array"}

    def run(self, unit: Any, seed: dict) -> dict[str, Any]:
        return {"image": np.full((BIG, BIG), float(seed["seed"] + unit.visit))}


class Barrier(GatherStage):
    """Ends a segment (a gather stage): the next stage's inputs come from files."""

    name = "barrier"
    version = "1"
    inputs: ClassVar[dict[str, Any]] = {"image": In("Array", lookup="all")}
    outputs: ClassVar[dict[str, str]] = {"done": "Json"}

    def run(self, units: Any, image: Any) -> dict[str, Any]:
        return {"done": {"units": len(units)}}


class Probe(Stage):
    """What the stage got: the process, the cache's hit count, whether the input is read-only."""

    name = "probe"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array", "done": "Json"}
    outputs: ClassVar[dict[str, str]] = {"seen": "Json"}

    def run(self, unit: Any, image: np.ndarray, done: dict) -> dict[str, Any]:
        try:
            from distributed import get_worker

            worker = get_worker().address
        except (ImportError, ValueError):              # inline: not in a Dask worker
            worker = None
        return {"seen": {"pid": os.getpid(), "hits": read_cache().hits, "worker": worker,
                         "writeable": bool(image.flags.writeable), "value": float(image[0, 0])}}


class CachePlugin:
    @hookimpl
    def jointcal_ap_register_stages(self, registry) -> None:
        for stage in (BigImage, Barrier, Probe):
            registry.add_stage(stage)


def _pipeline(seed: str) -> Pipeline:
    return Pipeline.from_dict({
        "pipeline": {"name": "cache"}, "inputs": {"seed": seed},
        "stages": [{"name": "big_image"},
                   {"name": "barrier"},
                   {"name": "probe"},
                   {"name": "barrier", "label": "barrier2", "outputs": {"done": "done2"}},
                   {"name": "probe", "label": "probe2", "inputs": {"done": "done2"},
                    "outputs": {"seen": "seen2"}}]}, source="cache.toml")


def _seeds(directory: Path, units: list[tuple[int, int]]) -> str:
    directory.mkdir()
    for v, d in units:
        (directory / f"seed_v{v}_d{d}.json").write_text(json.dumps({"seed": 10}))
    return str(directory / "seed_v{visit}_d{detector}.json")


def test_a_unit_s_later_segment_reads_its_input_from_the_cache(tmp_path):
    """Inline (one process): the image is read from its file by ``probe`` and answered from
    the cache for ``probe2`` (two segments later), read-only; the cache is emptied at the
    end of the run."""
    units = [(1, 0), (2, 0)]
    summary = run_pipeline(_pipeline(_seeds(tmp_path / "in", units)), units,
                           output=tmp_path / "out", inline=True,
                           plugin_manager=get_plugin_manager(plugins=[("cache", CachePlugin())]),
                           progress=False)
    assert summary.ok and summary.done == 2
    for v, d in units:
        unit = tmp_path / "out" / "units" / f"visit{v}_det{d}"
        first = json.loads((unit / "seen.json").read_text())
        second = json.loads((unit / "seen2.json").read_text())
        assert second["hits"] > first["hits"]               # probe2's read was a hit
        assert not first["writeable"] and not second["writeable"]
        assert first["value"] == second["value"] == 10.0 + v
    assert read_cache().held == 0


def test_on_two_workers_each_unit_is_hinted_to_its_worker_and_outputs_match(tmp_path,
                                                                            monkeypatch):
    """On a LocalCluster of 2 workers, a unit's task is submitted with the hint of the worker
    that ran its last one-unit task (``probe2`` → where ``probe`` ran, across the gather
    ``barrier2``), loosely; every unit's outputs equal the inline run's."""
    from jointcal_ap.stages import runner

    hints: dict[tuple[str, str], Any] = {}
    placement = runner._Executor._placement

    def recording(self, task):
        hint = placement(self, task)
        if len(task.data_ids) == 1:
            hints[(task.data_ids[0].key, task.segment)] = hint
        return hint

    monkeypatch.setattr(runner._Executor, "_placement", recording)
    units = [(v, d) for v in (1, 2) for d in (0, 1)]
    seeds = _seeds(tmp_path / "in", units)
    pm = get_plugin_manager(plugins=[("cache", CachePlugin())])
    for out, kwargs in (("dask", {"workers": 2}), ("inline", {"inline": True})):
        summary = run_pipeline(_pipeline(seeds), units, output=tmp_path / out, progress=False,
                               plugin_manager=pm, **kwargs)
        assert summary.ok and summary.done == 4
    probe2_segment = max(segment for _, segment in hints)
    for v, d in units:
        unit = f"visit{v}_det{d}"
        first = json.loads((tmp_path / "dask" / "units" / unit / "seen.json").read_text())
        dask = json.loads((tmp_path / "dask" / "units" / unit / "seen2.json").read_text())
        inline = json.loads((tmp_path / "inline" / "units" / unit / "seen2.json").read_text())
        assert dask["value"] == inline["value"] == 10.0 + v and not dask["writeable"]
        assert first["worker"] is not None
        assert hints[(unit, probe2_segment)] == {"workers": [first["worker"]],
                                                 "allow_other_workers": True}
        assert hints[(unit, 0)] == {}                   # nothing ran before: no hint


def test_a_unit_s_hint_is_the_worker_its_task_reported_not_where_its_result_was_copied():
    """An ordered segment's task waits for an earlier unit's result, which Dask copies to the
    waiting task's worker: the scheduler then knows two holders of that result. The hint is
    the worker the task itself reported (``UnitResult.worker``), so it cannot pick the copy."""
    from jointcal_ap.stages import runner
    from jointcal_ap.stages.context import DataId

    ex = runner._Executor(None, 2, True, False, 1.0)
    a, b = DataId(visit=1, detector=0), DataId(visit=2, detector=0)
    tasks = [runner._Task(3, (a,), {}, {}), runner._Task(3, (b,), {}, {}, after=(0,)),
             runner._Task(4, (), {}, {}, units=(a, b))]
    done = {0: [runner.UnitResult(a, "done", worker="tcp://127.0.0.1:1001")],
            1: [runner.UnitResult(b, "done", worker="tcp://127.0.0.1:1002")],
            2: [runner.UnitResult(DataId(), "done", worker="tcp://127.0.0.1:1001")]}
    ex._remember_workers(done, tasks)
    assert ex._placement(runner._Task(5, (a,), {}, {})) == {"workers": ["tcp://127.0.0.1:1001"],
                                                           "allow_other_workers": True}
    assert ex._placement(runner._Task(5, (b,), {}, {}))["workers"] == ["tcp://127.0.0.1:1002"]
    # inline (no worker reported): no hint
    ex2 = runner._Executor(None, None, True, True, 1.0)
    ex2._remember_workers({0: [runner.UnitResult(a, "done")]}, tasks[:1])
    assert ex2._placement(runner._Task(5, (a,), {}, {})) == {}
