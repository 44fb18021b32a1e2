"""Rigorous epoch propagation of star astrometry, with full covariance propagation.

The motion model is ERFA's ``eraPmsafe`` (``eraStarpm`` with a floor on small
parallaxes; ERFA 2.0 / SOFA 2023 formulation), re-implemented vectorised (float64,
NumPy or JAX) so that the 5×5 covariance of every star is carried through the exact
Jacobian of the same model (forward-mode autodiff):

1. The catalog place (α, δ, ϖ, μα*, μδ, v_r) is turned into a barycentric
   position and inertial velocity (``eraStarpv``): the observed radial and
   transverse velocities are corrected for the relativistic Doppler effect
   (ERFA iterates the correction; it has a closed form, used here).
2. The star moves in a straight line at constant velocity, with the light time
   taken into account at both epochs (``eraStarpm``).
3. The new position/velocity is turned back into a catalog place (``eraPvstar``).

Parallaxes below ``max(326 × |μ|, 5e-7)`` arcsec, with |μ| the angle moved in
a year in radians (zero, negative and missing parallaxes included), are replaced
by that floor *for the motion only*, exactly as ``eraPmsafe`` does, which keeps
the fictitious distance far enough for the space velocity to stay below ~0.01 c.
The positions are then ERFA's, perspective and relativistic effects of the
fictitious distance included (they reach tens of mas over decades for stars
moving several arcsec per year), but the returned parallax is the catalogue's
own (scaled by the change of the fictitious distance, so 0 stays 0 and NaN
stays NaN), not the floor. Two consequences, shared with ERFA: such a star's
returned radial velocity carries the fictitious perspective change, and a
round trip t0 → t1 → t0 recomputes the floor from the new proper motion, so it
only closes to the extent the floor does (below 0.001 µas for every Hipparcos
star over 25 years, but tens of mas for 10"/yr stars without parallax over a
century).

Units and signs
---------------
At the public boundary everything follows the package conventions (DESIGN.md):
``ra``/``dec`` in degrees (ICRS), ``parallax`` in mas, ``pmra`` = μα* = dα/dt·cosδ
and ``pmdec`` = dδ/dt in mas/yr, ``radial_velocity`` in km/s (positive receding),
epochs as Julian years in TDB. Covariances are in Gaia's parameter order
(α*, δ, ϖ, μα*, μδ) with units (mas, mas, mas, mas/yr, mas/yr), where α* is the
offset along the local parallel (δα* = cosδ·δα). Inside the kernels angles are
radians, positions AU, velocities AU/day and times days (ERFA's units), and the
variable names say so. A positive ``epoch_to − epoch`` moves a star along its
proper motion, a negative one against it. At δ = ±90° exactly, (α*, μα*) are
taken along the direction that α defines, as ERFA does.

Backends
--------
The model is written once (the kernel below) against an array namespace and runs on
one of two backends, which agree to rounding:

- **NumPy** (``backend="numpy"``): no compilation and no JAX import, so a few thousand
  stars (a fit's reference stars, one exposure's cone) cost milliseconds in a fresh
  process. The Jacobian comes from forward-mode dual numbers (:class:`_Dual`): every
  operation carries the derivatives along the five input directions.
- **JAX** (``backend="jax"``, :mod:`jointcal_ap.refcat._epoch_jax`): jitted and fused,
  for large arrays (chunks padded to power-of-two buckets, several threads).

``backend="auto"`` (the default) takes NumPy up to ``_NUMPY_MAX_ROWS`` rows (and up to
``_NUMPY_MAX_ROWS_COV`` with a covariance), JAX above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import erfa
import numpy as np

from jointcal_ap.refcat._epoch_kernel import (
    _DAYS_PER_JYEAR,
    _finish,
    _kernel,
    _observer_tuple,
    _prepare,
    _scaled_jacobian,
)
from jointcal_ap.refcat.schema import ASTROMETRIC_PARAMETERS, CORRELATION_NAMES, CORRELATIONS

__all__ = [
    "Propagated",
    "covariance_from_errors",
    "earth_barycentric_position",
    "errors_from_covariance",
    "propagate",
]

# backend="auto": NumPy up to this many rows (values only), and with a covariance.
_NUMPY_MAX_ROWS = 1 << 62  # positions: NumPy at every size (as fast as JAX on a CPU, no compilation)
_NUMPY_MAX_ROWS_COV = 1 << 15


@dataclass(frozen=True)
class Propagated:
    """Astrometry of n stars at a new epoch, as returned by :func:`propagate`.

    Attributes
    ----------
    ra, dec : ndarray, shape (n,)
        ICRS position at ``epoch_to``, degrees; ``ra`` in [0, 360). Barycentric,
        or the direction seen from the observer when one was given.
    parallax : ndarray, shape (n,)
        Parallax at ``epoch_to``, mas (NaN where the input was NaN).
    pmra, pmdec : ndarray, shape (n,)
        Proper motion at ``epoch_to``, mas/yr; ``pmra`` includes cosδ.
    radial_velocity : ndarray, shape (n,)
        Radial velocity at ``epoch_to``, km/s (NaN where the input was NaN).
    cov : ndarray, shape (n, 5, 5), or None
        Covariance of (α*, δ, ϖ, μα*, μδ) at ``epoch_to`` in (mas, mas, mas,
        mas/yr, mas/yr); None when no input covariance was given.
    moved : ndarray of bool, shape (n,)
        False for rows that could not be moved (NaN ``pmra``/``pmdec`` or NaN
        epoch); those rows are returned exactly as given.
    """

    ra: np.ndarray
    dec: np.ndarray
    parallax: np.ndarray
    pmra: np.ndarray
    pmdec: np.ndarray
    radial_velocity: np.ndarray
    cov: np.ndarray | None
    moved: np.ndarray

    def __post_init__(self) -> None:
        n = self.ra.shape
        for name in ("dec", "parallax", "pmra", "pmdec", "radial_velocity", "moved"):
            if getattr(self, name).shape != n:
                raise ValueError(
                    f"Propagated.{name} has shape {getattr(self, name).shape}, expected {n}"
                )
        if self.cov is not None and self.cov.shape != (*n, 5, 5):
            raise ValueError(f"Propagated.cov has shape {self.cov.shape}, expected {(*n, 5, 5)}")


# ---------------------------------------------------------------------------
# The NumPy backend: the kernel on plain arrays, or on dual numbers for the Jacobian.
# ---------------------------------------------------------------------------


class _Dual:
    """A value (n,) and its derivatives along the five input directions (5, n).

    Forward-mode automatic differentiation in NumPy: arithmetic and the functions of
    :data:`_NP` carry the derivatives exactly; comparisons look at the values only.
    """

    __slots__ = ("t", "v")
    __array_ufunc__ = None  # NumPy defers to the reflected operators below
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, v, t):
        self.v, self.t = v, t

    def __add__(self, o):
        return _Dual(self.v + o.v, self.t + o.t) if isinstance(o, _Dual) else _Dual(self.v + o, self.t)

    __radd__ = __add__

    def __sub__(self, o):
        return _Dual(self.v - o.v, self.t - o.t) if isinstance(o, _Dual) else _Dual(self.v - o, self.t)

    def __rsub__(self, o):
        return _Dual(o - self.v, -self.t)

    def __mul__(self, o):
        if isinstance(o, _Dual):
            return _Dual(self.v * o.v, self.t * o.v + o.t * self.v)
        return _Dual(self.v * o, self.t * o)

    __rmul__ = __mul__

    def __truediv__(self, o):
        if isinstance(o, _Dual):
            v = self.v / o.v
            return _Dual(v, (self.t - v * o.t) / o.v)
        return _Dual(self.v / o, self.t / o)

    def __rtruediv__(self, o):
        v = o / self.v
        return _Dual(v, -v * self.t / self.v)

    def __neg__(self):
        return _Dual(-self.v, -self.t)

    def __lt__(self, o):
        return self.v < _value(o)

    def __le__(self, o):
        return self.v <= _value(o)

    def __gt__(self, o):
        return self.v > _value(o)

    def __ge__(self, o):
        return self.v >= _value(o)

    def __eq__(self, o):  # type: ignore[override]
        return self.v == _value(o)

    def __ne__(self, o):  # type: ignore[override]
        return self.v != _value(o)


def _value(x):
    return x.v if isinstance(x, _Dual) else x


def _tangent(x):
    return x.t if isinstance(x, _Dual) else 0.0


class _NumpyNamespace:
    """The functions the kernel calls, on NumPy arrays or :class:`_Dual` numbers."""

    isfinite = staticmethod(np.isfinite)
    deg2rad = staticmethod(np.deg2rad)
    rad2deg = staticmethod(np.rad2deg)
    mod = staticmethod(np.mod)
    ones_like = staticmethod(np.ones_like)

    @staticmethod
    def stage(values):
        """A stage boundary of the kernel (for JAX's compiler; nothing to do here)."""
        return values

    @staticmethod
    def where(cond, a, b):
        if isinstance(a, _Dual) or isinstance(b, _Dual):
            return _Dual(np.where(cond, _value(a), _value(b)), np.where(cond, _tangent(a), _tangent(b)))
        return np.where(cond, a, b)

    @staticmethod
    def sqrt(x):
        if isinstance(x, _Dual):
            v = np.sqrt(x.v)
            return _Dual(v, x.t / (2.0 * v))
        return np.sqrt(x)

    @staticmethod
    def arctan2(y, x):
        if isinstance(x, _Dual) or isinstance(y, _Dual):
            xv, yv = _value(x), _value(y)
            return _Dual(np.arctan2(yv, xv), (xv * _tangent(y) - yv * _tangent(x)) / (xv * xv + yv * yv))
        return np.arctan2(y, x)

    @staticmethod
    def sin(x):
        return _Dual(np.sin(x.v), np.cos(x.v) * x.t) if isinstance(x, _Dual) else np.sin(x)

    @staticmethod
    def cos(x):
        return _Dual(np.cos(x.v), -np.sin(x.v) * x.t) if isinstance(x, _Dual) else np.cos(x)

    @classmethod
    def sin_cos(cls, x):
        return cls.sin(x), cls.cos(x)


_NP = _NumpyNamespace()


def _covariance_product(j, cov, moved):
    """J C Jᵀ row by row (NumPy), with the conventions of :func:`propagate`'s ``cov``.

    ``j``: 5×5 nested lists of (n,) rows in (α*, δ) mas units; ``cov`` (n, 5, 5). A NaN
    variance counts as exactly known (0) for the others and gives NaN rows/columns; NaN
    off-diagonal terms count as zero; rows not moved keep their input covariance. The
    result is symmetric to the last bit (the upper triangle is mirrored).
    """
    jac = np.stack([np.stack(row, axis=-1) for row in j], axis=-2)  # (n, 5 out, 5 in)
    unknown = np.isnan(np.diagonal(cov, axis1=1, axis2=2))
    either = unknown[:, :, None] | unknown[:, None, :]
    c = np.where(either | np.isnan(cov), 0.0, cov)
    new = jac @ c @ np.swapaxes(jac, 1, 2)
    lower = np.tril_indices(5, -1)
    new[:, lower[0], lower[1]] = new[:, lower[1], lower[0]]
    new = np.where(either, np.nan, new)
    return np.where(moved[:, None, None], new, cov)


#: Rows per chunk when (n, 5, 5) matrices are built or read element by element (1.6 MB of
#: matrices: the chunk stays in the CPU caches).
_MATRIX_CHUNK = 1 << 13

#: Rows per chunk of the NumPy backend: the dual numbers of a chunk (6 × 8 bytes per star per
#: intermediate) stay in the CPU caches, and memory stays bounded whatever the size.
_NUMPY_CHUNK = 1 << 14


def _propagate_numpy(arrays, observer, cov):
    """Values (and the propagated covariance) on the NumPy backend, chunk by chunk; as :func:`propagate`."""
    n = len(arrays[0])
    if n <= _NUMPY_CHUNK:
        return _propagate_numpy_chunk(arrays, observer, cov)
    moved = np.empty(n, dtype=bool)
    values = [np.empty(n) for _ in range(6)]
    cov_out = None if cov is None else np.empty((n, 5, 5))
    for start in range(0, n, _NUMPY_CHUNK):
        rows = slice(start, min(n, start + _NUMPY_CHUNK))
        obs = None if observer is None else (observer if observer.ndim == 1 else observer[rows])
        m, v, c = _propagate_numpy_chunk([a[rows] for a in arrays], obs, None if cov is None else cov[rows])
        moved[rows] = m
        for dst, src in zip(values, v, strict=True):
            dst[rows] = src
        if c is not None:
            cov_out[rows] = c
    return moved, values, cov_out


def _propagate_numpy_chunk(arrays, observer, cov):
    obs = None if observer is None else _observer_tuple(observer)
    with np.errstate(all="ignore"):  # padded poles, zero parallaxes: handled by the model's wheres
        moved, params, rv, dt_days = _prepare(*arrays, _NP)
        if cov is None:
            out, aux = _kernel(params, rv, dt_days, obs, _NP)
            return moved, _finish(moved, out, aux, *arrays[:6], _NP), None
        n = len(arrays[0])
        duals = tuple(_Dual(p, np.broadcast_to(np.eye(5)[:, k:k + 1], (5, n))) for k, p in enumerate(params))
        out, aux = _kernel(duals, rv, dt_days, obs, _NP)
        values = _finish(moved, tuple(_value(o) for o in out), tuple(_value(a) for a in aux), *arrays[:6], _NP)
        j = _scaled_jacobian([out[i].t for i in range(5)], _value(aux[1]), _value(aux[2]), _NP)
        return moved, values, _covariance_product(j, cov, moved)


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def _as_float_array(value: Any, name: str, unit: str | None) -> np.ndarray:
    """Plain float64 array from numbers, arrays, Quantity (converted to unit) or Time (TDB jyear)."""
    if hasattr(value, "jyear") and hasattr(value, "tdb"):  # astropy Time
        return np.asarray(value.tdb.jyear, dtype=np.float64)
    if hasattr(value, "unit") and hasattr(value, "to_value"):  # astropy Quantity
        if unit is None:
            raise TypeError(f"{name}: expected a plain number or array, got a Quantity")
        import astropy.units as u

        equivalencies = u.parallax() if name == "parallax" else []
        return np.asarray(value.to_value(unit, equivalencies=equivalencies), dtype=np.float64)
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected numbers, got {type(value).__name__}") from exc


def propagate(
    ra,
    dec,
    parallax,
    pmra,
    pmdec,
    radial_velocity,
    epoch,
    epoch_to,
    *,
    cov=None,
    observer=None,
    backend: str = "auto",
) -> Propagated:
    """Move stars from their catalog epoch to ``epoch_to``, propagating the covariance.

    The space motion is ERFA's rigorous model (``eraPmsafe``): straight-line
    barycentric motion with light-time and relativistic Doppler corrections,
    perspective effects (foreshortening, perspective acceleration) included.
    It agrees with ``erfa.pmsafe`` to rounding (below 0.001 µas for every
    Hipparcos star). Vectorised (NumPy, or jitted JAX for large arrays); the
    covariance, when given, is propagated through the exact Jacobian of the same model.

    Parameters
    ----------
    ra, dec : array_like, shape (n,) or scalar
        ICRS position at ``epoch``, degrees.
    parallax : array_like
        Parallax, mas. NaN, zero or negative parallaxes are allowed: for the
        motion they are raised to eraPmsafe's floor (see the module docstring),
        but the returned parallax is still the catalogue's (NaN stays NaN).
    pmra : array_like
        Proper motion in right ascension *including* cosδ (μα* = dα/dt·cosδ), mas/yr.
    pmdec : array_like
        Proper motion in declination, mas/yr.
    radial_velocity : array_like
        Barycentric radial velocity, km/s, positive away from the observer.
        NaN counts as 0 for the motion and stays NaN on output.
    epoch : array_like
        Epoch of the input astrometry, Julian years, TDB (per row). An astropy
        ``Time`` is accepted and converted to TDB.
    epoch_to : array_like
        Target epoch, Julian years, TDB (scalar or per row); ``Time`` accepted.
    cov : array_like, shape (n, 5, 5), optional
        Covariance of (α*, δ, ϖ, μα*, μδ) in (mas, mas, mas, mas/yr, mas/yr),
        α* = α·cosδ (Gaia's ``ra_error`` is σ(α*)). See
        :func:`covariance_from_errors`. It is propagated as J C Jᵀ with J the
        exact Jacobian of this function's model (forward-mode autodiff),
        including the cosδ of α* at both epochs. A NaN variance means "unknown":
        that parameter is taken as exactly known (variance 0) when propagating
        the others, and its own row and column of the output are NaN. NaN
        off-diagonal terms are taken as zero correlation.
    observer : array_like, shape (3,) or (n, 3), optional
        Barycentric ICRS position of the observer at ``epoch_to``, AU (for the
        Earth, :func:`earth_barycentric_position`). When given, the returned
        ``ra``/``dec`` are the geometric direction of the star seen from the
        observer (annual parallax, with the Rømer delay; no aberration and no
        light deflection), as ``eraPmpx`` computes it; the other returned
        parameters stay barycentric. Default: barycentric place.
    backend : "auto", "numpy" or "jax"
        Where to compute (see the module docstring); the results agree to rounding.

    Returns
    -------
    Propagated
        Astrometry at ``epoch_to`` (NumPy arrays). Rows with NaN ``pmra`` or
        ``pmdec`` (or NaN epochs) are returned unchanged with ``moved=False``.
        The inputs are never modified.

    Raises
    ------
    ValueError
        If the inputs do not broadcast to one length, or ``cov``/``observer``
        have the wrong shape.

    Examples
    --------
    Barnard's star (Gaia DR3) from J2016.0 to J2026.0; it approaches at 110 km/s,
    so its proper motion grows (perspective acceleration):

    >>> p = propagate(269.4486, 4.7398, 546.98, -801.55, 10362.39, -110.5, 2016.0, 2026.0)
    >>> round(float(p.dec[0] - 4.7398) * 3.6e6)  # mas northwards in 10 years
    103688
    >>> round(float(p.pmdec[0]), 1), round(float(p.parallax[0]), 2)
    (10375.2, 547.32)

    With covariances built from Gaia-style errors:

    >>> cov = covariance_from_errors({"ra_error": 0.02, "dec_error": 0.02, "parallax_error": 0.03,
    ...                               "pmra_error": 0.03, "pmdec_error": 0.03}, {"ra_pmra_corr": 0.2})
    >>> p = propagate(269.4486, 4.7398, 546.98, -801.55, 10362.39, -110.5, 2016.0, 2026.0, cov=cov)
    >>> round(float(errors_from_covariance(p.cov)["ra_error"][0]), 3)  # √(σ²α* + 2Δt·ρσσ + Δt²σ²μ), mas
    0.305
    """
    names = ("ra", "dec", "parallax", "pmra", "pmdec", "radial_velocity", "epoch", "epoch_to")
    units = ("deg", "deg", "mas", "mas/yr", "mas/yr", "km/s", None, None)
    values = (ra, dec, parallax, pmra, pmdec, radial_velocity, epoch, epoch_to)
    arrays = [_as_float_array(v, n, u) for v, n, u in zip(values, names, units, strict=True)]
    for name, a in zip(names, arrays, strict=True):
        if a.ndim > 1:
            raise ValueError(f"{name}: expected a scalar or a 1-D array, got shape {a.shape}")
    try:
        arrays = np.broadcast_arrays(*[np.atleast_1d(a) for a in arrays])
    except ValueError as exc:
        shapes = ", ".join(f"{n}{a.shape}" for n, a in zip(names, arrays, strict=True))
        raise ValueError(f"inputs do not broadcast to one length: {shapes}") from exc
    n = arrays[0].shape[0]

    cov_in = None
    if cov is not None:
        cov_in = np.asarray(cov, dtype=np.float64)
        if cov_in.shape == (5, 5):
            cov_in = np.broadcast_to(cov_in, (n, 5, 5))
        if cov_in.shape != (n, 5, 5):
            raise ValueError(f"cov: expected shape ({n}, 5, 5), got {cov_in.shape}")
    obs = None
    if observer is not None:
        obs = _as_float_array(observer, "observer", "AU")
        if obs.shape not in ((3,), (n, 3)):
            raise ValueError(f"observer: expected shape (3,) or ({n}, 3) in AU, got {obs.shape}")

    if backend == "auto":
        limit = _NUMPY_MAX_ROWS if cov_in is None else _NUMPY_MAX_ROWS_COV
        backend = "numpy" if n <= limit else "jax"
    if backend == "numpy":
        moved, values, cov_out = _propagate_numpy(arrays, obs, cov_in)
    elif backend == "jax":
        from jointcal_ap.refcat._epoch_jax import propagate_arrays

        moved, values, cov_out = propagate_arrays(arrays, obs, cov_in)
    else:
        raise ValueError(f"backend must be 'auto', 'numpy' or 'jax', got {backend!r}")
    return Propagated(*(np.asarray(v, dtype=np.float64) for v in values), cov=cov_out,
                      moved=np.asarray(moved, dtype=bool))


def _propagate_with_errors(ra, dec, parallax, pmra, pmdec, radial_velocity, epoch, epoch_to, *,
                           errors: dict[str, np.ndarray], correlations: dict[str, np.ndarray],
                           observer=None, backend: str = "auto") -> tuple[Propagated, dict[str, np.ndarray]]:
    """:func:`propagate` with the covariance given and returned as Gaia's error columns.

    The same as ``covariance_from_errors`` → ``propagate(cov=...)`` → ``errors_from_covariance``
    (to rounding), for plain float64 arrays of one length n; what a catalog query with error
    columns needs. On the JAX backend the (n, 5, 5) matrices are never built: each chunk's
    errors go in and come out as columns of the one executable (1M stars: the matrices in and
    out were 400 MB of memory traffic and ~0.1 s of a 0.5 s query). ``errors``: the five
    ``*_error`` (a missing one is NaN); ``correlations``: any of the ten ``*_corr`` (missing: 0).
    Returns the propagated values (``cov`` None) and the fifteen columns.
    """
    arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(a, dtype=np.float64))
                                   for a in (ra, dec, parallax, pmra, pmdec, radial_velocity, epoch, epoch_to)])
    n = len(arrays[0])
    if backend == "auto":
        backend = "numpy" if n <= _NUMPY_MAX_ROWS_COV else "jax"
    if backend != "jax":
        cov = covariance_from_errors(errors, correlations)
        result = propagate(*arrays, cov=cov, observer=observer, backend=backend)
        out = errors_from_covariance(result.cov)
        return dataclasses.replace(result, cov=None), out
    from jointcal_ap.refcat._epoch_jax import propagate_arrays

    unknown = set(errors) - {f"{p}_error" for p in ASTROMETRIC_PARAMETERS}
    unknown |= set(correlations) - set(CORRELATION_NAMES)
    if unknown:
        raise KeyError(f"unknown error/correlation names: {sorted(unknown)}")
    names = [*(f"{p}_error" for p in ASTROMETRIC_PARAMETERS), *CORRELATION_NAMES]
    columns = [np.broadcast_to(np.asarray(errors.get(k, np.nan) if k.endswith("_error") else
                                          correlations.get(k, 0.0), dtype=np.float64), (n,)) for k in names]
    obs = None if observer is None else _as_float_array(observer, "observer", "AU")
    moved, values, columns_out = propagate_arrays(arrays, obs, None, errors=columns)
    return (Propagated(*values, cov=None, moved=np.asarray(moved, dtype=bool)),
            dict(zip(names, columns_out, strict=True)))


