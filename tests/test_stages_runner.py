"""The Dask pipeline runner: Dask equals serial, resumability, failure isolation, the CLI,
and the built-in ``detect`` and ``calibrate`` stages. One module-scoped LocalCluster."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from jointcal_ap.cli import main
from jointcal_ap.heap import heap_is_kept
from jointcal_ap.stages import (
    Pipeline,
    Stage,
    Unit,
    execute_unit,
    get_plugin_manager,
    hookimpl,
    run_pipeline,
)
from jointcal_ap.stages.runner import prepare_run
from test_stages import MakeImage, array_pipeline, test_manager, write_seeds

UNITS = [Unit(v, d) for v in (1, 2, 3) for d in (0, 1)]


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def tree(directory: Path) -> dict[str, object]:
    """Every output file of a run, loaded (arrays, JSON, tables, FITS data)."""
    out: dict[str, object] = {}
    for path in sorted((directory / "units").rglob("*")):
        key = str(path.relative_to(directory))
        if path.suffix == ".npy":
            out[key] = np.load(path)
        elif path.suffix == ".json":
            out[key] = json.loads(path.read_text())
        elif path.suffix == ".parquet":
            out[key] = Table.read(path)
        elif path.suffix == ".fits":
            with fits.open(path) as hdul:
                out[key] = [np.array(h.data) if h.data is not None else None for h in hdul]
    return out


def assert_same_tree(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key, value in a.items():
        other = b[key]
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, other, err_msg=key)
        elif isinstance(value, Table):
            assert value.colnames == other.colnames, key
            for name in value.colnames:
                np.testing.assert_array_equal(value[name], other[name], err_msg=f"{key}:{name}")
            assert value.meta == other.meta
        elif isinstance(value, list):
            assert len(value) == len(other)
            for x, y in zip(value, other, strict=True):
                if x is None:
                    assert y is None
                elif x.dtype.names:
                    assert x.tolist() == y.tolist(), key
                else:
                    np.testing.assert_array_equal(x, y, err_msg=key)
        else:
            assert value == other, key


def test_dask_run_gives_the_serial_outputs(tmp_path, dask_address):
    template = write_seeds(tmp_path / "in", UNITS)
    pipeline = array_pipeline(template)
    summary = run_pipeline(pipeline, UNITS, output=tmp_path / "dask", dask_address=dask_address,
                           plugin_manager=test_manager(), progress=False)
    assert (summary.units, summary.done, summary.skipped, summary.failures) == (6, 6, 0, ())
    assert summary.exit_code == 0 and summary.scheduler == dask_address
    assert set(summary.stage_seconds) == {"make_image", "measure"}
    assert all(v > 0 for v in summary.stage_seconds.values())
    resolved = prepare_run(pipeline, plugin_manager=test_manager())
    for unit in UNITS:
        assert execute_unit(resolved, unit, str(tmp_path / "serial")).status == "done"
    dask_tree, serial_tree = tree(tmp_path / "dask"), tree(tmp_path / "serial")
    assert len(dask_tree) == 6 * 6  # 3 datasets + 3 provenance per unit
    assert_same_tree(dask_tree, serial_tree)
    recorded = json.loads((tmp_path / "dask" / "run_summary.json").read_text())
    assert recorded["done"] == 6 and recorded["failed"] == 0


def test_rerun_skips_done_units_and_redoes_changed_ones(tmp_path, dask_address):
    template = write_seeds(tmp_path / "in", UNITS)
    out = tmp_path / "out"
    kwargs = {"output": out, "dask_address": dask_address, "plugin_manager": test_manager(),
              "progress": False}
    first = run_pipeline(array_pipeline(template), UNITS, **kwargs)
    assert first.done == 6
    stamp = (out / "units" / "visit1_det0" / "image.npy").stat().st_mtime_ns
    again = run_pipeline(array_pipeline(template), UNITS, **kwargs)
    assert (again.done, again.skipped, again.scheduler) == (0, 6, "nothing to do")
    assert (out / "units" / "visit1_det0" / "image.npy").stat().st_mtime_ns == stamp
    # the skipped units keep the seconds per stage the first run measured (the latency)
    # (as run_summary.json keeps them: to 0.1 ms)
    measured = {u: {k: round(v, 4) for k, v in s.items()} for u, s in first.unit_seconds.items()}
    assert len(measured) == 6 and dict(again.unit_seconds) == measured
    assert json.loads((out / "run_summary.json").read_text())["unit_seconds"] == measured
    # a stage taken out of the pipeline takes its seconds with it
    first_only = array_pipeline(template)
    first_only = dataclasses.replace(first_only, stages=first_only.stages[:1])
    alone = run_pipeline(first_only, UNITS, **kwargs)
    assert alone.done == 6 and set(alone.unit_seconds) == set(measured)
    assert all(set(s) == {"make_image"} for s in alone.unit_seconds.values())
    import shutil

    shutil.rmtree(out / "units" / "visit2_det1")
    partial = run_pipeline(array_pipeline(template), UNITS, **kwargs)
    assert (partial.done, partial.skipped) == (1, 5)
    # another option value: another pipeline fingerprint, so every unit is redone
    changed = run_pipeline(array_pipeline(template, scale=3.0), UNITS, **kwargs)
    assert (changed.done, changed.skipped) == (6, 0)
    # a changed input file redoes just its unit
    seed = Path(template.format(visit=3, detector=1))
    seed.write_text(json.dumps({"seed": 9}))
    os.utime(seed, ns=(seed.stat().st_atime_ns, seed.stat().st_mtime_ns + 10**9))
    redo = run_pipeline(array_pipeline(template, scale=3.0), UNITS, **kwargs)
    assert (redo.done, redo.skipped) == (1, 5)
    np.testing.assert_allclose(np.load(out / "units" / "visit3_det1" / "image.npy"),
                               np.random.default_rng([9, 3, 1]).normal(size=(8, 8)) * 3.0)
    image = np.load(out / "units" / "visit1_det0" / "image.npy")
    np.testing.assert_allclose(image, np.random.default_rng([7, 1, 0]).normal(size=(8, 8)) * 3.0)


def test_failing_units_are_isolated_and_reported(tmp_path, dask_address):
    template = write_seeds(tmp_path / "in", UNITS)
    out = tmp_path / "out"
    kwargs = {"output": out, "dask_address": dask_address, "plugin_manager": test_manager(),
              "progress": False}
    summary = run_pipeline(array_pipeline(template, fail_visits=[2]), UNITS, **kwargs)
    assert summary.exit_code == 1 and not summary.ok
    assert [f.unit for f in summary.failures] == [Unit(2, 0), Unit(2, 1)]
    failure = summary.failures[0]
    assert failure.stage == "measure"
    assert failure.error == ("stage 'measure' (plugin 'teststages'): RuntimeError: cannot measure "
                             "visit 2")
    assert "Traceback" in failure.traceback and "raise RuntimeError" in failure.traceback
    assert summary.done == 4
    from jointcal_ap.stages.runner import is_done

    resolved = prepare_run(array_pipeline(template, fail_visits=[2]),
                           plugin_manager=test_manager())
    for unit in UNITS:
        assert is_done(out, unit, resolved) == (unit.visit != 2)
    assert not (out / "units" / "visit2_det0").exists()
    assert "cannot measure visit 2" in (out / "failed" / "visit2_det0.txt").read_text()
    text = summary.format()
    assert "2 failed" in text and "FAILED visit2_det1: stage 'measure'" in text
    recorded = json.loads((out / "run_summary.json").read_text())
    assert recorded["failed"] == 2 and "RuntimeError" in recorded["failures"][0]["traceback"]
    # a rerun retries only the failed units
    again = run_pipeline(array_pipeline(template, fail_visits=[2]), UNITS, **kwargs)
    assert (again.skipped, again.done, len(again.failures)) == (4, 0, 2)


class KillOnVisit2(Stage):
    """Kills its worker process on visit 2 (after make_image wrote that unit's image);
    takes a while on the others, so that an innocent task is running when the worker dies."""

    name = "kill_on_visit2"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"copy": "Array"}

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        if unit.visit == 2:
            time.sleep(0.5)
            os._exit(1)
        time.sleep(2.0)
        return {"copy": image}


class KillerPlugin:
    @hookimpl
    def jointcal_ap_register_stages(self, registry) -> None:
        registry.add_stage(MakeImage)
        registry.add_stage(KillOnVisit2)


def test_a_stage_killing_its_worker_fails_only_its_own_unit_and_leaves_nothing(tmp_path):
    """Issue 12: a task whose stage kills its worker (os._exit) must not fail an innocent task
    running beside it on the same worker (Dask marks both; each is retried alone), must not
    leave files or hidden temporaries of the unit it was writing, and the summary names the
    failed/ directory only if it holds something."""
    import dask
    from distributed import LocalCluster

    units = [Unit(1, 0), Unit(2, 0)]
    template = write_seeds(tmp_path / "in", units)
    pipeline = Pipeline.from_dict({"pipeline": {"name": "killer"}, "inputs": {"seed": template},
                                   "stages": [{"name": "make_image"}, {"name": "kill_on_visit2"}]},
                                  source="killer.toml")
    manager = get_plugin_manager(plugins=[("killer", KillerPlugin())])
    # one worker running both tasks at once, and a scheduler that gives up at the first death
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0",
                         silence_logs=logging.CRITICAL) as cluster:
        summary = run_pipeline(pipeline, units, output=tmp_path / "out", progress=False,
                               dask_address=cluster.scheduler_address, plugin_manager=manager)
    assert [f.unit for f in summary.failures] == [Unit(2, 0)], [f.error for f in summary.failures]
    assert "KilledWorker" in summary.failures[0].error and summary.done == 1
    units_dir = tmp_path / "out" / "units"
    assert sorted(p.name for p in units_dir.iterdir()) == ["visit1_det0"]  # nothing of visit 2
    assert sorted(p.name for p in (units_dir / "visit1_det0").iterdir()) == [
        "copy.npy", "copy.provenance.json", "image.npy", "image.provenance.json"]
    assert [p.name for p in (tmp_path / "out" / "failed").iterdir()] == ["visit2_det0.txt"]
    assert f"tracebacks in {tmp_path / 'out' / 'failed'}" in summary.format()
    # failures with nothing written to failed/ (a region's later units) do not name it
    from jointcal_ap.stages.runner import RunSummary, UnitResult

    never = RunSummary("p", tmp_path / "elsewhere", 1, 0, 0,
                       (UnitResult(Unit(3, 0), "failed", {}, None, "not run", "tb"),), {}, 0.0, "inline")
    assert "tracebacks in" not in never.format()


def test_default_local_cluster(tmp_path):
    units = UNITS[:2]
    template = write_seeds(tmp_path / "in", units)
    summary = run_pipeline(array_pipeline(template), units, output=tmp_path / "out", workers=1,
                           plugin_manager=test_manager(), progress=False)
    assert summary.scheduler == "LocalCluster(1 processes)"
    assert summary.done == 2 and summary.ok


def _warm_pipeline(template: str, fail: bool = False) -> Pipeline:
    return Pipeline.from_dict({
        "pipeline": {"name": "warm"}, "inputs": {"seed": template},
        "stages": [{"name": "make_image", "options": {"size": 4}},
                   {"name": "warmed_up", "options": {"fail": fail}}]}, source="warm.toml")


def test_workers_warm_up_before_their_first_unit_and_keep_their_heap(tmp_path, monkeypatch,
                                                                     caplog):
    """Each LocalCluster worker runs every stage's warm_up before its first unit, and starts
    with the C heap settings of WORKER_HEAP_ENV (Dask's own with JOINTCAL_AP_WORKER_HEAP=
    release); a warm_up that raises is a warning, and the units still run."""
    from jointcal_ap.stages.runner import WORKER_HEAP_ENV

    units = UNITS[:4]
    template = write_seeds(tmp_path / "in", units)

    def states(out: Path, **kwargs: Any) -> list[dict]:
        summary = run_pipeline(_warm_pipeline(template, **kwargs), units, output=out,
                               workers=2, plugin_manager=test_manager(), progress=False)
        assert summary.ok and summary.done == len(units)
        return [json.loads(p.read_text()) for p in sorted(out.glob("units/*/state.json"))]

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    kept = states(tmp_path / "kept")
    assert "MALLOC_ARENA_MAX" not in os.environ               # this process's is put back
    assert len(kept) == 4 and len({s["pid"] for s in kept}) == 2   # both workers ran units
    assert all(s["warmed"] for s in kept)
    # its context: the stage's label, no data ID, the run's detector records (none here:
    # these units are not exposures in a registry)
    assert {tuple(s["warm_context"]) for s in kept} == {("warmed_up", "", 0)}
    assert {s["arena_max"] for s in kept} == {WORKER_HEAP_ENV["MALLOC_ARENA_MAX"]}
    assert {s["trim_threshold"] for s in kept} == {WORKER_HEAP_ENV["MALLOC_TRIM_THRESHOLD_"]}

    monkeypatch.setenv("JOINTCAL_AP_WORKER_HEAP", "release")
    with caplog.at_level(logging.WARNING, logger="jointcal_ap.stages.runner"):
        released = states(tmp_path / "released", fail=True)
    assert not any(s["warmed"] for s in released)
    assert {s["arena_max"] for s in released} == {None}
    assert {s["trim_threshold"] for s in released} == {"65536"}     # Dask's default
    warnings = [r.getMessage() for r in caplog.records if "warm_up failed" in r.getMessage()]
    assert len(warnings) == 1                                    # once, not once per worker
    assert "OSError: the model file is not there" in warnings[0]
    assert "'warmed_up'" in warnings[0] and "on 2 of 2 worker(s)" in warnings[0]


def test_warm_up_context_has_one_detector_record_per_detector_number():
    """The warm-up context's records: every visit, and each detector once (from its earliest
    visit): a camera's shapes, not a night's (visit, detector) records on every worker."""
    from types import SimpleNamespace

    from jointcal_ap.stages.runner import _Task, _warm_up_records

    def det(v, d):
        return SimpleNamespace(visit=v, detector=d, naxis1=100 + d, naxis2=200)

    tasks = [_Task(0, (Unit(v, d),), {}, {}, visits={v: f"visit{v}"}, detectors={(v, d): det(v, d)})
             for v in (3, 1, 2) for d in (0, 1)]
    tasks.append(_Task(0, (Unit(0, 2),), {}, {}, visits={0: "visit0", 1: "visit1"},
                       detectors={(1, 2): det(1, 2), (0, 2): det(0, 2)}))
    visits, detectors = _warm_up_records(tasks)
    assert visits == {0: "visit0", 1: "visit1", 2: "visit2", 3: "visit3"}
    assert {k: (r.visit, r.detector) for k, r in detectors.items()} == {
        (1, 0): (1, 0), (1, 1): (1, 1), (0, 2): (0, 2)}


def test_workers_touch_heap_for_the_largest_detector_only_where_it_is_kept(monkeypatch):
    """The warm-up touches PREFAULT_BYTES_PER_PIXEL per pixel of the largest detector, capped
    by the machine's memory shared by the LocalCluster's workers; nothing without detector
    records, with JOINTCAL_AP_WORKER_HEAP=release, or in a process whose heap gives its pages
    back (the touched pages would not be reused)."""
    from types import SimpleNamespace

    from jointcal_ap.stages import runner

    records = {(1, 0): SimpleNamespace(naxis1=100, naxis2=50),
               (1, 1): SimpleNamespace(naxis1=200, naxis2=300)}
    executor = runner._Executor(None, 2, True, False, 1.0)
    assert executor._prefault_bytes(records) == runner.PREFAULT_BYTES_PER_PIXEL * 200 * 300
    assert executor._prefault_bytes({}) == 0
    executor.cluster = SimpleNamespace(workers={"a": 1, "b": 2})
    monkeypatch.setattr(runner, "PREFAULT_BYTES_PER_PIXEL", 1 << 40)     # beyond any machine
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert executor._prefault_bytes(records) == int(runner.PREFAULT_MEMORY_FRACTION * memory / 2)
    monkeypatch.setenv("JOINTCAL_AP_WORKER_HEAP", "release")
    assert executor._prefault_bytes(records) == 0

    for key, value in runner.WORKER_HEAP_ENV.items():
        monkeypatch.setenv(key, value)
    assert heap_is_kept() and runner._prefault_heap(1 << 20) > 0
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")                 # Dask's default
    assert not heap_is_kept() and runner._prefault_heap(1 << 20) == 0.0


_TRIM_PROBE = """
import numpy as np
from jointcal_ap.fit.solve import release_free_heap
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
block = np.ones(1 << 25)          # 256 MB, from the heap (nothing from mmap)
del block
before = rss()
release_free_heap()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap")
@pytest.mark.parametrize("kept", [True, False])
def test_the_joint_fit_leaves_a_kept_heap_alone(kept):
    """The fit gives free heap pages back between its passes, except in a process that keeps
    its heap on purpose (a pipeline worker: the runner touched those pages for its units; a
    trim there made a worker's first 4096² unit fault ~550 MB in again, ~1.5 s)."""
    env = {**os.environ, "MALLOC_MMAP_MAX_": "0",
           "MALLOC_TRIM_THRESHOLD_": str(1 << 36) if kept else str(1 << 31)}
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], env=env, capture_output=True,
                         text=True, check=True)
    released_kb = int(out.stdout.split()[-1])
    if kept:
        assert released_kb < 16 * 1024
    else:
        assert released_kb > 200 * 1024


