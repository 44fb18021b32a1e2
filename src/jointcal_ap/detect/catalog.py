"""One image → its rows of the fitter's ``sources.parquet``: :func:`catalog_from_image`."""

from __future__ import annotations

import json
from typing import Any

from jointcal_ap.detect.measurement import detect_sources
from jointcal_ap.detect.options import DetectOptions

__all__ = ["catalog_from_image"]


def catalog_from_image(image, variance, mask=None, *, visit: int, detector: int,
                       options: DetectOptions | None = None, **overrides: Any):
    """Detect and measure one image; return its rows of the fitter's ``sources.parquet``.

    Parameters
    ----------
    image, variance, mask, options, **overrides
        As :func:`detect_sources`.
    visit, detector : int
        The ids the fitter keys the CCD by (they must match ``wcs.parquet``).

    Returns
    -------
    pyarrow.Table
        Columns ``visit``, ``detector``, ``x``, ``y``, ``x_err``, ``y_err``, ``xy_cov``,
        ``flux``, ``flux_err``, ``flags`` (see :func:`jointcal_ap.fit.io.read_parquet_survey`),
        with the FWHM, aperture radius and options in the schema metadata. Concatenate
        the tables of all CCDs (``pyarrow.concat_tables``) and write ``sources.parquet``.
    """
    import pyarrow as pa

    det = detect_sources(image, variance, mask, options=options, **overrides)
    table = pa.table(det.sources_columns(visit, detector))
    meta = {"fwhm_px": det.fwhm_px, "fwhm_estimated": det.fwhm_estimated,
            "aperture_radius_px": det.aperture_radius_px, "options": det.options.to_dict()}
    return table.replace_schema_metadata({"jointcal_ap.detect": json.dumps(meta)})

