"""Pipeline configuration (TOML) and its resolution against the registered stages.

A pipeline file::

    [pipeline]
    name = "detect"
    output = "run-out"                 # the output repository, relative to this file

    [inputs]                           # dataset name = path template (any dimension:
    exposure = "exposures/visit{visit}_det{detector}.fits"   # {visit} {detector} {band} ...
    refcat = "refcats/gaia"            # no dimension: one dataset for the whole run

    [units]                            # visits x detectors ...
    visits = [1, 2]
    detectors = [0, 1, 2, 3]
    # ... or: list = [[1, 0], [2, 3]]  ... or: discover = "exposure" (every file that exists)
    # ... or: query = "raw" (every data ID of the dataset "raw" already in the repository)

    [[stages]]
    name = "detect"
    options = { threshold_sigma = 5.0 }
    # inputs = { exposure = "exposure" }   port = dataset (default: the port's own name)
    # outputs = { sources = "sources" }
    # label = "detect"                     to run one stage twice under two labels

:func:`resolve_pipeline` checks, before anything runs, that every stage exists, that its
options are valid, that every input a stage consumes is produced by an earlier stage or
given in ``[inputs]`` with the same dataset type, and that the dimensions fit (a per-unit
stage reads datasets of its unit or of fewer dimensions; a gather stage reads every unit's).
It then cuts the stages into **segments**: consecutive per-unit stages run together, unit by
unit, in one task; a gather stage, an ordered stage, or a stage that looks up other units'
outputs of the same segment starts a new one (it must wait for all units of the one before).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jointcal_ap.stages.contract import (
    DatasetType,
    In,
    Out,
    Stage,
    Unit,
    input_ports,
    make_options,
    options_to_dict,
    output_ports,
)
from jointcal_ap.stages.errors import PipelineError
from jointcal_ap.stages.registry import StageRegistry, plugin_origin
from jointcal_ap.store.dimensions import DataId, DimensionError, template_dimensions
from jointcal_ap.store.repository import file_identity

__all__ = [
    "Pipeline",
    "ResolvedPipeline",
    "ResolvedStage",
    "Segment",
    "StageSpec",
    "file_identity",
    "load_pipeline",
    "resolve_pipeline",
    "units_from",
]

_PORT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class StageSpec:
    """One ``[[stages]]`` entry.

    Attributes
    ----------
    name : str
        The registered stage's name.
    options : mapping
        Raw option values (checked against the stage's ``Options`` at resolution).
    inputs, outputs : mapping
        Port → dataset name; ports not listed use their own name.
    label : str
        Name of this step in the pipeline (default: ``name``); unique.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Pipeline:
    """A configured sequence of stages over units of work.

    Attributes
    ----------
    name : str
        The pipeline's name.
    stages : tuple of StageSpec
        In execution order.
    inputs : mapping
        Dataset name → path template; ``{dimension}`` fields make it per data ID.
    output : Path or None
        Output repository (``run_pipeline(output=...)`` overrides it).
    units : tuple of DataId or None
        The units, if listed in the file.
    discover : str or None
        The name of a per-unit input whose existing files define the units.
    query : str or None
        The name of a dataset in the output repository whose data IDs are the units.
    source : str
        Where the configuration came from (a path, for messages).
    """

    name: str
    stages: tuple[StageSpec, ...]
    inputs: Mapping[str, str] = field(default_factory=dict)
    output: Path | None = None
    units: tuple[DataId, ...] | None = None
    discover: str | None = None
    source: str = "<pipeline>"
    query: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".",
                  source: str = "<pipeline>") -> Pipeline:
        """Build from the parsed TOML; relative paths are taken from ``base_dir``.

        ``base_dir`` is made absolute now, so that the input and output paths mean the same
        to Dask workers that run in another working directory.

        Raises
        ------
        PipelineError
            Naming ``source``, the key and what was expected.
        """
        base = Path(base_dir).resolve()

        def fail(key: str, message: str) -> PipelineError:
            return PipelineError(f"{source}: {key}: {message}")

        unknown = sorted(set(data) - {"pipeline", "inputs", "units", "stages"})
        if unknown:
            raise fail(unknown[0], "unknown table; expected pipeline, inputs, units, stages")
        head = data.get("pipeline", {})
        if not isinstance(head, Mapping) or set(head) - {"name", "output"}:
            raise fail("pipeline", "expected a table with name and output")
        name = head.get("name", Path(source).stem)
        output = head.get("output")
        if output is not None and not isinstance(output, str):
            raise fail("pipeline.output", f"expected a path string, got {output!r}")
        inputs = data.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise fail("inputs", "expected a table of dataset name = path template")
        resolved_inputs = {}
        for key, template in inputs.items():
            if not _PORT.match(key) or not isinstance(template, str):
                raise fail(f"inputs.{key}", "expected name = \"path template\"")
            _template_fields(template, f"{source}: inputs.{key}")
            resolved_inputs[key] = str(base / template)
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise fail("stages", "expected at least one [[stages]] table")
        stages = []
        for i, raw in enumerate(raw_stages):
            where = f"stages[{i}]"
            if not isinstance(raw, Mapping) or "name" not in raw:
                raise fail(where, "needs name = \"stage name\"")
            extra = sorted(set(raw) - {"name", "options", "inputs", "outputs", "label"})
            if extra:
                raise fail(f"{where}.{extra[0]}", "unknown key; expected name, options, inputs, "
                                                  "outputs, label")
            for key in ("options", "inputs", "outputs"):
                if not isinstance(raw.get(key, {}), Mapping):
                    raise fail(f"{where}.{key}", "expected a table")
            for key in ("inputs", "outputs"):
                for port, dataset in raw.get(key, {}).items():
                    if not (isinstance(dataset, str) and _PORT.match(dataset)):
                        raise fail(f"{where}.{key}.{port}", f"expected a dataset name, got {dataset!r}")
            stages.append(StageSpec(str(raw["name"]), dict(raw.get("options", {})),
                                    dict(raw.get("inputs", {})), dict(raw.get("outputs", {})),
                                    str(raw.get("label", raw["name"]))))
        labels = [s.label for s in stages]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise fail("stages", f"labels {duplicates} appear twice; give label = \"...\"")
        units, discover, query = _parse_units(data.get("units"), resolved_inputs, fail)
        return cls(str(name), tuple(stages), resolved_inputs,
                   base / output if output is not None else None, units, discover, source,
                   query)

    def discover_units(self, repository: Any = None) -> tuple[DataId, ...]:
        """The units: as listed, found from the files of the ``discover`` input, or the data
        IDs of the ``query`` dataset in ``repository`` (a :class:`~jointcal_ap.store.
        repository.Repository`)."""
        if self.units is not None:
            return self.units
        if self.discover is not None:
            return _discover(self.inputs[self.discover], f"{self.source}: units.discover")
        if self.query is not None:
            if repository is None:
                raise PipelineError(f"{self.source}: units.query needs the output repository")
            refs = repository.query(self.query)
            if not refs:
                raise PipelineError(f"{self.source}: units.query: no dataset {self.query!r} in "
                                    f"{repository.root} (ingest it first)")
            return tuple(sorted({_as_unit(r.data_id) for r in refs}))
        raise PipelineError(f"{self.source}: no [units]; list them, or give discover = "
                            f"\"INPUT\" or query = \"DATASET\"")


