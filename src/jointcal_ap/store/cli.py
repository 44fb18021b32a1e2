"""``jointcal-ap repo``: ingest exposures into a repository and query its registry."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["add_commands"]

EXAMPLES = textwrap.dedent("""\
    examples:
      1. Record raw exposures (visits, detector footprints, the files) in a repository:
         jointcal-ap repo ingest repo/ raw/visit*_det*.fits
      2. The visits in band r before MJD 60500 (TAI), in time order:
         jointcal-ap repo visits repo/ --band r --before 60500
      3. Every detector of an earlier visit that overlaps visit 12, detector 3:
         jointcal-ap repo overlapping repo/ --visit 12 --detector 3 --before
      4. The calibrated exposures of visits 12 and 13, as JSON:
         jointcal-ap repo datasets repo/ calexp --visit 12 13 --json

    exit codes: 0 ok, 1 a file or the repository cannot be read, 2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``repo ingest | visits | datasets | overlapping``."""
    raw = argparse.RawDescriptionHelpFormatter
    repo = sub.add_parser("repo", help="ingest exposures into a repository; query its registry",
                          formatter_class=raw, epilog=EXAMPLES)
    rsub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND")
    repo.set_defaults(handler=_help(repo))

    ingest = rsub.add_parser("ingest", help="record exposures (by reference) and their visits",
                             parents=[common], formatter_class=raw, epilog=EXAMPLES)
    ingest.add_argument("repo", help="repository directory (created if absent)")
    ingest.add_argument("files", nargs="+", metavar="FILE", help="exposure FITS files")
    ingest.add_argument("--name", default="raw", help="dataset name (default raw)")
    ingest.add_argument("--instrument", default="", help="instrument name (default none)")
    ingest.set_defaults(handler=_ingest)

    visits = rsub.add_parser("visits", help="visits, in time order", parents=[common],
                             formatter_class=raw, epilog=EXAMPLES)
    visits.add_argument("repo", help="repository directory")
    visits.add_argument("--band", default=None, help="only this band")
    visits.add_argument("--before", type=float, default=None, metavar="MJD",
                        help="mid-time before this MJD (TAI)")
    visits.add_argument("--after", type=float, default=None, metavar="MJD",
                        help="mid-time at or after this MJD (TAI)")
    visits.add_argument("--json", action="store_true", help="machine-readable output")
    visits.set_defaults(handler=_visits)

    datasets = rsub.add_parser("datasets", help="registered datasets", parents=[common],
                               formatter_class=raw, epilog=EXAMPLES)
    datasets.add_argument("repo", help="repository directory")
    datasets.add_argument("name", nargs="?", default=None, help="dataset name (default: all)")
    datasets.add_argument("--visit", type=int, nargs="+", default=None, help="visit(s)")
    datasets.add_argument("--detector", type=int, nargs="+", default=None, help="detector(s)")
    datasets.add_argument("--json", action="store_true", help="machine-readable output")
    datasets.set_defaults(handler=_datasets)

    overlap = rsub.add_parser("overlapping", help="detectors of other visits overlapping one",
                              parents=[common], formatter_class=raw, epilog=EXAMPLES)
    overlap.add_argument("repo", help="repository directory")
    overlap.add_argument("--visit", type=int, required=True)
    overlap.add_argument("--detector", type=int, required=True)
    overlap.add_argument("--before", action="store_true", help="only earlier visits")
    overlap.add_argument("--same-band", action="store_true", help="only visits in its band")
    overlap.add_argument("--json", action="store_true", help="machine-readable output")
    overlap.set_defaults(handler=_overlapping)


def _help(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        import sys

        parser.print_help(sys.stderr)
        return 2

    return handler


def _errors() -> tuple[type[BaseException], ...]:
    from jointcal_ap.exposure import ExposureError
    from jointcal_ap.store.registry import RegistryError

    return (ExposureError, RegistryError, OSError)


def _open(path: str, *, create: bool = False) -> Any:
    from pathlib import Path

    from jointcal_ap.store.repository import REGISTRY_FILE, Repository

    if not create and not (Path(path) / REGISTRY_FILE).is_file():
        raise UsageError(f"{path}: not a repository (no {REGISTRY_FILE}); create one with "
                         f"'jointcal-ap repo ingest' or 'jointcal-ap run'")
    return Repository(path)


def _guarded(func: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        return command(data_errors=_errors())(func)(args)

    return handler


@_guarded
def _ingest(args: argparse.Namespace) -> int:
    from jointcal_ap.store.repository import ingest_exposures

    with _open(args.repo, create=True) as repo:
        refs = ingest_exposures(repo, args.files, name=args.name, instrument=args.instrument)
        visits = {r.data_id["visit"] for r in refs}
    print(f"ingested {len(refs)} exposure(s) of {len(visits)} visit(s) into {args.repo} as "
          f"{args.name!r}")
    return 0


@_guarded
def _visits(args: argparse.Namespace) -> int:
    with _open(args.repo) as repo:
        rows = repo.registry.visits(band=args.band, before_mjd=args.before, after_mjd=args.after)
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(v) for v in rows], indent=2))
        return 0
    print(f"{'visit':>8} {'mjd_tai':>14} {'band':>5} {'exptime':>8} {'ra':>10} {'dec':>10}")
    for v in rows:
        print(f"{v.visit:>8} {v.mjd_tai:>14.6f} {v.band:>5} {v.exposure_time:>8.1f} "
              f"{v.ra:>10.5f} {v.dec:>10.5f}")
    return 0


@_guarded
def _datasets(args: argparse.Namespace) -> int:
    where = {}
    if args.visit:
        where["visit"] = args.visit
    if args.detector:
        where["detector"] = args.detector
    with _open(args.repo) as repo:
        refs = repo.query(args.name, **where)
    if args.json:
        print(json.dumps([{"name": r.name, "type": r.type, "data_id": dict(r.data_id),
                           "path": r.path} for r in refs], indent=2))
        return 0
    for r in refs:
        print(f"{r.name:<20} {r.type:<22} {r.data_id.key or '(run)':<20} {r.path}")
    return 0


@_guarded
def _overlapping(args: argparse.Namespace) -> int:
    with _open(args.repo) as repo:
        visit = repo.registry.visit(args.visit)
        rows = repo.registry.overlapping(args.visit, args.detector,
                                         before_mjd=visit.mjd_tai if args.before else None,
                                         band=visit.band if args.same_band else None)
    if args.json:
        print(json.dumps([{"visit": d.visit, "detector": d.detector} for d in rows]))
        return 0
    for d in rows:
        print(f"visit {d.visit} detector {d.detector}")
    return 0
