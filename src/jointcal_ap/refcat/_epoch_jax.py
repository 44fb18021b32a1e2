"""The JAX backend of :func:`jointcal_ap.refcat.epoch.propagate`: the same kernel, jitted.

Imported only when a propagation runs on JAX (large arrays, or ``backend="jax"``).

Rows are processed in chunks of ``CHUNK`` (padded with :func:`jointcal_ap._jax.bucket`, so
only a handful of shapes is ever compiled), by ``WORKERS`` threads. XLA's CPU backend
fuses aggressively: it recomputes whatever it treats as cheap in every consumer, so under
forward-mode autodiff shared values and derivatives would be computed once per output (or
per tangent lane). The covariance path therefore runs as a few separate executables, each
handing its results over in memory: the sines and cosines first (fed back through a
``custom_jvp`` with the exact derivative), then the Jacobian stage by stage (catalog place
→ position and velocity, light-time motion, back to a catalog place), then the row-wise
covariance product J C Jᵀ. Divisions are written as multiplications by reciprocals (and
``arctan2`` has a derivative rule that multiplies): a division in the model becomes five,
one per tangent lane, under forward-mode autodiff.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from types import SimpleNamespace

import numpy as np

from jointcal_ap._jax import bucket, jax, jnp, pad
from jointcal_ap._poly import horner
from jointcal_ap.refcat import _epoch_kernel as _model

__all__ = ["CHUNK", "WORKERS", "jacobian_arrays", "propagate_arrays"]

#: Rows per chunk (each chunk is padded to a bucket of at least ``MIN_BUCKET`` rows).
#: XLA allocates every executable's outputs afresh (malloc); with 2^15 rows the stage buffers
#: (5 lanes × 9 values, (n, 25) matrices: up to ~12 MB per chunk and worker) made glibc return
#: memory to the kernel and fault it in again on every chunk: 1M stars with covariance, 2
#: cores, 5,000-90,000 page faults per call (~1.3 µs each on a VM) against ~800 with 2^14; warm,
#: alternated in one process: 0.59 s against 0.50 s (90,000 faults), 0.48 against 0.47 (5,000).
CHUNK = 1 << 14
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


@jax.custom_jvp
def arctan2(y, x):
    """``jnp.arctan2`` whose derivative multiplies by 1/(x² + y²) instead of dividing.

    JAX's own rule divides in every tangent lane (five per value under the
    Jacobian), and XLA's CPU division is several times slower than a multiplication.
    """
    return jax.lax.optimization_barrier(jnp.arctan2(y, x))


@arctan2.defjvp
def _arctan2_jvp(primals, tangents):
    y, x = primals
    dy, dx = tangents
    inv = 1.0 / (x * x + y * y)
    return jax.lax.optimization_barrier(jnp.arctan2(y, x)), (x * dy - y * dx) * inv


# Sine and cosine as polynomials. XLA's CPU backend calls the C library's scalar sin and cos
# for float64, one element at a time: the four (sin, cos) pairs per star took 27 ns each
# (1M stars: ~0.11 s of CPU, 15 % of the covariance path); the polynomials below are
# vectorised and take 3.7 ns. Arguments are reduced to [-π/4, π/4] by the nearest multiple k
# of π/2, with π/2 split in three (Cody-Waite: the first two parts have 33 significant bits,
# so k·part is exact for |k| < 2^20), then Taylor series to degree 19 (sin) and 18 (cos),
# whose truncation error is below 1e-19 there. Against the C library: at most 2 ulp apart.
_PIO2_PARTS = (float.fromhex("0x1.921fb544p+0"), float.fromhex("0x1.0b4611a6p-34"),
               float.fromhex("0x1.3198a2e037073p-69"))  # π/2 = sum, to ~2^-120
_TWO_OVER_PI = 2.0 / math.pi
#: Beyond this |x| (rad) an array takes the C library's sin and cos (k·part no longer exact).
_POLY_MAX_RAD = 1e5
_SIN_TAYLOR = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(1, 10))  # x³ ... x¹⁹
_COS_TAYLOR = tuple((-1) ** k / math.factorial(2 * k) for k in range(2, 10))  # x⁴ ... x¹⁸


def _sin_cos_poly(x):
    k = jnp.round(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_PARTS[0]) - k * _PIO2_PARTS[1]) - k * _PIO2_PARTS[2]
    quadrant = k.astype(jnp.int32) & 3
    z = r * r
    s = r + r * z * horner(z, _SIN_TAYLOR)
    c = (1.0 - 0.5 * z) + z * z * horner(z, _COS_TAYLOR)
    sin = jnp.where(quadrant == 0, s, jnp.where(quadrant == 1, c, jnp.where(quadrant == 2, -s, -c)))
    cos = jnp.where(quadrant == 0, c, jnp.where(quadrant == 1, -s, jnp.where(quadrant == 2, -c, s)))
    return sin, cos


def sin_cos(x):
    """(sin x, cos x) of a float64 array: the polynomials, or the C library's where any
    |x| ≥ ``_POLY_MAX_RAD`` (e.g. α + μα·1 yr of a star at a pole). NaN gives NaN."""
    return jax.lax.cond(jnp.any(jnp.abs(x) >= _POLY_MAX_RAD), lambda v: (jnp.sin(v), jnp.cos(v)),
                        _sin_cos_poly, x)


#: The kernel's array namespace on JAX.
XP = SimpleNamespace(where=jnp.where, sqrt=jnp.sqrt, arctan2=arctan2, sin=jnp.sin, cos=jnp.cos, sin_cos=sin_cos,
                     isfinite=jnp.isfinite, stage=jax.lax.optimization_barrier, deg2rad=jnp.deg2rad, rad2deg=jnp.rad2deg, mod=jnp.mod,
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


def _lane_jvp(f, primals, tangents):
    """``f(*primals)`` and its derivatives along the tangent lanes (axis 0 of every tangent).

    Forward-mode autodiff pushed along all lanes at once (``vmap`` over the lane axis, which
    is what ``jax.jacfwd`` does; the lane axis first keeps every array contiguous per star).
    """
    return jax.vmap(lambda t: jax.jvp(f, primals, t), out_axes=(None, 0))(tangents)


# The Jacobian runs as four executables, one per stage of the model (eraPmsafe's parallax,
# catalog place → position and velocity, light-time motion, back to a catalog place), each
# taking the previous stage's values and derivatives (five lanes). In one executable XLA's
# CPU fusion recomputes the shared derivatives of the early stages once for every output
# (it treats them as cheap to duplicate); handing them over in memory costs less (1M stars,
# one core: 0.48 s of CPU instead of 0.77-0.89 s).


def _basis(n, dtype):
    """The five unit tangents (α, δ, ϖ, μα*, μδ), each of shape (5 lanes, n)."""
    return tuple(jnp.broadcast_to(jnp.eye(5, dtype=dtype)[:, k:k + 1], (5, n)) for k in range(5))


@jax.jit
def _jacobian_pmsafe(ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms, epoch_yr,
                     epoch_to_yr, sin_cos):
    """Stage 1a: sin α, cos α, sin δ, cos δ and eraPmsafe's parallax, with ∂/∂(α, δ, ϖ, μα*, μδ)."""
    inputs = (ra_deg, dec_deg, parallax_mas, pmra_mas_yr, pmdec_mas_yr, rv_kms)
    moved, params, rv, dt_days = _model._prepare(*inputs, epoch_yr, epoch_to_yr, XP)
    (angles, overridden), (d_angles, _) = _lane_jvp(
        lambda *p: _model._pmsafe_stage(p, XP, sin_cos), params, _basis(ra_deg.shape[0], ra_deg.dtype))
    return moved, params, rv, dt_days, angles, d_angles, overridden


