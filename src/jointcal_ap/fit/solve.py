"""Gauss-Newton for the joint astrometric fit, with the star blocks eliminated (NumPy).

The unknowns are the model parameters m (a few thousand at most) and, per star, five
parameters θ_s = (δα*, δδ, μα*, μδ, ϖ) (mas, mas/yr, mas; some fixed per star). Each
measurement touches one star and one or two model blocks, so the normal matrix is

    [ A   B ] [δm]     [g_m]
    [ Bᵀ  D ] [δθ] = − [g_θ]        with D block-diagonal (5×5 per star).

Eliminating δθ leaves the reduced ("camera") system

    S δm = −(g_m − B D⁻¹ g_θ),    S = A − B D⁻¹ Bᵀ,

then δθ_s = −D_s⁻¹ (g_θ,s + B_sᵀ δm). S is never formed: it is solved by conjugate
gradients, preconditioned with the inverse diagonal blocks of S (per CCD, or per detector
and per visit), and its product with a vector is two passes over the measurements.

The Jacobians are analytic and structured, so nothing of size measurements × parameters
exists:

- the model part of a measurement is, per parameter slot, a 2×2 *core* times the
  polynomial basis of its CCD (:meth:`SimpleModel.ccd_linearise`); the measurements are
  kept sorted by CCD, so applying it is one small matrix product per CCD;
- the star part is −W·P·T with W the whitening (2×2), P = ∂(ξ, η)/∂(offset on the sky)
  (2×2) and T = [I, Δt·I, parallax factor] (2×5).

Everything is float64 NumPy (no compilation: a fit costs the same in a fresh process).
χ² is checked at every step, steps that do not decrease it are halved, and a fit that
cannot make progress stops with a :class:`FitError` carrying its diagnostics.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from jointcal_ap.errors import FitError
from jointcal_ap.heap import release_free_heap

__all__ = ["CG_TOLERANCE", "FitError", "FitProblem", "Problem", "SolveStats", "gauss_newton"]

MAS_PER_RAD = 206264806.24709636


@dataclass
class Problem:
    """Static arrays of a fit.

    Per measurement (n): ``ccd`` (index of its CCD), ``u``, ``v`` normalised pixels;
    ``pix_scale`` (pixels per unit of u, the same for all of a CCD's measurements); ``cov_px``
    (n, 2, 2) pixel covariance (symmetric: only its xx, xy and yy entries are read); ``star``
    (n,); ``visit`` (n,); ``dt`` (n,) years from the fit epoch; ``plx_factor`` (n, 2) mas of
    displacement per mas of parallax; ``extra`` (n, 2) fixed extra displacement in mas (exact
    reference-catalog motion minus its linear part).
    Per CCD: ``slots``: per parameter slot, the first parameter of each CCD's block and the
    slot's number of basis terms K (a block is 2K parameters: ξ then η coefficients).
    Per star (N): ``e0``, ``ea``, ``ed`` (N, 3) unit vectors (position, east, north).
    Per visit (V): ``v0``, ``va``, ``vd`` (V, 3) tangent-point frame.
    Priors: ``prior_value`` (N, 5), ``prior_weight`` (N, 5, 5) inverse covariances (zero
    where none), ``star_free`` (N, 5) bool. ``model_fixed`` (M,) bool.
    """

    ccd: np.ndarray
    u: np.ndarray
    v: np.ndarray
    pix_scale: np.ndarray
    cov_px: np.ndarray
    slots: list[tuple[np.ndarray, int]]
    star: np.ndarray
    visit: np.ndarray
    dt: np.ndarray
    plx_factor: np.ndarray
    extra: np.ndarray
    e0: np.ndarray
    ea: np.ndarray
    ed: np.ndarray
    v0: np.ndarray
    va: np.ndarray
    vd: np.ndarray
    prior_value: np.ndarray
    prior_weight: np.ndarray
    star_free: np.ndarray
    model_fixed: np.ndarray
    systematic_mas: float = 0.0

    @property
    def n_stars(self) -> int:
        return len(self.e0)

    @property
    def n_measurements(self) -> int:
        return len(self.star)


@dataclass
class SolveStats:
    """What the solver did: χ² after every accepted step, CG iterations, stop reason."""

    chi2_history: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)
    steps_halved: int = 0
    reason: str = ""
    #: False when the last call stopped on ``clip_rtol`` (good enough to choose outliers from),
    #: not on ``rtol``: the caller must run it again before taking the solution as final.
    converged: bool = True


# --------------------------------------------------------------------------- 2×2 helpers
# Per-measurement 2×2 matrices are (n, 2, 2) arrays; these avoid einsum's dispatch.


class _Split:
    """(n, 2, 2) matrices stored as their four entries, each contiguous: ``entries`` (4, n) holds
    m00, m01, m10, m11. Sliced by rows like the (n, 2, 2) array (``split[lo:hi]``), and taken by
    :func:`_mul` and :func:`_mul_t`, which compute the same numbers from it to the last bit.

    The conjugate-gradient products read each 2×2 entry of the (n, 2, 2) arrays with a 32-byte
    stride; from contiguous entries the same product took 415 instead of 775 µs per 65,536 rows
    (micro-benchmark on the 2-core development machine, the vector kept as (n, 2)).
    """

    __slots__ = ("entries",)

    def __init__(self, entries: np.ndarray):
        self.entries = entries

    @classmethod
    def of(cls, m: np.ndarray) -> _Split:
        """From (n, 2, 2); no copy when it was made by :func:`_by_entries`."""
        return cls(np.ascontiguousarray(m.reshape(len(m), 4).T))

    def __getitem__(self, rows: slice) -> _Split:
        return _Split(self.entries[:, rows])

    def __len__(self) -> int:
        return self.entries.shape[1]


def _by_entries(n: int) -> np.ndarray:
    """An uninitialised (n, 2, 2) array whose four entries are each contiguous (a view of (4, n)):
    row by row the same numbers, and :meth:`_Split.of` takes it without a copy. The products
    read one entry of all rows at a time, which a 32-byte stride made ~1.9x as slow."""
    return np.empty((4, n)).T.reshape(n, 2, 2)


def _mul_entries(e: Any, x: np.ndarray, transpose: bool) -> np.ndarray:
    """m @ x (or mᵀ @ x) row by row from its entries m00, m01, m10, m11 (:func:`_entries`)."""
    m00, m01, m10, m11 = e
    if transpose:
        m01, m10 = m10, m01
    out = np.empty((len(x), 2))
    tmp = np.empty(len(x))
    x0, x1 = x[:, 0], x[:, 1]
    np.multiply(m00, x0, out=out[:, 0])
    out[:, 0] += np.multiply(m01, x1, out=tmp)
    np.multiply(m10, x0, out=out[:, 1])
    out[:, 1] += np.multiply(m11, x1, out=tmp)
    return out


def _entries(m: np.ndarray | _Split) -> Any:
    """m00, m01, m10, m11 of (n, 2, 2) matrices (views; contiguous for a :class:`_Split`)."""
    if isinstance(m, _Split):
        return m.entries
    return m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]


def _mul(m: np.ndarray | _Split, x: np.ndarray) -> np.ndarray:
    """m @ x row by row: (n, 2, 2) (or :class:`_Split`) × (n, 2) → (n, 2)."""
    return _mul_entries(_entries(m), x, False)


def _mul_t(m: np.ndarray | _Split, x: np.ndarray) -> np.ndarray:
    """mᵀ @ x row by row."""
    return _mul_entries(_entries(m), x, True)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b row by row, (n, 2, 2) × (n, 2, 2) (batched ``@`` on 2×2 took 3x as long)."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape))
    for i in range(2):
        for j in range(2):
            np.multiply(a[:, i, 0], b[:, 0, j], out=out[:, i, j])
            out[:, i, j] += a[:, i, 1] * b[:, 1, j]
    return out


def _sandwich(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a c aᵀ row by row, a (n, 2, 2), c symmetric given by its distinct entries (n, 3): xx, xy,
    yy; a symmetric (n, 2, 2) result."""
    cxx, cxy, cyy = c[:, 0], c[:, 1], c[:, 2]
    t0 = a[:, 0, 0] * cxx + a[:, 0, 1] * cxy
    t1 = a[:, 0, 0] * cxy + a[:, 0, 1] * cyy
    u0 = a[:, 1, 0] * cxx + a[:, 1, 1] * cxy
    u1 = a[:, 1, 0] * cxy + a[:, 1, 1] * cyy
    out = np.empty(a.shape)
    out[:, 0, 0] = t0 * a[:, 0, 0] + t1 * a[:, 0, 1]
    out[:, 0, 1] = out[:, 1, 0] = t0 * a[:, 1, 0] + t1 * a[:, 1, 1]
    out[:, 1, 1] = u0 * a[:, 1, 0] + u1 * a[:, 1, 1]
    return out


#: (row, column) of the 15 distinct entries of a symmetric 5×5 matrix, as :func:`_star_normal` orders them
_UPPER_5 = np.triu_indices(5)


def _star_normal(q: np.ndarray, dt: np.ndarray, plx: np.ndarray) -> np.ndarray:
    """Per measurement the distinct entries of Jθᵀ Jθ = Tᵀ (QᵀQ) T, (m, 15) in ``_UPPER_5`` order,
    T = [I, Δt·I, parallax factor] (written out: the batched products took 5x as long)."""
    s00 = q[:, 0, 0] ** 2 + q[:, 1, 0] ** 2
    s01 = q[:, 0, 0] * q[:, 0, 1] + q[:, 1, 0] * q[:, 1, 1]
    s11 = q[:, 0, 1] ** 2 + q[:, 1, 1] ** 2
    p0, p1 = plx[:, 0], plx[:, 1]
    m0, m1 = s00 * p0 + s01 * p1, s01 * p0 + s11 * p1
    dt2 = dt * dt
    return np.stack([s00, s01, dt * s00, dt * s01, m0,
                     s11, dt * s01, dt * s11, m1,
                     dt2 * s00, dt2 * s01, dt * m0,
                     dt2 * s11, dt * m1,
                     p0 * m0 + p1 * m1], axis=1)


def _whitener(cov: np.ndarray) -> np.ndarray:
    """Inverse Cholesky factor of 2×2 covariances: W with W C Wᵀ = I (lower triangular)."""
    a = np.sqrt(cov[:, 0, 0])
    b = cov[:, 1, 0] / a
    c = np.sqrt(np.maximum(cov[:, 1, 1] - b * b, 1e-30))
    w = np.zeros_like(cov)
    w[:, 0, 0] = 1 / a
    w[:, 1, 0] = -b / (a * c)
    w[:, 1, 1] = 1 / c
    return w


def index_dtype(*sizes: int) -> type:
    """int32 for indices into arrays of at most these sizes when they fit (half the bytes of
    int64: the per-measurement indices are held through the whole solve), else int64."""
    return np.int32 if max(sizes, default=0) < 2**31 else np.int64


# The passes over the measurements allocate and free many chunk-sized temporaries (a few MB,
# under glibc's mmap threshold, so on the heap); the pages of the holes they leave stay
# resident (at 10⁷ measurements the resident set grew from 8.0 to 9.8 GB over the clipping
# rounds with the live arrays unchanged). So the fit gives them back before each step, after
# each whitening and, in fits of TRIM_EACH_PRODUCT measurements or more, at each product of
# conjugate gradients; not in a process that keeps its heap on purpose (a pipeline worker).

#: Fits of at least this many measurements give the C heap's free pages back at every product
#: of conjugate gradients (see :func:`jointcal_ap.heap.release_free_heap`), not only before each step.
TRIM_EACH_PRODUCT = 1 << 22

#: Measurements per chunk of the passes over the measurements: the temporaries of a chunk stay
#: in the CPU caches, and no array of measurements × (anything more than a few numbers) exists.
CHUNK = 1 << 16
#: Smaller problems are cut into this many chunks (of whole CCDs), for the threads (see
#: ``FitProblem.workers``) to share; the same for any number of threads, so that the sums, and
#: the result to the last bit, do not depend on it.
MIN_CHUNKS = 8


class _Cores(list):
    """Per slot, the (n, 2, 2) factors W·G of the whitened model Jacobian.

    ``masked[slot]``: the slot's factors are zero where a measurement is clipped. A slot without
    a G factor is the whitening itself, shared with the caller and not masked; ``weights`` (1
    active, 0 clipped) is then what the products multiply by (None when every slot is masked).
    """

    def __init__(self, cores, weights, masked):
        super().__init__(cores)
        self.weights = weights
        self.masked = masked


class FitProblem:
    """A :class:`Problem` prepared for the solver: measurements sorted by CCD and grouped in
    chunks of whole CCDs, star sums as sparse incidence matrices (one per chunk), the per-CCD
    parameter blocks of every slot. It takes the problem's per-measurement arrays and its
    priors: they are emptied as they are copied (gigabytes at 10⁷ measurements); ``star`` and the
    other per-star arrays stay.

    Every method takes and returns arrays in the :class:`Problem`'s measurement order,
    except the whitening matrices and ``active`` weights, which are opaque to callers
    (pass back what :meth:`whitener` and :meth:`active` return).
    """

    def __init__(self, model, problem: Problem, *, workers: int | None = None):
        from jointcal_ap.fit.crossmatch import default_workers

        self.model = model
        #: threads for the passes over the measurements inside a step (chunks in parallel:
        #: NumPy releases the GIL in its array loops); the result does not depend on it (the
        #: chunks, and the order of the sums over them, are the same)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.n_meas = n = problem.n_measurements
        self.n_stars = problem.n_stars
        self.n_model = len(problem.model_fixed)
        # Stars are renumbered along the sky (strips of 0.1° in declination, then right ascension)
        # and each CCD's measurements sorted by that number: a CCD then reads its stars' numbers
        # from a few short runs of memory instead of at random (the gathers are 3x faster).
        n_stars = problem.n_stars
        dec_strip = np.floor(np.degrees(np.arcsin(np.clip(problem.e0[:, 2], -1, 1))) * 10.0)
        ra = np.arctan2(problem.e0[:, 1], problem.e0[:, 0])
        self.star_order = np.lexsort((ra, dec_strip)) if n_stars else np.zeros(0, np.int64)
        rank = np.empty(n_stars, dtype=np.int64)
        rank[self.star_order] = np.arange(n_stars)
        index = index_dtype(n, n_stars)
        order = np.lexsort((rank[problem.star], problem.ccd)).astype(index)
        self.order = order
        self.inverse = np.empty(n, dtype=index)
        self.inverse[order] = np.arange(n, dtype=index)
        ccd = problem.ccd[order]
        n_ccds = len(problem.slots[0][0])
        bounds = np.searchsorted(ccd, np.arange(n_ccds + 1))
        self.segments = [(c, int(bounds[c]), int(bounds[c + 1])) for c in range(n_ccds) if bounds[c + 1] > bounds[c]]
        self.slots = [(np.asarray(starts, np.int64), int(k)) for starts, k in problem.slots]
        #: where each segment starts, and n at the end (to find a chunk's segments)
        self.segment_lo = np.array([lo for _, lo, _ in self.segments] + [n], dtype=np.int64)
        # chunks: runs of whole CCD segments of about CHUNK measurements; (lo, hi, first, stop)
        # with first/stop indexing self.segments
        chunk = min(CHUNK, -(-n // MIN_CHUNKS))
        self.chunks, first = [], 0
        for i, (_, _, hi) in enumerate(self.segments):
            if hi - self.segments[first][1] >= chunk or i == len(self.segments) - 1:
                self.chunks.append((self.segments[first][1], hi, first, i + 1))
                first = i + 1

        def take(name):  # a sorted copy; the problem's own array is released (gigabytes at 10⁷)
            out = np.ascontiguousarray(np.asarray(getattr(problem, name))[order])
            if name != "star":
                setattr(problem, name, np.zeros(0))
            return out

        self.u, self.v = take("u"), take("v")
        # the pixel covariances as their three distinct entries (xx, xy, yy): 24 bytes per measurement
        cov = take("cov_px")
        self.cov_px = np.stack([cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]], axis=1)
        del cov
        self.star = rank[take("star")].astype(index)
        self.dt, self.plx = take("dt"), take("plx_factor")
        self.extra = take("extra")
        # per CCD segment: its visit and its pixels per unit of u (the same for all its measurements)
        firsts = order[self.segment_lo[:-1]]
        self.segment_visit = np.asarray(problem.visit)[firsts]
        self.segment_scale = np.asarray(problem.pix_scale, dtype=np.float64)[firsts]
        if not np.array_equal(np.asarray(problem.pix_scale)[order], np.repeat(self.segment_scale, np.diff(self.segment_lo))):
            raise ValueError("pix_scale must be the same for all the measurements of a CCD")
        for name in ("visit", "pix_scale", "ccd"):
            setattr(problem, name, np.zeros(0))
        so = self.star_order
        self.e0, self.ea, self.ed = problem.e0[so], problem.ea[so], problem.ed[so]
        self.v0, self.va, self.vd = problem.v0, problem.va, problem.vd
        # the priors, in the internal star order; the problem's own are released
        self.prior_value, self.prior_weight = problem.prior_value[so], problem.prior_weight[so]
        problem.prior_value, problem.prior_weight = np.zeros((0, 5)), np.zeros((0, 5, 5))
        self.star_free = problem.star_free[so].astype(np.float64)
        self.model_free = (~problem.model_fixed).astype(np.float64)
        self.sys2 = float(problem.systematic_mas) ** 2
        self._precond = None  # built by the first step (see _preconditioner)
        self._pixel_basis = None  # per segment, kept by the first _first_pass (False: too large to keep)
        self._raw_kept = None  # (params, theta, model − prediction) of the last _raw
        self._sums_buffer = None  # the star sums' buffer, held through a step (see _sum_to_stars)
        # star sums, chunk by chunk, over the stars the chunk sees only: an incidence matrix of
        # (stars of the chunk × chunk), and those stars' numbers to add its sums into (N, k).
        # Summing (N × chunk) matrices instead made every star sum cost N per chunk, i.e. grow as
        # N × chunks ∝ n²: at 10⁷ measurements 150 chunks × 1.25 M stars, 7.5 GB of memory
        # traffic for each product with the reduced matrix.
        self.chunk_stars, self.incidence = [], []
        for lo, hi, _, _ in self.chunks:
            stars, local = np.unique(self.star[lo:hi], return_inverse=True)
            self.chunk_stars.append(stars)
            self.incidence.append(sp.csr_matrix((np.ones(hi - lo), (local, np.arange(hi - lo))),
                                                shape=(len(stars), hi - lo)))
        # The chunks' sums are added into place by one sparse product (see _sum_to_stars):
        # ``star_adder`` (N × Σ n_i) adds, star by star, its sums from every chunk, in chunk order.
        # Adding each chunk's sums with ``total[stars] += sums`` (a star is in ~5 chunks: 7 M
        # scattered rows at 10⁷ measurements) cost 0.26 s per star sum, a quarter of conjugate
        # gradients; so did adding groups of chunks that way (their unions still held ~5 N stars).
        cat = np.concatenate(self.chunk_stars) if self.chunk_stars else np.zeros(0, np.int64)
        self.star_offsets = np.concatenate([[0], np.cumsum([len(stars) for stars in self.chunk_stars])])
        self.star_adder = sp.csr_matrix((np.ones(len(cat)), (cat, np.arange(len(cat)))), shape=(n_stars, len(cat)))

    # ------------------------------------------------------------------ helpers
    def _blocks(self, params: np.ndarray, c: int) -> list[np.ndarray]:
        return [params[starts[c]:starts[c] + 2 * k].reshape(2, k) for starts, k in self.slots]

    @contextmanager
    def _threads(self):
        """``run(fn, chunk indices)``: fn(i) for each, in threads when there are several (NumPy
        releases the GIL in its array loops); the list of results, in order."""
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 and len(self.chunks) > 1 else None

        def run(fn, chunks):
            return list(pool.map(fn, chunks) if pool is not None else map(fn, chunks))
        try:
            yield run
        finally:
            if pool is not None:
                pool.shutdown()

    def _linearise_chunk(self, params, i: int, xy: np.ndarray, base: int = 0) -> list:
        """Model (ξ, η) of chunk i's measurements into ``xy`` (rows from measurement ``base`` on);
        its CCDs' Jacobian terms."""
        _, _, first, stop = self.chunks[i]
        kept = self._pixel_basis
        terms = []
        for s in range(first, stop):
            c, lo, hi = self.segments[s]
            extra = {"basis": kept[s]} if kept else {}
            out, t, _ = self.model.ccd_linearise(self._blocks(params, c), self.u[lo:hi], self.v[lo:hi], **extra)
            xy[lo - base:hi - base] = out
            terms.append(t)
        return terms

    def _first_pass(self, params, theta, white, active, run):
        """A step's pass over the measurements, chunk by chunk in threads: whitened residuals
        r = W (model − prediction) (n, 2) and Q = W P (n, 2, 2), both zero where clipped; per CCD
        the Jacobian terms; and the cores (see :meth:`_cores`).

        A chunk's model positions, predictions and P stay chunk-sized, and each CCD's G factors
        are folded into its cores as soon as it is linearised (the terms come back as (φ, None)):
        no whole-survey array of them is made (48 bytes per measurement at the step's peak).
        ``theta`` is in the internal star order.
        """
        r = np.empty((self.n_meas, 2))
        q = _by_entries(self.n_meas)
        kept = self._pixel_basis
        folded = [None] * len(self.slots)  # per slot with G factors: (n, 2, 2), filled CCD by CCD
        had_g = np.zeros((len(self.slots), len(self.segments)), dtype=bool)
        lock = threading.Lock()

        def part(i):
            lo, hi, first, stop = self.chunks[i]
            xy = np.empty((hi - lo, 2))
            terms = self._linearise_chunk(params, i, xy, base=lo)
            for seg, ccd_terms in zip(range(first, stop), terms, strict=True):
                _, a, b = self.segments[seg]
                for slot, (basis, g) in enumerate(ccd_terms):
                    if g is None:
                        continue
                    with lock:
                        if folded[slot] is None:
                            folded[slot] = _by_entries(self.n_meas)
                    folded[slot][a:b] = white[a:b] @ g
                    folded[slot][a:b] *= active[a:b, None, None]
                    ccd_terms[slot] = (basis, None)
                    had_g[slot, seg] = True
            pred, p = self._predict(theta, i, jacobian=True)
            r[lo:hi] = _mul(white[lo:hi], xy - pred)
            r[lo:hi] *= active[lo:hi, None]
            q[lo:hi] = _matmul(white[lo:hi], p)
            q[lo:hi] *= active[lo:hi, None, None]
            return terms
        terms = [t for chunk_terms in run(part, range(len(self.chunks))) for t in chunk_terms]
        if kept is None:
            # the pixel polynomial's basis (the first slot's φ) depends on the pixels only: keep it
            # for the later linearisations when it is small (a step holds it anyway, in its terms)
            size = sum(t[0][0].nbytes for t in terms)
            self._pixel_basis = [t[0][0] for t in terms] if size <= PIXEL_BASIS_BYTES else False
            for basis in self._pixel_basis or ():
                basis.flags.writeable = False
        return r, q, terms, self._cores(white, active, folded, had_g)

    def _predict(self, theta, i: int, *, jacobian=False):
        """Chunk i's stars at their visits on the visit tangent planes (mas), and P = ∂/∂offset
        (a chunk at a time: the temporaries stay in the CPU caches)."""
        lo, hi = self.chunks[i][0], self.chunks[i][1]
        th = np.take(theta, self.star[lo:hi], axis=0)
        off = th[:, 0:2] + th[:, 2:4] * self.dt[lo:hi, None] + th[:, 4:5] * self.plx[lo:hi] + self.extra[lo:hi]
        del th
        oa, od = off[:, 0] / MAS_PER_RAD, off[:, 1] / MAS_PER_RAD
        del off
        e0w0, e0wa, e0wd, eaw0, eawa, eawd, edw0, edwa, edwd = self._dots(i)
        den = e0w0 + oa * eaw0 + od * edw0
        t_xi = (e0wa + oa * eawa + od * edwa) / den
        t_eta = (e0wd + oa * eawd + od * edwd) / den
        pred = np.stack([t_xi, t_eta], axis=1) * MAS_PER_RAD
        if not jacobian:
            return pred, None
        p = np.empty((len(den), 2, 2))
        p[:, 0, 0] = (eawa - t_xi * eaw0) / den
        p[:, 0, 1] = (edwa - t_xi * edw0) / den
        p[:, 1, 0] = (eawd - t_eta * eaw0) / den
        p[:, 1, 1] = (edwd - t_eta * edw0) / den
        return pred, p

    def _dots(self, i: int) -> np.ndarray:
        """The projection of a star onto its visit's tangent plane only needs the dot products of
        the star's frame (e0, east, north) with the visit's (v0, va, vd): nine numbers per
        measurement (vec·w = e0·w + (Δa·ea·w + Δd·ed·w)/MAS), (9, m) for chunk i. Computed when
        needed: kept, they were 72 bytes per measurement (720 MB at 10⁷).
        """
        lo, hi, first, stop = self.chunks[i]
        visit = np.repeat(self.segment_visit[first:stop], np.diff(self.segment_lo[first:stop + 1]))
        dots = np.empty((9, hi - lo))
        for a, sv in enumerate((self.e0, self.ea, self.ed)):
            vec = np.take(sv, self.star[lo:hi], axis=0)
            for b, vv in enumerate((self.v0, self.va, self.vd)):
                dots[3 * a + b] = np.einsum("ij,ij->i", vec, np.take(vv, visit, axis=0))
        return dots

    def _model_apply(self, terms, cores, x: np.ndarray, chunk) -> np.ndarray:
        """J_m x on one chunk: (M,) → (m, 2), whitened (``cores`` hold W·G), zero where clipped."""
        lo, hi, first, stop = chunk
        y = np.zeros((hi - lo, 2))
        t = np.empty((hi - lo, 2))
        for slot, (starts, k) in enumerate(self.slots):
            for i in range(first, stop):
                c, a, b = self.segments[i]
                # (a contiguous K × 2 block: BLAS took 1.6x as long on the transposed view)
                t[a - lo:b - lo] = terms[i][slot][0] @ np.ascontiguousarray(x[starts[c]:starts[c] + 2 * k].reshape(2, k).T)
            y += _mul(cores[slot][lo:hi], t)
        if cores.weights is not None:
            y *= cores.weights[lo:hi, None]
        return y

    def _model_transpose(self, terms, cores, y: np.ndarray, chunk, out: np.ndarray) -> None:
        """out += J_mᵀ y for one chunk's y (m, 2), which must be zero where clipped (every y of the
        step is: r, J_m x and Jθ z are)."""
        lo, hi, first, stop = chunk
        for slot, (starts, k) in enumerate(self.slots):
            z = _mul_t(cores[slot][lo:hi], y)
            for i in range(first, stop):
                c, a, b = self.segments[i]
                out[starts[c]:starts[c] + 2 * k] += (terms[i][slot][0].T @ z[a - lo:b - lo]).T.ravel()

    def _cores(self, white, active, folded, had_g):
        """Per slot, W·G for every measurement (n, 2, 2), zero where clipped, except for a slot with
        no G factor anywhere, whose core is ``white`` itself, not masked; and the weights the
        products must apply for those (see :class:`_Cores`). ``folded``: per slot, the W·G that
        :meth:`_first_pass` filled for the CCDs with a G factor (``had_g[slot, segment]``; None: no CCD
        has one); the other CCDs' rows (G the identity) are filled here."""
        cores = []
        for slot, core in enumerate(folded):
            if core is None:
                cores.append(white)  # not masked: the products mask (a masked copy: 32 bytes each)
                continue
            for seg in np.flatnonzero(~had_g[slot]):
                _, lo, hi = self.segments[seg]
                core[lo:hi] = white[lo:hi] * active[lo:hi, None, None]
            cores.append(core)
        masked = [core is not white for core in cores]
        return _Cores(cores, None if all(masked) else active, masked)

    def _star_sums(self, q: np.ndarray, i: int, lo: int, hi: int) -> np.ndarray:
        """Σ per star of Tᵀ a over one chunk, a = Qᵀ y (m, 2), for the chunk's stars
        (``chunk_stars[i]``): (n_i, 5). T = [I, Δt·I, parallax factor]."""
        dt, plx = self.dt[lo:hi], self.plx[lo:hi]
        z = np.empty((hi - lo, 5))
        z[:, 0:2] = q
        z[:, 2] = q[:, 0] * dt
        z[:, 3] = q[:, 1] * dt
        z[:, 4] = q[:, 0] * plx[:, 0] + q[:, 1] * plx[:, 1]
        return np.asarray(self.incidence[i] @ z)

    def _sum_to_stars(self, chunk_sums, k: int, run) -> np.ndarray:
        """Per-star totals (N, k) of per-chunk sums: ``chunk_sums(i)`` gives chunk i's sums over its
        stars (``chunk_stars[i]``), (n_i, k); ``run(fn, chunk indices)`` runs ``fn`` on them (in
        threads). Each star's total is its chunk sums added in chunk order, as adding them into an
        (N, k) array chunk after chunk would, to the last bit. The chunks' sums are held together
        for the product: Σ n_i × k numbers (k = 5: 389 MB at 10⁷ measurements), in a buffer a step
        keeps for all its star sums. A fresh one had its pages faulted in anew at each product of
        conjugate gradients: 0.59 s to fill 270 MB fresh, 11 ms to refill it, on the 2-core
        development machine."""
        buf = self._sums_buffer
        if buf is None or buf.shape[1] != k:
            buf = np.empty((self.star_offsets[-1], k))
        offsets = self.star_offsets

        def place(i):
            buf[offsets[i]:offsets[i + 1]] = chunk_sums(i)
        run(place, range(len(self.chunks)))
        return np.asarray(self.star_adder @ buf)

    def _t_gather(self, zt: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """T z[star] over one chunk, from z transposed (5, N): → (m, 2)."""
        g = np.take(zt, self.star[lo:hi], axis=1)
        dt, plx = self.dt[lo:hi], self.plx[lo:hi]
        out = np.empty((hi - lo, 2))
        out[:, 0] = g[0] + g[2] * dt + g[4] * plx[:, 0]
        out[:, 1] = g[1] + g[3] * dt + g[4] * plx[:, 1]
        return out

    # ------------------------------------------------------------------ public
    def active(self, mask=None) -> np.ndarray:
        """Weights (1 active, 0 clipped) from a boolean mask in problem order (None: all)."""
        if mask is None:
            return np.ones(self.n_meas)
        return np.asarray(mask, dtype=np.float64)[self.order]

    def meas_cov(self, params) -> np.ndarray:
        """Measurement covariances in the tangent plane, mas² (n, 2, 2), problem order."""
        return self._meas_cov(params)[self.inverse]

    def _segment_cov(self, params, s: int) -> np.ndarray:
        """Tangent-plane covariances (mas²) of segment s's measurements (one CCD, internal order)."""
        c, lo, hi = self.segments[s]
        _, _, duv = self.model.ccd_linearise(self._blocks(params, c), self.u[lo:hi], self.v[lo:hi],
                                             uv_jacobian=True)
        duv /= self.segment_scale[s]
        cov = _sandwich(duv, self.cov_px[lo:hi])
        cov[:, 0, 0] += self.sys2
        cov[:, 1, 1] += self.sys2
        return cov

    def _per_segment(self, fn) -> np.ndarray:
        """(n, 2, 2) from ``fn(s)`` for each CCD segment s. One thread: a CCD's covariances are
        many small array operations, and two threads made them slower (whitener at 10⁶, best of 5:
        0.192 s on one thread, 0.212 s on two)."""
        out = _by_entries(self.n_meas)
        for s, (_, lo, hi) in enumerate(self.segments):
            out[lo:hi] = fn(s)
        return out

    def _meas_cov(self, params) -> np.ndarray:
        return self._per_segment(lambda s: self._segment_cov(params, s))

    def whitener(self, params) -> np.ndarray:
        """Per-measurement whitening matrices (internal order), CCD by CCD (the Jacobians and
        covariances of all measurements at once were ~250 bytes per measurement more at the peak)."""
        white = self._per_segment(lambda s: _whitener(self._segment_cov(params, s)))
        release_free_heap()
        return white

    def _stars_in(self, theta: np.ndarray) -> np.ndarray:
        """Per-star array in the problem's star order → internal order."""
        return np.asarray(theta)[self.star_order]

    def _stars_out(self, values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[self.star_order] = values
        return out

    def _raw(self, params, theta) -> np.ndarray:
        """Model − star prediction (n, 2), mas, internal order; chunk by chunk in threads.

        The last result is kept, with the parameters it is for: the residuals after a solve,
        and the χ² that starts the next clipping round (new whitening and weights, same
        parameters), are those of the χ² that ended the solve (two passes saved per round).
        """
        kept = self._raw_kept
        if kept is not None and np.array_equal(kept[0], params) and np.array_equal(kept[1], theta):
            return kept[2]
        self._raw_kept = None
        th = self._stars_in(theta)
        raw = np.empty((self.n_meas, 2))

        def part(i):
            lo, hi = self.chunks[i][0], self.chunks[i][1]
            self._linearise_chunk(params, i, raw)
            raw[lo:hi] -= self._predict(th, i)[0]
        with self._threads() as run:
            run(part, range(len(self.chunks)))
        raw.flags.writeable = False
        self._raw_kept = (np.array(params, copy=True), np.array(theta, copy=True), raw)
        return raw

    def _residuals(self, params, theta, white, active) -> np.ndarray:
        return _mul(white, self._raw(params, theta)) * active[:, None]

    def residuals(self, params, theta, white, active) -> np.ndarray:
        """Whitened residuals (n, 2), zero where inactive, problem order."""
        return self._residuals(params, theta, white, active)[self.inverse]

    def raw_residuals(self, params, theta) -> np.ndarray:
        """Model − star prediction (n, 2) in mas, problem order."""
        return self._raw(params, theta)[self.inverse]

    def prior_chi2(self, theta) -> np.ndarray:
        """Each star's prior χ² (problem order)."""
        d = self._stars_in(theta) - self.prior_value
        return self._stars_out(np.einsum("si,sij,sj->s", d, self.prior_weight, d))

    def chi2(self, params, theta, white, active) -> float:
        r = self._residuals(params, theta, white, active)
        return float(np.sum(r * r) + np.sum(self.prior_chi2(theta)))

    def step(self, params, theta, white, active, *, chi2_tol: float = 0.0):
        """One Gauss-Newton step: (δm, δθ, CG iterations, predicted χ² decrease).

        The star Jacobian of a measurement is Jθ = −Q·T with Q = W·P (whitening times the
        projection's derivative, 2×2) and T = [I, Δt·I, parallax factor] (2×5).

        ``chi2_tol``: conjugate gradients also stop once the χ² decrease they are still
        estimated to gain is below this (absolute χ²; see :func:`_pcg`); 0 solves to
        :data:`CG_TOLERANCE` only. The preconditioner is built at the first step and reused
        (see :meth:`_preconditioner`).

        ``active`` (from :meth:`active`) must be 0 or 1 per measurement: the step masks the
        whitening where it uses it, which is a weighting only for those two values.
        """
        if not np.all((active == 0) | (active == 1)):
            raise ValueError("active weights must be 0 (clipped) or 1 (kept); see FitProblem.active")
        self._raw_kept = None  # the step's own linearisation replaces it (memory)
        release_free_heap()
        self._sums_buffer = np.empty((self.star_offsets[-1], 5))  # every star sum of the step fills it
        try:
            with self._threads() as run:
                return self._step(params, theta, white, active, chi2_tol, run)
        finally:
            self._sums_buffer = None  # (389 MB at 10⁷: not held between steps)

    def _step(self, params, theta, white, active, chi2_tol, run):
        free_s, free_m = self.star_free, self.model_free
        theta = self._stars_in(theta)
        r, q, terms, cores = self._first_pass(params, theta, white, active, run)

        def over_chunks(fn):  # fn(i) for every chunk
            return run(fn, range(len(self.chunks)))

        def in_chunk_order(fn):  # (i, fn(i)) for every chunk in order, at most one result per thread held
            for first in range(0, len(self.chunks), self.workers):
                group = range(first, min(first + self.workers, len(self.chunks)))
                yield from zip(group, run(fn, group), strict=True)

        def sum_over_chunks(fn):  # Σ fn(i) in chunk order
            total = 0
            for _, part in in_chunk_order(fn):
                total = total + part
            return total

        def star_t(y_of_chunk):  # Jθᵀ y summed per star, (N, 5); y given chunk by chunk
            def part(i):
                lo, hi = self.chunks[i][0], self.chunks[i][1]
                return self._star_sums(_mul_t(q[lo:hi], y_of_chunk(i)), i, lo, hi)
            total = self._sum_to_stars(part, 5, run)
            total *= -free_s
            return total

        g_m = np.zeros(self.n_model)
        for chunk in self.chunks:
            self._model_transpose(terms, cores, r[chunk[0]:chunk[1]], chunk, g_m)
        g_m *= free_m
        g_s = star_t(lambda i, r=r: r[self.chunks[i][0]:self.chunks[i][1]]) \
            + np.einsum("sij,sj->si", self.prior_weight, theta - self.prior_value) * free_s
        del r
        # D = Σ Jθᵀ Jθ + prior, with Jθᵀ Jθ = Tᵀ (QᵀQ) T per measurement, chunk by chunk
        def normal_part(i):
            lo, hi = self.chunks[i][0], self.chunks[i][1]
            return self.incidence[i] @ _star_normal(q[lo:hi], self.dt[lo:hi], self.plx[lo:hi])
        # five columns at a time (the buffer of all the chunks' sums stays that of a star sum)
        upper = np.concatenate([self._sum_to_stars(lambda i, c=c: normal_part(i)[:, c:c + 5], 5, run)
                                for c in (0, 5, 10)], axis=1)
        # D is built and inverted in place, a block of stars at a time: its masked copies and
        # the inverse beside it were ~1 GB at 10⁷ measurements (N × 25 numbers each), at the peak
        d = np.empty((self.n_stars, 5, 5))
        d[:, _UPPER_5[0], _UPPER_5[1]] = upper
        d[:, _UPPER_5[1], _UPPER_5[0]] = upper
        del upper
        d += self.prior_weight
        # fixed star parameters: identity rows/columns so D stays invertible; a star with no
        # information left (all its measurements clipped) gets an identity block
        empty = (np.einsum("sii->si", d) <= 0) | (free_s == 0)
        d *= free_s[:, :, None]
        d *= free_s[:, None, :]
        for k in range(5):
            d[:, k, k] += empty[:, k]
        del empty
        for lo in range(0, self.n_stars, CHUNK):
            d[lo:lo + CHUNK] = np.linalg.inv(d[lo:lo + CHUNK])
        d_inv = d  # (inverted in place)

        # per-star work arrays for the products, reused: a fresh (N, 5) array each time had its
        # pages faulted in anew (three per product of conjugate gradients, 44 MB each at 10⁷)
        z_work, zt_work = np.empty((self.n_stars, 5)), np.empty((5, self.n_stars))

        def back(z, ys=None):  # J_mᵀ (y − Jθ z), (M,): Jθ z = −Q T z[star]; z may be z_work
            np.multiply(z, free_s, out=z_work)
            np.copyto(zt_work, z_work.T)
            zf = zt_work

            def part(i):
                chunk = self.chunks[i]
                lo, hi = chunk[0], chunk[1]
                w = -_mul(q[lo:hi], self._t_gather(zf, lo, hi))
                out = np.zeros(self.n_model)
                self._model_transpose(terms, cores, (ys[i] - w) if ys is not None else -w, chunk, out)
                return out
            return sum_over_chunks(part) * free_m

        def s_matvec(x):  # S x = A x − B D⁻¹ Bᵀ x = J_mᵀ (y − Jθ D⁻¹ Jθᵀ y), y = J_m x
            # each product's chunk temporaries leave free pages resident in the threads' heaps:
            # a large fit gives them back at every product (10⁷: peak 8.17 → 7.92 GB, solve
            # 199 → 190 s, within the noise); a trim takes ~6 ms on a 160 MB heap, too much for
            # the ~ms products of a small fit
            if self.n_meas >= TRIM_EACH_PRODUCT:
                release_free_heap()
            xf = x * free_m
            ys = over_chunks(lambda i: self._model_apply(terms, cores, xf, self.chunks[i]))
            z = np.einsum("sij,sj->si", d_inv, star_t(lambda i: ys[i]), out=z_work)
            return back(z, ys)

        if self._precond is None:
            self._precond = self._preconditioner(terms, cores, q, d_inv)
        # the products below read Q and the step's own cores as contiguous entries (see _Split:
        # views, as _first_pass made them by _by_entries; so is the whitening, see whitener)
        q = _Split.of(q)
        for slot, masked in enumerate(cores.masked):
            if masked:
                cores[slot] = _Split.of(cores[slot])
        # rhs = −(g_m − B D⁻¹ g_s), with B z = J_mᵀ Jθ z
        rhs = -(g_m + back(np.einsum("sij,sj->si", d_inv, g_s)))
        x, iters = _pcg(s_matvec, rhs, self._precond, chi2_tol=chi2_tol)
        x = x * free_m
        bt_x = star_t(lambda i: self._model_apply(terms, cores, x, self.chunks[i]))
        dtheta = -np.einsum("sij,sj->si", d_inv, g_s + bt_x) * free_s
        # χ² ≈ χ²₀ + 2gᵀδ + δᵀHδ with Hδ = −g: the step is predicted to lower χ² by −gᵀδ
        predicted = -(g_m @ x + np.sum(g_s * dtheta))
        return x, self._stars_out(dtheta), iters, float(predicted)

    def _preconditioner(self, terms, cores, q, d_inv):
        """Block-Jacobi: the diagonal blocks of S per slot block, accumulated per measurement
        (exact when a star has one measurement per block); returns x ↦ P⁻¹ x.

        :meth:`step` builds it once, at the first linearisation, and keeps it for every later
        step and clipping round: it is an approximation of S in any case (the couplings between
        a star's measurements are left out), and what a Gauss-Newton step or the clipping of a
        few measurements changes in S is far smaller than what it leaves out. Only the number of
        CG iterations could change, not the solution (measured: the same iteration counts, at
        ~0.12 s saved per step on the ``large`` benchmark).
        """
        free_m = self.model_free
        d_masked = d_inv * self.star_free[:, :, None] * self.star_free[:, None, :]
        firsts = [np.unique(starts) for starts, _ in self.slots]
        indices = [{int(s): i for i, s in enumerate(first)} for first in firsts]

        def chunk_sums(i):  # every slot's blocks summed over one chunk's CCDs: [(block numbers, sums)]
            _, _, seg_lo, seg_hi = self.chunks[i]
            # only the blocks the chunk's CCDs touch (all of a slot's blocks per chunk would be
            # chunks × blocks: 2.4 GB at 10⁷ measurements, 5,000 CCDs of cubic polynomials)
            touched = [np.unique([indices[slot][int(starts[c])] for c, _, _ in self.segments[seg_lo:seg_hi]])
                       for slot, (starts, _) in enumerate(self.slots)]
            local = [{int(b): j for j, b in enumerate(t)} for t in touched]
            accs = [np.zeros((len(t), 2, kk, 2, kk)) for t, (_, kk) in zip(touched, self.slots, strict=True)]
            for (c, lo, hi), ccd_terms in zip(self.segments[seg_lo:seg_hi], terms[seg_lo:seg_hi], strict=True):
                t = np.zeros((hi - lo, 2, 5))
                t[:, 0, 0] = t[:, 1, 1] = 1.0
                t[:, 0, 2] = t[:, 1, 3] = self.dt[lo:hi]
                t[:, :, 4] = self.plx[lo:hi]
                j = -(q[lo:hi] @ t)  # Jθ
                dj = np.take(d_masked, self.star[lo:hi], axis=0)
                # M = Cᵀ (I − Jθ D⁻¹ Jθᵀ) C
                inner = np.eye(2)[None] - j @ dj @ np.swapaxes(j, 1, 2)
                for slot, (starts, _) in enumerate(self.slots):
                    basis = ccd_terms[slot][0]
                    core = cores[slot][lo:hi]
                    m = np.swapaxes(core, 1, 2) @ inner @ core
                    if not cores.masked[slot]:
                        m *= cores.weights[lo:hi, None, None]
                    b = accs[slot][local[slot][indices[slot][int(starts[c])]]]
                    for a in range(2):
                        for e in range(a, 2):
                            blk = basis.T @ (basis * m[:, a, e][:, None])
                            b[a, :, e, :] += blk
                            if e != a:
                                b[e, :, a, :] += blk.T
            return list(zip(touched, accs, strict=True))

        # chunks in threads (NumPy releases the GIL in its loops), summed in chunk order
        n_chunks = range(len(self.chunks))
        totals = [np.zeros((len(first), 2, kk, 2, kk)) for first, (_, kk) in zip(firsts, self.slots, strict=True)]
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 and len(self.chunks) > 1 else None
        try:
            for part in (pool.map(chunk_sums, n_chunks) if pool is not None else map(chunk_sums, n_chunks)):
                for total, (touched, acc) in zip(totals, part, strict=True):
                    total[touched] += acc
        finally:
            if pool is not None:
                pool.shutdown()
        blocks = []
        for slot, (_, kk) in enumerate(self.slots):
            first = firsts[slot]
            acc = totals[slot]
            size = 2 * kk
            mat = acc.reshape(len(first), size, size)
            where = first[:, None] + np.arange(size)[None, :]
            fm = free_m[where]
            mat = mat * fm[:, :, None] * fm[:, None, :]
            blank = np.einsum("bii->bi", mat) <= 0
            mat = mat + np.eye(size)[None] * blank[:, :, None]
            w, vecs = np.linalg.eigh(mat)
            w = np.maximum(w, 1e-9 * np.max(w, axis=1, keepdims=True) + 1e-300)
            blocks.append((np.einsum("bij,bj,bkj->bik", vecs, 1 / w, vecs), where))

        def apply(x):
            out = np.zeros_like(x)
            for pinv, where in blocks:
                out[where] = np.einsum("bij,bj->bi", pinv, x[where])
            return out * free_m

        return apply


#: The pixel polynomials' bases (depending on the pixels only) are kept between linearisations
#: when they take at most this many bytes: ~1/3 of a linearisation on the large case; a
#: 10⁷-measurement fit (800 MB of bases at degree 3) recomputes them rather than hold them
#: between steps.
PIXEL_BASIS_BYTES = 256 << 20

#: Relative residual at which conjugate gradients stop. An inexact Gauss-Newton step leaves an
#: error in the quadratic model of the order of the squared residual (CG minimises the error in
#: the energy norm), so 1e-6 is far below the 1e-9 (relative χ²) at which the iteration stops:
#: on the benchmark surveys χ² and the accuracy against the truth agree with 1e-10 to the digits
#: shown (6 and more), at ~40 % fewer matrix products.
CG_TOLERANCE = 1e-6


def _pcg(matvec, rhs, precond, tol=None, max_iter=1000, *, chi2_tol: float = 0.0, delay: int = 4):
    """Preconditioned conjugate gradients on S x = rhs; returns (x, iterations).

    Stops when the relative residual is below ``tol`` (default :data:`CG_TOLERANCE`), or, with
    ``chi2_tol`` > 0, when the χ² decrease still to be gained is estimated below it. Every
    iteration lowers the quadratic model of χ² by α·rᵀz (the χ² of the reduced problem is
    χ²₀ − 2 rhsᵀx + xᵀSx), and the gain still to come after an iteration is the sum of all
    later gains (Hestenes and Stiefel's estimate of the error in the energy norm, as in Strakoš
    and Tichý 2005). CG stops once the last ``delay`` gains sum to less than ``chi2_tol``. Where
    CG converges steadily, as the preconditioned fit does (a relative residual of 1e-6 in ~30
    iterations), what it leaves out of the step is then below ``chi2_tol`` (measured on random
    systems of condition number 10³: 0.1–0.8 of it), i.e. the step misses the solution of its
    linear system by less than √chi2_tol standard errors along any direction of the parameters.
    On a badly conditioned system CG stalls and the estimate falls short (condition 10⁴: up to
    4 times ``chi2_tol`` left); a Gauss-Newton step left short is finished by the next one.
    """
    tol = CG_TOLERANCE if tol is None else tol
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = precond(r)
    p = z.copy()
    rz = r @ z
    norm_b = np.sqrt(rhs @ rhs) + 1e-300
    gains: list[float] = []
    k = 0
    while np.sqrt(r @ r) > tol * norm_b and k < max_iter:
        ap = matvec(p)
        alpha = rz / (p @ ap)
        gains.append(alpha * rz)
        x += alpha * p
        r -= alpha * ap
        z = precond(r)
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
        k += 1
        if chi2_tol > 0 and k >= delay and sum(gains[-delay:]) < chi2_tol:
            break
    return x, k


def gauss_newton(fns: FitProblem, params, theta, white, active, *, max_iter: int = 20,
                 rtol: float = 1e-9, clip_rtol: float | None = None, stats: SolveStats | None = None,
                 progress=None) -> tuple[np.ndarray, np.ndarray, SolveStats]:
    """Iterate Gauss-Newton steps until χ² stops decreasing by more than ``rtol`` (relative).

    A full step whose actual χ² decrease matches the quadratic model's prediction to
    ``rtol`` (relative to χ²) also ends the iteration: the problem is linear to that
    precision there, so a further step could not gain more than that mismatch.
    ``progress``: called with (iteration, χ²) after every step (e.g. to show progress).

    ``clip_rtol`` (≥ ``rtol``), for a solve that outlier clipping follows: a full step that
    matches the linear model to ``clip_rtol`` also ends the iteration, with
    ``stats.converged`` False. The step that would only confirm convergence (a whole
    linearisation and CG solve) is then left to the next round, which starts from this
    solution anyway once outliers are removed; if nothing is removed, the caller calls
    again without ``clip_rtol``.
    """
    stats = stats or SolveStats()
    stats.converged = True
    chi2 = fns.chi2(params, theta, white, active)
    if not np.isfinite(chi2):
        raise FitError("χ² is not finite at the starting point", {"chi2": chi2})
    stats.chi2_history.append(chi2)
    for iteration in range(max_iter):
        # CG need not find more of a step than a tenth of what counts as converged
        dx, dtheta, iters, predicted = fns.step(params, theta, white, active, chi2_tol=0.1 * rtol * chi2)
        stats.cg_iterations.append(iters)
        if not (np.all(np.isfinite(dx)) and np.all(np.isfinite(dtheta))):
            raise FitError("the linear system gave a non-finite step (singular: too few stars, or "
                           "a degenerate model?)", {"chi2_history": stats.chi2_history})
        if predicted <= rtol * chi2:
            stats.reason = f"converged: the step would lower χ² by {predicted:.2e} (< {rtol:.0e} of χ²)"
            break
        if chi2 <= 1e-14 * stats.chi2_history[0]:
            # χ² at rounding level (an exactly determined problem): the line search could
            # only see rounding noise; the caller's degrees-of-freedom check reports it
            stats.reason = f"converged: χ² {chi2:.2e} is at rounding level"
            break
        scale = 1.0
        for _halving in range(12):
            new_params, new_theta = params + scale * dx, theta + scale * dtheta
            new_chi2 = fns.chi2(new_params, new_theta, white, active)
            if np.isfinite(new_chi2) and new_chi2 <= chi2 * (1 + 1e-12):
                break
            scale /= 2
            stats.steps_halved += 1
        else:
            raise FitError("χ² increased along the Gauss-Newton step even after 12 halvings: the "
                           "fit is diverging", {"chi2_history": stats.chi2_history, "last_chi2": new_chi2})
        params, theta = new_params, new_theta
        improvement = (chi2 - new_chi2) / max(chi2, 1e-300)
        mismatch = abs((chi2 - new_chi2) - predicted) / max(new_chi2, 1e-300)
        chi2 = new_chi2
        stats.chi2_history.append(chi2)
        if progress is not None:
            progress(iteration + 1, chi2)
        if improvement < rtol:
            stats.reason = f"converged: relative χ² change {improvement:.2e} < {rtol:.0e}"
            break
        if scale == 1.0 and mismatch < rtol:
            stats.reason = (f"converged: the full step's χ² decrease matched the linear model to "
                            f"{mismatch:.1e} of χ² (< {rtol:.0e})")
            break
        if clip_rtol is not None and scale == 1.0 and mismatch < clip_rtol:
            stats.reason = (f"close enough to clip: the full step's χ² decrease matched the linear model "
                            f"to {mismatch:.1e} of χ² (< {clip_rtol:.0e})")
            stats.converged = False
            break
    else:
        stats.reason = f"stopped after {max_iter} iterations (χ² still changing)"
    return params, theta, stats
