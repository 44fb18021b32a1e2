"""Polynomial evaluation shared by the jitted kernels (plain arithmetic on NumPy or JAX arrays).

The warp's Lanczos weights (:mod:`jointcal_ap.diffim._warp_kernel`) and the epoch
propagation's sines and cosines (:mod:`jointcal_ap.refcat._epoch_jax`) evaluate Taylor
series in multiply-adds, which XLA vectorises, instead of the C library's scalar functions.
No import of JAX here: the warp module is imported without it.
"""

from __future__ import annotations

__all__ = ["horner"]


def horner(z, coefficients):
    """``c0 + c1 z + c2 z² + …`` by Horner's rule, from the highest coefficient down."""
    acc = coefficients[-1]
    for c in coefficients[-2::-1]:
        acc = acc * z + c
    return acc
