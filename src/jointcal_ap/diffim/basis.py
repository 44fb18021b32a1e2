"""The Alard–Lupton kernel basis: Gaussians times polynomials, one of unit sum, the rest of zero sum.

Alard & Lupton (1998) write the PSF-matching kernel as a sum of Gaussians of a few widths,
each multiplied by the monomials ``x^i y^j`` up to a degree. We build that basis on an odd
square grid, then:

- the first function (the middle Gaussian, which alone matches two Gaussian PSFs) is scaled
  to **unit sum**;
- every other function has that one's multiple subtracted so that it **sums to zero**, and
  the zero-sum set is orthonormalised (Gram–Schmidt by QR) for a well-conditioned fit.

The kernel sum (the flux ratio of the two images) is then the first coefficient alone, so a
spatially **constant kernel sum** is obtained by giving only that coefficient no spatial
variation.

>>> b = alard_lupton_basis(7, sigmas=(0.75, 1.5, 3.0), degrees=(4, 2, 2))
>>> b.images.shape, round(float(b.images[0].sum()), 12), float(abs(b.images[1:].sum(axis=(1, 2))).max()) < 1e-12
((27, 15, 15), 1.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jointcal_ap.psf.base import FWHM_PER_SIGMA

__all__ = ["KernelBasis", "alard_lupton_basis", "basis_for_widths"]


@dataclass(frozen=True)
class KernelBasis:
    """An Alard–Lupton basis.

    Attributes
    ----------
    images : ndarray (N, k, k)
        ``images[0]`` sums to 1, the others to 0 (orthonormal among themselves).
    sigmas : tuple of float
        Gaussian widths, pixels (the first listed is the unit-sum one after reordering).
    degrees : tuple of int
        Polynomial degree multiplying each Gaussian.
    """

    images: np.ndarray
    sigmas: tuple[float, ...]
    degrees: tuple[int, ...]

    @property
    def half_size(self) -> int:
        return self.images.shape[1] // 2

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]


def alard_lupton_basis(half_size: int, sigmas=(0.75, 1.5, 3.0), degrees=(4, 2, 2),
                       *, unit_index: int | None = None) -> KernelBasis:
    """The basis on a ``(2·half_size + 1)²`` grid.

    Parameters
    ----------
    half_size : int
        Kernel half-width, pixels.
    sigmas, degrees : sequences of equal length
        Gaussian widths (pixels) and the polynomial degree for each.
    unit_index : int, optional
        Which Gaussian becomes the unit-sum function (default: the middle one).
    """
    if len(sigmas) != len(degrees) or not sigmas:
        raise ValueError(f"sigmas and degrees must have the same non-zero length, got {sigmas}, {degrees}")
    h = int(half_size)
    if h < 1:
        raise ValueError(f"half_size must be >= 1, got {half_size}")
    g = np.arange(-h, h + 1, dtype=float)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    r2 = xx * xx + yy * yy
    u, v = xx / h, yy / h                           # monomials in [-1, 1] for conditioning
    unit = len(sigmas) // 2 if unit_index is None else int(unit_index)
    funcs = []
    first = None
    for k, (s, d) in enumerate(zip(sigmas, degrees, strict=True)):
        gauss = np.exp(-0.5 * r2 / (float(s) ** 2))
        for n in range(int(d) + 1):
            for j in range(n + 1):
                f = gauss * u ** (n - j) * v ** j
                if k == unit and n == 0:
                    first = f / f.sum()
                else:
                    funcs.append(f)
    assert first is not None
    rest = np.stack([f - f.sum() * first for f in funcs]) if funcs else np.zeros((0, 2 * h + 1, 2 * h + 1))
    if len(rest):
        q, r = np.linalg.qr(rest.reshape(len(rest), -1).T)
        keep = np.abs(np.diag(r)) > 1e-10 * np.abs(np.diag(r)).max()
        rest = q[:, keep].T.reshape(-1, 2 * h + 1, 2 * h + 1)
        rest -= rest.sum(axis=(1, 2))[:, None, None] * first    # exact zero sums after rounding
    order = (unit, *[i for i in range(len(sigmas)) if i != unit])
    return KernelBasis(np.concatenate([first[None], rest]), tuple(float(sigmas[i]) for i in order),
                       tuple(int(degrees[i]) for i in order))


def basis_for_widths(reference_fwhm: float, target_fwhm: float, *, degrees=(4, 2, 2),
                     beta: float = 2.0, min_sigma: float = 0.7, half_size: int | None = None,
                     max_half_size: int = 25) -> KernelBasis:
    """A basis suited to matching an image of PSF FWHM ``reference_fwhm`` to ``target_fwhm``.

    The middle Gaussian has the width σ_K = √(σ_target² − σ_reference²) that matches two
    Gaussian PSFs (at least ``min_sigma``); the others are σ_K/β and σ_K·β. The half-size
    is 3·β·σ_K, at least 1.5 FWHM of the target (clipped to 4 … ``max_half_size``).
    """
    s_ref = reference_fwhm / FWHM_PER_SIGMA
    s_tgt = target_fwhm / FWHM_PER_SIGMA
    s_k = math.sqrt(max(s_tgt * s_tgt - s_ref * s_ref, min_sigma * min_sigma))
    n = len(degrees)
    sigmas = [s_k * beta ** (k - n // 2) for k in range(n)]
    if half_size is None:
        half_size = int(np.clip(math.ceil(max(3.0 * beta * s_k, 1.5 * target_fwhm)), 4, max_half_size))
    return alard_lupton_basis(half_size, sigmas, degrees)