def _as_unit(data_id: DataId) -> DataId:
    """A visit × detector data ID as a :class:`Unit` (so that stages see ``Unit``)."""
    if {"visit", "detector"} <= data_id.dimensions:
        return Unit(data_id["visit"], data_id["detector"],
                    **{k: v for k, v in data_id.items() if k not in ("visit", "detector")})
    return data_id


def _template_fields(template: str, where: str) -> frozenset[str]:
    try:
        return template_dimensions(template)
    except DimensionError as exc:
        raise PipelineError(f"{where}: {exc}") from None


def _parse_units(raw: Any, inputs: Mapping[str, str], fail: Any
                 ) -> tuple[tuple[DataId, ...] | None, str | None, str | None]:
    if raw is None:
        return None, None, None
    if not isinstance(raw, Mapping):
        raise fail("units", "expected a table")
    keys = set(raw)
    if keys == {"visits", "detectors"}:
        visits, detectors = raw["visits"], raw["detectors"]
        if not (_ints(visits) and _ints(detectors)):
            raise fail("units", "visits and detectors must be lists of integers")
        return tuple(Unit(v, d) for v in visits for d in detectors), None, None
    if keys == {"list"}:
        pairs = raw["list"]
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and _ints(p)
                                                for p in pairs)):
            raise fail("units.list", "expected a list of [visit, detector] integer pairs")
        return tuple(Unit(v, d) for v, d in pairs), None, None
    if keys == {"discover"}:
        name = raw["discover"]
        if name not in inputs:
            raise fail("units.discover", f"{name!r} is not one of the [inputs] {sorted(inputs)}")
        if not _template_fields(inputs[name], "units.discover"):
            raise fail("units.discover", f"input {name!r} has no {{dimension}} in its template")
        return None, str(name), None
    if keys == {"query"}:
        name = raw["query"]
        if not (isinstance(name, str) and _PORT.match(name)):
            raise fail("units.query", f"expected a dataset name, got {name!r}")
        return None, None, name
    raise fail("units", "expected visits and detectors, or list, or discover, or query")


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in values)


