"""The ``jointcal-ap apdb`` commands: create, describe and query an APDB; a throwaway server.

:func:`add_commands` is called by :mod:`jointcal_ap.cli` (argparse only; the handlers import
what they need). Exit codes: 0 ok, 1 the database could not be reached or is not a valid
APDB (or an object is missing), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["add_commands"]

EXAMPLES = textwrap.dedent("""\
    examples:
      1. Create an APDB in a SQLite file (Rubin's apdb.yaml tables):
         jointcal-ap apdb create sqlite:///apdb.db
      2. The same on PostgreSQL:
         jointcal-ap apdb create postgresql://user@dbhost:5432/apdb
      3. Schema version, row counts, stored units:
         jointcal-ap apdb info sqlite:///apdb.db --json
      4. One DiaObject with its sources of the last 12 months and its features:
         jointcal-ap apdb object sqlite:///apdb.db 1234567
      5. Table checksums (compare two databases, or before and after a re-run):
         jointcal-ap apdb checksum sqlite:///apdb.db
      6. A throwaway PostgreSQL server on 127.0.0.1 until Ctrl-C (prints its URL):
         jointcal-ap apdb postgres --database apdb
    """)


def _data_errors() -> tuple[type[BaseException], ...]:
    from jointcal_ap.apdb.errors import ApdbError, ApdbInputError

    return (ApdbError, ApdbInputError)


def _open(url: str, create: bool = False) -> Any:
    from jointcal_ap.apdb import open_apdb

    return open_apdb(url, create=create)


class _Data(Exception):
    """Raised inside handlers for data errors: converted below to exit 1."""


def _guard(func: Any) -> Any:
    """``command(data_errors=...)`` with the APDB's errors, imported when the handler runs."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _data_errors() as exc:
            raise _Data(str(exc)) from None

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return command(data_errors=(_Data,))(run)


@_guard
def create_command(args: argparse.Namespace) -> int:
    apdb = _open(args.url, create=True)
    print(f"APDB ready at {apdb.url} (schema {apdb.schema_version})")
    apdb.close()
    return 0


@_guard
def info_command(args: argparse.Namespace) -> int:
    apdb = _open(args.url)
    try:
        info = {"url": apdb.url, "dialect": apdb.dialect, "schema_version": apdb.schema_version,
                "counts": apdb.counts(), "units": len(apdb.units())}
    finally:
        apdb.close()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['url']}  ({info['dialect']}, APDB schema {info['schema_version']})")
        for name, count in info["counts"].items():
            print(f"  {name:<20s} {count:>12,d}")
        print(f"  {'stored units':<20s} {info['units']:>12,d}")
    return 0


def _object_args(args: argparse.Namespace) -> tuple[str, int]:
    first, second = args.first, args.second
    for url, ident in ((first, second), (second, first)):
        try:
            return url, int(ident)
        except ValueError:
            continue
    raise UsageError(f"apdb object: expected a URL and an integer diaObjectId, got {first!r} "
                     f"and {second!r}")


@_guard
def object_command(args: argparse.Namespace) -> int:
    from jointcal_ap.apdb.history import alert_history

    url, object_id = _object_args(args)
    apdb = _open(url)
    try:
        if args.time is None:  # everything stored
            hist = alert_history(apdb, [object_id], 1e9, months=1e9, forced_months=1e9)
        else:
            hist = alert_history(apdb, [object_id], args.time, months=args.months,
                                 forced_months=args.months)
        features = apdb.get_features([object_id])
    finally:
        apdb.close()
    if hist.dia_objects.num_rows == 0:
        raise _Data(f"no DiaObject {object_id} in {url}")
    obj = {k: v for k, v in hist.dia_objects.to_pylist()[0].items() if v is not None}
    out = {"diaObject": obj, "prvDiaSources": hist.prv_dia_sources.select(
        ["diaSourceId", "visit", "detector", "midpointMjdTai", "band", "ra", "dec", "psfFlux",
         "psfFluxErr"]).to_pylist(),
        "prvDiaForcedSources": hist.prv_dia_forced_sources.select(
            ["diaForcedSourceId", "visit", "detector", "midpointMjdTai", "band", "psfFlux",
             "psfFluxErr"]).to_pylist(),
        "features": features.to_pylist()}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"DiaObject {object_id}: ra {obj['ra']:.7f} dec {obj['dec']:.7f}, "
          f"{obj['nDiaSources']} DiaSource(s), valid from MJD {obj['validityStartMjdTai']}")
    for key, value in obj.items():
        if key not in ("diaObjectId", "ra", "dec", "nDiaSources", "validityStartMjdTai"):
            print(f"  {key:<26s} {value}")
    print(f"prvDiaSources ({len(out['prvDiaSources'])}):")
    for row in out["prvDiaSources"]:
        print(f"  {row['diaSourceId']:>20d}  MJD {row['midpointMjdTai']:.5f}  {row['band']}  "
              f"psfFlux {row['psfFlux']} ± {row['psfFluxErr']} nJy")
    print(f"prvDiaForcedSources: {len(out['prvDiaForcedSources'])}")
    for row in out["features"]:
        print(f"features {row['band']}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in row.items()
            if k not in ("diaObjectId", "band") and isinstance(v, float)))
    return 0


