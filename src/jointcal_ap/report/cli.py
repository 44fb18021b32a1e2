"""``jointcal-ap report OUT``: the HTML report of an alert-production run."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from jointcal_ap.cliutil import command

__all__ = ["EXAMPLES_REPORT", "add_commands"]

EXAMPLES_REPORT = textwrap.dedent("""\
    examples:
      1. The report of a demo run (OUT/report.html, OUT/report/*.png, OUT/metrics.json):
         jointcal-ap demo --out demo-out && jointcal-ap report demo-out
      2. With the DiaObjects' features from another APDB than the pipeline file's:
         jointcal-ap report demo-out --apdb sqlite:///demo-out/apdb.sqlite3

    exit codes: 0 written, 1 the run directory is missing or unreadable, 2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``report`` to the ``jointcal-ap`` parser."""
    parser = sub.add_parser(
        "report", help="HTML report of an alert-production run (figures and metrics.json)",
        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES_REPORT)
    parser.add_argument("out", metavar="OUT", help="the run's output directory (holds run/)")
    parser.add_argument("--apdb", default=None, metavar="URL",
                        help="the APDB (default: the apdb_url of OUT/pipeline.toml)")
    parser.set_defaults(handler=_report)


def _data_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowException, OSError, KeyError, ValueError)


def _report(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run)(args)


def _run(args: argparse.Namespace) -> int:
    from jointcal_ap.report import build_report

    report = build_report(args.out, apdb_url=args.apdb,
                          progress=not getattr(args, "no_progress", False))
    print(report.headline)
    print(f"report: {report.html}\nmetrics: {report.metrics_json}")
    return 0