def _discover(template: str, where: str) -> tuple[DataId, ...]:
    """Data IDs whose file exists for a path template."""
    from jointcal_ap.store.dimensions import DIMENSIONS

    pattern, regex = "", ""
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        pattern += glob.escape(literal)
        regex += re.escape(literal)
        if name is not None:
            pattern += "*"
            value = r"-?\d+" if DIMENSIONS[name].type is int else r"[^/]+?"
            regex += rf"(?P<{name}>{value})" if f"(?P<{name}>" not in regex else rf"(?P={name})"
    units = set()
    for path in glob.glob(pattern):
        match = re.fullmatch(regex, path)
        if match:
            values = {k: (int(v) if DIMENSIONS[k].type is int else v)
                      for k, v in match.groupdict().items()}
            units.add(_as_unit(DataId(values)))
    if not units:
        raise PipelineError(f"{where}: no file matches {template!r}")
    return tuple(sorted(units))


def load_pipeline(path: str | Path) -> Pipeline:
    """Read a pipeline TOML file (relative paths are relative to the file)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: pipeline file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: not valid TOML: {exc}") from None
    return Pipeline.from_dict(data, base_dir=path.parent, source=str(path))


@dataclass(frozen=True)
class ResolvedStage:
    """A pipeline step bound to its stage class and checked options.

    Attributes
    ----------
    label : str
        The step's name in this pipeline.
    stage : type of Stage
        The stage class.
    options : Options instance
        Its options.
    inputs, outputs : mapping
        Port → dataset name.
    plugin, distribution : str, str or None
        Where the stage came from.
    """

    label: str
    stage: type[Stage]
    options: Any
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    plugin: str
    distribution: str | None

    @property
    def origin(self) -> str:
        """``"(plugin 'x' from dist 1.0)"``, for messages."""
        return plugin_origin(self.plugin, self.distribution)

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def in_ports(self) -> dict[str, In]:
        return input_ports(self.stage)

    @property
    def out_ports(self) -> dict[str, Out]:
        return output_ports(self.stage)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for provenance and the fingerprint)."""
        return {"label": self.label, "stage": self.stage.name, "version": self.stage.version,
                "kind": self.kind, "plugin": self.plugin, "distribution": self.distribution,
                "options": options_to_dict(self.options), "inputs": dict(self.inputs),
                "outputs": dict(self.outputs)}


@dataclass(frozen=True)
class Segment:
    """Stages that run together: per-unit stages unit by unit in one task, or one gather or
    ordered stage.

    Attributes
    ----------
    kind : str
        ``"unit"``, ``"gather"`` or ``"ordered"``.
    stages : tuple of ResolvedStage
    fingerprint : str
        A hash of these stages (versions, options, ports), of the input path templates they
        read and of the segments before: work done under another fingerprint is redone.
    """

    kind: str
    stages: tuple[ResolvedStage, ...]
    fingerprint: str

    @property
    def label(self) -> str:
        """The stage labels joined by ``+`` (the registry's name for this step)."""
        return "+".join(s.label for s in self.stages)


