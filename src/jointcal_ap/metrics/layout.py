"""Where a run's injection truth and DiaSources live, and where its metrics go.

This is the one place that knows the layout of a run directory (the stage platform's
dataset store will replace it)::

    RUN_DIR/
      visit=<visit>/detector=<detector>/
        injection_truth.parquet   the truth of inject_sources (with snr_true, add_true_snr)
        dia_source.parquet        measure_dia_sources on that visit × detector's difference
      metrics/                    written by jointcal-ap metrics RUN_DIR
        per_detector.parquet, per_detector.json, run.json, curves.parquet,
        matches.parquet, completeness.png, pulls.png, trailed_completeness.png

A detector directory without a ``dia_source.parquet`` (nothing measured, e.g. a failed
unit) counts as every injected source missed; one without ``injection_truth.parquet`` is
not an injection run and is skipped.

>>> import tempfile, pathlib
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> detector_dir(run, 12, 3).relative_to(run).as_posix()
'visit=12/detector=3'
>>> _ = (detector_dir(run, 12, 3) / TRUTH_NAME).write_bytes(b"")
>>> [(d.visit, d.detector, d.dia_sources is None) for d in detector_inputs(run)]
[(12, 3, True)]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DIA_SOURCE_NAME", "METRICS_DIR", "TRUTH_NAME", "DetectorInputs", "detector_dir",
           "detector_inputs"]

TRUTH_NAME = "injection_truth.parquet"
DIA_SOURCE_NAME = "dia_source.parquet"
METRICS_DIR = "metrics"

_VISIT = re.compile(r"^visit=(\d+)$")
_DETECTOR = re.compile(r"^detector=(\d+)$")


@dataclass(frozen=True)
class DetectorInputs:
    """One visit × detector of a run: its truth table and DiaSource table (None if absent)."""

    visit: int
    detector: int
    truth: Path
    dia_sources: Path | None


def detector_dir(run_dir: str | os.PathLike[str], visit: int, detector: int) -> Path:
    """``RUN_DIR/visit=V/detector=D`` (created)."""
    path = Path(run_dir) / f"visit={int(visit)}" / f"detector={int(detector)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def detector_inputs(run_dir: str | os.PathLike[str]) -> list[DetectorInputs]:
    """Every visit × detector of a run that has an injection truth table, sorted.

    Raises FileNotFoundError when ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    found = []
    for vdir in root.iterdir():
        vm = _VISIT.match(vdir.name)
        if not (vm and vdir.is_dir()):
            continue
        for ddir in vdir.iterdir():
            dm = _DETECTOR.match(ddir.name)
            if not (dm and (ddir / TRUTH_NAME).is_file()):
                continue
            dia = ddir / DIA_SOURCE_NAME
            found.append(DetectorInputs(int(vm.group(1)), int(dm.group(1)), ddir / TRUTH_NAME,
                                        dia if dia.is_file() else None))
    return sorted(found, key=lambda d: (d.visit, d.detector))