# ----------------------------------------------------------------------------- built-in stages

NX = NY = 96
ZERO_POINT = 31.4 + 2.5  # 1 ADU = 0.1 nJy


def wcs_header(visit: int, detector: int) -> fits.Header:
    return fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                        "CRVAL1": 150.0 + 0.01 * detector, "CRVAL2": 2.0 + 0.001 * visit,
                        "CRPIX1": NX / 2 + 0.5, "CRPIX2": NY / 2 + 0.5,
                        "CD1_1": -5.5e-5, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 5.5e-5})


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    """2 visits x 2 detectors of stars (truth kept), and their calibration directory."""
    from jointcal_ap.calibration import Calibration, DetectorCalibration, PhotometricCalibration
    from jointcal_ap.exposure import Exposure, ExposureMetadata
    from jointcal_ap.simulate.images import render_image

    root = tmp_path_factory.mktemp("exposures")
    truth, detectors = {}, []
    for visit in (1, 2):
        for detector in (0, 1):
            rng = np.random.default_rng([visit, detector])
            gx, gy = np.meshgrid(np.linspace(14, NX - 14, 4), np.linspace(14, NY - 14, 3))
            x = gx.ravel() + rng.uniform(-3, 3, 12)  # isolated: 22 px apart or more
            y = gy.ravel() + rng.uniform(-3, 3, 12)
            flux = rng.uniform(2e4, 6e4, 12)
            image = render_image((NY, NX), x, y, flux, fwhm_px=3.0, sky_adu=200.0,
                                 seed=visit * 10 + detector)
            meta = ExposureMetadata(visit=visit, detector=detector, filter="r",
                                    mjd_tai=60310.0 + visit, exptime=30.0)
            Exposure(image.image, None, image.variance, wcs_header(visit, detector), meta).write(
                root / f"raw_{visit}_{detector}.fits")
            truth[(visit, detector)] = (x, y)
            detectors.append(DetectorCalibration(
                visit, detector, NX, NY, wcs_header(visit, detector),
                PhotometricCalibration.constant(ZERO_POINT, NX, NY, zero_point_err=0.01)))
    Calibration(detectors).write(root / "calibration")
    return root, truth