@partial(jax.jit, static_argnames=("has_observer",))
def _jacobian_space_motion(params, rv, dt_days, angles, d_angles, observer_au, has_observer):
    """Stage 1b: position, velocity and time to move (:func:`_model._catalog_to_pv`'s state), with derivatives."""
    obs = _model._observer_tuple(observer_au) if has_observer else None
    basis = _basis(rv.shape[0], rv.dtype)

    def stage(*args):
        return _model._space_motion_stage(*args, rv, dt_days, obs, XP)

    return _lane_jvp(stage, (*params[2:], *angles), (*basis[2:], *d_angles))


@jax.jit
def _jacobian_motion(state, d_state):
    """Stage 2: the light-time motion (position at the second epoch), with its derivatives."""
    def stage(*st):
        return _model._light_time_motion(st[0:3], st[3:6], st[6], XP)

    return _lane_jvp(stage, tuple(state), tuple(d_state))


@partial(jax.jit, static_argnames=("has_observer",))
def _jacobian_observe(inputs, moved, p2, d_p2, state, d_state, overridden, cos_d, observer_au,
                      has_observer):
    """Stage 3: back to a catalog place (seen from the observer), with its derivatives.

    Returns the values of :func:`propagate_arrays`, ``jac`` (for each of the 5 outputs an
    array (5 inputs, n), in (α, δ) rad units), and cosδ at the input and output positions.
    """
    obs = _model._observer_tuple(observer_au) if has_observer else None

    def stage(p2_au, v_au_day, parallax_mas, px_used_arcsec):
        return _model._observe(p2_au, v_au_day, parallax_mas, px_used_arcsec, overridden, obs, XP)

    primals = (tuple(p2), tuple(state[3:6]), state[7], state[8])
    tangents = (tuple(d_p2), tuple(d_state[3:6]), d_state[7], d_state[8])
    (out, (rv2_kms, cos_d_seen)), (jac, _) = _lane_jvp(stage, primals, tangents)
    values = _model._finish(moved, out, (rv2_kms, cos_d, cos_d_seen), *inputs, XP)
    return values, jac, cos_d, cos_d_seen