def _jacobian(
    ra, dec, parallax, pmra, pmdec, radial_velocity, epoch, epoch_to, *, observer=None,
    backend: str = "numpy",
) -> np.ndarray:
    """The Jacobian that :func:`propagate` applies to the covariance, shape (n, 5, 5).

    ∂(α*, δ, ϖ, μα*, μδ) at ``epoch_to`` / ∂(α*, δ, ϖ, μα*, μδ) at ``epoch``, in
    (mas, mas, mas, mas/yr, mas/yr); arguments as for :func:`propagate` (plain
    arrays). For tests and diagnostics.
    """
    arrays = np.broadcast_arrays(
        *[
            np.atleast_1d(np.asarray(a, dtype=np.float64))
            for a in (ra, dec, parallax, pmra, pmdec, radial_velocity, epoch, epoch_to)
        ]
    )
    obs = None if observer is None else np.asarray(observer, dtype=np.float64)
    if backend == "jax":
        from jointcal_ap.refcat._epoch_jax import jacobian_arrays

        return jacobian_arrays(arrays, obs)
    n = arrays[0].shape[0]
    with np.errstate(all="ignore"):
        _, params, rv, dt_days = _prepare(*arrays, _NP)
        duals = tuple(_Dual(p, np.broadcast_to(np.eye(5)[:, k:k + 1], (5, n))) for k, p in enumerate(params))
        out, aux = _kernel(duals, rv, dt_days, None if obs is None else _observer_tuple(obs), _NP)
        j = _scaled_jacobian([out[i].t for i in range(5)], _value(aux[1]), _value(aux[2]), _NP)
    return np.stack([np.stack(row, axis=-1) for row in j], axis=-2)


