"""Every hook of ``jointcal_ap``, in one module: the contract between the host and its plugins.

A plugin is a module (or any object) with functions named after these specs and marked
with :data:`jointcal_ap.stages.hookimpl`. It is found through the ``jointcal_ap.plugins``
entry-point group (see :mod:`jointcal_ap.stages.manager`); the built-in stages under
``plugins/`` register exactly that way.

Each hook is called once per plugin, so an exception or a wrong return value is reported
with the name of the plugin and its distribution (:class:`~jointcal_ap.stages.PluginError`).
Hook wrappers are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from jointcal_ap.refcat.readers import Reader
    from jointcal_ap.stages.interfaces import AlertSink, Apdb
    from jointcal_ap.stages.registry import CommandRegistry, StageRegistry

__all__ = [
    "PROJECT",
    "hookimpl",
    "hookspec",
    "jointcal_ap_add_commands",
    "jointcal_ap_get_alert_sink",
    "jointcal_ap_get_apdb",
    "jointcal_ap_get_reader",
    "jointcal_ap_reader_formats",
    "jointcal_ap_register_stages",
]

#: The pluggy project name; markers of other projects are ignored.
PROJECT = "jointcal_ap"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's hook implementations (re-exported as ``jointcal_ap.stages.hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def jointcal_ap_register_stages(registry: StageRegistry) -> None:
    """Register stages and the dataset types they exchange.

    :param registry: call ``registry.add_stage(StageClass)`` for each
        :class:`~jointcal_ap.stages.Stage` subclass and ``registry.add_dataset_type(dt)``
        for each new :class:`~jointcal_ap.stages.DatasetType`. Registering the same
        dataset type from two plugins is allowed; two different definitions under one
        name, or two stages under one name, are an error naming both plugins.
    :return: nothing; a return value other than ``None`` is an error.
    """


@hookspec(firstresult=True)
def jointcal_ap_get_reader(format: str, options: Mapping[str, Any]) -> Reader | None:
    """Give a reader for an external catalog format, or ``None`` if the format is not yours.

    Called by :func:`jointcal_ap.refcat.readers.get_reader` for the ``format`` of a
    conversion config; the first non-``None`` answer wins (plugins in reverse registration
    order). The built-in readers are the plugin ``refcat_readers``.

    :param format: the format name, e.g. ``"csv"`` or ``"gaia_bin"``.
    :param options: the ``[reader]`` table of the conversion config, to pass to the
        reader's constructor (which rejects keys it does not know).
    :return: an instance of a :class:`~jointcal_ap.refcat.readers.Reader` subclass, or
        ``None``.
    """


@hookspec
def jointcal_ap_reader_formats() -> list[str]:
    """Name the formats this plugin can read (for listings and error messages).

    :return: format names that :func:`jointcal_ap_get_reader` answers for.
    """


@hookspec
def jointcal_ap_add_commands(commands: CommandRegistry) -> None:
    """Add subcommands to the ``jointcal-ap`` command line.

    :param commands: call ``commands.add(name, help=..., configure=..., run=...)``:
        ``configure(parser)`` adds arguments to the subcommand's
        :class:`argparse.ArgumentParser` and ``run(args) -> int`` executes it, returning
        the exit code (0 ok, 1 failed on the data, 2 usage). A name already taken by a
        built-in command or another plugin is an error naming the plugin.
    :return: nothing.
    """


@hookspec(firstresult=True)
def jointcal_ap_get_apdb(url: str) -> Apdb | None:
    """Open the Alert Production DataBase at ``url``, or ``None`` if the scheme is not yours.

    Stages reach it through ``self.context.apdb(url)``, which calls this hook once per
    worker process; see :class:`~jointcal_ap.stages.interfaces.Apdb`.

    :param url: where the APDB lives, e.g. ``"sqlite:///apdb.db"``.
    :return: an object implementing :class:`~jointcal_ap.stages.interfaces.Apdb`, or ``None``.
    """


@hookspec(firstresult=True)
def jointcal_ap_get_alert_sink(url: str) -> AlertSink | None:
    """Open an alert sink at ``url``, or ``None`` if the scheme is not yours.

    Stages reach it through ``self.context.alert_sink(url)``, which calls this hook once per
    worker process; see :class:`~jointcal_ap.stages.interfaces.AlertSink`.

    :param url: e.g. ``"kafka://broker:9092/alerts"`` or ``"file:///data/alerts"``.
    :return: an object implementing :class:`~jointcal_ap.stages.interfaces.AlertSink`, or
        ``None``.
    """
