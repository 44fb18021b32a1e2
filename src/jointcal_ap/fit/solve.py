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

import numpy as np

from jointcal_ap._jax import jax, jnp
from jointcal_ap.errors import FitError

__all__ = ["FitError", "Problem", "SolveStats", "gauss_newton"]

MAS_PER_RAD = 206264806.24709636


@dataclass
class Problem:
    """Static arrays of a fit (numpy in, converted to JAX once).

    Per measurement (n): ``u``, ``v`` normalised pixels; ``pix_scale`` (pixels per unit of
    u); ``cov_px`` (n, 2, 2) pixel covariance; ``local_index`` (n, L) global model
    parameter indices; ``block_index`` (n, B) the parameter block of each *slot* (B = 1 for
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
    local_index: np.ndarray
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


@dataclass
class SolveStats:
    """What the solver did: χ² after every accepted step, CG iterations, stop reason."""

    chi2_history: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)
    steps_halved: int = 0
    reason: str = ""


def _predicted(theta, star, visit, dt, plx_factor, extra, e0, ea, ed, v0, va, vd):
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


def build_functions(model, problem: Problem):
    """JIT-compiled residual, linearisation and solve-step functions for one problem."""
    p = {k: jnp.asarray(getattr(problem, k)) for k in (
        "u", "v", "pix_scale", "cov_px", "local_index", "star", "visit", "dt", "plx_factor",
        "extra", "e0", "ea", "ed", "v0", "va", "vd", "prior_value", "prior_weight")}
    star_free = jnp.asarray(problem.star_free, dtype=jnp.float64)
    model_free = jnp.asarray(~problem.model_fixed, dtype=jnp.float64)
    n_stars = problem.n_stars
    n_model = len(problem.model_fixed)
    sys2 = float(problem.systematic_mas) ** 2
    block_index = jnp.asarray(problem.block_index)
    slots = [(lo, hi, jnp.asarray(starts)[:, None] + jnp.arange(hi - lo)[None, :])
             for lo, hi, starts in problem.slots]
    chunk = 4096
    n_meas = len(problem.u)
    n_pad = (-n_meas) % chunk

    def mapped(local_params, u, v):
        return model.evaluate(local_params, u, v)

    def meas_cov(params):
        local = params[p["local_index"]]
        jac = jax.vmap(jax.jacfwd(lambda uv, lp: mapped(lp[None], uv[0:1], uv[1:2])[0]))(
            jnp.stack([p["u"], p["v"]], 1), local)  # (n, 2, 2) d(ξη)/d(uv)
        jac = jac / p["pix_scale"][:, None, None]
        cov = jnp.einsum("nij,njk,nlk->nil", jac, p["cov_px"], jac)
        return cov + sys2 * jnp.eye(2)[None]

    def residuals(params, theta, white, active):
        local = params[p["local_index"]]
        model_xy = mapped(local, p["u"], p["v"])
        pred = _predicted(theta, p["star"], p["visit"], p["dt"], p["plx_factor"], p["extra"],
                          p["e0"], p["ea"], p["ed"], p["v0"], p["va"], p["vd"])
        r = jnp.einsum("nij,nj->ni", white, model_xy - pred)
        return r * active[:, None]

    def prior_chi2(theta):
        d = theta - p["prior_value"]
        return jnp.einsum("si,sij,sj->s", d, p["prior_weight"], d)

    def chi2(params, theta, white, active):
        r = residuals(params, theta, white, active)
        return jnp.sum(r * r) + jnp.sum(prior_chi2(theta))

    def single(lp, th, u, v, s_e0, s_ea, s_ed, dt, pf, ex, w0, wa, wd, white):
        model_xy = mapped(lp[None], u[None], v[None])[0]
        off = th[0:2] + th[2:4] * dt + th[4] * pf + ex
        vec = s_e0 + (off[0] * s_ea + off[1] * s_ed) / MAS_PER_RAD
        den = vec @ w0
        pred = jnp.stack([vec @ wa / den, vec @ wd / den]) * MAS_PER_RAD
        return white @ (model_xy - pred)

    jac_fn = jax.vmap(jax.jacfwd(single, argnums=(0, 1)))

    @jax.jit
    def linearise(params, theta, white, active):
        local = params[p["local_index"]]
        th = theta[p["star"]]
        s, vi = p["star"], p["visit"]
        jm, js = jac_fn(local, th, p["u"], p["v"], p["e0"][s], p["ea"][s], p["ed"][s], p["dt"],
                        p["plx_factor"], p["extra"], p["v0"][vi], p["va"][vi], p["vd"][vi], white)
        act = active[:, None, None]
        jm = jm * act * model_free[p["local_index"]][:, None, :]
        js = js * act * star_free[s][:, None, :]
        r = residuals(params, theta, white, active)
        return r, jm, js

    @jax.jit
    def step(params, theta, white, active):
        r, jm, js = linearise(params, theta, white, active)
        idx, s = p["local_index"], p["star"]
        g_m = jnp.zeros(n_model).at[idx].add(jnp.einsum("nki,nk->ni", jm, r))
        g_s = jax.ops.segment_sum(jnp.einsum("nki,nk->ni", js, r), s, n_stars)
        g_s = g_s + jnp.einsum("sij,sj->si", p["prior_weight"], theta - p["prior_value"])
        g_s = g_s * star_free
        d = jax.ops.segment_sum(jnp.einsum("nki,nkj->nij", js, js), s, n_stars) + p["prior_weight"]
        # fixed star parameters: identity rows/columns so D stays invertible
        mask = star_free[:, :, None] * star_free[:, None, :]
        # a star with no information left (all its measurements clipped) gets an identity
        # block, so it neither moves nor makes the system singular
        empty = (jnp.einsum("sii->si", d) <= 0) | (star_free == 0)
        d = d * mask + jnp.eye(5)[None] * empty[:, :, None]
        d_inv = jnp.linalg.inv(d)

        def bt(x):  # Bᵀ x: (N, 5)
            y = jnp.einsum("nki,ni->nk", jm, x[idx])
            return jax.ops.segment_sum(jnp.einsum("nki,nk->ni", js, y), s, n_stars)

        def b(z):  # B z: (M,)
            y = jnp.einsum("nki,ni->nk", js, z[s])
            return jnp.zeros(n_model).at[idx].add(jnp.einsum("nki,nk->ni", jm, y))

        def s_matvec(x):
            y = jnp.einsum("nki,ni->nk", jm, x[idx])
            z = jnp.einsum("sij,sj->si", d_inv, jax.ops.segment_sum(jnp.einsum("nki,nk->ni", js, y), s, n_stars))
            y = y - jnp.einsum("nki,ni->nk", js, z[s])
            return jnp.zeros(n_model).at[idx].add(jnp.einsum("nki,nk->ni", jm, y)) * model_free

        rhs = -(g_m - b(jnp.einsum("sij,sj->si", d_inv, g_s))) * model_free

        # Block-Jacobi preconditioner: the diagonal blocks of S, accumulated per measurement
        # (exact when a star has one measurement per block), in chunks to bound memory.
        def pad(a):
            return jnp.concatenate([a, jnp.zeros((n_pad, *a.shape[1:]), a.dtype)]).reshape(
                (-1, chunk, *a.shape[1:]))

        chunks = (pad(jm), pad(js), pad(s), pad(block_index))
        precond = []
        for slot, (lo, hi, where) in enumerate(slots):
            n_blocks = where.shape[0]

            def accumulate(acc, c, lo=lo, hi=hi, slot=slot, n_blocks=n_blocks):
                jmc, jsc, sc, bc = c
                jb = jmc[:, :, lo:hi]
                hc = jnp.einsum("nki,nkj->nij", jb, jsc)
                t = jnp.einsum("nki,nkj->nij", jb, jb) - jnp.einsum("nia,nab,njb->nij", hc, d_inv[sc], hc)
                return acc + jax.ops.segment_sum(t, bc[:, slot], n_blocks), None

            blk, _ = jax.lax.scan(accumulate, jnp.zeros((n_blocks, hi - lo, hi - lo)), chunks)
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
        return x, dtheta, iters

    return {"residuals": jax.jit(residuals), "chi2": jax.jit(chi2), "step": step,
            "meas_cov": jax.jit(meas_cov), "prior_chi2": jax.jit(prior_chi2), "linearise": linearise}


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


def gauss_newton(fns, params, theta, white, active, *, max_iter: int = 20, rtol: float = 1e-9,
                 stats: SolveStats | None = None) -> tuple[np.ndarray, np.ndarray, SolveStats]:
    """Iterate Gauss-Newton steps until χ² stops decreasing by more than ``rtol`` (relative)."""
    stats = stats or SolveStats()
    chi2 = float(fns["chi2"](params, theta, white, active))
    if not np.isfinite(chi2):
        raise FitError("χ² is not finite at the starting point", {"chi2": chi2})
    stats.chi2_history.append(chi2)
    for _ in range(max_iter):
        dx, dtheta, iters = fns["step"](params, theta, white, active)
        stats.cg_iterations.append(int(iters))
        if not (np.all(np.isfinite(np.asarray(dx))) and np.all(np.isfinite(np.asarray(dtheta)))):
            raise FitError("the linear system gave a non-finite step (singular: too few stars, or "
                           "a degenerate model?)", {"chi2_history": stats.chi2_history})
        scale = 1.0
        for _halving in range(12):
            new_params, new_theta = params + scale * dx, theta + scale * dtheta
            new_chi2 = float(fns["chi2"](new_params, new_theta, white, active))
            if np.isfinite(new_chi2) and new_chi2 <= chi2 * (1 + 1e-12):
                break
            scale /= 2
            stats.steps_halved += 1
        else:
            raise FitError("χ² increased along the Gauss-Newton step even after 12 halvings: the "
                           "fit is diverging", {"chi2_history": stats.chi2_history, "last_chi2": new_chi2})
        params, theta = new_params, new_theta
        improvement = (chi2 - new_chi2) / max(chi2, 1e-300)
        chi2 = new_chi2
        stats.chi2_history.append(chi2)
        if improvement < rtol:
            stats.reason = f"converged: relative χ² change {improvement:.2e} < {rtol:.0e}"
            break
    else:
        stats.reason = f"stopped after {max_iter} iterations (χ² still changing)"
    return params, theta, stats
