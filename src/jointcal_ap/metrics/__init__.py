"""Alert-production metrics against injected truth (see ``docs/metrics.md``).

- :func:`add_true_snr`, :func:`detection_probability` — the true SNR of injected sources
  on the difference image and the detection probability it predicts;
- :func:`match_to_truth` — DiaSources ↔ injected sources of one visit × detector;
- :func:`ap_metrics` — completeness (magnitude, true SNR, trail length), m50, purity, flux
  bias and pulls, astrometric offsets;
- :func:`compute_run_metrics` — all of it per visit × detector and per run, written as
  Parquet/JSON with plots (``jointcal-ap metrics RUN_DIR``);
- :func:`detector_dir`, :func:`detector_inputs` — the run directory's layout.
"""

from jointcal_ap.metrics.ap import (
    POINT_KINDS,
    ApMetrics,
    Curve,
    ap_metrics,
    completeness_curve,
    fit_m50,
    robust_std,
)
from jointcal_ap.metrics.layout import (
    DIA_SOURCE_NAME,
    METRICS_DIR,
    TRUTH_NAME,
    DetectorInputs,
    detector_dir,
    detector_inputs,
)
from jointcal_ap.metrics.match import MATCH_COLUMNS, Matches, match_to_truth
from jointcal_ap.metrics.run import RunMetrics, compute_run_metrics, format_summary
from jointcal_ap.metrics.truth import add_true_snr, detection_probability

__all__ = [
    "DIA_SOURCE_NAME",
    "MATCH_COLUMNS",
    "METRICS_DIR",
    "POINT_KINDS",
    "TRUTH_NAME",
    "ApMetrics",
    "Curve",
    "DetectorInputs",
    "Matches",
    "RunMetrics",
    "add_true_snr",
    "ap_metrics",
    "completeness_curve",
    "compute_run_metrics",
    "detection_probability",
    "detector_dir",
    "detector_inputs",
    "fit_m50",
    "format_summary",
    "match_to_truth",
    "robust_std",
]