def covariance_from_errors(
    errors: dict[str, Any], correlations: dict[str, Any] | None = None
) -> np.ndarray:
    """Build (n, 5, 5) covariances from Gaia-style errors and correlations.

    Parameters
    ----------
    errors : dict
        ``ra_error`` (σ of α* = α·cosδ, mas), ``dec_error`` (mas),
        ``parallax_error`` (mas), ``pmra_error`` and ``pmdec_error`` (mas/yr);
        arrays of length n or scalars. A missing name counts as NaN (unknown).
    correlations : dict, optional
        Any of Gaia's ten ``*_corr`` names (``ra_dec_corr``, ..., ``pmra_pmdec_corr``,
        see :data:`jointcal_ap.refcat.schema.CORRELATIONS`). A missing name or a
        NaN value counts as 0.

    Returns
    -------
    ndarray, shape (n, 5, 5)
        Covariance in the order (α*, δ, ϖ, μα*, μδ), units (mas, mas, mas, mas/yr, mas/yr).
    """
    correlations = correlations or {}
    unknown = set(errors) - {f"{p}_error" for p in ASTROMETRIC_PARAMETERS}
    unknown |= set(correlations) - {name for name, _, _ in CORRELATIONS}
    if unknown:
        raise KeyError(f"unknown error/correlation names: {sorted(unknown)}")
    sigma = [
        np.asarray(errors.get(f"{p}_error", np.nan), dtype=np.float64)
        for p in ASTROMETRIC_PARAMETERS
    ]
    rho = {
        name: np.asarray(correlations.get(name, 0.0), dtype=np.float64)
        for name, _, _ in CORRELATIONS
    }
    try:
        shape = np.broadcast_shapes(*(s.shape for s in sigma), *(r.shape for r in rho.values()))
    except ValueError as exc:
        raise ValueError("errors and correlations do not broadcast to one length") from exc
    if len(shape) > 1:
        raise ValueError(f"errors and correlations must be 1-D, got shape {shape}")
    n = shape[0] if shape else 1
    sigma = [np.broadcast_to(s_, (n,)) for s_ in sigma]
    rho = {name: np.broadcast_to(r, (n,)) for name, r in rho.items()}
    cov = np.empty((n, 5, 5))  # every element is written below
    # Row by row chunks that stay in the CPU caches: each matrix element is a strided
    # column, written 25 times per cache line (1M stars: 0.52 s in one piece).
    for start in range(0, n, _MATRIX_CHUNK):
        rows = slice(start, min(n, start + _MATRIX_CHUNK))
        c = cov[rows]
        sig = [s_[rows] for s_ in sigma]
        for i in range(5):
            c[:, i, i] = sig[i] * sig[i]
        for name, i, j in CORRELATIONS:
            r = rho[name][rows]
            c[:, i, j] = c[:, j, i] = np.where(np.isnan(r), 0.0, r) * sig[i] * sig[j]
    return cov


