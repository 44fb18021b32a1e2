"""Image subtraction: Alard–Lupton in both directions, preconvolution, decorrelation, ZOGY.

:func:`subtract` takes a science image and a template **on the same pixel grid** (warp the
template first: :func:`jointcal_ap.diffim.warp.warp_to`, or build it on the science grid:
:func:`jointcal_ap.diffim.template.build_template`) and returns a
:class:`~jointcal_ap.diffim.image.DifferenceImage`.

Alard–Lupton modes (``method="al"``):

``convolve-template`` (default)
    D = I − K ⊗ T − b: the template (usually the sharper, deeper image) is matched to the
    science PSF. PSF of D: the science PSF.
``convolve-science``
    D = (K ⊗ I + b − T) / κ: for a science image sharper than the template; divided by the
    kernel sum κ so that D stays in the science image's units. PSF of D: K ⊗ P_sci / κ.
``auto``
    ``convolve-template`` when the science PSF is at least as broad as the template's
    (FWHM at the detector centre), else ``convolve-science``.
``preconvolve``
    The science image is first correlated with its own PSF (the likelihood image), the
    template matched to that, and the result corrected into a score image (DMTN-179): a
    point source of flux F appears as F·P_S, where P_S is the score's PSF, and detection is
    a plain threshold on it. Works whichever image is sharper (as long as the template's
    PSF is narrower than √2 × the science's).

Decorrelation (``decorrelate=True``, the default) whitens the noise the convolution
correlated (:mod:`.decorrelation`), cell by cell (``cell_px``); the variance plane is
rescaled accordingly (the smooth-variance estimate of DMTN-179 §5) and the PSF becomes
φ ⊗ P cell by cell (a :class:`~jointcal_ap.psf.GridPsf`). We decorrelate by default in every
AL mode, as ip_diffim does: without it the variance plane is right pixel by pixel but PSF
photometry and detection thresholds on a correlated image are not (the pulls' widths in
``docs/diffim.md``).

ZOGY (``method="zogy"``): :func:`jointcal_ap.diffim.zogy.zogy` on the two images.

Pixel coordinates are 1-based. All random draws are elsewhere: this is deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from jointcal_ap.diffim.basis import basis_for_widths
from jointcal_ap.diffim.convolve import VaryingKernel, convolve, fft_workers
from jointcal_ap.diffim.decorrelation import (
    convolve_small,
    decorrelation_kernel,
    score_correction_kernel,
)
from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.fields import GridField, cell_grid
from jointcal_ap.diffim.image import MASK_BITS, DifferenceImage, ImagePlanes, as_planes
from jointcal_ap.diffim.masks import border, grow, unusable
from jointcal_ap.diffim.matching import MatchOptions, solve_kernel
from jointcal_ap.diffim.stars import Stars, search_stars
from jointcal_ap.psf import GridPsf, PsfError, PsfModel, fit_psf

__all__ = ["METHODS", "MODES", "SubtractOptions", "subtract"]

log = logging.getLogger(__name__)

MODES = ("convolve-template", "convolve-science", "auto", "preconvolve")
METHODS = ("al", "zogy")
_NO_DATA = MASK_BITS["NO_DATA"] | MASK_BITS["EDGE"]


@dataclass(frozen=True)
class SubtractOptions:
    """Options of :func:`subtract`.

    Attributes
    ----------
    method : {"al", "zogy"}
    mode : {"convolve-template", "convolve-science", "auto", "preconvolve"}
        Alard–Lupton only (module notes).
    decorrelate : bool
        Whiten the noise the convolution correlated (default True).
    match : MatchOptions
        The kernel solution (:class:`~jointcal_ap.diffim.matching.MatchOptions`).
    cell_px : int
        Cell size for the decorrelation kernels, the difference PSF and ZOGY (default 512).
    star_snr : float
        Minimum S/N of kernel stamps and PSF stars (default 30).
    science_saturation, template_saturation : float or None
        Pixel levels at or above which a pixel counts as saturated (in addition to ``SAT``).
    workers : int or None
        FFT threads (default: the CPUs available).
    """

    method: str = "al"
    mode: str = "convolve-template"
    decorrelate: bool = True
    match: MatchOptions = field(default_factory=MatchOptions)
    cell_px: int = 512
    star_snr: float = 30.0
    science_saturation: float | None = None
    template_saturation: float | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"SubtractOptions.method must be one of {METHODS}, got {self.method!r}")
        if self.mode not in MODES:
            raise ValueError(f"SubtractOptions.mode must be one of {MODES}, got {self.mode!r}")
        if self.cell_px < 32:
            raise ValueError(f"SubtractOptions.cell_px must be >= 32, got {self.cell_px}")
        if not self.star_snr > 0:
            raise ValueError(f"SubtractOptions.star_snr must be > 0, got {self.star_snr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- inputs


@dataclass
class _Prepared:
    planes: ImagePlanes
    bad: np.ndarray                 # unusable pixels
    filled: np.ndarray              # image with unusable pixels set to the background
    var_filled: np.ndarray          # variance with unusable pixels set to the median
    stars: Stars                    # all peaks ≥ 5σ
    psf: PsfModel
    fwhm: float
    background: GridField           # mesh background


def _check(p: ImagePlanes, role: str) -> None:
    where = p.source or role
    if p.image.size == 0:
        raise DiffimError(f"{where}: empty {role} image")
    finite = np.isfinite(p.image)
    if not finite.any():
        raise DiffimError(f"{where}: the {role} image has no finite pixel (all NaN or infinite)")
    if not np.isfinite(p.variance[finite]).any():
        raise DiffimError(f"{where}: the {role} variance has no finite value")


def _prepare(p: ImagePlanes, role: str, saturation: float | None, star_snr: float,
             psf: PsfModel | None) -> _Prepared:
    _check(p, role)
    where = p.source or role
    bad = unusable(p.mask, p.image, p.variance, planes=("BAD", "NO_DATA"))
    if saturation is not None:
        sat = np.isfinite(p.image) & (p.image >= saturation)
        if sat.any():
            p = replace(p, mask=p.mask | np.where(sat, np.int32(MASK_BITS["SAT"]), np.int32(0)))
    if bad.all():
        raise DiffimError(f"{where}: every pixel of the {role} image is masked BAD/NO_DATA or not finite")
    # a template from build_template carries its search (no extra saturation level here)
    search = p.star_search if saturation is None else None
    if search is None:
        search = search_stars(p.image, p.variance, p.mask, bad, saturation=saturation)
    bkg, stars = search.background, search.stars
    filled = p.image
    var_filled = p.variance
    if bad.any():
        filled = np.where(bad, bkg.image(), p.image).astype(np.float32)
        med = np.float32(np.median(_sample(p.variance, ~bad)))
        var_filled = np.where(bad, med, p.variance).astype(np.float32)
    if psf is None:
        psf = p.psf
    if psf is None:
        good = (stars.snr >= star_snr) & stars.isolated & stars.clean
        order = np.argsort(-stars.snr[good])[:400]
        try:
            psf = fit_psf(p.image, p.variance, p.mask, x=stars.x[good][order], y=stars.y[good][order],
                          snr=stars.snr[good][order], background=bkg, where=where)
        except PsfError as exc:
            raise DiffimError(f"{where}: no PSF model and none could be fitted: {exc}") from None
    ny, nx = p.shape
    fwhm = float(psf.fwhm(0.5 * (nx + 1), 0.5 * (ny + 1)))
    return _Prepared(p, bad, filled, var_filled, stars, psf, fwhm, bkg)


def _sample(values: np.ndarray, keep: np.ndarray, target: int = 1 << 20) -> np.ndarray:
    """The kept values, on a regular subgrid of about ``target`` pixels when there are more
    (a fill level for unusable pixels: a median of a million is plenty); all kept if the
    subgrid has none."""
    step = max(1, int(math.sqrt(values.size / target)))
    sub = values[::step, ::step][keep[::step, ::step]]
    return sub if sub.size else values[keep]


def _kernel_stars(template: _Prepared, science: _Prepared, snr: float, max_stamps: int, cell_px: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Bright isolated clean template stars, spread over the detector, brightest first."""
    s = template.stars
    good = (s.snr >= snr) & s.isolated & s.clean
    sat = MASK_BITS["SAT"] | MASK_BITS["BAD"] | MASK_BITS["NO_DATA"] | MASK_BITS["EDGE"]
    if good.any():
        m = science.planes.mask
        r = 6
        iy, ix = s.iy[good], s.ix[good]
        ny, nx = m.shape
        off = np.arange(-r, r + 1)
        rows = np.clip(iy[:, None] + off, 0, ny - 1)[:, :, None]
        cols = np.clip(ix[:, None] + off, 0, nx - 1)[:, None, :]
        clean_sci = ((m[rows, cols] & sat) == 0).all(axis=(1, 2)) & ~science.bad[rows, cols].any(axis=(1, 2))
        idx = np.flatnonzero(good)[clean_sci]
    else:
        idx = np.zeros(0, int)
    ny, nx = template.planes.shape
    xc, yc, xs, ys = cell_grid((ny, nx), max(cell_px // 2, 64))
    n_cells = len(xc) * len(yc)
    per_cell = max(1, math.ceil(max_stamps / n_cells))
    cell = np.searchsorted([sl.stop for sl in ys], s.iy[idx], side="right") * len(xc) \
        + np.searchsorted([sl.stop for sl in xs], s.ix[idx], side="right")
    order = idx[np.lexsort((-s.snr[idx], cell))]
    cell_sorted = np.sort(cell)
    rank = np.arange(len(order)) - np.searchsorted(cell_sorted, cell_sorted, side="left")
    chosen = order[rank < per_cell]
    chosen = chosen[np.argsort(-s.snr[chosen])]
    return s.x[chosen], s.y[chosen]


# --------------------------------------------------------------------------- PSFs on cells


def _cell_centres(shape: tuple[int, int], cell_px: int):
    xc, yc, xs, ys = cell_grid(shape, cell_px)
    return xc, yc, xs, ys


def _psf_grid(psf: PsfModel, xc: np.ndarray, yc: np.ndarray, size: int) -> np.ndarray:
    return np.stack([[psf.kernel_image(float(x), float(y), size) for x in xc] for y in yc])


# --------------------------------------------------------------------------- main


def subtract(science: Any, template: Any, options: SubtractOptions | None = None, *,
             science_psf: PsfModel | None = None, template_psf: PsfModel | None = None) -> DifferenceImage:
    """Subtract a PSF-matched template from a science image on the same pixel grid.

    Parameters
    ----------
    science : Exposure, CalibratedExposure or ImagePlanes
        Image, variance and mask; its ``psf`` is used when set (else one is fitted).
    template : Template, Exposure or ImagePlanes
        On the science's pixel grid, in the same units.
    options : SubtractOptions
    science_psf, template_psf : PsfModel, optional
        Override the inputs' PSFs.

    Returns
    -------
    DifferenceImage

    Raises
    ------
    DiffimError
        Shapes that differ, an image with no finite pixel, no usable kernel stamps; the
        message names the input (its file).
    """
    # the BLAS work here is on small matrices (stamps, PCA, kernels): one thread is fastest, and
    # OpenBLAS' spinning threads cost seconds on a busy machine
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _subtract(science, template, options, science_psf, template_psf)


def _subtract(science, template, options, science_psf, template_psf) -> DifferenceImage:
    opts = options or SubtractOptions()
    sci = as_planes(science, "science")
    tmp = as_planes(template, "template")
    if sci.shape != tmp.shape:
        raise DiffimError(f"{sci.source or 'science'} is {sci.shape[1]} × {sci.shape[0]} pixels but "
                          f"{tmp.source or 'template'} is {tmp.shape[1]} × {tmp.shape[0]}: warp the template "
                          "onto the science grid first (warp_to) or give both a celestial WCS")
    overlap = np.isfinite(tmp.image) & ((tmp.mask & MASK_BITS["NO_DATA"]) == 0)
    if not overlap.any():
        raise DiffimError(f"{tmp.source or 'template'}: the template covers no pixel of "
                          f"{sci.source or 'the science image'} (no overlap)")
    S = _prepare(sci, "science", opts.science_saturation, opts.star_snr, science_psf)
    T = _prepare(tmp, "template", opts.template_saturation, opts.star_snr, template_psf)
    if opts.method == "zogy":
        from jointcal_ap.diffim.zogy import zogy_difference

        diff = zogy_difference(S, T, opts)
    else:
        mode = opts.mode
        if mode == "auto":
            mode = "convolve-template" if S.fwhm >= T.fwhm else "convolve-science"
            log.info("auto mode: science FWHM %.2f px, template %.2f px: %s", S.fwhm, T.fwhm, mode)
        diff = _alard_lupton(S, T, opts, mode)
    from jointcal_ap.diffim.qa import residual_qa

    return diff.with_qa(science_fwhm=S.fwhm, template_fwhm=T.fwhm,
                        **residual_qa(diff, [S.stars, T.stars], fwhm=max(S.fwhm, T.fwhm)))


def _alard_lupton(S: _Prepared, T: _Prepared, opts: SubtractOptions, mode: str) -> DifferenceImage:
    workers = opts.workers or fft_workers()
    ny, nx = S.planes.shape
    shape = (ny, nx)
    where = f"{S.planes.source or 'science'} − {T.planes.source or 'template'}"
    xstar, ystar = _kernel_stars(T, S, opts.star_snr, opts.match.max_stamps, opts.cell_px)
    pre = None
    if mode == "preconvolve":
        pre = S.psf.kernel_image(0.5 * (nx + 1), 0.5 * (ny + 1))
        pre_flip = pre[::-1, ::-1].copy()
        tgt = convolve(S.filled, VaryingKernel.constant(pre_flip), workers=workers)
        tgt_var = convolve(S.var_filled, VaryingKernel.constant(pre_flip ** 2), workers=workers)
        ref, ref_var = T.filled, T.var_filled
        ref_fwhm, tgt_fwhm = T.fwhm, math.sqrt(2.0) * S.fwhm
        ph = pre.shape[0] // 2
        tgt_bad = grow(np.where(S.bad, np.int32(1), np.int32(0)), ph, planes=("BAD",)) != 0
        ref_bad = T.bad
    elif mode == "convolve-template":
        ref, ref_var, tgt, tgt_var = T.filled, T.var_filled, S.filled, S.var_filled
        ref_fwhm, tgt_fwhm, ref_bad, tgt_bad = T.fwhm, S.fwhm, T.bad, S.bad
    else:
        ref, ref_var, tgt, tgt_var = S.filled, S.var_filled, T.filled, T.var_filled
        ref_fwhm, tgt_fwhm, ref_bad, tgt_bad = S.fwhm, T.fwhm, S.bad, T.bad
    mopts = opts.match
    basis = basis_for_widths(ref_fwhm, tgt_fwhm, degrees=mopts.basis_degrees, beta=mopts.basis_beta,
                             half_size=mopts.kernel_half_size)
    sat = MASK_BITS["SAT"]
    usable = ~(ref_bad | tgt_bad) & ((S.planes.mask & sat) == 0) & ((T.planes.mask & sat) == 0)
    sol = solve_kernel(ref, tgt, ref_var, tgt_var, xstar, ystar, basis, usable=usable, options=mopts,
                       where=where)
    kh = basis.half_size
    matched = convolve(ref, sol.kernel, workers=workers)
    bkg = sol.background.image() if sol.background is not None else np.float32(0.0)
    ksum_field = sol.kernel.sums_at
    kappa_c = float(ksum_field([0.5 * (nx + 1)], [0.5 * (ny + 1)])[0])
    # the variance propagated pixel by pixel (replaced by the decorrelated estimate below)
    k2 = sol.kernel.squared(shape) if not opts.decorrelate else None
    if mode == "convolve-science":
        if mopts.constant_kernel_sum:
            kappa = np.float32(kappa_c)
        else:
            from jointcal_ap.diffim.fields import PolynomialField

            terms = sol.kernel.components.sum(axis=(1, 2))
            kappa = PolynomialField.from_terms(shape, mopts.spatial_degree
                                               if len(terms) > 1 else 0, terms).image()
        diff = (matched + bkg - tgt) / kappa
        var = None if k2 is None else (convolve(ref_var, k2, workers=workers) + tgt_var) / (kappa * kappa)
    else:
        diff = tgt - matched - bkg
        var = None if k2 is None or mode == "preconvolve" else tgt_var + convolve(ref_var, k2, workers=workers)
    del matched
    # ---- mask: science + template, the convolved one grown by the kernel, borders invalid
    if mode == "convolve-science":
        conv_mask, other_mask = S.planes.mask, T.planes.mask
    else:
        conv_mask, other_mask = T.planes.mask, S.planes.mask
    conv_mask = conv_mask | np.where(ref_bad, np.int32(MASK_BITS["NO_DATA"]), np.int32(0))
    mask = grow(conv_mask, kh) | other_mask
    if mode == "preconvolve":
        mask = grow(S.planes.mask | np.where(S.bad, np.int32(MASK_BITS["NO_DATA"]), np.int32(0)), ph) \
            | grow(conv_mask, kh)
    edge = kh + (pre.shape[0] // 2 if pre is not None else 0)
    mask |= np.where(border(shape, edge), np.int32(_NO_DATA), np.int32(0))
    mask |= np.where(tgt_bad & ~ref_bad, np.int32(MASK_BITS["NO_DATA"]), np.int32(0))
    kernel_desc = {
        "kernel_type": "alard-lupton", "kernel_size": basis.size,
        "basis_sigmas": tuple(round(s, 4) for s in basis.sigmas), "basis_degrees": basis.degrees,
        "spatial_degree": round(math.sqrt(2 * sol.kernel.n_terms + 0.25) - 1.5),
        "background_degree": (sol.background.degree if sol.background is not None else -1),
        "constant_kernel_sum": bool(mopts.constant_kernel_sum), "cell_px": int(opts.cell_px),
    }
    centre, kmin, kmax = sol.kernel_sum_range(shape)
    qa = {"kernel_sum": centre, "kernel_sum_min": kmin, "kernel_sum_max": kmax,
          "kernel_sum_variation": (kmax - kmin) / centre if centre else float("nan"),
          "stamps_used": sol.n_used, "stamps_rejected": sol.n_rejected}
    # ---- decorrelation (or not) and the difference's PSF, cell by cell
    xc, yc, xs, ys = _cell_centres(shape, opts.cell_px)
    psf_size = S.psf.default_size(0.5 * (nx + 1), 0.5 * (ny + 1))
    out_size = psf_size + 2 * kh + (0 if pre is None else pre.shape[0] - 1)
    out_size = min(out_size, 101) | 1
    psf_s = _psf_grid(S.psf, xc, yc, psf_size)
    kern = np.stack([[sol.kernel.image_at(float(x), float(y)) for x in xc] for y in yc])
    ksum = kern.sum(axis=(2, 3))
    kind = "score" if mode == "preconvolve" else "difference"
    if opts.decorrelate:
        # σ² of the unconvolved (u) and convolved (c) inputs, per cell
        if mode == "convolve-science":
            vu_img, vc_img, u_bad, c_bad = T.planes.variance, S.planes.variance, T.bad, S.bad
        else:
            vu_img, vc_img, u_bad, c_bad = S.planes.variance, T.planes.variance, S.bad, T.bad
        # per cell: φ, Σ(science's net kernel)², Σ(template's net kernel)², the PSF
        phis, w_u, w_c, psfs = [], [], [], []
        for j, sy in enumerate(ys):
            rp, rw, rc, rs = [], [], [], []
            for i, sx in enumerate(xs):
                su = _cell_median(vu_img[sy, sx], u_bad[sy, sx], vu_img, u_bad)
                sc = _cell_median(vc_img[sy, sx], c_bad[sy, sx], vc_img, c_bad)
                K = kern[j, i]
                if mode == "preconvolve":
                    phi = score_correction_kernel(K, pre, su, sc, size=K.shape[0])
                    a = convolve_small(phi, pre[::-1, ::-1])
                    b = convolve_small(phi, K)
                    p = convolve_small(a, psf_s[j, i], out_size)
                    rw.append(float(np.sum(a * a)))
                    rc.append(float(np.sum(b * b)))
                elif mode == "convolve-template":
                    phi = decorrelation_kernel(K, su, sc, size=K.shape[0])
                    b = convolve_small(phi, K)
                    p = convolve_small(phi, psf_s[j, i], out_size)
                    rw.append(float(np.sum(phi * phi)))
                    rc.append(float(np.sum(b * b)))
                else:
                    kap = ksum[j, i]
                    phi = decorrelation_kernel(K, su, sc, size=K.shape[0])
                    b = convolve_small(phi, K) / kap
                    p = convolve_small(b, psf_s[j, i], out_size)
                    rw.append(float(np.sum(b * b)))          # multiplies the science variance
                    rc.append(float(np.sum(phi * phi)) / kap ** 2)  # multiplies the template's
                rp.append(phi)
                rs.append(p)      # not clipped: φ's negative lobes are part of the PSF
            phis.append(rp)
            w_u.append(rw)
            w_c.append(rc)
            psfs.append(rs)
        phis = np.asarray(phis)
        # φ varies little from cell to cell (with the noise levels and the kernel): 0.5 % of its
        # peak is far below what whitening needs (the spectrum stays flat to ~1 %)
        vk = VaryingKernel.from_grid(phis, xc, yc, shape, rtol=5e-3)
        nodata = (mask & MASK_BITS["NO_DATA"]) != 0
        diff = convolve(np.where(nodata, np.float32(0.0), diff), vk, workers=workers)
        # variance: the smooth-variance estimate, Σ(kernel²) × each input's variance plane
        var = S.var_filled * _weight_map(shape, xc, yc, np.asarray(w_u)) \
            + T.var_filled * _weight_map(shape, xc, yc, np.asarray(w_c))
        # NO_DATA grows by φ's effective reach (where |φ| ≥ 1e-3 of its peak), not its full box
        amp = np.abs(phis).max(axis=(0, 1))
        g = np.arange(amp.shape[0]) - amp.shape[0] // 2
        reach = np.maximum(np.abs(g)[:, None], np.abs(g)[None, :])[amp >= 1e-3 * amp.max()]
        mask = grow(mask, int(reach.max()), planes=("NO_DATA",))
        psf: PsfModel = GridPsf(np.asarray(psfs), xc, yc)
    else:
        if mode == "convolve-template":
            psf = S.psf
        else:
            cells = []
            for j in range(len(yc)):
                row = []
                for i in range(len(xc)):
                    base = pre[::-1, ::-1] if mode == "preconvolve" else kern[j, i] / ksum[j, i]
                    row.append(convolve_small(base, psf_s[j, i], out_size))
                cells.append(row)
            psf = GridPsf(np.asarray(cells), xc, yc)
        if mode == "preconvolve":
            var = convolve(S.var_filled, VaryingKernel.constant(pre[::-1, ::-1] ** 2), workers=workers) \
                + convolve(T.var_filled, k2, workers=workers)
    nodata = (mask & MASK_BITS["NO_DATA"]) != 0
    diff = np.where(nodata, np.float32(np.nan), diff).astype(np.float32)
    var = np.where(nodata, np.float32(np.nan), var).astype(np.float32)
    header = S.planes.header.copy()
    return DifferenceImage(image=diff, variance=var, mask=mask.astype(np.int32), psf=psf, kind=kind,
                           method="al", mode=mode, decorrelated=bool(opts.decorrelate), kernel=kernel_desc,
                           qa=qa, header=header, template_inputs=T.planes.inputs or (T.planes.source,),
                           matching_kernel=sol.kernel, source=S.planes.source)


def _weight_map(shape, xc, yc, values: np.ndarray):
    """Per-cell weights as a bilinear map, or their mean when they agree to 1e-3."""
    if np.ptp(values) <= 1e-3 * abs(float(np.mean(values))):
        return np.float32(np.mean(values))
    return GridField(shape, xc, yc, values).image()


def _cell_median(v: np.ndarray, bad: np.ndarray, v_all: np.ndarray, bad_all: np.ndarray) -> float:
    good = v[~bad & np.isfinite(v)]
    if good.size < 16:
        good = v_all[~bad_all & np.isfinite(v_all)]
    return float(np.median(good[::max(1, good.size // 20000)]))

