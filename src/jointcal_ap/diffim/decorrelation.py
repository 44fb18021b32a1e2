"""Decorrelation of difference images (Reiss & Lupton 2016; Rubin DMTN-021 and DMTN-179).

Convolving one image of a pair by the matching kernel K correlates its noise. With white
noise of variance σ_u² in the image left unconvolved and σ_c² in the convolved one, the
difference ``D = U − K ⊗ C`` has the noise power spectrum ``σ_u² + σ_c² |K̂|²``. The
**decorrelation kernel** ::

    φ̂(k) = √[ (σ_u² + σ_c² κ²) / (σ_u² + σ_c² |K̂(k)|²) ],     κ = Σ K

whitens it (flat spectrum of level σ_u² + σ_c² κ²) and keeps fluxes (φ̂(0) = 1); the PSF of
the decorrelated difference is φ ⊗ (its PSF before).

For a **preconvolved** (likelihood) difference ``D' = P ⋆ U − K ⊗ C``, the correction
(DMTN-179) ::

    ĉ(k) = (σ_u² + σ_c² κ²) / (σ_u² + σ_c² |K̂|² / |P̂|²)

makes ``c ⊗ D'`` the optimal detection statistic (the matched filter of a difference whose
noise is whitened): its response to a point source of unit flux sums to 1, and its noise
covariance is proportional to that response.

These are pure functions of small arrays; :func:`cell_kernels` evaluates them on a grid of
cells, and :mod:`jointcal_ap.diffim.convolve` applies the result across the detector.

>>> import numpy as np
>>> from jointcal_ap.psf import GaussianPsf
>>> k = GaussianPsf.from_fwhm(3.0).kernel_image(0, 0, 21)
>>> phi = decorrelation_kernel(k, 1.0, 1.0)
>>> round(float(phi.sum()), 6), phi.shape, bool(phi[10, 10] > 1.0)
(1.0, (21, 21), True)
"""

from __future__ import annotations

import numpy as np

__all__ = ["convolve_small", "decorrelation_kernel", "noise_weights", "score_correction_kernel"]


def _spectrum(kernel: np.ndarray, n: int) -> np.ndarray:
    """Full FFT (n × n) of a centred odd kernel placed at the origin."""
    k = kernel.shape[0]
    h = k // 2
    buf = np.zeros((n, n))
    buf[:k, :k] = kernel
    return np.fft.fft2(np.roll(buf, (-h, -h), axis=(0, 1)))


def _centred(spectrum: np.ndarray, size: int) -> np.ndarray:
    img = np.fft.fftshift(np.fft.ifft2(spectrum).real)
    n = img.shape[0]
    o = n // 2 - size // 2
    return img[o:o + size, o:o + size]


def _work_size(*sizes: int) -> int:
    import scipy.fft as sfft

    return sfft.next_fast_len(4 * max(sizes) + 1)


def decorrelation_kernel(kernel: np.ndarray, var_unconvolved: float, var_convolved: float, *,
                         size: int | None = None) -> np.ndarray:
    """φ for ``D = U − K ⊗ C`` (see the module notes), as a centred odd image.

    Parameters
    ----------
    kernel : ndarray (k, k)
        The matching kernel K (centred, odd).
    var_unconvolved, var_convolved : float
        Mean pixel variances σ_u², σ_c² of the unconvolved and convolved images.
    size : int, optional
        Odd output size (default: the kernel's); the part cut off is small for kernels of a
        few pixels σ, and φ is rescaled so that its sum stays 1 (φ̂(0) = 1).
    """
    size = size or kernel.shape[0]
    n = _work_size(kernel.shape[0], size)
    khat = _spectrum(np.asarray(kernel, float), n)
    kappa = float(np.sum(kernel))
    su, sc = float(var_unconvolved), float(var_convolved)
    phi_hat = np.sqrt((su + sc * kappa * kappa) / (su + sc * np.abs(khat) ** 2))
    phi = _centred(phi_hat, size)
    return phi / phi.sum()


def score_correction_kernel(kernel: np.ndarray, preconvolution: np.ndarray, var_unconvolved: float,
                            var_convolved: float, *, size: int | None = None) -> np.ndarray:
    """The correction c for a preconvolved difference ``P ⋆ U − K ⊗ C`` (module notes)."""
    size = size or max(kernel.shape[0], preconvolution.shape[0])
    n = _work_size(kernel.shape[0], preconvolution.shape[0], size)
    khat = _spectrum(np.asarray(kernel, float), n)
    phat2 = np.abs(_spectrum(np.asarray(preconvolution, float) / np.sum(preconvolution), n)) ** 2
    tiny = 1e-300
    kappa = float(np.sum(kernel))
    su, sc = float(var_unconvolved), float(var_convolved)
    corr = (su + sc * kappa * kappa) / (su + sc * np.abs(khat) ** 2 / np.maximum(phat2, tiny))
    c = _centred(corr, size)
    return c / c.sum()          # ĉ(0) = 1: undo what cropping lost


def noise_weights(*kernels: np.ndarray) -> list[float]:
    """Σ k² of each kernel: the factor by which convolving white noise by it scales the
    pixel variance (the variance-plane estimate of DMTN-179 §5 for smooth variance)."""
    return [float(np.sum(np.asarray(k, float) ** 2)) for k in kernels]


def convolve_small(a: np.ndarray, b: np.ndarray, size: int | None = None) -> np.ndarray:
    """Full linear convolution of two centred odd images, cropped (centred) to ``size``."""
    shape = (a.shape[0] + b.shape[0] - 1, a.shape[1] + b.shape[1] - 1)
    out = np.fft.irfft2(np.fft.rfft2(a, shape) * np.fft.rfft2(b, shape), shape)
    if size is None:
        return out
    n = out.shape[0]
    o = n // 2 - size // 2
    if o >= 0:
        return out[o:o + size, o:o + size]
    pad = np.zeros((size, size))
    pad[-o:-o + n, -o:-o + n] = out
    return pad