def errors_from_covariance(cov) -> dict[str, np.ndarray]:
    """Inverse of :func:`covariance_from_errors`.

    Parameters
    ----------
    cov : array_like, shape (n, 5, 5)
        Covariance of (α*, δ, ϖ, μα*, μδ) in (mas, mas, mas, mas/yr, mas/yr).

    Returns
    -------
    dict of str to ndarray, shape (n,)
        The five ``*_error`` (square roots of the variances) and Gaia's ten
        ``*_corr``; a correlation is NaN where either variance is NaN or zero.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 3 or cov.shape[1:] != (5, 5):
        raise ValueError(f"cov: expected shape (n, 5, 5), got {cov.shape}")
    n = len(cov)
    out = {f"{p}_error": np.empty(n) for p in ASTROMETRIC_PARAMETERS}
    out.update({name: np.empty(n) for name in CORRELATION_NAMES})
    errors = [out[f"{p}_error"] for p in ASTROMETRIC_PARAMETERS]
    # Row by row chunks that stay in the CPU caches (see covariance_from_errors).
    for start in range(0, n, _MATRIX_CHUNK):
        rows = slice(start, min(n, start + _MATRIX_CHUNK))
        c = cov[rows]
        with np.errstate(invalid="ignore"):
            sigma = [np.sqrt(c[:, i, i], out=errors[i][rows]) for i in range(5)]
        for name, i, j in CORRELATIONS:
            denom = sigma[i] * sigma[j]
            dst = out[name][rows]
            dst[:] = np.nan
            np.divide(c[:, i, j], denom, out=dst, where=denom > 0)
    return out


def earth_barycentric_position(time) -> np.ndarray:
    """Barycentric ICRS position of the Earth's centre, AU (``erfa.epv00`` on TDB).

    Parameters
    ----------
    time : astropy.time.Time, or float / array of Julian years (TDB)
        Scalar or 1-D; a ``Time`` is converted to TDB. ERFA's EPV00 is accurate to a few km
        between 1900 and 2100 (it warns outside that range).

    Returns
    -------
    ndarray, shape (3,) for a scalar time or (m, 3)
        Position in AU, axes of the BCRS (aligned with ICRS).

    Examples
    --------
    >>> p = earth_barycentric_position(2016.0)
    >>> 0.98 < float(np.linalg.norm(p)) < 1.02
    True
    """
    if type(time).__module__.startswith("astropy.time"):
        tdb = time.tdb
        jd1, jd2 = tdb.jd1, tdb.jd2
    else:  # Julian years: JD = J2000 + (year − 2000) · 365.25 days, exactly
        jd1 = erfa.DJ00
        jd2 = (np.asarray(time, dtype=np.float64) - 2000.0) * _DAYS_PER_JYEAR
    _, pv_bary = erfa.epv00(jd1, jd2)
    return np.array(pv_bary["p"], dtype=np.float64)
