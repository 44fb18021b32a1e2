"""The registry objects handed to plugins: stages and dataset types, CLI subcommands."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jointcal_ap.stages.contract import DatasetType, Stage, validate_stage_class
from jointcal_ap.stages.interfaces import check_implements

__all__ = ["Command", "CommandRegistry", "StageEntry", "StageRegistry", "plugin_origin"]


def plugin_origin(plugin: str, distribution: str | None) -> str:
    """``"(plugin 'x' from dist 1.0)"``: where a stage came from, for messages."""
    dist = f" from {distribution}" if distribution else ""
    return f"(plugin {plugin!r}{dist})"


@dataclass(frozen=True)
class StageEntry:
    """A registered stage and where it came from.

    Attributes
    ----------
    stage : type of Stage
        The stage class.
    plugin : str
        Name of the plugin that registered it (its entry-point name).
    distribution : str or None
        ``"name version"`` of the distribution that declared the plugin.
    """

    stage: type[Stage]
    plugin: str
    distribution: str | None

    @property
    def origin(self) -> str:
        """``"(plugin 'x' from dist 1.0)"``, for messages."""
        return plugin_origin(self.plugin, self.distribution)


class _Attributed:
    """Knows which plugin is registering right now (set by the plugin manager)."""

    def __init__(self) -> None:
        self._plugin, self._distribution = "<host>", None

    def _set_origin(self, plugin: str, distribution: str | None) -> None:
        self._plugin, self._distribution = plugin, distribution

    def _origin(self) -> str:
        dist = f" from {self._distribution}" if self._distribution else ""
        return f"plugin {self._plugin!r}{dist}"


class StageRegistry(_Attributed):
    """Collects stages and dataset types from the ``jointcal_ap_register_stages`` hook."""

    def __init__(self) -> None:
        super().__init__()
        self._stages: dict[str, StageEntry] = {}
        self._types: dict[str, tuple[DatasetType, str]] = {}

    def add_stage(self, stage: type[Stage]) -> None:
        """Register a :class:`~jointcal_ap.stages.Stage` subclass under ``stage.name``.

        Raises ``TypeError``/``ValueError`` if its declarations are invalid or the name is taken.
        """
        validate_stage_class(stage)
        check_implements(stage)
        if stage.name in self._stages:
            other = self._stages[stage.name]
            raise ValueError(f"stage {stage.name!r} is already registered by {other.origin[1:-1]}")
        self._stages[stage.name] = StageEntry(stage, self._plugin, self._distribution)

    def add_dataset_type(self, dataset_type: DatasetType) -> None:
        """Register a :class:`~jointcal_ap.stages.DatasetType` (the same one twice is fine)."""
        if not isinstance(dataset_type, DatasetType):
            raise TypeError(f"expected a DatasetType, got {type(dataset_type).__qualname__}")
        known = self._types.get(dataset_type.name)
        if known is not None and known[0] != dataset_type:
            raise ValueError(f"dataset type {dataset_type.name!r} is already registered "
                             f"differently by {known[1]}")
        if known is None:
            self._types[dataset_type.name] = (dataset_type, self._origin())

    @property
    def stages(self) -> Mapping[str, StageEntry]:
        """Registered stages by name."""
        return dict(self._stages)

    @property
    def dataset_types(self) -> Mapping[str, DatasetType]:
        """Registered dataset types by name."""
        return {name: dt for name, (dt, _) in self._types.items()}


@dataclass(frozen=True)
class Command:
    """A CLI subcommand added by a plugin.

    Attributes
    ----------
    name, help : str
        The subcommand and its one-line help.
    configure : callable
        ``configure(parser)`` adds the arguments.
    run : callable
        ``run(args) -> int`` executes it and returns the exit code.
    plugin : str
        The plugin that added it.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    plugin: str


class CommandRegistry(_Attributed):
    """Collects CLI subcommands from the ``jointcal_ap_add_commands`` hook.

    Parameters
    ----------
    reserved : iterable of str
        Names of the built-in subcommands, which plugins cannot take.
    """

    _NAME = re.compile(r"^[a-z][a-z0-9-]*$")

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        super().__init__()
        self._reserved = set(reserved)
        self._commands: dict[str, Command] = {}

    def add(self, name: str, *, help: str, configure: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], Any]) -> None:
        """Add the subcommand ``jointcal-ap NAME`` (see the hookspec for the arguments)."""
        if not isinstance(name, str) or not self._NAME.match(name):
            raise ValueError(f"command name {name!r} must match [a-z][a-z0-9-]*")
        if name in self._reserved:
            raise ValueError(f"command {name!r} is a built-in command")
        if name in self._commands:
            raise ValueError(f"command {name!r} is already added by plugin "
                             f"{self._commands[name].plugin!r}")
        if not (callable(configure) and callable(run)):
            raise TypeError(f"command {name!r}: configure and run must be callables")
        self._commands[name] = Command(name, help, configure, run, self._plugin)

    @property
    def commands(self) -> Mapping[str, Command]:
        """Added commands by name."""
        return dict(self._commands)
