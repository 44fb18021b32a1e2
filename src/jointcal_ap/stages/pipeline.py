"""Pipeline configuration (TOML) and its resolution against the registered stages.

A pipeline file::

    [pipeline]
    name = "detect"
    output = "run-out"                 # relative to this file

    [inputs]                           # dataset name = path template ({visit}, {detector})
    exposure = "exposures/visit{visit}_det{detector}.fits"

    [units]                            # visits x detectors ...
    visits = [1, 2]
    detectors = [0, 1, 2, 3]
    # ... or: list = [[1, 0], [2, 3]]  ... or: discover = "exposure" (every file that exists)

    [[stages]]
    name = "detect"
    options = { threshold_sigma = 5.0 }
    # inputs = { exposure = "exposure" }   port = dataset (default: the port's own name)
    # outputs = { sources = "sources" }
    # label = "detect"                     to run one stage twice under two labels

:func:`resolve_pipeline` checks, before anything runs, that every stage exists, that its
options are valid, and that every input a stage consumes is produced by an earlier stage or
given in ``[inputs]``, with the same dataset type.
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
    Stage,
    Unit,
    make_options,
    options_to_dict,
)
from jointcal_ap.stages.errors import PipelineError
from jointcal_ap.stages.registry import StageRegistry, plugin_origin

__all__ = [
    "Pipeline",
    "ResolvedPipeline",
    "ResolvedStage",
    "StageSpec",
    "file_identity",
    "load_pipeline",
    "resolve_pipeline",
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
        Dataset name → path template; ``{visit}`` and ``{detector}`` make it per unit.
    output : Path or None
        Output directory (``run_pipeline(output=...)`` overrides it).
    units : tuple of Unit or None
        The units, if listed in the file.
    discover : str or None
        The name of a per-unit input whose existing files define the units.
    source : str
        Where the configuration came from (a path, for messages).
    """

    name: str
    stages: tuple[StageSpec, ...]
    inputs: Mapping[str, str] = field(default_factory=dict)
    output: Path | None = None
    units: tuple[Unit, ...] | None = None
    discover: str | None = None
    source: str = "<pipeline>"

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
        units, discover = _parse_units(data.get("units"), resolved_inputs, fail)
        return cls(str(name), tuple(stages), resolved_inputs,
                   base / output if output is not None else None, units, discover, source)

    def discover_units(self) -> tuple[Unit, ...]:
        """The units: as listed, or found from the files of the ``discover`` input."""
        if self.units is not None:
            return self.units
        if self.discover is None:
            raise PipelineError(f"{self.source}: no [units]; list them or give discover = "
                                f"\"INPUT\"")
        return _discover(self.inputs[self.discover], f"{self.source}: units.discover")


def _template_fields(template: str, where: str) -> set[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise PipelineError(f"{where}: bad path template {template!r}: {exc}") from None
    bad = fields - {"visit", "detector"}
    if bad:
        raise PipelineError(f"{where}: path template {template!r} may only use {{visit}} and "
                            f"{{detector}}, not {sorted(bad)}")
    return fields


def _parse_units(raw: Any, inputs: Mapping[str, str],
                 fail: Any) -> tuple[tuple[Unit, ...] | None, str | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping):
        raise fail("units", "expected a table")
    keys = set(raw)
    if keys == {"visits", "detectors"}:
        visits, detectors = raw["visits"], raw["detectors"]
        if not (_ints(visits) and _ints(detectors)):
            raise fail("units", "visits and detectors must be lists of integers")
        return tuple(Unit(v, d) for v in visits for d in detectors), None
    if keys == {"list"}:
        pairs = raw["list"]
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and _ints(p)
                                                for p in pairs)):
            raise fail("units.list", "expected a list of [visit, detector] integer pairs")
        return tuple(Unit(v, d) for v, d in pairs), None
    if keys == {"discover"}:
        name = raw["discover"]
        if name not in inputs:
            raise fail("units.discover", f"{name!r} is not one of the [inputs] {sorted(inputs)}")
        if _template_fields(inputs[name], "units.discover") != {"visit", "detector"}:
            raise fail("units.discover", f"input {name!r} must use {{visit}} and {{detector}}")
        return None, str(name)
    raise fail("units", "expected visits and detectors, or list, or discover")


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in values)


