"""AP metrics of a whole run: per visit × detector and over the run, written and printed.

:func:`compute_run_metrics` reads every visit × detector of a run directory
(:mod:`jointcal_ap.metrics.layout`), matches its DiaSources to its injection truth,
computes :func:`~jointcal_ap.metrics.ap.ap_metrics` per detector and over all of them
(the run), and writes into ``RUN_DIR/metrics/`` (atomically):

- ``per_detector.parquet`` and ``per_detector.json``: one row per visit × detector;
- ``run.json``: the run's summary, its curves and the options;
- ``curves.parquet``: every binned curve, per detector and for the run (``visit`` =
  ``detector`` = -1);
- ``matches.parquet``: every truth row with its matched DiaSource;
- ``completeness.png``, ``pulls.png``, ``trailed_completeness.png`` (with ``plots``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jointcal_ap.atomic import atomic_path, write_json
from jointcal_ap.metrics.ap import ApMetrics, ap_metrics
from jointcal_ap.metrics.layout import METRICS_DIR, detector_inputs
from jointcal_ap.metrics.match import match_to_truth
from jointcal_ap.progress import progress as progress_bar

__all__ = ["RunMetrics", "compute_run_metrics", "format_summary"]

log = logging.getLogger("jointcal_ap")


@dataclass(frozen=True)
class RunMetrics:
    """What :func:`compute_run_metrics` returns.

    Attributes
    ----------
    per_detector : list of dict
        ``visit``, ``detector`` and the detector's summary.
    run : ApMetrics
        Over the whole run.
    out_dir : Path
    files : list of Path
        What was written.
    """

    per_detector: list[dict[str, Any]]
    run: ApMetrics
    out_dir: Path
    files: list[Path] = field(default_factory=list)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_parquet(table: Any, path: Path) -> Path:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def compute_run_metrics(run_dir: str | os.PathLike[str], *, out_dir: str | os.PathLike[str] | None = None,
                        radius_px: float = 2.0, threshold: float = 5.0, plots: bool = True,
                        progress: bool = False) -> RunMetrics:
    """Match, measure and write the AP metrics of a run directory.

    Parameters
    ----------
    run_dir : path
        The run (layout in :mod:`jointcal_ap.metrics.layout`).
    out_dir : path, optional
        Default ``RUN_DIR/metrics``.
    radius_px : float
        Match radius (pixels).
    threshold : float
        The detection threshold (σ), for the predicted completeness.
    plots : bool
        Write the PNG figures.
    progress : bool
        Report progress on stderr.

    Raises
    ------
    FileNotFoundError
        The run directory does not exist or holds no injection truth.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs = detector_inputs(run_dir)
    if not inputs:
        raise FileNotFoundError(f"{run_dir}: no visit=*/detector=*/injection_truth.parquet "
                                f"(not an injection run?)")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / METRICS_DIR
    out.mkdir(parents=True, exist_ok=True)
    per_detector, curve_rows, matched_tables = [], [], []
    n_dia_total = 0
    bar = progress_bar(total=len(inputs), desc="metrics", unit="detector", enabled=progress)
    for item in inputs:
        bar.update(1)
        truth = pq.read_table(item.truth)
        dia = pq.read_table(item.dia_sources) if item.dia_sources is not None else None
        matches = match_to_truth(truth, dia, radius_px=radius_px)
        result = ap_metrics(matches.truth, matches.n_dia_sources, threshold=threshold)
        per_detector.append({"visit": item.visit, "detector": item.detector,
                             "has_dia_sources": dia is not None, **result.summary})
        for curve in result.curves:
            curve_rows.extend(curve.rows(visit=item.visit, detector=item.detector))
        table = matches.truth
        for name, value in (("visit", item.visit), ("detector", item.detector)):
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, pa.array(np.full(table.num_rows, value, np.int64)))
        matched_tables.append(table)
        n_dia_total += matches.n_dia_sources
    bar.close()
    everything = pa.concat_tables(matched_tables, promote_options="permissive")
    run = ap_metrics(everything, n_dia_total, threshold=threshold)
    for curve in run.curves:
        curve_rows.extend(curve.rows(visit=-1, detector=-1))
    files = [
        _write_parquet(pa.Table.from_pylist(per_detector), out / "per_detector.parquet"),
        write_json(out / "per_detector.json", _jsonable(per_detector)),
        write_json(out / "run.json", _jsonable({
            "run_dir": str(Path(run_dir).resolve()), "n_detectors": len(inputs),
            "options": {"radius_px": radius_px, "threshold": threshold},
            "summary": run.summary,
            "curves": {c.name: c.rows() for c in run.curves}})),
        _write_parquet(pa.Table.from_pylist(curve_rows), out / "curves.parquet"),
        _write_parquet(everything, out / "matches.parquet"),
    ]
    if plots:
        from jointcal_ap.metrics.plots import (
            plot_completeness,
            plot_pulls,
            plot_trailed_completeness,
        )

        name = Path(run_dir).resolve().name
        files.append(plot_completeness(run.curves, out / "completeness.png",
                                       m50=run.summary["m50"], title=name))
        files.append(plot_pulls(run.pulls, out / "pulls.png", title=name))
        trailed = [c for c in run.curves if c.name == "trail_length"]
        if trailed:
            files.append(plot_trailed_completeness(trailed[0], out / "trailed_completeness.png",
                                                   title=name))
    return RunMetrics(per_detector, run, out, files)


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec) if isinstance(value, float) else str(value)