def _propagate_jacobian(chunk, observer_au, has_observer):
    """Values and per-star Jacobians ∂out/∂(α, δ, ϖ, μα*, μδ) of the kernel, stage by stage.

    Returns ``moved``, the values, ``jac`` (for each of the 5 outputs an array (5 inputs, n))
    and cosδ at the input and output positions.
    """
    sin_cos = _sin_cos_pass(*chunk)
    moved, params, rv, dt_days, angles, d_angles, overridden = _jacobian_pmsafe(*chunk, sin_cos)
    state, d_state = _jacobian_space_motion(params, rv, dt_days, angles, d_angles, observer_au,
                                            has_observer=has_observer)
    cos_d = angles[3]
    p2, d_p2 = _jacobian_motion(state, d_state)
    values, jac, cos_in, cos_out = _jacobian_observe(tuple(chunk[:6]), moved, p2, d_p2, state, d_state,
                                                     overridden, cos_d, observer_au,
                                                     has_observer=has_observer)
    return moved, values, jac, cos_in, cos_out


# The covariance product J C Jᵀ is memory-bound on a CPU: one executable reads the (n, 5, 5)
# matrices as (n, 25) column by column and writes the result as (n, 25) directly (stacked
# along the last axis: one cheap pass, where a transpose of 25 rows was 13 times slower).
# XLA recomputes J·C for every output element; that costs less than handing J·C over in
# memory (1M stars: 0.17 s of CPU, against 0.24 s as two executables).


def _jcjt(jac, c_in, cos_dec_in, cos_dec_out, moved):
    """J C Jᵀ per star with :func:`_covariance_product`'s NaN conventions, as 5×5 nested lists
    of rows (the upper triangle mirrored); ``c_in`` the input matrices as 5×5 nested lists."""
    j = _model._scaled_jacobian(jac, cos_dec_in, cos_dec_out, XP)
    unknown = [jnp.isnan(c_in[i][i]) for i in range(5)]
    c = [[jnp.where(unknown[i] | unknown[k] | jnp.isnan(c_in[i][k]), 0.0, c_in[i][k])
          for k in range(5)] for i in range(5)]
    jc = [[sum(j[i][m] * c[m][k] for m in range(5)) for k in range(5)] for i in range(5)]
    new = [[None] * 5 for _ in range(5)]
    for i in range(5):
        for m_out in range(i, 5):
            value = sum(jc[i][k] * j[m_out][k] for k in range(5))
            value = jnp.where(unknown[i] | unknown[m_out], jnp.nan, value)
            new[i][m_out] = new[m_out][i] = jnp.where(moved, value, c_in[i][m_out])
    return new


@jax.jit
def _covariance_product(jac, cov, cos_dec_in, cos_dec_out, moved):
    """J C Jᵀ per star, as (n, 25) (row-major 5×5 matrices).

    ``jac``: for each of the 5 outputs an array (5 inputs, n) in (α, δ) rad units (scaled
    here to α*, δ in mas); ``cov`` (n, 25), the row-major input matrices. A NaN variance
    means the parameter is unknown: it counts as exactly known (variance 0) for the others,
    and its own row and column of the result are NaN. NaN off-diagonal terms count as zero
    correlation. Rows not ``moved`` keep their input matrix. The result is symmetric to the
    last bit (the upper triangle is mirrored).
    """
    rows = [cov[:, e] for e in range(25)]
    new = _jcjt(jac, [[rows[5 * i + k] for k in range(5)] for i in range(5)], cos_dec_in, cos_dec_out, moved)
    return jnp.stack([new[i][k] for i in range(5) for k in range(5)], axis=-1)


