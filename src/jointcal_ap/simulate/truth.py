"""The truth of a simulated survey, and the true pixel ↔ sky mapping of every visit × detector."""

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
    """

    visit: np.ndarray
    detector: np.ndarray
    star_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    is_outlier: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        for f in fields(self):
            value = np.asarray(getattr(self, f.name))
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
    """

    camera: Camera
    visits: tuple[SimVisit, ...]
    stars: Stars
    measurements: TrueMeasurements
    header_errors: np.ndarray

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
