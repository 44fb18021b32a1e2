"""The pipeline runner: a configured sequence of stages over units, on Dask.

There is one execution path: every unit is a Dask task, on a ``LocalCluster`` started for
the run (worker processes, one thread each) or on a running cluster given by address.

Output layout (``OUT`` is the pipeline's output directory)::

    OUT/pipeline.json                       the effective pipeline (stages, versions, options)
    OUT/run_summary.json                    the last run's summary
    OUT/units/visit{v}_det{d}/DATASET.EXT   every stage output of the unit ...
    OUT/units/visit{v}_det{d}/DATASET.provenance.json   ... with its provenance
    OUT/units/visit{v}_det{d}/_done.json    written last: the unit is complete
    OUT/failed/visit{v}_det{d}.txt          the traceback of a unit that failed

A unit is built in a hidden staging directory (unique to each execution) and renamed into
place only when all its stages succeeded, so a unit directory is always complete. A rerun
skips the units already done with the same pipeline (same stages, versions, options and
input paths: the fingerprint) and the same input files (size and modification time, as
recorded in ``_done.json``); a unit whose rerun fails loses the outputs of the earlier
configuration. Consumers should trust only unit directories whose ``_done.json`` has the
fingerprint of ``OUT/pipeline.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jointcal_ap.stages.contract import Unit, check_outputs, options_to_dict
from jointcal_ap.stages.errors import PipelineError, SchedulerError
from jointcal_ap.stages.pipeline import (
    Pipeline,
    ResolvedPipeline,
    _template_fields,
    load_pipeline,
    resolve_pipeline,
    units_from,
)

__all__ = [
    "RunSummary",
    "UnitResult",
    "execute_unit",
    "is_done",
    "prepare_run",
    "run_pipeline",
    "unit_dir",
]

log = logging.getLogger(__name__)

DONE = "_done.json"

#: Seconds to wait for a Dask scheduler given by address.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit.

    Attributes
    ----------
    unit : Unit
        The unit.
    status : str
        ``"done"``, ``"skipped"`` (already done) or ``"failed"``.
    seconds : mapping
        Stage label → wall-clock seconds (stages that ran).
    stage : str or None
        The stage that failed.
    error : str or None
        One line naming the stage, its plugin and the exception.
    traceback : str or None
        The full traceback.
    """

    unit: Unit
    status: str
    seconds: Mapping[str, float] = field(default_factory=dict)
    stage: str | None = None
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`run_pipeline`.

    Attributes
    ----------
    pipeline : str
        The pipeline's name.
    output : Path
        Its output directory.
    units : int
        Units in the run.
    done : int
        Units processed now.
    skipped : int
        Units already done before.
    failures : tuple of UnitResult
        Units that failed, with their tracebacks.
    stage_seconds : mapping
        Stage label → total seconds over the units processed now.
    wall_seconds : float
        Duration of the run.
    scheduler : str
        Where it ran (``"LocalCluster(2 processes)"`` or the scheduler address).
    """

    pipeline: str
    output: Path
    units: int
    done: int
    skipped: int
    failures: tuple[UnitResult, ...]
    stage_seconds: Mapping[str, float]
    wall_seconds: float
    scheduler: str

    @property
    def ok(self) -> bool:
        """Whether no unit failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 if every unit is done, 1 if some failed."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (as written to ``run_summary.json``)."""
        return {"pipeline": self.pipeline, "output": str(self.output), "units": self.units,
                "done": self.done, "skipped": self.skipped, "failed": len(self.failures),
                "stage_seconds": {k: round(v, 4) for k, v in self.stage_seconds.items()},
                "wall_seconds": round(self.wall_seconds, 3), "scheduler": self.scheduler,
                "failures": [{"unit": f.unit.key, "stage": f.stage, "error": f.error,
                              "traceback": f.traceback} for f in self.failures]}

    def format(self) -> str:
        """A short human-readable report."""
        lines = [f"pipeline {self.pipeline!r}: {self.units} units: {self.done} done now, "
                 f"{self.skipped} already done, {len(self.failures)} failed "
                 f"({self.wall_seconds:.1f} s on {self.scheduler})"]
        if self.stage_seconds:
            per_unit = max(self.done + len(self.failures), 1)
            lines.append("  time per stage: " + ", ".join(
                f"{k} {v:.2f} s ({v / per_unit:.3f} s/unit)" for k, v in self.stage_seconds.items()))
        for failure in self.failures:
            lines.append(f"  FAILED {failure.unit.key}: {failure.error}")
        if self.failures:
            lines.append(f"  tracebacks in {self.output / 'failed'}")
        lines.append(f"  outputs in {self.output / 'units'}")
        return "\n".join(lines)