def _discover(template: str, where: str) -> tuple[Unit, ...]:
    """Units whose file exists for a ``{visit}``/``{detector}`` template."""
    pattern, regex = "", ""
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        pattern += glob.escape(literal)
        regex += re.escape(literal)
        if name is not None:
            pattern += "*"
            regex += rf"(?P<{name}>-?\d+)" if f"(?P<{name}>" not in regex else rf"(?P={name})"
    units = set()
    for path in glob.glob(pattern):
        match = re.fullmatch(regex, path)
        if match:
            units.add(Unit(int(match["visit"]), int(match["detector"])))
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

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for provenance and the fingerprint)."""
        return {"label": self.label, "stage": self.stage.name, "version": self.stage.version,
                "plugin": self.plugin, "distribution": self.distribution,
                "options": options_to_dict(self.options), "inputs": dict(self.inputs),
                "outputs": dict(self.outputs)}


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
    """

    pipeline: Pipeline
    stages: tuple[ResolvedStage, ...]
    dataset_types: Mapping[str, DatasetType]

    def describe(self) -> dict[str, Any]:
        """The effective pipeline, JSON-able."""
        return {"name": self.pipeline.name, "source": self.pipeline.source,
                "inputs": dict(self.pipeline.inputs),
                "stages": [s.describe() for s in self.stages]}

    @property
    def fingerprint(self) -> str:
        """A hash of the stages, versions, options and input path templates: a unit done
        under another fingerprint is redone.

        Where the configuration came from (``source``) is left out, so the same pipeline
        loaded through another spelling of its path has the same fingerprint; the contents
        of the input files are checked separately (:meth:`input_identities`).
        """
        description = self.describe()
        description.pop("source")
        text = json.dumps(description, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def consumed_inputs(self) -> tuple[str, ...]:
        """The pipeline inputs that some stage reads, sorted."""
        return tuple(sorted(set(self.pipeline.inputs) & set(self.dataset_types)))

    def input_path(self, dataset: str, unit: Unit) -> Path:
        """The file of a pipeline input for ``unit``."""
        return Path(unit.format(self.pipeline.inputs[dataset]))

    def input_identities(self, unit: Unit,
                         cache: dict[Path, dict[str, Any] | None] | None = None
                         ) -> dict[str, dict[str, Any] | None]:
        """The identity (:func:`file_identity`) of every input that ``unit`` reads.

        Parameters
        ----------
        unit : Unit
            The unit.
        cache : dict, optional
            Path → identity, shared between calls so that an input common to all units (a
            calibration directory) is scanned once.
        """
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


def file_identity(path: str | Path) -> dict[str, Any] | None:
    """What tells whether an input changed: its size and modification time (ns).

    For a directory (e.g. a calibration), those of the newest file inside it (recursively),
    with the number of files. ``None`` if ``path`` does not exist.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_dir():
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    newest: tuple[int, str, int] = (stat.st_mtime_ns, "", 0)
    count = 0
    for item in sorted(path.rglob("*")):
        try:
            if not item.is_file():
                continue
            item_stat = item.stat()
        except OSError:
            continue
        count += 1
        if item_stat.st_mtime_ns >= newest[0]:
            newest = (item_stat.st_mtime_ns, str(item.relative_to(path)), item_stat.st_size)
    return {"newest": newest[1], "size": newest[2], "mtime_ns": newest[0], "files": count}


def resolve_pipeline(pipeline: Pipeline, registry: StageRegistry) -> ResolvedPipeline:
    """Bind a pipeline to registered stages and check that they connect.

    Raises
    ------
    PipelineError
        Unknown stage or dataset type, bad options, an input nothing produces, a dataset
        produced twice, or one dataset name used with two types. Raised before anything runs.
    """
    src = pipeline.source
    known_types = registry.dataset_types
    entries = registry.stages
    produced: dict[str, tuple[DatasetType, str]] = {}  # dataset → (type, producer label)
    consumed_inputs: dict[str, tuple[DatasetType, str]] = {}
    resolved: list[ResolvedStage] = []
    for spec in pipeline.stages:
        where = f"{src}: stage {spec.label!r}"
        if spec.name not in entries:
            raise PipelineError(f"{where}: no stage named {spec.name!r}; available: "
                                f"{sorted(entries)}")
        entry = entries[spec.name]
        cls = entry.stage
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
            want = dataset_type(cls.inputs[port], port, "input")
            if dataset in produced:
                have, producer = produced[dataset]
                origin = f"stage {producer!r}"
            elif dataset in pipeline.inputs:
                have, producer = consumed_inputs.setdefault(dataset, (want, spec.label))
                origin = f"[inputs] (read as {have.name} for stage {producer!r})"
            else:
                raise PipelineError(
                    f"{where}: consumes {dataset!r} ({want.name}) on port {port!r}, which no "
                    f"earlier stage produces and [inputs] does not give; available: "
                    f"{sorted(set(produced) | set(pipeline.inputs))}")
            if have.name != want.name:
                raise PipelineError(f"{where}: port {port!r} needs {want.name} but {dataset!r} "
                                    f"from {origin} is {have.name}")
            if dataset in pipeline.inputs and have.reader is None:
                raise PipelineError(f"{where}: {dataset!r} is a pipeline input of type "
                                    f"{have.name}, which cannot be read from a file")
        for port, dataset in outputs.items():
            dt = dataset_type(cls.outputs[port], port, "output")
            if dataset in produced or dataset in pipeline.inputs:
                by = (f"stage {produced[dataset][1]!r}" if dataset in produced else "[inputs]")
                raise PipelineError(f"{where}: output {dataset!r} is already given by {by}; "
                                    f"rename it with outputs = {{ {port} = \"...\" }}")
            produced[dataset] = (dt, spec.label)
        resolved.append(ResolvedStage(spec.label, cls, options, inputs, outputs, entry.plugin,
                                      entry.distribution))
    types = {name: dt for name, (dt, _) in {**consumed_inputs, **produced}.items()}
    return ResolvedPipeline(pipeline, tuple(resolved), types)


def units_from(values: Sequence[Unit | tuple[int, int]]) -> tuple[Unit, ...]:
    """Normalise ``(visit, detector)`` pairs to :class:`Unit` objects."""
    return tuple(u if isinstance(u, Unit) else Unit(*u) for u in values)
