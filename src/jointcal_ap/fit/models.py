"""Astrometric models: pixel → visit tangent plane, as polynomials in normalised pixel coordinates.

Two models, described by their parameter *blocks* (the solver only needs to know which
block(s) a measurement touches and how to evaluate the mapping):

- :class:`SimpleModel`: one polynomial of degree ``degree`` per visit × detector (CCD).
- :class:`ConstrainedModel`: a per-detector polynomial (pixel → focal plane) composed
  with a per-visit polynomial (focal plane → tangent plane), as jointcal's
  ConstrainedAstrometryModel and gbdes. The composition is degenerate under any
  invertible map inserted between the two; fixing the reference visit's mapping to the
  identity breaks that.

Tangent-plane coordinates (ξ, η) are in mas, gnomonic about each visit's boresight.
Pixel coordinates are normalised per CCD to u = (x − cx)/s, v = (y − cy)/s ∈ [−1, 1].

For the solver (:mod:`jointcal_ap.fit.solve`) each model describes its Jacobian CCD by CCD
(:meth:`SimpleModel.ccd_linearise`): per parameter *slot* (the CCD's polynomial; or the
detector's and the visit's), a basis ``φ`` (n, K) and a 2×2 *core* ``G`` per measurement with
∂(ξ, η)_i/∂coeff[j, k] = G[i, j]·φ[k]. Pure NumPy, no compilation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ConstrainedModel", "SimpleModel", "monomials", "n_terms", "poly_basis", "poly_design", "poly_eval"]


def n_terms(degree: int) -> int:
    """Number of monomials u^i v^j with i + j ≤ degree."""
    return (degree + 1) * (degree + 2) // 2


def monomials(degree: int) -> list[tuple[int, int]]:
    """Exponents (i, j) of u^i v^j in our order: by total degree, then decreasing i."""
    return [(k - j, j) for k in range(degree + 1) for j in range(k + 1)]


def poly_design(u, v, degree: int, xp=np):
    """The monomials evaluated at (u, v): shape (..., n_terms) (running products, no ``**``)."""
    u, v = xp.asarray(u), xp.asarray(v)
    up, vp = [None, u], [None, v]
    for _ in range(degree - 1):
        up.append(up[-1] * u)
        vp.append(vp[-1] * v)
    ones = xp.ones(xp.broadcast_shapes(u.shape, v.shape))

    def term(i, j):
        if i == 0:
            return vp[j] * ones if j else ones
        return up[i] * vp[j] if j else up[i] * ones

    return xp.stack([term(i, j) for i, j in monomials(degree)], axis=-1)


def poly_basis(u: np.ndarray, v: np.ndarray, degree: int, derivatives: bool = False):
    """Monomials of 1-D ``u``, ``v`` as an (n, K) array (and, with ``derivatives``, ∂/∂u and ∂/∂v).

    The same numbers as :func:`poly_design`, built from running powers (no ``**``).
    """
    n, terms = len(u), monomials(degree)
    up, vp = [np.ones(n)], [np.ones(n)]
    for _ in range(degree):
        up.append(up[-1] * u)
        vp.append(vp[-1] * v)
    basis = np.empty((n, len(terms)))
    for k, (i, j) in enumerate(terms):
        basis[:, k] = up[i] * vp[j] if i and j else (up[i] if j == 0 else vp[j])
    if not derivatives:
        return basis
    du, dv = np.zeros((n, len(terms))), np.zeros((n, len(terms)))
    for k, (i, j) in enumerate(terms):
        if i:
            du[:, k] = i * up[i - 1] * vp[j]
        if j:
            dv[:, k] = j * up[i] * vp[j - 1]
    return basis, du, dv


def poly_eval(coeffs, u, v, degree: int, xp=np):
    """Evaluate a 2-output polynomial: coeffs (..., 2, K) at (u, v) → (..., 2)."""
    basis = poly_design(u, v, degree, xp)
    return xp.einsum("...ck,...k->...c", coeffs, basis)


def fit_poly(u: np.ndarray, v: np.ndarray, target: np.ndarray, degree: int,
             weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares polynomial (2, K) mapping (u, v) → target (n, 2); numpy."""
    design = poly_design(u, v, degree, np)
    if weights is not None:
        design = design * weights[:, None]
        target = target * weights[:, None]
    # Normal equations: monomials of u, v ∈ [−1, 1] up to a low degree are well conditioned, and
    # this is ~10× cheaper than an SVD-based lstsq (thousands of CCD fits in an association).
    normal = design.T @ design
    try:
        coeffs = np.linalg.solve(normal, design.T @ target)
        if not np.all(np.isfinite(coeffs)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:  # too few points for the degree: the minimum-norm solution
        coeffs, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coeffs.T.copy()


@dataclass(frozen=True)
class CcdGeometry:
    """Normalisation of one CCD's pixel coordinates."""

    cx: float
    cy: float
    scale: float

    @classmethod
    def from_size(cls, naxis1: int, naxis2: int) -> CcdGeometry:
        return cls((naxis1 + 1) / 2.0, (naxis2 + 1) / 2.0, max(naxis1, naxis2) / 2.0)

    def normalise(self, x, y):
        return (x - self.cx) / self.scale, (y - self.cy) / self.scale


@dataclass(frozen=True)
class SimpleModel:
    """One polynomial per CCD.

    Parameters are a flat vector: CCD ``c`` owns ``[c*2K, (c+1)*2K)`` laid out as (2, K):
    the ξ coefficients then the η coefficients.
    """

    degree: int
    n_ccds: int

    name = "simple"

    @property
    def k(self) -> int:
        return n_terms(self.degree)

    @property
    def n_params(self) -> int:
        return self.n_ccds * 2 * self.k

    def block_layout(self) -> list[tuple[int, int]]:
        """(start, size) of every parameter block (one per CCD)."""
        size = 2 * self.k
        return [(c * size, size) for c in range(self.n_ccds)]

    def local_index(self, ccd_index: np.ndarray, visit_index: np.ndarray, detector_index: np.ndarray
                    ) -> np.ndarray:
        """Global parameter indices each measurement depends on: (n, 2K)."""
        size = 2 * self.k
        return ccd_index[:, None] * size + np.arange(size)[None, :]

    def slot_starts(self, visit_of_ccd: np.ndarray, detector_of_ccd: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Per slot: the first parameter of each CCD's block (n_ccds,) and the slot's K."""
        return [(np.arange(self.n_ccds) * 2 * self.k, self.k)]

    def ccd_linearise(self, blocks: list[np.ndarray], u: np.ndarray, v: np.ndarray, *, uv_jacobian: bool = False,
                      basis: np.ndarray | None = None):
        """(ξ, η) of one CCD's measurements and the Jacobian's terms (see the module docstring).

        ``blocks``: the CCD's coefficients per slot, (2, K). Returns ``xy`` (n, 2), the per-slot
        ``[(φ, G)]`` (``G`` None: the identity) and, with ``uv_jacobian``, ∂(ξ, η)/∂(u, v) (n, 2, 2).
        ``basis``: ``poly_basis(u, v, degree)`` if the caller keeps it (it depends on the pixels only).
        """
        coeffs = blocks[0]
        if not uv_jacobian:
            basis = poly_basis(u, v, self.degree) if basis is None else basis
            return basis @ coeffs.T, [(basis, None)], None
        basis, du, dv = poly_basis(u, v, self.degree, derivatives=True)
        duv = np.stack([du @ coeffs.T, dv @ coeffs.T], axis=-1)  # (n, 2 outputs, 2 inputs)
        return basis @ coeffs.T, [(basis, None)], duv

    def evaluate(self, local_params, u, v, xp=np):
        """(ξ, η) in mas from each measurement's local parameters (n, 2K) and normalised pixels."""
        coeffs = local_params.reshape((*local_params.shape[:-1], 2, self.k))
        return poly_eval(coeffs, u, v, self.degree, xp)

    def initial(self, per_ccd: np.ndarray, visit_of_ccd: np.ndarray, detector_of_ccd: np.ndarray,
                reference_visit: int) -> tuple[np.ndarray, np.ndarray]:
        """Parameters from per-CCD initial polynomials (n_ccds, 2, K); returns (params, fixed mask)."""
        return per_ccd.reshape(-1).copy(), np.zeros(self.n_params, dtype=bool)

    def ccd_coefficients(self, params: np.ndarray, ccd: int, **_) -> np.ndarray:
        return np.asarray(params[ccd * 2 * self.k:(ccd + 1) * 2 * self.k]).reshape(2, self.k)


@dataclass(frozen=True)
class ConstrainedModel:
    """Per-detector polynomial (degree ``detector_degree``) then per-visit polynomial.

    Parameter blocks: first one per detector (2·Kd each), then one per visit (2·Kv each).
    The reference visit's block is fixed at the identity, which removes the degeneracy.
    Focal-plane coordinates are in mas (the reference visit's tangent plane at the start)
    and are normalised by ``focal_scale`` before entering the visit polynomial.
    """

    detector_degree: int
    visit_degree: int
    n_detectors: int
    n_visits: int
    focal_scale: float

    name = "constrained"

    @property
    def kd(self) -> int:
        return n_terms(self.detector_degree)

    @property
    def kv(self) -> int:
        return n_terms(self.visit_degree)

    @property
    def n_params(self) -> int:
        return self.n_detectors * 2 * self.kd + self.n_visits * 2 * self.kv

    def block_layout(self) -> list[tuple[int, int]]:
        d, v = 2 * self.kd, 2 * self.kv
        blocks = [(i * d, d) for i in range(self.n_detectors)]
        base = self.n_detectors * d
        return blocks + [(base + i * v, v) for i in range(self.n_visits)]

    def local_index(self, ccd_index: np.ndarray, visit_index: np.ndarray, detector_index: np.ndarray
                    ) -> np.ndarray:
        d, v = 2 * self.kd, 2 * self.kv
        det = detector_index[:, None] * d + np.arange(d)[None, :]
        vis = self.n_detectors * d + visit_index[:, None] * v + np.arange(v)[None, :]
        return np.concatenate([det, vis], axis=1)

    def evaluate(self, local_params, u, v, xp=np):
        d = 2 * self.kd
        det = local_params[..., :d].reshape((*local_params.shape[:-1], 2, self.kd))
        vis = local_params[..., d:].reshape((*local_params.shape[:-1], 2, self.kv))
        focal = poly_eval(det, u, v, self.detector_degree, xp) / self.focal_scale
        return poly_eval(vis, focal[..., 0], focal[..., 1], self.visit_degree, xp)

    def slot_starts(self, visit_of_ccd: np.ndarray, detector_of_ccd: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Per slot (detector, visit): the first parameter of each CCD's block and the slot's K."""
        d, v = 2 * self.kd, 2 * self.kv
        base = self.n_detectors * d
        return [(np.asarray(detector_of_ccd) * d, self.kd), (base + np.asarray(visit_of_ccd) * v, self.kv)]

    def ccd_linearise(self, blocks: list[np.ndarray], u: np.ndarray, v: np.ndarray, *, uv_jacobian: bool = False,
                      basis: np.ndarray | None = None):
        """As :meth:`SimpleModel.ccd_linearise`; slots: the detector's block, then the visit's.
        ``basis``: the detector polynomial's ``poly_basis(u, v, detector_degree)``, if kept."""
        det, vis = blocks
        s = self.focal_scale
        if uv_jacobian:
            phi, phi_u, phi_v = poly_basis(u, v, self.detector_degree, derivatives=True)
        else:
            phi = poly_basis(u, v, self.detector_degree) if basis is None else basis
        focal = phi @ det.T / s
        q, q_0, q_1 = poly_basis(focal[:, 0], focal[:, 1], self.visit_degree, derivatives=True)
        xy = q @ vis.T
        # ∂(ξ, η)/∂(normalised focal coordinates): (n, 2 outputs, 2 inputs)
        d_focal = np.stack([q_0 @ vis.T, q_1 @ vis.T], axis=-1)
        duv = None
        if uv_jacobian:
            f_uv = np.stack([phi_u @ det.T, phi_v @ det.T], axis=-1) / s
            duv = d_focal @ f_uv
        return xy, [(phi, d_focal / s), (q, None)], duv

    def identity_visit(self) -> np.ndarray:
        """Visit coefficients mapping normalised focal coordinates back to mas unchanged."""
        coeffs = np.zeros((2, self.kv))
        terms = monomials(self.visit_degree)
        coeffs[0, terms.index((1, 0))] = self.focal_scale
        coeffs[1, terms.index((0, 1))] = self.focal_scale
        return coeffs

    def initial(self, per_ccd: np.ndarray, visit_of_ccd: np.ndarray, detector_of_ccd: np.ndarray,
                reference_visit: int, samples: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """Start from per-CCD polynomials: detectors from the reference visit, visits fitted to them."""
        k_in = per_ccd.shape[-1]
        degree_in = round((np.sqrt(8 * k_in + 1) - 3) / 2)
        grid = np.linspace(-1, 1, samples)
        gu, gv = (a.ravel() for a in np.meshgrid(grid, grid))
        det_params = np.zeros((self.n_detectors, 2, self.kd))
        for det in range(self.n_detectors):
            ref = np.flatnonzero((visit_of_ccd == reference_visit) & (detector_of_ccd == det))
            source = ref[0] if len(ref) else np.flatnonzero(detector_of_ccd == det)[0]
            focal = poly_eval(per_ccd[source], gu, gv, degree_in, np)
            det_params[det] = fit_poly(gu, gv, focal, self.detector_degree)
        vis_params = np.zeros((self.n_visits, 2, self.kv))
        for visit in range(self.n_visits):
            if visit == reference_visit:
                vis_params[visit] = self.identity_visit()
                continue
            fx, target = [], []
            for c in np.flatnonzero(visit_of_ccd == visit):
                det = detector_of_ccd[c]
                fx.append(poly_eval(det_params[det], gu, gv, self.detector_degree, np) / self.focal_scale)
                target.append(poly_eval(per_ccd[c], gu, gv, degree_in, np))
            fx, target = np.concatenate(fx), np.concatenate(target)
            vis_params[visit] = fit_poly(fx[:, 0], fx[:, 1], target, self.visit_degree)
        params = np.concatenate([det_params.reshape(-1), vis_params.reshape(-1)])
        fixed = np.zeros(self.n_params, dtype=bool)
        start = self.n_detectors * 2 * self.kd + reference_visit * 2 * self.kv
        fixed[start:start + 2 * self.kv] = True
        return params, fixed

    def ccd_coefficients(self, params: np.ndarray, ccd: int, *, visit: int, detector: int,
                         samples: int = 16, degree: int = 5) -> np.ndarray:
        """An equivalent single polynomial (2, n_terms(degree)) for one CCD (exact when degrees allow)."""
        grid = np.linspace(-1, 1, samples)
        gu, gv = (a.ravel() for a in np.meshgrid(grid, grid))
        d = 2 * self.kd
        local = np.concatenate([
            params[detector * d:(detector + 1) * d],
            params[self.n_detectors * d + visit * 2 * self.kv:self.n_detectors * d + (visit + 1) * 2 * self.kv],
        ])
        values = self.evaluate(local[None, :].repeat(len(gu), 0), gu, gv, np)
        return fit_poly(gu, gv, values, degree)
