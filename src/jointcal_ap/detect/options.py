"""What detection is told and what it reports in: :class:`DetectOptions`, the bit and column constants.

Mask bits (:data:`MASK_BITS`, LSST mask plane numbers): ``BAD`` = 1, ``SAT`` = 2,
``EDGE`` = 16, ``NO_DATA`` = 256. ``BAD`` and ``NO_DATA`` pixels are ignored;
``SAT`` and ``EDGE`` pixels are used but flag the sources that touch them.

Source flags (:data:`FLAG_BITS`, SExtractor's values where the meaning is shared):

=========  =====  ==============================================================
NEIGHBOUR      1  another source puts > ``neighbour_fraction`` of this one's flux
                  in its aperture (SExtractor 1)
BLENDED        2  the detection footprint holds more than one peak, or the windowed
                  second moments are not the stars' (an unresolved pair; SExtractor 2)
SATURATED      4  a pixel of the window or aperture is saturated (SExtractor 4)
EDGE           8  the window or aperture is truncated by the image border or
                  touches ``EDGE`` pixels (SExtractor 8)
MASKED        16  the window or aperture holds ``BAD``/``NO_DATA`` or unusable
                  pixels (SExtractor 16: aperture data incomplete)
CENTROID      32  the windowed centroid did not converge, or moved more than
                  1.5 px from the peak; the peak position is reported instead
=========  =====  ==============================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "COLUMNS",
    "FLAG_BITS",
    "MASK_BITS",
    "DetectOptions",
    "DetectionError",
]

#: Image mask bits (the LSST mask plane numbers).
MASK_BITS: dict[str, int] = {"BAD": 1, "SAT": 2, "EDGE": 16, "NO_DATA": 256}

#: Source flag bits (SExtractor's values where the meaning is shared).
FLAG_BITS: dict[str, int] = {"NEIGHBOUR": 1, "BLENDED": 2, "SATURATED": 4, "EDGE": 8, "MASKED": 16,
                             "CENTROID": 32}

#: The per-source columns of :class:`Detections`, in order.
COLUMNS: tuple[str, ...] = ("x", "y", "err_a", "err_b", "err_theta_deg", "cov_xx", "cov_yy", "cov_xy",
                            "flux", "flux_err", "flags", "peak", "npix")

_UNUSABLE = MASK_BITS["BAD"] | MASK_BITS["NO_DATA"]


class DetectionError(ValueError):
    """The image cannot be measured (bad input arrays, or no star to estimate the PSF width from)."""


@dataclass(frozen=True)
class DetectOptions:
    """Options of :func:`detect_sources`.

    Attributes
    ----------
    threshold_sigma : float
        Detection threshold: a pixel is detected when the matched-filtered image is
        this many σ of the filtered noise above the background (default 5).
    min_pixels : int
        Minimum number of connected detected pixels (default 5).
    fwhm_px : float or None
        PSF FWHM, pixels: the width of the matched filter and of the centroid
        window. None (default): estimated from the bright isolated stars.
    aperture_fwhm : float
        Aperture radius in units of the FWHM (default 2.0: 99.998 % of a Gaussian).
    aperture_radius_px : float or None
        Aperture radius in pixels; overrides ``aperture_fwhm``.
    aperture_correction : bool
        Scale every flux (and error) by this image's aperture correction (default True):
        the median ratio, over bright isolated unflagged stars, of the flux in a radius of
        ``aperture_correction_fwhm`` × FWHM to the flux in the aperture. The light a fixed
        aperture misses depends on the PSF (1.5e-5 for a Gaussian at 2 FWHM, 3.8 % for a
        Moffat β = 3), and so on the seeing of each exposure: uncorrected, it would end up
        in the exposure's zero point and bias the calibration of its pixels.
    aperture_correction_fwhm : float
        Radius of the "total" flux of the aperture correction, in FWHM (default 5: the
        Moffat β = 3 profile still misses 0.14 % there).
    background_mesh : int
        Background mesh size, pixels (default 64).
    background_clip_sigma : float
        Clipping of the mesh statistics, σ (default 3).
    background_filter : int
        Median filter of the mesh grid, meshes (default 3; 1 = none).
    saturation_adu : float or None
        Pixels at or above it (image value, background included) count as saturated,
        in addition to the ``SAT`` mask bit.
    blend_contrast : float
        A second peak in a footprint flags ``BLENDED`` when its filtered value is at
        least this fraction of the main peak's (default 0.01).
    neighbour_fraction : float
        ``NEIGHBOUR`` is flagged when another source is estimated to put more than
        this fraction of the source's flux into its aperture (default 0.01).
    shape_sigma : float
        ``BLENDED`` is also flagged when a windowed second moment differs from the
        stars' median by more than this many σ (an unresolved pair; default 5).
    max_iterations : int
        Centroid iterations (default 20).
    centroid_tolerance_px : float
        Convergence: the last step is smaller than this (default 1e-4 px).
    """

    threshold_sigma: float = 5.0
    min_pixels: int = 5
    fwhm_px: float | None = None
    aperture_fwhm: float = 2.0
    aperture_radius_px: float | None = None
    aperture_correction: bool = True
    aperture_correction_fwhm: float = 5.0
    background_mesh: int = 64
    background_clip_sigma: float = 3.0
    background_filter: int = 3
    saturation_adu: float | None = None
    blend_contrast: float = 0.01
    neighbour_fraction: float = 0.01
    shape_sigma: float = 5.0
    max_iterations: int = 20
    centroid_tolerance_px: float = 1e-4

    def __post_init__(self) -> None:
        positive = ("threshold_sigma", "aperture_fwhm", "background_clip_sigma", "centroid_tolerance_px",
                    "shape_sigma", "aperture_correction_fwhm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"DetectOptions.{name} must be > 0, got {getattr(self, name)}")
        for name in ("fwhm_px", "aperture_radius_px"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"DetectOptions.{name} must be None or > 0 pixels, got {value}")
        for name, low in (("min_pixels", 1), ("background_mesh", 8), ("background_filter", 1),
                          ("max_iterations", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"DetectOptions.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("blend_contrast", "neighbour_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"DetectOptions.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe), for provenance."""
        return asdict(self)

