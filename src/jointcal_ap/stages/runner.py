"""The pipeline runner: a configured sequence of stages over units of work, on Dask.

There is one execution path: every task is a Dask task, on a ``LocalCluster`` started for
the run (worker processes, one thread each) or on a running cluster given by address
(``inline=True`` runs the tasks in this process, for debugging and tests).

The output directory is a **repository** (:mod:`jointcal_ap.store.repository`)::

    OUT/registry.sqlite3                    visits, detector regions, datasets, tasks done
    OUT/pipeline.json                       the effective pipeline (stages, versions, options,
                                            segments and their fingerprints)
    OUT/run_summary.json                    the last run's summary
    OUT/units/<data ID>/DATASET.EXT         every per-unit output (``units/visit12_det3/...``)
    OUT/units/<data ID>/DATASET.EXT.provenance.json   ... with its provenance
    OUT/DATASET.EXT                         whole-run outputs (a gather stage's calibration)
    OUT/failed/<data ID>.txt                the traceback of a unit that failed

The stages are cut into segments (:class:`~jointcal_ap.stages.pipeline.Segment`) that run in
order: per-unit segments as one task per unit, a gather segment as one task, an ordered
segment as one task per unit that waits for every earlier unit whose footprint touches its
own (:mod:`~jointcal_ap.stages.ordering`: Rubin's visit order, as a Dask task graph). Within
a segment a stage's outputs reach the later stages in memory, and a file read for one stage
is not read again for a later one (stages treat their inputs as read-only). Every
file is written atomically; a task is recorded as done in the registry, with its segment's
fingerprint and the identity of everything it read, only when all its outputs are written.
A rerun skips what is done with the same fingerprint and inputs and redoes the rest (and,
in an ordered segment, every later unit that waits on a redone one). A unit that fails loses
the outputs of that segment from earlier configurations, is reported with its traceback, and
is left out of the later segments.

Before running, the visit registry is filled from the headers of the pipeline's
``Exposure``/``CalibratedExposure`` inputs for units it does not know yet (ingestion), so
that ordered stages, ``overlapping`` lookups and ``context.visit()`` work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jointcal_ap.atomic import write_json, write_text
from jointcal_ap.errors import PicklableError
from jointcal_ap.heap import heap_is_kept
from jointcal_ap.stages.context import (
    DatasetHandle,
    StageContext,
    close_resources,
    use_plugins,
)
from jointcal_ap.stages.contract import check_outputs, options_to_dict
from jointcal_ap.stages.errors import NoWorkFound, PipelineError, SchedulerError
from jointcal_ap.stages.interfaces import IdempotencyKey
from jointcal_ap.stages.ordering import drop_implied, earlier_neighbours, needs_redo
from jointcal_ap.stages.pipeline import (
    Pipeline,
    ResolvedPipeline,
    Segment,
    load_pipeline,
    resolve_pipeline,
    units_from,
)
from jointcal_ap.stages.readcache import read_cache
from jointcal_ap.store.dimensions import DataId
from jointcal_ap.store.registry import DatasetRef
from jointcal_ap.store.repository import (
    Repository,
    file_identity,
    ingest_exposures,
    provenance_path,
)

__all__ = [
    "RunSummary",
    "UnitResult",
    "execute_unit",
    "is_done",
    "prepare_run",
    "run_pipeline",
    "run_resolved",
    "unit_dir",
]

log = logging.getLogger(__name__)

#: Seconds to wait for a Dask scheduler given by address.
CONNECT_TIMEOUT = 10.0
#: Dataset types whose files the runner reads headers of to fill the visit registry.
INGESTIBLE = ("Exposure", "CalibratedExposure")


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit in one segment (or, in a summary, overall).

    Attributes
    ----------
    unit : DataId
        The unit (the empty data ID for a gather task).
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
    refs : tuple of DatasetRef
        The datasets written.
    worker : str or None
        The Dask worker that ran the task (None inline, or not known).
    """

    unit: DataId
    status: str
    seconds: Mapping[str, float] = field(default_factory=dict)
    stage: str | None = None
    error: str | None = None
    traceback: str | None = None
    refs: tuple[DatasetRef, ...] = ()
    worker: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """The outcome of :func:`run_pipeline`.

    Attributes
    ----------
    pipeline : str
        The pipeline's name.
    output : Path
        Its output repository.
    units : int
        Units in the run.
    done : int
        Units that completed every segment, some of it now.
    skipped : int
        Units that had completed every segment before.
    failures : tuple of UnitResult
        Units that failed, with their tracebacks (the first failure of each).
    stage_seconds : mapping
        Stage label → total seconds over the tasks run now.
    wall_seconds : float
        Duration of the run.
    scheduler : str
        Where it ran (``"LocalCluster(2 processes)"``, the scheduler address, ``"inline"``).
    no_work : tuple of UnitResult
        Units a stage found nothing to do for (:class:`~jointcal_ap.stages.NoWorkFound`):
        left out of the later stages; not failures.
    unit_seconds : mapping
        Unit key → stage label → wall-clock seconds of that stage on that unit (reading its
        inputs, running, writing its outputs): the latency of a unit through the pipeline,
        split by stage. A stage skipped because it was done keeps the seconds of the run that
        did it (from the earlier ``run_summary.json``).
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
    no_work: tuple[UnitResult, ...] = ()
    unit_seconds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

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
                "no_work": [{"unit": r.unit.key, "reason": r.error} for r in self.no_work],
                "failures": [{"unit": f.unit.key, "stage": f.stage, "error": f.error,
                              "traceback": f.traceback} for f in self.failures],
                "unit_seconds": {u: {k: round(v, 4) for k, v in s.items()}
                                 for u, s in self.unit_seconds.items()}}

    def format(self) -> str:
        """A short human-readable report."""
        nothing = f", {len(self.no_work)} with nothing to do" if self.no_work else ""
        lines = [f"pipeline {self.pipeline!r}: {self.units} units: {self.done} done now, "
                 f"{self.skipped} already done, {len(self.failures)} failed{nothing} "
                 f"({self.wall_seconds:.1f} s on {self.scheduler})"]
        if any(self.stage_seconds.values()):
            lines.append("  time per stage: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in self.stage_seconds.items()))
        for failure in self.failures:
            lines.append(f"  FAILED {failure.unit.key or 'run'}: {failure.error}")
        for result in self.no_work[:10]:
            lines.append(f"  no work {result.unit.key or 'run'}: {result.error}")
        if len(self.no_work) > 10:
            lines.append(f"  ... and {len(self.no_work) - 10} more with nothing to do")
        failed_dir = self.output / "failed"
        if any((failed_dir / f"{f.unit.key or 'run'}.txt").exists() for f in self.failures):
            lines.append(f"  tracebacks in {failed_dir}")
        lines.append(f"  outputs in {self.output}")
        return "\n".join(lines)


def unit_dir(output: str | os.PathLike[str], unit: Mapping[str, Any]) -> Path:
    """The directory holding a unit's outputs."""
    return Path(output) / "units" / DataId(unit).key


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Input:
    """One dataset a task reads: a single file, or many (a lookup)."""

    dataset: str
    path: str | None = None
    items: tuple[tuple[DataId, str], ...] | None = None
    shared: bool = False  # a pipeline input with no dimension: cached per worker


