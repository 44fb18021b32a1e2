"""The stage framework without Dask: hookspecs, plugin manager, contract, pipeline checks.

The small stages here (on the core ``Array`` and ``Json`` types) are also used by
``test_stages_runner.py``; Dask worker processes import them from this module.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from jointcal_ap.cli import main
from jointcal_ap.stages import (
    BLOCK_ENV,
    DatasetType,
    Pipeline,
    PipelineError,
    PluginError,
    Stage,
    Unit,
    execute_unit,
    get_plugin_manager,
    hookimpl,
    hookspecs,
    load_pipeline,
    option,
    resolve_pipeline,
    validate_stage_class,
)
from jointcal_ap.stages.interfaces import INTERFACES
from jointcal_ap.stages.runner import prepare_run

# ----------------------------------------------------------------------------- test stages


class MakeImage(Stage):
    """A deterministic image per unit: seed (Json) -> image (Array)."""

    name = "make_image"
    version = "1.2.3"
    inputs: ClassVar[dict[str, str]] = {"seed": "Json"}
    outputs: ClassVar[dict[str, str]] = {"image": "Array"}

    @dataclass(frozen=True)
    class Options:
        """Options of make_image.

        Attributes
        ----------
        size : int
            Image side, pixels.
        scale : float
            Multiplier of the normal draws (ADU).
        """

        size: int = 16
        scale: float = 1.0

    def run(self, unit: Unit, seed: dict) -> dict[str, Any]:
        rng = np.random.default_rng([seed["seed"], unit.visit, unit.detector])
        return {"image": rng.normal(size=(self.options.size,) * 2) * self.options.scale}


class Measure(Stage):
    """Summary statistics of an image: image (Array) -> stats (Json)."""

    name = "measure"
    version = "0.1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"stats": "Json", "squared": "Array"}

    @dataclass(frozen=True)
    class Options:
        fail_visits: tuple[int, ...] = option((), doc="raise on these visits (for the tests)")

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        if unit.visit in self.options.fail_visits:
            raise RuntimeError(f"cannot measure visit {unit.visit}")
        return {"stats": {"sum": float(image.sum()), "max": float(image.max()), "unit": unit.key},
                "squared": image**2}


class WrongType(Stage):
    """Declares an Array but returns a dict."""

    name = "wrong_type"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"out": "Array"}

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        return {"out": {"not": "an array"}}


class MissingOutput(Stage):
    """Declares two outputs and returns one."""

    name = "missing_output"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"a": "Array", "b": "Array"}

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        return {"a": image}


#: Two executions of ``rendezvous`` wait here for each other (see the staging test).
RENDEZVOUS = threading.Barrier(2, timeout=30)


class Rendezvous(Stage):
    """Waits until a second execution reaches the same point, then copies its input."""

    name = "rendezvous"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"copy": "Array"}

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        RENDEZVOUS.wait()
        return {"copy": image.copy()}


#: Processes in which ``warmed_up``'s warm_up ran (see the runner's warm-up test), with
#: what its context held there: (label, data ID's key, number of detector records).
WARMED: dict[int, tuple[str, str, int]] = {}


class WarmedUp(Stage):
    """Reports whether its warm_up ran in this process before the unit, and the C heap's
    environment the process started with."""

    name = "warmed_up"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"state": "Json"}

    @dataclass(frozen=True)
    class Options:
        fail: bool = option(False, doc="warm_up raises (for the tests)")

    def warm_up(self) -> None:
        if self.options.fail:
            raise OSError("the model file is not there")
        context = self.context
        WARMED[os.getpid()] = (context.label, context.data_id.key, len(context.detectors))

    def run(self, unit: Unit, image: np.ndarray) -> dict[str, Any]:
        return {"state": {"warmed": os.getpid() in WARMED, "pid": os.getpid(),
                          "warm_context": WARMED.get(os.getpid()),
                          "arena_max": os.environ.get("MALLOC_ARENA_MAX"),
                          "trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}}


class TestPlugin:
    """Registers the test stages (a plugin can be any object with hookimpls)."""

    @hookimpl
    def jointcal_ap_register_stages(self, registry) -> None:
        for stage in (MakeImage, Measure, WrongType, MissingOutput, Rendezvous, WarmedUp):
            registry.add_stage(stage)


def test_manager(**kwargs: Any):
    """A plugin manager with the test stages (and the installed plugins)."""
    return get_plugin_manager(plugins=[("teststages", TestPlugin())], **kwargs)


test_manager.__test__ = False  # a helper, not a test


def write_seeds(directory: Path, units: list[Unit], seed: int = 7) -> str:
    """One seed file per unit; returns the path template."""
    directory.mkdir(parents=True, exist_ok=True)
    for unit in units:
        (directory / f"seed_v{unit.visit}_d{unit.detector}.json").write_text(
            json.dumps({"seed": seed}))
    return str(directory / "seed_v{visit}_d{detector}.json")


def array_pipeline(template: str, output: Path | None = None, *, fail_visits=(),
                   scale: float = 2.0) -> Pipeline:
    return Pipeline.from_dict({
        "pipeline": {"name": "arrays"},
        "inputs": {"seed": template},
        "stages": [{"name": "make_image", "options": {"scale": scale, "size": 8}},
                   {"name": "measure", "options": {"fail_visits": list(fail_visits)}}],
    }, source="test.toml")


# ----------------------------------------------------------------------------- plugin manager


def test_builtin_stages_come_from_entry_points_with_their_distribution():
    pm = get_plugin_manager(blocked=())
    assert pm.has_plugin("detect") and pm.has_plugin("calibrate")
    assert pm.distribution_of("detect").startswith("jointcal-ap ")
    stages = pm.stage_registry().stages
    assert stages["detect"].plugin == "detect"
    assert stages["detect"].stage.inputs == {"exposure": "Exposure"}
    assert stages["calibrate"].stage.outputs == {"calexp": "CalibratedExposure"}
    assert {"Exposure", "CalibratedExposure", "Calibration", "Table", "Json", "Array"} <= set(
        pm.stage_registry().dataset_types)
    # a fresh manager each time: nothing is shared at module level
    assert get_plugin_manager() is not pm


def test_block_environment_variable_removes_plugins(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "detect, teststages")
    pm = test_manager()
    stages = pm.stage_registry().stages
    assert "detect" not in stages and "make_image" not in stages
    assert "calibrate" in stages


def test_hookspecs_are_documented_and_typed():
    import inspect

    specs = [getattr(hookspecs, n) for n in hookspecs.__all__ if n.startswith("jointcal_ap_")]
    assert len(specs) == 6
    for spec in specs:
        assert ":param" in spec.__doc__ or spec.__name__ == "jointcal_ap_reader_formats"
        assert ":return:" in spec.__doc__
        signature = inspect.signature(spec)
        assert signature.return_annotation is not inspect.Signature.empty
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values())
    pm = get_plugin_manager()
    assert pm.hook.jointcal_ap_get_reader.spec.opts["firstresult"]
    assert not pm.hook.jointcal_ap_register_stages.spec.opts["firstresult"]


def test_misspelt_hook_is_rejected_by_check_pending():
    class Typo:
        @hookimpl
        def jointcal_ap_register_stage(self, registry):  # missing "s"
            pass

    with pytest.raises(PluginError, match=r"plugin 'typo'.*jointcal_ap_register_stage"):
        get_plugin_manager(plugins=[("typo", Typo())])


def test_plugin_that_raises_is_named():
    class Broken:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            raise KeyError("oops")

    pm = get_plugin_manager(plugins=[("broken", Broken())])
    with pytest.raises(PluginError, match=r"plugin 'broken'.*jointcal_ap_register_stages raised "
                                          r"KeyError: 'oops'"):
        pm.stage_registry()


def test_plugin_registering_the_wrong_type_is_named():
    class NotAStage:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_stage(dict)

    class ReturnsValue:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            return [MakeImage]

    with pytest.raises(PluginError, match=r"plugin 'bad'.*not a subclass of jointcal_ap.stages.Stage"):
        get_plugin_manager(plugins=[("bad", NotAStage())]).stage_registry()
    with pytest.raises(PluginError, match=r"plugin 'returns'.*returned list; it must return None"):
        get_plugin_manager(plugins=[("returns", ReturnsValue())]).stage_registry()


def test_two_plugins_claiming_one_stage_name_are_named():
    class Again:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_stage(MakeImage)

    # pluggy calls the plugin registered last first
    pm = get_plugin_manager(plugins=[("teststages", TestPlugin()), ("again", Again())])
    with pytest.raises(PluginError, match=r"plugin 'teststages'.*'make_image' is already "
                                          r"registered by plugin 'again'"):
        pm.stage_registry()


def test_conflicting_dataset_types_are_rejected():
    class Other:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_dataset_type(DatasetType("Json", list, ".json"))

    with pytest.raises(PluginError, match=r"plugin 'other'.*'Json' is already registered "
                                          r"differently by plugin 'jointcal_ap.core'"):
        get_plugin_manager(plugins=[("other", Other())]).stage_registry()


def test_stage_class_validation_says_what_is_wrong():
    def make(**attrs):
        base = {"name": "ok", "version": "1", "outputs": {"x": "Array"},
                "run": lambda self, unit: {}}
        return type("S", (Stage,), {**base, **attrs})

    validate_stage_class(make())
    with pytest.raises(ValueError, match="name must match"):
        validate_stage_class(make(name="Bad Name"))
    with pytest.raises(ValueError, match="version must be a non-empty string"):
        validate_stage_class(make(version=""))
    with pytest.raises(ValueError, match="declares no outputs"):
        validate_stage_class(make(outputs={}))

    @dataclass
    class Mutable:
        x: int = option(1, doc="x")

    with pytest.raises(TypeError, match="Options must be a frozen dataclass"):
        validate_stage_class(make(Options=Mutable))

    @dataclass(frozen=True)
    class Undocumented:
        x: int = 1

    with pytest.raises(ValueError, match="option 'x' has no doc"):
        validate_stage_class(make(Options=Undocumented))
    with pytest.raises(TypeError, match="does not implement run"):
        validate_stage_class(type("S", (Stage,), {"name": "a", "version": "1",
                                                  "outputs": {"x": "Array"}}))


def test_interfaces_of_the_next_stages_are_checked():
    assert set(INTERFACES) == {"difference", "associate", "export_alerts"}
    assert INTERFACES["difference"].inputs == {"calexp": "CalibratedExposure", "template": "Template"}

    class Differ(Stage):
        name = "differ"
        version = "0"
        implements = "difference"
        inputs: ClassVar[dict[str, str]] = {"calexp": "CalibratedExposure"}
        outputs: ClassVar[dict[str, str]] = {"difference": "DifferenceImage",
                                             "dia_sources": "DiaSourceCatalog"}

        def run(self, unit, calexp):
            return {}

    class Registers:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_stage(Differ)

    with pytest.raises(PluginError, match=r"implements 'difference', which needs input 'template' "
                                          r"of type Template"):
        get_plugin_manager(plugins=[("differ", Registers())]).stage_registry()


# ----------------------------------------------------------------------------- readers hook


def test_reader_dispatch_goes_through_the_firstresult_hook(tmp_path):
    from jointcal_ap.refcat.readers import GaiaBinReader, Reader, available_readers, get_reader

    class LinesReader(Reader):
        name = "lines"

    class ReaderPlugin:
        @hookimpl
        def jointcal_ap_get_reader(self, format, options):
            return LinesReader(options) if format == "lines" else None

        @hookimpl
        def jointcal_ap_reader_formats(self):
            return ["lines"]

    pm = get_plugin_manager(plugins=[("lines", ReaderPlugin())])
    assert isinstance(pm.hook.jointcal_ap_get_reader(format="lines", options={}), LinesReader)
    assert isinstance(pm.first_result("jointcal_ap_get_reader", Reader, format="gaia_bin",
                                      options={}), GaiaBinReader)
    assert pm.first_result("jointcal_ap_get_reader", Reader, format="votable", options={}) is None
    assert {"csv", "gaia_bin", "lines"} <= set(pm.reader_formats())
    # the built-in readers are a plugin named after its entry point
    assert pm.has_plugin("refcat_readers")
    assert isinstance(get_reader("gaia_bin"), GaiaBinReader)
    assert "gaia_bin" in available_readers()

    class WrongReader:
        @hookimpl
        def jointcal_ap_get_reader(self, format, options):
            return "a string"

    pm = get_plugin_manager(plugins=[("wrongreader", WrongReader())])
    with pytest.raises(PluginError, match=r"plugin 'wrongreader'.*returned str, expected Reader"):
        pm.first_result("jointcal_ap_get_reader", Reader, format="votable", options={})


# ----------------------------------------------------------------------------- CLI hook


def test_plugin_commands_are_collected_and_builtins_protected():
    def configure(parser):
        parser.add_argument("--n", type=int, default=1)

    class Commands:
        @hookimpl
        def jointcal_ap_add_commands(self, commands):
            commands.add("hello", help="say hello", configure=configure, run=lambda args: 0)

    class Clash:
        @hookimpl
        def jointcal_ap_add_commands(self, commands):
            commands.add("run", help="steal run", configure=configure, run=lambda args: 0)

    registry = get_plugin_manager(plugins=[("cmds", Commands())]).command_registry({"run"})
    assert registry.commands["hello"].plugin == "cmds"
    with pytest.raises(PluginError, match=r"plugin 'clash'.*'run' is a built-in command"):
        get_plugin_manager(plugins=[("clash", Clash())]).command_registry({"run"})


def test_cli_stages_list_shows_stage_distribution_and_ports(capsys, monkeypatch):
    assert main(["stages", "list"]) == 0
    out = capsys.readouterr().out
    version = importlib.metadata.version("jointcal-ap")
    assert f"detect 1.0.0  [plugin detect, jointcal-ap {version}]" in out
    assert "consumes: exposure (Exposure), calibration (Calibration)" in out
    assert "produces: calexp (CalibratedExposure)" in out
    assert "option threshold_sigma = 5.0: Detection threshold" in out
    assert main(["stages", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    detect = next(s for s in listing["stages"] if s["name"] == "detect")
    assert detect["distribution"].startswith("jointcal-ap") and detect["produces"] == {"sources": "SourceCatalog"}
    monkeypatch.setenv(BLOCK_ENV, "detect")
    assert main(["stages", "list", "--json"]) == 0
    names = [s["name"] for s in json.loads(capsys.readouterr().out)["stages"]]
    assert "detect" not in names and "calibrate" in names


# ----------------------------------------------------------------------------- pipelines


def resolve(data: dict, **kw):
    return resolve_pipeline(Pipeline.from_dict(data, source="p.toml"), test_manager().stage_registry())


def test_pipeline_that_does_not_connect_is_rejected_before_running(tmp_path):
    base = {"inputs": {"seed": "s{visit}_{detector}.json"}, "units": {"list": [[1, 0]]}}
    with pytest.raises(PipelineError, match=r"p.toml: stage 'measure': consumes 'image' \(Array\) on "
                                            r"port 'image', which no earlier stage produces"):
        resolve({**base, "stages": [{"name": "measure"}, {"name": "make_image"}]})
    with pytest.raises(PipelineError, match=r"port 'image' needs Array but 'seed' from \[inputs\] "
                                            r"\(read as Json for stage 'make_image'\) is Json"):
        resolve({**base, "stages": [{"name": "make_image"},
                                    {"name": "measure", "inputs": {"image": "seed"}}]})
    with pytest.raises(PipelineError, match=r"output 'image' is already given by stage 'make_image'"):
        resolve({**base, "stages": [{"name": "make_image"},
                                    {"name": "make_image", "label": "again"}]})
    with pytest.raises(PipelineError, match=r"no stage named 'nope'; available: \[.*'make_image'"):
        resolve({**base, "stages": [{"name": "nope"}]})
    with pytest.raises(PipelineError, match=r"stage 'make_image' has no option\(s\) \['sise'\]"):
        resolve({**base, "stages": [{"name": "make_image", "options": {"sise": 3}}]})
    with pytest.raises(PipelineError, match=r"option 'size': expected an integer, got 'big'"):
        resolve({**base, "stages": [{"name": "make_image", "options": {"size": "big"}}]})
    with pytest.raises(PipelineError, match=r"inputs \['img'\] are not ports of stage 'measure'"):
        resolve({**base, "stages": [{"name": "make_image"}, {"name": "measure",
                                                              "inputs": {"img": "image"}}]})
    # the runner raises before creating anything
    out = tmp_path / "never"
    pipeline = Pipeline.from_dict({**base, "pipeline": {"output": str(out)},
                                   "stages": [{"name": "measure"}]}, source="p.toml")
    from jointcal_ap.stages import run_pipeline

    with pytest.raises(PipelineError, match="which no earlier stage produces"):
        run_pipeline(pipeline, plugin_manager=test_manager(), progress=False)
    assert not out.exists()


def test_options_are_coerced_losslessly():
    resolved = resolve({"inputs": {"seed": "s"}, "units": {"list": [[1, 0]]},
                        "stages": [{"name": "make_image", "options": {"scale": 3}},
                                   {"name": "measure", "options": {"fail_visits": [1, 2]}}]})
    assert resolved.stages[0].options.scale == 3.0 and isinstance(resolved.stages[0].options.scale, float)
    assert resolved.stages[1].options.fail_visits == (1, 2)
    with pytest.raises(PipelineError, match="option 'size': expected an integer, got True"):
        resolve({"inputs": {"seed": "s"}, "stages": [{"name": "make_image",
                                                      "options": {"size": True}}]})


def test_pipeline_toml_units_and_relative_paths(tmp_path):
    for v, d in [(3, 1), (3, 2), (10, 1)]:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"seed_{v:04d}_{d}.json").write_text("{}")
    (tmp_path / "in" / "seed_x_1.json").write_text("{}")  # does not match: ignored
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "t"\noutput = "out"\n'
                    '[inputs]\nseed = "in/seed_{visit:04d}_{detector}.json"\n'
                    '[units]\ndiscover = "seed"\n[[stages]]\nname = "make_image"\n')
    pipeline = load_pipeline(toml)
    assert pipeline.output == tmp_path / "out"
    assert pipeline.discover_units() == (Unit(3, 1), Unit(3, 2), Unit(10, 1))
    toml.write_text('[inputs]\nseed = "x"\n[units]\nvisits = [1, 2]\ndetectors = [0, 5]\n'
                    '[[stages]]\nname = "make_image"\n')
    assert load_pipeline(toml).discover_units() == (Unit(1, 0), Unit(1, 5), Unit(2, 0), Unit(2, 5))
    toml.write_text('[inputs]\nseed = "x_{filter}"\n[[stages]]\nname = "make_image"\n')
    with pytest.raises(PipelineError, match=r"p.toml: inputs.seed: path template .* uses "
                                            r"\{filter\}, which is not a dimension"):
        load_pipeline(toml)
    toml.write_text('[[stage]]\nname = "make_image"\n')
    with pytest.raises(PipelineError, match=r"p.toml: stage: unknown table"):
        load_pipeline(toml)


# ----------------------------------------------------------------------------- one unit


def test_execute_unit_writes_outputs_with_provenance(tmp_path):
    unit = Unit(4, 2)
    template = write_seeds(tmp_path / "in", [unit])
    resolved = prepare_run(array_pipeline(template), plugin_manager=test_manager())
    result = execute_unit(resolved, unit, str(tmp_path / "out"))
    assert result.status == "done" and set(result.seconds) == {"make_image", "measure"}
    unit_dir = tmp_path / "out" / "units" / "visit4_det2"
    image = np.load(unit_dir / "image.npy")
    np.testing.assert_array_equal(
        image, np.random.default_rng([7, 4, 2]).normal(size=(8, 8)) * 2.0)
    stats = json.loads((unit_dir / "stats.json").read_text())
    assert stats["sum"] == pytest.approx(float(image.sum()), rel=1e-12)
    np.testing.assert_array_equal(np.load(unit_dir / "squared.npy"), image**2)
    prov = json.loads((unit_dir / "stats.provenance.json").read_text())
    assert prov["stage"] == {"label": "measure", "name": "measure", "version": "0.1",
                             "plugin": "teststages", "distribution": None}
    assert prov["options"] == {"fail_visits": []}
    assert prov["inputs"] == {"image": {"dataset": "image", "file": "image.npy"}}
    assert prov["unit"] == {"visit": 4, "detector": 2}
    first = json.loads((unit_dir / "image.provenance.json").read_text())
    assert first["stage"]["version"] == "1.2.3" and first["options"] == {"size": 8, "scale": 2.0}
    assert first["inputs"]["seed"]["input"].endswith("seed_v4_d2.json")
    assert not list((tmp_path / "out" / "units").glob(".*"))  # no staging left


@pytest.mark.parametrize(("stage", "message"), [
    ("wrong_type", r"stage 'wrong_type' \(plugin 'teststages'\): output 'out' is dict, expected "
                   r"Array \(ndarray\)"),
    ("missing_output", r"stage 'missing_output' \(plugin 'teststages'\): run\(\) returned outputs "
                       r"\['a'\], declared \['a', 'b'\] \(missing \['b'\]"),
])
def test_stage_breaking_its_contract_fails_the_unit_naming_the_plugin(tmp_path, stage, message):
    unit = Unit(1, 0)
    template = write_seeds(tmp_path / "in", [unit])
    pipeline = Pipeline.from_dict({"inputs": {"seed": template},
                                   "stages": [{"name": "make_image"}, {"name": stage}]})
    resolved = prepare_run(pipeline, plugin_manager=test_manager())
    result = execute_unit(resolved, unit, str(tmp_path / "out"))
    assert result.status == "failed" and result.stage == stage
    assert result.error.startswith(f"stage '{stage}' (plugin 'teststages'): StageError: ")
    import re

    assert re.search(message, result.error)
    assert "StageError" in result.traceback
    assert not (tmp_path / "out" / "units" / "visit1_det0").exists()
    assert message.split(":")[0][:10] in (tmp_path / "out" / "failed" / "visit1_det0.txt").read_text()


def test_the_guide_shows_the_example_plugin_verbatim():
    root = Path(__file__).resolve().parents[1]
    guide = (root / "docs" / "plugins.md").read_text()
    for name in ("jointcal_ap_example/__init__.py", "pyproject.toml"):
        assert (root / "docs" / "example_plugin" / name).read_text() in guide


# ----------------------------------------------------------------------------- review fixes


def test_unit_accepts_numpy_integers_and_rejects_others():
    unit = Unit(np.int64(3), np.uint8(2))
    assert unit == Unit(3, 2) and hash(unit) == hash(Unit(3, 2))
    assert type(unit.visit) is int and unit.key == "visit3_det2"
    for bad in (1.0, True, np.True_, "1"):
        with pytest.raises(TypeError, match=r"Unit\.visit must be an integer"):
            Unit(bad, 0)


def test_stage_whose_run_does_not_take_its_inputs_is_rejected():
    def make(run, inputs=None):
        return type("BadRun", (Stage,), {"name": "bad_run", "version": "1",
                                         "inputs": inputs or {"image": "Array"},
                                         "outputs": {"x": "Array"}, "run": run,
                                         "__module__": "plugmod"})

    with pytest.raises(TypeError, match=r"stage class plugmod\.BadRun: run\(self, unit, img\) does "
                                        r"not accept \(unit, image=\.\.\.\)"):
        validate_stage_class(make(lambda self, unit, img: {}))
    with pytest.raises(TypeError, match=r"plugmod\.BadRun: run\(self, image\)"):
        validate_stage_class(make(lambda self, image: {}))  # no unit parameter
    with pytest.raises(TypeError, match=r"plugmod\.BadRun: run.*'mask'"):
        validate_stage_class(make(lambda self, unit, image: {},
                                  {"image": "Array", "mask": "Array"}))
    validate_stage_class(make(lambda self, unit, image: {}))
    validate_stage_class(make(lambda self, unit, **inputs: {}, {"a": "Array", "b": "Array"}))
    # the registry refuses it, naming the plugin
    class Bad:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_stage(make(lambda self, unit: {}))

    with pytest.raises(PluginError, match=r"plugin 'bad'.*BadRun: run\(self, unit\) does not"):
        get_plugin_manager(plugins=[("bad", Bad())]).stage_registry()


def test_relative_inputs_are_resolved_at_load_and_the_fingerprint_ignores_the_source(
        tmp_path, monkeypatch):
    write_seeds(tmp_path / "in", [Unit(1, 0)])
    toml = tmp_path / "p.toml"
    toml.write_text('[pipeline]\nname = "rel"\noutput = "out"\n'
                    '[inputs]\nseed = "in/seed_v{visit}_d{detector}.json"\n'
                    '[[stages]]\nname = "make_image"\n')
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline("p.toml")
    assert pipeline.inputs["seed"] == str(tmp_path.resolve() / "in/seed_v{visit}_d{detector}.json")
    assert pipeline.output == tmp_path.resolve() / "out"
    relative = prepare_run(pipeline, plugin_manager=test_manager())
    absolute = prepare_run(toml, plugin_manager=test_manager())
    assert relative.pipeline.source != absolute.pipeline.source
    assert relative.fingerprint == absolute.fingerprint
    # a worker running elsewhere finds the input
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert execute_unit(relative, Unit(1, 0), str(tmp_path / "out")).status == "done"
    # the same file content under another directory: another pipeline
    shutil.copytree(tmp_path / "in", elsewhere / "in")
    shutil.copy(toml, elsewhere / "p.toml")
    assert prepare_run("p.toml", plugin_manager=test_manager()).fingerprint != relative.fingerprint


def test_changed_input_file_or_directory_redoes_the_unit(tmp_path):
    from jointcal_ap.stages.pipeline import file_identity
    from jointcal_ap.stages.runner import is_done
    from jointcal_ap.store.repository import Repository

    unit = Unit(1, 0)
    template = write_seeds(tmp_path / "in", [unit])
    resolved = prepare_run(array_pipeline(template), plugin_manager=test_manager())
    out = tmp_path / "out"
    assert not is_done(out, unit, resolved)
    assert execute_unit(resolved, unit, str(out)).status == "done"
    assert is_done(out, unit, resolved)
    assert execute_unit(resolved, unit, str(out)).status == "skipped"
    with Repository(out) as repo:  # the registry holds what was done, and with what
        (segment,) = resolved.segments
        fingerprint, _identity = repo.registry.task(segment.label, unit)
        assert fingerprint == resolved.fingerprint
        ref = repo.find("image", unit)
        assert ref.path == "units/visit1_det0/image.npy" and ref.type == "Array"
    seed = Path(unit.format(template))
    # same size, new content and time: not done any more
    seed.write_text(json.dumps({"seed": 8}))
    stat = seed.stat()
    os.utime(seed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not is_done(out, unit, resolved)
    assert execute_unit(resolved, unit, str(out)).status == "done"
    assert is_done(out, unit, resolved)
    np.testing.assert_array_equal(np.load(out / "units" / unit.key / "image.npy"),
                                  np.random.default_rng([8, 1, 0]).normal(size=(8, 8)) * 2.0)
    # an output deleted behind the runner's back: not done either
    (out / "units" / unit.key / "stats.json").unlink()
    assert not is_done(out, unit, resolved)
    # a directory input: the newest file inside it counts
    calib = tmp_path / "calib"
    (calib / "sub").mkdir(parents=True)
    (calib / "a.txt").write_text("a")
    (calib / "sub" / "b.txt").write_text("bb")
    os.utime(calib / "a.txt", ns=(0, 10**18))
    os.utime(calib / "sub" / "b.txt", ns=(0, 2 * 10**18))
    os.utime(calib / "sub", ns=(0, 10**18))
    os.utime(calib, ns=(0, 10**18))
    before = file_identity(calib)
    assert before == {"newest": str(Path("sub") / "b.txt"), "size": 2, "mtime_ns": 2 * 10**18,
                      "files": 2}
    (calib / "sub" / "b.txt").write_text("cc")  # rewritten in place: the directories' times stay
    os.utime(calib / "sub" / "b.txt", ns=(0, 2 * 10**18 + 1))
    assert file_identity(calib) != before and file_identity(tmp_path / "nothing") is None


def test_failed_rerun_removes_the_outputs_of_another_configuration(tmp_path):
    from jointcal_ap.stages.runner import is_done
    from jointcal_ap.store.repository import Repository

    units = [Unit(1, 0), Unit(2, 0)]
    template = write_seeds(tmp_path / "in", units)
    out = tmp_path / "out"
    first = prepare_run(array_pipeline(template), plugin_manager=test_manager())
    for unit in units:
        assert execute_unit(first, unit, str(out)).status == "done"
    failing = prepare_run(array_pipeline(template, fail_visits=[2]), plugin_manager=test_manager())
    assert failing.fingerprint != first.fingerprint
    assert execute_unit(failing, Unit(1, 0), str(out)).status == "done"
    assert execute_unit(failing, Unit(2, 0), str(out)).status == "failed"
    units_dir = out / "units"
    assert sorted(p.name for p in units_dir.iterdir()) == ["visit1_det0"]  # nothing aside left
    with Repository(out) as repo:
        assert repo.query("image", visit=2) == [] and repo.query("stats", visit=2) == []
        assert repo.registry.task(failing.segments[0].label, Unit(2, 0)) is None
    assert is_done(out, Unit(1, 0), failing) and not is_done(out, Unit(1, 0), first)
    # a failure of the same configuration keeps a unit that is done with it
    assert execute_unit(failing, Unit(2, 0), str(out)).status == "failed"
    assert is_done(out, Unit(1, 0), failing)


def test_concurrent_executions_of_one_unit_both_complete_and_leave_one_copy(tmp_path):
    unit = Unit(1, 0)
    template = write_seeds(tmp_path / "in", [unit])
    out = tmp_path / "out"
    # a hidden directory of something else in progress is left alone
    other = out / "units" / f".{unit.key}.partial"
    other.mkdir(parents=True)
    (other / "image.npy").write_bytes(b"being written")
    pipeline = Pipeline.from_dict({"inputs": {"seed": template},
                                   "stages": [{"name": "make_image"}, {"name": "rendezvous"}]})
    resolved = prepare_run(pipeline, plugin_manager=test_manager())
    results = []
    threads = [threading.Thread(target=lambda: results.append(execute_unit(resolved, unit,
                                                                           str(out))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(r.status for r in results) in (["done", "done"], ["done", "skipped"]), \
        [r.error for r in results]
    assert (other / "image.npy").read_bytes() == b"being written"
    assert sorted(p.name for p in (out / "units").iterdir()) == [other.name, unit.key]
    final = out / "units" / unit.key
    assert sorted(p.name for p in final.iterdir()) == [
        "copy.npy", "copy.provenance.json", "image.npy", "image.provenance.json"]
    np.testing.assert_array_equal(np.load(final / "copy.npy"), np.load(final / "image.npy"))


def test_unreadable_input_is_reported_as_an_input_failure(tmp_path):
    unit = Unit(1, 0)
    template = write_seeds(tmp_path / "in", [unit])
    seed = Path(unit.format(template))
    seed.write_text("{not json")
    resolved = prepare_run(array_pipeline(template), plugin_manager=test_manager())
    result = execute_unit(resolved, unit, str(tmp_path / "out"))
    assert result.status == "failed" and result.stage is None
    assert result.error.startswith(f"input 'seed': reading input 'seed' from {seed} (for stage "
                                   f"'make_image') failed: JSONDecodeError: ")
    assert "plugin" not in result.error
    seed.unlink()
    result = execute_unit(resolved, unit, str(tmp_path / "out"))
    assert result.error.startswith("input 'seed': reading input 'seed' from ")
    assert "FileNotFoundError" in result.error and "not found" in result.error


def test_the_guide_runs_pipelines_from_a_script_under_a_main_guard():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    example = guide.split("From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    compile(example, "run.py", "exec")
    guarded = example.split('if __name__ == "__main__":\n', 1)
    assert len(guarded) == 2 and "run_pipeline(" not in guarded[0]
    assert all(line.startswith("    ") for line in guarded[1].splitlines() if line)


@pytest.mark.parametrize("group", ["refcat", "stages", "repo", "alerts"])
def test_a_command_group_without_its_subcommand_shows_its_own_help(group, capsys):
    assert main([group]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: jointcal-ap {group} ") and "SUBCOMMAND" in err


def test_a_plugin_command_that_cannot_be_configured_says_so(monkeypatch, capsys):
    import jointcal_ap.stages.manager as manager

    class Broken:
        @hookimpl
        def jointcal_ap_add_commands(self, commands):
            def configure(parser):
                raise RuntimeError("missing dependency foo")
            commands.add("broken", help="never works", configure=configure, run=lambda a: 0)

    real = manager.get_plugin_manager
    monkeypatch.setattr(manager, "get_plugin_manager",
                        lambda **kw: real(plugins=[("brokenplug", Broken())]))
    assert main(["broken"]) == 1
    assert ("plugin 'brokenplug': configuring command 'broken' failed: RuntimeError: missing "
            "dependency foo") in capsys.readouterr().err


def test_a_third_party_stage_reads_core_types_with_every_builtin_blocked(tmp_path):
    class Shape(Stage):
        """Reads an Exposure, which only the core defines."""

        name = "shape"
        version = "1"
        inputs: ClassVar[dict[str, str]] = {"exposure": "Exposure"}
        outputs: ClassVar[dict[str, str]] = {"shape": "Json"}

        def run(self, unit, exposure):
            return {"shape": {"ny": exposure.naxis2, "nx": exposure.naxis1}}

    class Plugin:
        @hookimpl
        def jointcal_ap_register_stages(self, registry):
            registry.add_stage(Shape)

    blocked = ["detect", "calibrate", "jointfit", "alerts", "refcat_readers"]
    pm = get_plugin_manager(plugins=[("shapes", Plugin())], blocked=blocked)
    assert not {"detect", "calibrate", "jointfit"} & set(pm.stage_registry().stages)
    resolved = prepare_run(Pipeline.from_dict({"inputs": {"exposure": "e_{visit}_{detector}.fits"},
                                               "stages": [{"name": "shape"}]}), plugin_manager=pm)
    assert resolved.dataset_types["exposure"].name == "Exposure"


class SeedEcho(Stage):
    """Reads the ``seed`` input again, after make_image, in the same segment."""

    name = "seed_echo"
    version = "1"
    inputs: ClassVar[dict[str, str]] = {"seed": "Json", "image": "Array"}
    outputs: ClassVar[dict[str, str]] = {"echo": "Json"}
    seen: ClassVar[list[Any]] = []

    def run(self, unit: Unit, seed: dict, image: np.ndarray) -> dict[str, Any]:
        SeedEcho.seen.append(seed)
        return {"echo": {"seed": seed["seed"], "sum": float(image.sum())}}


class EchoPlugin:
    @hookimpl
    def jointcal_ap_register_stages(self, registry) -> None:
        registry.add_stage(SeedEcho)


def test_an_input_file_is_read_once_per_segment(tmp_path, monkeypatch):
    from jointcal_ap.stages import runner

    unit = Unit(4, 2)
    template = write_seeds(tmp_path / "in", [unit])
    pipeline = Pipeline.from_dict({
        "pipeline": {"name": "twice"}, "inputs": {"seed": template},
        "stages": [{"name": "make_image"}, {"name": "seed_echo"}]}, source="test.toml")
    resolved = prepare_run(pipeline, plugin_manager=get_plugin_manager(
        plugins=[("teststages", TestPlugin()), ("echo", EchoPlugin())]))
    assert len(resolved.segments) == 1
    reads: list[str] = []
    real_read = runner._read

    def counting_read(resolved, source):
        reads.append(source.dataset)
        return real_read(resolved, source)

    monkeypatch.setattr(runner, "_read", counting_read)
    SeedEcho.seen.clear()
    result = execute_unit(resolved, unit, str(tmp_path / "out"))
    assert result.status == "done"
    assert reads == ["seed"]                      # make_image read it; seed_echo got that value
    assert SeedEcho.seen == [{"seed": 7}]
    echo = json.loads((tmp_path / "out" / "units" / "visit4_det2" / "echo.json").read_text())
    image = np.load(tmp_path / "out" / "units" / "visit4_det2" / "image.npy")
    assert echo == {"seed": 7, "sum": float(image.sum())}
    prov = json.loads((tmp_path / "out" / "units" / "visit4_det2" / "echo.provenance.json")
                      .read_text())
    assert prov["inputs"]["seed"]["input"].endswith("seed_v4_d2.json")
