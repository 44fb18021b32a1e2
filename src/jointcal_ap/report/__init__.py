"""The report of an alert-production run: one static HTML page with PNG figures beside it,
and the same figures' numbers in ``metrics.json``.

:func:`build_report` reads what a run wrote (the demo's output directory: the repository
``run/``, the simulation's truth ``sim/``, the APDB, ``demo_summary.json``) and writes
``OUT/report.html``, ``OUT/report/*.png`` and ``OUT/metrics.json``:

- calibration accuracy (the fitted WCS and nJy calibration against the truth);
- injected sources: completeness against magnitude and against true S/N with the predicted
  detection probability, purity, flux pulls (:mod:`jointcal_ap.metrics`);
- every DiaSource classified against the full truth (injected, variable, transient,
  asteroid) or as bogus, with example difference stamps of each;
- light curves of the DiaObjects with most detections and their APDB features;
- asteroids: the true appearances against the SSSources found;
- latency per detector (calibrated exposure → alert acknowledged), split by stage;
- alerts sent, archived and received back.

>>> from jointcal_ap.report import build_report          # doctest: +SKIP
>>> report = build_report("demo-out")                     # doctest: +SKIP
>>> report.html                                           # doctest: +SKIP
PosixPath('demo-out/report.html')
"""

from jointcal_ap.report.build import (
    AFTER_CALEXP_STAGES,
    REPORT_SECTIONS,
    Report,
    build_report,
    classify_dia_sources,
    unit_latency,
)

__all__ = [
    "AFTER_CALEXP_STAGES",
    "REPORT_SECTIONS",
    "Report",
    "build_report",
    "classify_dia_sources",
    "unit_latency",
]
