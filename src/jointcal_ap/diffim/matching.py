"""Alard–Lupton PSF matching on stamps: the spatially varying kernel and differential background.

Given a *reference* image R (the one to be convolved) and a *target* image T, find the
kernel K(x, y) and background b(x, y) that minimise, over stamps centred on bright isolated
stars, ::

    χ² = Σ_stamps Σ_pixels  w · [T − (K ⊗ R) − b]²,      w = 1 / (V_T + q·V_R)

with ``K(x, y) = Σ_i a_i(x, y) B_i`` over an Alard–Lupton basis (:mod:`.basis`) and each
``a_i`` a Legendre polynomial of the detector position (``spatial_degree``; the unit-sum
coefficient ``a_0`` is constant when ``constant_kernel_sum``), and ``b`` a polynomial of
degree ``background_degree``. ``q = Σ B_0²`` approximates the factor by which convolution
shrinks the reference's pixel variance.

Everything is vectorised over stamps: each reference stamp is convolved with every basis
function by one batched FFT; each stamp's normal equations (``M_s``, ``r_s``) come from one
batched matrix product; the spatial fit assembles ``Σ_s E_sᵀ M_s E_s`` where ``E_s`` holds
the spatial polynomial terms at the stamp.

Bad stamps are rejected iteratively: first on each stamp's own (constant-kernel) fit, whose
χ²/dof and kernel sum must not be outliers (``clip_sigma`` robust σ), then on the residual
of the spatial model, until nothing changes (``max_iterations``).

Pixel coordinates are 1-based.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft as sfft

from jointcal_ap.diffim.basis import KernelBasis
from jointcal_ap.diffim.convolve import VaryingKernel, fft_workers
from jointcal_ap.diffim.errors import DiffimError
from jointcal_ap.diffim.fields import PolynomialField, design_matrix, n_poly_terms

__all__ = ["STAMP_STATUS", "KernelSolution", "MatchOptions", "solve_kernel", "stamp_products"]

log = logging.getLogger(__name__)

#: Codes of :attr:`KernelSolution.stamp_status`.
STAMP_STATUS = {"used": 0, "bad_pixels": 1, "own_fit": 2, "spatial_fit": 3, "singular": 4}


@dataclass(frozen=True)
class MatchOptions:
    """Options of the kernel solution.

    Attributes
    ----------
    spatial_degree : int
        Degree of the kernel's spatial variation (default 1, as ip_diffim).
    background_degree : int
        Degree of the differential background (default 1; -1 for none).
    constant_kernel_sum : bool
        The kernel sum (flux ratio) is the same everywhere (default True).
    basis_degrees : tuple of int
        Polynomial degree of each Gaussian of the basis (default (6, 4, 2), HOTPANTS'
        default: 49 functions).
    basis_beta : float
        Ratio of successive Gaussian widths (default 2).
    kernel_half_size : int or None
        Kernel half-width; None: from the PSF widths (:func:`basis_for_widths`).
    stamp_half_size : int or None
        Half-width of the target stamps; None: max(2·FWHM, 6) of the broader PSF.
    max_stamps : int
        At most this many stamps (the first given: pass them brightest first; default 200).
    min_stamps : int
        Fewer usable stamps than this is an error (default 5).
    clip_sigma : float
        Rejection threshold in robust σ (default 4).
    max_iterations : int
        Rejection iterations (default 4).
    max_bad_fraction : float
        A stamp with more masked pixels than this fraction is dropped (default 0.1).
    """

    spatial_degree: int = 1
    background_degree: int = 1
    constant_kernel_sum: bool = True
    basis_degrees: tuple[int, ...] = (6, 4, 2)
    basis_beta: float = 2.0
    kernel_half_size: int | None = None
    stamp_half_size: int | None = None
    max_stamps: int = 200
    min_stamps: int = 5
    clip_sigma: float = 4.0
    max_iterations: int = 4
    max_bad_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.spatial_degree < 0 or self.background_degree < -1:
            raise ValueError("MatchOptions: spatial_degree must be >= 0 and background_degree >= -1")
        if self.min_stamps < 1 or self.max_stamps < self.min_stamps:
            raise ValueError(f"MatchOptions: need 1 <= min_stamps <= max_stamps, got "
                             f"{self.min_stamps}, {self.max_stamps}")
        if not self.clip_sigma > 0 or self.max_iterations < 1:
            raise ValueError("MatchOptions: clip_sigma must be > 0 and max_iterations >= 1")
        object.__setattr__(self, "basis_degrees", tuple(int(d) for d in self.basis_degrees))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KernelSolution:
    """The PSF-matching kernel and differential background, with the stamps' bookkeeping.

    Attributes
    ----------
    kernel : VaryingKernel
        K(x, y): one component per spatial term (``K_p = Σ_i α_ip B_i``).
    background : PolynomialField or None
        b(x, y), in the target's units.
    basis : KernelBasis
    stamp_x, stamp_y : ndarray
        1-based centres of the candidate stamps.
    stamp_status : ndarray of int8
        :data:`STAMP_STATUS` code of each candidate.
    stamp_chi2 : ndarray
        χ²/dof of each stamp under the final spatial model (NaN where not computed).
    stamp_kernel_sum : ndarray
        Kernel sum of each stamp's own fit (NaN where not computed).
    iterations : int
    """

    kernel: VaryingKernel
    background: PolynomialField | None
    basis: KernelBasis
    stamp_x: np.ndarray
    stamp_y: np.ndarray
    stamp_status: np.ndarray
    stamp_chi2: np.ndarray
    stamp_kernel_sum: np.ndarray
    iterations: int
    options: MatchOptions = field(default_factory=MatchOptions)

    @property
    def n_used(self) -> int:
        return int(np.sum(self.stamp_status == 0))

    @property
    def n_rejected(self) -> int:
        return int(np.sum(self.stamp_status != 0))

    def kernel_sum_range(self, shape: tuple[int, int]) -> tuple[float, float, float]:
        """(centre, min, max) of the kernel sum over a 9 × 9 grid of the detector."""
        ny, nx = shape
        gy, gx = np.meshgrid(np.linspace(1, ny, 9), np.linspace(1, nx, 9), indexing="ij")
        sums = self.kernel.sums_at(gx.ravel(), gy.ravel())
        centre = float(self.kernel.sums_at([0.5 * (nx + 1)], [0.5 * (ny + 1)])[0])
        return centre, float(sums.min()), float(sums.max())


def _cutouts(arr: np.ndarray, iy: np.ndarray, ix: np.ndarray, r: int) -> np.ndarray:
    off = np.arange(-r, r + 1)
    return arr[(iy[:, None] + off)[:, :, None], (ix[:, None] + off)[:, None, :]]


def stamp_products(reference: np.ndarray, target: np.ndarray, weight: np.ndarray, basis: KernelBasis, *,
                   chunk: int = 64, workers: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each stamp's normal equations for ``target ≈ Σ_i a_i (B_i ⊗ reference) + c``.

    Parameters
    ----------
    reference : ndarray (n, S + 2h, S + 2h)
        Reference stamps, ``h`` = ``basis.half_size`` larger on each side than the targets.
    target, weight : ndarray (n, S, S)
        Target stamps and pixel weights (0 on unusable pixels, where the stamps must be finite).
    basis : KernelBasis

    Returns
    -------
    M : ndarray (n, N+1, N+1)
        ``Σ w c cᵀ`` over the stamp's pixels, for the N basis images then the constant.
    r : ndarray (n, N+1)
        ``Σ w c t``.
    tt : ndarray (n,)
        ``Σ w t²``.
    npix : ndarray (n,)
        Pixels with weight > 0.
    """
    workers = workers or fft_workers()
    h = basis.half_size
    side = target.shape[-1]
    big = side + 2 * h
    nb = len(basis)
    fshape = (sfft.next_fast_len(big, real=True),) * 2
    bpad = np.zeros((nb, *fshape), np.float32)       # float32 FFTs: ~1e-7, far below the noise
    bpad[:, :basis.size, :basis.size] = basis.images
    bpad = np.roll(bpad, (-h, -h), axis=(1, 2))
    bhat = sfft.rfft2(bpad, workers=workers)
    n = len(target)
    M = np.empty((n, nb + 1, nb + 1))
    r = np.empty((n, nb + 1))
    tt = np.empty(n)
    npix = np.empty(n)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        ref = np.asarray(reference[sl], np.float32)
        tgt = np.asarray(target[sl], float).reshape(len(ref), -1)
        w = np.asarray(weight[sl], float).reshape(len(ref), -1)
        rhat = sfft.rfft2(ref, s=fshape, workers=workers)
        conv = sfft.irfft2(rhat[:, None] * bhat[None], s=fshape, workers=workers)
        design = np.empty((len(ref), nb + 1, side * side))                        # (m, N+1, P)
        design[:, :nb] = conv[:, :, h:h + side, h:h + side].reshape(len(ref), nb, -1)
        design[:, nb] = 1.0
        dw = design * w[:, None, :]
        M[sl] = np.matmul(dw, design.transpose(0, 2, 1))
        r[sl] = np.matmul(dw, tgt[:, :, None])[:, :, 0]
        tt[sl] = np.sum(w * tgt * tgt, axis=1)
        npix[sl] = (w > 0).sum(axis=1)
    return M, r, tt, npix


