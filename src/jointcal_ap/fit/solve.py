"""Gauss-Newton for the joint astrometric fit, with the star blocks eliminated.

The unknowns are the model parameters m (a few thousand at most) and, per star, five
parameters θ_s = (δα*, δδ, μα*, μδ, ϖ) (mas, mas/yr, mas; some fixed per star). Each
measurement touches one star and one or two model blocks, so the normal matrix is

    [ A   B ] [δm]     [g_m]
    [ Bᵀ  D ] [δθ] = − [g_θ]        with D block-diagonal (5×5 per star).

Eliminating δθ leaves the reduced ("camera") system

    S δm = −(g_m − B D⁻¹ g_θ),    S = A − B D⁻¹ Bᵀ,

then δθ_s = −D_s⁻¹ (g_θ,s + B_sᵀ δm). S is never formed: its product with a vector costs
O(n_meas × L) (L = parameters per measurement) through gathers and segment sums, and it
is solved by conjugate gradients preconditioned with the inverse diagonal blocks of S
(per CCD, or per detector and per visit). Memory is O(n_meas × L) whatever the number of
parameters; no matrix of measurements × parameters is ever formed.

Everything runs in float64 under ``jax.jit``; χ² is checked at every step, steps that do
not decrease it are halved, and a fit that cannot make progress stops with a
:class:`FitError` carrying its diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from jointcal_ap._jax import jax, jnp
from jointcal_ap.errors import FitError

__all__ = ["CompiledProblem", "FitError", "Problem", "SolveStats", "bucket", "gauss_newton"]

MAS_PER_RAD = 206264806.24709636


@dataclass
class Problem:
    """Static arrays of a fit (numpy in, converted to JAX once).

    Per measurement (n): ``u``, ``v`` normalised pixels; ``pix_scale`` (pixels per unit of
    u); ``cov_px`` (n, 2, 2) pixel covariance; ``block_index`` (n, B) the parameter block of each *slot* (B = 1 for
    the simple model: the CCD; 2 for the constrained model: detector and visit), and
    ``slots``: per slot, (lo, hi, starts): the slot's range within the L local parameters
    and the global start index of each of its blocks;
    ``star`` (n,); ``visit`` (n,); ``dt`` (n,) years from the fit epoch; ``plx_factor``
    (n, 2) mas of displacement per mas of parallax; ``extra`` (n, 2) fixed extra
    displacement in mas (exact reference-catalog motion minus its linear part).
    Per star (N): ``e0``, ``ea``, ``ed`` (N, 3) unit vectors (position, east, north).
    Per visit (V): ``v0``, ``va``, ``vd`` (V, 3) tangent-point frame.
    Priors: ``prior_value`` (N, 5), ``prior_weight`` (N, 5, 5) inverse covariances (zero
    where none), ``star_free`` (N, 5) bool. ``model_fixed`` (M,) bool.
    """

    u: np.ndarray
    v: np.ndarray
    pix_scale: np.ndarray
    cov_px: np.ndarray
    block_index: np.ndarray
    slots: list[tuple[int, int, np.ndarray]]
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

    def release_measurement_arrays(self) -> None:
        """Drop the per-measurement inputs once they live on the device (:class:`CompiledProblem`):
        at 10⁷ measurements they are gigabytes. ``star`` (and every per-star array) is kept."""
        empty = np.zeros(0)
        for name in ("u", "v", "pix_scale", "cov_px", "block_index", "visit", "dt", "plx_factor", "extra"):
            setattr(self, name, empty)


@dataclass
class SolveStats:
    """What the solver did: χ² after every accepted step, CG iterations, stop reason."""

    chi2_history: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)
    steps_halved: int = 0
    reason: str = ""


def _predicted_at(theta, star, visit, dt, plx_factor, extra, e0, ea, ed, v0, va, vd):
    """Tangent-plane position (mas) of each measurement's star at its visit."""
    th = theta[star]
    off = th[:, 0:2] + th[:, 2:4] * dt[:, None] + th[:, 4:5] * plx_factor + extra
    vec = e0[star] + (off[:, 0:1] * ea[star] + off[:, 1:2] * ed[star]) / MAS_PER_RAD
    den = jnp.sum(vec * v0[visit], axis=1)
    xi = jnp.sum(vec * va[visit], axis=1) / den * MAS_PER_RAD
    eta = jnp.sum(vec * vd[visit], axis=1) / den * MAS_PER_RAD
    return jnp.stack([xi, eta], axis=1)