def format_summary(metrics: RunMetrics) -> str:
    """A plain-text report of the run and its detectors."""
    s = metrics.run.summary
    lines = [
        f"AP metrics: {len(metrics.per_detector)} visit × detector(s), written to {metrics.out_dir}",
        f"  injected point sources   {s['n_point']:>7d}   detected {s['n_point_detected']:>7d}   "
        f"completeness {_fmt(s['completeness_point'])}",
        f"  injected trails          {s['n_trail']:>7d}   detected {s['n_trail_detected']:>7d}   "
        f"completeness {_fmt(s['completeness_trail'])}",
        f"  injected static sources  {s['n_static']:>7d}   detected {s['n_static_detected']:>7d}",
        f"  DiaSources               {s['n_dia_sources']:>7d}   purity {_fmt(s['purity'])}",
        f"  m50 {_fmt(s['m50'], '.2f')} mag (width {_fmt(s['m50_width'], '.2f')}, "
        f"plateau {_fmt(s['completeness_max'])})",
        f"  flux pulls: n {s.get('n_pull', 0)}, mean {_fmt(s.get('pull_mean'), '+.3f')}, "
        f"std {_fmt(s.get('pull_std'))}, robust std {_fmt(s.get('pull_robust_std'))}; "
        f"flux bias {_fmt(s.get('flux_bias'), '+.4f')}",
        f"  astrometry: median offset {_fmt(s['offset_median_px'])} px / "
        f"{_fmt(s['offset_median_mas'], '.1f')} mas, mean (Δα cos δ, Δδ) = "
        f"({_fmt(s['dra_mean_mas'], '+.1f')}, {_fmt(s['ddec_mean_mas'], '+.1f')}) mas, "
        f"offset/error std {_fmt(s['offset_pull_std'])}",
    ]
    by_name = {c.name: c for c in metrics.run.curves}
    if "snr" in by_name:
        c = by_name["snr"]
        lines.append("  completeness vs true SNR (measured / predicted):")
        for i in np.nonzero(c.n > 0)[0]:
            lines.append(f"    {c.lo[i]:5.1f}–{c.hi[i]:<5.1f} n {c.n[i]:>6d}  "
                         f"{c.completeness[i]:.3f} ± {c.error[i]:.3f} / {_fmt(c.predicted[i])}")
    lines.append("  per visit × detector:")
    lines.append("    visit  detector  n_point  completeness  m50     purity  pull_std")
    for row in metrics.per_detector:
        lines.append(f"    {row['visit']:>5d}  {row['detector']:>8d}  {row['n_point']:>7d}  "
                     f"{_fmt(row['completeness_point']):>12}  {_fmt(row['m50'], '.2f'):>6}  "
                     f"{_fmt(row['purity']):>6}  {_fmt(row.get('pull_std')):>8}")
    return "\n".join(lines)
