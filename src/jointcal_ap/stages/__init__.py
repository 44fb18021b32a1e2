"""Pluggable stages: hookspecs, the plugin manager, the stage contract and the Dask runner.

Write a stage (see ``docs/plugins.md``)::

    >>> from jointcal_ap.stages import Stage, hookimpl, option      # doctest: +SKIP
    >>> @hookimpl
    ... def jointcal_ap_register_stages(registry):
    ...     registry.add_stage(MyStage)

and run a pipeline::

    >>> from jointcal_ap.stages import run_pipeline                 # doctest: +SKIP
    >>> summary = run_pipeline("pipeline.toml", workers=2)

Nothing here starts Dask or builds a plugin manager at import time.
"""

from jointcal_ap.stages.context import DatasetHandle, StageContext, open_resource
from jointcal_ap.stages.contract import (
    DatasetType,
    GatherStage,
    In,
    NoOptions,
    OrderedStage,
    Out,
    Stage,
    Unit,
    option,
    validate_stage_class,
)
from jointcal_ap.stages.errors import (
    NoWorkFound,
    PipelineError,
    PluginError,
    SchedulerError,
    StageError,
)
from jointcal_ap.stages.hookspecs import hookimpl
from jointcal_ap.stages.manager import (
    BLOCK_ENV,
    ENTRY_POINT_GROUP,
    PluginManager,
    get_plugin_manager,
)
from jointcal_ap.stages.pipeline import Pipeline, StageSpec, load_pipeline, resolve_pipeline
from jointcal_ap.stages.registry import CommandRegistry, StageRegistry
from jointcal_ap.stages.runner import RunSummary, UnitResult, execute_unit, run_pipeline
from jointcal_ap.store import DataId

__all__ = [
    "BLOCK_ENV",
    "ENTRY_POINT_GROUP",
    "CommandRegistry",
    "DataId",
    "DatasetHandle",
    "DatasetType",
    "GatherStage",
    "In",
    "NoOptions",
    "NoWorkFound",
    "OrderedStage",
    "Out",
    "Pipeline",
    "PipelineError",
    "PluginError",
    "PluginManager",
    "RunSummary",
    "SchedulerError",
    "Stage",
    "StageContext",
    "StageError",
    "StageRegistry",
    "StageSpec",
    "Unit",
    "UnitResult",
    "execute_unit",
    "get_plugin_manager",
    "hookimpl",
    "load_pipeline",
    "open_resource",
    "option",
    "resolve_pipeline",
    "run_pipeline",
    "validate_stage_class",
]