def _robust_cut(values: np.ndarray, clip: float, *, upper_only: bool = False) -> np.ndarray:
    """True for values within ``clip`` robust σ of the median."""
    v = values[np.isfinite(values)]
    if v.size < 3:
        return np.isfinite(values)
    med = np.median(v)
    sig = 1.4826 * np.median(np.abs(v - med))
    sig = max(sig, 1e-12 * max(abs(med), 1.0))
    dev = values - med
    ok = dev <= clip * sig if upper_only else np.abs(dev) <= clip * sig
    return ok & np.isfinite(values)


def _solve_many(M: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Batched solves of (n, k, k) systems; singular ones fall back to least squares."""
    try:
        return np.linalg.solve(M, r[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return np.array([_solve(M[k], r[k]) for k in range(len(M))])


def _solve(M: np.ndarray, r: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(M, r)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(M, r, rcond=None)[0]


def solve_kernel(reference: np.ndarray, target: np.ndarray, reference_variance: np.ndarray,
                 target_variance: np.ndarray, x: np.ndarray, y: np.ndarray, basis: KernelBasis, *,
                 usable: np.ndarray | None = None, options: MatchOptions | None = None,
                 where: str = "") -> KernelSolution:
    """Fit K(x, y) and b(x, y) so that ``K ⊗ reference + b ≈ target`` at stamps on (x, y).

    Parameters
    ----------
    reference, target : ndarray (ny, nx)
        On the same pixel grid.
    reference_variance, target_variance : ndarray (ny, nx)
    x, y : ndarray
        1-based stamp centres (bright isolated unsaturated stars), brightest first.
    basis : KernelBasis
    usable : ndarray of bool, optional
        False on pixels not to fit (masked in either image).
    options : MatchOptions
    where : str
        Names the inputs in error messages.

    Raises
    ------
    DiffimError
        Fewer than ``options.min_stamps`` usable stamps.
    """
    opts = options or MatchOptions()
    prefix = f"{where}: " if where else ""
    ny, nx = target.shape
    h = basis.half_size
    half = opts.stamp_half_size or max(6, h)
    ix = np.rint(np.asarray(x, float) - 1.0).astype(np.int64)
    iy = np.rint(np.asarray(y, float) - 1.0).astype(np.int64)
    reach = half + h
    inside = (ix >= reach) & (ix < nx - reach) & (iy >= reach) & (iy < ny - reach)
    ix, iy = ix[inside], iy[inside]
    sx, sy = ix + 1.0, iy + 1.0
    n = len(ix)
    status = np.zeros(n, np.int8)
    q = float(np.sum(basis.images[0] ** 2))
    alive = np.arange(n)
    if n:
        # everything on stamps only: no pass over the whole image
        ref_s = _cutouts(reference, iy, ix, reach).astype(np.float32)
        rvar_s = _cutouts(reference_variance, iy, ix, reach)
        tgt_s = _cutouts(target, iy, ix, half).astype(np.float32)
        tvar_s = _cutouts(target_variance, iy, ix, half)
        ok_r = np.isfinite(ref_s) & np.isfinite(rvar_s)
        if usable is not None:
            ok_r &= _cutouts(usable, iy, ix, reach)
        inner = slice(h, h + 2 * half + 1)
        ok_t = ok_r[:, inner, inner] & np.isfinite(tgt_s) & np.isfinite(tvar_s)
        var = tvar_s + q * rvar_s[:, inner, inner]
        with np.errstate(invalid="ignore", divide="ignore"):
            w_s = np.where(ok_t & (var > 0), 1.0 / var, 0.0).astype(np.float32)
        ref_s = np.where(ok_r, ref_s, np.float32(0.0))
        tgt_s = np.where(ok_t, tgt_s, np.float32(0.0))
        bad_t = 1.0 - ok_t.mean(axis=(1, 2))
        bad_r = 1.0 - ok_r.mean(axis=(1, 2))
        status[(bad_t > opts.max_bad_fraction) | (bad_r > 2 * opts.max_bad_fraction)] = STAMP_STATUS["bad_pixels"]
        alive = np.flatnonzero(status == 0)[:opts.max_stamps]
        status[np.flatnonzero(status == 0)[opts.max_stamps:]] = STAMP_STATUS["bad_pixels"]
    if len(alive) < opts.min_stamps:
        raise DiffimError(f"{prefix}no usable stamps for PSF matching: {len(alive)} clean isolated "
                          f"stars inside the image (of {len(np.asarray(x))} candidates), at least "
                          f"{opts.min_stamps} needed")
    M, r, tt, npix = stamp_products(ref_s[alive], tgt_s[alive], w_s[alive], basis)
    nb = len(basis)
    npar_local = nb + 1
    # --- each stamp's own fit: reject χ² and kernel-sum outliers
    own = _solve_many(M, r)
    chi_own = (tt - np.sum(own * r, axis=1)) / np.maximum(npix - npar_local, 1)
    ksum_own = own[:, 0]
    good = _robust_cut(chi_own, opts.clip_sigma, upper_only=True) & _robust_cut(ksum_own, opts.clip_sigma)
    status[alive[~good]] = STAMP_STATUS["own_fit"]
    stamp_ksum = np.full(n, np.nan)
    stamp_ksum[alive] = ksum_own
    # --- spatial fit with iterative rejection
    kdeg, bdeg = opts.spatial_degree, opts.background_degree
    use = good.copy()
    for _ in range(2):     # lower the spatial degrees when too few stamps constrain them
        if use.sum() >= max(opts.min_stamps, 2 * n_poly_terms(kdeg)) or kdeg == 0:
            break
        kdeg = max(kdeg - 1, 0)
    while bdeg > 0 and use.sum() < 2 * n_poly_terms(bdeg):
        bdeg -= 1
    if (kdeg, bdeg) != (opts.spatial_degree, max(opts.background_degree, 0)) and opts.background_degree >= 0:
        log.warning("%sonly %d stamps: spatial kernel degree %d, background degree %d", prefix,
                    int(use.sum()), kdeg, bdeg)
    nk = n_poly_terms(kdeg)
    nbg = n_poly_terms(bdeg) if bdeg >= 0 else 0
    P = design_matrix((ny, nx), kdeg, sx[alive], sy[alive])                   # (m, nk)
    Pb = design_matrix((ny, nx), max(bdeg, 0), sx[alive], sy[alive])[:, :nbg]
    sizes = [1 if (i == 0 and opts.constant_kernel_sum) else nk for i in range(nb)] + [nbg]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    npar = int(offsets[-1])
    E = np.zeros((len(alive), npar_local, npar))
    for i in range(npar_local):
        if sizes[i] == 0:
            continue
        E[:, i, offsets[i]:offsets[i + 1]] = Pb if i == nb else (P[:, :1] if sizes[i] == 1 else P)
    chi_sp = np.full(len(alive), np.nan)
    iterations = 0
    alpha = np.zeros(npar)
    for iterations in range(1, opts.max_iterations + 1):  # noqa: B007 - reported
        if use.sum() < opts.min_stamps:
            raise DiffimError(f"{prefix}no usable stamps for PSF matching: {int(use.sum())} left after "
                              f"rejecting bad ones (of {n}), at least {opts.min_stamps} needed")
        Eu = E[use]
        ME = np.matmul(M[use], Eu)                                             # (m, k, p)
        A = Eu.reshape(-1, npar).T @ ME.reshape(-1, npar)
        b = Eu.reshape(-1, npar).T @ r[use].reshape(-1)
        alpha = _solve(A, b)
        a_s = E @ alpha                                                        # (m, k)
        Ma = np.matmul(M, a_s[:, :, None])[:, :, 0]
        chi = tt - 2 * np.sum(a_s * r, axis=1) + np.sum(a_s * Ma, axis=1)
        chi_sp = chi / np.maximum(npix - npar_local, 1)
        keep = use & _robust_cut(np.where(use, chi_sp, np.nan), opts.clip_sigma, upper_only=True)
        if np.array_equal(keep, use):
            break
        use = keep
    status[alive[good & ~use]] = STAMP_STATUS["spatial_fit"]
    stamp_chi2 = np.full(n, np.nan)
    stamp_chi2[alive] = chi_sp
    kappa = float(alpha[0])
    if not 0.01 < kappa < 100.0:
        raise DiffimError(f"{prefix}no usable stamps for PSF matching: the fitted kernel sum {kappa:.3g} "
                          "(flux ratio) is not plausible: the stars of one image are not in the other")
    # --- the kernel as a VaryingKernel: one component per spatial term
    comps = np.zeros((nk, basis.size, basis.size))
    for i in range(nb):
        coef = alpha[offsets[i]:offsets[i + 1]]
        for p, c in enumerate(coef):
            comps[p] += c * basis.images[i]
    fields = [None if p == 0 else PolynomialField.from_terms((ny, nx), kdeg, np.eye(nk)[p])
              for p in range(nk)]
    # the p = 0 term's field is the constant Legendre term P0·P0 = 1
    kernel = VaryingKernel(comps, tuple(fields))
    background = None
    if nbg:
        background = PolynomialField.from_terms((ny, nx), bdeg, alpha[offsets[nb]:offsets[nb + 1]])
    full_status = np.full(len(np.asarray(x)), STAMP_STATUS["bad_pixels"], np.int8)
    full_status[np.flatnonzero(inside)] = status
    def spread(v: np.ndarray) -> np.ndarray:
        out = np.full(len(np.asarray(x)), np.nan)
        out[np.flatnonzero(inside)] = v
        return out
    return KernelSolution(kernel=kernel, background=background, basis=basis,
                          stamp_x=np.asarray(x, float), stamp_y=np.asarray(y, float),
                          stamp_status=full_status, stamp_chi2=spread(stamp_chi2),
                          stamp_kernel_sum=spread(stamp_ksum), iterations=iterations, options=opts)
