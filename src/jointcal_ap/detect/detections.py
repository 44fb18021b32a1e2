"""The measured sources of one image (:class:`Detections`) and their column conversions.

:class:`Detections` holds one array per :data:`~jointcal_ap.detect.COLUMNS` entry plus the
image-level values (FWHM, aperture radius and correction, background, options); it converts
to an astropy table, to SExtractor ``LDAC_OBJECTS`` columns and, through
:func:`sources_columns`, to the rows of the fitter's ``sources.parquet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from jointcal_ap.detect.background import Background
from jointcal_ap.detect.options import COLUMNS, DetectOptions

__all__ = ["Detections", "sources_columns"]


@dataclass(frozen=True)
class Detections:
    """The sources measured on one image; each column an array of shape (n,).

    Attributes
    ----------
    x, y : float64
        Windowed centroid (SExtractor ``XWIN_IMAGE``/``YWIN_IMAGE``), 1-based pixels.
    err_a, err_b, err_theta_deg : float64
        1σ error ellipse of the centroid (``ERRAWIN``/``ERRBWIN`` pixels,
        ``ERRTHETAWIN`` degrees counter-clockwise from +x, in (-90, 90]).
    cov_xx, cov_yy, cov_xy : float64
        The centroid covariance, pixel².
    flux, flux_err : float64
        Aperture flux (radius ``aperture_radius_px``) and its 1σ error, ADU,
        background subtracted, multiplied by ``aperture_correction``.
    flags : int64
        :data:`FLAG_BITS`.
    peak : float64
        Highest background-subtracted pixel of the footprint, ADU.
    npix : int64
        Pixels in the detection footprint.
    fwhm_px : float
        The FWHM used (given, or estimated: the Gaussian-equivalent FWHM of the
        adaptive second moments of bright stars, pixel response removed).
    fwhm_estimated : bool
    aperture_radius_px : float
    background : Background
    options : DetectOptions
    aperture_correction, aperture_correction_err : float
        The factor applied to the fluxes and its 1σ error; 1 when disabled, when fewer than
        5 stars could measure it, or when it is within 3σ of 1 (then not applied: it would
        add only its noise, and the light of faint neighbours in the big apertures).
    aperture_correction_stars : int
        How many stars measured it.
    """

    x: np.ndarray
    y: np.ndarray
    err_a: np.ndarray
    err_b: np.ndarray
    err_theta_deg: np.ndarray
    cov_xx: np.ndarray
    cov_yy: np.ndarray
    cov_xy: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    flags: np.ndarray
    peak: np.ndarray
    npix: np.ndarray
    fwhm_px: float
    fwhm_estimated: bool
    aperture_radius_px: float
    background: Background
    options: DetectOptions
    aperture_correction: float = 1.0
    aperture_correction_err: float = 0.0
    aperture_correction_stars: int = 0

    def __len__(self) -> int:
        return len(self.x)

    def columns(self) -> dict[str, np.ndarray]:
        """The per-source columns (:data:`COLUMNS`) as a dict of arrays."""
        return {name: getattr(self, name) for name in COLUMNS}

    def to_table(self):
        """An ``astropy.table.Table`` of the columns, with units and the image-level values in ``meta``."""
        from astropy import units as u
        from astropy.table import Table

        units = {"x": u.pix, "y": u.pix, "err_a": u.pix, "err_b": u.pix, "err_theta_deg": u.deg,
                 "cov_xx": u.pix**2, "cov_yy": u.pix**2, "cov_xy": u.pix**2, "flux": u.adu,
                 "flux_err": u.adu, "peak": u.adu}
        table = Table(self.columns())
        for name, unit in units.items():
            table[name].unit = unit
        table.meta.update(fwhm_px=self.fwhm_px, fwhm_estimated=self.fwhm_estimated,
                          aperture_radius_px=self.aperture_radius_px,
                          aperture_correction=self.aperture_correction,
                          aperture_correction_err=self.aperture_correction_err,
                          aperture_correction_stars=self.aperture_correction_stars)
        return table

    def select(self, keep) -> Detections:
        """The detections where ``keep`` (bool array or indices) holds."""
        return replace(self, **{name: getattr(self, name)[keep] for name in COLUMNS})

    def sources_columns(self, visit: int, detector: int) -> dict[str, np.ndarray]:
        """The rows of the fitter's ``sources.parquet`` (:data:`jointcal_ap.fit.io.SURVEY_COLUMNS`).

        ``visit``, ``detector``, ``x``, ``y``, ``x_err`` = sqrt(cov_xx), ``y_err`` =
        sqrt(cov_yy), ``xy_cov``, ``flux``, ``flux_err`` (ADU), ``flags``.
        """
        return sources_columns(self.columns(), visit, detector)

    def ldac_columns(self) -> dict[str, np.ndarray]:
        """SExtractor ``LDAC_OBJECTS`` columns, for :func:`jointcal_ap.simulate.write_ldac`.

        ``FLUX_AUTO``/``FLUXERR_AUTO`` hold the aperture flux (the fitter reads those names).
        """
        positive = self.flux > 0
        safe = np.where(positive, self.flux, 1.0)
        return {
            "NUMBER": np.arange(1, len(self) + 1, dtype=np.int32),
            "XWIN_IMAGE": self.x, "YWIN_IMAGE": self.y,
            "ERRAWIN_IMAGE": self.err_a.astype(np.float32),
            "ERRBWIN_IMAGE": self.err_b.astype(np.float32),
            "ERRTHETAWIN_IMAGE": self.err_theta_deg.astype(np.float32),
            "FLUX_AUTO": self.flux.astype(np.float32),
            "FLUXERR_AUTO": self.flux_err.astype(np.float32),
            "MAG_AUTO": np.where(positive, -2.5 * np.log10(safe), 99.0).astype(np.float32),
            "MAGERR_AUTO": np.where(positive, 2.5 / np.log(10.0) * self.flux_err / safe, 99.0).astype(np.float32),
            "FLUX_MAX": self.peak.astype(np.float32),
            "FWHM_IMAGE": np.full(len(self), self.fwhm_px, dtype=np.float32),
            "FLAGS": self.flags.astype(np.int16),
        }


def sources_columns(columns: Mapping[str, Any], visit: int, detector: int) -> dict[str, np.ndarray]:
    """Detection columns (:data:`COLUMNS`, e.g. a table the ``detect`` stage wrote) → the rows of the
    fitter's ``sources.parquet``: ``x_err`` = sqrt(cov_xx), ``y_err`` = sqrt(cov_yy), ``xy_cov``."""
    x = np.asarray(columns["x"], dtype=np.float64)
    n = len(x)
    return {
        "visit": np.full(n, int(visit), dtype=np.int64),
        "detector": np.full(n, int(detector), dtype=np.int64),
        "x": x, "y": np.asarray(columns["y"], dtype=np.float64),
        "x_err": np.sqrt(np.asarray(columns["cov_xx"], dtype=np.float64)),
        "y_err": np.sqrt(np.asarray(columns["cov_yy"], dtype=np.float64)),
        "xy_cov": np.asarray(columns["cov_xy"], dtype=np.float64),
        "flux": np.asarray(columns["flux"], dtype=np.float64),
        "flux_err": np.asarray(columns["flux_err"], dtype=np.float64),
        "flags": np.asarray(columns["flags"]).astype(np.int64),
    }
