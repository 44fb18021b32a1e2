"""DIA sources: measurement on difference images, forced photometry, synthetic injection.

Public calls (see ``docs/dia.md``):

- :func:`measure_dia_sources` — detection peaks + difference/science/template → Rubin's
  DiaSource table (PSF, aperture, forced, dipole and trailed fits, shapes, pixel flags);
- :func:`forced_photometry` — PSF fluxes at given positions → Rubin's DiaForcedSource rows;
- :func:`inject_sources`, :func:`make_injection_catalog` — synthetic sources drawn with the
  exposure's PSF, and catalogs of them, with a truth table.

Pixel positions in the tables are Rubin's **0-based** ones (the centre of ``image[0, 0]`` is
(0, 0)); the project's PSF models and WCS maps take 1-based pixels and are converted at the
boundary.
"""

from jointcal_ap.dia.errors import DiaError
from jointcal_ap.dia.forced import FORCED_FLAG_COLUMNS, forced_photometry
from jointcal_ap.dia.ids import DIA_ID_PACKER, IdPacker
from jointcal_ap.dia.inject import (
    INJECTED,
    INJECTED_TEMPLATE,
    KINDS,
    InjectionResult,
    estimate_gain,
    inject_sources,
    make_injection_catalog,
)
from jointcal_ap.dia.inputs import (
    DiaImage,
    SkyMap,
    VisitInfo,
    WcsSkyMap,
    as_dia_image,
    as_sky_map,
    as_visit_info,
)
from jointcal_ap.dia.measure import PIXEL_FLAG_PLANES, MeasureOptions, measure_dia_sources

__all__ = [
    "DIA_ID_PACKER",
    "FORCED_FLAG_COLUMNS",
    "INJECTED",
    "INJECTED_TEMPLATE",
    "KINDS",
    "PIXEL_FLAG_PLANES",
    "DiaError",
    "DiaImage",
    "IdPacker",
    "InjectionResult",
    "MeasureOptions",
    "SkyMap",
    "VisitInfo",
    "WcsSkyMap",
    "as_dia_image",
    "as_sky_map",
    "as_visit_info",
    "estimate_gain",
    "forced_photometry",
    "inject_sources",
    "make_injection_catalog",
    "measure_dia_sources",
]
