"""Smooth scalar fields over a detector, evaluated on the whole pixel grid or at points.

A :class:`Field` is a separable sum ``f(x, y) = Σ_ab C[a, b] · Ry_a(y) · Rx_b(x)`` of 1-D
basis functions along rows and columns, so a full ``(ny, nx)`` map costs two small matrix
products. Two kinds:

- :class:`PolynomialField`: Legendre polynomials in coordinates scaled to [-1, 1] over the
  detector, total degree ``d`` (the spatial model of the Alard–Lupton kernel and of the
  differential background);
- :class:`GridField`: values at the nodes of a regular grid of cells, bilinearly interpolated
  (and held flat beyond the outermost nodes).

Pixel coordinates are **1-based** (the centre of ``image[0, 0]`` is (1, 1)).

>>> import numpy as np
>>> f = PolynomialField.from_terms((64, 128), 1, [2.0, 0.5, -0.25])   # 2 + 0.5 P1(u) - 0.25 P1(v)
>>> m = f.image()
>>> m.shape, float(m[0, 0]), float(f.at([128.0], [64.0])[0])
((64, 128), 1.75, 2.25)
>>> g = GridField((10, 10), np.array([2.0, 8.0]), np.array([3.0, 7.0]), np.array([[0.0, 1.0], [2.0, 3.0]]))
>>> float(g.at([5.0], [5.0])[0])                                      # halfway in x and y
1.5
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.polynomial import legendre

from jointcal_ap.psf._sampling import hat_weights

__all__ = ["Field", "GridField", "PolynomialField", "n_poly_terms", "poly_exponents"]


def n_poly_terms(degree: int) -> int:
    """Number of 2-D polynomial terms of total degree ≤ ``degree``."""
    return (degree + 1) * (degree + 2) // 2


def poly_exponents(degree: int) -> list[tuple[int, int]]:
    """``(i, j)`` (x degree, y degree) of each term, ordered by total degree then by j."""
    return [(n - j, j) for n in range(degree + 1) for j in range(n + 1)]


class Field:
    """A separable smooth field: ``f = Ry(y)ᵀ · C · Rx(x)``."""

    shape: tuple[int, int]

    def rows(self, y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """(n_a, len(y)) basis values along y (1-based)."""
        raise NotImplementedError

    def cols(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """(n_b, len(x)) basis values along x (1-based)."""
        raise NotImplementedError

    @property
    def matrix(self) -> np.ndarray:  # pragma: no cover - abstract
        """(n_a, n_b) coefficients."""
        raise NotImplementedError

    def at(self, x, y) -> np.ndarray:
        """Values at 1-based points ``(x, y)`` (same shape as ``x``)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        xr, yr = x.reshape(-1), y.reshape(-1)
        values = np.einsum("ak,ab,bk->k", self.rows(yr), self.matrix, self.cols(xr))
        return values.reshape(x.shape)

    def image(self, dtype=np.float32, rows: slice | None = None) -> np.ndarray:
        """The field on every pixel (or on the rows ``rows``): shape (ny, nx)."""
        ny, nx = self.shape
        r = np.arange(ny, dtype=float)[rows if rows is not None else slice(None)] + 1.0
        left = (self.rows(r).T @ self.matrix).astype(dtype)         # (ny, n_b)
        return left @ self.cols(np.arange(nx, dtype=float) + 1.0).astype(dtype)

    @property
    def is_constant(self) -> bool:
        return False

    def mean(self) -> float:
        """The mean over the detector (from a coarse 33 × 33 sampling)."""
        ny, nx = self.shape
        ys, xs = np.meshgrid(np.linspace(1, ny, 33), np.linspace(1, nx, 33), indexing="ij")
        return float(np.mean(self.at(xs, ys)))


