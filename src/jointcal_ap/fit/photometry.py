"""The joint photometric fit: per-visit zero points and flat fields from repeated measurements of stars.

Pure functions on arrays (no I/O): describe the measurements with
:class:`PhotometryData`, choose a model with :class:`PhotometryOptions`, and call
:func:`fit_photometry`. The result gives every visit × detector a
:class:`~jointcal_ap.calibration.PhotometricCalibration`, the project's shared convention::

    m_AB = −2.5 log10(flux_ADU) + P(x, y),    flux_nJy = flux_ADU · 10^(−0.4 (P(x, y) − 31.4))

>>> from jointcal_ap.fit.photometry import PhotometryData, PhotometryOptions, fit_photometry  # doctest: +SKIP
>>> result = fit_photometry(PhotometryData(star=..., visit=..., ...), PhotometryOptions())  # doctest: +SKIP
>>> flux_njy, flux_njy_err = result.calibration(0, 2).flux_to_njy(flux, x, y, flux_err)  # doctest: +SKIP

Model
-----
For measurement i of star s on visit v, detector d, at pixel (x, y)::

    m_s = −2.5 log10(flux_i) + P_vd(x, y)

- ``"simple"``: ``P_vd = Z_v + F_vd(u, v)``, one Chebyshev flat (total degree
  ``flat_degree``) per visit × detector. Gauge: ``Σ_d F_vd(centre) = 0`` per visit, so
  ``Z_v`` is the mean over the visit's detectors of P at the detector centres.
- ``"constrained"``: ``P_vd = Z_v + G_v(ξ, η) + F_d(u, v)``: one Chebyshev flat per
  DETECTOR shared by all visits (as jointcal's ConstrainedFluxModel), and optionally a
  per-visit polynomial ``G_v`` without constant term (degree ``visit_degree``) in the
  focal-plane coordinates (ξ, η) of the measurements. Gauge: ``Σ_d F_d(centre) = 0``
  and ``G`` of ``reference_visit`` is 0.

Reference stars fix the absolute scale: ``m_s = ref_mag + c0 + c1·colour + c2·colour² (+ k·colour)``
with weight ``1/(ref_mag_err² + ref_error_floor²)``, k the optional fitted colour term.
Without any usable reference star the fit raises :class:`~jointcal_ap.errors.FitError`,
unless ``reference_zero_point`` is given: then ``Z`` of ``reference_visit`` is fixed to it
(a relative calibration).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from jointcal_ap.errors import FitError
from jointcal_ap.fit.photometry_solve import LinearSolution, ReducedSystem, solve_reduced

__all__ = [
    "PhotometryData",
    "PhotometryOptions",
    "PhotometryResult",
    "Repeatability",
    "fit_photometry",
]

log = logging.getLogger(__name__)

_MAG_PER_LN = 2.5 / np.log(10.0)


def _calibration():
    """:mod:`jointcal_ap.calibration`, imported on first use (it imports astropy)."""
    from jointcal_ap import calibration

    return calibration  # 1.0857: σ_mag = 1.0857 σ_F / F


@dataclass(frozen=True)
class PhotometryOptions:
    """Options of the joint photometric fit.

    Attributes
    ----------
    model : "simple" or "constrained"
        ``"simple"``: a zero point per visit and a Chebyshev flat per visit × detector.
        ``"constrained"``: a zero point (and optionally a focal-plane polynomial) per
        visit and a Chebyshev flat per detector shared by all visits.
    flat_degree : int
        Total degree of the Chebyshev flats (``i + j <= flat_degree``; 0: a constant per
        CCD or detector). Default 2.
    visit_degree : int
        Constrained model only: degree of the per-visit polynomial in focal-plane
        coordinates (no constant term; 0, the default, for none). Needs
        ``PhotometryData.focal_x/focal_y``.
    colour_term : bool
        Fit one coefficient k of the reference colour: ``m_s = target_s + k·colour_s``
        for reference stars (default False). It refines ``ref_colour_terms[1]``.
    ref_colour_terms : tuple of float
        ``(c0, c1, c2, ...)``: the fitted band magnitude of a reference star is
        ``ref_mag + c0 + c1·colour + c2·colour² + ...`` (default ``(0.0,)``: the same
        band). E.g. Gaia G with BP − RP, or Hipparcos Hp with B − V, with coefficients
        from the literature for the instrument's filter.
    ref_error_floor : float
        Added in quadrature to the reference magnitude errors, mag (default 0). A
        reference star whose total error is not positive is not used.
    mag_error_floor : float
        Added in quadrature to every measurement's error, mag (default 0).
    clip_sigma : float
        Per round and per star, the worst measurement (or reference constraint) is
        clipped when its normalised residual exceeds this (default 5).
    max_clip_rounds : int
        At most this many clipping rounds (default 8; 0: no clipping).
    clip_references : bool
        Reference constraints can be clipped too (default True).
    reference_visit : int
        The visit whose focal-plane polynomial is 0 (constrained model), and whose zero
        point is fixed to ``reference_zero_point`` when there is no reference star.
    reference_zero_point : float, optional
        None (default): no usable reference star is an error. A value: the fit is then
        relative, with ``Z[reference_visit]`` fixed to it (mag).
    repeatability_bin_width : float
        Width of the magnitude bins of the repeatability, mag (default 1).
    """

    model: str = "simple"
    flat_degree: int = 2
    visit_degree: int = 0
    colour_term: bool = False
    ref_colour_terms: tuple[float, ...] = (0.0,)
    ref_error_floor: float = 0.0
    mag_error_floor: float = 0.0
    clip_sigma: float = 5.0
    max_clip_rounds: int = 8
    clip_references: bool = True
    reference_visit: int = 0
    reference_zero_point: float | None = None
    repeatability_bin_width: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref_colour_terms", tuple(float(c) for c in self.ref_colour_terms))
        if self.model not in ("simple", "constrained"):
            raise ValueError(f"model must be 'simple' or 'constrained', got {self.model!r}")
        if not 0 <= self.flat_degree <= 9 or not 0 <= self.visit_degree <= 5:
            raise ValueError(f"need 0 <= flat_degree <= 9 and 0 <= visit_degree <= 5, got "
                             f"{self.flat_degree}, {self.visit_degree}")
        if self.visit_degree and self.model != "constrained":
            raise ValueError("visit_degree > 0 needs model='constrained'")
        if self.ref_error_floor < 0 or self.mag_error_floor < 0:
            raise ValueError("error floors must be >= 0")
        if not self.clip_sigma > 0 or self.max_clip_rounds < 0:
            raise ValueError(f"need clip_sigma > 0 and max_clip_rounds >= 0, got {self.clip_sigma}, "
                             f"{self.max_clip_rounds}")
        if not self.repeatability_bin_width > 0:
            raise ValueError(f"repeatability_bin_width must be > 0, got {self.repeatability_bin_width}")

    @property
    def uses_colour(self) -> bool:
        """Whether reference stars need a colour (a colour transformation or a colour term)."""
        return self.colour_term or any(c != 0.0 for c in self.ref_colour_terms[1:])


@dataclass(frozen=True)
class PhotometryData:
    """The input of the photometric fit: one row per measurement, one per star, one per detector.

    Attributes
    ----------
    star, visit, detector : int ndarray, shape (n,)
        0-based indices of the measurement's star, visit and detector.
    x, y : float ndarray, shape (n,)
        1-based pixel position (SExtractor's ``XWIN_IMAGE``, ``YWIN_IMAGE``).
    flux, flux_err : float ndarray, shape (n,)
        Instrumental flux and its error, ADU (total for the exposure). Rows with a
        non-positive or non-finite flux or error are dropped and counted.
    naxis : int ndarray, shape (n_detectors, 2)
        ``(NAXIS1, NAXIS2)`` per detector.
    ref_mag, ref_mag_err, colour : float ndarray, shape (n_stars,)
        Per star: the reference magnitude, its error (mag) and the reference colour;
        NaN when the star has no reference match (or no colour).
    focal_x, focal_y : float ndarray, shape (n,), optional
        Focal-plane coordinates of the measurements (any unit, e.g. mm or nominal
        pixels), for the per-visit polynomial of the constrained model.
    n_visits : int, optional
        Number of visits (default: largest visit index + 1).
    """

    star: np.ndarray
    visit: np.ndarray
    detector: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    naxis: np.ndarray
    ref_mag: np.ndarray
    ref_mag_err: np.ndarray
    colour: np.ndarray | None = None
    focal_x: np.ndarray | None = None
    focal_y: np.ndarray | None = None
    n_visits: int | None = None

    def __post_init__(self) -> None:
        n = len(np.asarray(self.x))
        for name in ("star", "visit", "detector"):
            value = np.asarray(getattr(self, name))
            if value.shape != (n,) or (n and not np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f"PhotometryData.{name} must be integers of shape ({n},), got {value.dtype} "
                                 f"{value.shape}")
            if n and value.min() < 0:
                raise ValueError(f"PhotometryData.{name} has a negative index at row {int(np.argmin(value))}")
            object.__setattr__(self, name, value.astype(np.int64))
        for name in ("x", "y", "flux", "flux_err", "focal_x", "focal_y"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"PhotometryData.{name} has shape {value.shape}, expected ({n},)")
            object.__setattr__(self, name, value)
        if (self.focal_x is None) != (self.focal_y is None):
            raise ValueError("PhotometryData: give both focal_x and focal_y, or neither")
        naxis = np.asarray(self.naxis)
        if naxis.ndim != 2 or naxis.shape[1] != 2 or np.any(naxis < 1):
            raise ValueError(f"PhotometryData.naxis must be positive (NAXIS1, NAXIS2) per detector, shape "
                             f"(n_detectors, 2); got {naxis.shape}")
        object.__setattr__(self, "naxis", naxis.astype(np.int64))
        if n and self.detector.max() >= len(naxis):
            raise ValueError(f"PhotometryData.detector has index {self.detector.max()} but naxis describes "
                             f"{len(naxis)} detectors")
        n_stars = len(np.asarray(self.ref_mag))
        if self.colour is None:
            object.__setattr__(self, "colour", np.full(n_stars, np.nan))
        for name in ("ref_mag", "ref_mag_err", "colour"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (n_stars,):
                raise ValueError(f"PhotometryData.{name} has shape {value.shape}, expected ({n_stars},) "
                                 "(one per star)")
            object.__setattr__(self, name, value)
        if n and self.star.max() >= n_stars:
            raise ValueError(f"PhotometryData.star has index {self.star.max()} but there are {n_stars} stars "
                             "(length of ref_mag)")
        n_visits = int(self.visit.max()) + 1 if n else 0
        if self.n_visits is None:
            object.__setattr__(self, "n_visits", n_visits)
        elif self.n_visits < n_visits:
            raise ValueError(f"PhotometryData.n_visits = {self.n_visits}, but visit index {n_visits - 1} occurs")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_stars(self) -> int:
        return len(self.ref_mag)

    @property
    def n_detectors(self) -> int:
        return len(self.naxis)


@dataclass(frozen=True)
class Repeatability:
    """Photometric repeatability per magnitude bin: scatter of a star's measurements about its mean.

    Attributes
    ----------
    bin_edges : ndarray, shape (n_bins + 1,)
        Fitted star magnitude bins, mag.
    rms_mmag : ndarray, shape (n_bins,)
        ``sqrt(Σ (m_i − mean_s)² / Σ (n_s − 1))`` over the stars of the bin with ≥ 2
        measurements (calibrated, unclipped), mmag; NaN for an empty bin.
    expected_mmag : ndarray, shape (n_bins,)
        The same from the measurement errors alone: ``sqrt(mean σ_i²)``, mmag.
    n_stars : ndarray, shape (n_bins,)
    """

    bin_edges: np.ndarray
    rms_mmag: np.ndarray
    expected_mmag: np.ndarray
    n_stars: np.ndarray


@dataclass(frozen=True)
class PhotometryResult:
    """The fitted photometric calibration and everything measured about the fit.

    Calibrations (visit × detector arrays; NaN where the CCD had no measurement)
    ----------------------------------------------------------------------------
    coefficients : ndarray, shape (n_visits, n_detectors, k, k)
        Chebyshev coefficients of P (mag), the shared convention.
    zero_point_err : ndarray, shape (n_visits, n_detectors)
        1σ error of P at the detector centre, mag.
    coefficient_covariance : ndarray, shape (n_visits, n_detectors, k², k²)
        Covariance of each CCD's ``coefficients.ravel()``.
    approximation_error : ndarray, shape (n_visits, n_detectors)
        Largest |Chebyshev − model| over the CCD (mag): 0 except for the constrained
        model with a per-visit polynomial, whose composition is re-fitted.
    visit_zero_point, visit_zero_point_err : ndarray, shape (n_visits,)
        ``Z_v`` (mag; the magnitude of 1 ADU in the exposure; see the module docstring
        for its gauge) and its error.
    colour_term, colour_term_err : float
        The fitted colour coefficient k (NaN without ``colour_term``).

    Stars (arrays of shape (n_stars,))
    ----------------------------------
    star_mag, star_mag_err : fitted magnitudes (the reference system) and errors
        (calibration error included); NaN for stars without a usable measurement.
    star_n_measurements : int, unclipped measurements per star.
    ref_residual : ``star_mag − target`` for used reference stars, NaN otherwise.

    Measurements (arrays of shape (n,), aligned with the input rows)
    ----------------------------------------------------------------
    used : the row entered the final fit (valid and not clipped).
    clipped : the row was clipped as an outlier.
    calibrated_mag : ``−2.5 log10(flux) + P(x, y)`` (NaN for dropped rows).
    mag_err : the measurement's error, mag (floor included).
    residual : ``calibrated_mag − star_mag``, mag.
    pull : ``residual`` over its expected σ (leverage-corrected); 0 for a star's only
        constraint.

    Diagnostics
    -----------
    chi2, dof : over used measurements and reference constraints; see ``chi2_per_dof``.
    n_measurements, n_stars, n_reference_stars : used in the final fit.
    n_dropped : rows dropped for a non-positive or non-finite flux, error or position.
    n_reference_rejected : reference stars (with measurements) not used: no finite
        magnitude, error or (when needed) colour.
    clipped_per_round : measurements and reference constraints clipped in each round (at most
        one per star per round: its worst, when above ``clip_sigma``).
    readmitted_per_round : clipped ones re-admitted in each round, because they agree with
        that round's solution within ``clip_sigma``.
    n_clipped_references : reference constraints clipped at the end.
    repeatability : :class:`Repeatability`.
    """

    options: PhotometryOptions
    naxis: np.ndarray
    coefficients: np.ndarray
    zero_point_err: np.ndarray
    coefficient_covariance: np.ndarray
    approximation_error: np.ndarray
    visit_zero_point: np.ndarray
    visit_zero_point_err: np.ndarray
    colour_term: float
    colour_term_err: float
    star_mag: np.ndarray
    star_mag_err: np.ndarray
    star_n_measurements: np.ndarray
    ref_residual: np.ndarray
    used: np.ndarray
    clipped: np.ndarray
    calibrated_mag: np.ndarray
    mag_err: np.ndarray
    residual: np.ndarray
    pull: np.ndarray
    chi2: float
    dof: int
    n_measurements: int
    n_stars: int
    n_reference_stars: int
    n_dropped: int
    n_reference_rejected: int
    clipped_per_round: tuple[int, ...]
    readmitted_per_round: tuple[int, ...]
    n_clipped_references: int
    repeatability: Repeatability
    theta: np.ndarray = field(repr=False)
    covariance: np.ndarray = field(repr=False)
    coefficient_maps: np.ndarray = field(repr=False)
    parameter_names: tuple[str, ...] = field(repr=False)

    @property
    def chi2_per_dof(self) -> float:
        return self.chi2 / self.dof if self.dof > 0 else float("nan")

    @property
    def n_clipped(self) -> int:
        """Measurements clipped at the end of the fit."""
        return int(self.clipped.sum())

    def calibration(self, visit: int, detector: int):
        """The calibration of one visit × detector, with its coefficient covariance.

        Ready for a :class:`~jointcal_ap.calibration.DetectorCalibration` (and so for
        ``Calibration.write`` and ``calibrate_exposure``).

        Raises
        ------
        KeyError
            The visit × detector had no measurement.
        """
        c = self.coefficients[visit, detector]
        if not np.all(np.isfinite(c)):
            raise KeyError(f"no photometric calibration for visit {visit}, detector {detector} (no measurement)")
        n1, n2 = self.naxis[detector]
        return _calibration().PhotometricCalibration(c, int(n1), int(n2), float(self.zero_point_err[visit, detector]),
                                      self.coefficient_covariance[visit, detector])

    def evaluate(self, visit, detector, x, y) -> np.ndarray:
        """P (mag) at 1-based pixels; ``visit``/``detector`` are scalars or arrays like ``x``.

        NaN for a visit × detector without a calibration.
        """
        arrays = np.broadcast_arrays(visit, detector, np.asarray(x, float), np.asarray(y, float))
        shape = arrays[0].shape
        visit, detector, x, y = (np.ravel(a) for a in arrays)
        out = np.full(x.shape, np.nan)
        if out.size == 0:
            return out.reshape(shape)
        # rows of each visit × detector by one sort (a mask per CCD would be O(n × CCDs))
        key = visit.astype(np.int64) * self.coefficients.shape[1] + detector.astype(np.int64)
        order = np.argsort(key, kind="stable")
        starts = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)], strict=True):
            rows = order[a:b]
            v, d = int(visit[rows[0]]), int(detector[rows[0]])
            if np.all(np.isfinite(self.coefficients[v, d])):
                out[rows] = self.calibration(v, d).zero_point(x[rows], y[rows])
        return out.reshape(shape)

    def covariance_at(self, visit, detector, x, y) -> np.ndarray:
        """Joint covariance (mag², shape (m, m)) of P at m points (1-D arrays or scalars for visit/detector)."""
        visit, detector, x, y = (np.ravel(a) for a in np.broadcast_arrays(visit, detector, np.asarray(x, float),
                                                                           np.asarray(y, float)))
        k = self.coefficients.shape[-1] - 1
        rows = np.zeros((len(x), len(self.theta)))
        for idx in range(len(x)):
            v, d = int(visit[idx]), int(detector[idx])
            u, w = _calibration().pixel_to_chebyshev(x[idx], y[idx], *self.naxis[d])
            rows[idx] = _calibration().chebyshev_basis(u, w, (k, k)) @ self.coefficient_maps[v, d]
        return rows @ self.covariance @ rows.T

    def calibrated_flux(self, visit, detector, x, y, flux_adu) -> np.ndarray:
        """Instrumental fluxes (ADU) → nJy with the fitted calibration."""
        scale = _calibration().zero_point_to_njy_per_adu(self.evaluate(visit, detector, x, y))
        return np.asarray(flux_adu, dtype=float) * scale


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class _Layout:
    """Where each parameter block of θ lives; -1 for absent visits / CCDs / detectors."""

    zp: np.ndarray            # (n_visits,)
    flat: np.ndarray          # (n_visits, n_det) simple or (n_det,) constrained: first column of the block
    visit_poly: np.ndarray    # (n_visits,): first column of G_v, or -1
    colour: int
    n_params: int
    n_flat: int
    n_visit_poly: int
    names: tuple[str, ...]


def _focal_exponents(degree: int) -> list[tuple[int, int]]:
    return [(k - j, j) for k in range(1, degree + 1) for j in range(k + 1)]


def _focal_design(fx, fy, scale: float, degree: int) -> np.ndarray:
    a, b = np.asarray(fx) / scale, np.asarray(fy) / scale
    return np.stack([a**i * b**j for i, j in _focal_exponents(degree)], axis=-1)


def _chebyshev_terms(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j) of the flat's terms ``T_i(u)·T_j(v)``, total degree ``i + j <= degree``, in ``c.ravel()`` order."""
    i, j = np.indices((degree + 1, degree + 1))
    keep = (i + j <= degree).ravel()
    return i.ravel()[keep], j.ravel()[keep]


def _chebyshev_design(u, v, degree: int) -> np.ndarray:
    """The flat's basis, shape ``u.shape + (n_terms,)``: ``chebyshev_basis`` at :func:`_chebyshev_terms`."""
    i, j = _chebyshev_terms(degree)
    return _calibration().chebyshev_basis(u, v, (degree, degree))[..., i * (degree + 1) + j]


def _layout(options: PhotometryOptions, visits_present: np.ndarray, units_present: np.ndarray) -> _Layout:
    n_flat = len(_chebyshev_terms(options.flat_degree)[0])
    n_vp = len(_focal_exponents(options.visit_degree))
    ti, tj = _chebyshev_terms(options.flat_degree)
    names: list[str] = []
    zp = np.full(len(visits_present), -1)
    for v in np.flatnonzero(visits_present):
        zp[v] = len(names)
        names.append(f"zero point of visit {v}")
    flat = np.full(units_present.shape, -1)
    for unit in zip(*np.nonzero(units_present), strict=True):
        flat[unit] = len(names)
        where = (f"visit {unit[0]} detector {unit[1]}" if options.model == "simple" else f"detector {unit[0]}")
        names.extend(f"flat T{i}(u)T{j}(v) of {where}" for i, j in zip(ti, tj, strict=True))
    visit_poly = np.full(len(visits_present), -1)
    if n_vp:
        for v in np.flatnonzero(visits_present):
            visit_poly[v] = len(names)
            names.extend(f"focal-plane ξ^{i}η^{j} term of visit {v}" for i, j in _focal_exponents(options.visit_degree))
    colour = -1
    if options.colour_term:
        colour = len(names)
        names.append("colour term")
    return _Layout(zp, flat, visit_poly, colour, len(names), n_flat, n_vp, tuple(names))


def _design(data: PhotometryData, rows: np.ndarray, layout: _Layout, options: PhotometryOptions,
            focal_scale: float) -> sp.csr_matrix:
    """The sparse design of the calibration at the given input rows."""
    n = len(rows)
    v, d = data.visit[rows], data.detector[rows]
    u = np.empty(n)
    w = np.empty(n)
    for det in np.unique(d):
        sel = d == det
        u[sel], w[sel] = _calibration().pixel_to_chebyshev(data.x[rows][sel], data.y[rows][sel], *data.naxis[det])
    values = [np.ones((n, 1)), _chebyshev_design(u, w, options.flat_degree)]
    start = layout.flat[v, d] if options.model == "simple" else layout.flat[d]
    columns = [layout.zp[v][:, None], start[:, None] + np.arange(layout.n_flat)]
    if layout.n_visit_poly:
        values.append(_focal_design(data.focal_x[rows], data.focal_y[rows], focal_scale, options.visit_degree))
        columns.append(layout.visit_poly[v][:, None] + np.arange(layout.n_visit_poly))
    val = np.concatenate(values, axis=1)
    col = np.concatenate(columns, axis=1)
    row = np.repeat(np.arange(n)[:, None], val.shape[1], axis=1)
    return sp.csr_matrix((val.ravel(), (row.ravel(), col.ravel())), shape=(n, layout.n_params))


def _constraints(options: PhotometryOptions, layout: _Layout, has_reference: bool) -> tuple[np.ndarray, np.ndarray]:
    """The gauge: C θ = d."""
    centre = _chebyshev_design(np.zeros(1), np.zeros(1), options.flat_degree)[0]
    rows, values = [], []
    if options.model == "simple":
        for v in range(layout.flat.shape[0]):
            starts = layout.flat[v][layout.flat[v] >= 0]
            if len(starts):
                r = np.zeros(layout.n_params)
                for s in starts:
                    r[s:s + layout.n_flat] = centre
                rows.append(r)
                values.append(0.0)
    else:
        r = np.zeros(layout.n_params)
        for s in layout.flat[layout.flat >= 0]:
            r[s:s + layout.n_flat] = centre
        rows.append(r)
        values.append(0.0)
        if layout.n_visit_poly:
            ref = layout.visit_poly[options.reference_visit] if options.reference_visit < len(layout.zp) else -1
            if ref < 0:
                raise FitError(f"reference_visit {options.reference_visit} has no measurement; choose another")
            for k in range(layout.n_visit_poly):
                r = np.zeros(layout.n_params)
                r[ref + k] = 1.0
                rows.append(r)
                values.append(0.0)
    if not has_reference:
        ref = layout.zp[options.reference_visit] if options.reference_visit < len(layout.zp) else -1
        if ref < 0:
            raise FitError(f"reference_visit {options.reference_visit} has no measurement; choose another")
        r = np.zeros(layout.n_params)
        r[ref] = 1.0
        rows.append(r)
        values.append(float(options.reference_zero_point))
    return np.array(rows).reshape(-1, layout.n_params), np.array(values)


def _check_counts(data: PhotometryData, active: np.ndarray, options: PhotometryOptions, layout: _Layout,
                  stage: str) -> None:
    """Every CCD (simple) or detector (constrained) needs at least as many measurements as flat terms."""
    n_det = data.n_detectors
    if options.model == "simple":
        counts = np.bincount(data.visit[active] * n_det + data.detector[active],
                             minlength=data.n_visits * n_det).reshape(data.n_visits, n_det)
        for v, d in zip(*np.nonzero(layout.flat >= 0), strict=True):
            if counts[v, d] < layout.n_flat + 1:
                raise FitError(f"visit {v} detector {d} has {counts[v, d]} usable measurements {stage}, too few "
                               f"for a flat of degree {options.flat_degree} ({layout.n_flat} terms); lower "
                               "flat_degree or leave the CCD out", {"visit": int(v), "detector": int(d)})
    else:
        counts = np.bincount(data.detector[active], minlength=n_det)
        for d in np.flatnonzero(layout.flat >= 0):
            if counts[d] < layout.n_flat + 1:
                raise FitError(f"detector {d} has {counts[d]} usable measurements {stage}, too few for a flat of "
                               f"degree {options.flat_degree} ({layout.n_flat} terms)", {"detector": int(d)})


def _coefficient_maps(data: PhotometryData, valid: np.ndarray, options: PhotometryOptions, layout: _Layout,
                      focal_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per CCD, the linear map θ → Chebyshev coefficients ``c.ravel()`` (n_v, n_d, k², P), NaN where absent.

    Exact for the simple model and the constrained model without a per-visit polynomial.
    With one, the composition with each CCD's pixel → focal-plane map (a cubic fitted to
    the CCD's measurements) is re-fitted on a grid by a Chebyshev series of degree
    ``max(flat_degree, visit_degree)``; the second array holds, per CCD, the design of the
    composed model and of the Chebyshev series on that grid (to measure the error).
    """
    n_v, n_d = data.n_visits, data.n_detectors
    out_degree = max(options.flat_degree, options.visit_degree)
    k = out_degree + 1
    maps = np.full((n_v, n_d, k * k, layout.n_params), np.nan)
    grids = np.full((n_v, n_d), None, dtype=object)
    ti, tj = _chebyshev_terms(options.flat_degree)
    flat_index = ti * k + tj
    oi, oj = _chebyshev_terms(out_degree)
    out_index = oi * k + oj
    for v in range(n_v):
        if layout.zp[v] < 0:
            continue
        for d in range(n_d):
            start = layout.flat[v, d] if options.model == "simple" else layout.flat[d]
            on_ccd = valid & (data.visit == v) & (data.detector == d)
            if start < 0 or not on_ccd.any():
                continue
            m = np.zeros((k * k, layout.n_params))
            if not layout.n_visit_poly:
                m[flat_index, start + np.arange(layout.n_flat)] = 1.0
                m[0, layout.zp[v]] += 1.0
                maps[v, d] = m
                continue
            # composed model on a grid of Chebyshev nodes, re-fitted by a Chebyshev series
            n_grid = max(12, 3 * k)
            nodes = np.cos(np.pi * (np.arange(n_grid) + 0.5) / n_grid)
            gu, gv = (a.ravel() for a in np.meshgrid(nodes, nodes, indexing="ij"))
            u, w = _calibration().pixel_to_chebyshev(data.x[on_ccd], data.y[on_ccd], *data.naxis[d])
            fmap = _fit_focal_map(u, w, data.focal_x[on_ccd], data.focal_y[on_ccd])
            fx, fy = fmap(gu, gv)
            composed = np.zeros((len(gu), layout.n_params))
            composed[:, layout.zp[v]] = 1.0
            composed[:, start:start + layout.n_flat] = _chebyshev_design(gu, gv, options.flat_degree)
            composed[:, layout.visit_poly[v]:layout.visit_poly[v] + layout.n_visit_poly] = _focal_design(
                fx, fy, focal_scale, options.visit_degree)
            basis = _chebyshev_design(gu, gv, out_degree)
            m[out_index] = np.linalg.lstsq(basis, composed, rcond=None)[0]
            maps[v, d] = m
            grids[v, d] = (composed, basis @ m[out_index])
    return maps, grids


def _fit_focal_map(u, v, fx, fy):
    """Least-squares polynomial (u, v) → focal plane, total degree ≤ 3 (lower with few points)."""
    degree = 3 if len(u) >= 30 else (1 if len(u) >= 6 else 0)
    if degree == 0:
        return lambda gu, gv: (np.full_like(gu, np.mean(fx)), np.full_like(gu, np.mean(fy)))
    exps = [(a - b, b) for a in range(degree + 1) for b in range(a + 1)]

    def design(a, b):
        return np.stack([a**i * b**j for i, j in exps], axis=-1)

    coef = np.linalg.lstsq(design(u, v), np.column_stack([fx, fy]), rcond=None)[0]

    def focal(gu, gv):
        f = design(gu, gv) @ coef
        return f[:, 0], f[:, 1]

    return focal


# --------------------------------------------------------------------------- the fit


def _repeatability(star: np.ndarray, mag: np.ndarray, err: np.ndarray, star_mag: np.ndarray,
                   width: float) -> Repeatability:
    n_star = np.bincount(star, minlength=len(star_mag))
    multi = n_star[star] >= 2
    s, m, e = star[multi], mag[multi], err[multi]
    if len(s) == 0:
        return Repeatability(np.zeros(1), np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    mean = np.bincount(s, weights=m, minlength=len(star_mag)) / np.maximum(n_star, 1)
    dev2 = np.bincount(s, weights=(m - mean[s]) ** 2, minlength=len(star_mag))
    var = np.bincount(s, weights=e**2, minlength=len(star_mag))
    stars = np.flatnonzero((n_star >= 2) & np.isfinite(star_mag))
    lo = np.floor(star_mag[stars].min() / width) * width
    hi = np.ceil(star_mag[stars].max() / width) * width
    edges = np.arange(lo, hi + 0.5 * width, width)
    if len(edges) < 2:
        edges = np.array([lo, lo + width])
    b = np.clip(np.digitize(star_mag[stars], edges) - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    sum_dev2 = np.bincount(b, weights=dev2[stars], minlength=nb)
    sum_dof = np.bincount(b, weights=n_star[stars] - 1.0, minlength=nb)
    sum_var = np.bincount(b, weights=var[stars], minlength=nb)
    sum_n = np.bincount(b, weights=n_star[stars].astype(float), minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = 1e3 * np.sqrt(sum_dev2 / sum_dof)
        expected = 1e3 * np.sqrt(sum_var / sum_n)
    return Repeatability(edges, rms, expected, np.bincount(b, minlength=nb))


def fit_photometry(data: PhotometryData, options: PhotometryOptions | None = None) -> PhotometryResult:
    """Fit per-visit zero points, flat fields and star magnitudes jointly, with outlier clipping.

    Parameters
    ----------
    data : PhotometryData
    options : PhotometryOptions, optional

    Returns
    -------
    PhotometryResult

    Raises
    ------
    FitError
        No usable reference star (and no ``reference_zero_point``), no reference colour
        for a colour term, a CCD / detector with fewer measurements than flat terms, or a
        degenerate system (e.g. a visit sharing no star with the others).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # small dense matrices (see JointFit.run)
        return _fit_photometry(data, options or PhotometryOptions())


def _fit_photometry(data: PhotometryData, options: PhotometryOptions) -> PhotometryResult:
    n = len(data)
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = (np.isfinite(data.flux) & np.isfinite(data.flux_err) & (data.flux > 0) & (data.flux_err > 0)
                 & np.isfinite(data.x) & np.isfinite(data.y))
        if data.focal_x is not None and options.visit_degree:
            valid &= np.isfinite(data.focal_x) & np.isfinite(data.focal_y)
        inst_mag = np.where(valid, -2.5 * np.log10(np.where(valid, data.flux, 1.0)), np.nan)
        mag_err = np.where(valid, np.hypot(_MAG_PER_LN * data.flux_err / np.where(valid, data.flux, 1.0),
                                           options.mag_error_floor), np.nan)
    n_dropped = int(n - valid.sum())
    if options.visit_degree and data.focal_x is None:
        raise ValueError("visit_degree > 0 needs PhotometryData.focal_x and focal_y")
    if not valid.any():
        raise FitError(f"no usable measurement: all {n} rows have a non-positive or non-finite flux, error or "
                       "position", {"n_dropped": n_dropped})

    # reference constraints
    target = data.ref_mag + np.polynomial.polynomial.polyval(np.nan_to_num(data.colour), options.ref_colour_terms)
    ref_sigma = np.hypot(np.nan_to_num(data.ref_mag_err, nan=0.0), options.ref_error_floor)
    has_ref = np.isfinite(data.ref_mag) & (ref_sigma > 0)
    if options.uses_colour:
        has_ref &= np.isfinite(data.colour)
    measured = np.bincount(data.star[valid], minlength=data.n_stars) > 0
    n_ref_rejected = int((measured & np.isfinite(data.ref_mag) & ~has_ref).sum())
    has_ref &= measured
    if not has_ref.any() and options.reference_zero_point is None:
        raise FitError("no usable reference star (a finite ref_mag with a positive error"
                       + (" and a finite colour" if options.uses_colour else "")
                       + " among the measured stars): the absolute scale is undetermined. If the reference "
                       "catalog has magnitudes but no errors, give them one with ref_error_floor "
                       "(jointcal-ap fit --ref-mag-floor 0.02); otherwise match a reference catalog or set "
                       "PhotometryOptions.reference_zero_point for a relative calibration",
                       {"n_reference_rejected": n_ref_rejected})
    if options.colour_term and not has_ref.any():
        raise FitError("colour_term needs reference stars with a colour")

    visits_present = np.bincount(data.visit[valid], minlength=data.n_visits) > 0
    if options.model == "simple":
        units = np.zeros((data.n_visits, data.n_detectors), dtype=bool)
        units[data.visit[valid], data.detector[valid]] = True
    else:
        units = np.bincount(data.detector[valid], minlength=data.n_detectors) > 0
    layout = _layout(options, visits_present, units)
    _check_counts(data, valid, options, layout, "before clipping")
    constraints, constraint_values = _constraints(options, layout, bool(has_ref.any()))
    focal_scale = 1.0
    if layout.n_visit_poly:
        focal_scale = float(max(np.abs(data.focal_x[valid]).max(), np.abs(data.focal_y[valid]).max(), 1e-300))

    rows_all = np.flatnonzero(valid)
    design_all = _design(data, rows_all, layout, options, focal_scale)
    if layout.colour >= 0:  # b_s: the colour term touches reference constraints only
        ref_design = sp.csr_matrix((np.where(has_ref, np.nan_to_num(data.colour), 0.0),
                                    (np.arange(data.n_stars), np.full(data.n_stars, layout.colour))),
                                   shape=(data.n_stars, layout.n_params))
    else:
        ref_design = sp.csr_matrix((data.n_stars, layout.n_params))

    active = np.ones(len(rows_all), dtype=bool)
    ref_active = has_ref.copy()
    clipped_per_round: list[int] = []
    readmitted_per_round: list[int] = []
    weight_all = 1.0 / mag_err[rows_all] ** 2
    ref_weight_full = np.where(has_ref, 1.0 / np.where(has_ref, ref_sigma, 1.0) ** 2, 0.0)
    target0 = np.nan_to_num(target)
    star_all = data.star[rows_all]
    mag_all = inst_mag[rows_all]

    def reduced(rows, ref_w, *, normal=True):
        return ReducedSystem.build(design_all[rows], weight_all[rows], mag_all[rows], star_all[rows], data.n_stars,
                                   ref_w, target0, ref_design, normal=normal)

    system = previous = None
    for round_ in range(options.max_clip_rounds + 1):
        sel = np.flatnonzero(active)
        star = star_all[sel]
        present = np.bincount(star, minlength=data.n_stars) > 0
        ref_weight = np.where(ref_active & present, ref_weight_full, 0.0)
        if previous is None:
            system = reduced(sel, ref_weight)
        else:
            # the clipped and re-admitted measurements change their stars' terms only
            was_active, was_ref_weight = previous
            stars = np.zeros(data.n_stars, dtype=bool)
            stars[star_all[active != was_active]] = True
            stars |= ref_weight != was_ref_weight
            mine = stars[star_all]
            system = system.updated(reduced(np.flatnonzero(was_active & mine), np.where(stars, was_ref_weight, 0.0)),
                                    reduced(np.flatnonzero(active & mine), np.where(stars, ref_weight, 0.0)),
                                    reduced(sel, ref_weight, normal=False))
        previous = (active.copy(), ref_weight)
        solution = solve_reduced(design_all[sel], weight_all[sel], mag_all[sel], star, data.n_stars,
                                 ref_weight, target0, ref_design, constraints, constraint_values,
                                 layout.names, system=system)
        resid, pull, ref_resid, ref_pull = _residuals(solution, design_all[sel], inst_mag[rows_all[sel]],
                                                      mag_err[rows_all[sel]], star, ref_weight, target, ref_design,
                                                      ref_sigma)
        if round_ == options.max_clip_rounds:
            break
        # (1) the worst constraint of each star, if above the threshold, is clipped
        ref_on = np.flatnonzero(ref_weight > 0)
        cand_star = np.concatenate([star, ref_on])
        cand_pull = np.abs(np.concatenate([pull, ref_pull[ref_on] if options.clip_references
                                           else np.zeros(len(ref_on))]))
        order = np.lexsort((-cand_pull, cand_star))
        first = order[np.r_[True, cand_star[order][1:] != cand_star[order][:-1]]] if len(order) else order
        worst = first[cand_pull[first] > options.clip_sigma]
        # (2) clipped ones that agree with the current solution come back (an early solution, pulled by
        #     the outliers themselves, can make good measurements look bad)
        out = np.flatnonzero(~active)
        back = np.zeros(0, dtype=np.int64)
        if len(out):
            rows_out = rows_all[out]
            s_out = data.star[rows_out]
            # a star left without measurement is compared with its reference magnitude
            star_ref = target + np.asarray(ref_design @ solution.theta).ravel()
            lone = ~np.isfinite(solution.star_mag[s_out]) & has_ref[s_out]
            m_star = np.where(lone, star_ref[s_out], solution.star_mag[s_out])
            v_star = np.where(lone, ref_sigma[s_out] ** 2, solution.star_var_stat[s_out])
            r_out = inst_mag[rows_out] + np.asarray(design_all[out] @ solution.theta).ravel() - m_star
            with np.errstate(invalid="ignore"):
                p_out = np.abs(r_out) / np.sqrt(mag_err[rows_out] ** 2 + v_star)
            back = out[p_out <= options.clip_sigma]
        ref_out = np.flatnonzero(has_ref & ~ref_active & present)
        ref_back = np.zeros(0, dtype=np.int64)
        if len(ref_out):
            r_ref = (solution.star_mag[ref_out] - target[ref_out]
                     - np.asarray(ref_design[ref_out] @ solution.theta).ravel())
            p_ref = np.abs(r_ref) / np.sqrt(ref_sigma[ref_out] ** 2 + solution.star_var_stat[ref_out])
            ref_back = ref_out[p_ref <= options.clip_sigma]
        if len(worst) == 0 and len(back) == 0 and len(ref_back) == 0:
            break
        active[sel[worst[worst < len(star)]]] = False
        ref_active[cand_star[worst[worst >= len(star)]]] = False
        active[back] = True
        ref_active[ref_back] = True
        clipped_per_round.append(len(worst))
        readmitted_per_round.append(len(back) + len(ref_back))
        log.info("photometry clip round %d: %d clipped, %d re-admitted", round_ + 1, len(worst),
                 len(back) + len(ref_back))
        still = np.zeros(n, dtype=bool)
        still[rows_all[active]] = True
        _check_counts(data, still, options, layout, "after clipping")

    # ------------------------------------------------------------------ results
    sel = np.flatnonzero(active)
    used_rows = rows_all[sel]
    star = data.star[used_rows]
    used = np.zeros(n, dtype=bool)
    used[used_rows] = True
    clipped = np.zeros(n, dtype=bool)
    clipped[rows_all[~active]] = True
    ref_used = ref_weight > 0
    chi2 = float(np.sum((resid / mag_err[used_rows]) ** 2) + np.sum(ref_weight[ref_used] * ref_resid[ref_used] ** 2))
    stars_used = int((np.bincount(star, minlength=data.n_stars) > 0).sum())
    dof = int(len(sel) + ref_used.sum() - stars_used - solution.n_free)

    calibration = np.asarray(design_all @ solution.theta).ravel()
    calibrated = np.full(n, np.nan)
    calibrated[rows_all] = inst_mag[rows_all] + calibration
    star_mag = solution.star_mag
    residual = calibrated - star_mag[data.star]
    pull_all = np.full(n, np.nan)
    pull_all[used_rows] = pull
    var_clip = mag_err[rows_all[~active]] ** 2 + solution.star_var_stat[data.star[rows_all[~active]]]
    pull_all[rows_all[~active]] = residual[rows_all[~active]] / np.sqrt(var_clip)

    maps, grids = _coefficient_maps(data, valid, options, layout, focal_scale)
    kk = max(options.flat_degree, options.visit_degree) + 1
    absent = ~np.isfinite(maps[..., 0, 0])
    coefficients = np.full(maps.shape[:3], np.nan)
    cov = np.full(maps.shape[:3] + maps.shape[2:3], np.nan)
    for v, d in zip(*np.nonzero(~absent), strict=True):
        cols = np.flatnonzero(np.any(maps[v, d] != 0, axis=0))  # a CCD touches a few blocks of θ only
        m = maps[v, d][:, cols]
        coefficients[v, d] = m @ solution.theta[cols]
        c_vd = m @ solution.covariance[np.ix_(cols, cols)] @ m.T
        cov[v, d] = 0.5 * (c_vd + c_vd.T)  # symmetric to the last bit, as PhotometricCalibration requires
    centre = _calibration().chebyshev_basis(0.0, 0.0, (kk - 1, kk - 1))
    zp_err = np.sqrt(np.maximum(np.einsum("k,vdkl,l->vd", centre, cov, centre), 0.0))
    approx = np.where(absent, np.nan, 0.0)
    for (v, d), grid in np.ndenumerate(grids):
        if grid is not None:
            composed, fitted = grid
            approx[v, d] = float(np.max(np.abs((composed - fitted) @ solution.theta)))

    zp = np.where(layout.zp >= 0, solution.theta[np.maximum(layout.zp, 0)], np.nan)
    zp_err_visit = np.where(layout.zp >= 0, np.sqrt(np.diag(solution.covariance))[np.maximum(layout.zp, 0)], np.nan)
    if layout.colour >= 0:
        colour_term = float(solution.theta[layout.colour])
        colour_term_err = float(np.sqrt(solution.covariance[layout.colour, layout.colour]))
    else:
        colour_term = colour_term_err = float("nan")

    star_err = np.sqrt(solution.star_variance())
    ref_residual = np.where(ref_used, ref_resid, np.nan)
    return PhotometryResult(
        options=options, naxis=data.naxis, coefficients=coefficients.reshape(*coefficients.shape[:2], kk, kk),
        zero_point_err=zp_err, coefficient_covariance=cov, approximation_error=approx,
        visit_zero_point=zp, visit_zero_point_err=zp_err_visit, colour_term=colour_term,
        colour_term_err=colour_term_err, star_mag=star_mag, star_mag_err=star_err,
        star_n_measurements=np.bincount(star, minlength=data.n_stars), ref_residual=ref_residual, used=used,
        clipped=clipped, calibrated_mag=calibrated, mag_err=mag_err, residual=residual, pull=pull_all,
        chi2=chi2, dof=dof, n_measurements=len(sel), n_stars=stars_used, n_reference_stars=int(ref_used.sum()),
        n_dropped=n_dropped, n_reference_rejected=n_ref_rejected, clipped_per_round=tuple(clipped_per_round),
        readmitted_per_round=tuple(readmitted_per_round), n_clipped_references=int((has_ref & ~ref_active).sum()),
        repeatability=_repeatability(star, calibrated[used_rows], mag_err[used_rows], star_mag,
                                     options.repeatability_bin_width),
        theta=solution.theta, covariance=solution.covariance, coefficient_maps=np.nan_to_num(maps),
        parameter_names=layout.names)


def _residuals(solution: LinearSolution, design, inst_mag, mag_err, star, ref_weight, target, ref_design,
               ref_sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Measurement and reference residuals (mag) and their leverage-corrected pulls."""
    m = solution.star_mag
    resid = inst_mag + np.asarray(design @ solution.theta).ravel() - m[star]
    var = mag_err**2 - solution.star_var_stat[star]
    pull = np.where(var > 1e-12 * mag_err**2, resid / np.sqrt(np.maximum(var, 1e-300)), 0.0)
    ref = ref_weight > 0
    ref_resid = np.where(ref, m - np.nan_to_num(target) - np.asarray(ref_design @ solution.theta).ravel(), np.nan)
    ref_var = np.where(ref, ref_sigma**2 - np.nan_to_num(solution.star_var_stat), 0.0)
    ref_pull = np.where(ref & (ref_var > 1e-12 * ref_sigma**2),
                        ref_resid / np.sqrt(np.maximum(ref_var, 1e-300)), 0.0)
    return resid, pull, ref_resid, ref_pull

