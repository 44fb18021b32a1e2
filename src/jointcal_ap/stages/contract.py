"""The stage contract: what a stage declares, and how the host checks it.

A stage is a :class:`Stage` subclass that declares

- ``name`` and ``version`` (strings; the version is recorded in every output's provenance);
- ``inputs`` and ``outputs``: port name → dataset type name (a :class:`DatasetType`
  registered by the core or a plugin, e.g. ``"CalibratedExposure"``), or an :class:`In` /
  :class:`Out` declaration for inputs looked up across units and per-unit outputs of
  gather stages;
- optionally ``kind`` (use :class:`GatherStage` or :class:`OrderedStage` as the base class)
  and ``dimensions`` (default visit × detector);
- ``Options``: a frozen dataclass whose fields are each documented, with :func:`option`
  (``doc=``) or in the class docstring's NumPy-style ``Attributes`` section;
- ``run(self, unit, **inputs) -> dict`` mapping every output port to its value.

Example
-------
>>> from dataclasses import dataclass
>>> from jointcal_ap.stages import Stage, option
>>> class Scale(Stage):
...     '''Multiply an image by a constant.'''
...     name = "scale"
...     version = "1.0"
...     inputs = {"image": "Array"}
...     outputs = {"scaled": "Array"}
...     @dataclass(frozen=True)
...     class Options:
...         factor: float = option(2.0, doc="multiplier (dimensionless)")
...     def run(self, unit, image):
...         return {"scaled": image * self.options.factor}
>>> validate_stage_class(Scale)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import operator
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages.errors import PipelineError, StageError
from jointcal_ap.store.dimensions import DataId

__all__ = [
    "KINDS",
    "LOOKUPS",
    "DatasetType",
    "GatherStage",
    "In",
    "NoOptions",
    "OrderedStage",
    "Out",
    "Stage",
    "Unit",
    "check_outputs",
    "input_ports",
    "make_options",
    "option",
    "option_docs",
    "options_to_dict",
    "output_ports",
    "validate_stage_class",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Unit(DataId):
    """The usual unit of work: a visit × detector (a :class:`~jointcal_ap.store.DataId`).

    ``Unit(12, 3)`` is ``DataId(visit=12, detector=3)``; more dimensions may be given by
    keyword (``Unit(12, 3, instrument="sim")``). Stages receive their unit as a data ID, so
    a stage written for ``Unit`` (``unit.visit``, ``unit.detector``, ``unit.key``) keeps
    working.
    """

    __slots__ = ()

    def __init__(self, visit: Any, detector: Any, /, **more: Any) -> None:
        for field, value in (("visit", visit), ("detector", detector)):
            if isinstance(value, bool | np.bool_):
                raise TypeError(f"Unit.{field} must be an integer, got {value!r}")
            try:
                operator.index(value)
            except TypeError:
                raise TypeError(f"Unit.{field} must be an integer, got {value!r}") from None
        super().__init__(visit=visit, detector=detector, **more)


@dataclass(frozen=True)
class In:
    """An input port: which dataset type, and which data IDs of it the stage receives.

    ``inputs = {"calexp": "CalibratedExposure"}`` is short for ``In("CalibratedExposure")``.

    Attributes
    ----------
    type : str
        The dataset type's name.
    lookup : str
        ``"same"`` (default): the dataset of the unit's own data ID, or of a subset of its
        dimensions (a whole-run calibration has the empty data ID); the stage gets the value.
        ``"all"``: the dataset of every unit of the run (what gather stages read).
        ``"overlapping"``: the dataset of every detector of *other* visits whose sky
        footprint overlaps the unit's (from the visit registry), e.g. to build a template.
        For ``"all"`` and ``"overlapping"`` the stage gets a mapping data ID →
        :class:`~jointcal_ap.stages.context.DatasetHandle` (read on ``.get()``).
    before : bool
        ``"overlapping"`` only: visits whose mid-time is before the unit's.
    same_band : bool
        ``"overlapping"`` only: visits in the unit's band.
    doc : str
        What the stage does with it.
    dataset : str
        The dataset the port reads when the pipeline does not say (default: the port's own
        name), e.g. a ``calexps`` lookup port reading the ``calexp`` dataset.
    """

    type: str
    lookup: str = "same"
    before: bool = False
    same_band: bool = False
    doc: str = ""
    dataset: str = ""

    def __post_init__(self) -> None:
        if self.lookup not in LOOKUPS:
            raise ValueError(f"In.lookup must be one of {LOOKUPS}, got {self.lookup!r}")
        if (self.before or self.same_band) and self.lookup != "overlapping":
            raise ValueError("In.before and In.same_band apply to lookup='overlapping' only")

    @property
    def multiple(self) -> bool:
        """Whether the stage gets a mapping of data ID → handle rather than a value."""
        return self.lookup != "same"


@dataclass(frozen=True)
class Out:
    """An output port.

    ``outputs = {"calexp": "CalibratedExposure"}`` is short for ``Out("CalibratedExposure")``.

    Attributes
    ----------
    type : str
        The dataset type's name.
    per_unit : bool
        Gather stages only: the stage returns a mapping data ID → value (one dataset per
        unit, e.g. a calibration per visit × detector) instead of one value for the run.
    doc : str
        What it is.
    """

    type: str
    per_unit: bool = False
    doc: str = ""


#: The kinds of :class:`In` lookups.
LOOKUPS = ("same", "all", "overlapping")
#: The stage kinds: per unit, one call over many units, per unit with overlapping units in
#: time order.
KINDS = ("unit", "gather", "ordered")


def input_ports(stage: Any) -> dict[str, In]:
    """A stage's inputs as :class:`In` declarations (strings expanded)."""
    return {port: spec if isinstance(spec, In) else In(spec) for port, spec in stage.inputs.items()}


