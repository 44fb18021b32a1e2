"""The JAX backend of :func:`jointcal_ap.refcat.epoch.propagate`: the same kernel, jitted.

Imported only when a propagation runs on JAX (large arrays, or ``backend="jax"``).

Rows are processed in chunks of ``CHUNK`` (padded with :func:`jointcal_ap._jax.bucket`, so
only a handful of shapes is ever compiled), by ``WORKERS`` threads. XLA's CPU backend
fuses aggressively and, under forward-mode autodiff, would recompute shared primal values
in every tangent lane; the covariance path therefore runs as a few separate executables:
the sines and cosines first (fed back through a ``custom_jvp`` with the exact derivative),
then values and Jacobian, then the row-wise covariance product J C Jᵀ.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import SimpleNamespace

import numpy as np

from jointcal_ap._jax import bucket, jax, jnp, pad
from jointcal_ap.refcat import _epoch_kernel as _model

__all__ = ["CHUNK", "WORKERS", "jacobian_arrays", "propagate_arrays"]

#: Rows per chunk (each chunk is padded to a bucket of at least ``MIN_BUCKET`` rows).
CHUNK = 1 << 15
MIN_BUCKET = 1 << 10
#: Chunks are processed by this many threads: one per core this process may use (more only
#: made 1M stars slower on 2 cores: 3.05 s with 4 threads, 2.45 s with 2, under the same load).
try:
    WORKERS = max(1, min(4, len(os.sched_getaffinity(0))))
except AttributeError:  # pragma: no cover - not Linux
    WORKERS = max(1, min(4, os.cpu_count() or 1))


@jax.custom_jvp
def given_sin_cos(x, sin_x, cos_x):
    """(sin x, cos x) from values computed beforehand, differentiable in x.

    XLA's CPU backend treats sin and cos as cheap and recomputes them inside
    every fused consumer; under forward-mode autodiff (five tangent lanes per
    output) that multiplies the trigonometry ~25-fold. The covariance path
    therefore evaluates the sines and cosines in a separate executable and
    feeds them in here; the derivative is exactly that of sin and cos.
    """
    del x
    return sin_x, cos_x


@given_sin_cos.defjvp
def _given_sin_cos_jvp(primals, tangents):
    _, sin_x, cos_x = primals
    dx = tangents[0]
    return (sin_x, cos_x), (cos_x * dx, -sin_x * dx)


#: The kernel's array namespace on JAX.
XP = SimpleNamespace(where=jnp.where, sqrt=jnp.sqrt, arctan2=jnp.arctan2, sin=jnp.sin, cos=jnp.cos,
                     isfinite=jnp.isfinite, deg2rad=jnp.deg2rad, rad2deg=jnp.rad2deg, mod=jnp.mod,
                     ones_like=jnp.ones_like, given_sin_cos=given_sin_cos)


@partial(jax.jit, static_argnames=("has_observer",))
def _propagate_values(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch_yr,
                      epoch_to_yr, observer_au, has_observer):
    inputs = (ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms)
    moved, params, rv, dt_days = _model._prepare(*inputs, epoch_yr, epoch_to_yr, XP)
    obs = _model._observer_tuple(observer_au) if has_observer else None
    out, aux = _model._kernel(params, rv, dt_days, obs, XP)
    return moved, _model._finish(moved, out, aux, *inputs, XP)


@jax.jit
def _sin_cos_pass(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch_yr, epoch_to_yr):
    """The sines and cosines the kernel needs, as an executable of their own (see :func:`given_sin_cos`)."""
    _, params, _, _ = _model._prepare(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms,
                                      epoch_yr, epoch_to_yr, XP)
    sin_cos, _, _ = _model._angles_sin_cos(params[0], params[1], params[3], params[4], XP)
    return sin_cos


@partial(jax.jit, static_argnames=("has_observer",))
def _propagate_jacobian(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch_yr,
                        epoch_to_yr, observer_au, sin_cos, has_observer):
    """Values and per-star Jacobians ∂out/∂(α, δ, ϖ, μα*, μδ) of the kernel.

    Forward-mode autodiff: the kernel's JVP pushed along the five unit tangents
    at once (``vmap`` over the tangent axis, which is what ``jax.jacfwd`` does;
    the tangent axis is kept first so every array stays contiguous per star).
    Returns ``jac``: for each of the 5 outputs an array (5 inputs, n).
    """
    inputs = (ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms)
    moved, params, rv, dt_days = _model._prepare(*inputs, epoch_yr, epoch_to_yr, XP)
    obs = _model._observer_tuple(observer_au) if has_observer else None
    n = ra_deg.shape[0]
    basis = tuple(jnp.broadcast_to(jnp.eye(5, dtype=ra_deg.dtype)[:, k:k + 1], (5, n)) for k in range(5))

    def kernel(*p):
        return _model._kernel(p, rv, dt_days, obs, XP, sin_cos)

    (out, aux), (jac, _) = jax.vmap(lambda t: jax.jvp(kernel, params, t), out_axes=(None, 0))(basis)
    values = _model._finish(moved, out, aux, *inputs, XP)
    return moved, values, jac, aux[1], aux[2]


# The covariance product is memory-bound on a CPU. Three small executables keep
# XLA from fusing (and so re-reading or recomputing) across the stages: the
# (n, 5, 5) matrices are turned into 25 contiguous rows, multiplied row-wise,
# and turned back.


@jax.jit
def _covariance_rows(cov):
    """(n, 5, 5) → (25, n): one contiguous row per matrix element."""
    return cov.reshape(cov.shape[0], 25).T


@jax.jit
def _covariance_left(jac, rows, cos_dec_in, cos_dec_out):
    """First half of J C Jᵀ: J (in α*, δ mas units) and J·C, on rows of shape (n,).

    ``jac``: for each of the 5 outputs an array (5 inputs, n) in (α, δ) rad
    units; returns the scaled J and J·C as 5×5 nested lists of rows. A NaN
    variance means the parameter is unknown: it counts as exactly known
    (variance 0) for the others (its own row and column are set to NaN in
    :func:`_covariance_right`). NaN off-diagonal terms count as zero correlation.
    """
    j = _model._scaled_jacobian(jac, cos_dec_in, cos_dec_out, XP)
    unknown = [jnp.isnan(rows[6 * i]) for i in range(5)]
    c = [[jnp.where(unknown[i] | unknown[k] | jnp.isnan(rows[5 * i + k]), 0.0, rows[5 * i + k])
          for k in range(5)] for i in range(5)]
    jc = [[sum(j[i][m] * c[m][k] for m in range(5)) for k in range(5)] for i in range(5)]
    return j, jc


@jax.jit
def _covariance_right(j, jc, rows, moved):
    """Second half: (J·C)·Jᵀ, NaN rows/columns for unknown inputs, input kept where not moved.

    Returns the 25 rows of the result (row-major 5×5).
    """
    unknown = [jnp.isnan(rows[6 * i]) for i in range(5)]
    new = [[None] * 5 for _ in range(5)]
    for i in range(5):
        for m_out in range(i, 5):
            value = sum(jc[i][k] * j[m_out][k] for k in range(5))
            value = jnp.where(unknown[i] | unknown[m_out], jnp.nan, value)
            new[i][m_out] = new[m_out][i] = jnp.where(moved, value, rows[5 * i + m_out])
    return [new[i][k] for i in range(5) for k in range(5)]


@jax.jit
def _covariance_matrices(rows):
    """25 rows of shape (n,) → (n, 5, 5)."""
    return jnp.stack(rows).T.reshape(rows[0].shape[0], 5, 5)


def propagate_arrays(arrays, observer, cov):
    """Values (and the propagated covariance) of ``arrays`` (the 8 inputs of
    :func:`~jointcal_ap.refcat.epoch.propagate`, broadcast, float64) on JAX."""
    n = arrays[0].shape[0]
    outputs = [np.empty(n, dtype=np.float64) for _ in range(6)]
    moved_out = np.empty(n, dtype=bool)
    cov_out = np.empty((n, 5, 5), dtype=np.float64) if cov is not None else None
    has_observer = observer is not None

    def run_chunk(start: int) -> None:
        stop = min(n, start + CHUNK)
        m = stop - start
        size = bucket(m, MIN_BUCKET)
        chunk = [pad(a[start:stop], size) for a in arrays]
        obs_chunk = (np.zeros(3) if observer is None else observer if observer.ndim == 1
                     else pad(observer[start:stop], size))
        if cov is None:
            moved, values = _propagate_values(*chunk, obs_chunk, has_observer=has_observer)
        else:
            sin_cos = _sin_cos_pass(*chunk)
            moved, values, jac, cos_in, cos_out = _propagate_jacobian(*chunk, obs_chunk, sin_cos,
                                                                      has_observer=has_observer)
            rows = _covariance_rows(pad(cov[start:stop], size))
            j, jc = _covariance_left(jac, rows, cos_in, cos_out)
            new_cov = _covariance_matrices(_covariance_right(j, jc, rows, moved))
            cov_out[start:stop] = np.asarray(new_cov)[:m]
        moved_out[start:stop] = np.asarray(moved)[:m]
        for dst, src in zip(outputs, values, strict=True):
            dst[start:stop] = np.asarray(src)[:m]

    starts = range(0, n, CHUNK)
    if len(starts) == 1 or WORKERS == 1:
        for start in starts:
            run_chunk(start)
    else:
        # XLA runs most of these small kernels on one core; chunks in parallel use the others.
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for future in [pool.submit(run_chunk, start) for start in starts]:
                future.result()
    return moved_out, outputs, cov_out


def jacobian_arrays(arrays, observer) -> np.ndarray:
    """The Jacobian (n, 5, 5) of :func:`propagate_arrays` (at most ``CHUNK`` rows)."""
    n = arrays[0].shape[0]
    if n > CHUNK:
        raise ValueError(f"jacobian_arrays takes at most {CHUNK} rows, got {n}")
    size = bucket(n, MIN_BUCKET)
    chunk = [pad(a, size) for a in arrays]
    obs = np.zeros(3) if observer is None else observer
    if obs.ndim == 2:
        obs = pad(obs, size)
    sin_cos = _sin_cos_pass(*chunk)
    _, _, jac, cos_in, cos_out = _propagate_jacobian(*chunk, obs, sin_cos, has_observer=observer is not None)
    j = jax.jit(partial(_model._scaled_jacobian, xp=XP))(jac, cos_in, cos_out)
    return np.stack([np.stack([np.asarray(j[i][k])[:n] for k in range(5)], axis=-1) for i in range(5)], axis=-2)