def unit_dir(output: str | os.PathLike[str], unit: Unit) -> Path:
    """The directory holding a unit's outputs."""
    return Path(output) / "units" / unit.key


def is_done(output: str | os.PathLike[str], unit: Unit, fingerprint: str,
            inputs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``unit`` was completed by a pipeline with this fingerprint.

    Parameters
    ----------
    output : path
        The output directory.
    unit : Unit
        The unit.
    fingerprint : str
        :attr:`ResolvedPipeline.fingerprint`.
    inputs : mapping, optional
        The unit's current input identities (:meth:`ResolvedPipeline.input_identities`);
        if given, they must equal those recorded when the unit was done, so that a changed
        input file redoes the unit.
    """
    marker = unit_dir(output, unit) / DONE
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint:
        return False
    return inputs is None or done.get("inputs") == json.loads(json.dumps(dict(inputs)))


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _move_aside(final: Path, unit: Unit, suffix: str) -> Path | None:
    """Rename a unit directory to a unique hidden name beside it (atomic, so ``units/KEY``
    is never half-removed); returns that name, or ``None`` if ``final`` was already gone."""
    aside = Path(tempfile.mkdtemp(prefix=f".{unit.key}.", suffix=suffix, dir=final.parent))
    try:
        os.replace(final, aside)  # a directory replaces an empty one
    except FileNotFoundError:
        aside.rmdir()
        return None
    return aside


_SHARED: dict[tuple[str, str, str], Any] = {}


def _read_input(resolved: ResolvedPipeline, dataset: str, path: Path,
                identity: Mapping[str, Any] | None) -> Any:
    """Read a pipeline input; one shared by all units (no ``{visit}``/``{detector}`` in its
    template, e.g. a calibration) is read once per worker process and reused while unchanged
    (same :func:`file_identity`). Stages must therefore treat their inputs as read-only."""
    dataset_type = resolved.dataset_types[dataset]
    if _template_fields(resolved.pipeline.inputs[dataset], dataset):
        return dataset_type.read(path)
    key = (dataset_type.name, str(path.resolve()), json.dumps(identity, sort_keys=True))
    if key not in _SHARED:
        if len(_SHARED) >= 4:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = dataset_type.read(path)
    return _SHARED[key]


class _InputReadError(Exception):
    """Reading a pipeline input failed (the input, not the consuming stage, is to blame)."""

    def __init__(self, dataset: str, path: Path, stage: str, cause: BaseException):
        self.dataset, self.path, self.stage, self.cause = dataset, path, stage, cause
        super().__init__(f"reading input {dataset!r} from {path} (for stage {stage!r}) failed: "
                         f"{type(cause).__name__}: {cause}")


def execute_unit(resolved: ResolvedPipeline, unit: Unit, output: str) -> UnitResult:
    """Run every stage of the pipeline on one unit; never raises for a stage failure.

    The unit's outputs and their provenance are written to a staging directory, unique to
    this execution, that is renamed to :func:`unit_dir` only when every stage succeeded. The
    identity of every input file (:func:`~jointcal_ap.stages.pipeline.file_identity`) is
    recorded in ``_done.json``, taken before the input is read. A failure is written to
    ``OUT/failed/UNIT.txt`` and returned; an existing unit directory that is not done with
    this pipeline and these inputs is then removed, so that ``units/`` never mixes
    configurations.

    Parameters
    ----------
    resolved : ResolvedPipeline
        The checked pipeline.
    unit : Unit
        The visit × detector to process.
    output : str
        The output directory.
    """
    final = unit_dir(output, unit)
    failed_path = Path(output) / "failed" / f"{unit.key}.txt"
    fingerprint = resolved.fingerprint
    staging: Path | None = None
    values: dict[str, Any] = {}
    records: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    current = None
    try:
        identities = resolved.input_identities(unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{unit.key}.", suffix=".partial",
                                        dir=final.parent))
        for step in resolved.stages:
            current = step
            start = time.perf_counter()
            kwargs = {}
            for port, dataset in step.inputs.items():
                if dataset not in values:  # a pipeline input
                    path = resolved.input_path(dataset, unit)
                    try:
                        if identities.get(dataset) is None:
                            raise FileNotFoundError(f"{path}: input {dataset!r} of {unit.key} "
                                                    f"not found")
                        values[dataset] = _read_input(resolved, dataset, path,
                                                      identities[dataset])
                    except Exception as exc:
                        raise _InputReadError(dataset, path, step.label, exc) from exc
                    records[dataset] = {"input": str(path)}
                kwargs[port] = values[dataset]
            stage = step.stage(step.options)
            result = stage.run(unit, **kwargs)
            types = {port: resolved.dataset_types[ds] for port, ds in step.outputs.items()}
            result = check_outputs(stage, result, types, step.origin)
            for port, value in result.items():
                dataset = step.outputs[port]
                dataset_type = types[port]
                filename = None
                if dataset_type.writer is not None:
                    filename = f"{dataset}{dataset_type.suffix}"
                    dataset_type.write(value, staging / filename)
                values[dataset] = value
                records[dataset] = {"dataset": dataset, "file": filename}
                provenance = {
                    "dataset": dataset, "type": dataset_type.name, "file": filename,
                    "unit": {"visit": unit.visit, "detector": unit.detector},
                    "stage": {"label": step.label, "name": step.stage.name,
                              "version": step.stage.version, "plugin": step.plugin,
                              "distribution": step.distribution},
                    "options": options_to_dict(step.options),
                    "inputs": {p: records[ds] for p, ds in step.inputs.items()},
                    "pipeline": {"name": resolved.pipeline.name, "fingerprint": fingerprint},
                }
                _write_json(staging / f"{dataset}.provenance.json", provenance)
            seconds[step.label] = time.perf_counter() - start
        current = None
        _write_json(staging / DONE, {"unit": unit.key, "fingerprint": fingerprint,
                                     "inputs": identities, "seconds": seconds,
                                     "datasets": sorted(records)})
        _install(staging, final, unit, fingerprint, identities)
        staging = None
        failed_path.unlink(missing_ok=True)
        return UnitResult(unit, "done", seconds)
    except Exception as exc:
        tb = traceback.format_exc()
        stage_label = current.label if current else None
        if isinstance(exc, _InputReadError):
            error = f"input {exc.dataset!r}: {exc}"
            stage_label = None
        else:
            where = f"stage {current.label!r} {current.origin}" if current else "setup"
            error = f"{where}: {type(exc).__name__}: {exc}"
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            if final.exists() and not is_done(output, unit, fingerprint,
                                              resolved.input_identities(unit)):
                # outputs of another configuration (or other inputs): never leave them
                # looking current beside this run's units
                aside = _move_aside(final, unit, ".stale")
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)
        except OSError:  # pragma: no cover - reported below; _done.json still tells
            log.exception("cannot move %s aside", final)
        try:
            failed_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = failed_path.with_name(f".{failed_path.name}.{os.getpid()}.tmp")
            tmp.write_text(f"{unit.key}: {error}\n\n{tb}")
            os.replace(tmp, failed_path)
        except OSError:  # pragma: no cover - the summary still carries it
            log.exception("cannot write %s", failed_path)
        return UnitResult(unit, "failed", seconds, stage_label, error, tb)


def _install(staging: Path, final: Path, unit: Unit, fingerprint: str,
             identities: Mapping[str, Any]) -> None:
    """Rename a complete staging directory to the unit's directory.

    A unit directory of another configuration is moved aside first. If the unit was
    completed meanwhile by another execution with this fingerprint and these inputs, that
    one is kept and the staging directory discarded.
    """
    output = final.parent.parent
    for _attempt in range(3):
        if final.exists():
            if is_done(output, unit, fingerprint, identities):  # completed meanwhile
                shutil.rmtree(staging, ignore_errors=True)
                return
            old = _move_aside(final, unit, ".old")
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(staging, final)
            return
        except OSError as exc:  # another execution put it in place between the two steps
            if not final.exists():
                raise
            last = exc
    raise last


def prepare_run(pipeline: Pipeline | str | os.PathLike[str], *, plugin_manager: Any = None,
                registry: Any = None) -> ResolvedPipeline:
    """Load (if a path) and resolve a pipeline; raises :class:`PipelineError` before anything runs."""
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline)
    if registry is None:
        if plugin_manager is None:
            from jointcal_ap.stages.manager import get_plugin_manager

            plugin_manager = get_plugin_manager()
        registry = plugin_manager.stage_registry()
    return resolve_pipeline(pipeline, registry)


def _local_cluster(n_workers: int, processes: bool) -> Any:
    from distributed import LocalCluster

    # ":0": a free port for the scheduler's HTTP server, so that two runs never collide.
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                        dashboard_address=":0", silence_logs=logging.ERROR)


def run_pipeline(pipeline: Pipeline | str | os.PathLike[str],
                 units: Iterable[Unit | tuple[int, int]] | None = None, *,
                 output: str | os.PathLike[str] | None = None, dask_address: str | None = None,
                 workers: int | None = None, processes: bool = True, progress: bool = True,
                 plugin_manager: Any = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> RunSummary:
    """Run a pipeline over units of work on Dask.

    Parameters
    ----------
    pipeline : Pipeline or path
        The pipeline, or its TOML file.
    units : iterable of Unit or (visit, detector), optional
        The units to process; default: the pipeline's ``[units]``.
    output : path, optional
        Output directory; default: the pipeline's ``output``.
    dask_address : str, optional
        Run on this Dask scheduler (``tcp://host:8786``) instead of a LocalCluster. Its
        workers must have the stage plugins installed and see the input and output paths.
    workers : int, optional
        LocalCluster workers (default: the CPU count, at most one per unit to do).
    processes : bool
        LocalCluster workers are processes (default) or threads of this process.
    progress : bool
        Show a progress bar on stderr.
    plugin_manager : PluginManager, optional
        Where stages come from (default: :func:`~jointcal_ap.stages.get_plugin_manager`).
    connect_timeout : float
        Seconds to wait for the scheduler at ``dask_address`` (default 10).

    Returns
    -------
    RunSummary
        Also written to ``OUT/run_summary.json``; ``summary.exit_code`` is 1 if a unit failed.

    Raises
    ------
    PipelineError
        The pipeline is invalid (checked before anything runs).
    SchedulerError
        The scheduler at ``dask_address`` cannot be reached within ``connect_timeout``;
        nothing was written.
    """
    start = time.perf_counter()
    resolved = prepare_run(pipeline, plugin_manager=plugin_manager)
    config = resolved.pipeline
    out = Path(output) if output is not None else config.output
    if out is None:
        raise PipelineError(f"{config.source}: no output directory: set [pipeline] output or "
                            f"pass output=")
    out = out.resolve()
    if workers is not None and workers < 1:
        raise PipelineError(f"workers must be at least 1, got {workers}")
    all_units = units_from(list(units)) if units is not None else config.discover_units()
    if len(set(all_units)) != len(all_units):
        raise PipelineError(f"{config.source}: units are listed twice")
    fingerprint = resolved.fingerprint
    cache: dict[Path, Any] = {}
    todo = [u for u in all_units
            if not is_done(out, u, fingerprint, resolved.input_identities(u, cache))]
    skipped = len(all_units) - len(todo)

    def start_run() -> None:  # once connected: nothing is written for an unreachable cluster
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "pipeline.json", {**resolved.describe(), "fingerprint": fingerprint})

    results: list[UnitResult] = []
    scheduler = "nothing to do"
    if todo:
        results, scheduler = _run_on_dask(resolved, todo, str(out), dask_address, workers,
                                          processes, progress, skipped, len(all_units),
                                          connect_timeout, start_run)
    else:
        start_run()
    stage_seconds: dict[str, float] = {s.label: 0.0 for s in resolved.stages}
    for result in results:
        for label, sec in result.seconds.items():
            stage_seconds[label] += sec
    failures = tuple(sorted((r for r in results if r.status == "failed"), key=lambda r: r.unit))
    summary = RunSummary(config.name, out, len(all_units), len(results) - len(failures), skipped,
                         failures, stage_seconds, time.perf_counter() - start, scheduler)
    _write_json(out / "run_summary.json", summary.to_dict())
    return summary


def _run_on_dask(resolved: ResolvedPipeline, todo: Sequence[Unit], output: str,
                 dask_address: str | None, workers: int | None, processes: bool, progress: bool,
                 skipped: int, total: int, connect_timeout: float,
                 on_connected: Callable[[], None]) -> tuple[list[UnitResult], str]:
    from distributed import Client, as_completed
    from tqdm import tqdm

    cluster = client = None
    results: list[UnitResult] = []
    try:
        if dask_address:
            try:
                client = Client(dask_address, timeout=connect_timeout)
            except Exception as exc:
                raise SchedulerError(dask_address, f"cannot connect to the Dask scheduler at "
                                     f"{dask_address!r} within {connect_timeout:g} s: "
                                     f"{type(exc).__name__}: {exc}") from exc
            scheduler = dask_address
        else:
            n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
            cluster = _local_cluster(n, processes)
            client = Client(cluster)
            scheduler = f"LocalCluster({n} {'processes' if processes else 'threads'})"
        on_connected()
        task = functools.partial(execute_unit, resolved, output=output)
        futures = client.map(task, list(todo), key=[f"unit-{resolved.fingerprint}-{u.key}-"
                                                    f"{time.time_ns()}" for u in todo])
        unit_of = {f.key: u for f, u in zip(futures, todo, strict=True)}
        with tqdm(total=total, initial=skipped, desc=resolved.pipeline.name, unit="unit",
                  disable=not progress, leave=False) as bar:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as exc:  # the worker died (KilledWorker), or the task was lost
                    unit = unit_of[future.key]
                    result = UnitResult(unit, "failed", {}, None,
                                        f"task lost: {type(exc).__name__}: {exc}",
                                        "".join(traceback.format_exception(exc)))
                results.append(result)
                bar.update(1)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return results, scheduler