def output_ports(stage: Any) -> dict[str, Out]:
    """A stage's outputs as :class:`Out` declarations (strings expanded)."""
    return {port: spec if isinstance(spec, Out) else Out(spec)
            for port, spec in stage.outputs.items()}


def option(default: Any = dataclasses.MISSING, *, doc: str, **kwargs: Any) -> Any:
    """A documented field of a stage's ``Options`` dataclass.

    Parameters
    ----------
    default : any, optional
        The default value; leave out for a required option.
    doc : str
        What the option means, with its unit; shown by ``jointcal-ap stages list``.
    **kwargs
        Passed to :func:`dataclasses.field` (e.g. ``default_factory``).
    """
    metadata = {**kwargs.pop("metadata", {}), "doc": doc}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@dataclass(frozen=True)
class NoOptions:
    """A stage without options."""


def _resolve(ref: str | Callable[..., Any] | type) -> Any:
    """Import ``"module:qualname"``, or return a callable/type as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, qualname = ref.partition(":")
    if not qualname:
        raise ValueError(f"{ref!r} is not of the form 'module:name'")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class DatasetType:
    """A named kind of data that stages exchange, with its Python type and its file form.

    References given as ``"module:name"`` strings are imported only when used, so a
    plugin can declare a dataset type without importing heavy modules.

    Attributes
    ----------
    name : str
        The type's name as stages declare it, e.g. ``"Exposure"``.
    python_type : str or type
        Values must be instances of this (``"module:qualname"`` or the class).
    suffix : str
        File suffix of the stored form (``".fits"``); ``""`` for a directory.
    writer : str or callable, optional
        ``writer(value, path)`` stores a value; ``".method"`` calls ``value.method(path)``.
        ``None``: the type can only be a pipeline input.
    reader : str or callable, optional
        ``reader(path) -> value``; ``".method"`` calls ``python_type.method(path)``.
        ``None``: the type can only be handed between stages of one unit.
    doc : str
        One line saying what the data is, with units.
    base : str or None
        A more general dataset type this one is a kind of (``SourceCatalog`` is a ``Table``
        with a fixed column schema): a port that reads the base accepts this type too.
    """

    name: str
    python_type: str | type
    suffix: str = ""
    writer: str | Callable[..., Any] | None = None
    reader: str | Callable[..., Any] | None = None
    doc: str = ""
    base: str | None = None

    def is_a(self, name: str, known: Mapping[str, DatasetType]) -> bool:
        """Whether this type is ``name`` or, through its ``base`` chain, a kind of it."""
        current: DatasetType | None = self
        seen = set()
        while current is not None and current.name not in seen:
            if current.name == name:
                return True
            seen.add(current.name)
            current = known.get(current.base) if current.base else None
        return False

    def __post_init__(self) -> None:
        if not _TYPE_NAME.match(self.name):
            raise ValueError(f"dataset type name {self.name!r} must be an identifier")

    def resolve_type(self) -> type:
        """The Python class of this type's values (imports it)."""
        cls = _resolve(self.python_type)
        if not isinstance(cls, type):
            raise TypeError(f"dataset type {self.name!r}: {self.python_type!r} is not a class")
        return cls

    def check(self, value: Any) -> bool:
        """Whether ``value`` is of this type."""
        return isinstance(value, self.resolve_type())

    def write(self, value: Any, path: Path) -> None:
        """Store ``value`` at ``path`` (the caller makes the write atomic)."""
        if self.writer is None:
            raise TypeError(f"dataset type {self.name!r} cannot be written")
        if isinstance(self.writer, str) and self.writer.startswith("."):
            getattr(value, self.writer[1:])(path)
        else:
            _resolve(self.writer)(value, path)

    def read(self, path: Path) -> Any:
        """Load a value stored at ``path``."""
        if self.reader is None:
            raise TypeError(f"dataset type {self.name!r} cannot be read from a file")
        if isinstance(self.reader, str) and self.reader.startswith("."):
            return getattr(self.resolve_type(), self.reader[1:])(path)
        return _resolve(self.reader)(path)