@dataclass(frozen=True)
class ResolvedPipeline:
    """A pipeline whose stages are known to connect; what the runner ships to workers.

    Attributes
    ----------
    pipeline : Pipeline
        The configuration.
    stages : tuple of ResolvedStage
        In order.
    dataset_types : mapping
        Dataset name (inputs and every output) → its :class:`DatasetType`.
    dataset_dimensions : mapping
        Dataset name → the dimensions of its data IDs (``()`` for whole-run datasets;
        ``None`` for per-unit datasets, whose data IDs are the units').
    segments : tuple of Segment
        The execution order.
    """

    pipeline: Pipeline
    stages: tuple[ResolvedStage, ...]
    dataset_types: Mapping[str, DatasetType]
    dataset_dimensions: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()
    plugin_refs: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict[str, Any]:
        """The effective pipeline, JSON-able."""
        return {"name": self.pipeline.name, "source": self.pipeline.source,
                "inputs": dict(self.pipeline.inputs),
                "stages": [s.describe() for s in self.stages],
                "segments": [{"label": g.label, "kind": g.kind, "fingerprint": g.fingerprint}
                             for g in self.segments]}

    @property
    def fingerprint(self) -> str:
        """A hash of the whole pipeline (the last segment's fingerprint covers all before)."""
        return self.segments[-1].fingerprint if self.segments else ""

    @property
    def consumed_inputs(self) -> tuple[str, ...]:
        """The pipeline inputs that some stage reads, sorted."""
        return tuple(sorted(set(self.pipeline.inputs) & set(self.dataset_types)))

    def is_input(self, dataset: str) -> bool:
        """Whether ``dataset`` is a pipeline input (a path template) rather than produced."""
        return dataset in self.pipeline.inputs

    def input_path(self, dataset: str, data_id: DataId) -> Path:
        """The file of a pipeline input for a data ID (of which it uses a subset)."""
        return Path(DataId(data_id).format(self.pipeline.inputs[dataset]))

    def input_identities(self, unit: DataId,
                         cache: dict[Path, dict[str, Any] | None] | None = None
                         ) -> dict[str, dict[str, Any] | None]:
        """The identity (:func:`file_identity`) of every pipeline input ``unit`` reads."""
        out = {}
        for dataset in self.consumed_inputs:
            path = self.input_path(dataset, unit)
            if cache is None:
                out[dataset] = file_identity(path)
            else:
                if path not in cache:
                    cache[path] = file_identity(path)
                out[dataset] = cache[path]
        return out


def resolve_pipeline(pipeline: Pipeline, registry: StageRegistry) -> ResolvedPipeline:
    """Bind a pipeline to registered stages and check that they connect.

    Raises
    ------
    PipelineError
        Unknown stage or dataset type, bad options, an input nothing produces, a dataset
        produced twice, one dataset name used with two types, or dimensions that do not fit.
        Raised before anything runs.
    """
    src = pipeline.source
    known_types = registry.dataset_types
    entries = registry.stages
    produced: dict[str, tuple[DatasetType, str]] = {}  # dataset → (type, producer label)
    dims: dict[str, frozenset[str] | None] = {}
    consumed_inputs: dict[str, tuple[DatasetType, str]] = {}
    resolved: list[ResolvedStage] = []
    for spec in pipeline.stages:
        where = f"{src}: stage {spec.label!r}"
        if spec.name not in entries:
            raise PipelineError(f"{where}: no stage named {spec.name!r}; available: "
                                f"{sorted(entries)}")
        entry = entries[spec.name]
        cls = entry.stage
        ins, outs = input_ports(cls), output_ports(cls)
        for kind, ports in (("inputs", spec.inputs), ("outputs", spec.outputs)):
            bad = sorted(set(ports) - set(getattr(cls, kind)))
            if bad:
                raise PipelineError(f"{where}: {kind} {bad} are not ports of stage {cls.name!r}, "
                                    f"which has {sorted(getattr(cls, kind))}")
        options = make_options(cls, spec.options, where=src)
        inputs = {port: spec.inputs.get(port, port) for port in cls.inputs}
        outputs = {port: spec.outputs.get(port, port) for port in cls.outputs}

        def dataset_type(type_name: str, port: str, kind: str, where: str = where,
                         cls: type[Stage] = cls) -> DatasetType:
            if type_name not in known_types:
                raise PipelineError(f"{where}: {kind} {port!r} of stage {cls.name!r} has dataset "
                                    f"type {type_name!r}, which no plugin registers; known: "
                                    f"{sorted(known_types)}")
            return known_types[type_name]

        for port, dataset in inputs.items():
            want = dataset_type(ins[port].type, port, "input")
            if dataset in produced:
                have, producer = produced[dataset]
                origin = f"stage {producer!r}"
            elif dataset in pipeline.inputs:
                have, producer = consumed_inputs.setdefault(dataset, (want, spec.label))
                origin = f"[inputs] (read as {have.name} for stage {producer!r})"
                dims[dataset] = _template_fields(pipeline.inputs[dataset], where)
            else:
                raise PipelineError(
                    f"{where}: consumes {dataset!r} ({want.name}) on port {port!r}, which no "
                    f"earlier stage produces and [inputs] does not give; available: "
                    f"{sorted(set(produced) | set(pipeline.inputs))}")
            if not have.is_a(want.name, known_types):
                raise PipelineError(f"{where}: port {port!r} needs {want.name} but {dataset!r} "
                                    f"from {origin} is {have.name}")
            if dataset in pipeline.inputs and have.reader is None:
                raise PipelineError(f"{where}: {dataset!r} is a pipeline input of type "
                                    f"{have.name}, which cannot be read from a file")
            _check_dimensions(cls, port, ins[port], dataset, dims[dataset], where)
        for port, dataset in outputs.items():
            dt = dataset_type(outs[port].type, port, "output")
            if dataset in produced or dataset in pipeline.inputs:
                by = (f"stage {produced[dataset][1]!r}" if dataset in produced else "[inputs]")
                raise PipelineError(f"{where}: output {dataset!r} is already given by {by}; "
                                    f"rename it with outputs = {{ {port} = \"...\" }}")
            if dt.writer is None:
                raise PipelineError(f"{where}: output {port!r} has dataset type {dt.name}, which "
                                    f"cannot be written to the repository")
            produced[dataset] = (dt, spec.label)
            dims[dataset] = (frozenset() if cls.kind == "gather" and not outs[port].per_unit
                             else None)
        resolved.append(ResolvedStage(spec.label, cls, options, inputs, outputs, entry.plugin,
                                      entry.distribution))
    types = {name: dt for name, (dt, _) in {**consumed_inputs, **produced}.items()}
    segments = _segments(pipeline, tuple(resolved))
    return ResolvedPipeline(pipeline, tuple(resolved), types, dims, segments)