@dataclass(frozen=True)
class PolynomialField(Field):
    """A Legendre polynomial of total degree ``degree`` in u = 2(x-1)/(nx-1) - 1 and
    v = 2(y-1)/(ny-1) - 1 (both in [-1, 1] over the detector).

    Attributes
    ----------
    shape : (ny, nx)
    degree : int
    coefficients : ndarray (degree+1, degree+1)
        ``coefficients[j, i]`` multiplies P_j(v)·P_i(u); zero where i + j > degree.
    """

    shape: tuple[int, int]
    degree: int
    coefficients: np.ndarray

    @classmethod
    def from_terms(cls, shape: tuple[int, int], degree: int, terms) -> PolynomialField:
        """From the term values in :func:`poly_exponents` order."""
        terms = np.asarray(terms, float)
        if terms.shape != (n_poly_terms(degree),):
            raise ValueError(f"degree {degree} has {n_poly_terms(degree)} terms, got {terms.shape}")
        c = np.zeros((degree + 1, degree + 1))
        for t, (i, j) in zip(terms, poly_exponents(degree), strict=True):
            c[j, i] = t
        return cls((int(shape[0]), int(shape[1])), int(degree), c)

    def scaled(self, axis_len: int, p: np.ndarray) -> np.ndarray:
        return 2.0 * (p - 1.0) / max(axis_len - 1, 1) - 1.0

    def rows(self, y):
        return legendre.legvander(self.scaled(self.shape[0], np.asarray(y, float)), self.degree).T

    def cols(self, x):
        return legendre.legvander(self.scaled(self.shape[1], np.asarray(x, float)), self.degree).T

    @property
    def matrix(self):
        return self.coefficients

    @property
    def is_constant(self) -> bool:
        return self.degree == 0 or not np.any(self.coefficients.ravel()[1:])

    def terms(self) -> np.ndarray:
        """Coefficients in :func:`poly_exponents` order."""
        return np.array([self.coefficients[j, i] for i, j in poly_exponents(self.degree)])


def design_matrix(shape: tuple[int, int], degree: int, x, y) -> np.ndarray:
    """(n, n_terms): the Legendre terms of :class:`PolynomialField` at 1-based (x, y)."""
    f = PolynomialField(shape, degree, np.zeros((degree + 1, degree + 1)))
    vx = f.cols(np.asarray(x, float))
    vy = f.rows(np.asarray(y, float))
    return np.stack([vx[i] * vy[j] for i, j in poly_exponents(degree)], axis=1)


@dataclass(frozen=True)
class GridField(Field):
    """Values at grid nodes, bilinearly interpolated (flat beyond the outermost nodes).

    Attributes
    ----------
    shape : (ny, nx)
    x_nodes, y_nodes : ndarray
        Increasing 1-based node positions along x and y.
    values : ndarray (len(y_nodes), len(x_nodes))
    """

    shape: tuple[int, int]
    x_nodes: np.ndarray
    y_nodes: np.ndarray
    values: np.ndarray

    def rows(self, y):
        return hat_weights(np.asarray(self.y_nodes, float), np.asarray(y, float)).T

    def cols(self, x):
        return hat_weights(np.asarray(self.x_nodes, float), np.asarray(x, float)).T

    @property
    def matrix(self):
        return np.asarray(self.values, float)

    @property
    def is_constant(self) -> bool:
        v = np.asarray(self.values)
        return bool(np.all(v == v.flat[0]))

    def image(self, dtype=np.float32, rows: slice | None = None) -> np.ndarray:
        """The field on every pixel: each row a blend of two node rows (bilinear)."""
        ny, nx = self.shape
        r = np.arange(ny, dtype=float)[rows if rows is not None else slice(None)] + 1.0
        g = (self.matrix @ self.cols(np.arange(nx, dtype=float) + 1.0)).astype(dtype)   # (n_y, nx)
        yn = np.asarray(self.y_nodes, float)
        if len(yn) == 1:
            return np.broadcast_to(g[0], (len(r), nx)).copy()
        q = np.clip(r, yn[0], yn[-1])
        k = np.clip(np.searchsorted(yn, q, side="right") - 1, 0, len(yn) - 2)
        t = ((q - yn[k]) / (yn[k + 1] - yn[k])).astype(dtype)[:, None]
        # g[k]·(1 - t) + g[k + 1]·t, written row range by row range into the result (the
        # same operations, without full-size gathered copies of g)
        out = np.empty((len(r), nx), g.dtype)
        for i in np.unique(k):
            rs = np.flatnonzero(k == i)
            rs = slice(int(rs[0]), int(rs[-1]) + 1)     # k is non-decreasing: one range
            np.multiply(g[i], 1 - t[rs], out=out[rs])
            out[rs] += g[i + 1] * t[rs]
        return out


def cell_grid(shape: tuple[int, int], cell_px: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """A regular grid of cells of about ``cell_px`` pixels covering ``shape``.

    Returns the 1-based node (cell-centre) positions along x and y and the row and column
    slices of each cell.
    """
    ny, nx = shape

    def axis(n: int) -> tuple[np.ndarray, list]:
        k = max(1, round(n / max(cell_px, 1)))
        edges = np.linspace(0, n, k + 1).round().astype(int)
        centres = 0.5 * (edges[:-1] + edges[1:]) + 0.5
        return centres, [slice(int(a), int(b)) for a, b in pairwise(edges)]

    xc, xs = axis(nx)
    yc, ys = axis(ny)
    return xc, yc, xs, ys