class Stage:
    """Base class of every stage. See the module docstring for what a subclass declares.

    The kind of a stage says how the runner calls it:

    - ``"unit"`` (this class): ``run(unit, **inputs)`` once per unit (a data ID, usually a
      visit × detector), units in parallel;
    - ``"gather"`` (:class:`GatherStage`): ``run(units, **inputs)`` once for all units (a
      joint fit, a coadd);
    - ``"ordered"`` (:class:`OrderedStage`): ``run(unit, **inputs)`` once per unit,
      overlapping units in time order, the rest in parallel (association).

    While ``run`` executes, ``self.context`` is a
    :class:`~jointcal_ap.stages.context.StageContext`: the unit's idempotency key, the visit
    registry's records, and the shared resources (APDB, alert sink) opened once per worker.

    Parameters
    ----------
    options : Options instance, optional
        The stage's options (default: ``Options()``).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = ""
    inputs: ClassVar[Mapping[str, str | In]] = {}
    outputs: ClassVar[Mapping[str, str | Out]] = {}
    Options: ClassVar[type] = NoOptions
    #: Name of a stage interface this stage fills (see :mod:`jointcal_ap.stages.interfaces`).
    implements: ClassVar[str | None] = None
    #: How the runner calls the stage (see above).
    kind: ClassVar[str] = "unit"
    #: The dimensions of the stage's units (and of what it produces).
    dimensions: ClassVar[tuple[str, ...]] = ("visit", "detector")

    def __init__(self, options: Any = None):
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise TypeError(f"stage {self.name!r}: options must be {self.Options.__qualname__}, "
                            f"got {type(options).__qualname__}")
        self.context: Any = None

    @classmethod
    def description(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or "").strip().split("\n", 1)[0]

    def run(self, unit: DataId, **inputs: Any) -> Mapping[str, Any]:
        """Process one unit: ``inputs`` by port name → ``{output port: value}``."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Load, once per worker process, what every unit needs before its first unit comes:
        the modules ``run`` imports, packaged models, shared resources (open them with
        :func:`~jointcal_ap.stages.context.open_resource`), kernels compiled for the camera.

        ``self.context`` is a :class:`~jointcal_ap.stages.context.StageContext` with the
        empty data ID, the run's visit records and one detector record per detector number
        (its shape is ``naxis2`` × ``naxis1``); it is ``None`` when the stage is used outside
        the runner.

        The runner calls it on each worker when a run starts, so that a worker's first unit
        takes as long as the next ones (an alert's latency does not include importing JAX).
        The default does nothing. An exception is logged as a warning and the run goes on:
        the unit meets the same cost, or the same error, on its own.
        """


class GatherStage(Stage):
    """A stage called once with every unit of the run: ``run(units, **inputs)``.

    Its inputs are usually ``In(type, lookup="all")`` (a mapping data ID → handle); a
    ``"same"`` input must be a whole-run dataset (empty data ID). Its outputs are whole-run
    datasets, or, with ``Out(type, per_unit=True)``, a mapping data ID → value.
    """

    kind: ClassVar[str] = "gather"

    def run(self, units: Any, **inputs: Any) -> Mapping[str, Any]:  # type: ignore[override]
        """Process all units at once."""
        raise NotImplementedError


class OrderedStage(Stage):
    """A per-unit stage whose units are processed in time order wherever they overlap.

    The runner (:mod:`~jointcal_ap.stages.ordering`) makes each unit wait for every earlier
    unit (by the visit's mid-time in the registry) whose footprint, grown by
    :attr:`order_margin_arcsec`, touches its own: overlapping units run one after the other
    in time order, on any worker; disjoint ones (the detectors of one visit, other parts of
    the sky) run in parallel. A unit that fails stops every later unit waiting on it, so that
    the time order is never broken.
    """

    kind: ClassVar[str] = "ordered"
    #: How far beyond its detector a unit reads or writes (arcsec): at least the association
    #: radius plus the margin it reads DiaObjects with.
    order_margin_arcsec: ClassVar[float] = 60.0


def _docstring_fields(doc: str) -> dict[str, str]:
    """Field descriptions from a NumPy-style ``Attributes``/``Parameters`` section."""
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    in_section, names = False, []
    for i, line in enumerate(lines):
        underline = i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}
        if underline and line.strip():
            in_section = line.strip() in ("Attributes", "Parameters")
            names = []
            continue
        if not in_section or set(line.strip()) == {"-"}:
            continue
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(":", 1)[0].split(",") if n.strip()]
            for name in names:
                out.setdefault(name, "")
        elif line.strip():
            for name in names:
                out[name] = f"{out[name]} {line.strip()}".strip()
    return out


def option_docs(options: type) -> dict[str, str]:
    """Each option's documentation: its ``option(doc=...)``, else the class docstring's
    ``Attributes`` (or ``Parameters``) entry; ``""`` when undocumented."""
    parsed = _docstring_fields(options.__doc__ or "")
    return {f.name: f.metadata.get("doc") or parsed.get(f.name, "")
            for f in dataclasses.fields(options)}


def validate_stage_class(cls: Any) -> None:
    """Check a stage class's declarations; raise ``TypeError``/``ValueError`` saying what is wrong."""
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"{cls!r} is not a subclass of jointcal_ap.stages.Stage")
    where = f"stage class {cls.__module__}.{cls.__qualname__}"
    if not isinstance(cls.name, str) or not _NAME.match(cls.name):
        raise ValueError(f"{where}: name must match [a-z][a-z0-9_]*, got {cls.name!r}")
    if not isinstance(cls.version, str) or not cls.version:
        raise ValueError(f"{where}: version must be a non-empty string, got {cls.version!r}")
    for kind in ("inputs", "outputs"):
        ports = getattr(cls, kind)
        if not isinstance(ports, Mapping):
            raise TypeError(f"{where}: {kind} must be a mapping of port name to dataset type name")
        declaration = In if kind == "inputs" else Out
        for port, spec in ports.items():
            if not (isinstance(port, str) and _NAME.match(port)):
                raise ValueError(f"{where}: {kind} port {port!r} must match [a-z][a-z0-9_]*")
            type_name = spec.type if isinstance(spec, declaration) else spec
            if not (isinstance(type_name, str) and _TYPE_NAME.match(type_name)):
                raise ValueError(f"{where}: {kind} port {port!r} needs a dataset type name or "
                                 f"{declaration.__name__}(...), got {spec!r}")
    if cls.kind not in KINDS:
        raise ValueError(f"{where}: kind must be one of {KINDS}, got {cls.kind!r}")
    if cls.kind != "gather":
        per_unit = sorted(p for p, o in output_ports(cls).items() if o.per_unit)
        if per_unit:
            raise ValueError(f"{where}: outputs {per_unit} are per_unit, which only gather "
                             f"stages may declare")
    from jointcal_ap.store.dimensions import DIMENSIONS

    if not (isinstance(cls.dimensions, tuple) and cls.dimensions
            and all(d in DIMENSIONS for d in cls.dimensions)):
        raise ValueError(f"{where}: dimensions must be a non-empty tuple of {list(DIMENSIONS)}, "
                         f"got {cls.dimensions!r}")
    if not cls.outputs:
        raise ValueError(f"{where}: declares no outputs")
    if set(cls.inputs) & set(cls.outputs):
        raise ValueError(f"{where}: ports {sorted(set(cls.inputs) & set(cls.outputs))} are both "
                         f"inputs and outputs")
    opts = cls.Options
    params = getattr(opts, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{where}: Options must be a frozen dataclass")
    docs = option_docs(opts)
    for field in dataclasses.fields(opts):
        if not docs[field.name]:
            raise ValueError(f"{where}: option {field.name!r} has no doc; declare it with "
                             f"jointcal_ap.stages.option(default, doc=...) or document it in "
                             f"the Options docstring's Attributes section")
    if cls.run is Stage.run:
        raise TypeError(f"{where}: does not implement run()")
    try:
        signature = inspect.signature(cls.run)
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return
    first = "units" if cls.kind == "gather" else "unit"
    try:
        signature.bind(None, None, **dict.fromkeys(cls.inputs))
    except TypeError as exc:
        raise TypeError(f"{where}: run{signature} does not accept ({first}, "
                        f"{', '.join(f'{p}=...' for p in cls.inputs) or 'no inputs'}) for its "
                        f"declared inputs {sorted(cls.inputs)}: {exc}") from None


def _coerce(value: Any, annotation: Any) -> Any:
    """Convert a TOML value to a field's annotated type where that is lossless, else raise."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _coerce(value, member)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"expected {annotation}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args and len(args) != len(value):
            raise TypeError(f"expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=False)) if args else tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if isinstance(annotation, type) and origin is None and not isinstance(value, annotation):
        raise TypeError(f"expected {annotation.__name__}, got {value!r}")
    return value


def make_options(stage: type[Stage], values: Mapping[str, Any], where: str = "") -> Any:
    """Build ``stage.Options`` from a TOML table, checking names and types.

    Raises
    ------
    PipelineError
        Naming ``where`` (the file and stage), the option and what was expected.
    """
    prefix = f"{where}: " if where else ""
    opts = stage.Options
    fields = {f.name: f for f in dataclasses.fields(opts)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"{prefix}stage {stage.name!r} has no option(s) {unknown}; "
                            f"it takes {sorted(fields)}")
    hints = typing.get_type_hints(opts)
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = _coerce(value, hints.get(key, Any))
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{prefix}stage {stage.name!r} option {key!r}: {exc}") from None
    try:
        return opts(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{prefix}stage {stage.name!r} options: {exc}") from None


def options_to_dict(options: Any) -> dict[str, Any]:
    """A stage's options as plain JSON-able values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def check_outputs(stage: Stage, result: Any, types_: Mapping[str, DatasetType],
                  origin: str) -> dict[str, Any]:
    """Check what ``stage.run`` returned against its declared outputs.

    Parameters
    ----------
    stage : Stage
        The stage instance.
    result : any
        What ``run`` returned.
    types_ : mapping
        Output port → its :class:`DatasetType`.
    origin : str
        The plugin and distribution, for the message.

    Raises
    ------
    StageError
        Naming the stage, its plugin, the port and what was expected.
    """
    where = f"stage {stage.name!r} {origin}"
    if not isinstance(result, Mapping):
        raise StageError(f"{where}: run() returned {type(result).__qualname__}, expected a dict "
                         f"of its outputs {sorted(stage.outputs)}")
    missing = sorted(set(stage.outputs) - set(result))
    extra = sorted(set(result) - set(stage.outputs))
    if missing or extra:
        raise StageError(f"{where}: run() returned outputs {sorted(result)}, declared "
                         f"{sorted(stage.outputs)} (missing {missing}, undeclared {extra})")
    ports = output_ports(stage)
    out = dict(result)
    for port, dataset_type in types_.items():
        values = result[port]
        if ports[port].per_unit:
            if not isinstance(values, Mapping):
                raise StageError(f"{where}: per-unit output {port!r} is "
                                 f"{type(values).__qualname__}, expected a dict of data ID → "
                                 f"{dataset_type.name}")
            try:
                values = {DataId(k): v for k, v in values.items()}
            except (TypeError, ValueError) as exc:
                raise StageError(f"{where}: per-unit output {port!r} has a key that is not a "
                                 f"data ID: {exc}") from None
            out[port] = values
        else:
            values = {None: values}
        for key, value in values.items():
            if not dataset_type.check(value):
                at = f" at {key.key or '{}'}" if key is not None else ""
                raise StageError(f"{where}: output {port!r}{at} is {type(value).__qualname__}, "
                                 f"expected {dataset_type.name} "
                                 f"({dataset_type.resolve_type().__qualname__})")
    return out