def _check_dimensions(cls: type[Stage], port: str, spec: In, dataset: str,
                      dataset_dims: frozenset[str] | None, where: str) -> None:
    """A ``same`` input fits the unit; a gather stage's ``same`` input is whole-run."""
    if spec.lookup == "same":
        if cls.kind == "gather":
            if dataset_dims is None or dataset_dims:
                have = "per unit" if dataset_dims is None else sorted(dataset_dims)
                raise PipelineError(f"{where}: gather stage {cls.name!r} reads {dataset!r} on "
                                    f"port {port!r} as one value, but its data IDs are {have}; "
                                    f"declare the port In(type, lookup=\"all\")")
        elif dataset_dims is not None and not dataset_dims <= set(cls.dimensions):
            raise PipelineError(f"{where}: {dataset!r} (port {port!r}) has dimensions "
                                f"{sorted(dataset_dims)}, more than the stage's units "
                                f"{list(cls.dimensions)}")
    elif dataset_dims is not None and dataset_dims and not set(cls.dimensions) <= dataset_dims \
            and cls.kind != "gather":
        raise PipelineError(f"{where}: {dataset!r} (port {port!r}, lookup {spec.lookup!r}) has "
                            f"dimensions {sorted(dataset_dims)}: not one per unit")


def _segments(pipeline: Pipeline, stages: tuple[ResolvedStage, ...]) -> tuple[Segment, ...]:
    groups: list[list[ResolvedStage]] = []
    in_group: set[str] = set()
    for step in stages:
        looks_back = any(step.in_ports[p].multiple and ds in in_group
                         for p, ds in step.inputs.items())
        if (not groups or step.kind != "unit" or groups[-1][0].kind != "unit" or looks_back):
            groups.append([])
            in_group = set()
        groups[-1].append(step)
        in_group.update(step.outputs.values())
    segments, previous = [], ""
    for group in groups:
        reads = sorted({ds for st in group for ds in st.inputs.values()
                        if ds in pipeline.inputs})
        description = {"stages": [st.describe() for st in group], "previous": previous,
                       "inputs": {ds: pipeline.inputs[ds] for ds in reads}}
        text = json.dumps(description, sort_keys=True, default=str)
        previous = hashlib.sha256(text.encode()).hexdigest()[:16]
        segments.append(Segment(group[0].kind, tuple(group), previous))
    return tuple(segments)


def units_from(values: Sequence[DataId | Mapping[str, Any] | tuple[int, int]]
               ) -> tuple[DataId, ...]:
    """Normalise units: ``(visit, detector)`` pairs become :class:`Unit`, mappings DataIds."""
    out = []
    for u in values:
        if isinstance(u, DataId):
            out.append(_as_unit(u))
        elif isinstance(u, Mapping):
            out.append(_as_unit(DataId(u)))
        else:
            out.append(Unit(*u))
    return tuple(out)
