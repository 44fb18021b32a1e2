"""The truth of a simulated survey: the true pixel ↔ sky mapping and photometric calibration of every CCD.

Photometric convention (ADU are the total counts of the exposure)::

    flux_ADU = exptime · 10^(−0.4 (m_true − ZP_v)) · 10^(−0.4 flat_mag(det, x, y))

with ``ZP_v`` = :attr:`Truth.zero_points` (the magnitude giving 1 ADU/s on a perfect
flat) and ``flat_mag`` = :func:`true_flat_mag` (the detector response in mag; positive
means fewer counts). :func:`true_calibration_mag` gives the equivalent calibration in
the shared per-visit × detector convention ``m_AB = −2.5 log10(flux_ADU) + P(x, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from jointcal_ap.refcat.epoch import propagate
from jointcal_ap.simulate._geometry import gnomonic_deproject, gnomonic_project
from jointcal_ap.simulate.camera import Camera
from jointcal_ap.simulate.sky import Stars
from jointcal_ap.simulate.visits import SimVisit

__all__ = [
    "TrueMeasurements",
    "Truth",
    "flat_response_mag",
    "true_calibration_mag",
    "true_flat_mag",
    "true_pixel_to_sky",
    "true_sky_to_pixel",
    "true_star_positions",
]


@dataclass(frozen=True)
class TrueMeasurements:
    """Per measurement, row-aligned with the simulated sources (arrays of shape (n,)).

    Attributes
    ----------
    visit, detector, star_id : int64
    x, y : float64
        Noise-free pixel position (1-based) of the star.
    ra, dec : float64
        The star's true direction at the visit's epoch, seen from the Earth's centre
        (annual parallax; no aberration), degrees. ``true_pixel_to_sky`` of (x, y)
        gives it back.
    is_outlier : bool
        The measured position was displaced as a gross outlier.
    flux_adu : float64, optional
        Noise-free expected flux of the measurement, ADU (total counts of the exposure):
        ``exptime · 10^(−0.4 (mag − ZP_v)) · 10^(−0.4 flat_mag(det, x, y))`` at the true
        position. NaN when unknown (truth written before it existed).
    """

    visit: np.ndarray
    detector: np.ndarray
    star_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    is_outlier: np.ndarray
    flux_adu: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.x)
        for f in fields(self):
            value = getattr(self, f.name)
            value = np.full(n, np.nan) if value is None else np.asarray(value)
            if value.shape != (n,):
                raise ValueError(f"TrueMeasurements.{f.name} has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, f.name, value)

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Truth:
    """Everything a simulated survey was made from.

    Attributes
    ----------
    camera : Camera
    visits : tuple of SimVisit
    stars : Stars
    measurements : TrueMeasurements
    header_errors : ndarray, shape (n_visits, 3)
        The deliberate errors of each visit's initial WCS: the CRVAL offset east and
        north of the boresight (arcsec) and the rotation error of the CD matrix (deg).
    zero_points : ndarray, shape (n_visits,)
        ZP_v per visit, in visit order: the magnitude giving 1 ADU/s on a perfect flat
        (``SurveyConfig.zero_point`` + the visit's transparency offset). NaN: unknown.
    flat_gradient : ndarray, shape (2,)
        Focal-plane gradient of the flat, mag per undistorted focal-plane pixel (x, y).
    detector_qe : ndarray, shape (n_detectors,)
        Per-detector QE offset of the flat, mag.
    flat_pattern : ndarray, shape (n_detectors, k, k)
        Per-detector smooth flat pattern, mag: Chebyshev coefficients ``c[i, j]`` of
        ``T_i(u)·T_j(v)`` in the shared convention (u, v ∈ [−1, 1] over the pixel grid).

    The photometric fields default to "no flat-field error" (and unknown zero points).
    """

    camera: Camera
    visits: tuple[SimVisit, ...]
    stars: Stars
    measurements: TrueMeasurements
    header_errors: np.ndarray
    zero_points: np.ndarray | None = None
    flat_gradient: np.ndarray | None = None
    detector_qe: np.ndarray | None = None
    flat_pattern: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_visits, n_det = len(self.visits), len(self.camera.detectors)
        defaults = {"zero_points": np.full(n_visits, np.nan), "flat_gradient": np.zeros(2),
                    "detector_qe": np.zeros(n_det), "flat_pattern": np.zeros((n_det, 1, 1))}
        for name, default in defaults.items():
            value = getattr(self, name)
            value = default if value is None else np.asarray(value, dtype=np.float64)
            expected = default.shape if name != "flat_pattern" else (n_det,)
            if value.shape[:len(expected)] != expected or (name == "flat_pattern" and (
                    value.ndim != 3 or value.shape[1] != value.shape[2])):
                raise ValueError(f"Truth.{name} has shape {value.shape}, expected {default.shape}"
                                 + (" (n_detectors, k, k)" if name == "flat_pattern" else ""))
            object.__setattr__(self, name, value)

    def visit_position(self, visit: int) -> int:
        """Position of a visit id in :attr:`visits` (and in :attr:`zero_points`)."""
        for i, v in enumerate(self.visits):
            if v.visit == visit:
                return i
        raise KeyError(f"no visit {visit}; the survey has {[v.visit for v in self.visits]}")

    def visit(self, visit: int) -> SimVisit:
        """The :class:`SimVisit` with this id."""
        for v in self.visits:
            if v.visit == visit:
                return v
        raise KeyError(f"no visit {visit}; the survey has {[v.visit for v in self.visits]}")


def true_pixel_to_sky(truth: Truth, visit: int, detector: int, x, y) -> tuple[np.ndarray, np.ndarray]:
    """The TRUE mapping of one visit × detector: 1-based pixels → (ra, dec) in degrees.

    pixels → focal plane (detector placement, cubic radial distortion) → tangent plane
    (the visit's rotation and plate scale) → sky (gnomonic about the boresight). The
    mapping does not depend on time; star positions do (see :func:`true_star_positions`).
    """
    v = truth.visit(visit)
    fx, fy = truth.camera.pixel_to_focal(detector, x, y)
    m = v.tangent_matrix(truth.camera)
    return gnomonic_deproject(m[0, 0] * fx + m[0, 1] * fy, m[1, 0] * fx + m[1, 1] * fy, v.ra, v.dec)


def true_sky_to_pixel(truth: Truth, visit: int, detector: int, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`true_pixel_to_sky` (pixels may fall off the detector)."""
    v = truth.visit(visit)
    xi, eta = gnomonic_project(ra, dec, v.ra, v.dec)
    inv = np.linalg.inv(v.tangent_matrix(truth.camera))
    return truth.camera.focal_to_pixel(detector, inv[0, 0] * xi + inv[0, 1] * eta, inv[1, 0] * xi + inv[1, 1] * eta)


def true_star_positions(truth: Truth, visit: int, stars: Stars | None = None) -> tuple[np.ndarray, np.ndarray]:
    """True directions (degrees) of stars at a visit's mid-exposure, seen from the Earth's centre.

    The stars' true astrometry moved with :func:`jointcal_ap.refcat.epoch.propagate`
    to the visit's epoch, with the Earth's barycentric position as observer, exactly
    as the measurements were simulated. ``stars`` defaults to all the survey's stars.
    """
    v = truth.visit(visit)
    s = truth.stars if stars is None else stars
    p = propagate(s.ra, s.dec, s.parallax, s.pmra, s.pmdec, s.radial_velocity, s.epoch, v.epoch,
                  observer=v.observer_au())
    return p.ra, p.dec


def _chebyshev_uv(naxis1: int, naxis2: int, x, y) -> tuple[np.ndarray, np.ndarray]:
    """1-based pixels → (u, v) ∈ [−1, 1] over the pixel grid (the shared convention)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (2.0 * x - (naxis1 + 1)) / naxis1, (2.0 * y - (naxis2 + 1)) / naxis2


def flat_response_mag(camera: Camera, flat_gradient, detector_qe, flat_pattern, detector: int, x, y) -> np.ndarray:
    """The flat response (mag) of one detector from its parts; see :func:`true_flat_mag`."""
    det = camera.detectors[detector]
    u, v = _chebyshev_uv(det.naxis1, det.naxis2, x, y)
    ux, uy = camera.pixel_to_undistorted(detector, x, y)
    pattern = np.polynomial.chebyshev.chebval2d(u, v, flat_pattern[detector])
    return detector_qe[detector] + pattern + flat_gradient[0] * ux + flat_gradient[1] * uy


def true_flat_mag(truth: Truth, detector: int, x, y) -> np.ndarray:
    """The TRUE flat-field response of one detector at 1-based pixels (x, y), in mag.

    ``detector_qe[d] + chebval2d(u, v, flat_pattern[d]) + flat_gradient · (ux, uy)``,
    with (ux, uy) the undistorted focal-plane position of the pixel (nominal pixels).
    Positive means fewer counts: a star gives ``10^(−0.4 flat_mag)`` of its perfect-flat
    flux. The same for every visit.
    """
    return flat_response_mag(truth.camera, truth.flat_gradient, truth.detector_qe, truth.flat_pattern, detector,
                             x, y)


def true_calibration_mag(truth: Truth, visit: int, detector: int, x, y) -> np.ndarray:
    """The TRUE calibration P(x, y) of one visit × detector, in mag (the shared convention).

    ``m_AB = −2.5 log10(flux_ADU) + P(x, y)`` for a noise-free measurement, i.e.
    ``P = ZP_v + 2.5 log10(exptime) − true_flat_mag(detector, x, y)``; flux_ADU is the
    total flux of the exposure and (x, y) are 1-based pixels.
    """
    zp = float(truth.zero_points[truth.visit_position(visit)])
    if not np.isfinite(zp):
        raise ValueError(f"the truth has no zero point for visit {visit} (written before photometric truth)")
    exptime = truth.visit(visit).exptime
    return zp + 2.5 * np.log10(exptime) - true_flat_mag(truth, detector, x, y)
