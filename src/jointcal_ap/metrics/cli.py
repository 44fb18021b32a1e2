"""``jointcal-ap metrics RUN_DIR``: print, write and plot the AP metrics of an injection run."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from jointcal_ap.cliutil import UsageError, command

__all__ = ["EXAMPLES_METRICS", "add_commands"]

EXAMPLES_METRICS = textwrap.dedent("""\
    examples:
      1. Metrics of a run (RUN_DIR/visit=*/detector=*/{injection_truth,dia_source}.parquet),
         written to RUN_DIR/metrics with the plots:
         jointcal-ap metrics runs/night1
      2. A wider match radius, a 4.5 sigma detection threshold, JSON on stdout, no plots:
         jointcal-ap metrics runs/night1 --match-radius 3 --threshold 4.5 --json --no-plots

    exit codes: 0 done, 1 the run directory is missing or unreadable, 2 usage.
    """)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``metrics`` to the ``jointcal-ap`` parser."""
    parser = sub.add_parser(
        "metrics", help="AP metrics of an injection run: completeness, purity, flux pulls",
        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES_METRICS)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    parser.add_argument("--out", default=None, help="output directory (default RUN_DIR/metrics)")
    parser.add_argument("--match-radius", type=float, default=2.0, metavar="PX",
                        help="match radius in pixels (default 2; trails add half their length)")
    parser.add_argument("--threshold", type=float, default=5.0, metavar="SIGMA",
                        help="detection threshold for the predicted completeness (default 5)")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG figures")
    parser.set_defaults(handler=_metrics)


def _data_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    from jointcal_ap.dia.errors import DiaError
    from jointcal_ap.schemas import SchemaError

    return (DiaError, SchemaError, pa.ArrowException, OSError, KeyError, ValueError)


def _metrics(args: argparse.Namespace) -> int:
    return command(data_errors=_data_errors())(_run)(args)


def _run(args: argparse.Namespace) -> int:
    import json

    from jointcal_ap.metrics.run import _jsonable, compute_run_metrics, format_summary

    if args.match_radius <= 0:
        raise UsageError(f"--match-radius must be > 0, got {args.match_radius}")
    metrics = compute_run_metrics(args.run_dir, out_dir=args.out, radius_px=args.match_radius,
                                  threshold=args.threshold, plots=not args.no_plots,
                                  progress=not getattr(args, "no_progress", False))
    if args.json:
        print(json.dumps(_jsonable({"summary": metrics.run.summary,
                                    "per_detector": metrics.per_detector}), indent=2))
    else:
        print(format_summary(metrics))
    return 0