@dataclass(frozen=True)
class _Task:
    """What a worker needs to run a segment on some data IDs; plain data, no database."""

    segment: int
    data_ids: tuple[DataId, ...]
    inputs: Mapping[DataId, Mapping[str, _Input]]
    identities: Mapping[DataId, str]
    visits: Mapping[int, Any] = field(default_factory=dict)
    detectors: Mapping[tuple[int, int], Any] = field(default_factory=dict)
    units: tuple[DataId, ...] = ()  # gather: the units gathered
    after: tuple[int, ...] = ()  # ordered: the tasks (positions in the segment) it waits for


def _read(resolved: ResolvedPipeline, source: _Input) -> Any:
    """Read a single input through the worker's
    :func:`~jointcal_ap.stages.readcache.read_cache`: a whole-run pipeline input is read once
    per worker process and reused while unchanged (pinned), a unit's large input is kept for
    its later segments (stages must treat their inputs as read-only)."""
    dataset_type = resolved.dataset_types[source.dataset]
    path = Path(source.path)  # type: ignore[arg-type]
    return read_cache().read(dataset_type, path, pinned=source.shared)


class _InputReadError(PicklableError, Exception):
    """Reading an input failed (the input, not the consuming stage, is to blame)."""

    def __init__(self, dataset: str, path: str, stage: str, cause: BaseException):
        self.dataset, self.path, self.stage = dataset, path, stage
        super().__init__(f"reading input {dataset!r} from {path} (for stage {stage!r}) failed: "
                         f"{type(cause).__name__}: {cause}")


