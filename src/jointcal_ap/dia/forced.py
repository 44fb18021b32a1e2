"""Forced PSF photometry at given positions: Rubin's DiaForcedSource rows for one detector.

:func:`forced_photometry` measures the PSF flux at each position on the difference image
(``psfFlux``, no background) and on the calibrated science exposure (``scienceFlux``, with
a local constant background by default), each with its own PSF model and the variance
plane, and returns a ``pyarrow.Table`` with exactly Rubin's DiaForcedSource columns. The
association step calls it for every known DiaObject that falls on the detector.

Positions off the image are not an error: their fluxes are NULL (and, with
``with_flags=True``, ``pixelFlags_offimage`` is set). Unmasked NaN pixels under the PSF at
a position raise :class:`~jointcal_ap.dia.errors.DiaError` naming the DiaObject.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jointcal_ap.dia._tables import column_names, read_column
from jointcal_ap.dia.errors import DiaError
from jointcal_ap.dia.ids import DIA_ID_PACKER, IdPacker
from jointcal_ap.dia.inputs import as_dia_image, as_sky_map, as_visit_info
from jointcal_ap.dia.measure import MeasureOptions, forced_on, now_mjd_tai

__all__ = ["FORCED_FLAG_COLUMNS", "forced_photometry"]

#: The extra columns ``with_flags=True`` appends (named as in DiaSource), after Rubin's.
FORCED_FLAG_COLUMNS = ("x", "y", "pixelFlags_offimage", "psfFlux_flag", "psfFlux_flag_edge",
                       "psfFlux_flag_noGoodPixels", "forced_PsfFlux_flag",
                       "forced_PsfFlux_flag_edge", "forced_PsfFlux_flag_noGoodPixels")


def forced_photometry(positions: Any, difference: Any, science: Any = None, *, visit: Any,
                      wcs: Any = None, options: MeasureOptions | None = None,
                      processed_mjd_tai: float | None = None,
                      id_packer: IdPacker = DIA_ID_PACKER, first_index: int = 0,
                      with_flags: bool = False) -> Any:
    """PSF fluxes at given positions on the difference and the science exposure.

    Parameters
    ----------
    positions : table or mapping of columns
        ``diaObjectId`` (int64) and either ``ra``, ``dec`` (degrees; converted with the WCS)
        or ``x``, ``y`` (0-based pixels; ``ra``, ``dec`` computed).
    difference : DiaImage or difference-image / exposure object
        With its PSF model.
    science : DiaImage or exposure, optional
        The calibrated exposure, with its PSF model (``scienceFlux`` NULL without it).
    visit : VisitInfo, ExposureMetadata, exposure or mapping
    wcs : astropy WCS, CalibratedExposure or SkyMap, optional
        Default: ``science``.
    options : MeasureOptions, optional
        ``bad_mask_planes`` and ``fit_background`` apply.
    processed_mjd_tai : float, optional
        ``timeProcessedMjdTai`` (default: now).
    id_packer, first_index
        ``diaForcedSourceId`` = ``id_packer.pack(visit, detector, first_index + row)``.
    with_flags : bool
        Append :data:`FORCED_FLAG_COLUMNS` (not Rubin's) after the DiaForcedSource columns.

    Returns
    -------
    pyarrow.Table
        One row per position, in order.
    """
    import pyarrow as pa

    from jointcal_ap.schemas import apdb_schema

    opts = options or MeasureOptions()
    diff = as_dia_image(difference, "difference")
    sci = None if science is None else as_dia_image(science, "science")
    if sci is not None and sci.shape != diff.shape:
        raise DiaError(f"science image has shape {sci.shape}, the difference {diff.shape}; "
                       f"they must be on the same pixel grid")
    info = as_visit_info(visit)
    where = "forced photometry positions"
    object_id = read_column(positions, "diaObjectId", where, dtype=np.int64)
    names = column_names(positions)
    if wcs is None and science is None:
        raise DiaError("forced_photometry: no WCS; pass wcs= or a calibrated science exposure")
    sky = as_sky_map(wcs if wcs is not None else science, "wcs" if wcs is not None else "science")
    if {"ra", "dec"} <= set(names):
        ra = read_column(positions, "ra", where)
        dec = read_column(positions, "dec", where)
        _check_finite(ra, dec, object_id, "(ra, dec)", where)
        x1, y1 = sky.sky_to_pixel(ra, dec)
        x, y = np.asarray(x1, float) - 1.0, np.asarray(y1, float) - 1.0
    elif {"x", "y"} <= set(names):
        x = read_column(positions, "x", where)
        y = read_column(positions, "y", where)
        _check_finite(x, y, object_id, "(x, y)", where)
        ra, dec = (np.asarray(a, float) for a in sky.pixel_to_sky(x + 1.0, y + 1.0))
    else:
        raise DiaError(f"{where}: needs ra, dec (degrees) or x, y (0-based pixels); columns are "
                       f"{names}")
    n = len(object_id)
    ny, nx = diff.shape
    with np.errstate(invalid="ignore"):
        on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) \
            & (y < ny - 0.5)
    rows = np.nonzero(on)[0]

    def label(k: int) -> str:
        r = rows[k]
        return (f"DiaObject {int(object_id[r])} (row {int(r)}) at (ra, dec) = ({ra[r]:.6f}, "
                f"{dec[r]:.6f}), (x, y) = ({x[r]:.2f}, {y[r]:.2f}) (0-based)")

    flux = {name: np.full(n, np.nan) for name in ("psfFlux", "psfFluxErr", "scienceFlux",
                                                  "scienceFluxErr")}
    flags = {name: ~on for name in FORCED_FLAG_COLUMNS[2:]}
    for role, img, prefix, background in (("difference", diff, "psfFlux", False),
                                          ("science", sci, "scienceFlux", opts.fit_background)):
        if img is None or len(rows) == 0:
            continue
        f = forced_on(img, x[rows], y[rows], opts.bad_mask_planes, background, label, role)
        flux[prefix][rows], flux[prefix + "Err"][rows] = f.flux, f.flux_err
        flag = "psfFlux_flag" if role == "difference" else "forced_PsfFlux_flag"
        flags[flag][rows] = ~np.isfinite(f.flux) | f.edge
        flags[flag + "_edge"][rows] = f.edge
        flags[flag + "_noGoodPixels"][rows] = f.ndata == 0
    processed = now_mjd_tai() if processed_mjd_tai is None else float(processed_mjd_tai)
    table = apdb_schema()["DiaForcedSource"].conform({
        "diaForcedSourceId": id_packer.pack(info.visit, info.detector,
                                            first_index + np.arange(n, dtype=np.int64)),
        "diaObjectId": object_id, "ra": np.asarray(ra, float) % 360.0, "dec": dec,
        "visit": np.full(n, info.visit, np.int64), "detector": np.full(n, info.detector, np.int16),
        "midpointMjdTai": np.full(n, info.midpointMjdTai), "band": np.full(n, info.band, object),
        "timeProcessedMjdTai": np.full(n, processed), **flux,
    }, where="forced_photometry")
    if with_flags:
        for name, value in {"x": x, "y": y, **flags}.items():
            table = table.append_column(name, pa.array(value))
    return table


def _check_finite(a: np.ndarray, b: np.ndarray, ids: np.ndarray, what: str, where: str) -> None:
    bad = ~(np.isfinite(a) & np.isfinite(b))
    if np.any(bad):
        k = int(np.nonzero(bad)[0][0])
        raise DiaError(f"{where}: DiaObject {int(ids[k])} (row {k}) has a non-finite {what} = "
                       f"({a[k]}, {b[k]})")
