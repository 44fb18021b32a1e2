"""The stage commands of ``jointcal-ap``: ``stages list``, ``run``, and plugin subcommands.

:mod:`jointcal_ap.cli` calls :func:`add_commands` from ``build_parser``; every command
added here sets ``handler`` on the parsed arguments, and ``main`` calls it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
from typing import Any

__all__ = ["EXAMPLES_RUN", "add_commands", "list_stages", "run_command"]

log = logging.getLogger("jointcal_ap")

EXAMPLES_RUN = textwrap.dedent("""\
    examples:
      1. Run a pipeline on a LocalCluster with 2 worker processes:
         jointcal-ap run pipeline.toml --workers 2
      2. The same on a running Dask cluster:
         jointcal-ap run pipeline.toml --dask-address tcp://scheduler:8786
      3. Run it again: units already done are skipped, failed ones are retried.

    exit codes: 0 every unit done, 1 some units failed (see OUT/failed/) or the scheduler
    cannot be reached, 2 invalid pipeline.
    """)

EXAMPLES_STAGES = textwrap.dedent("""\
    examples:
      1. Every stage, with its plugin, distribution, inputs, outputs and options:
         jointcal-ap stages list
      2. The same as JSON:
         jointcal-ap stages list --json
      3. Without a plugin:
         JOINTCAL_AP_BLOCK_PLUGINS=my_plugin jointcal-ap stages list
    """)

#: Built-in subcommands, which plugins cannot take.
RESERVED = frozenset({"refcat", "fit", "demo", "stages", "run", "help", "diff", "template",
                      "metrics", "inject", "apdb", "associate", "alerts", "registry", "sso",
                      "repo", "realbogus", "report"})


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``stages``, ``run`` and every plugin's subcommands to the ``jointcal-ap`` parser.

    A plugin that fails to load is logged, and its commands are missing; ``stages list``
    reports the error.
    """
    raw = argparse.RawDescriptionHelpFormatter
    stages = sub.add_parser("stages", help="list the installed stage plugins",
                            formatter_class=raw, epilog=EXAMPLES_STAGES)
    ssub = stages.add_subparsers(dest="stages_command", metavar="SUBCOMMAND")
    stages.set_defaults(handler=_print_help(stages))
    listing = ssub.add_parser("list", help="every stage: plugin, distribution, inputs, outputs",
                              parents=[common], formatter_class=raw, epilog=EXAMPLES_STAGES)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=list_stages)

    run = sub.add_parser("run", help="run a pipeline of stages over visit x detector units",
                         parents=[common], formatter_class=raw, epilog=EXAMPLES_RUN)
    run.add_argument("pipeline", metavar="PIPELINE.toml", help="the pipeline configuration")
    run.add_argument("--dask-address", default=None,
                     help="run on this Dask scheduler (tcp://host:8786) instead of a LocalCluster")
    run.add_argument("--workers", type=int, default=None,
                     help="LocalCluster worker processes (default: the number of CPU cores)")
    run.add_argument("--out", default=None, help="output directory (default: [pipeline] output)")
    run.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                     help="seconds to wait for the scheduler of --dask-address (default 10)")
    run.set_defaults(handler=run_command)

    from jointcal_ap.stages.errors import PluginError
    from jointcal_ap.stages.manager import get_plugin_manager

    try:
        commands = get_plugin_manager().command_registry(RESERVED).commands
    except PluginError as exc:
        log.error("plugin commands unavailable: %s", exc)
        return
    for command in commands.values():
        parser = sub.add_parser(command.name, help=f"{command.help} [plugin {command.plugin}]",
                                parents=[common], formatter_class=raw)
        try:
            command.configure(parser)
        except Exception as exc:
            message = (f"plugin {command.plugin!r}: configuring command {command.name!r} failed: "
                       f"{type(exc).__name__}: {exc}")
            log.error("%s", message)
            parser.set_defaults(handler=_broken_command(message))
            continue
        parser.set_defaults(handler=_plugin_handler(command))


def _broken_command(message: str) -> Any:
    """The handler of a plugin command whose parser could not be configured: says why."""

    def handler(args: argparse.Namespace) -> int:
        print(f"jointcal-ap: error: {message}", file=sys.stderr)
        return 1

    return handler