def _provenance(resolved: ResolvedPipeline, segment: Segment, step: Any, data_id: DataId,
                inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {"stage": {"label": step.label, "name": step.stage.name,
                      "version": step.stage.version, "plugin": step.plugin,
                      "distribution": step.distribution},
            "options": options_to_dict(step.options), "inputs": dict(inputs),
            "pipeline": {"name": resolved.pipeline.name, "segment": segment.label,
                         "fingerprint": segment.fingerprint}}


def _write_failure(root: Path, data_id: DataId, error: str, tb: str) -> None:
    try:
        write_text(root / "failed" / f"{data_id.key or 'run'}.txt",
                   f"{data_id.key or 'run'}: {error}\n\n{tb}")
    except OSError:  # pragma: no cover - the summary still carries it
        log.exception("cannot write the failure of %s", data_id.key)


def _run_steps(resolved: ResolvedPipeline, task: _Task, data_id: DataId, root: Path
               ) -> UnitResult:
    """Run a segment's stages on one data ID (or, for a gather task, on all units)."""
    segment = resolved.segments[task.segment]
    repo = Repository(root)
    values: dict[str, Any] = {}
    read: dict[str, Any] = {}  # inputs read from files, by source: read once per segment
    records: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    refs: list[DatasetRef] = []
    current = None
    sources = task.inputs.get(data_id, {})
    gather = segment.kind == "gather"
    try:
        for step in segment.stages:
            current = step
            start = time.perf_counter()
            kwargs = {}
            for port, dataset in step.inputs.items():
                if dataset in values:
                    kwargs[port] = values[dataset]
                    continue
                key = _source_key(dataset, step.in_ports[port])
                if key in read:
                    kwargs[port] = read[key]
                    continue
                source = sources[key]
                if source.items is not None:
                    dataset_type = resolved.dataset_types[dataset]
                    kwargs[port] = {d: DatasetHandle(dataset, dataset_type, d, p)
                                    for d, p in source.items}
                    records[dataset] = {"dataset": dataset, "data_ids": len(source.items)}
                    continue
                try:
                    kwargs[port] = read[key] = _read(resolved, source)
                except Exception as exc:
                    raise _InputReadError(dataset, str(source.path), step.label, exc) from exc
                records[dataset] = ({"input": source.path} if resolved.is_input(dataset)
                                    else {"dataset": dataset, "path": source.path})
            stage = step.stage(step.options)
            stage.context = StageContext(
                step.label, data_id,
                IdempotencyKey.make(step.label, data_id, task.identities.get(data_id, "")),
                task.visits, task.detectors)
            result = stage.run(task.units if gather else data_id, **kwargs)
            types = {port: resolved.dataset_types[ds] for port, ds in step.outputs.items()}
            result = check_outputs(stage, result, types, step.origin)
            for port, value in result.items():
                dataset = step.outputs[port]
                prov = _provenance(resolved, segment, step, data_id,
                                   {p: records.get(ds, {"dataset": ds})
                                    for p, ds in step.inputs.items()})
                if step.out_ports[port].per_unit:
                    for key, item in value.items():
                        refs.append(repo.write(item, dataset, types[port], key, prov))
                    records[dataset] = {"dataset": dataset, "data_ids": len(value)}
                else:
                    refs.append(repo.write(value, dataset, types[port], data_id, prov))
                    records[dataset] = {"dataset": dataset, "file": Path(refs[-1].path).name}
                values[dataset] = value
            seconds[step.label] = time.perf_counter() - start
        return UnitResult(data_id, "done", seconds, refs=tuple(refs))
    except NoWorkFound as exc:
        repo.delete_files(refs)
        where = f"stage {current.label!r}" if current else "setup"
        return UnitResult(data_id, "no_work", seconds, current.label if current else None,
                          f"{where}: nothing to do: {exc}")
    except Exception as exc:
        tb = traceback.format_exc()
        stage_label = current.label if current else None
        if isinstance(exc, _InputReadError):
            error = f"input {exc.dataset!r}: {exc}"
            stage_label = None  # the input, not the stage, is to blame
        else:
            where = f"stage {current.label!r} {current.origin}" if current else "setup"
            error = f"{where}: {type(exc).__name__}: {exc}"
        repo.delete_files(refs)  # this attempt's files: never leave a half-done unit's outputs
        _write_failure(root, data_id, error, tb)
        return UnitResult(data_id, "failed", seconds, stage_label, error, tb)


def _discard_unfinished_outputs(resolved: ResolvedPipeline, task: _Task, root: str) -> None:
    """Remove what a task whose worker died may have left of its segment's outputs: finished
    files not registered yet, their provenance, and the hidden temporaries (``.NAME.*.tmp``,
    ``.NAME.*.partial``) of writes it was in the middle of. Registered outputs of earlier
    configurations are the caller's (``_forget``)."""
    import shutil

    segment = resolved.segments[task.segment]
    repo = Repository(root)
    paths: list[tuple[Path, str]] = []
    for step in segment.stages:
        for port, dataset in step.outputs.items():
            dataset_type = resolved.dataset_types[dataset]
            targets = task.units if step.out_ports[port].per_unit and task.units else task.data_ids
            paths += [(repo.path_for(dataset, d, dataset_type.suffix), dataset) for d in targets]
    parents = set()
    for path, dataset in paths:
        prov = provenance_path(path, dataset)
        for target in (path, prov):
            for leftover in [target, *target.parent.glob(f".{target.name}.*.tmp"),
                             *target.parent.glob(f".{target.name}.*.partial")]:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        parents.add(path.parent)
    for parent in parents:
        if parent != repo.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _close_worker() -> list[str]:
    """At the end of a run, in each worker (and in this process): close the resources the
    stages opened, and drop the units' values the read cache holds and the bytes of written
    files kept for a first read (a worker of a cluster given by address outlives the run;
    whole-run inputs stay pinned)."""
    from jointcal_ap.directio import forget_written

    read_cache().clear()
    forget_written()
    return close_resources()


def _run_task(resolved: ResolvedPipeline, task: _Task, root: str,
              *waited: list[UnitResult]) -> list[UnitResult]:
    """A Dask task: run one segment on one unit, or on all units (gather).

    ``waited`` are the results of the tasks it waits for (ordered segments): if one of them
    did not complete, this unit is not run, so that the time order is never broken."""
    blocked = next((r for results in waited for r in results
                    if r.status not in ("done", "skipped", "no_work")), None)
    if blocked is not None:
        (data_id,) = task.data_ids
        error = (f"not run: unit {blocked.unit.key}, earlier and overlapping it, did not "
                 f"complete (ordered stages run overlapping units in time order)")
        return [UnitResult(data_id, "failed", {}, blocked.stage, error, None)]
    use_plugins(resolved.plugin_refs)
    results = [_run_steps(resolved, task, data_id, Path(root)) for data_id in task.data_ids]
    worker = _this_worker()
    return [replace(r, worker=worker) for r in results] if worker else results


def _this_worker() -> str | None:
    """The address of the Dask worker running this code (None outside one)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


# --------------------------------------------------------------------------- planning


def _source_key(dataset: str, spec: Any) -> str:
    """How a task names one of its inputs: the dataset, plus the lookup for a lookup port (a
    stage may read a dataset both as its own unit's and across units)."""
    if not spec.multiple:
        return dataset
    return f"{dataset}#{spec.lookup}#{int(spec.before)}{int(spec.same_band)}"


def _identity(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class _Planner:
    """Resolves each task's inputs to files, and decides what is already done."""

    def __init__(self, resolved: ResolvedPipeline, repo: Repository, units: Sequence[DataId]):
        self.resolved, self.repo, self.units = resolved, repo, list(units)
        self.registry = repo.registry
        self._identity_cache: dict[Path, Any] = {}

    def _file(self, path: Path) -> Any:
        if path not in self._identity_cache:
            self._identity_cache[path] = file_identity(path)
        return self._identity_cache[path]

    def _produced(self, dataset: str, data_id: DataId) -> tuple[str, Any] | None:
        ref = self.registry.dataset(dataset, data_id)
        if ref is None:
            return None
        path = self.repo.resolve(ref)
        return str(path), ref.identity

    def _single(self, dataset: str, unit: DataId, stage_dims: Sequence[str] | None
                ) -> tuple[_Input, Any]:
        resolved = self.resolved
        if resolved.is_input(dataset):
            path = resolved.input_path(dataset, unit)
            identity = self._file(path)
            if identity is None:
                raise FileNotFoundError(f"{path}: input {dataset!r} of {unit.key or 'the run'} "
                                        f"not found")
            shared = not resolved.dataset_dimensions.get(dataset)
            return _Input(dataset, str(path), shared=shared), identity
        dims = resolved.dataset_dimensions.get(dataset)
        target = DataId() if dims == frozenset() else unit
        found = self._produced(dataset, target)
        if found is None:
            raise FileNotFoundError(f"dataset {dataset!r} of {target.key or 'the run'} is not in "
                                    f"the repository (its producer did not complete)")
        return _Input(dataset, found[0]), found[1]

    def _lookup(self, dataset: str, spec: Any, unit: DataId, units: Sequence[DataId]
                ) -> tuple[_Input, Any]:
        if spec.lookup == "all":
            wanted = list(units)
        else:  # overlapping
            visit = self.registry.visit(unit.visit)
            rows = self.registry.overlapping(
                unit.visit, unit.detector, before_mjd=visit.mjd_tai if spec.before else None,
                band=visit.band if spec.same_band else None)
            wanted = [r.data_id for r in rows]
        items, identities = [], {}
        for data_id in wanted:
            data_id = _match_unit(data_id, units)
            if self.resolved.is_input(dataset):
                path = self.resolved.input_path(dataset, data_id)
                identity = self._file(path)
                if identity is None:
                    continue
                items.append((data_id, str(path)))
            else:
                found = self._produced(dataset, data_id)
                if found is None:
                    continue
                items.append((data_id, found[0]))
                identity = found[1]
            identities[data_id.key] = identity
        return _Input(dataset, items=tuple(items)), identities

    def plan_inputs(self, segment: Segment, unit: DataId, units: Sequence[DataId]
                    ) -> tuple[dict[str, _Input], str]:
        """The external inputs of a segment for one data ID, and their identity."""
        produced_here = {ds for st in segment.stages for ds in st.outputs.values()}
        inputs: dict[str, _Input] = {}
        parts: dict[str, Any] = {"fingerprint": segment.fingerprint}
        for step in segment.stages:
            for port, dataset in step.inputs.items():
                spec = step.in_ports[port]
                key = _source_key(dataset, spec)
                if dataset in produced_here or key in inputs:
                    continue
                try:
                    if spec.multiple:
                        inputs[key], parts[key] = self._lookup(dataset, spec, unit, units)
                    else:
                        inputs[key], parts[key] = self._single(dataset, unit,
                                                               step.stage.dimensions)
                except Exception as exc:
                    where = (str(self.resolved.input_path(dataset, unit))
                             if self.resolved.is_input(dataset) else "the repository")
                    raise _InputReadError(dataset, where, step.label, exc) from exc
        return inputs, _identity(parts)

    def outputs_present(self, segment: Segment, data_id: DataId) -> bool:
        for step in segment.stages:
            for port, dataset in step.outputs.items():
                if step.out_ports[port].per_unit:
                    keys = [d for d in self.units]
                    refs = {r.data_id for r in self.registry.datasets(dataset)}
                    if not refs or any(_match_unit(k, refs) not in refs for k in keys
                                       if k in refs):
                        return False
                    continue
                ref = self.registry.dataset(dataset, data_id)
                if ref is None or not self.repo.resolve(ref).exists():
                    return False
        return True


def _match_unit(data_id: DataId, units: Iterable[DataId]) -> DataId:
    """The unit equal to ``data_id`` (so that a stage sees the run's own Unit objects)."""
    for unit in units:
        if unit == data_id:
            return unit
    return data_id


def _registry_records(repo: Repository, units: Sequence[DataId]
                      ) -> tuple[dict[int, Any], dict[tuple[int, int], Any]]:
    visits = {v.visit: v for v in repo.registry.visits(
        sorted({u["visit"] for u in units if "visit" in u}))}
    detectors = {(d.visit, d.detector): d for d in repo.registry.detectors(sorted(visits))}
    return visits, detectors


def _ingest_missing(resolved: ResolvedPipeline, repo: Repository, units: Sequence[DataId]) -> None:
    """Fill the visit registry from the headers of Exposure-typed pipeline inputs."""
    known = {(d.visit, d.detector) for d in repo.registry.detectors()}
    sources = [ds for ds in resolved.consumed_inputs
               if resolved.dataset_types[ds].name in INGESTIBLE
               and {"visit", "detector"} <= (resolved.dataset_dimensions.get(ds) or set())]
    if not sources:
        return
    paths = []
    for unit in units:
        if "visit" not in unit or "detector" not in unit or (unit.visit, unit.detector) in known:
            continue
        path = resolved.input_path(sources[0], unit)
        if path.exists():
            paths.append(path)
    if paths:
        try:
            ingest_exposures(repo, paths, name=None)
        except Exception as exc:  # a unit with a bad file fails in its stage, with its name
            log.warning("visit registry: cannot read exposure headers (%s); stages that need "
                        "the registry will say so", exc)


# --------------------------------------------------------------------------- execution

#: The C heap of LocalCluster worker processes (glibc reads these when a process starts).
#: Dask's own default hands freed memory back to the system at once
#: (``MALLOC_TRIM_THRESHOLD_=65536``), and glibc maps every block over 32 MiB (a 4k × 4k
#: plane is 64 MiB) afresh and unmaps it on free, so each plane a stage allocates costs a
#: page fault per page; on a VM whose balloon takes freed pages back from the guest, more
#: still (docs/benchmarks.md, the latency section: the median unit went 35.2 → 20.0 s). With
#: these a worker keeps its heap at its largest unit's size and reuses it: all allocations
#: come from one arena, none from ``mmap``, and the heap is not trimmed. Set
#: ``JOINTCAL_AP_WORKER_HEAP=release`` to keep Dask's defaults instead (workers that must give
#: memory back between units, or the values of these variables in this process's
#: environment). Workers of a scheduler given by address keep their own settings.
WORKER_HEAP_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                   "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


#: Heap a worker touches once when it warms up, in bytes per pixel of the run's largest
#: detector (see :func:`_prefault_heap`): a 4096² unit of the AP pipeline (inject, template,
#: difference) peaked at ~4 GB resident in one process, ~0.5 GB of it Python and its imports.
PREFAULT_BYTES_PER_PIXEL = 192
#: At most this fraction of the machine's memory, shared by a LocalCluster's workers.
PREFAULT_MEMORY_FRACTION = 0.4


def _prefault_heap(nbytes: int) -> float:
    """Touch ``nbytes`` of heap once and free them; returns the seconds it took.

    A worker whose heap is kept (:func:`jointcal_ap.heap.heap_is_kept`) then reuses those pages, so its
    first unit does not fault its planes in page by page: on a VM whose balloon takes freed
    pages back to the host that cost ~2.3 s per GB, and a 4096² AP unit's first run in a
    process took 13.2 s against 7.0 s for the next ones (a scratch driver, one core; after
    touching 3 GiB first: 8.5 s). Nothing is done where the heap gives pages back."""
    if nbytes <= 0 or not heap_is_kept():
        return 0.0
    import numpy as np

    start = time.perf_counter()
    block = np.ones(nbytes // 8)
    del block
    return time.perf_counter() - start


def _worker_heap_env() -> dict[str, str]:
    """The C heap variables the run's LocalCluster workers start with (none: Dask's own)."""
    if os.environ.get("JOINTCAL_AP_WORKER_HEAP", "keep").strip().lower() == "release":
        return {}
    return dict(WORKER_HEAP_ENV)


def _warm_up(resolved: ResolvedPipeline, visits: Mapping[int, Any] | None = None,
             detectors: Mapping[tuple[int, int], Any] | None = None,
             prefault_bytes: int = 0) -> list[str]:
    """A Dask task on each worker: the heap touched first (:func:`_prefault_heap`, so that the
    warm-ups reuse it too), then every stage's :meth:`~jointcal_ap.stages.Stage.warm_up`, with
    a context holding no data ID and the run's visit and detector records (see
    :func:`_warm_up_records`); returns the errors (each naming its stage) instead of raising."""
    use_plugins(resolved.plugin_refs)
    errors = []
    try:
        _prefault_heap(prefault_bytes)
    except MemoryError as exc:  # pragma: no cover - the units meet the same limit
        errors.append(f"touching {prefault_bytes / 2**30:.1f} GiB of heap failed: {exc}")
    for segment in resolved.segments:
        for step in segment.stages:
            try:
                stage = step.stage(step.options)
                stage.context = StageContext(step.label, DataId(),
                                             IdempotencyKey.make(step.label, {}, ""),
                                             dict(visits or {}), dict(detectors or {}))
                stage.warm_up()
            except Exception as exc:
                errors.append(f"stage {step.label!r} {step.origin}: warm_up failed: "
                              f"{type(exc).__name__}: {exc}")
    return errors


def _warm_up_records(tasks: Sequence[_Task]) -> tuple[dict[int, Any], dict[tuple[int, int], Any]]:
    """What a warm-up context holds: every visit record of the tasks, and one detector record
    per detector number (that of the earliest visit listing it): the camera's detectors, with
    their shapes, without a night's worth of (visit, detector) records sent to every worker."""
    visits: dict[int, Any] = {}
    by_detector: dict[int, tuple[int, Any]] = {}
    for task in tasks:
        visits.update(task.visits)
        for (visit, detector), record in task.detectors.items():
            if detector not in by_detector or visit < by_detector[detector][0]:
                by_detector[detector] = (visit, record)
    return visits, {(v, d): r for d, (v, r) in sorted(by_detector.items())}


class _Executor:
    """Runs tasks inline or on Dask (connecting lazily, closing at the end)."""

    def __init__(self, dask_address: str | None, workers: int | None, processes: bool,
                 inline: bool, connect_timeout: float):
        self.dask_address, self.workers, self.processes = dask_address, workers, processes
        self.inline, self.connect_timeout = inline, connect_timeout
        self.client: Any = None
        self.cluster: Any = None
        self.scheduler = "inline" if inline else "nothing to do"
        self.used = False  # whether any task ran
        self.warmed = False  # whether the workers ran the stages' warm_up
        self._config: Any = None
        self._workers: dict[DataId, str] = {}  # unit -> the worker that ran its last segment

    def connect(self, n_tasks: int) -> None:
        """Start a LocalCluster, or connect to the scheduler (SchedulerError if unreachable)."""
        import dask
        from distributed import Client

        # One task at a time per worker (no queue on a worker), and a task that kills its
        # worker is retried once by Dask. (A scheduler given by address keeps its own
        # settings: ``run`` reruns every lost task alone, so a dying task never fails an
        # innocent one either way.)
        self._config = dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                        "distributed.scheduler.allowed-failures": 1})
        self._config.__enter__()
        if self.dask_address:
            try:
                self.client = Client(self.dask_address, timeout=self.connect_timeout)
            except Exception as exc:
                raise SchedulerError(self.dask_address, f"cannot connect to the Dask scheduler at "
                                     f"{self.dask_address!r} within {self.connect_timeout:g} s: "
                                     f"{type(exc).__name__}: {exc}") from exc
            self.scheduler = self.dask_address
        else:
            from distributed import LocalCluster

            n = max(1, min(self.workers or os.cpu_count() or 1, n_tasks))
            # Dask's nanny spawns the workers with its pre-spawn-environ, where a variable
            # in this process's environment wins over the configuration, and leaves them in
            # this environment (an earlier LocalCluster's MALLOC_TRIM_THRESHOLD_ would win):
            # the heap variables go into both for the spawn, and are put back afterwards
            heap = _worker_heap_env()
            saved = {k: os.environ.get(k) for k in WORKER_HEAP_ENV}
            spawn_env = dict(dask.config.get("distributed.nanny.pre-spawn-environ",
                                             default={}) or {})
            try:
                os.environ.update(heap)
                with dask.config.set({"distributed.nanny.pre-spawn-environ":
                                      {**spawn_env, **heap}}):
                    # ":0": a free port for the dashboard, so that two runs never collide.
                    self.cluster = LocalCluster(n_workers=n, threads_per_worker=1,
                                                processes=self.processes,
                                                dashboard_address=":0",
                                                silence_logs=logging.ERROR)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            self.client = Client(self.cluster)
            self.scheduler = f"LocalCluster({n} {'processes' if self.processes else 'threads'})"

    def run(self, resolved: ResolvedPipeline, tasks: Sequence[_Task], root: str,
            label: str, progress: bool, on_result: Callable[[list[UnitResult]], None]) -> None:
        from jointcal_ap.progress import progress as progress_bar

        self.used = True
        total = sum(len(t.data_ids) for t in tasks)
        done: dict[int, list[UnitResult]] = {}  # position in ``tasks`` -> its results

        def waited(task: _Task) -> list[list[UnitResult]]:
            return [done[j] for j in task.after]

        with progress_bar(total=total, desc=label, unit="unit", enabled=progress) as bar:
            if self.inline:  # in list order, which is time order for an ordered segment
                for i, task in enumerate(tasks):
                    done[i] = _run_task(resolved, task, root, *waited(task))
                    on_result(done[i])
                    bar.update(len(done[i]))
                return
            if self.client is None:
                self.connect(len(tasks))
            if not self.warmed:
                visits, detectors = _warm_up_records(tasks)
                self.warm_up(resolved, visits, detectors, self._prefault_bytes(detectors))
            from distributed import as_completed

            stamp = time.time_ns()
            futures: list[Any] = []
            for i, task in enumerate(tasks):  # a task waits for the futures of ``after``
                futures.append(self.client.submit(
                    _run_task, resolved, task, root, *(futures[j] for j in task.after),
                    pure=False, key=f"{label}-{i}-{stamp}", **self._placement(task)))
            position = {f.key: i for i, f in enumerate(futures)}
            lost: list[int] = []
            for future in as_completed(futures):
                try:
                    results = future.result()
                except Exception:  # the worker died (KilledWorker), or the task was lost
                    # A worker that dies takes every task it held with it (and every task
                    # waiting on those): the guilty one and innocent ones. Each is run again
                    # below, alone, to tell them apart.
                    lost.append(position[future.key])
                    continue
                done[position[future.key]] = results
                on_result(results)
                bar.update(len(results))
            self._remember_workers(done, tasks)
            del futures
            for i in sorted(lost):  # in list order: what a task waits for is rerun first
                task = tasks[i]
                _discard_unfinished_outputs(resolved, task, root)
                future = self.client.submit(_run_task, resolved, task, root, *waited(task),
                                            pure=False, key=f"{label}-alone-{i}-{stamp}")
                try:
                    results = future.result()
                except Exception as exc:
                    error = f"task lost: {type(exc).__name__}: {exc}"
                    tb = "".join(traceback.format_exception(exc))
                    _discard_unfinished_outputs(resolved, task, root)
                    results = [UnitResult(d, "failed", {}, None, error, tb) for d in task.data_ids]
                    for d in task.data_ids:
                        _write_failure(Path(root), d, error, tb)
                done[i] = results
                on_result(results)
                bar.update(len(results))

    def _placement(self, task: _Task) -> dict[str, Any]:
        """A placement hint for a one-unit task: the worker that ran the unit's previous
        segment, whose read cache holds the unit's inputs (:mod:`~jointcal_ap.stages.readcache`).
        Loose (``allow_other_workers``): a worker that is gone is ignored, and Dask's work
        stealing may still move the task to an idle worker."""
        worker = self._workers.get(task.data_ids[0]) if len(task.data_ids) == 1 else None
        return {"workers": [worker], "allow_other_workers": True} if worker else {}

    def _remember_workers(self, done: Mapping[int, list[UnitResult]], tasks: Sequence[_Task]) -> None:
        """Note where each one-unit task of a segment ran (for :meth:`_placement`), as the
        task itself reported it. (Not where the scheduler says its result is: a result that a
        later task of an ordered segment waited for is held by that task's worker too.)"""
        for i, results in done.items():
            if len(tasks[i].data_ids) == 1 and results and results[0].worker:
                self._workers[tasks[i].data_ids[0]] = results[0].worker

    def _on_each_worker(self, fn: Callable[..., list[str]], *args: Any, name: str
                        ) -> tuple[int, list[list[str]]]:
        """``fn(*args)`` as a task pinned to each worker (where the stages run, in their
        thread); returns the number of workers and the results of those that answered."""
        workers = list(self.client.scheduler_info()["workers"])
        futures = [self.client.submit(fn, *args, pure=False, workers=[w],
                                      allow_other_workers=False,
                                      key=f"{name}-{i}-{time.time_ns()}")
                   for i, w in enumerate(workers)]
        return len(workers), self.client.gather(futures, errors="skip")

    def _prefault_bytes(self, detectors: Mapping[tuple[int, int], Any]) -> int:
        """Heap each worker touches when it warms up: :data:`PREFAULT_BYTES_PER_PIXEL` of the
        largest detector, within :data:`PREFAULT_MEMORY_FRACTION` of this machine's memory
        shared by a LocalCluster's workers (0 without detector records, or when the
        workers give their heap back: ``JOINTCAL_AP_WORKER_HEAP=release``)."""
        pixels = max((int(r.naxis1) * int(r.naxis2) for r in detectors.values()), default=0)
        if not pixels or not _worker_heap_env():
            return 0
        wanted = PREFAULT_BYTES_PER_PIXEL * pixels
        if self.cluster is not None:
            try:
                memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
                return 0
            workers = max(1, len(self.cluster.workers))
            wanted = min(wanted, int(PREFAULT_MEMORY_FRACTION * memory / workers))
        return wanted

    def warm_up(self, resolved: ResolvedPipeline, visits: Mapping[int, Any] | None = None,
                detectors: Mapping[tuple[int, int], Any] | None = None,
                prefault_bytes: int = 0) -> None:
        """Run every stage's ``warm_up`` once on each worker, before the first unit, and touch
        ``prefault_bytes`` of its heap; errors are logged, and the run goes on."""
        self.warmed = True
        start = time.perf_counter()
        n_workers, results = self._on_each_worker(_warm_up, resolved, visits, detectors,
                                                  prefault_bytes, name="warm-up")
        errors: dict[str, int] = {}  # each error once, with the number of workers it hit
        for worker_errors in results:
            for error in set(worker_errors):
                errors[error] = errors.get(error, 0) + 1
        for error, count in sorted(errors.items()):
            log.warning("%s (on %d of %d worker(s); the stage's first unit on a worker meets "
                        "this itself)", error, count, n_workers)
        log.info("warmed up %d worker(s) in %.1f s", n_workers, time.perf_counter() - start)

    def close(self) -> None:
        if self.client is not None:
            try:
                for errors in self._on_each_worker(_close_worker, name="close-resources")[1]:
                    for error in errors:
                        log.error("%s", error)
            except Exception as exc:  # pragma: no cover - workers already gone
                log.warning("closing the workers' resources: %s", exc)
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self._config is not None:
            self._config.__exit__(None, None, None)
        _close_worker()


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
    resolved = resolve_pipeline(pipeline, registry)
    refs = getattr(plugin_manager, "extra_plugin_refs", ())
    return replace(resolved, plugin_refs=tuple(refs)) if refs else resolved


def run_pipeline(pipeline: Pipeline | str | os.PathLike[str],
                 units: Iterable[DataId | Mapping[str, Any] | tuple[int, int]] | None = None, *,
                 output: str | os.PathLike[str] | None = None, dask_address: str | None = None,
                 workers: int | None = None, processes: bool = True, progress: bool = True,
                 plugin_manager: Any = None, connect_timeout: float = CONNECT_TIMEOUT,
                 inline: bool = False) -> RunSummary:
    """Run a pipeline over units of work on Dask.

    Parameters
    ----------
    pipeline : Pipeline or path
        The pipeline, or its TOML file.
    units : iterable of DataId, mapping or (visit, detector), optional
        The units to process; default: the pipeline's ``[units]``.
    output : path, optional
        Output repository; default: the pipeline's ``output``.
    dask_address : str, optional
        Run on this Dask scheduler (``tcp://host:8786``) instead of a LocalCluster. Its
        workers must have the stage plugins installed and see the input and output paths.
    workers : int, optional
        LocalCluster workers (default: the CPU count, at most one per task).
    processes : bool
        LocalCluster workers are processes (default) or threads of this process.
    progress : bool
        Show a progress bar per segment on stderr.
    plugin_manager : PluginManager, optional
        Where stages come from (default: :func:`~jointcal_ap.stages.get_plugin_manager`).
    connect_timeout : float
        Seconds to wait for the scheduler at ``dask_address`` (default 10).
    inline : bool
        Run every task in this process, without Dask (debugging, tests).

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
    resolved = prepare_run(pipeline, plugin_manager=plugin_manager)
    return run_resolved(resolved, units, output=output, dask_address=dask_address,
                        workers=workers, processes=processes, progress=progress,
                        connect_timeout=connect_timeout, inline=inline)


def run_resolved(resolved: ResolvedPipeline,
                 units: Iterable[DataId | Mapping[str, Any] | tuple[int, int]] | None = None, *,
                 output: str | os.PathLike[str] | None = None, dask_address: str | None = None,
                 workers: int | None = None, processes: bool = True, progress: bool = True,
                 connect_timeout: float = CONNECT_TIMEOUT, inline: bool = False) -> RunSummary:
    """:func:`run_pipeline` for a pipeline already resolved (:func:`prepare_run`)."""
    start = time.perf_counter()
    config = resolved.pipeline
    out = Path(output) if output is not None else config.output
    if out is None:
        raise PipelineError(f"{config.source}: no output directory: set [pipeline] output or "
                            f"pass output=")
    out = out.resolve()
    if workers is not None and workers < 1:
        raise PipelineError(f"workers must be at least 1, got {workers}")
    if units is not None:
        all_units = units_from(list(units))
    elif config.query is not None:
        if not (out / "registry.sqlite3").exists():
            raise PipelineError(f"{config.source}: units.query: {out} is not a repository yet "
                                f"(ingest into it first)")
        with Repository(out) as peek:
            all_units = config.discover_units(peek)
    else:
        all_units = config.discover_units()
    if len(set(all_units)) != len(all_units):
        raise PipelineError(f"{config.source}: units are listed twice")

    executor = _Executor(dask_address, workers, processes, inline, connect_timeout)
    failures: dict[DataId, UnitResult] = {}
    no_work: dict[DataId, UnitResult] = {}
    ran: set[DataId] = set()
    stage_seconds: dict[str, float] = {s.label: 0.0 for s in resolved.stages}
    unit_seconds: dict[str, dict[str, float]] = {}
    try:
        if dask_address and not inline:  # an unreachable scheduler: nothing is written
            executor.connect(len(all_units))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "pipeline.json", resolved.describe())
        with Repository(out) as repo:
            for index, segment in enumerate(resolved.segments):
                active = [u for u in all_units if u not in failures and u not in no_work]
                if not active:
                    break
                tasks = _plan(resolved, index, segment, repo, active, failures, no_work)
                if not tasks:
                    continue
                identities = {d: t.identities[d] for t in tasks for d in t.data_ids}
                done: list[tuple[DataId, str, str, float]] = []
                nothing: list[tuple[DataId, str, str, float]] = []

                def on_result(results: list[UnitResult], segment: Segment = segment,
                              done: list = done, nothing: list = nothing, active: list = active,
                              identities: dict = identities) -> None:
                    for result in results:
                        for label, sec in result.seconds.items():
                            stage_seconds[label] += sec
                        if segment.kind != "gather":
                            unit_seconds.setdefault(result.unit.key, {}).update(result.seconds)
                        hit = active if segment.kind == "gather" else [result.unit]
                        if result.status == "done":
                            repo.register(result.refs)
                            done.append((result.unit, segment.fingerprint,
                                         identities[result.unit], sum(result.seconds.values())))
                            ran.update(hit)
                        elif result.status == "no_work":
                            _forget(repo, segment, result.unit, active)
                            nothing.append((result.unit, segment.fingerprint,
                                            identities[result.unit], sum(result.seconds.values())))
                            for u in hit:
                                no_work.setdefault(u, result)
                        else:
                            _forget(repo, segment, result.unit, active)
                            for u in hit:
                                failures.setdefault(u, UnitResult(u, "failed", {}, result.stage,
                                                                  result.error, result.traceback))

                executor.run(resolved, tasks, str(out), segment.label, progress, on_result)
                repo.registry.record_tasks(segment.label, done)
                repo.registry.record_tasks(segment.label, nothing, status="no_work")
        for unit in all_units:
            if unit not in failures:
                (out / "failed" / f"{unit.key}.txt").unlink(missing_ok=True)
    finally:
        executor.close()
    failed = tuple(sorted(failures.values(), key=lambda r: r.unit))
    done_now = sum(1 for u in all_units if u in ran and u not in failures and u not in no_work)
    skipped = len(all_units) - done_now - len(failed) - len(no_work)
    # a stage skipped now keeps the seconds the run that did it measured (same inputs and
    # configuration, or it would have run again): the latency survives a rerun
    keep = {u.key for u in all_units} - {r.unit.key for r in failed}
    labels = {step.label for segment in resolved.segments for step in segment.stages}
    for key, seconds in _earlier_unit_seconds(out).items():
        if key in keep:  # (stages no longer in the pipeline are dropped)
            earlier = {label: t for label, t in seconds.items() if label in labels}
            unit_seconds[key] = {**earlier, **unit_seconds.get(key, {})}
    summary = RunSummary(config.name, out, len(all_units), done_now, skipped, failed,
                         stage_seconds, time.perf_counter() - start,
                         executor.scheduler if executor.used else "nothing to do",
                         tuple(sorted(no_work.values(), key=lambda r: r.unit)),
                         {u: unit_seconds[u] for u in sorted(unit_seconds)})
    write_json(out / "run_summary.json", summary.to_dict())
    return summary


def _earlier_unit_seconds(out: Path) -> dict[str, dict[str, float]]:
    """``unit_seconds`` of the run summary already in ``out`` (empty if none or unreadable)."""
    try:
        earlier = json.loads((out / "run_summary.json").read_text())
        return {str(k): {str(s): float(t) for s, t in v.items()}
                for k, v in dict(earlier.get("unit_seconds", {})).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _plan(resolved: ResolvedPipeline, index: int, segment: Segment, repo: Repository,
          active: list[DataId], failures: dict[DataId, UnitResult],
          no_work: dict[DataId, UnitResult] | None = None) -> list[_Task]:
    """The tasks of one segment that are not done yet (a unit whose inputs cannot be resolved
    fails here, named)."""
    _ingest_missing(resolved, repo, active)
    planner = _Planner(resolved, repo, active)
    visits, detectors = _registry_records(repo, active)
    done = repo.registry.tasks(segment.label)

    def plan_unit(unit: DataId) -> tuple[dict[str, _Input], str] | None:
        try:
            return planner.plan_inputs(segment, unit, active)
        except _InputReadError as exc:
            error = f"input {exc.dataset!r}: {exc}"
            failures[unit] = UnitResult(unit, "failed", {}, None, error, None)
            _write_failure(repo.root, unit, error, "")
            return None

    def is_done(data_id: DataId, identity: str) -> bool:
        found = done.get(data_id.key)
        if found is None or found[:2] != (segment.fingerprint, identity):
            return False
        if found[2] == "no_work":  # nothing to do with these inputs: still nothing
            if no_work is not None:
                no_work.setdefault(data_id, UnitResult(
                    data_id, "no_work", {}, None, f"{segment.label}: nothing to do (recorded)"))
            return True
        return planner.outputs_present(segment, data_id)

    if segment.kind == "gather":
        run_id = DataId()
        try:
            inputs, identity = planner.plan_inputs(segment, run_id, active)
        except _InputReadError as exc:
            error = f"input {exc.dataset!r}: {exc}"
            for unit in active:
                failures[unit] = UnitResult(unit, "failed", {}, None, error, None)
            _write_failure(repo.root, run_id, error, "")
            return []
        identity = _identity({"inputs": identity, "units": [u.key for u in active]})
        if is_done(run_id, identity):
            return []
        return [_Task(index, (run_id,), {run_id: inputs}, {run_id: identity}, visits, detectors,
                      tuple(active))]
    plans: dict[DataId, tuple[dict[str, _Input], str]] = {}
    for unit in active:
        planned = plan_unit(unit)
        if planned is not None:
            plans[unit] = planned

    # the visits each unit's lookups reach; some may be outside this run's units (a template
    # from visits processed in an earlier run): their records come along, or
    # ``context.visit()`` could not answer
    looked_up = {u: {d.get("visit") for source in p[0].values() for d, _ in source.items or ()}
                 for u, p in plans.items()}
    reached = set().union(*looked_up.values()) - set(visits) - {None}
    if reached:
        more_visits, more_detectors = _registry_records(
            repo, [DataId(visit=v) for v in sorted(reached)])
        visits = {**visits, **more_visits}
        detectors = {**detectors, **more_detectors}

    def records(unit: DataId) -> dict:
        wanted = {unit.get("visit")} | looked_up[unit]
        return {k: v for k, v in detectors.items() if k[0] in wanted}

    if segment.kind == "unit":
        # every visit's record (small); detectors of the unit's visit and of what it looks up
        return [_Task(index, (u,), {u: p[0]}, {u: p[1]}, visits, records(u))
                for u, p in plans.items() if not is_done(u, p[1])]
    # ordered: one task per unit, waiting for every earlier unit that overlaps it
    placed = []
    for unit in plans:
        det = detectors.get((unit.get("visit"), unit.get("detector")))
        if det is None or unit.get("visit") not in visits:
            error = (f"{segment.label!r} runs overlapping units in time order: unit {unit.key} "
                     f"has no visit/detector in the registry (no Exposure input to read it from)")
            failures[unit] = UnitResult(unit, "failed", {}, None, error, None)
            _write_failure(repo.root, unit, error, "")
            continue
        placed.append((visits[unit.visit].mjd_tai, unit.visit, unit.get("detector", 0), unit, det))
    placed.sort(key=lambda p: p[:3])
    units = [p[3] for p in placed]
    margin = max(getattr(s.stage, "order_margin_arcsec", 0.0) for s in segment.stages) / 3600.0
    waits = earlier_neighbours([p[4].ra for p in placed], [p[4].dec for p in placed],
                               [p[4].radius_deg for p in placed], margin_deg=margin)
    # a redone unit redoes every later unit that waits on it
    redo = needs_redo([not is_done(u, plans[u][1]) for u in units], waits)
    waits = drop_implied(waits)
    position: dict[int, int] = {}
    tasks = []
    for i, unit in enumerate(units):
        if not redo[i]:
            continue
        position[i] = len(tasks)
        p = plans[unit]
        tasks.append(_Task(index, (unit,), {unit: p[0]}, {unit: p[1]}, visits, records(unit),
                           after=tuple(position[j] for j in waits[i] if j in position)))
    return tasks


def _forget(repo: Repository, segment: Segment, data_id: DataId, units: Sequence[DataId]) -> None:
    """A failed task: its segment's outputs from earlier configurations are not current."""
    keys = []
    for step in segment.stages:
        for port, dataset in step.outputs.items():
            targets = units if step.out_ports[port].per_unit else [data_id]
            keys.extend((dataset, t) for t in targets)
    refs = [ref for ref in (repo.registry.dataset(d, t) for d, t in keys) if ref is not None]
    repo.delete_files(refs)
    repo.registry.remove_datasets(keys)
    repo.registry.forget_tasks(segment.label, [data_id])


def is_done(output: str | os.PathLike[str], unit: DataId | tuple[int, int],
            resolved: ResolvedPipeline) -> bool:
    """Whether ``unit`` has completed every segment of ``resolved`` in the repository
    ``output``, with the current inputs (what a rerun would skip)."""
    (unit,) = units_from([unit])
    if not (Path(output) / "registry.sqlite3").exists():
        return False
    with Repository(output) as repo:
        for index, segment in enumerate(resolved.segments):
            failures: dict[DataId, UnitResult] = {}
            if _plan(resolved, index, segment, repo, [unit], failures) or failures:
                return False
    return True


def execute_unit(resolved: ResolvedPipeline, unit: DataId | tuple[int, int],
                 output: str | os.PathLike[str]) -> UnitResult:
    """Run every segment of a resolved pipeline on one unit, in this process (no Dask).

    Returns the unit's outcome: ``"done"`` (or ``"skipped"`` if it was done before) or its
    first failure. For debugging a stage and for tests; :func:`run_pipeline` is the runner.
    """
    (unit,) = units_from([unit])
    summary = run_resolved(resolved, [unit], output=output, inline=True, progress=False)
    if summary.failures:
        return summary.failures[0]
    return UnitResult(unit, "done" if summary.done else "skipped", dict(summary.stage_seconds))