@jax.jit
def _errors_product(jac, errors, cos_dec_in, cos_dec_out, moved):
    """:func:`_covariance_product` from and to Gaia's error columns, without (n, 5, 5) matrices.

    ``errors`` (15, n): the five ``*_error`` then the ten ``*_corr`` (schema order). The input
    matrices are built as :func:`~jointcal_ap.refcat.epoch.covariance_from_errors` builds them
    (a NaN correlation is 0), the output read back as
    :func:`~jointcal_ap.refcat.epoch.errors_from_covariance` reads it (a correlation is NaN
    where either variance is NaN or zero); returns (15, n) in the same order.
    """
    sig = [errors[i] for i in range(5)]
    c = [[sig[i] * sig[i] if i == k else None for k in range(5)] for i in range(5)]
    for e, (i, k) in enumerate(_PAIRS):
        r = errors[5 + e]
        c[i][k] = c[k][i] = jnp.where(jnp.isnan(r), 0.0, r) * sig[i] * sig[k]
    new = _jcjt(jac, c, cos_dec_in, cos_dec_out, moved)
    out_sig = [jnp.sqrt(new[i][i]) for i in range(5)]
    out = list(out_sig)
    for i, k in _PAIRS:
        denom = out_sig[i] * out_sig[k]
        out.append(jnp.where(denom > 0, new[i][k] / jnp.where(denom > 0, denom, 1.0), jnp.nan))
    return jnp.stack(out)


#: (i, k) of the ten correlations, in the schema's order (CORRELATIONS).
_PAIRS = tuple((i, k) for i in range(5) for k in range(i + 1, 5))


def propagate_arrays(arrays, observer, cov, errors=None):
    """Values (and the propagated covariance) of ``arrays`` (the 8 inputs of
    :func:`~jointcal_ap.refcat.epoch.propagate`, broadcast, float64) on JAX.

    With ``errors`` (15 arrays (n,): the five ``*_error`` and the ten ``*_corr``) instead of
    ``cov``, the third result is those 15 columns propagated (:func:`_errors_product`).
    """
    n = arrays[0].shape[0]
    outputs = [np.empty(n, dtype=np.float64) for _ in range(6)]
    moved_out = np.empty(n, dtype=bool)
    cov_out = np.empty((n, 5, 5), dtype=np.float64) if cov is not None else None
    errors_out = np.empty((15, n), dtype=np.float64) if errors is not None else None
    has_observer = observer is not None

    def run_chunk(start: int) -> None:
        stop = min(n, start + CHUNK)
        m = stop - start
        size = bucket(m, MIN_BUCKET)
        chunk = [pad(a[start:stop], size) for a in arrays]
        obs_chunk = (np.zeros(3) if observer is None else observer if observer.ndim == 1
                     else pad(observer[start:stop], size))
        if errors is not None:
            moved, values, jac, cos_in, cos_out = _propagate_jacobian(chunk, obs_chunk, has_observer)
            err_chunk = np.empty((15, size))
            for e, a in enumerate(errors):
                err_chunk[e, :m] = a[start:stop]
            err_chunk[:, m:] = 1.0  # padding rows: any finite values
            errors_out[:, start:stop] = np.asarray(_errors_product(jac, err_chunk, cos_in, cos_out, moved))[:, :m]
        elif cov is None:
            moved, values = _propagate_values(*chunk, obs_chunk, has_observer=has_observer)
        else:
            moved, values, jac, cos_in, cos_out = _propagate_jacobian(chunk, obs_chunk, has_observer)
            cov_chunk = pad(cov[start:stop].reshape(m, 25), size)
            new_cov = _covariance_product(jac, cov_chunk, cos_in, cos_out, moved)
            cov_out[start:stop] = np.asarray(new_cov)[:m].reshape(m, 5, 5)
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
    return moved_out, outputs, cov_out if errors is None else errors_out


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
    _, _, jac, cos_in, cos_out = _propagate_jacobian(chunk, obs, observer is not None)
    j = jax.jit(partial(_model._scaled_jacobian, xp=XP))(jac, cos_in, cos_out)
    return np.stack([np.stack([np.asarray(j[i][k])[:n] for k in range(5)], axis=-1) for i in range(5)], axis=-2)