def _print_help(parser: argparse.ArgumentParser) -> Any:
    """A handler for a command group called without its subcommand: its help, exit 2."""

    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def _plugin_handler(command: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            code = command.run(args)
        except Exception as exc:
            print(f"jointcal-ap: plugin {command.plugin!r}: command {command.name!r} failed: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        if not isinstance(code, int):
            print(f"jointcal-ap: plugin {command.plugin!r}: command {command.name!r} returned "
                  f"{code!r}, expected an exit code", file=sys.stderr)
            return 1
        return code

    return handler


def _describe(registry: Any, pm: Any) -> list[dict[str, Any]]:
    from jointcal_ap.stages.contract import input_ports, option_docs, output_ports

    rows = []
    for name, entry in sorted(registry.stages.items()):
        cls = entry.stage
        options = []
        docs = option_docs(cls.Options)
        for f in dataclasses.fields(cls.Options):
            default = (f.default if f.default is not dataclasses.MISSING else
                       "<required>" if f.default_factory is dataclasses.MISSING else
                       f.default_factory())
            options.append({"name": f.name, "type": str(f.type), "default": default,
                            "doc": docs[f.name]})
        consumes = {p: i.type if i.lookup == "same" else f"{i.type}, {i.lookup}"
                    for p, i in input_ports(cls).items()}
        produces = {p: o.type if not o.per_unit else f"{o.type}, per unit"
                    for p, o in output_ports(cls).items()}
        rows.append({"name": name, "version": cls.version, "description": cls.description(),
                     "plugin": entry.plugin, "distribution": entry.distribution,
                     "kind": cls.kind, "implements": cls.implements, "consumes": consumes,
                     "produces": produces, "options": options})
    return rows


def list_stages(args: argparse.Namespace) -> int:
    """``jointcal-ap stages list``: every stage with its origin, ports and options."""
    from jointcal_ap.stages.errors import PluginError
    from jointcal_ap.stages.manager import get_plugin_manager

    try:
        pm = get_plugin_manager()
        registry = pm.stage_registry()
    except PluginError as exc:
        print(f"jointcal-ap: error: {exc}", file=sys.stderr)
        return 1
    rows = _describe(registry, pm)
    if getattr(args, "json", False):
        print(json.dumps({"stages": rows, "dataset_types": {
            n: {"python_type": str(t.python_type), "suffix": t.suffix, "doc": t.doc}
            for n, t in sorted(registry.dataset_types.items())}}, indent=2, default=str))
        return 0
    if not rows:
        print("no stages installed")
    for row in rows:
        origin = f"plugin {row['plugin']}, {row['distribution'] or 'not from a distribution'}"
        print(f"{row['name']} {row['version']}  [{origin}]")
        if row["description"]:
            print(f"    {row['description']}")
        if row["kind"] != "unit":
            print(f"    kind: {row['kind']}")
        if row["implements"]:
            print(f"    implements: {row['implements']}")
        ports = ", ".join(f"{p} ({t})" for p, t in row["consumes"].items()) or "-"
        print(f"    consumes: {ports}")
        print("    produces: " + ", ".join(f"{p} ({t})" for p, t in row["produces"].items()))
        for opt in row["options"]:
            print(f"    option {opt['name']} = {opt['default']!r}: {opt['doc']}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """``jointcal-ap run PIPELINE.toml``: exit 0 if every unit is done, 1 if some failed."""
    from jointcal_ap.stages.errors import PipelineError, PluginError, SchedulerError
    from jointcal_ap.stages.runner import run_pipeline

    if args.workers is not None and args.workers < 1:
        print("jointcal-ap: error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = run_pipeline(args.pipeline, output=args.out, dask_address=args.dask_address,
                               workers=args.workers, progress=not getattr(args, "no_progress", False),
                               connect_timeout=args.connect_timeout)
    except PipelineError as exc:
        print(f"jointcal-ap: pipeline error: {exc}", file=sys.stderr)
        return 2
    except (PluginError, SchedulerError) as exc:
        print(f"jointcal-ap: error: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    return summary.exit_code