def write_builtin_pipeline(path: Path, root: Path, output: Path) -> Path:
    path.write_text(f"""\
[pipeline]
name = "detect-calibrate"
output = "{output}"

[inputs]
exposure = "{root}/raw_{{visit}}_{{detector}}.fits"
calibration = "{root}/calibration"

[units]
visits = [1, 2]
detectors = [0, 1]

[[stages]]
name = "detect"
options = {{ fwhm_px = 3.0, threshold_sigma = 10 }}

[[stages]]
name = "calibrate"
""")
    return path


def test_builtin_detect_and_calibrate_through_the_cli(tmp_path, exposures, dask_address, capsys):
    from jointcal_ap.exposure import read_calibrated_exposure, read_exposure

    root, truth = exposures
    toml = write_builtin_pipeline(tmp_path / "pipeline.toml", root, tmp_path / "dask")
    assert main(["run", str(toml), "--dask-address", dask_address, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 units: 4 done now, 0 already done, 0 failed" in out
    assert "time per stage: detect" in out

    for (visit, detector), (x, y) in truth.items():
        unit_dir = tmp_path / "dask" / "units" / f"visit{visit}_det{detector}"
        sources = Table.read(unit_dir / "sources.parquet")
        assert set(sources["visit"]) == {visit} and set(sources["detector"]) == {detector}
        # every star is found within 0.1 px (bright, isolated, on a flat sky)
        distance = np.hypot(sources["x"][:, None] - x[None], sources["y"][:, None] - y[None])
        assert np.all(distance.min(axis=0) < 0.1)
        calexp = read_calibrated_exposure(unit_dir / "calexp.fits")
        raw = read_exposure(root / f"raw_{visit}_{detector}.fits")
        np.testing.assert_allclose(calexp.image, raw.image * 0.1, rtol=1e-6)
        assert calexp.header["BUNIT"] == "nJy"
        prov = json.loads((unit_dir / "calexp.provenance.json").read_text())
        assert prov["stage"]["name"] == "calibrate" and prov["stage"]["version"] == "1.0.0"
        assert prov["stage"]["distribution"].startswith("jointcal-ap ")
        assert prov["inputs"]["calibration"]["input"] == f"{root}/calibration"
        detect_prov = json.loads((unit_dir / "sources.provenance.json").read_text())
        assert detect_prov["options"]["fwhm_px"] == 3.0
        assert detect_prov["options"]["threshold_sigma"] == 10.0

    # the same pipeline, serially, unit by unit
    resolved = prepare_run(toml)
    old_umask = os.umask(0o022)
    try:
        for unit in resolved.pipeline.discover_units():
            assert execute_unit(resolved, unit, str(tmp_path / "serial")).status == "done"
    finally:
        os.umask(old_umask)
    assert_same_tree(tree(tmp_path / "dask"), tree(tmp_path / "serial"))
    # the unit directories and every file in them (calexp.fits too) follow the umask
    serial_units = tmp_path / "serial" / "units"
    modes = {p.relative_to(serial_units).as_posix(): p.stat().st_mode & 0o777
             for p in [serial_units, *serial_units.rglob("*")]}
    assert modes["visit1_det0/calexp.fits"] == 0o644 and modes["visit1_det0"] == 0o755
    assert set(modes.values()) == {0o644, 0o755}, modes

    # a rerun has nothing to do
    assert main(["run", str(toml), "--dask-address", dask_address, "--no-progress"]) == 0
    assert "0 done now, 4 already done" in capsys.readouterr().out


def test_cli_exit_codes_failed_unit_and_bad_pipeline(tmp_path, exposures, dask_address, capsys):
    import shutil

    root, _ = exposures
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "raw_2_1.fits").write_bytes(b"SIMPLE  = not really a FITS file")
    toml = write_builtin_pipeline(tmp_path / "pipeline.toml", data, tmp_path / "out")
    assert main(["run", str(toml), "--dask-address", dask_address, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "3 done now, 0 already done, 1 failed" in out
    assert (f"FAILED visit2_det1: input 'exposure': reading input 'exposure' from "
            f"{data}/raw_2_1.fits (for stage 'detect') failed: ") in out
    assert "raw_2_1.fits" in (tmp_path / "out" / "failed" / "visit2_det1.txt").read_text()
    assert (tmp_path / "out" / "units" / "visit2_det0" / "calexp.fits").exists()

    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace('name = "detect"\n', 'name = "detect"\n'
                                            'outputs = { sources = "exposure" }\n'))
    assert main(["run", str(bad), "--out", str(tmp_path / "never"), "--no-progress"]) == 2
    assert "output 'exposure' is already given by [inputs]" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_unreachable_scheduler_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    import socket

    from jointcal_ap.stages import SchedulerError

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    template = write_seeds(tmp_path / "in", UNITS[:1])
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(SchedulerError, match=f"cannot connect to the Dask scheduler at "
                                             f"'{address}' within 1 s"):
        run_pipeline(array_pipeline(template), UNITS[:1], output=out, dask_address=address,
                     plugin_manager=test_manager(), progress=False, connect_timeout=1)
    assert time.perf_counter() - start < 8
    assert not (out / "pipeline.json").exists()

    toml = tmp_path / "p.toml"
    toml.write_text(f'[pipeline]\noutput = "out2"\n[inputs]\nexposure = "{tmp_path}/x.fits"\n'
                    f'[units]\nlist = [[1, 0]]\n[[stages]]\nname = "detect"\n')
    assert main(["run", str(toml), "--dask-address", address, "--connect-timeout", "1",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"jointcal-ap: error: cannot connect to the Dask scheduler at '{address}'")
    assert not (tmp_path / "out2").exists()


@pytest.fixture
def restore_logging():
    names = ("distributed", "tornado", "bokeh", "jax")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_cli_quiets_dask_logging_unless_vv(restore_logging, capsys):
    import distributed  # noqa: F401  (its import sets the "distributed" logger to INFO)

    logging.getLogger("distributed").setLevel(logging.INFO)
    assert main(["stages", "list", "--json"]) == 0
    assert logging.getLogger("distributed").level == logging.WARNING
    assert logging.getLogger("tornado").getEffectiveLevel() >= logging.WARNING
    logging.getLogger("distributed").setLevel(logging.INFO)
    assert main(["stages", "list", "--json", "-vv"]) == 0
    assert logging.getLogger("distributed").level == logging.INFO
    capsys.readouterr()