def _whitener(cov):
    """Inverse Cholesky factor of 2×2 covariances: W with W C Wᵀ = I (lower triangular)."""
    a = jnp.sqrt(cov[:, 0, 0])
    b = cov[:, 1, 0] / a
    c = jnp.sqrt(jnp.maximum(cov[:, 1, 1] - b * b, 1e-30))
    zero = jnp.zeros_like(a)
    return jnp.stack([jnp.stack([1 / a, zero], -1), jnp.stack([-b / (a * c), 1 / c], -1)], -2)


# --------------------------------------------------------------------------- padding
# Compiled code depends only on array *shapes*, so a problem is padded to a few bucket
# sizes (at most 1/8 larger than needed); any dataset that lands in the same buckets
# reuses the compiled code, in this process and through JAX's persistent cache.
_CHUNK = 4096  # measurements per chunk in the preconditioner accumulation


def bucket(n: int, minimum: int = 8) -> int:
    """The smallest size ≥ n of the form m·2^k with m in 8..15 (≤ 12.5 % padding)."""
    n = max(int(n), minimum)
    k = max(n.bit_length() - 4, 0)
    return -(-n // (1 << k)) << k


def _pad(a: np.ndarray, n: int, fill=0) -> np.ndarray:
    a = np.asarray(a)
    if len(a) == n:
        return a
    out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class CompiledProblem:
    """A :class:`Problem` on the device, padded to bucket sizes, with its jitted functions.

    Measurements are padded to a multiple of the chunk size with inactive rows (identity
    covariance, star 0, visit 0), stars with empty blocks (no prior, not free), and model
    parameters with a fixed "dump" region that padded preconditioner blocks point at.
    Every method takes and returns *unpadded* numbers except the whitening matrices and the
    ``active`` weights, which stay on the device in padded form (see :meth:`active`).
    """

    def __init__(self, model, problem: Problem):
        n = len(problem.u)
        self.n_meas = n
        self.n_stars = problem.n_stars
        self.n_model = len(problem.model_fixed)
        n_pad = max(bucket(n), _CHUNK)
        n_pad = -(-n_pad // _CHUNK) * _CHUNK
        s_pad = bucket(self.n_stars)
        max_size = max(hi - lo for lo, hi, _ in problem.slots)
        m_pad = bucket(self.n_model + max_size)
        self.n_pad, self.s_pad, self.m_pad = n_pad, s_pad, m_pad
        v_pad = bucket(len(problem.v0))

        eye = np.broadcast_to(np.eye(2), (n_pad, 2, 2))
        arrays = {
            "u": _pad(problem.u, n_pad), "v": _pad(problem.v, n_pad),
            "pix_scale": _pad(problem.pix_scale, n_pad, 1.0),
            "cov_px": np.where(np.arange(n_pad)[:, None, None] < n, _pad(problem.cov_px, n_pad), eye),
            "block_index": _pad(problem.block_index, n_pad),
            "star": _pad(problem.star, n_pad), "visit": _pad(problem.visit, n_pad),
            "dt": _pad(problem.dt, n_pad), "plx_factor": _pad(problem.plx_factor, n_pad),
            "extra": _pad(problem.extra, n_pad),
            "e0": _pad(problem.e0, s_pad), "ea": _pad(problem.ea, s_pad), "ed": _pad(problem.ed, s_pad),
            "v0": _pad(problem.v0, v_pad), "va": _pad(problem.va, v_pad), "vd": _pad(problem.vd, v_pad),
            "prior_value": _pad(problem.prior_value, s_pad),
            "prior_weight": _pad(problem.prior_weight, s_pad),
            "star_free": _pad(problem.star_free, s_pad, False).astype(np.float64),
            "model_free": _pad(~problem.model_fixed, m_pad, False).astype(np.float64),
            "sys2": np.float64(problem.systematic_mas) ** 2,
        }
        where, starts, bounds = [], [], []
        for lo, hi, first in problem.slots:
            rows = bucket(len(first))
            # padded blocks start at the fixed "dump" parameters past the real ones
            first = np.concatenate([np.asarray(first, np.int64), np.full(rows - len(first), self.n_model)])
            starts.append(first)
            where.append(first[:, None] + np.arange(hi - lo)[None, :])
            bounds.append((lo, hi))
        arrays["where"], arrays["starts"] = tuple(where), tuple(starts)
        self.arrays = jax.tree_util.tree_map(jnp.asarray, arrays)
        # what compiled code depends on besides shapes: the model's form and the slot layout
        self.spec = (model.kernel(), tuple(bounds))
        self.is_meas = jnp.asarray(np.arange(n_pad) < n, dtype=jnp.float64)

    # ------------------------------------------------------------------ padding helpers
    def active(self, mask=None):
        """Device weights (1 active, 0 clipped or padding) from a boolean mask of length n."""
        if mask is None:
            return self.is_meas
        return jnp.asarray(_pad(np.asarray(mask, dtype=np.float64), self.n_pad))

    def _params(self, params):
        return jnp.concatenate([jnp.asarray(params), jnp.zeros(self.m_pad - self.n_model)])

    def _theta(self, theta):
        return jnp.concatenate([jnp.asarray(theta), jnp.zeros((self.s_pad - self.n_stars, 5))])

    # ------------------------------------------------------------------ functions
    def whitener(self, params):
        """Per-measurement whitening matrices (padded, on the device)."""
        return _whitener(_meas_cov(self.spec, self.arrays, self._params(params)))

    def meas_cov(self, params) -> np.ndarray:
        """Measurement covariances in the tangent plane, mas² (n, 2, 2)."""
        return np.asarray(_meas_cov(self.spec, self.arrays, self._params(params)))[: self.n_meas]

    def residuals(self, params, theta, white, active) -> np.ndarray:
        """Whitened residuals (n, 2), zero where inactive."""
        r = _residuals(self.spec, self.arrays, self._params(params), self._theta(theta), white, active)
        return np.asarray(r)[: self.n_meas]

    def chi2(self, params, theta, white, active) -> float:
        return float(_chi2(self.spec, self.arrays, self._params(params), self._theta(theta), white, active))

    def prior_chi2(self, theta) -> np.ndarray:
        return np.asarray(_prior_chi2(self.arrays, self._theta(theta)))[: self.n_stars]

    def step(self, params, theta, white, active):
        """One Gauss-Newton step: (δm, δθ, CG iterations, predicted χ² decrease), unpadded."""
        dx, dtheta, iters, predicted = _step(self.spec, self.arrays, self._params(params),
                                             self._theta(theta), white, active)
        return dx[: self.n_model], dtheta[: self.n_stars], int(iters), float(predicted)


def _local_index(spec, a, block_index):
    """Global model-parameter indices (n, L) of measurements from their blocks (n, B)."""
    _, bounds = spec
    return jnp.concatenate([a["starts"][slot][block_index[:, slot]][:, None] + jnp.arange(hi - lo)[None, :]
                            for slot, (lo, hi) in enumerate(bounds)], axis=1)


def _map_chunks(fn, a, names, *extra):
    """``fn(chunk)`` over the measurements chunk by chunk (``lax.map``), results concatenated:
    full-length temporaries such as the (n, L) gathered parameters never exist at once."""
    per = {k: a[k] for k in names}
    for i, x in enumerate(extra):
        per[f"_{i}"] = x
    out = jax.lax.map(fn, jax.tree_util.tree_map(lambda x: x.reshape((-1, _CHUNK, *x.shape[1:])), per))
    return jax.tree_util.tree_map(lambda x: x.reshape((-1, *x.shape[2:])), out)


@partial(jax.jit, static_argnums=0)
def _meas_cov(spec, a, params):
    kernel = spec[0]

    def chunk(c):
        local = params[_local_index(spec, a, c["block_index"])]
        jac = jax.vmap(jax.jacfwd(lambda uv, lp: kernel.evaluate(lp[None], uv[0:1], uv[1:2])[0]))(
            jnp.stack([c["u"], c["v"]], 1), local)  # (n, 2, 2) d(ξη)/d(uv)
        jac = jac / c["pix_scale"][:, None, None]
        return jnp.einsum("nij,njk,nlk->nil", jac, c["cov_px"], jac) + a["sys2"] * jnp.eye(2)[None]

    return _map_chunks(chunk, a, ("u", "v", "pix_scale", "cov_px", "block_index"))


def _residuals_impl(spec, a, params, theta, white, active):
    kernel = spec[0]

    def chunk(c):
        local = params[_local_index(spec, a, c["block_index"])]
        model_xy = kernel.evaluate(local, c["u"], c["v"])
        pred = _predicted_at(theta, c["star"], c["visit"], c["dt"], c["plx_factor"], c["extra"],
                             a["e0"], a["ea"], a["ed"], a["v0"], a["va"], a["vd"])
        return jnp.einsum("nij,nj->ni", c["_0"], model_xy - pred) * c["_1"][:, None]

    return _map_chunks(chunk, a, ("u", "v", "block_index", "star", "visit", "dt", "plx_factor", "extra"),
                       white, active)


_residuals = jax.jit(_residuals_impl, static_argnums=0)


@jax.jit
def _prior_chi2(a, theta):
    d = theta - a["prior_value"]
    return jnp.einsum("si,sij,sj->s", d, a["prior_weight"], d)


@partial(jax.jit, static_argnums=0)
def _chi2(spec, a, params, theta, white, active):
    r = _residuals_impl(spec, a, params, theta, white, active)
    d = theta - a["prior_value"]
    return jnp.sum(r * r) + jnp.sum(jnp.einsum("si,sij,sj->s", d, a["prior_weight"], d))


_PER_MEAS = ("u", "v", "block_index", "star", "visit", "dt", "plx_factor", "extra")


def _chunked(x):
    """(n, ...) → (n/_CHUNK, _CHUNK, ...): the layout every per-measurement pass scans over."""
    return x.reshape((-1, _CHUNK, *x.shape[1:]))


def _linearise(spec, a, params, theta, white, active):
    """Whitened residuals and their Jacobians w.r.t. the local model and star parameters.

    Returned chunked, (n/_CHUNK, _CHUNK, 2, ·), with each chunk's measurement data (``c``):
    forward-mode differentiation carries one tangent per local parameter through every
    intermediate, so it runs chunk by chunk (``lax.map``) to keep that working memory
    bounded; only the Jacobians themselves, O(n·L), are kept.
    """
    kernel = spec[0]

    def single(lp, th, u, v, s_e0, s_ea, s_ed, dt, pf, ex, w0, wa, wd, wh):
        model_xy = kernel.evaluate(lp[None], u[None], v[None])[0]
        off = th[0:2] + th[2:4] * dt + th[4] * pf + ex
        vec = s_e0 + (off[0] * s_ea + off[1] * s_ed) / MAS_PER_RAD
        den = vec @ w0
        pred = jnp.stack([vec @ wa / den, vec @ wd / den]) * MAS_PER_RAD
        return wh @ (model_xy - pred)

    jac = jax.vmap(jax.jacfwd(single, argnums=(0, 1)))

    def chunk(c):
        s, vi = c["star"], c["visit"]
        local = _local_index(spec, a, c["block_index"])
        jm, js = jac(params[local], theta[s], c["u"], c["v"], a["e0"][s], a["ea"][s], a["ed"][s],
                     c["dt"], c["plx_factor"], c["extra"], a["v0"][vi], a["va"][vi], a["vd"][vi], c["white"])
        act = c["active"][:, None, None]
        jm = jm * act * a["model_free"][local][:, None, :]
        js = js * act * a["star_free"][s][:, None, :]
        return jm, js

    per = {k: a[k] for k in _PER_MEAS}
    per["white"], per["active"] = white, active
    chunks = jax.tree_util.tree_map(_chunked, per)
    jm, js = jax.lax.map(chunk, chunks)
    r = _chunked(_residuals_impl(spec, a, params, theta, white, active))
    return r, jm, js, chunks


@partial(jax.jit, static_argnums=0)
def _step(spec, a, params, theta, white, active):
    """One Gauss-Newton step with the stars eliminated (see the module docstring).

    Every pass over the measurements is a ``lax.scan`` over chunks, accumulating into
    model- or star-sized arrays, so the working memory beyond the Jacobians is O(chunk).
    """
    bounds = spec[1]
    n_model, n_stars = params.shape[0], theta.shape[0]
    star_free, model_free = a["star_free"], a["model_free"]
    r, jm, js, c = _linearise(spec, a, params, theta, white, active)
    blocks, stars = c["block_index"], c["star"]

    def scan(fn, init, *xs):
        out, _ = jax.lax.scan(lambda acc, x: (fn(acc, *x), None), init, xs)
        return out

    def scatter_m(acc, jmc, yc, bc):  # acc[idx] += Jmᵀ y
        return acc.at[_local_index(spec, a, bc)].add(jnp.einsum("nki,nk->ni", jmc, yc))

    g_m = scan(scatter_m, jnp.zeros(n_model), jm, r, blocks)
    g_s = scan(lambda acc, jsc, rc, sc: acc + jax.ops.segment_sum(jnp.einsum("nki,nk->ni", jsc, rc), sc, n_stars),
               jnp.zeros((n_stars, 5)), js, r, stars)
    g_s = g_s + jnp.einsum("sij,sj->si", a["prior_weight"], theta - a["prior_value"])
    g_s = g_s * star_free
    d = scan(lambda acc, jsc, sc: acc + jax.ops.segment_sum(jnp.einsum("nki,nkj->nij", jsc, jsc), sc, n_stars),
             a["prior_weight"], js, stars)
    # fixed star parameters: identity rows/columns so D stays invertible; a star with no
    # information left (all its measurements clipped, or padding) gets an identity block,
    # so it neither moves nor makes the system singular
    mask = star_free[:, :, None] * star_free[:, None, :]
    empty = (jnp.einsum("sii->si", d) <= 0) | (star_free == 0)
    d = d * mask + jnp.eye(5)[None] * empty[:, :, None]
    d_inv = jnp.linalg.inv(d)

    def bt(x):  # Bᵀ x: (N, 5)
        def body(acc, jmc, jsc, bc, sc):
            y = jnp.einsum("nki,ni->nk", jmc, x[_local_index(spec, a, bc)])
            return acc + jax.ops.segment_sum(jnp.einsum("nki,nk->ni", jsc, y), sc, n_stars)
        return scan(body, jnp.zeros((n_stars, 5)), jm, js, blocks, stars)

    def b(z):  # B z: (M,)
        def body(acc, jmc, jsc, bc, sc):
            return scatter_m(acc, jmc, jnp.einsum("nki,ni->nk", jsc, z[sc]), bc)
        return scan(body, jnp.zeros(n_model), jm, js, blocks, stars)

    def s_matvec(x):  # S x = A x − B D⁻¹ Bᵀ x
        z = jnp.einsum("sij,sj->si", d_inv, bt(x))

        def body(acc, jmc, jsc, bc, sc):
            y = jnp.einsum("nki,ni->nk", jmc, x[_local_index(spec, a, bc)])
            y = y - jnp.einsum("nki,ni->nk", jsc, z[sc])
            return scatter_m(acc, jmc, y, bc)
        return scan(body, jnp.zeros(n_model), jm, js, blocks, stars) * model_free

    rhs = -(g_m - b(jnp.einsum("sij,sj->si", d_inv, g_s))) * model_free

    # Block-Jacobi preconditioner: the diagonal blocks of S, accumulated per measurement
    # (exact when a star has one measurement per block).
    precond = []
    for slot, ((lo, hi), where) in enumerate(zip(bounds, a["where"], strict=True)):
        n_blocks = where.shape[0]

        def accumulate(acc, jmc, jsc, sc, bc, lo=lo, hi=hi, slot=slot, n_blocks=n_blocks):
            jb = jmc[:, :, lo:hi]
            hc = jnp.einsum("nki,nkj->nij", jb, jsc)
            t = jnp.einsum("nki,nkj->nij", jb, jb) - jnp.einsum("nia,nab,njb->nij", hc, d_inv[sc], hc)
            return acc + jax.ops.segment_sum(t, bc[:, slot], n_blocks)

        blk = scan(accumulate, jnp.zeros((n_blocks, hi - lo, hi - lo)), jm, js, stars, blocks)
        # padded blocks (no measurements) become the identity
        blank = jnp.einsum("bii->b", blk) <= 0
        blk = blk + jnp.eye(hi - lo)[None] * blank[:, None, None]
        w, q = jnp.linalg.eigh(blk)
        w = jnp.maximum(w, 1e-9 * jnp.max(w, axis=1, keepdims=True) + 1e-300)
        precond.append((jnp.einsum("bij,bj,bkj->bik", q, 1 / w, q), where))

    def apply_precond(x):
        out = jnp.zeros_like(x)
        for pinv, where in precond:
            out = out.at[where].set(jnp.einsum("bij,bj->bi", pinv, x[where]))
        return out * model_free

    x, iters = _pcg(s_matvec, rhs, apply_precond)
    dtheta = -jnp.einsum("sij,sj->si", d_inv, g_s + bt(x)) * star_free
    # χ² ≈ χ²₀ + 2gᵀδ + δᵀHδ with Hδ = −g: the step is predicted to lower χ² by −gᵀδ
    predicted = -(g_m @ x + jnp.sum(g_s * dtheta))
    return x, dtheta, iters, predicted


def _pcg(matvec, rhs, precond, tol=1e-10, max_iter=1000):
    """Preconditioned conjugate gradients (in a lax.while_loop)."""
    x0 = jnp.zeros_like(rhs)
    r0 = rhs
    z0 = precond(r0)
    rz0 = r0 @ z0
    norm_b = jnp.sqrt(rhs @ rhs) + 1e-300

    def cond(state):
        _, r, _, _, _, k = state
        return (jnp.sqrt(r @ r) > tol * norm_b) & (k < max_iter)

    def body(state):
        x, r, z, pvec, rz, k = state
        ap = matvec(pvec)
        alpha = rz / (pvec @ ap)
        x = x + alpha * pvec
        r = r - alpha * ap
        z = precond(r)
        rz_new = r @ z
        pvec = z + (rz_new / rz) * pvec
        return x, r, z, pvec, rz_new, k + 1

    x, *_, k = jax.lax.while_loop(cond, body, (x0, r0, z0, z0, rz0, 0))
    return x, k


def gauss_newton(fns: CompiledProblem, params, theta, white, active, *, max_iter: int = 20,
                 rtol: float = 1e-9, stats: SolveStats | None = None
                 ) -> tuple[np.ndarray, np.ndarray, SolveStats]:
    """Iterate Gauss-Newton steps until χ² stops decreasing by more than ``rtol`` (relative).

    A full step whose actual χ² decrease matches the quadratic model's prediction to
    ``rtol`` (relative to χ²) also ends the iteration: the problem is linear to that
    precision there, so a further step could not gain more than that mismatch.
    """
    stats = stats or SolveStats()
    chi2 = fns.chi2(params, theta, white, active)
    if not np.isfinite(chi2):
        raise FitError("χ² is not finite at the starting point", {"chi2": chi2})
    stats.chi2_history.append(chi2)
    for _ in range(max_iter):
        dx, dtheta, iters, predicted = fns.step(params, theta, white, active)
        stats.cg_iterations.append(iters)
        if not (np.all(np.isfinite(np.asarray(dx))) and np.all(np.isfinite(np.asarray(dtheta)))):
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
        if improvement < rtol:
            stats.reason = f"converged: relative χ² change {improvement:.2e} < {rtol:.0e}"
            break
        if scale == 1.0 and mismatch < rtol:
            stats.reason = (f"converged: the full step's χ² decrease matched the linear model to "
                            f"{mismatch:.1e} of χ² (< {rtol:.0e})")
            break
    else:
        stats.reason = f"stopped after {max_iter} iterations (χ² still changing)"
    return params, theta, stats
