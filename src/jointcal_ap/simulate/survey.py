"""Simulate a survey: measurements of known stars on known exposures, with a realistic noise model.

:func:`simulate` is pure (no I/O): it returns a :class:`SimulatedData` holding the
measurements, the initial (deliberately imperfect) WCS headers and the truth.
:func:`jointcal_ap.simulate.simulate_survey` writes it out.

Measurement model
-----------------
For each visit, every star near the field is moved from its reference epoch to the
visit's mid-exposure with :func:`jointcal_ap.refcat.epoch.propagate` (the TRUE
proper motion and parallax, with the Earth's barycentric position as observer:
annual parallax), projected gnomonically about the boresight, mapped through the
inverse of the visit's linear transform and the camera's distortion to pixels, and
kept when it falls on a detector.

Photometry: the expected flux is ``F = exptime · 10^(-0.4 (mag - ZP_v)) ·
10^(-0.4 flat_mag(det, x, y))`` ADU, where ``ZP_v = zero_point + N(0,
zero_point_sigma)`` per visit and the flat (:func:`jointcal_ap.simulate.truth.true_flat_mag`)
is a per-detector QE offset ``N(0, qe_sigma_mag)``, a per-detector smooth pattern (a
Chebyshev series of total degree 2 in the detector's pixel coordinates, each
non-constant coefficient ``N(0, flat_pattern_mag)``) and a focal-plane gradient of
``flat_gradient_mag`` across the field diameter in a random direction. The defaults
(all 0) give one zero point and a perfect flat; :meth:`SurveyConfig.photometric`
turns on realistic values.

Noise (``noise=True``): the flux ``F`` has variance ``F/gain + n_eff · sky/gain`` (``n_eff = 4π σ_psf²`` pixels,
``sky`` from ``sky_mag_arcsec2``); the centroid error is
``σ = sqrt((FWHM / (2.355 · S/N))² + floor²)`` pixels, made slightly elliptical per
visit (axes ``σ√(1±e)``, e up to ``max_ellipticity``). The error ellipse (a, b, θ)
and the fluxes are rounded to float32, as SExtractor stores them, *before* the noise
is drawn, so the reported covariance is exactly the one of the noise. A fraction
``outlier_fraction`` of the positions is displaced by 1–10 arcsec (gross outliers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from erfa import ErfaWarning

from jointcal_ap.fit.io import ellipse_to_covariance
from jointcal_ap.refcat.epoch import propagate
from jointcal_ap.simulate._geometry import (
    ARCSEC_PER_RAD,
    angular_separation_deg,
    gnomonic_deproject,
    gnomonic_project,
    rotation_matrix,
)
from jointcal_ap.simulate.camera import Camera
from jointcal_ap.simulate.sky import Stars, synthetic_stars
from jointcal_ap.simulate.truth import TrueMeasurements, Truth, flat_response_mag
from jointcal_ap.simulate.visits import SimVisit, make_visits

__all__ = ["PRESETS", "SimSources", "SimulatedData", "SurveyConfig", "initial_header", "simulate"]

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548


@dataclass(frozen=True)
class SurveyConfig:
    """Options of a simulated survey. The defaults make a small case that runs in a few seconds.

    Attributes
    ----------
    n_visits : int
        Number of exposures (default 6).
    n_stars : int
        Number of stars drawn in the cone covering every dither (default 3000).
    ra, dec : float
        Field centre, degrees (default 150.0, 2.0).
    camera : Camera
        Default: 4 CCDs of 2048×2048 in a 2×2 grid, 0.26"/px, ~6.5" distortion at the corner.
    star_radius_deg : float or None
        Radius of the star cone; None: the field radius + the dither + 1 arcmin.
    epochs : tuple of float
        ``(start, stop)`` TDB Julian years (default 2000–2020), or one epoch per visit.
    dither_arcmin : float
        Boresights uniform in a disc of this radius (default 5).
    rotation_deg : float
        Visit rotations uniform in ±this (default 2).
    scale_jitter : float
        Per-visit plate-scale jitter, relative (default 1e-4).
    min_sun_separation_deg : float
        Drawn epochs keep the Sun this far from the field (default 90).
    filter : str
    exptime : float
        Seconds (default 30).
    ref_epoch : float
        Epoch of the true positions and of the reference catalog (default 2016.0 TDB).
    mag_range : (float, float)
        Uniform magnitudes (default 14–22).
    ref_mag_limit : float
        Stars this bright or brighter are in the reference catalog (default 19).
    zero_point : float
        Magnitude giving 1 ADU/s (default 27), the mean over visits.
    zero_point_sigma : float
        σ of the per-visit zero-point offset (transparency/extinction), mag (default 0;
        typical 0.05).
    flat_gradient_mag : float
        Change of the flat across the focal-plane diameter, mag, in a random direction
        (default 0; typical 0.01, a 1 % gradient).
    flat_pattern_mag : float
        σ of each non-constant Chebyshev coefficient (total degree ≤ 2) of the
        per-detector flat pattern, mag (default 0; typical 0.003).
    qe_sigma_mag : float
        σ of the per-detector QE offset, mag (default 0; typical 0.02).
    colour_range : (float, float)
        Star colours (a BP − RP-like index) are uniform in this range (default 0.5–2.5).
    ref_colour_terms : tuple of float
        ``(c0, c1, c2)``: the true band magnitude is ``ref_mag + c0 + c1·colour +
        c2·colour²`` for the reference-band magnitude ``ref_mag`` of the reference
        catalog (default 0, 0, 0: the same band).
    ref_mag_error : (float, float)
        Reference-band magnitude errors, log-linear from the bright end of
        ``mag_range`` to ``ref_mag_limit`` (default 0.002–0.02 mag).
    gain : float
        e⁻/ADU (default 1).
    sky_mag_arcsec2 : float
        Sky brightness, mag/arcsec² (default 21).
    fwhm_arcsec : float
        Seeing (default 0.8").
    centroid_floor_px : float
        Added in quadrature to the S/N centroid error (default 0.01 px).
    max_ellipticity : float
        Per-visit error-ellipse elongation e, uniform in [0, this] (default 0.1).
    outlier_fraction : float
        Fraction of gross outliers (default 0).
    outlier_offset_arcsec : (float, float)
        Their displacement range (default 1–10").
    wcs_offset_arcsec : float
        σ of the initial WCS pointing error per axis (default 3").
    wcs_rotation_deg : float
        σ of the initial WCS rotation error (default 0.05°).
    noise : bool
        False: noise-free measured positions and fluxes (errors still reported).
    seed : int
        Seeds every random draw (default 1).
    """

    n_visits: int = 6
    n_stars: int = 3000
    ra: float = 150.0
    dec: float = 2.0
    camera: Camera = field(default_factory=Camera)
    star_radius_deg: float | None = None
    epochs: tuple[float, ...] = (2000.0, 2020.0)
    dither_arcmin: float = 5.0
    rotation_deg: float = 2.0
    scale_jitter: float = 1e-4
    min_sun_separation_deg: float = 90.0
    filter: str = "r"
    exptime: float = 30.0
    ref_epoch: float = 2016.0
    mag_range: tuple[float, float] = (14.0, 22.0)
    ref_mag_limit: float = 19.0
    zero_point: float = 27.0
    zero_point_sigma: float = 0.0
    flat_gradient_mag: float = 0.0
    flat_pattern_mag: float = 0.0
    qe_sigma_mag: float = 0.0
    colour_range: tuple[float, float] = (0.5, 2.5)
    ref_colour_terms: tuple[float, ...] = (0.0, 0.0, 0.0)
    ref_mag_error: tuple[float, float] = (0.002, 0.02)
    gain: float = 1.0
    sky_mag_arcsec2: float = 21.0
    fwhm_arcsec: float = 0.8
    centroid_floor_px: float = 0.01
    max_ellipticity: float = 0.1
    outlier_fraction: float = 0.0
    outlier_offset_arcsec: tuple[float, float] = (1.0, 10.0)
    wcs_offset_arcsec: float = 3.0
    wcs_rotation_deg: float = 0.05
    noise: bool = True
    seed: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", tuple(float(e) for e in self.epochs))
        object.__setattr__(self, "mag_range", tuple(float(m) for m in self.mag_range))
        object.__setattr__(self, "outlier_offset_arcsec", tuple(float(m) for m in self.outlier_offset_arcsec))
        for name in ("colour_range", "ref_colour_terms", "ref_mag_error"):
            object.__setattr__(self, name, tuple(float(m) for m in getattr(self, name)))
        for name in ("zero_point_sigma", "flat_pattern_mag", "qe_sigma_mag"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.ref_mag_error) != 2 or min(self.ref_mag_error) < 0:
            raise ValueError(f"ref_mag_error must be two errors >= 0, got {self.ref_mag_error}")
        if self.n_visits < 1 or self.n_stars < 0:
            raise ValueError(f"need n_visits >= 1 and n_stars >= 0, got {self.n_visits}, {self.n_stars}")
        if not 0.0 <= self.outlier_fraction <= 1.0:
            raise ValueError(f"outlier_fraction must be in [0, 1], got {self.outlier_fraction}")
        if not 0.0 <= self.max_ellipticity < 1.0:
            raise ValueError(f"max_ellipticity must be in [0, 1), got {self.max_ellipticity}")
        for name in ("exptime", "gain", "fwhm_arcsec"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.centroid_floor_px < 0:
            raise ValueError(f"centroid_floor_px must be >= 0, got {self.centroid_floor_px}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def small(cls, **overrides: Any) -> SurveyConfig:
        """Benchmark preset ``small``: 4 exposures × 1 CCD (~2,000 detections)."""
        base = dict(n_visits=4, n_stars=1500, camera=Camera.single(), dither_arcmin=2.0)
        return cls(**{**base, **overrides})

    @classmethod
    def large(cls, **overrides: Any) -> SurveyConfig:
        """Benchmark preset ``large``: 24 exposures × 4 CCDs (~190,000 detections)."""
        base = dict(n_visits=24, n_stars=28000, camera=Camera(), dither_arcmin=5.0, rotation_deg=5.0)
        return cls(**{**base, **overrides})

    @classmethod
    def photometric(cls, **overrides: Any) -> SurveyConfig:
        """The default survey with realistic photometric errors (any field overridden).

        Per-visit zero points σ = 0.05 mag, a 1 % (0.01 mag) focal-plane flat gradient,
        per-detector QE offsets σ = 0.02 mag and smooth patterns σ = 3 mmag per
        coefficient, and a reference band with ``true = ref_mag + 0.02 + 0.1·colour``.
        """
        base = dict(zero_point_sigma=0.05, flat_gradient_mag=0.01, flat_pattern_mag=0.003, qe_sigma_mag=0.02,
                    ref_colour_terms=(0.02, 0.1, 0.0))
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SurveyConfig:
        """``"default"``, ``"small"`` or ``"large"``, with any field overridden."""
        if name == "default":
            return cls(**overrides)
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {('default', *PRESETS)}")
        return getattr(cls, name)(**overrides)

    def replace(self, **changes: Any) -> SurveyConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe), the camera included."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "camera"}
        data["camera"] = self.camera.to_dict()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurveyConfig:
        values = dict(data)
        values["camera"] = Camera.from_dict(values["camera"])
        return cls(**values)

    def star_radius(self) -> float:
        """Radius (degrees) of the star cone: the given one, or field + dither + 1 arcmin."""
        if self.star_radius_deg is not None:
            return float(self.star_radius_deg)
        field_deg = self.camera.field_radius_px() * self.camera.pixel_scale_arcsec / 3600.0
        return field_deg * (1.0 + 3.0 * self.scale_jitter) + self.dither_arcmin / 60.0 + 1.0 / 60.0


#: Names of the benchmark presets (``SurveyConfig.preset(name)``).
PRESETS: tuple[str, ...] = ("small", "large")


@dataclass(frozen=True)
class SimSources:
    """The simulated measurements, one row each (arrays of shape (n,)), as a detector reports them.

    ``err_a``, ``err_b`` (pixels) and ``err_theta_deg`` (SExtractor's ``ERRAWIN``,
    ``ERRBWIN``, ``ERRTHETAWIN``), ``flux`` and ``flux_err`` are float32 values held
    as float64; ``cov_*`` is their exact covariance (pixel²).
    """

    visit: np.ndarray
    detector: np.ndarray
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

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, visit: int, detector: int) -> np.ndarray:
        """Indices of the rows of one visit × detector (in order)."""
        return np.flatnonzero((self.visit == visit) & (self.detector == detector))


@dataclass(frozen=True)
class SimulatedData:
    """The output of :func:`simulate`: measurements, initial WCS headers and the truth."""

    config: SurveyConfig
    truth: Truth
    sources: SimSources
    headers: tuple[tuple[int, int, fits.Header], ...] = field(repr=False)

    def header(self, visit: int, detector: int) -> fits.Header:
        for v, d, h in self.headers:
            if v == visit and d == detector:
                return h
        raise KeyError(f"no CCD (visit {visit}, detector {detector})")


def initial_header(camera: Camera, visit: SimVisit, detector: int, *, offset_arcsec: tuple[float, float] = (0.0, 0.0),
                   rotation_error_deg: float = 0.0) -> fits.Header:
    """A TAN WCS header for one visit × detector, as a telescope would write it.

    Built from the nominal camera (pixel scale and detector placement), the visit's
    commanded rotation plus ``rotation_error_deg`` and the boresight displaced by
    ``offset_arcsec`` (east, north); no distortion and no per-visit scale jitter.
    ``MJD-OBS`` is the exposure *start* in UTC (``TIMESYS = 'UTC'``).
    """
    det = camera.detectors[detector]
    crval_ra, crval_dec = gnomonic_deproject(offset_arcsec[0] / ARCSEC_PER_RAD, offset_arcsec[1] / ARCSEC_PER_RAD,
                                             visit.ra, visit.dec)
    r_det = rotation_matrix(det.rotation_rad)
    cd = (camera.pixel_scale_arcsec / 3600.0) * (
        rotation_matrix(np.deg2rad(visit.rotation_deg + rotation_error_deg))
        @ np.diag([float(camera.parity), 1.0]) @ r_det)
    cx, cy = det.center
    crpix = np.array([cx, cy]) - r_det.T @ np.array([det.x0, det.y0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ErfaWarning)
        start = Time(visit.mjd_tai - 0.5 * visit.exptime / 86400.0, format="mjd", scale="tai").utc
        mjd_obs, date_obs = float(start.mjd), start.isot
    h = fits.Header()
    h["SIMPLE"] = (True, "conforms to FITS standard")
    h["BITPIX"] = (-32, "array data type")
    h["NAXIS"] = (2, "number of array dimensions")
    h["NAXIS1"] = det.naxis1
    h["NAXIS2"] = det.naxis2
    h["ORIGIN"] = ("jointcal_ap.simulate", "simulated exposure")
    h["OBJECT"] = "SIMFIELD"
    h["VISIT"] = (visit.visit, "visit id")
    h["DETECTOR"] = (detector, "detector id (0-based)")
    h["CCDNUM"] = (detector + 1, "detector number (1-based)")
    h["EXPTIME"] = (visit.exptime, "exposure time (s)")
    h["FILTER"] = (visit.filter, "filter name")
    h["TIMESYS"] = ("UTC", "time scale of MJD-OBS and DATE-OBS")
    h["MJD-OBS"] = (mjd_obs, "exposure start (MJD, UTC)")
    h["DATE-OBS"] = (date_obs, "exposure start (UTC)")
    h["GAIN"] = (1.0, "e-/ADU")
    h["EQUINOX"] = 2000.0
    h["RADESYS"] = "ICRS"
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = float(crval_ra)
    h["CRVAL2"] = float(crval_dec)
    h["CRPIX1"] = float(crpix[0])
    h["CRPIX2"] = float(crpix[1])
    h["CD1_1"] = float(cd[0, 0])
    h["CD1_2"] = float(cd[0, 1])
    h["CD2_1"] = float(cd[1, 0])
    h["CD2_2"] = float(cd[1, 1])
    return h


def _f32(a: np.ndarray) -> np.ndarray:
    """Round to float32 (as SExtractor stores it), held as float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _photometric_truth(config: SurveyConfig, n_visits: int, seed) -> dict[str, np.ndarray]:
    """Per-visit zero points and the flat (QE offsets, patterns, gradient), drawn from ``seed``."""
    cam = config.camera
    n_det = len(cam.detectors)
    rng = np.random.default_rng(seed)
    zero_points = config.zero_point + config.zero_point_sigma * rng.standard_normal(n_visits)
    qe = config.qe_sigma_mag * rng.standard_normal(n_det)
    pattern = config.flat_pattern_mag * rng.standard_normal((n_det, 3, 3))
    i, j = np.indices((3, 3))
    pattern[:, (i + j > 2) | ((i == 0) & (j == 0))] = 0.0  # total degree <= 2, no constant (that is the QE)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    radius = cam.field_radius_px(distorted=False)
    gradient = config.flat_gradient_mag / (2.0 * radius) * np.array([np.cos(angle), np.sin(angle)])
    return {"zero_points": zero_points, "flat_gradient": gradient, "detector_qe": qe, "flat_pattern": pattern}


def simulate(config: SurveyConfig | None = None, *, stars: Stars | None = None) -> SimulatedData:
    """Simulate the measurements, initial WCS and truth of a survey (no I/O).

    Parameters
    ----------
    config : SurveyConfig, optional
        Default ``SurveyConfig()``.
    stars : Stars, optional
        The true stars (e.g. from :func:`stars_from_refcat`); default: ``config.n_stars``
        synthetic stars in the cone of ``config.star_radius()``.

    Returns
    -------
    SimulatedData
        Sources ordered by (visit, detector, star id), the truth row-aligned with them.
    """
    config = config or SurveyConfig()
    cam = config.camera
    seeds = np.random.SeedSequence(config.seed).spawn(6)  # spawn keys 0-4 as before; 5: photometry
    if stars is None:
        stars = synthetic_stars(config.n_stars, ra=config.ra, dec=config.dec, radius_deg=config.star_radius(),
                                epoch=config.ref_epoch, seed=seeds[0], mag_range=config.mag_range,
                                ref_mag_limit=config.ref_mag_limit, colour_range=config.colour_range,
                                ref_colour_terms=config.ref_colour_terms, ref_mag_error=config.ref_mag_error)
    visits = make_visits(config.n_visits, ra=config.ra, dec=config.dec, epochs=config.epochs,
                         dither_arcmin=config.dither_arcmin, rotation_deg=config.rotation_deg, seed=seeds[1],
                         filter=config.filter, exptime=config.exptime, scale_jitter=config.scale_jitter,
                         min_sun_separation_deg=config.min_sun_separation_deg)

    field_deg = cam.field_radius_px() * cam.pixel_scale_arcsec / 3600.0 * (1.0 + 10.0 * config.scale_jitter)
    max_pm = float(np.max(np.hypot(stars.pmra, stars.pmdec), initial=0.0))
    max_plx = float(np.max(stars.parallax, initial=0.0))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("visit", "detector", "star", "x", "y", "ra", "dec")}
    for v in visits:
        pad_deg = (max_pm * abs(v.epoch - stars.epoch) + max_plx) / 3.6e6 + 1.0 / 3600.0
        near = np.flatnonzero(angular_separation_deg(stars.ra, stars.dec, v.ra, v.dec) <= field_deg + pad_deg)
        if len(near) == 0:
            continue
        s = stars.select(near)
        p = propagate(s.ra, s.dec, s.parallax, s.pmra, s.pmdec, s.radial_velocity, s.epoch, v.epoch,
                      observer=v.observer_au())
        xi, eta = gnomonic_project(p.ra, p.dec, v.ra, v.dec)
        inv = np.linalg.inv(v.tangent_matrix(cam))
        fx, fy = inv[0, 0] * xi + inv[0, 1] * eta, inv[1, 0] * xi + inv[1, 1] * eta
        det, x, y = cam.locate(fx, fy)
        on = np.flatnonzero(det >= 0)
        order = on[np.lexsort((s.id[on], det[on]))]
        parts["visit"].append(np.full(len(order), v.visit, dtype=np.int64))
        parts["detector"].append(det[order])
        parts["star"].append(near[order])
        for key, values in (("x", x), ("y", y), ("ra", p.ra), ("dec", p.dec)):
            parts[key].append(values[order])
    cat = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64 if k in ("visit", "detector", "star")
                                                       else np.float64)) for k, v in parts.items()}
    n = len(cat["x"])

    # ---------------------------------------------------------------- photometric truth
    photometry = _photometric_truth(config, len(visits), seeds[5])
    flat_mag = np.zeros(n)
    for d in range(len(cam.detectors)):
        rows = np.flatnonzero(cat["detector"] == d)
        flat_mag[rows] = flat_response_mag(cam, photometry["flat_gradient"], photometry["detector_qe"],
                                           photometry["flat_pattern"], d, cat["x"][rows], cat["y"][rows])

    # ---------------------------------------------------------------- noise model
    rng = np.random.default_rng(seeds[2])
    visit_index = {v.visit: i for i, v in enumerate(visits)}
    vi = np.array([visit_index[int(v)] for v in cat["visit"]], dtype=np.int64)
    ellipticity = rng.uniform(0.0, config.max_ellipticity, len(visits))
    ellipse_angle = rng.uniform(-90.0, 90.0, len(visits))
    exptime = np.array([v.exptime for v in visits])[vi]
    mag = stars.mag[cat["star"]]
    zero_point = photometry["zero_points"][vi]
    flux_true = exptime * 10.0 ** (-0.4 * (mag - zero_point + flat_mag))
    fwhm_px = config.fwhm_arcsec / cam.pixel_scale_arcsec
    n_eff = 4.0 * np.pi * (fwhm_px / _FWHM_PER_SIGMA) ** 2
    sky_adu = (exptime * 10.0 ** (-0.4 * (config.sky_mag_arcsec2 - zero_point + flat_mag))
               * cam.pixel_scale_arcsec**2)
    flux_sigma = np.sqrt(flux_true / config.gain + n_eff * sky_adu / config.gain)
    snr = flux_true / flux_sigma
    sigma = np.hypot(fwhm_px / (_FWHM_PER_SIGMA * snr), config.centroid_floor_px)
    e = ellipticity[vi]
    err_a = _f32(sigma * np.sqrt(1.0 + e))
    err_b = _f32(sigma * np.sqrt(1.0 - e))
    err_theta = _f32(ellipse_angle[vi])
    cov_xx, cov_yy, cov_xy = ellipse_to_covariance(err_a, err_b, err_theta)
    normal = rng.standard_normal((3, n))
    theta_rad = np.deg2rad(err_theta)
    da, db = err_a * normal[0], err_b * normal[1]
    dx = np.cos(theta_rad) * da - np.sin(theta_rad) * db
    dy = np.sin(theta_rad) * da + np.cos(theta_rad) * db
    flux_err = _f32(flux_sigma)
    if config.noise:
        x_meas, y_meas = cat["x"] + dx, cat["y"] + dy
        flux = _f32(flux_true + flux_sigma * normal[2])
    else:
        x_meas, y_meas = cat["x"].copy(), cat["y"].copy()
        flux = _f32(flux_true)

    # ---------------------------------------------------------------- gross outliers
    rng_out = np.random.default_rng(seeds[3])
    is_outlier = rng_out.uniform(0.0, 1.0, n) < config.outlier_fraction
    k = int(is_outlier.sum())
    if k:
        lo, hi = config.outlier_offset_arcsec
        dist_px = rng_out.uniform(lo, hi, k) / cam.pixel_scale_arcsec
        angle = rng_out.uniform(0.0, 2.0 * np.pi, k)
        rows = np.flatnonzero(is_outlier)
        naxis1 = np.array([d.naxis1 for d in cam.detectors])[cat["detector"][rows]]
        naxis2 = np.array([d.naxis2 for d in cam.detectors])[cat["detector"][rows]]
        dx_out, dy_out = dist_px * np.cos(angle), dist_px * np.sin(angle)

        def inside(ox, oy):
            return (ox >= 0.5) & (ox <= naxis1 + 0.5) & (oy >= 0.5) & (oy <= naxis2 + 0.5)

        # Flip the displacement when it would leave the detector (clip as a last resort).
        flip = ~inside(x_meas[rows] + dx_out, y_meas[rows] + dy_out)
        sign = np.where(flip, -1.0, 1.0)
        x_meas[rows] = np.clip(x_meas[rows] + sign * dx_out, 0.5, naxis1 + 0.5)
        y_meas[rows] = np.clip(y_meas[rows] + sign * dy_out, 0.5, naxis2 + 0.5)

    sources = SimSources(visit=cat["visit"], detector=cat["detector"], x=x_meas, y=y_meas, err_a=err_a,
                         err_b=err_b, err_theta_deg=err_theta, cov_xx=cov_xx, cov_yy=cov_yy, cov_xy=cov_xy,
                         flux=flux, flux_err=flux_err, flags=np.zeros(n, dtype=np.int64))

    # ---------------------------------------------------------------- initial WCS
    rng_wcs = np.random.default_rng(seeds[4])
    header_errors = np.column_stack([
        rng_wcs.normal(0.0, config.wcs_offset_arcsec, (len(visits), 2)),
        rng_wcs.normal(0.0, config.wcs_rotation_deg, len(visits)),
    ])
    headers = tuple(
        (v.visit, d, initial_header(cam, v, d, offset_arcsec=(header_errors[i, 0], header_errors[i, 1]),
                                    rotation_error_deg=header_errors[i, 2]))
        for i, v in enumerate(visits) for d in range(len(cam.detectors))
    )
    truth = Truth(camera=cam, visits=visits, stars=stars,
                  measurements=TrueMeasurements(visit=cat["visit"], detector=cat["detector"],
                                                star_id=stars.id[cat["star"]], x=cat["x"], y=cat["y"],
                                                ra=cat["ra"], dec=cat["dec"], is_outlier=is_outlier,
                                                flux_adu=flux_true),
                  header_errors=header_errors, **photometry)
    return SimulatedData(config=config, truth=truth, sources=sources, headers=headers)