@_guard
def checksum_command(args: argparse.Namespace) -> int:
    apdb = _open(args.url)
    try:
        sums = apdb.checksums()
    finally:
        apdb.close()
    if args.json:
        print(json.dumps(sums, indent=2))
    else:
        for name, digest in sums.items():
            print(f"{digest}  {name}")
    return 0


@command(data_errors=(RuntimeError,))
def postgres_command(args: argparse.Namespace) -> int:
    import time

    from jointcal_ap.services.postgres import postgres_server

    with postgres_server(durable=not args.fast) as server:
        url = server.create_database(args.database)
        if args.create:
            _open(url, create=True).close()
        print(url, flush=True)
        print("PostgreSQL running on 127.0.0.1; Ctrl-C stops it and deletes its data",
              file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``apdb create|info|object|checksum|postgres`` to the ``jointcal-ap`` parser."""
    raw = argparse.RawDescriptionHelpFormatter
    apdb = sub.add_parser("apdb", help="create, describe and query an Alert Production DataBase",
                          formatter_class=raw, epilog=EXAMPLES)
    asub = apdb.add_subparsers(dest="apdb_command", metavar="SUBCOMMAND")

    def usage(_args: argparse.Namespace) -> int:
        apdb.print_help(sys.stderr)
        return 2

    apdb.set_defaults(handler=usage)

    def command_parser(name: str, help_text: str, handler: Any, url: str | None = "the APDB URL",
                       json_output: bool = True) -> argparse.ArgumentParser:
        parser = asub.add_parser(name, help=help_text, parents=[common], formatter_class=raw,
                                 epilog=EXAMPLES)
        if url is not None:
            parser.add_argument("url", help=url)
        if json_output:
            parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(handler=handler)
        return parser

    command_parser("create", "create the APDB tables (SQLite file or PostgreSQL)",
                   create_command, "sqlite:///path.db or postgresql://user@host:port/db",
                   json_output=False)
    command_parser("info", "schema version, row counts, stored units", info_command)
    obj = command_parser("object", "one DiaObject, its history and its features", object_command,
                         url=None)
    obj.add_argument("first", metavar="URL", help="the APDB URL (URL and ID in either order)")
    obj.add_argument("second", metavar="ID", help="the diaObjectId")
    obj.add_argument("--time", type=float, default=None, metavar="MJD",
                     help="history before this MJD TAI (default: all)")
    obj.add_argument("--months", type=float, default=12.0,
                     help="months of history (30 days each; default 12, ignored without --time)")
    command_parser("checksum", "SHA-256 of each table's rows", checksum_command)
    pg = command_parser("postgres", "run a throwaway PostgreSQL server until Ctrl-C",
                        postgres_command, url=None, json_output=False)
    pg.add_argument("--database", default="apdb", help="database to create (default apdb)")
    pg.add_argument("--create", action="store_true", help="also create the APDB tables in it")
    pg.add_argument("--fast", action="store_true",
                    help="fsync and synchronous commit off (faster, not power-cut safe)")
