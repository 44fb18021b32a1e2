"""Visit plans: where and when each exposure points, and its true focal plane → sky transform."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from astropy.time import Time
from erfa import ErfaWarning

from jointcal_ap.refcat.epoch import earth_barycentric_position
from jointcal_ap.simulate._geometry import (
    ARCSEC_PER_RAD,
    gnomonic_deproject,
    rotation_matrix,
    unit_vector,
)
from jointcal_ap.simulate.camera import Camera

__all__ = ["SimVisit", "make_visits", "mjd_tai_to_epoch"]


def mjd_tai_to_epoch(mjd_tai: float) -> float:
    """MJD (TAI) → Julian year (TDB), as :mod:`jointcal_ap.fit.io` computes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)  # "dubious year" outside the leap-second table
        return float(Time(mjd_tai, format="mjd", scale="tai").tdb.jyear)


def _epoch_to_mjd_tai(epoch: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)
        return float(Time(epoch, format="jyear", scale="tdb").tai.mjd)


@dataclass(frozen=True)
class SimVisit:
    """One simulated exposure and its true pointing.

    Attributes
    ----------
    visit : int
        Visit id (0, 1, ... in a plan: also the FITS-LDAC file order).
    mjd_tai : float
        Mid-exposure time, MJD (TAI).
    epoch : float
        The same time as a TDB Julian year (computed from ``mjd_tai``).
    ra, dec : float
        Boresight, degrees: the optical axis and the tangent point of the visit.
    rotation_deg : float
        Rotation of the focal plane on the sky, degrees, counter-clockwise from
        (parity-flipped) focal-plane x → east.
    scale : float
        True plate scale relative to the camera's nominal one (1 + a jitter of ~1e-4).
    exptime : float
        Seconds.
    filter : str
    """

    visit: int
    mjd_tai: float
    epoch: float
    ra: float
    dec: float
    rotation_deg: float
    scale: float
    exptime: float
    filter: str

    def tangent_matrix(self, camera: Camera) -> np.ndarray:
        """The 2×2 linear map from distorted focal-plane coordinates to (ξ, η), radians.

        ``(ξ, η) = scale · pixel_scale · R(rotation) · diag(parity, 1) · f``.
        """
        scale_rad = self.scale * camera.pixel_scale_arcsec / ARCSEC_PER_RAD
        return scale_rad * rotation_matrix(np.deg2rad(self.rotation_deg)) @ np.diag([float(camera.parity), 1.0])

    def observer_au(self) -> np.ndarray:
        """The Earth's barycentric position at mid-exposure, AU (for annual parallax)."""
        return earth_barycentric_position(Time(self.mjd_tai, format="mjd", scale="tai"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimVisit:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _sun_separation_deg(epochs: np.ndarray, ra: float, dec: float) -> np.ndarray:
    """Angle between the field and the Sun (seen from the Earth, ≈ minus the Earth's barycentric position)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)
        earth = earth_barycentric_position(Time(epochs, format="jyear", scale="tdb"))
    sun = -earth / np.linalg.norm(earth, axis=-1, keepdims=True)
    return np.rad2deg(np.arccos(np.clip(sun @ unit_vector(ra, dec), -1.0, 1.0)))


def make_visits(n_visits: int, *, ra: float, dec: float, epochs: Sequence[float] = (2000.0, 2020.0),
                dither_arcmin: float = 5.0, rotation_deg: float | Sequence[float] = 0.0, seed,
                filter: str = "r", exptime: float = 30.0, scale_jitter: float = 1e-4,
                min_sun_separation_deg: float = 90.0, first_visit: int = 0) -> tuple[SimVisit, ...]:
    """Plan ``n_visits`` exposures of one field.

    Parameters
    ----------
    n_visits : int
    ra, dec : float
        Field centre, degrees.
    epochs : sequence of float
        Either ``n_visits`` explicit epochs (TDB Julian years), or a ``(start, stop)``
        range from which the epochs are drawn uniformly (then sorted), keeping only
        times when the Sun is at least ``min_sun_separation_deg`` from the field
        (the field is up at night). With ``n_visits == 2`` two values are explicit.
    dither_arcmin : float
        Boresights are uniform in a disc of this radius about (ra, dec).
    rotation_deg : float or sequence of float
        A scalar: each visit's rotation is uniform in ``[-rotation_deg, rotation_deg]``;
        a sequence: the rotations, one per visit.
    seed : int or numpy SeedSequence
        Every random draw of the plan comes from it.
    filter : str
    exptime : float
        Seconds.
    scale_jitter : float
        Each visit's plate scale is ``1 + N(0, scale_jitter)``.
    min_sun_separation_deg : float
        See ``epochs``.
    first_visit : int
        Id of the first visit; the others follow.

    Returns
    -------
    tuple of SimVisit
        In time order. ``mjd_tai`` is derived from the drawn epoch, and ``epoch`` is
        recomputed from ``mjd_tai`` so that a reader of the written files gets it back
        exactly.

    Examples
    --------
    >>> v = make_visits(3, ra=150.0, dec=2.0, seed=1)
    >>> len(v), all(2000 <= x.epoch <= 2020 for x in v), [x.visit for x in v]
    (3, True, [0, 1, 2])
    """
    if n_visits < 1:
        raise ValueError(f"n_visits must be >= 1, got {n_visits}")
    rng = np.random.default_rng(seed)
    epochs = np.asarray(epochs, dtype=np.float64)
    if epochs.ndim != 1 or (len(epochs) != n_visits and len(epochs) != 2):
        raise ValueError(f"epochs: give {n_visits} epochs or a (start, stop) range, got {epochs.tolist()}")
    if len(epochs) == n_visits:
        chosen = epochs.copy()
    else:
        start, stop = float(epochs[0]), float(epochs[1])
        if not stop >= start:
            raise ValueError(f"epochs range must have start <= stop, got {start}, {stop}")
        chosen = np.zeros(0)
        for _ in range(100):
            candidates = rng.uniform(start, stop, 4 * n_visits)
            ok = _sun_separation_deg(candidates, ra, dec) >= min_sun_separation_deg
            chosen = np.concatenate([chosen, candidates[ok]])
            if len(chosen) >= n_visits:
                break
        if len(chosen) < n_visits:
            raise ValueError(f"cannot find {n_visits} epochs in {start}..{stop} with the Sun at least "
                             f"{min_sun_separation_deg} deg from ({ra}, {dec})")
        chosen = np.sort(chosen[:n_visits])

    rot = np.asarray(rotation_deg, dtype=np.float64)
    if rot.ndim == 0:
        rotations = rng.uniform(-float(rot), float(rot), n_visits)
    elif rot.shape == (n_visits,):
        rotations = rot
    else:
        raise ValueError(f"rotation_deg: give a scalar or {n_visits} values, got shape {rot.shape}")

    radius_rad = np.deg2rad(dither_arcmin / 60.0) * np.sqrt(rng.uniform(0.0, 1.0, n_visits))
    angle = rng.uniform(0.0, 2.0 * np.pi, n_visits)
    ra_b, dec_b = gnomonic_deproject(np.tan(radius_rad) * np.cos(angle), np.tan(radius_rad) * np.sin(angle),
                                     ra, dec)
    scales = 1.0 + rng.normal(0.0, scale_jitter, n_visits)
    visits = []
    for i in range(n_visits):
        mjd_tai = _epoch_to_mjd_tai(float(chosen[i]))
        visits.append(SimVisit(visit=first_visit + i, mjd_tai=mjd_tai, epoch=mjd_tai_to_epoch(mjd_tai),
                               ra=float(ra_b[i]), dec=float(dec_b[i]), rotation_deg=float(rotations[i]),
                               scale=float(scales[i]), exptime=float(exptime), filter=str(filter)))
    return tuple(visits)
