"""The joint astrometric fit: configure, then ``run()``.

>>> from jointcal_ap.fit import JointFit, FitOptions, read_inputs    # doctest: +SKIP
>>> from jointcal_ap.refcat import open_refcat                       # doctest: +SKIP
>>> result = JointFit(read_inputs(["survey/"]), open_refcat("refcat/gaia"), FitOptions()).run()  # doctest: +SKIP
>>> result.chi2_per_dof, result.pixel_to_sky(0, [1024.0], [1024.0])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from jointcal_ap.fit.clipping import (
    ClipSummary,
    ccd_scales,
    clip_summary,
    select_outliers,
    select_restorable,
    undetermined,
)
from jointcal_ap.fit.crossmatch import (
    Association,
    default_radii,
    group_rows,
    initial_pixel_scale_arcsec,
    match_references,
)
from jointcal_ap.fit.data import FitInput
from jointcal_ap.fit.diagnostics import association_failure, log_association
from jointcal_ap.fit.models import ConstrainedModel, SimpleModel
from jointcal_ap.fit.photometry import (
    PhotometryData,
    PhotometryOptions,
    PhotometryResult,
    fit_photometry,
)
from jointcal_ap.fit.projection import inverse_gnomonic, tangent_frame, unit_vectors
from jointcal_ap.fit.references import reference_rows, visit_references
from jointcal_ap.fit.solve import (
    MAS_PER_RAD,
    FitError,
    FitProblem,
    Problem,
    SolveStats,
    gauss_newton,
    index_dtype,
)
from jointcal_ap.refcat._arrow import to_numpy

__all__ = ["FitOptions", "FitResult", "JointFit"]

log = logging.getLogger(__name__)

#: A solve that outlier clipping follows may stop once a full Gauss-Newton step matched its
#: linear model to this fraction of χ² (:func:`~jointcal_ap.fit.solve.gauss_newton`'s
#: ``clip_rtol``): far below what one clipped measurement changes (a 5σ outlier is ~25 in
#: χ², 1e-4 of it on the large case), so the outliers chosen are the same, and the step that
#: would only confirm convergence (large case: 0.24 s) is not computed. The last solve always
#: converges to ``rtol``.
CLIP_RTOL = 1e-6


class _Counter:
    """Counts calls and reports them to a progress callable as ``(stage, count, total)``."""

    def __init__(self, progress, stage: str, total: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0

    def __call__(self) -> None:
        self.done += 1
        self.progress(self.stage, self.done, self.total, "")


@dataclass(frozen=True)
class FitOptions:
    """Options of the joint fit (astrometry, photometry or both).

    Attributes
    ----------
    fit : "both", "astrometry" or "photometry"
        What to fit (default both). Photometry alone still associates the measurements
        (and refines the initial WCS per CCD while matching); its astrometry is that
        association's per-CCD polynomial, not a joint fit.
    model : "auto", "simple" or "constrained"
        One polynomial per visit × detector, or per-detector ∘ per-visit polynomials (SCAMP's
        default ``STABILITY_TYPE INSTRUMENT``). "auto" (default): constrained when there are
        several visits and every visit has the same detectors, else simple. A SExtractor
        catalog has a few dozen stars per CCD: a free cubic per CCD overfits them (measured on
        the SExtractor end-to-end case: 83 mas visit-to-visit scatter simple, 19 mas constrained).
    degree : int
        Polynomial degree of the simple model, and of the per-detector part of the constrained one.
    visit_degree : int
        Degree of the per-visit part of the constrained model.
    star_params : 2 or 5
        2: every fitted star has a position; reference stars move with their catalog motion.
        5: stars whose reference has no motion (or no reference) also fit proper motion and
        parallax, when they have ≥ 3 measurements over ≥ 1 year.
    clip_sigma : float
        Measurements whose whitened residual exceeds this many times their CCD's robust
        scale are clipped, worst first, then the fit is redone; measurements the final
        solution explains are restored (see :mod:`jointcal_ap.fit.clipping`).
    max_clip_rounds, max_iterations : int
    max_clip_fraction : float
        A CCD that loses more than this fraction of its measurements to clipping is named in
        a warning and in the fit report (default 0.1).
    ref_error_floor_mas : float
        Added in quadrature to reference-star position errors (and used alone where the
        catalog gives none).
    systematic_mas : float
        Added in quadrature to every measurement's error.
    match_radius_arcsec, search_radius_arcsec, link_radius_arcsec : float, optional
        See :func:`jointcal_ap.fit.crossmatch.match_references`. None (default): scaled to the
        pixel scale of the initial WCS (:func:`jointcal_ap.fit.crossmatch.default_radii`:
        search ``max(90", 15 px)``, match and link ``max(1", 1 px)``).
    reference_visit : int
        Index of the visit whose mapping is fixed in the constrained model.
    ref_epoch : float, optional
        None (default): reference stars are moved to **each visit's own epoch** (and seen
        from the Earth). A Julian year: every reference star is taken at that one epoch, as
        with a catalog pre-moved to the mean epoch for SCAMP. Only for comparisons.
    photometry : PhotometryOptions
        The photometric model (see :mod:`jointcal_ap.fit.photometry`), including the colour
        transformation from the reference band to the exposures' band.
    ref_mag, ref_mag_error : str, optional
        Refcat columns of the reference magnitude and its error. Default: ``ref_mag`` if the
        refcat has it, else its first ``*mag`` column; the error defaults to ``<ref_mag>_error``
        (missing errors count as 0, so set ``photometry.ref_error_floor``).
    ref_colour : str, optional
        The reference colour for the transformation / colour term: a column (``b_v``) or a
        difference of two (``phot_bp_mean_mag-phot_rp_mean_mag``). Default: a ``colour``
        column if there is one.
    """

    model: str = "auto"
    degree: int = 3
    visit_degree: int = 1
    star_params: int = 2
    clip_sigma: float = 5.0
    max_clip_rounds: int = 20
    max_iterations: int = 20
    max_clip_fraction: float = 0.1
    ref_error_floor_mas: float = 0.0
    systematic_mas: float = 0.0
    match_radius_arcsec: float | None = None
    search_radius_arcsec: float | None = None
    link_radius_arcsec: float | None = None
    reference_visit: int = 0
    ref_epoch: float | None = None
    fit: str = "both"
    photometry: PhotometryOptions = field(default_factory=PhotometryOptions)
    ref_mag: str | None = None
    ref_mag_error: str | None = None
    ref_colour: str | None = None

    def __post_init__(self) -> None:
        if self.fit not in ("both", "astrometry", "photometry"):
            raise ValueError(f"fit must be 'both', 'astrometry' or 'photometry', got {self.fit!r}")
        if isinstance(self.photometry, dict):  # from JSON / TOML
            object.__setattr__(self, "photometry", PhotometryOptions(**self.photometry))
        if self.model not in ("auto", "simple", "constrained"):
            raise ValueError(f"model must be 'auto', 'simple' or 'constrained', got {self.model!r}")
        if self.star_params not in (2, 5):
            raise ValueError(f"star_params must be 2 or 5, got {self.star_params!r}")
        if not 1 <= self.degree <= 9 or not 1 <= self.visit_degree <= 9:
            raise ValueError("polynomial degrees must be between 1 and 9")


@dataclass
class FitResult:
    """The fitted model and everything measured about the fit."""

    model: Any
    params: np.ndarray
    theta: np.ndarray
    options: FitOptions
    data: FitInput = field(repr=False)
    association: Association = field(repr=False)
    fit_epoch: float = 0.0
    chi2: float = 0.0
    dof: int = 0
    n_measurements: int = 0
    n_clipped: int = 0
    clip_rounds: list[int] = field(default_factory=list)
    #: measurements clipped in a round and restored because the final solution explains them
    n_restored: int = 0
    #: per-CCD clipping counts, robust scales and the CCDs over ``options.max_clip_fraction``
    clipping: ClipSummary | None = field(default=None, repr=False)
    #: what the user must know about this fit (also logged, and listed in the fit report)
    warnings: list[str] = field(default_factory=list)
    stats: SolveStats = field(default_factory=SolveStats)
    #: rows of ``data.measurements`` that entered the fit; the per-measurement arrays below align with it
    measurement_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    residual_mas: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    residual_white: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    ref_residual_mas: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    meas_cov_mas: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 2)), repr=False)
    star_e0: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    star_ea: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    star_ed: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    #: the photometric fit (None when only astrometry was fitted); its rows are ``photometry_rows``
    photometry: PhotometryResult | None = field(default=None, repr=False)
    photometry_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    #: (visit, detector) of CCDs left out of the photometric fit (too few measurements)
    photometry_skipped: list[tuple[int, int]] = field(default_factory=list)
    #: where the absolute photometric scale comes from (refcat column, system, transformation)
    photometry_reference: dict[str, Any] = field(default_factory=dict)

    def ccd_photometry(self) -> list:
        """Per CCD (``data.ccds`` order): its :class:`~jointcal_ap.calibration.PhotometricCalibration`,
        or None (photometry not fitted, or the CCD left out of it)."""
        ph = self.photometry
        if ph is None:
            return [None] * len(self.data.ccds)
        visit_of_ccd = self.data.visit_index_of_ccd()
        detectors = list(self.data.detectors())
        out = []
        for i, c in enumerate(self.data.ccds):
            v, d = int(visit_of_ccd[i]), detectors.index(c.detector)
            out.append(ph.calibration(v, d) if np.all(np.isfinite(ph.coefficients[v, d])) else None)
        return out

    @property
    def fitted_astrometry(self) -> bool:
        return self.options.fit in ("both", "astrometry")

    @property
    def chi2_per_dof(self) -> float:
        return self.chi2 / max(self.dof, 1)

    def tangent_plane(self, ccd: int, x, y) -> np.ndarray:
        """Fitted (ξ, η) in mas on the CCD's visit tangent plane, for 1-based pixels."""
        geometry = self.association.geometry[ccd]
        u, v = geometry.normalise(np.asarray(x, float), np.asarray(y, float))
        c = self.data.ccds[ccd]
        visit = [v_.visit for v_ in self.data.visits].index(c.visit)
        det = int(np.searchsorted(self.data.detectors(), c.detector))
        local = self.model.local_index(np.array([ccd]), np.array([visit]), np.array([det]))[0]
        lp = np.asarray(self.params)[local][None, :].repeat(np.size(u), 0)
        return self.model.evaluate(lp, np.atleast_1d(u), np.atleast_1d(v), np)

    def pixel_to_sky(self, ccd: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Fitted (ra, dec) in degrees of 1-based pixel positions on CCD ``ccd`` (index into data.ccds)."""
        c = self.data.ccds[ccd]
        visit = next(v for v in self.data.visits if v.visit == c.visit)
        return inverse_gnomonic(self.tangent_plane(ccd, x, y), visit.ra, visit.dec)

    def star_positions(self, epoch: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fitted star positions (degrees) at ``epoch`` (default: the fit epoch), barycentric."""
        dt = 0.0 if epoch is None else epoch - self.fit_epoch
        off = self.theta[:, 0:2] + self.theta[:, 2:4] * dt
        vec = self.star_e0 + (off[:, 0:1] * self.star_ea + off[:, 1:2] * self.star_ed) / MAS_PER_RAD
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        return np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360, np.degrees(np.arcsin(vec[:, 2]))

    def summary(self) -> dict[str, Any]:
        """Headline numbers (the JSON report has more)."""
        act = self.active
        rms = np.sqrt(np.mean(np.sum(self.residual_mas[act] ** 2, axis=1) / 2)) if act.any() else np.nan
        ref = np.isfinite(self.ref_residual_mas[:, 0]) & act
        ref_rms = np.sqrt(np.mean(np.sum(self.ref_residual_mas[ref] ** 2, axis=1) / 2)) if ref.any() else np.nan
        return {
            "model": self.options.model, "chi2": self.chi2, "dof": self.dof,
            "chi2_per_dof": self.chi2_per_dof, "n_measurements": int(act.sum()),
            "n_clipped": self.n_clipped, "n_stars": int(self.association.n_stars),
            "n_reference_stars": int((self.association.star_ref >= 0).sum()),
            "internal_rms_mas": float(rms), "reference_rms_mas": float(ref_rms),
            "iterations": len(self.stats.chi2_history) - 1, "stop_reason": self.stats.reason,
            "seconds": self.seconds,
        }


class JointFit:
    """Configure a joint astrometric fit of many visits × detectors; :meth:`run` does it.

    Parameters
    ----------
    data : FitInput
        From :func:`jointcal_ap.fit.io.read_inputs`.
    refcat : Refcat
        Reference catalog (:func:`jointcal_ap.refcat.open_refcat`); stars are loaded at each
        visit's own epoch.
    options : FitOptions
    """

    def __init__(self, data: FitInput, refcat, options: FitOptions | None = None):
        self.data = data
        self.refcat = refcat
        self.options = options or FitOptions()
        if self.options.model == "auto":
            detectors = {}
            for c in data.ccds:
                detectors.setdefault(c.visit, set()).add(c.detector)
            same = len(detectors) > 1 and len({frozenset(d) for d in detectors.values()}) == 1
            self.options = replace(self.options, model="constrained" if same else "simple")
        self._ref_codes: dict | None = None
        self._progress = lambda *args: None
        if len(data.measurements) == 0:
            raise FitError("no measurements in the input")

    # ------------------------------------------------------------------ problem set-up
    def _model(self, association: Association):
        data, opt = self.data, self.options
        n_ccds = len(data.ccds)
        if opt.model == "simple":
            return SimpleModel(opt.degree, n_ccds)
        ref_visit = opt.reference_visit
        visit_of_ccd = data.visit_index_of_ccd()
        ccds = np.flatnonzero(visit_of_ccd == ref_visit)
        # the field radius in mas: |centre| + |∂/∂u| + |∂/∂v| of each CCD of the reference visit
        poly = association.per_ccd_poly[ccds]
        extent = float(np.max(np.abs(poly[:, :, 0]) + np.abs(poly[:, :, 1]) + np.abs(poly[:, :, 2])))
        # a power of two: the scale is part of the compiled code, so nearby fields share it
        scale = float(2.0 ** np.ceil(np.log2(max(extent, 1.0))))
        return ConstrainedModel(opt.degree, opt.visit_degree, len(data.detectors()), len(data.visits), scale)

    def _problem(self, association: Association, model) -> tuple[Problem, dict[str, np.ndarray]]:
        from jointcal_ap.refcat.epoch import earth_barycentric_position

        data, opt = self.data, self.options
        meas = data.measurements
        rows = np.flatnonzero(association.meas_star >= 0)
        n_stars = association.n_stars
        index = index_dtype(len(rows), n_stars, len(data.ccds))
        star = association.meas_star[rows].astype(index)
        visit_of_ccd = data.visit_index_of_ccd()
        detectors = data.detectors()
        det_of_ccd = np.searchsorted(detectors, [c.detector for c in data.ccds])
        ccd = meas.ccd_index[rows].astype(index)
        visit = visit_of_ccd[ccd]
        epochs = np.array([v.epoch for v in data.visits])
        fit_epoch = float(np.mean(epochs)) if opt.ref_epoch is None else float(opt.ref_epoch)

        # Star frames: reference stars at the fit epoch (barycentric), others where first seen.
        star_ra, star_dec = association.star_ra.copy(), association.star_dec.copy()
        prior_value = np.zeros((n_stars, 5))
        prior_weight = np.zeros((n_stars, 5, 5))
        has_motion = np.zeros(n_stars, bool)
        is_ref = association.star_ref >= 0
        ref_cov5 = ref_motion = None
        if is_ref.any():
            ref, where, found = self._reference_rows(association, epoch=fit_epoch)
            if len(found) != int(is_ref.sum()):
                raise FitError("reference stars matched at the visit epochs are missing at the fit epoch")

            def col(name, default=np.nan):
                if name in ref.column_names:
                    return to_numpy(ref.column(name)).astype(float)[where]
                return np.full(len(where), default)

            star_ra[is_ref], star_dec[is_ref] = col("ra"), col("dec")
            floor2 = opt.ref_error_floor_mas ** 2
            era, edec, rho = col("ra_error"), col("dec_error"), col("ra_dec_corr", 0.0)
            no_err = ~(np.isfinite(era) & np.isfinite(edec))
            if no_err.any() and floor2 == 0:
                raise FitError(f"{int(no_err.sum())} reference stars have no position errors; set "
                               f"ref_error_floor_mas (e.g. 5) to use them")
            era, edec = np.where(no_err, 0, era), np.where(no_err, 0, edec)
            rho = np.where(np.isfinite(rho), rho, 0.0)
            cov = np.zeros((len(where), 2, 2))
            cov[:, 0, 0] = era**2 + floor2
            cov[:, 1, 1] = edec**2 + floor2
            cov[:, 0, 1] = cov[:, 1, 0] = rho * era * edec
            idx = np.flatnonzero(is_ref)
            prior_weight[idx, :2, :2] = np.linalg.inv(cov)
            propagated = to_numpy(ref.column("propagated")) if "propagated" in ref.column_names else np.zeros(ref.num_rows, bool)
            has_motion[idx] = propagated[where] & np.isfinite(col("pmra"))
            if opt.star_params == 5 and "pmra_error" in ref.column_names:
                from jointcal_ap.refcat.epoch import covariance_from_errors
                from jointcal_ap.refcat.schema import CORRELATION_NAMES

                errors = {f"{p}_error": col(f"{p}_error") for p in ("ra", "dec", "parallax", "pmra", "pmdec")}
                corrs = {c: col(c, 0.0) for c in CORRELATION_NAMES if c in ref.column_names}
                ref_cov5 = covariance_from_errors(errors, corrs)
                ref_motion = np.stack([col("pmra"), col("pmdec"), col("parallax", 0.0)], 1)
                ref_cov5[~has_motion[idx]] = np.nan
            if opt.ref_epoch is not None:
                has_motion[:] = False  # frozen at one epoch: reference stars are static

        e0 = unit_vectors(star_ra, star_dec)
        ea = np.stack([-np.sin(np.radians(star_ra)), np.cos(np.radians(star_ra)), np.zeros(n_stars)], 1)
        ed = np.cross(e0, ea)
        frames = [tangent_frame(v.ra, v.dec) for v in data.visits]
        v0 = np.array([f[0] for f in frames])
        va = np.array([f[1] for f in frames])
        vd = np.array([f[2] for f in frames])

        dt = epochs[visit] - fit_epoch
        earth = np.atleast_2d(earth_barycentric_position(epochs))
        b = earth[visit]
        plx_factor = -np.stack([np.sum(b * ea[star], 1), np.sum(b * ed[star], 1)], 1)

        # Reference motion, exactly as the loader computed it at each visit's epoch.
        extra = np.zeros((len(rows), 2))
        moving = has_motion[star]
        if moving.any():
            mr = rows[moving]
            ra_v, dec_v = np.empty(len(mr)), np.empty(len(mr))
            for vi, sel in group_rows(visit[moving], len(data.visits)):
                vobj = data.visits[vi]
                ra_v[sel], dec_v[sel] = inverse_gnomonic(association.meas_ref_tp[mr[sel]], vobj.ra, vobj.dec)
            w = unit_vectors(ra_v, dec_v)
            s = star[moving]
            den = np.sum(w * e0[s], 1)
            extra[moving, 0] = np.sum(w * ea[s], 1) / den * MAS_PER_RAD
            extra[moving, 1] = np.sum(w * ed[s], 1) / den * MAS_PER_RAD

        star_free = np.zeros((n_stars, 5), bool)
        star_free[:, :2] = True
        theta0 = np.zeros((n_stars, 5))
        if opt.star_params == 5:
            n_meas = np.bincount(star, minlength=n_stars)
            lo = np.full(n_stars, np.inf)
            hi = np.full(n_stars, -np.inf)
            np.minimum.at(lo, star, epochs[visit])
            np.maximum.at(hi, star, epochs[visit])
            span = hi - lo
            five = ~has_motion & (n_meas >= 3) & (span >= 1.0)
            star_free[five, 2:] = True
            weak = np.diag([0, 0, 1e-8, 1e-8, 1e-6])  # (1e4 mas/yr)^-2, (1e3 mas)^-2: regularisation only
            prior_weight[five] += weak
            if ref_cov5 is not None:
                # Reference stars with a full astrometric solution: fit their motion too, with the
                # catalog's propagated 5x5 covariance as the prior (rigorous over long baselines).
                good = np.all(np.isfinite(ref_cov5.reshape(len(ref_cov5), -1)), axis=1)
                idx = np.flatnonzero(is_ref)[good]
                cov5 = ref_cov5[good].copy()
                cov5[:, 0, 0] += opt.ref_error_floor_mas ** 2
                cov5[:, 1, 1] += opt.ref_error_floor_mas ** 2
                prior_weight[idx] = np.linalg.inv(cov5)
                prior_value[idx, 2:] = ref_motion[good]
                theta0[idx] = prior_value[idx]
                star_free[idx] = True
                in_idx = np.isin(star, idx)
                linear = theta0[star[in_idx], 2:4] * dt[in_idx, None] + theta0[star[in_idx], 4:5] * plx_factor[in_idx]
                extra[in_idx] -= linear

        geometry = np.array([(g.cx, g.cy, g.scale) for g in association.geometry])
        cx, cy, scale = (geometry[ccd, k] for k in range(3))
        u, v = (meas.x[rows] - cx) / scale, (meas.y[rows] - cy) / scale
        del cx, cy
        # filled in place (nested np.stack made three times its size in copies: the set-up's peak)
        cov_px = np.empty((len(rows), 2, 2))
        cov_px[:, 0, 0] = meas.cov_xx[rows]
        cov_px[:, 0, 1] = meas.cov_xy[rows]
        cov_px[:, 1, 0] = cov_px[:, 0, 1]
        cov_px[:, 1, 1] = meas.cov_yy[rows]
        slots = model.slot_starts(visit_of_ccd, det_of_ccd)
        params, fixed = model.initial(association.per_ccd_poly, visit_of_ccd, det_of_ccd, opt.reference_visit)
        problem = Problem(ccd=ccd, u=u, v=v, pix_scale=scale, cov_px=cov_px, slots=slots, star=star, visit=visit, dt=dt,
                          plx_factor=plx_factor, extra=extra, e0=e0, ea=ea, ed=ed, v0=v0, va=va, vd=vd,
                          prior_value=prior_value, prior_weight=prior_weight, star_free=star_free,
                          model_fixed=fixed, systematic_mas=opt.systematic_mas)
        aux = {"rows": rows, "ccd": ccd, "params": params, "fit_epoch": np.array(fit_epoch), "is_ref_star": is_ref,
               "theta0": theta0}
        return problem, aux

    # ------------------------------------------------------------------ run
    def run(self, progress=None) -> FitResult:
        """Associate, fit with outlier clipping, and return a :class:`FitResult`.

        ``progress``: optional callable ``(stage, done, total, info)`` told about every
        visit loaded and matched, every solver iteration and the photometry (e.g. a
        :class:`jointcal_ap.fit.progress.ProgressReporter`).

        BLAS runs single-threaded inside: the fit's dense matrices are small (a few hundred to
        a few thousand rows), where threads gain little, and a multi-threaded BLAS on a busy
        machine can be a hundred times slower (a 600 × 600 Cholesky measured at 0.64 s instead
        of 3 ms with other processes on the cores). The fit's own threads (one per core for
        the association) are unaffected.
        """
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return self._run(progress)

    def _run(self, progress) -> FitResult:
        opt = self.options
        self._progress = progress or (lambda *args: None)
        self._check_every_ccd_has_measurements()
        incomplete = self._incomplete_visits()
        for text in incomplete:
            log.warning("%s", text)
        n_visits = len(self.data.visits)
        t0 = time.perf_counter()
        pixel_scale = initial_pixel_scale_arcsec(self.data)
        auto = default_radii(pixel_scale)
        radii = [auto[i] if r is None else r for i, r in enumerate(
            (opt.search_radius_arcsec, opt.match_radius_arcsec, opt.link_radius_arcsec))]
        log.info("associate: initial WCS %.3f arcsec/pixel; search radius %.3g\", match %.3g\", link %.3g\"",
                 pixel_scale, *radii)
        loaded = _Counter(self._progress, "load references", n_visits)
        references, self._ref_codes = visit_references(self.refcat, self.data,
                                                       search_radius_arcsec=radii[0],
                                                       ref_epoch=opt.ref_epoch, progress=loaded)
        matched = _Counter(self._progress, "associate", n_visits)
        association = match_references(self.data, references, degree=opt.degree,
                                       search_radius_arcsec=radii[0], match_radius_arcsec=radii[1],
                                       link_radius_arcsec=radii[2],
                                       # with 5 parameters a star needs 3 measurements; a 2-measurement
                                       # star cannot model its own motion and would bias the fit
                                       min_measurements=3 if opt.star_params == 5 else 2,
                                       progress=matched)
        seconds = {"associate": time.perf_counter() - t0}
        log_association(association, self.data)
        if opt.fit == "photometry":
            result = self._association_result(association, seconds)
        else:
            result = self._fit_astrometry(association, seconds)
        if opt.fit in ("both", "photometry"):
            t0 = time.perf_counter()
            self._progress("photometry", 0, 1, "")
            result.photometry, result.photometry_rows = self._fit_photometry(association, result)
            self._progress("photometry", 1, 1, f"chi2/dof {result.photometry.chi2_per_dof:.3f}")
            result.seconds["photometry"] = time.perf_counter() - t0
            ph = result.photometry
            uncalibrated = [(c.visit, c.detector) for c, p in zip(self.data.ccds, result.ccd_photometry(), strict=True)
                            if p is None and (c.visit, c.detector) not in result.photometry_skipped]
            if uncalibrated:
                result.photometry_skipped = [*result.photometry_skipped, *uncalibrated]
                log.warning("photometry: %d CCD(s) (visit, detector) have no photometric calibration (no "
                            "measurement of a star tied to the others): %s", len(uncalibrated), uncalibrated[:10])
            log.info("photometry: χ²/dof = %.3f over %d measurements of %d stars (%d reference)",
                     ph.chi2_per_dof, ph.n_measurements, ph.n_stars, ph.n_reference_stars)
        result.warnings = [*incomplete, *result.warnings]
        return result

    def _association_result(self, association: Association, seconds: dict[str, float]) -> FitResult:
        """A result whose astrometry is the association's per-CCD polynomials (photometry-only fits)."""
        data = self.data
        model = SimpleModel(association.degree, len(data.ccds))
        epochs = np.array([v.epoch for v in data.visits])
        return FitResult(model=model, params=association.per_ccd_poly.reshape(-1).copy(),
                         theta=np.zeros((association.n_stars, 5)), options=self.options, data=data,
                         association=association, fit_epoch=float(np.mean(epochs)), chi2=float("nan"),
                         seconds=seconds)

    def _reference_rows(self, association: Association, **query) -> tuple[Any, np.ndarray, np.ndarray]:
        """:func:`jointcal_ap.fit.references.reference_rows` on this fit's refcat."""
        return reference_rows(self.refcat, association, self._ref_codes, **query)

    def _reference_info(self, mag: str, err: str | None, colour: str | None) -> dict[str, Any]:
        """What the absolute scale comes from: column, error, colour, photometric system, transformation.

        A Vega-based reference band (Gaia G, Hipparcos Hp) with no offset in the colour
        transformation gives Vega, not AB, magnitudes: warn, since nJy assume AB.
        """
        field_ = self.refcat.schema.field(mag)
        system = (field_.metadata or {}).get(b"system", b"").decode()
        terms = tuple(self.options.photometry.ref_colour_terms)
        info = {"column": mag, "error_column": err, "colour": colour, "system": system,
                "colour_terms": list(terms)}
        if "vega" in system.lower() and (not terms or terms[0] == 0.0):
            log.warning("photometry: the reference %r is Vega-based (%s) and the colour transformation has no "
                        "offset (C0 = 0): the calibration is on that Vega scale, not AB; put the band's "
                        "AB - Vega offset in C0 (--colour-transform)", mag, system)
            info["warning"] = "Vega-based reference with no AB offset: calibrated fluxes are not AB nJy"
        return info

    def _reference_photometry(self, association: Association) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per star: reference magnitude, its error and the reference colour (NaN where none)."""
        opt, cols = self.options, self.refcat.columns
        mag = opt.ref_mag or ("ref_mag" if "ref_mag" in cols else next(
            (c for c in cols if c.endswith("mag") and not c.endswith("error")), None))
        if mag is None or mag not in cols:
            raise FitError(f"{self.refcat.path}: no reference magnitude column ({mag!r}); it has {cols}. "
                           f"Name one with ref_mag (--ref-mag)")
        err = opt.ref_mag_error or (f"{mag}_error" if f"{mag}_error" in cols else None)
        colour_cols: list[str] = []
        colour = opt.ref_colour or ("colour" if "colour" in cols else None)
        if colour is not None:
            colour_cols = [colour] if colour in cols else colour.split("-")
            missing = [c for c in colour_cols if c not in cols]
            if missing or len(colour_cols) > 2:
                raise FitError(f"ref_colour {colour!r}: expected a column or 'A-B' of two columns of "
                               f"{self.refcat.path} (it has {cols})")
        self._photometry_reference = self._reference_info(mag, err, colour)
        n = association.n_stars
        out_mag, out_err = np.full(n, np.nan), np.full(n, np.nan)
        out_colour = np.full(n, np.nan) if colour_cols else None
        if not (association.star_ref >= 0).any():
            return out_mag, out_err, out_colour
        wanted = list(dict.fromkeys([mag, *([err] if err else []), *colour_cols]))
        table, where, stars = self._reference_rows(association, columns=wanted)

        def col(name):
            return to_numpy(table.column(name)).astype(float)[where]

        out_mag[stars] = col(mag)
        out_err[stars] = col(err) if err else 0.0
        if colour_cols:
            out_colour[stars] = col(colour_cols[0]) - (col(colour_cols[1]) if len(colour_cols) == 2 else 0.0)
        return out_mag, np.where(np.isfinite(out_err), out_err, 0.0), out_colour

    def _fit_photometry(self, association: Association, result: FitResult) -> tuple[PhotometryResult, np.ndarray]:
        data, opt = self.data, self.options
        meas = data.measurements
        rows = np.flatnonzero((association.meas_star >= 0) & (meas.flags == 0))
        ccd = meas.ccd_index[rows]
        if opt.photometry.model == "simple":
            # A CCD with too few stars for its own flat is left out (with a warning, and without a
            # photometric calibration) rather than stopping the whole fit; twice the minimum, so
            # that outlier clipping cannot take a kept CCD below it.
            k = (opt.photometry.flat_degree + 1) * (opt.photometry.flat_degree + 2) // 2
            counts = np.bincount(ccd, minlength=len(data.ccds))
            thin = np.flatnonzero(counts < 2 * (k + 1))  # zero included: no CCD is dropped silently
            if len(thin):
                result.photometry_skipped = [(data.ccds[c].visit, data.ccds[c].detector) for c in thin]
                log.warning("photometry: %d CCD(s) with fewer than %d measurements left out (no flux "
                            "calibration for them): %s", len(thin), 2 * (k + 1), result.photometry_skipped[:10])
                keep = ~np.isin(ccd, thin)
                rows, ccd = rows[keep], ccd[keep]
        visit_of_ccd = data.visit_index_of_ccd()
        detectors = data.detectors()
        det_of_ccd = np.searchsorted(detectors, [c.detector for c in data.ccds])
        naxis = np.zeros((len(detectors), 2), dtype=np.int64)
        naxis[det_of_ccd] = [(c.naxis1, c.naxis2) for c in data.ccds]
        sizes = np.array([(c.naxis1, c.naxis2) for c in data.ccds])
        differ = np.flatnonzero(np.any(sizes != naxis[det_of_ccd], axis=1))
        if len(differ):  # the flats live on each detector's pixel grid: it must be one grid
            c = data.ccds[differ[0]]
            raise FitError(f"detector {c.detector} is {c.naxis1}x{c.naxis2} pixels in visit {c.visit} but "
                           f"{naxis[det_of_ccd[differ[0]]][0]}x{naxis[det_of_ccd[differ[0]]][1]} elsewhere: "
                           "the photometric flats need one size per detector")
        ref_mag, ref_err, colour = self._reference_photometry(association)
        result.photometry_reference = self._photometry_reference
        focal_x = focal_y = None
        if opt.photometry.model == "constrained" and opt.photometry.visit_degree > 0:
            focal = np.empty((len(rows), 2))
            for c, sel in group_rows(ccd, len(data.ccds)):
                focal[sel] = result.tangent_plane(int(c), meas.x[rows[sel]], meas.y[rows[sel]])
            focal_x, focal_y = focal[:, 0], focal[:, 1]
        pdata = PhotometryData(star=association.meas_star[rows], visit=visit_of_ccd[ccd], detector=det_of_ccd[ccd],
                               x=meas.x[rows], y=meas.y[rows], flux=meas.flux[rows], flux_err=meas.flux_err[rows],
                               naxis=naxis, ref_mag=ref_mag, ref_mag_err=ref_err, colour=colour,
                               focal_x=focal_x, focal_y=focal_y, n_visits=len(data.visits))
        return fit_photometry(pdata, opt.photometry), rows

    def _fit_astrometry(self, association: Association, seconds: dict[str, float]) -> FitResult:
        opt = self.options
        model = self._model(association)
        t0 = time.perf_counter()
        problem, aux = self._problem(association, model)
        self._check_degenerate(problem, association)
        fns = FitProblem(model, problem)
        seconds["setup"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        params = np.asarray(aux["params"])
        theta = np.asarray(aux["theta0"])
        act = np.ones(problem.n_measurements, dtype=bool)
        active = fns.active()
        stats = SolveStats()
        clip_rounds: list[int] = []
        n_steps = [0]

        def step_done(iteration, chi2):
            n_steps[0] += 1
            self._progress("astrometry", n_steps[0], None, f"chi2/measurement {chi2 / max(1, int(act.sum())):.4g}"
                           f"{f', clip round {len(clip_rounds)}' if clip_rounds else ''}")

        ccd = aux["ccd"]  # (the problem's own is released by FitProblem)
        star = problem.star  # association.meas_star of the rows fitted
        n_ccd = len(self.data.ccds)
        n_restored = restore_passes = 0
        # kept measurements a star needs to check them: two degrees of freedom beyond its parameters
        need = np.where(aux["is_ref_star"], 1, (problem.star_free.sum(axis=1) + 3) // 2)

        def unverifiable(act):  # stars that lost measurements and can no longer be checked
            lost = np.bincount(star[~act], minlength=len(need)) > 0
            return undetermined(star, act, need) & lost[star]
        _round = 0
        final = False  # the solve must converge fully (no clip_rtol): the last round, or a check
        while True:
            white = fns.whitener(params)
            last = final or _round == opt.max_clip_rounds
            params, theta, stats = gauss_newton(fns, params, theta, white, active,
                                                max_iter=opt.max_iterations, stats=stats, progress=step_done,
                                                clip_rtol=None if last else CLIP_RTOL)
            r = fns.residuals(params, theta, white, fns.active())  # clipped ones too (to restore)
            dist = np.sqrt(np.sum(r * r, axis=1))
            scale = ccd_scales(r, ccd, act, n_ccd)
            if _round == opt.max_clip_rounds:
                break
            bad = select_outliers(dist, ccd, star, act, opt.clip_sigma, scale)
            if bad.any():
                act = act & ~bad
                bad |= unverifiable(act)
                clip_rounds.append(int(bad.sum()))
                act = act & ~bad
            else:  # nothing more to clip: put back what the solution explains, once or twice
                back = select_restorable(dist, ccd, act, opt.clip_sigma, scale)
                if not back.any() or restore_passes == 2:
                    back[:] = False
                else:
                    back &= ~unverifiable(act | back)
                if not back.any():
                    if stats.converged:
                        break
                    # stopped on CLIP_RTOL and nothing changes: converge fully, then look again
                    final = True
                    continue
                restore_passes += 1
                n_restored += int(back.sum())
                act = act | back
            final = False
            _round += 1
            active = fns.active(act)
        clipping = clip_summary(ccd, act, n_ccd, scale, opt.max_clip_fraction)
        warnings = []
        for c in clipping.over:
            cc = self.data.ccds[c]
            warnings.append(f"clipping removed {clipping.n_clipped[c]} of {clipping.n_measurements[c]} measurements "
                            f"({100 * clipping.fraction[c]:.0f} %, more than {100 * opt.max_clip_fraction:.0f} %) on "
                            f"visit {cc.visit}, detector {cc.detector}: its errors are underestimated, its initial "
                            f"WCS is poor, or its data are damaged (robust scale of its residuals "
                            f"{clipping.scale[c]:.2f})")
            log.warning("%s", warnings[-1])
        seconds["solve"] = time.perf_counter() - t0
        self._check_after_clipping(aux["rows"], act)

        white = fns.whitener(params)
        r_white = fns.residuals(params, theta, white, fns.active())
        chi2 = float(np.sum(r_white[act] ** 2) + np.sum(fns.prior_chi2(theta)[aux["is_ref_star"]]))
        n_free = int((~problem.model_fixed).sum() + problem.star_free.sum())
        n_prior = int(2 * aux["is_ref_star"].sum() + 3 * (problem.star_free[aux["is_ref_star"], 2].sum()))
        dof = 2 * int(act.sum()) + n_prior - n_free
        if dof <= 0:
            raise FitError(f"{n_free} free parameters but only {2 * int(act.sum()) + n_prior} constraints "
                           f"({int(act.sum())} measurements kept): the fit is not determined; lower --degree "
                           f"or use --model constrained", {"dof": dof, "n_clipped": int((~act).sum())})
        # residuals in mas (model − star prediction), and against the reference at each visit epoch
        cov = fns.meas_cov(params)
        raw = fns.raw_residuals(params, theta)
        rows = aux["rows"]
        data = self.data
        ref_res = np.full((len(rows), 2), np.nan)
        ref_tp = association.meas_ref_tp[rows]
        has = np.isfinite(ref_tp[:, 0]) & (association.star_ref[star] >= 0)
        if has.any():
            result_tmp = FitResult(model, np.asarray(params), np.asarray(theta), opt, data, association)
            with_ref = np.flatnonzero(has)
            for c, part in group_rows(data.measurements.ccd_index[rows[with_ref]], len(data.ccds)):
                sel = with_ref[part]
                tp = result_tmp.tangent_plane(int(c), data.measurements.x[rows[sel]], data.measurements.y[rows[sel]])
                ref_res[sel] = tp - ref_tp[sel]
        result = FitResult(
            model=model, params=np.asarray(params), theta=np.asarray(theta), options=opt, data=data,
            association=association, fit_epoch=float(aux["fit_epoch"]), chi2=chi2, dof=dof,
            n_measurements=len(rows), n_clipped=int((~act).sum()), clip_rounds=clip_rounds,
            n_restored=n_restored, clipping=clipping, warnings=warnings, stats=stats,
            measurement_rows=rows, residual_mas=raw, residual_white=r_white, active=act,
            ref_residual_mas=ref_res, meas_cov_mas=cov, star_e0=problem.e0, star_ea=problem.ea, star_ed=problem.ed,
            seconds=seconds,
        )
        log.info("fit: χ²/dof = %.3f over %d measurements, %d clipped", result.chi2_per_dof, act.sum(),
                 result.n_clipped)
        return result

    def _incomplete_visits(self) -> list[str]:
        """A warning per exposure that lacks CCDs of detectors other exposures have.

        A FITS-LDAC catalog cut short exactly at the end of an extension is a valid FITS file
        with fewer CCDs, which no reader can tell from a complete one; so is a catalog whose
        SExtractor run skipped a CCD. The fit goes on (an exposure may truly lack a dead CCD),
        but says so, naming the exposure and the detectors it lacks.
        """
        data = self.data
        have: dict[int, set[int]] = {}
        for c in data.ccds:
            have.setdefault(c.visit, set()).add(c.detector)
        every = set().union(*have.values()) if have else set()
        out = []
        for v in data.visits:
            missing = sorted(every - have.get(v.visit, set()))
            if missing:
                out.append(f"{v.name or f'visit {v.visit}'}: no CCD of detector(s) {missing}, which other "
                           f"exposures have ({len(have.get(v.visit, ()))} of {len(every)} detectors): a catalog "
                           f"cut short at the end of an extension reads as a valid file with fewer CCDs; "
                           f"check that this exposure is complete")
        return out

    def _check_every_ccd_has_measurements(self) -> None:
        """A CCD without a single source is refused before any work, naming its file and place.

        It is not skipped: every output (SCAMP ``.head`` blocks, which SWarp pairs with the
        image's extensions by order; the calibration product) must describe every CCD given.
        """
        data = self.data
        counts = np.bincount(data.measurements.ccd_index, minlength=len(data.ccds))
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            return
        visits = {v.visit: v for v in data.visits}
        where = []
        for c in empty:
            ccd = data.ccds[c]
            order = sum(1 for other in data.ccds[:c] if other.visit == ccd.visit)
            name = visits[ccd.visit].name if ccd.visit in visits else ""
            where.append(f"{name or f'visit {ccd.visit}'}: detector {ccd.detector} (CCD {order + 1} of "
                         f"its exposure)")
        raise FitError(f"{'; '.join(where)}: no sources; every CCD given to the fit needs measurements "
                       f"(remove the CCD from the input, e.g. its LDAC_IMHEAD/LDAC_OBJECTS pair, and the "
                       f"matching image extension)", {"empty_ccds": [int(c) for c in empty]})

    def _check_degenerate(self, problem: Problem, association: Association) -> None:
        data, opt = self.data, self.options
        if len(data.visits) < 2 and not (association.star_ref >= 0).any():
            raise FitError("one visit and no reference stars: nothing constrains the fit")
        if not (association.star_ref >= 0).any():
            raise FitError("no reference stars matched: the absolute astrometry is unconstrained")
        k = (opt.degree + 1) * (opt.degree + 2) // 2
        counts = np.bincount(data.measurements.ccd_index[association.meas_star >= 0], minlength=len(data.ccds))
        need = k + 2
        few = np.flatnonzero(counts < need) if opt.model == "simple" else np.zeros(0, int)
        if len(few):
            raise FitError(association_failure(association, data, int(few[0]), int(counts[few[0]]), need,
                                               opt.degree, opt.model), {"ccd_counts": counts.tolist()})

    def _check_after_clipping(self, rows: np.ndarray, act: np.ndarray) -> None:
        """Outlier clipping must leave every CCD with enough measurements for its polynomial."""
        data, opt = self.data, self.options
        ccd = data.measurements.ccd_index[rows]
        counts = np.bincount(ccd[act], minlength=len(data.ccds))
        before = np.bincount(ccd, minlength=len(data.ccds))
        k = (opt.degree + 1) * (opt.degree + 2) // 2
        need = k + 2 if opt.model == "simple" else 1
        few = np.flatnonzero((counts < need) & (before > 0))
        if len(few):
            c = data.ccds[few[0]]
            raise FitError(f"outlier clipping left {counts[few[0]]} of {before[few[0]]} measurements on visit "
                           f"{c.visit}, detector {c.detector} (a degree-{opt.degree} polynomial needs {need}): "
                           f"the initial WCS or the data are too poor for this model; lower --degree, use "
                           f"--model constrained or raise clip_sigma", {"ccd_counts": counts.tolist()})

    def options_dict(self) -> dict[str, Any]:
        return asdict(self.options)
