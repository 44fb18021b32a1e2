"""An example stage plugin: per-unit statistics of the sources that ``detect`` measured.

It shows the whole plugin API: a stage with typed ports, documented options and a
version; the registration hook; and a CLI subcommand (``jointcal-ap example-stats``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jointcal_ap.stages import Stage, Unit, hookimpl, option

__version__ = "0.2.0"


@dataclass(frozen=True)
class SourceStatsOptions:
    """Options of the ``source_stats`` stage."""

    snr_min: float = option(5.0, doc="count only sources with flux/flux_err at least this")
    clean_flags: int = option(0, doc="flag bits that make a source unclean (0: only flags == 0 "
                                     "is clean)")

    def __post_init__(self) -> None:
        if self.snr_min < 0:
            raise ValueError(f"snr_min must be >= 0, got {self.snr_min}")


class SourceStats(Stage):
    """Count the sources of one unit and summarise their fluxes (ADU) and flags."""

    name = "source_stats"
    version = __version__
    inputs: ClassVar[dict[str, str]] = {"sources": "Table"}
    outputs: ClassVar[dict[str, str]] = {"stats": "Json"}
    Options = SourceStatsOptions

    def run(self, unit: Unit, sources: Any) -> dict[str, Any]:
        flux = np.asarray(sources["flux"], float)
        snr = flux / np.asarray(sources["flux_err"], float)
        flags = np.asarray(sources["flags"], np.int64)
        bright = snr >= self.options.snr_min
        mask = self.options.clean_flags or -1
        clean = (flags & mask) == 0
        return {"stats": {
            "visit": unit.visit, "detector": unit.detector, "n_sources": len(flux),
            "n_bright": int(bright.sum()), "n_bright_clean": int((bright & clean).sum()),
            "median_flux_adu": float(np.median(flux[bright])) if bright.any() else None,
        }}


@hookimpl
def jointcal_ap_register_stages(registry) -> None:
    # "Table" and "Json" are core dataset types; a new type would be registered here with
    # registry.add_dataset_type(DatasetType(...)).
    registry.add_stage(SourceStats)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="the output directory of a pipeline run")


def _stats(args: argparse.Namespace) -> int:
    files = sorted(Path(args.output).glob("units/*/stats.json"))
    if not files:
        print(f"no stats.json under {args.output}/units")
        return 1
    total = sum(json.loads(f.read_text())["n_bright"] for f in files)
    print(f"{len(files)} units, {total} bright sources")
    return 0


@hookimpl
def jointcal_ap_add_commands(commands) -> None:
    commands.add("example-stats", help="sum the source_stats outputs of a run",
                 configure=_configure, run=_stats)
