"""Image differencing: templates, Alard–Lupton PSF matching, decorrelation, ZOGY, DIA detection, QA.

The public calls a stage needs (see ``docs/diffim.md``):

- :func:`build_template` / :func:`read_template` → :class:`Template` (on the science grid);
  :func:`warp_to` for one image;
- :func:`subtract` (science, template, :class:`SubtractOptions`) → :class:`DifferenceImage`
  (``.write`` / ``DifferenceImage.read``: FITS);
- :func:`detect_dia_sources` (difference) → ``pyarrow.Table`` of Rubin ``DiaSource`` columns;
  :func:`write_dia_sources` (Parquet); :func:`psf_photometry` (forced PSF fluxes);
- :func:`metrics_table` and :func:`detection_counts` for the QA figures.

Modules: ``basis`` (Alard–Lupton basis), ``matching`` (stamp solution), ``convolve``
(spatially varying FFT convolution), ``decorrelation``, ``zogy``, ``subtract``, ``warp``,
``template``, ``detection``, ``qa``, ``image`` (products and FITS), ``io``/``pair`` (plain
FITS inputs), ``stars`` (fast star finding), ``cli`` (``jointcal-ap diff``).
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562), so that ``jointcal-ap``'s parser, which imports
# ``jointcal_ap.diffim.cli``, does not pay for SciPy, Astropy and the whole package.
_WHERE = {
    "DIA_COLUMNS": "detection", "DetectionOptions": "detection", "detect_dia_sources": "detection",
    "detection_counts": "detection", "psf_photometry": "detection", "write_dia_sources": "detection",
    "DiffimError": "errors", "DifferenceImage": "image", "ImagePlanes": "image", "read_planes": "io",
    "MatchOptions": "matching", "align_pair": "pair", "prepare_pair": "pair", "metrics_table": "qa",
    "SubtractOptions": "subtraction", "subtract": "subtraction", "Template": "template",
    "build_template": "template", "read_template": "template", "warp_to": "warp",
    "footprint_overlaps": "warp", "warm_up_warp": "warp",
}

__all__ = sorted(_WHERE, key=lambda n: (not n[0].isupper() or not n.isupper(), n))


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"jointcal_ap.diffim.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jointcal_ap.diffim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
